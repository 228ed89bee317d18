"""Training: blind-spot patch pairs -> masked reconstruction loss -> Adam, with checkpoints and a log."""
import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace

import torch
from tqdm import tqdm

import data_parallel
from dataset import BlindSpotSampler
from scenes import scene_from_config
from figures import plot_training_curve
from metrics import auc_score, auc_undefined, data_pixels, detection_map
from model import BS3LNet, init_weights
from runs import (CURVE_NAME, checkpoint_path, earlier_run_files, is_row, locate_run, log_header, log_path, log_row,
                  remove_temporary_files, run_lock, saved_epochs)
from scoring import score_reconstruction
from utils import (UserError, atomic_write, atomic_write_text, autocast, clear_stop_request, command_line,
                   raise_if_stop_requested, seed_everything, set_tf32, signals_ignored)

# The batch order has a random stream of its own, seeded apart from the masks' stream.
ORDER_SEED_OFFSET = 2 ** 32


class Interrupted(Exception):
    """Ctrl-C during training, after the last completed epoch was saved; the message says how to resume."""


class AlreadyTrained(Exception):
    """--resume on a run that has a checkpoint of epoch --epochs already: nothing to do."""


def masked_loss(output, label, mask, kind="l1", count=None):
    """Mean over all N*B*p*p elements of |out - label| (or its square) at masked positions (mask == 0).

    The sum over masked entries is divided by the total element count, not the masked count, as in
    the official code. (out - label) * (1 - mask) equals the official out * (1 - mask) - label * (1 - mask)
    exactly for a 0/1 mask, with one full-size temporary fewer. With `count`, the sum is divided by
    `count` instead (a process's share of a batch split between processes; an empty share gives 0).
    """
    difference = (output - label).mul_(1 - mask)
    errors = difference.abs() if kind == "l1" else difference.square()
    return errors.mean() if count is None else errors.sum() / count


def train_epoch(net, optimizer, scaler, sampler, batches, config, desc):
    """One pass over `batches` of (patch indices, targets, sources); returns the mean batch loss.

    Under torchrun each global batch is split between the processes (data_parallel.shard), and each
    process's masked sum is divided by the global batch's element count times the process count, so the
    averaged gradient is the gradient of the global batch's loss.
    """
    net.train()
    loss_sum = torch.zeros((), device=sampler.device)
    progress = tqdm(batches, desc=desc, leave=False, dynamic_ncols=True, disable=data_parallel.rank() != 0)
    for step, batch in enumerate(progress, start=1):
        raise_if_stop_requested()
        count = None
        if data_parallel.world_size() > 1:
            count = batch[0].numel() * sampler.bands * config.patch ** 2 / data_parallel.world_size()
            batch = data_parallel.shard(batch)
        inputs, label, mask = sampler.batch(*batch)
        with autocast(sampler.device, config.amp):
            output = net(inputs)
        loss = masked_loss(output.float(), label, mask, config.lossm, count)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if count is not None:
            data_parallel.average_gradients(net)
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach()  # stays on the device: no host synchronisation per step
        if step % 10 == 0 or step == len(batches):
            progress.set_postfix(loss=f"{loss_sum.item() / step:.4f}")
    return data_parallel.mean_over_processes(loss_sum).item() / len(batches)


@dataclass
class TrainingSession:
    """What training carries from epoch to epoch: the scene's sampler, the network and its optimiser, the
    random streams, the masks drawn once (None with --remask), and the losses and AUCs so far."""
    sampler: BlindSpotSampler
    scene: object
    net: BS3LNet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    generators: dict
    masks: tuple = None
    patches: int = 0
    first_epoch: int = 1
    losses: list = field(default_factory=list)
    aucs: dict = field(default_factory=dict)

    def train_batches(self, config, desc, max_batches=None):
        """Train one epoch (or its first `max_batches` batches); returns the mean batch loss."""
        return train_epoch(self.net, self.optimizer, self.scaler, self.sampler,
                           epoch_batches(self, config)[:max_batches], config, desc)


def training_state(session, config, epoch):
    """A checkpoint: everything `predict` needs, and everything `--resume` needs to continue exactly."""
    return copy.deepcopy(dict(
        model=session.net.state_dict(), model_args=session.net.args, config=config.as_dict(), epoch=epoch,
        losses=list(session.losses), aucs=dict(session.aucs), optimizer=session.optimizer.state_dict(),
        scaler=session.scaler.state_dict(),
        generators={name: g.get_state() for name, g in session.generators.items()}))


def save_checkpoint(path, state):
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resume_state(run_dir, epoch):
    path = checkpoint_path(run_dir, epoch)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"cannot resume from {path} ({type(error).__name__}): delete it to resume from the "
                        "checkpoint before it") from None


