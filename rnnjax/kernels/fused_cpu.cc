// The whole LSTM / GRU time loop in one XLA:CPU custom call (backend "fused_cpu").
//
// An XLA loop pays per-iteration overhead: every step launches a handful of thunks (the
// matmul, element-wise fusions, the output updates, the loop counter), and its element-wise
// fusions inside the loop run several times slower per element than the same maths over a
// whole array. Here one call runs all T steps, on a team of threads that splits the hidden
// units: thread p owns units [u0, u1) of every gate block, so it computes its columns of
// z_t = h_{t-1} W with a register-blocked matmul over its own packed copy of W's columns, then
// the gate maths of its units (a vectorisable rational tanh: the approximation XLA:CPU and
// Eigen use for float32), and writes its slice of h_t; one barrier per step publishes h_t to
// the others. The backward loop splits the same way: each thread computes the gate gradients
// of its units, one barrier, then its columns of dh_{t-1} = dz_t Wᵀ.
//
// Forward  (px, W, h0, c0, lengths) -> (ys, gates, c_prev, hT, cT)
// Backward (W, gates, c_prev, dys, dhT, dcT, lengths, h0) -> (dpx, dh0, dc0, h_prev)
// with the conventions of rnnjax/cells/lstm.py (lstm_pointwise): gates (i, f, g, o) activated, c_prev
// the incoming cell state, steps t >= lengths[n] freeze the carry and output zeros. dW is one
// matmul after the backward call (in XLA), Σ_t h_{t-1}ᵀ dpx_t (the GRU's d(h W)_t): the LSTM's
// backward recomputes each h_t and writes it where that matmul reads h_t as h_{(t+1)-1}, after
// h0, so that the matmul reads h_prev as it is. The attribute `threads` is the team's size
// (rnnjax/kernels/fused_cpu.py chooses it).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include <new>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include <immintrin.h>

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

// Cache-line-aligned storage: the team's threads write neighbouring column ranges of shared
// buffers, and ranges that start on a line boundary never share a line (no false sharing).
template <class T>
struct CacheAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const CacheAligned<U>&) const { return true; }
  template <class U>
  bool operator!=(const CacheAligned<U>&) const { return false; }
};
using Floats = std::vector<float, CacheAligned<float>>;

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

// ---- the per-step matmul: C (M, NR·panels) = A (M, K) · B packed in panels of NR columns ----
// The vectors are as wide as the CPU's registers (-march=native): a GCC vector wider than the
// hardware's is lowered through memory, ~5x slower (measured on an AVX2-only CPU).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;  // one AVX-512 register; 32 of them
constexpr int kRows = 8;        // 8 rows x 3 registers of accumulators
constexpr int kVecs = 3;
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;  // one AVX / AVX2 register; 16 of them
constexpr int kRows = 6;       // 6 rows x 2 registers
constexpr int kVecs = 2;
#else
constexpr int64_t kLanes = 4;  // one SSE or NEON register
constexpr int kRows = 6;
constexpr int kVecs = 2;
#endif
constexpr int64_t NR = kVecs * kLanes;  // a panel's width
typedef float vreg __attribute__((vector_size(4 * kLanes)));

// A row stride for the matmul's left operand: one register past the width, so that rows a
// power-of-two apart in bytes do not all fall in the same L1 cache set (the left operand's
// kRows rows are read together).
int64_t padded(int64_t width) { return width + kLanes; }

// C[r, 0:V·kLanes] = Σ_k A[r, k] · panel[k, :] for r < MR: MR x V accumulators in registers,
// the panel (K, V·kLanes) contiguous, A's entries broadcast.
template <int MR, int V = kVecs>
inline void micro_kernel(const float* __restrict__ A, int64_t lda, int64_t K,
                         const float* __restrict__ panel, float* __restrict__ C, int64_t ldc) {
  vreg acc[MR][V];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = vreg{};
  }
  for (int64_t k = 0; k < K; ++k) {
    vreg b[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) std::memcpy(&b[v], panel + (k * V + v) * kLanes, sizeof(vreg));
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const float a = A[r * lda + k];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) std::memcpy(C + r * ldc + v * kLanes, &acc[r][v], sizeof(vreg));
  }
}

