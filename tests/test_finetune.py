"""The finetune stage: real optimisation of the tiny model, checkpoints, resume, bad input."""

from __future__ import annotations

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
        losses.append(float(loss))
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
    ckpts = sorted((layout.work / "finetune").glob("*/checkpoints/checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-000002", "checkpoint-000004"]
    resumed, info = finetune(params, layout, track=False)
    assert resumed.resumed_from == 4
    assert resumed.losses == straight.losses
    again = _weights(loading.load_finetuned(layout.diffusion_model, layout.root)[0])
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    assert info.method == "full" and (layout.diffusion_model / "unet").is_dir()
    assert (layout.reports / "finetune_loss.csv").read_text().count("\n") == 7


def test_lora_saves_only_the_adapter_and_logs_to_mlflow(layout, tmp_path):
    from mlflow.tracking import MlflowClient

    params = tiny_params(
        tmp_path, {"method": "lora", "max_steps": 4, "validation_every": 2, "learning_rate": 1.0e-2}
    )
    result, info = finetune(params, layout)
    files = sorted(p.name for p in layout.diffusion_model.iterdir())
    assert files == [loading.INFO_FILE, loading.LORA_WEIGHTS]
    assert (layout.diffusion_model / loading.LORA_WEIGHTS).stat().st_size < 200_000
    tuned, _ = loading.load_finetuned(layout.diffusion_model, layout.root)
    base = loading.build_tiny_pipeline(params.finetune.seed)
    prompt = dict(prompt="x", num_inference_steps=2, height=16, width=16, output_type="np")
    a = tuned(**prompt, generator=torch.Generator().manual_seed(0)).images
    b = base(**prompt, generator=torch.Generator().manual_seed(0)).images
    assert abs(a - b).max() > 1e-4  # the adapter changes the model

    client = MlflowClient(params.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'finetune'")
    assert run.data.tags["mlflow.parentRunId"]
    assert run.data.params["finetune.method"] == "lora"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "lr")) == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "finetune_loss.csv", "images"} <= artifacts
    assert result.losses == [m.value for m in client.get_metric_history(run.info.run_id, "loss")]


def test_resume_from_a_checkpoint_of_the_other_method(layout, tmp_path):
    lora = tiny_params(tmp_path, {"method": "lora", "max_steps": 2, "checkpoint_every": 1})
    finetune(lora, layout, track=False)
    (ckpt,) = (layout.work / "finetune").glob("*/checkpoints/checkpoint-000001")
    full = tiny_params(tmp_path, {"method": "full", "max_steps": 2})
    with pytest.raises(checkpoints.CheckpointError, match="method 'lora' cannot resume.*'full'"):
        finetune(full, layout, track=False, resume_from=ckpt)


def test_nan_loss_stops_with_a_clear_error(layout, tmp_path):
    params = tiny_params(tmp_path, {"learning_rate": 1.0e30, "max_steps": 5, "checkpoint_every": 1})
    with pytest.raises(training.TrainingDiverged, match="loss became (nan|inf).*learning_rate"):
        finetune(params, layout, track=False)
    assert not layout.diffusion_model.exists()  # no half-made model
    assert list((layout.work / "finetune").glob("*/checkpoints/checkpoint-000001"))


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
