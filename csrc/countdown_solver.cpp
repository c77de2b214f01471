#include "countdown_solver.hpp"

#include <cstdlib>
#include <numeric>

namespace verilens {
namespace {

struct Rational {
  int64_t num, den;  // den > 0, gcd(num, den) == 1
};

bool normalize(__int128 n, __int128 d, Rational* r) {
  if (d < 0) { n = -n; d = -d; }
  __int128 a = n < 0 ? -n : n, b = d;
  while (b != 0) { __int128 t = a % b; a = b; b = t; }
  if (a > 1) { n /= a; d /= a; }
  if (n > INT64_MAX || n < -INT64_MAX || d > INT64_MAX) return false;
  r->num = static_cast<int64_t>(n);
  r->den = static_cast<int64_t>(d);
  return true;
}

// Expression nodes live in a stack-like pool; leaves have op == 0.
struct Node {
  char op;
  int left, right;
  int64_t leaf;
};

struct Item {
  Rational value;
  int node;
};

constexpr char kOps[4] = {'+', '-', '*', '/'};

int prec(char op) { return (op == '+' || op == '-') ? 1 : 2; }

class Solver {
 public:
  Solver(Rational target) : target_(target) {}

  // 1 found, 0 not found, -1 overflow
  int search(std::vector<Item>& items) {
    const size_t n = items.size();
    if (n == 1) {
      return (items[0].value.num == target_.num && items[0].value.den == target_.den) ? 1 : 0;
    }
    std::vector<Item> next;
    next.reserve(n - 1);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        if (i == j) continue;
        const Rational a = items[i].value, b = items[j].value;
        for (char op : kOps) {
          if ((op == '+' || op == '*') && i > j) continue;
          if (op == '/' && b.num == 0) continue;
          __int128 rn, rd;
          switch (op) {
            case '+': rn = (__int128)a.num * b.den + (__int128)b.num * a.den; rd = (__int128)a.den * b.den; break;
            case '-': rn = (__int128)a.num * b.den - (__int128)b.num * a.den; rd = (__int128)a.den * b.den; break;
            case '*': rn = (__int128)a.num * b.num; rd = (__int128)a.den * b.den; break;
            default: rn = (__int128)a.num * b.den; rd = (__int128)a.den * b.num; break;
          }
          Rational v;
          if (!normalize(rn, rd, &v)) return -1;
          next.clear();
          for (size_t k = 0; k < n; ++k)
            if (k != i && k != j) next.push_back(items[k]);
          nodes_.push_back({op, items[i].node, items[j].node, 0});
          next.push_back({v, static_cast<int>(nodes_.size()) - 1});
          int r = search(next);
          if (r != 0) return r;  // keep the pool intact for formatting
          nodes_.pop_back();
        }
      }
    }
    return 0;
  }

  std::string format(int id) const {
    const Node& nd = nodes_[id];
    if (nd.op == 0) return std::to_string(nd.leaf);
    std::string ls = format(nd.left), rs = format(nd.right);
    const Node& l = nodes_[nd.left];
    const Node& r = nodes_[nd.right];
    if (l.op != 0 && prec(l.op) < prec(nd.op)) ls = "(" + ls + ")";
    if (r.op != 0 && (prec(r.op) < prec(nd.op) || (prec(r.op) == prec(nd.op) && (nd.op == '-' || nd.op == '/'))))
      rs = "(" + rs + ")";
    return ls + " " + nd.op + " " + rs;
  }

  std::vector<Node> nodes_;

 private:
  Rational target_;
};

}  // namespace

SolveStatus countdown_solve(const std::vector<int64_t>& nums, int64_t target, std::string* out) {
  if (nums.empty()) return SolveStatus::kNone;
  Solver s({target, 1});
  std::vector<Item> items;
  for (int64_t x : nums) {
    s.nodes_.push_back({0, -1, -1, x});
    items.push_back({{x, 1}, static_cast<int>(s.nodes_.size()) - 1});
  }
  int r = s.search(items);
  if (r < 0) return SolveStatus::kOverflow;
  if (r == 0) return SolveStatus::kNone;
  *out = s.format(static_cast<int>(s.nodes_.size()) - 1);
  return SolveStatus::kFound;
}

}  // namespace verilens
