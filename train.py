"""Training: blind-spot patch pairs -> masked reconstruction loss -> Adam, with checkpoints and a log."""
import copy
import os
import random
import shlex
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import distributed
from dataset import BlindSpotSampler, load_scene
from evaluation import plot_training_curve
from model import BS3LNet, reconstruct
from runs import checkpoint_path, is_row, log_header, log_path, log_row, run_directory, saved_epochs
from utils import (UserError, atomic_write, atomic_write_text, auc_score, auc_undefined, autocast, detection_map,
                   init_weights, seed_everything, set_tf32)

CURVE_NAME = "training_curve.png"

# The batch order has a random stream of its own, seeded apart from the masks' stream.
ORDER_SEED_OFFSET = 2 ** 32


class Interrupted(Exception):
    """Ctrl-C during training, after the last completed epoch was saved; the message says how to resume."""


def masked_loss(output, label, mask, kind="l1"):
    """Mean over all N*B*p*p elements of |out - label| (or its square) at masked positions (mask == 0).

    The sum over masked entries is divided by the total element count, not the masked count, as in
    the official code. (out - label) * (1 - mask) equals the official out * (1 - mask) - label * (1 - mask)
    exactly for a 0/1 mask, with one full-size temporary fewer.
    """
    difference = (output - label).mul_(1 - mask)
    return difference.abs().mean() if kind == "l1" else difference.square().mean()


def train_epoch(net, sampler, order, targets, sources, optimizer, config, scaler, desc, max_steps=None):
    """One pass over the patches `order` (device tensor) with their masks; returns the mean batch loss.

    Under torchrun each global batch is split between the processes; a process's loss is weighted by
    its share of the batch so that the averaged gradient is the gradient of the global batch's loss.
    """
    net.train()
    world, rank = distributed.world_size(), distributed.rank()
    batches = list(zip(order.split(config.batch_size), targets.split(config.batch_size),
                       sources.split(config.batch_size)))[:max_steps]  # the last partial batch is kept
    loss_sum = torch.zeros((), device=sampler.device)
    progress = tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, disable=rank != 0)
    for step, (patch_index, batch_targets, batch_sources) in enumerate(progress, start=1):
        share = patch_index.tensor_split(world)[rank].numel() / patch_index.numel()
        if world > 1:
            patch_index, batch_targets, batch_sources = (
                t.tensor_split(world)[rank] for t in (patch_index, batch_targets, batch_sources))
        inputs, label, mask = sampler.batch(patch_index, batch_targets, batch_sources)
        with autocast(sampler.device, config.amp):
            output = net(inputs)
        loss = masked_loss(output.float(), label, mask, config.lossm) * (share * world)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if world > 1:
            distributed.average_gradients(net)
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach()  # stays on the device: no host synchronisation per step
        if step % 10 == 0 or step == len(batches):
            progress.set_postfix(loss=f"{loss_sum.item() / step:.4f}")
    if world > 1:
        torch.distributed.all_reduce(loss_sum)
        loss_sum /= world
    return loss_sum.item() / len(batches)


def earlier_run_files(run_dir):
    """The checkpoints and log of a run already in `run_dir`."""
    files = [checkpoint_path(run_dir, e) for e in saved_epochs(run_dir)]
    log = log_path(run_dir)
    return files + [log] if os.path.exists(log) else files


def refuse_to_mix_runs(run_dir, config):
    """Two runs never share a folder: refuse unless --resume (continue it) or --overwrite (replace it)."""
    old_files = earlier_run_files(run_dir)
    if old_files and not (config.resume or config.overwrite or config.dry_run):
        raise UserError(f"{run_dir} already holds a run with this configuration ({len(old_files)} files): "
                        "pass --resume to continue it, --overwrite to replace it, or change --seed or "
                        "--checkpoints_dir")


def start_run_directory(run_dir):
    """Create the run folder; with --overwrite, first remove the earlier run's files."""
    old_files = earlier_run_files(run_dir)
    for path in old_files:
        os.remove(path)
    if old_files:
        print(f"--overwrite: removed {len(old_files)} files of the earlier run in {run_dir}")
    os.makedirs(run_dir, exist_ok=True)


