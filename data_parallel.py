"""Multi-process training with torch.distributed, as launched by `torchrun --nproc_per_node N main.py ...`.

Every process holds the whole scene and draws the same masks and batch order (same seed); each global
batch is split between the processes, BatchNorm statistics are computed over the whole global batch,
and gradients are averaged, so N processes compute what one process computes on the same global batch.
"""
import os

import torch
from torch import distributed as dist
from torch import nn

from utils import UserError, resolve_device


def launched():
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def setup(device, gpu_ids):
    """Join the process group when launched by torchrun (gloo on CPU, nccl on GPU); returns the device."""
    if not launched():
        return resolve_device(device, gpu_ids)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        chosen, backend = torch.device("cpu"), "gloo"
    elif device in ("auto", "cuda"):
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible): "
                            "launch at most that many processes, or pass --device cpu")
        chosen, backend = torch.device(f"cuda:{local_rank}"), "nccl"
        torch.cuda.set_device(chosen)
    else:
        raise UserError(f"--device {device} names one device; under torchrun use --device auto, cuda or cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return chosen


def cleanup(completed):
    """Leave the process group. After a completed command every process first waits for the others, so
    that none tears its connections down while another (the one saving checkpoints) still holds them:
    gloo can abort a process at exit otherwise. After an error there is no waiting, as a process that
    failed alone would wait for ever."""
    if dist.is_available() and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward pass sums the gradients over the processes too."""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total)
        return total


def sum_over_processes(tensor):
    return _SumOverProcesses.apply(tensor)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch split over all processes.

    torch's SyncBatchNorm does this on GPUs only; this one also runs on CPU (gloo). The all-reduces
    are differentiable, so the backward pass sees the same dependency on every process's batch as a
    single process would.
    """

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        # float32 whatever the input's type: under bf16 a count of 36100 would round to 36096
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float32, device=x.device)
        dist.all_reduce(count)
        mean = sum_over_processes(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean[None, :, None, None]
        var = sum_over_processes(centred.square().sum(dim=(0, 2, 3))) / count
        with torch.no_grad():  # running statistics exactly as BatchNorm2d updates them (unbiased variance)
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        scale = self.weight / torch.sqrt(var + self.eps)
        return centred * scale[None, :, None, None] + self.bias[None, :, None, None]


def synchronise_batch_norm(net):
    """Swap every BatchNorm2d of `net` for a GlobalBatchNorm2d carrying the same parameters and buffers."""
    for name, child in net.named_children():
        if isinstance(child, nn.BatchNorm2d):
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum).to(child.weight.device)
            replacement.load_state_dict(child.state_dict())
            setattr(net, name, replacement)
        else:
            synchronise_batch_norm(child)
    return net


def shard(tensors):
    """This process's share of each tensor of a global batch (tensor_split: sizes differ by at most one)."""
    return tuple(t.tensor_split(world_size())[rank()] for t in tensors)


def mean_over_processes(value):
    """The mean of a scalar tensor over the processes (the value itself with one process)."""
    if world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world_size()
    return value


def average_gradients(net):
    """Average the gradients of all processes (one all-reduce of the flattened gradients)."""
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, piece in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(piece.view_as(grad))
