"""Hostile input and interruptions: one `error:` line and exit status 2, nothing lost, mixed or wrongly scored."""
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io
import torch

from conftest import ROOT, cli_flags, run_cli, scene_folder, tiny_scene
from config import build_parser, parse_config
from main import main
from runs import log_path, read_log, run_directory, run_lock, saved_epochs
from utils import atomic_write_text


def one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("flag, value, expected", [
    ("--nch_ker", "0", "outside >= 1"), ("--learning_rate", "-1", "outside > 0"), ("--nblk", "-1", "outside >= 0"),
    ("--ratio", "1", "outside [0, 1)"), ("--epochs", "1.5", "not an integer"), ("--init_gain", "nan", "outside"),
    ("--batch_size", "0", "outside >= 1"), ("--weight_decay", "-1e-5", "outside >= 0"), ("--seed", "-1", "outside"),
    ("--tile", "0", "outside >= 1"), ("--score_repeats", "0", "outside [1, 100]"), ("--score_repeats", "101", "outside [1, 100]"), ("--patch", "1", "outside >= 2")])
def test_every_numeric_flag_is_range_checked_in_one_line(flag, value, expected, capsys):
    assert main(["--command", "train", f"{flag}={value}"]) == 2
    line = one_error_line(capsys)
    assert flag in line and expected in line


def test_help_states_each_numeric_range():
    text = " ".join(build_parser().format_help().split())
    for expected in ("patches per training step; range >= 1", "number of residual blocks; range >= 0",
                     "ceil(p*p*(1-ratio)) blind spots per patch; range [0, 1)"):
        assert expected in text
    assert ".;" not in text and "..)" not in text  # a sentence's full stop, then the range


def test_a_huge_band_range_is_refused_at_once_without_expanding_it(scene_dir, capsys):
    started = time.perf_counter()
    assert main(["--command", "rx", *cli_flags(scene_dir, "tiny"), "--drop_bands", "1-100000000000"]) == 2
    assert "names band 100000000000, but" in one_error_line(capsys) and time.perf_counter() - started < 10


def test_unwritable_places_are_one_line_before_any_training(scene_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    assert main(["--command", "train", *flags, "--checkpoints_dir", str(blocker)]) == 2
    assert "a_file" in one_error_line(capsys)
    assert main(["--command", "train", *flags]) == 0
    capsys.readouterr()
    assert main(["--command", "predict", *flags, "--results_dir", str(blocker / "sub")]) == 2
    assert "a_file" in one_error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="permissions do not bind root, which runs this suite here")
def test_an_unreadable_scene_is_one_line(scene_dir, capsys):
    os.chmod(scene_dir / "tiny.mat", 0)
    assert main(["--command", "rx", *cli_flags(scene_dir, "tiny")]) == 2
    assert "Permission denied" in one_error_line(capsys)


@pytest.mark.parametrize("failure", ["oserror", "torch"])
def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(scene_dir, capsys, monkeypatch, failure):
    """torch.save on a full disk raises RuntimeError, not OSError: every writer's failure is one line, the
    earlier checkpoint intact and no temporary file left."""
    real_save, calls = torch.save, []

    def full_at_second_save(state, path, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            return real_save(state, path, **kwargs)
        with open(path, "wb") as handle:
            handle.write(b"partial")
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", path)
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    monkeypatch.setattr(torch, "save", full_at_second_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    flags = cli_flags(scene_dir, "tiny", "--epochs", "2", "--save_freq", "1")
    assert main(["--command", "train", *flags]) == 2
    line = one_error_line(capsys)
    assert ("No space left on device" if failure == "oserror" else "writing failed (") in line
    assert "free some disk space" in line and "::" not in line and "checkpoints" in line
    run_dir = run_directory(parse_config(flags))
    assert saved_epochs(run_dir) == [1] and not [f for f in os.listdir(run_dir) if f.startswith(".tmp")]
    assert torch.load(os.path.join(run_dir, "epoch_0001.pt"), weights_only=True)["epoch"] == 1


def test_damaged_checkpoints_are_one_line_in_predict(scene_dir, tmp_path, capsys):
    flags = cli_flags(scene_dir, "tiny")
    cases = {"truncated.pt": b"PK\x03\x04" + b"\0" * 40, "list.pt": None, "scene.pt": None}
    torch.save({"model": [1, 2, 3]}, tmp_path / "list.pt")
    (tmp_path / "scene.pt").write_bytes((scene_dir / "tiny.mat").read_bytes())  # a .mat passed as checkpoint
    (tmp_path / "truncated.pt").write_bytes(cases["truncated.pt"])
    for name in cases:
        assert main(["--command", "predict", *flags, "--checkpoint", str(tmp_path / name)]) == 2
        line = one_error_line(capsys)
        assert name in line and "weights_only=False" not in line


def test_checkpoints_with_one_name_in_two_runs_keep_their_own_results(scene_dir, capsys):
    for seed in ("1", "2"):
        assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "1", "--seed", seed)]) == 0
    for checkpoint in (scene_folder(scene_dir / "checkpoints", "tiny")).glob("*/epoch_0001.pt"):
        assert main(["--command", "predict", *cli_flags(scene_dir, "tiny"), "--checkpoint", str(checkpoint)]) == 0
    folders = [p for p in (scene_folder(scene_dir / "results", "tiny")).iterdir() if p.name.startswith("checkpoint_epoch_0001")]
    assert len(folders) == 2
    seeds = {json.loads((f / "metrics.json").read_text())["train_config"]["seed"] for f in folders}
    assert seeds == {1, 2}


