"""reports/report.md: the comparison written for a person reading top to bottom.

Order: what it was run on (data, generator, classifier, profile: so a copy read out
of context cannot pass for a result on lymphoma data), what was run (so the reader
can judge the power), the verdicts, the table, the tests and their choices, the
figures, then the synthetic images' quality, behind a check of the feature extractor.
Figures are linked relatively (``compare/*.png``) so the report renders in a git
forge, an editor preview, or as an MLflow artifact beside its plots folder.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lymphaug.classifier.loop import steps_for_images
from lymphaug.common import manifest
from lymphaug.common.config import Params
from lymphaug.common.paths import Layout
from lymphaug.comparison import provenance, stats
from lymphaug.comparison.pixel_match import COPY_NCC, PixelMatch
from lymphaug.comparison.stats import format_p

if TYPE_CHECKING:  # for annotations only; never imported at run time
    from lymphaug.comparison.analysis import Analysis
    from lymphaug.comparison.synthetic_quality import HowFar, QualityReport, SyntheticMetrics


def _pct(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.{digits}f}"


def _f(x: float | None, fmt: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def _summary_cell(summary: stats.Summary) -> str:
    if summary.n < 2:
        return f"{_pct(summary.mean)} (one seed)"
    return (
        f"{_pct(summary.mean)} ± {_pct(summary.std)} "
        f"[{_pct(summary.ci_low)}, {_pct(summary.ci_high)}]"
    )


def budget_line(params: Params, layout: Layout, conditions: list[str]) -> str:
    """How many optimiser steps each condition got, so a reader can tell a fair comparison
    (``train.budget: real_epochs``, equal steps) from the study's (``epochs``: more images,
    more steps)."""
    train = params.train
    augmented = [c for c in conditions if c != "base"]
    if train.budget == "epochs":
        return (
            f"{train.epochs} epochs over each condition's whole training set (`train.budget: "
            "epochs`, the study's): a condition that adds images also gets more optimiser "
            "steps, so a difference mixes the images' effect with the extra training."
        )
    n_real = None
    if layout.split_csv.is_file():
        split = manifest.read_table(layout.split_csv, manifest.SPLIT_COLUMNS)
        n_real = int((split["split"] == "train").sum())
    steps = (
        f" = {train.epochs * steps_for_images(n_real, train)} "
        f"optimiser steps ({n_real} real training images x {train.patches_per_image} "
        f"samples, batch {train.batch_size})"
        if n_real is not None
        else ""
    )
    mixed = (
        f"; in {', '.join(f'`{c}`' for c in augmented)} each sample is an augmented image "
        f"with probability {train.augmented_fraction:g} instead of a real one"
        if augmented
        else ""
    )
    return (
        f"the same in every condition (`train.budget: real_epochs`): {train.epochs} "
        f"real-image epochs{steps}{mixed}."
    )


def _design_lines(analysis: Analysis, *, seed_list: str, noun: str) -> list[str]:
    """What was replicated: seeds on one split, or folds x seeds covering every image."""
    n_seeds, n_test = len(analysis.seeds), analysis.n_test
    classes = f"Classes: {', '.join(analysis.classes)}."
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    if analysis.n_folds == 1:
        return [
            f"- **{seeds}** ({seed_list}) per condition, each scored on the same **{n_test} "
            f"{noun} test images** ({n_seeds * n_test} paired image predictions per "
            f"comparison). {classes}"
        ]
    k, n_units, per_unit = analysis.n_folds, len(analysis.units), analysis.images_per_unit
    return [
        f"- Design: **{k}-fold cross-validation x {seeds}** ({seed_list}) = **{n_units} "
        f"(fold, seed) units** per condition, each trained without its fold's test images "
        f"and scored on them ({per_unit} images per unit). Across the folds every one of the "
        f"**{n_test} {noun} test images** is scored once per seed ({n_seeds * n_test} paired "
        f"image predictions per comparison). {classes}"
    ]


def _per_unit_image(analysis: Analysis) -> str:
    """With folds, one image weighs more in a unit's accuracy than in the pooled one."""
    if analysis.n_folds == 1:
        return ""
    smallest = min(analysis.fold_sizes.values())
    return f" of the pooled accuracy, up to {100 / smallest:.1f} of one unit's"


