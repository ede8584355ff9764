// Kernels for NHWC float32 tensors in CPU inference, built and loaded by mmc2f/ops/native.py:
//
// mmc2f_dw_mul: a KxK depthwise convolution (stride 1, zero padding K / 2) times a second tensor,
//   out = (dw(x) + b) * v (Conv2Former's A * V). x, v, out: (N, H, W, C) contiguous; wt: (K, K, C),
//   the (C, 1, K, K) weight transposed; b: (C). The work is split over (image, block of VW
//   channels). Each task copies its input rows, zero-padded, into a ring buffer of K rows, and
//   computes T outputs of a row at a time: T accumulators and the K weights of one kernel row stay
//   in registers while the T + K - 1 inputs stream by.
// mmc2f_channel_norm: out = (x - mean) / sqrt(var + eps) over the C channels of each pixel
//   (LayerNorm without affine), x and out (rows, C) contiguous.
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

template <int VW, int K, int T>
void plane(const float* x, const float* wt, const float* bias, const float* v, float* out,
           int H, int W, int C, int n, int c0, float* ring) {
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
  for (int row = -P; row < P; ++row) load_row(row);
  const vec b = load<VW>(bias + c0);
  for (int ho = 0; ho < H; ++ho) {
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
      size_t o = (((size_t)n * H + ho) * W + w0) * C + c0;
      for (int t = 0; t < T && w0 + t < W; ++t, o += C)
        store<VW>(out + o, acc[t] * load<VW>(v + o));
    }
  }
}

template <int VW, int K>
void run(const float* x, const float* wt, const float* bias, const float* v, float* out, int N,
         int H, int W, int C, int threads) {
  const int blocks = C / VW;
  const bool by7 = W % 8 != 0 && W % 7 == 0;  // tiles of 7 for widths 7, 14, 28, ...
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> ring((size_t)VW * (W + K - 1 + 8) * K);
#pragma omp for collapse(2) schedule(static)
    for (int n = 0; n < N; ++n)
      for (int cb = 0; cb < blocks; ++cb) {
        if (by7)
          plane<VW, K, 7>(x, wt, bias, v, out, H, W, C, n, cb * VW, ring.data());
        else
          plane<VW, K, 8>(x, wt, bias, v, out, H, W, C, n, cb * VW, ring.data());
      }
  }
}

template <int VW>
int dispatch(const float* x, const float* wt, const float* bias, const float* v, float* out,
             int N, int H, int W, int C, int K, int threads) {
  switch (K) {
    case 5: run<VW, 5>(x, wt, bias, v, out, N, H, W, C, threads); return 0;
    case 7: run<VW, 7>(x, wt, bias, v, out, N, H, W, C, threads); return 0;
    case 9: run<VW, 9>(x, wt, bias, v, out, N, H, W, C, threads); return 0;
    case 11: run<VW, 11>(x, wt, bias, v, out, N, H, W, C, threads); return 0;
    default: return 1;
  }
}

}  // namespace

// Both return 0 when done, 1 when there is no kernel for the arguments (C % 8 != 0, K not in
// 5, 7, 9, 11): the caller falls back.
extern "C" int mmc2f_dw_mul(const float* x, const float* wt, const float* bias, const float* v,
                            float* out, int N, int H, int W, int C, int K, int threads) {
  if (C % 16 == 0) return dispatch<16>(x, wt, bias, v, out, N, H, W, C, K, threads);
  if (C % 8 == 0) return dispatch<8>(x, wt, bias, v, out, N, H, W, C, K, threads);
  return 1;
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
