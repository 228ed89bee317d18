"""Where benchmark jobs run: one after another here, in N worker processes (--jobs N), or on a Dask cluster
(--scheduler ADDRESS). Each job is independent (one training at most), so any engine runs it."""
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import socket
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from utils import (UserError, clear_stop_request, quiet_dropped_interrupts, request_stop, request_stop_of,
                   usable_cores)

PROJECT = os.path.dirname(os.path.abspath(__file__))  # sent to Dask workers, which import the project from it
BOOTSTRAP = "__import__('sys').path.insert(0, args[0]) or __import__('jobs').remote_job(*args)"

WORKER_DIED = ("a worker process died during it (killed, e.g. by the system for lack of memory: fewer --jobs need "
               "less); a training it ran saved its last epoch where it could. Run the benchmark again to retry")
DASK_WORKERS_DIED = ("every Dask worker that ran it died (killed, e.g. for lack of memory: give the workers more, or "
                     "fewer threads each). Run the benchmark again to retry")
CLUSTER_INSTALL = "pip install -r requirements-cluster.txt (Dask's distributed)"
# glibc's mallopt parameters (malloc.h), its initial mmap threshold and the ceilings its dynamic thresholds reach
# on a 64-bit system.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
INITIAL_MMAP_THRESHOLD, DYNAMIC_MMAP_CEILING = 128 << 10, 32 << 20


def run_jobs(config, jobs, work, log_dir, report, lost):
    """Call `work(config, job)` for every job on the engine --jobs / --scheduler asks for, calling
    `report(index, result)` as each ends, or `lost(index, why)` for a job whose worker died (killed, e.g. by
    the system for lack of memory). Returns None, or why it stopped early (Ctrl-C: the finished jobs are
    reported, the running ones stopped, the others not started)."""
    if config.scheduler:
        return on_dask(config, jobs, work, log_dir, report, lost)
    if config.jobs > 1:
        return in_processes(config, jobs, work, log_dir, report, lost)
    for index, job in enumerate(jobs):
        try:
            report(index, work(config, job))
        except KeyboardInterrupt as interruption:
            return f"interrupted during job {index + 1} of {len(jobs)}" + (f": {interruption}" if str(interruption)
                                                                           else "")
    return None


def in_processes(config, jobs, work, log_dir, report, lost):
    """The jobs in config.jobs worker processes, each with an equal share of the CPU threads and its output
    in a log file of its own; an overall progress bar and one line per finished job. A worker that dies takes
    the pool's running jobs with it (they are lost, their trainings saved); the others go on in a new pool."""
    threads = threads_per_job(config.jobs)
    os.makedirs(log_dir, exist_ok=True)
    waiting = iter(enumerate(jobs))
    with tqdm(total=len(jobs), desc="jobs", dynamic_ncols=True) as bar:
        def ended(index, result=None, why=None):
            if why is None:
                report(index, result)
            else:
                lost(index, why)
            bar.update()
        try:
            while in_pool(config, threads, waiting, work, log_dir, ended):
                pass
        except KeyboardInterrupt:
            return (f"interrupted with {len(jobs) - bar.n} of {len(jobs)} jobs unfinished; running "
                    "trainings saved their last epoch")
    return None


