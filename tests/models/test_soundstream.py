"""SoundStream networks: causal streaming convs, SEANet, discriminators, losses and the model."""
from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from pyaudiok.models.soundstream.discriminators import (STFTDiscriminator, SoundStreamDiscriminators,
                                                        WaveformDiscriminator)
from pyaudiok.models.soundstream.losses import (MultiScaleMelLoss, feature_matching_loss, hinge_discriminator_loss,
                                                hinge_generator_loss, mel_filterbank, si_snr)
from pyaudiok.models.soundstream.model import SoundStream, SoundStreamConfig
from pyaudiok.models.soundstream.seanet import SEANetDecoder, SEANetEncoder
from pyaudiok.models.soundstream.streaming import CausalConv1d, CausalConvTranspose1d, streaming
from pyaudiok.ops import residual_vq, rvq_decode

RTOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


class StandInRVQ(nn.Module):
    """Fixed random codebooks with the ResidualVQ interface, so these tests depend only on the op."""

    def __init__(self, dim: int, num_quantizers: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("codebooks", torch.randn(num_quantizers, codebook_size, dim))

    def forward(self, x, n_q=None):
        result = residual_vq(x, self.codebooks, n_q)
        return result.quantized, result.codes, result.commit_loss.sum()

    def encode(self, x, n_q):
        return residual_vq(x, self.codebooks, n_q).codes

    def decode(self, codes):
        return rvq_decode(codes, self.codebooks)


def tiny_config(**overrides) -> SoundStreamConfig:
    return SoundStreamConfig.preset_tiny(**{"channels": 4, "dim": 8, "num_quantizers": 4, "codebook_size": 16,
                                            **overrides})


def tiny_model(**overrides) -> SoundStream:
    config = tiny_config(**overrides)
    return SoundStream(config, StandInRVQ(config.dim, config.num_quantizers, config.codebook_size)).eval()


def random_chunks(total: int, rng: random.Random, sizes: list[int]) -> list[tuple[int, int]]:
    """(start, length) pairs covering [0, total) with lengths drawn from `sizes` (0 included)."""
    chunks, start = [], 0
    while start < total:
        n = min(rng.choice(sizes), total - start)
        chunks.append((start, n))
        start += n
    return chunks


def run_chunked(module, x: torch.Tensor, chunks, **kwargs) -> torch.Tensor:
    with streaming(module):
        return torch.cat([module(x[..., s:s + n], **kwargs) for s, n in chunks], dim=-1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape
    err = (actual - expected).norm() / expected.norm().clamp_min(1e-12)
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


# ------------------------------------------------------------------------------------------------
# Causal convolutions.

CONVS = {
    "plain": lambda: CausalConv1d(3, 5, 7),
    "pointwise": lambda: CausalConv1d(3, 5, 1),
    "dilated": lambda: CausalConv1d(3, 5, 7, dilation=9),
    "strided": lambda: CausalConv1d(3, 5, 10, stride=5),
    "strided_dilated": lambda: CausalConv1d(3, 4, 4, stride=2, dilation=3),
    "transposed": lambda: CausalConvTranspose1d(3, 5, 10, stride=5),
    "transposed_wide": lambda: CausalConvTranspose1d(3, 5, 11, stride=4),
}


@pytest.mark.parametrize("kind", CONVS)
def test_conv_streaming_matches_offline(kind):
    conv = CONVS[kind]()
    x = torch.randn(2, 3, 157)  # not a multiple of any stride
    offline = conv(x)
    rng = random.Random(kind)
    for sizes in ([1], [0, 1, 2, 3], [4, 7, 13], [1, 6, 11, 50], [157]):
        assert_close(run_chunked(conv, x, random_chunks(157, rng, sizes)), offline)


@pytest.mark.parametrize("T", [1, 4, 5, 9, 10, 23])
def test_conv_offline_lengths(T):
    x = torch.randn(1, 3, T)
    assert CausalConv1d(3, 2, 7, dilation=3)(x).shape[-1] == T
    assert CausalConv1d(3, 2, 10, stride=5)(x).shape[-1] == T // 5
    assert CausalConvTranspose1d(3, 2, 10, stride=5)(x).shape[-1] == 5 * T


@pytest.mark.parametrize("kind", CONVS)
def test_conv_is_causal(kind):
    conv = CONVS[kind]()
    transposed = isinstance(conv, CausalConvTranspose1d)
    x = torch.randn(1, 3, 60)
    y = x.clone()
    y[..., 37:] = torch.randn(1, 3, 23)  # change the future from sample/frame 37 on
    a, b = conv(x), conv(y)
    # Outputs that end before the change: samples < 37·s (transposed) or frames with (i+1)·s ≤ 37.
    past = 37 * conv.stride if transposed else 37 // conv.stride
    assert torch.equal(a[..., :past], b[..., :past])
    assert not torch.allclose(a[..., past:], b[..., past:])


def test_stream_state_lifecycle():
    conv = CausalConv1d(1, 1, 5)
    x = torch.randn(1, 1, 20)
    with conv.stream():
        assert conv.is_streaming
        first = conv(x)
        assert not torch.equal(conv(x), first)  # carried context changes the second pass
        conv.reset_stream()
        assert torch.equal(conv(x), first)
        with pytest.raises(RuntimeError, match="already streaming"):
            with conv.stream():
                pass
    assert not conv.is_streaming
    assert torch.equal(conv(x), first)  # back offline: no state left behind


def test_invalid_conv_geometry():
    with pytest.raises(ValueError, match="receptive field"):
        CausalConv1d(1, 1, 2, stride=4)
    with pytest.raises(ValueError, match="kernel_size"):
        CausalConvTranspose1d(1, 1, 2, stride=4)
    with pytest.raises(ValueError, match=r"\[B, 3, T\]"):
        CausalConv1d(3, 1, 3)(torch.randn(1, 2, 10))


# ------------------------------------------------------------------------------------------------
# SEANet encoder / decoder.

@pytest.mark.parametrize("preset, rate", [(SoundStreamConfig.preset_24khz, 75), (SoundStreamConfig.preset_16khz, 50)])
def test_presets_shapes_and_frame_rate(preset, rate):
    config = preset(channels=4)
    assert config.hop_length == 320 and config.frame_rate == rate
    encoder = SEANetEncoder(config.channels, config.dim, config.strides)
    decoder = SEANetDecoder(config.channels, config.dim, config.strides)
    wav = torch.randn(2, 1, config.sample_rate // 5)  # 0.2 s
    with torch.no_grad():
        z = encoder(wav)
        assert z.shape == (2, config.dim, rate // 5)
        assert decoder(z).shape == wav.shape
        assert encoder(wav[..., :-1]).shape[-1] == rate // 5 - 1  # T // hop: partial hop → no frame


def test_preset_values():
    assert (SoundStreamConfig.preset_24khz().channels, SoundStreamConfig.preset_24khz().dim) == (32, 128)
    assert SoundStreamConfig.preset_24khz().bitrate(8) == 6000
    assert SoundStreamConfig.preset_16khz().bitrate(12) == 6000
    tiny = SoundStreamConfig.preset_tiny()
    assert SoundStreamConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match="unknown"):
        SoundStreamConfig.from_dict({"sample_rate": 1, "bogus": 2})


def test_encoder_decoder_streaming_match_offline():
    encoder = SEANetEncoder(4, 8, strides=(2, 4, 5, 8))
    decoder = SEANetDecoder(4, 8, strides=(2, 4, 5, 8))
    wav = torch.randn(2, 1, 3 * 320 + 77)
    rng = random.Random(0)
    with torch.no_grad():
        z = encoder(wav)
        for sizes in ([1, 2, 3, 150], [97, 319, 641], [0, 7, 1000]):
            assert_close(run_chunked(encoder, wav, random_chunks(wav.shape[-1], rng, sizes)), z)
        out = decoder(z)
        for sizes in ([1], [0, 2]):
            assert_close(run_chunked(decoder, z, random_chunks(z.shape[-1], rng, sizes)), out)


@pytest.mark.parametrize("network", ["encoder", "decoder"])
def test_film_changes_output_with_condition(network):
    torch.manual_seed(0)
    kwargs = dict(channels=4, dim=8, strides=(2, 4), film_conditioning=True)
    net = SEANetEncoder(**kwargs) if network == "encoder" else SEANetDecoder(**kwargs)
    x = torch.randn(2, 1, 64) if network == "encoder" else torch.randn(2, 8, 8)
    off, on = net(x, condition=0), net(x, condition=1)
    assert not torch.allclose(off, on)
    assert torch.equal(net(x), off)  # no condition = condition 0
    mixed = net(x, condition=torch.tensor([0, 1]))
    assert torch.allclose(mixed[0], off[0]) and torch.allclose(mixed[1], on[1])
    with torch.no_grad():
        assert_close(run_chunked(net, x, [(0, 3), (3, 100)], condition=1), on.detach())


# ------------------------------------------------------------------------------------------------
# The model.

def test_model_streaming_codes_identical_and_decode_matches():
    model = tiny_model()
    wav = torch.randn(2, 1, 5 * 320 + 123)  # last hop partial: encode pads it
    rng = random.Random(1)
    with torch.no_grad():
        codes = model.encode(wav)
        assert codes.shape == (2, 4, 6) and codes.dtype == torch.long
        for sizes in ([1, 5, 319, 700], [13, 320, 641], [2000]):
            with model.encode_stream() as enc:
                parts = [enc(wav[..., s:s + n]) for s, n in random_chunks(wav.shape[-1], rng, sizes)]
                parts.append(enc.flush())
            assert torch.equal(torch.cat(parts, dim=-1), codes)
        audio = model.decode(codes)
        assert audio.shape == (2, 1, 6 * 320)
        with model.decode_stream() as dec:
            chunked = torch.cat([dec(codes[..., s:s + n]) for s, n in [(0, 1), (1, 0), (1, 3), (4, 2)]], dim=-1)
        assert_close(chunked, audio)


def test_streams_refuse_a_chunk_of_another_batch():
    """The state carried between chunks is per item: a chunk with another batch size is named, and the
    stream keeps working for its own batch."""
    model = tiny_model()
    wav = torch.randn(2, 1, 700)
    with torch.no_grad():
        with model.encode_stream() as enc:
            first = enc(wav[..., :400])
            with pytest.raises(ValueError, match=r"chunk must hold the stream's batch of B = 2 items"):
                enc(wav[:1, :, 400:])
            streamed = torch.cat([first, enc(wav[..., 400:]), enc.flush()], dim=-1)
        assert torch.equal(streamed, model.encode(wav))
        with model.decode_stream() as dec:
            dec(streamed[..., :1])
            with pytest.raises(ValueError, match=r"codes must hold the stream's batch of B = 2 items"):
                dec(streamed[:1, :, 1:])


def test_model_fewer_quantizers_and_flush_on_exact_hop():
    model = tiny_model()
    wav = torch.randn(1, 1, 640)
    with torch.no_grad():
        codes = model.encode(wav, n_q=2)
        assert codes.shape == (1, 2, 2)
        with model.encode_stream(n_q=2) as enc:
            streamed = enc(wav)
            assert enc.flush().shape == (1, 2, 0)  # nothing pending: flush adds no frame
        assert torch.equal(streamed, codes)


def test_model_forward_shapes_and_gradients():
    model = tiny_model().train()
    wav = torch.randn(2, 1, 3 * 320 + 5)
    reconstruction, codes, commit_loss = model(wav, n_q=3)
    assert reconstruction.shape == wav.shape
    assert codes.shape == (2, 3, 4)
    loss = MultiScaleMelLoss(model.sample_rate, scales=(6, 7, 8))(reconstruction, wav) + commit_loss
    loss.backward()
    for part in (model.encoder, model.decoder):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_model_rejects_bad_shapes():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\[B, 1, T\]"):
        model.encode(torch.randn(2, 100))
    with pytest.raises(ValueError, match="n_q, frames"):
        model.decode(torch.zeros(2, 3, dtype=torch.long))


def test_default_quantizer_is_residual_vq():
    quantization = pytest.importorskip("pyaudiok.nn.quantization")
    config = tiny_config()
    model = SoundStream(config).eval()
    assert isinstance(model.quantizer, quantization.ResidualVQ)
    wav = torch.randn(1, 1, 2 * 320 + 10)
    with torch.no_grad():
        codes = model.encode(wav)
        with model.encode_stream() as enc:
            streamed = torch.cat([enc(wav[..., :333]), enc(wav[..., 333:]), enc.flush()], dim=-1)
    assert torch.equal(streamed, codes)
    assert model.decode(codes).shape == (1, 1, 3 * 320)


# ------------------------------------------------------------------------------------------------
# Discriminators.

def small_discriminators() -> SoundStreamDiscriminators:
    return SoundStreamDiscriminators(WaveformDiscriminator(channels=4, max_channels=16),
                                     STFTDiscriminator(channels=4, channel_mults=(1, 1, 2, 2, 2, 2)))


def test_discriminator_shapes_and_features():
    wav = torch.randn(2, 1, 4096)
    out = small_discriminators()(wav)
    assert len(out.logits) == len(out.features) == 4
    # Waveform: scales 1, 1/2, 1/4, each downsampled 4^4 = 256.
    assert [tuple(l.shape) for l in out.logits[:3]] == [(2, 1, 16), (2, 1, 8), (2, 1, 4)]
    assert all(len(f) == 6 for f in out.features[:3])  # wide conv, 4 strided, conv k5
    assert out.features[0][0].shape == (2, 4, 4096) and out.features[1][0].shape == (2, 4, 2048)
    # STFT: 4096 / 256 + 1 = 17 frames, halved 3 times; frequency 512 → 8 → summed by the head.
    assert out.logits[3].shape == (2, 1, 2, 1)
    assert len(out.features[3]) == 7
    assert out.features[3][0].shape == (2, 4, 17, 512)
    assert out.features[3][-1].shape == (2, 8, 2, 8)


def test_stft_discriminator_spectrogram_channels():
    disc = STFTDiscriminator(n_fft=256, hop_length=64, channels=2, weight_norm=False)
    wav = torch.randn(1, 1, 1024)
    spec = disc.spectrogram(wav)
    assert spec.shape == (1, 2, 17, 128)
    reference = torch.stft(wav[0], 256, 64, window=torch.hann_window(256), return_complex=True, pad_mode="constant")
    assert torch.allclose(spec[0, 0], reference[0, :-1].real.T, atol=1e-5)
    assert torch.allclose(spec[0, 1], reference[0, :-1].imag.T, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        STFTDiscriminator(n_fft=100)


@pytest.mark.parametrize("make, min_length", [
    (lambda: WaveformDiscriminator(num_scales=1, channels=4, max_channels=8), 1),
    (lambda: WaveformDiscriminator(channels=4, max_channels=8), 4),           # two poolings, T -> T // 2 each
    (lambda: WaveformDiscriminator(num_scales=4, channels=4, max_channels=8), 8),
    (lambda: STFTDiscriminator(channels=2, channel_mults=(1,), weight_norm=False), 1),  # no time halving
    (lambda: STFTDiscriminator(n_fft=256, hop_length=64, channels=2, channel_mults=(1, 1)), 64),  # 2 frames
    (lambda: STFTDiscriminator(channels=2, channel_mults=(1, 1, 1, 1, 1, 1)), 7 * 256),  # 8 frames
    (small_discriminators, 7 * 256)],
    ids=["waveform-1-scale", "waveform-3-scales", "waveform-4-scales", "stft-no-halving", "stft-1-halving",
         "stft-3-halvings", "both"])
def test_discriminators_refuse_audio_shorter_than_their_minimum(make, min_length):
    """The shortest accepted length runs; one sample less is a ValueError naming wav and the minimum
    (it used to fail inside a conv or reshape)."""
    disc = make()
    assert disc.min_length == min_length
    out = disc(torch.randn(2, 1, min_length))
    assert all(torch.isfinite(logits).all() for logits in out.logits)
    with pytest.raises(ValueError, match=rf"wav must hold at least {min_length} samples .*got shape \[2, 1, "
                                         rf"{min_length - 1}\]"):
        disc(torch.randn(2, 1, min_length - 1))


# ------------------------------------------------------------------------------------------------
# Losses.

def test_hinge_losses_on_hand_made_logits():
    real = [torch.tensor([2.0, 0.5, -1.0]), torch.tensor([[0.0]])]
    fake = [torch.tensor([-2.0, 0.0, 1.0]), torch.tensor([[-0.5]])]
    # D1: relu(1−real) = (0, 0.5, 2) → 2.5/3; relu(1+fake) = (0, 1, 2) → 1. D2: 1 + 0.5.
    expected = ((2.5 / 3 + 1.0) + (1.0 + 0.5)) / 2
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(expected)
    # Generator: relu(1−fake) = (3, 1, 0) → 4/3; D2: 1.5.
    assert hinge_generator_loss(fake).item() == pytest.approx((4 / 3 + 1.5) / 2)
    assert hinge_generator_loss(torch.tensor([5.0])).item() == 0.0  # a single tensor works too


def test_feature_matching_loss():
    real = [[torch.randn(2, 3, 10), 100 * torch.randn(2, 5, 4)], [torch.randn(2, 1, 7, 3)]]
    fake = [[f + 0.1 * torch.randn_like(f) * f.abs().mean() for f in maps] for maps in real]
    assert feature_matching_loss(real, real).item() == 0.0
    loss = feature_matching_loss(real, fake)
    assert 0 < loss.item() < 1
    scaled = feature_matching_loss([[3 * f for f in m] for m in real], [[3 * f for f in m] for m in fake])
    assert scaled.item() == pytest.approx(loss.item(), rel=1e-5)  # normalised by the real magnitude
    fake_leaf = [[f.clone().requires_grad_() for f in maps] for maps in fake]
    feature_matching_loss(real, fake_leaf).backward()
    assert all(f.grad is not None for maps in fake_leaf for f in maps)


def test_mel_loss_zero_for_identical_positive_otherwise_and_differentiable():
    loss = MultiScaleMelLoss(16000)
    ref = torch.randn(2, 1, 4000)
    est = (ref + 0.1 * torch.randn_like(ref)).requires_grad_()
    same = ref.clone().requires_grad_()
    zero = loss(same, ref)
    assert zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(same.grad).all()  # no NaN from the L2 norm at 0
    value = loss(est, ref)
    assert value.item() > 0
    value.backward()
    assert torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0
    assert loss(2 * ref, ref).item() > loss(1.1 * ref, ref).item() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        loss(ref[..., :10], ref)


def test_mel_filterbank():
    fb = mel_filterbank(2048, 64, 24000)
    assert fb.shape == (64, 1025)
    assert fb.max().item() <= 1.0 and (fb.sum(dim=1) > 0).all()
    peaks = fb.argmax(dim=1)
    assert (peaks[1:] >= peaks[:-1]).all()  # filters ordered by frequency
    assert mel_filterbank(2048, 64, 24000) is fb  # cached
    assert mel_filterbank(2048, 64, 24000, dtype=torch.float64).dtype == torch.float64


def test_si_snr():
    ref = torch.randn(3, 1, 8000)
    noise = torch.randn(3, 1, 8000)
    noise = noise - (noise * ref).sum(-1, keepdim=True) / ref.pow(2).sum(-1, keepdim=True) * ref
    noise = noise * (ref.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)) / math.sqrt(10)
    assert torch.allclose(si_snr(ref + noise, ref), torch.full((3, 1), 10.0), atol=1e-2)
    assert torch.allclose(si_snr(5 * ref + noise * 5, ref), si_snr(ref + noise, ref), atol=1e-3)  # scale-free
    assert (si_snr(ref, ref) > 60).all()


def test_public_names():
    import pyaudiok.models
    import pyaudiok.nn
    from pyaudiok.nn.quantization import ResidualVQ
    assert pyaudiok.models.SoundStream is SoundStream and pyaudiok.nn.ResidualVQ is ResidualVQ


@pytest.mark.parametrize("field, value", [("channels", 0), ("dim", 0), ("sample_rate", 0), ("dilations", (0,)),
                                          ("num_conditions", 0), ("strides", (2, 0))])
def test_bad_config_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_conditions_are_checked():
    wav = torch.randn(2, 1, 64)
    with pytest.raises(ValueError, match="film_conditioning=True"):
        tiny_model()(wav, condition=1)  # a model without FiLM must not ignore it
    film = tiny_model(film_conditioning=True)
    for bad in (2, -1, torch.tensor([0, 1, 1]), 0.5):
        with pytest.raises(ValueError, match="condition"):
            film(wav, condition=bad)


def test_codes_of_zero_frames_check_n_q():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"n_q must be in \[1, 4\]"):
        model.encode(torch.randn(2, 1, 0), n_q=9)
    with pytest.raises(TypeError, match="wav must have dtype"):
        model(torch.zeros(2, 1, 64, dtype=torch.long))
