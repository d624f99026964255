"""Diarization error rate: hand-computed cases (collar, overlap, missed and extra speakers, UEM),
agreement with pyannote.metrics on random inputs, the frame-level version, RTTM, bad inputs."""
from __future__ import annotations

import random
import warnings

import pytest
import torch

from pyaudiok.metrics import (diarization_error_rate, frame_diarization_error_rate, read_rttm, segments_to_frames,
                              write_rttm)


def parts(result):
    return (result.missed, result.false_alarm, result.confusion, result.total)


# ----------------------------------------------------------------------------------------------
# Hand-computed cases.

def test_perfect_up_to_renaming():
    ref = [(0, 2, "A"), (2, 5, "B"), (6, 7, "A")]
    hyp = [(0, 2, "x"), (2, 5, "y"), (6, 7, "x")]
    result = diarization_error_rate(ref, hyp)
    assert parts(result) == (0, 0, 0, 6) and result.der == 0
    assert result.mapping == {"x": "A", "y": "B"}


def test_missed_false_alarm_and_confusion():
    ref = [(0, 4, "A"), (4, 10, "B")]
    # x covers A exactly and 2 s of B; y covers the rest of B but starts 1 s late; z is an extra
    # speaker talking over [11, 12) where no one is (false alarm).
    hyp = [(0, 6, "x"), (7, 10, "y"), (11, 12, "z")]
    result = diarization_error_rate(ref, hyp)
    # Mapping x->A (4 s together) and y->B (3 s): [4, 6) is confusion (x talks, B is reference),
    # [6, 7) missed, [11, 12) false alarm.
    assert parts(result) == pytest.approx((1, 1, 2, 10))
    assert result.der == pytest.approx(0.4)
    assert result.mapping == {"x": "A", "y": "B"}


def test_overlap_counts_each_speaker_and_skip_overlap_drops_it():
    ref = [(0, 6, "A"), (4, 10, "B")]          # [4, 6): both speak
    hyp = [(0, 10, "x")]                        # one speaker throughout
    result = diarization_error_rate(ref, hyp)
    # x->A (6 s) ; on [6, 10) B is confused with x (4 s) ; on [4, 6) B is missed (2 s).
    assert parts(result) == pytest.approx((2, 0, 4, 12))
    skipped = diarization_error_rate(ref, hyp, skip_overlap=True)
    assert parts(skipped) == pytest.approx((0, 0, 4, 8))


def test_collar_is_the_total_width_around_reference_boundaries():
    ref = [(0, 4, "A"), (4, 10, "B")]
    hyp = [(0, 4.2, "x"), (4.2, 10, "y")]       # boundary 0.2 s late
    assert parts(diarization_error_rate(ref, hyp)) == pytest.approx((0, 0, 0.2, 10))
    # collar 0.5: [3.75, 4.25] is ignored (and [-0.25, 0.25], [9.75, 10.25]): the error is gone.
    result = diarization_error_rate(ref, hyp, collar=0.5)
    assert parts(result) == pytest.approx((0, 0, 0, 10 - 0.25 - 0.5 - 0.25))
    # collar 0.3 only covers ±0.15: 0.05 s of confusion remains.
    assert diarization_error_rate(ref, hyp, collar=0.3).confusion == pytest.approx(0.05)


def test_uem_restricts_the_evaluation_and_absent_hypothesis_is_all_missed():
    ref = [(0, 4, "A"), (6, 10, "B")]
    result = diarization_error_rate(ref, [(0, 4, "x")], uem=[(2, 8)])
    assert parts(result) == pytest.approx((2, 0, 0, 4))
    assert diarization_error_rate(ref, []).der == 1.0
    assert diarization_error_rate([], []).der == 0.0
    assert diarization_error_rate([], [(0, 1, "x")]).der == 1.0  # as pyannote.metrics gives
    silent, speaking = torch.zeros(2, 1, 6, dtype=torch.bool), torch.zeros(2, 1, 6, dtype=torch.bool)
    speaking[0, 0, 2:4] = True
    assert frame_diarization_error_rate(silent, speaking)["der"].tolist() == [1.0, 0.0]


