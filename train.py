"""Training: blind-spot patch pairs -> masked reconstruction loss -> Adam, with checkpoints and a log."""
import glob
import json
import os
import re
import time

import torch
from tqdm import tqdm

from dataset import BlindSpotSampler, load_scene
from model import BS3LNet
from utils import UserError, atomic_write, init_weights, resolve_device, seed_everything

LOG_NAME = "train_log.tsv"


def run_directory(config):
    """The run's checkpoint folder, named by every setting that changes the trained weights (not epochs)."""
    name = (f"p{config.patch}_w{config.size_window}_r{config.ratio}_k{config.nch_ker}_b{config.nblk}"
            f"_{config.norm_mode}_{config.init_weight_type}{config.init_gain}_{config.lossm}"
            f"_lr{config.learning_rate}_wd{config.weight_decay}_bs{config.batch_size}_seed{config.seed}")
    if config.remask:
        name += "_remask"
    return os.path.join(config.checkpoints_dir, config.dataset, name)


def checkpoint_path(run_dir, epoch):
    return os.path.join(run_dir, f"epoch_{epoch:04d}.pt")


def saved_epochs(run_dir):
    """Epochs with a checkpoint in `run_dir`, ascending."""
    paths = glob.glob(os.path.join(run_dir, "epoch_*.pt"))
    return sorted(int(m.group(1)) for m in (re.search(r"epoch_(\d+)\.pt$", p) for p in paths) if m)


def masked_loss(output, label, mask, kind="l1"):
    """Mean over all N*B*p*p elements of |out - label| (or its square) at masked positions (mask == 0).

    The sum over masked entries is divided by the total element count, not the masked count, as in
    the official code.
    """
    difference = output * (1 - mask) - label * (1 - mask)
    return difference.abs().mean() if kind == "l1" else difference.square().mean()


def train_epoch(net, sampler, targets, sources, optimizer, loss_kind, batch_size, generator, desc,
                max_steps=None):
    """One pass over all patches in a fresh random order; returns the mean of the batch losses."""
    net.train()
    order = torch.randperm(sampler.num_patches, generator=generator)
    batches = order.split(batch_size)[:max_steps]  # the last partial batch is kept
    loss_sum = torch.zeros((), device=sampler.device)
    progress = tqdm(batches, desc=desc, leave=False, dynamic_ncols=True)
    for step, patch_index in enumerate(progress, start=1):
        inputs, label, mask = sampler.batch(patch_index, targets[patch_index], sources[patch_index])
        loss = masked_loss(net(inputs), label, mask, loss_kind)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()  # stays on the device: no host synchronisation per step
        if step % 10 == 0 or step == len(batches):
            progress.set_postfix(loss=f"{loss_sum.item() / step:.4f}")
    return loss_sum.item() / len(batches)


def prepare_run_directory(run_dir, overwrite):
    """Refuse to mix two runs in one folder unless --overwrite, which first removes the old run's files."""
    old_files = [checkpoint_path(run_dir, e) for e in saved_epochs(run_dir)]
    if os.path.exists(os.path.join(run_dir, LOG_NAME)):
        old_files.append(os.path.join(run_dir, LOG_NAME))
    if old_files and not overwrite:
        raise UserError(f"{run_dir} already holds a run with this configuration ({len(old_files)} files): "
                        "pass --overwrite to replace it, or change --seed or --checkpoints_dir")
    for path in old_files:
        os.remove(path)
    if old_files:
        print(f"--overwrite: removed {len(old_files)} files of the earlier run in {run_dir}")
    os.makedirs(run_dir, exist_ok=True)


def save_checkpoint(path, net, optimizer, config, epoch, losses):
    state = dict(model=net.state_dict(), model_args=net.args, config=vars(config), epoch=epoch,
                 optimizer=optimizer.state_dict(), losses=losses)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def train(config, after_epoch=None):
    """Train BS3LNet on `config.dataset` as the official code does; returns the per-epoch mean losses.

    `after_epoch(epoch, net, loss)`, if given, is called after each epoch (the net is left in train mode).
    """
    device = resolve_device(config.device, config.gpu_ids)
    print(f"device: {device}")
    if config.lossm not in ("l1", "l2"):
        raise UserError(f"unknown --lossm '{config.lossm}': use l1 or l2")
    if config.epochs < 1 or config.batch_size < 1 or config.save_freq < 1:
        raise UserError("--epochs, --batch_size and --save_freq must be at least 1")
    started = time.perf_counter()
    hsi, _ = load_scene(config.data_dir, config.dataset)
    seed_everything(config.seed)
    sampler = BlindSpotSampler(hsi, config.patch, config.size_window, config.ratio, device)
    generator = torch.Generator().manual_seed(config.seed)  # masks and batch order, identical on every device
    targets, sources = sampler.draw_masks(generator)
    net = BS3LNet(hsi.shape[2], config.nch_ker, config.nblk, config.norm_mode)
    init_weights(net, config.init_weight_type, config.init_gain)
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate, betas=(0.5, 0.999),
                                 weight_decay=config.weight_decay)
    print(f"scene {config.dataset}: {hsi.shape[0]} x {hsi.shape[1]} pixels, {hsi.shape[2]} bands; "
          f"{sampler.num_patches} patches of {config.patch} x {config.patch} per epoch, "
          f"{sampler.n_targets} blind spots each; set-up {time.perf_counter() - started:.2f} s")

    if config.dry_run:
        loss = train_epoch(net, sampler, targets, sources, optimizer, config.lossm, config.batch_size,
                           generator, "dry run", max_steps=1)
        print(f"dry run: one batch trained, loss {loss:.4f}; nothing saved")
        return [loss]

    run_dir = run_directory(config)
    prepare_run_directory(run_dir, config.overwrite)
    log_path = os.path.join(run_dir, LOG_NAME)
    with open(log_path, "w") as log:
        log.write(f"# config {json.dumps(vars(config), sort_keys=True)}\n")
        log.write(f"# model {json.dumps(net.args)} parameters {sum(p.numel() for p in net.parameters())}\n")
        log.write("epoch\tloss\tseconds\n")
    losses = []
    for epoch in range(1, config.epochs + 1):
        if config.remask and epoch > 1:
            targets, sources = sampler.draw_masks(generator)
        epoch_start = time.perf_counter()
        loss = train_epoch(net, sampler, targets, sources, optimizer, config.lossm, config.batch_size,
                           generator, f"epoch {epoch}/{config.epochs}")
        seconds = time.perf_counter() - epoch_start
        losses.append(loss)
        with open(log_path, "a") as log:
            log.write(f"{epoch}\t{loss:.6f}\t{seconds:.2f}\n")
        print(f"epoch {epoch}/{config.epochs}  loss {loss:.6f}  {seconds:.1f} s")
        if after_epoch is not None:
            after_epoch(epoch, net, loss)
            net.train()
        if epoch % config.save_freq == 0 or epoch == config.epochs:
            save_checkpoint(checkpoint_path(run_dir, epoch), net, optimizer, config, epoch, losses)
    print(f"checkpoints and log in {run_dir}")
    return losses