// `rows` <= MR rows: micro_kernel with MR = rows. A points at the first of them.
template <int MR, int V = kVecs>
void rows_tail(const float* A, int64_t lda, int64_t K, const float* panel, float* C,
               int64_t ldc, int rows) {
  if constexpr (MR > 0) {
    if (rows == MR) return micro_kernel<MR, V>(A, lda, K, panel, C, ldc);
    rows_tail<MR - 1, V>(A, lda, K, panel, C, ldc, rows);
  }
}

// Every row of C (M, ·) from one panel of V registers' width: C[:, panel's columns] = A · panel.
template <int V>
void panel_times(const float* A, int64_t lda, int64_t M, int64_t K, const float* panel,
                 float* C, int64_t ldc) {
  int64_t r = 0;
  for (; r + kRows <= M; r += kRows) {
    micro_kernel<kRows, V>(A + r * lda, lda, K, panel, C + r * ldc, ldc);
  }
  if (r < M) {
    rows_tail<kRows - 1, V>(A + r * lda, lda, K, panel, C + r * ldc, ldc,
                            static_cast<int>(M - r));
  }
}

// panel_times for a panel `vecs` <= kVecs registers wide.
template <int V = kVecs>
void narrow_panel_times(int vecs, const float* A, int64_t lda, int64_t M, int64_t K,
                        const float* panel, float* C, int64_t ldc) {
  if constexpr (V > 0) {
    if (vecs == V) return panel_times<V>(A, lda, M, K, panel, C, ldc);
    narrow_panel_times<V - 1>(vecs, A, lda, M, K, panel, C, ldc);
  }
}

// A weight matrix's columns, packed for the team's thread that owns some of them: `cols`
// lists the source columns (-1: a zero column). Panels of NR columns, the last one only as
// many registers wide as the remaining columns need (a thread's 128 units of Wᵀ are
// 2 x 48 + 32 columns, not 3 x 48 with 16 of zeros): panel b holds B[k, cols[b·NR + c]] at
// data[b·K·NR + k·width(b) + c].
struct Packed {
  int64_t K = 0, panels = 0, last = 0;
  Floats data;

  // B is (K, ld) row-major; transposed: B[k, j] is read as src[j·ld + k] (B = srcᵀ). Each
  // panel is filled whole, reading the source along its rows.
  Packed(const float* src, int64_t K_, int64_t ld, const std::vector<int64_t>& cols,
         bool transposed)
      : K(K_), panels((static_cast<int64_t>(cols.size()) + NR - 1) / NR) {
    const int64_t n = static_cast<int64_t>(cols.size());
    last = panels == 0 ? 0 : (n - (panels - 1) * NR + kLanes - 1) / kLanes * kLanes;
    data.assign(K * width(), 0.0f);
    for (int64_t b = 0; b < panels; ++b) {
      const int64_t w = panel_width(b), c0 = b * NR, c1 = std::min(n, c0 + NR);
      float* panel = data.data() + b * K * NR;  // (K, w)
      for (int64_t c = c0; c < c1 && transposed; ++c) {
        if (cols[c] < 0) continue;
        const float* column = src + cols[c] * ld;  // B[:, c], contiguous
        for (int64_t k = 0; k < K; ++k) panel[k * w + c - c0] = column[k];
      }
      for (int64_t k = 0; k < K && !transposed; ++k) {
        const float* row = src + k * ld;
        for (int64_t c = c0; c < c1; ++c) {
          if (cols[c] >= 0) panel[k * w + c - c0] = row[cols[c]];
        }
      }
    }
  }

  int64_t panel_width(int64_t b) const { return b + 1 < panels ? NR : last; }
  int64_t width() const { return panels == 0 ? 0 : (panels - 1) * NR + last; }

  // C (M, width()) = A (M, K) · B[:, cols]; each panel stays in cache across A's rows.
  void times(const float* A, int64_t lda, int64_t M, float* C) const {
    for (int64_t b = 0; b < panels; ++b) {
      narrow_panel_times(static_cast<int>(panel_width(b) / kLanes), A, lda, M, K,
                         data.data() + b * K * NR, C + b * NR, width());
    }
  }
};

