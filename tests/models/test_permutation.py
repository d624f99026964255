"""Permutation pretext model: shapes, the patch grid, the loss is a ranking loss that learns."""
import pytest
import torch

from pyaudiok.models import PermutationPretext

pytestmark = pytest.mark.usefixtures("one_thread")


def test_patches_cover_the_spectrogram_in_order():
    model = PermutationPretext(n_mels=8, frames=12, time_patches=3, freq_patches=2, dim=16)
    x = torch.arange(8 * 12.0).reshape(1, 8, 12)
    patches = model.patches(x)
    assert patches.shape == (1, 6, 4, 4)
    assert torch.equal(patches[0, 1], x[0, :4, 4:8]) and torch.equal(patches[0, 3], x[0, 4:, :4])


@pytest.mark.parametrize("ranker,eps", [("pav", 0.5), ("sinkhorn", 0.05)])  # ε in score / squashed units
def test_a_few_steps_reduce_the_ranking_loss(ranker, eps):
    torch.manual_seed(0)
    model = PermutationPretext(n_mels=16, frames=32, time_patches=4, dim=16, ranker=ranker, eps=eps)
    # Patches that reveal their position: a ramp over time plus noise.
    x = torch.linspace(0, 3, 32).expand(4, 16, 32) + 0.1 * torch.randn(4, 16, 32)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(15):
        out = model(x, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.scores.shape == (4, 4) and out.perm.shape == (4, 4)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert model.embed(x).shape == (4, 4 * 16)  # the 4 patches' embeddings, concatenated
    assert model.embed(x, "mean").shape == (4, 16)


def test_concatenated_embedding_keeps_the_patch_order():
    """"concat" is the patch embeddings in their original order; "mean" is their average."""
    torch.manual_seed(0)
    model = PermutationPretext(n_mels=8, frames=8, time_patches=2, freq_patches=2, dim=8).eval()
    x = torch.randn(3, 8, 8)
    with torch.no_grad():
        each = torch.stack([model.encoder(p[:, None]) for p in model.patches(x).unbind(1)], 1)
        torch.testing.assert_close(model.embed(x), each.flatten(1))
        torch.testing.assert_close(model.embed(x, "mean"), each.mean(1))
        swapped = model.patches(x).flip(1)  # the same patches in another order: another concatenation
        assert not torch.allclose(model.embed(x), model._encode(swapped).flatten(1))


def test_bad_configuration():
    with pytest.raises(ValueError, match="ranker"):
        PermutationPretext(ranker="hungarian")
    with pytest.raises(ValueError, match="divide"):
        PermutationPretext(n_mels=10, freq_patches=3)
    with pytest.raises(ValueError, match="logmel"):
        PermutationPretext(n_mels=8, frames=8, time_patches=2, dim=8).patches(torch.zeros(1, 8, 9))
    with pytest.raises(ValueError, match="pooling"):
        PermutationPretext(n_mels=8, frames=8, time_patches=2, dim=8).embed(torch.zeros(1, 8, 8), "max")


def test_bad_sizes_and_eps_are_named():
    for kwargs, match in ((dict(time_patches=0), "time_patches"), (dict(dim=0), "dim"), (dict(eps=0.0), "eps")):
        with pytest.raises(ValueError, match=match):
            PermutationPretext(8, 16, **kwargs)
    with pytest.raises(TypeError, match="logmel must have dtype"):
        PermutationPretext(8, 16, dim=8)(torch.ones(2, 8, 16, dtype=torch.long))