def in_pool(config, threads, waiting, work, log_dir, ended):
    """Run the `waiting` jobs in one pool of worker processes; True if a worker died before they were all done.

    A job is submitted only when a worker is free: a job queued in the pool could not be cancelled on Ctrl-C,
    and a worker whose job was interrupted would start it."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    running = {}
    with ProcessPoolExecutor(config.jobs, mp_context=context, initializer=start_worker,
                             initargs=(threads, not config.keep_subnormals)) as pool:
        def hand_out():
            index, job = next(waiting, (None, None))
            if job is not None:
                log = os.path.join(log_dir, f"job{index + 1:03d}.log")
                running[pool.submit(logged, work, config, job, log)] = index
        try:
            # Start every worker before the first job: Python's pool starts them one per submission and, until
            # its next wake-up, does not watch one started after its last (a death there would go unseen).
            wait([pool.submit(int) for _ in range(config.jobs)])
            for _ in range(config.jobs):
                hand_out()
            while running:
                done = wait(running, return_when=FIRST_COMPLETED).done
                if any(isinstance(future.exception(), BrokenProcessPool) for future in done):
                    # The pool stops its other workers too (they save their trainings): wait for all of them.
                    for future in wait(running).done:
                        if isinstance(future.exception(), BrokenProcessPool):
                            ended(running[future], why=WORKER_DIED)
                        else:
                            ended(running[future], future.result())
                    return True
                for future in done:
                    ended(running.pop(future), future.result())
                    hand_out()
        except KeyboardInterrupt:
            stop_workers(pool, running)
            raise
    return False


def threads_per_job(count):
    """CPU threads for each of `count` jobs run at once: an equal share of the usable cores, at least one."""
    return max(1, usable_cores() // count)


def stop_workers(pool, running):
    """Ctrl-C: interrupt the running jobs (their trainings save) and wait for them. The signal is repeated each
    second until they end: a training remembers one that lands where Python ignores exceptions (a weakref
    callback, utils.request_stop), a prediction would go on."""
    while True:
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGINT)
        if not wait(running, timeout=1).not_done:
            break
    pool.shutdown(wait=True, cancel_futures=True)


_stopping = False  # set in a worker by Ctrl-C or SIGTERM: it starts no further job
_in_job = False  # whether the worker is running a job


def interrupt(signum, frame):
    """A worker's Ctrl-C and SIGTERM: its job is interrupted (a training saves its last epoch, ignoring further
    signals meanwhile, train.run_epochs); a worker between jobs just ends."""
    global _stopping
    if not _in_job:
        raise SystemExit(1)
    _stopping = True
    request_stop()


def start_worker(threads, flush):
    """A worker process: its share of the CPU threads, subnormals flushed (unless --keep_subnormals), Ctrl-C
    and SIGTERM interrupt."""
    import torch

    from utils import flush_subnormals
    torch.set_num_threads(threads)
    flush_subnormals(flush)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    sys.unraisablehook = quiet_dropped_interrupts(sys.unraisablehook)


def logged(work, config, job, path):
    """work(config, job) with its printed output in the file `path`; none once the worker was interrupted."""
    global _in_job
    if _stopping:
        raise KeyboardInterrupt
    _in_job = True
    try:
        with open(path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return work(config, job)
    finally:
        _in_job = False


def on_dask(config, jobs, work, log_dir, report, lost):
    """The jobs on the Dask cluster at --scheduler. The scheduler and the workers unpickle every task, and need
    not have this project on their path: a task is the builtin eval of BOOTSTRAP with plain data, which adds
    the project's folder (on a filesystem every worker sees, like the data and the outputs) to the path.

    Ctrl-C sets a Dask Event the jobs watch (stopped_by): the running trainings save their last completed
    epoch and end, the jobs not started do not start, and the jobs that end meanwhile are reported. A second
    Ctrl-C stops waiting for them."""
    try:
        from dask.distributed import Client, Event, as_completed
    except ImportError:
        raise UserError(f"--scheduler needs Dask: {CLUSTER_INSTALL}") from None
    try:
        client = Client(config.scheduler, timeout="20s")
    except (OSError, TimeoutError) as error:
        raise UserError(f"no Dask scheduler answers at {config.scheduler} ({error}): start one (dask scheduler, "
                        "or dask-jobqueue) and pass its address") from None
    with client:
        stop = Event(client=client)  # a name of its own: another benchmark on the cluster watches another
        futures = {client.submit(eval, BOOTSTRAP, {"args": (
            PROJECT, work.__module__, work.__name__, config.as_dict(), tuple(vars(job).values()),
            os.path.abspath(os.path.join(log_dir, f"job{index + 1:03d}.log")), stop.name)}, pure=False): index
            for index, job in enumerate(jobs)}
        ended = set()

        def collect(completed):
            for future in completed:
                ended.add(futures[future])
                dask_result(future, futures[future], report, lost)
        try:
            collect(tqdm(as_completed(futures), total=len(jobs), desc="jobs", dynamic_ncols=True))
            return None
        except KeyboardInterrupt:
            unfinished = [future for future in futures if futures[future] not in ended]
        try:
            stop.set()
            print(f"interrupted: stopping {len(unfinished)} unfinished jobs (running trainings save their last "
                  "epoch; Ctrl-C again leaves them running)", file=sys.stderr)
            collect(as_completed(unfinished))
        except KeyboardInterrupt:
            client.cancel(unfinished)
            return (f"interrupted again with {len(jobs) - len(ended)} of {len(jobs)} jobs unfinished; trainings "
                    "still running on the workers were left to finish")
        return (f"interrupted with {len(jobs) - len(ended)} of {len(jobs)} jobs unfinished; running trainings "
                "saved their last epoch")


def dask_result(future, index, report, lost):
    """Report a finished Dask job's rows; a job stopped by Ctrl-C (None) reports nothing."""
    from dask.distributed import KilledWorker
    try:
        rows = future.result()
    except ImportError as error:
        raise UserError(f"a Dask worker cannot import this project from {PROJECT} ({error}): the project, data, "
                        "checkpoints and results must be on a filesystem every worker sees") from None
    except KilledWorker:  # Dask gave up on it after its workers died (allowed-failures times)
        lost(index, DASK_WORKERS_DIED)
        return
    if rows is not None:
        report(index, rows)


