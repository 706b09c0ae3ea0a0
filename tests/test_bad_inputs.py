"""Every bad input and fault of issue 9, through the real command-line entry points: each ends in exit code
2 and exactly one error line naming the key, file or value (no traceback), or in a documented
skip-and-count; and nothing a run already wrote is lost or changed."""

from __future__ import annotations

import csv
import errno
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eval.cli import main as eval_main
from ssl_distill import checkpoints
from ssl_distill.cli import main as train_main
from ssl_distill.data.echo import write_synthetic_echo
from ssl_distill.data.images import build_source
from ssl_distill.engine.rundir import RunLock

from conftest import CONFIGS, REPO, TINY

MAE = str(CONFIGS / "mae/tiny_mnist.yaml")
DMAE = str(CONFIGS / "dmae/tiny_mnist.yaml")
VIDEO = str(CONFIGS / "videomae/tiny_echo.yaml")
EVAL_TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2"]
QUICK = [*TINY, "train.max_steps=2"]


def one_error_line(err: str, tool: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{tool}: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def train_cli(capsys, *args: str) -> tuple[int, str]:
    code = train_main(list(args))
    return code, capsys.readouterr().err


def eval_cli(capsys, *args: str) -> tuple[int, str]:
    code = eval_main(list(args))
    return code, capsys.readouterr().err


def digests(run_dir: Path) -> dict[str, str]:
    """Content hashes of a run's checkpoints and metrics.csv (what a failure must not touch)."""
    files = [*sorted((run_dir / "checkpoints").glob("*.pt")), run_dir / "metrics.csv"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def images(folder: Path, count: int = 20, size: int = 8) -> list[Path]:
    paths = []
    for i in range(count):
        cls = folder / f"c{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        path = cls / f"{i}.png"
        Image.fromarray(np.full((size, size, 3), i * 10, np.uint8)).save(path)
        paths.append(path)
    return paths


# -- config and schedules: (override, the text the one error line must hold) ------------------------------
CONFIG_CASES = [
    ("data.batch_size=0", "data.batch_size=0 is out of range: it must lie in [1, inf)"),
    ("data.batch_size=-4", "data.batch_size=-4 is out of range"),
    ("objective.mask_ratio=1.5", "objective.mask_ratio=1.5 is out of range: it must lie in [0, 1)"),
    ("optim.betas=[0.9,1.5]", "optim.betas=[0.9, 1.5] is out of range"),
    ("optim.warmup_fraction=2", "optim.warmup_fraction=2.0 is out of range"),
    ("train.max_steps=-1", "train.max_steps=-1 is out of range"),
    ("train.epochs=0", "train.epochs=0 is out of range"),
    ("model.drop_path_rate=1.0", "model.drop_path_rate=1.0 is out of range"),
    ("data.transform.min_scale=0", "data.transform.min_scale=0.0 is out of range"),
]


@pytest.mark.parametrize(("override", "expected"), CONFIG_CASES)
def test_bad_config_values_are_one_line_errors_before_any_work(tmp_path, capsys, override, expected):
    code, err = train_cli(capsys, "train", MAE, *QUICK, f"run.out_dir={tmp_path}", override)
    assert code == 2 and expected in one_error_line(err, "ssl-distill")
    assert not (tmp_path / "mae_tiny_mnist").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [("objective.teacher_temp=0", "objective.teacher_temp=0.0 is out of range: it must lie in (0, inf)"),
     ("objective.momentum_start=1.2", "objective.momentum_start=1.2 is out of range: it must lie in [0, 1]"),
     ("objective.center_on=mean", "objective.center_on=mean is not one of: logits, probabilities"),
     ("data.transform.cj_prob=1.5", "data.transform.cj_prob=1.5 is out of range")],
)
def test_temperatures_momenta_and_probabilities_are_range_checked(tmp_path, capsys, override, expected):
    code, err = train_cli(capsys, "train", str(CONFIGS / "dino/tiny_mnist.yaml"), f"run.out_dir={tmp_path}", override)
    assert code == 2 and expected in one_error_line(err, "ssl-distill")


def test_impossible_out_dirs_name_run_out_dir(tmp_path, capsys):
    regular = tmp_path / "a_file"
    regular.write_text("x")
    for out_dir in (regular / "runs", "/proc/ssl_distill_x"):
        code, err = train_cli(capsys, "train", MAE, *QUICK, f"run.out_dir={out_dir}")
        line = one_error_line(err, "ssl-distill")
        assert code == 2 and "run.out_dir: cannot write the run directory" in line and str(out_dir) in line


# -- teachers and backbones --------------------------------------------------------------------------------
def test_missing_teacher_run_is_named_as_such(tmp_path, capsys):
    missing = tmp_path / "runs" / "mae_tiny_mnist"
    code, err = train_cli(capsys, "train", DMAE, *QUICK, f"run.out_dir={tmp_path}", f"objective.teacher.source={missing}")
    line = one_error_line(err, "ssl-distill")
    assert code == 2 and f"objective.teacher.source: {missing}: no such run directory" in line
    assert "not a timm model" not in line


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_safetensors_are_one_line_errors_for_training_and_evaluation(tmp_path, capsys, mae_teacher, damage):
    bad = tmp_path / "teacher.safetensors"
    good = (mae_teacher / "backbone.safetensors").read_bytes()
    bad.write_bytes(b"not a safetensors file at all" if damage == "garbage" else good[: len(good) // 2])
    code, err = train_cli(capsys, "train", DMAE, *QUICK, f"run.out_dir={tmp_path}", f"objective.teacher.source={bad}")
    assert code == 2 and f"{bad}: not a readable safetensors file" in one_error_line(err, "ssl-distill")
    code, err = eval_cli(capsys, "knn", "--backbone", str(bad), "--out", str(tmp_path / "eval"), "data.limit=20")
    assert code == 2 and f"{bad}: not a readable safetensors file" in one_error_line(err, "ssl-eval")


# -- data ------------------------------------------------------------------------------------------------
def test_a_corrupt_image_is_skipped_named_and_counted_and_training_goes_on(tmp_path, capsys):
    paths = images(tmp_path / "imgs", count=24)
    paths[3].write_bytes(b"\xff\xd8 this is not a jpeg")
    args = ["train", MAE, *TINY, "train.max_steps=6", "data.name=folder", f"data.root={tmp_path / 'imgs'}",
            "data.batch_size=8", "data.limit=null", f"run.out_dir={tmp_path}"]
    with pytest.warns(UserWarning, match=f"skipping unreadable image {paths[3]}"):
        code, err = train_cli(capsys, *args)
    assert code == 0, err
    with open(tmp_path / "mae_tiny_mnist" / "metrics.csv") as handle:
        skipped = [float(row["skipped_samples"]) for row in csv.DictReader(handle)]
    assert skipped[-1] == 2.0  # 6 steps x 8 of 24 images: two epochs, the bad file met once in each


def test_too_many_unreadable_images_stop_with_their_names_and_leave_no_run_dir(tmp_path, capsys):
    paths = images(tmp_path / "imgs", count=20)
    for path in paths:
        path.write_bytes(b"broken")
    args = ["train", MAE, *QUICK, "data.name=folder", f"data.root={tmp_path / 'imgs'}", "data.batch_size=4",
            "data.limit=null", f"run.out_dir={tmp_path / 'runs'}"]
    with pytest.warns(UserWarning):
        code, err = train_cli(capsys, *args)
    line = one_error_line(err, "ssl-distill")
    assert code == 2 and "images in a row could not be read" in line and str(paths[0].parent) in line
    assert not (tmp_path / "runs" / "mae_tiny_mnist").exists()  # a run that never started leaves nothing


def test_sixteen_bit_images_are_scaled_by_their_bit_depth(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)
    folder = tmp_path / "deep" / "c0"
    folder.mkdir(parents=True)
    Image.fromarray(ramp).save(folder / "0.png")
    image = np.asarray(build_source("folder", root=str(tmp_path / "deep"))[0].image)
    np.testing.assert_array_equal(image[..., 0], np.round(ramp / 257.0).astype(np.uint8))
    assert (image == 255).mean() < 0.05  # PIL's convert("RGB") saturated 98% of these pixels


CSV_CASES = {
    "empty": (b"", "the file is empty"),
    "header only": (b"path,label\n", "has a header (path, label) but no rows"),
    "not utf-8": ("path,label\nbild_\u00fc.png,a\n".encode("latin-1"), "not a UTF-8 text file"),
    "missing file": (b"path,label\nimgs/c0/0.png,a\nimgs/nothing.png,b\n", "1 of 2 listed files do not exist, e.g."),
    "no path column": (b"file,label\nimgs/c0/0.png,a\n", "needs a 'path' column"),
}


@pytest.mark.parametrize("case", CSV_CASES)
def test_bad_csv_lists_name_the_file(tmp_path, capsys, case):
    images(tmp_path / "imgs", count=2)
    content, expected = CSV_CASES[case]
    listing = tmp_path / "list.csv"
    listing.write_bytes(content)
    code, err = train_cli(capsys, "train", MAE, *QUICK, "data.name=csv", f"data.root={listing}", f"run.out_dir={tmp_path}")
    line = one_error_line(err, "ssl-distill")
    assert code == 2 and str(listing) in line and expected in line


@pytest.fixture(scope="module")
def echo(tmp_path_factory) -> Path:
    return write_synthetic_echo(tmp_path_factory.mktemp("echo"), 8, seed=4, size=32, frames=24)


def test_filelist_without_filename_names_the_column_and_file(tmp_path, capsys, echo):
    root = tmp_path / "echo"
    (root / "Videos").mkdir(parents=True)
    rows = (echo / "FileList.csv").read_text().replace("FileName", "Name", 1)
    (root / "FileList.csv").write_text(rows)
    code, err = train_cli(capsys, "train", VIDEO, *QUICK, f"data.root={root}", "data.split=all", f"run.out_dir={tmp_path}")
    line = one_error_line(err, "ssl-distill")
    assert code == 2 and f"{root / 'FileList.csv'}: needs a 'FileName' column" in line


@pytest.mark.parametrize("workers", [0, 2])
def test_all_videos_unreadable_is_one_line_naming_them(tmp_path, capsys, echo, workers):
    root = tmp_path / "echo"
    (root / "Videos").mkdir(parents=True)
    (root / "FileList.csv").write_text((echo / "FileList.csv").read_text())
    for video in (echo / "Videos").iterdir():
        (root / "Videos" / video.name).write_bytes(b"not a video")
    args = ["train", VIDEO, *QUICK, f"data.root={root}", "data.split=all", "data.batch_size=2",
            f"data.num_workers={workers}", f"run.out_dir={tmp_path / 'runs'}"]
    with pytest.warns(UserWarning) if workers == 0 else _no_check():
        code, err = train_cli(capsys, *args)
    line = one_error_line(err, "ssl-distill")
    assert code == 2 and "videos in a row could not be read" in line and str(root / "Videos") in line
    assert multiprocessing.active_children() == []  # the workers (which ignore SIGTERM) were shut down


class _no_check:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_eval_limit_out_of_range(tmp_path, capsys, limit):
    code, err = eval_cli(capsys, "knn", "--backbone", "vit_tiny_patch16_224", *EVAL_TINY, f"data.limit={limit}",
                         f"run.cache_dir={tmp_path}")
    assert code == 2 and f"data.limit={limit} is out of range" in one_error_line(err, "ssl-eval")


# -- runs, signals and disks -------------------------------------------------------------------------------
def finished_run(tmp_path: Path, capsys, *extra: str) -> Path:
    code, err = train_cli(capsys, "train", MAE, *TINY, "train.max_steps=4", "train.checkpoint_every=2",
                          f"run.out_dir={tmp_path}", *extra)
    assert code == 0, err
    return tmp_path / "mae_tiny_mnist"


def test_a_run_directory_in_use_is_refused_and_left_untouched(tmp_path, capsys):
    run_dir = finished_run(tmp_path, capsys, "train.max_steps=6")
    before = digests(run_dir)
    held = RunLock(run_dir)
    held.acquire()  # another live process holds the run
    try:
        code, err = train_cli(capsys, "train", MAE, *TINY, "train.max_steps=8", f"run.out_dir={tmp_path}")
    finally:
        held.release()
    line = one_error_line(err, "ssl-distill")
    assert code == 2 and f"run directory {run_dir} is in use by pid {os.getpid()}" in line
    assert digests(run_dir) == before
    # a lock file left by a dead process does not block: the lock is the OS's, released at exit
    assert (run_dir / ".lock").is_file()
    code, err = train_cli(capsys, "train", MAE, *TINY, "train.max_steps=6", f"run.out_dir={tmp_path}")
    assert code == 0, err


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    run_dir = finished_run(tmp_path, capsys, "train.max_steps=6", "train.checkpoint_every=2")
    (run_dir / "checkpoints" / "checkpoint_00000006.pt").unlink()  # pretend step 6 never saved
    before = {name: digest for name, digest in digests(run_dir).items() if name.endswith(".pt")}
    real_save = checkpoints.torch.save

    def full_disk(payload, path):
        with open(path, "wb") as handle:
            handle.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    code, err = train_cli(capsys, "train", MAE, *TINY, "train.max_steps=6", "train.checkpoint_every=2", f"run.out_dir={tmp_path}")
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    line = one_error_line(err, "ssl-distill")
    assert code == 2 and f"no space left on {run_dir / 'checkpoints'} while writing checkpoint 6" in line
    assert "checkpoint_00000004.pt is intact" in line
    assert {name: d for name, d in digests(run_dir).items() if name.endswith(".pt")} == before
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(before)  # no temp left
    code, err = train_cli(capsys, "train", MAE, *TINY, "train.max_steps=6", "train.checkpoint_every=2", f"run.out_dir={tmp_path}")
    assert code == 0, err  # the rerun resumes from step 4 and finishes


def test_deleted_checkpoints_with_metrics_left_keep_the_old_rows_aside(tmp_path, capsys):
    run_dir = finished_run(tmp_path, capsys)
    old_rows = (run_dir / "metrics.csv").read_text()
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.unlink()
    with pytest.warns(UserWarning, match="no checkpoint to resume from.*the old metrics.csv is kept as metrics.before-"):
        code, err = train_cli(capsys, "train", MAE, *TINY, "train.max_steps=4", f"run.out_dir={tmp_path}")
    assert code == 0, err
    kept = list(run_dir.glob("metrics.before-*.csv"))
    assert len(kept) == 1 and kept[0].read_text() == old_rows


def test_report_on_an_empty_folder_leaves_nothing_behind(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = eval_cli(capsys, "report", str(tmp_path / "empty"))
    assert code == 2 and "no result JSONs or metrics.csv" in one_error_line(err, "ssl-eval")
    assert list((tmp_path / "empty").iterdir()) == []


def _wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_checkpoints_at_that_step(tmp_path):
    """What SLURM (and Ctrl-C, with SIGINT) do: signal every process of the group, workers included."""
    run_dir = tmp_path / "mae_tiny_mnist"
    command = [sys.executable, "-m", "ssl_distill.cli", "train", MAE, *TINY, "train.max_steps=400", "data.num_workers=2",
               f"run.out_dir={tmp_path}"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    _wait_for(lambda: (run_dir / "metrics.csv").is_file() and len((run_dir / "metrics.csv").read_text().splitlines()) > 3)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 3, err
    assert "worker" not in err.lower() and "Traceback" not in err
    saved = checkpoints.list_checkpoints(run_dir / "checkpoints")
    step = int(checkpoints.PATTERN.match(saved[-1].name).group(1))
    assert f"stopped at step {step}" in err and 3 <= step < 400
