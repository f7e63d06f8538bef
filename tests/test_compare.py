"""The compare stage end to end on a tiny repository laid out like the pipeline's.

The training results are written in the exact format of ``lymphaug train``
(predictions.csv, history.csv, metrics.json, models/<c>/fold_0/seed_<n>/model.pt), with
known per-image correctness so the McNemar counts can be checked by hand; the
feature extractor is a real (tiny, randomly initialised) torchvision model built
by the classifier package.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lymphaug import compare
from lymphaug.cli import main
from lymphaug.common import manifest
from lymphaug.common.config import parse_params
from lymphaug.common.errors import DataError
from lymphaug.common.files import sha256_file
from lymphaug.common.images import save_png
from lymphaug.common.paths import Layout
from lymphaug.comparison import results
from lymphaug.comparison.analysis import analyse

CLASSES = ["CLL", "FL", "MCL"]
COLOURS = {"CLL": (200, 80, 160), "FL": (120, 60, 200), "MCL": (220, 150, 180)}
# per test image (sorted by path) and seed: is the prediction correct?
CORRECT = {
    "base": [[1, 1, 0, 1, 0, 1], [1, 0, 1, 1, 0, 1], [1, 1, 0, 0, 1, 1]],
    "dct": [[1, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]],
    "synthetic": [[1, 0, 0, 1, 0, 1], [1, 0, 1, 1, 0, 1], [0, 1, 0, 0, 1, 1]],
}


def _image(rng, cls):
    base = np.array(COLOURS[cls], dtype=np.int16)
    img = base + rng.integers(-40, 40, size=(48, 56, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _params(tmp_path, seeds, **compare):
    return parse_params(
        {
            "classes": CLASSES,
            "train": {"arch": "mobilenet_v3_small", "input_size": 32, "seeds": seeds},
            "compare": {"bootstrap_resamples": 200, "near_copy_threshold": 1.0e-4, **compare},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )


def make_repo(root, seeds=(0, 1, 2), synthetic=True):
    """data/raw + fold 0's split file + data/synthetic + every train output for CORRECT."""
    from lymphaug.classifier.model import build_classifier

    rng = np.random.default_rng(0)
    layout = Layout(root)
    rows = []
    for cls in CLASSES:
        for i in range(8):
            rel = f"{cls}/{cls.lower()}_{i}.png"
            save_png(_image(rng, cls), layout.raw / rel)
            split = "train" if i < 4 else ("val" if i < 6 else "test")
            rows.append({"path": rel, "class": cls, "split": split, "fold": 0})
    split = pd.DataFrame(rows)
    manifest.write_table(split, layout.split_csv, manifest.SPLIT_COLUMNS)
    if synthetic:
        syn = []
        for cls in CLASSES:
            for i in range(3):
                rel = f"{cls}/syn_{i}.png"
                if cls == "FL" and i == 0:  # a verbatim copy of a training image
                    (layout.synthetic / cls).mkdir(parents=True, exist_ok=True)
                    shutil.copy(layout.raw / "FL/fl_2.png", layout.synthetic / rel)
                else:
                    save_png(_image(rng, cls), layout.synthetic / rel)
                syn.append(
                    {
                        "path": rel,
                        "class": cls,
                        "prompt": f"p {cls}",
                        "seed": i,
                        "scheduler": "dpmsolver++",
                        "steps": 2,
                        "guidance": 4.0,
                        "mode": "txt2img",
                        "strength": 0.5,
                        "source": "",
                        "fold": 0,
                        "split_sha256": sha256_file(layout.split_csv),
                    }
                )
        manifest.write_table(
            pd.DataFrame(syn), layout.synthetic / "manifest.csv", manifest.SYNTHETIC_COLUMNS
        )
    test = split[split["split"] == "test"].sort_values("path").reset_index(drop=True)
    labels = test["class"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    for cond, per_seed in CORRECT.items():
        for k, seed in enumerate(seeds):
            ok = np.array(per_seed[k % 3], bool)
            pred = np.where(ok, labels, (labels + 1) % 3)
            write_run(layout, cond, seed, test["path"].map(lambda p: f"data/raw/{p}"), labels, pred)
    torch.manual_seed(0)
    model = build_classifier("mobilenet_v3_small", 3, "none")
    layout.classifier("base", seeds[0]).mkdir(parents=True, exist_ok=True)
    torch.save(model.torchvision_state_dict(), layout.classifier("base", seeds[0]) / "model.pt")
    return layout


def write_run(layout, cond, seed, paths, labels, pred):
    """The three report files in the format of lymphaug.train.write_outputs."""
    rep = layout.train_report(cond, seed)
    rep.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(
        {
            "path": list(paths),
            "class": [CLASSES[i] for i in labels],
            "label": labels,
            "predicted": pred,
            "predicted_class": [CLASSES[i] for i in pred],
        }
    )
    for i, c in enumerate(CLASSES):
        df[f"prob_{c}"] = np.where(pred == i, 0.8, 0.1)
    df.to_csv(rep / "predictions.csv", index=False)
    hist = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [1.0, 0.8, 0.7],
            "train_acc": [0.4, 0.5, 0.6],
            "val_loss": [1.1, 0.9, 0.95],
            "val_acc": [0.3 + 0.05 * seed, 0.5, 0.45],
        }
    )
    hist.to_csv(rep / "history.csv", index=False)
    metrics = {"best_epoch": 2, "test_accuracy": 0.5, "fold": layout.fold}
    if layout.split_csv.is_file():  # as train records it: compare checks the assignment
        metrics["split_sha256"] = sha256_file(layout.split_csv)
    (rep / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return make_repo(tmp_path_factory.mktemp("repo"))


def test_report_end_to_end_with_mlflow(repo, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LYMPHAUG_PIPELINE_ID", "test-compare")
    root = tmp_path / "r"
    shutil.copytree(repo.root, root)
    layout = Layout(root)
    params = _params(tmp_path, [0, 1, 2])
    version = _register(params.mlflow.tracking_uri, layout.classifier("base", 0))
    assert compare.run(params, layout) == 0
    out = capsys.readouterr().out
    # all seeds tie on validation accuracy (0.5 at epoch 2): the lowest seed is "best"
    assert f"lymphaug-classifier-base@best = version {version} (fold 0 seed 0)" in out
    assert "lymphaug-classifier-dct: no registry version holds these weights" in out
    assert "  synthetic images: FID " in out and "x that of a real set of the same size" in out
    assert "1 near copies; pixel copies 1 (1 nearer a training image than real ones)" in out

    text = (root / "reports/report.md").read_text()
    assert text.startswith(
        "# Does augmentation help? Comparison report\n\n"
        "- **Data**: the **generated sample set, not lymphoma data**"
    )
    assert "data/raw has no manifest.csv, so what it holds was not checked" in text
    assert "- **Synthetic images**: diffusion base `tiny`: **random weights**" in text
    assert "**the synthetic images are noise by construction**" in text
    assert "- **Classifier**: `mobilenet_v3_small` (weights `none`" in text
    assert "**3 seeds** (0, 1, 2)" in text and "**6 sample-set test images**" in text
    assert "the exact Wilcoxon test cannot reach p < 0.05" in text
    assert "- **dct**: +22.2 points, 95% CI [" in text
    assert "3 seeds x 6 test images" in text
    assert "zero_method='pratt'" in text and "exact binomial" in text
    assert "- Budget: 5 epochs over each condition's whole training set" in text
    # the power line: what 3 seeds x 6 images could have resolved, from the observed spread
    assert "What this design can resolve" in text
    assert "- dct: paired t-test over seeds (3 seeds): differences of " in text
    assert "McNemar over (seed, image) pairs (18 pairs)" in text
    assert not re.search(r"\bfolds?\b", text)  # one split: the wording of a seeds-only design
    for png in ("val_accuracy", "test_accuracy", "confusion_matrices", "nearest_pairs"):
        assert f"](compare/{png}.png)" in text
        assert (root / f"reports/compare/{png}.png").stat().st_size > 1000
    assert "Feature extractor: **the `base` classifier of seed 0" in text
    # synthetic images drawn like the real ones, with a validated extractor
    assert "it passes every check" in text
    assert "The synthetic set is about as close to the training images as real images" in text
    assert "| syn_0.png" not in text and "| FL/syn_0.png | FL/fl_2.png | 0.0000 | no |" in text
    # the verbatim copy is found in pixels too: 48 px centre squares (the images' short side)
    assert "**Copies in pixel space** (no feature extractor): the centre 48 x 48 px" in text
    assert "**1 of 9** synthetic images are nearer a training image than any held-out" in text
    assert "**1 of 9** reach 0.9 (a copy)." in text

    m = json.loads((root / "reports/metrics.json").read_text())
    assert m["n_seeds"] == 3 and m["n_test_images"] == 6
    assert m["vs_base"]["dct"]["accuracy_diff"] == pytest.approx(4 / 18)
    assert m["vs_base"]["dct"]["mde_paired_t"] > m["vs_base"]["dct"]["accuracy_diff"] / 2
    assert m["synthetic_quality"]["near_copies"] == 1
    assert m["synthetic_quality"]["extractor"] == "classifier"
    assert m["synthetic_quality"]["extractor_valid"] is True
    assert m["synthetic_quality"]["fid_ratio_to_real"] < 1.5
    assert m["synthetic_quality"]["pixel_copies"] == 1
    assert m["synthetic_quality"]["pixel_ncc_max"] == pytest.approx(1.0, abs=1e-4)
    assert m["synthetic_quality"]["pixel_ncc_held_out_max"] < 0.5

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("lymphaug").experiment_id],
        filter_string="tags.`lymphaug.role` = 'parent'",
    )
    assert len(runs) == 1
    got = runs[0].data.metrics
    assert got["compare.vs_base.dct.accuracy_diff"] == pytest.approx(4 / 18, abs=1e-6)
    # per condition the spread over the units, beside the mean (the compare view's columns)
    assert got["compare.conditions.dct.accuracy_min"] == pytest.approx(5 / 6, abs=1e-6)
    assert got["compare.conditions.dct.accuracy_max"] == 1.0
    assert got["compare.conditions.dct.n_units"] == 3 and got["compare.n_folds"] == 1
    assert runs[0].data.params == {
        "compare.n_folds": "1",
        "compare.n_seeds": "3",
        "compare.n_units": "3",
    }
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "compare")}
    assert {"compare/report.md", "compare/metrics.json", "compare/plots"} <= arts
    # the report as a page MLflow renders, its figures inside it; each figure an MLflow image
    got = client.download_artifacts(runs[0].info.run_id, "compare/report.html", str(tmp_path))
    page = Path(got).read_text()
    assert page.count('<img src="data:image/png;base64,') == text.count("![") == 4
    assert "<table>" in page and "](compare/" not in page
    note = runs[0].data.tags["mlflow.note.content"]  # the run page's description
    assert "`compare/report.html`" in note and "- dct vs base: +22.2 points" in note
    assert runs[0].info.end_time >= runs[0].info.start_time  # compare ended the parent

    # same inputs, byte-identical outputs
    before = {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()}
    compare.produce(params, layout)
    after = {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()}
    assert before.keys() == after.keys()
    assert [p for p in before if before[p] != after[p]] == []


