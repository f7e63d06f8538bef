"""The from-scratch generator: the autoencoder stage, the scratch UNet, generate's pixel scale.

Real small models doing real optimisation on tiny images: an AutoencoderKL of width 8 on
16 px crops, a UNet of width 8 on its 8x8 latents.
"""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.diffusion_data import CLASSES, make_dataset

from lymphaug.autoencoder import CURVE, METRICS, SHEET, autoencoder
from lymphaug.common.config import parse_params
from lymphaug.common.errors import ConfigError, DataError
from lymphaug.common.files import sha256_file
from lymphaug.diffusion import autoencoder as ae
from lymphaug.diffusion import loading, training
from lymphaug.finetune import finetune
from lymphaug.generate import generate


@pytest.fixture(autouse=True)
def one_thread():
    with loading.cpu_threads("scratch"):
        yield


@pytest.fixture
def layout(tmp_path):
    return make_dataset(tmp_path)  # 48x36 px images, 2 training images per class


def scratch_params(tmp_path, autoencoder: dict | None = None, finetune: dict | None = None):
    ae_cfg = {
        "scale": 1.0,
        "resolution": 16,
        "width": 8,
        "downsample": 2,
        "max_steps": 6,
        "batch_size": 2,
        "checkpoint_every": 2,
        **(autoencoder or {}),
    }
    ft = {
        "base_model": "scratch",
        "unet_width": 8,
        "resolution": 16,
        "max_steps": 6,
        "batch_size": 2,
        "checkpoint_every": 2,
        "validation_every": 1000,
        "use_ema": True,
        "snr_gamma": 5.0,
        **(finetune or {}),
    }
    return parse_params(
        {
            "classes": CLASSES,
            "autoencoder": ae_cfg,
            "finetune": ft,
            "generate": {"per_class": 2, "steps": 3, "batch_size": 2},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )


def _interrupt_at(step_to_stop: int):
    def on_step(step, *_):
        if step == step_to_stop:
            raise KeyboardInterrupt

    return on_step


def _model_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def test_autoencoder_learns_to_reconstruct(layout, tmp_path):
    """Real optimisation: the reconstruction error falls well below its start."""
    params = scratch_params(tmp_path, {"max_steps": 40, "learning_rate": 3.0e-3})
    info, result = autoencoder(params, layout, track=False)
    assert sum(result.losses[-5:]) < 0.6 * sum(result.losses[:5]), result.losses
    assert info.trained and info.scaling_factor > 0
    assert set(info.reconstruction) == {"train", "val"}
    vae, loaded = ae.load_trained(layout.autoencoder_model)
    assert vae.config.scaling_factor == pytest.approx(info.scaling_factor, rel=1e-5)
    metrics = json.loads((layout.fold_reports / METRICS).read_text())
    assert metrics["val"]["l1"] == info.reconstruction["val"]["l1"]
    assert (layout.fold_reports / SHEET).stat().st_size > 0
    assert len((layout.fold_reports / CURVE).read_text().splitlines()) == 41


def test_interrupted_autoencoder_and_unet_resume_byte_identical(layout, tmp_path):
    """Both phases: a kill after step 3 resumes from checkpoint 2 and ends with the bytes of
    the uninterrupted run; then generate writes samples at the data's pixel scale."""
    params = scratch_params(tmp_path, {"scale": 0.75}, {"resolution": 24})
    autoencoder(params, layout, track=False)
    ae_straight = _model_bytes(layout.autoencoder_model)
    straight, _ = finetune(params, layout, track=False)
    unet_straight = _model_bytes(layout.diffusion_model / "unet")

    with pytest.raises(KeyboardInterrupt):
        autoencoder(params, layout, resume=False, track=False, on_step=_interrupt_at(3))
    _, resumed = autoencoder(params, layout, track=False)
    assert resumed.resumed_from == 2
    assert _model_bytes(layout.autoencoder_model) == ae_straight

    with pytest.raises(KeyboardInterrupt):
        finetune(params, layout, resume=False, track=False, on_step=_interrupt_at(3))
    again, info = finetune(params, layout, track=False)
    assert again.resumed_from == 2 and again.losses == straight.losses
    assert _model_bytes(layout.diffusion_model / "unet") == unet_straight
    split_sha256 = sha256_file(layout.split_csv)  # what it learned from: generate checks it
    assert info.extra == {"fold": 0, "split_sha256": split_sha256, "scale": 0.75}

    summary = generate(params, layout, track=False)
    assert summary["images"] == 6
    from lymphaug.common.images import read_rgb

    image = read_rgb(layout.synthetic / "CLL" / "CLL_0000.png")
    assert image.shape == (32, 32, 3)  # 24 px at scale 0.75: 32 px at the data's scale


def test_a_pretrained_base_skips_the_stage_with_a_note(layout, tmp_path):
    params = parse_params({"classes": CLASSES})  # base_model: tiny
    info, result = autoencoder(params, layout, track=False)
    assert result is None and not info.trained and "tiny" in info.reason
    assert ae.read_info(layout.autoencoder_model) == info
    assert json.loads((layout.fold_reports / METRICS).read_text()) == {"trained": False}
    with pytest.raises(DataError, match="holds no trained autoencoder"):
        ae.load_trained(layout.autoencoder_model)


@pytest.mark.parametrize(
    "data, match",
    [
        (
            {"finetune": {"base_model": "org/model"}, "autoencoder": {}},
            "autoencoder train a generator from scratch, but finetune.base_model is 'org/model'",
        ),
        ({"finetune": {"unet_width": 32}}, "finetune.unet_width train a generator from scratch"),
        ({"finetune": {"base_model": "scratch", "unet_width": 32}}, "needs an autoencoder"),
        (
            {
                "finetune": {"base_model": "scratch", "unet_width": 32, "method": "lora"},
                "autoencoder": {},
            },
            "trained in full",
        ),
        (
            {
                "finetune": {"base_model": "scratch", "unet_width": 32, "resolution": 40},
                "autoencoder": {},
            },
            "multiple of 16",
        ),
    ],
)
def test_from_scratch_options_must_match_the_base(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_params(data)


def test_images_smaller_than_the_crops_name_the_file(layout, tmp_path):
    params = scratch_params(tmp_path, {"resolution": 40})  # the images are 36 px high
    with pytest.raises(DataError, match=r"CLL_000\.png: 48x36 px .* smaller than the 40 px"):
        autoencoder(params, layout, track=False)
    autoencoder(scratch_params(tmp_path), layout, track=False)
    params = scratch_params(tmp_path, finetune={"resolution": 40})
    with pytest.raises(DataError, match=r"CLL_000\.png: .* crops of finetune.resolution"):
        finetune(params, layout, track=False)


def test_a_diverging_autoencoder_names_the_phase_and_step(layout, tmp_path):
    params = scratch_params(tmp_path, {"learning_rate": 1.0e30, "checkpoint_every": 1})
    with pytest.raises(training.TrainingDiverged, match="autoencoder phase: loss became .* step"):
        autoencoder(params, layout, track=False)
    assert not layout.autoencoder_model.exists()
    assert list((layout.fold_work("autoencoder")).glob("*/checkpoints/checkpoint-000001"))


def test_a_diverging_unet_names_the_phase(layout, tmp_path):
    params = scratch_params(tmp_path, {"max_steps": 2}, {"learning_rate": 1.0e30})
    autoencoder(params, layout, track=False)
    with pytest.raises(training.TrainingDiverged, match=r"finetune \(UNet phase\): loss became"):
        finetune(params, layout, track=False)


def test_finetune_before_the_autoencoder_is_a_clear_error(layout, tmp_path):
    with pytest.raises(DataError, match="run `lymphaug autoencoder`"):
        finetune(scratch_params(tmp_path), layout, track=False)


def test_scratch_pipeline_is_a_real_stable_diffusion_pipeline():
    from diffusers import StableDiffusionPipeline

    from lymphaug.common.config import AutoencoderConfig
    from lymphaug.diffusion.scratch import build_autoencoder, build_scratch_pipeline

    vae = build_autoencoder(AutoencoderConfig(resolution=16, width=8, downsample=4))
    pipe = build_scratch_pipeline(vae, unet_width=8, resolution=32, seed=0)
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.vae_scale_factor == 4
    out = pipe("a", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(out)).all()


def test_a_fresh_autoencoder_samples_nearly_deterministic_latents():
    """The posterior starts at std exp(-3), not 1: the decoder's first steps see latents, not
    sampling noise (with SD's KL weight the trained posterior is as narrow)."""
    from lymphaug.common.config import AutoencoderConfig
    from lymphaug.diffusion.scratch import build_autoencoder

    vae = build_autoencoder(AutoencoderConfig(resolution=16, width=8, downsample=2, seed=3))
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    assert posterior.std.median() == pytest.approx(0.05, rel=0.2)
    assert posterior.mean.std() > 2 * posterior.std.median()
    assert not any("attentions" in name for name, _ in vae.named_parameters())


def test_scratch_norms_keep_four_channels_per_group():
    """One channel per group (SD's 32 groups at width 32) normalises a crop's colour away."""
    from lymphaug.common.config import AutoencoderConfig
    from lymphaug.diffusion.scratch import build_autoencoder, build_unet

    vae = build_autoencoder(AutoencoderConfig(resolution=16, width=32, downsample=2))
    unet = build_unet(width=32, sample_size=8, in_channels=4, cross_attention_dim=32, seed=0)
    modules = [*vae.modules(), *unet.modules()]
    norms = [m for m in modules if isinstance(m, torch.nn.GroupNorm)]
    assert norms and min(m.num_channels // m.num_groups for m in norms) == 4
