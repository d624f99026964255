// CPU implementations of pyaudiok::latent_attention_forward / _backward: checks, allocation and the
// split into tasks here (torch's intra-op thread pool), the work in csrc/cpu/latent_attention.cpp
// with ATen's CPU BLAS as its GEMM.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../cpu/latent_attention.h"
#include "checks.h"

namespace pyaudiok::bindings {
namespace {

// The GEMM: the Fortran BLAS that libtorch_cpu exports (MKL or OpenBLAS, 32-bit sizes), the same
// routine ATen's own CPU matmuls end in; resolved weakly, so that a torch without it falls back to
// at::addmm_out on views (a few microseconds more per call). PYAUDIOK_ATTENTION_GEMM=aten forces
// the fallback (the tests run both).
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*) __attribute__((weak));
}

bool use_aten_gemm() {
  static const bool forced = [] {
    const char* v = std::getenv("PYAUDIOK_ATTENTION_GEMM");
    return v != nullptr && std::string(v) == "aten";
  }();
  return forced || sgemm_ == nullptr || dgemm_ == nullptr;
}

template <typename T>
void aten_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<T*>(p), {trans ? cols : rows, trans ? rows : cols}, {ld, 1}, opts);
    return trans ? t.t() : t;
  };
  at::Tensor out = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  at::addmm_out(out, out, view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b), beta, alpha);
}

// Row-major C = alpha·op(A)·op(B) + beta·C is column-major Cᵀ = alpha·op(B)ᵀ·op(A)ᵀ + beta·Cᵀ.
template <typename T>
void blas_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int la = static_cast<int>(lda), lb = static_cast<int>(ldb), lc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&tb, &ta, &ni, &mi, &ki, &alpha, b, &lb, a, &la, &beta, c, &lc);
  } else {
    dgemm_(&tb, &ta, &ni, &mi, &ki, &alpha, b, &lb, a, &la, &beta, c, &lc);
  }
}

template <typename T>
cpu::GemmFn<T> gemm_fn() {
  return use_aten_gemm() ? &aten_gemm<T> : &blas_gemm<T>;
}

struct Dims {
  int64_t B, H, N, M, D;
};

// Whether each (batch, head) of t[B, H, M, D] is M contiguous rows of D values; the heads and the
// items may lie anywhere (e.g. the first M rows of a larger cache).
bool rows_contiguous(const at::Tensor& t) {
  return (t.size(3) == 1 || t.stride(3) == 1) && (t.size(2) <= 1 || t.stride(2) == t.size(3));
}

// The first of the M rows of (batch·head) bh of t[B, H, M, D].
template <typename T>
const T* head_rows(const at::Tensor& t, int64_t bh) {
  const int64_t H = t.size(1);
  return t.data_ptr<T>() + (bh / H) * t.stride(0) + (bh % H) * t.stride(1);
}

// `strided_kv`: k and v need only rows_contiguous (the forward reads them head by head).
Dims check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::optional<at::Tensor>& key_lengths, bool strided_kv = false) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "latent_attention (cpu): q, k, v must be [B, H, *, D]");
  const Dims d{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == d.B && k.size(1) == d.H && k.size(3) == d.D && d.M >= d.N,
              "latent_attention (cpu): k, v must be [B, H, M >= N, D] matching q");
  for (const at::Tensor* t : {&q, &k, &v}) {
    const bool layout_ok = t == &q || !strided_kv ? t->is_contiguous() : rows_contiguous(*t);
    TORCH_CHECK(t->is_cpu() && layout_ok && t->scalar_type() == q.scalar_type() &&
                    (q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble),
                "latent_attention (cpu): q, k, v must be contiguous float32/64 CPU tensors of one dtype (the "
                "forward's k and v: contiguous rows)");
  }
  if (key_lengths)
    TORCH_CHECK(key_lengths->is_cpu() && key_lengths->scalar_type() == at::kLong && key_lengths->dim() == 1 &&
                    key_lengths->size(0) == d.B,
                "latent_attention (cpu): key_lengths must be an int64 CPU tensor of shape [B]");
  return d;
}