def random_states():
    """Every global random state, in types that torch.load(weights_only=True) accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return dict(python=random.getstate(), torch=torch.get_rng_state(),
                numpy=(kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def restore_random_states(states):
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def training_state(net, optimizer, scaler, config, epoch, losses, aucs, generators):
    """A checkpoint: everything `predict` needs, and everything `--resume` needs to continue exactly."""
    return copy.deepcopy(dict(
        model=net.state_dict(), model_args=net.args, config=vars(config), epoch=epoch, losses=list(losses),
        aucs=dict(aucs),
        optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), random_states=random_states(),
        generators={name: g.get_state() for name, g in generators.items()}))


def save_checkpoint(path, state):
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def resume_state(run_dir):
    """The latest checkpoint of the run in `run_dir`, or a UserError saying there is none."""
    epochs = saved_epochs(run_dir)
    if not epochs:
        raise UserError(f"nothing to resume: {run_dir} holds no checkpoint; run without --resume")
    path = checkpoint_path(run_dir, epochs[-1])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"cannot resume from {path} ({type(error).__name__}): delete it to resume from the "
                        "checkpoint before it")


def trim_log(path, last_epoch):
    """Drop log rows after `last_epoch` (epochs trained after the checkpoint we resume from)."""
    with open(path) as log:
        lines = log.read().splitlines()
    kept = [line for line in lines if not is_row(line) or int(line.split("\t")[0]) <= last_epoch]
    kept.append(f"# resumed after epoch {last_epoch}")
    atomic_write_text(path, "\n".join(kept) + "\n")


def validate(config):
    if config.lossm not in ("l1", "l2"):
        raise UserError(f"unknown --lossm '{config.lossm}': use l1 or l2")
    if config.epochs < 1 or config.batch_size < 1 or config.save_freq < 1:
        raise UserError("--epochs, --batch_size and --save_freq must be at least 1")
    if config.patches_per_epoch is not None and config.patches_per_epoch < 1:
        raise UserError("--patches_per_epoch must be at least 1")
    if config.resume and config.overwrite:
        raise UserError("--resume and --overwrite contradict each other: pass one")
    if config.eval_every is not None and config.eval_every < 1:
        raise UserError("--eval_every must be at least 1")


def auc_tracker(config, sampler, gt):
    """A function scoring the whole scene's AUC with the net, when --eval_every asks and the map allows."""
    if config.eval_every is None:
        return None
    reason = auc_undefined(gt)
    if reason is not None:
        print(f"note: --eval_every records nothing here ({reason})")
        return None

    def scene_auc(net):
        hsi = sampler.scene().cpu().numpy()
        return auc_score(gt, detection_map(hsi, reconstruct(net, hsi, sampler.device, amp=config.amp)))
    return scene_auc


