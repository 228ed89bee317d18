"""Shared helpers: user-facing errors, seeding, devices, subnormal flushing, the command line, safe file writes."""
import contextlib
import errno
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading

import numpy as np
import torch


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""


def seed_everything(seed):
    """Seed python, numpy and torch (CPU and CUDA) and make cuDNN deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def resolve_device(device, gpu_ids="0"):
    """Turn `auto|cpu|cuda|cuda:N` into a torch.device, a GPU always with its index (cuda:0, never cuda);
    auto picks cuda:<first of gpu_ids> when CUDA is available, else the CPU."""
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = f"cuda:{str(gpu_ids).split(',')[0].strip()}"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device '{device}': use auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for a GPU but CUDA is not available: use --device cpu")
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if resolved.type != "cpu":
        raise UserError(f"unsupported --device '{device}': use auto, cpu, cuda or cuda:N")
    return resolved


def _read_umask():
    mask = os.umask(0)  # the umask can only be read by setting it
    os.umask(mask)
    return mask


UMASK = _read_umask()


def follow_umask(path, directory=False):
    """Give `path` the permissions a plain open() or mkdir() would (temporary files are made 0600 / 0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def sync_to_disk(path):
    """fsync a file, or a folder's entries (so a rename into it survives a power loss); no-op where unsupported."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:  # folders cannot be opened on Windows
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write(path, write):
    """Call `write(tmp_path)` then rename onto `path`, so an interruption never leaves half a file.

    The file is flushed to disk before the rename and the folder after it, so even a power loss leaves
    either the old file or the complete new one; it gets the permissions the umask gives.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]  # keep the extension: some writers (savefig) dispatch on it
    handle, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        write(tmp_path)
        sync_to_disk(tmp_path)
        follow_umask(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as error:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        if isinstance(error, Exception) and not isinstance(error, OSError):  # e.g. torch.save on a full disk
            raise write_error(error, path) from error
        raise
    sync_to_disk(directory)


_stopped_threads = set()  # the threads asked to stop (request_stop, request_stop_of), until they have stopped


def request_stop(signum=None, frame=None):
    """The handler of Ctrl-C and SIGTERM during a command: remember the request, then raise KeyboardInterrupt.

    Python drops an exception raised where it ignores exceptions (a weakref callback, a `__del__`: torch runs
    some); the training loop asks raise_if_stop_requested() before each batch, so such a Ctrl-C still stops it.
    Python runs signal handlers in the main thread: the request is the main thread's.
    """
    request_stop_of(threading.get_ident())
    raise KeyboardInterrupt


def request_stop_of(thread):
    """Ask the thread whose identifier is `thread` to stop: its training stops at its next batch (signals
    reach only the main thread; this reaches the thread a Dask worker runs a task in)."""
    _stopped_threads.add(thread)


def raise_if_stop_requested():
    """KeyboardInterrupt if this thread was asked to stop: by Ctrl-C or SIGTERM, whose KeyboardInterrupt Python
    may have dropped, or from another thread."""
    if threading.get_ident() in _stopped_threads:
        raise KeyboardInterrupt


def clear_stop_request():
    """Forget this thread's stop request once it is carried out."""
    _stopped_threads.discard(threading.get_ident())


def quiet_dropped_interrupts(report):
    """A sys.unraisablehook that passes what Python drops on to `report` (the hook it replaces), except a
    KeyboardInterrupt after request_stop: that stop is remembered and carried out, not shown as a traceback."""
    def hook(unraisable):
        stop_requested = threading.get_ident() in _stopped_threads
        if not (stop_requested and issubclass(unraisable.exc_type, KeyboardInterrupt)):
            report(unraisable)
    return hook


@contextlib.contextmanager
def stop_on_signals():
    """Ctrl-C and SIGTERM (what schedulers and `kill` send) stop the command inside by request_stop; the
    earlier handlers come back on leaving. A Ctrl-C that the process was started to ignore (`nohup`, `&`)
    stays ignored; outside the main thread signals never reach Python code, and nothing is changed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    handlers = {number: handler for number, handler in handlers.items() if handler not in (None, signal.SIG_IGN)}
    hook = sys.unraisablehook
    clear_stop_request()
    for number in handlers:
        signal.signal(number, request_stop)
    sys.unraisablehook = quiet_dropped_interrupts(hook)
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        sys.unraisablehook = hook
        clear_stop_request()


@contextlib.contextmanager
def signals_ignored():
    """Ctrl-C and SIGTERM are ignored inside (in the main thread; elsewhere signals never reach Python code):
    an interrupted training's save is not cut short by a second signal, such as the one a terminal's Ctrl-C
    sends both a benchmark worker and its parent, which passes it on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    handlers = {number: handler for number, handler in handlers.items() if handler is not None}  # None: set in C
    for number in handlers:
        signal.signal(number, signal.SIG_IGN)
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def write_error(error, path):
    """An OSError for a writer's failure of another type: ENOSPC when the disk is (nearly) full."""
    full = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 2 ** 20
    cause = str(error).splitlines()[0] if str(error) else type(error).__name__
    return OSError(errno.ENOSPC if full else errno.EIO, f"writing failed ({cause})", path)


def atomic_write_text(path, text):
    """Write `text` to `path` atomically."""
    def write(tmp_path):
        with open(tmp_path, "w") as handle:
            handle.write(text)
    atomic_write(path, write)


def command_line(argv=None, extra=()):
    """The shell command that runs this program again with `argv` (default: this process's) plus `extra`.

    With the interpreter in use, and under torchrun with its launcher and process count.
    """
    given = sys.argv[1:] if argv is None else list(argv)
    args = given + [a for a in extra if a not in given]
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        launcher = ["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])]
    else:
        launcher = [sys.executable]
    relative = os.path.relpath(script)
    return shlex.join([*launcher, script if relative.startswith("..") else relative, *args])


def set_tf32(enabled):
    """TF32 matrix maths on Ampere+ GPUs: off by default (faithful fp32; torch enables it for cuDNN)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def flush_subnormals(enabled=True):
    """Flush subnormal floats to zero on the CPU (FTZ and DAZ); returns how the threads now handle them.

    Many x86 CPUs take a slow path for floats below 1.2e-38; a long CPU run was reported to take twice
    as long per epoch at some stages without flushing, and flushing changes no printed loss
    (bench/subnormals.py). The setting is per thread and torch's intra-op threads copy it when they
    start, so call this before the first parallel CPU operation of the process: main() does, right
    after parsing the flags.
    """
    torch.set_flush_denormal(enabled)
    return subnormal_handling()


def subnormal_handling():
    """'flushed', 'kept' or 'mixed': what the CPU threads do with a subnormal result, checked by computing one.

    A product of 1e-30 and 1e-10 (1e-40, subnormal in float32) over enough elements that every thread
    of torch's intra-op pool computes a share of it.
    """
    count = 65536 * max(torch.get_num_threads(), 1)
    flushed = torch.full((count,), 1e-30).mul_(1e-10) == 0
    return "flushed" if bool(flushed.all()) else "kept" if not bool(flushed.any()) else "mixed"


def usable_cores():
    """The CPU cores this process may run on (its affinity where the system tells it, else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def autocast(device, amp):
    """Mixed-precision context for `--amp off|bf16|fp16` on `device` (a no-op for off)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def range_list_text(ranges, separator=", "):
    """((104, 113), (148, 148)) as '104-113, 148'."""
    return separator.join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)
