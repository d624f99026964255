// Schemas of every op the extension provides, in one place. Implementations are registered per
// dispatch key next to their kernels' bindings (rvq_cpu.cpp, rvq_cuda.cpp, ...).
#include <torch/library.h>

TORCH_LIBRARY(pyaudiok, m) {
  // Residual vector quantization (pyaudiok/ops/rvq.py documents the contract and the gradients).
  m.def("rvq_forward(Tensor x, Tensor codebooks, int n_q) -> (Tensor, Tensor, Tensor)");
  m.def("rvq_decode(Tensor codes, Tensor codebooks, Tensor? weights) -> Tensor");
  // Fourier-domain cropping (pyaudiok/ops/fourier_crop.py documents the contract and the gradients).
  m.def("fourier_crop_matrix(Tensor mask, int n_in, int n_out) -> Tensor");
  m.def("fourier_crop_matrix_backward(Tensor grad, Tensor mask) -> Tensor");
  m.def("fourier_mask_crop(Tensor spectrum, Tensor mask_rows, Tensor mask_cols) -> Tensor");
  m.def("fourier_mask_crop_backward(Tensor grad, Tensor spectrum, Tensor mask_rows, Tensor mask_cols) -> (Tensor, Tensor)");
  // Soft rank / soft sort by PAV (pyaudiok/ops/soft_rank.py).
  m.def("soft_sort_rank(Tensor x, float strength, bool kl, bool rank, bool descending) -> (Tensor, Tensor, Tensor)");
  m.def("soft_sort_rank_backward(Tensor grad, Tensor x, Tensor out, Tensor perm, Tensor blocks, float strength, "
        "bool kl, bool rank, bool descending) -> Tensor");
  // Batched k-means, Lloyd iterations from given centroids (pyaudiok/ops/kmeans.py).
  m.def("kmeans_lloyd(Tensor x, Tensor centroids, int n_iters) -> (Tensor, Tensor)");
  // SI-SDR matrix of every estimate/reference pair and its float64 statistics (pyaudiok/ops/si_sdr.py).
  m.def("si_sdr_matrix_cpu(Tensor estimates, Tensor references, bool zero_mean, float eps) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  // PIT's exhaustive assignment search: scores [B, N, M] -> best column per row [B, N] (int64).
  m.def("pit_assign_cpu(Tensor scores) -> Tensor");
  // The whole PIT SI-SDR without gradients: (mean SI-SDR [B], permutation [B, N], matrix [B, N, M]).
  m.def("pit_si_sdr_cpu(Tensor estimates, Tensor references, bool zero_mean, float eps) -> (Tensor, Tensor, Tensor)");
  // Batched log-domain Sinkhorn (pyaudiok/ops/sinkhorn.py).
  m.def("sinkhorn_forward(Tensor cost, Tensor log_a, Tensor log_b, float eps, int n_iters, float tol, bool history) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("sinkhorn_backward(Tensor grad_plan, Tensor grad_f, Tensor grad_g, Tensor cost, Tensor log_a, Tensor log_b, "
        "Tensor plan, Tensor iters, Tensor hist_f, Tensor hist_g, float eps) -> (Tensor, Tensor, Tensor)");
  // sPCEN (pyaudiok/ops/pcen.py documents the contract and the gradients).
  m.def("pcen_forward(Tensor E, Tensor params, float eps) -> (Tensor, Tensor)");
  m.def("pcen_backward(Tensor grad, Tensor E, Tensor y, Tensor params, float eps) -> (Tensor, Tensor)");
  // Bottom-right causal latent attention (pyaudiok/ops/latent_attention.py): (out, lse) and (dq, dk, dv).
  // query_block, key_block: the CPU kernels' tile (0: chosen by shape), for tuning.
  m.def("latent_attention_forward(Tensor q, Tensor k, Tensor v, Tensor? key_lengths, float scale, "
        "int query_block=0, int key_block=0) -> (Tensor, Tensor)");
  m.def("latent_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor? key_lengths, float scale, int query_block=0, int key_block=0) -> (Tensor, Tensor, Tensor)");
  // The pair when the keys and values are rows of per-head tables picked by token (the keys rotated on
  // their first rotary_dims channels): (out, lse), and (dq, dk of the rotated channels, dk_table, dv_table).
  m.def("latent_attention_tokens_forward(Tensor q, Tensor k, Tensor tokens, Tensor k_table, Tensor v_table, "
        "int rotary_dims, float scale, int query_block=0, int key_block=0) -> (Tensor, Tensor)");
  m.def("latent_attention_tokens_backward(Tensor grad, Tensor q, Tensor k, Tensor out, Tensor lse, Tensor tokens, "
        "Tensor k_table, Tensor v_table, int rotary_dims, float scale, int query_block=0, int key_block=0) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // Rotary-encoded rows (pyaudiok/ops/rotary.py): gathered from a table, out [B, H, T, d] and the rows'
  // gradient [R, d]; split from a projection into heads, [P, B, H, T, d] and the projection's gradient.
  m.def("gather_rotary_forward(Tensor rows, Tensor index, Tensor cos, Tensor sin, int dims) -> Tensor");
  m.def("gather_rotary_backward(Tensor grad, Tensor index, Tensor cos, Tensor sin, int dims, int num_rows) -> Tensor");
  m.def("split_heads_rotary_forward(Tensor x, int parts, int heads, Tensor cos, Tensor sin, int dims, int rotated) "
        "-> Tensor");
  m.def("split_heads_rotary_backward(Tensor grad, Tensor cos, Tensor sin, int dims, int rotated) -> Tensor");
  // DIVE's collar-aware VAD loss (pyaudiok/ops/collar_vad.py): (loss, kept frames [B, T] uint8, terms) and the
  // logits' gradient.
  m.def("collar_vad_forward(Tensor logits, Tensor reference, Tensor order, float collar_frames) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("collar_vad_backward(Tensor grad, Tensor logits, Tensor reference, Tensor order, Tensor keep, Tensor count) "
        "-> Tensor");
  // GroupNorm → per-item channel affine → PReLU (pyaudiok/ops/group_norm_film_prelu.py): (y, stats [B, G, 3])
  // and (grad_x, per-(b, c) sums for gain, offset and the PReLU weight).
  m.def("group_norm_film_prelu_forward(Tensor x, Tensor gain, Tensor offset, Tensor prelu_weight, int num_groups, "
        "float eps) -> (Tensor, Tensor)");
  m.def("group_norm_film_prelu_backward(Tensor grad, Tensor x, Tensor gain, Tensor offset, Tensor prelu_weight, "
        "Tensor stats, int num_groups) -> (Tensor, Tensor, Tensor, Tensor)");
}