def test_a_start_killed_before_its_first_checkpoint_can_restart_and_resume(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "2")
    run_dir = run_directory(parse_config(flags))
    os.makedirs(run_dir)
    atomic_write_text(log_path(run_dir), "# config {}\nepoch\tloss\tseconds\tauc\n1\t3.0\t1.0\t\n")  # no checkpoint
    open(os.path.join(run_dir, ".tmp-abc.pt"), "w").close()  # what a kill during a save leaves
    assert main(["--command", "train", *flags]) == 0
    assert "left no checkpoint: starting anew" in capsys.readouterr().out
    assert [row["epoch"] for row in read_log(log_path(run_dir))] == [1, 2]
    assert not [f for f in os.listdir(run_dir) if f.startswith(".tmp")]
    # and with --resume, once the folder again holds only a log
    for epoch in saved_epochs(run_dir):
        os.remove(os.path.join(run_dir, f"epoch_{epoch:04d}.pt"))
    assert main(["--command", "train", *flags, "--resume"]) == 0
    assert saved_epochs(run_dir) == [2]


@pytest.mark.slow
def test_sigterm_saves_like_ctrl_c(scene_dir):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "100000", "--save_freq", "100000")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--command", "train", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = run_directory(parse_config(flags))
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(log_path(run_dir)) and read_log(log_path(run_dir))):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert f"{os.path.basename(sys.executable)} " in err and "--resume" in err  # the interpreter in use
    assert len(saved_epochs(run_dir)) == 1


def test_a_second_training_of_one_run_is_refused_while_the_first_runs(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1")
    run_dir = run_directory(parse_config(flags))
    with run_lock(run_dir):
        assert main(["--command", "train", *flags]) == 2
        assert "another training (process" in one_error_line(capsys)
    assert main(["--command", "train", *flags]) == 0
    assert not os.path.exists(os.path.join(run_dir, ".lock"))


def test_written_files_follow_the_umask(scene_dir):
    previous = os.umask(0o022)
    try:
        flags = cli_flags(scene_dir, "tiny", "--epochs", "1", "--eval_every", "1")
        assert main(["--command", "train", *flags]) == 0
        assert main(["--command", "predict", *flags]) == 0
    finally:
        os.umask(previous)
    written = [p for folder in ("checkpoints", "results") for p in (scene_dir / folder).rglob("*") if p.is_file()]
    assert len(written) > 8
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o644}


def test_overwrite_leaves_nothing_of_the_earlier_run(scene_dir):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "2", "--eval_every", "1")
    assert main(["--command", "train", *flags]) == 0
    run_dir = run_directory(parse_config(flags))
    assert os.path.exists(os.path.join(run_dir, "training_curve.png"))
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "1", "--overwrite")]) == 0
    assert sorted(os.listdir(run_dir)) == ["epoch_0001.pt", "train_log.tsv"]


def test_resume_to_fewer_epochs_says_what_there_is(scene_dir, capsys):
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "3", "--save_freq", "2")]) == 0
    capsys.readouterr()
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "2", "--resume")]) == 0
    assert "already trained to epoch 3, with a checkpoint of epoch 2: nothing to train" in capsys.readouterr().out
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "1", "--resume")]) == 2
    assert "checkpoints of epochs 2, 3 but none of epoch 1" in one_error_line(capsys)
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "3")]) == 2
    assert "it is trained to epoch 3: predict with these flags" in one_error_line(capsys)


def test_an_interrupted_resume_says_its_earlier_checkpoints_are_kept(scene_dir, capsys, monkeypatch):
    import train as train_module
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "1")]) == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "3", "--resume")]) == 130
    err = capsys.readouterr().err
    assert "checkpoints (up to epoch 1) are as they were" in err and "nothing saved" not in err


