"""Config errors name the key (and the closest valid one) and fail before any work starts."""

from __future__ import annotations

import pytest

from ssl_distill.cli import main
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
        ("train.precision=fp8", "train.precision=fp8 is not one of: fp32, bf16, fp16"),
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


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """The console script's entry point in-process: exit code and stderr."""
    code = main(list(args))
    return code, capsys.readouterr().err


def test_cli_reports_config_errors_without_traceback(capsys):
    code, err = run_cli(capsys, "train", str(CONFIGS / "mae/tiny_mnist.yaml"), "optim.lr_base=1")
    assert code == 2 and "unknown key 'optim.lr_base' (did you mean 'base_lr'?)" in err and "Traceback" not in err
    code, err = run_cli(capsys, "train", str(CONFIGS / "mae/tiny_mnist.yaml"), "data.batch_size=big")
    assert code == 2 and "bad value for 'data.batch_size'" in err and "Traceback" not in err


def test_cli_reports_a_missing_teacher_checkpoint(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "checkpoint_00000010.pt"
    code, err = run_cli(
        capsys, "train", str(CONFIGS / "dmae/tiny_mnist.yaml"), f"objective.teacher.source={missing}", f"run.out_dir={tmp_path}"
    )
    assert code == 2 and f"objective.teacher.source: {missing}: no such run directory, checkpoint" in err
    assert "Traceback" not in err
    assert not (tmp_path / "dmae_tiny_mnist").exists()  # nothing was started
