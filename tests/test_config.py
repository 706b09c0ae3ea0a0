"""Config errors name the key (and the closest valid one) and fail before any work starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ssl_distill.config import ConfigError, load_config

from conftest import CONFIGS


def test_base_composition_and_overrides():
    cfg = load_config(CONFIGS / "dmae/tiny_mnist.yaml", ["optim.base_lr=0.5", "objective.mask_ratio=0.9"])
    assert cfg.model.img_size == 32 and cfg.data.name == "mnist"  # from base/tiny_mnist.yaml
    assert cfg.optim.base_lr == 0.5 and cfg.objective.mask_ratio == 0.9
    assert cfg.data.transform.name == "mae"  # the objective's default transform, validated
    assert cfg.objective.reconstruction_weight == 1.0  # schema default filled in


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("objective.mask_ration=0.5", "unknown key 'objective.mask_ration' (did you mean 'mask_ratio'?)"),
        ("optim.weight_decy=0.1", "unknown key 'optim.weight_decy' (did you mean 'weight_decay'?)"),
        ("train.epochs=many", "bad value for 'train.epochs'"),
        ("objective.name=dmea", "unknown objective 'objective.name=dmea' (did you mean 'dmae'?)"),
        ("data.transform.img_sise=32", "unknown key 'data.transform.img_sise' (did you mean 'img_size'?)"),
        ("train.precision=fp8", "train.precision must be one of"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "mae/tiny_mnist.yaml" if "dmea" not in override else CONFIGS / "dmae/tiny_mnist.yaml", [override])
    assert expected in str(info.value)


def test_missing_required_teacher(tmp_path):
    config = tmp_path / "dmae.yaml"
    config.write_text(f"base: {CONFIGS / 'mae/tiny_mnist.yaml'}\nobjective:\n  name: dmae\n")
    with pytest.raises(ConfigError, match="missing required value for 'objective.teacher.source'"):
        load_config(config)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_distill.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_reports_config_errors_without_traceback(tmp_path):
    bad_key = run_cli("train", str(CONFIGS / "mae/tiny_mnist.yaml"), "optim.lr_base=1")
    assert bad_key.returncode == 2
    assert "unknown key 'optim.lr_base'" in bad_key.stderr and "Traceback" not in bad_key.stderr
    bad_type = run_cli("train", str(CONFIGS / "mae/tiny_mnist.yaml"), "data.batch_size=big")
    assert bad_type.returncode == 2 and "data.batch_size" in bad_type.stderr and "Traceback" not in bad_type.stderr


def test_cli_reports_a_missing_teacher_checkpoint(tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint_00000010.pt"
    result = run_cli(
        "train", str(CONFIGS / "dmae/tiny_mnist.yaml"), f"objective.teacher.source={missing}", f"run.out_dir={tmp_path}"
    )
    assert result.returncode == 2
    assert f"checkpoint not found: {missing}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "dmae_tiny_mnist").exists()  # nothing was started
