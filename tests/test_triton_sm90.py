"""Every Triton kernel launch the session made in the interpreter, compiled for an H100 (sm_90)
without a GPU — PTX and a cubin through Triton's bundled ptxas. The interpreter checks what the
kernels compute; this checks that the GPU compiler accepts them. It runs last (tests/conftest.py)
so that it sees the launches of every test before it; on a GPU machine the kernels really run and
this is skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from . import triton_launches


def _nvidia_backend_reason() -> str | None:
    if torch.cuda.is_available():
        return "a GPU is present: the kernels are compiled and run by the GPU tests"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton is not in interpreter mode: no launches were recorded"
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError as e:
        return f"Triton has no NVIDIA backend here: {e}"
    return None


SKIP_REASON = _nvidia_backend_reason()


@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_recorded_triton_launches_compile_for_sm90(tmp_path):
    specs = list(triton_launches.SPECS.values())
    if not specs:
        pytest.skip("no Triton launch was recorded in this session (run with the op tests)")
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(specs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_triton_specs.py")
    done = subprocess.run([sys.executable, str(script), str(path), "--arch", "90"], env=env, capture_output=True,
                          text=True, timeout=1500)
    assert done.returncode == 0, f"{len(specs)} launch specs; compile output:\n{done.stdout[-6000:]}{done.stderr[-3000:]}"


@pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))
def test_no_shared_tensor_sits_in_a_slot_torch_compile_counts_as_written(tmp_path):
    """A tensor passed in two slots of one launch (a stand-in for an unused slot, hi/lo halves that
    are one tensor) is fine while both slots are only read. If torch.compile's analysis of the
    kernel counts one of them as written, a compiled graph writes into that tensor: an op input
    there fails to compile (a leaf that requires grad) or is silently copied over."""
    if not triton_launches.SPECS:
        pytest.skip("no Triton launch was recorded in this session (run with the op tests)")
    records = list(triton_launches.ALIASED.values())
    if not records:
        return  # every recorded launch gave each slot its own tensor
    path = tmp_path / "aliased.json"
    path.write_text(json.dumps(records))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_triton_specs.py")
    done = subprocess.run([sys.executable, str(script), str(path), "--written"], env=env, capture_output=True,
                          text=True, timeout=600)
    output = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, f"{len(records)} launches with shared tensors:\n{output}"
