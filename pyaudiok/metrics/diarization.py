"""Diarization error rate (DER), on segments and on frames (DESIGN.md §8).

    DER = (missed + false alarm + confusion) / total reference speech

Segment-level: `diarization_error_rate(reference, hypothesis, collar=…, skip_overlap=…, uem=…)`
computes exactly what `pyannote.metrics.diarization.DiarizationErrorRate` computes, by one sweep
over the sorted segment boundaries instead of timeline objects:

1. The evaluated region is the UEM (default: one interval from the earliest to the latest boundary
   of reference and hypothesis together) minus
   - **collars**: `collar` is the *total* width of the region ignored around every reference segment
     boundary, i.e. ±collar/2 around each start and end (pyannote's convention; NIST md-eval's
     `-c` is the per-side width: md-eval `-c 0.25` equals `collar=0.5` here), and
   - with `skip_overlap`, every region where two or more reference segments overlap.
2. On each elementary interval of that region (between consecutive boundaries), with n_ref and
   n_hyp active speakers and n_correct of them matched by the speaker mapping:
   missed = max(0, n_ref − n_hyp), false alarm = max(0, n_hyp − n_ref),
   confusion = min(n_ref, n_hyp) − n_correct, total = n_ref, each weighted by the duration.
3. The mapping from hypothesis to reference speakers is one-to-one and maximises the total time
   they are active together in the evaluated region (Hungarian algorithm). Any optimal mapping
   gives the same DER.

Frame-level: `frame_diarization_error_rate(reference[B, S_r, T], hypothesis[B, S_h, T])` does the
same on binary activity frames, batched and on the tensors' device, for training-time monitoring.

RTTM: `read_rttm` / `write_rttm` (`SPEAKER <file> <chan> <start> <duration> <NA> <NA> <spk> <NA> <NA>`).
"""
from __future__ import annotations

import itertools
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch

__all__ = ["Segment", "DERResult", "diarization_error_rate", "frame_diarization_error_rate", "read_rttm",
           "write_rttm", "segments_to_frames"]


class Segment(NamedTuple):
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class DERResult:
    """Durations (seconds, or frames for the frame-level version) and the rate."""
    missed: float
    false_alarm: float
    confusion: float
    total: float
    mapping: dict  # hypothesis speaker -> reference speaker

    @property
    def der(self) -> float:
        errors = self.missed + self.false_alarm + self.confusion
        if self.total == 0:  # no reference speech: 1 for any error, as pyannote.metrics gives
            return 0.0 if errors == 0 else 1.0
        return errors / self.total


# ----------------------------------------------------------------------------------------------
# Input checks.

def _as_segments(name: str, segments: Iterable) -> list[Segment]:
    out = []
    for i, item in enumerate(segments):
        try:
            start, end, speaker = item
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}] must be (start, end, speaker) with numeric times; got {item!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"{name}[{i}]: times must be finite; got ({start}, {end})")
        if end < start:
            raise ValueError(f"{name}[{i}]: end {end} is before start {start}")
        if end > start:  # empty segments carry no speech
            out.append(Segment(start, end, speaker))
    by_speaker: dict = {}
    for seg in sorted(out, key=lambda s: (s.start, s.end)):  # speakers may not be mutually comparable
        previous = by_speaker.get(seg.speaker)
        if previous is not None and seg.start < previous.end:
            raise ValueError(f"{name}: segments of speaker {seg.speaker!r} overlap: ({previous.start}, "
                             f"{previous.end}) and ({seg.start}, {seg.end}); merge them first")
        by_speaker[seg.speaker] = seg if previous is None or seg.end > previous.end else previous
    return out


