"""The comparison over k folds x seeds: statistics, report wording and the MLflow parent's
aggregates, on runs shaped as the loader returns them (one RunResult per (condition, fold,
seed), each scored on its own fold's test images)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lymphaug import compare
from lymphaug.common import tracking
from lymphaug.common.config import parse_params
from lymphaug.common.paths import Layout
from lymphaug.comparison import report
from lymphaug.comparison.analysis import analyse, flat_metrics, metrics_dict
from lymphaug.comparison.results import RunResult

CLASSES = ["CLL", "FL", "MCL"]
FOLDS, SEEDS, PER_FOLD = 3, 2, 4
# correct[condition][fold, seed, image]: dct is right on 4 more (seed, image) pairs (b 1, c 5)
CORRECT = {
    "base": np.array(
        [
            [[1, 0, 1, 0], [1, 1, 0, 0]],
            [[0, 1, 1, 1], [1, 0, 1, 0]],
            [[1, 1, 0, 0], [0, 1, 1, 1]],
        ],
        bool,
    ),
    "dct": np.array(
        [
            [[1, 1, 1, 0], [1, 1, 1, 0]],
            [[0, 1, 1, 1], [1, 1, 1, 0]],
            [[1, 1, 1, 0], [1, 1, 1, 0]],
        ],
        bool,
    ),
}


def fold_runs(*, n_train: int | None = 6) -> dict[str, list[RunResult]]:
    """Every (condition, fold, seed) run; fold f tests images img_f_0..3 (labels i % 3)."""
    runs = {}
    for condition, correct in CORRECT.items():
        runs[condition] = []
        for fold in range(FOLDS):
            paths = tuple(f"data/raw/img_{fold}_{i}.png" for i in range(PER_FOLD))
            labels = np.arange(PER_FOLD) % 3
            for seed in range(SEEDS):
                ok = correct[fold, seed]
                runs[condition].append(
                    RunResult(
                        condition=condition,
                        seed=seed,
                        fold=fold,
                        paths=paths,
                        labels=labels,
                        predicted=np.where(ok, labels, (labels + 1) % 3),
                        epochs=np.array([1]),
                        val_accuracy=np.array([0.5]),
                        best_epoch=1,
                        n_train=n_train,
                    )
                )
    return runs


def _params(tmp_path):
    return parse_params(
        {
            "classes": CLASSES,
            "train": {"seeds": list(range(SEEDS))},
            "compare": {"bootstrap_resamples": 200},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )


def test_units_pool_every_image_once_per_seed(tmp_path):
    a = analyse(fold_runs(), CLASSES, _params(tmp_path).compare)
    assert a.units == [(f, s) for f in range(FOLDS) for s in range(SEEDS)]
    assert (a.n_folds, a.n_test, a.images_per_unit) == (3, 12, "4")
    base, dct = CORRECT["base"], CORRECT["dct"]
    assert a.pooled["base"] == pytest.approx(base.mean())
    # a seed's accuracy over all images: its three folds together
    assert a.per_seed["dct"]["accuracy"] == pytest.approx([dct[:, 0].mean(), dct[:, 1].mean()])
    assert a.per_unit["base"]["accuracy"][2] == pytest.approx(base[1, 0].mean())  # fold 1 seed 0
    assert a.summaries["base"]["accuracy"].n == 6
    # McNemar: one pair per (seed, image) over all folds
    mc = a.mcnemar["dct"]
    assert mc.n_pairs == 24
    assert (mc.b, mc.c) == (int((base & ~dct).sum()), int((~base & dct).sum())) == (1, 5)
    # n_test / n_train from the runs (4 / 6); the verdict decides by the corrected test
    assert a.ratio == pytest.approx(4 / 6) and "metrics.json" in a.ratio_basis
    comp = a.comparisons["dct"]["accuracy"]
    assert comp.corrected is not None and comp.corrected.n_folds == 3
    assert "3 folds x 2 seeds = 6 units, 12 test images" in a.verdicts["dct"]
    assert "(corrected t)" in a.verdicts["dct"] and "corrected t p=" in a.verdicts["dct"]
    assert a.power["dct"][0].test == "corrected resampled t-test over folds"
    assert a.design == "3 folds x 2 seeds = 6 units, 12 test images"
    # runs without n_train: every image outside the test fold, said to be a bound
    b = analyse(fold_runs(n_train=None), CLASSES, _params(tmp_path).compare)
    assert b.ratio == pytest.approx(4 / 8) and "too small" in b.ratio_basis


def test_missing_unit_is_refused(tmp_path):
    runs = fold_runs()
    runs["dct"] = runs["dct"][:-1]
    with pytest.raises(ValueError, match="dct has runs"):
        analyse(runs, CLASSES, _params(tmp_path).compare)
    runs = {c: r[1:] for c, r in fold_runs().items()}  # fold 0 lacks seed 0
    with pytest.raises(ValueError, match="every fold x seed once"):
        analyse(runs, CLASSES, _params(tmp_path).compare)


def test_metrics_and_report_state_the_design(tmp_path):
    params = _params(tmp_path)
    a = analyse(fold_runs(), CLASSES, params.compare)
    m = metrics_dict(a, None)
    assert (m["n_folds"], m["n_seeds"], m["n_units"], m["n_test_images"]) == (3, 2, 6, 12)
    units = a.per_unit["base"]["accuracy"]
    base = m["conditions"]["base"]
    assert base["n_units"] == 6 and base["accuracy_pooled"] == pytest.approx(14 / 24, abs=1e-6)
    assert (base["accuracy_min"], base["accuracy_max"]) == (min(units), max(units))
    vs = m["vs_base"]["dct"]
    assert vs["p_corrected_t"] == pytest.approx(a.comparisons["dct"]["accuracy"].corrected.test.p)
    assert vs["mde_corrected_t"] is not None and "mde_paired_t" not in vs
    assert vs["significant"] == (vs["p_corrected_t"] < 0.05)

    text = report.render(a, None, quality_skipped="none", params=params, layout=Layout(tmp_path))
    assert (
        "- Design: **3-fold cross-validation x 2 seeds** (0, 1) = **6 (fold, seed) units** "
        "per condition" in text
    )
    assert "(4 images per unit)" in text and "**12 sample-set test images**" in text
    assert "One test image is 8.3 accuracy points of the pooled accuracy, up to 25.0" in text
    assert "| condition | accuracy pooled | accuracy per unit | macro-F1 |" in text
    assert "| base | 58.3 | " in text
    assert "corrected t p | paired t p (units) | Wilcoxon p (units) |" in text
    assert "The corrected resampled t-test (Nadeau & Bengio 2003) decides the verdict" in text
    assert "here 0.667; n_train = the real training images of each fold" in text
    assert "- dct: corrected resampled t-test over folds (3 folds x 2 seeds = 6 units" in text
    assert "each seed contributes one prediction per image" in text
    # the synthetic section says it judges one fold's generator, not all three
    assert "Judged here: **fold 0's generator only**, one of 3." in text
    # the figures' captions name what a point and a line are: units, not seeds
    assert "thick line the mean over (fold, seed) units" in text
    assert "![Test accuracy per (fold, seed) unit](compare/test_accuracy.png)" in text


def test_parent_run_shows_mean_and_spread_per_condition(tmp_path, monkeypatch):
    """compare's MLflow logging on a real SQLite store: the aggregates and the design."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = _params(tmp_path)
    layout = Layout(tmp_path)
    a = analyse(fold_runs(), CLASSES, params.compare)
    metrics = metrics_dict(a, None)
    (layout.reports / compare.PLOTS_DIR).mkdir(parents=True)
    (layout.reports / "report.md").write_text("# report\n")
    (layout.reports / "metrics.json").write_text(json.dumps(metrics))
    client, exp = tracking.setup(params.mlflow, tmp_path)
    parent = tracking.parent_run_id(client, exp, "folds-test")
    for _ in range(2):  # a rerun under the same parent logs again without conflict
        compare.log_to_parent(client, parent, layout, metrics, "note", a.design_params())
    run = client.get_run(parent)
    got = run.data.metrics
    for condition in CORRECT:
        for metric in ("accuracy", "macro_f1"):
            values = a.per_unit[condition][metric]
            key = f"compare.conditions.{condition}.{metric}"
            assert got[f"{key}_mean"] == pytest.approx(np.mean(values), abs=1e-6)
            assert got[f"{key}_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-6)
            assert got[f"{key}_min"] == pytest.approx(min(values), abs=1e-6)
            assert got[f"{key}_max"] == pytest.approx(max(values), abs=1e-6)
        assert got[f"compare.conditions.{condition}.n_units"] == 6
    assert got["compare.vs_base.dct.p_corrected_t"] == pytest.approx(
        flat_metrics(metrics)["compare.vs_base.dct.p_corrected_t"]
    )
    assert run.data.params == {
        "compare.n_folds": "3",
        "compare.n_seeds": "2",
        "compare.n_units": "6",
    }


def test_test_accuracy_points_name_their_fold_when_seeds_repeat(tmp_path):
    """Seeds repeat across folds: with several folds each point's label names its fold too,
    so no two of a condition's six points read alike; the plot is drawn with them."""
    from lymphaug.comparison import figures

    runs = fold_runs()
    labels = [figures.unit_label(r, several_folds=True) for r in runs["base"]]
    assert len(set(labels)) == len(labels) == 6 and "f2s1" in labels
    one = runs["base"][0]
    assert figures.unit_label(one, several_folds=False) == f"s{one.seed}"
    a = analyse(runs, CLASSES, _params(tmp_path).compare)
    summaries = {c: a.summaries[c]["accuracy"] for c in runs}
    figures.test_accuracy_plot(runs, summaries, tmp_path / "acc.png", alpha=a.alpha)
    assert (tmp_path / "acc.png").stat().st_size > 0
