"""Opt-in speed and scale features: tiled prediction, mixed precision, patches per epoch."""
import numpy as np
import pytest
import torch

from conftest import cli_flags
from config import parse_config
from main import main
from model import BS3LNet, init_weights, reconstruct
from train import train


def trained_like_net(bands, norm, nblk=2):
    torch.manual_seed(0)
    net = BS3LNet(bands, 8, nblk, norm)
    init_weights(net, "normal", 0.3)  # large weights: every layer matters for the output
    if norm == "bnorm":  # non-trivial running statistics, as after training
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.mark.parametrize("tile, nblk", [(16, 2), (7, 1), (1, 2), (100, 2)])
def test_tiled_prediction_equals_whole_scene_prediction(tile, nblk):
    hsi = np.random.default_rng(0).normal(size=(37, 23, 5)).astype(np.float32)  # sides not multiples of tiles
    net = trained_like_net(5, "bnorm", nblk)
    whole = reconstruct(net, hsi, "cpu")
    tiled = reconstruct(net, hsi, "cpu", tile=tile)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_a_smaller_margin_would_break_tiling(monkeypatch):
    """The margin is needed: with one pixel less of context the tiled map differs (the test above can fail)."""
    hsi = np.random.default_rng(1).normal(size=(30, 30, 4)).astype(np.float32)
    net = trained_like_net(4, "bnorm")
    whole = reconstruct(net, hsi, "cpu")
    monkeypatch.setattr(BS3LNet, "receptive_field_radius", property(lambda self: 2 + 2 * self.args["nblk"]))
    tiled = reconstruct(net, hsi, "cpu", tile=10)
    assert not np.allclose(tiled, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_tile_with_instance_norm_warns(scene_dir, capsys):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "1", "--norm_mode", "inorm")
    assert main(["--command", "train", *flags]) == 0
    assert main(["--command", "predict", "--tile", "4", *flags]) == 0
    assert "each tile is normalised by its own statistics" in capsys.readouterr().err


def test_bf16_training_and_prediction_run_on_cpu(scene_dir):
    flags = cli_flags(scene_dir, "tiny", "--epochs", "2", "--amp", "bf16")
    losses = train(parse_config(flags))
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert main(["--command", "predict", *flags]) == 0


def test_fp16_needs_a_gpu(scene_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--amp", "fp16")]) == 2
    assert "--amp fp16 needs a GPU" in capsys.readouterr().err


def test_patches_per_epoch(scene_dir, monkeypatch, capsys):
    import train as train_module
    steps = []
    real = train_module.masked_loss
    monkeypatch.setattr(train_module, "masked_loss", lambda *a, **k: steps.append(a[0].shape[0]) or real(*a, **k))
    train(parse_config(cli_flags(scene_dir, "tiny", "--epochs", "2", "--patches_per_epoch", "40")))
    assert steps == [32, 8, 32, 8]  # 40 patches per epoch in batches of 32
    assert main(["--command", "train", *cli_flags(scene_dir, "tiny", "--patches_per_epoch", "500")]) == 2
    assert "exceeds the scene's 120 patches" in capsys.readouterr().err
