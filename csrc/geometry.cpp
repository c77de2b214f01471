// Streaming Pearson sums for cross-model distance correlation; see geometry.hpp.
#include "geometry.hpp"

#include <algorithm>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define VERILENS_X86 1
#endif

namespace verilens {
namespace geometry {

bool cpu_has_avx2_fma() {
#ifdef VERILENS_X86
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

namespace {

// ---------------------------------------------------------------------------------
// Tile reduction (BLAS-tile path): one row run of a Gram-tile pair.
// r[0..5] += n, Sx, Sy, Sxx, Syy, Sxy over columns [c0, n).
template <typename T, int METRIC>
inline __attribute__((always_inline)) void row_run_impl(const T* __restrict ga,
                                                        const T* __restrict gb, int64_t c0,
                                                        int64_t n, double nar,
                                                        const double* __restrict nac,
                                                        double nbr,
                                                        const double* __restrict nbc,
                                                        double cx, double cy, double* r) {
  double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
  if (METRIC == kCosine && nac == nullptr) {
    const double c1 = 1.0 - cx, c2 = 1.0 - cy;
#pragma omp simd reduction(+ : sx, sy, sxx, syy, sxy)
    for (int64_t j = c0; j < n; ++j) {
      const double x = c1 - static_cast<double>(ga[j]);
      const double y = c2 - static_cast<double>(gb[j]);
      sx += x; sy += y; sxx += x * x; syy += y * y; sxy += x * y;
    }
  } else if (METRIC == kCosine) {  // raw Gram tiles scaled by inverse norms
    const double c1 = 1.0 - cx, c2 = 1.0 - cy;
#pragma omp simd reduction(+ : sx, sy, sxx, syy, sxy)
    for (int64_t j = c0; j < n; ++j) {
      const double x = c1 - static_cast<double>(ga[j]) * nar * nac[j];
      const double y = c2 - static_cast<double>(gb[j]) * nbr * nbc[j];
      sx += x; sy += y; sxx += x * x; syy += y * y; sxy += x * y;
    }
  } else {
#pragma omp simd reduction(+ : sx, sy, sxx, syy, sxy)
    for (int64_t j = c0; j < n; ++j) {
      double d2a = nar + nac[j] - 2.0 * static_cast<double>(ga[j]);
      double d2b = nbr + nbc[j] - 2.0 * static_cast<double>(gb[j]);
      d2a = d2a > 0.0 ? d2a : 0.0;
      d2b = d2b > 0.0 ? d2b : 0.0;
      const double x = __builtin_sqrt(d2a) - cx;
      const double y = __builtin_sqrt(d2b) - cy;
      sx += x; sy += y; sxx += x * x; syy += y * y; sxy += x * y;
    }
  }
  r[0] = static_cast<double>(n > c0 ? n - c0 : 0);
  r[1] = sx; r[2] = sy; r[3] = sxx; r[4] = syy; r[5] = sxy;
}

using RowRunFn = void (*)(const void*, const void*, int64_t, int64_t, double, const double*,
                          double, const double*, double, double, double*);

#define VERILENS_ROW_RUN(NAME, T, METRIC, ATTR)                                              \
  ATTR __attribute__((optimize("no-math-errno"))) void NAME(                                 \
      const void* ga, const void* gb, int64_t c0, int64_t n, double nar, const double* nac, \
      double nbr, const double* nbc, double cx, double cy, double* r) {                      \
    row_run_impl<T, METRIC>(static_cast<const T*>(ga), static_cast<const T*>(gb), c0, n,     \
                            nar, nac, nbr, nbc, cx, cy, r);                                  \
  }

VERILENS_ROW_RUN(row_run_f32_cos, float, kCosine, )
VERILENS_ROW_RUN(row_run_f32_euc, float, kEuclidean, )
VERILENS_ROW_RUN(row_run_f64_cos, double, kCosine, )
VERILENS_ROW_RUN(row_run_f64_euc, double, kEuclidean, )
#ifdef VERILENS_X86
VERILENS_ROW_RUN(row_run_f32_cos_avx2, float, kCosine, __attribute__((target("avx2,fma"))))
VERILENS_ROW_RUN(row_run_f32_euc_avx2, float, kEuclidean, __attribute__((target("avx2,fma"))))
VERILENS_ROW_RUN(row_run_f64_cos_avx2, double, kCosine, __attribute__((target("avx2,fma"))))
VERILENS_ROW_RUN(row_run_f64_euc_avx2, double, kEuclidean, __attribute__((target("avx2,fma"))))
#endif

template <typename T>
RowRunFn pick_row_run(int metric) {
  constexpr bool f32 = sizeof(T) == 4;
#ifdef VERILENS_X86
  if (cpu_has_avx2_fma()) {
    if (f32) return metric == kCosine ? row_run_f32_cos_avx2 : row_run_f32_euc_avx2;
    return metric == kCosine ? row_run_f64_cos_avx2 : row_run_f64_euc_avx2;
  }
#endif
  if (f32) return metric == kCosine ? row_run_f32_cos : row_run_f32_euc;
  return metric == kCosine ? row_run_f64_cos : row_run_f64_euc;
}

// ---------------------------------------------------------------------------------
// Fused kernel: 3x4 register-blocked dot products, out[s * 4 + t] = a[s] . b[t].

template <typename T>
void dots3x4_generic(const T* const* a, const T* const* b, int64_t K, double* out) {
  constexpr int L = 32 / sizeof(T);
  T acc[3][4][L] = {};
  int64_t k = 0;
  for (; k + L <= K; k += L)
    for (int s = 0; s < 3; ++s)
      for (int t = 0; t < 4; ++t)
        for (int l = 0; l < L; ++l) acc[s][t][l] += a[s][k + l] * b[t][k + l];
  for (int s = 0; s < 3; ++s)
    for (int t = 0; t < 4; ++t) {
      T v = 0;
      for (int l = 0; l < L; ++l) v += acc[s][t][l];
      for (int64_t kk = k; kk < K; ++kk) v += a[s][kk] * b[t][kk];
      out[s * 4 + t] = static_cast<double>(v);
    }
}

#ifdef VERILENS_X86
__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline double hsum4(__m256d v) {
  __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
  lo = _mm_add_pd(lo, hi);
  __m128d h = _mm_unpackhi_pd(lo, lo);
  return _mm_cvtsd_f64(_mm_add_sd(lo, h));
}

__attribute__((target("avx2,fma"))) void dots3x4_f32_avx2(const float* const* a,
                                                          const float* const* b, int64_t K,
                                                          double* out) {
  __m256 c[3][4];
  for (int s = 0; s < 3; ++s)
    for (int t = 0; t < 4; ++t) c[s][t] = _mm256_setzero_ps();
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2];
  const float *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 x0 = _mm256_loadu_ps(a0 + k), x1 = _mm256_loadu_ps(a1 + k),
                 x2 = _mm256_loadu_ps(a2 + k);
    __m256 y = _mm256_loadu_ps(b0 + k);
    c[0][0] = _mm256_fmadd_ps(x0, y, c[0][0]);
    c[1][0] = _mm256_fmadd_ps(x1, y, c[1][0]);
    c[2][0] = _mm256_fmadd_ps(x2, y, c[2][0]);
    y = _mm256_loadu_ps(b1 + k);
    c[0][1] = _mm256_fmadd_ps(x0, y, c[0][1]);
    c[1][1] = _mm256_fmadd_ps(x1, y, c[1][1]);
    c[2][1] = _mm256_fmadd_ps(x2, y, c[2][1]);
    y = _mm256_loadu_ps(b2 + k);
    c[0][2] = _mm256_fmadd_ps(x0, y, c[0][2]);
    c[1][2] = _mm256_fmadd_ps(x1, y, c[1][2]);
    c[2][2] = _mm256_fmadd_ps(x2, y, c[2][2]);
    y = _mm256_loadu_ps(b3 + k);
    c[0][3] = _mm256_fmadd_ps(x0, y, c[0][3]);
    c[1][3] = _mm256_fmadd_ps(x1, y, c[1][3]);
    c[2][3] = _mm256_fmadd_ps(x2, y, c[2][3]);
  }
  for (int s = 0; s < 3; ++s)
    for (int t = 0; t < 4; ++t) {
      float v = hsum8(c[s][t]);
      for (int64_t kk = k; kk < K; ++kk) v += a[s][kk] * b[t][kk];
      out[s * 4 + t] = static_cast<double>(v);
    }
}

__attribute__((target("avx2,fma"))) void dots3x4_f64_avx2(const double* const* a,
                                                          const double* const* b, int64_t K,
                                                          double* out) {
  __m256d c[3][4];
  for (int s = 0; s < 3; ++s)
    for (int t = 0; t < 4; ++t) c[s][t] = _mm256_setzero_pd();
  const double *a0 = a[0], *a1 = a[1], *a2 = a[2];
  const double *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3];
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const __m256d x0 = _mm256_loadu_pd(a0 + k), x1 = _mm256_loadu_pd(a1 + k),
                  x2 = _mm256_loadu_pd(a2 + k);
    __m256d y = _mm256_loadu_pd(b0 + k);
    c[0][0] = _mm256_fmadd_pd(x0, y, c[0][0]);
    c[1][0] = _mm256_fmadd_pd(x1, y, c[1][0]);
    c[2][0] = _mm256_fmadd_pd(x2, y, c[2][0]);
    y = _mm256_loadu_pd(b1 + k);
    c[0][1] = _mm256_fmadd_pd(x0, y, c[0][1]);
    c[1][1] = _mm256_fmadd_pd(x1, y, c[1][1]);
    c[2][1] = _mm256_fmadd_pd(x2, y, c[2][1]);
    y = _mm256_loadu_pd(b2 + k);
    c[0][2] = _mm256_fmadd_pd(x0, y, c[0][2]);
    c[1][2] = _mm256_fmadd_pd(x1, y, c[1][2]);
    c[2][2] = _mm256_fmadd_pd(x2, y, c[2][2]);
    y = _mm256_loadu_pd(b3 + k);
    c[0][3] = _mm256_fmadd_pd(x0, y, c[0][3]);
    c[1][3] = _mm256_fmadd_pd(x1, y, c[1][3]);
    c[2][3] = _mm256_fmadd_pd(x2, y, c[2][3]);
  }
  for (int s = 0; s < 3; ++s)
    for (int t = 0; t < 4; ++t) {
      double v = hsum4(c[s][t]);
      for (int64_t kk = k; kk < K; ++kk) v += a[s][kk] * b[t][kk];
      out[s * 4 + t] = v;
    }
}
#endif

