"""Classifier training: real tiny models, real optimisation, real files."""

from __future__ import annotations

from pathlib import Path

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
from lymphaug.train import note_slow_precision, train_condition, write_outputs


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


def test_bf16_note_only_where_bf16_is_emulated():
    """bf16 on a CPU without native support is slower than fp32: the note says so, by key."""
    cpu, native = torch.device("cpu"), torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert note_slow_precision("fp32", cpu) is None
    assert note_slow_precision("bf16", torch.device("cuda", 0)) is None
    note = note_slow_precision("bf16", cpu)
    assert (note is None) == native
    if note is not None:
        assert "train.precision" in note and "fp32" in note


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
    params = tiny_params(synthetic_dir="data/nowhere/fold_{fold}")
    with pytest.raises(DataError, match="data/nowhere/fold_0 does not exist"):
        load_splits("synthetic", params, layout)


def test_a_set_from_another_fold_or_split_is_refused(tmp_path):
    """The leakage check knows the fold: fold 1's DCT set (learned from images that include
    fold 0's test images) handed to a fold-0 classifier is refused, naming the manifest;
    so is a synthetic set made before fold 0's split file changed."""
    import shutil

    fold0 = make_dataset(tmp_path, fold=0)
    fold1 = make_dataset(tmp_path, fold=1)
    shutil.rmtree(fold0.dct)
    shutil.copytree(fold1.dct, fold0.dct)  # e.g. copied by hand, or a wrong override
    with pytest.raises(
        LeakageError,
        match=rf"{fold0.dct / 'manifest.csv'}: made from fold\(s\) \[1\], but this classifier "
        "trains on fold 0",
    ):
        load_splits("dct", tiny_params(), fold0)
    assert len(load_splits("dct", tiny_params(), fold1).train) > 0  # its own fold's: fine
    split = manifest.read_table(fold0.split_csv, manifest.SPLIT_COLUMNS)
    split.loc[split.index[split["split"] == "train"][0], "split"] = "val"  # changed since
    manifest.write_table(split, fold0.split_csv, manifest.SPLIT_COLUMNS)
    with pytest.raises(LeakageError, match="the split changed since this set was made"):
        load_splits("synthetic", tiny_params(), fold0)


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


# --- architectures: every torchvision name trains or is refused at start-up --------------------


@pytest.mark.parametrize(
    ("arch", "size", "weights", "refusal"),
    [
        ("googlenet", 96, "none", None),  # main logits, auxiliary heads off
        ("inception_v3", 96, "none", None),
        ("inception_v3", 64, "none", r"inception_v3 cannot train at train.input_size 64 .*75 px"),
        ("alexnet", 32, "none", r"alexnet cannot train at train.input_size 32 .*63 px"),
        ("squeezenet1_1", 96, "none", r"no linear last layer to replace"),
        ("vit_b_16", 96, "none", None),  # built for 96 px
        ("vit_h_14", 96, "none", r"vit_h_14 cannot train at .*multiple of its patch size, 14"),
        ("vit_b_16", 96, "imagenet", r"ImageNet weights are for 224 px inputs"),
        ("maxvit_t", 96, "none", r"maxvit_t cannot train at .*multiple of 224"),
        ("maxvit_t", 224, "none", None),
        ("swin_t", 96, "none", None),
        ("regnet_y_128gf", 96, "none", None),  # 644M weights: still no memory on the meta device
    ],
)
def test_architecture_is_decided_at_start_up(arch, size, weights, refusal):
    from lymphaug.classifier.model import check_architecture

    if refusal is None:
        check_architecture(arch, input_size=size, weights=weights)
    else:
        with pytest.raises(WeightsError, match=refusal):
            check_architecture(arch, input_size=size, weights=weights)


