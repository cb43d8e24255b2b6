// The whole LSTM / GRU time loop in one XLA:CPU custom call (backend "fused_cpu").
//
// At small batch the time of an XLA loop is per-iteration overhead: every step launches a
// handful of thunks (the matmul, two element-wise fusions, the output updates, the loop
// counter), each costing about a microsecond. Here one call runs all T steps: per step a
// (N, H) x (H, 4H) matmul accumulated in registers over contiguous rows of W (vectorised by
// the compiler), and the gate maths with a vectorisable rational tanh (the approximation
// XLA:CPU and Eigen use for float32). Single-threaded: meant for small batches.
//
// Forward  (px, W, h0, c0, lengths) -> (ys, gates, c_prev, hT, cT)
// Backward (Wt, gates, c_prev, dys, dhT, dcT, lengths) -> (dpx, dh0, dc0)
// with the conventions of rnnjax/cells/lstm.py (lstm_pointwise): gates (i, f, g, o) activated, c_prev
// the incoming cell state, steps t >= lengths[n] freeze the carry and output zeros. dW is one
// matmul in JAX after the backward call (Σ_t h_{t-1}ᵀ dpx_t).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include <xmmintrin.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Flush denormals to zero while a kernel runs (as XLA:CPU's own threads do): BPTT gradients
// decay through denormal range, where x86 arithmetic is ~100x slower.
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
};

// tanh as a 13/6-degree rational function on [-7.9, 7.9] (Eigen's ptanh_float).
inline float fast_tanh(float x) {
  const float clamp = 7.90531110763549805f;
  x = std::min(clamp, std::max(-clamp, x));
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p / q;
}

inline float fast_sigmoid(float x) { return 0.5f * fast_tanh(0.5f * x) + 0.5f; }

// out[j] = base[j] + Σ_k v[k] · M[k·ld + j] for j < cols (base may be null: zeros). Columns go
// in blocks of 64 accumulated in registers, so M is streamed once and out written once. The
// vectors are as wide as the CPU's registers (-march=native): a GCC vector wider than the
// hardware's is lowered through memory, ~5x slower (measured on an AVX2-only CPU).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;  // one AVX-512 register
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;  // one AVX / AVX2 register
#else
constexpr int64_t kLanes = 4;  // one SSE or NEON register
#endif
typedef float vreg __attribute__((vector_size(4 * kLanes)));

inline void vec_mat(const float* __restrict__ v, int64_t K, const float* __restrict__ M,
                    int64_t ld, int64_t cols, const float* __restrict__ base,
                    float* __restrict__ out) {
  constexpr int64_t C = 64, R = C / kLanes;
  int64_t j0 = 0;
  for (; j0 + C <= cols; j0 += C) {
    vreg acc[R];
    for (int64_t r = 0; r < R; ++r) {
      acc[r] = vreg{};
      if (base) std::memcpy(&acc[r], base + j0 + kLanes * r, sizeof(vreg));
    }
    for (int64_t k = 0; k < K; ++k) {
      const float* m = M + k * ld + j0;
      for (int64_t r = 0; r < R; ++r) {
        vreg row;
        std::memcpy(&row, m + kLanes * r, sizeof(vreg));
        acc[r] += v[k] * row;
      }
    }
    for (int64_t r = 0; r < R; ++r) std::memcpy(out + j0 + kLanes * r, &acc[r], sizeof(vreg));
  }
  for (; j0 < cols; ++j0) {
    float acc = base ? base[j0] : 0.0f;
    for (int64_t k = 0; k < K; ++k) acc += v[k] * M[k * ld + j0];
    out[j0] = acc;
  }
}

