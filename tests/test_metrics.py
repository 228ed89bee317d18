import numpy as np
import pytest
import torch

from conftest import FIXTURES
from metrics import auc_score, detection_map
from utils import UserError, resolve_device


def test_detection_map_and_auc_match_the_official_figures():
    data = np.load(f"{FIXTURES}/official_detectmap.npz")
    score_map = detection_map(data["hsi"], data["reconstructed"])
    np.testing.assert_allclose(score_map, data["detectmap"], atol=1e-6)
    assert auc_score(data["gt"], score_map) == pytest.approx(float(data["auc"]), abs=1e-12)


def test_detection_map_is_band_mean_squared_error_scaled_to_unit_range():
    hsi = np.zeros((2, 3, 4), np.float32)
    reconstructed = hsi.copy()
    reconstructed[0, 0] = 2.0  # error 4 in every band
    reconstructed[1, 2, :2] = 2.0  # error 4 in half the bands -> mean 2
    score_map = detection_map(hsi, reconstructed)
    assert score_map[0, 0] == 1 and score_map[1, 2] == 0.5 and score_map.min() == 0
    assert detection_map(hsi, hsi).max() == 0  # a constant map stays finite


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")
