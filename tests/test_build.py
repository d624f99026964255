"""The build: what the extension reports, and the rule that kernel sources stay torch-free."""
import re
from pathlib import Path

import pytest

import pyaudiok
from pyaudiok import _extension

ROOT = Path(__file__).resolve().parents[1]


def test_extension_loaded_with_cpu_kernels():
    info = _extension.build_info()
    assert info["loaded"], info.get("reason")
    assert "cpu" in info["backends"]
    assert info["version"] == pyaudiok.__version__


@pytest.mark.parametrize("source", sorted((ROOT / "csrc").glob("c*/*.c*")) + sorted((ROOT / "csrc").glob("c*/*.h")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_kernel_sources_include_no_torch_headers(source):
    """Kernels in csrc/cpu and csrc/cuda compile without torch (fast builds, `nvcc -c` on CI)."""
    includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', source.read_text())
    assert not [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10", "pybind11")], includes


def test_triton_kernels_are_installed_as_a_subpackage():
    import pyaudiok.kernels
    assert Path(pyaudiok.kernels.__file__).resolve().parent == ROOT / "kernels"
