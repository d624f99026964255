"""Loading of the compiled extension `pyaudiok._C` (C++ CPU kernels, CUDA kernels when built).

`import pyaudiok` never fails because of the extension: when it is missing or broken, the
reference and Triton backends still work and `pyaudiok.info()` shows the reason.
"""
from __future__ import annotations

import functools

import torch  # noqa: F401  (the extension's TORCH_LIBRARY ops need torch loaded first)


@functools.lru_cache(maxsize=None)
def load() -> tuple[object | None, str | None]:
    """(module, None) when the extension imported, else (None, reason)."""
    try:
        from . import _C  # type: ignore[attr-defined]
    except ImportError as e:  # not built, or built against another torch
        return None, f"extension pyaudiok._C not importable ({e}); reinstall with `pip install --no-build-isolation -e .`"
    return _C, None


def build_info() -> dict:
    """What the extension was compiled with: {'version', 'backends', 'cuda_archs', ...}."""
    module, reason = load()
    if module is None:
        return {"loaded": False, "reason": reason}
    info = dict(module.build_info())
    info["loaded"] = True
    return info


def compiled_backend_reason(backend: str) -> str | None:
    """None when `backend` ('cpu' or 'cuda') was compiled into the extension, else why not."""
    info = build_info()
    if not info["loaded"]:
        return info["reason"]
    if backend not in info["backends"]:
        why = info.get(f"{backend}_skipped_reason", "not compiled")
        return f"{backend} kernels not compiled into pyaudiok._C ({why})"
    return None
