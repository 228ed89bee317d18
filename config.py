"""The configuration: every flag declared once, with its default, its check and what it changes.

`parse_config(argv)` parses and checks the command line once into a frozen `Config`; variants are made
with `dataclasses.replace`, which checks the combination again. Each field declares its role:

- WEIGHTS: it changes the trained weights, so it names the run folder;
- SCENE: it changes the scene as read (its bands, its array), so it names the run folder and every
  result folder (the baselines' too);
- RESULT: it changes a result but not the weights (scoring, ground truth, windows), so it names the
  results folder;
- NEITHER: where and how things run (paths, device, progress); no folder depends on it.

The folders are derived from these declarations (`run_name`, `result_folder`) plus the scene's identity
(`scenes.scene_identity`), so a flag added with its role can never silently reuse another run.
"""
import argparse
import hashlib
import math
import os
from dataclasses import asdict, dataclass, field, fields

from utils import UserError, range_list_text

WEIGHTS, SCENE, RESULT, NEITHER = "weights", "scene", "result", "neither"
ROLES = (WEIGHTS, SCENE, RESULT, NEITHER)
COMMANDS = ("train", "predict", "rx", "lrx", "benchmark")
METHODS = ("bs3lnet", "rx", "lrx")
SCORINGS = ("official", "blindspot")
GROUPS = {"official": "official flags (defaults as in the paper's code)", "further": "further flags",
          "evaluation": "evaluation", "benchmark": "benchmark", "speed": "speed and scale (opt-in)"}
LRX_BORDER_NOTE = ("Near the edges both windows are clipped to the scene, so border pixels draw their background "
                   "from fewer pixels (no padding, which would mirror a pixel into its own background)")


# ---- argparse types: each flag's range or choice is checked here, once ----

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


def positive_int():
    return number(int, 1)


def band_ranges(text):
    """An argparse type: '104-113,148-167' -> ((104, 113), (148, 167)), sorted and merged, never expanded
    (a range is checked against the scene's band count when the scene is read)."""
    ranges = []
    for piece in filter(None, (piece.strip() for piece in text.split(","))):
        low, dash, high = piece.partition("-")
        try:
            low, high = int(low), int(high) if dash else int(low)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{piece}' is not a band number or a closed range like 104-113 (both ends given)") from None
        if not 1 <= low <= high:
            raise argparse.ArgumentTypeError(f"'{piece}': bands are numbered from 1 and ranges go up (104-113)")
        ranges.append((low, high))
    merged = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def comma_list(cast=str, choices=None):
    """An argparse type: 'a,b' -> ('a', 'b'), each item cast and (with `choices`) one of them; never empty."""
    def parse(text):
        try:
            items = tuple(cast(item.strip()) for item in text.split(",") if item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {cast.__name__} "
                                             "values") from None
        if not items:
            raise argparse.ArgumentTypeError("the list is empty: give comma-separated values")
        unknown = [item for item in items if choices and item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(str, unknown))}: choose from "
                                             f"{', '.join(choices)}")
        return items
    parse.__name__ = f"list of {cast.__name__}"
    return parse


def seed_list(text):
    return comma_list(number(int, 0, 2 ** 32 - 1))(text)


def grid_terms(text):
    """An argparse type: 'ratio=0.8,0.9 patch=15,19' -> (('ratio', (0.8, 0.9)), ('patch', (15, 19))).

    Each term names a flag that changes the weights, the scene or a result, and each value is checked
    as the flag itself would check it.
    """
    by_name = {item.name: item for item in fields(Config)}
    terms = []
    for term in text.split():
        name, _, values = term.partition("=")
        name = name.removeprefix("--")
        item = by_name.get(name)
        if item is None or item.metadata["role"] == NEITHER or name in ("dataset", "seed") \
                or isinstance(item.default, tuple):
            raise argparse.ArgumentTypeError(
                f"'{term}': a grid term is flag=v1,v2 with a flag that changes the weights or a result (not "
                "dataset or seed: use --datasets and --seeds)")
        if not values or name in dict(terms):
            raise argparse.ArgumentTypeError(f"'{term}': give each grid flag once, with its values (flag=v1,v2)")
        terms.append((name, tuple(grid_value(item, value) for value in values.split(","))))
    return tuple(terms)


