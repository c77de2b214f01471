// The verilens._core extension: plain C++ on plain buffers, no libtorch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "countdown_solver.hpp"

namespace py = pybind11;

// ---- geometry (verilens.geometry: streaming distance correlation) -----------------
// Defined in geometry_bindings.cpp.
void verilens_register_geometry(py::module_& m);
// ---- end geometry ------------------------------------------------------------------

namespace {

// Solves one problem; py::none() when there is no solution. Overflow of int64 is
// reported as OverflowError so the Python layer can use its arbitrary-precision path.
std::optional<std::string> solve_one(const std::vector<int64_t>& nums, int64_t target) {
  std::string out;
  verilens::SolveStatus st;
  {
    py::gil_scoped_release release;
    st = verilens::countdown_solve(nums, target, &out);
  }
  if (st == verilens::SolveStatus::kOverflow) throw py::value_error("overflow");
  if (st == verilens::SolveStatus::kNone) return std::nullopt;
  return out;
}

// Many problems at once, in parallel over problems (OpenMP). Entries whose search
// overflowed int64 come back as the string "!overflow" for the caller to redo.
std::vector<std::optional<std::string>> solve_many(const std::vector<std::vector<int64_t>>& nums,
                                                   const std::vector<int64_t>& targets) {
  if (nums.size() != targets.size()) throw std::invalid_argument("nums and targets differ in length");
  const long n = static_cast<long>(nums.size());
  std::vector<std::optional<std::string>> out(n);
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 16)
    for (long i = 0; i < n; ++i) {
      std::string s;
      auto st = verilens::countdown_solve(nums[i], targets[i], &s);
      if (st == verilens::SolveStatus::kFound) out[i] = s;
      else if (st == verilens::SolveStatus::kOverflow) out[i] = std::string("!overflow");
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "verilens compiled core (CPU): CountDown solver and analysis kernels";
  m.def("countdown_solve", &solve_one, py::arg("nums"), py::arg("target"),
        "First solution in the reference search order, or None. ValueError('overflow') if an "
        "intermediate value leaves int64.");
  m.def("countdown_solve_many", &solve_many, py::arg("nums"), py::arg("targets"),
        "countdown_solve over many problems in parallel; '!overflow' marks entries to redo.");
  // ---- geometry ----
  verilens_register_geometry(m);
  // ---- end geometry ----
#ifdef VERILENS_HAVE_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
}