// ---- the team: threads that split the hidden units, one barrier per step ----------------
// All threads of the team wait here until each has arrived. Waiters spin briefly (a step's
// work is balanced, so the others are usually close), then sleep on
// the generation counter (a futex): on a machine with more runnable threads than cores — XLA
// running another op at the same time, two loops side by side — a sleeping waiter hands its
// core to the thread it waits for instead of competing with it.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}

  void wait() {
    if (count_ == 1) return;  // a team of one: nothing to wait for
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1);  // sequentially consistent with sleepers_: a waiter that
      if (sleepers_.load() > 0) generation_.notify_all();  // missed this step is woken
      return;
    }
    for (int spins = 0; spins < kSpins; ++spins) {
      if (generation_.load(std::memory_order_acquire) != gen) return;
      _mm_pause();
    }
    sleepers_.fetch_add(1);
    while (generation_.load() == gen) generation_.wait(gen);
    sleepers_.fetch_sub(1);
  }

 private:
  static constexpr int kSpins = 2000;  // pause instructions before sleeping
  const int count_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
  std::atomic<int> sleepers_{0};
};

// The units [u0, u1) of thread p among P, in whole registers where H allows.
struct Units {
  int64_t u0, u1;
  Units(int64_t H, int p, int P) {
    const int64_t blocks = (H + kLanes - 1) / kLanes;
    u0 = std::min(H, blocks * p / P * kLanes);
    u1 = std::min(H, blocks * (p + 1) / P * kLanes);
  }
  int64_t size() const { return u1 - u0; }
};

// The source columns of `gates` gate blocks of width H restricted to the units [u0, u1):
// z's columns q·H + u for each gate q, gate-major (the packed matmul's output is
// (N, gates·|units|) padded to whole panels).
std::vector<int64_t> gate_columns(int64_t H, int gates, const Units& units) {
  std::vector<int64_t> cols;
  for (int q = 0; q < gates; ++q) {
    for (int64_t u = units.u0; u < units.u1; ++u) cols.push_back(q * H + u);
  }
  return cols;
}

// Zeroes this thread's units [0, units) of each of `blocks` gate blocks (H apart) of a row.
inline void zero_units(float* row, int blocks, int64_t H, int64_t units) {
  for (int q = 0; q < blocks; ++q) std::fill(row + q * H, row + q * H + units, 0.0f);
}

// Where each thread of a team runs: on Linux, each on its own CPU of the process's affinity
// set — the calling thread on the CPU it is on, the others on the next ones — for the team's
// lifetime. Left to the scheduler, a freshly started thread often lands on its parent's CPU:
// two threads that meet at a barrier every step then share one core, each spinning while the
// other waits for the core (measured: a 60 us step taking 2-3x as long). A team larger than the
// set (a test's team of 3 on 2 CPUs) is not pinned. The caller's own mask is restored.
class TeamPlacement {
 public:
  explicit TeamPlacement(int P) {
#if defined(__linux__)
    if (P < 2 || sched_getaffinity(0, sizeof(allowed_), &allowed_) != 0) return;
    const int here = sched_getcpu();
    if (here < 0 || !CPU_ISSET(here, &allowed_) || CPU_COUNT(&allowed_) < P) return;
    for (int i = 0; i < CPU_SETSIZE && static_cast<int>(cpus_.size()) < P; ++i) {
      const int cpu = (here + i) % CPU_SETSIZE;  // the caller's CPU first
      if (CPU_ISSET(cpu, &allowed_)) cpus_.push_back(cpu);
    }
    pinned_ = pin(cpus_[0]);
#else
    (void)P;
#endif
  }
  ~TeamPlacement() {
#if defined(__linux__)
    if (pinned_) pthread_setaffinity_np(pthread_self(), sizeof(allowed_), &allowed_);
#endif
  }
  // Called by thread p >= 1 when it starts.
  void place(int p) const {
    if (pinned_) pin(cpus_[p]);
  }

 private:
#if defined(__linux__)
  static bool pin(int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0;
  }
  cpu_set_t allowed_{};
#else
  static bool pin(int) { return false; }
#endif
  std::vector<int> cpus_;
  bool pinned_ = false;
};

