"""Whether each backend can run in this process, with the reason when it cannot.

Shared by every op's registration, so an op only names which of these its backends need.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from . import _extension


def interpreting_triton() -> bool:
    """True when Triton kernels run in its CPU interpreter (tests on machines without a GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TRITON_STATUS: dict[str, str | None] = {}


def _triton_import_reason() -> str | None:
    """Checked once (importing triton is slow), then read from _TRITON_STATUS."""
    if "reason" not in _TRITON_STATUS:
        _TRITON_STATUS["reason"] = _check_triton_import()
    return _TRITON_STATUS["reason"]


def _check_triton_import() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # a broken install must not break `import pyaudiok`
        return f"triton failed to import: {e}"
    if not hasattr(torch.library, "triton_op"):
        return f"torch {torch.__version__} has no torch.library.triton_op (need torch >= 2.6)"
    return None


def triton_reason(device: torch.device) -> str | None:
    reason = _triton_import_reason()
    if reason is None and device.type == "cpu" and not interpreting_triton():
        reason = "Triton runs on CPU tensors only in its interpreter (set TRITON_INTERPRET=1; for tests)"
    return reason


def cpu_reason(device: torch.device) -> str | None:
    return _extension.compiled_backend_reason("cpu")


def cuda_reason(device: torch.device) -> str | None:
    return _extension.compiled_backend_reason("cuda")


def triton_version() -> str | None:
    if _triton_import_reason() is not None:
        return None
    import triton
    return triton.__version__