def test_cli_refuses_an_unusable_architecture_in_one_line(tmp_path, capsys):
    import yaml

    from lymphaug.cli import main

    params = tiny_params(tmp_path, arch="inception_v3", input_size=64).model_dump()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path), "train"]
    assert main([*argv, "--condition", "base", "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lymphaug train: error: train.arch inception_v3 cannot train at")
    assert len(err.splitlines()) == 1 and not (tmp_path / "mlflow.db").exists()


def test_googlenet_takes_torchvision_weights_with_auxiliary_heads(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.googlenet(aux_logits=True, init_weights=False)
    path = tmp_path / "googlenet.pth"
    torch.save(ref.state_dict(), path)
    assert any(k.startswith("aux1.") for k in ref.state_dict())
    model = build_classifier("googlenet", 3, str(path))
    assert torch.equal(model.body.conv1.conv.weight, ref.conv1.conv.weight)
    model.train()
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)  # logits, not a namedtuple


@pytest.mark.slow
def test_every_torchvision_model_trains_one_step_or_is_refused(base_splits, layout):
    """Every name in list_models at the configured size (params.yaml: 96 px, no weights) is
    decided on the meta device; one network of each kind really trains one step."""
    import torchvision

    from lymphaug.classifier.data import ImageSet
    from lymphaug.classifier.model import check_architecture

    size = 96
    refused = {}
    for arch in torchvision.models.list_models(module=torchvision.models):
        try:
            check_architecture(arch, input_size=size, weights="none")
        except WeightsError as err:
            assert str(err).startswith(f"train.arch {arch}") or "linear last layer" in str(err)
            refused[arch] = str(err)
    assert set(refused) == {"maxvit_t", "squeezenet1_0", "squeezenet1_1", "vit_h_14"}, refused
    one_batch = ImageSet(base_splits.train.images[:4], base_splits.train.labels[:4], [])
    val = ImageSet(base_splits.val.images[:2], base_splits.val.labels[:2], [])
    # one of each kind (the rest of a family shares its code): plain, residual, dense,
    # inverted-residual with squeeze-excitation, shuffle, RegNet, ConvNeXt, the two with
    # auxiliary heads, shifted-window and plain vision transformers
    for arch in (
        "alexnet",
        "vgg11_bn",
        "resnet18",
        "densenet121",
        "efficientnet_b0",
        "mobilenet_v3_small",
        "shufflenet_v2_x0_5",
        "regnet_y_400mf",
        "convnext_tiny",
        "googlenet",
        "inception_v3",
        "swin_t",
        "vit_b_32",
    ):
        cfg = tiny_params(arch=arch, input_size=size, batch_size=4, epochs=1).train
        torch.manual_seed(0)
        model = build_classifier(arch, 3, "none", input_size=size)
        before = [p.detach().clone() for p in model.head.parameters()]
        result = fit(model, one_batch, val, cfg=cfg, seed=0, classes=CLASSES)
        assert np.isfinite(result.history[0]["train_loss"]), arch
        assert not torch.equal(before[0], model.head.weight), f"{arch} did not step"


def test_device_names_a_gpu_this_machine_has():
    from lymphaug.common.errors import ConfigError
    from lymphaug.train import check_device

    assert check_device("cpu").type == "cpu"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    message = f"only {n} CUDA GPU" if n else "no CUDA GPU is visible"
    with pytest.raises(ConfigError, match=rf"train.device is 'cuda:{n}' but {message}"):
        check_device(f"cuda:{n}")


# --- faults: disk full, a second run, leftovers --------------------------------------------------


def test_disk_full_at_the_checkpoint_is_one_message_and_leaves_nothing(
    base_splits, layout, tmp_path, monkeypatch
):
    """torch.save writes into /dev/full: the kernel's ENOSPC through torch's own writer."""
    from pathlib import Path

    from lymphaug.common.errors import DiskFullError

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    real_save = torch.save

    def save_to_a_full_disk(obj, f, *args, **kwargs):
        with open("/dev/full", "wb") as full:
            real_save(obj, full, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    work = tmp_path / "work"
    params = tiny_params(epochs=1, arch="mobilenet_v3_small")
    with pytest.raises(DiskFullError) as err:
        train_condition(params, base_splits, seed=0, root=layout.root, work_dir=work)
    assert str(err.value).startswith(f"no space left on device writing {work / CHECKPOINT} (")
    assert "free there" in str(err.value) and "\n" not in str(err.value)
    assert list(work.iterdir()) == []  # no .checkpoint.pt.*.tmp


def test_a_second_train_of_the_same_condition_and_seed_refuses_at_once(tmp_path, capsys):
    """The probe's case: the second deleted the first's MLflow run. It must not get that far."""
    import time

    import yaml
    from fixtures.processes import hold

    from lymphaug.cli import main

    root = tmp_path / "repo"
    make_dataset(root, dct=False, synthetic=False)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(root).model_dump()))
    lock = root / "work" / "train" / "fold_0" / "base" / "seed_0" / ".lock"
    proc = hold(lock)
    try:
        argv = ["--params", str(root / "params.yaml"), "--root", str(root), "train"]
        start = time.monotonic()
        assert main([*argv, "--condition", "base", "--seed", "0"]) == 2
        assert time.monotonic() - start < 10
        err = capsys.readouterr().err.strip()
        assert err == (
            "lymphaug train: error: lymphaug train --condition base --fold 0 --seed 0 is already "
            f"running: process {proc.pid} holds the lock {lock}. Wait for it to finish (or "
            "stop it), then rerun"
        )
        assert not (root / "mlflow.db").exists()  # refused before MLflow was touched
    finally:
        proc.kill()
        proc.wait()


