// Schemas of every op the extension provides, in one place. Implementations are registered per
// dispatch key next to their kernels' bindings (rvq_cpu.cpp, rvq_cuda.cpp, ...).
#include <torch/library.h>

TORCH_LIBRARY(pyaudiok, m) {
  // Residual vector quantization (pyaudiok/ops/rvq.py documents the contract and the gradients).
  m.def("rvq_forward(Tensor x, Tensor codebooks, int n_q) -> (Tensor, Tensor, Tensor)");
  m.def("rvq_decode(Tensor codes, Tensor codebooks, Tensor? weights) -> Tensor");
}