def grid_value(item, text):
    """One grid value, checked like the flag's own value."""
    meta = item.metadata
    if item.type is bool:
        if text not in ("on", "off"):
            raise argparse.ArgumentTypeError(f"{item.name}={text}: a switch takes on or off")
        return text == "on"
    try:
        value = meta["parse"](text) if meta["parse"] else text
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{item.name}: {error}") from None
    if meta["choices"] and value not in meta["choices"]:
        raise argparse.ArgumentTypeError(f"{item.name}={text}: choose from {', '.join(meta['choices'])}")
    return value


# ---- declarations ----

def flag(default, role, help, group="further", *, parse=None, choices=None, tag=None, glued=False,
         name=None, methods=None):
    """A Config field: its default, role and help, how the command line gives it, and its part of a folder name.

    `tag` is a format string for the value ('p{}'), or a function of the whole Config returning the name
    piece or None; a boolean's tag appears when it is on, any other format-string tag when the value
    differs from the default, or always for the official flags. `glued` appends the piece to the one
    before it without '_'. `methods` limits a RESULT tag to some methods' results.
    """
    assert role in ROLES
    return field(default=default, metadata=dict(role=role, help=help, group=group, parse=parse, choices=choices,
                                                 tag=tag, glued=glued, name=name, methods=methods))