// Runs body(p, barrier) on P threads (the calling thread is p = 0), each on its own CPU where
// the process has enough (TeamPlacement); every thread flushes denormals.
template <class Body>
void run_team(int P, Body body) {
  P = std::max(1, P);
  Barrier barrier(P);
  const TeamPlacement placement(P);
  std::vector<std::thread> team;
  for (int p = 1; p < P; ++p) {
    team.emplace_back([&body, &barrier, &placement, p] {
      placement.place(p);
      FlushDenormals flush;
      body(p, barrier);
    });
  }
  {
    FlushDenormals flush;
    body(0, barrier);
  }
  for (auto& thread : team) thread.join();
}

int team_size(int64_t threads, int64_t H) {
  const int64_t blocks = (H + kLanes - 1) / kLanes;  // at least one register of units each
  return static_cast<int>(std::max<int64_t>(1, std::min(threads, blocks)));
}

// The forward time loop shared by the cells: per step this thread's columns of
// z = h_{t-1} W (its units of each of the `gates` blocks, gate-major, rows z_ld apart), then
// step(t, n, z_n, h_{t-1}[n, u0:], h_t[n, u0:], u0, units) for each row n — the cell's gate
// maths, which also handles steps past the row's length — then one barrier. h0 (N, H) in,
// hT (N, H) out.
template <class Step>
void forward_loop(int64_t T, int64_t N, int64_t H, int gates, const float* W, const float* h0,
                  float* hT, int64_t threads, Step step) {
  const int P = team_size(threads, H);
  const int64_t ldh = padded(H);
  Floats hbuf(2 * N * ldh);  // h_{t-1} and h_t, alternating, rows ldh apart
  for (int64_t n = 0; n < N; ++n) std::copy(h0 + n * H, h0 + (n + 1) * H, &hbuf[n * ldh]);
  run_team(P, [&](int p, Barrier& barrier) {
    const Units units(H, p, P);
    const Packed Wp(W, H, gates * H, gate_columns(H, gates, units), false);  // (H, gates·Hp)
    Floats z(N * Wp.width());
    for (int64_t t = 0; t < T; ++t) {
      const float* hcur = hbuf.data() + (t % 2) * N * ldh;
      float* hnext = hbuf.data() + ((t + 1) % 2) * N * ldh;
      Wp.times(hcur, ldh, N, z.data());  // z = h_{t-1} W, this thread's columns
      for (int64_t n = 0; n < N; ++n) {
        step(t, n, z.data() + n * Wp.width(), hcur + n * ldh + units.u0,
             hnext + n * ldh + units.u0, units.u0, units.size());
      }
      barrier.wait();  // h_t complete for every unit
    }
  });
  const float* h = hbuf.data() + (T % 2) * N * ldh;
  for (int64_t n = 0; n < N; ++n) std::copy(h + n * ldh, h + n * ldh + H, hT + n * H);
}

// The backward time loop shared by the cells, from t = T - 1 down: for each row whose step t is
// within its length, step(t, n, dpx_n, d_n, u0, units) writes this thread's units of
// d px_t into dpx_n (a row of the (T, N, gates·H) output), of d(h W)_t into d_n (a row of the
// block the matmul reads) and the direct part of dh_{t-1} into dh (N, H) (zero where there is
// none); past the length both are zero and dh passes unchanged (the carry was frozen). One
// barrier; then dh_{t-1} += d(h W)_t Wᵀ for this thread's units. Where d(h W) differs from
// d px (the GRU's), d_out (T, N, gates·H) receives it too, for dW after the loop.
template <class Step>
void backward_loop(int64_t T, int64_t N, int64_t H, int gates, const float* W,
                   const int32_t* len, float* dpx, float* d_out, float* dh, int64_t threads,
                   Step step) {
  const int P = team_size(threads, H);
  const int64_t G = gates * H, ldd = padded(G);
  Floats d_buf(2 * N * ldd);  // d(h W)_t, alternating, rows ldd apart
  run_team(P, [&](int p, Barrier& barrier) {
    const Units units(H, p, P);
    const Packed Wt(W, G, G, gate_columns(H, 1, units), true);  // (G, Hp) of Wᵀ
    Floats dprev(N * Wt.width());
    for (int64_t t = T - 1; t >= 0; --t) {
      float* d = d_buf.data() + (t % 2) * N * ldd;
      for (int64_t n = 0; n < N; ++n) {
        float* dpx_n = dpx + (t * N + n) * G + units.u0;
        float* d_n = d + n * ldd + units.u0;
        if (t >= len[n]) {
          zero_units(dpx_n, gates, H, units.size());
          zero_units(d_n, gates, H, units.size());
        } else {
          step(t, n, dpx_n, d_n, units.u0, units.size());
        }
        if (d_out) {
          for (int q = 0; q < gates; ++q) {
            std::copy(d_n + q * H, d_n + q * H + units.size(),
                      d_out + (t * N + n) * G + units.u0 + q * H);
          }
        }
      }
      barrier.wait();  // d(h W)_t complete for every unit
      Wt.times(d, ldd, N, dprev.data());  // d(h W)_t Wᵀ, this thread's units
      for (int64_t n = 0; n < N; ++n) {
        if (t >= len[n]) continue;
        const float* src = dprev.data() + n * Wt.width();
        float* dhn = dh + n * H + units.u0;
        for (int64_t j = 0; j < units.size(); ++j) dhn[j] += src[j];
      }
    }
  });
}