def test_leftovers_of_killed_and_other_params_runs_are_found(tmp_path):
    from lymphaug.common.paths import Layout
    from lymphaug.train import clean_stale

    lay = Layout(tmp_path)
    work = lay.work / "train" / "fold_0" / "base" / "seed_0" / "aaaaaaaaaaaaaaaa"
    other = work.with_name("bbbbbbbbbbbbbbbb")
    leftovers = [
        lay.classifier("base", 0).parent / ".seed_0.x1.tmp",
        lay.train_report("base", 0) / ".metrics.json.x2.tmp",
        work / ".checkpoint.pt.x3.tmp",
        other / CHECKPOINT,
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (work / CHECKPOINT).write_bytes(b"the current run's")
    removed = clean_stale(lay, work, condition="base", seed=0)
    assert sorted(removed) == sorted([*leftovers[:3], other])
    assert [p.name for p in work.iterdir()] == [CHECKPOINT]


@pytest.mark.slow
def test_two_real_trains_of_one_condition_and_seed(tmp_path):
    """While one `lymphaug train` trains, a second refuses at once; the first's run survives."""
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from fixtures.processes import env_with_src
    from mlflow.tracking import MlflowClient

    root = tmp_path / "repo"
    make_dataset(root, dct=False, synthetic=False)
    params = tiny_params(root, arch="mobilenet_v3_small", epochs=8, freeze_backbone=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump()))
    train = [sys.executable, "-m", "lymphaug.cli", "train", "--condition", "base", "--seed", "0"]
    env = {k: v for k, v in env_with_src().items() if not k.startswith("MLFLOW_")}
    env["LYMPHAUG_PIPELINE_ID"] = "two-trains"
    first = subprocess.Popen(train, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list((root / "work" / "train").rglob(CHECKPOINT)):
            assert first.poll() is None and time.monotonic() < deadline, "first run ended"
            time.sleep(0.05)
        # hold the first run mid-training (a stopped process keeps its lock) while the second
        # starts: on a fast CPU the first could otherwise finish before the second is up
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(train, cwd=root, env=env, capture_output=True, text=True)
            assert first.poll() is None, "the second run must refuse while the first trains"
        finally:
            first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=300)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    lock = Path("work/train/fold_0/base/seed_0/.lock")
    assert second.stderr.strip().splitlines()[-1] == (
        "lymphaug train: error: lymphaug train --condition base --fold 0 --seed 0 is already "
        "running: "
        f"process {first.pid} holds the lock {lock}. Wait for it to finish (or stop it), then rerun"
    )
    assert first.returncode == 0, out
    client = MlflowClient(params.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    runs = client.search_runs(
        [exp.experiment_id], "attributes.run_name = 'train base fold=0 seed=0'"
    )
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert list((root / "work/train/fold_0/base/seed_0").iterdir()) == []  # work removed
