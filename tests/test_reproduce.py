"""Reproducing the paper: a missing public scene is refused with where to get it."""
import pytest

from main import main
from scenes import where_to_get


def error_lines(capsys):
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_default_scene_says_where_to_get_it(tmp_path, capsys):
    assert main(["--dataset", "AVIRIS-II", "--data_dir", str(tmp_path)]) == 2
    line = error_lines(capsys)
    assert str(tmp_path / "AVIRIS-II.mat") in line and "github.com/yuchaoY/CNND" in line
    assert "input/AVIRIS-II.mat" in line and "Reproduce the paper" in line


def test_missing_paper_scene_points_to_the_official_repository(tmp_path, capsys):
    assert main(["--command", "train", "--dataset", "HYDICE-II", "--data_dir", str(tmp_path)]) == 2
    line = error_lines(capsys)
    assert "github.com/DegangWang97/IEEE_TGRS_BS3LNet" in line and "the paper's own file" in line


@pytest.mark.parametrize("name, where", [
    ("AVIRIS-I", "input/AVIRIS-I.mat"), ("AVIRIS-II_CNND", "input/AVIRIS-II.mat"),
    ("abu-airport-1", "jiojio0505/OT-AD"), ("abu-beach-4", "xudongkang.weebly.com"), ("abu-urban-5", "Kang et al."),
    ("hydice-ii", "IEEE_TGRS_BS3LNet")])
def test_known_public_scenes_have_a_source(name, where):
    assert where in where_to_get(name)


@pytest.mark.parametrize("name", ["my-scene", "abu-urban-6", "AVIRIS-III", "HYDICE"])
def test_other_names_get_no_source(name):
    assert where_to_get(name) is None


def test_a_path_or_suffix_gets_no_source(tmp_path, capsys):
    for dataset in (str(tmp_path / "HYDICE-II"), "HYDICE-II.hdr"):
        assert main(["--dataset", dataset, "--data_dir", str(tmp_path)]) == 2
        assert "Reproduce the paper" not in error_lines(capsys)