def _as_intervals(name: str, intervals: Iterable) -> np.ndarray:
    rows = []
    for i, item in enumerate(intervals):
        try:
            start, end = (float(v) for v in item)
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}] must be (start, end); got {item!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"{name}[{i}]: times must be finite; got ({start}, {end})")
        if end < start:
            raise ValueError(f"{name}[{i}]: end {end} is before start {start}")
        rows.append((start, end))
    return _union(np.array(rows, dtype=np.float64).reshape(-1, 2))


# ----------------------------------------------------------------------------------------------
# Interval sets: sorted, disjoint [start, end) rows of a float64 array [n, 2].

def _union(intervals: np.ndarray) -> np.ndarray:
    intervals = intervals[intervals[:, 1] > intervals[:, 0]]
    if len(intervals) == 0:
        return intervals.reshape(0, 2)
    intervals = intervals[np.argsort(intervals[:, 0], kind="stable")]
    # A new run starts where the start lies beyond every earlier end.
    running_end = np.maximum.accumulate(intervals[:, 1])
    starts_run = np.r_[True, intervals[1:, 0] > running_end[:-1]]
    run = np.cumsum(starts_run) - 1
    ends = np.full(run[-1] + 1, -np.inf)  # not zeros: times may be negative
    np.maximum.at(ends, run, intervals[:, 1])
    return np.stack([intervals[starts_run, 0], ends], axis=1)