std::vector<int64_t> lengths_of(const std::optional<at::Tensor>& key_lengths, const Dims& d) {
  std::vector<int64_t> lengths(d.B, d.M);
  if (key_lengths) {
    const at::Tensor kl = key_lengths->contiguous();
    for (int64_t b = 0; b < d.B; ++b) {
      lengths[b] = kl.data_ptr<int64_t>()[b];
      TORCH_CHECK(lengths[b] >= 0 && lengths[b] <= d.M, "latent_attention (cpu): key_lengths must lie in [0, M]");
    }
  }
  return lengths;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The kernels' tile by shape, from in-process timings of each choice on a Zen 4 core pair
// (bench/results/2026-11-27_cpu_attention_tiles.txt):
// - Where the diagonal's masked share of a tile matters (M < 2N: square causal attention), queries
//   go in blocks of N/8 within [32, 128]: at N = M = 256 blocks of 32 ran the forward 13 % and the
//   backward 18 % faster than 128; at N = M = 1024 all were within 4 %.
// - With the keys mostly before the queries (M >= 2N), the forward's 256 × 256 tile ran 3-5 % faster
//   than 128 × 512 (N = 256, M = 4224; N = 1024, M = 16 384), where enough (batch·head, query
//   block) tasks remain for the threads; the backward was the same with any tile.
struct Tile {
  int64_t queries, keys;
};

int64_t diagonal_query_block(const Dims& d) { return std::clamp<int64_t>(d.N / 8, 32, cpu::kAttentionQueryBlock); }

Tile forward_tile(const Dims& d) {
  if (d.M < 2 * d.N) return {diagonal_query_block(d), cpu::kAttentionKeyBlock};
  const bool enough_tasks = d.B * d.H * ceil_div(d.N, 256) >= 2 * at::get_num_threads();
  return enough_tasks ? Tile{256, 256} : Tile{cpu::kAttentionQueryBlock, cpu::kAttentionKeyBlock};
}

Tile backward_tile(const Dims& d) {
  return {d.M < 2 * d.N ? diagonal_query_block(d) : cpu::kAttentionQueryBlock, cpu::kAttentionKeyBlock};
}

// The tile the arguments give (> 0, for tuning), else the shape's; no taller than the queries nor wider
// than the keys there are (a larger block holds the same ones, and the kernels' scratch tiles are sized
// by the block).
cpu::AttentionShape shape_of(const Dims& d, int64_t length, Tile by_shape, int64_t query_block, int64_t key_block) {
  check_block_size(query_block, "latent_attention (cpu)", "query_block");
  check_block_size(key_block, "latent_attention (cpu)", "key_block");
  const int64_t queries = query_block > 0 ? query_block : by_shape.queries;
  const int64_t keys = key_block > 0 ? key_block : by_shape.keys;
  return {d.N, d.D, length, std::min(queries, std::max<int64_t>(1, d.N)), std::min(keys, std::max<int64_t>(1, d.M))};
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               const std::optional<at::Tensor>& key_lengths, double scale,
                                               int64_t query_block, int64_t key_block) {
  const Dims d = check_inputs(q, k, v, key_lengths, /*strided_kv=*/true);
  const std::vector<int64_t> lengths = lengths_of(key_lengths, d);
  at::Tensor out = at::empty_like(q), lse = at::empty({d.B, d.H, d.N}, q.options());
  // Tasks: (batch·head, block of queries); a block is independent of the others.
  const Tile tile = forward_tile(d);
  const int64_t qb = shape_of(d, 0, tile, query_block, key_block).query_block;
  const int64_t q_blocks = ceil_div(d.N, qb), tasks = d.B * d.H * q_blocks;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "latent_attention_forward", [&] {
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = t / q_blocks, j0 = (t % q_blocks) * qb;
        const cpu::AttentionShape s = shape_of(d, lengths[bh / d.H], tile, query_block, key_block);
        cpu::latent_attention_forward<scalar_t>(
            q.data_ptr<scalar_t>() + bh * d.N * d.D, head_rows<scalar_t>(k, bh), head_rows<scalar_t>(v, bh), s,
            static_cast<scalar_t>(scale), j0, std::min(d.N, j0 + qb), gemm_fn<scalar_t>(),
            out.data_ptr<scalar_t>() + bh * d.N * d.D, lse.data_ptr<scalar_t>() + bh * d.N);
      }
    });
  });
  return {out, lse};
}