def _results_table(analysis: Analysis, *, conf: int) -> list[str]:
    """Per condition: mean and spread over the units, and (with folds) over all images."""
    folds = analysis.n_folds > 1
    over = "the (fold, seed) units" if folds else "seeds"
    lines = [f"Mean ± std over {over} [{conf}% bootstrap CI of the mean], in percent."]
    if folds:
        lines[0] += (
            " Pooled: every (image, seed) prediction over all folds; per seed: that seed's "
            "folds together, every image once. The bootstrap treats the units as "
            "independent, which they are not (see the paired comparisons): read the CIs "
            "there."
        )
    lines += [
        "",
        "| condition | "
        + ("accuracy pooled | accuracy per unit | " if folds else "accuracy | ")
        + "macro-F1 | accuracy per seed"
        + (" (all images)" if folds else "")
        + " |",
        "|---|---|---|---|" + ("---|" if folds else ""),
    ]
    for condition in analysis.conditions:
        summary = analysis.summaries[condition]
        per_seed = ", ".join(_pct(v) for v in analysis.per_seed[condition]["accuracy"])
        pooled = f"{_pct(analysis.pooled[condition])} | " if folds else ""
        lines.append(
            f"| {condition} | {pooled}{_summary_cell(summary['accuracy'])} "
            f"| {_summary_cell(summary['macro_f1'])} | {per_seed} |"
        )
    return lines


def _reading(analysis: Analysis) -> list[str]:
    """How to read the paired comparisons: each test, why it is there, what it assumes."""
    wilcoxon = (
        f"(`scipy.stats.wilcoxon`, zero_method='{stats.WILCOXON_ZERO_METHOD}': zero "
        "differences are ranked then dropped); p by enumerating every sign flip of the tied "
        f"ranks (exact given ties) up to {stats.WILCOXON_EXACT_MAX_N} "
        f"{'seeds' if analysis.n_folds == 1 else 'units'}, normal approximation above."
    )
    mcnemar = (
        "b = images base got right and the condition wrong, c = the reverse. Exact binomial "
        f"below {stats.MCNEMAR_EXACT_BELOW} discordant pairs, else chi-square with "
        "continuity correction. It treats each (seed, image) pair as independent although "
        "the same image recurs across seeds, so it overstates the evidence relative to the "
        "seed-level tests; a large odds ratio c/b favours the condition."
    )
    if analysis.n_folds == 1:
        return [
            "- Δ and its CI: per-seed differences (seed *s* of a condition minus seed *s* of "
            "base; both share the split and the seed), percentile bootstrap of their mean.",
            "- Paired t-test (`scipy.stats.ttest_rel`, two-sided) on those differences decides "
            "the verdict: seeds are the unit of replication.",
            f"- Wilcoxon signed-rank {wilcoxon}",
            f"- McNemar on the per-image predictions pooled over seeds, paired by (seed, image): "
            f"{mcnemar}",
            "- Cohen's d_z = mean / std of the per-seed differences (n/a with fewer than two "
            "seeds or identical differences).",
        ]
    k = analysis.n_folds
    return [
        "- Δ: the mean of the per-unit differences (fold *f*, seed *s* of a condition minus "
        "the same of base: same training and test images, same seed).",
        f"- The corrected resampled t-test (Nadeau & Bengio 2003) decides the verdict, and "
        f"gives the CI: t = mean / sqrt((1/J + n_test/n_train) s²) with J - 1 degrees of "
        f"freedom over the J = {k} folds, s the sd of the per-fold differences (each fold's "
        f"seeds averaged first). Why: the {k} classifiers of a seed are trained on "
        f"overlapping images (any two folds' training sets share about "
        f"{100 * (k - 2) / (k - 1):.0f}% of their images), so their scores are correlated "
        "and the plain 1/J variance is too small; the n_test/n_train term (here "
        f"{analysis.ratio:.3g}; {analysis.ratio_basis}) corrects for it. Why folds and "
        "not every (fold, seed) unit as J: a fold's seeds share its training and test "
        "images, so they are not separate resamples of the data (counted as such the test "
        "rejects too often when folds differ more than seeds do).",
        "- The paired t-test (`scipy.stats.ttest_rel`) and the Wilcoxon signed-rank over "
        "the (fold, seed) units are shown for reference only: they treat the units as "
        "independent, which overlapping training sets and shared test images make them "
        "not, so their p-values are too small.",
        f"- Wilcoxon signed-rank {wilcoxon}",
        "- McNemar on the per-image predictions pooled over folds and seeds, paired by (seed, "
        "image): every image is in exactly one test fold, so each seed contributes one "
        "prediction per image; the seeds are pooled as separate (seed, image) pairs, not "
        f"voted into one. {mcnemar}",
        "- Cohen's d_z = mean / std of the per-unit differences (n/a with identical differences).",
    ]


