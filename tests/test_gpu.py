"""The CUDA path against the CPU path: forward pass, masks and batches, training, tiling, mixed precision,
resuming, official weights, checkpoints moved between devices, and torchrun. The GPU tests are skipped
without a GPU (bench/gpu_check.py runs them on a GPU machine); the device naming and the collectives'
CPU twin run everywhere."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch

import conftest
from conftest import FIXTURES, ROOT, cli_flags, tiny_scene
from dataset import BlindSpotSampler
from scenes import fill_missing
import data_parallel
from config import parse_config
from main import main
from model import BS3LNet, init_weights, load_checkpoint, reconstruct
from train import train
from utils import resolve_device, set_tf32

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the GPU path is compared with the CPU path on a GPU "
                                       "machine (e.g. with bench/gpu_check.py)")

STEPS_PER_EPOCH = 4  # the tiny scene: 120 patches in batches of 32


def scene_folder(root, name, **scene):
    """A folder holding tiny.mat (conftest's tiny scene; `scene` changes its size)."""
    folder = root / name
    folder.mkdir()
    hsi, gt = tiny_scene(**scene)
    scipy.io.savemat(folder / "tiny.mat", {"data": hsi, "map": gt})
    return folder


def flags(folder, device, *extra):
    """conftest's small settings on `device`: argparse keeps the last --device, so ours replaces FAST_FLAGS' cpu."""
    return cli_flags(folder, "tiny", "--device", device, *extra)


def config(folder, device, *extra):
    return parse_config(flags(folder, device, *extra))


def checkpoint_of(folder, epoch):
    """The one checkpoint of `epoch` under `folder`'s checkpoints (whatever the run folder is called)."""
    found = glob.glob(os.path.join(folder, "checkpoints", "tiny", "*", f"epoch_{epoch:04d}.pt"))
    assert len(found) == 1, found
    return found[0]


def random_net(bands, norm, nblk=2):
    """A net whose every layer matters: large random weights and, with BatchNorm, non-trivial running statistics."""
    torch.manual_seed(0)
    net = BS3LNet(bands, 16, nblk, norm)
    init_weights(net, "normal", 0.3)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return net.eval()


def assert_close(actual, expected, rtol):
    """Equal to `rtol` of each value, or of the largest value for values near zero."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


@needs_cuda
@pytest.mark.parametrize("norm", ["bnorm", "inorm"])
def test_forward_pass_on_gpu_equals_cpu(norm):
    """fp32 with TF32 off, through reconstruct (channels-last, as predict runs it)."""
    set_tf32(False)
    hsi = (100 + 10 * np.random.default_rng(0).standard_normal((21, 17, 12))).astype(np.float32)
    net = random_net(12, norm)
    on_cpu = reconstruct(net, hsi, "cpu")
    on_gpu = reconstruct(net, hsi, "cuda")  # moves the same weights to the GPU
    assert next(net.parameters()).is_cuda
    assert_close(on_gpu, on_cpu, 1e-4)


@needs_cuda
@pytest.mark.parametrize("with_no_data", [False, True])
def test_sampler_gives_the_same_masks_and_batches_on_both_devices(with_no_data):
    hsi, _ = tiny_scene(height=15, width=13, bands=7)
    missing = None
    if with_no_data:  # no-data corners and holes, filled as load_scene fills them
        missing = np.random.RandomState(0).rand(15, 13) < 0.2
        missing[:3, :4] = True
        fill_missing(hsi, missing)
    samplers = {device: BlindSpotSampler(hsi, 7, 3, 0.9, device, missing) for device in ("cpu", "cuda")}
    masks = {device: sampler.draw_masks(torch.Generator().manual_seed(3)) for device, sampler in samplers.items()}
    for on_cpu, on_gpu in zip(masks["cpu"], masks["cuda"]):
        assert torch.equal(on_cpu, on_gpu)
    order = torch.randperm(samplers["cpu"].num_patches, generator=torch.Generator().manual_seed(4))[:40]
    batches = {device: [t.cpu() for t in sampler.batch(order.to(device), masks[device][0][order].to(device),
                                                       masks[device][1][order].to(device))]
               for device, sampler in samplers.items()}
    for name, on_cpu, on_gpu in zip(("inputs", "label", "mask"), batches["cpu"], batches["cuda"]):
        assert torch.equal(on_cpu, on_gpu), name


@needs_cuda
@pytest.mark.parametrize("remask", [False, True])
def test_training_draws_the_same_masks_and_batch_order_on_both_devices(tmp_path, monkeypatch, remask):
    """Every batch that train() cuts, on CPU and on GPU with the same seed: same patches, masks and tensors."""
    batches = {}
    real_batch = BlindSpotSampler.batch

    def recording(self, patch_index, targets, sources):
        result = real_batch(self, patch_index, targets, sources)
        batches.setdefault(self.device.type, []).append(
            [t.cpu() for t in (patch_index, targets, sources, *result)])
        return result
    monkeypatch.setattr(BlindSpotSampler, "batch", recording)
    extra = ["--epochs", "2"] + (["--remask"] if remask else [])
    for device in ("cpu", "cuda"):
        train(config(scene_folder(tmp_path, device), device, *extra))
    assert len(batches["cpu"]) == len(batches["cuda"]) == 2 * STEPS_PER_EPOCH
    names = ("patch_index", "targets", "sources", "inputs", "label", "mask")
    for step, (on_cpu, on_gpu) in enumerate(zip(batches["cpu"], batches["cuda"]), start=1):
        for name, a, b in zip(names, on_cpu, on_gpu):
            assert torch.equal(a, b), f"step {step}: {name}"


@needs_cuda
def test_training_losses_on_gpu_equal_cpu(tmp_path):
    losses = {device: train(config(scene_folder(tmp_path, device), device, "--epochs", "2"))
              for device in ("cpu", "cuda")}
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-3)


@needs_cuda
@pytest.mark.parametrize("tile", [16, 7])
def test_tiled_prediction_on_gpu_equals_whole_scene(tile):
    hsi = np.random.default_rng(0).normal(size=(37, 23, 5)).astype(np.float32)  # sides not multiples of tiles
    net = random_net(5, "bnorm")
    whole = reconstruct(net, hsi, "cuda")
    assert_close(reconstruct(net, hsi, "cuda", tile=tile), whole, 1e-5)


@needs_cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_predicts_on_gpu(scene_dir, amp):
    args = flags(scene_dir, "cuda", "--epochs", "2", "--amp", amp)
    assert main(["--command", "train", *args]) == 0
    assert main(["--command", "predict", *args]) == 0
    results = conftest.scene_folder(scene_dir / "results", "tiny") / "latest"
    detectmap = scipy.io.loadmat(results / "detectmap.mat")["detectmap"]
    assert detectmap.shape == (12, 10) and np.isfinite(detectmap).all()
    assert detectmap.max() == 1  # min-max scaled: a NaN or constant reconstruction error would not give 1
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda") and metrics["predict_config"]["amp"] == amp


@needs_cuda
def test_resume_on_gpu_equals_a_straight_run(tmp_path):
    straight = train(config(scene_folder(tmp_path, "straight"), "cuda", "--epochs", "3"))
    folder = scene_folder(tmp_path, "resumed")
    first = train(config(folder, "cuda", "--epochs", "2"))
    resumed = train(config(folder, "cuda", "--epochs", "3", "--resume"))
    assert resumed[:2] == first and len(resumed) == 3
    # Not bit for bit: some CUDA backward kernels (reflection padding) add in a varying order.
    np.testing.assert_allclose(resumed, straight, rtol=1e-5)


@needs_cuda
def test_official_pkl_predicts_on_gpu(tmp_path):
    data = np.load(os.path.join(FIXTURES, "official_forward_bnorm.npz"))
    state = {key.removeprefix("state_dict/"): torch.from_numpy(np.asarray(data[key]))
             for key in data.files if key.startswith("state_dict/")}
    pkl = tmp_path / "official.pkl"
    torch.save(state, pkl)
    folder = scene_folder(tmp_path, "scene", bands=16)
    assert main(["--command", "predict", "--checkpoint", str(pkl), "--dataset", "tiny", "--data_dir", str(folder),
                 "--results_dir", str(folder / "results"), "--device", "cuda"]) == 0
    net, _ = load_checkpoint(str(pkl))
    with torch.no_grad():
        output = net.to("cuda")(torch.from_numpy(data["input"]).cuda()).cpu().numpy()
    assert_close(output, data["output"], 1e-4)
    # The reconstruction predict wrote on the GPU is the one the CPU computes.
    written = scipy.io.loadmat(conftest.scene_folder(folder / "results", "tiny") / "latest" /
                               "reconstructed_data.mat")["reconstructed_data"]
    hsi = scipy.io.loadmat(folder / "tiny.mat")["data"].astype(np.float32)
    assert_close(written, reconstruct(load_checkpoint(str(pkl))[0], hsi, "cpu"), 1e-4)


@needs_cuda
def test_gpu_checkpoint_predicts_in_a_cpu_only_process(scene_dir):
    """A checkpoint saved on the GPU (weights, optimiser and CUDA random states) loads where no GPU is
    visible, and the CPU's reconstruction equals the GPU's."""
    assert main(["--command", "train", *flags(scene_dir, "cuda", "--epochs", "1")]) == 0
    assert main(["--command", "predict", *flags(scene_dir, "cuda", "--epochs", "1")]) == 0
    results = conftest.scene_folder(scene_dir / "results", "tiny") / "latest"
    on_gpu = scipy.io.loadmat(results / "reconstructed_data.mat")["reconstructed_data"]
    command = [sys.executable, os.path.join(ROOT, "main.py"), "--command", "predict",
               *flags(scene_dir, "cpu", "--epochs", "1")]
    predicted = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert json.loads((results / "metrics.json").read_text())["device"] == "cpu"
    on_cpu = scipy.io.loadmat(results / "reconstructed_data.mat")["reconstructed_data"]
    assert_close(on_cpu, on_gpu, 1e-4)


def test_gpu_devices_are_named_with_their_index(monkeypatch):
    """cuda resolves to cuda:0, so that what a run prints and records names the GPU it used."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert str(resolve_device("cuda")) == "cuda:0"
    assert str(resolve_device("cuda:1")) == "cuda:1"
    assert str(resolve_device("auto", "1,0")) == "cuda:1"
    assert str(data_parallel.setup("cuda", "0")) == "cuda:0"  # one process, as `torchrun --nproc_per_node 1`


def torchrun(*args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                           *args], capture_output=True, text=True, timeout=120)


