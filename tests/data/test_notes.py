"""NSynth-like notes (pyaudiok.data.notes): labels, determinism, the pitch and family really shape
the sound, nuisances vary, bad arguments."""
import pytest
import torch

from pyaudiok.data.notes import BASE_MIDI, FAMILIES, MAX_PITCHES, synth_notes

pytestmark = pytest.mark.usefixtures("one_thread")

SR, SAMPLES = 16000, 8000


def _notes(n, n_pitches=12, seed=0):
    return synth_notes(n, n_pitches, torch.Generator().manual_seed(seed), samples=SAMPLES, sample_rate=SR)


def _comb_energy(power: torch.Tensor, f0: torch.Tensor, harmonics, width=0.02) -> torch.Tensor:
    """Energy of each row's power spectrum within ±width (relative) of h·f0[row], summed over h."""
    freqs = torch.fft.rfftfreq(SAMPLES, 1 / SR)
    total = torch.zeros(power.shape[0])
    for h in harmonics:
        band = ((freqs[None] - h * f0[:, None]).abs() <= width * h * f0[:, None]).float()
        total += (power * band).sum(-1)
    return total


def _f0(pitch):
    return 440.0 * 2 ** ((BASE_MIDI + pitch.double() - 69) / 12)


def test_shapes_labels_range_and_determinism():
    audio, pitch, family = _notes(70)
    assert audio.shape == (70, SAMPLES) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1.0
    assert 0 <= pitch.min() and pitch.max() < 12 and 0 <= family.min() and family.max() < len(FAMILIES)
    again = _notes(70)
    assert all(torch.equal(a, b) for a, b in zip((audio, pitch, family), again))
    assert not torch.equal(audio, _notes(70, seed=1)[0])


def test_the_pitch_label_is_the_strongest_harmonic_comb():
    """Among the 12 candidate pitches, the comb of the labelled one holds the most energy."""
    audio, pitch, family = _notes(96)
    power = torch.fft.rfft(audio.double()).abs().square()
    candidates = torch.stack([_comb_energy(power, _f0(torch.full_like(pitch, p)), range(1, 9)) for p in range(12)], 1)
    assert (candidates.argmax(1) == pitch).float().mean() >= 0.9


def test_families_differ_in_the_ways_they_are_defined():
    audio, pitch, family = _notes(400)
    power = torch.fft.rfft(audio.double()).abs().square()
    f0 = _f0(pitch)
    even, odd = _comb_energy(power, f0, (2, 4, 6)), _comb_energy(power, f0, (3, 5, 7))
    upper, first = _comb_energy(power, f0, range(2, 9)), _comb_energy(power, f0, (1,))
    names = list(FAMILIES)

    def median(values, name):
        return values[family == names.index(name)].median()

    assert median(even / odd, "reed") < 0.3 * median(even / odd, "string")  # reeds: weak even harmonics
    assert median(upper / first, "flute") < 0.3 * median(upper / first, "brass")  # flutes: dark, brass: bright
    decay = audio[:, -2000:].square().mean(-1) / audio[:, 1500:3500].square().mean(-1)
    assert median(decay, "guitar") < 0.5 * median(decay, "organ")  # plucked notes die away, organs sustain


def test_level_varies_over_more_than_20_db():
    audio, _, _ = _notes(64)
    peak_db = 20 * audio.abs().amax(-1).log10()
    assert peak_db.max() - peak_db.min() > 20 and peak_db.max() <= 0


def test_empty_and_bad_arguments():
    audio, pitch, family = _notes(0)
    assert audio.shape == (0, SAMPLES) and pitch.numel() == family.numel() == 0
    with pytest.raises(ValueError, match="n_pitches"):
        _notes(4, n_pitches=MAX_PITCHES + 1)
    with pytest.raises(ValueError, match="samples"):
        synth_notes(4, 12, torch.Generator(), samples=0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        synth_notes(-1, 12, torch.Generator(), samples=10)
    with pytest.raises(ValueError, match="n_pitches must be an integer"):
        synth_notes(2, 4.5, torch.Generator(), samples=10)
    # At 1 kHz the top notes' partials all lie above the band limit: clips of noise only.
    with pytest.raises(ValueError, match="sample_rate = 1000 is too low for n_pitches = 48"):
        synth_notes(2, 48, torch.Generator(), samples=10, sample_rate=1000)
