"""The blind-spot patch-pair sampler, and the window geometry it shares with blind-spot scoring."""
import math

import numpy as np
import torch

from scenes import fill_sources
from utils import UserError

MASK_CHUNK = 2 ** 16  # patches per mask-drawing chunk (part of the random stream's definition)


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

    With `missing` (H x W bool), only data pixels are patch centres (patch k is centred on the k-th data
    pixel in row-major order). A target that falls on a no-data pixel, or whose source is a no-data
    pixel filled with the target's own spectrum (fill_sources), is no target: its position keeps its
    value and mask 1, so it is neither replaced nor counted in the loss. A no-data position copying a
    pixel of the patch shows what that pixel shows: the copies of a hidden pixel are hidden with it.
    """

    def __init__(self, hsi, patch=19, size_window=5, ratio=0.9, device="cpu", missing=None):
        height, width, bands = hsi.shape
        # The flags' own ranges are checked once, by config.py; here only what depends on the scene.
        if patch // 2 >= min(height, width):
            raise UserError(f"--patch {patch} is too large for a {height} x {width} scene (reflect padding needs "
                            f"patch // 2 < {min(height, width)}): use --patch {2 * min(height, width) - 1} or less")
        self.height, self.width, self.bands, self.patch, self.size_window = height, width, bands, patch, size_window
        self.n_targets = math.ceil(patch * patch * (1 - ratio))
        self.device = torch.device(device)
        pad = patch // 2
        padded = np.pad(hsi, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        padded_width = padded.shape[1]
        # Pixels as rows of a (pixels x bands) table: a patch is a gather of p*p rows.
        self.pixels = torch.from_numpy(np.ascontiguousarray(padded.reshape(-1, bands), np.float32)).to(self.device)
        centres = np.arange(height * width) if missing is None else np.flatnonzero(~missing)
        self.num_patches = len(centres)
        rows, cols = np.divmod(centres, width)
        self.patch_origin = torch.from_numpy(rows * padded_width + cols).to(self.device)
        # Per pixel of the padded scene (padded like the scene itself): whether it holds data, and the
        # scene pixel whose spectrum it holds; None when all pixels hold data.
        self.has_data = self.shows = None
        if missing is not None:
            self.has_data = torch.from_numpy(~np.pad(missing, pad, mode="reflect").ravel()).to(self.device)
            self.shows = torch.from_numpy(np.pad(fill_sources(missing), pad, mode="reflect").ravel()).to(self.device)
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

    def blind_no_data(self, pixel, targets, sources):
        """The no-data rules of a batch: (sources, copies), in patch positions.

        A target on a no-data pixel, or whose source is a no-data pixel filled with the target's own
        spectrum, becomes its own source (no target). `copies` (N, p*p) gives, for a no-data position
        filled with the spectrum of a pixel that is a target of the patch, that target's source (so the
        copy shows what the pixel shows), and -1 elsewhere.
        """
        shows = self.shows[pixel]  # the scene pixel whose spectrum each position holds
        filled = ~self.has_data[pixel]
        target_shows, source_shows = shows.gather(1, targets), shows.gather(1, sources)
        blind = ~filled.gather(1, targets) & ~(filled.gather(1, sources) & (source_shows == target_shows))
        sources = torch.where(blind, sources, targets)
        target_shows = torch.where(blind, target_shows, -1)  # -1 matches no pixel
        match = filled[:, :, None] & (shows[:, :, None] == target_shows[:, None, :])  # (N, p*p, n)
        copies = torch.where(match.any(dim=2), sources.gather(1, match.byte().argmax(dim=2)), -1)
        return sources, copies

    def batch(self, patch_index, targets, sources):
        """Return (input, label, mask) for patches `patch_index`: (N, B, p, p), (N, B, p, p), (N, 1, p, p).

        `targets` and `sources` are the masks of these patches, (N, n), on any device.
        """
        patch_index = patch_index.to(self.device)
        targets, sources = targets.to(self.device).long(), sources.to(self.device).long()
        count, p = patch_index.numel(), self.patch
        pixel = self.patch_origin[patch_index][:, None] + self.patch_offsets  # (N, p*p) rows of the padded scene
        copies = None
        if self.has_data is not None:
            sources, copies = self.blind_no_data(pixel, targets, sources)
        source_of = self.identity.expand(count, -1).scatter(1, targets, sources)
        mask = source_of == self.identity
        if copies is not None:
            source_of = torch.where(copies >= 0, copies, source_of)
        label = self.pixels[pixel]
        inputs = self.pixels[pixel.gather(1, source_of)]
        mask = mask.to(label.dtype)

        def to_image(table):
            return table.view(count, p, p, table.shape[-1]).permute(0, 3, 1, 2)
        return to_image(inputs), to_image(label), to_image(mask[:, :, None])
