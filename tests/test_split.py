"""split: stratified, seeded, complete, disjoint; k folds over every image (each tested
once); small classes, too many folds and folds out of range are clear errors."""

from __future__ import annotations

import pandas as pd
import pytest
from fixtures.dvc import set_param

from lymphaug.cli import main
from lymphaug.common import manifest
from lymphaug.common.config import SplitConfig
from lymphaug.common.errors import DataError
from lymphaug.common.paths import Layout
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


def one_split(raw: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    (split,) = assign_splits(raw, cfg)  # k_folds 0: one table, fold 0
    return split


def test_every_image_once_and_stratified():
    raw = raw_table(COUNTS)
    split = one_split(raw, SplitConfig())
    assert list(split.columns) == manifest.SPLIT_COLUMNS
    assert sorted(split["path"]) == sorted(raw["path"]) and not split["path"].duplicated().any()
    assert set(split["fold"]) == {0}
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
    for cfg in (SplitConfig(seed=3), SplitConfig(seed=3, k_folds=5)):
        a = assign_splits(raw, cfg)
        b = assign_splits(raw.sample(frac=1, random_state=1), cfg)
        for x, y in zip(a, b, strict=True):
            pd.testing.assert_frame_equal(x, y)
    c = one_split(raw, SplitConfig(seed=4))
    assert not one_split(raw, SplitConfig(seed=3))["split"].equals(c["split"])


def test_one_class_does_not_move_another():
    for cfg in (SplitConfig(), SplitConfig(k_folds=5)):
        for a, b in zip(
            assign_splits(raw_table(COUNTS), cfg),
            assign_splits(raw_table({"CLL": 113, "FL": 139}), cfg),
            strict=False,
        ):
            merged = a.merge(b, on="path", suffixes=("_a", "_b"))
            assert len(merged) == 113 + 139 and (merged["split_a"] == merged["split_b"]).all()


def test_small_class_gets_one_of_each_and_too_small_is_an_error():
    split = one_split(raw_table({"A": 3, "B": 10}), SplitConfig())
    assert (split[split["class"] == "A"]["split"].value_counts() == 1).all()
    assert split_sizes(3, SplitConfig()) == (1, 1)
    with pytest.raises(DataError, match=r"class 'B' has 2 image\(s\), too few"):
        assign_splits(raw_table({"A": 10, "B": 2}), SplitConfig())
    assert split_sizes(2, SplitConfig(val_fraction=0.0)) == (1, 0)


def test_k_folds_every_image_tested_once_never_trained_on_in_its_fold():
    """The cross-validation contract: in every fold, train, val and test are disjoint and
    cover every image; across folds every image is tested exactly once; stratified."""
    raw = raw_table(COUNTS)
    folds = assign_splits(raw, SplitConfig(k_folds=5, folds=[0, 1, 2, 3, 4]))
    assert len(folds) == 5
    tested: list[str] = []
    for f, split in enumerate(folds):
        assert (split["fold"] == f).all() and list(split.columns) == manifest.SPLIT_COLUMNS
        assert sorted(split["path"]) == sorted(raw["path"])  # each image in one part only
        parts = {s: set(split.loc[split["split"] == s, "path"]) for s in manifest.SPLITS}
        assert not parts["train"] & parts["test"] and not parts["val"] & parts["test"]
        assert not parts["train"] & parts["val"]
        tested += sorted(parts["test"])
        table = pd.crosstab(split["class"], split["split"])
        for cls, n in COUNTS.items():  # stratified: n/5 test images of each class per fold
            assert table.loc[cls, "test"] in (n // 5, n // 5 + 1)
            assert abs(table.loc[cls, "val"] - round((n - table.loc[cls, "test"]) * 0.2)) <= 1
    assert sorted(tested) == sorted(raw["path"])  # every image tested exactly once


def test_k_folds_larger_than_the_smallest_class_is_one_clear_error():
    with pytest.raises(DataError, match=r"split.k_folds = 5 is larger than the smallest class "):
        assign_splits(raw_table({"A": 4, "B": 10}), SplitConfig(k_folds=5))
    assert len(assign_splits(raw_table({"A": 5, "B": 10}), SplitConfig(k_folds=5))) == 5


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"k_folds": 5, "folds": [0, 7]}, r"folds \[7\] out of range: with k_folds 5 the folds"),
        ({"k_folds": 0, "folds": [1]}, r"folds \[1\] out of range: with k_folds 0 the folds are 0"),
        ({"k_folds": 5, "folds": [1, 1]}, r"folds must not repeat"),
        ({"k_folds": 1}, r"k_folds must be 0 \(one split\) or at least 2"),
    ],
)
def test_folds_list_out_of_range_is_named(split, message):
    with pytest.raises(Exception, match=message):
        SplitConfig(**split)


