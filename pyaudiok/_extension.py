"""Loading of the compiled extension `pyaudiok._C` (C++ CPU kernels, CUDA kernels when built).

`import pyaudiok` never fails because of the extension: when it is missing or broken, the
reference and Triton backends still work and `pyaudiok.info()` shows the reason. Everything is
resolved once at import, into plain module constants, so the per-call dispatch (which
`torch.compile` traces) only reads them.
"""
from __future__ import annotations

import torch  # noqa: F401  (the extension's TORCH_LIBRARY ops need torch loaded first)


def _load():
    try:
        from . import _C  # type: ignore[attr-defined]
    except ImportError as e:  # not built, or built against another torch
        return None, (f"extension pyaudiok._C not importable ({e}); "
                      "rebuild with `pip install --no-build-isolation -e .`")
    return _C, None


MODULE, LOAD_ERROR = _load()
BUILD_INFO: dict = {"loaded": False, "reason": LOAD_ERROR} if MODULE is None else {**MODULE.build_info(), "loaded": True}


def load() -> tuple[object | None, str | None]:
    """(module, None) when the extension imported, else (None, reason)."""
    return MODULE, LOAD_ERROR


def build_info() -> dict:
    """What the extension was compiled with: {'version', 'backends', 'cuda_archs', ...}."""
    return BUILD_INFO


def compiled_backend_reason(backend: str) -> str | None:
    """None when `backend` ('cpu' or 'cuda') was compiled into the extension, else why not."""
    if MODULE is None:
        return LOAD_ERROR
    if backend not in BUILD_INFO["backends"]:
        why = BUILD_INFO.get(f"{backend}_skipped_reason") or "not compiled"
        return f"{backend} kernels not compiled into pyaudiok._C ({why})"
    return None