// Checks of a backward's grad, out and lse against q; grad made contiguous and delta = Σ_d grad·out.
std::tuple<at::Tensor, at::Tensor> backward_grad_delta(const at::Tensor& grad_in, const at::Tensor& q,
                                                       const at::Tensor& out, const at::Tensor& lse, const Dims& d,
                                                       const char* op) {
  TORCH_CHECK(grad_in.sizes() == q.sizes() && out.sizes() == q.sizes() && out.is_contiguous() &&
                  lse.sizes() == at::IntArrayRef({d.B, d.H, d.N}) && lse.is_contiguous() &&
                  grad_in.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type() &&
                  lse.scalar_type() == q.scalar_type(),
              op, " (cpu): grad and out must be q's shape, lse [B, H, N], all of q's dtype");
  at::Tensor grad = grad_in.contiguous();
  return {grad, (grad * out).sum(-1)};
}

// The backward's tasks: (batch·head, range of key blocks), each owning its keys' dk (and dv). With
// fewer batch·heads than threads the keys are split further, each range adding its dq share to a
// buffer of its own.
struct KeySplits {
  int64_t key_block, count, blocks_per_split;

  KeySplits(const Dims& d, int64_t kb) : key_block(kb) {
    const int64_t k_blocks = std::max<int64_t>(1, ceil_div(d.M, kb));
    count = std::min(k_blocks, ceil_div(at::get_num_threads(), std::max<int64_t>(1, d.B * d.H)));
    blocks_per_split = ceil_div(k_blocks, count);
  }

  // Keys [begin, end) of split `split`.
  std::pair<int64_t, int64_t> keys(int64_t split, int64_t M) const {
    const int64_t width = blocks_per_split * key_block;
    return {std::min(M, split * width), std::min(M, (split + 1) * width)};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_in, const at::Tensor& q,
                                                            const at::Tensor& k, const at::Tensor& v,
                                                            const at::Tensor& out, const at::Tensor& lse,
                                                            const std::optional<at::Tensor>& key_lengths,
                                                            double scale, int64_t query_block, int64_t key_block) {
  const Dims d = check_inputs(q, k, v, key_lengths);
  at::Tensor grad, delta;  // named tensors, not structured bindings: the lambdas below capture them
  std::tie(grad, delta) = backward_grad_delta(grad_in, q, out, lse, d, "latent_attention_backward");
  const std::vector<int64_t> lengths = lengths_of(key_lengths, d);
  const Tile tile = backward_tile(d);
  const KeySplits split_of(d, shape_of(d, 0, tile, query_block, key_block).key_block);
  const int64_t BH = d.B * d.H, splits = split_of.count;
  at::Tensor dq_parts = at::zeros({splits, d.B, d.H, d.N, d.D}, q.options());
  at::Tensor dk = at::empty_like(k), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "latent_attention_backward", [&] {
    at::parallel_for(0, BH * splits, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = t / splits, split = t % splits;
        const auto [k_begin, k_end] = split_of.keys(split, d.M);
        const cpu::AttentionShape s = shape_of(d, lengths[bh / d.H], tile, query_block, key_block);
        const int64_t qo = bh * d.N * d.D, ko = bh * d.M * d.D;
        cpu::latent_attention_backward<scalar_t>(
            grad.data_ptr<scalar_t>() + qo, q.data_ptr<scalar_t>() + qo, k.data_ptr<scalar_t>() + ko,
            v.data_ptr<scalar_t>() + ko, lse.data_ptr<scalar_t>() + bh * d.N, delta.data_ptr<scalar_t>() + bh * d.N,
            s, static_cast<scalar_t>(scale), k_begin, k_end, gemm_fn<scalar_t>(),
            dq_parts.data_ptr<scalar_t>() + split * BH * d.N * d.D + qo, dk.data_ptr<scalar_t>() + ko,
            dv.data_ptr<scalar_t>() + ko);
      }
    });
  });
  at::Tensor dq = splits == 1 ? dq_parts[0] : dq_parts.sum(0);
  return {dq, dk, dv};
}

