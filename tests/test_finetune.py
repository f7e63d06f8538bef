"""The finetune stage: real optimisation of the tiny model, checkpoints, resume, bad input."""

from __future__ import annotations

import os
import stat

import pytest
import torch
import yaml
from fixtures.diffusion_data import make_dataset, tiny_params

from lymphaug.cli import main
from lymphaug.common.config import parse_params
from lymphaug.common.errors import ConfigError, DataError, LymphaugError
from lymphaug.common.manifest import SPLIT_COLUMNS, read_table
from lymphaug.diffusion import checkpoints, loading, training
from lymphaug.finetune import finetune, training_rows


@pytest.fixture(autouse=True)
def own_mlflow_store(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: keep each test on its own store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(autouse=True)
def one_thread():
    with loading.cpu_threads("tiny"):
        yield


@pytest.fixture
def layout(tmp_path):
    return make_dataset(tmp_path)


def _weights(pipe):
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def current_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def modes(folder) -> set[int]:
    """The permission bits of every file under ``folder``."""
    return {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_loss_goes_down_on_a_fixed_batch():
    """Real optimisation: the tiny UNet fits one fixed (latents, noise, timestep) batch."""
    from diffusers import DDPMScheduler

    pipe = loading.build_tiny_pipeline(0)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(4, 3, 16, 16, generator=generator) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
        emb = training.prompt_embeddings(pipe, ["a", "b"], "cpu", torch.float32)[[0, 1, 0, 1]]
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.tensor([50, 300, 600, 900])
    noisy = sched.add_noise(latents, noise, t)
    opt = torch.optim.AdamW(pipe.unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(pipe.unet(noisy, t, emb).sample, noise)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_full_finetune_resumes_to_the_same_result(layout, tmp_path):
    params = tiny_params(tmp_path, {"max_steps": 6, "checkpoint_every": 2})
    straight, _ = finetune(params, layout, track=False)
    reference = _weights(loading.load_finetuned(layout.diffusion_model, layout.root)[0])

    def interrupt(step, loss, lr):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(params, layout, resume=False, track=False, on_step=interrupt)
    ckpts = sorted((layout.fold_work("finetune")).glob("*/checkpoints/checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-000002", "checkpoint-000004"]
    resumed, info = finetune(params, layout, track=False)
    assert resumed.resumed_from == 4
    assert resumed.losses == straight.losses
    again = _weights(loading.load_finetuned(layout.diffusion_model, layout.root)[0])
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    assert info.method == "full" and (layout.diffusion_model / "unet").is_dir()
    assert modes(layout.diffusion_model) == {0o666 & ~current_umask()}
    assert (layout.fold_reports / "finetune_loss.csv").read_text().count("\n") == 7


def test_lora_saves_only_the_adapter_and_logs_to_mlflow(layout, tmp_path):
    from mlflow.tracking import MlflowClient

    params = tiny_params(
        tmp_path, {"method": "lora", "max_steps": 4, "validation_every": 2, "learning_rate": 1.0e-2}
    )
    result, info = finetune(params, layout)
    files = sorted(p.name for p in layout.diffusion_model.iterdir())
    assert files == [loading.INFO_FILE, loading.LORA_WEIGHTS]
    assert modes(layout.diffusion_model) == {0o666 & ~current_umask()}  # not owner-only
    assert (layout.diffusion_model / loading.LORA_WEIGHTS).stat().st_size < 200_000
    tuned, _ = loading.load_finetuned(layout.diffusion_model, layout.root)
    base = loading.build_tiny_pipeline(params.finetune.seed)
    prompt = dict(prompt="x", num_inference_steps=2, height=16, width=16, output_type="np")
    a = tuned(**prompt, generator=torch.Generator().manual_seed(0)).images
    b = base(**prompt, generator=torch.Generator().manual_seed(0)).images
    assert abs(a - b).max() > 1e-4  # the adapter changes the model

    client = MlflowClient(params.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'finetune fold=0'")
    assert run.data.tags["mlflow.parentRunId"]
    assert run.data.params["finetune.method"] == "lora"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "finetune_loss.csv", "images"} <= artifacts
    assert result.losses == [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    # the validation grids are sampled at finetune.resolution (16 px: 2 columns, 3 classes)
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    grids = [p for p in grids if p.endswith(".png")]
    assert len(grids) == 2
    from PIL import Image

    local = client.download_artifacts(run.info.run_id, grids[0], str(tmp_path))
    assert Image.open(local).size == (2 * (16 + 2) + 2, 3 * (16 + 2) + 2)


def test_two_fresh_lora_runs_give_the_same_adapter_bytes(tmp_path):
    """The adapter's initial weights come from finetune.seed, not torch's global generator:
    two runs from scratch, whatever that generator's state, save identical files, and the
    caller's global stream is left where it was."""
    adapters = []
    for global_seed in (1, 2):
        root = tmp_path / f"run{global_seed}"
        layout = make_dataset(root)
        params = tiny_params(root, {"method": "lora", "max_steps": 2, "learning_rate": 1.0e-2})
        torch.manual_seed(global_seed)
        finetune(params, layout, track=False)
        after = torch.random.get_rng_state()
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.random.get_rng_state()), "finetune drew from torch's RNG"
        adapters.append((layout.diffusion_model / loading.LORA_WEIGHTS).read_bytes())
    assert adapters[0] == adapters[1]


def test_a_local_base_is_versioned_by_its_weight_files(layout, tmp_path, capsys):
    """The digest of the base folder's weights is in the model's description and MLflow
    tags; replaced weights under a LoRA adapter are refused; a base elsewhere in the
    repository (no DVC dependency) gets a note."""
    import shutil

    from mlflow.tracking import MlflowClient

    base = layout.diffusion_base
    loading.build_tiny_pipeline(0).save_pretrained(base)
    params = tiny_params(
        tmp_path, {"base_model": "models/diffusion_base", "method": "lora", "max_steps": 1}
    )
    _, info = finetune(params, layout)
    assert info.base_fingerprint == loading.weights_digest(base) != ""
    client = MlflowClient(params.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'finetune fold=0'")
    assert run.data.tags["base_fingerprint"] == info.base_fingerprint
    assert run.data.tags["base_model"] == "models/diffusion_base"
    assert "note" not in capsys.readouterr().err

    loading.build_tiny_pipeline(1).save_pretrained(base)  # the same files, other weights
    with pytest.raises(loading.ModelError, match="not the one the LoRA adapter was trained on"):
        loading.load_finetuned(layout.diffusion_model, layout.root)

    shutil.move(base, layout.root / "elsewhere")
    params = tiny_params(tmp_path, {"base_model": "elsewhere", "max_steps": 1})
    finetune(params, layout, track=False)
    assert "not in models/diffusion_base, the folder dvc.yaml tracks" in capsys.readouterr().err


def test_a_hub_base_is_pinned_to_its_resolved_commit(tmp_path, monkeypatch):
    """Offline, from a Hugging Face cache as the Hub leaves it (refs/main -> a snapshot): the
    commit main resolved to is in the model's description, and the adapter's base is loaded
    at that commit even after main moves on."""
    import shutil

    from huggingface_hub import constants

    from lymphaug.generate import generate

    # HF_HUB_CACHE and HF_HUB_OFFLINE, as huggingface_hub holds them once imported
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    layout = make_dataset(tmp_path)
    repo = tmp_path / "hub" / "models--lymphaug-test--tiny-sd"
    first, second = "1" * 40, "2" * 40
    for seed, commit in ((0, first), (1, second)):
        loading.build_tiny_pipeline(seed).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(first)
    params = tiny_params(
        tmp_path, {"base_model": "lymphaug-test/tiny-sd", "method": "lora", "max_steps": 1}
    )
    finetune(params, layout, track=False)  # (the MLflow tags: the local-folder test)
    assert loading.read_info(layout.diffusion_model).base_fingerprint == first

    # main moves on and the trained-on snapshot goes: generate asks for that commit, by name
    (repo / "refs" / "main").write_text(second)
    shutil.rmtree(repo / "snapshots" / first)
    with pytest.raises(loading.ModelError) as err:
        generate(params, layout, track=False)
    message = str(err.value)
    assert f"cannot load 'lymphaug-test/tiny-sd@{first}'" in message
    assert "\n" not in message and "stacktrace above" not in message


def test_a_run_too_long_for_the_cpu_stops_after_its_first_step(layout, tmp_path, capsys):
    """The paper profile on a CPU: the first step's time says how long, and what to do."""
    params = tiny_params(tmp_path, {"max_steps": 1000, "max_cpu_hours": 1.0e-6})
    steps = []
    with pytest.raises(training.TooSlowOnCpu) as err:
        finetune(params, layout, track=False, on_step=lambda *a: steps.append(a))
    message = str(err.value)
    assert steps == [] and not layout.diffusion_model.exists()
    assert "on the CPU, so the 1000 steps to go would take about" in message
    for way_out in ("on a GPU", "finetune.max_steps", "finetune.base_model: scratch"):
        assert way_out in message
    assert "\n" not in message
    seconds = float(message.split("took ")[1].split(" s")[0])
    assert seconds < 60  # the first step, not the run


def test_num_threads_is_set_for_the_run_and_restored():
    before = torch.get_num_threads()
    with loading.cpu_threads("stable-diffusion-v1-5/stable-diffusion-v1-5", 1):
        assert torch.get_num_threads() == 1
    with loading.cpu_threads("tiny", 2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_a_large_model_is_a_reference_in_mlflow_not_a_copy(tmp_path):
    """Weights over the limit (a full Stable Diffusion pipeline) stay in models/diffusion
    only: the run gets the description and tags naming the DVC output."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from lymphaug.finetune import MLFLOW_COPY_LIMIT, log_model_reference

    model = tmp_path / "models" / "diffusion"
    (model / "unet").mkdir(parents=True)
    with open(model / "unet" / "diffusion_pytorch_model.safetensors", "wb") as f:
        f.truncate(MLFLOW_COPY_LIMIT + 1)  # sparse: as large, without the disk
    info = loading.write_info(model, loading.ModelInfo("full", "sd", 0, 512, ["a"], {"a": "x"}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        log_model_reference(model, info, root=tmp_path)
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == [
        f"model/{loading.INFO_FILE}"
    ]
    tags = client.get_run(run.info.run_id).data.tags
    assert tags["model_path"] == "models/diffusion"
    assert tags["model_fingerprint"] == info.fingerprint != ""


def stop_at(step: int):
    """An on_step hook that interrupts the run at ``step`` (as Ctrl-C would)."""

    def hook(done, loss, lr):
        if done == step:
            raise KeyboardInterrupt

    return hook


def test_resume_from_a_checkpoint_of_the_other_method(layout, tmp_path):
    lora = tiny_params(tmp_path, {"method": "lora", "max_steps": 3, "checkpoint_every": 1})
    with pytest.raises(KeyboardInterrupt):
        finetune(lora, layout, track=False, on_step=stop_at(2))
    (ckpt,) = (layout.fold_work("finetune")).glob("*/checkpoints/checkpoint-000001")
    full = tiny_params(tmp_path, {"method": "full", "max_steps": 2})
    with pytest.raises(checkpoints.CheckpointError, match="method 'lora' cannot resume.*'full'"):
        finetune(full, layout, track=False, resume_from=ckpt)


def test_nan_loss_stops_with_a_clear_error(layout, tmp_path):
    params = tiny_params(tmp_path, {"learning_rate": 1.0e30, "max_steps": 5, "checkpoint_every": 1})
    with pytest.raises(training.TrainingDiverged, match="loss became (nan|inf).*learning_rate"):
        finetune(params, layout, track=False)
    assert not layout.diffusion_model.exists()  # no half-made model
    assert list((layout.fold_work("finetune")).glob("*/checkpoints/checkpoint-000001"))


def test_paper_profile_code_paths_on_the_tiny_model(layout, tmp_path, repo_root):
    """LoRA + cosine warm-up + accumulation + checkpointing + Min-SNR + EMA, as in paper.yaml."""
    paper = yaml.safe_load((repo_root / "profiles" / "paper.yaml").read_text())["finetune"]
    paper.update(
        base_model="tiny",
        resolution=16,
        max_steps=3,
        lr_warmup_steps=1,
        gradient_accumulation_steps=2,
        checkpoint_every=2,
        use_ema=True,
    )
    params = tiny_params(tmp_path, paper)
    assert params.finetune.method == "lora" and params.finetune.gradient_checkpointing
    result, info = finetune(params, layout, track=False)
    assert result.mixed_precision == "no"  # fp16 falls back to fp32 on a CPU
    assert len(result.losses) == 3 and result.lrs[0] < result.lrs[1]  # warm-up
    assert info.method == "lora"


def test_class_without_a_prompt(tmp_path):
    with pytest.raises(ConfigError, match="no prompt for class"):
        parse_params({"classes": ["CLL", "FL", "XYZ"]})
    layout = make_dataset(tmp_path, per_class=3)
    split = read_table(layout.split_csv, SPLIT_COLUMNS)
    with pytest.raises(ConfigError, match=r"prompt for class\(es\) \['FL'\]"):
        training_rows(split, ["CLL", "FL", "MCL"], {"CLL": "a", "FL": "  ", "MCL": "c"})
    with pytest.raises(DataError, match="not in params classes"):
        training_rows(split, ["CLL", "FL"], {"CLL": "a", "FL": "b"})


def test_8bit_adam_without_bitsandbytes_is_clear():
    pytest.importorskip("torch")
    try:
        import bitsandbytes  # noqa: F401

        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    cfg = tiny_params(__import__("pathlib").Path("."), {"use_8bit_adam": True}).finetune
    with pytest.raises(LymphaugError, match="bitsandbytes"):
        training._make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)


def test_cli_bad_base_model_is_one_line(layout, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"finetune": {"base_model": str(tmp_path / "missing")}}))
    assert main(["--params", str(params), "--root", str(tmp_path), "finetune"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


# --- faults: hostile, truncated and missing checkpoints; leftovers --------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A repository whose fine-tune stopped at step 5 (checkpoints at 2 and 4), and the losses
    of the same run uninterrupted."""
    root = tmp_path_factory.mktemp("interrupted")
    layout = make_dataset(root)
    params = tiny_params(root, {"max_steps": 6, "checkpoint_every": 2})
    with loading.cpu_threads("tiny"):
        straight, _ = finetune(params, layout, track=False)
        with pytest.raises(KeyboardInterrupt):
            finetune(params, layout, resume=False, track=False, on_step=stop_at(5))
    return root, straight.losses


@pytest.fixture
def resumable(interrupted, tmp_path):
    """A fresh copy of the interrupted repository: (layout, params, the two checkpoints)."""
    import shutil

    from lymphaug.common.paths import Layout

    root = tmp_path / "repo"
    shutil.copytree(interrupted[0], root)
    layout = Layout(root)
    ckpts = sorted((layout.fold_work("finetune")).glob("*/checkpoints/checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-000002", "checkpoint-000004"]
    return layout, tiny_params(root, {"max_steps": 6, "checkpoint_every": 2}), ckpts


def test_a_pickle_payload_in_a_checkpoint_never_runs(resumable, tmp_path):
    from fixtures.payloads import plant

    layout, params, ckpts = resumable
    marker = tmp_path / "pwned"
    for ckpt in ckpts:
        state = torch.load(ckpt / "state.pt", weights_only=True)
        plant(ckpt / "state.pt", marker, like=state)
    with pytest.raises(checkpoints.CheckpointError) as err:
        finetune(params, layout, track=False)
    message = str(err.value)
    assert f"{ckpts[0] / 'state.pt'}: unreadable checkpoint (UnpicklingError" in message
    assert "--no-resume" in message and "delete" in message
    with pytest.raises(checkpoints.CheckpointError, match=rf"{ckpts[1] / 'state.pt'}: unread"):
        finetune(params, layout, track=False, resume_from=ckpts[1])
    assert not marker.exists(), "loading a checkpoint ran code"


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(resumable, interrupted, capsys):
    layout, params, ckpts = resumable
    state = ckpts[1] / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    result, _ = finetune(params, layout, track=False)
    err = capsys.readouterr().err
    assert f"{state}: unreadable checkpoint" in err
    assert f"resuming from the previous checkpoint {ckpts[0]} instead" in err
    assert result.resumed_from == 2
    assert result.losses == interrupted[1]  # the same run as without the interruption


def test_a_missing_checkpoint_file_is_one_message_with_both_ways_out(resumable):
    """A LymphaugError (the CLI prints it as one line) naming the file, --no-resume and delete."""
    import shutil

    layout, params, ckpts = resumable
    shutil.rmtree(ckpts[0])
    (ckpts[1] / "state.pt").unlink()
    with pytest.raises(checkpoints.CheckpointError) as err:
        finetune(params, layout, track=False)
    message = str(err.value)
    assert "\n" not in message
    assert f"{ckpts[1] / 'state.pt'}: unreadable checkpoint (FileNotFoundError" in message
    assert "rerun with --no-resume" in message and f"delete {ckpts[1].parents[1]}" in message


def test_success_removes_the_checkpoints_and_what_killed_runs_left(resumable):
    layout, params, ckpts = resumable
    work = ckpts[0].parents[1]
    half = work / "checkpoints" / ".checkpoint-000006.abc.tmp"
    half.mkdir()
    other = layout.fold_work("finetune") / "0123456789abcdef"  # an interrupted run of other params
    (other / "checkpoints").mkdir(parents=True)
    model_tmp = layout.diffusion_model.parent / ".fold_0.xyz.tmp"
    model_tmp.mkdir(parents=True)
    result, _ = finetune(params, layout, track=False)
    assert result.resumed_from == 4
    assert not half.exists() and not other.exists() and not model_tmp.exists()
    assert not work.exists(), "checkpoints are removed once the model is saved"
    assert [p.name for p in (layout.root / "models").iterdir()] == ["diffusion"]


def test_a_second_finetune_is_refused_while_one_runs(resumable):
    from fixtures.processes import hold

    from lymphaug.common.errors import LockedError

    layout, params, _ = resumable
    lock = layout.fold_work("finetune") / ".lock"
    proc = hold(lock)
    try:
        with pytest.raises(LockedError, match=rf"process {proc.pid} holds the lock {lock}"):
            finetune(params, layout, track=False)
    finally:
        proc.kill()
        proc.wait()
