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

// Keys and values that are functions of a token (Perceiver AR's cross-attention over its inputs):
// key i is row tokens[i] of k_table[V, D] with its first rotary_dims channels rotated by position,
// value i is row tokens[i] of v_table[V, D].
struct TokenTables {
  int64_t vocab, rotary_dims;
};

// latent_attention_forward for such keys and values (k: the gathered, rotated keys [M, D]; only
// their rotated channels are read). Needs M >= N (every query sees key 0).
template <typename T>
void latent_attention_forward_tokens(const T* q, const T* k, const int64_t* tokens, const T* k_table,
                                     const T* v_table, const TokenTables& t, const AttentionShape& s, T scale,
                                     int64_t q_begin, int64_t q_end, GemmFn<T> gemm, T* out, T* lse);

// latent_attention_backward for such keys and values (k: the gathered, rotated keys [M, D], as the
// forward used them). Writes dk[·, D] for keys [k_begin, k_end): the rotated channels' gradient
// (the others are zero: their gradient goes to the table); adds the range's share of dq to dq[N, D]
// and of the tables' gradients to dk_table[V, D] (unrotated channels only) and dv_table[V, D].
template <typename T>
void latent_attention_backward_tokens(const T* grad, const T* q, const T* k, const int64_t* tokens, const T* k_table,
                                      const T* v_table, const TokenTables& t, const T* lse, const T* delta,
                                      const AttentionShape& s, T scale, int64_t k_begin, int64_t k_end,
                                      GemmFn<T> gemm, T* dq, T* dk, T* dk_table, T* dv_table);

// Default query and key block sizes of the kernels (a binding splits work at the blocks' boundaries).
constexpr int64_t kAttentionQueryBlock = 128;
constexpr int64_t kAttentionKeyBlock = 512;

}  // namespace pyaudiok::cpu
