"""Scale: a generated ENVI flight line, trained with --patches_per_epoch and predicted with --tile.

    python bench/flightline.py [--lines 2000 --samples 600 --bands 224] [--patches_per_epoch 10000]
                               [--epochs 2] [--tile 256] [--out bench/out/flightline]

Writes an int16 BIL ENVI cube (2000 x 600 x 224 is about 540 MB) with what real lines have: an
orthorectified swath inside no-data corners (`data ignore value = -9999`), water-absorption bands
104-113 and 148-167 flagged in `bbl` and filled with noise, `map info` in UTM, and implanted targets,
whose map goes to a GeoTIFF beside it. Then runs `main.py --command train` and `--command predict`
on it as a user would, each under /usr/bin/time, and prints each step's wall time and peak resident
memory (what the 4 GB limit is about), the AUC, and the commands.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter, zoom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
IGNORE = -9999
WATER_BANDS = list(range(104, 114)) + list(range(148, 168))  # 1-based, as in ENVI
MAP_INFO = "{UTM, 1.000, 1.000, 350000.000, 3900000.000, 3.0, 3.0, 11, North, WGS-84, units=Meters}"


def smooth_spectrum(rng, wavelength):
    centres, widths, heights = rng.uniform(0, 1, 3), rng.uniform(0.1, 0.3, 3), rng.uniform(0.2, 1.0, 3)
    return 0.2 + sum(h * np.exp(-0.5 * ((wavelength - c) / w) ** 2) for c, w, h in zip(centres, widths, heights))


def swath(lines, samples):
    """H x W bool: the data region of an orthorectified line, a slanted strip with no-data corners."""
    rows, cols = np.mgrid[0:lines, 0:samples]
    left = 0.08 * samples + 0.06 * samples * rows / lines
    return (cols >= left) & (cols < left + 0.82 * samples)


def generate(folder, lines, samples, bands, seed=0):
    """Write line.hdr / line.img (int16 BIL) and line_gt.tif into `folder`; returns their paths."""
    import rasterio
    import spectral.io.envi as envi
    from rasterio.transform import from_origin
    rng = np.random.RandomState(seed)
    wavelength = np.linspace(0, 1, bands)
    endmembers = np.stack([smooth_spectrum(rng, wavelength) for _ in range(5)]).astype(np.float32)
    # Smooth abundances drawn coarse and zoomed: a field of the line's size without full-size filtering.
    coarse = np.stack([gaussian_filter(rng.randn(lines // 20 + 1, samples // 20 + 1), 2) for _ in range(5)])
    logits = np.stack([zoom(c, 20, order=1)[:lines, :samples] for c in coarse]).astype(np.float32)
    abundances = np.exp(30 * logits)
    abundances /= abundances.sum(axis=0)
    data = swath(lines, samples)
    gt = np.zeros((lines, samples), np.uint8)
    spectrum = smooth_spectrum(rng, wavelength)
    target = 1.2 - 0.9 * spectrum / spectrum.max()
    implants = []
    edge = data & ~binary_erosion(data, iterations=3)  # within 3 pixels of the no-data corners
    while len(implants) < 60:
        row, col, size = rng.randint(0, lines - 3), rng.randint(0, samples - 3), rng.randint(1, 4)
        if len(implants) % 3 == 0 and not edge[row, col]:
            continue  # a third of the targets touch the swath's edge
        if data[row:row + size, col:col + size].all():
            implants.append((row, col, size, rng.uniform(0.1, 0.6)))
            gt[row:row + size, col:col + size] = 1
    metadata = {"lines": lines, "samples": samples, "bands": bands, "data type": 2, "interleave": "bil",
                "byte order": 0, "data ignore value": IGNORE, "map info": MAP_INFO,
                "bbl": [0 if band in WATER_BANDS else 1 for band in range(1, bands + 1)],
                "wavelength": list(np.round(np.linspace(380, 2500, bands), 2))}
    header = os.path.join(folder, "line.hdr")
    image = envi.create_image(header, metadata, ext=".img", force=True)
    cube = image.open_memmap(interleave="bip", writable=True)
    water = [band - 1 for band in WATER_BANDS if band <= bands]
    for top in range(0, lines, 100):
        rows = slice(top, top + 100)
        block = np.einsum("khw,kb->hwb", abundances[:, rows], endmembers)
        for row, col, size, fraction in implants:
            if top <= row < top + 100:
                patch = block[row - top:row - top + size, col:col + size]
                patch[:] = (1 - fraction) * patch + fraction * target
        block = 4000 * block + 20 * rng.randn(*block.shape)
        block[:, :, water] = 30 * rng.randn(block.shape[0], block.shape[1], len(water))
        block = np.round(block).astype(np.int16)
        block[~data[rows]] = IGNORE
        cube[rows] = block
    cube.flush()
    del cube
    gt_path = os.path.join(folder, "line_gt.tif")
    with rasterio.open(gt_path, "w", driver="GTiff", height=lines, width=samples, count=1, dtype="uint8",
                       crs="EPSG:32611", transform=from_origin(350000, 3900000, 3, 3)) as target_file:
        target_file.write(gt, 1)
    return header, gt_path


def edge_auc(results, gt_path):
    """AUC over the data pixels within 5 pixels of no-data: how the no-data edge is handled."""
    import rasterio
    import scipy.io
    from sklearn.metrics import roc_auc_score
    score_map = scipy.io.loadmat(os.path.join(results, "detectmap.mat"))["detectmap"]
    with rasterio.open(gt_path) as source:
        gt = source.read(1)
    missing = np.isnan(score_map)
    near = binary_dilation(missing, iterations=5) & ~missing
    return roc_auc_score(gt[near], score_map[near])


def timed(command, folder, name):
    """Run `command` under /usr/bin/time; returns (wall seconds, peak RSS MiB, stdout)."""
    record = os.path.join(folder, f"{name}.time")
    result = subprocess.run(["/usr/bin/time", "-o", record, "-f", "%e %M", *command], capture_output=True,
                            text=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    wall, peak_kib = open(record).read().split()[-2:]
    return float(wall), int(peak_kib) / 1024, result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--bands", type=int, default=224)
    parser.add_argument("--patches_per_epoch", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1, help="training seed (the scene is always the same)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "flightline"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    header, gt_path = generate(args.out, args.lines, args.samples, args.bands)
    size_mb = os.path.getsize(header[:-4] + ".img") / 1e6
    flags = ["--dataset", header, "--gt_file", gt_path, "--epochs", str(args.epochs), "--device", "cpu",
             "--seed", str(args.seed),
             "--patches_per_epoch", str(args.patches_per_epoch),
             "--checkpoints_dir", os.path.join(args.out, "checkpoints"),
             "--results_dir", os.path.join(args.out, "results")]
    train = [sys.executable, "main.py", "--command", "train", *flags, "--overwrite"]
    predict = [sys.executable, "main.py", "--command", "predict", *flags, "--tile", str(args.tile)]
    rows = []
    for name, command in (("train", train), ("predict", predict)):
        wall, peak, output = timed(command, args.out, name)
        rows.append((name, wall, peak))
        print(f"$ {' '.join(command[1:])}\n{output.strip().splitlines()[-1]}")
    latest = os.path.join(args.out, "results", "line", "latest")
    metrics = json.load(open(os.path.join(latest, "metrics.json")))
    print(f"\n{args.lines} x {args.samples} x {args.bands} int16 BIL ENVI ({size_mb:.0f} MB), "
          f"{metrics['scene']['nodata_pixels']} no-data pixels, {metrics['scene']['bands']} bands used; "
          f"AUC {metrics['auc']:.4f}, near the no-data edge {edge_auc(latest, gt_path):.4f}")
    print("| step | wall (s) | peak RSS (MiB) |\n|---|---|---|")
    for name, wall, peak in rows:
        print(f"| {name} | {wall:.1f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
