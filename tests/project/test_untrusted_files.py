"""Nothing read from disk runs code: a pickle payload planted in every kind of file the
project loads is refused, by name, in one line, and the payload never runs.

Each payload is a real torch pickle shaped like the file it replaces (same keys), one value
swapped for an object whose unpickling calls ``exec`` to write a marker file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fixtures.payloads import plant

from lymphaug.common.errors import LymphaugError


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "code-ran"
    yield path
    assert not path.exists(), "a planted payload ran"


def _refused(call, path: Path) -> str:
    with pytest.raises(LymphaugError) as err:
        call()
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_classifier_weights_file(tmp_path, marker):
    """train.weights (and compare's classifier model.pt) load through load_state_dict_file."""
    import torchvision

    from lymphaug.classifier.model import build_classifier

    path = tmp_path / "resnet18.pth"
    plant(path, marker, like=torchvision.models.resnet18().state_dict())
    message = _refused(lambda: build_classifier("resnet18", 3, str(path)), path)
    assert "not plain weights (refused, nothing run: Unsupported global" in message


def test_classifier_checkpoint(tmp_path, marker):
    """work/train/.../checkpoint.pt, read when fit resumes."""
    from fixtures.classifier_data import CLASSES, make_dataset, tiny_params

    from lymphaug.classifier.data import load_splits
    from lymphaug.classifier.loop import CHECKPOINT, fit
    from lymphaug.classifier.model import build_classifier

    params = tiny_params(arch="mobilenet_v3_small", epochs=2)
    splits = load_splits("base", params, make_dataset(tmp_path / "data"))
    model = build_classifier("mobilenet_v3_small", 3, "none")
    path = tmp_path / "work" / CHECKPOINT
    plant(path, marker, like={"meta": {"arch": "mobilenet_v3_small"}, **model.state_dict()})

    def resume():
        fit(
            model,
            splits.train,
            splits.val,
            cfg=params.train,
            seed=0,
            classes=CLASSES,
            work_dir=path.parent,
        )

    message = _refused(resume, path)
    assert "unreadable checkpoint (UnpicklingError: not plain weights" in message


def test_finetune_checkpoint_state(tmp_path, marker):
    """work/finetune/.../state.pt (a whole resume is in tests/test_finetune.py)."""
    from lymphaug.diffusion.checkpoints import read_state

    path = tmp_path / "checkpoint-000002" / "state.pt"
    like = {"trainable": {}, "optimizer": {}, "lr_scheduler": {}, "losses": [], "lrs": []}
    plant(path, marker, like=like)
    _refused(lambda: read_state(path), path)


def test_generate_work_image(tmp_path, marker):
    """A finished image of generate's work folder is verified, never trusted (and PIL does
    not unpickle): a payload in its place is not reused (a whole resume: test_generate.py)."""
    from lymphaug.generate import Job, intact_images

    job = Job(cls="CLL", class_index=0, index=0, seed=1, prompt="p", source="")
    images = tmp_path / "work" / "images"
    plant(images / job.rel, marker)
    intact, bad = intact_images(images, [job])
    assert intact == set() and bad == [job.rel] and not (images / job.rel).exists()


@pytest.fixture(scope="module")
def bin_folder(tmp_path_factory) -> Path:
    """The tiny pipeline saved as a local diffusers folder with .bin (pickle) weights only."""
    from lymphaug.diffusion.loading import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("sd") / "base"
    pipe = build_tiny_pipeline(0)
    pipe.save_pretrained(folder, safe_serialization=False)
    encoder = folder / "text_encoder"
    for f in encoder.glob("*.safetensors"):  # transformers writes safetensors regardless
        f.unlink()
    torch.save(pipe.text_encoder.state_dict(), encoder / "pytorch_model.bin")
    assert not list(folder.rglob("*.safetensors"))
    return folder


@pytest.mark.parametrize(
    "weights", ["unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin"]
)
def test_local_diffusers_folder_with_bin_weights(bin_folder, tmp_path, marker, weights):
    from lymphaug.diffusion.loading import load_base

    folder = tmp_path / "base"
    shutil.copytree(bin_folder, folder)
    load_base(str(folder), 0)  # the intact folder loads
    plant(folder / weights, marker, like=torch.load(folder / weights, weights_only=True))
    message = _refused(lambda: load_base(str(folder), 0), folder / weights)
    assert message.startswith("finetune.base_model: ") and "refusing to load" in message


def test_fine_tuned_model_folder_with_bin_weights(bin_folder, tmp_path, marker):
    """models/diffusion, read by generate."""
    from lymphaug.diffusion.loading import INFO_FILE, load_finetuned

    model = tmp_path / "models" / "diffusion"
    shutil.copytree(bin_folder, model)
    info = '{"method": "full", "base_model": "tiny", "tiny_seed": 0, "resolution": 16, '
    (model / INFO_FILE).write_text(info + '"classes": ["a"], "prompts": {"a": "p"}}')
    weights = model / "vae" / "diffusion_pytorch_model.bin"
    plant(weights, marker, like=torch.load(weights, weights_only=True))
    _refused(lambda: load_finetuned(model), weights)
