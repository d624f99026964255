"""`pyaudiok train llp`: bags and proportions of the digits set, short runs of both losses learn,
results and checkpoints are written, --resume skips finished runs, clear errors, --device."""
import json

import pytest
import torch

from pyaudiok import cli
from pyaudiok.data.label_proportions import load_digits, make_bags

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("sklearn", reason="the digits set ships with scikit-learn")


def test_digits_split_and_bags():
    data = load_digits(0.2, seed=3)
    assert data.x_train.shape == (1438, 64) and data.x_test.shape == (359, 64) and data.n_classes == 10
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    bags = make_bags(data.y_train, 100, 10, seed=1)
    assert bags.sizes.tolist() == [100] * 14 + [38]  # the remainder is the last, smaller bag
    torch.testing.assert_close(bags.proportions.sum(1), torch.ones(15))
    for b in (0, 14):  # proportions are the bag's own label histogram
        labels = data.y_train[bags.bag_index == b]
        torch.testing.assert_close(bags.proportions[b], torch.bincount(labels, minlength=10) / len(labels))
    assert torch.equal(bags.bag_index, make_bags(data.y_train, 100, 10, seed=1).bag_index)


def test_short_runs_learn_and_resume(tmp_path, capsys):
    # On the CPU: the accuracy bounds below were measured there.
    argv = ["train", "llp", "--bag-sizes", "8,64", "--methods", "proportion,ot,ot_hard", "--epochs", "5",
            "--batch", "64", "--lr", "1e-2", "--hidden", "32", "--ot-iters", "20", "--no-progress", "--device", "cpu",
            "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    runs = {(r["method"], r["bag_size"]): r for r in result["runs"]}
    assert set(runs) == {("supervised", 1)} | {(m, k) for m in ("proportion", "ot", "ot_hard") for k in (8, 64)}
    assert runs[("supervised", 1)]["test_accuracy"] > 0.85
    for method in ("proportion", "ot", "ot_hard"):
        assert runs[(method, 8)]["test_accuracy"] > 0.5, runs[(method, 8)]  # chance is 0.1
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert log[0] == "run,epoch,loss,test_accuracy" and len(log) == 1 + 7 * 5
    assert "supervised ceiling" in capsys.readouterr().out
    # --resume: every run has a checkpoint of the same config, so nothing is trained again.
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    assert len(stamp) == 7
    assert cli.main(argv + ["--resume"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()} == stamp
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == result["runs"]


def test_cli_accepts_device_cpu(tmp_path):
    argv = ["train", "llp", "--bag-sizes", "8", "--methods", "proportion,ot", "--epochs", "2", "--batch", "64",
            "--hidden", "16", "--ot-iters", "10", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv + ["--device", "cpu"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["config"]["device"] == "cpu" and len(result["runs"]) == 3
    # The device is not part of a run's identity: --resume on another device skips finished runs.
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    assert cli.main(argv + ["--resume", "--device", "auto"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()} == stamp


@pytest.mark.gpu
def test_cli_trains_on_cuda(tmp_path):
    argv = ["train", "llp", "--bag-sizes", "8", "--methods", "proportion,ot", "--epochs", "5", "--batch", "64",
            "--lr", "1e-2", "--hidden", "32", "--ot-iters", "20", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(argv + ["--device", "cuda"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["config"]["device"] == "cuda"
    runs = {(r["method"], r["bag_size"]): r for r in result["runs"]}
    assert set(runs) == {("supervised", 1), ("proportion", 8), ("ot", 8)}
    assert runs[("supervised", 1)]["test_accuracy"] > 0.85
    for method in ("proportion", "ot"):
        assert runs[(method, 8)]["test_accuracy"] > 0.3, runs[(method, 8)]  # chance is 0.1
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert len(log) == 1 + 3 * 5
    # The checkpoints written from the GPU are read back on the CPU: --resume there trains nothing again.
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    assert len(stamp) == 3
    assert cli.main(argv + ["--resume", "--device", "cpu"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()} == stamp
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == result["runs"]


def test_bad_options(capsys):
    assert cli.main(["train", "llp", "--methods", "proportion,magic", "--no-progress"]) == 2
    assert "unknown method(s) ['magic']" in capsys.readouterr().err
    assert cli.main(["train", "llp", "--bag-sizes", "0,8", "--no-progress"]) == 2
    assert "bag_sizes" in capsys.readouterr().err


def test_missing_scikit_learn_is_a_clear_error(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()