@needs_cuda
def test_torchrun_with_one_gpu_process_trains(scene_dir):
    launched = torchrun(os.path.join(ROOT, "main.py"), "--command", "train",
                        *flags(scene_dir, "cuda", "--epochs", "2"))
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "device: cuda:0" in launched.stdout
    assert torch.load(checkpoint_of(scene_dir, 2), weights_only=True)["epoch"] == 2


COLLECTIVES_SCRIPT = """
import copy, sys
import torch
from torch import distributed as dist
sys.path.insert(0, {root!r})
import data_parallel
from model import BS3LNet, init_weights
from utils import set_tf32

set_tf32(False)  # cuDNN convolutions default to TF32, whose rounding is far above the tolerances below
device = torch.device({device!r})
dist.init_process_group({backend!r})
if device.type == "cuda":
    torch.cuda.set_device(device)
torch.manual_seed(0)
plain = BS3LNet(6, 8, 1).to(device)
init_weights(plain, "normal", 0.3)
synced = data_parallel.synchronise_batch_norm(copy.deepcopy(plain))
x = 10 * torch.randn(4, 6, 9, 9, device=device)
for net in (plain, synced):
    net(x).square().mean().backward()
data_parallel.average_gradients(synced)
for (name, a), b in zip(plain.state_dict().items(), synced.state_dict().values()):
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
for (name, a), b in zip(plain.named_parameters(), synced.parameters()):
    if not name.endswith("norm2.bias"):  # a zero gradient in exact arithmetic: see tests/test_distributed.py
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
dist.destroy_process_group()
print("collectives ok")
"""


@pytest.mark.parametrize("backend, device", [pytest.param("nccl", "cuda:0", marks=needs_cuda),
                                             pytest.param("gloo", "cpu", marks=pytest.mark.slow)])
def test_collectives_of_multi_process_training(tmp_path, backend, device):
    """torchrun with one GPU process trains without a process group (data_parallel.setup's single-process
    path), so this runs the collectives multi-GPU training uses under nccl: BatchNorm over the global
    batch and averaged gradients, which with one process must equal plain BatchNorm and plain gradients.
    The gloo twin on the CPU checks the same comparison and its tolerances where no GPU is."""
    script = tmp_path / "collectives_check.py"
    script.write_text(COLLECTIVES_SCRIPT.format(root=ROOT, backend=backend, device=device))
    launched = torchrun(str(script))
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "collectives ok" in launched.stdout
