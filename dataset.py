"""Scenes (a `.mat` file or the built-in synthetic one) and the blind-spot patch-pair sampler."""
import math
import os

import numpy as np
import torch

from matfile import read_mat_scene
from utils import UserError

SYNTHETIC = "synthetic"
MASK_CHUNK = 2 ** 16  # patches per mask-drawing chunk (part of the random stream's definition)


def load_scene(data_dir, dataset, data_key=None, gt_key=None):
    """Return (hsi H x W x B float32, map H x W uint8 0/1 or None) for `dataset`, printing notes on guesses.

    `dataset` is `synthetic`, a name in `data_dir` (with or without `.mat`) or a path to a .mat file,
    read by matfile.read_mat_scene (its rules are there and in data/README.md).
    """
    if dataset == SYNTHETIC:
        return synthetic_scene()
    return read_mat_scene(scene_path(data_dir, dataset), data_key, gt_key)


def scene_path(data_dir, dataset):
    """The file `--dataset` names: a path to a .mat file, or a name in --data_dir with or without `.mat`."""
    candidates = [dataset] if dataset.endswith(".mat") and os.path.dirname(dataset) else []
    candidates += [os.path.join(data_dir, dataset + ("" if dataset.endswith(".mat") else ".mat"))]
    for path in candidates:
        if os.path.isdir(path):
            raise UserError(f"{path} is a folder, not a scene file: pass the .mat file inside it, or its name "
                            "with --data_dir set to the folder")
        if os.path.isfile(path):
            return path
    raise UserError(f"scene file {candidates[-1]} not found: put {os.path.basename(candidates[-1])} in {data_dir} "
                    "(or pass --data_dir, or a path to the file as --dataset), or use --dataset synthetic")


def synthetic_scene(height=40, width=48, bands=32, seed=0):
    """A deterministic test scene: a smooth mixed background with implanted anomalies and its map.

    Four smooth endmember spectra are mixed by spatially smooth abundances (sum to one), noise is
    added, then two full-pixel targets, two 2 x 2 targets and four sub-pixel targets (30-70 % of a
    fifth spectrum) are implanted. Values are in the range of calibrated sensor counts (0..~1000).
    """
    from scipy.ndimage import gaussian_filter
    rng = np.random.RandomState(seed)
    wavelength = np.linspace(0.0, 1.0, bands)

    def smooth_spectrum():
        centres, widths, heights = rng.uniform(0, 1, 3), rng.uniform(0.1, 0.3, 3), rng.uniform(0.2, 1.0, 3)
        return 0.2 + sum(h * np.exp(-0.5 * ((wavelength - c) / w) ** 2) for c, w, h in zip(centres, widths, heights))

    endmembers = np.stack([smooth_spectrum() for _ in range(4)])
    logits = np.stack([gaussian_filter(rng.randn(height, width), sigma=6, mode="reflect") for _ in range(4)])
    abundances = np.exp(8 * logits) / np.exp(8 * logits).sum(axis=0)
    hsi = np.einsum("khw,kb->hwb", abundances, endmembers)
    hsi += 0.01 * rng.randn(height, width, bands)
    gt = np.zeros((height, width), np.uint8)
    spectrum = smooth_spectrum()
    target = 1.2 - 0.9 * spectrum / spectrum.max()
    implants = [(8, 10, 1, 1.0), (30, 36, 1, 1.0), (14, 32, 2, 1.0), (28, 12, 2, 1.0),
                (6, 40, 1, 0.7), (20, 22, 1, 0.5), (34, 5, 1, 0.4), (24, 42, 1, 0.3)]
    for row, col, size, fraction in implants:
        block = (slice(row, row + size), slice(col, col + size))
        hsi[block] = (1 - fraction) * hsi[block] + fraction * target
        gt[block] = 1
    return (400.0 * hsi).astype(np.float32), gt


