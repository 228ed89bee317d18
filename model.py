"""The BS3LNet network and its initialisation, loading checkpoints (ours, or the official code's `.pkl`), and
applying it to a whole scene, optionally tile by tile."""
import re

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from utils import UserError, autocast

NORMS = ("bnorm", "inorm")


def conv3x3(nch_in, nch_out, bias):
    """3x3 convolution, stride 1, on a ReflectionPad2d(1)-padded input (the official layer)."""
    return nn.Conv2d(nch_in, nch_out, kernel_size=3, stride=1, padding=1, padding_mode="reflect", bias=bias)


def norm_layer(norm, nch):
    if norm == "bnorm":
        return nn.BatchNorm2d(nch)
    if norm == "inorm":
        return nn.InstanceNorm2d(nch)  # no affine, no running statistics, as in the official code
    raise UserError(f"unknown --norm_mode '{norm}': use bnorm or inorm")


class ResidualBlock(nn.Module):
    """x + [conv -> norm -> ReLU -> conv -> norm]."""

    def __init__(self, nch, norm):
        super().__init__()
        # With BatchNorm a conv bias would be cancelled by the mean subtraction; the official code drops
        # it there and keeps it with InstanceNorm. Registration order = the official init order.
        bias = norm != "bnorm"
        self.conv1 = conv3x3(nch, nch, bias)
        self.norm1 = norm_layer(norm, nch)
        self.conv2 = conv3x3(nch, nch, bias)
        self.norm2 = norm_layer(norm, nch)

    def forward(self, x):
        return x + self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))


class BS3LNet(nn.Module):
    """encoder (conv+ReLU) -> nblk residual blocks -> decoder (conv+norm), + encoder skip -> conv head."""

    def __init__(self, bands, nch_ker=64, nblk=2, norm="bnorm"):
        super().__init__()
        self.args = dict(bands=bands, nch_ker=nch_ker, nblk=nblk, norm=norm)
        self.encoder = conv3x3(bands, nch_ker, bias=True)
        self.blocks = nn.Sequential(*[ResidualBlock(nch_ker, norm) for _ in range(nblk)])
        self.decoder = conv3x3(nch_ker, nch_ker, bias=norm != "bnorm")
        self.decoder_norm = norm_layer(norm, nch_ker)
        self.head = conv3x3(nch_ker, bands, bias=True)

    @property
    def receptive_field_radius(self):
        """Pixels each output sees on either side: one per 3x3 convolution (3 + 2 * nblk)."""
        return 3 + 2 * self.args["nblk"]

    def forward(self, x):
        features = F.relu(self.encoder(x))
        decoded = self.decoder_norm(self.decoder(self.blocks(features)))
        return self.head(decoded + features)


