import numpy as np
import pytest
import torch

from conftest import FIXTURES
from model import BS3LNet, from_official_state_dict, init_weights, load_checkpoint, model_args_from_state_dict
from utils import UserError


def official_fixture(norm):
    data = np.load(f"{FIXTURES}/official_forward_{norm}.npz")
    state = {k.removeprefix("state_dict/"): torch.from_numpy(np.asarray(data[k]))
             for k in data.files if k.startswith("state_dict/")}
    return state, data["input"], data["output"]


@pytest.mark.parametrize("norm", ["bnorm", "inorm"])
def test_official_weights_reproduce_official_output(norm):
    official_state, inputs, expected = official_fixture(norm)
    state = from_official_state_dict(official_state)
    assert model_args_from_state_dict(state) == dict(bands=16, nch_ker=64, nblk=2, norm=norm)
    net = BS3LNet(16, 64, 2, norm)
    net.load_state_dict(state)  # strict: every official tensor has its place, and nothing is missing
    with torch.no_grad():
        output = net.eval()(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_official_pkl_loads_through_load_checkpoint(tmp_path):
    official_state, inputs, expected = official_fixture("bnorm")
    torch.save(official_state, tmp_path / "official.pkl")
    net, checkpoint = load_checkpoint(str(tmp_path / "official.pkl"))
    assert not net.training and checkpoint["model_args"]["norm"] == "bnorm"
    with torch.no_grad():
        output = net(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_parameter_counts_match_the_official_network():
    assert sum(p.numel() for p in BS3LNet(16).parameters()) == 203_472
    assert sum(p.numel() for p in BS3LNet(162).parameters()) == 371_810


@pytest.mark.parametrize("norm, inner_bias", [("bnorm", False), ("inorm", True)])
def test_biases_follow_the_norm(norm, inner_bias):
    net = BS3LNet(7, 8, 2, norm)
    assert net.encoder.bias is not None and net.head.bias is not None
    for conv in [net.decoder] + [c for block in net.blocks for c in (block.conv1, block.conv2)]:
        assert (conv.bias is not None) == inner_bias
        assert conv.padding_mode == "reflect" and conv.padding == (1, 1) and conv.stride == (1, 1)


def test_output_keeps_shape_on_non_square_input():
    net = BS3LNet(5, 8, 1).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 5, 13, 7)).shape == (1, 5, 13, 7)


def test_normal_init():
    torch.manual_seed(0)
    net = BS3LNet(16)
    init_weights(net, "normal", 0.02)
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(weights.std().item() - 0.02) < 1e-3 and abs(weights.mean().item()) < 1e-3
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None)
    bn_weights = torch.cat([m.weight for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bn_weights.mean().item() - 1) < 0.01 and 0.01 < bn_weights.std().item() < 0.03
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_xavier_kaiming_and_orthogonal_inits_follow_their_definitions():
    """On the 64 -> 64 3x3 convolution of a block: fan_in = fan_out = 576."""
    torch.manual_seed(0)
    for kind, check in [
            ("xavier", lambda w: abs(w.std().item() - 0.5 * (2 / (576 + 576)) ** 0.5) < 1e-3),
            ("kaiming", lambda w: abs(w.std().item() - (2 / 576) ** 0.5) < 3e-3),
            ("orthogonal", lambda w: torch.allclose(w.flatten(1) @ w.flatten(1).T, 0.25 * torch.eye(64), atol=1e-5))]:
        net = BS3LNet(4, 64, 1)
        init_weights(net, kind, 0.5)
        assert check(net.blocks[0].conv1.weight.detach()), kind


def test_unreadable_checkpoint_is_a_user_error(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(str(tmp_path / "broken.pt"))
    torch.save({"something": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="no BS3LNet weights"):
        load_checkpoint(str(tmp_path / "foreign.pt"))