def window_offsets(size_window):
    """The source offsets (dy, dx) of a blind spot, row-major, without (0, 0): a (w*w - 1, 2) int64 tensor.

    Each coordinate ranges over [-w//2 + w%2, w//2 + w%2) with Python's floor division (w=5: -2..2), as
    the official code draws them.
    """
    window = range(-size_window // 2 + size_window % 2, size_window // 2 + size_window % 2)
    return torch.tensor([(dy, dx) for dy in window for dx in window if (dy, dx) != (0, 0)])


class BlindSpotSampler:
    """Blind-spot training pairs cut on the fly from one reflect-padded copy of the scene.

    For patch k (centred on pixel k in row-major order) a mask is `n` target positions inside the
    p x p patch, the centre first, and one source position per target (target + an offset in the
    size_window, never (0, 0), wrapped modulo p). The input patch is the original patch with every
    target's whole spectrum replaced by the original spectrum at its source; the label is the
    original patch; the mask is 0 at targets and 1 elsewhere. Masks are stored as (targets,
    sources) index pairs, a few bytes per target, and patches are gathered per batch on `device`.
    """

    def __init__(self, hsi, patch=19, size_window=5, ratio=0.9, device="cpu"):
        height, width, bands = hsi.shape
        if patch < 2:
            raise UserError(f"--patch {patch} is too small: use at least 2 (default 19)")
        if patch // 2 >= min(height, width):
            raise UserError(f"--patch {patch} is too large for a {height} x {width} scene (reflect padding needs "
                            f"patch // 2 < {min(height, width)}): use --patch {2 * min(height, width) - 1} or less")
        if not 2 <= size_window <= patch:
            raise UserError(f"--size_window {size_window} must be between 2 and --patch ({patch}) so that every "
                            "target has a source other than itself inside the patch")
        if not 0 <= ratio < 1:
            raise UserError(f"--ratio {ratio} must be in [0, 1): it is the share of each patch left unmasked")
        self.height, self.width, self.bands, self.patch, self.size_window = height, width, bands, patch, size_window
        self.num_patches = height * width
        self.n_targets = math.ceil(patch * patch * (1 - ratio))
        self.device = torch.device(device)
        pad = patch // 2
        padded = np.pad(hsi, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        padded_width = padded.shape[1]
        # Pixels as rows of a (pixels x bands) table: a patch is a gather of p*p rows.
        self.pixels = torch.from_numpy(np.ascontiguousarray(padded.reshape(-1, bands), np.float32)).to(self.device)
        rows, cols = np.divmod(np.arange(self.num_patches), width)
        self.patch_origin = torch.from_numpy(rows * padded_width + cols).to(self.device)
        within = np.arange(patch)
        offsets = (within[:, None] * padded_width + within[None, :]).ravel()
        self.patch_offsets = torch.from_numpy(offsets).to(self.device)
        self.identity = torch.arange(patch * patch, device=self.device)
        offsets = window_offsets(size_window)
        position = torch.arange(patch * patch)[:, None]
        target_row, target_col = position.div(patch, rounding_mode="floor"), position % patch
        self.source_table = ((target_row + offsets[:, 0]) % patch) * patch + (target_col + offsets[:, 1]) % patch

    def scene(self):
        """The unpadded H x W x B scene: a view of the padded copy, so no second copy is kept."""
        pad = self.patch // 2
        padded = self.pixels.view(self.height + 2 * pad, self.width + 2 * pad, self.bands)
        return padded[pad:pad + self.height, pad:pad + self.width]

    def draw_masks(self, generator, num_patches=None):
        """Draw (targets, sources), each (num_patches, n) int16 positions in p*p, with `generator` (CPU).

        Drawn in chunks of MASK_CHUNK patches so that the int64 temporaries stay small on big scenes.
        """
        num_patches = self.num_patches if num_patches is None else num_patches
        dtype = torch.int16 if self.patch ** 2 <= torch.iinfo(torch.int16).max else torch.int32
        targets = torch.empty((num_patches, self.n_targets), dtype=dtype)
        sources = torch.empty_like(targets)
        for start in range(0, num_patches, MASK_CHUNK):
            count = min(MASK_CHUNK, num_patches - start)
            targets[start:start + count], sources[start:start + count] = self._draw_chunk(generator, count)
        return targets, sources

    def _draw_chunk(self, generator, num_patches):
        p, n = self.patch, self.n_targets
        centre = (p // 2) * p + p // 2
        others = torch.randint(0, p * p - 1, (num_patches, n - 1), generator=generator)
        others += (others >= centre).long()  # uniform over the patch without the centre, with replacement
        targets = torch.cat([torch.full((num_patches, 1), centre), others], dim=1)
        # Redrawing (0, 0) until it is not, as the official code does, is the same as drawing uniformly
        # among the window's other w*w - 1 offsets (row-major order); the source of target t under offset
        # k, wrapped inside the patch, is looked up in a (p*p, w*w - 1) table.
        slot = torch.randint(0, self.source_table.shape[1], (num_patches, n), generator=generator)
        sources = self.source_table[targets, slot]
        # A target drawn twice keeps its last draw's source (numpy's fancy assignment does the same);
        # giving every duplicate that source makes the later scatter independent of write order.
        last_draw = torch.full((num_patches, p * p), -1)
        last_draw.scatter_reduce_(1, targets, torch.arange(n).expand(num_patches, n), reduce="amax")
        return targets, sources.gather(1, last_draw.gather(1, targets))

    def batch(self, patch_index, targets, sources):
        """Return (input, label, mask) for patches `patch_index`: (N, B, p, p), (N, B, p, p), (N, 1, p, p).

        `targets` and `sources` are the masks of these patches, (N, n), on any device.
        """
        patch_index = patch_index.to(self.device)
        targets, sources = targets.to(self.device).long(), sources.to(self.device).long()
        count, p = patch_index.numel(), self.patch
        source_of = self.identity.expand(count, -1).scatter(1, targets, sources)
        origin = self.patch_origin[patch_index][:, None]
        label = self.pixels[origin + self.patch_offsets]
        inputs = self.pixels[origin + self.patch_offsets[source_of]]
        mask = (source_of == self.identity).to(label.dtype)

        def to_image(table):
            return table.view(count, p, p, table.shape[-1]).permute(0, 3, 1, 2)
        return to_image(inputs), to_image(label), to_image(mask[:, :, None])
