"""The histology recipe end to end on real tiny models: patches, whole-image and grid
evaluation, AdamW + warm-up + cosine, exact resume, and the start-up checks."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml
from fixtures.classifier_data import make_dataset, tiny_params

from lymphaug.classifier.checks import check_input_pipeline
from lymphaug.classifier.data import load_splits
from lymphaug.classifier.evaluate import eval_views, predict_proba
from lymphaug.classifier.loop import lr_factor, make_optimizer
from lymphaug.classifier.model import WeightsError, build_classifier
from lymphaug.cli import main
from lymphaug.common import manifest
from lymphaug.common.config import TrainConfig
from lymphaug.common.errors import ConfigError
from lymphaug.train import train_condition

RECIPE = dict(
    arch="lymphaug_cnn",
    width=8,
    scale=0.5,
    patch_size=16,
    patches_per_image=3,
    eval="whole",
    dihedral=True,
    hed_jitter=0.1,
    brightness=0.1,
    contrast=0.1,
    saturation=0.1,
    optimizer="adamw",
    learning_rate=5.0e-3,
    lr_schedule="cosine",
    warmup_fraction=0.1,
    weight_decay=0.05,
    label_smoothing=0.1,
    batch_size=8,
)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), per_split=(8, 4, 4))


@pytest.fixture(scope="module")
def splits(layout):
    return load_splits("base", tiny_params(**RECIPE), layout)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_scale_halves_the_decoded_images(splits):
    assert {tuple(im.shape) for im in splits.train.images} == {(3, 24, 32)}  # 48 x 64 / 2


def test_patch_recipe_learns_the_fixture_set(layout, splits):
    params = tiny_params(**{**RECIPE, "epochs": 12})
    out = train_condition(params, splits, seed=0, root=layout.root)
    history = out.fit.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert out.metrics["test_accuracy"] >= 0.75  # 12 test images, 3 classes: chance is 1/3


@pytest.mark.parametrize("evaluation", ["whole", "grid"])
def test_patch_recipe_resumes_exactly(layout, splits, tmp_path, evaluation):
    params = tiny_params(**{**RECIPE, "epochs": 3, "eval": evaluation})
    full = train_condition(params, splits, seed=2, root=layout.root)
    work = tmp_path / "work"
    killed = train_condition(
        params, splits, seed=2, root=layout.root, work_dir=work, stop_after_epoch=1
    )
    assert not killed.fit.finished
    resumed = train_condition(params, splits, seed=2, root=layout.root, work_dir=work)
    assert resumed.fit.resumed_from == 1
    assert resumed.fit.history == full.fit.history
    a, b = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(resumed.predictions, full.predictions)


def test_eval_views_and_probabilities(splits):
    cfg = TrainConfig(**{**RECIPE, "eval": "grid"})
    views = eval_views(splits.test.images, cfg)
    assert views[0].shape == (2 * 2, 3, 16, 16)  # 24 x 32 image: rows 0, 8; columns 0, 16
    whole = eval_views(splits.test.images, TrainConfig(**RECIPE))
    assert whole[0].shape == (1, 3, 24, 32)
    symmetric = eval_views(splits.test.images, TrainConfig(**RECIPE), symmetric=True)
    assert [tuple(v.shape) for v in symmetric[0]] == [(3, 24, 32), (3, 32, 24)] * 4
    torch.manual_seed(0)
    model = build_classifier("lymphaug_cnn", 3, "none", width=8)
    assert predict_proba(model, symmetric, batch=7).sum(axis=1) == pytest.approx(1.0)
    probs = predict_proba(model, views, batch=5)
    assert probs.shape == (len(views), 3)
    assert probs.sum(axis=1) == pytest.approx(1.0)
    # batching across images does not change an image's prediction
    one = predict_proba(model, views[:1], batch=64)
    assert one[0] == pytest.approx(probs[0], abs=1e-6)


def test_adamw_does_not_decay_norms_and_biases():
    model = build_classifier("lymphaug_cnn", 3, "none", width=8)
    opt = make_optimizer(list(model.named_parameters()), TrainConfig(**RECIPE))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"])
    assert all(p.ndim == 1 for p in plain["params"])  # BatchNorm scales/shifts, biases
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine():
    f = [lr_factor(s, total_steps=100, warmup_fraction=0.1, schedule="cosine") for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(f[10:], f[11:], strict=False))  # strictly decaying
    assert f[-1] < 0.01
    assert lr_factor(50, total_steps=100, warmup_fraction=0.0, schedule="constant") == 1.0
    assert lr_factor(10, total_steps=20, warmup_fraction=0.0, schedule="cosine") == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.5))
    )


def test_small_stem_resnet_keeps_small_patches_large():
    model = build_classifier("resnet18", 3, "none", small_stem=True)
    assert model.body.conv1.stride == (1, 1) and isinstance(model.body.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(Exception, match="small_stem"):
        build_classifier("alexnet", 3, "none", small_stem=True)


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"optimizer": "lamb"}, r"train\.optimizer"),
        ({"lr_schedule": "onecycle"}, r"train\.lr_schedule"),
        ({"eval": "grid"}, r"train\.patch_size"),
        ({"dihedral": True}, r"train\.patch_size"),
    ],
)
def test_bad_recipe_params_name_the_key(train, match):
    with pytest.raises(ConfigError, match=match):
        tiny_params(**train)


def _raw(tmp_path, width: int, height: int):
    """A raw manifest recording two images of about ``width`` x ``height`` px."""
    rows = [
        ["CLL/a.png", "CLL", "x", width, height, "t"],
        ["FL/b.png", "FL", "x", width + 10, height, "t"],
    ]
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=manifest.RAW_COLUMNS).to_csv(path, index=False)
    return path


def test_patch_larger_than_the_rescaled_image_is_refused(tmp_path):
    cfg = TrainConfig(**{**RECIPE, "patch_size": 96, "scale": 0.25})
    with pytest.raises(ConfigError, match=r"train\.patch_size=96.*train\.scale=0\.25.*104 x 78"):
        check_input_pipeline(cfg, _raw(tmp_path, 417, 312), 3)
    check_input_pipeline(TrainConfig(**{**RECIPE, "patch_size": 64}), _raw(tmp_path, 417, 312), 3)


def test_scale_below_the_networks_minimum_input_is_refused(tmp_path):
    # lymphaug_cnn pools four times: a whole image of 17 x 12 px has nothing left to pool
    cfg = TrainConfig(arch="lymphaug_cnn", scale=0.04, input_size=32, eval="whole")
    with pytest.raises(ConfigError, match=r"cannot take 17 x 12 px evaluation input.*scale=0\.04"):
        check_input_pipeline(cfg, _raw(tmp_path, 417, 312), 3)
    # a torchvision model too small for its training input is refused by the architecture check
    with pytest.raises(WeightsError, match=r"alexnet cannot train at train\.input_size 32"):
        check_input_pipeline(
            TrainConfig(arch="alexnet", input_size=32), _raw(tmp_path, 417, 312), 3
        )


def test_the_check_runs_before_any_image_is_decoded(tmp_path, capsys):
    layout = make_dataset(tmp_path, dct=False, synthetic=False)
    for png in layout.raw.rglob("*.png"):
        png.write_bytes(b"not an image")  # decoding would fail with another message
    params = {"train": {**RECIPE, "patch_size": 40, "seeds": [0]}}
    params["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "t"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path), "train"]
    rc = main([*argv, "--condition", "base", "--seed", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.patch_size=40" in err and "not a readable image" not in err
    assert len(err.strip().splitlines()) == 1
    assert manifest.read_table(layout.raw_manifest, manifest.RAW_COLUMNS)["width"].min() == 64
