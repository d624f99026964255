"""COLA model: log-mel frontend shape (DESIGN §6), embedding shapes, loss and its gradients."""
import pytest
import torch

from pyaudiok.models import COLA, COLAConfig
from pyaudiok.ops.bilinear_contrastive import bilinear_contrastive_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def test_logmel_frontend_matches_design_shape():
    model = COLA(COLAConfig(widths=(4, 8)))
    mel = model.frontend(torch.randn(3, 16000))
    assert mel.shape == (3, 1, 98, 64)
    assert mel.min() >= torch.log(torch.tensor(1e-5)) - 1e-6  # log(clip(·, 1e-5))
    silent = model.frontend(torch.zeros(1, 1, 16000))
    assert torch.all(silent == torch.log(torch.tensor(1e-5)))


def test_embeddings_and_loss_backpropagate_to_every_parameter():
    cfg = COLAConfig(widths=(4, 8), embedding_dim=16)
    model = COLA(cfg)
    a, p = torch.randn(5, 4000), torch.randn(5, 4000)
    assert model.embed(a).shape == (5, 8)
    g = model.project(a)
    assert g.shape == (5, 16) and g.abs().max() <= 1  # tanh head
    loss = model(a, p)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert model.similarity.grad.abs().sum() > 0


def test_loss_is_the_bilinear_cross_entropy_of_the_projections():
    model = COLA(COLAConfig(widths=(4,), embedding_dim=8, symmetric=True)).eval()
    a, p = torch.randn(6, 3000), torch.randn(6, 3000)
    g = model.project(torch.cat([a, p]))
    expected = bilinear_contrastive_reference(g[:6], g[6:], model.similarity, True)
    torch.testing.assert_close(model(a, p), expected, rtol=1e-5, atol=1e-6)


def test_efficientnet_b0_encoder_and_leaf_frontend():
    from pyaudiok.models.cola.efficientnet import B0_STAGES, EfficientNetB0, MBConv
    net = EfficientNetB0()
    assert sum(isinstance(m, MBConv) for m in net.modules()) == sum(s[2] for s in B0_STAGES) == 16
    assert net(torch.randn(2, 1, 98, 64)).shape == (2, 1280, 4, 2)  # /32, ceil
    cfg = COLAConfig(frontend="leaf", encoder="efficientnet", embedding_dim=16)
    model = COLA(cfg)
    assert model.frontend(torch.randn(2, 16000)).shape == (2, 1, 100, 64)  # ⌈16000 / 160⌉ frames, 64 filters
    a, p = torch.randn(3, 8000), torch.randn(3, 8000)
    assert model.embed(a).shape == (3, 1280)
    model(a, p).backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in model.parameters())


def test_unknown_frontend_or_encoder_is_rejected():
    with pytest.raises(ValueError, match="frontend must be one of"):
        COLAConfig(frontend="mfcc")
    with pytest.raises(ValueError, match="encoder must be one of"):
        COLAConfig(encoder="resnet")


def test_bad_inputs_and_config_are_named():
    model = COLA(COLAConfig(widths=(4, 8), embedding_dim=16))
    with pytest.raises(ValueError, match=r"\[B, T\] or \[B, 1, T\]"):
        model.embed(torch.randn(2, 2, 4000))  # two channels: not silently the first one
    with pytest.raises(ValueError, match="at least win_length"):
        model.embed(torch.randn(2, 100))
    with pytest.raises(ValueError, match="positives must have the shape of anchors"):
        model(torch.randn(2, 4000), torch.randn(2, 3000))
    for field in ("hop_length", "n_mels", "embedding_dim"):
        with pytest.raises(ValueError, match=field):
            COLAConfig(**{field: 0})
    with pytest.raises(ValueError, match="f_max"):
        COLAConfig(f_max=9000.0)
