"""Classifier training: real tiny models, real optimisation, real files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures.classifier_data import CLASSES, make_dataset, tiny_params

from lymphaug.classifier.data import load_splits
from lymphaug.classifier.evaluate import PREDICTION_COLUMNS, classification_metrics
from lymphaug.classifier.loop import CHECKPOINT, TrainingError, fit
from lymphaug.classifier.model import WeightsError, build_classifier, imagenet_weights
from lymphaug.classifier.transforms import eval_tensor, random_crops
from lymphaug.common import manifest
from lymphaug.common.errors import DataError, LeakageError
from lymphaug.train import train_condition, write_outputs


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def base_splits(layout):
    return load_splits("base", tiny_params(), layout)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_after_kill_equals_uninterrupted_run(layout, base_splits, tmp_path):
    params = tiny_params(epochs=3, arch="mobilenet_v3_small")  # small: cheap checkpoints
    full = train_condition(params, base_splits, seed=3, root=layout.root)
    work = tmp_path / "work"
    killed = train_condition(
        params, base_splits, seed=3, root=layout.root, work_dir=work, stop_after_epoch=1
    )
    assert not killed.fit.finished and len(killed.fit.history) == 1
    assert (work / CHECKPOINT).is_file()
    resumed = train_condition(params, base_splits, seed=3, root=layout.root, work_dir=work)
    assert resumed.fit.resumed_from == 1
    assert resumed.fit.history == full.fit.history
    assert resumed.metrics == full.metrics
    a, b = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(resumed.predictions, full.predictions)


def test_seeds_differ_and_history_keys(base_splits, layout):
    params = tiny_params(epochs=1)
    a = train_condition(params, base_splits, seed=0, root=layout.root)
    b = train_condition(params, base_splits, seed=1, root=layout.root)
    assert a.fit.history != b.fit.history
    assert list(a.history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert a.fit.best_epoch == 1


def test_frozen_backbone_trains_only_the_head(base_splits, layout):
    params = tiny_params(epochs=1, freeze_backbone=True)
    torch.manual_seed(0)
    before = build_classifier("resnet18", 3, "none")
    out = train_condition(params, base_splits, seed=0, root=layout.root)
    body_a, body_b = before.body.state_dict(), out.model.body.state_dict()
    assert all(
        torch.equal(body_a[k], body_b[k])
        for k in body_a
        if "running" not in k and "num_batches" not in k
    )
    assert not torch.equal(before.head.weight, out.model.head.weight)


def test_bf16_autocast_trains(base_splits, layout):
    out = train_condition(
        tiny_params(epochs=1, freeze_backbone=True, precision="bf16"),
        base_splits,
        seed=0,
        root=layout.root,
    )
    assert len(out.fit.history) == 1 and 0 <= out.metrics["test_accuracy"] <= 1


def test_outputs_written(base_splits, layout, tmp_path):
    params = tiny_params(epochs=1)
    out = train_condition(params, base_splits, seed=0, root=layout.root)
    from lymphaug.common.paths import Layout

    dest = Layout(tmp_path)
    files = write_outputs(out, params=params, layout=dest, condition="base", seed=0)
    assert [f.name for f in files] == ["metrics.json", "history.csv", "predictions.csv"]
    preds = pd.read_csv(files[2])
    assert list(preds.columns) == PREDICTION_COLUMNS + [f"prob_{c}" for c in CLASSES]
    assert len(preds) == len(base_splits.test)
    assert np.allclose(preds[[f"prob_{c}" for c in CLASSES]].sum(1), 1, atol=1e-4)
    assert preds["path"].str.startswith("data/raw/").all()
    state = torch.load(dest.classifier("base", 0) / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (3, 512)  # torchvision layout: reload with plain resnet18


def test_conditions_add_training_images_only(layout):
    params = tiny_params()
    base = load_splits("base", params, layout)
    dct = load_splits("dct", params, layout)
    syn = load_splits("synthetic", params, layout)
    assert len(dct.train) == 3 * len(base.train) and len(syn.train) == len(base.train) + 9
    for s in (dct, syn):
        assert s.val.paths == base.val.paths and s.test.paths == base.test.paths
    one = load_splits("dct", tiny_params(dct_methods=["method2"]), layout)
    assert len(one.train) == 2 * len(base.train)


def test_missing_synthetic_folder_is_named(layout):
    params = tiny_params(synthetic_dir="data/nowhere")
    with pytest.raises(DataError, match="data/nowhere does not exist"):
        load_splits("synthetic", params, layout)


def test_dct_image_of_a_test_image_is_refused(tmp_path):
    lay = make_dataset(tmp_path, synthetic=False)
    df = manifest.read_table(lay.dct / "manifest.csv", manifest.DCT_COLUMNS)
    split = manifest.read_table(lay.split_csv, manifest.SPLIT_COLUMNS)
    df.loc[0, "source"] = split[split["split"] == "test"]["path"].iloc[0]
    manifest.write_table(df, lay.dct / "manifest.csv", manifest.DCT_COLUMNS)
    with pytest.raises(LeakageError, match="outside the training split"):
        load_splits("dct", tiny_params(), lay)


def test_class_without_training_images(tmp_path):
    lay = make_dataset(tmp_path, dct=False, synthetic=False)
    split = manifest.read_table(lay.split_csv, manifest.SPLIT_COLUMNS)
    split.loc[(split["class"] == "FL") & (split["split"] == "train"), "split"] = "val"
    manifest.write_table(split, lay.split_csv, manifest.SPLIT_COLUMNS)
    with pytest.raises(DataError, match=r"\['FL'\] have no training images"):
        load_splits("base", tiny_params(), lay)


def test_nan_loss_stops_with_clear_error(base_splits, layout):
    params = tiny_params(epochs=3, learning_rate=1.0e30)
    with pytest.raises(TrainingError, match="loss became (nan|inf)"):
        train_condition(params, base_splits, seed=0, root=layout.root)


def test_checkpoint_of_another_arch_or_class_count(base_splits, tmp_path):
    params = tiny_params(epochs=2)
    torch.manual_seed(0)
    fit(
        build_classifier("resnet18", 3, "none"),
        base_splits.train,
        base_splits.val,
        cfg=params.train,
        seed=0,
        classes=CLASSES,
        work_dir=tmp_path,
        stop_after_epoch=1,
    )
    for arch, classes in (("alexnet", CLASSES), ("resnet18", ["a", "b"])):
        model = build_classifier(arch, len(classes), "none")
        cfg = tiny_params(epochs=2, arch=arch, input_size=64).train
        with pytest.raises(TrainingError, match="another architecture or class"):
            fit(
                model,
                base_splits.train,
                base_splits.val,
                cfg=cfg,
                seed=0,
                classes=classes,
                work_dir=tmp_path,
            )


def test_weights_from_a_local_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(1)
    ref = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    model = build_classifier("resnet18", 3, str(path))
    assert torch.equal(model.body.conv1.weight, ref.conv1.weight)
    assert model.head.out_features == 3
    # a model this stage wrote (3-class head) loads back with its head
    path3 = tmp_path / "trained.pt"
    torch.save(model.torchvision_state_dict(), path3)
    again = build_classifier("resnet18", 3, str(path3))
    assert torch.equal(again.head.weight, model.head.weight)


def test_bad_weights_files(tmp_path):
    import torchvision

    not_sd = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_sd)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    other = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), other)
    cases = [
        (not_sd, "not a state dict"),
        (text, "not a PyTorch state dict"),
        (other, "do not fit resnet18"),
        (tmp_path / "nope.pth", "not found"),
    ]
    for path, msg in cases:
        with pytest.raises(WeightsError, match=msg):
            build_classifier("resnet18", 3, str(path))


def test_imagenet_weights_resolution_and_unknown_arch():
    assert imagenet_weights("alexnet").url.endswith(".pth")
    assert "resnet18" in imagenet_weights("resnet18").url
    with pytest.raises(WeightsError, match="unknown torchvision"):
        build_classifier("alexnetz", 3, "none")


def test_augment_is_seeded_and_shaped():
    imgs = [torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8) for _ in range(5)]
    a = random_crops(imgs, 32, torch.Generator().manual_seed(0))
    b = random_crops(imgs, 32, torch.Generator().manual_seed(0))
    c = random_crops(imgs, 32, torch.Generator().manual_seed(1))
    assert a.shape == (5, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert eval_tensor(imgs, 227).shape == (5, 3, 227, 227)


def test_classification_metrics():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y, p, CLASSES)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["FL"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