def remote_job(project, module, function, fields, job_fields, log, stop_event=None):
    """On a Dask worker (BOOTSTRAP has put `project` on the path): the job's rows, or its failure's; its output
    goes to the file `log` in the shared results folder. None if the Dask Event named `stop_event` was set
    (Ctrl-C in the benchmark) before the job started or while it ran (its training then saved its last epoch)."""
    import importlib

    from benchmark import Job, row_keys
    from config import Config
    from utils import flush_subnormals
    config, job = Config(**fields), Job(*job_fields)
    reason = check_worker(config, job)
    if reason:
        return [(key, dict(error=reason)) for key in row_keys(config, job)]
    os.makedirs(os.path.dirname(log), exist_ok=True)
    # A Dask task runs in a thread of the worker's, and the flushing of subnormal floats is a thread's own
    # setting: set it here, in the task's thread, as main() does for a command (utils.flush_subnormals).
    flush_subnormals(not config.keep_subnormals)
    try:
        with stopped_by(stop_event), heap_for_tensors():
            return logged(getattr(importlib.import_module(module), function), config, job, log)
    except KeyboardInterrupt:
        return None


@contextlib.contextmanager
def stopped_by(event_name):
    """Inside, setting the Dask Event `event_name` stops this thread's training at its next batch
    (utils.request_stop_of); a job that starts after it was set raises KeyboardInterrupt at once. A thread
    watches the event: a task cannot be interrupted otherwise, Dask runs it in a thread of the worker's."""
    if event_name is None:
        yield
        return
    from dask.distributed import Event
    event = Event(event_name)  # the worker's client, found from this, the task's thread
    if event.is_set():
        raise KeyboardInterrupt
    thread, lock, ended = threading.get_ident(), threading.Lock(), threading.Event()

    def watch():
        while True:
            try:  # returns at once when set; the timeout bounds how long the watch outlives its job
                stop = event.wait(timeout=10)
            except Exception:  # the scheduler is gone: nobody is left to ask for a stop
                return
            with lock:  # never marks the thread once its job has ended (a worker reuses its threads)
                if ended.is_set():
                    return
                if stop:
                    request_stop_of(thread)
                    return
    threading.Thread(target=watch, daemon=True, name="bs3lnet-stop-watch").start()
    try:
        yield
    finally:
        with lock:
            ended.set()
        clear_stop_request()


def glibc():
    """The C library if it is glibc, whose mallopt heap_for_tensors calls, else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@contextlib.contextmanager
def heap_for_tensors():
    """Give glibc's heap back its usual thresholds for one job on a Dask worker, and Dask's after it.

    Dask's nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536, so that they give freed memory back to
    the system. Setting it also fixes glibc's mmap threshold at 128 KiB: every tensor above that is mapped and
    unmapped again at each training step. An epoch of HYDICE-II then took 8.3 million page faults instead of
    0.65 million and ran 1.3x slower (bench/README.md). Nothing changes where that variable is unset or the C
    library is not glibc.
    """
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    libc = glibc() if trim is not None else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, DYNAMIC_MMAP_CEILING)
    libc.mallopt(M_TRIM_THRESHOLD, 2 * DYNAMIC_MMAP_CEILING)
    try:
        yield
    finally:
        mmap = os.environ.get("MALLOC_MMAP_THRESHOLD_", "")
        libc.mallopt(M_MMAP_THRESHOLD, int(mmap) if mmap.isdigit() else INITIAL_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, int(trim) if trim.isdigit() else 2 * INITIAL_MMAP_THRESHOLD)
        libc.malloc_trim(0)  # what the worker's own threshold would have given back


def check_worker(config, job):
    """Why this worker cannot run `job` (it does not see the data, or cannot write the outputs), or None."""
    shared = "data, checkpoints and results must be on a filesystem every worker sees"
    if job.dataset != "synthetic" and not os.path.isdir(config.data_dir):
        return f"worker {socket.gethostname()} does not see --data_dir {config.data_dir}: {shared}"
    for flag, folder in (("--checkpoints_dir", config.checkpoints_dir), ("--results_dir", config.results_dir)):
        try:
            os.makedirs(folder, exist_ok=True)
            writable = os.access(folder, os.W_OK)
        except OSError:
            writable = False
        if not writable:
            return f"worker {socket.gethostname()} cannot write {flag} {folder}: {shared}"
    return None