ffi::Error LstmForward(ffi::Buffer<ffi::F32> px, ffi::Buffer<ffi::F32> w,
                       ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                       ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                       ffi::ResultBuffer<ffi::F32> gates, ffi::ResultBuffer<ffi::F32> c_prev,
                       ffi::ResultBuffer<ffi::F32> h_out, ffi::ResultBuffer<ffi::F32> c_out,
                       int64_t threads) {
  const auto dims = px.dimensions();
  if (dims.size() != 3 || dims[2] % 4 != 0) {
    return ffi::Error::InvalidArgument("px must be (T, N, 4H)");
  }
  const int64_t T = dims[0], N = dims[1], G = dims[2], H = G / 4;
  const float* P = px.typed_data();
  const int32_t* len = lengths.typed_data();
  float* Y = ys->typed_data();
  float* A = gates->typed_data();
  float* CP = c_prev->typed_data();
  float* c = c_out->typed_data();
  std::copy(c0.typed_data(), c0.typed_data() + N * H, c);
  auto step = [&](int64_t t, int64_t n, const float* __restrict__ zn, const float* hp,
                  float* __restrict__ hn, int64_t u0, int64_t Hp) {
    float* __restrict__ a = A + (t * N + n) * G + u0;
    float* __restrict__ cp = CP + (t * N + n) * H + u0;
    float* __restrict__ y = Y + (t * N + n) * H + u0;
    float* __restrict__ cn = c + n * H + u0;
    std::copy(cn, cn + Hp, cp);
    if (t >= len[n]) {  // past the length: carry frozen, output zero
      zero_units(a, 4, H, Hp);
      zero_units(y, 1, H, Hp);
      std::copy(hp, hp + Hp, hn);
      return;
    }
    const float* __restrict__ pn = P + (t * N + n) * G + u0;
#pragma GCC ivdep
    for (int64_t j = 0; j < Hp; ++j) {
      const float i = fast_sigmoid(pn[j] + zn[j]);
      const float f = fast_sigmoid(pn[H + j] + zn[Hp + j]);
      const float g = fast_tanh(pn[2 * H + j] + zn[2 * Hp + j]);
      const float o = fast_sigmoid(pn[3 * H + j] + zn[3 * Hp + j]);
      const float cj = f * cn[j] + i * g;
      a[j] = i;
      a[H + j] = f;
      a[2 * H + j] = g;
      a[3 * H + j] = o;
      cn[j] = cj;
      hn[j] = o * fast_tanh(cj);
      y[j] = hn[j];
    }
  };
  forward_loop(T, N, H, 4, w.typed_data(), h0.typed_data(), h_out->typed_data(), threads, step);
  return ffi::Error::Success();
}

