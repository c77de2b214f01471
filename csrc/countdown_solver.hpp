// Exhaustive CountDown solver on exact rationals. The search order is the one of the
// Python reference (python/verilens/countdown/solver.py), so both return the same string.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace verilens {

enum class SolveStatus { kFound, kNone, kOverflow };

// Solves nums -> target. kOverflow means an intermediate value left int64: the caller
// must fall back to the arbitrary-precision reference to stay exact.
SolveStatus countdown_solve(const std::vector<int64_t>& nums, int64_t target, std::string* out);

}  // namespace verilens
