"""The tiny offline pipeline and base-model loading (tiny, local folder, hub id)."""

from __future__ import annotations

import pytest

from lymphaug.diffusion.loading import (
    ModelError,
    base_kind,
    load_base,
    resolve_base,
    unet_fingerprint,
    weights_digest,
)
from lymphaug.diffusion.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_pipeline(0)


def test_tiny_pipeline_is_a_function_of_the_seed(tiny):
    assert unet_fingerprint(build_tiny_pipeline(0).unet) == unet_fingerprint(tiny.unet)
    assert unet_fingerprint(build_tiny_pipeline(1).unet) != unet_fingerprint(tiny.unet)
    ids = tiny.tokenizer("microscopic image of follicular lymphoma").input_ids
    assert ids[0] == tiny.tokenizer.bos_token_id and ids[-1] == tiny.tokenizer.eos_token_id
    assert tiny.tokenizer.unk_token_id not in ids[1:-1]  # every character is in the vocabulary


def test_local_diffusers_folder_round_trip(tiny, tmp_path):
    folder = tmp_path / "sd-tiny"
    tiny.save_pretrained(folder)
    assert base_kind(str(folder), tmp_path) == "path"
    loaded = load_base(str(folder), seed=123, root=tmp_path)  # seed only matters for "tiny"
    assert unet_fingerprint(loaded.unet) == unet_fingerprint(tiny.unet)
    assert loaded.tokenizer("abc").input_ids == tiny.tokenizer("abc").input_ids


def test_revision_is_for_hub_ids_only(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "sd-tiny")
    with pytest.raises(ModelError, match="finetune.revision='abc' applies to a hub id only"):
        resolve_base("sd-tiny", tmp_path, revision="abc")
    assert resolve_base("sd-tiny", tmp_path).version == weights_digest(tmp_path / "sd-tiny")


def test_base_path_that_does_not_exist(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_base(str(tmp_path / "nowhere"), 0, tmp_path)


def test_base_path_that_is_not_a_diffusers_folder(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.ckpt").write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="not a diffusers folder"):
        load_base("weights", 0, tmp_path)


def test_broken_diffusers_folder_is_a_clear_error(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot load"):
        load_base(str(tmp_path / "broken"), 0, tmp_path)


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert base_kind("stable-diffusion-v1-5/stable-diffusion-v1-5", tmp_path) == "hub"
    with pytest.raises(ModelError, match="cannot resolve .*download it elsewhere") as err:
        load_base("lymphaug-test/no-such-model", 0, tmp_path)
    assert "stacktrace" not in str(err.value) and "\n" not in str(err.value)
