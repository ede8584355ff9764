// Kernels for NHWC float32 tensors in CPU inference, built and loaded by mmc2f/ops/native.py:
//
// mmc2f_dw_mul: a KxK depthwise convolution (stride 1, zero padding K / 2) times a second tensor,
//   out = (dw(x) + b) * v (Conv2Former's A * V). x, v, out: (N, H, W, C) contiguous; wt: (K, K, C),
//   the (C, 1, K, K) weight transposed; b: (C). The work is split over (image, block of VW
//   channels, band of rows). Each task copies its input rows, zero-padded, into a ring buffer of
//   K rows, and computes T outputs of a row at a time: T accumulators and the K weights of one
//   kernel row stay in registers while the T + K - 1 inputs stream by.
// mmc2f_dw_gelu: the same loop for a 3x3 kernel, out = GELU(dw(x) + b) (MSCAN's MLP) or, with
//   residual, x + GELU(dw(x) + b) (Conv2Former's MLP: h + GELU(pos(h))); the exact-erf GELU to
//   2e-7 |x|.
// mmc2f_channel_norm: out = (x - mean) / sqrt(var + eps) over the C channels of each pixel
//   (LayerNorm without affine), x and out (rows, C) contiguous.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

namespace {

template <int VW>
struct Vec;
template <>
struct Vec<8> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec<16> {
  typedef float type __attribute__((vector_size(64)));
};

template <int VW>
inline typename Vec<VW>::type load(const float* p) {
  typename Vec<VW>::type r;
  std::memcpy(&r, p, sizeof(r));
  return r;
}

template <int VW>
inline void store(float* p, typename Vec<VW>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// c[0] + c[1] t + ... + c[N - 1] t^(N - 1), by Horner's rule
template <int VW, int N>
inline typename Vec<VW>::type polynomial(typename Vec<VW>::type t, const float (&c)[N]) {
  typename Vec<VW>::type r = typename Vec<VW>::type{} + c[N - 1];
#pragma GCC unroll 8
  for (int i = N - 2; i >= 0; --i) r = r * t + c[i];
  return r;
}

const float kErfP[] = {1.1283790461659591f, 0.19230618543653871f, 0.052981535257788426f,
                       0.003844629907534276f, 0.00028618799919440097f, 2.0273251191143276e-06f};
const float kErfQ[] = {1.f, 0.50375881901980402f, 0.11487873995100643f, 0.015124275365902324f,
                       0.001181042046075614f, 3.7928954094191375e-05f};

// erf(z) = z P(z^2) / Q(z^2) on |z| <= 4 (erf(4) = 1 - 1.5e-8), P and Q of degree 5 with positive
// coefficients (an iteratively reweighted least-squares fit; |error| < 8e-8 in exact arithmetic,
// 2e-7 |x| in float for GELU(x) = x / 2 (1 + erf(x / sqrt 2))).
template <int VW>
inline typename Vec<VW>::type gelu(typename Vec<VW>::type x) {
  typedef typename Vec<VW>::type vec;
  const vec lim = vec{} + 4.f;
  vec z = x * 0.70710678118654752f;
  z = z < lim ? z : lim;
  z = z > -lim ? z : -lim;
  const vec t = z * z;
  const vec p = polynomial<VW>(t, kErfP), q = polynomial<VW>(t, kErfQ);
  const vec h = x * 0.5f;
  return h + h * (z * p / q);
}

// What follows the convolution: gets a tile's T accumulators (bias included), the tile's inputs
// at the output positions (the ring's centre row) and stores the first tn outputs, C apart.
struct MulBy {  // out = acc * v
  const float* v;
  float* out;
  template <int VW, int T>
  void apply(typename Vec<VW>::type* acc, const float*, size_t o, int C, int tn) const {
    for (int t = 0; t < tn; ++t, o += C) store<VW>(out + o, acc[t] * load<VW>(v + o));
  }
};

template <bool Residual>
struct Gelu {  // out = GELU(acc), plus x with Residual
  float* out;
  template <int VW, int T>
  void apply(typename Vec<VW>::type* acc, const float* center, size_t o, int C, int tn) const {
    // all T at once: independent GELUs interleave instead of waiting on one chain
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t)
      acc[t] = Residual ? load<VW>(center + t * VW) + gelu<VW>(acc[t]) : gelu<VW>(acc[t]);
    for (int t = 0; t < tn; ++t, o += C) store<VW>(out + o, acc[t]);
  }
};

template <int VW, int K, int T, class Epilogue>
void plane(const float* x, const float* wt, const float* bias, int H, int W, int C, int n,
           int c0, int h0, int h1, float* ring, const Epilogue& epi) {
  typedef typename Vec<VW>::type vec;
  const int P = K / 2, Wp = W + K - 1 + T;
  std::memset(ring, 0, sizeof(float) * VW * Wp * K);
  const float* xn = x + (size_t)n * H * W * C;
  auto slot = [&](int row) { return ring + (size_t)((row % K + K) % K) * Wp * VW; };
  auto load_row = [&](int row) {
    float* s = slot(row) + P * VW;
    if (row < 0 || row >= H) {
      std::memset(s, 0, sizeof(float) * VW * W);
      return;
    }
    const float* src = xn + (size_t)row * W * C + c0;
    for (int w = 0; w < W; ++w) store<VW>(s + w * VW, load<VW>(src + (size_t)w * C));
  };
  for (int row = h0 - P; row < h0 + P; ++row) load_row(row);
  const vec b = load<VW>(bias + c0);
  for (int ho = h0; ho < h1; ++ho) {
    load_row(ho + P);
    // kernel rows that meet the image (the others would add zeros)
    const int i0 = ho < P ? P - ho : 0, i1 = ho + P >= H ? H + P - ho : K;
    for (int w0 = 0; w0 < W; w0 += T) {
      vec acc[T];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) acc[t] = b;
      for (int i = i0; i < i1; ++i) {
        const float* s = slot(ho - P + i) + w0 * VW;
        const float* wi = wt + (size_t)i * K * C + c0;
        vec wv[K];
#pragma GCC unroll 16
        for (int j = 0; j < K; ++j) wv[j] = load<VW>(wi + (size_t)j * C);
#pragma GCC unroll 32
        for (int q = 0; q < T + K - 1; ++q) {
          const vec xv = load<VW>(s + q * VW);
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) {
            const int j = q - t;
            if (j >= 0 && j < K) acc[t] += xv * wv[j];
          }
        }
      }
      epi.template apply<VW, T>(acc, slot(ho) + (P + w0) * VW,
                                (((size_t)n * H + ho) * W + w0) * C + c0, C,
                                W - w0 < T ? W - w0 : T);
    }
  }
}

