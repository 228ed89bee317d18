"""Scoring a scene with a trained network: the official whole-scene reconstruction, or blind-spot scoring.

The official prediction shows the network every pixel, an input it never saw in training, and
whatever it passes through of a visible pixel it passes through of an anomaly too. Blind-spot
scoring reconstructs each pixel the way training did: hidden behind a neighbour's spectrum.
"""
import numpy as np
import torch
from tqdm import tqdm

from dataset import window_offsets
from scenes import fill_sources
from model import reconstruct
from utils import UserError

# Redraws of a source that fell inside its own group (a few % of draws) before giving up on a pixel.
MAX_REDRAWS = 64


def group_count(ratio):
    """Groups of blind-spot scoring: each holds about 1 - ratio of the pixels, the training density."""
    return max(2, round(1 / (1 - ratio)))


def reflect(index, size):
    """numpy's 'reflect' padding (edge not repeated) of indices at most size - 1 outside [0, size)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def blindspot_partition(height, width, size_window, ratio, generator, shows=None):
    """One random partition of the H*W pixels into groups, and a source pixel for every pixel.

    Returns (group, source), each H*W int64 in row-major pixel order. Pixels go to `group_count(ratio)`
    groups of equal size (within one) by a random permutation. A pixel's source is the pixel at a random
    offset of the training window (never (0, 0)), reflected at the scene's borders as the padded training
    patches are; a source inside the pixel's own group is redrawn, so that a group's pass shows none
    of the group's own spectra, neither in place nor copied to a neighbour. `shows` (H*W int64, from
    fill_sources) names the pixel whose spectrum each pixel holds: a filled no-data pixel counts as
    the pixel it copies. A pixel with no such source in its window (one amid its own fill copies) takes
    one from anywhere in the scene.
    """
    pixels = height * width
    groups = group_count(ratio)
    group = torch.empty(pixels, dtype=torch.long)
    group[torch.randperm(pixels, generator=generator)] = torch.arange(pixels) % groups
    offsets = window_offsets(size_window)
    if offsets.abs().max() >= min(height, width):
        raise UserError(f"--size_window {size_window} is too large for a {height} x {width} scene: "
                        f"use at most {2 * min(height, width) - 1}")
    shown_group = group if shows is None else group[shows]
    row, col = torch.arange(pixels).div(width, rounding_mode="floor"), torch.arange(pixels) % width
    source = torch.empty(pixels, dtype=torch.long)
    pending = torch.arange(pixels)
    for attempt in range(2 * MAX_REDRAWS):
        if attempt < MAX_REDRAWS:
            slot = torch.randint(0, len(offsets), (len(pending),), generator=generator)
            drawn = (reflect(row[pending] + offsets[slot, 0], height) * width
                     + reflect(col[pending] + offsets[slot, 1], width))
        else:  # no usable neighbour (a data pixel amid its own no-data copies): any pixel of another group
            drawn = torch.randint(0, pixels, (len(pending),), generator=generator)
        source[pending] = drawn
        pending = pending[shown_group[drawn] == group[pending]]
        if len(pending) == 0:
            return group, source
    raise UserError(f"blind-spot scoring found no source outside its group for {len(pending)} pixels: "
                    "raise --size_window or --ratio")


def blindspot_reconstruct(net, hsi, device, size_window, ratio, seed, repeats=1, tile=None, amp="off",
                          missing=None):
    """Each pixel's reconstruction with its own spectrum hidden, averaged over `repeats` partitions.

    For every group of a partition, one pass of the whole scene (or tile by tile) in which each pixel of
    the group shows its source's spectrum; the reconstruction is kept at the group's pixels only. A
    pixel's result so never depends on its own spectrum. Seeded by `seed`: deterministic on one device.
    `hsi` (float32) is changed during the call and restored before it returns. No-data pixels
    (`missing`, H x W bool) are never hidden; they show, as context, what the pixel whose spectrum fills
    them shows in the pass (fill_sources), so a hidden pixel's copies are hidden too.
    """
    height, width, bands = hsi.shape
    generator = torch.Generator().manual_seed(seed)
    # The scene as one pass shows it: `hsi` itself when it is float32 and contiguous (a group's pixels are
    # changed for the pass and restored after it, so a flight line needs no second copy), else a copy.
    shown = np.ascontiguousarray(hsi, np.float32)
    flat = shown.reshape(-1, bands)
    total = np.zeros(hsi.shape, np.float32)  # each pixel is added once per partition
    shows = None if missing is None else fill_sources(missing).ravel()
    fills = None if missing is None else np.flatnonzero(missing)
    # A bar for scorings that take more than a moment (a flight line, many repeats); silent otherwise.
    progress = tqdm(total=repeats * group_count(ratio), desc="blind-spot scoring", unit="pass", leave=False,
                    delay=2, dynamic_ncols=True)
    for _ in range(repeats):
        group, source = blindspot_partition(height, width, size_window, ratio, generator,
                                            None if shows is None else torch.from_numpy(shows))
        for g in range(group_count(ratio)):
            progress.update()
            keep = (group == g).numpy()
            members = np.flatnonzero(keep if missing is None else keep & ~missing.ravel())
            own = flat[members]  # a copy: the group's own spectra, put back after the pass
            try:
                flat[members] = flat[source[members].numpy()]  # sources lie outside the group: not changed
                if fills is not None:  # copies follow their pixel
                    flat[fills] = flat[shows[fills]]
                reconstruct(net, shown, device, tile, amp, keep=keep.reshape(height, width), out=total)
            finally:
                flat[members] = own
                if fills is not None:  # each fill is a copy of a data pixel, now as it was
                    flat[fills] = flat[shows[fills]]
    progress.close()
    if repeats > 1:
        total /= np.float32(repeats)
    return total


def score_reconstruction(net, hsi, device, config, missing=None):
    """The reconstruction that `config.scoring` scores: official (whole scene, every pixel shown) or blindspot."""
    if config.single_scoring == "official":
        return reconstruct(net, hsi, device, config.tile, config.amp)
    return blindspot_reconstruct(net, hsi, device, config.size_window, config.ratio, config.seed,
                                 config.score_repeats, config.tile, config.amp, missing)
