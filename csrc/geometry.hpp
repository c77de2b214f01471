// Streaming Pearson sums between two models' pairwise distance matrices
// (verilens.geometry). Plain C++ on raw row-major buffers; no libtorch.
//
// For tokens i < j let x_ij = d_A(i, j) - cx and y_ij = d_B(p(i), p(j)) - cy, where
// d is the cosine or Euclidean distance, p an optional permutation of B's rows (the
// Mantel test) and cx, cy shifts (pilot means: they keep the raw-moment formula free of
// cancellation). We return n and the five sums Sx, Sy, Sxx, Syy, Sxy in float64.
// Summation: each short run (one tile row, or one 3x4 micro block strip) is summed in
// float64, and the runs are combined with Neumaier's compensated summation, so 10^10
// terms keep full float64 precision.
#pragma once

#include <cmath>
#include <cstdint>

namespace verilens {
namespace geometry {

enum Metric : int { kCosine = 0, kEuclidean = 1 };

// Neumaier (improved Kahan) compensated accumulator.
struct Neumaier {
  double s = 0.0, c = 0.0;
  inline void add(double x) {
    const double t = s + x;
    if (std::fabs(s) >= std::fabs(x)) c += (s - t) + x;
    else c += (x - t) + s;
    s = t;
  }
  inline void add(const Neumaier& o) { add(o.s); add(o.c); }
  inline double value() const { return s + c; }
};

struct Sums {
  Neumaier n, sx, sy, sxx, syy, sxy;
  inline void add_run(double rn, double rx, double ry, double rxx, double ryy, double rxy) {
    n.add(rn); sx.add(rx); sy.add(ry); sxx.add(rxx); syy.add(ryy); sxy.add(rxy);
  }
  inline void add(const Sums& o) {
    n.add(o.n); sx.add(o.sx); sy.add(o.sy); sxx.add(o.sxx); syy.add(o.syy); sxy.add(o.sxy);
  }
};

// Reduction of one pair of Gram tiles (the BLAS-tile path).
// ga[r * lda + c], gb[r * ldb + c]: r < m rows (global row i0 + r), c < n columns
// (global column j0 + c). With `upper`, only pairs with global i < j count.
// Cosine: d = 1 - g * na_r[r] * na_c[c] with the rows' inverse norms (all four norm
// vectors null: the tiles already hold cosine similarities, d = 1 - g).
// Euclidean: d = sqrt(max(nr[r] + nc[c] - 2 g, 0)), nr/nc the rows' squared norms
// (na_* for A, nb_* for B). Parallel over rows with OpenMP; deterministic.
template <typename T>
Sums tile_sums(const T* ga, int64_t lda, const T* gb, int64_t ldb, int64_t m, int64_t n,
               int64_t i0, int64_t j0, bool upper, int metric, const double* na_r,
               const double* na_c, const double* nb_r, const double* nb_c, double cx, double cy);

// The fully fused compiled kernel: no Gram tile is ever written. a: V x da, b: rows
// x db (row perm_b[i] stands for token i when perm_b is given), both row-major.
// Cosine: wa/wb are the rows' inverse norms (d = 1 - g * w_i * w_j).
// Euclidean: wa/wb are the rows' squared norms (d = sqrt(w_i + w_j - 2 g)).
// Cache-blocked (row blocks of `block_rows` stay in L2, 3x4 register-blocked dot
// products with AVX2/FMA where the CPU has them), OpenMP over row blocks.
template <typename T>
Sums stream_sums(const T* a, int64_t V, int64_t da, const T* b, int64_t db,
                 const int64_t* perm_b, int metric, const double* wa, const double* wb,
                 double cx, double cy, int64_t block_rows);

bool cpu_has_avx2_fma();

}  // namespace geometry
}  // namespace verilens
