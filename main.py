"""BS3LNet for hyperspectral anomaly detection: `--command train`, then `--command predict` with the same flags."""
import argparse
import errno
import os
import math
import signal
import sys
import threading

import distributed
from benchmark import benchmark, failed_jobs
from detectors import LRX_BORDER_NOTE, detect_with_baseline
from predict import predict
from train import Interrupted, train
from utils import UserError, command_line, flush_subnormals


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line (exit status 2), not the usage block."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: `kind` (int or float) within [low, high] (open ends where asked), finite."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value) or low is not None and (value < low or low_open and value == low) \
                or high is not None and (value > high or high_open and value == high):
            raise argparse.ArgumentTypeError(f"{text} is outside {describe_range(low, high, low_open, high_open)}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    parse.range = describe_range(low, high, low_open, high_open)
    return parse


def describe_range(low, high, low_open, high_open):
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def band_list(text):
    """An argparse type: '104-113,148-167' -> the sorted band numbers (from 1) it names."""
    bands = set()
    for piece in filter(None, (piece.strip() for piece in text.split(","))):
        low, _, high = piece.partition("-")
        try:
            low, high = int(low), int(high or low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{piece}' is not a band number or a range like 104-113") from None
        if not 1 <= low <= high:
            raise argparse.ArgumentTypeError(f"'{piece}': bands are numbered from 1, ranges go up (104-113)")
        bands.update(range(low, high + 1))
    return tuple(sorted(bands))


def positive_int():
    return number(int, 1)


def build_parser():
    """Every flag with its default and, for numbers, its range; the official code's flags keep its defaults."""
    parser = Parser(
        description="BS3LNet blind-spot self-supervised hyperspectral anomaly detection (Gao et al., TGRS 2023).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_official_flags(parser.add_argument_group("official flags (defaults as in the paper's code)"))
    add_further_flags(parser.add_argument_group("further flags"))
    add_evaluation_flags(parser.add_argument_group("evaluation"))
    add_speed_flags(parser.add_argument_group("speed and scale (opt-in)"))
    for action in parser._actions:  # each numeric flag's range, in --help
        if hasattr(action.type, "range"):
            action.help += f"; range {action.type.range}"
    return parser


def add_official_flags(official):
    official.add_argument("--command", choices=["train", "predict", "rx", "lrx", "benchmark"], default="train",
                          help="train or predict BS3LNet; rx / lrx: the global / local RX baselines; benchmark: "
                               "every --methods on every --datasets")
    official.add_argument("--dataset", default="AVIRIS-II",
                          help="scene: a .mat file (name in --data_dir, with or without .mat, or a path), an ENVI "
                               ".hdr or a (Geo)TIFF .tif/.tiff (name in --data_dir or path), or 'synthetic' for "
                               "the built-in scene")
    official.add_argument("--seed", type=number(int, 0, 2 ** 32 - 1), default=1,
                          help="seed for python, numpy, torch, masks and batch order")
    official.add_argument("--gpu_ids", default="0", help="GPU index that --device auto uses when CUDA is available")
    official.add_argument("--batch_size", type=positive_int(), default=100, help="patches per training step")
    official.add_argument("--patch", type=number(int, 2), default=19, help="patch side p (one patch per pixel)")
    official.add_argument("--size_window", type=number(int, 2), default=5,
                          help="window w the blind-spot sources come from")
    official.add_argument("--ratio", type=number(float, 0, 1, high_open=True), default=0.9,
                          help="share of each patch left unmasked; ceil(p*p*(1-ratio)) blind spots per patch")
    official.add_argument("--nch_ker", type=positive_int(), default=64, help="feature channels of the network")
    official.add_argument("--nblk", type=number(int, 0), default=2, help="number of residual blocks")
    official.add_argument("--norm_mode", choices=["bnorm", "inorm"], default="bnorm",
                          help="BatchNorm2d or InstanceNorm2d (no affine)")
    official.add_argument("--init_weight_type", choices=["normal", "xavier", "kaiming", "orthogonal"],
                          default="normal", help="convolution weight initialisation")
    official.add_argument("--init_gain", type=number(float, 0, low_open=True), default=0.02,
                          help="gain / std of the initialisation")
    official.add_argument("--lossm", choices=["l1", "l2"], default="l1", help="reconstruction loss at blind spots")
    official.add_argument("--learning_rate", type=number(float, 0, low_open=True), default=1e-4,
                          help="Adam learning rate")
    official.add_argument("--weight_decay", type=number(float, 0), default=1e-5, help="Adam weight decay")
    official.add_argument("--epochs", type=positive_int(), default=1000,
                          help="training epochs; predict loads the checkpoint of this epoch")


def add_further_flags(extra):
    extra.add_argument("--data_dir", default="./data", help="folder holding the scene files named by --dataset")
    extra.add_argument("--data_key", default=None,
                       help="name of the scene array in the .mat file (found automatically when unambiguous)")
    extra.add_argument("--gt_key", default=None,
                       help="name of the ground-truth map in the .mat file (found automatically when unambiguous)")
    extra.add_argument("--gt_file", default=None,
                       help="ground-truth map in a file of its own (.mat, ENVI .hdr or .tif; 1 = anomaly), used "
                            "instead of a map inside the scene's file")
    extra.add_argument("--drop_bands", type=band_list, default=(),
                       help="leave out these bands (numbered from 1, as in ENVI), e.g. 104-113,148-167")
    extra.add_argument("--keep_bad_bands", action="store_true",
                       help="keep the bands an ENVI header's bbl flags as bad (left out by default)")
    extra.add_argument("--checkpoints_dir", default="./checkpoints",
                       help="runs are saved in <checkpoints_dir>/<scene>/<configuration>/ (<scene>: the scene "
                            "file's name without folder and suffix)")
    extra.add_argument("--results_dir", default="./results",
                       help="results go to <results_dir>/<scene>/<configuration>/, the latest linked as "
                            "<results_dir>/<scene>/latest")
    extra.add_argument("--checkpoint", default=None,
                       help="predict from this file (ours, or an official BS3LNet .pkl state_dict) instead of "
                            "the run the flags describe")
    extra.add_argument("--save_freq", type=positive_int(), default=50,
                       help="save a checkpoint every N epochs (and always after the last)")
    extra.add_argument("--device", default="auto",
                       help="auto (cuda:<gpu_ids> when available, else cpu), cpu, cuda or cuda:N")
    extra.add_argument("--remask", action="store_true",
                       help="opt-in: draw fresh blind-spot masks every epoch (official: drawn once before training)")
    extra.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run with the same configuration instead of refusing")
    extra.add_argument("--dry-run", dest="dry_run", action="store_true",
                       help="train one batch to check data and settings, save nothing")
    extra.add_argument("--resume", action="store_true",
                       help="continue the run these flags describe from its latest checkpoint")
    extra.add_argument("--eval_every", type=positive_int(), default=None,
                       help="during training, record the AUC every N epochs in the log and plot AUC and loss")


def add_evaluation_flags(evaluation):
    evaluation.add_argument("--scoring", default="official",
                            help="how predict (and --eval_every) scores each pixel: official (the whole scene "
                                 "shown, as the official code) or blindspot (each pixel hidden behind a "
                                 "neighbour's spectrum, as in training; opt-in). benchmark: a comma-separated list")
    evaluation.add_argument("--score_repeats", type=positive_int(), default=4,
                            help="blindspot scoring: average over this many random partitions of the pixels")
    evaluation.add_argument("--roc_log", action="store_true", help="draw the ROC curve with a log-scale P_F axis")
    evaluation.add_argument("--win_in", type=positive_int(), default=3, help="lrx: inner (guard) window, odd")
    evaluation.add_argument("--win_out", type=number(int, 3), default=15,
                            help=f"lrx: outer window, odd. {LRX_BORDER_NOTE}")
    evaluation.add_argument("--datasets", default=None,
                            help="benchmark: comma-separated scenes; none means --dataset")
    evaluation.add_argument("--seeds", default="1,2,3", help="benchmark: comma-separated BS3LNet seeds")
    evaluation.add_argument("--methods", default="bs3lnet,rx,lrx", help="benchmark: comma-separated methods")


def add_speed_flags(speed):
    speed.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                       help="mixed precision for the network (fp16 on GPU only); off = faithful fp32")
    speed.add_argument("--tf32", action="store_true", help="allow TF32 matrix maths on NVIDIA GPUs")
    speed.add_argument("--patches_per_epoch", type=positive_int(), default=None,
                       help="train on this many random patch centres per epoch instead of all H*W")
    speed.add_argument("--keep_subnormals", action="store_true",
                       help="keep subnormal floats on the CPU; without it they are flushed to zero, which is up "
                            "to 2x faster at some stages of training and leaves the losses unchanged")
    speed.add_argument("--tile", type=positive_int(), default=None,
                       help="predict tile by tile: N x N pixels plus a margin of the receptive-field "
                            "radius (3 + 2*nblk); same map with bnorm, memory bounded by the tile")


def stop_on_sigterm():
    """SIGTERM (what schedulers and `kill` send) stops a run the way Ctrl-C does: the last epoch is saved."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def os_error_message(error):
    """One line for an operating-system error: what failed, on which path, and what to do."""
    where = f" {error.filename}" if error.filename else ""
    advice = {errno.ENOSPC: "free some disk space", errno.EACCES: "check its permissions",
              errno.EPERM: "check its permissions", errno.EROFS: "choose a writable folder",
              errno.ENOTDIR: "a path component is a file, not a folder",
              errno.EISDIR: "it is a folder, not a file"}.get(error.errno, "check the path")
    return f"{error.strerror or error}:{where}: {advice}"


def main(argv=None):
    """Run the command the flags ask for; returns the exit status (0, 2 for bad input, 130 interrupted)."""
    try:
        config = build_parser().parse_args(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Before any parallel CPU operation, so that every thread torch starts inherits the setting.
    if flush_subnormals(not config.keep_subnormals) == "mixed":
        print("note: torch's CPU threads started before subnormal flushing was set; some keep subnormals",
              file=sys.stderr)
    stop_on_sigterm()
    completed = False
    try:
        if config.command == "train":
            train(config)
        elif config.command == "predict":
            predict(config)
        elif config.command in ("rx", "lrx"):
            detect_with_baseline(config, config.command)
        else:
            failures = failed_jobs(benchmark(config, command_line(argv)))
            if failures:
                print(f"error: {failures} benchmark job(s) failed: see the 'failed' column", file=sys.stderr)
                return 1
        completed = True
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
        distributed.cleanup(completed)
    return 0


if __name__ == "__main__":
    status = main()
    if distributed.launched():
        # Under torchrun, leave without running the C++ runtime's exit handlers: gloo's threads are still
        # joinable then, and destroying them aborts the process ("terminate called without an active
        # exception") after a command that completed; every file is closed and written by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
