import os
import signal
import sys
import threading
import types
import weakref

import pytest
import torch

import train as train_module
import utils
from conftest import cli_flags, run_cli
from config import parse_config
from main import main
from runs import checkpoint_path, log_path, read_log, run_directory, saved_epochs
from train import Interrupted, train

STEPS_PER_EPOCH = 4  # tiny scene: 120 patches in batches of 32


def config_for(folder, *extra):
    return parse_config(cli_flags(folder, "tiny", *extra))


def interrupt_at(monkeypatch, call):
    """Make the call-th loss evaluation raise KeyboardInterrupt, as Ctrl-C would."""
    calls = []
    real = train_module.masked_loss

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train_module, "masked_loss", loss)


@pytest.mark.parametrize("remask", [False, True])
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(scene_dir, tmp_path, monkeypatch, remask):
    extra = ["--epochs", "4", "--save_freq", "10"] + (["--remask"] if remask else [])
    straight = config_for(scene_dir, *extra)
    expected_losses = train(straight)
    expected = torch.load(checkpoint_path(run_directory(straight), 4), weights_only=True)

    other = tmp_path / "other"
    other.mkdir()
    (other / "tiny.mat").write_bytes((scene_dir / "tiny.mat").read_bytes())
    interrupted = config_for(other, *extra)
    interrupt_at(monkeypatch, 2 * STEPS_PER_EPOCH + 2)  # second step of epoch 3
    with pytest.raises(Interrupted, match="epoch 2 is saved"):
        train(interrupted)
    assert saved_epochs(run_directory(interrupted)) == [2]  # saved on Ctrl-C although save_freq is 10
    monkeypatch.undo()
    resumed_losses = train(config_for(other, *extra, "--resume"))
    resumed = torch.load(checkpoint_path(run_directory(interrupted), 4), weights_only=True)

    assert resumed_losses == expected_losses
    assert all(torch.equal(expected["model"][k], resumed["model"][k]) for k in expected["model"])
    for a, b in zip(expected["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [row["epoch"] for row in read_log(log_path(run_directory(interrupted)))] == [1, 2, 3, 4]


def test_a_second_ctrl_c_does_not_cut_the_interrupted_trainings_save_short(scene_dir, monkeypatch):
    """A terminal's Ctrl-C reaches a benchmark worker twice (directly, and passed on by its parent)."""
    real_save = train_module.save_checkpoint

    def save_under_fire(path, state):
        os.kill(os.getpid(), signal.SIGINT)  # Python's handler would raise KeyboardInterrupt here
        real_save(path, state)
    monkeypatch.setattr(train_module, "save_checkpoint", save_under_fire)
    interrupt_at(monkeypatch, STEPS_PER_EPOCH + 1)
    handler = signal.getsignal(signal.SIGINT)
    config = config_for(scene_dir, "--epochs", "3", "--save_freq", "10")
    with pytest.raises(Interrupted, match="epoch 1 is saved"):
        train(config)
    assert saved_epochs(run_directory(config)) == [1]
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C works again afterwards


def drop_a_ctrl_c():
    """Ctrl-C delivered inside a weakref callback (torch runs some): Python reports its KeyboardInterrupt as
    unraisable and goes on."""
    class Referent:
        pass
    referent = Referent()
    reference = weakref.ref(referent, lambda _: os.kill(os.getpid(), signal.SIGINT))
    del referent
    return reference


def test_a_ctrl_c_python_drops_still_stops_the_training_at_the_next_batch(scene_dir, monkeypatch, capsys,
                                                                          sigint_raises):
    real_record = train_module.record_epoch

    def record_then_drop_a_ctrl_c(run_dir, config, session, epoch, seconds):
        real_record(run_dir, config, session, epoch, seconds)
        if epoch == 1:
            drop_a_ctrl_c()
    monkeypatch.setattr(train_module, "record_epoch", record_then_drop_a_ctrl_c)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's report, not pytest's
    flags = cli_flags(scene_dir, "tiny", "--epochs", "3", "--save_freq", "10")
    assert main(["--command", "train", *flags]) == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the command
    err = capsys.readouterr().err
    assert "epoch 1 is saved" in err and "--resume" in err
    assert "Traceback" not in err and "Exception ignored" not in err  # the dropped interrupt is not reported
    assert saved_epochs(run_directory(parse_config(flags))) == [1]


def test_only_an_interrupt_dropped_after_a_stop_request_goes_unreported(monkeypatch):
    reported = []
    hook = utils.quiet_dropped_interrupts(lambda unraisable: reported.append(unraisable.exc_type))
    monkeypatch.setattr(utils, "_stopped_threads", {threading.get_ident()})
    hook(types.SimpleNamespace(exc_type=KeyboardInterrupt))  # remembered: the training stops at its next batch
    hook(types.SimpleNamespace(exc_type=ValueError))
    monkeypatch.setattr(utils, "_stopped_threads", set())
    hook(types.SimpleNamespace(exc_type=KeyboardInterrupt))  # not one of ours
    assert reported == [ValueError, KeyboardInterrupt]


def test_a_stop_asked_of_one_thread_stops_that_thread_alone():
    """What a Dask task's stop watch asks (jobs.stopped_by): a worker runs other tasks in its other threads."""
    seen = []

    def another_thread():
        try:
            utils.raise_if_stop_requested()
            seen.append("went on")
        except KeyboardInterrupt:
            seen.append("stopped")
    utils.request_stop_of(threading.get_ident())
    try:
        neighbour = threading.Thread(target=another_thread)
        neighbour.start()
        neighbour.join()
        with pytest.raises(KeyboardInterrupt):
            utils.raise_if_stop_requested()
    finally:
        utils.clear_stop_request()
    utils.raise_if_stop_requested()  # carried out and forgotten: the thread's next job runs
    assert seen == ["went on"]


def test_resume_extends_a_finished_run(scene_dir):
    first = train(config_for(scene_dir, "--epochs", "2"))
    more = train(config_for(scene_dir, "--epochs", "3", "--resume"))
    assert more[:2] == first and len(more) == 3
    assert saved_epochs(run_directory(config_for(scene_dir))) == [2, 3]


def test_resume_without_a_checkpoint_is_a_user_error(scene_dir, capsys):
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "2", "--resume")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_ctrl_c_before_the_first_epoch_leaves_nothing(scene_dir, monkeypatch):
    interrupt_at(monkeypatch, 1)
    config = config_for(scene_dir, "--epochs", "2")
    with pytest.raises(Interrupted, match="nothing saved"):
        train(config)
    assert not os.path.exists(run_directory(config))  # not even the empty folder
    monkeypatch.undo()
    assert len(train(config)) == 2  # the same command works again, no --overwrite needed


def test_ctrl_c_exit_message_from_the_command_line(scene_dir, monkeypatch, capsys):
    interrupt_at(monkeypatch, STEPS_PER_EPOCH + 1)
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "3")]) == 130
    err = capsys.readouterr().err
    assert "epoch 1 is saved" in err and "--resume" in err