@dataclass(frozen=True)
class Config:
    """One command's settings. The WEIGHTS fields come first, in the order the run folder names them."""
    # The run folder's name, in this order: p19_w5_r0.9_k64_b2_bnorm_normal0.02_l1_lr0.0001_wd1e-05_bs100_seed1
    patch: int = flag(19, WEIGHTS, "patch side p (one patch per pixel)", "official", parse=number(int, 2), tag="p{}")
    size_window: int = flag(5, WEIGHTS, "window w the blind-spot sources come from (2 <= w <= p)", "official",
                            parse=number(int, 2), tag="w{}")
    ratio: float = flag(0.9, WEIGHTS, "share of each patch left unmasked; ceil(p*p*(1-ratio)) blind spots per "
                        "patch", "official", parse=number(float, 0, 1, high_open=True), tag="r{}")
    nch_ker: int = flag(64, WEIGHTS, "feature channels of the network", "official", parse=positive_int(), tag="k{}")
    nblk: int = flag(2, WEIGHTS, "number of residual blocks", "official", parse=number(int, 0), tag="b{}")
    norm_mode: str = flag("bnorm", WEIGHTS, "BatchNorm2d or InstanceNorm2d (no affine)", "official",
                          choices=("bnorm", "inorm"), tag="{}")
    init_weight_type: str = flag("normal", WEIGHTS, "convolution weight initialisation", "official",
                                 choices=("normal", "xavier", "kaiming", "orthogonal"), tag="{}")
    init_gain: float = flag(0.02, WEIGHTS, "gain / std of the initialisation", "official",
                            parse=number(float, 0, low_open=True), tag="{}", glued=True)
    lossm: str = flag("l1", WEIGHTS, "reconstruction loss at blind spots", "official", choices=("l1", "l2"), tag="{}")
    learning_rate: float = flag(1e-4, WEIGHTS, "Adam learning rate", "official",
                                parse=number(float, 0, low_open=True), tag="lr{}")
    weight_decay: float = flag(1e-5, WEIGHTS, "Adam weight decay", "official", parse=number(float, 0), tag="wd{}")
    batch_size: int = flag(100, WEIGHTS, "patches per training step", "official", parse=positive_int(), tag="bs{}")
    seed: int = flag(1, WEIGHTS, "seed for python, numpy, torch, masks and batch order", "official",
                     parse=number(int, 0, 2 ** 32 - 1), tag="seed{}")
    remask: bool = flag(False, WEIGHTS, "opt-in: draw fresh blind-spot masks every epoch (official: drawn once "
                        "before training)", tag="remask")
    patches_per_epoch: int = flag(None, WEIGHTS, "train on this many random patch centres per epoch instead of all "
                                  "H*W", "speed", parse=positive_int(), tag="ppe{}")
    amp: str = flag("off", WEIGHTS, "mixed precision for the network (fp16 on GPU only); off = faithful fp32",
                    "speed", choices=("off", "bf16", "fp16"), tag="{}")
    drop_bands: tuple = flag((), SCENE, "leave out these bands (numbered from 1, as in ENVI), e.g. 104-113,148-167",
                             parse=band_ranges,
                             tag=lambda c: c.drop_bands and f"drop{range_list_text(c.drop_bands, '+')}")
    keep_bad_bands: bool = flag(False, SCENE, "keep the bands the file flags as bad (an ENVI or GDAL bbl; left out "
                                "by default)", tag="allbands")
    tf32: bool = flag(False, WEIGHTS, "allow TF32 matrix maths on NVIDIA GPUs", "speed", tag="tf32")
    data_key: str = flag(None, SCENE, "name of the scene array in the .mat file (found automatically when "
                         "unambiguous)", tag="key-{}")

    # The scene: its identity (file contents) names the folder above the runs (scenes.scene_identity).
    dataset: str = flag("AVIRIS-II", SCENE, "scene: a .mat file (name in --data_dir, with or without .mat, or a "
                        "path), an ENVI .hdr or a (Geo)TIFF .tif/.tiff (name in --data_dir or path), or "
                        "'synthetic' for the built-in scene", "official")
    data_dir: str = flag("./data", NEITHER, "folder holding the scene files named by --dataset")

    # What a result depends on besides the weights; epochs picks the checkpoint scored.
    epochs: int = flag(1000, RESULT, "training epochs; predict loads the checkpoint of this epoch", "official",
                       parse=positive_int(), methods=("bs3lnet",),
                       tag=lambda c: None if c.checkpoint else f"epoch_{c.epochs:04d}")
    checkpoint: str = flag(None, RESULT, "predict from this file (ours, or an official BS3LNet .pkl state_dict) "
                           "instead of the run the flags describe", methods=("bs3lnet",),
                           tag=lambda c: c.checkpoint and checkpoint_tag(c.checkpoint))
    scoring: tuple = flag(("official",), RESULT, "how predict (and --eval_every) scores each pixel: official (the "
                          "whole scene shown, as the official code) or blindspot (each pixel hidden behind a "
                          "neighbour's spectrum, as in training; opt-in). benchmark: a comma-separated list",
                          "evaluation", parse=comma_list(str, SCORINGS), methods=("bs3lnet",),
                          tag=lambda c: None if c.scoring == ("official",) else "_".join(
                              f"{s}_r{c.score_repeats}" if s == "blindspot" else s for s in c.scoring))
    score_repeats: int = flag(4, RESULT, "blindspot scoring: average over this many random partitions of the "
                              "pixels; each is about 1/(1 - ratio) passes over the scene, so at most 100",
                              "evaluation", parse=number(int, 1, 100),
                              methods=("bs3lnet",))
    tile: int = flag(None, RESULT, "predict tile by tile: N x N pixels plus a margin of the receptive-field radius "
                     "(3 + 2*nblk); same map with bnorm, memory bounded by the tile", "speed", parse=positive_int(),
                     methods=("bs3lnet",), tag=lambda c: c.tile and c.norm_mode == "inorm" and f"tile{c.tile}")
    win_in: int = flag(3, RESULT, "lrx: inner (guard) window, odd", "evaluation", parse=positive_int(),
                       methods=("lrx",), tag="{}")
    win_out: int = flag(15, RESULT, f"lrx: outer window, odd. {LRX_BORDER_NOTE}", "evaluation",
                        parse=number(int, 3), methods=("lrx",), tag="{}")
    gt_key: str = flag(None, RESULT, "name of the ground-truth map in the .mat file (found automatically when "
                       "unambiguous)", tag="gtkey-{}")
    gt_file: str = flag(None, RESULT, "ground-truth map in a file of its own (.mat, ENVI .hdr or .tif; 1 = "
                        "anomaly), used instead of a map inside the scene's file", tag=lambda c: gt_file_tag(c))

    # Neither the weights nor a result: what to do, where files go, how fast, how verbose.
    command: str = flag("train", NEITHER, "train or predict BS3LNet; rx / lrx: the global / local RX baselines; "
                        "benchmark: every --methods on every --datasets", "official", choices=COMMANDS)
    gpu_ids: str = flag("0", NEITHER, "GPU index that --device auto uses when CUDA is available", "official")
    checkpoints_dir: str = flag("./checkpoints", NEITHER, "runs are saved in <checkpoints_dir>/<scene>/<run>/ "
                                "(<scene>: the file's name and a digest of its contents)")
    results_dir: str = flag("./results", NEITHER, "results go to <results_dir>/<scene>/<configuration>/, the latest "
                            "linked as <results_dir>/<scene>/latest")
    save_freq: int = flag(50, NEITHER, "save a checkpoint every N epochs (and always after the last)",
                          parse=positive_int())
    device: str = flag("auto", NEITHER, "auto (cuda:<gpu_ids> when available, else cpu), cpu, cuda or cuda:N")
    overwrite: bool = flag(False, NEITHER, "replace an earlier run with the same configuration instead of refusing")
    dry_run: bool = flag(False, NEITHER, "train one batch to check data and settings, save nothing", name="--dry-run")
    resume: bool = flag(False, NEITHER, "continue the run these flags describe from its latest checkpoint")
    eval_every: int = flag(None, NEITHER, "during training, record the AUC every N epochs in the log and plot AUC "
                           "and loss", parse=positive_int())
    roc_log: bool = flag(False, NEITHER, "draw roc.png with the log-scale P_F axis only (without it: linear and "
                         "log side by side)", "evaluation")
    keep_subnormals: bool = flag(False, NEITHER, "keep subnormal floats on the CPU; without it they are flushed to "
                                 "zero, which is up to 2x faster at some stages of training and leaves the losses "
                                 "unchanged", "speed")
    datasets: tuple = flag(None, NEITHER, "benchmark: comma-separated scenes; none means --dataset", "benchmark",
                           parse=comma_list())
    seeds: tuple = flag((1, 2, 3), NEITHER, "benchmark: comma-separated BS3LNet seeds", "benchmark", parse=seed_list)
    methods: tuple = flag(METHODS, NEITHER, "benchmark: comma-separated methods", "benchmark",
                          parse=comma_list(str, METHODS))
    grid: tuple = flag((), NEITHER, "benchmark: flags to vary, space-separated flag=v1,v2 terms (e.g. 'ratio=0.8,0.9 "
                       "patch=15,19'); every combination is run", "benchmark", parse=grid_terms)
    jobs: int = flag(1, NEITHER, "benchmark: trainings run at once, in separate processes sharing the CPU threads "
                     "(or one GPU)", "benchmark", parse=positive_int())
    scheduler: str = flag(None, NEITHER, "benchmark: send the jobs to the Dask cluster at this address "
                          "(tcp://host:8786) instead; this project's folder, the data, checkpoints and results must be "
                          "on a filesystem every worker sees", "benchmark")

    def __post_init__(self):
        """Checks across flags (each flag's own range or choice is checked when it is parsed)."""
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other: pass one")
        if len(self.scoring) > 1 and self.command != "benchmark":
            raise UserError(f"--scoring {','.join(self.scoring)}: give one scoring here (a list only for "
                            "--command benchmark)")
        if self.size_window > self.patch:
            raise UserError(f"--size_window {self.size_window} must be at most --patch ({self.patch}) so that every "
                            "target has a source other than itself inside the patch")
        if self.jobs > 1 and self.scheduler:
            raise UserError("--jobs and --scheduler both say where jobs run: pass one")
        if self.gt_file is not None and self.datasets is not None and len(self.datasets) > 1:
            raise UserError(f"--gt_file names one scene's map, but --datasets lists {len(self.datasets)} scenes: "
                            "benchmark a scene with a map of its own on its own")

    def as_dict(self):
        """The configuration as plain JSON-able values (what logs, checkpoints and metrics.json record)."""
        return asdict(self)

    @property
    def single_scoring(self):
        """The one scoring of a train or predict command."""
        return self.scoring[0]


