"""Importing the peer libraries the benchmarks compare against. Peers are an optional extra
(`pip install .[peers]`); a missing or broken one is a skip reason, never an error."""
from __future__ import annotations

import importlib
import os
import sys
import types


def load(module: str, package: str) -> tuple[types.ModuleType | None, str | None]:
    """(module, None) or (None, why it cannot be used)."""
    if module.split(".")[0] == "ot":
        # POT imports every array library it finds; JAX would then take 75 % of the GPU's memory
        # at import (its default preallocation) and starve the candidates timed after it.
        for lib in ("JAX", "TF", "CUPY"):
            os.environ.setdefault(f"POT_BACKEND_DISABLE_{lib}", "1")
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        return importlib.import_module(module), None
    except ImportError as e:
        return None, f"{package} not installed (pip install '.[peers]'): {e}"[:160]
    except Exception as e:  # installed but broken against this torch
        return None, f"{package} failed to import: {type(e).__name__}: {e}"[:160]


def load_encodec_quantizer():
    """encodec's ResidualVectorQuantizer. encodec imports torchaudio at package import, and
    torchaudio releases load only beside their own torch; the quantizer itself never uses it, so a
    placeholder module stands in when the real one cannot load."""
    try:
        import torchaudio  # noqa: F401
    except Exception:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    module, reason = load("encodec.quantization.vq", "encodec")
    return (module.ResidualVectorQuantizer if module else None), reason