ffi::Error LstmBackward(ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> gates,
                        ffi::Buffer<ffi::F32> c_prev, ffi::Buffer<ffi::F32> dys,
                        ffi::Buffer<ffi::F32> dh_t, ffi::Buffer<ffi::F32> dc_t,
                        ffi::Buffer<ffi::S32> lengths, ffi::Buffer<ffi::F32> h0,
                        ffi::ResultBuffer<ffi::F32> dpx, ffi::ResultBuffer<ffi::F32> dh_out,
                        ffi::ResultBuffer<ffi::F32> dc_out, ffi::ResultBuffer<ffi::F32> h_prev,
                        int64_t threads) {
  const auto dims = gates.dimensions();
  const int64_t T = dims[0], N = dims[1], G = dims[2], H = G / 4;
  const float* A = gates.typed_data();
  const float* CP = c_prev.typed_data();
  const float* DY = dys.typed_data();
  const int32_t* len = lengths.typed_data();
  float* dh = dh_out->typed_data();
  float* dc = dc_out->typed_data();
  // h_{t-1} for dW: h0, then h_t recomputed at t + 1 (as the forward wrote ys: zero past
  // the length; h_{T-1} is not needed)
  float* HP = h_prev->typed_data();
  std::copy(h0.typed_data(), h0.typed_data() + N * H, HP);
  std::copy(dh_t.typed_data(), dh_t.typed_data() + N * H, dh);
  std::copy(dc_t.typed_data(), dc_t.typed_data() + N * H, dc);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t t = std::max<int64_t>(len[n], 0); t + 1 < T; ++t) {
      std::fill(HP + ((t + 1) * N + n) * H, HP + ((t + 1) * N + n + 1) * H, 0.0f);
    }
  }
  Floats last(N * H);  // h_{T-1}, which no step reads as its h_{t-1}
  auto step = [&](int64_t t, int64_t n, float* __restrict__ dz, float* __restrict__ dzs,
                  int64_t u0, int64_t Hp) {
    const float* __restrict__ a = A + (t * N + n) * G + u0;
    const float* __restrict__ cp = CP + (t * N + n) * H + u0;
    const float* __restrict__ dy = DY + (t * N + n) * H + u0;
    float* __restrict__ dhn = dh + n * H + u0;
    float* __restrict__ dcn = dc + n * H + u0;
    float* __restrict__ hs = (t + 1 < T ? HP + ((t + 1) * N + n) * H : last.data() + n * H) + u0;
#pragma GCC ivdep
    for (int64_t j = 0; j < Hp; ++j) {
      const float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
      const float cj = f * cp[j] + i * g;
      const float tc = fast_tanh(cj);
      hs[j] = o * tc;  // h_t, as h_{(t+1)-1} for dW after the loop (the outputs are not kept)
      const float dhj = dhn[j] + dy[j];
      const float dcj = dcn[j] + dhj * o * (1.0f - tc * tc);
      dz[j] = dzs[j] = dcj * g * i * (1.0f - i);
      dz[H + j] = dzs[H + j] = dcj * cp[j] * f * (1.0f - f);
      dz[2 * H + j] = dzs[2 * H + j] = dcj * i * (1.0f - g * g);
      dz[3 * H + j] = dzs[3 * H + j] = dhj * tc * o * (1.0f - o);
      dcn[j] = dcj * f;
      dhn[j] = 0.0f;  // h_{t-1} reaches h_t only through the matmul: dh_{t-1} = dz_t Wᵀ
    }
  };
  backward_loop(T, N, H, 4, w.typed_data(), len, dpx->typed_data(), nullptr, dh, threads, step);
  return ffi::Error::Success();
}

