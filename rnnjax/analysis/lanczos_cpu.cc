// σ_max of a dense square matrix by restarted Lanczos on MᵀM, in one XLA:CPU custom call.
//
// The native twin of rnnjax/analysis/norms.py's `top_singular_value` (its readable reference,
// which the tests hold this one to): the same start, the same Lanczos steps with the basis
// re-orthogonalised twice, the same Ritz estimate after every step and the same stopping rule.
// In XLA each step is a chain of about twenty tiny operations (the products, the
// re-orthogonalisation, the small eigenproblem, norms, updates), and each costs a microsecond
// or two of dispatch — as much as the products themselves; here a step is plain loops, and its
// two products are one pass over M: row i gives tᵢ = Mᵢ·x and, while it is in cache, g += tᵢ Mᵢ.
//
//   M (N, N) row-major; u (N,) the unit warm start: M's top left singular vector estimate,
//   or its right one (right = true). x₀ = Mᵀu/‖Mᵀu‖, or u.
//   Step j: t = M xⱼ, g = Mᵀt; H = X MᵀM Xᵀ gains row and column j (H_ij = xᵢ·gⱼ); (λ, s) its
//   top eigenpair (cyclic Jacobi, double precision); the Ritz vector x = Xᵀs with
//   M x = Σ sᵢ tᵢ, MᵀM x = Σ sᵢ gᵢ; σ = ‖M x‖, r = ‖MᵀM x/σ − σ x‖. Stop when r ≤ tol·σ (or
//   after krylov · max_restarts steps); else x_{j+1} = g orthogonalised against X (twice),
//   or after krylov steps a new round from x.
//   Returns σ and M x/σ (left) or x (right).
//
// One call takes several lanes (M_l (..., N, N), u_l (..., N)) and returns (σ_l (...), u_l):
// the lanes run side by side on XLA's thread pool, each lane's leading axes one after another.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float Lanes __attribute__((vector_size(64)));  // 16 floats: one AVX-512 register
constexpr int64_t kLanes = 16;

float Dot(const float* a, const float* b, int64_t n) {
  Lanes acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    Lanes a0, a1, b0, b1;
    std::memcpy(&a0, a + i, sizeof(Lanes));
    std::memcpy(&a1, a + i + kLanes, sizeof(Lanes));
    std::memcpy(&b0, b + i, sizeof(Lanes));
    std::memcpy(&b1, b + i + kLanes, sizeof(Lanes));
    acc0 += a0 * b0;
    acc1 += a1 * b1;
  }
  acc0 += acc1;
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += acc0[l];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

float Norm(const float* x, int64_t n) { return std::sqrt(Dot(x, x, n)); }

Lanes Load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(Lanes));
  return v;
}

void Store(float* p, Lanes v) { std::memcpy(p, &v, sizeof(Lanes)); }

float Sum(Lanes v) {
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

// t = M x and g = Mᵀt in one pass over M: rows in fours, each four read from memory once,
// their dot products with x taken and then, while they are in cache, added into g.
void GramTimes(const float* M, int64_t N, const float* x, float* t, float* g) {
  std::fill(g, g + N, 0.0f);
  const int64_t vec = N - N % kLanes;
  int64_t i = 0;
  for (; i + 4 <= N; i += 4) {
    const float *r0 = M + i * N, *r1 = r0 + N, *r2 = r1 + N, *r3 = r2 + N;
    Lanes a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t j = 0; j < vec; j += kLanes) {
      const Lanes xj = Load(x + j);
      a0 += Load(r0 + j) * xj;
      a1 += Load(r1 + j) * xj;
      a2 += Load(r2 + j) * xj;
      a3 += Load(r3 + j) * xj;
    }
    float t0 = Sum(a0), t1 = Sum(a1), t2 = Sum(a2), t3 = Sum(a3);
    for (int64_t j = vec; j < N; ++j) {
      t0 += r0[j] * x[j], t1 += r1[j] * x[j], t2 += r2[j] * x[j], t3 += r3[j] * x[j];
    }
    t[i] = t0, t[i + 1] = t1, t[i + 2] = t2, t[i + 3] = t3;
    for (int64_t j = 0; j < vec; j += kLanes)
      Store(g + j, Load(g + j) + t0 * Load(r0 + j) + t1 * Load(r1 + j) + t2 * Load(r2 + j) +
                       t3 * Load(r3 + j));
    for (int64_t j = vec; j < N; ++j) g[j] += t0 * r0[j] + t1 * r1[j] + t2 * r2[j] + t3 * r3[j];
  }
  for (; i < N; ++i) {
    t[i] = Dot(M + i * N, x, N);
    for (int64_t j = 0; j < N; ++j) g[j] += t[i] * M[i * N + j];
  }
}

