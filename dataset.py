"""Scenes (a `.mat` file or the built-in synthetic one) and the blind-spot patch-pair sampler."""
import math
import os

import numpy as np
import scipy.io
import torch

from utils import UserError

SYNTHETIC = "synthetic"


def load_scene(data_dir, dataset):
    """Return (hsi H x W x B float32, ground-truth map H x W or None) for `dataset`.

    `dataset` is a file stem in `data_dir` (`<data_dir>/<dataset>.mat`) or `synthetic`.
    """
    if dataset == SYNTHETIC:
        return synthetic_scene()
    path = os.path.join(data_dir, dataset + ".mat")
    if not os.path.isfile(path):
        raise UserError(f"scene file {path} not found: put {dataset}.mat in {data_dir} "
                        "(or pass --data_dir), or use --dataset synthetic")
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise UserError(f"{path} is a MATLAB v7.3 (HDF5) file, which is not read yet: "
                        "re-save it in MATLAB with save(..., '-v7')")
    except Exception as error:
        raise UserError(f"cannot read {path} as a MATLAB .mat file ({type(error).__name__}): "
                        "check the file is complete and saved by MATLAB or scipy.io.savemat")
    arrays = {key: value for key, value in contents.items() if not key.startswith("__")}
    if "data" not in arrays:
        raise UserError(f"{path} has no 'data' array (keys present: {', '.join(sorted(arrays)) or 'none'}): "
                        "save the scene as 'data' (H x W x bands)")
    hsi = arrays["data"]
    if hsi.ndim != 3 or not np.issubdtype(hsi.dtype, np.number) or hsi.size == 0:
        raise UserError(f"'data' in {path} has shape {hsi.shape} and dtype {hsi.dtype}: "
                        "it must be a numeric H x W x bands array")
    hsi = hsi.astype(np.float32)  # no normalisation of any kind, as in the official code
    gt = arrays.get("map")
    if gt is None:
        raise UserError(f"{path} has no 'map' array (keys present: {', '.join(sorted(arrays))}): "
                        "save the ground truth as 'map' (H x W, 1 = anomaly, 0 = background)")
    if gt.shape != hsi.shape[:2]:
        raise UserError(f"'map' in {path} has shape {gt.shape} but 'data' is {hsi.shape[0]} x {hsi.shape[1]} "
                        "pixels: the map must be H x W like the scene")
    if not np.isin(gt, (0, 1)).all():
        raise UserError(f"'map' in {path} holds values other than 0 and 1: "
                        "save a binary map (1 = anomaly, 0 = background)")
    return hsi, gt.astype(np.uint8)


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
    target = 1.2 - 0.9 * smooth_spectrum() / smooth_spectrum().max()
    implants = [(8, 10, 1, 1.0), (30, 36, 1, 1.0), (14, 32, 2, 1.0), (28, 12, 2, 1.0),
                (6, 40, 1, 0.7), (20, 22, 1, 0.5), (34, 5, 1, 0.4), (24, 42, 1, 0.3)]
    for row, col, size, fraction in implants:
        block = (slice(row, row + size), slice(col, col + size))
        hsi[block] = (1 - fraction) * hsi[block] + fraction * target
        gt[block] = 1
    return (400.0 * hsi).astype(np.float32), gt


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
        self.height, self.width, self.bands, self.patch = height, width, bands, patch
        self.num_patches = height * width
        self.n_targets = math.ceil(patch * patch * (1 - ratio))
        # Offsets are drawn from [-w//2 + w%2, w//2 + w%2) with Python's floor division (w=5: -2..2).
        self.offset_low, self.offset_high = -size_window // 2 + size_window % 2, size_window // 2 + size_window % 2
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

    def draw_masks(self, generator, num_patches=None):
        """Draw (targets, sources), each (num_patches, n) int16 positions in p*p, with `generator` (CPU)."""
        num_patches = self.num_patches if num_patches is None else num_patches
        p, n = self.patch, self.n_targets
        centre = (p // 2) * p + p // 2
        others = torch.randint(0, p * p - 1, (num_patches, n - 1), generator=generator)
        others += (others >= centre).long()  # uniform over the patch without the centre, with replacement
        targets = torch.cat([torch.full((num_patches, 1), centre), others], dim=1)
        # Redrawing (0, 0) until it is not, as the official code does, is the same as drawing uniformly
        # among the other w*w - 1 offsets of the window: draw that index and skip the (0, 0) slot.
        side = self.offset_high - self.offset_low
        zero_slot = -self.offset_low * side - self.offset_low
        slot = torch.randint(0, side * side - 1, (num_patches, n), generator=generator)
        slot += (slot >= zero_slot).long()
        dy, dx = slot // side + self.offset_low, slot % side + self.offset_low
        sources = ((targets // p + dy) % p) * p + (targets % p + dx) % p
        # A target drawn twice keeps its last draw's source (numpy's fancy assignment does the same);
        # giving every duplicate that source makes the later scatter independent of write order.
        last_draw = torch.full((num_patches, p * p), -1)
        last_draw.scatter_reduce_(1, targets, torch.arange(n).expand(num_patches, n), reduce="amax")
        sources = sources.gather(1, last_draw.gather(1, targets))
        dtype = torch.int16 if p * p <= torch.iinfo(torch.int16).max else torch.int32
        return targets.to(dtype), sources.to(dtype)

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
            return table.view(count, p, p, -1).permute(0, 3, 1, 2)
        return to_image(inputs), to_image(label), to_image(mask[:, :, None])
