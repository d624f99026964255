"""Wavesplit: shapes, the speaker loss's per-step permutation, centroids, and a short run whose loss falls."""
import itertools

import pytest
import torch
from torch.nn import functional as F

from pyaudiok.data.speakers import SeparationMixtures, SpeakerBank
from pyaudiok.models import Wavesplit, WavesplitConfig
from pyaudiok.models.wavesplit import speaker_loss
from pyaudiok.ops import kmeans

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kw):
    return WavesplitConfig(**{"num_sources": 2, "num_speakers": 5, "channels": 16, "embed_dim": 8,
                              "speaker_layers": 2, "separation_layers": 2, **kw})


@pytest.mark.parametrize("num_sources", [2, 3])
def test_shapes_of_both_paths(num_sources):
    torch.manual_seed(0)
    model = Wavesplit(_tiny(num_sources=num_sources))
    x = torch.randn(3, 803)
    who = torch.stack([torch.randperm(5)[:num_sources] for _ in range(3)])
    out = model(x, who)
    T = out.vectors.shape[-1]
    assert out.estimates.shape == (3, num_sources, 803) and out.vectors.shape == (3, num_sources, 8, T)
    assert torch.allclose(out.vectors.norm(dim=2), torch.ones(3, num_sources, T), atol=1e-5)
    assert out.permutation.shape == (3, T, num_sources) and torch.isfinite(out.speaker_loss)
    # Every step's permutation is a permutation; centroids are the aligned means.
    assert (out.permutation.sort(-1).values == torch.arange(num_sources)).all()
    aligned = torch.stack([out.vectors[b, out.permutation[b, t], :, t] for b in range(3) for t in range(T)])
    assert torch.allclose(aligned.view(3, T, num_sources, 8).mean(1), out.centroids, atol=1e-5)
    inference = model(x, generator=torch.Generator().manual_seed(0))
    assert inference.estimates.shape == (3, num_sources, 803) and inference.speaker_loss is None
    assert inference.centroids.shape == (3, num_sources, 8)
    with pytest.raises(ValueError, match=r"speakers must have shape \[B, N\]"):
        model(x, who[:, :1])
    with pytest.raises(ValueError, match=r"x must have shape \[B, S\]"):
        model(x[None])


def test_speaker_loss_matches_a_per_step_brute_force():
    torch.manual_seed(1)
    B, N, d, T, S = 2, 3, 4, 5, 6
    h = F.normalize(torch.randn(B, N, d, T), dim=2)
    table = F.normalize(torch.randn(S, d), dim=-1)
    who = torch.tensor([[0, 2, 4], [5, 1, 3]])
    alpha, beta = torch.tensor(2.5), torch.tensor(0.3)
    loss, perm = speaker_loss(h, who, table, alpha, beta, local_weight=0.7, global_weight=1.3)
    total = 0.0
    for b in range(B):
        for t in range(T):
            best = None
            for p in itertools.permutations(range(N)):
                cost = 0.0
                for j in range(N):
                    dist = alpha * (h[b, p[j], :, t] - table).square().sum(-1) + beta  # [S]
                    cost += 1.3 * -torch.log_softmax(-dist, 0)[who[b, j]]
                    cost += 0.7 * -torch.log_softmax(-dist[who[b]], 0)[j]
                if best is None or cost < best[0]:
                    best = (cost, p)
            total += best[0]
            assert tuple(perm[b, t].tolist()) == best[1]
    assert loss.item() == pytest.approx(total.item() / (B * T * N), rel=1e-5)


def test_short_run_loss_falls():
    torch.manual_seed(0)
    bank = SpeakerBank(8_000, "train", num_speakers=5, utterances_per_speaker=2, utterance_seconds=(0.5, 0.6),
                       source="synthetic")
    mixtures = SeparationMixtures(bank, 2, segment_seconds=0.25, dynamic=False, num_mixtures=4)
    mix, src, who = mixtures.batch(range(4))
    model = Wavesplit(_tiny())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, parts = model.loss(mix, src, who)
        assert torch.isfinite(loss) and set(parts) == {"separation", "speaker"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses


def test_bad_speakers_sources_and_config_are_named():
    model = Wavesplit(_tiny())
    x = torch.randn(1, 64)
    for bad in (-1, 5):  # a negative id would silently read the table from its end
        with pytest.raises(ValueError, match=r"speakers must lie in \[0, num_speakers\) = \[0, 5\)"):
            model(x, torch.tensor([[0, bad]]))
    with pytest.raises(TypeError, match="speakers must have dtype"):
        model(x, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"sources must have shape \[B, N, S\] = \[1, 2, 64\]"):
        model.loss(x, torch.randn(1, 3, 64), torch.tensor([[0, 1]]))
    for field in ("hop", "kernel", "channels", "embed_dim"):
        with pytest.raises(ValueError, match=field):
            Wavesplit(_tiny(**{field: 0}))
    for change, match in ((dict(speaker_weight=float("nan")), "speaker_weight"), (dict(local_weight=-1.0), "local_weight"),
                          (dict(hop=20), "hop .* must not exceed kernel"), (dict(clip_db=0.0), "clip_db"),
                          (dict(speaker_layers=40), "speaker_layers"), (dict(num_speakers=1), "num_sources")):
        with pytest.raises(ValueError, match=match):
            _tiny(**change)


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("num_sources", [2, 3])
def test_inference_of_an_item_does_not_depend_on_its_batch_mates(num_sources):
    # k-means++ once drew each item's centres from one random stream in batch order: an item
    # alone and the same item in a batch started from other centres and ended in other clusters.
    torch.manual_seed(0)
    model = Wavesplit(_tiny(num_sources=num_sources)).eval()
    x = torch.randn(4, 1200)
    with torch.no_grad():
        batched = model(x, generator=_seeded())
        reversed_order = model(x.flip(0), generator=_seeded())
        for i in range(len(x)):
            alone = model(x[i:i + 1], generator=_seeded())
            # The speaker stack's convolutions round differently per batch size (~1e-7): nothing more.
            for got, j in ((batched, i), (reversed_order, len(x) - 1 - i)):
                torch.testing.assert_close(alone.centroids[0], got.centroids[j], atol=1e-5, rtol=0)
                torch.testing.assert_close(alone.estimates[0], got.estimates[j], atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_initial_centres_of_an_item_ignore_the_rest_of_the_batch(init):
    points = torch.randn(5, 40, 3, generator=torch.Generator().manual_seed(1))
    batched = kmeans(points, 3, n_iters=0, init=init, generator=_seeded()).centroids
    for i in range(len(points)):
        alone = kmeans(points[i:i + 1], 3, n_iters=0, init=init, generator=_seeded()).centroids
        assert torch.equal(alone[0], batched[i])