def test_cli_writes_one_file_per_fold(tmp_path, repo_root):
    raw_dir = tmp_path / "data" / "raw"
    manifest.write_table(
        raw_table({"CLL": 6, "FL": 6, "MCL": 6}), raw_dir / "manifest.csv", manifest.RAW_COLUMNS
    )
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text())
    layout = Layout(tmp_path)
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 0
    assert sorted(p.name for p in layout.splits.iterdir()) == ["fold_0.csv"]
    split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
    assert len(split) == 18 and set(split["split"]) == {"train", "val", "test"}
    first = layout.split_csv.read_bytes()
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 0
    assert layout.split_csv.read_bytes() == first
    set_param(tmp_path, "split", "k_folds", 3)
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 0
    assert sorted(p.name for p in layout.splits.iterdir()) == [f"fold_{f}.csv" for f in range(3)]
    # back to one split: the folds that no longer exist go
    set_param(tmp_path, "split", "k_folds", 0)
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 0
    assert sorted(p.name for p in layout.splits.iterdir()) == ["fold_0.csv"]


def test_fold_out_of_range_on_the_command_line_is_one_line(tmp_path, repo_root, capsys):
    params = tmp_path / "params.yaml"
    text = (repo_root / "params.yaml").read_text().replace("k_folds: 0 ", "k_folds: 5 ")
    params.write_text(text)
    assert main(["--params", str(params), "--root", str(tmp_path), "dct", "--fold", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "lymphaug dct: error: --fold 7 is out of range: split.k_folds = 5 gives folds 0..4"
    )


def test_cli_missing_manifest_is_clean_error(tmp_path, repo_root, capsys):
    params = tmp_path / "params.yaml"
    params.write_text((repo_root / "params.yaml").read_text())
    assert main(["--params", str(params), "--root", str(tmp_path), "split"]) == 2
    assert "manifest.csv: not found" in capsys.readouterr().err


def predefined_table(raw: pd.DataFrame, held_out: list[pd.DataFrame]) -> pd.DataFrame:
    """The benchmark's division as ingest writes it: one row per image and fold."""
    frames = []
    for fold, held in enumerate(held_out):
        table = raw.assign(split="train", fold=fold)
        table.loc[table["path"].isin(held["path"]), "split"] = "val"
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def test_predefined_fold_becomes_the_test_split():
    raw = raw_table({"CLL": 10, "FL": 12})
    helds = [raw.groupby("class").head(3), raw.groupby("class").tail(3)]
    predefined = predefined_table(raw, helds)
    # k_folds 0: ingest.mat.fold (1-based) alone, as fold 0
    (out,) = assign_predefined(raw, predefined, SplitConfig(val_fraction=0.25), mat_fold=2)
    assert set(out.loc[out["split"] == "test", "path"]) == set(helds[1]["path"])
    assert len(out) == len(raw) and set(out["path"]) == set(raw["path"])
    counts = out.groupby(["class", "split"]).size().to_dict()
    assert counts[("CLL", "val")] == 2 and counts[("FL", "val")] == 2  # round(7*.25), round(9*.25)
    assert (out["fold"] == 0).all()
    # k_folds = the benchmark's number of folds: each of its folds in order
    both = assign_predefined(raw, predefined, SplitConfig(k_folds=2, val_fraction=0.25), mat_fold=1)
    for fold, (table, held) in enumerate(zip(both, helds, strict=True)):
        assert set(table.loc[table["split"] == "test", "path"]) == set(held["path"])
        assert (table["fold"] == fold).all()
    with pytest.raises(DataError, match="split.k_folds = 3 but the benchmark's predefined"):
        assign_predefined(raw, predefined, SplitConfig(k_folds=3), mat_fold=1)


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
