"""Training budgets: epochs over every image (the study) or real-image epochs (equal steps)."""

from __future__ import annotations

import math

import torch
from fixtures.classifier_data import make_dataset, tiny_params

from lymphaug.classifier.data import ImageSet, load_splits
from lymphaug.classifier.loop import CHECKPOINT, epoch_order, fit, steps_per_epoch
from lymphaug.classifier.model import build_classifier
from lymphaug.common.config import TrainConfig


def image_set(n_real: int, n_extra: int) -> ImageSet:
    n = n_real + n_extra
    images = [torch.full((3, 8, 8), i % 256, dtype=torch.uint8) for i in range(n)]
    return ImageSet(images, torch.arange(n) % 3, [], n_real=n_real if n_extra else None)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(patch_size=8, patches_per_image=5, batch_size=8, **kw)


def order(data: ImageSet, config: TrainConfig, seed: int = 0) -> list[int]:
    return epoch_order(data, config, torch.Generator().manual_seed(seed))


def test_epochs_budget_passes_over_every_image_augmented_ones_included():
    data = image_set(10, 20)
    drawn = order(data, cfg(budget="epochs"))
    assert sorted(drawn) == sorted(list(range(30)) * 5)
    # three times the images, three times the steps: the study's budget
    assert steps_per_epoch(data, cfg(budget="epochs")) == math.ceil(30 * 5 / 8)
    assert steps_per_epoch(image_set(10, 0), cfg(budget="epochs")) == math.ceil(10 * 5 / 8)


def test_real_epochs_budget_gives_every_condition_the_same_steps():
    config = cfg(budget="real_epochs")
    steps = {steps_per_epoch(image_set(10, extra), config) for extra in (0, 5, 20, 200)}
    assert steps == {7}  # ceil(10 images x 5 patches / batch 8)
    assert {len(order(image_set(10, extra), config)) for extra in (0, 5, 20, 200)} == {50}


def test_real_epochs_mixes_augmented_images_at_the_configured_rate():
    data = image_set(100, 300)
    for fraction in (0.0, 0.25, 0.5, 1.0):
        drawn = torch.tensor(order(data, cfg(budget="real_epochs", augmented_fraction=fraction)))
        share = float((drawn >= 100).double().mean())
        assert abs(share - fraction) < 0.03, (fraction, share)
    # the augmented images are drawn across the whole pool, not just its first ones
    drawn = torch.tensor(order(data, cfg(budget="real_epochs", augmented_fraction=1.0)))
    assert drawn.min() >= 100 and drawn.max() >= 390 and len(set(drawn.tolist())) > 200


def test_base_condition_draws_the_same_order_under_both_budgets():
    """Base runs are unchanged by the budget: one base run serves both designs."""
    data = image_set(12, 0)
    assert order(data, cfg(budget="epochs"), 3) == order(data, cfg(budget="real_epochs"), 3)


def test_dct_condition_trains_the_base_conditions_number_of_steps(tmp_path):
    """A real fit: the optimiser's step count is the same for base and dct under real_epochs."""
    layout = make_dataset(tmp_path / "data", per_split=(4, 2, 2))
    steps = {}
    for condition in ("base", "dct"):
        params = tiny_params(
            epochs=2,
            arch="lymphaug_cnn",
            width=4,
            scale=0.5,
            patch_size=16,
            patches_per_image=3,
            eval="whole",
            budget="real_epochs",
        )
        splits = load_splits(condition, params, layout)
        torch.manual_seed(0)
        model = build_classifier("lymphaug_cnn", 3, "none", width=4)
        work = tmp_path / condition
        fit(
            model,
            splits.train,
            splits.val,
            cfg=params.train,
            seed=0,
            classes=list(params.classes),
            work_dir=work,
        )
        state = torch.load(work / CHECKPOINT, weights_only=True)["optimizer"]["state"]
        steps[condition] = int(next(iter(state.values()))["step"])
        assert splits.train.real_count == 12
    # 12 real training images x 3 patches per epoch, 2 epochs, whatever the dct set adds
    assert steps["dct"] == steps["base"] == 2 * math.ceil(12 * 3 / params.train.batch_size)
