"""split: stratified, seeded, complete, disjoint; k folds; small classes are a clear error."""

from __future__ import annotations

import pandas as pd
import pytest

from lymphaug.cli import main
from lymphaug.common import manifest
from lymphaug.common.config import SplitConfig
from lymphaug.common.errors import DataError
from lymphaug.split import assign_predefined, assign_splits, split_sizes


def raw_table(counts: dict[str, int]) -> pd.DataFrame:
    rows = [
        {
            "path": f"{c}/{i:03d}.png",
            "class": c,
            "sha256": f"{c}{i}",
            "width": 8,
            "height": 8,
            "source": f"{c}/{i}.tif",
        }
        for c, n in counts.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows, columns=manifest.RAW_COLUMNS)


COUNTS = {"CLL": 113, "FL": 139, "MCL": 122}  # the real set's class sizes


def test_every_image_once_and_stratified():
    raw = raw_table(COUNTS)
    split = assign_splits(raw, SplitConfig())
    assert list(split.columns) == manifest.SPLIT_COLUMNS
    assert sorted(split["path"]) == sorted(raw["path"]) and not split["path"].duplicated().any()
    assert set(split["fold"]) == {-1}
    table = pd.crosstab(split["class"], split["split"])
    for cls, n in COUNTS.items():
        n_test = round(n * 0.2)
        assert abs(table.loc[cls, "test"] - n_test) <= 1
        assert abs(table.loc[cls, "val"] - round((n - n_test) * 0.2)) <= 1
        assert table.loc[cls].sum() == n
    # the classes of each split follow the overall proportions
    for name in manifest.SPLITS:
        share = table[name] / table[name].sum()
        overall = pd.Series(COUNTS) / sum(COUNTS.values())
        assert (share - overall).abs().max() < 0.02


def test_deterministic_and_order_independent():
    raw = raw_table(COUNTS)
    a = assign_splits(raw, SplitConfig(seed=3))
    b = assign_splits(raw.sample(frac=1, random_state=1), SplitConfig(seed=3))
    pd.testing.assert_frame_equal(a, b)
    c = assign_splits(raw, SplitConfig(seed=4))
    assert not a["split"].equals(c["split"])


def test_one_class_does_not_move_another():
    a = assign_splits(raw_table(COUNTS), SplitConfig())
    b = assign_splits(raw_table({"CLL": 113, "FL": 139}), SplitConfig())
    merged = a.merge(b, on="path", suffixes=("_a", "_b"))
    assert len(merged) == 113 + 139 and (merged["split_a"] == merged["split_b"]).all()


def test_small_class_gets_one_of_each_and_too_small_is_an_error():
    split = assign_splits(raw_table({"A": 3, "B": 10}), SplitConfig())
    assert (split[split["class"] == "A"]["split"].value_counts() == 1).all()
    assert split_sizes(3, SplitConfig()) == (1, 1)
    with pytest.raises(DataError, match=r"class 'B' has 2 image\(s\), too few"):
        assign_splits(raw_table({"A": 10, "B": 2}), SplitConfig())
    assert split_sizes(2, SplitConfig(val_fraction=0.0)) == (1, 0)
    with pytest.raises(DataError, match="one per fold"):
        split_sizes(5, SplitConfig(k_folds=5))


def test_k_folds_partition_train_val():
    raw = raw_table(COUNTS)
    folds = [assign_splits(raw, SplitConfig(k_folds=5, fold=f)) for f in range(5)]
    test = set(folds[0].loc[folds[0]["split"] == "test", "path"])
    vals = []
    for f, split in enumerate(folds):
        assert set(split.loc[split["split"] == "test", "path"]) == test  # test fixed across folds
        assert (split.loc[split["split"] == "test", "fold"] == -1).all()
        pool = split[split["split"] != "test"]
        assert set(pool["fold"]) == set(range(5))
        assert (pool["split"] == (pool["fold"] == f).map({True: "val", False: "train"})).all()
        assert pool.groupby("class")["fold"].nunique().eq(5).all()  # every class in every fold
        vals.append(set(pool.loc[pool["split"] == "val", "path"]))
    assert set.union(*vals) == set(folds[0].loc[folds[0]["split"] != "test", "path"])
    assert sum(len(v) for v in vals) == len(set.union(*vals))  # folds are disjoint


def test_cli_writes_split_csv(tmp_path, repo_root):
    raw_dir = tmp_path / "data" / "raw"
    manifest.write_table(
        raw_table({"CLL": 6, "FL": 6, "MCL": 6}), raw_dir / "manifest.csv", manifest.RAW_COLUMNS
    )
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text())
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 0
    split = manifest.read_table(tmp_path / "data" / "split.csv", manifest.SPLIT_COLUMNS)
    assert len(split) == 18 and set(split["split"]) == {"train", "val", "test"}
    first = (tmp_path / "data" / "split.csv").read_bytes()
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 0
    assert (tmp_path / "data" / "split.csv").read_bytes() == first


def test_cli_missing_manifest_is_clean_error(tmp_path, repo_root, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text())
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 2
    assert "manifest.csv: not found" in capsys.readouterr().err


def test_predefined_fold_becomes_the_test_split():
    raw = raw_table({"CLL": 10, "FL": 12})
    held = raw.groupby("class").head(3)  # the benchmark's held-out fold
    predefined = raw.assign(split="train", fold=-1)
    predefined.loc[predefined["path"].isin(held["path"]), "split"] = "val"
    out = assign_predefined(raw, predefined, SplitConfig(val_fraction=0.25))
    assert set(out.loc[out["split"] == "test", "path"]) == set(held["path"])
    assert len(out) == len(raw) and set(out["path"]) == set(raw["path"])
    counts = out.groupby(["class", "split"]).size().to_dict()
    assert counts[("CLL", "val")] == 2 and counts[("FL", "val")] == 2  # round(7*.25), round(9*.25)
    assert (out["fold"] == -1).all()


def test_predefined_without_file_is_clean_error(tmp_path, repo_root, capsys):
    raw_dir = tmp_path / "data" / "raw"
    df = raw_table({"CLL": 4, "FL": 4, "MCL": 4})
    manifest.write_table(df, raw_dir / "manifest.csv", manifest.RAW_COLUMNS)
    params = tmp_path / "params.yaml"
    params.write_text(
        (repo_root / "params.yaml").read_text().replace("predefined: false", "predefined: true")
    )
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 2
    assert "only ingest.source=mat ships a predefined split" in capsys.readouterr().err
