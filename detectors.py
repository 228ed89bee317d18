"""The baseline detectors, global RX and dual-window local RX, and the command that scores a scene with them."""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from config import result_folder
from metrics import min_max, with_missing
from results import write_results
from scenes import scene_from_config
from utils import UserError, usable_cores

def _pinv_rcond(bands):
    """Relative cutoff of the pseudo-inverses: numpy's rtol=None rule, max(M, N) * eps.

    np.linalg.pinv's legacy default, 1e-15, lies within a factor of about 3 of the rounding-level
    eigenvalues of rank-deficient window covariances (fewer distinct background pixels than bands) on
    the benchmark scenes, and would invert such noise into huge scores; B * eps (4e-14 for 189 bands)
    leaves a margin.
    """
    return bands * np.finfo(np.float64).eps


def rx(hsi, missing=None):
    """Global RX: squared Mahalanobis distance of every pixel to the scene mean; H x W x B -> H x W float64.

    The covariance over all pixels is inverted with a pseudo-inverse, as `spectral.rx` does; higher is
    more anomalous. With `missing` (H x W bool), the statistics are the data pixels' and no-data pixels
    score NaN.
    """
    return with_missing(_rx_scores, np.asarray(hsi, np.float64), missing)


def _rx_scores(spectra):
    """RX scores of spectra (... x B), against their own mean and covariance."""
    bands = spectra.shape[-1]
    pixels = spectra.reshape(-1, bands)
    if len(pixels) <= bands + 1:  # then every pixel is equally far from the others: scores are rounding noise
        raise UserError(f"RX needs more pixels than bands + 1, and the scene has {len(pixels)} pixels with data "
                        f"and {bands} bands: with so few pixels RX scores every pixel alike")
    centred = pixels - pixels.mean(axis=0)
    # np.cov's 1/(N-1). 1/N would scale every score by the same factor and leave every AUC as it is.
    covariance = np.atleast_2d(np.cov(pixels, rowvar=False))
    inverse = np.linalg.pinv(covariance, rcond=_pinv_rcond(bands), hermitian=True)
    return np.sum((centred @ inverse) * centred, axis=1).reshape(spectra.shape[:-1])


def lrx_singular_note(win_in, win_out, bands):
    """A note when LRX's background windows hold no more pixels than bands (singular covariances), or None."""
    background = win_out ** 2 - win_in ** 2
    if background > bands:
        return None
    return (f"LRX's windows hold {background} background pixels, not more than the {bands} bands: every local "
            "covariance is singular and only its pseudo-inverse is used; widen --win_out for a full-rank LRX")


