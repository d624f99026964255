"""Access to the registered `torch.ops.pyaudiok.*` ops of each backend.

C++ ops (cpu, cuda) are defined by the extension's TORCH_LIBRARY block; Triton ops are registered
here, lazily, with `torch.library.triton_op`, so `import pyaudiok` does not import Triton.
"""
from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch

from .. import _extension


def extension_loaded() -> bool:
    return _extension.load()[0] is not None


def cpp_op(name: str):
    """torch.ops.pyaudiok.<name>, defined by the compiled extension (load it first)."""
    _extension.load()
    return getattr(torch.ops.pyaudiok, name)


@functools.lru_cache(maxsize=None)
def triton_op(name: str, kernel_module: str, function: str,
              register: Callable[[str], None] | None = None):
    """Register `pyaudiok.kernels.<kernel_module>.<function>` as the op pyaudiok::<name> (once) and
    return it. `register(qualname)` adds its fake/autograd registrations."""
    launcher = getattr(importlib.import_module(f"pyaudiok.kernels.{kernel_module}"), function)
    torch.library.triton_op(f"pyaudiok::{name}", mutates_args=())(launcher)
    if register is not None:
        register(f"pyaudiok::{name}")
    return getattr(torch.ops.pyaudiok, name)