def test_more_reference_than_hypothesis_speakers():
    ref = [(0, 2, "A"), (2, 4, "B"), (4, 6, "C")]
    hyp = [(0, 4, "x"), (4, 6, "y")]
    result = diarization_error_rate(ref, hyp)
    assert parts(result) == pytest.approx((0, 0, 2, 6))  # one of A or B is confused with x


# ----------------------------------------------------------------------------------------------
# Agreement with pyannote.metrics.

def random_turns(rng: random.Random, speakers: list[str], length: float, count: int):
    """Segments of each speaker that never overlap themselves (other speakers may overlap)."""
    out = []
    for spk in speakers:
        times = sorted(round(rng.uniform(0, length), 2) for _ in range(2 * count))
        out += [(times[i], times[i + 1], spk) for i in range(0, len(times), 2) if times[i + 1] > times[i]]
    return out


def pyannote_der(ref, hyp, collar: float, skip_overlap: bool = False, uem=None) -> tuple:
    """(missed, false alarm, confusion, total, rate) from pyannote.metrics (skipped when absent)."""
    metrics = pytest.importorskip("pyannote.metrics.diarization")
    core = pytest.importorskip("pyannote.core")

    def annotation(segments):
        a = core.Annotation()
        for i, (s, e, spk) in enumerate(segments):
            a[core.Segment(s, e), i] = spk
        return a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = metrics.DiarizationErrorRate(collar=collar, skip_overlap=skip_overlap)(
            annotation(ref), annotation(hyp), detailed=True,
            uem=core.Timeline([core.Segment(*u) for u in uem]) if uem else None)
    return (expected["missed detection"], expected["false alarm"], expected["confusion"], expected["total"],
            expected["diarization error rate"])


def assert_agrees_with_pyannote(ref, hyp, collar: float, skip_overlap: bool = False, uem=None) -> None:
    *expected, rate = pyannote_der(ref, hyp, collar, skip_overlap, uem)
    ours = diarization_error_rate(ref, hyp, collar=collar, skip_overlap=skip_overlap, uem=uem)
    assert parts(ours) == pytest.approx(tuple(expected), abs=1e-6)
    assert ours.der == pytest.approx(rate, abs=1e-9)


@pytest.mark.parametrize("collar,skip_overlap,use_uem", [(0.0, False, False), (0.5, False, False),
                                                          (0.25, True, False), (0.0, True, True), (1.0, False, True)])
def test_agrees_with_pyannote(collar, skip_overlap, use_uem):
    rng = random.Random(hash((collar, skip_overlap, use_uem)) % 1000)
    for _ in range(5):
        ref = random_turns(rng, ["A", "B", "C"], 60, 6)
        hyp = random_turns(rng, ["1", "2", "3", "4"][:rng.randint(1, 4)], 60, 7)
        uem = [(5.0, 30.0), (35.5, 58.0)] if use_uem else None
        assert_agrees_with_pyannote(ref, hyp, collar, skip_overlap, uem)


def test_negative_times_hand_cases():
    """Times before 0 (a recording's offset) count like any others: an interval set ending below 0 is kept."""
    assert parts(diarization_error_rate([(-2, -1, "A")], [(-2, -1.5, "x")], collar=0.1)) == \
        pytest.approx((0.45, 0, 0, 0.9))
    assert parts(diarization_error_rate([(-2, 1, "A")], [(-2, 1, "x")], uem=[(-3, -1)])) == pytest.approx((0, 0, 0, 1))


@pytest.mark.parametrize("shift", [-100.0, -30.0])
@pytest.mark.parametrize("collar,skip_overlap,use_uem", [(0.0, False, False), (0.5, True, False), (0.25, False, True)])
def test_negative_times_agree_with_pyannote(shift, collar, skip_overlap, use_uem):
    rng = random.Random(int(shift) + int(100 * collar))
    for _ in range(3):
        ref = [(s + shift, e + shift, k) for s, e, k in random_turns(rng, ["A", "B"], 60, 5)]
        hyp = [(s + shift, e + shift, k) for s, e, k in random_turns(rng, ["1", "2", "3"], 60, 6)]
        uem = [(shift + 5.0, shift + 40.0)] if use_uem else None
        assert_agrees_with_pyannote(ref, hyp, collar, skip_overlap, uem)