ffi::Error LstmForward(ffi::Buffer<ffi::F32> px, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                       ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> gates, ffi::ResultBuffer<ffi::F32> c_prev,
                       ffi::ResultBuffer<ffi::F32> h_out, ffi::ResultBuffer<ffi::F32> c_out) {
  FlushDenormals flush;
  const auto dims = px.dimensions();
  if (dims.size() != 3 || dims[2] % 4 != 0) {
    return ffi::Error::InvalidArgument("px must be (T, N, 4H)");
  }
  const int64_t T = dims[0], N = dims[1], G = dims[2], H = G / 4;
  const float* P = px.typed_data();
  const float* W = w.typed_data();
  const int32_t* len = lengths.typed_data();
  float* Y = ys->typed_data();
  float* A = gates->typed_data();
  float* CP = c_prev->typed_data();
  float* h = h_out->typed_data();
  float* c = c_out->typed_data();
  std::copy(h0.typed_data(), h0.typed_data() + N * H, h);
  std::copy(c0.typed_data(), c0.typed_data() + N * H, c);
  std::vector<float> z(N * G);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {  // z = px_t + h_{t-1} W
      vec_mat(h + n * H, H, W, G, G, P + (t * N + n) * G, z.data() + n * G);
    }
    for (int64_t n = 0; n < N; ++n) {
      float* __restrict__ a = A + (t * N + n) * G;
      float* __restrict__ cp = CP + (t * N + n) * H;
      float* __restrict__ y = Y + (t * N + n) * H;
      float* __restrict__ hn = h + n * H;
      float* __restrict__ cn = c + n * H;
      std::copy(cn, cn + H, cp);
      if (t >= len[n]) {  // past the length: carry frozen, output zero
        std::fill(a, a + G, 0.0f);
        std::fill(y, y + H, 0.0f);
        continue;
      }
      const float* __restrict__ zn = z.data() + n * G;
      for (int64_t j = 0; j < 2 * H; ++j) a[j] = fast_sigmoid(zn[j]);  // i, f
      for (int64_t j = 2 * H; j < 3 * H; ++j) a[j] = fast_tanh(zn[j]);  // g
      for (int64_t j = 3 * H; j < G; ++j) a[j] = fast_sigmoid(zn[j]);  // o
#pragma GCC ivdep
      for (int64_t j = 0; j < H; ++j) {
        const float cj = a[H + j] * cn[j] + a[j] * a[2 * H + j];
        cn[j] = cj;
        hn[j] = a[3 * H + j] * fast_tanh(cj);
        y[j] = hn[j];
      }
    }
  }
  return ffi::Error::Success();
}

ffi::Error LstmBackward(ffi::Buffer<ffi::F32> wt, ffi::Buffer<ffi::F32> gates,
                        ffi::Buffer<ffi::F32> c_prev, ffi::Buffer<ffi::F32> dys,
                        ffi::Buffer<ffi::F32> dh_t, ffi::Buffer<ffi::F32> dc_t,
                        ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> dpx,
                        ffi::ResultBuffer<ffi::F32> dh_out, ffi::ResultBuffer<ffi::F32> dc_out) {
  FlushDenormals flush;
  const auto dims = gates.dimensions();
  const int64_t T = dims[0], N = dims[1], G = dims[2], H = G / 4;
  const float* Wt = wt.typed_data();  // (G, H)
  const float* A = gates.typed_data();
  const float* CP = c_prev.typed_data();
  const float* DY = dys.typed_data();
  const int32_t* len = lengths.typed_data();
  float* DZ = dpx->typed_data();
  float* dh = dh_out->typed_data();
  float* dc = dc_out->typed_data();
  std::copy(dh_t.typed_data(), dh_t.typed_data() + N * H, dh);
  std::copy(dc_t.typed_data(), dc_t.typed_data() + N * H, dc);
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t n = 0; n < N; ++n) {
      float* __restrict__ dz = DZ + (t * N + n) * G;
      if (t >= len[n]) {
        std::fill(dz, dz + G, 0.0f);
        continue;
      }
      const float* __restrict__ a = A + (t * N + n) * G;
      const float* __restrict__ cp = CP + (t * N + n) * H;
      const float* __restrict__ dy = DY + (t * N + n) * H;
      float* __restrict__ dhn = dh + n * H;
      float* __restrict__ dcn = dc + n * H;
#pragma GCC ivdep
      for (int64_t j = 0; j < H; ++j) {
        const float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
        const float cj = f * cp[j] + i * g;
        const float tc = fast_tanh(cj);
        const float dhj = dhn[j] + dy[j];
        const float dcj = dcn[j] + dhj * o * (1.0f - tc * tc);
        dz[j] = dcj * g * i * (1.0f - i);
        dz[H + j] = dcj * cp[j] * f * (1.0f - f);
        dz[2 * H + j] = dcj * i * (1.0f - g * g);
        dz[3 * H + j] = dhj * tc * o * (1.0f - o);
        dcn[j] = dcj * f;
      }
      vec_mat(dz, G, Wt, H, H, nullptr, dhn);  // dh_{t-1} = dz Wᵀ
    }
  }
  return ffi::Error::Success();
}