@pytest.mark.slow
def test_sigint_in_a_real_process_saves_and_exits_cleanly(scene_dir):
    """A real SIGINT to a running `main.py train`: exit status 130, no traceback, a resumable checkpoint."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    flags = cli_flags(scene_dir, "tiny", "--epochs", "100000", "--save_freq", "100000")
    # A suite started in the background (`pytest &`) ignores SIGINT, and so would the child: give it
    # the default disposition, so that Python turns SIGINT into KeyboardInterrupt as in a terminal.
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--command", "train", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dir = run_directory(config_for(scene_dir))
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        if os.path.exists(log_path(run_dir)) and len(read_log(log_path(run_dir))) >= 2:
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    assert len(saved_epochs(run_dir)) == 1
    resumed = run_cli("--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", str(saved_epochs(run_dir)[0] + 1),
                                                        "--resume"))
    assert resumed.returncode == 0, resumed.stderr


def test_a_replaced_scene_is_a_new_scene_with_runs_of_its_own(scene_dir, capsys):
    import scipy.io
    from conftest import tiny_scene
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "1")]) == 0
    hsi, gt = tiny_scene(bands=4)
    scipy.io.savemat(scene_dir / "tiny.mat", {"data": hsi, "map": gt})
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "2", "--resume")]) == 2
    assert "nothing to resume" in capsys.readouterr().err  # the old run belongs to the old contents
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--epochs", "1")]) == 0
    assert len(list((scene_dir / "checkpoints").iterdir())) == 2


def test_resumes_that_complete_no_epoch_leave_one_marker_in_the_log(tmp_path):
    from runs import read_log
    from train import trim_log
    log = tmp_path / "train_log.tsv"
    log.write_text("# config {}\nepoch\tloss\tseconds\tauc\n1\t0.5\t1.00\t\n2\t0.4\t1.00\t\n3\t0.3\t1.00\t\n")
    for _ in range(3):  # three resumes from epoch 2, each interrupted before an epoch completed
        trim_log(log, 2)
    assert log.read_text().count("# resumed after epoch 2") == 1
    assert [row["epoch"] for row in read_log(log)] == [1, 2]
