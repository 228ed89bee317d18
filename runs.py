"""Run folders: naming, checkpoint paths, saved epochs, and the training log (the one reader and writer)."""
import glob
import json
import os
import re

LOG_NAME = "train_log.tsv"
LOG_COLUMNS = ("epoch", "loss", "seconds", "auc")


def run_directory(config):
    """The run's checkpoint folder, named by every setting that changes the trained weights (not epochs)."""
    name = (f"p{config.patch}_w{config.size_window}_r{config.ratio}_k{config.nch_ker}_b{config.nblk}"
            f"_{config.norm_mode}_{config.init_weight_type}{config.init_gain}_{config.lossm}"
            f"_lr{config.learning_rate}_wd{config.weight_decay}_bs{config.batch_size}_seed{config.seed}")
    if config.remask:
        name += "_remask"
    if config.patches_per_epoch:
        name += f"_ppe{config.patches_per_epoch}"
    if config.amp != "off":
        name += f"_{config.amp}"
    return os.path.join(config.checkpoints_dir, config.dataset, name)


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
