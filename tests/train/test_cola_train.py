"""`pyaudiok train cola`: pre-training lowers the contrastive loss; the probe reports both runs."""
import json

import pytest
import torch

from pyaudiok import cli
from pyaudiok.models.cola import COLA, COLAConfig
from pyaudiok.train import cola

from .device_runs import check_device_option, run_on

pytestmark = pytest.mark.usefixtures("one_thread")


def test_labeled_set_is_deterministic_and_normalised():
    x, y = cola.labeled_set(12, 2, 0.25, seed=3)
    assert x.shape == (12, 2, 4000) and y.max() < len(cola.PROBE_CLASSES)
    torch.testing.assert_close(x.norm(dim=2), torch.ones(12, 2))
    assert torch.equal(x, cola.labeled_set(12, 2, 0.25, seed=3)[0])


def _tiny_run(out) -> list[str]:
    return ["train", "cola", "--steps", "25", "--batch", "8", "--pool", "16", "--crop-seconds", "0.25",
            "--clip-seconds", "0.4", "--widths", "4,8", "--embedding-dim", "32", "--lr", "3e-3",
            "--probe-train", "14", "--probe-test", "14", "--probe-steps", "20", "--out", str(out)]


def test_cli_pretrains_and_probes(tmp_path, capsys):
    assert cli.main(_tiny_run(tmp_path)) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["last_loss"] < result["first_loss"]  # it learns to tell the pairs apart
    for run in ("cola", "random_encoder"):
        assert 0 <= result[run]["probe_test_accuracy"] <= 1
    assert (tmp_path / "cola.pt").exists()
    assert "random encoder" in capsys.readouterr().out


def test_cli_accepts_a_device(tmp_path):
    check_device_option(cli.main, _tiny_run(tmp_path), tmp_path)


@pytest.mark.gpu
def test_cli_trains_on_cuda(tmp_path):
    result = run_on(cli.main, _tiny_run(tmp_path), tmp_path, "cuda")
    assert result["last_loss"] < result["first_loss"]
    for run in ("cola", "random_encoder"):
        assert 0 <= result[run]["probe_test_accuracy"] <= 1
    state = torch.load(tmp_path / "cola.pt", weights_only=False)  # saved on the CPU: no map_location needed
    assert all(t.device.type == "cpu" for t in state["model"].values())


@pytest.mark.parametrize("source", cola.PRETRAIN_DATA)
def test_pretraining_pool_is_unlabeled_clips_apart_from_the_probe(source):
    cfg = cola.TrainConfig(pool=6, clip_seconds=0.25, pretrain_data=source)
    pool = cola.pretraining_pool(cfg)
    assert pool.shape == (6, 4000) and torch.isfinite(pool).all() and pool.abs().amax(1).min() > 0
    probe_clips = cola.labeled_set(6, 1, 0.25, cfg.seed + 1)[0][:, 0]
    assert not any(torch.allclose(a, b) for a in pool for b in probe_clips)
    assert torch.equal(pool, cola.pretraining_pool(cfg))


def test_calibrate_batchnorm_sets_statistics_and_keeps_weights():
    """The random baseline's BatchNorm layers get statistics of the pre-training crops (a plain
    average over the batches); its weights, and the layers' momentum, stay as they were."""
    cfg = cola.TrainConfig(pool=8, batch=4, crop_seconds=0.25, clip_seconds=0.4, widths=(4, 8), embedding_dim=16)
    model = COLA(COLAConfig(widths=cfg.widths, embedding_dim=cfg.embedding_dim))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    weights = {k: v.clone() for k, v in model.named_parameters()}
    cola.calibrate_batchnorm(model, cfg, cola._normalised_pool(cfg), batches=3)
    assert all(torch.equal(weights[k], v) for k, v in model.named_parameters())
    for m in norms:
        assert m.num_batches_tracked.item() == 3 and m.momentum == 0.1
        assert not torch.equal(m.running_var, torch.ones_like(m.running_var))