def train(config, after_epoch=None):
    """Train BS3LNet on `config.dataset` as the official code does; returns the per-epoch mean losses.

    `after_epoch(epoch, net, loss)`, if given, is called after each epoch (the net is left in train mode).
    """
    validate(config)
    run_dir = run_directory(config)
    refuse_to_mix_runs(run_dir, config)
    device = distributed.setup(config.device, config.gpu_ids)
    is_main = distributed.rank() == 0
    log = print if is_main else (lambda *args, **kwargs: None)
    world = distributed.world_size()
    log(f"device: {device}" + (f" x {world} processes" if world > 1 else ""))
    if config.amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a GPU: use --amp bf16 on CPU")
    set_tf32(config.tf32)
    started = time.perf_counter()
    hsi, gt = load_scene(config.data_dir, config.dataset, config.data_key, config.gt_key)
    seed_everything(config.seed)
    sampler = BlindSpotSampler(hsi, config.patch, config.size_window, config.ratio, device)
    del hsi  # the sampler holds the scene (padded) from now on
    if config.patches_per_epoch and config.patches_per_epoch > sampler.num_patches:
        raise UserError(f"--patches_per_epoch {config.patches_per_epoch} exceeds the scene's "
                        f"{sampler.num_patches} patches: leave it out to use all of them")
    # Masks and batch order come from CPU generators: the same on every device and every process.
    generators = dict(masks=torch.Generator().manual_seed(config.seed),
                      order=torch.Generator().manual_seed(config.seed + ORDER_SEED_OFFSET))
    net = BS3LNet(sampler.bands, config.nch_ker, config.nblk, config.norm_mode)
    init_weights(net, config.init_weight_type, config.init_gain)
    # The sampler's patches are laid out channels-last already; with the weights in the same layout the
    # CPU convolutions ran 15 % faster (bench/cpu_variants.py), with results equal up to float rounding.
    net.to(device, memory_format=torch.channels_last)
    if world > 1:
        distributed.synchronise_batch_norm(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate, betas=(0.5, 0.999),
                                 weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    losses, aucs, first_epoch = [], {}, 1
    scene_auc = auc_tracker(config, sampler, gt) if is_main and not config.dry_run else None
    if config.resume and not config.dry_run:
        state = resume_state(run_dir)
        try:
            net.load_state_dict(state["model"])
        except RuntimeError:
            raise UserError(f"the checkpoint in {run_dir} does not fit this scene's {sampler.bands} bands: was "
                            f"{config.dataset}.mat replaced? Resume with the scene it was trained on") from None
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        restore_random_states(state["random_states"])
        losses, aucs, first_epoch = list(state["losses"]), dict(state["aucs"]), state["epoch"] + 1
    # The official code draws every mask once, before training; --remask draws them per epoch instead.
    masks = None if config.remask else tuple(m.to(device) for m in sampler.draw_masks(generators["masks"]))
    if config.resume and not config.dry_run:
        for name, generator in generators.items():  # after the initial draw, which they already include
            generator.set_state(state["generators"][name])
    patches = config.patches_per_epoch or sampler.num_patches
    log(f"scene {config.dataset}: {sampler.height} x {sampler.width} pixels, {sampler.bands} bands; "
        f"{patches} patches of {config.patch} x {config.patch} per epoch, {sampler.n_targets} blind spots each; "
        f"set-up {time.perf_counter() - started:.2f} s")

    def epoch_batches():
        order = torch.randperm(sampler.num_patches, generator=generators["order"])[:patches]
        if masks is None:
            targets, sources = sampler.draw_masks(generators["masks"], patches)
            return order.to(device), targets.to(device), sources.to(device)
        order = order.to(device)
        return order, masks[0][order], masks[1][order]

    if config.dry_run:
        loss = train_epoch(net, sampler, *epoch_batches(), optimizer, config, scaler, "dry run", max_steps=1)
        log(f"dry run: one batch trained, loss {loss:.4f}; nothing saved")
        return [loss]

    log_file_path = log_path(run_dir)
    if is_main:
        if config.resume:
            trim_log(log_file_path, first_epoch - 1)
            print(f"resuming {run_dir} after epoch {first_epoch - 1}")
        else:
            start_run_directory(run_dir)
            with open(log_file_path, "w") as log_file:
                log_file.write(log_header(vars(config), net.args, sum(p.numel() for p in net.parameters())))
    snapshot, saved_epoch = None, first_epoch - 1
    epoch = first_epoch
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_start = time.perf_counter()
            loss = train_epoch(net, sampler, *epoch_batches(), optimizer, config, scaler,
                               f"epoch {epoch}/{config.epochs}")
            seconds = time.perf_counter() - epoch_start
            losses.append(loss)
            if scene_auc is not None and epoch % config.eval_every == 0:
                aucs[epoch] = scene_auc(net)
            snapshot = training_state(net, optimizer, scaler, config, epoch, losses, aucs, generators)
            if is_main:
                with open(log_file_path, "a") as log_file:
                    log_file.write(log_row(epoch, loss, seconds, aucs.get(epoch)))
                print(f"epoch {epoch}/{config.epochs}  loss {loss:.6f}  {seconds:.1f} s"
                      + (f"  AUC {aucs[epoch]:.6f}" if epoch in aucs else ""))
                if epoch in aucs:  # redrawn at each evaluation, so an interrupted run has its curve too
                    plot_training_curve(os.path.join(run_dir, CURVE_NAME), losses, aucs, config.dataset)
                if epoch % config.save_freq == 0 or epoch == config.epochs:
                    save_checkpoint(checkpoint_path(run_dir, epoch), snapshot)
                    saved_epoch = epoch
            if after_epoch is not None:
                after_epoch(epoch, net, loss)
                net.train()
    except KeyboardInterrupt:
        if not is_main:
            raise Interrupted("")
        if snapshot is None:
            if not config.resume:
                os.remove(log_file_path)  # nothing trained: leave no half-started run behind
            raise Interrupted(f"interrupted during epoch {epoch} before any epoch completed; nothing saved")
        if saved_epoch != snapshot["epoch"]:
            save_checkpoint(checkpoint_path(run_dir, snapshot["epoch"]), snapshot)
        command = shlex.join(["python", *sys.argv]) if sys.argv[0].endswith("main.py") else "the same command"
        resume = "" if "--resume" in sys.argv else " --resume"
        raise Interrupted(f"interrupted during epoch {epoch}; epoch {snapshot['epoch']} is saved in {run_dir}. "
                          f"Continue with: {command}{resume}")
    log(f"checkpoints and log in {run_dir}")
    return losses