// Checks of the token tables' arguments; their V.
int64_t check_token_tables(const Dims& d, const at::Tensor& q, const at::Tensor& tokens, const at::Tensor& k_table,
                           const at::Tensor& v_table, int64_t rotary_dims) {
  const int64_t V = k_table.dim() == 3 ? k_table.size(1) : 0;
  TORCH_CHECK(tokens.is_cpu() && tokens.scalar_type() == at::kLong && tokens.is_contiguous() &&
                  tokens.sizes() == at::IntArrayRef({d.B, d.M}),
              "latent_attention (cpu, token tables): tokens must be a contiguous int64 CPU tensor [B, M]");
  for (const at::Tensor* t : {&k_table, &v_table})
    TORCH_CHECK(t->is_cpu() && t->is_contiguous() && t->scalar_type() == q.scalar_type() &&
                    t->sizes() == at::IntArrayRef({d.H, V, d.D}) && V >= 1,
                "latent_attention (cpu, token tables): k_table, v_table must be contiguous [H, V, D] of q's dtype");
  TORCH_CHECK(rotary_dims >= 0 && rotary_dims <= d.D,
              "latent_attention (cpu, token tables): rotary_dims must lie in [0, D]");
  check_values_in(tokens, 0, V, "latent_attention (cpu, token tables)", "tokens");
  return V;
}

// The forward with keys and values that are rows of per-head tables k_table, v_table[H, V, D] picked
// by tokens[B, M] (keys rotated on their first rotary_dims channels; k: the gathered, rotated keys,
// of which only those channels are read): (out, lse) as forward_cpu's, M >= N >= 1 and no key lengths.
std::tuple<at::Tensor, at::Tensor> forward_tokens_cpu(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& tokens, const at::Tensor& k_table,
                                                      const at::Tensor& v_table, int64_t rotary_dims, double scale,
                                                      int64_t query_block, int64_t key_block) {
  const Dims d = check_inputs(q, k, k, std::nullopt);
  const int64_t V = check_token_tables(d, q, tokens, k_table, v_table, rotary_dims);
  at::Tensor out = at::empty_like(q), lse = at::empty({d.B, d.H, d.N}, q.options());
  const Tile tile = forward_tile(d);
  const cpu::AttentionShape shape = shape_of(d, d.M, tile, query_block, key_block);
  const int64_t qb = shape.query_block, q_blocks = ceil_div(d.N, qb), tasks = d.B * d.H * q_blocks;
  const cpu::TokenTables tables{V, rotary_dims};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "latent_attention_tokens_forward", [&] {
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = t / q_blocks, j0 = (t % q_blocks) * qb, to = (bh % d.H) * V * d.D;
        cpu::latent_attention_forward_tokens<scalar_t>(
            q.data_ptr<scalar_t>() + bh * d.N * d.D, k.data_ptr<scalar_t>() + bh * d.M * d.D,
            tokens.data_ptr<int64_t>() + (bh / d.H) * d.M, k_table.data_ptr<scalar_t>() + to,
            v_table.data_ptr<scalar_t>() + to, tables, shape, static_cast<scalar_t>(scale),
            j0, std::min(d.N, j0 + qb), gemm_fn<scalar_t>(), out.data_ptr<scalar_t>() + bh * d.N * d.D,
            lse.data_ptr<scalar_t>() + bh * d.N);
      }
    });
  });
  return {out, lse};
}

