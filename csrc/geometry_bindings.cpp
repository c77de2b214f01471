// Python bindings of the geometry kernels (registered from module.cpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "geometry.hpp"

namespace py = pybind11;
using verilens::geometry::Sums;

namespace {

py::tuple to_tuple(const Sums& s) {
  return py::make_tuple(s.n.value(), s.sx.value(), s.sy.value(), s.sxx.value(), s.syy.value(),
                        s.sxy.value());
}

// Row stride (in elements) of a 2-D array whose rows are contiguous.
int64_t row_stride(const py::array& x, const char* name) {
  if (x.ndim() != 2) throw std::invalid_argument(std::string(name) + " must be 2-D");
  if (x.shape(1) > 1 && x.strides(1) != x.itemsize())
    throw std::invalid_argument(std::string(name) + " rows must be contiguous");
  if (x.strides(0) % x.itemsize() != 0)
    throw std::invalid_argument(std::string(name) + " has an unaligned row stride");
  return x.strides(0) / x.itemsize();
}

const double* vec_or_null(const py::object& o, int64_t n, const char* name) {
  if (o.is_none()) return nullptr;
  auto a = o.cast<py::array>();
  if (a.dtype().kind() != 'f' || a.itemsize() != 8 || a.ndim() != 1 || a.shape(0) < n ||
      (a.shape(0) > 1 && a.strides(0) != 8))
    throw std::invalid_argument(std::string(name) + " must be a contiguous float64 vector");
  return static_cast<const double*>(a.data());
}

py::tuple tile_sums_py(py::array ga, py::array gb, int64_t i0, int64_t j0, bool upper,
                       int metric, py::object na_r, py::object na_c, py::object nb_r,
                       py::object nb_c, double cx, double cy) {
  if (!ga.dtype().is(gb.dtype())) throw std::invalid_argument("ga and gb dtypes differ");
  if (ga.shape(0) != gb.shape(0) || ga.shape(1) != gb.shape(1))
    throw std::invalid_argument("ga and gb shapes differ");
  const int64_t lda = row_stride(ga, "ga"), ldb = row_stride(gb, "gb");
  const int64_t m = ga.shape(0), n = ga.shape(1);
  const bool euc = metric == verilens::geometry::kEuclidean;
  if (metric != 0 && metric != 1) throw std::invalid_argument("metric must be 0 or 1");
  const double* nar = vec_or_null(na_r, m, "na_r");
  const double* nac = vec_or_null(na_c, n, "na_c");
  const double* nbr = vec_or_null(nb_r, m, "nb_r");
  const double* nbc = vec_or_null(nb_c, n, "nb_c");
  const int given = (nar != nullptr) + (nac != nullptr) + (nbr != nullptr) + (nbc != nullptr);
  if (euc ? given != 4 : (given != 0 && given != 4))
    throw std::invalid_argument("pass all four norm vectors (euclidean: squared norms; "
                                "cosine: inverse norms, or none for normalised tiles)");
  Sums s;
  const char kind = ga.dtype().kind();
  const auto isz = ga.itemsize();
  if (kind == 'f' && isz == 4) {
    py::gil_scoped_release rel;
    s = verilens::geometry::tile_sums<float>(static_cast<const float*>(ga.data()), lda,
                                             static_cast<const float*>(gb.data()), ldb, m, n,
                                             i0, j0, upper, metric, nar, nac, nbr, nbc, cx, cy);
  } else if (kind == 'f' && isz == 8) {
    py::gil_scoped_release rel;
    s = verilens::geometry::tile_sums<double>(static_cast<const double*>(ga.data()), lda,
                                              static_cast<const double*>(gb.data()), ldb, m, n,
                                              i0, j0, upper, metric, nar, nac, nbr, nbc, cx,
                                              cy);
  } else {
    throw std::invalid_argument("tiles must be float32 or float64");
  }
  return to_tuple(s);
}

py::tuple stream_sums_py(py::array a, py::array b, py::object perm, int metric, py::array wa,
                         py::array wb, double cx, double cy, int64_t block_rows) {
  if (!a.dtype().is(b.dtype())) throw std::invalid_argument("a and b dtypes differ");
  const int64_t lda = row_stride(a, "a"), ldb = row_stride(b, "b");
  const int64_t V = a.shape(0);
  if (lda != a.shape(1) || ldb != b.shape(1))
    throw std::invalid_argument("a and b must be C-contiguous");
  const int64_t* p = nullptr;
  if (!perm.is_none()) {
    auto pa = perm.cast<py::array>();
    if (pa.dtype().kind() != 'i' || pa.itemsize() != 8 || pa.ndim() != 1 || pa.shape(0) != V ||
        (V > 1 && pa.strides(0) != 8))
      throw std::invalid_argument("perm must be a contiguous int64 vector of length V");
    p = static_cast<const int64_t*>(pa.data());
    for (int64_t i = 0; i < V; ++i)
      if (p[i] < 0 || p[i] >= b.shape(0)) throw std::invalid_argument("perm index out of range");
  } else if (b.shape(0) != V) {
    throw std::invalid_argument("a and b row counts differ");
  }
  const double* pwa = vec_or_null(wa, V, "wa");
  const double* pwb = vec_or_null(wb, b.shape(0), "wb");
  Sums s;
  const auto isz = a.itemsize();
  if (a.dtype().kind() == 'f' && isz == 4) {
    py::gil_scoped_release rel;
    s = verilens::geometry::stream_sums<float>(
        static_cast<const float*>(a.data()), V, a.shape(1), static_cast<const float*>(b.data()),
        b.shape(1), p, metric, pwa, pwb, cx, cy, block_rows);
  } else if (a.dtype().kind() == 'f' && isz == 8) {
    py::gil_scoped_release rel;
    s = verilens::geometry::stream_sums<double>(
        static_cast<const double*>(a.data()), V, a.shape(1),
        static_cast<const double*>(b.data()), b.shape(1), p, metric, pwa, pwb, cx, cy,
        block_rows);
  } else {
    throw std::invalid_argument("inputs must be float32 or float64");
  }
  return to_tuple(s);
}

}  // namespace

void verilens_register_geometry(py::module_& m) {
  m.def("geometry_tile_sums", &tile_sums_py, py::arg("ga"), py::arg("gb"), py::arg("i0"),
        py::arg("j0"), py::arg("upper"), py::arg("metric"), py::arg("na_r") = py::none(),
        py::arg("na_c") = py::none(), py::arg("nb_r") = py::none(),
        py::arg("nb_c") = py::none(), py::arg("cx") = 0.0, py::arg("cy") = 0.0,
        "Pearson sums (n, Sx, Sy, Sxx, Syy, Sxy) of one pair of Gram tiles; metric 0 = cosine "
        "(tiles hold cosine similarities), 1 = euclidean (needs squared norms).");
  m.def("geometry_stream_sums", &stream_sums_py, py::arg("a"), py::arg("b"),
        py::arg("perm") = py::none(), py::arg("metric") = 0, py::arg("wa"), py::arg("wb"),
        py::arg("cx") = 0.0, py::arg("cy") = 0.0, py::arg("block_rows") = 48,
        "Fused streaming Pearson sums over all pairs i < j (no Gram tile is stored). wa/wb: "
        "inverse norms (cosine) or squared norms (euclidean).");
  m.attr("geometry_has_avx2") = verilens::geometry::cpu_has_avx2_fma();
}
