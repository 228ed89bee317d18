"""BS3LNet for hyperspectral anomaly detection: `--command train`, then `--command predict` with the same flags."""
import errno
import os
import sys

import data_parallel
from benchmark import benchmark
from config import parse_config
from detectors import detect_with_baseline
from predict import predict
from train import Interrupted, train
from utils import UserError, command_line, flush_subnormals, stop_on_signals


def os_error_message(error):
    """One line for an operating-system error: what failed, on which path, and what to do."""
    advice = {errno.ENOSPC: "free some disk space", errno.EACCES: "check its permissions",
              errno.EPERM: "check its permissions", errno.EROFS: "choose a writable folder",
              errno.ENOTDIR: "a path component is a file, not a folder",
              errno.EISDIR: "it is a folder, not a file"}.get(error.errno, "check the path")
    return ": ".join(str(part) for part in (error.strerror or error, error.filename, advice) if part)


def run_command(config, argv):
    """The command's work; returns its exit status (1: a benchmark job failed)."""
    if config.command == "train":
        train(config)
    elif config.command == "predict":
        predict(config)
    elif config.command in ("rx", "lrx"):
        detect_with_baseline(config, config.command)
    else:
        failures = benchmark(config, command_line(argv))
        if failures:
            print(f"error: {failures} benchmark job(s) failed: see the 'failed' column", file=sys.stderr)
            return 1
    return 0


def main(argv=None):
    """Run the command the flags ask for; returns the exit status (0, 2 for bad input, 130 interrupted)."""
    try:
        config = parse_config(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Before any parallel CPU operation, so that every thread torch starts inherits the setting.
    if flush_subnormals(not config.keep_subnormals) == "mixed":
        print("note: torch's CPU threads started before subnormal flushing was set; some keep subnormals",
              file=sys.stderr)
    completed = False
    try:
        with stop_on_signals():  # Ctrl-C and SIGTERM: a training saves its last completed epoch
            status = run_command(config, argv)
        completed = status == 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # unreadable scene, unwritable or full results / checkpoints folder
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory: use --patches_per_epoch and --tile, or a smaller scene", file=sys.stderr)
        return 2
    except Interrupted as interruption:
        if str(interruption):
            print(str(interruption), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside training there is nothing to save
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        data_parallel.cleanup(completed)
    return status


if __name__ == "__main__":
    status = main()
    if data_parallel.launched():
        # Under torchrun, leave without running the C++ runtime's exit handlers: gloo's threads are still
        # joinable then, and destroying them aborts the process ("terminate called without an active
        # exception") after a command that completed; every file is closed and written by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