def render(
    analysis: Analysis,
    quality: QualityReport | None,
    *,
    quality_skipped: str,
    params: Params,
    layout: Layout,
) -> str:
    """The whole report as markdown text (deterministic for the same inputs).

    ``quality`` is None when the synthetic images could not be assessed; then
    ``quality_skipped`` says why. Figures are linked relatively, as ``compare/*.png``.
    """
    conf = int(round(100 * (1 - analysis.alpha)))
    n_test = analysis.n_test
    train = params.train
    conditions = ", ".join(f"`{condition}`" for condition in analysis.conditions)
    backbone = "frozen backbone" if train.freeze_backbone else "all weights trained"
    if train.patch_size is not None:
        evaluation = {
            "whole": "the whole rescaled image",
            "grid": f"a grid of {train.patch_size} px patches",
            "crop": f"a {train.input_size} px centre crop",
        }[train.eval]
        symmetric = ", averaged over its 8 rotations/flips" if train.eval_symmetries else ""
        pipeline = (
            f"{train.patches_per_image} random {train.patch_size} px patches per image per "
            f"epoch of the images rescaled by {train.scale:g}, tested on {evaluation}{symmetric}"
        )
    else:
        pipeline = f"the study's {train.input_size} px crops of the whole image"
    seed_list = ", ".join(map(str, analysis.seeds))
    facts = provenance.describe(params, layout)
    noun = "sample-set" if facts.is_sample else "real"  # sample images are not real data
    lines = [
        "# Does augmentation help? Comparison report",
        "",
        f"- **Data**: {facts.data}.",
        f"- **Synthetic images**: {facts.generator}.",
        f"- **Classifier**: {facts.classifier}.",
        f"- **Profile**: {facts.profile}.",
        "",
        "## What was run",
        "",
        f"- Conditions: {conditions}; classifier `{train.arch}` "
        f"(weights `{train.weights}`, {backbone}), "
        f"{train.epochs} epochs, {pipeline}; the test-set numbers come from the "
        "epoch with the best validation accuracy.",
        f"- Budget: {budget_line(params, layout, analysis.conditions)}",
        *_design_lines(analysis, seed_list=seed_list, noun=noun),
        f"- One test image is {100 / n_test:.1f} accuracy points{_per_unit_image(analysis)}; "
        f"significance level {analysis.alpha:g}; {params.compare.bootstrap_resamples} "
        f"bootstrap resamples (seed {params.compare.seed}).",
    ]
    n_units = len(analysis.units)
    unit = "seed" if analysis.n_folds == 1 else "(fold, seed) unit"
    if n_units < 2:
        lines.append(
            "- **Only one seed: the seed-level tests (paired t, Wilcoxon) and the confidence "
            "intervals need at least two seeds.** Only McNemar's per-image test is reported."
        )
    if n_units < 6:
        lines.append(
            f"- With {n_units} {unit}{'s' if n_units != 1 else ''}, the exact Wilcoxon test "
            f"cannot reach p < 0.05 whatever the data (smallest possible p = "
            f"{stats.wilcoxon_min_p(n_units):.3g}; six {unit}s are the minimum)."
        )
    lines += ["", "## Verdicts (accuracy, augmented minus base)", ""]
    if not analysis.verdicts:
        lines.append("No `base` condition: nothing to compare against.")
    for condition, line in analysis.verdicts.items():
        lines.append(f"- **{condition}**: {line}")
    if analysis.f1_verdicts:
        lines += ["", "Macro-F1, same pairing (no McNemar: F1 is not a per-image outcome):", ""]
        lines += [f"- {condition}: {line}" for condition, line in analysis.f1_verdicts.items()]
    if analysis.power:
        lines += [
            "",
            "What this design can resolve (smallest true accuracy difference detected; a "
            "difference smaller than this going undetected is not evidence of no effect):",
            "",
        ]
        for condition, powers in analysis.power.items():
            lines += [f"- {condition}: " + "; ".join(stats.power_line(p) for p in powers)]

    lines += ["", "## Test-set results per condition", ""]
    lines += _results_table(analysis, conf=conf)
    if analysis.comparisons:
        folds = analysis.n_folds > 1
        lines += [
            "",
            "## Paired comparisons against base",
            "",
            f"| condition | Δ accuracy (points) [{conf}% CI{', corrected t' if folds else ''}] | "
            + ("corrected t p | paired t p (units) | Wilcoxon p (units) | " if folds else "")
            + ("" if folds else "paired t p | Wilcoxon p | ")
            + "Cohen's d_z | McNemar b / c | McNemar p | odds ratio c/b |",
            "|---|---|---|---|---|---|---|---|" + ("---|" if folds else ""),
        ]
        for condition, comps in analysis.comparisons.items():
            acc, mcn = comps["accuracy"], analysis.mcnemar[condition]
            ci = acc.corrected if acc.corrected is not None else acc.diff
            corrected = f" | {format_p(acc.corrected.test.p)}" if acc.corrected else ""
            lines.append(
                f"| {condition} | {100 * acc.diff.mean:+.1f} "
                f"[{_pct(ci.ci_low)}, {_pct(ci.ci_high)}]{corrected}"
                f" | {format_p(acc.t.p)} | {format_p(acc.wilcoxon.p)} | {_f(acc.dz, '.2f')} "
                f"| {mcn.b} / {mcn.c} | {format_p(mcn.p)} ({mcn.method}) "
                f"| {_f(mcn.odds_ratio, '.2f')} |"
            )
        notes = sorted(
            {
                f"{condition}: {test.note}"
                for condition, comps in analysis.comparisons.items()
                for test in (
                    comps["accuracy"].t,
                    comps["accuracy"].wilcoxon,
                    *([comps["accuracy"].corrected.test] if comps["accuracy"].corrected else []),
                )
                if test.note
            }
        )
        lines += ["", "How to read it:", ""]
        lines += _reading(analysis)
        lines += [f"- Note — {note}" for note in notes]

    lines += [
        "",
        "## Figures",
        "",
        "![Validation accuracy per epoch](compare/val_accuracy.png)",
        "",
        f"Validation accuracy per epoch: thick line the mean over {unit}s, band min-max, "
        f"thin lines single {unit}s.",
        "",
        f"![Test accuracy per {unit}](compare/test_accuracy.png)",
        "",
        "![Confusion matrices summed over seeds](compare/confusion_matrices.png)",
        "",
    ]
    lines += _quality_section(
        quality, quality_skipped, layout, is_sample=facts.is_sample, folds=analysis.n_folds
    )
    return "\n".join(lines) + "\n"