template <typename T>
using DotsFn = void (*)(const T* const*, const T* const*, int64_t, double*);

template <typename T>
DotsFn<T> pick_dots();

template <>
DotsFn<float> pick_dots<float>() {
#ifdef VERILENS_X86
  if (cpu_has_avx2_fma()) return dots3x4_f32_avx2;
#endif
  return dots3x4_generic<float>;
}

template <>
DotsFn<double> pick_dots<double>() {
#ifdef VERILENS_X86
  if (cpu_has_avx2_fma()) return dots3x4_f64_avx2;
#endif
  return dots3x4_generic<double>;
}

inline double dist_from_gram(int metric, double g, double wi, double wj) {
  if (metric == kCosine) return 1.0 - g * wi * wj;
  const double d2 = wi + wj - 2.0 * g;
  return d2 > 0.0 ? std::sqrt(d2) : 0.0;
}

}  // namespace

template <typename T>
Sums tile_sums(const T* ga, int64_t lda, const T* gb, int64_t ldb, int64_t m, int64_t n,
               int64_t i0, int64_t j0, bool upper, int metric, const double* na_r,
               const double* na_c, const double* nb_r, const double* nb_c, double cx,
               double cy) {
  const RowRunFn fn = pick_row_run<T>(metric);
  // Per-row results, combined in row order afterwards: deterministic for any thread count.
  std::vector<double> rows(static_cast<size_t>(m) * 6);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) {
    int64_t c0 = 0;
    if (upper) c0 = std::min<int64_t>(n, std::max<int64_t>(0, i0 + r + 1 - j0));
    const double nar = na_r ? na_r[r] : 0.0;
    const double nbr = nb_r ? nb_r[r] : 0.0;
    fn(ga + r * lda, gb + r * ldb, c0, n, nar, na_c, nbr, nb_c, cx, cy, &rows[r * 6]);
  }
  Sums out;
  for (int64_t r = 0; r < m; ++r) {
    const double* q = &rows[r * 6];
    out.add_run(q[0], q[1], q[2], q[3], q[4], q[5]);
  }
  return out;
}