def trim_log(path, last_epoch):
    """Drop log rows after `last_epoch` (epochs trained after the checkpoint we resume from)."""
    with open(path) as log:
        lines = log.read().splitlines()
    kept = [line for line in lines if not is_row(line) or int(line.split("\t")[0]) <= last_epoch]
    marker = f"# resumed after epoch {last_epoch}"
    if kept[-1] != marker:  # a resume that completed no epoch leaves no second marker
        kept.append(marker)
    atomic_write_text(path, "\n".join(kept) + "\n")


def auc_tracker(config, sampler, gt, missing):
    """A function scoring the whole scene's AUC with the net, when --eval_every asks and the map allows."""
    if config.eval_every is None:
        return None
    reason = auc_undefined(data_pixels(gt, missing))
    if reason is not None:
        print(f"note: --eval_every records nothing here ({reason})")
        return None

    def scene_auc(net):
        hsi = sampler.scene().cpu().numpy()
        reconstructed = score_reconstruction(net, hsi, sampler.device, config, missing)
        return auc_score(data_pixels(gt, missing), data_pixels(detection_map(hsi, reconstructed, missing), missing))
    return scene_auc


def open_run(run_dir, config, is_main):
    """Decide what the run folder allows: the checkpoint to resume from (or None to start), or why not.

    One rule: a folder with no checkpoint holds no run (a start killed before its first checkpoint
    leaves only a log, which start_log replaces with a note); an existing run is refused without --resume or
    --overwrite; --resume continues from the latest checkpoint, and a run already at or past --epochs
    has nothing to train (an error when it lacks a checkpoint of epoch --epochs).
    """
    epochs, old_files = saved_epochs(run_dir), earlier_run_files(run_dir)
    if is_main:
        remove_temporary_files(run_dir)
    if not epochs or config.overwrite:
        if config.resume and not old_files:
            raise UserError(f"nothing to resume: {run_dir} holds no run; run without --resume")
        return None
    if not config.resume:
        hint = (f"it is trained to epoch {epochs[-1]}: predict with these flags, pass --resume with a larger "
                "--epochs to continue it, or --overwrite to replace it") if config.epochs <= epochs[-1] else \
            "pass --resume to continue it, --overwrite to replace it, or change --seed or --checkpoints_dir"
        raise UserError(f"{run_dir} already holds a run with this configuration: {hint}")
    if epochs[-1] >= config.epochs:
        if config.epochs not in epochs:
            raise UserError(longer_run_message(run_dir, config.epochs, epochs))
        raise AlreadyTrained(f"{run_dir} is already trained to epoch {epochs[-1]}, with a checkpoint of epoch "
                             f"{config.epochs}: nothing to train (predict with these flags uses it)")
    return load_resume_state(run_dir, epochs[-1])


