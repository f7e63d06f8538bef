"""The Stable Diffusion path at full size (slow): a random-weight pipeline with SD v1.5's exact
component configs, saved as a local diffusers folder, through the real finetune and generate
stages (the CLI): LoRA for two steps at 64 px, then generation at the data set's aspect ratio.

Costs (2 shared CPU cores): building and saving the 4.3 GB folder ~1 min and 5 GB of memory,
once per session; each stage loads it again. The folder is deleted when the session ends:
pytest keeps its last three base temp dirs, and a machine that runs the suite again and again
(CI) would otherwise carry several of them.
"""

from __future__ import annotations

import math
import shutil

import pytest
import yaml
from fixtures.diffusion_data import make_dataset

from lymphaug.cli import main
from lymphaug.common.images import read_rgb
from lymphaug.common.manifest import SYNTHETIC_COLUMNS, read_table
from lymphaug.diffusion import loading

pytestmark = pytest.mark.slow

LORA_PARAMETERS = 797_184  # rank 4 on to_q/to_k/to_v/to_out.0 of SD v1.5's UNet
WIDTH, HEIGHT = 139, 104  # the lymphoma images' 417 x 312, a third the size


FOLDER_BYTES = 4.3e9  # fp32 UNet, VAE and text encoder as safetensors
DISK_MARGIN_BYTES = 1e9  # the two repositories' adapters, images and MLflow store


@pytest.fixture(scope="session")
def sd15_folder(tmp_path_factory):
    """SD v1.5's architecture with random weights as a diffusers folder (built once, removed
    at the end of the session)."""
    from lymphaug.diffusion.sd15 import build_sd15_pipeline

    parent = tmp_path_factory.mktemp("sd15")
    free = shutil.disk_usage(parent).free
    if free < FOLDER_BYTES + DISK_MARGIN_BYTES:  # say so before a 4.3 GB write fails halfway
        pytest.fail(
            f"the SD v1.5 folder needs {(FOLDER_BYTES + DISK_MARGIN_BYTES) / 1e9:.1f} GB free "
            f"under {parent}; {free / 1e9:.1f} GB are free",
            pytrace=False,
        )
    folder = parent / "sd-v1-5-random"
    pipe = build_sd15_pipeline(0)
    sizes = [sum(p.numel() for p in m.parameters()) for m in (pipe.unet, pipe.vae)]
    assert sizes == [859_520_964, 83_653_863]
    assert sum(p.numel() for p in pipe.text_encoder.parameters()) == 123_060_480
    pipe.save_pretrained(folder)
    del pipe
    yield folder
    shutil.rmtree(parent, ignore_errors=True)


def stage(root, *argv: str) -> None:
    assert main(["--params", str(root / "params.yaml"), "--root", str(root), *argv]) == 0


def repository(root, base, tracking_uri: str):
    """A small data set at the lymphoma images' aspect ratio, params for LoRA on ``base``."""
    layout = make_dataset(root, per_class=3, width=WIDTH, height=HEIGHT)
    params = {
        "classes": ["CLL", "FL", "MCL"],
        "finetune": {
            "base_model": str(base),
            "method": "lora",
            "resolution": 64,
            "max_steps": 2,
            "batch_size": 1,
            "checkpoint_every": 1000,
            "validation_every": 1000,
            "use_ema": False,
            "unet_width": None,
        },
        "autoencoder": None,
        "generate": {"per_class": 1, "steps": 2, "batch_size": 3},
        "mlflow": {"tracking_uri": tracking_uri},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return layout


def test_lora_on_sd15_is_reproducible_and_keeps_the_aspect_ratio(sd15_folder, tmp_path):
    from mlflow.tracking import MlflowClient
    from safetensors import safe_open

    adapters = []
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # one store (the first run exports it anyway)
    for run in ("a", "b"):  # two fresh repositories, the same params
        layout = repository(tmp_path / run, sd15_folder, uri)
        stage(layout.root, "finetune")
        adapter = layout.diffusion_model / loading.LORA_WEIGHTS
        adapters.append(adapter.read_bytes())
    with safe_open(adapter, "pt") as f:
        shapes = [f.get_slice(name).get_shape() for name in f.offset_keys()]
    assert sum(math.prod(shape) for shape in shapes) == LORA_PARAMETERS
    assert 3.0 * 2**20 < len(adapters[0]) < 3.3 * 2**20  # fp32: 3.04 MiB and a header
    assert adapters[0] == adapters[1]  # byte-identical: the adapter's init is seeded
    info = loading.read_info(layout.diffusion_model)
    assert info.base_fingerprint == loading.weights_digest(sd15_folder)

    stage(layout.root, "generate")
    manifest = read_table(layout.synthetic / "manifest.csv", SYNTHETIC_COLUMNS)
    assert len(manifest) == 3
    for rel in manifest["path"]:
        assert read_rgb(layout.synthetic / rel).shape == (HEIGHT, WIDTH, 3)
    # sampled at the data set's aspect ratio in latent multiples of 8 (64 px), not 64 x 64:
    # 128 x 64, of which the centre 86 x 64 (139:104) is resized to the data set's size
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lymphaug")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'generate fold=0'")
    assert run.data.params["sampled_at"] == "128x64"