def _quality_section(
    quality: QualityReport | None, skipped: str, layout: Layout, *, is_sample: bool, folds: int
) -> list[str]:
    lines = ["## Synthetic images", ""]
    if folds > 1:
        lines += [
            f"Judged here: **fold {layout.fold}'s generator only**, one of {folds}. Each "
            "fold's `synthetic` classifiers trained with their own fold's generator; the "
            "other folds' synthetic sets are not assessed in this report (their contact "
            "sheets are in `folds/fold_<f>/`).",
            "",
        ]
    sheet = layout.fold_reports / "synthetic_contact_sheet.png"
    if sheet.is_file():
        link = sheet.relative_to(layout.reports).as_posix()
        lines += [f"![Real vs synthetic contact sheet, fold {layout.fold}]({link})", ""]
    if quality is None:
        return lines + [f"Quality not assessed: {skipped}", ""]
    if is_sample:
        lines += [
            "Here *real* means the images of the generated sample set (not lymphoma data), "
            "as opposed to the diffusion model's output.",
            "",
        ]
    lines += [
        f"Feature extractor: **{quality.extractor_description}**. FID/KID values from "
        "different extractors are not comparable with each other or with published FIDs."
        + (
            f" The features were divided by {quality.feature_scale:.3g}, the root-mean-square "
            "of the real training features (a classifier's features have no conventional scale)."
            if quality.feature_scale != 1.0
            else ""
        ),
        "",
    ]
    lines += _validation_lines(quality)
    if quality.metrics is None:
        failed = ", ".join(check.name for check in quality.validation.failures)
        lines += [
            f"**The image metrics cannot be computed with this extractor**: it fails "
            f'"{failed}" on real images alone. With features that do not tell real images '
            "apart, a distance between image sets means nothing (coloured noise can land "
            "nearer a training image than two real images are), so no FID, KID, "
            "train-on-synthetic accuracy or feature-space near-copy count is given. A "
            "validated extractor: ImageNet Inception-v3 or AlexNet weights in torchvision's "
            "cache (`compare.feature_extractor: auto`, `inception` or `alexnet`).",
            "",
        ]
    else:
        lines += _metrics_lines(quality.metrics, quality)
    return lines + [pixel_line(quality.pixels), ""]