template <int VW, int K, class Epilogue>
void run(const float* x, const float* wt, const float* bias, int N, int H, int W, int C,
         int threads, const Epilogue& epi) {
  const int blocks = C / VW;
  const bool by7 = W % 8 != 0 && W % 7 == 0;  // tiles of 7 for widths 7, 14, 28, ...
  // bands of rows too when images x channel blocks would leave threads idle (each band loads
  // K - 1 rows twice)
  const int want = 4 * threads, tasks = N * blocks;
  const int bands = tasks >= want ? 1 : std::min((want + tasks - 1) / tasks, std::max(1, H / K));
  const int band = (H + bands - 1) / bands;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> ring((size_t)VW * (W + K - 1 + 8) * K);
#pragma omp for collapse(3) schedule(static)
    for (int n = 0; n < N; ++n)
      for (int cb = 0; cb < blocks; ++cb)
        for (int r = 0; r < bands; ++r) {
          const int h0 = r * band, h1 = std::min(H, h0 + band);
          if (h0 >= h1) continue;
          if (by7)
            plane<VW, K, 7>(x, wt, bias, H, W, C, n, cb * VW, h0, h1, ring.data(), epi);
          else
            plane<VW, K, 8>(x, wt, bias, H, W, C, n, cb * VW, h0, h1, ring.data(), epi);
        }
  }
}

template <int VW>
int dispatch_mul(const float* x, const float* wt, const float* bias, const float* v, float* out,
                 int N, int H, int W, int C, int K, int threads) {
  const MulBy epi{v, out};
  switch (K) {
    case 5: run<VW, 5>(x, wt, bias, N, H, W, C, threads, epi); return 0;
    case 7: run<VW, 7>(x, wt, bias, N, H, W, C, threads, epi); return 0;
    case 9: run<VW, 9>(x, wt, bias, N, H, W, C, threads, epi); return 0;
    case 11: run<VW, 11>(x, wt, bias, N, H, W, C, threads, epi); return 0;
    default: return 1;
  }
}

template <bool Residual>
int dispatch_gelu(const float* x, const float* wt, const float* bias, float* out, int N, int H,
                  int W, int C, int threads) {
  const Gelu<Residual> epi{out};
  if (C % 16 == 0)
    run<16, 3>(x, wt, bias, N, H, W, C, threads, epi);
  else
    run<8, 3>(x, wt, bias, N, H, W, C, threads, epi);
  return 0;
}

}  // namespace

// All return 0 when done, 1 when there is no kernel for the arguments (C % 8 != 0, K not in
// 5, 7, 9, 11 for dw_mul or not 3 for dw_gelu): the caller falls back.
extern "C" int mmc2f_dw_mul(const float* x, const float* wt, const float* bias, const float* v,
                            float* out, int N, int H, int W, int C, int K, int threads) {
  if (C % 16 == 0) return dispatch_mul<16>(x, wt, bias, v, out, N, H, W, C, K, threads);
  if (C % 8 == 0) return dispatch_mul<8>(x, wt, bias, v, out, N, H, W, C, K, threads);
  return 1;
}

extern "C" int mmc2f_dw_gelu(const float* x, const float* wt, const float* bias, float* out,
                             int N, int H, int W, int C, int K, int residual, int threads) {
  if (K != 3 || C % 8) return 1;
  return residual ? dispatch_gelu<true>(x, wt, bias, out, N, H, W, C, threads)
                  : dispatch_gelu<false>(x, wt, bias, out, N, H, W, C, threads);
}

extern "C" int mmc2f_channel_norm(const float* x, float* out, long rows, int C, float eps,
                                  int threads) {
  typedef Vec<8>::type vec;
  if (C % 8) return 1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    vec sum = {}, sq = {};
    for (int c = 0; c < C; c += 8) sum += load<8>(xr + c);
    float mean = 0.f, var = 0.f;
    for (int i = 0; i < 8; ++i) mean += sum[i];
    mean /= C;
    for (int c = 0; c < C; c += 8) {
      const vec d = load<8>(xr + c) - mean;
      sq += d * d;
    }
    for (int i = 0; i < 8; ++i) var += sq[i];
    const float rstd = 1.f / std::sqrt(var / C + eps);
    for (int c = 0; c < C; c += 8) store<8>(out + r * C + c, (load<8>(xr + c) - mean) * rstd);
  }
  return 0;
}
