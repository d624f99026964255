"""`pyaudiok train charm` at toy sizes: the report of both models under every condition, exact
resume, checkpoint round trip."""
from __future__ import annotations

import json

import pytest
import torch

from pyaudiok import cli
from pyaudiok.train import charm as trainer
from pyaudiok.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = ["--batch", "16", "--d", "8", "--filters", "8", "--test-trials", "64", "--log-every", "2", "--threads", "1",
       "--no-progress"]


def test_cli_trains_both_models_and_reports_every_condition(tmp_path, capsys):
    assert cli.main(["train", "charm", *TOY, "--steps", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    for name in trainer.MODELS:
        assert set(trainer.CONDITIONS) <= set(result[name])
        assert all(0.0 <= result[name][c] <= 1.0 for c in trainer.CONDITIONS)
    assert 0.0 <= result["charm"]["slot_accuracy"] <= 1.0 and "slot_accuracy" not in result["baseline"]
    # CHARM's output does not depend on the order of the inputs: (a) and (b) agree.
    assert result["charm"]["canonical"] == pytest.approx(result["charm"]["shuffled"], abs=2 / 64)
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,charm_loss") and len(log) == 3
    out = capsys.readouterr().out
    assert "missing_25_shuffled" in out and "baseline" in out
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [4]


def test_resume_takes_exactly_the_same_steps(tmp_path):
    def config(out, steps, *extra):
        return ["train", "charm", *TOY, "--steps", str(steps), "--checkpoint-every", "3", "--out", str(out), *extra]

    assert cli.main(config(tmp_path / "a", 6)) == 0
    assert cli.main(config(tmp_path / "b", 3)) == 0
    assert cli.main(config(tmp_path / "b", 6, "--resume")) == 0
    for which in trainer.MODELS:
        a = trainer.load_model(tmp_path / "a", which).state_dict()
        b = trainer.load_model(tmp_path / "b", which).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "train_log.csv").read_text() == (tmp_path / "b" / "train_log.csv").read_text()
    with pytest.raises(ValueError, match="which must be one of"):
        trainer.load_model(tmp_path / "a", "other")
    with pytest.raises(FileNotFoundError):
        trainer.load_model(tmp_path / "none")


def test_evaluation_conditions():
    x = torch.randn(8, 16, 32)
    tests = trainer.conditions(x, seed=0)
    assert set(tests) == set(trainer.CONDITIONS)
    for name, (xc, mask, perm) in tests.items():
        missing = name.startswith("missing")
        assert (~mask).sum(1).tolist() == [4 * missing] * 8
        # every present input channel j holds electrode perm[j] of the original trial
        expected = x.gather(1, perm[:, :, None].expand_as(x)) * mask[:, :, None]
        assert torch.equal(xc, expected)
        assert torch.equal(perm, torch.arange(16).expand(8, 16)) == (not name.endswith("shuffled"))


def test_sinkhorn_normalization_trains(tmp_path):
    result = trainer.train(trainer.TrainConfig(steps=2, batch=8, d=8, filters=8, test_trials=16, threads=1,
                                               normalization="sinkhorn", progress=False, out_dir=str(tmp_path)),
                           log=lambda *_: None)
    assert result["charm"]["canonical"] == pytest.approx(result["charm"]["shuffled"], abs=1 / 16)
    assert result["config"]["normalization"] == "sinkhorn"