def pixel_line(pixels: PixelMatch) -> str:
    """The extractor-free copy check in one paragraph: synthetic beside held-out real."""

    def spread(values) -> str:
        return f"median {np.median(values):.3f}, max {np.max(values):.3f}"

    n = len(pixels.synthetic)
    if not n:
        return "**Copies in pixel space**: no synthetic image to check."
    method = (
        f"**Copies in pixel space** (no feature extractor): the centre {pixels.patch} x "
        f"{pixels.patch} px of each image, in grey at the classifier's scale (x{pixels.scale:g}), "
        "slid over every position of every training image, also flipped either way or both "
        "(a generator trained with random flips may return a training image mirrored); the "
        "highest normalised cross-correlation (NCC, 1 = the same pixels up to brightness and "
        "contrast) is kept. "
    )
    if not pixels.held_out.size:
        yardstick, above = "no held-out real image to compare with", ""
    else:
        yardstick = (
            f"held-out real images, which the generator never saw, {spread(pixels.held_out)}"
        )
        above = (
            f" **{pixels.above_held_out} of {n}** synthetic images are nearer a training "
            "image than any held-out real image is;"
        )
    return (
        f"{method}Synthetic images: {spread(pixels.synthetic)}; {yardstick}.{above} "
        f"**{pixels.copies} of {n}** reach {COPY_NCC:g} (a copy)."
    )


def _validation_lines(quality: QualityReport) -> list[str]:
    """The extractor's checks on real images, with the rule each must meet."""
    from lymphaug.comparison import extractor_check

    validation = quality.validation
    verdict = "passes every check" if validation.valid else "**fails**"
    lines = [
        f"Extractor check, on real images only, before any synthetic image is looked at: it "
        f"{verdict} (rules: `{extractor_check.__name__}`).",
        "",
        "| check | measured | rule | result |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {check.name} | {check.measured} | {check.rule} | "
        f"{'pass' if check.passed else '**fail**'} |"
        for check in validation.checks
    ]
    own = (
        f"the `base` classifier scores {_pct(validation.classifier_accuracy)}% on the "
        f"{quality.n_test} test images; "
        if validation.classifier_accuracy is not None
        else ""
    )
    lines += [
        "",
        f"Its own accuracy (stated, not a rule): {own}a linear probe on its features "
        f"(trained on the training images, scored on the {quality.n_test} test images) "
        f"{_pct(validation.probe_accuracy)}%; chance is {100 / validation.n_classes:.1f}%.",
        "",
    ]
    return lines


