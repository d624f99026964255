// Bottom-right causal cross-attention (Perceiver AR's latent attention), CPU kernels. Torch-free:
// raw pointers and sizes; the matrix products go through a GEMM the caller provides (the binding,
// csrc/bindings/latent_attention_cpu.cpp, passes ATen's CPU BLAS). pyaudiok/ops/latent_attention.py
// states the contract: query j of N sees key i iff i <= L - N + j and i < L.
#pragma once
#include <cstdint>

namespace pyaudiok::cpu {

// Row-major GEMM: C[m, n] = alpha · op(A) · op(B) + beta · C, op(X) = X or Xᵀ; ld* are row strides.
template <typename T>
using GemmFn = void (*)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                        int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// One (batch, head): q[N, D], k and v[M ≥ length, D], every matrix contiguous; keys [0, length)
// exist (the kernels never read a key at or after length).
// query_block × key_block: the tile of scores one pair of products forms (the binding picks it by shape).
struct AttentionShape {
  int64_t n_queries, head_dim, length;
  int64_t query_block, key_block;
};

// Queries [q_begin, q_end) of one (batch, head) → out[N, D] and lse[N] at those rows (flash-style:
// blocks of keys with an online softmax, no [N, M] scores). A query that sees no key gets 0 and
// lse = −inf.
template <typename T>
void latent_attention_forward(const T* q, const T* k, const T* v, const AttentionShape& s, T scale,
                              int64_t q_begin, int64_t q_end, GemmFn<T> gemm, T* out, T* lse);

// Keys [k_begin, k_end) of one (batch, head): writes their dk, dv[·, D] (zero for keys no query
// sees) and adds their share of dq to dq[N, D]. delta[N] = Σ_d grad·out per query.
template <typename T>
void latent_attention_backward(const T* grad, const T* q, const T* k, const T* v, const T* lse, const T* delta,
                               const AttentionShape& s, T scale, int64_t k_begin, int64_t k_end, GemmFn<T> gemm,
                               T* dq, T* dk, T* dv);

// Default query and key block sizes of the kernels (a binding splits work at the blocks' boundaries).
constexpr int64_t kAttentionQueryBlock = 128;
constexpr int64_t kAttentionKeyBlock = 512;

}  // namespace pyaudiok::cpu