def test_huge_values_are_scored_in_a_precision_that_cannot_overflow_or_refused(tmp_path, capsys, monkeypatch):
    hsi, gt = tiny_scene()
    scipy.io.savemat(tmp_path / "tiny.mat", {"data": hsi, "map": gt})
    assert main(["--command", "train", *cli_flags(tmp_path, "tiny", "--epochs", "1")]) == 0
    checkpoint = str(next((scene_folder(tmp_path / "checkpoints", "tiny")).glob("*/epoch_0001.pt")))
    # values near 1e20: squared errors overflow float32 (the map used to be all zeros, AUC 0.5)
    scipy.io.savemat(tmp_path / "huge.mat", {"data": hsi * np.float32(1e18), "map": gt})
    assert main(["--command", "predict", *cli_flags(tmp_path, "huge"), "--checkpoint", checkpoint]) == 0
    detectmap = scipy.io.loadmat(scene_folder(tmp_path / "results", "huge") / "latest" / "detectmap.mat")["detectmap"]
    assert detectmap.min() == 0 and detectmap.max() == 1 and len(np.unique(detectmap)) > 50
    # values near float32's limit overflow the network itself: refused, in training and in prediction
    scipy.io.savemat(tmp_path / "limit.mat", {"data": hsi * np.float32(3e35), "map": gt})
    capsys.readouterr()
    assert main(["--command", "train", *cli_flags(tmp_path, "limit", "--epochs", "1")]) == 2
    assert "too large for float32 training" in one_error_line(capsys)
    import predict
    monkeypatch.setattr(predict, "score_reconstruction", lambda net, hsi, *args: np.full(hsi.shape, np.inf))
    assert main(["--command", "predict", *cli_flags(tmp_path, "limit"), "--checkpoint", checkpoint]) == 2
    assert "beyond what the float32 network can take" in one_error_line(capsys)


def test_rx_with_fewer_pixels_than_bands_is_refused(tmp_path, capsys):
    rng = np.random.RandomState(0)
    scipy.io.savemat(tmp_path / "few.mat", {"data": rng.rand(4, 5, 30), "map": np.eye(4, 5)})
    assert main(["--command", "rx", *cli_flags(tmp_path, "few")]) == 2
    assert "RX needs more pixels than bands + 1" in one_error_line(capsys)


def test_lrx_with_singular_windows_says_so(scene_dir, capsys):
    assert main(["--command", "lrx", *cli_flags(scene_dir, "tiny"), "--win_in", "1", "--win_out", "3"]) == 0
    assert "8 background pixels, not more than the 6 bands" not in capsys.readouterr().out  # 8 > 6: full rank
    hsi, gt = tiny_scene(bands=9)
    scipy.io.savemat(scene_dir / "wide.mat", {"data": hsi, "map": gt})
    assert main(["--command", "lrx", *cli_flags(scene_dir, "wide"), "--win_in", "1", "--win_out", "3"]) == 0
    assert "8 background pixels, not more than the 9 bands" in capsys.readouterr().out
    assert "singular" in json.loads((scene_folder(scene_dir / "results", "wide") / "latest" / "metrics.json").read_text())["note"]


def test_predict_of_a_missing_scene_blames_the_scene(scene_dir, capsys):
    assert main(["--command", "predict", *cli_flags(scene_dir, "nosuchscene")]) == 2
    assert "scene file" in one_error_line(capsys)


def test_empty_datasets_list_is_an_error(scene_dir, capsys):
    assert main(["--command", "benchmark", *cli_flags(scene_dir, "tiny"), "--datasets", ""]) == 2
    assert "--datasets: the list is empty" in one_error_line(capsys)


def test_an_end_to_end_bad_flag_in_a_real_process():
    result = run_cli("--command", "train", "--nch_ker", "0")
    assert result.returncode == 2 and result.stderr.strip().startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_torchrun_with_a_last_batch_smaller_than_the_process_count(scene_dir):
    """120 patches in batches of 7: the last holds one patch, so one of two processes gets none."""
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1", "--batch_size", "7")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             os.path.join(ROOT, "main.py"), "--command", "train", *flags],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    losses = [row["loss"] for row in read_log(log_path(run_directory(parse_config(flags))))]
    assert len(losses) == 1 and np.isfinite(losses[0])


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc (Linux)")
def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    import utils
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda handle: synced.append(os.readlink(f"/proc/self/fd/{handle}"))
                        or real_fsync(handle))
    utils.atomic_write_text(str(tmp_path / "a.txt"), "x")
    assert len(synced) == 2 and synced[1] == str(tmp_path)  # the file (under its temporary name), then the folder
    assert os.path.basename(synced[0]).startswith(".tmp-") and (tmp_path / "a.txt").read_text() == "x"


def test_the_continue_command_names_the_launcher(monkeypatch):
    from utils import command_line
    monkeypatch.setattr(sys, "argv", ["main.py", "--dataset", "x"])
    assert command_line(extra=["--resume"]).startswith(sys.executable)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert command_line(extra=["--resume"]).split()[:3] == ["torchrun", "--nproc_per_node", "2"]
    assert command_line(extra=["--resume"]).endswith("main.py --dataset x --resume")