// The backward with keys and values that are rows of per-head tables k_table, v_table[H, V, D] picked
// by tokens[B, M] (keys rotated on their first rotary_dims channels; k: the gathered, rotated keys
// the forward used). Returns dq, dk (rotated channels; zero elsewhere), and the tables' shares
// dk_table (unrotated channels), dv_table [H, V, D]. The tasks are backward_cpu's (KeySplits); each
// (range of keys, batch item) adds its table shares into buffers of its own, summed at the end.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_tokens_cpu(
    const at::Tensor& grad_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& tokens, const at::Tensor& k_table, const at::Tensor& v_table, int64_t rotary_dims,
    double scale, int64_t query_block, int64_t key_block) {
  const Dims d = check_inputs(q, k, k, std::nullopt);
  const int64_t V = check_token_tables(d, q, tokens, k_table, v_table, rotary_dims);
  at::Tensor grad, delta;  // named tensors, not structured bindings: the lambdas below capture them
  std::tie(grad, delta) = backward_grad_delta(grad_in, q, out, lse, d, "latent_attention_tokens_backward");
  const cpu::AttentionShape shape = shape_of(d, d.M, backward_tile(d), query_block, key_block);
  const KeySplits split_of(d, shape.key_block);
  const int64_t BH = d.B * d.H, splits = split_of.count;
  at::Tensor dq_parts = at::zeros({splits, d.B, d.H, d.N, d.D}, q.options());
  at::Tensor table_parts = at::zeros({2, splits, d.B, d.H, V, d.D}, q.options());  // dk_table, dv_table
  at::Tensor dk = at::empty_like(k);
  const cpu::TokenTables tables{V, rotary_dims};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "latent_attention_tokens_backward", [&] {
    at::parallel_for(0, BH * splits, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t bh = t / splits, split = t % splits, h = bh % d.H;
        const auto [k_begin, k_end] = split_of.keys(split, d.M);
        const int64_t qo = bh * d.N * d.D, ko = bh * d.M * d.D, to = h * V * d.D;
        const int64_t share = (split * BH + bh) * V * d.D, dv_share = splits * BH * V * d.D + share;
        scalar_t* parts = table_parts.data_ptr<scalar_t>();
        cpu::latent_attention_backward_tokens<scalar_t>(
            grad.data_ptr<scalar_t>() + qo, q.data_ptr<scalar_t>() + qo, k.data_ptr<scalar_t>() + ko,
            tokens.data_ptr<int64_t>() + (bh / d.H) * d.M, k_table.data_ptr<scalar_t>() + to,
            v_table.data_ptr<scalar_t>() + to, tables, lse.data_ptr<scalar_t>() + bh * d.N,
            delta.data_ptr<scalar_t>() + bh * d.N, shape, static_cast<scalar_t>(scale), k_begin, k_end,
            gemm_fn<scalar_t>(), dq_parts.data_ptr<scalar_t>() + split * BH * d.N * d.D + qo,
            dk.data_ptr<scalar_t>() + ko, parts + share, parts + dv_share);
      }
    });
  });
  at::Tensor dq = splits == 1 ? dq_parts[0] : dq_parts.sum(0);
  const at::Tensor table_grads = table_parts.sum({1, 2});  // [2, H, V, D]
  return {dq, dk, table_grads[0], table_grads[1]};
}

}  // namespace
}  // namespace pyaudiok::bindings

TORCH_LIBRARY_IMPL(pyaudiok, CPU, m) {
  m.impl("latent_attention_forward", &pyaudiok::bindings::forward_cpu);
  m.impl("latent_attention_backward", &pyaudiok::bindings::backward_cpu);
  m.impl("latent_attention_tokens_forward", &pyaudiok::bindings::forward_tokens_cpu);
  m.impl("latent_attention_tokens_backward", &pyaudiok::bindings::backward_tokens_cpu);
}