def init_weights(net, init_type="normal", gain=0.02):
    """Initialise conv weights by `init_type`, conv biases to 0, BatchNorm weight ~ N(1, gain), bias 0."""
    def init_module(module):
        if isinstance(module, nn.Conv2d):
            if init_type == "normal":
                nn.init.normal_(module.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(module.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
            elif init_type == "orthogonal":
                nn.init.orthogonal_(module.weight, gain=gain)
            else:
                raise UserError(f"unknown --init_weight_type '{init_type}': use normal, xavier, kaiming or orthogonal")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)
    net.apply(init_module)


# Official key -> our key. The official layers wrap each conv in Sequential(pad, conv) and each
# norm in a named wrapper, hence the `.conv.1` / `.norm` segments.
_OFFICIAL_KEYS = [
    (r"encoder\.cbr\.0\.conv\.1\.", "encoder."),
    (r"resconv\.(\d+)\.resblk\.1\.cbr\.0\.conv\.1\.", r"blocks.\1.conv1."),
    (r"resconv\.(\d+)\.resblk\.1\.cbr\.1\.norm\.", r"blocks.\1.norm1."),
    (r"resconv\.(\d+)\.resblk\.3\.cbr\.0\.conv\.1\.", r"blocks.\1.conv2."),
    (r"resconv\.(\d+)\.resblk\.3\.cbr\.1\.norm\.", r"blocks.\1.norm2."),
    (r"decoder\.cbr\.0\.conv\.1\.", "decoder."),
    (r"decoder\.cbr\.1\.norm\.", "decoder_norm."),
    (r"conv\.conv\.1\.", "head."),
]


def from_official_state_dict(state_dict):
    """Rename an official BS3LNet state_dict's keys to ours (keys already ours pass through)."""
    renamed = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        for pattern, replacement in _OFFICIAL_KEYS:
            new_key, count = re.subn("^" + pattern, replacement, key)
            if count:
                key = new_key
                break
        renamed[key] = value
    return renamed


def model_args_from_state_dict(state_dict):
    """Infer bands, nch_ker, nblk and norm from a state_dict with our key names."""
    try:
        nch_ker, bands = state_dict["encoder.weight"].shape[:2]
    except (KeyError, ValueError):
        raise UserError("the checkpoint holds no BS3LNet weights (no encoder convolution): "
                        "pass a checkpoint written by this tool or an official BS3LNet .pkl")
    nblk = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.") and k.endswith("conv1.weight")})
    norm = "bnorm" if "decoder_norm.running_mean" in state_dict else "inorm"
    return dict(bands=int(bands), nch_ker=int(nch_ker), nblk=nblk, norm=norm)


def load_checkpoint(path):
    """Load a checkpoint of ours or an official `.pkl`; returns (model in eval mode, checkpoint dict).

    The checkpoint dict has `model`, `model_args` and, for ours, `config` and `epoch`. Only tensors and
    plain data are read (weights_only), so a file cannot run code; anything else is a UserError.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist: train first or pass --checkpoint PATH") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder: pass a checkpoint file (epoch_NNNN.pt or a .pkl)") from None
    except Exception as error:  # truncated, not a torch file, or holding objects a safe load refuses
        raise UserError(f"cannot read checkpoint {path} ({unreadable_reason(error)}): pass a checkpoint written "
                        "by this tool or an official BS3LNet .pkl") from None
    try:
        return network_from_checkpoint(checkpoint)
    except UserError as error:
        raise UserError(f"checkpoint {path}: {error}") from None
    except Exception as error:  # a readable file with the wrong contents
        raise UserError(f"checkpoint {path} holds no usable BS3LNet weights ({type(error).__name__}): pass a "
                        "checkpoint written by this tool or an official BS3LNet .pkl") from None


def unreadable_reason(error):
    """Why torch.load failed, in words of our own (torch's own advice would suggest an unsafe load)."""
    text = str(error)
    if "weights_only" in text or "Weights only" in text:
        return "it holds Python objects other than tensors and plain data, which are not loaded since they can run code"
    if "zip" in text.lower() or isinstance(error, EOFError):
        return "the file is truncated or not a PyTorch file"
    return f"{type(error).__name__}: not a PyTorch checkpoint, or a damaged one"


def network_from_checkpoint(checkpoint):
    """(model in eval mode, checkpoint dict) from the loaded contents of a checkpoint file."""
    if not isinstance(checkpoint, dict):
        raise UserError("it is not a state_dict: pass a checkpoint written by this tool or an official BS3LNet .pkl")
    if "model" not in checkpoint:  # the official code saves a bare state_dict
        checkpoint = {"model": checkpoint}
    state_dict = from_official_state_dict(checkpoint["model"])
    model_args = model_args_from_state_dict(state_dict)
    net = BS3LNet(**model_args)
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as error:
        raise UserError(f"it does not fit a BS3LNet with {model_args}: {str(error).splitlines()[0]}") from None
    checkpoint.update(model=state_dict, model_args=model_args)
    return net.eval(), checkpoint


def reconstruct(net, hsi, device, tile=None, amp="off", keep=None, out=None):
    """The network's H x W x B reconstruction of the H x W x B scene `hsi`, in eval mode.

    With `tile`, the scene goes through in tiles of tile x tile output pixels, each cut with a margin
    of the receptive-field radius, so memory is bounded by the tile. With BatchNorm in eval mode every
    output pixel depends only on its receptive field, so the tiled result equals the whole-scene one
    up to float rounding (reflect padding only ever happens at the scene's own borders, as before).
    With `keep` (H x W bool), the reconstruction of those pixels only is added to what `out` (H x W x B
    float32) holds.
    """
    net = net.to(device, memory_format=torch.channels_last).eval()
    height, width, _ = hsi.shape
    # An H x W x B block seen as 1 x B x H x W is already channels-last: no copy of the scene is made.
    scene = torch.from_numpy(hsi).permute(2, 0, 1)[None]
    if tile is None:
        tile = max(height, width)
    margin = net.receptive_field_radius
    output = np.empty(hsi.shape, np.float32) if out is None else out
    with torch.no_grad(), autocast(device, amp):
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                y0, x0 = max(top - margin, 0), max(left - margin, 0)
                y1, x1 = min(bottom + margin, height), min(right + margin, width)
                window = scene[:, :, y0:y1, x0:x1].to(device).contiguous(memory_format=torch.channels_last)
                piece = net(window)[0].float()
                piece = piece[:, top - y0:top - y0 + bottom - top, left - x0:left - x0 + right - left]
                piece = piece.permute(1, 2, 0).cpu().numpy()
                if keep is None:
                    output[top:bottom, left:right] = piece
                else:
                    kept = keep[top:bottom, left:right]
                    output[top:bottom, left:right][kept] += piece[kept]
    return output