def _subtract(keep: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """keep minus remove, both disjoint sorted sets."""
    if len(remove) == 0 or len(keep) == 0:
        return keep
    points = np.unique(np.concatenate([keep.ravel(), remove.ravel()]))
    mids = (points[:-1] + points[1:]) / 2
    inside = _covers(keep, mids) & ~_covers(remove, mids)
    return _union(np.stack([points[:-1][inside], points[1:][inside]], axis=1))


def _covers(intervals: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Whether each time t lies inside the disjoint sorted set."""
    if len(intervals) == 0:
        return np.zeros(t.shape, dtype=bool)
    i = np.searchsorted(intervals[:, 0], t, side="right") - 1
    return (i >= 0) & (t < intervals[np.maximum(i, 0), 1])


def _overlap_regions(segments: list[Segment]) -> np.ndarray:
    """Where two or more of the segments are active."""
    if not segments:
        return np.zeros((0, 2))
    times = np.array([[s.start, s.end] for s in segments])
    points = np.unique(times.ravel())
    mids = (points[:-1] + points[1:]) / 2
    count = (times[:, :1] <= mids) & (mids < times[:, 1:])
    several = count.sum(0) >= 2
    return _union(np.stack([points[:-1][several], points[1:][several]], axis=1))


# ----------------------------------------------------------------------------------------------
# Segment-level DER.

def _activity(segments: list[Segment], speakers: list, points: np.ndarray) -> np.ndarray:
    """activity[i, s] = speaker s is active on the elementary interval [points[i], points[i+1])."""
    index = {spk: j for j, spk in enumerate(speakers)}
    diff = np.zeros((len(points), len(speakers)))
    for seg in segments:
        j = index[seg.speaker]
        diff[np.searchsorted(points, seg.start), j] += 1
        diff[np.searchsorted(points, seg.end), j] -= 1
    return np.cumsum(diff, axis=0)[:-1] > 0


def _optimal_mapping(cooccurrence: np.ndarray) -> list[tuple[int, int]]:
    """(ref, hyp) pairs of a one-to-one mapping maximising the total cooccurrence."""
    from scipy.optimize import linear_sum_assignment

    if cooccurrence.size == 0:
        return []
    rows, cols = linear_sum_assignment(cooccurrence, maximize=True)
    return [(r, h) for r, h in zip(rows, cols) if cooccurrence[r, h] > 0]


def diarization_error_rate(reference: Iterable, hypothesis: Iterable, *, collar: float = 0.0,
                           skip_overlap: bool = False, uem: Iterable | None = None) -> DERResult:
    """DER of `hypothesis` against `reference`, both iterables of (start, end, speaker) in seconds.

    collar: total width (seconds) ignored around each reference boundary, ±collar/2 (pyannote's
    convention; see the module docstring). skip_overlap: ignore regions where reference speakers
    overlap. uem: (start, end) intervals to evaluate (default: the extent of both inputs).
    Segments of one speaker must not overlap. Returns a `DERResult` (`.der` is the rate).
    """
    if not (isinstance(collar, numbers.Real) and not isinstance(collar, bool) and math.isfinite(collar)
            and collar >= 0):
        raise ValueError(f"collar must be a finite number >= 0 (seconds, total width); got {collar!r}")
    collar = float(collar)
    if not isinstance(skip_overlap, (bool, np.bool_)):  # a string such as "no" would be truthy
        raise TypeError(f"skip_overlap must be a bool; got {skip_overlap!r}")
    ref = _as_segments("reference", reference)
    hyp = _as_segments("hypothesis", hypothesis)
    if uem is None:
        times = [t for s in ref + hyp for t in (s.start, s.end)]
        region = np.array([[min(times), max(times)]]) if times else np.zeros((0, 2))
    else:
        region = _as_intervals("uem", uem)
    removed = []
    if collar > 0:
        bounds = np.array([t for s in ref for t in (s.start, s.end)]).reshape(-1, 1)
        removed.append(np.concatenate([bounds - collar / 2, bounds + collar / 2], axis=1))
    if skip_overlap:
        removed.append(_overlap_regions(ref))
    if removed:
        region = _subtract(region, _union(np.concatenate(removed)))

    ref_speakers = sorted({s.speaker for s in ref}, key=str)
    hyp_speakers = sorted({s.speaker for s in hyp}, key=str)
    points = np.unique(np.concatenate([region.ravel(), [t for s in ref + hyp for t in (s.start, s.end)]]))
    if len(points) < 2:
        return DERResult(0.0, 0.0, 0.0, 0.0, {})
    duration = np.diff(points) * _covers(region, (points[:-1] + points[1:]) / 2)
    R = _activity(ref, ref_speakers, points)
    H = _activity(hyp, hyp_speakers, points)
    pairs = _optimal_mapping((R * duration[:, None]).T @ H)
    correct = sum((R[:, r] & H[:, h]) * 1.0 for r, h in pairs) if pairs else np.zeros(len(duration))
    n_ref, n_hyp = R.sum(1), H.sum(1)
    return DERResult(
        missed=float(duration @ np.maximum(0, n_ref - n_hyp)),
        false_alarm=float(duration @ np.maximum(0, n_hyp - n_ref)),
        confusion=float(duration @ (np.minimum(n_ref, n_hyp) - correct)),
        total=float(duration @ n_ref),
        mapping={hyp_speakers[h]: ref_speakers[r] for r, h in pairs},
    )


# ----------------------------------------------------------------------------------------------
# Frame-level, batched DER.

def _within(switch: torch.Tensor, half: float, T: int) -> torch.Tensor:
    """Exact test for fractional half-widths: frame [t, t+1) meets [b − half, b + half]."""
    half = min(half, T + 1.0)  # wider collars cover every frame the same; the loop below is O(half)
    B = switch.shape[0]
    t = torch.arange(T, device=switch.device, dtype=torch.float32)
    out = torch.zeros(B, T, dtype=torch.bool, device=switch.device)
    for offset in range(-math.ceil(half) - 1, math.ceil(half) + 2):
        b = t + offset  # candidate boundary index
        valid = (b >= 0) & (b <= T)
        meets = (b + half > t) & (b - half < t + 1)
        idx = b.clamp(0, T).long()
        out |= valid & meets & (switch[:, idx] > 0)
    return out


def _best_assignment(cooccurrence: torch.Tensor) -> torch.Tensor:
    """Maximum total cooccurrence over one-to-one mappings, per item: [B, S_r, S_h] -> [B]."""
    B, S_r, S_h = cooccurrence.shape
    S = max(S_r, S_h)
    if S == 0:
        return cooccurrence.new_zeros(B)
    if S <= 8:  # exhaustive, on device: S! ≤ 40320 permutations
        square = torch.nn.functional.pad(cooccurrence, (0, S - S_h, 0, S - S_r))
        perms = torch.tensor(list(itertools.permutations(range(S))), device=square.device)  # [P, S]
        rows = torch.arange(S, device=square.device)
        return square[:, rows, perms].sum(-1).amax(-1)  # square[:, rows, perms]: [B, P, S]
    from scipy.optimize import linear_sum_assignment
    out = []
    for c in cooccurrence.detach().cpu().double().numpy():
        r, h = linear_sum_assignment(c, maximize=True)
        out.append(c[r, h].sum())
    return torch.tensor(out, dtype=cooccurrence.dtype, device=cooccurrence.device)


def frame_diarization_error_rate(reference: torch.Tensor, hypothesis: torch.Tensor, *, collar_frames: float = 0,
                                 mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """DER on binary activity frames: reference[B, S_r, T], hypothesis[B, S_h, T] (bool or 0/1).

    collar_frames: total collar width in frames (±collar_frames/2 around each reference switch,
    as in the segment version); mask[B, T]: frames to evaluate (default all). Returns per-item
    tensors [B] of frame counts: missed, false_alarm, confusion, total, and der.
    """
    for name, x in (("reference", reference), ("hypothesis", hypothesis)):
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise ValueError(f"{name} must be a tensor [B, S, T] of speaker activity; got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
    if reference.shape[0] != hypothesis.shape[0] or reference.shape[2] != hypothesis.shape[2]:
        raise ValueError(f"reference [B, S_r, T] and hypothesis [B, S_h, T] must share B and T; got "
                         f"{tuple(reference.shape)} and {tuple(hypothesis.shape)}")
    if reference.device != hypothesis.device:
        raise ValueError(f"reference and hypothesis must be on one device; got {reference.device} and {hypothesis.device}")
    if not (math.isfinite(collar_frames) and collar_frames >= 0):
        raise ValueError(f"collar_frames must be >= 0; got {collar_frames}")
    for name, x in (("reference", reference), ("hypothesis", hypothesis), ("mask", mask)):
        # Probabilities or logits would be summed as fractional "speakers": threshold them first.
        if x is not None and x.dtype != torch.bool and bool(((x != 0) & (x != 1)).any()):
            raise ValueError(f"{name} must be bool or hold only 0 and 1 (threshold probabilities first)")
    B, _, T = reference.shape
    evaluated = torch.ones(B, T, dtype=torch.bool, device=reference.device) if mask is None else mask.bool()
    if mask is not None and mask.shape != (B, T):
        raise ValueError(f"mask must have shape [B, T] = {[B, T]}; got {tuple(mask.shape)}")
    if collar_frames > 0:
        evaluated = evaluated & ~_within(_switches(reference), collar_frames / 2, T)
    weight = evaluated.float()
    R, H = reference.float() * weight[:, None], hypothesis.float() * weight[:, None]
    n_ref, n_hyp = R.sum(1), H.sum(1)  # [B, T]
    matched = _best_assignment(R @ H.transpose(1, 2))
    missed = (n_ref - n_hyp).clamp_min(0).sum(-1)
    false_alarm = (n_hyp - n_ref).clamp_min(0).sum(-1)
    confusion = torch.minimum(n_ref, n_hyp).sum(-1) - matched
    total = n_ref.sum(-1)
    errors = missed + false_alarm + confusion
    # No reference speech: 1 for any error, as pyannote.metrics gives.
    der = torch.where(total > 0, errors / total.clamp_min(1), (errors > 0).to(errors.dtype))
    return {"missed": missed, "false_alarm": false_alarm, "confusion": confusion, "total": total, "der": der}


def _switches(reference: torch.Tensor) -> torch.Tensor:
    """[B, T + 1]: 1 at boundary t (between frames t−1 and t) where some speaker turns on or off."""
    padded = torch.nn.functional.pad(reference.float(), (1, 1))
    return (padded[..., 1:] != padded[..., :-1]).any(1).float()


def segments_to_frames(segments: Iterable, speakers: Sequence, frame_rate: float, num_frames: int) -> torch.Tensor:
    """Activity [len(speakers), num_frames] (bool): frame t (spanning [t, t+1)/frame_rate) is active
    for a speaker when its centre lies inside one of the speaker's segments."""
    if not (isinstance(frame_rate, numbers.Real) and math.isfinite(frame_rate) and frame_rate > 0):
        raise ValueError(f"frame_rate must be a positive finite number (frames per second); got {frame_rate!r}")
    if not (isinstance(num_frames, numbers.Integral) and num_frames >= 0):
        raise ValueError(f"num_frames must be an integer >= 0; got {num_frames!r}")
    index = {spk: i for i, spk in enumerate(speakers)}
    if len(index) != len(speakers):
        raise ValueError(f"speakers must be distinct; got {list(speakers)}")
    out = torch.zeros(len(speakers), num_frames, dtype=torch.bool)
    centres = (torch.arange(num_frames, dtype=torch.float64) + 0.5) / frame_rate
    for seg in _as_segments("segments", segments):
        if seg.speaker not in index:
            raise ValueError(f"segments: speaker {seg.speaker!r} is not in speakers {list(speakers)}")
        out[index[seg.speaker]] |= (centres >= seg.start) & (centres < seg.end)
    return out


# ----------------------------------------------------------------------------------------------
# RTTM.

def _rttm_field(name: str, value) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{name} {text!r} cannot be written to RTTM: it must be non-empty without whitespace")
    return text


def write_rttm(path: str | os.PathLike, segments: Iterable, file_id: str = "audio", channel: int = 1) -> None:
    """Write SPEAKER lines (times with millisecond precision, sorted by start)."""
    file_id, channel = _rttm_field("file_id", file_id), _rttm_field("channel", channel)
    lines = []
    for s in sorted(_as_segments("segments", segments), key=lambda s: (s.start, s.end, str(s.speaker))):
        # Round both ends, not the duration: rounding is monotone, so segments that do not
        # overlap before writing do not overlap after reading back.
        start, end = round(s.start * 1000), round(s.end * 1000)
        if end > start:
            lines.append(f"SPEAKER {file_id} {channel} {start / 1000:.3f} {(end - start) / 1000:.3f} <NA> <NA> "
                         f"{_rttm_field('speaker', s.speaker)} <NA> <NA>\n")
    Path(path).write_text("".join(lines))


_RTTM_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def read_rttm(path: str | os.PathLike) -> dict[str, list[Segment]]:
    """{file id: segments} from the SPEAKER lines of an RTTM file (other line types are skipped)."""
    out: dict[str, list[Segment]] = {}
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a leading BOM would hide the first line
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text RTTM file ({e})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ValueError(f"{path}:{number}: a SPEAKER line needs at least 8 fields; got {len(fields)}")
        if not (_RTTM_NUMBER.fullmatch(fields[3]) and _RTTM_NUMBER.fullmatch(fields[4])):
            raise ValueError(f"{path}:{number}: start and duration must be finite decimal numbers; got "
                             f"{fields[3]!r}, {fields[4]!r}")
        start, duration = float(fields[3]), float(fields[4])
        if not (math.isfinite(start) and math.isfinite(start + duration)):
            raise ValueError(f"{path}:{number}: start and duration must be finite; got {fields[3]!r}, {fields[4]!r}")
        if duration < 0:
            raise ValueError(f"{path}:{number}: negative duration {duration}")
        out.setdefault(fields[1], []).append(Segment(start, start + duration, fields[7]))
    return out
