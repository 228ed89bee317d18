import json
import os

import pytest
import torch

import dataset
from conftest import cli_flags
from config import parse_config
from runs import LOG_NAME, read_log, run_directory, saved_epochs
from train import masked_loss, train


def config_for(scene_dir, *extra):
    return parse_config(cli_flags(scene_dir, "tiny", *extra))


def test_loss_sees_only_masked_entries_and_divides_by_all_elements():
    label = torch.zeros(2, 3, 4, 4)
    mask = torch.ones(2, 1, 4, 4)
    mask[0, 0, 1, 2] = mask[1, 0, 3, 3] = 0  # two blind spots, 3 bands each
    output = torch.full_like(label, 5.0) * mask  # wrong by 5 everywhere except at the blind spots
    assert masked_loss(output, label, mask, "l1").item() == 0
    output = output + (1 - mask) * 2.0  # now wrong by 2 at the blind spots
    total = label.numel()
    assert masked_loss(output, label, mask, "l1").item() == pytest.approx(2 * 6 / total)
    assert masked_loss(output, label, mask, "l2").item() == pytest.approx(4 * 6 / total)


def record_draws(monkeypatch):
    draws = []
    original = dataset.BlindSpotSampler.draw_masks

    def recording(self, generator, num_patches=None):
        masks = original(self, generator, num_patches)
        draws.append(masks)
        return masks
    monkeypatch.setattr(dataset.BlindSpotSampler, "draw_masks", recording)
    return draws


def test_masks_are_drawn_once_by_default(scene_dir, monkeypatch):
    draws = record_draws(monkeypatch)
    train(config_for(scene_dir, "--epochs", "3"))
    assert len(draws) == 1


def test_remask_draws_new_masks_every_epoch(scene_dir, monkeypatch):
    draws = record_draws(monkeypatch)
    train(config_for(scene_dir, "--epochs", "3", "--remask"))
    assert len(draws) == 3
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[1][0], draws[2][0])


def test_same_seed_gives_identical_losses_and_weights(scene_dir, tmp_path):
    first = train(config_for(scene_dir, "--epochs", "2"))
    run = run_directory(config_for(scene_dir))
    weights = torch.load(os.path.join(run, "epoch_0002.pt"), weights_only=True)["model"]
    second = train(config_for(scene_dir, "--epochs", "2", "--overwrite"))
    again = torch.load(os.path.join(run, "epoch_0002.pt"), weights_only=True)["model"]
    assert first == second
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    other = train(config_for(scene_dir, "--epochs", "2", "--seed", "2"))
    assert other != first


def test_checkpoints_log_and_optimiser(scene_dir):
    config = config_for(scene_dir, "--epochs", "5", "--save_freq", "2")
    losses = train(config)
    run = run_directory(config)
    assert saved_epochs(run) == [2, 4, 5]  # every save_freq epochs, and always the last
    assert not [f for f in os.listdir(run) if f.startswith(".tmp")]
    checkpoint = torch.load(os.path.join(run, "epoch_0005.pt"), weights_only=True)
    assert checkpoint["epoch"] == 5 and checkpoint["losses"] == losses
    assert checkpoint["model_args"] == dict(bands=6, nch_ker=8, nblk=1, norm="bnorm")
    assert checkpoint["config"]["patch"] == 5 and checkpoint["config"]["dataset"] == "tiny"
    group = checkpoint["optimizer"]["param_groups"][0]
    assert group["lr"] == 1e-4 and group["betas"] == (0.5, 0.999) and group["weight_decay"] == 1e-5
    with open(os.path.join(run, LOG_NAME)) as log:
        lines = log.read().splitlines()
    assert json.loads(lines[0].removeprefix("# config "))["epochs"] == 5
    rows = read_log(os.path.join(run, LOG_NAME))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in rows] == pytest.approx(losses, abs=1e-6)


def test_training_reduces_the_loss(scene_dir):
    losses = train(config_for(scene_dir, "--epochs", "6", "--learning_rate", "1e-3"))
    assert losses[-1] < 0.5 * losses[0]


def test_dry_run_saves_nothing(scene_dir):
    config = config_for(scene_dir, "--dry-run")
    assert len(train(config)) == 1
    assert not os.path.exists(run_directory(config))