def how_far_line(far: HowFar | None) -> str:
    """The plain sentence: synthetic-to-real distance in units of real-to-real."""
    from lymphaug.comparison.synthetic_quality import CLOSE_FACTOR, FAR_FACTOR, SAME_SIZE_SUBSETS

    if far is None:
        return "- How far from the real images: not measurable (a set with under two images)."
    verdict = {
        "far": f"**far from the real images** (at least {FAR_FACTOR:g}x a real set's FID)",
        "farther": f"farther from the real images than real images are (under {FAR_FACTOR:g}x)",
        "close": f"about as close to the training images as real images are (within "
        f"{CLOSE_FACTOR:g}x)",
    }[far.verdict]
    return (
        f"- **How far from the real images**: {far.fid_ratio:.1f}x as far as a real set of the "
        f"same size: {far.size} synthetic images against the training images score FID "
        f"{far.fid_synthetic:.4g}, {far.size} real validation images {far.fid_real:.4g} (mean of "
        f"{SAME_SIZE_SUBSETS} seeded subsets); a synthetic image's nearest training image is a "
        f"median {far.nn_synthetic:.3f} away (cosine), {far.nn_ratio:.1f}x the {far.nn_real:.3f}"
        f" of a real held-out image. The synthetic set is {verdict}."
    )


def _metrics_lines(synthetic: SyntheticMetrics, quality: QualityReport) -> list[str]:
    lines = [
        how_far_line(synthetic.how_far),
        "",
        "| class | real train | synthetic | FID | KID (± std over subsets) | subset | "
        "real-vs-real FID | real-vs-real KID |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in synthetic.per_class:
        kid = "n/a" if row.kid is None else f"{row.kid:.4g} ± {row.kid_std:.3g}"
        lines.append(
            f"| {row.name} | {row.n_real} | {row.n_synthetic} | {_f(row.fid, '.4g')} | {kid} | "
            f"{row.kid_subset or 'n/a'} | {_f(row.fid_real_val, '.4g')} "
            f"| {_f(row.kid_real_val, '.4g')} |"
        )
    far = synthetic.how_far is not None and synthetic.how_far.verdict == "far"
    n_copies = len(synthetic.near_copies)
    copies = f"**{n_copies}** of {len(synthetic.distances)}" + (
        ": the set is far from the real images, not a copy of them" if far and not n_copies else ""
    )
    lines += [
        "",
        "FID: Fréchet distance between Gaussians fitted to the real training and synthetic "
        "features (exact, computed in the images' span). KID: unbiased polynomial-kernel MMD², "
        "averaged over 100 seeded subsets of the size shown (at most the smaller set); for "
        "two sets from one distribution it scatters around 0, negative down to about minus "
        "the error scale F of the extractor check. With a few dozen images per class both "
        "are noisy: the real-vs-real columns (training vs validation images of the class) show "
        "what two real sets of this size score.",
        "",
        f"- Train on synthetic, test on real (TSTR): **{_pct(synthetic.tstr_accuracy)}%** on "
        f"{quality.n_test} real test images; the same probe trained on the real training "
        f"images (TRTR): {_pct(quality.validation.probe_accuracy)}%. Probe: multinomial "
        "logistic regression (L-BFGS, L2) on the standardised extractor features; not the "
        "study's classifier.",
        f"- Memorisation: cosine distance (features centred by the training mean) from each "
        f"synthetic image to its nearest training image; real training images lie a median "
        f"{synthetic.real_nn_median:.3f} from their nearest other training image. Near copies "
        f"(distance < {synthetic.threshold:g}): {copies}.",
    ]
    if synthetic.near_copies:
        lines += [
            "",
            "| synthetic | nearest training | distance | its img2img source |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {copy.synthetic} | {copy.nearest} | {copy.distance:.4f} | "
            f"{'yes' if copy.same_as_source else 'no'} |"
            for copy in synthetic.near_copies
        ]
    lines += [
        "",
        "![Closest synthetic / training pairs](compare/nearest_pairs.png)",
        "",
        "Every distance: `compare/nearest_training.csv`.",
        "",
    ]
    return lines
