"""The report's first lines: what the data, the generator and the classifier were.

Pure functions of params and files on disk (a real manifest, a real MATLAB-sized file
hashed, real profile YAML files), so each sentence is checked against what it claims.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import yaml

from lymphaug.common import manifest
from lymphaug.common.config import parse_params
from lymphaug.common.paths import Layout
from lymphaug.comparison import provenance

CLASSES = ["CLL", "FL", "MCL"]


def _params(**sections):
    return parse_params({"classes": CLASSES, **sections})


def _manifest(layout: Layout, sources: list[str]) -> None:
    rows = [
        {
            "path": f"{CLASSES[i % 3]}/{i:04d}.png",
            "class": CLASSES[i % 3],
            "sha256": "0" * 64,
            "width": 8,
            "height": 8,
            "source": source,
        }
        for i, source in enumerate(sources)
    ]
    manifest.write_table(pd.DataFrame(rows), layout.raw / "manifest.csv", manifest.RAW_COLUMNS)


def test_sample_set_is_never_called_lymphoma_data(tmp_path):
    layout = Layout(tmp_path)
    _manifest(layout, [f"sample/seed0/{c}/0000" for c in CLASSES])
    line, is_sample = provenance.data_line(_params(), layout)
    assert is_sample
    assert "**generated sample set, not lymphoma data**" in line
    assert "3 images: CLL 1, FL 1, MCL 1" in line and "not built from" not in line


def test_data_raw_from_another_source_is_flagged(tmp_path):
    """params say folder, data/raw still holds the sample set: say so, trust neither."""
    layout = Layout(tmp_path)
    _manifest(layout, [f"sample/seed0/{c}/0000" for c in CLASSES])
    params = _params(ingest={"source": "folder", "folder": "../lymphoma"})
    line, is_sample = provenance.data_line(params, layout)
    assert "folder `../lymphoma`" in line and is_sample
    assert "**but data/raw/manifest.csv was not built from this source**" in line


def test_archive_and_mat_name_their_sha256(tmp_path):
    layout = Layout(tmp_path)
    _manifest(layout, [f"x.tar.gz:{c}/a.tif" for c in CLASSES])
    url, digest = "https://example.org/x.tar.gz", "ab" * 32
    line, is_sample = provenance.data_line(
        _params(ingest={"source": "archive", "archive": {"url": url, "sha256": digest}}), layout
    )
    assert not is_sample and f"the archive {url} (sha256 `{digest}`" in line
    mat = tmp_path / "bench.mat"
    mat.write_bytes(b"MATLAB 5.0" * 1000)
    line, _ = provenance.data_line(
        _params(ingest={"source": "mat", "mat": {"path": "bench.mat"}}), layout
    )
    assert f"sha256 `{hashlib.sha256(mat.read_bytes()).hexdigest()}`" in line
    mat.unlink()
    line, _ = provenance.data_line(
        _params(ingest={"source": "mat", "mat": {"path": "bench.mat"}}), layout
    )
    assert "sha256 not available: the file is not there now" in line


def test_generator_says_whether_its_weights_were_pretrained(tmp_path):
    layout = Layout(tmp_path)

    def line(base):
        return provenance.generator_line(_params(finetune={"base_model": base}), layout)

    assert "**the synthetic images are noise by construction**" in line("tiny")
    scratch = {"autoencoder": {"width": 16, "max_steps": 200}}
    unet = {"base_model": "scratch", "unet_width": 32}
    before = provenance.generator_line(_params(finetune=unet, **scratch), layout)
    assert "**trained from scratch** on the training split: an AutoencoderKL (width 16" in before
    assert "reconstruction error is not known (autoencoder.json missing" in before
    layout.autoencoder_metrics.parent.mkdir(parents=True)
    layout.autoencoder_metrics.write_text(
        json.dumps({"trained": True, "val": {"images": 15, "l1": 13.4007, "psnr": 21.922}})
    )
    after = provenance.generator_line(_params(finetune=unet, **scratch), layout)
    assert "reconstruction of 15 unseen validation crops: L1 13.4/255, PSNR 21.9 dB" in after
    (tmp_path / "sd15").mkdir()
    assert "**pretrained** weights from the local folder `sd15`" in line("sd15")
    hub = line("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert "**pretrained** weights from the Hugging Face hub" in hub


def test_classifier_line_names_its_weights():
    assert provenance.classifier_line(_params(train={"arch": "lymphaug_cnn"}).train).startswith(
        "`lymphaug_cnn` (weights `none`: trained from scratch"
    )
    frozen = _params(train={"arch": "alexnet", "weights": "imagenet", "freeze_backbone": True})
    assert "ImageNet weights; only its last layer trained" in provenance.classifier_line(
        frozen.train
    )


def test_profile_is_named_or_its_changes_listed(tmp_path):
    layout = Layout(tmp_path)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles/quick.yaml").write_text(yaml.safe_dump({"train": {"epochs": 15}}))
    (tmp_path / "profiles/long.yaml").write_text(
        yaml.safe_dump({"train": {"epochs": 50, "seeds": [0, 1, 2]}})
    )
    quick = _params(train={"epochs": 15})
    assert provenance.profile_line(quick, layout).startswith("`quick` (every key")
    changed = provenance.profile_line(_params(train={"epochs": 8}), layout)
    assert changed == "no preset as such: `quick` with 1 change(s): train.epochs: 8 (profile: 15)"


def test_the_generation_line_says_when_images_start_from_real_ones():
    txt = provenance.generation_line(_params(generate={"mode": "txt2img"}).generate)
    assert txt.startswith("sampled by txt2img from the class prompt alone, 10 per class")
    img2img = _params(generate={"mode": "img2img", "strength": 0.8}).generate
    img = provenance.generation_line(img2img)
    assert "**img2img** (SDEdit: a training image of the class, noised to strength 0.8" in img
