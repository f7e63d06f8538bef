"""params.yaml validation, the CLI's error handling, and profiles."""

from __future__ import annotations

import shutil

import pytest
import yaml

from lymphaug.cli import main
from lymphaug.common.config import Params, load_params, parse_params
from lymphaug.common.errors import ConfigError
from lymphaug.profile import apply_profile


def test_committed_params_list_every_key(repo_root):
    """dvc params show must show every value: params.yaml may not lean on defaults."""
    data = yaml.safe_load((repo_root / "params.yaml").read_text())

    def keys(model_cls, prefix=""):
        for name, field in model_cls.model_fields.items():
            ann = field.annotation
            yield prefix + name
            if isinstance(ann, type) and issubclass(ann, Params.__mro__[1]):
                yield from keys(ann, prefix + name + ".")

    for dotted in keys(Params):
        node = data
        for part in dotted.split("."):
            assert isinstance(node, dict) and part in node, f"params.yaml lacks {dotted}"
            node = node[part]


def test_wrong_type_names_the_key(repo_root, tmp_path):
    data = yaml.safe_load((repo_root / "params.yaml").read_text())
    data["train"]["epochs"] = "five"
    data["dct"]["copies_per_imag"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    text = str(err.value)
    assert "train.epochs" in text and "five" in text
    assert "dct.copies_per_imag" in text and "Extra inputs" in text


def test_yaml11_float_without_dot_is_rejected():
    """PyYAML reads 1e-3 as a string; it must not silently become something else."""
    with pytest.raises(ConfigError, match="train.learning_rate"):
        parse_params(yaml.safe_load("train: {learning_rate: 1e-3}"))


def test_class_without_prompt_is_an_error():
    with pytest.raises(ConfigError, match="no prompt for class"):
        parse_params({"classes": ["CLL", "FL", "XYZ"]})


def test_cli_reports_config_error_without_traceback(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("split: {test_fraction: 1.5}\n")
    assert main(["--params", str(bad), "split"]) == 2
    err = capsys.readouterr().err
    assert "split.test_fraction" in err and "Traceback" not in err


def test_profile_paper_writes_real_values(repo_root, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", params)
    apply_profile(params, repo_root / "profiles" / "paper.yaml")
    p = load_params(params)
    assert p.train.weights == "imagenet" and p.finetune.method == "lora"
    assert p.autoencoder is None and p.finetune.unet_width is None  # the hub VAE stays
    assert p.ingest.source == "folder" and len(p.train.seeds) == 5
    text = params.read_text()
    assert "# lymphaug pipeline parameters" in text  # comments survive
    assert "url: null" in text


@pytest.mark.parametrize("profile", ["paper", "cpu"])
def test_profile_quick_returns_from_another_profile(repo_root, tmp_path, profile):
    """Every key a preset changes is in profiles/quick.yaml with params.yaml's value."""
    params = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", params)
    apply_profile(params, repo_root / "profiles" / f"{profile}.yaml")
    assert load_params(params) != load_params(repo_root / "params.yaml")
    apply_profile(params, repo_root / "profiles" / "quick.yaml")
    assert load_params(params) == load_params(repo_root / "params.yaml")


def test_profile_cpu_is_the_histology_recipe_on_the_real_images(repo_root, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", params)
    apply_profile(params, repo_root / "profiles" / "cpu.yaml")
    p = load_params(params)
    assert p.ingest.source == "folder" and p.ingest.folder == "../shared/data/lymphoma"
    assert p.train.arch == "lymphaug_cnn" and p.train.weights == "none"
    assert p.train.patch_size == 64 and p.train.eval == "whole" and len(p.train.seeds) == 5
    assert p.train.device == "cpu"
    # the generator is trained here, at a resolution the classifier can use: its samples
    # cover at least 128 px of the real images (crops of the images rescaled by `scale`)
    assert p.finetune.base_model == "scratch"
    assert p.finetune.resolution / p.autoencoder.scale >= 128
    # the classifier sees patch_size px of images rescaled by train.scale: one sample holds one
    assert p.finetune.resolution >= p.train.patch_size and p.autoencoder.scale == p.train.scale


def test_profile_with_unknown_key_leaves_params_untouched(repo_root, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", params)
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochz: 3}\n")
    with pytest.raises(ConfigError, match="train.epochz"):
        apply_profile(params, bad)
    assert params.read_text() == before


def test_unquoted_no_for_mixed_precision_means_no():
    """`mixed_precision: no` (unquoted) is YAML 1.1's false; read it as accelerate's "no"."""
    p = parse_params(yaml.safe_load("finetune: {mixed_precision: no}"))
    assert p.finetune.mixed_precision == "no"
    with pytest.raises(ConfigError, match="finetune.mixed_precision"):
        parse_params(yaml.safe_load("finetune: {mixed_precision: yes}"))


def test_empty_or_repeated_seeds_are_errors():
    """No seed means DVC drops every train stage and compare has nothing to compare."""
    with pytest.raises(ConfigError, match=r"train\.seeds.*at least 1 item"):
        parse_params({"train": {"seeds": []}})
    with pytest.raises(ConfigError, match=r"train\.seeds.*must not repeat"):
        parse_params({"train": {"seeds": [0, 1, 0]}})


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "mps", ""])
def test_device_outside_auto_cpu_cuda_n_is_an_error(device):
    with pytest.raises(ConfigError, match=r"train\.device"):
        parse_params({"train": {"device": device}})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_device_auto_cpu_cuda_n_are_valid(device):
    assert parse_params({"train": {"device": device}}).train.device == device


def test_duplicate_key_names_the_key_and_both_lines(repo_root, tmp_path, capsys):
    """PyYAML would keep the last value; DVC refuses the file: the stage must refuse it too."""
    text = (repo_root / "params.yaml").read_text()
    text = text.replace("  epochs: 15\n", "  epochs: 15\n  epochs: 50\n", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    line = text.splitlines().index("  epochs: 50") + 1
    with pytest.raises(ConfigError, match=rf"duplicate key train\.epochs \(line {line}; first"):
        load_params(path)
    assert main(["--params", str(path), "split"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lymphaug split: error: ") and "train.epochs" in err
    assert len(err.splitlines()) == 1


def test_duplicate_top_level_key_and_merge_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split: {seed: 1}\nsplit: {seed: 2}\n")
    with pytest.raises(ConfigError, match=r"duplicate key split \(line 2; first set on line 1\)"):
        load_params(path)
    # a YAML merge key is not a duplicate; an explicit key overrides the merged one
    path.write_text("split:\n  <<: {seed: 1, test_fraction: 0.3}\n  seed: 2\n")
    split = load_params(path).split
    assert (split.seed, split.test_fraction) == (2, 0.3)


def test_profile_with_a_duplicate_key_is_a_config_error(repo_root, tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", params)
    bad = tmp_path / "dup.yaml"
    bad.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: found duplicate key \"epochs\".*line 3"):
        apply_profile(params, bad)
