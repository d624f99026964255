// Fourier-domain cropping on the CPU: the S-dependent matrices of the separable form, and the
// fused mask/crop (and its adjoint) between torch's FFTs.
#include "fourier_crop.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace pyaudiok::cpu {
namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// The angle 2π (t/n_out − j/n_in), reduced exactly through the integer phase t·n_in − j·n_out
// modulo n_in·n_out: cos(f θ) then stays accurate for large f.
inline double phase_angle(int64_t t, int64_t j, int64_t n_in, int64_t n_out) {
  const int64_t period = n_in * n_out;
  int64_t p = (t * n_in - j * n_out) % period;
  if (p < 0) p += period;
  return kTwoPi * static_cast<double>(p) / static_cast<double>(period);
}

// w[f] = c_f / n_in (the weight of cos(f θ) per unit of mask[f]).
std::vector<double> bin_weights(int64_t K, int64_t n_in, int64_t n_out) {
  std::vector<double> w(K + 1, 2.0 / static_cast<double>(n_in));
  w[0] = 1.0 / static_cast<double>(n_in);
  if (n_out % 2 == 0 && K == n_out / 2) w[K] = 1.0 / static_cast<double>(n_in);
  return w;
}

inline int64_t source_row(int64_t r, int64_t H, int64_t H_out) { return r > (H_out - 1) / 2 ? r + H - H_out : r; }

}  // namespace

template <typename T>
void fourier_crop_matrix(const T* mask, int64_t K, int64_t n_in, int64_t n_out, int64_t t_begin, int64_t t_end,
                         T* A) {
  std::vector<double> w = bin_weights(K, n_in, n_out);
  for (int64_t f = 0; f <= K; ++f) w[f] *= static_cast<double>(mask[f]);
  for (int64_t t = t_begin; t < t_end; ++t) {
    for (int64_t j = 0; j < n_in; ++j) {
      const double theta = phase_angle(t, j, n_in, n_out);
      const double c = std::cos(theta), s = std::sin(theta);
      double re = 1.0, im = 0.0, acc = 0.0;  // (re, im) = e^{i f θ}, advanced by rotation
      for (int64_t f = 0; f <= K; ++f) {
        acc += w[f] * re;
        const double next = re * c - im * s;
        im = re * s + im * c;
        re = next;
      }
      A[t * n_in + j] = static_cast<T>(acc);
    }
  }
}

template <typename T>
void fourier_crop_matrix_backward(const T* grad, int64_t K, int64_t n_in, int64_t n_out, int64_t t_begin,
                                  int64_t t_end, double* partial) {
  const std::vector<double> w = bin_weights(K, n_in, n_out);
  std::vector<double> acc(K + 1, 0.0);
  for (int64_t t = t_begin; t < t_end; ++t) {
    for (int64_t j = 0; j < n_in; ++j) {
      const double g = static_cast<double>(grad[t * n_in + j]);
      if (g == 0.0) continue;
      const double theta = phase_angle(t, j, n_in, n_out);
      const double c = std::cos(theta), s = std::sin(theta);
      double re = 1.0, im = 0.0;
      for (int64_t f = 0; f <= K; ++f) {
        acc[f] += g * re;
        const double next = re * c - im * s;
        im = re * s + im * c;
        re = next;
      }
    }
  }
  for (int64_t f = 0; f <= K; ++f) partial[f] += w[f] * acc[f];
}

template <typename T>
void fourier_mask_crop(const T* X, const T* mask_rows, const T* mask_cols, int64_t H, int64_t F, int64_t H_out,
                       int64_t Kc, int64_t b_begin, int64_t b_end, T* Y) {
  for (int64_t b = b_begin; b < b_end; ++b) {
    for (int64_t r = 0; r < H_out; ++r) {
      const T* src = X + ((b * H + source_row(r, H, H_out)) * F) * 2;
      T* dst = Y + ((b * H_out + r) * Kc) * 2;
      const T mr = mask_rows[r];
      for (int64_t n = 0; n < Kc; ++n) {
        const T m = mr * mask_cols[n];
        dst[2 * n] = m * src[2 * n];
        dst[2 * n + 1] = m * src[2 * n + 1];
      }
    }
  }
}

template <typename T>
void fourier_mask_crop_backward(const T* G, const T* X, const T* mask_rows, const T* mask_cols, int64_t H,
                                int64_t F, int64_t H_out, int64_t Kc, int64_t b_begin, int64_t b_end, T* dX,
                                double* partial) {
  for (int64_t b = b_begin; b < b_end; ++b) {
    std::memset(dX + b * H * F * 2, 0, sizeof(T) * H * F * 2);
    for (int64_t r = 0; r < H_out; ++r) {
      const int64_t row = (b * H + source_row(r, H, H_out)) * F * 2;
      const T* g = G + ((b * H_out + r) * Kc) * 2;
      const T* x = X + row;
      T* dx = dX + row;
      double* e = partial + r * Kc;
      const T mr = mask_rows[r];
      for (int64_t n = 0; n < Kc; ++n) {
        const T m = mr * mask_cols[n];
        dx[2 * n] = m * g[2 * n];
        dx[2 * n + 1] = m * g[2 * n + 1];
        e[n] += static_cast<double>(g[2 * n]) * x[2 * n] + static_cast<double>(g[2 * n + 1]) * x[2 * n + 1];
      }
    }
  }
}

#define PYAUDIOK_INSTANTIATE(T)                                                                                 \
  template void fourier_crop_matrix<T>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, T*);             \
  template void fourier_crop_matrix_backward<T>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t,         \
                                                double*);                                                      \
  template void fourier_mask_crop<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                     int64_t, T*);                                                             \
  template void fourier_mask_crop_backward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                              int64_t, int64_t, int64_t, T*, double*);
PYAUDIOK_INSTANTIATE(float)
PYAUDIOK_INSTANTIATE(double)
#undef PYAUDIOK_INSTANTIATE

}  // namespace pyaudiok::cpu
