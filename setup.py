"""Builds pyaudiok: the Python package, the Triton kernels (kernels/ -> pyaudiok.kernels), the
benchmarks (bench/ -> pyaudiok.bench) and the extension pyaudiok._C through CMake + Ninja.

torch must be installed first and the build must see it: install with
    pip install --no-build-isolation -e .
(an isolated build env would fetch another, multi-GB torch). Environment switches:
    PYAUDIOK_CUDA=0|1   skip / force the CUDA kernels (default: built when nvcc is found AND torch is
                        a CUDA build; never decided from torch.cuda.is_available())
    PYAUDIOK_CUDA_ARCHS e.g. "90a" or "80;90a" (default "80;90a")
    PYAUDIOK_JOBS       parallel compile jobs (default: CPU count)
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "pyaudiok" / "_version.py").read_text()).group(1)


def cuda_decision():
    """(build_cuda, reason when not built)."""
    import torch

    forced = os.environ.get("PYAUDIOK_CUDA")
    if forced == "0":
        return False, "PYAUDIOK_CUDA=0"
    nvcc = shutil.which("nvcc") or (os.environ.get("CUDA_HOME") and shutil.which("nvcc", path=os.path.join(os.environ["CUDA_HOME"], "bin")))
    if forced == "1":
        return True, ""
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU build"
    if not nvcc:
        return False, "nvcc not found (set CUDA_HOME or PATH)"
    return True, ""


def cuda_toolkit_root():
    """The toolkit's root: CUDA_HOME, else where nvcc really lives (nvcc on PATH may be a wrapper
    script in /usr/local/bin), read from its own --dryrun report (TOP=...)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("PYAUDIOK_CUDA: nvcc not found (set CUDA_HOME or PATH)")
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"pyaudiok-probe-{os.getpid()}.cu"
    probe.write_text("")
    try:
        report = subprocess.run([nvcc, "--dryrun", "-c", str(probe), "-o", os.devnull],
                                capture_output=True, text=True).stderr
    finally:
        probe.unlink()
    top = re.search(r"^#\$ TOP=(.*)$", report, re.MULTILINE)
    return os.path.realpath(top.group(1).strip()) if top else str(Path(nvcc).resolve().parent.parent)


def direct_torch_args():
    """CMake arguments naming torch's headers and libraries directly, as torch.utils.cpp_extension
    does, for any build against a CUDA build of torch: torch's own CMake config then goes through
    the legacy FindCUDA, which fails where nvcc is a wrapper script or the toolkit lacks a part
    torch's build had (NVTX, cuDNN), and demands a toolkit even for a CPU-only build."""
    import torch
    from torch.utils import cpp_extension

    return [f"-DPYAUDIOK_TORCH_INCLUDE_DIRS={';'.join(cpp_extension.include_paths())}",
            f"-DPYAUDIOK_TORCH_LIBRARY_DIR={cpp_extension.library_paths()[0]}",
            f"-DPYAUDIOK_TORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DPYAUDIOK_TORCH_VERSION={torch.__version__.split('+')[0]}"]


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11
        import torch.utils

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        with_cuda, reason = cuda_decision()
        print(f"pyaudiok: CUDA kernels {'ON' if with_cuda else 'OFF (' + reason + ')'}")
        args = [
            f"-S{ROOT}", f"-B{build_dir}", "-GNinja",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DPYAUDIOK_OUTPUT_DIR={out_dir}",
            f"-DPYAUDIOK_VERSION={VERSION}",
            f"-DPYAUDIOK_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DPYAUDIOK_CUDA_SKIPPED_REASON={reason}",
        ]
        if with_cuda:
            root = cuda_toolkit_root()
            print(f"pyaudiok: CUDA toolkit {root}")
            args += [f"-DCMAKE_CUDA_ARCHITECTURES={os.environ.get('PYAUDIOK_CUDA_ARCHS', '80;90a')}",
                     f"-DCMAKE_CUDA_COMPILER={root}/bin/nvcc", f"-DCUDAToolkit_ROOT={root}"]
        if torch.version.cuda is not None:
            args += direct_torch_args()
        subprocess.run(["cmake", *args], check=True)
        jobs = os.environ.get("PYAUDIOK_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    name="pyaudiok",
    version=VERSION,
    description="Fused, fast PyTorch kernels for audio and sequence-modelling research systems",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pyaudiok", "pyaudiok.*"]) + ["pyaudiok.kernels", "pyaudiok.bench"],
    package_dir={"pyaudiok": "pyaudiok", "pyaudiok.kernels": "kernels", "pyaudiok.bench": "bench"},
    ext_modules=[Extension("pyaudiok._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    # torch is deliberately not listed: installing it through pip's resolver would pull a
    # multi-GB CUDA build on CPU machines. Install the torch you want first (README).
    install_requires=["numpy", "scipy", "soundfile", "soxr", "tqdm", "matplotlib",
                      "triton; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "pyannote.metrics", "scikit-learn"],
        "bench": ["pytest-benchmark"],
        "train": ["scikit-learn"],  # `pyaudiok train llp`: the digits images ship with scikit-learn
        # Not listed: torchsort (builds from source; see bench/bench_soft_rank.py) and SpeechBrain /
        # torchaudio (need their own torch; see DESIGN, "Peers on this machine"): benches report them skipped.
        "peers": ["vector-quantize-pytorch", "encodec", "pyannote.metrics", "perceiver-ar-pytorch", "POT",
                  "torchmetrics", "scikit-learn"],
    },
    entry_points={"console_scripts": ["pyaudiok = pyaudiok.cli:main"]},
)
