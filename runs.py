"""Run folders: naming, checkpoint paths, saved epochs, and the training log (the one reader and writer)."""
import contextlib
import glob
import json
import os
import re

from config import run_name
from scenes import scene_files, scene_identity, scene_name, scene_path
from utils import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

LOG_NAME = "train_log.tsv"
LOG_COLUMNS = ("epoch", "loss", "seconds", "auc")
CURVE_NAME = "training_curve.png"
LOCK_NAME = ".lock"


def run_directory(config):
    """The run's folder: <checkpoints_dir>/<scene identity>/<run name>, named by every flag that changes the
    trained weights or the scene as read (config.run_name) and by the scene's contents (scene_identity)."""
    return os.path.join(config.checkpoints_dir, scene_identity(config.data_dir, config.dataset), run_name(config))


def locate_run(config):
    """run_directory, after moving into it this scene's run from the folder it had when run folders were
    named by the scene's file name alone (<checkpoints_dir>/<file name>/<run name>)."""
    run_dir = run_directory(config)
    earlier = os.path.join(config.checkpoints_dir, scene_name(config.dataset), run_name(config))
    if earlier != run_dir and not os.path.exists(run_dir) and saved_epochs(earlier):
        adopt_earlier_run(earlier, run_dir, config)
    return run_dir


def adopt_earlier_run(earlier, run_dir, config):
    """Move a run folder of the file-name layout to `run_dir` if its log shows it was trained on this very file,
    unchanged since."""
    recorded = logged_config(log_path(earlier)) or {}
    first_saved = os.path.getmtime(checkpoint_path(earlier, saved_epochs(earlier)[0]))
    try:  # the file the run was trained on is this scene's file, unchanged since the run's first checkpoint
        path = scene_path(config.data_dir, config.dataset)
        same = os.path.samefile(scene_path(recorded["data_dir"], recorded["dataset"]), path) and \
            all(os.path.getmtime(file) <= first_saved for file in scene_files(path))
    except (KeyError, TypeError, UserError, OSError):  # no log, or its scene is no longer where it was
        same = False
    if not same:
        print(f"note: {earlier} holds a run of a scene named {scene_name(config.dataset)}, trained before run folders "
              f"were named by the scene's contents; it cannot be told to be this scene's, so it stays there (move it "
              f"to {run_dir} if it is)")
        return
    owner = lock_owner(earlier)
    if owner is not None:
        raise UserError(f"another training (process {owner}) is using {earlier}: wait for it to end")
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    os.rename(earlier, run_dir)
    print(f"note: moved the run in {earlier} to {run_dir} (run folders are now named by the scene's contents)")


def find_checkpoint(config):
    """The checkpoint predict loads: --checkpoint if given, else epoch --epochs of the run these flags describe."""
    if config.checkpoint:
        return config.checkpoint
    run_dir = locate_run(config)
    path = checkpoint_path(run_dir, config.epochs)
    if not os.path.exists(path):
        found = saved_epochs(run_dir)
        hint = (f"it has epochs {', '.join(map(str, found))}: pass one as --epochs" if found
                else "train with the same flags first, or pass --checkpoint PATH")
        raise UserError(f"no checkpoint for epoch {config.epochs} in {run_dir}: {hint}")
    return path


def checkpoint_path(run_dir, epoch):
    return os.path.join(run_dir, f"epoch_{epoch:04d}.pt")


def saved_epochs(run_dir):
    """Epochs with a checkpoint in `run_dir`, ascending."""
    paths = glob.glob(os.path.join(run_dir, "epoch_*.pt"))
    return sorted(int(m.group(1)) for m in (re.search(r"epoch_(\d+)\.pt$", p) for p in paths) if m)


def log_path(run_dir):
    return os.path.join(run_dir, LOG_NAME)


def log_header(config, model_args, parameters):
    """The log's first lines: the configuration and the network, as comments, then the column names."""
    return (f"# config {json.dumps(config, sort_keys=True)}\n# model {json.dumps(model_args)} parameters "
            f"{parameters}\n" + "\t".join(LOG_COLUMNS) + "\n")


def logged_config(path):
    """The configuration a training log records on its first line, or None (no log, or no such line)."""
    try:
        with open(path) as log:
            first = log.readline()
    except OSError:
        return None
    return json.loads(first[len("# config "):]) if first.startswith("# config ") else None


def log_row(epoch, loss, seconds, auc=None):
    return f"{epoch}\t{loss:.6f}\t{seconds:.2f}\t{'' if auc is None else f'{auc:.6f}'}\n"


def is_row(line):
    return line[:1].isdigit()


def parse_row(line):
    """A log line as dict(epoch, loss, seconds, auc); auc is None where it was not recorded."""
    epoch, loss, seconds, auc = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
    return dict(epoch=int(epoch), loss=float(loss), seconds=float(seconds), auc=float(auc) if auc else None)


def read_log(path):
    """The epoch rows of a training log, in file order."""
    with open(path) as log:
        return [parse_row(line) for line in log if is_row(line)]


def earlier_run_files(run_dir):
    """The checkpoints, log and curve of a run already in `run_dir`."""
    files = [checkpoint_path(run_dir, e) for e in saved_epochs(run_dir)]
    return files + [path for path in (log_path(run_dir), os.path.join(run_dir, CURVE_NAME)) if os.path.exists(path)]


def remove_temporary_files(folder):
    """Delete the `.tmp-*` files that a killed process left in `folder` (call while holding its lock)."""
    for path in glob.glob(os.path.join(folder, ".tmp-*")):
        os.remove(path)


def lock_owner(run_dir):
    """The process id holding `run_dir`'s lock (a training using it), or None."""
    path = os.path.join(run_dir, LOCK_NAME)
    if fcntl is None or not os.path.exists(path):
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "?"
    return None


@contextlib.contextmanager
def run_lock(run_dir):
    """Hold `run_dir` for one training at a time: a second one started meanwhile is refused.

    An advisory lock (flock) on `run_dir/.lock`, released by the system if the process dies; the file
    holds the owner's process id and is removed on release. Creating it also proves the folder writable
    before any time is spent on training. Folders it created are removed again if they stay empty (a run
    refused for bad input). Without fcntl (Windows) there is no lock.
    """
    created, folder = [], os.path.abspath(run_dir)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        created.append(folder)  # deepest first
        folder = os.path.dirname(folder)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_NAME)
    handle = open(path, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "?"
                raise UserError(f"another training (process {owner}) is using {run_dir}: wait for it to end, "
                                "or change --seed or --checkpoints_dir") from None
            if not os.path.exists(path) or os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                raise UserError(f"another training just released {run_dir}: start again")
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            os.remove(path)  # while still locked, so no one else holds a lock on this file
            for folder in created:  # a run that failed before writing anything leaves no folder
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
    finally:
        handle.close()