// GRU (reset_after, PyTorch / cuDNN): saved = [r, z, n, a_n + b_hn] (T, N, 4H).
ffi::Error GruForward(ffi::Buffer<ffi::F32> px, ffi::Buffer<ffi::F32> w,
                      ffi::Buffer<ffi::F32> b_hn, ffi::Buffer<ffi::F32> h0,
                      ffi::Buffer<ffi::S32> lengths, ffi::ResultBuffer<ffi::F32> ys,
                      ffi::ResultBuffer<ffi::F32> saved, ffi::ResultBuffer<ffi::F32> h_out,
                      int64_t threads) {
  const auto dims = px.dimensions();
  if (dims.size() != 3 || dims[2] % 3 != 0) {
    return ffi::Error::InvalidArgument("px must be (T, N, 3H)");
  }
  const int64_t T = dims[0], N = dims[1], G = dims[2], H = G / 3;
  const float* P = px.typed_data();
  const float* bn = b_hn.typed_data();
  const int32_t* len = lengths.typed_data();
  float* Y = ys->typed_data();
  float* S = saved->typed_data();
  auto step = [&](int64_t t, int64_t n, const float* __restrict__ an,
                  const float* __restrict__ hp, float* __restrict__ hn, int64_t u0, int64_t Hp) {
    float* __restrict__ s = S + (t * N + n) * 4 * H + u0;
    float* __restrict__ y = Y + (t * N + n) * H + u0;
    if (t >= len[n]) {
      zero_units(s, 4, H, Hp);
      zero_units(y, 1, H, Hp);
      std::copy(hp, hp + Hp, hn);
      return;
    }
    const float* __restrict__ pn = P + (t * N + n) * G + u0;
    const float* __restrict__ bnp = bn + u0;
#pragma GCC ivdep
    for (int64_t j = 0; j < Hp; ++j) {
      const float r = fast_sigmoid(pn[j] + an[j]);
      const float z = fast_sigmoid(pn[H + j] + an[Hp + j]);
      const float hb = an[2 * Hp + j] + bnp[j];
      const float nj = fast_tanh(pn[2 * H + j] + r * hb);
      s[j] = r;
      s[H + j] = z;
      s[2 * H + j] = nj;
      s[3 * H + j] = hb;
      hn[j] = (1.0f - z) * nj + z * hp[j];
      y[j] = hn[j];
    }
  };
  forward_loop(T, N, H, 3, w.typed_data(), h0.typed_data(), h_out->typed_data(), threads, step);
  return ffi::Error::Success();
}

ffi::Error GruBackward(ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> saved,
                       ffi::Buffer<ffi::F32> h_prev, ffi::Buffer<ffi::F32> dys,
                       ffi::Buffer<ffi::F32> dh_t, ffi::Buffer<ffi::S32> lengths,
                       ffi::ResultBuffer<ffi::F32> dpx, ffi::ResultBuffer<ffi::F32> da_out,
                       ffi::ResultBuffer<ffi::F32> dh_out, int64_t threads) {
  const auto dims = h_prev.dimensions();
  const int64_t T = dims[0], N = dims[1], H = dims[2];
  const float* S = saved.typed_data();
  const float* HP = h_prev.typed_data();
  const float* DY = dys.typed_data();
  const int32_t* len = lengths.typed_data();
  float* dh = dh_out->typed_data();
  std::copy(dh_t.typed_data(), dh_t.typed_data() + N * H, dh);
  auto step = [&](int64_t t, int64_t n, float* __restrict__ dp, float* __restrict__ dan,
                  int64_t u0, int64_t Hp) {
    const float* __restrict__ s = S + (t * N + n) * 4 * H + u0;
    const float* __restrict__ hp = HP + (t * N + n) * H + u0;
    const float* __restrict__ dy = DY + (t * N + n) * H + u0;
    float* __restrict__ dhn = dh + n * H + u0;
#pragma GCC ivdep
    for (int64_t j = 0; j < Hp; ++j) {
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
      dhn[j] = dhj * z;  // the direct path of dh_{t-1}; the loop adds da Wᵀ
    }
  };
  backward_loop(T, N, H, 3, w.typed_data(), len, dpx->typed_data(), da_out->typed_data(), dh,
                threads, step);
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
                                  .Ret<ffi::Buffer<ffi::F32>>()  // cT (N, H)
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmBackward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W (H, G)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // gates (T, N, G)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c_prev (T, N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dys (T, N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhT (N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dcT (N, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (N,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dpx (T, N, G)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0 (N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dc0 (N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_prev (T, N, H)
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxGruForward, GruForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // px (T, N, 3H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W (H, 3H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_hn (H,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (N, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (N,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys (T, N, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // saved (T, N, 4H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hT (N, H)
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxGruBackward, GruBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W (H, 3H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // saved (T, N, 4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h_prev (T, N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dys (T, N, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhT (N, H)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lengths (N,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dpx (T, N, 3H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d(h W) (T, N, 3H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dh0 (N, H)
                                  .Attr<int64_t>("threads"));