def _register(uri: str, model_dir) -> str:
    """One registry version of ``model_dir`` under a real run, the way train logs it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from lymphaug.common import registry

    mlflow.set_tracking_uri(uri)  # as tracking.setup does: the registry resolves models:/ there
    client = MlflowClient(uri)
    exp = client.create_experiment("training")
    run = client.create_run(exp).info.run_id
    (model_dir / "model.json").write_text("{}\n")
    ref = registry.reference(model_dir, model_dir.parents[3], "abc1234")
    model_id = registry.log_reference_model(
        client, experiment_id=exp, run_id=run, name="m", model_dir=model_dir, ref=ref
    )
    version = registry.register_version(
        client,
        condition="base",
        model_id=model_id,
        run_id=run,
        ref=ref,
        tags={"fold": "0", "seed": "0"},
    )
    return str(version.version)


def test_mcnemar_counts_pair_by_seed_and_image(repo):
    params = _params(repo.root, [0, 1, 2])
    runs = results.read_all(repo, ["base", "dct", "synthetic"], [0], [0, 1, 2], CLASSES)
    a = analyse(runs, CLASSES, params.compare)
    # dct vs base: c = seed0 image 2, seed1 image 4, seed2 images 2 and 3; b = none
    base = np.array(CORRECT["base"], bool).ravel()
    dct = np.array(CORRECT["dct"], bool).ravel()
    assert (a.mcnemar["dct"].b, a.mcnemar["dct"].c) == (
        int(np.sum(base & ~dct)),
        int(np.sum(~base & dct)),
    )
    assert (a.mcnemar["dct"].b, a.mcnemar["dct"].c) == (0, 4)
    assert a.mcnemar["dct"].p == pytest.approx(2 / 16)  # exact: 2 * 0.5**4
    assert a.summaries["base"]["accuracy"].mean == pytest.approx(12 / 18)
    assert a.confusion["base"].sum() == 18


def test_one_seed_still_reports(tmp_path):
    layout = make_repo(tmp_path, seeds=(0,), synthetic=False)
    compare.produce(_params(tmp_path, [0]), layout)
    text = (tmp_path / "reports/report.md").read_text()
    assert "Only one seed" in text and "need at least two seeds" in text
    assert "Quality not assessed" in text and "synthetic/fold_0/manifest.csv" in text
    m = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert m["vs_base"]["dct"]["p_paired_t"] is None  # JSON null, not NaN
    assert m["conditions"]["base"]["accuracy_std"] is None


def test_missing_condition_is_named(repo, tmp_path, capsys, monkeypatch):
    root = tmp_path / "r"
    shutil.copytree(repo.root, root)
    shutil.rmtree(Layout(root).train_report("synthetic", 1))
    with pytest.raises(
        DataError, match=r"synthetic fold 0 seed 1 \(.*synthetic/fold_0/seed_1/predictions.csv"
    ):
        results.read_all(Layout(root), ["base", "dct", "synthetic"], [0], [0, 1, 2], CLASSES)
    # and through the CLI: one line, exit 2, no traceback
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = root / "params.yaml"
    params.write_text(json.dumps(_params(tmp_path, [0, 1, 2]).model_dump()))
    assert main(["--params", str(params), "--root", str(root), "compare"]) == 2
    err = capsys.readouterr().err
    assert "synthetic fold 0 seed 1" in err and "Traceback" not in err


def test_different_test_images_are_refused(repo, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(repo.root, root)
    layout = Layout(root)
    pred_path = layout.train_report("dct", 1) / "predictions.csv"
    pred = pd.read_csv(pred_path)
    pred.loc[0, "path"] = "data/raw/CLL/cll_0.png"  # a training image instead
    pred.to_csv(pred_path, index=False)
    with pytest.raises(DataError, match="dct fold 0 seed 1 was tested on different images"):
        results.read_all(layout, ["base", "dct", "synthetic"], [0], [0, 1, 2], CLASSES)
    # across seeds of one condition too
    shutil.copy(layout.train_report("base", 0) / "predictions.csv", pred_path)
    p2 = layout.train_report("base", 2) / "predictions.csv"
    pd.read_csv(p2).iloc[:-1].to_csv(p2, index=False)
    with pytest.raises(DataError, match="base fold 0 seed 2 was tested on different images"):
        results.read_all(layout, ["base", "dct", "synthetic"], [0], [0, 1, 2], CLASSES)


def test_runs_pool_over_folds_paired_by_fold_and_seed_and_one_assignment(repo, tmp_path):
    """Two folds: each fold's runs pair on its own test images, every condition lists its
    runs in (fold, seed) order; runs from another fold assignment are refused."""
    root = tmp_path / "r"
    shutil.copytree(repo.root, root)
    layout = Layout(root)
    split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
    swapped = split.replace({"split": {"val": "test", "test": "val"}}).assign(fold=1)
    fold1 = layout.for_fold(1)
    manifest.write_table(swapped, fold1.split_csv, manifest.SPLIT_COLUMNS)
    test = swapped[swapped["split"] == "test"].sort_values("path")
    labels = test["class"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    paths = test["path"].map(lambda p: f"data/raw/{p}")
    for condition in ("base", "dct", "synthetic"):
        for seed in (0, 1, 2):
            write_run(fold1, condition, seed, paths, labels, labels)
    runs = results.read_all(layout, ["base", "dct", "synthetic"], [0, 1], [0, 1, 2], CLASSES)
    for cond_runs in runs.values():
        assert [(r.fold, r.seed) for r in cond_runs] == results.units([0, 1], [0, 1, 2])
        assert {r.paths for r in cond_runs if r.fold == 1} == {tuple(paths)}
    # fold 1's split file changed after its runs: another assignment, not poolable
    moved = swapped.copy()
    moved.loc[moved["split"] == "val", "split"] = "train"
    manifest.write_table(moved, fold1.split_csv, manifest.SPLIT_COLUMNS)
    with pytest.raises(DataError, match=r"base fold 1 seed 0 trained on a split file with sha256"):
        results.read_all(layout, ["base", "dct", "synthetic"], [0, 1], [0, 1, 2], CLASSES)
    # a run of fold 0 copied into fold 1's folder is named too
    shutil.rmtree(fold1.train_report("dct", 2))
    shutil.copytree(layout.train_report("dct", 2), fold1.train_report("dct", 2))
    with pytest.raises(DataError, match=r"a run of fold 0 in fold 1's folder"):
        results.read_run(fold1, "dct", 2, CLASSES)


def test_reader_refuses_labels_that_are_not_class_indices(tmp_path):
    layout = Layout(tmp_path)
    write_run(
        layout, "base", 0, ["data/raw/a.png", "data/raw/b.png"], np.array([0, 2]), np.array([0, 1])
    )
    r = results.read_run(layout, "base", 0, CLASSES)
    assert list(r.labels) == [0, 2] and list(r.predicted) == [0, 1]
    assert r.accuracy == 0.5 and r.macro_f1(3) == pytest.approx((1 + 0 + 0) / 3)
    rep = layout.train_report("base", 0)
    df = pd.read_csv(rep / "predictions.csv")
    df["predicted"] = df["predicted_class"]  # names where indices belong
    df.to_csv(rep / "predictions.csv", index=False)
    with pytest.raises(DataError, match="column predicted is not a class index 0..2"):
        results.read_run(layout, "base", 0, CLASSES)


def test_named_imagenet_extractor_without_cached_weights_is_refused(repo, tmp_path, monkeypatch):
    """The stage never downloads: naming an uncached extractor says where it looked."""
    from lymphaug.common.config import TrainConfig
    from lymphaug.comparison import features

    cheap = TrainConfig(arch="mobilenet_v3_small", input_size=32)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DataError, match="alexnet: its ImageNet weights are not in the torchvision"):
        features.choose("alexnet", repo, train_cfg=cheap, n_classes=3, seed=0)
    ex = features.choose("auto", repo, train_cfg=cheap, n_classes=3, seed=0)
    assert ex.name == "classifier" and "no ImageNet Inception or AlexNet" in ex.description
    with pytest.raises(DataError, match="no base classifier weights in .*seed_7"):
        features.choose("classifier", repo, train_cfg=cheap, n_classes=3, seed=7)


# The two ways the synthetic section used to mislead (issue 15): noise reported as near
# copies, and numbers printed from an extractor that cannot tell images apart.
SYNTHETIC_NUMBERS = ("How far", "| class | real train", "Train on synthetic", "Near copies")


def test_noise_is_called_far_from_the_real_images(repo, tmp_path):
    """Valid extractor, uniform-noise synthetic images: far, and not one near copy."""
    root = tmp_path / "r"
    shutil.copytree(repo.root, root)
    rng = np.random.default_rng(1)
    for png in sorted((root / "data/synthetic").rglob("*.png")):
        save_png(rng.integers(0, 256, size=(48, 56, 3), dtype=np.uint8), png)
    compare.produce(_params(tmp_path, [0, 1, 2], near_copy_threshold=0.05), Layout(root))
    text = (root / "reports/report.md").read_text()
    assert "it passes every check" in text
    assert "The synthetic set is **far from the real images** (at least 3x" in text
    assert "Near copies (distance < 0.05): **0** of 9: the set is far from the real images" in text
    m = json.loads((root / "reports/metrics.json").read_text())["synthetic_quality"]
    assert m["extractor_valid"] is True and m["near_copies"] == 0
    assert m["pixel_copies"] == 0 and m["pixel_above_held_out"] == 0
    assert m["fid_ratio_to_real"] >= 3
    distances = pd.read_csv(root / "reports/compare/nearest_training.csv")
    assert len(distances) == 9 and not distances["near_copy"].any()


def _collapse(state: dict, *, rank: int) -> dict:
    """mobilenet_v3_small's penultimate linear layer with its weights cut to ``rank``
    (0: the features are constant, whatever the image; 1: they vary along one line)."""
    weight = state["classifier.0.weight"]
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    state["classifier.0.weight"] = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return state


@pytest.mark.parametrize("rank", [0, 1])
def test_collapsed_extractor_prints_no_feature_metrics(repo, tmp_path, rank):
    """A classifier whose features collapse: the report says why, and gives no numbers."""
    root = tmp_path / "r"
    shutil.copytree(repo.root, root)
    model = Layout(root).classifier("base", 0) / "model.pt"
    torch.save(_collapse(torch.load(model, weights_only=True), rank=rank), model)
    compare.produce(_params(tmp_path, [0, 1, 2]), Layout(root))
    text = (root / "reports/report.md").read_text()
    assert "**The image metrics cannot be computed with this extractor**: it fails" in text
    assert "| features not collapsed | effective rank 0.00 | >= 2 | **fail** |" in text or (
        rank == 1 and "| features not collapsed | effective rank 1.00 | >= 2 | **fail** |" in text
    )
    section = text.split("## Synthetic images", 1)[1]
    assert [s for s in SYNTHETIC_NUMBERS if s in section] == []
    assert "FID " not in section.split("**The image metrics cannot be computed")[0]
    m = json.loads((root / "reports/metrics.json").read_text())["synthetic_quality"]
    assert m["extractor_valid"] is False
    assert {"fid", "kid", "tstr_accuracy", "near_copies"} & set(m) == set()
    # the extractor-free check still runs, and still finds the verbatim copy
    assert "**1 of 9** reach 0.9 (a copy)." in section and m["pixel_copies"] == 1
    assert (root / "reports/compare/nearest_training.csv").read_text().count("\n") == 1


def test_budget_line_states_equal_steps_and_the_augmented_share(repo):
    from lymphaug.comparison.report import budget_line

    params = parse_params(
        {
            "classes": CLASSES,
            "train": {
                "patch_size": 16,
                "patches_per_image": 4,
                "batch_size": 8,
                "epochs": 3,
                "budget": "real_epochs",
                "augmented_fraction": 0.25,
            },
        }
    )
    n_train = int((pd.read_csv(repo.split_csv)["split"] == "train").sum())
    line = budget_line(params, repo, ["base", "dct", "synthetic"])
    steps = 3 * math.ceil(n_train * 4 / 8)
    assert line.startswith("the same in every condition (`train.budget: real_epochs`)")
    assert f"= {steps} optimiser steps ({n_train} real training images x 4 samples" in line
    assert "in `dct`, `synthetic` each sample is an augmented image with probability 0.25" in line
    assert "augmented" not in budget_line(params, repo, ["base"])