def set_up(config, device, resumed):
    """The scene's sampler and map, the network, optimiser, random streams and masks, as of `resumed`."""
    started = time.perf_counter()
    scene = scene_from_config(config)
    seed_everything(config.seed)
    sampler = BlindSpotSampler(scene.hsi, config.patch, config.size_window, config.ratio, device, scene.missing)
    scene.hsi = None  # the sampler holds the scene (padded) from now on
    if config.patches_per_epoch and config.patches_per_epoch > sampler.num_patches:
        raise UserError(f"--patches_per_epoch {config.patches_per_epoch} exceeds the scene's "
                        f"{sampler.num_patches} patches: leave it out to use all of them")
    # Masks and batch order come from CPU generators: the same on every device and every process.
    generators = dict(masks=torch.Generator().manual_seed(config.seed),
                      order=torch.Generator().manual_seed(config.seed + ORDER_SEED_OFFSET))
    net = BS3LNet(sampler.bands, config.nch_ker, config.nblk, config.norm_mode)
    init_weights(net, config.init_weight_type, config.init_gain)  # from torch's global stream, as officially
    # The sampler's patches are laid out channels-last already; with the weights in the same layout the
    # CPU convolutions ran 15 % faster (bench/cpu_variants.py), with results equal up to float rounding.
    net.to(device, memory_format=torch.channels_last)
    if data_parallel.world_size() > 1:
        data_parallel.synchronise_batch_norm(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate, betas=(0.5, 0.999),
                                 weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    session = TrainingSession(sampler, scene, net, optimizer, scaler, generators)
    if resumed is not None:
        try:
            net.load_state_dict(resumed["model"])
        except RuntimeError:
            raise UserError(f"the checkpoint does not fit this scene's {sampler.bands} bands: was the scene "
                            f"{config.dataset} replaced? Resume with the scene it was trained on") from None
        optimizer.load_state_dict(resumed["optimizer"])
        scaler.load_state_dict(resumed["scaler"])
        session.losses, session.aucs = list(resumed["losses"]), dict(resumed["aucs"])
        session.first_epoch = resumed["epoch"] + 1
    # The official code draws every mask once, before training; --remask draws them per epoch instead.
    session.masks = None if config.remask else tuple(m.to(device) for m in sampler.draw_masks(generators["masks"]))
    if resumed is not None:
        for name, generator in generators.items():  # after the initial draw, which they already include
            generator.set_state(resumed["generators"][name])
    session.patches = config.patches_per_epoch or sampler.num_patches
    if data_parallel.rank() == 0:
        print(f"scene {config.dataset}: {sampler.height} x {sampler.width} pixels, {sampler.bands} bands; "
              f"{session.patches} patches of {config.patch} x {config.patch} per epoch, {sampler.n_targets} "
              f"blind spots each; set-up {time.perf_counter() - started:.2f} s")
    return session


def epoch_batches(session, config):
    """The epoch's batches of (patch indices, targets, sources) on the training device; last one partial."""
    device = session.sampler.device
    order = torch.randperm(session.sampler.num_patches, generator=session.generators["order"])[:session.patches]
    if session.masks is None:
        targets, sources = session.sampler.draw_masks(session.generators["masks"], session.patches)
        order, targets, sources = order.to(device), targets.to(device), sources.to(device)
    else:
        order = order.to(device)
        targets, sources = session.masks[0][order], session.masks[1][order]
    return list(zip(order.split(config.batch_size), targets.split(config.batch_size),
                    sources.split(config.batch_size)))


def start_log(run_dir, config, session):
    """A resumed run's log trimmed, or a new run's log (configuration and network on its first lines).

    A new run first removes what an earlier run left in the folder (with --overwrite, or a start that
    saved no checkpoint): only now, once the scene has loaded and the network is built.
    """
    if session.first_epoch > 1:
        trim_log(log_path(run_dir), session.first_epoch - 1)
        print(f"resuming {run_dir} after epoch {session.first_epoch - 1}")
        return
    old_files = earlier_run_files(run_dir)
    for path in old_files:
        os.remove(path)
    if old_files:
        print(f"--overwrite: removed {len(old_files)} files of the earlier run in {run_dir}" if config.overwrite
              else f"note: an earlier start in {run_dir} left no checkpoint: starting anew")
    parameters = sum(p.numel() for p in session.net.parameters())
    atomic_write_text(log_path(run_dir), log_header(config.as_dict(), session.net.args, parameters))


def run_epochs(run_dir, config, session, after_epoch):
    """Train epochs first_epoch..--epochs: log each, score it with --eval_every, save every --save_freq.

    On Ctrl-C (or SIGTERM) the last completed epoch is saved, further signals ignored meanwhile, and
    Interrupted says how to continue.
    """
    is_main = data_parallel.rank() == 0
    scene_auc = auc_tracker(config, session.sampler, session.scene.gt, session.scene.missing) if is_main else None
    snapshot, saved_epoch, epoch = None, session.first_epoch - 1, session.first_epoch
    try:
        for epoch in range(session.first_epoch, config.epochs + 1):
            epoch_start = time.perf_counter()
            loss = session.train_batches(config, f"epoch {epoch}/{config.epochs}")
            seconds = time.perf_counter() - epoch_start
            if not math.isfinite(loss):
                raise UserError(f"the training loss became {loss} in epoch {epoch}: the scene's values (largest "
                                f"{session.sampler.pixels.abs().max().item():.3g}) are too large for float32 "
                                "training; rescale the scene. Epochs before it are saved as usual")
            session.losses.append(loss)
            if scene_auc is not None and epoch % config.eval_every == 0:
                session.aucs[epoch] = scene_auc(session.net)
            snapshot = training_state(session, config, epoch)
            if is_main:
                record_epoch(run_dir, config, session, epoch, seconds)
                if epoch % config.save_freq == 0 or epoch == config.epochs:
                    save_checkpoint(checkpoint_path(run_dir, epoch), snapshot)
                    saved_epoch = epoch
            if after_epoch is not None:
                after_epoch(epoch, session.net, loss)
                session.net.train()
    except KeyboardInterrupt:
        clear_stop_request()
        with signals_ignored():
            stopped = interruption(run_dir, config, epoch, snapshot, saved_epoch, is_main)
        raise stopped from None
    if is_main:
        print(f"checkpoints and log in {run_dir}")
    return session.losses


def record_epoch(run_dir, config, session, epoch, seconds):
    """The epoch's log row and printed line; the AUC curve redrawn after each evaluation."""
    loss, auc = session.losses[-1], session.aucs.get(epoch)
    with open(log_path(run_dir), "a") as log_file:
        log_file.write(log_row(epoch, loss, seconds, auc))
    print(f"epoch {epoch}/{config.epochs}  loss {loss:.6f}  {seconds:.1f} s"
          + (f"  AUC {auc:.6f}" if auc is not None else ""))
    if auc is not None:  # redrawn at each evaluation, so an interrupted run has its curve too
        plot_training_curve(os.path.join(run_dir, CURVE_NAME), session.losses, session.aucs, config.dataset)


def interruption(run_dir, config, epoch, snapshot, saved_epoch, is_main):
    """Save the last completed epoch if it is not saved yet; the Interrupted exception that says what to do."""
    if not is_main:
        return Interrupted("")
    resume = command_line(extra=["--resume"]) if sys.argv[0].endswith("main.py") else "the same command with --resume"
    if snapshot is None:
        epochs = saved_epochs(run_dir)
        if not epochs:
            for path in earlier_run_files(run_dir):  # nothing trained: leave no half-started run behind
                os.remove(path)
            return Interrupted(f"interrupted during epoch {epoch} before any epoch completed; nothing saved")
        return Interrupted(f"interrupted during epoch {epoch} before it completed; the run's checkpoints (up to "
                           f"epoch {epochs[-1]}) are as they were in {run_dir}. Continue with: {resume}")
    if saved_epoch != snapshot["epoch"]:
        save_checkpoint(checkpoint_path(run_dir, snapshot["epoch"]), snapshot)
    return Interrupted(f"interrupted during epoch {epoch}; epoch {snapshot['epoch']} is saved in {run_dir}. "
                       f"Continue with: {resume}")


def train(config, after_epoch=None):
    """Train BS3LNet on `config.dataset` as the official code does; returns the per-epoch mean losses.

    `after_epoch(epoch, net, loss)`, if given, is called after each epoch (the net is left in train mode).
    """
    device = data_parallel.setup(config.device, config.gpu_ids)
    is_main = data_parallel.rank() == 0
    if is_main:
        print(f"device: {device}" + (f" x {data_parallel.world_size()} processes" if data_parallel.world_size() > 1
                                     else ""))
    if config.amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a GPU: use --amp bf16 on CPU")
    set_tf32(config.tf32)
    if config.dry_run:
        return dry_run(config, device)
    run_dir = locate_run(config)
    with run_lock(run_dir) if is_main else contextlib.nullcontext():
        try:
            resumed = open_run(run_dir, config, is_main)
        except AlreadyTrained as done:
            if is_main:
                print(done)
            return torch.load(checkpoint_path(run_dir, config.epochs), map_location="cpu", weights_only=True)["losses"]
        session = set_up(config, device, resumed)
        if is_main:
            start_log(run_dir, config, session)
        return run_epochs(run_dir, config, session, after_epoch)


def dry_run(config, device):
    """Train one batch to check the data and settings; save nothing."""
    session = set_up(config, device, None)
    loss = session.train_batches(config, "dry run", max_batches=1)
    if data_parallel.rank() == 0:
        print(f"dry run: one batch trained, loss {loss:.4f}; nothing saved")
    return [loss]


def ensure_trained(config):
    """Make sure the run these flags describe has a checkpoint of epoch --epochs; returns its folder.

    The one rule for an existing run: its epoch-N checkpoint is used when it exists (the first N epochs
    of a longer run are the same weights), a shorter run is extended, and a longer run without a
    checkpoint of epoch N is an error that names the epochs it has.
    """
    run_dir = locate_run(config)
    epochs = saved_epochs(run_dir)
    if config.overwrite:
        train(config)
    elif config.epochs in epochs:
        print(f"reusing epoch {config.epochs} of the trained run {run_dir}")
    elif epochs and epochs[-1] < config.epochs:
        print(f"extending the run in {run_dir} from epoch {epochs[-1]} to {config.epochs}")
        train(replace(config, resume=True, overwrite=False))
    elif epochs:
        raise UserError(longer_run_message(run_dir, config.epochs, epochs))
    else:
        train(config)
    return run_dir


def longer_run_message(run_dir, wanted, epochs):
    return (f"{run_dir} holds a run to epoch {epochs[-1]} with checkpoints of epochs "
            f"{', '.join(map(str, epochs))} but none of epoch {wanted}: pass one of those as --epochs, "
            "or --overwrite to train it anew")