@pytest.mark.parametrize("flag", ["no", 0, None, 1.0])
def test_skip_overlap_must_be_a_bool(flag):
    with pytest.raises(TypeError, match="skip_overlap must be a bool"):
        diarization_error_rate([(0, 2, "a"), (1, 2, "b")], [], skip_overlap=flag)


# ----------------------------------------------------------------------------------------------
# Frame level.

def test_frame_level_matches_segments_within_a_frame():
    rng = random.Random(3)
    frame_rate, length = 100, 30.0
    T = int(length * frame_rate)
    refs, hyps, expected = [], [], []
    for _ in range(3):
        ref = random_turns(rng, ["A", "B"], length, 5)
        hyp = random_turns(rng, ["x", "y", "z"], length, 5)
        refs.append(segments_to_frames(ref, ["A", "B"], frame_rate, T))
        hyps.append(segments_to_frames(hyp, ["x", "y", "z"], frame_rate, T))
        expected.append(diarization_error_rate(ref, hyp, collar=0.5, uem=[(0, length)]))
    result = frame_diarization_error_rate(torch.stack(refs), torch.stack(hyps), collar_frames=0.5 * frame_rate)
    n_boundaries = 2 * 5 * 2  # at most this many reference boundaries per item
    for i, e in enumerate(expected):
        for key in ("missed", "false_alarm", "confusion", "total"):
            seconds = result[key][i].item() / frame_rate
            assert seconds == pytest.approx(getattr(e, key), abs=2 * n_boundaries / frame_rate), key


def test_frame_level_hand_case_and_mapping_search():
    # Four speakers, hypothesis labels permuted: exhaustive search must find the permutation.
    ref = torch.zeros(1, 4, 8, dtype=torch.bool)
    for s in range(4):
        ref[0, s, 2 * s:2 * s + 2] = True
    hyp = ref[:, [2, 0, 3, 1]].clone()
    hyp[0, 2, 7] = False   # hypothesis row 2 is reference speaker 3 (frames 6, 7): one missed frame
    out = frame_diarization_error_rate(ref, hyp)
    assert [out[k].item() for k in ("missed", "false_alarm", "confusion", "total")] == [1, 0, 0, 8]
    assert out["der"].item() == pytest.approx(1 / 8)


# ----------------------------------------------------------------------------------------------
# RTTM and bad input.

def test_rttm_round_trip(tmp_path):
    segments = [(0.5, 1.25, "spk1"), (1.0, 3.0, "spk2"), (4.0, 4.5, "spk1")]
    write_rttm(tmp_path / "a.rttm", segments, file_id="conv1")
    text = (tmp_path / "a.rttm").read_text()
    assert text.splitlines()[0] == "SPEAKER conv1 1 0.500 0.750 <NA> <NA> spk1 <NA> <NA>"
    back = read_rttm(tmp_path / "a.rttm")
    assert list(back) == ["conv1"]
    assert [(s.start, s.end, s.speaker) for s in back["conv1"]] == [pytest.approx(s) for s in segments]
    (tmp_path / "bad.rttm").write_text("SPEAKER conv1 1 zero 1.0 <NA> <NA> a <NA> <NA>\n")
    with pytest.raises(ValueError, match="bad.rttm:1"):
        read_rttm(tmp_path / "bad.rttm")


def test_bad_inputs():
    with pytest.raises(ValueError, match="collar"):
        diarization_error_rate([(0, 1, "A")], [], collar=-0.1)
    with pytest.raises(ValueError, match="speaker 'A' overlap"):
        diarization_error_rate([(0, 2, "A"), (1, 3, "A")], [])
    with pytest.raises(ValueError, match=r"reference\[0\]: end 1.0 is before start 2.0"):
        diarization_error_rate([(2, 1, "A")], [])
    with pytest.raises(TypeError, match=r"hypothesis\[0\] must be \(start, end, speaker\)"):
        diarization_error_rate([], [(0, 1)])
    with pytest.raises(ValueError, match="share B and T"):
        frame_diarization_error_rate(torch.zeros(1, 2, 10), torch.zeros(1, 2, 11))
    with pytest.raises(ValueError, match=r"reference must be a tensor \[B, S, T\]"):
        frame_diarization_error_rate(torch.zeros(2, 10), torch.zeros(1, 2, 10))


