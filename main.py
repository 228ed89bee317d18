"""BS3LNet for hyperspectral anomaly detection: `--command train`, then `--command predict` with the same flags."""
import argparse
import sys

from utils import UserError


def build_parser():
    """Every flag with its default; the official code's flags keep the official defaults."""
    parser = argparse.ArgumentParser(
        description="BS3LNet blind-spot self-supervised hyperspectral anomaly detection (Gao et al., TGRS 2023).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    official = parser.add_argument_group("official flags (defaults as in the paper's code)")
    official.add_argument("--command", choices=["train", "predict"], default="train", help="what to run")
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
    extra.add_argument("--checkpoints_dir", default="./checkpoints",
                       help="runs are saved in <checkpoints_dir>/<dataset>/<configuration>/")
    extra.add_argument("--results_dir", default="./results", help="predict writes to <results_dir>/<dataset>/")
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
    return parser


def main(argv=None):
    config = build_parser().parse_args(argv)
    try:
        if config.command == "train":
            from train import train
            train(config)
        else:
            from predict import predict
            predict(config)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
