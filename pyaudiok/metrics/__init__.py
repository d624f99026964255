"""Evaluation metrics of the systems (diarization error rate, ...)."""
from .diarization import (DERResult, Segment, diarization_error_rate, frame_diarization_error_rate, read_rttm,
                          segments_to_frames, write_rttm)

__all__ = ["DERResult", "Segment", "diarization_error_rate", "frame_diarization_error_rate", "read_rttm",
           "segments_to_frames", "write_rttm"]
