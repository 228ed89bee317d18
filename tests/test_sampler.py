"""The blind-spot sampler, specified by properties on a cube whose values are all distinct."""
import math
import re

import numpy as np
import pytest
import torch

from dataset import BlindSpotSampler
from utils import UserError

HEIGHT, WIDTH, BANDS = 12, 13, 3


def distinct_cube():
    return np.arange(HEIGHT * WIDTH * BANDS, dtype=np.float32).reshape(HEIGHT, WIDTH, BANDS)


def all_pairs(patch, size_window, ratio, seed=0):
    """Every patch of the cube with its drawn masks; arrays as numpy, patches as (N, p, p, B)."""
    cube = distinct_cube()
    sampler = BlindSpotSampler(cube, patch, size_window, ratio)
    targets, sources = sampler.draw_masks(torch.Generator().manual_seed(seed))
    index = torch.arange(sampler.num_patches)
    inputs, label, mask = sampler.batch(index, targets, sources)
    as_pixels = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    return sampler, cube, targets.long().numpy(), sources.long().numpy(), as_pixels(inputs), \
        as_pixels(label), as_pixels(mask)[..., 0]


def window_offsets(size_window):
    low, high = -size_window // 2 + size_window % 2, size_window // 2 + size_window % 2
    return low, high


SETTINGS = [(5, 3, 0.8), (7, 5, 0.9), (6, 4, 0.7), (19, 5, 0.9)]