def role_of(name):
    """The role a Config field declares."""
    return next(item.metadata["role"] for item in fields(Config) if item.name == name)


def changes_result(name, method):
    """Whether flag `name` changes the results of `method` (its run's weights, its scene, or the result itself)."""
    meta = next(item.metadata for item in fields(Config) if item.name == name)
    return meta["role"] == SCENE or meta["role"] == WEIGHTS and method == "bs3lnet" \
        or meta["role"] == RESULT and (not meta["methods"] or method in meta["methods"])


def checkpoint_tag(path):
    """A --checkpoint's results are named by the file and a digest of its full path: two runs' epoch_0003.pt differ."""
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    return f"checkpoint_{os.path.splitext(os.path.basename(path))[0]}_{digest}"


def gt_file_tag(config):
    """A --gt_file is named by its file name and a digest of its contents."""
    if config.gt_file is None:
        return None
    from scenes import file_fingerprint, gt_file_path, scene_name
    path = gt_file_path(config.data_dir, config.gt_file)
    return f"gt-{scene_name(path)}-{file_fingerprint([path])[:8]}"


# ---- folder names derived from the declarations ----

def name_pieces(config, roles, method=None):
    """The folder-name pieces of the fields whose role is in `roles` (and that apply to `method`), in field order."""
    pieces = []
    for item in fields(config):
        meta = item.metadata
        if meta["role"] not in roles or meta["tag"] is None or method and meta["methods"] \
                and method not in meta["methods"]:
            continue
        piece = tag_text(meta, getattr(config, item.name), item.default)
        if callable(meta["tag"]):
            piece = meta["tag"](config) or None
        if piece is None:
            continue
        if meta["glued"] and pieces:
            pieces[-1] += piece
        else:
            pieces.append(piece)
    return pieces