# ----------------------------------------------------------------------------------------------
# Edge cases.

def test_speakers_of_mixed_types_and_bad_uem_or_collar():
    # Speakers need not be comparable with each other (only hashable).
    assert parts(diarization_error_rate([(0, 1, "A"), (0, 1, 1)], [])) == (2, 0, 0, 2)
    for uem in ([(float("nan"), 2)], [(0, float("inf"))]):
        with pytest.raises(ValueError, match=r"uem\[0\]: times must be finite"):
            diarization_error_rate([(0, 1, "A")], [(0, 1, "x")], uem=uem)
    with pytest.raises(ValueError, match="collar"):
        diarization_error_rate([(0, 1, "A")], [], collar=True)


def test_frame_level_wide_collar_and_non_binary_activity():
    ref = torch.ones(1, 1, 4)
    # A collar wider than the recording ignores every frame (and must not loop over its width).
    out = frame_diarization_error_rate(ref, ref, collar_frames=1e12)
    assert out["total"].item() == 0
    with pytest.raises(ValueError, match="hypothesis must be bool or hold only 0 and 1"):
        frame_diarization_error_rate(ref, torch.full((1, 1, 4), 0.6))


def test_segments_to_frames_bad_arguments():
    with pytest.raises(ValueError, match="frame_rate"):
        segments_to_frames([(0, 1, "A")], ["A"], 0, 10)
    with pytest.raises(ValueError, match="num_frames"):
        segments_to_frames([(0, 1, "A")], ["A"], 10, -1)
    with pytest.raises(ValueError, match="distinct"):
        segments_to_frames([(0, 1, "A")], ["A", "A"], 10, 10)


def test_rttm_round_trip_keeps_adjacent_segments_apart(tmp_path):
    # Rounding start and duration separately would end the first segment at 1.001, after the
    # second one starts at 1.000: an overlap of one speaker with itself.
    segments = [(0.0006, 1.0004, "a"), (1.0004, 2.0, "a")]
    write_rttm(tmp_path / "a.rttm", segments)
    back = read_rttm(tmp_path / "a.rttm")["audio"]
    assert back[0].end <= back[1].start
    assert diarization_error_rate(back, back).der == 0


@pytest.mark.parametrize("line, match", [
    ("SPEAKER f 1 0.5 nan <NA> <NA> a <NA> <NA>", "finite"),
    ("SPEAKER f 1 inf 1 <NA> <NA> a <NA> <NA>", "finite"),
    ("SPEAKER f 1 1e999 1 <NA> <NA> a <NA> <NA>", "finite"),
    ("SPEAKER f 1 1_0 1 <NA> <NA> a <NA> <NA>", "decimal numbers"),
    ("SPEAKER f 1 1 -0.5 <NA> <NA> a <NA> <NA>", "negative duration"),
    ("SPEAKER f 1 1 1 <NA> <NA>", "at least 8 fields"),
])
def test_rttm_bad_lines_name_the_line(tmp_path, line, match):
    (tmp_path / "bad.rttm").write_text(";; comment\n\n" + line + "\n")
    with pytest.raises(ValueError, match=f"bad.rttm:3: .*{match}"):
        read_rttm(tmp_path / "bad.rttm")


def test_rttm_byte_order_mark_binary_file_and_unwritable_names(tmp_path):
    (tmp_path / "bom.rttm").write_text("\ufeffSPEAKER f 1 1 1 <NA> <NA> a <NA> <NA>\n", encoding="utf-8")
    assert read_rttm(tmp_path / "bom.rttm") == {"f": [(1.0, 2.0, "a")]}
    (tmp_path / "bin.rttm").write_bytes(b"\xff\xfe\x00SPEAKER")
    with pytest.raises(ValueError, match="bin.rttm: not a text RTTM file"):
        read_rttm(tmp_path / "bin.rttm")
    with pytest.raises(ValueError, match="speaker 'spk one'"):
        write_rttm(tmp_path / "w.rttm", [(0, 1, "spk one")])
    with pytest.raises(ValueError, match="file_id 'my file'"):
        write_rttm(tmp_path / "w.rttm", [(0, 1, "a")], file_id="my file")