@pytest.mark.parametrize("patch, size_window, ratio", SETTINGS)
def test_label_is_the_reflect_padded_patch_centred_on_its_pixel(patch, size_window, ratio):
    _, cube, *_, label, _ = all_pairs(patch, size_window, ratio)
    pad = patch // 2
    padded = np.pad(cube, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    for k in range(HEIGHT * WIDTH):
        row, col = divmod(k, WIDTH)
        np.testing.assert_array_equal(label[k], padded[row:row + patch, col:col + patch])
        np.testing.assert_array_equal(label[k][pad, pad], cube[row, col])  # centred on pixel k


@pytest.mark.parametrize("patch, size_window, ratio", SETTINGS)
def test_target_count_and_centre(patch, size_window, ratio):
    sampler, _, targets, *_ = all_pairs(patch, size_window, ratio)
    n = math.ceil(patch * patch * (1 - ratio))
    assert sampler.n_targets == n and targets.shape == (HEIGHT * WIDTH, n)
    centre = (patch // 2) * patch + patch // 2
    assert (targets[:, 0] == centre).all()
    assert (targets[:, 1:] != centre).all()  # the others are drawn from the patch without the centre
    assert ((targets >= 0) & (targets < patch * patch)).all()


def test_official_default_count():
    assert BlindSpotSampler(distinct_cube(), 7, 5, 0.9).n_targets == math.ceil(49 * 0.1)
    assert BlindSpotSampler(np.zeros((20, 20, 2), np.float32), 19, 5, 0.9).n_targets == 37


@pytest.mark.parametrize("patch, size_window, ratio", SETTINGS)
def test_mask_is_zero_exactly_at_targets_and_input_equals_label_elsewhere(patch, size_window, ratio):
    _, _, targets, _, inputs, label, mask = all_pairs(patch, size_window, ratio)
    for k in range(HEIGHT * WIDTH):
        expected = np.ones(patch * patch)
        expected[targets[k]] = 0
        np.testing.assert_array_equal(mask[k].ravel(), expected)
        kept = mask[k] == 1
        np.testing.assert_array_equal(inputs[k][kept], label[k][kept])


@pytest.mark.parametrize("patch, size_window, ratio", SETTINGS)
def test_replaced_spectrum_comes_from_a_source_in_the_window(patch, size_window, ratio):
    """Independently of the recorded sources: each target's new spectrum is the original spectrum of
    a position at a wrapped offset in the window, never (0, 0); the same position in every band."""
    _, _, targets, sources, inputs, label, mask = all_pairs(patch, size_window, ratio)
    low, high = window_offsets(size_window)
    offsets = [(dy, dx) for dy in range(low, high) for dx in range(low, high) if (dy, dx) != (0, 0)]
    pad = patch // 2
    for k in range(HEIGHT * WIDTH):
        row, col = divmod(k, WIDTH)
        # a patch that needs no padding holds distinct spectra only, so a replaced one must differ
        inside = pad <= row < HEIGHT - pad and pad <= col < WIDTH - pad
        for position in np.flatnonzero(mask[k].ravel() == 0):
            y, x = divmod(position, patch)
            new = inputs[k][y, x]
            if inside:
                assert not np.array_equal(new, label[k][y, x])
            candidates = [label[k][(y + dy) % patch, (x + dx) % patch] for dy, dx in offsets]
            assert any(np.array_equal(new, c) for c in candidates)  # ...by a whole spectrum in the window
            # and it is the spectrum at the recorded source of that target
            draw = np.flatnonzero(targets[k] == position)
            for d in draw:
                sy, sx = divmod(sources[k, d], patch)
                dy, dx = (sy - y + patch // 2) % patch - patch // 2, (sx - x + patch // 2) % patch - patch // 2
                assert (dy, dx) != (0, 0)
                np.testing.assert_array_equal(new, label[k][sy, sx])


def test_spectra_are_whole_cube_pixels():
    """Distinct values let every input spectrum be traced to one pixel of the scene."""
    _, cube, _, _, inputs, _, _ = all_pairs(7, 5, 0.8)
    pixels = {tuple(v) for v in cube.reshape(-1, BANDS)}
    assert all(tuple(v) in pixels for v in inputs.reshape(-1, BANDS))


def test_duplicate_targets_take_the_last_drawn_source():
    sampler = BlindSpotSampler(distinct_cube(), 5, 3, 0.0)  # 25 draws in 25 positions: duplicates certain
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    targets, sources = sampler.draw_masks(generator)
    assert any(len(set(t.tolist())) < len(t) for t in targets)
    generator.set_state(state)
    raw_targets, raw_sources = draw_without_dedup(sampler, generator)
    for k in range(sampler.num_patches):
        last = {}
        for t, s in zip(raw_targets[k].tolist(), raw_sources[k].tolist()):
            last[t] = s
        for t, s in zip(targets[k].tolist(), sources[k].tolist()):
            assert last[t] == s


def draw_without_dedup(sampler, generator):
    """The same draws as draw_masks, without giving duplicates a common source (for the test above)."""
    p, n, num = sampler.patch, sampler.n_targets, sampler.num_patches
    centre = (p // 2) * p + p // 2
    others = torch.randint(0, p * p - 1, (num, n - 1), generator=generator)
    others += (others >= centre).long()
    targets = torch.cat([torch.full((num, 1), centre), others], dim=1)
    w = sampler.size_window
    low, high = -w // 2 + w % 2, w // 2 + w % 2  # the spec's window, Python floor division
    side = high - low
    slot = torch.randint(0, side * side - 1, (num, n), generator=generator)
    slot += (slot >= -low * (side + 1)).long()
    dy, dx = slot // side + low, slot % side + low
    return targets, ((targets // p + dy) % p) * p + (targets % p + dx) % p


@pytest.mark.parametrize("size_window, expected", [(5, range(-2, 3)), (4, range(-2, 2)), (3, range(-1, 2)),
                                                   (2, range(-1, 1))])
def test_offsets_cover_exactly_the_window_without_zero(size_window, expected):
    patch = 9
    sampler = BlindSpotSampler(np.zeros((12, 12, 1), np.float32), patch, size_window, 0.5)
    targets, sources = sampler.draw_masks(torch.Generator().manual_seed(0), num_patches=4000)
    t, s = targets.long().numpy().ravel(), sources.long().numpy().ravel()
    # recover offsets: the window is far smaller than the patch, so the wrapped offset is unique
    dy = (s // patch - t // patch + patch // 2) % patch - patch // 2
    dx = (s % patch - t % patch + patch // 2) % patch - patch // 2
    seen = set(zip(dy.tolist(), dx.tolist()))
    assert (0, 0) not in seen
    assert seen == {(a, b) for a in expected for b in expected} - {(0, 0)}
    # uniform over the non-zero offsets, as redrawing (0, 0) until it is not gives
    counts = np.unique(np.stack([dy, dx]), axis=1, return_counts=True)[1]
    mean = dy.size / len(seen)
    assert np.abs(counts - mean).max() < 5 * np.sqrt(mean)


def test_sources_wrap_inside_the_patch_and_targets_are_uniform():
    patch = 5
    sampler = BlindSpotSampler(np.zeros((8, 8, 1), np.float32), patch, 5, 0.5)
    targets, sources = sampler.draw_masks(torch.Generator().manual_seed(1), num_patches=20000)
    assert sources.min() >= 0 and sources.max() < patch * patch
    others = targets[:, 1:].long().numpy().ravel()
    counts = np.bincount(others, minlength=patch * patch)
    centre = (patch // 2) * patch + patch // 2
    assert counts[centre] == 0
    rest = np.delete(counts, centre)
    expected = others.size / (patch * patch - 1)
    assert np.abs(rest - expected).max() < 5 * np.sqrt(expected)  # uniform within sampling noise
    # a corner target with an offset of -2 must wrap to the far side of the patch, not clamp
    corner = targets.long() == 0
    assert set(sources.long()[corner].tolist()) - {1, 2, 5, 10, 6, 7, 11, 12} != set()


def test_masks_depend_only_on_the_generator():
    sampler = BlindSpotSampler(distinct_cube(), 7, 5, 0.9)
    first = sampler.draw_masks(torch.Generator().manual_seed(5))
    again = sampler.draw_masks(torch.Generator().manual_seed(5))
    other = sampler.draw_masks(torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_a_patch_too_large_for_the_scene_is_a_user_error():
    with pytest.raises(UserError, match="too large"):
        BlindSpotSampler(distinct_cube(), patch=25, size_window=5, ratio=0.9)


@pytest.mark.parametrize("flags, message", [
    (["--patch", "1"], "--patch: 1 is outside >= 2"), (["--size_window", "1"], "--size_window: 1 is outside >= 2"),
    (["--patch", "5", "--size_window", "7"], "--size_window 7 must be at most --patch (5)"),
    (["--ratio", "1.0"], "--ratio: 1.0 is outside [0, 1)"), (["--ratio", "-0.1"], "--ratio: -0.1 is outside")])
def test_the_samplers_settings_are_checked_once_when_parsed(flags, message):
    from config import parse_config
    with pytest.raises(UserError, match=re.escape(message)):
        parse_config(flags)
