"""README.md's commands run as written: every command of its fenced bash blocks that needs no SLURM, GPU
or `make`, in order (later commands use the runs of earlier ones), with settings that shrink the runs to
a few steps and a few hundred images appended; then its Python blocks."""

from __future__ import annotations

import os
import re
import shlex

import pytest

from conftest import REPO

TRAIN = [
    "train.max_steps=2",
    "data.limit=64",
    "data.batch_size=16",
    "train.progress=false",
    "train.tensorboard=false",
    "train.checkpoint_every=0",
    "monitor.bank_limit=100",
    "monitor.limit=100",
]


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def readme_commands() -> list[list[str]]:
    commands = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] != "make" and "--slurm" not in words:
                commands.append(words)
    return commands


def test_the_readme_lists_commands_of_both_tools():
    tools = {words[0] for words in readme_commands()}
    assert tools == {"ssl-distill", "ssl-eval"}, tools
    assert all("..." not in word for words in readme_commands() for word in words)


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path, monkeypatch):
    from eval.cli import main as ssl_eval
    from ssl_distill.cli import main as ssl_distill

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for words in readme_commands():
        tool, args = words[0], words[1:]
        if tool == "ssl-distill":
            extra = TRAIN if args[0] in ("train", "launch") else []
            if "data.name=shards" in args:  # a limit would keep one shard, too few for the command's 2 workers
                extra = [setting for setting in extra if not setting.startswith("data.limit=")]
            code = ssl_distill([*args, *extra])
        else:
            extra = (
                []
                if args[0] == "report"
                else ["data.limit=200", "run.progress=false", f"run.cache_dir={tmp_path / 'cache'}"]
            )
            code = ssl_eval([*args, *extra, *(["segment.epochs=1"] if args[0] == "segment" else [])])
        assert code == 0, shlex.join(words)
    assert (tmp_path / "runs/dmae_tiny_mnist/report/report.html").is_file()
    assert (tmp_path / "runs/dmae_tiny_mnist/eval/random-init-seed0/knn-mnist.json").is_file()
    for block in readme_blocks("python"):
        exec(compile(block, "README.md", "exec"), {})