template <typename T>
Sums stream_sums(const T* a, int64_t V, int64_t da, const T* b, int64_t db,
                 const int64_t* perm_b, int metric, const double* wa, const double* wb,
                 double cx, double cy, int64_t block_rows) {
  const DotsFn<T> dots = pick_dots<T>();
  const int64_t MC = std::max<int64_t>(3, (block_rows / 3) * 3);
  const int64_t nblk = (V + MC - 1) / MC;
  std::vector<Sums> blk(static_cast<size_t>(nblk));
  auto brow = [&](int64_t i) -> int64_t { return perm_b ? perm_b[i] : i; };

#pragma omp parallel
  {
    std::vector<double> gA(static_cast<size_t>(MC) * 4), gB(static_cast<size_t>(MC) * 4);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bi = 0; bi < nblk; ++bi) {
      const int64_t i0 = bi * MC, i1 = std::min(V, i0 + MC);
      Sums S;
      for (int64_t j = i0 + 1; j < V; j += 4) {
        int64_t jr[4];
        const T* pa_b[4];
        const T* pb_b[4];
        for (int t = 0; t < 4; ++t) {
          jr[t] = std::min(j + t, V - 1);
          pa_b[t] = a + jr[t] * da;
          pb_b[t] = b + brow(jr[t]) * db;
        }
        // Rows of the block that pair with at least one column of this quad (i < j + 3).
        const int64_t iend = std::min(i1, j + 3);
        for (int64_t it = i0; it < iend; it += 3) {
          const T* pa_a[3];
          const T* pb_a[3];
          for (int s = 0; s < 3; ++s) {
            const int64_t ir = std::min(it + s, i1 - 1);
            pa_a[s] = a + ir * da;
            pb_a[s] = b + brow(ir) * db;
          }
          dots(pa_a, pa_b, da, &gA[(it - i0) * 4]);
          dots(pb_a, pb_b, db, &gB[(it - i0) * 4]);
        }
        double rn = 0, rx = 0, ry = 0, rxx = 0, ryy = 0, rxy = 0;
        for (int64_t i = i0; i < iend; ++i) {
          const double wai = wa[i], wbi = wb[brow(i)];
          for (int t = 0; t < 4; ++t) {
            const int64_t jj = j + t;
            if (jj >= V || jj <= i) continue;
            const double x = dist_from_gram(metric, gA[(i - i0) * 4 + t], wai, wa[jj]) - cx;
            const double y =
                dist_from_gram(metric, gB[(i - i0) * 4 + t], wbi, wb[brow(jj)]) - cy;
            rn += 1; rx += x; ry += y; rxx += x * x; ryy += y * y; rxy += x * y;
          }
        }
        S.add_run(rn, rx, ry, rxx, ryy, rxy);
      }
      blk[bi] = S;
    }
  }
  Sums out;
  for (const auto& s : blk) out.add(s);
  return out;
}

template Sums tile_sums<float>(const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                               int64_t, int64_t, bool, int, const double*, const double*,
                               const double*, const double*, double, double);
template Sums tile_sums<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                int64_t, int64_t, int64_t, bool, int, const double*,
                                const double*, const double*, const double*, double, double);
template Sums stream_sums<float>(const float*, int64_t, int64_t, const float*, int64_t,
                                 const int64_t*, int, const double*, const double*, double,
                                 double, int64_t);
template Sums stream_sums<double>(const double*, int64_t, int64_t, const double*, int64_t,
                                  const int64_t*, int, const double*, const double*, double,
                                  double, int64_t);

}  // namespace geometry
}  // namespace verilens