// GRU (reset_after, PyTorch / cuDNN): saved = [r, z, n, a_n + b_hn] (T, N, 4H).
ffi::Error GruForward(ffi::Buffer<ffi::F32> px, ffi::Buffer<ffi::F32> w,
                      ffi::Buffer<ffi::F32> b_hn, ffi::Buffer<ffi::F32> h0,
                      ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                      ffi::ResultBuffer<ffi::F32> saved, ffi::ResultBuffer<ffi::F32> h_out) {
  FlushDenormals flush;
  const auto dims = px.dimensions();
  if (dims.size() != 3 || dims[2] % 3 != 0) {
    return ffi::Error::InvalidArgument("px must be (T, N, 3H)");
  }
  const int64_t T = dims[0], N = dims[1], G = dims[2], H = G / 3;
  const float* P = px.typed_data();
  const float* W = w.typed_data();
  const float* bn = b_hn.typed_data();
  const int32_t* len = lengths.typed_data();
  float* Y = ys->typed_data();
  float* S = saved->typed_data();
  float* h = h_out->typed_data();
  std::copy(h0.typed_data(), h0.typed_data() + N * H, h);
  std::vector<float> a(G);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      float* __restrict__ s = S + (t * N + n) * 4 * H;
      float* __restrict__ y = Y + (t * N + n) * H;
      float* __restrict__ hn = h + n * H;
      if (t >= len[n]) {
        std::fill(s, s + 4 * H, 0.0f);
        std::fill(y, y + H, 0.0f);
        continue;
      }
      float* __restrict__ an = a.data();
      vec_mat(hn, H, W, G, G, nullptr, an);  // a = h_{t-1} W
      const float* __restrict__ p = P + (t * N + n) * G;
#pragma GCC ivdep
      for (int64_t j = 0; j < H; ++j) {
        const float r = fast_sigmoid(p[j] + an[j]);
        const float z = fast_sigmoid(p[H + j] + an[H + j]);
        const float hb = an[2 * H + j] + bn[j];
        const float nj = fast_tanh(p[2 * H + j] + r * hb);
        s[j] = r;
        s[H + j] = z;
        s[2 * H + j] = nj;
        s[3 * H + j] = hb;
        hn[j] = (1.0f - z) * nj + z * hn[j];
        y[j] = hn[j];
      }
    }
  }
  return ffi::Error::Success();
}

ffi::Error GruBackward(ffi::Buffer<ffi::F32> wt, ffi::Buffer<ffi::F32> saved,
                       ffi::Buffer<ffi::F32> h_prev, ffi::Buffer<ffi::F32> dys,
                       ffi::Buffer<ffi::F32> dh_t, ffi::Buffer<ffi::S32> lengths,
                       ffi::ResultBuffer<ffi::F32> dpx, ffi::ResultBuffer<ffi::F32> dh_out) {
  FlushDenormals flush;
  const auto dims = h_prev.dimensions();
  const int64_t T = dims[0], N = dims[1], H = dims[2], G = 3 * H;
  const float* Wt = wt.typed_data();  // (3H, H)
  const float* S = saved.typed_data();
  const float* HP = h_prev.typed_data();
  const float* DY = dys.typed_data();
  const int32_t* len = lengths.typed_data();
  float* DP = dpx->typed_data();
  float* dh = dh_out->typed_data();
  std::copy(dh_t.typed_data(), dh_t.typed_data() + N * H, dh);
  std::vector<float> da(G), dprev(H);
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t n = 0; n < N; ++n) {
      float* __restrict__ dp = DP + (t * N + n) * G;
      if (t >= len[n]) {
        std::fill(dp, dp + G, 0.0f);
        continue;
      }
      const float* __restrict__ s = S + (t * N + n) * 4 * H;
      const float* __restrict__ hp = HP + (t * N + n) * H;
      const float* __restrict__ dy = DY + (t * N + n) * H;
      float* __restrict__ dhn = dh + n * H;
      float* __restrict__ dan = da.data();
#pragma GCC ivdep
      for (int64_t j = 0; j < H; ++j) {
        const float r = s[j], z = s[H + j], nj = s[2 * H + j], hb = s[3 * H + j];
        const float dhj = dhn[j] + dy[j];
        const float dn = dhj * (1.0f - z) * (1.0f - nj * nj);
        const float dz = dhj * (hp[j] - nj) * z * (1.0f - z);
        const float dr = dn * hb * r * (1.0f - r);
        dp[j] = dr;
        dp[H + j] = dz;
        dp[2 * H + j] = dn;
        dan[j] = dr;
        dan[H + j] = dz;
        dan[2 * H + j] = dn * r;
        dhn[j] = dhj * z;
      }
      vec_mat(dan, G, Wt, H, H, dhn, dprev.data());  // dh_{t-1} = dh z + da Wᵀ
      std::copy(dprev.begin(), dprev.end(), dhn);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmForward, LstmForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // px (T, N, G)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W (H, G)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 (N, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (N,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys (T, N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // gates (T, N, G)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_prev (T, N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hT (N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // cT (N, H)

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmBackward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // Wt (G, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gates (T, N, G)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c_prev (T, N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dys (T, N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhT (N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dcT (N, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (N,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dpx (T, N, G)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0 (N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dc0 (N, H)

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxGruForward, GruForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // px (T, N, 3H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W (H, 3H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_hn (H,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (N, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (N,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys (T, N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // saved (T, N, 4H)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // hT (N, H)

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxGruBackward, GruBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // Wt (3H, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // saved (T, N, 4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h_prev (T, N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dys (T, N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhT (N, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (N,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dpx (T, N, 3H)
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dh0 (N, H)