def tag_text(meta, value, default):
    """A format-string tag's piece: booleans when on; official and RESULT flags always; others when not the default."""
    if callable(meta["tag"]) or value is None or value is False:
        return None
    if value is True:
        return meta["tag"]
    if meta["group"] != "official" and meta["role"] != RESULT and value == default:
        return None
    return meta["tag"].format(value)


def run_name(config):
    """The run folder's name: every WEIGHTS and SCENE flag's piece (the scene file itself names the folder above)."""
    return "_".join(name_pieces(config, (WEIGHTS, SCENE)))


def result_folder(config, method):
    """The results folder of `method` below the scene's folder: BS3LNet's under its run's name (or the
    --checkpoint's), e.g. '<run>/epoch_0003_blindspot_r4'; a baseline's its name and its RESULT and SCENE
    pieces, e.g. 'lrx_3_15_drop1-3'."""
    result = name_pieces(config, (RESULT,), method)
    if method != "bs3lnet":
        return "_".join([method] + result + name_pieces(config, (SCENE,)))
    if config.checkpoint:  # a file trained on some scene: the scene's own pieces say how it was read
        return "_".join(result + name_pieces(config, (SCENE,)))
    return f"{run_name(config)}/{'_'.join(result)}"


# ---- the command line ----

class Parser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line (exit status 2), not the usage block; no abbreviations,
    which could change meaning as flags are added."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see --help)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help states every default; an empty one as 'none'."""

    def _get_help_string(self, action):
        if action.default in ("", None) and action.option_strings:
            return f"{action.help} (default: none)"
        return super()._get_help_string(action)


def default_text(value):
    """A default as the command line would give it (so argparse parses it like a given value)."""
    if isinstance(value, tuple):
        return ",".join(range_list_text([v], "") if isinstance(v, tuple) else str(v) for v in value)
    return value  # --grid's default () gives '', which grid_terms reads as no term


def build_parser():
    """The command line, built from the Config fields: each flag with its default, range and role in --help."""
    parser = Parser(description="BS3LNet blind-spot self-supervised hyperspectral anomaly detection (Gao et al., "
                                "TGRS 2023).", formatter_class=HelpFormatter)
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for item in fields(Config):
        meta = item.metadata
        options = dict(dest=item.name, help=meta["help"])
        if item.type is bool:
            options.update(action="store_true")
        else:
            options.update(default=default_text(item.default), type=meta["parse"], choices=meta["choices"])
            if hasattr(meta["parse"], "range"):
                options["help"] += f"; range {meta['parse'].range}"
        groups[meta["group"]].add_argument(meta["name"] or f"--{item.name}", **options)
    return parser


def parse_config(argv=None):
    """The checked Config of a command line (UserError, one line, on any bad flag or combination)."""
    return Config(**vars(build_parser().parse_args(argv)))

