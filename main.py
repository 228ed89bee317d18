"""BS3LNet for hyperspectral anomaly detection: `--command train`, then `--command predict` with the same flags."""
import argparse
import shlex
import sys

import distributed
from benchmark import benchmark
from evaluation import LRX_BORDER_NOTE
from predict import detect_with_baseline, predict
from train import Interrupted, train
from utils import UserError, flush_subnormals


def build_parser():
    """Every flag with its default; the official code's flags keep the official defaults."""
    parser = argparse.ArgumentParser(
        description="BS3LNet blind-spot self-supervised hyperspectral anomaly detection (Gao et al., TGRS 2023).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    official = parser.add_argument_group("official flags (defaults as in the paper's code)")
    official.add_argument("--command", choices=["train", "predict", "rx", "lrx", "benchmark"], default="train",
                          help="train or predict BS3LNet; rx / lrx: the global / local RX baselines; benchmark: "
                               "every --methods on every --datasets")
    official.add_argument("--dataset", default="AVIRIS-II",
                          help="scene name: <data_dir>/<dataset>.mat, or 'synthetic' for the built-in scene")
    official.add_argument("--seed", type=int, default=1, help="seed for python, numpy, torch, masks and batch order")
    official.add_argument("--gpu_ids", default="0", help="GPU index that --device auto uses when CUDA is available")
    official.add_argument("--batch_size", type=int, default=100, help="patches per training step")
    official.add_argument("--patch", type=int, default=19, help="patch side p (one patch per pixel)")
    official.add_argument("--size_window", type=int, default=5, help="window w the blind-spot sources come from")
    official.add_argument("--ratio", type=float, default=0.9,
                          help="share of each patch left unmasked; ceil(p*p*(1-ratio)) blind spots per patch")
    official.add_argument("--nch_ker", type=int, default=64, help="feature channels of the network")
    official.add_argument("--nblk", type=int, default=2, help="number of residual blocks")
    official.add_argument("--norm_mode", choices=["bnorm", "inorm"], default="bnorm",
                          help="BatchNorm2d or InstanceNorm2d (no affine)")
    official.add_argument("--init_weight_type", choices=["normal", "xavier", "kaiming", "orthogonal"],
                          default="normal", help="convolution weight initialisation")
    official.add_argument("--init_gain", type=float, default=0.02, help="gain / std of the initialisation")
    official.add_argument("--lossm", choices=["l1", "l2"], default="l1", help="reconstruction loss at blind spots")
    official.add_argument("--learning_rate", type=float, default=1e-4, help="Adam learning rate")
    official.add_argument("--weight_decay", type=float, default=1e-5, help="Adam weight decay")
    official.add_argument("--epochs", type=int, default=1000,
                          help="training epochs; predict loads the checkpoint of this epoch")
    extra = parser.add_argument_group("further flags")
    extra.add_argument("--data_dir", default="./data", help="folder holding <dataset>.mat")
    extra.add_argument("--data_key", default=None,
                       help="name of the scene array in the .mat file (found automatically when unambiguous)")
    extra.add_argument("--gt_key", default=None,
                       help="name of the ground-truth map in the .mat file (found automatically when unambiguous)")
    extra.add_argument("--checkpoints_dir", default="./checkpoints",
                       help="runs are saved in <checkpoints_dir>/<dataset>/<configuration>/")
    extra.add_argument("--results_dir", default="./results",
                       help="results go to <results_dir>/<dataset>/<configuration>/, the latest also to "
                            "<results_dir>/<dataset>/")
    extra.add_argument("--checkpoint", default=None,
                       help="predict from this file (ours, or an official BS3LNet .pkl state_dict) instead of "
                            "the run the flags describe")
    extra.add_argument("--save_freq", type=int, default=50,
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
    extra.add_argument("--eval_every", type=int, default=None,
                       help="during training, record the AUC every N epochs in the log and plot AUC and loss")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--roc_log", action="store_true", help="draw the ROC curve with a log-scale P_F axis")
    evaluation.add_argument("--win_in", type=int, default=3, help="lrx: inner (guard) window, odd")
    evaluation.add_argument("--win_out", type=int, default=15,
                            help=f"lrx: outer window, odd. {LRX_BORDER_NOTE}")
    evaluation.add_argument("--datasets", default=None,
                            help="benchmark: comma-separated scenes; none means --dataset")
    evaluation.add_argument("--seeds", default="1,2,3", help="benchmark: comma-separated BS3LNet seeds")
    evaluation.add_argument("--methods", default="bs3lnet,rx,lrx", help="benchmark: comma-separated methods")
    speed = parser.add_argument_group("speed and scale (opt-in)")
    speed.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                       help="mixed precision for the network (fp16 on GPU only); off = faithful fp32")
    speed.add_argument("--tf32", action="store_true", help="allow TF32 matrix maths on NVIDIA GPUs")
    speed.add_argument("--patches_per_epoch", type=int, default=None,
                       help="train on this many random patch centres per epoch instead of all H*W")
    speed.add_argument("--keep_subnormals", action="store_true",
                       help="keep subnormal floats on the CPU (default: flush them to zero, which is up to 2x "
                            "faster at some stages of training and leaves the losses unchanged)")
    speed.add_argument("--tile", type=int, default=None,
                       help="predict tile by tile: N x N pixels plus a margin of the receptive-field "
                            "radius (3 + 2*nblk); same map with bnorm, memory bounded by the tile")
    return parser


def main(argv=None):
    config = build_parser().parse_args(argv)
    # Before any parallel CPU operation, so that every thread torch starts inherits the setting.
    if flush_subnormals(not config.keep_subnormals) == "mixed":
        print("note: torch's CPU threads started before subnormal flushing was set; some keep subnormals",
              file=sys.stderr)
    try:
        if config.command == "train":
            train(config)
        elif config.command == "predict":
            predict(config)
        elif config.command in ("rx", "lrx"):
            detect_with_baseline(config, config.command)
        else:
            benchmark(config, shlex.join(["python", "main.py", *(sys.argv[1:] if argv is None else argv)]))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as interruption:
        if str(interruption):
            print(str(interruption), file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside training there is nothing to save
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