// y = Mᵀ x = Σ_i x_i M[i, :]: rows added in fours, so y is read and written once per four.
void ColumnsTimes(const float* M, int64_t N, const float* x, float* y) {
  std::fill(y, y + N, 0.0f);
  int64_t i = 0;
  for (; i + 4 <= N; i += 4) {
    const float *r0 = M + i * N, *r1 = r0 + N, *r2 = r1 + N, *r3 = r2 + N;
    const float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
    for (int64_t j = 0; j < N; ++j) y[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j];
  }
  for (; i < N; ++i)
    for (int64_t j = 0; j < N; ++j) y[j] += x[i] * M[i * N + j];
}

// x ← x − Bᵀ(B x) for the first `rows` rows of basis (row-major, N wide), twice; then x
// normalised (left as it is where it is 0).
void Orthonormalise(float* x, const float* basis, int64_t rows, int64_t N) {
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t r = 0; r < rows; ++r) {
      const float c = Dot(basis + r * N, x, N);
      for (int64_t j = 0; j < N; ++j) x[j] -= c * basis[r * N + j];
    }
  }
  const float n = Norm(x, N);
  if (n > 0.0f)
    for (int64_t j = 0; j < N; ++j) x[j] /= n;
}

// The top eigenpair of the symmetric k×k matrix C (row-major, overwritten) by cyclic Jacobi
// rotations; returns λ_max and its unit eigenvector in z.
double TopEigenpair(std::vector<double>& C, int64_t k, std::vector<double>& z) {
  std::vector<double> Q(k * k, 0.0);
  for (int64_t i = 0; i < k; ++i) Q[i * k + i] = 1.0;
  for (int sweep = 0; sweep < 60; ++sweep) {
    double off = 0.0, total = 0.0;
    for (int64_t p = 0; p < k; ++p)
      for (int64_t q = 0; q < k; ++q) {
        total += C[p * k + q] * C[p * k + q];
        if (p != q) off += C[p * k + q] * C[p * k + q];
      }
    if (off <= 1e-30 * total) break;
    for (int64_t p = 0; p < k; ++p)
      for (int64_t q = p + 1; q < k; ++q) {
        const double cpq = C[p * k + q];
        if (cpq == 0.0) continue;
        const double theta = (C[q * k + q] - C[p * k + p]) / (2.0 * cpq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (int64_t r = 0; r < k; ++r) {  // C ← C Gᵀ... columns p, q
          const double a = C[r * k + p], b = C[r * k + q];
          C[r * k + p] = c * a - s * b;
          C[r * k + q] = s * a + c * b;
        }
        for (int64_t r = 0; r < k; ++r) {  // rows p, q
          const double a = C[p * k + r], b = C[q * k + r];
          C[p * k + r] = c * a - s * b;
          C[q * k + r] = s * a + c * b;
        }
        for (int64_t r = 0; r < k; ++r) {  // eigenvectors: columns of Q
          const double a = Q[r * k + p], b = Q[r * k + q];
          Q[r * k + p] = c * a - s * b;
          Q[r * k + q] = s * a + c * b;
        }
      }
  }
  int64_t top = 0;
  for (int64_t i = 1; i < k; ++i)
    if (C[i * k + i] > C[top * k + top]) top = i;
  z.assign(k, 0.0);
  for (int64_t r = 0; r < k; ++r) z[r] = Q[r * k + top];
  return C[top * k + top];
}

// y = Σᵢ sᵢ rowsᵢ over the first k rows (N wide).
void Combine(const std::vector<double>& s, const float* rows, int64_t k, int64_t N, float* y) {
  std::fill(y, y + N, 0.0f);
  for (int64_t i = 0; i < k; ++i) {
    const float si = static_cast<float>(s[i]);
    for (int64_t j = 0; j < N; ++j) y[j] += si * rows[i * N + j];
  }
}

// σ_max(M) from the unit warm start u (overwritten by the estimate on the same side).
float TopSingularValue(const float* M, int64_t N, float* u, bool right, int64_t krylov,
                       float tol, int64_t max_restarts) {
  const int64_t k = std::min(krylov, N);
  std::vector<float> X(k * N, 0.0f), MX(k * N), G(k * N), x(N), Mx(N), MtMx(N);
  std::vector<double> H(k * k, 0.0), C(k * k), s;
  std::vector<float> left(u, u + N), last_x(N);  // the estimates on M's left and right sides
  if (right) {
    std::copy(u, u + N, X.begin());
  } else {
    ColumnsTimes(M, N, u, X.data());
    const float n = Norm(X.data(), N);
    for (int64_t i = 0; i < N; ++i) X[i] = n > 0.0f ? X[i] / n : 1.0f / std::sqrt(float(N));
  }
  std::copy(X.begin(), X.begin() + N, last_x.begin());
  float sigma = 0.0f, residual = INFINITY;
  for (int64_t steps = 0; steps < k * max_restarts && residual > tol * sigma; ++steps) {
    const int64_t j = steps % k;  // this round's step
    float *t = MX.data() + j * N, *g = G.data() + j * N;
    GramTimes(M, N, X.data() + j * N, t, g);
    for (int64_t i = 0; i <= j; ++i)
      H[i * k + j] = H[j * k + i] = Dot(X.data() + i * N, g, N);
    // the top eigenpair of H's leading (j+1) block (the rest is zero, as in the reference)
    C = H;
    TopEigenpair(C, k, s);
    Combine(s, MX.data(), j + 1, N, Mx.data());
    Combine(s, G.data(), j + 1, N, MtMx.data());
    Combine(s, X.data(), j + 1, N, x.data());
    sigma = Norm(Mx.data(), N);
    const float safe = sigma > 0.0f ? sigma : 1.0f;
    for (int64_t i = 0; i < N; ++i) MtMx[i] = MtMx[i] / safe - sigma * x[i];
    residual = Norm(MtMx.data(), N);
    const float n_x = Norm(x.data(), N);  // 1, or 0 where H = 0 picks a row not built yet
    if (n_x > 0.0f)
      for (int64_t i = 0; i < N; ++i) x[i] /= n_x;
    else
      std::copy(last_x.begin(), last_x.end(), x.begin());
    std::copy(x.begin(), x.end(), last_x.begin());
    if (sigma > 0.0f)
      for (int64_t i = 0; i < N; ++i) left[i] = Mx[i] / safe;
    if (j + 1 == k) {  // a new round from the Ritz vector
      std::fill(X.begin(), X.end(), 0.0f);
      std::fill(H.begin(), H.end(), 0.0);
      std::copy(x.begin(), x.end(), X.begin());
    } else {
      float* next = X.data() + (j + 1) * N;
      std::copy(g, g + N, next);
      Orthonormalise(next, X.data(), j + 1, N);
    }
  }
  const std::vector<float>& out = right ? last_x : left;
  std::copy(out.begin(), out.end(), u);
  return sigma;
}

// One lane: a matrix (and a warm start) per index of its leading axes.
struct Lane {
  const float* M;
  float* u;
  float* sigma;
  int64_t count;
  bool right;
};

// The lanes of one call, shared with the thread-pool tasks that may run some of them: each
// lane is claimed once (by a task or by the calling thread), run, and marked done.
struct LaneSet {
  std::vector<Lane> lanes;
  std::vector<std::atomic<int>> state;  // 0 free, 1 claimed, 2 done
  int64_t N, krylov, max_restarts;
  float tol;
  LaneSet(std::vector<Lane> l, int64_t n, int64_t k, int64_t r, float t)
      : lanes(std::move(l)), state(lanes.size()), N(n), krylov(k), max_restarts(r), tol(t) {}

  void RunIfFree(size_t l) {
    int free = 0;
    if (!state[l].compare_exchange_strong(free, 1)) return;
    const Lane& lane = lanes[l];
    for (int64_t b = 0; b < lane.count; ++b)
      lane.sigma[b] = TopSingularValue(lane.M + b * N * N, N, lane.u + b * N, lane.right, krylov,
                                       tol, max_restarts);
    state[l].store(2, std::memory_order_release);
  }
};

// Lanes (M_l, u_l) -> (σ_l, u_l), l = 0..L-1, side by side: lanes 1.. are offered to XLA's
// thread pool, the calling thread runs lane 0 and then any lane no pool thread has taken, and
// returns when every lane is done. `right` has bit l set where lane l's u is on M's right side.
ffi::Error TopSingularValues(ffi::ThreadPool pool, ffi::RemainingArgs args,
                             ffi::RemainingRets rets, int64_t krylov, float tol,
                             int64_t max_restarts, int64_t right) {
  if (args.size() % 2 != 0 || rets.size() != args.size() || args.size() == 0)
    return ffi::Error::InvalidArgument("expected (M, u) per lane and (σ, u) back per lane");
  std::vector<Lane> lanes;
  int64_t N = -1;
  for (size_t l = 0; l < args.size() / 2; ++l) {
    auto M = args.get<ffi::Buffer<ffi::F32>>(2 * l);
    auto u0 = args.get<ffi::Buffer<ffi::F32>>(2 * l + 1);
    auto sigma = rets.get<ffi::Buffer<ffi::F32>>(2 * l);
    auto u = rets.get<ffi::Buffer<ffi::F32>>(2 * l + 1);
    if (!M || !u0 || !sigma || !u) return ffi::Error::InvalidArgument("float32 buffers expected");
    const auto dims = M->dimensions();
    const int64_t n = dims.size() >= 2 ? dims[dims.size() - 1] : -1;
    if (n < 1 || dims[dims.size() - 2] != n || (N >= 0 && n != N))
      return ffi::Error::InvalidArgument("each M must be (..., N, N), one N for all lanes");
    N = n;
    if (u0->element_count() * N != M->element_count())
      return ffi::Error::InvalidArgument("u must be (..., N) with M's leading axes");
    std::copy(u0->typed_data(), u0->typed_data() + u0->element_count(), (*u)->typed_data());
    lanes.push_back(Lane{M->typed_data(), (*u)->typed_data(), (*sigma)->typed_data(),
                         static_cast<int64_t>(u0->element_count()) / N,
                         ((right >> l) & 1) != 0});
  }
  auto shared = std::make_shared<LaneSet>(std::move(lanes), N, krylov, max_restarts, tol);
  const size_t L = shared->lanes.size();
  for (size_t l = 1; l < L; ++l) pool.Schedule([shared, l] { shared->RunIfFree(l); });
  for (size_t l = 0; l < L; ++l) shared->RunIfFree(l);
  for (size_t l = 0; l < L; ++l)
    while (shared->state[l].load(std::memory_order_acquire) != 2) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxTopSingularValue, TopSingularValues,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()  // M_l (..., N, N), u_l (..., N) per lane
                                  .RemainingRets()  // σ_l (...), u_l (..., N) per lane
                                  .Attr<int64_t>("krylov")
                                  .Attr<float>("tol")
                                  .Attr<int64_t>("max_restarts")
                                  .Attr<int64_t>("right"));  // bit l: lane l's u on the right
