"""SoundStream benchmarks (DESIGN §2): the same model with our fused RVQ, with the reference RVQ
backend, and with `vector-quantize-pytorch`'s ResidualVQ swapped in (codebooks copied, so all
three quantize identically).

- soundstream.codec: encode + decode of the 24 kHz model at 6 kbps (8 quantizers) on ONE thread;
  the note gives the real-time factor (time / audio duration, < 1 is faster than real time).
- soundstream.train_step: one generator + discriminator step of the training loop.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

import pyaudiok
from pyaudiok.models.soundstream.model import SoundStream, SoundStreamConfig

from .harness import Candidate, Case, threads
from .peers import load


class SwappedResidualVQ(nn.Module):
    """vector-quantize-pytorch's ResidualVQ behind the interface SoundStream expects, holding the
    codebooks of one of our quantizers."""

    def __init__(self, ours, module, num_quantizers=None):
        super().__init__()
        Q, K, D = ours.codebooks.shape
        Q = num_quantizers or Q  # the first stages only: the peer has no per-call n_q
        # The same training settings as ours: EMA decay, dead codes, quantizer dropout (the peer
        # draws one n_q per batch where ours draws one per example).
        self.rvq = module.ResidualVQ(dim=D, num_quantizers=Q, codebook_size=K, rotation_trick=False,
                                     kmeans_init=False, decay=ours.decay,
                                     threshold_ema_dead_code=ours.dead_code_threshold,
                                     quantize_dropout=ours.quantizer_dropout and Q > 1)
        for q, layer in enumerate(self.rvq.layers):
            layer._codebook.embed.data.copy_(ours.codebooks[q][None])
            layer._codebook.initted.data.fill_(True)
        self.num_quantizers = Q
        self._ours = [ours]  # bitrate arithmetic; not a submodule

    def forward(self, x, n_q=None):
        quantized, codes, commit = self.rvq(x)
        return quantized, codes, commit.sum()

    def encode(self, x, n_q=None):
        if n_q not in (None, self.num_quantizers):
            raise ValueError(f"this swapped-in quantizer runs exactly {self.num_quantizers} stages")
        return self.rvq(x)[1]

    def decode(self, codes):
        return self.rvq.get_output_from_indices(codes)

    def num_quantizers_for_bitrate(self, bitrate, frame_rate):
        return self._ours[0].num_quantizers_for_bitrate(bitrate, frame_rate)


def _swapped(model: SoundStream, num_quantizers=None):
    module, reason = load("vector_quantize_pytorch", "vector-quantize-pytorch")
    if module is None:
        return None, reason
    config = model.config
    swapped = SoundStream(config, quantizer=SwappedResidualVQ(model.quantizer, module, num_quantizers))
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("quantizer.")}
    swapped.load_state_dict(own, strict=False)
    return swapped.to(next(model.parameters()).device).eval(), None


def codec_case(device: torch.device, quick: bool) -> Case:
    seconds = 2.0 if quick else 10.0
    torch.manual_seed(0)
    config = SoundStreamConfig.preset_24khz(quantizer_kwargs={"kmeans_init": False})
    model = SoundStream(config).to(device).eval()
    n_q = model.quantizer.num_quantizers_for_bitrate(6000, config.frame_rate)
    wav = torch.randn(1, 1, int(seconds * config.sample_rate), device=device) * 0.1

    def round_trip(m, backend=None):
        def run():
            with torch.no_grad(), threads(1), (pyaudiok.use_backend(backend) if backend else contextlib.nullcontext()):
                codes = m.encode(wav, n_q=n_q)
                return codes, m.decode(codes)
        return run

    def codes_check(out, ref):
        return "codes identical" if torch.equal(out[0].cpu(), ref[0].cpu()) else "codes differ"

    swapped, reason = _swapped(model, n_q)
    cands = [
        Candidate("SoundStream + reference RVQ", "reference", round_trip(model, "reference")),
        Candidate("SoundStream + pyaudiok RVQ", "backend", round_trip(model), check=codes_check),
        Candidate("SoundStream + vector-quantize-pytorch ResidualVQ", "peer",
                  round_trip(swapped) if swapped else None, skip=reason, check=codes_check),
    ]
    return Case("soundstream.codec", {"audio_seconds": seconds, "n_q": n_q, "threads": 1, "preset": "24khz"}, cands)


def train_step_case(device: torch.device, quick: bool, preset: str = "tiny") -> Case:
    """One step of `pyaudiok train soundstream --preset PRESET` (4 clips of 0.5 s), discriminators
    on: a discriminator step, then a generator step. `tiny` is the CPU default (8 stages of 256
    codes, D = 64: the quantizer is a small part of the step); `24khz` is the paper's codec (24
    stages of 1024 codes, D = 128)."""
    from pyaudiok.data.audio_synth import SyntheticAudio
    from pyaudiok.models.soundstream.losses import MultiScaleMelLoss
    from pyaudiok.train.soundstream import TrainConfig, _Trainer, build_models

    config = TrainConfig(preset=preset, discriminator_start=0, real_speech=False)
    wav = SyntheticAudio(sample_rate=config.model_config().sample_rate, segment_seconds=config.segment_seconds,
                         real_speech=False).batch(range(config.batch_size)).to(device)
    module, reason = load("vector_quantize_pytorch", "vector-quantize-pytorch")

    def trainer(swap: bool) -> _Trainer:
        generator, discriminators = build_models(config)
        generator.quantizer.initialized.fill_(True)  # both start from the same, initialised codebooks
        if swap:
            generator = SoundStream(generator.config, SwappedResidualVQ(generator.quantizer, module))
        generator.to(device).train()
        discriminators.to(device).train()
        return _Trainer(config, generator, discriminators,
                        torch.optim.Adam(generator.parameters(), config.lr_generator, betas=config.betas),
                        torch.optim.Adam(discriminators.parameters(), config.lr_discriminator, betas=config.betas),
                        MultiScaleMelLoss(generator.config.sample_rate))

    def step(t: _Trainer, backend=None):
        def run():
            with pyaudiok.use_backend(backend) if backend else contextlib.nullcontext():
                return t.step(wav, config.discriminator_start)
        return run

    cands = [Candidate("train step, reference RVQ", "reference", step(trainer(False), "reference")),
             Candidate("train step, pyaudiok RVQ", "backend", step(trainer(False))),
             Candidate("train step, vector-quantize-pytorch ResidualVQ", "peer",
                       step(trainer(True)) if module else None, skip=reason)]
    params = {"preset": config.preset, "batch": config.batch_size, "seconds": config.segment_seconds}
    return Case(f"soundstream.train_step.{preset}", params, cands)


def quantizer_train_case(device: torch.device, quick: bool) -> Case:
    """The quantizer alone in training mode (forward, backward, EMA codebook update, dead codes,
    quantizer dropout) at the 24 kHz preset's size: 24 stages of 1024 codes, D = 128, a batch of
    8 one-second clips (600 frames)."""
    from pyaudiok.nn.quantization import ResidualVQ

    clips, frames = (2, 75) if quick else (8, 75)
    torch.manual_seed(0)
    ours = ResidualVQ(128, 24, 1024, kmeans_init=False).to(device).train()
    module, reason = load("vector_quantize_pytorch", "vector-quantize-pytorch")
    peer = SwappedResidualVQ(ours, module).to(device).train() if module else None
    x = torch.randn(clips, frames, 128, device=device, requires_grad=True)

    def step(quantizer, backend=None):
        def run():
            with pyaudiok.use_backend(backend) if backend else contextlib.nullcontext():
                quantized, _, commit = quantizer(x)
                (quantized.square().mean() + commit).backward()
                x.grad = None
        return run

    cands = [Candidate("ResidualVQ, reference op", "reference", step(ours, "reference")),
             Candidate("ResidualVQ, pyaudiok op", "backend", step(ours)),
             Candidate("vector-quantize-pytorch ResidualVQ", "peer", step(peer) if peer else None, skip=reason)]
    return Case("soundstream.quantizer_train", {"frames": clips * frames, "Q": 24, "K": 1024, "D": 128}, cands)


def cases(device: torch.device, quick: bool) -> list[Case]:
    return [codec_case(device, quick), train_step_case(device, quick, "tiny"), train_step_case(device, quick, "24khz"),
            quantizer_train_case(device, quick)]
