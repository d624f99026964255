// The pybind11 module pyaudiok._C: build information only. The ops themselves are registered with
// the dispatcher (library.cpp, *_cpu.cpp, *_cuda.cpp) when this shared object is loaded, and are
// reached as torch.ops.pyaudiok.*. No torch headers here: this file compiles in seconds.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#ifdef PYAUDIOK_WITH_CUDA
#include "../cuda/rvq.h"
#endif

#ifndef PYAUDIOK_VERSION
#define PYAUDIOK_VERSION "unknown"
#endif
#ifndef PYAUDIOK_TORCH_VERSION
#define PYAUDIOK_TORCH_VERSION "unknown"
#endif
#ifndef PYAUDIOK_CUDA_ARCHS
#define PYAUDIOK_CUDA_ARCHS ""
#endif
#ifndef PYAUDIOK_CUDA_SKIPPED_REASON
#define PYAUDIOK_CUDA_SKIPPED_REASON ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyaudiok compiled kernels (ops are under torch.ops.pyaudiok)";
  m.def("build_info", [] {
    py::dict info;
    std::vector<std::string> backends{"cpu"};
#ifdef PYAUDIOK_WITH_CUDA
    backends.emplace_back("cuda");
#endif
    info["version"] = PYAUDIOK_VERSION;
    info["torch_version"] = PYAUDIOK_TORCH_VERSION;
    info["backends"] = backends;
    info["cuda_archs"] = std::string(PYAUDIOK_CUDA_ARCHS);
    info["cuda_skipped_reason"] = std::string(PYAUDIOK_CUDA_SKIPPED_REASON);
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("gcc ") + __VERSION__;
#endif
    return info;
  });
#ifdef PYAUDIOK_WITH_CUDA
  m.def("rvq_cuda_max_dim", &pyaudiok_rvq_forward_cuda_max_dim,
        "largest D the CUDA RVQ forward supports on a device (shared-memory bound)");
#endif
}
