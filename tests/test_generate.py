"""The generate stage: seeded per-image sampling, resume, img2img, bad input."""

from __future__ import annotations

import shutil

import pytest
from fixtures.diffusion_data import make_dataset, tiny_params

from lymphaug.common.config import parse_params
from lymphaug.common.errors import ConfigError, DataError
from lymphaug.common.images import read_rgb
from lymphaug.common.manifest import SPLIT_COLUMNS, SYNTHETIC_COLUMNS, read_table
from lymphaug.common.paths import Layout
from lymphaug.diffusion.loading import cpu_threads
from lymphaug.finetune import finetune
from lymphaug.generate import generate


@pytest.fixture(autouse=True)
def own_mlflow_store(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: keep each test on its own store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(autouse=True)
def one_thread():
    with cpu_threads("tiny"):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A repository with a tiny data set and a (briefly) fine-tuned tiny model."""
    root = tmp_path_factory.mktemp("trained")
    layout = make_dataset(root)
    with cpu_threads("tiny"):
        finetune(tiny_params(root, {"max_steps": 2}), layout, track=False)
    return root


@pytest.fixture
def layout(trained, tmp_path):
    """A fresh copy of the trained repository (tests write data/synthetic into it)."""
    root = tmp_path / "repo"
    shutil.copytree(trained, root)
    return Layout(root)


def _files(layout):
    return {
        p.relative_to(layout.synthetic).as_posix(): p.read_bytes()
        for p in sorted(layout.synthetic.rglob("*.png"))
    }


def test_generates_sized_images_manifest_and_sheet(layout, tmp_path):
    summary = generate(tiny_params(tmp_path), layout, track=True)
    assert summary["generated"] == 6
    files = _files(layout)
    assert sorted(files) == [f"{c}/{c}_{i:04d}.png" for c in ("CLL", "FL", "MCL") for i in (0, 1)]
    assert read_rgb(layout.synthetic / "FL/FL_0001.png").shape == (36, 48, 3)  # data set size
    df = read_table(layout.synthetic / "manifest.csv", SYNTHETIC_COLUMNS)
    assert list(df.columns) == SYNTHETIC_COLUMNS and len(df) == 6
    assert set(df["scheduler"]) == {"dpmsolver++"} and set(df["mode"]) == {"txt2img"}
    assert df["seed"].nunique() == 6 and (df["source"] == "").all()
    assert (layout.fold_reports / "synthetic_contact_sheet.png").stat().st_size > 0
    assert not list((layout.fold_work("generate")).iterdir())  # progress moved out

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lymphaug")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'generate fold=0'")
    assert run.data.tags["mlflow.parentRunId"] and run.data.metrics["generated"] == 6
    assert run.data.tags["fold"] == "0" and run.data.params["fold"] == "0"  # one run per fold
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"synthetic_contact_sheet.png", "manifest.csv"} <= logged


def test_same_params_same_bytes_whatever_the_batch_size(layout, tmp_path):
    generate(tiny_params(tmp_path, generate={"batch_size": 4}), layout, track=False)
    first = _files(layout)
    generate(tiny_params(tmp_path, generate={"batch_size": 1}), layout, track=False, resume=False)
    assert _files(layout) == first


def test_interrupted_generation_resumes_without_redoing_images(layout, tmp_path):
    params = tiny_params(tmp_path, generate={"batch_size": 1})
    generate(params, layout, track=False)
    reference = _files(layout)
    shutil.rmtree(layout.synthetic)
    made = []

    def stop_after_three(job):
        made.append(job.rel)
        if len(made) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(params, layout, track=False, on_image=stop_after_three)
    assert not layout.synthetic.exists()  # nothing published half-way
    (work,) = (layout.fold_work("generate")).iterdir()
    done = sorted(p.relative_to(work / "images").as_posix() for p in work.rglob("*.png"))
    assert done == sorted(made)
    seen = []
    summary = generate(params, layout, track=False, on_image=lambda job: seen.append(job.rel))
    assert summary["generated"] == 3 and summary["skipped"] == 3
    assert not set(seen) & set(done)  # finished images were not regenerated
    assert _files(layout) == reference  # and nothing is duplicated or different
    assert len(read_table(layout.synthetic / "manifest.csv", SYNTHETIC_COLUMNS)) == 6


def test_img2img_starts_from_training_images_of_the_class(layout, tmp_path):
    params = tiny_params(
        tmp_path, generate={"mode": "img2img", "strength": 0.5, "steps": 4, "scheduler": "euler"}
    )
    generate(params, layout, track=False)
    df = read_table(layout.synthetic / "manifest.csv", SYNTHETIC_COLUMNS)
    split = read_table(layout.split_csv, SPLIT_COLUMNS).set_index("path")
    assert (df["mode"] == "img2img").all() and (df["strength"] == 0.5).all()
    for _, row in df.iterrows():
        assert split.loc[row["source"], "split"] == "train"
        assert split.loc[row["source"], "class"] == row["class"]


@pytest.mark.parametrize("scheduler", ["ddpm", "pndm"])
def test_other_schedulers(layout, tmp_path, scheduler):
    params = tiny_params(tmp_path, generate={"scheduler": scheduler, "per_class": 1})
    generate(params, layout, track=False)
    df = read_table(layout.synthetic / "manifest.csv", SYNTHETIC_COLUMNS)
    assert set(df["scheduler"]) == {scheduler} and len(df) == 3


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5])
def test_strength_outside_zero_one(strength):
    with pytest.raises(
        ConfigError, match=r"generate\.strength.*(greater than 0|less than or equal to 1)"
    ):
        parse_params({"generate": {"strength": strength}})


def test_strength_too_small_for_the_steps(layout, tmp_path):
    params = tiny_params(tmp_path, generate={"mode": "img2img", "strength": 0.1, "steps": 5})
    with pytest.raises(ConfigError, match="leaves no denoising step"):
        generate(params, layout, track=False)


def test_missing_model_is_a_clear_error(tmp_path):
    layout = make_dataset(tmp_path)
    with pytest.raises(DataError, match="not a fine-tuned model.*lymphaug finetune"):
        generate(tiny_params(tmp_path), layout, track=False)


# --- faults: what is in the work folder is verified before it is published -------------------


def _interrupt_after(n: int):
    made = []

    def hook(job):
        made.append(job.rel)
        if len(made) == n:
            raise KeyboardInterrupt

    return hook


@pytest.mark.parametrize("damage", ["truncated", "pickle payload", "unrecorded"])
def test_a_damaged_finished_image_is_made_again_not_published(layout, tmp_path, damage):
    """The probe's case: a truncated PNG in the work folder was published with exit 0."""
    from fixtures.payloads import plant

    from lymphaug.common.images import decode_rgb

    params = tiny_params(tmp_path, generate={"batch_size": 1})
    generate(params, layout, track=False)
    reference = _files(layout)
    shutil.rmtree(layout.synthetic)
    with pytest.raises(KeyboardInterrupt):
        generate(params, layout, track=False, on_image=_interrupt_after(3))
    (work,) = (layout.fold_work("generate")).iterdir()
    victim = sorted((work / "images").rglob("*.png"))[0]
    marker = tmp_path / "pwned"
    if damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "pickle payload":
        plant(victim, marker)
    else:  # an image without a record: killed between the write and the record
        lines = (work / "finished.jsonl").read_text().splitlines()
        kept = [line for line in lines if victim.name not in line]
        (work / "finished.jsonl").write_text("\n".join(kept) + "\n")
    seen = []
    summary = generate(params, layout, track=False, on_image=lambda job: seen.append(job.rel))
    rel = victim.relative_to(work / "images").as_posix()
    assert rel in seen and summary["generated"] == 4  # made again with the 3 never made
    assert _files(layout) == reference
    for path in layout.synthetic.rglob("*.png"):
        decode_rgb(path)
    assert not marker.exists()


def test_leftovers_and_other_params_work_are_removed_under_the_lock(layout, tmp_path):
    from fixtures.processes import hold

    from lymphaug.common.errors import LockedError

    stale_out = layout.synthetic.parent / ".fold_0.abc.tmp"  # beside data/synthetic/fold_0
    stale_out.mkdir(parents=True)
    other = layout.fold_work("generate") / "0123456789abcdef" / "images"
    other.mkdir(parents=True)
    generate(tiny_params(tmp_path, generate={"per_class": 1}), layout, track=False)
    assert not stale_out.exists() and not other.parent.exists()
    assert not list((layout.fold_work("generate")).iterdir())
    lock = layout.fold_work("generate") / ".lock"
    proc = hold(lock)
    try:
        with pytest.raises(LockedError, match=rf"process {proc.pid} holds the lock {lock}"):
            generate(tiny_params(tmp_path), layout, track=True)
    finally:
        proc.kill()
        proc.wait()


def test_a_model_of_another_fold_is_refused(layout, tmp_path):
    """The diffusion model records the fold and split file it learned from: sampling it for
    another fold (its training images hold that fold's test images) is refused."""
    import json

    from lymphaug.common.errors import LeakageError
    from lymphaug.diffusion.loading import INFO_FILE

    info_path = layout.diffusion_model / INFO_FILE
    info = json.loads(info_path.read_text())
    assert info["extra"]["fold"] == 0 and len(info["extra"]["split_sha256"]) == 64
    info["extra"]["fold"] = 1
    info_path.write_text(json.dumps(info))
    with pytest.raises(LeakageError, match=rf"{info_path}: made from fold\(s\) \[1\]"):
        generate(tiny_params(tmp_path), layout, track=False)
    assert not layout.synthetic.exists()
