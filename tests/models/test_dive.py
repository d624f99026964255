"""DIVE: the collar mask, training-time selection order, inference selection, a short run whose loss falls."""
import pytest
import torch

from pyaudiok.data.speakers import Conversations, SpeakerBank
from pyaudiok.metrics import diarization_error_rate
from pyaudiok.models import DIVE, DIVEConfig
from pyaudiok.models.dive import collar_mask, frames_to_segments
from pyaudiok.train.dive import batch

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kw):
    return DIVEConfig(**{"channels": 16, "embed_dim": 8, "layers": 2, "collar": 0.01, **kw})


def _collar_by_hand(reference, c):
    """Frame t is dropped when its centre t + 0.5 lies strictly within c of an activity change."""
    B, S, T = reference.shape
    keep = torch.ones(B, T, dtype=torch.bool)
    for b in range(B):
        padded = torch.nn.functional.pad(reference[b].float(), (1, 1))
        edges = [e for e in range(T + 1) if (padded[:, e + 1] != padded[:, e]).any()]
        for t in range(T):
            keep[b, t] = all(abs(t + 0.5 - e) >= c for e in edges)
    return keep


@pytest.mark.parametrize("collar", [0.0, 0.5, 1.0, 1.5, 2.0, 3.7])
def test_collar_mask_matches_a_hand_computation(collar):
    torch.manual_seed(0)
    ref = torch.rand(3, 2, 23) > 0.6
    ref[0] = False  # no speech: nothing masked
    assert torch.equal(collar_mask(ref, collar), _collar_by_hand(ref, collar))
    r = torch.zeros(1, 2, 12, dtype=torch.bool)
    r[0, 0, 2:6], r[0, 1, 5:12] = True, True  # edges at 2, 5, 6 and 12
    assert collar_mask(r, 1).int().tolist() == [[1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0]]
    with pytest.raises(ValueError, match="collar_frames"):
        collar_mask(r, -1)


def test_training_selection_takes_solo_frames_and_fixes_the_order():
    torch.manual_seed(0)
    model = DIVE(_tiny())
    x = torch.randn(2, 1600)                          # T = 20 frames
    ref = torch.zeros(2, 3, 20, dtype=torch.bool)
    ref[:, 0, 0:8], ref[:, 1, 6:14], ref[0, 2, 12:20] = True, True, True
    out = model(x, ref)
    assert out.probs.shape == (2, 3, 20) and ((out.probs >= 0) & (out.probs <= 1)).all()
    assert out.selected.tolist() == [[True, True, True], [True, True, False]]
    for b in range(2):
        chosen = set()
        for i, t in enumerate(out.frames[b].tolist()):
            if t < 0:
                continue
            active = {s for s in range(3) if ref[b, s, t] and s not in chosen}
            assert len(active) == 1  # exactly one not-yet-selected speaker at the selected frame
            chosen |= active
            assert torch.allclose(out.embeddings[b, i], model.embeddings(x)[b, t], atol=1e-6)
    inference = model(x)
    assert inference.probs.shape == (2, 3, 20) and inference.selected[:, 0].all()
    with pytest.raises(ValueError, match=r"reference must have shape \[B, S_ref, T\]"):
        model(x, ref[..., :5])


def test_frames_to_segments_round_trip():
    active = torch.tensor([[0, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    segs = frames_to_segments(active, 10.0)
    assert [(s.start, s.end, s.speaker) for s in segs] == [(0.0, 0.2, "spk1"), (0.1, 0.3, "spk0"), (0.5, 0.6, "spk0")]


def test_short_run_loss_falls_and_der_is_computed():
    torch.manual_seed(0)
    bank = SpeakerBank(8_000, "train", num_speakers=4, utterances_per_speaker=2, utterance_seconds=(0.5, 0.8),
                       source="synthetic")
    conv = Conversations(bank, 2, duration=2.0, seed=0)
    x, ref, segs = batch(conv, range(3), 3, 100)
    assert x.shape == (3, 16_000) and ref.shape == (3, 3, 200)
    model = DIVE(_tiny(collar=0.05))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, parts = model.loss(x, ref)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses
    hyp = model.diarize(x)
    assert len(hyp) == 3
    assert 0 <= diarization_error_rate(segs[0], hyp[0]).der < float("inf")


def test_bad_config_and_short_input_are_named():
    for kwargs, match in ((dict(frame_rate=0), "frame_rate"), (dict(frame_rate=16_000), "frame_rate"),
                          (dict(collar=-1.0), "collar"), (dict(max_speakers=0), "max_speakers")):
        with pytest.raises(ValueError, match=match):
            _tiny(**kwargs)
    with pytest.raises(ValueError, match="at least one frame"):
        DIVE(_tiny())(torch.randn(2, 50))


@pytest.mark.parametrize("sample_rate", [8000, 8100, 7700])  # hops 80, 81 (odd), 77 (odd)
def test_frames_are_samples_over_hop_for_odd_hops_too(sample_rate):
    model = DIVE(_tiny(sample_rate=sample_rate))
    hop = model.config.hop
    for S in (hop, 7 * hop, 7 * hop + hop - 1):
        assert model.embeddings(torch.randn(2, S)).shape[1] == S // hop
    x, ref = torch.randn(2, 6 * hop), torch.zeros(2, 2, 6)
    ref[:, 0, :3], ref[:, 1, 3:] = 1, 1
    assert torch.isfinite(model.loss(x, ref)[0])


def test_frame_rate_must_divide_sample_rate():
    # hop 106 at 150 frames/s: frames would last 1/150.94 s while segments count 1/150 s
    with pytest.raises(ValueError, match=r"frame_rate \(150\) must divide sample_rate \(16000\).*160"):
        _tiny(sample_rate=16_000, frame_rate=150)
    model = DIVE(_tiny(sample_rate=16_000, frame_rate=160)).eval()
    T = model.embeddings(torch.randn(1, 16_000 * 2)).shape[1]
    assert frames_to_segments(torch.ones(1, T, dtype=torch.bool), model.config.frame_rate)[-1].end == 2.0
