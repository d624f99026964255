"""Benchmarks of LEAF's ops (DESIGN §4) at the issue's case, batch 32 × 4 s at 16 kHz:
- `gabor_pool` forward and forward+backward (to x and the three parameter vectors): the unfused
  reference, every backend, and the peers SpeechBrain `Leaf` and torchaudio `MelSpectrogram` (the
  mel frontend LEAF replaces: "x floor" is how far the filterbank is from it);
- `pcen` on the resulting [32, 40, 400] energies, forward and forward+backward: the reference
  (a Python loop over frames), every backend, and the peer SpeechBrain's `PCEN` (per-channel
  smoothing, learnable: the Python-loop EMA users have);
- the whole frontend, `pyaudiok.nn.Leaf` (filterbank, pooling, sPCEN; gradients to the waveform and
  every parameter) on the reference ops and on the automatic backends, against SpeechBrain's `Leaf`
  (the same three stages) and torchaudio's `MelSpectrogram`, forward and forward+backward.

SpeechBrain and torchaudio need a torch they were built for (DESIGN, "Peers on this machine"):
run `pyaudiok bench --only leaf` in such an environment to fill their rows."""
from __future__ import annotations

import math

import torch

from pyaudiok.ops.gabor_pool import GABOR_POOL, gabor_pool
from pyaudiok.ops.pcen import PCEN, pcen

from .harness import Candidate, Case, backend_candidates, compiled, relative_error, with_backend
from .peers import load

SAMPLE_RATE, SECONDS, F, WINDOW, STRIDE = 16_000, 4, 40, 401, 160


def _step(fn, backward, *inputs):
    def run():
        y = fn()
        if backward:
            y.backward(torch.ones_like(y))
            for t in inputs:
                t.grad = None
        return y
    return run


_check = relative_error()


def _speechbrain_leaf(device, batch):
    """SpeechBrain's Leaf (needs torchaudio, which does not load beside every torch)."""
    features, reason = load("speechbrain.lobes.features", "speechbrain")
    if features is None:
        return None, reason
    leaf = features.Leaf(out_channels=F, sample_rate=SAMPLE_RATE, in_channels=1).to(device)
    return leaf, None


def gabor_case(device, batch, backward) -> Case:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, SAMPLE_RATE * SECONDS, generator=gen).to(device).requires_grad_(backward)
    eta = torch.linspace(0.05, 2.9, F).to(device).requires_grad_(backward)
    sigma = torch.linspace(60.0, 3.0, F).to(device).requires_grad_(backward)
    pool = torch.full((F,), 0.4, device=device).requires_grad_(backward)
    args = (x, eta, sigma, pool, WINDOW, STRIDE)
    fn = lambda: gabor_pool(x, eta, sigma, pool, window=WINDOW, stride=STRIDE)  # noqa: E731
    inputs = (x, eta, sigma, pool)
    cands = [Candidate("reference", "reference", with_backend("reference", _step(fn, backward, *inputs)))]
    cands += backend_candidates(GABOR_POOL, device, x.dtype, args,
                                lambda b: with_backend(b, _step(fn, backward, *inputs)), _check)
    cands.append(compiled("reference, torch.compile", _step(fn, backward, *inputs), check=_check))
    leaf, reason = _speechbrain_leaf(device, batch)
    cands.append(Candidate("SpeechBrain Leaf", "peer", _step(lambda: leaf(x[..., None]), backward, x) if leaf else None,
                           skip=reason))
    cands.append(_mel_floor(device, x, backward))
    mode = "fwd+bwd" if backward else "fwd"
    return Case(f"gabor_pool.{mode}", {"B": batch, "T": x.shape[1], "F": F, "W": WINDOW, "stride": STRIDE}, cands)


def pcen_case(device, batch, backward) -> Case:
    frames = math.ceil(SAMPLE_RATE * SECONDS / STRIDE)
    gen = torch.Generator().manual_seed(1)
    E = (10 ** (torch.rand(batch, F, frames, generator=gen) * 6 - 5)).to(device).requires_grad_(backward)
    params = [torch.full((F,), v, device=device).requires_grad_(backward) for v in (0.96, 2.0, 2.0, 0.04)]
    fn = lambda: pcen(E, *params)  # noqa: E731
    inputs = (E, *params)
    cands = [Candidate("reference (Python loop over frames)", "reference",
                       with_backend("reference", _step(fn, backward, *inputs)))]
    cands += backend_candidates(PCEN, device, E.dtype, (E, *params, 1e-12),
                                lambda b: with_backend(b, _step(fn, backward, *inputs)), _check)
    cands.append(_speechbrain_pcen(device, E, backward))
    mode = "fwd+bwd" if backward else "fwd"
    return Case(f"pcen.{mode}", {"B": batch, "F": F, "frames": frames}, cands)


def _speechbrain_pcen(device, E, backward) -> Candidate:
    """SpeechBrain's PCEN with the same parameters (its layout is [B, F, T] with skip_transpose)."""
    norm, reason = load("speechbrain.nnet.normalization", "speechbrain")
    if norm is None:
        return Candidate("SpeechBrain PCEN", "peer", None, skip=reason)
    peer = norm.PCEN(F, alpha=0.96, smooth_coef=0.04, delta=2.0, root=2.0, floor=1e-12, trainable=True,
                     per_channel_smooth_coef=True, skip_transpose=True).to(device).requires_grad_(backward)
    return Candidate("SpeechBrain PCEN", "peer", _step(lambda: peer(E), backward, E, *peer.parameters()),
                     check=_check)


def _mel_floor(device, x, backward) -> Candidate:
    audio, reason = load("torchaudio.transforms", "torchaudio")
    if audio is None:
        return Candidate("torchaudio MelSpectrogram", "floor", None, skip=reason)
    mel = audio.MelSpectrogram(SAMPLE_RATE, n_fft=512, win_length=WINDOW - 1, hop_length=STRIDE, n_mels=F).to(device)
    return Candidate("torchaudio MelSpectrogram", "floor", _step(lambda: mel(x), backward, x))


def frontend_case(device, batch, backward) -> Case:
    from pyaudiok.nn import Leaf
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, SAMPLE_RATE * SECONDS, generator=gen).to(device).requires_grad_(backward)
    ours = Leaf(n_filters=F, sample_rate=SAMPLE_RATE).to(device).requires_grad_(backward)
    inputs = (x, *ours.parameters())
    step = _step(lambda: ours(x), backward, *inputs)
    cands = [Candidate("pyaudiok Leaf, reference ops", "reference", with_backend("reference", step)),
             Candidate("pyaudiok Leaf", "backend", step, check=_check)]
    leaf, reason = _speechbrain_leaf(device, batch)
    if leaf is not None:
        leaf.requires_grad_(backward)
    cands.append(Candidate("SpeechBrain Leaf", "peer",
                           _step(lambda: leaf(x[..., None]), backward, x, *leaf.parameters()) if leaf else None,
                           skip=reason))
    cands.append(_mel_floor(device, x, backward))
    mode = "fwd+bwd" if backward else "fwd"
    return Case(f"leaf.{mode}", {"B": batch, "T": x.shape[1], "F": F, "W": WINDOW, "stride": STRIDE}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    batch = 4 if quick else 32
    return [make(device, batch, backward) for make in (gabor_case, pcen_case, frontend_case)
            for backward in (False, True)]