def check_lrx_windows(win_in, win_out, height, width):
    """Raise UserError unless both windows are odd, 1 <= win_in < win_out, and win_out fits in the scene.

    A window wider than the scene would be clipped for every pixel, leaving a global detector along that side.
    """
    for name, size in (("win_in", win_in), ("win_out", win_out)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
            raise UserError(f"LRX window {name}={size!r} is not allowed: windows are centred on the pixel, "
                            "so use an odd whole number of pixels (1, 3, 5, ...)")
    if win_in >= win_out:
        raise UserError(f"LRX inner window win_in={win_in} is not smaller than the outer window win_out={win_out}: "
                        f"use an odd win_out of at least {win_in + 2}, or a smaller win_in")
    side = min(height, width)
    if win_out > side:
        largest = side if side % 2 else side - 1
        if largest < 3:
            hint = "LRX needs a scene at least 3 pixels high and wide"
        elif largest <= win_in:
            hint = f"use win_out={largest} with an odd win_in below it"
        else:
            hint = f"use an odd win_out from {win_in + 2} to {largest}"
        raise UserError(f"LRX outer window win_out={win_out} is larger than the {height} x {width} scene: {hint}")


def lrx(hsi, win_in, win_out):
    """Local dual-window RX; H x W x B -> H x W float64, higher is more anomalous.

    Each pixel x is scored (x - mu)^T pinv(C) (x - mu), with mu and C (np.cov's 1/(n-1)) taken over the
    pixels of the win_out x win_out window centred on it minus its win_in x win_in inner window.
    Near the edges both windows are clipped to the scene (config.LRX_BORDER_NOTE).
    """
    hsi = np.asarray(hsi, np.float64)
    height, width, bands = hsi.shape
    check_lrx_windows(win_in, win_out, height, width)
    outer, inner = win_out // 2, win_in // 2
    rows, cols = np.mgrid[-outer:outer + 1, -outer:outer + 1]
    ring = (np.abs(rows) > inner) | (np.abs(cols) > inner)
    offsets = rows[ring], cols[ring]
    pixels = hsi.reshape(-1, bands)
    batch = max(1, min(256, 2 ** 22 // (int(ring.sum()) * bands)))  # about 32 MB of gathered spectra per batch

    def score(start):
        return _lrx_batch(pixels, height, width, offsets, np.arange(start, min(start + batch, height * width)))

    workers = usable_cores()
    # The per-pixel eigendecompositions dominate. numpy releases the GIL during them, and one BLAS thread
    # per batch beats a multi-threaded BLAS, which is slower on matrices this small and thrashes under load.
    with threadpool_limits(limits=1), ThreadPoolExecutor(min(workers, 8)) as pool:
        return np.concatenate(list(pool.map(score, range(0, height * width, batch)))).reshape(height, width)


def _lrx_batch(pixels, height, width, offsets, flat):
    """LRX scores of the pixels whose row-major indices are `flat`."""
    rows = flat[:, None] // width + offsets[0]
    cols = flat[:, None] % width + offsets[1]
    inside = ((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)).astype(np.float64)
    # Offsets that fall outside the scene gather some scene pixel, then weigh 0: clipping without ragged arrays.
    samples = pixels[np.clip(rows, 0, height - 1) * width + np.clip(cols, 0, width - 1)]
    count = inside.sum(axis=1)
    mean = np.einsum("pk,pkb->pb", inside, samples) / count[:, None]
    centred = (samples - mean[:, None]) * inside[..., None]
    covariance = np.matmul(centred.transpose(0, 2, 1), centred) / (count - 1)[:, None, None]
    values, vectors = np.linalg.eigh(covariance)
    # pinv(C) = sum over kept eigenpairs of v v^T / lambda, with np.linalg.pinv(hermitian=True)'s cut on |lambda|.
    projected = np.einsum("pbi,pb->pi", vectors, pixels[flat] - mean)
    keep = np.abs(values) > _pinv_rcond(pixels.shape[1]) * np.abs(values).max(axis=1, keepdims=True)
    return np.sum(np.where(keep, projected ** 2 / np.where(keep, values, 1.0), 0.0), axis=1)


def detect_with_baseline(config, method):
    """Global RX (`rx`) or dual-window local RX (`lrx`) on `config.dataset`; writes what `predict` writes."""
    scene = scene_from_config(config)
    started = time.perf_counter()
    if method == "rx":
        scores, label = rx(scene.hsi, scene.missing), "RX"
    else:  # windows reaching into no-data see its fill (the nearest data spectra); its own scores are dropped below
        scores, label = lrx(scene.hsi, config.win_in, config.win_out), f"LRX {config.win_in}/{config.win_out}"
    info = dict(predict_config=config.as_dict(), scene=scene.describe(),
                seconds=dict(inference=round(time.perf_counter() - started, 4)))
    note = lrx_singular_note(config.win_in, config.win_out, scene.hsi.shape[2]) if method == "lrx" else None
    if note:
        print(f"note: {note}")
        info["note"] = note
    score_map = with_missing(min_max, scores, scene.missing).astype(np.float32)
    return write_results(config, result_folder(config, method), label, score_map,
                         scene, None, info)
