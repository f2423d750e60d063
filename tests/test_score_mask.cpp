// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::ScoreMask (score_mask.hpp), the built-ins (builtin_masks.hpp) and attn::BlockMap
// (block_map.hpp) in the kernel, against the independent fp64 reference of
// support/reference.hpp (reference_score_mask, and each built-in's formula written from its
// definition): every built-in and user functions (score, mask with and without a block
// predicate, head-dependent) on prefill, chunked prefill and decode shapes, GQA, soft-capping,
// keys and values stored in bfloat16, half and qint8, partial attention merged, the optional
// outputs, executors; that key blocks a mask hides never reach the tiles; BlockMap's cells
// against brute force; and every ShapeError, with the output untouched.

#include <attn/block_map.hpp>
#include <attn/builtin_masks.hpp>
#include <attn/detail/score_mask_bind.hpp>
#include <attn/mask.hpp>
#include <attn/parallel.hpp>
#include <attn/partial_attention.hpp>
#include <attn/scaled_dot_product.hpp>
#include <attn/score_mask.hpp>
#include <attn/storage.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/float_mode.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Visibility;
using attn_test::MatrixD;
using attn_test::Random;
using attn_test::ReferenceScore;
using attn_test::ReferenceVisible;
template <typename Scalar>
using Matrix = attn::Matrix<Scalar>;

constexpr double infinity = std::numeric_limits<double>::infinity();

// ---------------------------------------------------------------------------------------------
// Shapes, rules (a ScoreMask and the reference's description of it) and tolerances
// ---------------------------------------------------------------------------------------------

// q (n, H·d), k (m, Hkv·d), v (m, Hkv·dv), all uniform in [−1, 1].
struct Shape {
  Index n, m;
  Index heads = 4;
  Index kv_heads = 4;
  Index d = 16;
  Index dv = 8;
};

std::string describe(const Shape& c) {
  return "n=" + std::to_string(c.n) + " m=" + std::to_string(c.m) +
         " H=" + std::to_string(c.heads) + " Hkv=" + std::to_string(c.kv_heads) +
         " d=" + std::to_string(c.d) + " dv=" + std::to_string(c.dv);
}

template <typename SM>
struct Rule {
  std::string name;
  SM mask;
  ReferenceScore score;      // empty: logits unchanged
  ReferenceVisible visible;  // empty: every key
  double bias_bound = 0;     // what the score function adds to B (see logit_bound)
  std::optional<double> scale;
};

template <typename SM>
Rule<SM> make_rule(std::string name, SM mask, ReferenceScore score, ReferenceVisible visible,
                   double bias_bound = 0, std::optional<double> scale = std::nullopt) {
  return Rule<SM>{std::move(name),    std::move(mask), std::move(score),
                  std::move(visible), bias_bound,      scale};
}

// B of support/tolerance.hpp for a rule: with q and k in [−1, 1], |scale·q·k| ≤ scale·d, plus what
// the score function adds to the logits that carry weight:
// - a bias bounded by b (T5's table, a per-head bias, a user's term) adds b;
// - ALiBi's slope·(k − q) is unbounded in the distance, but under a causal mask it is ≤ 0, so it
//   never raises a row's max: a key x below the max has weight ≤ e^−x and a logit error
//   u·|logit| ≤ u·(B + x), and Σ_j p_j·x_j ≤ ln m (the softmax's entropy, ln Z + E_p[x], is at
//   most ln m, and Z ≥ 1), so ALiBi adds ln m to B.
double logit_bound(const Shape& c, std::optional<double> scale, double bias_bound) {
  const double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(c.d));
  return std::abs(s) * static_cast<double>(c.d) + bias_bound;
}

template <typename Scalar, typename SM>
double tolerance(const Shape& c, const Rule<SM>& rule) {
  return attn_test::attention_tolerance<Scalar>(logit_bound(c, rule.scale, rule.bias_bound), c.m);
}

double log_keys(const Shape& c) {
  return std::log(static_cast<double>(c.m) + 1);
}

// Document lengths covering at least `total` positions (the last may run past it), up to a third
// of them each, some empty.
std::vector<Index> random_lengths(Index total, Random& rng) {
  std::vector<Index> lengths;
  const Index most = std::max<Index>(2, total / 3);
  for (Index sum = 0; sum < total;) {
    lengths.push_back(rng.bernoulli(0.15) ? 0 : rng.integer(1, most));
    sum += lengths.back();
  }
  return lengths;
}

// The factories under test, by the names the tests use.

template <typename Derived>
auto relative_position_bias(const Eigen::MatrixBase<Derived>& table, bool bidirectional = true,
                            Index max_distance = 128) {
  return attn::relative_position_bias(table, bidirectional, max_distance);
}

template <typename Derived>
auto head_bias(const Eigen::MatrixBase<Derived>& bias) {
  return attn::head_bias(bias);
}

// ---------------------------------------------------------------------------------------------
// The rules, each a factory: the built-ins with random parameters, and user functions.
// ---------------------------------------------------------------------------------------------

auto causal_alibi_rule(const Shape& c) {
  const std::vector<double> slopes = attn_test::reference_alibi_slopes(c.heads);
  return make_rule(
      "causal & alibi(H)", attn::Mask::causal() & attn::alibi(c.heads),
      [slopes](Index head, Index q, Index k, double s) {
        return s + attn_test::reference_alibi_bias(slopes[std::size_t(head)], q, k);
      },
      [](Index, Index q, Index k) { return k <= q; }, log_keys(c));
}

auto custom_alibi_rule(const Shape& c, Random& rng) {
  std::vector<double> slopes;
  for (Index h = 0; h < c.heads; ++h)
    slopes.push_back(h == 0 ? 0.0 : rng.uniform(0.01, 0.6));
  return make_rule(
      "causal & alibi(slopes)", attn::Mask::causal() & attn::alibi(slopes),
      [slopes](Index head, Index q, Index k, double s) {
        return s + attn_test::reference_alibi_bias(slopes[std::size_t(head)], q, k);
      },
      [](Index, Index q, Index k) { return k <= q; }, log_keys(c));
}

// T5 does not scale its logits: scale 1.
template <typename Scalar>
auto t5_rule(const Shape& c, Random& rng, bool bidirectional) {
  const Index buckets = bidirectional ? 32 : 16;
  const Index max_distance = bidirectional ? 128 : 40;
  const Matrix<Scalar> table = rng.uniform_matrix<Scalar>(buckets, c.heads, -2, 2);
  const MatrixD exact = table.template cast<double>();
  const ReferenceScore score = [=](Index head, Index q, Index k, double s) {
    return s +
           exact(attn_test::reference_t5_bucket(k - q, bidirectional, buckets, max_distance), head);
  };
  if (bidirectional) {
    return make_rule("relative_position_bias(bidirectional)",
                     relative_position_bias(table, true, max_distance), score, {}, 2, 1.0);
  }
  return make_rule(
      "causal & relative_position_bias(causal)",
      attn::Mask::causal() & relative_position_bias(table, false, max_distance), score,
      [](Index, Index q, Index k) { return k <= q; }, 2, 1.0);
}

// A per-head bias in the other precision than the call (converted per element), ~20% −∞, and
// head 1's middle query all −∞.
template <typename Scalar>
auto head_bias_rule(const Shape& c, Random& rng) {
  using BiasScalar = std::conditional_t<std::is_same_v<Scalar, float>, double, float>;
  Matrix<BiasScalar> bias = rng.uniform_matrix<BiasScalar>(c.heads * c.n, c.m, -2, 2);
  for (Index r = 0; r < bias.rows(); ++r) {
    for (Index j = 0; j < bias.cols(); ++j) {
      if (rng.bernoulli(0.2)) bias(r, j) = -std::numeric_limits<BiasScalar>::infinity();
    }
  }
  if (c.heads > 1 && c.n > 0) {
    bias.row(c.n + c.n / 2).setConstant(-std::numeric_limits<BiasScalar>::infinity());
  }
  const MatrixD exact = bias.template cast<double>();
  const Index n = c.n, m = c.m;
  return make_rule(
      "head_bias", head_bias(bias),
      [exact, n, m](Index head, Index q, Index k, double s) {
        const double b = attn_test::reference_head_bias(exact, n, m, head, q, k);
        return b == -infinity ? -infinity : s + b;
      },
      {}, 2);
}

auto documents_rule(const Shape& c, Random& rng) {
  const std::vector<Index> lengths = random_lengths(c.m, rng);
  return make_rule("documents (" + std::to_string(lengths.size()) + ")", attn::documents(lengths),
                   {}, [lengths](Index, Index q, Index k) {
                     return attn_test::reference_same_document(lengths, q, k);
                   });
}

// Causal within documents given by an id per key position, from random lengths.
auto document_ids_rule(const Shape& c, Random& rng) {
  std::vector<Index> ids;
  Index id = 1000;
  for (const Index length : random_lengths(c.m, rng)) {
    for (Index p = 0; p < length && Index(ids.size()) < c.m; ++p)
      ids.push_back(id);
    id -= 7;
  }
  return make_rule("causal & document_ids", attn::Mask::causal() & attn::document_ids(ids), {},
                   [ids](Index, Index q, Index k) {
                     return q >= 0 && q < Index(ids.size()) && k <= q &&
                            ids[std::size_t(q)] == ids[std::size_t(k)];
                   });
}

auto prefix_lm_rule(const Shape& c, Random& rng) {
  const Index prefix = rng.integer(0, c.m + 3);
  return make_rule(
      "prefix_lm(" + std::to_string(prefix) + ")", attn::prefix_lm(prefix), {},
      [prefix](Index, Index q, Index k) { return attn_test::reference_prefix_lm(prefix, q, k); });
}

// A tree of min(m, max(min(n, 40), 13)) nodes, deep (half the nodes continue their predecessor)
// and with several roots.
auto tree_rule(const Shape& c, Random& rng) {
  const Index nodes = std::min(c.m, std::max<Index>(std::min<Index>(c.n, 40), 13));
  std::vector<Index> parents;
  for (Index t = 0; t < nodes; ++t)
    parents.push_back(rng.bernoulli(0.5) ? t - 1 : rng.integer(-1, t - 1));
  const Index m = c.m;
  return make_rule("tree (" + std::to_string(nodes) + " nodes)", attn::tree(parents), {},
                   [parents, m](Index, Index q, Index k) {
                     return attn_test::reference_tree(parents, m, q, k);
                   });
}

auto sinks_rule(const Shape& c, Random& rng) {
  const Index count = rng.integer(0, 6);
  const Index window = rng.integer(1, std::max<Index>(2, c.m / 5));
  return make_rule("sinks(" + std::to_string(count) + ", " + std::to_string(window) + ")",
                   attn::sinks(count, window), {}, [count, window](Index, Index q, Index k) {
                     return attn_test::reference_sinks(count, window, q, k);
                   });
}

// A user's score function of the head and both positions: a multiplicative and an additive part
// (|·| ≤ 2), −∞ for some pairs and for every key of some queries (whose rows are then zero).
auto user_score_rule() {
  const auto score = [](auto s, Index head, Index q, Index k) {
    using S = decltype(s);
    if (q % 17 == 3 || (q + 2 * k + head) % 11 == 0) return -std::numeric_limits<S>::infinity();
    return s * S(0.75) + S(0.125) * S((head + 1) * ((q - k) % 5));
  };
  return make_rule(
      "score_function(user)", attn::score_function(score),
      [](Index head, Index q, Index k, double s) {
        if (q % 17 == 3 || (q + 2 * k + head) % 11 == 0) return -infinity;
        return s * 0.75 + 0.125 * double((head + 1) * ((q - k) % 5));
      },
      {}, 2);
}

// Two score functions apply left to right: g(f(s)) ≠ f(g(s)) here by up to 0.375. f scales the
// logits by 1.5, which adds half of B to B.
auto score_and_score_rule(const Shape& c) {
  const auto f = [](auto s, Index, Index, Index) { return s * decltype(s)(1.5); };
  const auto g = [](auto s, Index, Index q, Index k) {
    return s - decltype(s)(0.25 * double((q + k) % 4));
  };
  return make_rule(
      "score_function & score_function", attn::score_function(f) & attn::score_function(g),
      [](Index, Index q, Index k, double s) { return s * 1.5 - 0.25 * double((q + k) % 4); }, {},
      0.75 + logit_bound(c, std::nullopt, 0) / 2);
}

// A user's mask of positions only, without a block predicate: every block is cut.
auto user_mask_rule() {
  const auto visible = [](Index q, Index k) { return k <= q && (k / 4 + q) % 3 != 0; };
  return make_rule("mask_function(q, k)", attn::mask_function(visible), {},
                   [visible](Index, Index q, Index k) { return visible(q, k); });
}

// A causal band of 50 keys, with its block predicate.
constexpr Index band = 50;
bool in_band(Index q, Index k) {
  return k <= q && q - k < band;
}
Visibility band_blocks(Index q0, Index q1, Index k0, Index k1) {
  if (k0 > q1 - 1 || q0 - (k1 - 1) >= band) return Visibility::none;
  if (k1 - 1 <= q0 && (q1 - 1) - k0 < band) return Visibility::all;
  return Visibility::partial;
}
auto band_mask() {
  return attn::mask_function(
      [](Index q, Index k) { return in_band(q, k); },
      [](Index q0, Index q1, Index k0, Index k1) { return band_blocks(q0, q1, k0, k1); });
}
auto band_rule() {
  return make_rule("mask_function(band, blocks)", band_mask(), {},
                   [](Index, Index q, Index k) { return in_band(q, k); });
}

// A causal window of 16·(h + 1) keys per head plus two sinks: the head matters.
bool head_window(Index head, Index q, Index k) {
  return k <= q && (q - k < 16 * (head + 1) || k < 2);
}
Visibility head_window_blocks(Index head, Index q0, Index q1, Index k0, Index k1) {
  const Index window = 16 * (head + 1);
  if (k0 > q1 - 1) return Visibility::none;
  if (k0 >= 2 && q0 - (k1 - 1) >= window) return Visibility::none;
  if (k1 - 1 <= q0 && (k1 <= 2 || (q1 - 1) - k0 < window)) return Visibility::all;
  return Visibility::partial;
}
auto head_mask() {
  return attn::mask_function([](Index head, Index q, Index k) { return head_window(head, q, k); });
}
auto head_mask_rule() {
  return make_rule("mask_function(h, q, k)", head_mask(), {}, head_window);
}
auto head_mask_blocks_rule() {
  return make_rule("mask_function(h, q, k).with_blocks(h, ...)",
                   head_mask().with_blocks([](Index head, Index q0, Index q1, Index k0, Index k1) {
                     return head_window_blocks(head, q0, q1, k0, k1);
                   }),
                   {}, head_window);
}

auto composition_rule(const Shape& c, Random& rng) {
  const std::vector<double> slopes = attn_test::reference_alibi_slopes(c.heads);
  const std::vector<Index> lengths = random_lengths(c.m, rng);
  return make_rule(
      "causal & alibi & documents",
      attn::Mask::causal() & attn::alibi(c.heads) & attn::documents(lengths),
      [slopes](Index head, Index q, Index k, double s) {
        return s + attn_test::reference_alibi_bias(slopes[std::size_t(head)], q, k);
      },
      [lengths](Index, Index q, Index k) {
        return k <= q && attn_test::reference_same_document(lengths, q, k);
      },
      log_keys(c));
}

// A predicate and no predicate, two positions and a head.
auto mask_and_mask_rule() {
  return make_rule(
      "mask_function(band) & mask_function(h, q, k)", band_mask() & head_mask(), {},
      [](Index head, Index q, Index k) { return in_band(q, k) && head_window(head, q, k); });
}

/// Calls visit(rule) for every rule, built for shape c from `seed`.
template <typename Scalar, typename Visit>
void for_each_rule(const Shape& c, std::uint32_t seed, const Visit& visit) {
  Random rng(seed);
  visit(causal_alibi_rule(c));
  visit(custom_alibi_rule(c, rng));
  visit(t5_rule<Scalar>(c, rng, true));
  visit(t5_rule<Scalar>(c, rng, false));
  visit(head_bias_rule<Scalar>(c, rng));
  visit(documents_rule(c, rng));
  visit(document_ids_rule(c, rng));
  visit(prefix_lm_rule(c, rng));
  visit(tree_rule(c, rng));
  visit(sinks_rule(c, rng));
  visit(user_score_rule());
  visit(score_and_score_rule(c));
  visit(user_mask_rule());
  visit(band_rule());
  visit(head_mask_rule());
  visit(head_mask_blocks_rule());
  visit(composition_rule(c, rng));
  visit(mask_and_mask_rule());
}

/// A few rules of different kinds, where every rule would cost too many kernel instantiations:
/// a score function, a built-in with a predicate and one with a key range, a head-dependent mask
/// with its predicate, a composition.
template <typename Visit>
void for_some_rules(const Shape& c, std::uint32_t seed, const Visit& visit) {
  Random rng(seed);
  visit(causal_alibi_rule(c));
  visit(documents_rule(c, rng));
  visit(sinks_rule(c, rng));
  visit(user_score_rule());
  visit(head_mask_blocks_rule());
  visit(composition_rule(c, rng));
}

// ---------------------------------------------------------------------------------------------
// One comparison
// ---------------------------------------------------------------------------------------------

/// got against the reference's output; and rows whose head sees no key (lse −∞) exactly zero.
template <typename Derived>
::testing::AssertionResult agrees(const Eigen::MatrixBase<Derived>& got, const MatrixD& expected,
                                  const MatrixD& expected_lse, Index dv, double tol) {
  auto result = attn_test::matrix_near(got, expected, tol);
  if (!result) return result;
  for (Index i = 0; i < expected_lse.rows(); ++i) {
    for (Index h = 0; h < expected_lse.cols(); ++h) {
      if (expected_lse(i, h) == -infinity &&
          !(got.row(i).segment(h * dv, dv).array() == typename Derived::Scalar(0)).all()) {
        return ::testing::AssertionFailure()
               << "row " << i << " of head " << h << " sees no key but is not zero";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

template <typename Scalar>
struct Inputs {
  Matrix<Scalar> q, k, v;
};

template <typename Scalar>
Inputs<Scalar> random_inputs(const Shape& c, std::uint32_t seed) {
  Random rng(seed);
  Inputs<Scalar> in;
  in.q = rng.uniform_matrix<Scalar>(c.n, c.heads * c.d);
  in.k = rng.uniform_matrix<Scalar>(c.m, c.kv_heads * c.d);
  in.v = rng.uniform_matrix<Scalar>(c.m, c.kv_heads * c.dv);
  return in;
}

attn::AttentionOptions options_for(const Shape& c, std::optional<double> scale,
                                   double softcap = 0) {
  attn::AttentionOptions options;
  options.num_heads = c.heads;
  options.num_kv_heads = c.kv_heads;
  options.scale = scale;
  options.softcap = softcap;
  return options;
}

/// The kernel under `rule` against reference_score_mask on random inputs of shape c.
template <typename Scalar, typename SM>
void expect_matches_reference(const Rule<SM>& rule, const Shape& c, std::uint32_t seed,
                              double softcap = 0) {
  const Inputs<Scalar> in = random_inputs<Scalar>(c, seed);
  const attn::AttentionOptions options = options_for(c, rule.scale, softcap);
  const Matrix<Scalar> got =
      attn::scaled_dot_product_attention(in.q, in.k, in.v, rule.mask, options);
  MatrixD lse;
  const MatrixD expected = attn_test::reference_score_mask(
      in.q, in.k, in.v, c.heads, c.kv_heads, rule.score, rule.visible, rule.scale, softcap, &lse);
  EXPECT_TRUE(agrees(got, expected, lse, c.dv, tolerance<Scalar>(c, rule)))
      << rule.name << " " << describe(c) << " softcap=" << softcap << " seed=" << seed;
}

template <typename Scalar>
class ScoreMaskTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ScoreMaskTest, Scalars);

// ---------------------------------------------------------------------------------------------
// 1. The reference's formulas for ALiBi and T5 against the library's public helpers
// ---------------------------------------------------------------------------------------------

// Press et al.'s slopes: 2^(−8(h+1)/H) for H a power of two (exactly 1/2, 1/4, ... for H = 8);
// for H = 12 the 8 slopes of 8 heads, then slopes 0, 2, 4, 6 of 16 heads. The library computes
// start·start^h as get_slopes does, the reference exact powers of two: start is rounded once
// (relative error ≤ u/2, u = 2^-52) and raised to the power h + 1, which multiplies that error by
// h + 1, and pow and the product add an ulp each, so they agree within (h + 3)·u.
TEST(BuiltinFormulas, AlibiSlopesArePressEtAlsGetSlopes) {
  const std::vector<double> eight = attn::alibi_slopes(8);
  ASSERT_EQ(eight.size(), 8u);
  for (int h = 0; h < 8; ++h)
    EXPECT_EQ(eight[std::size_t(h)], std::ldexp(1.0, -(h + 1))) << "h=" << h;
  const std::vector<double> twelve = {0.5,
                                      0.25,
                                      0.125,
                                      0.0625,
                                      0.03125,
                                      0.015625,
                                      0.0078125,
                                      0.00390625,
                                      std::pow(2.0, -0.5),
                                      std::pow(2.0, -1.5),
                                      std::pow(2.0, -2.5),
                                      std::pow(2.0, -3.5)};
  const std::vector<double> got = attn::alibi_slopes(12);
  ASSERT_EQ(got.size(), twelve.size());
  for (std::size_t h = 0; h < twelve.size(); ++h)
    EXPECT_NEAR(got[h], twelve[h], double(h + 3) * 0x1p-52 * twelve[h]) << "H=12 h=" << h;
  EXPECT_EQ(attn::alibi_slopes(1), std::vector<double>{std::ldexp(1.0, -8)});
  for (Index heads = 1; heads <= 64; ++heads) {
    const std::vector<double> library = attn::alibi_slopes(heads);
    const std::vector<double> reference = attn_test::reference_alibi_slopes(heads);
    ASSERT_EQ(library.size(), reference.size()) << "H=" << heads;
    for (std::size_t h = 0; h < reference.size(); ++h)
      EXPECT_NEAR(library[h], reference[h], double(h + 3) * 0x1p-52 * reference[h])
          << "H=" << heads << " h=" << h;
  }
}

// Hugging Face's buckets, worked out by hand away from the boundaries of the logarithmic
// buckets (bidirectional, 32 buckets, max_distance 128: max_exact 8, bucket
// 8 + ⌊ln(|rp|/8)/ln 16 · 8⌋, +16 for rp > 0; causal, 32 buckets: max_exact 16, bucket
// 16 + ⌊ln(−rp/16)/ln 8 · 16⌋), then the library against the reference over every distance.
TEST(BuiltinFormulas, RelativePositionBucketIsHuggingFaces) {
  const std::vector<std::pair<Index, Index>> bidirectional = {
      {0, 0},   {-3, 3},   {3, 19},   {-7, 7},    {7, 23},     {-12, 9},   {12, 25},   {-20, 10},
      {20, 26}, {-50, 13}, {-90, 14}, {-100, 15}, {-5000, 15}, {5000, 31}, {1000, 31}, {1, 17}};
  for (const auto& [rp, bucket] : bidirectional) {
    EXPECT_EQ(attn::relative_position_bucket(rp, true, 32, 128), bucket) << "rp=" << rp;
    EXPECT_EQ(attn_test::reference_t5_bucket(rp, true, 32, 128), bucket) << "rp=" << rp;
  }
  const std::vector<std::pair<Index, Index>> causal = {
      {5, 0}, {0, 0}, {-5, 5}, {-15, 15}, {-20, 17}, {-40, 23}, {-100, 30}, {-127, 31}, {-200, 31}};
  for (const auto& [rp, bucket] : causal) {
    EXPECT_EQ(attn::relative_position_bucket(rp, false, 32, 128), bucket) << "rp=" << rp;
    EXPECT_EQ(attn_test::reference_t5_bucket(rp, false, 32, 128), bucket) << "rp=" << rp;
  }
  struct Config {
    bool bidirectional;
    Index buckets, max_distance;
  };
  for (const Config& config :
       {Config{true, 32, 128}, Config{false, 32, 128}, Config{true, 64, 256}, Config{false, 16, 40},
        Config{true, 8, 20}, Config{true, 33, 100}, Config{false, 4, 3}}) {
    for (Index rp = -3000; rp <= 3000; ++rp) {
      ASSERT_EQ(attn::relative_position_bucket(rp, config.bidirectional, config.buckets,
                                               config.max_distance),
                attn_test::reference_t5_bucket(rp, config.bidirectional, config.buckets,
                                               config.max_distance))
          << "rp=" << rp << " bidirectional=" << config.bidirectional
          << " buckets=" << config.buckets << " max_distance=" << config.max_distance;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Every rule against the reference
// ---------------------------------------------------------------------------------------------

// n = m around the 64-query blocks and the key tiles, ragged sizes; n > m (the first queries
// stand at negative positions); and empty inputs.
TYPED_TEST(ScoreMaskTest, PrefillMatchesReference) {
  std::uint32_t seed = 100;
  for (const Index n : {1, 7, 63, 64, 65, 200, 300}) {
    const Shape c{n, n};
    for_each_rule<TypeParam>(
        c, ++seed, [&](const auto& rule) { expect_matches_reference<TypeParam>(rule, c, ++seed); });
  }
  // n > m, no queries, no keys (zero rows).
  for (const Shape& c : {Shape{70, 33}, Shape{0, 10}, Shape{5, 0}}) {
    for_each_rule<TypeParam>(
        c, ++seed, [&](const auto& rule) { expect_matches_reference<TypeParam>(rule, c, ++seed); });
  }
}

// Chunked prefill: the queries continue where the keys already cached end (q = i + m − n).
TYPED_TEST(ScoreMaskTest, ChunkedPrefillMatchesReference) {
  std::uint32_t seed = 200;
  for (const Shape& c : {Shape{37, 300}, Shape{64, 200}, Shape{130, 400}}) {
    for_each_rule<TypeParam>(
        c, ++seed, [&](const auto& rule) { expect_matches_reference<TypeParam>(rule, c, ++seed); });
  }
}

// Decode: one or three queries (fewer than a float packet: the decode path), up to 2000 keys, so
// that the decode splits its keys into parts of 512 and merges them.
TYPED_TEST(ScoreMaskTest, DecodeMatchesReference) {
  std::uint32_t seed = 300;
  for (const Shape& c : {Shape{1, 1}, Shape{1, 100}, Shape{1, 513}, Shape{1, 2000}, Shape{3, 1100},
                         Shape{3, 2000}}) {
    for_each_rule<TypeParam>(
        c, ++seed, [&](const auto& rule) { expect_matches_reference<TypeParam>(rule, c, ++seed); });
  }
}

// Grouped-query and multi-query heads: query head h reads kv head h / (H / Hkv), while the
// functions see the query head.
TYPED_TEST(ScoreMaskTest, GroupedQueryHeadsMatchReference) {
  std::uint32_t seed = 400;
  for (const Shape& c : {Shape{130, 130, 4, 2}, Shape{130, 130, 4, 1}, Shape{37, 300, 4, 2},
                         Shape{1, 2000, 4, 1}, Shape{3, 1100, 4, 2}}) {
    for_each_rule<TypeParam>(
        c, ++seed, [&](const auto& rule) { expect_matches_reference<TypeParam>(rule, c, ++seed); });
  }
}

// Soft-capping comes first: the score function sees softcap·tanh(logit / softcap).
TYPED_TEST(ScoreMaskTest, SoftcapComesBeforeTheScoreFunction) {
  std::uint32_t seed = 500;
  for (const Shape& c : {Shape{130, 130, 4, 2}, Shape{37, 300}, Shape{1, 1100, 4, 1}}) {
    for (const double softcap : {0.5, 3.0}) {
      for_each_rule<TypeParam>(c, ++seed, [&](const auto& rule) {
        expect_matches_reference<TypeParam>(rule, c, ++seed, softcap);
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Keys and values stored in bfloat16, half and qint8
// ---------------------------------------------------------------------------------------------

// A float matrix stored as S, and the exact values it then holds: Eigen's conversion back to
// float for the 16-bit types (every value is a float), and scale·q from the raw int8 values and
// scales for qint8 (a float times an int8 is exact in double), never through attn's conversions.
template <typename S>
struct Stored {
  Stored(const Matrix<float>& x, Index) : data(x.template cast<S>()) {}
  const Matrix<S>& argument() const { return data; }
  MatrixD exact() const { return data.template cast<float>().template cast<double>(); }
  Matrix<S> data;
};
template <>
struct Stored<attn::qint8> {
  Stored(const Matrix<float>& x, Index group) : data(attn::QuantizedMatrix::quantize(x, group)) {}
  const attn::QuantizedMatrix& argument() const { return data; }
  MatrixD exact() const {
    const attn::QuantizedView view = data.view();
    MatrixD y(view.rows(), view.cols());
    for (Index r = 0; r < view.rows(); ++r) {
      for (Index c = 0; c < view.cols(); ++c) {
        y(r, c) = double(view.scales()[r * view.scale_stride() + c / view.group()]) *
                  double(view.data()[r * view.outerStride() + c]);
      }
    }
    return y;
  }
  attn::QuantizedMatrix data;
};

template <typename S>
class ScoreMaskStorage : public ::testing::Test {};
using Storages = ::testing::Types<attn::bfloat16, attn::half, attn::qint8>;
TYPED_TEST_SUITE(ScoreMaskStorage, Storages);

// Against the reference over the stored values, the float kernel's own tolerance: every stored
// value lies in [−1, 1] like the inputs, so B and max|v| are as for float inputs.
TYPED_TEST(ScoreMaskStorage, MatchesTheReferenceOverTheStoredValues) {
  using S = TypeParam;
  std::uint32_t seed = 600;
  // Prefill with several query blocks (K and V converted once per head), one query block
  // (converted block by block), decode with key splits, and three queries.
  for (const Shape& c :
       {Shape{130, 130, 4, 2}, Shape{37, 300, 4, 2}, Shape{1, 1100, 4, 1}, Shape{3, 2000, 4, 2}}) {
    for_some_rules(c, ++seed, [&](const auto& rule) {
      Random rng(++seed);
      const Matrix<float> q = rng.uniform_matrix<float>(c.n, c.heads * c.d);
      const Stored<S> k(rng.uniform_matrix<float>(c.m, c.kv_heads * c.d), c.d);
      const Stored<S> v(rng.uniform_matrix<float>(c.m, c.kv_heads * c.dv), c.dv);
      const Matrix<float> got = attn::scaled_dot_product_attention(
          q, k.argument(), v.argument(), rule.mask, options_for(c, rule.scale));
      MatrixD lse;
      const MatrixD expected =
          attn_test::reference_score_mask(q, k.exact(), v.exact(), c.heads, c.kv_heads, rule.score,
                                          rule.visible, rule.scale, 0, &lse);
      EXPECT_TRUE(agrees(got, expected, lse, c.dv, tolerance<float>(c, rule)))
          << rule.name << " " << describe(c) << " seed=" << seed;
    });
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Partial attention, the optional outputs, executors
// ---------------------------------------------------------------------------------------------

// A rule of absolute positions (head-dependent window with sinks, and a bounded score), seen from
// a call whose query positions stand q_offset and whose key positions k_offset before the
// absolute ones: a partial call over keys [first, m) of a call over [0, m) has its own positions.
bool window_rule(Index head, Index q, Index k) {
  return k <= q && (k < 3 || q - k < 40 * (head + 1));
}
double window_score(Index head, Index q, Index k) {
  return -0.125 * double((q + 3 * k + head) % 9);
}
auto shifted_window(Index q_offset, Index k_offset) {
  return attn::mask_function([=](Index head, Index q, Index k) {
           return window_rule(head, q + q_offset, k + k_offset);
         }) &
         attn::score_function([=](auto s, Index head, Index q, Index k) {
           return s + decltype(s)(window_score(head, q + q_offset, k + k_offset));
         });
}

// Attention over keys [0, split) and [split, m), each call with its own positions, merged by
// log-sum-exp, equals one call over all keys (output and log-sum-exp), and the reference. Query
// rows that see no key of a part have lse −∞ there and leave the merge alone.
TYPED_TEST(ScoreMaskTest, PartialsOverDisjointKeysMergeToTheWhole) {
  using Scalar = TypeParam;
  struct Split {
    Shape shape;
    Index split;
  };
  std::uint32_t seed = 700;
  for (const Split& s : {Split{{37, 300, 4, 2}, 130}, Split{{1, 2000, 4, 1}, 700},
                         Split{{3, 1100, 4, 2}, 512}, Split{{200, 200, 4, 2}, 64}}) {
    const Shape& c = s.shape;
    const Inputs<Scalar> in = random_inputs<Scalar>(c, ++seed);
    const attn::AttentionOptions options = options_for(c, std::nullopt);
    const std::string where = describe(c) + " split=" + std::to_string(s.split);

    attn::PartialAttention<Scalar> whole;
    attn::AttentionExtras<Scalar> extras;
    extras.log_sum_exp = &whole.log_sum_exp;
    whole.out =
        attn::scaled_dot_product_attention(in.q, in.k, in.v, shifted_window(0, 0), options, extras);
    // Part a: keys [0, split); its query row i stands at i + split − n, m − split before the
    // absolute position. Part b: keys [split, m); its positions are split before the absolute.
    const Index rest = c.m - s.split;
    const auto a = attn::scaled_dot_product_attention_partial(
        in.q, in.k.topRows(s.split), in.v.topRows(s.split), shifted_window(rest, 0), options);
    const auto b = attn::scaled_dot_product_attention_partial(
        in.q, in.k.bottomRows(rest), in.v.bottomRows(rest), shifted_window(s.split, s.split),
        options);
    const attn::PartialAttention<Scalar> merged =
        attn::merge_partial_attention(std::vector<attn::PartialAttention<Scalar>>{a, b});

    MatrixD expected_lse;
    const MatrixD expected = attn_test::reference_score_mask(
        in.q, in.k, in.v, c.heads, c.kv_heads,
        [](Index head, Index q, Index k, double logit) { return logit + window_score(head, q, k); },
        window_rule, std::nullopt, 0, &expected_lse);
    // The merge adds a rescale and a division per row: within the same first-order bound.
    const double tol = attn_test::attention_tolerance<Scalar>(logit_bound(c, std::nullopt, 1), c.m);
    EXPECT_TRUE(attn_test::matrix_near(merged.out, whole.out, tol)) << where;
    EXPECT_TRUE(attn_test::matrix_near(merged.log_sum_exp, whole.log_sum_exp, tol)) << where;
    EXPECT_TRUE(agrees(merged.out, expected, expected_lse, c.dv, tol)) << where;
    EXPECT_TRUE(attn_test::matrix_near(merged.log_sum_exp, expected_lse, tol)) << where;
  }
}

// The log-sum-exps and the weights ((H·n) × m per head, and averaged) under every rule, on the
// prefill path and with fewer queries than a packet; rows that see nothing: lse −∞, weights 0.
TYPED_TEST(ScoreMaskTest, ExtrasMatchReference) {
  using Scalar = TypeParam;
  std::uint32_t seed = 800;
  for (const Shape& c : {Shape{40, 170, 4, 2}, Shape{3, 1100, 4, 1}, Shape{1, 1}}) {
    for_each_rule<Scalar>(c, ++seed, [&](const auto& rule) {
      const Inputs<Scalar> in = random_inputs<Scalar>(c, ++seed);
      const attn::AttentionOptions options = options_for(c, rule.scale);
      MatrixD expected_lse, expected_weights;
      const MatrixD expected = attn_test::reference_score_mask(
          in.q, in.k, in.v, c.heads, c.kv_heads, rule.score, rule.visible, rule.scale, 0,
          &expected_lse, &expected_weights);
      const double tol = tolerance<Scalar>(c, rule);
      const std::string where = rule.name + " " + describe(c) + " seed=" + std::to_string(seed);

      Matrix<Scalar> lse, weights;
      attn::AttentionExtras<Scalar> extras;
      extras.log_sum_exp = &lse;
      extras.weights = &weights;
      const Matrix<Scalar> out =
          attn::scaled_dot_product_attention(in.q, in.k, in.v, rule.mask, options, extras);
      EXPECT_TRUE(agrees(out, expected, expected_lse, c.dv, tol)) << where;
      EXPECT_TRUE(attn_test::matrix_near(lse, expected_lse, tol)) << "log_sum_exp " << where;
      EXPECT_TRUE(attn_test::matrix_near(weights, expected_weights, tol)) << "weights " << where;

      Matrix<Scalar> averaged;
      attn::AttentionExtras<Scalar> average;
      average.weights = &averaged;
      average.average_heads = true;
      attn::scaled_dot_product_attention(in.q, in.k, in.v, rule.mask, options, average);
      MatrixD expected_average = MatrixD::Zero(c.n, c.m);
      for (Index h = 0; h < c.heads; ++h)
        expected_average += expected_weights.middleRows(h * c.n, c.n);
      expected_average /= double(c.heads);
      EXPECT_TRUE(attn_test::matrix_near(averaged, expected_average, tol))
          << "averaged weights " << where;
    });
  }
}

// Work is split by the shape only and merged in a fixed order, so any executor gives bitwise the
// serial result: prefill, one query block, and decodes split over the keys.
TYPED_TEST(ScoreMaskTest, ExecutorsGiveBitwiseTheSerialResult) {
  using Scalar = TypeParam;
  const attn::Executor two = attn::thread_executor(2), three = attn::thread_executor(3);
  std::uint32_t seed = 900;
  for (const Shape& c :
       {Shape{300, 300, 4, 2}, Shape{37, 300, 4, 2}, Shape{1, 2000, 4, 1}, Shape{3, 2000, 4, 2}}) {
    const Inputs<Scalar> in = random_inputs<Scalar>(c, ++seed);
    const auto check = [&](const auto& rule) {
      attn::AttentionOptions options = options_for(c, rule.scale);
      options.executor = attn::serial_executor;
      const Matrix<Scalar> serial =
          attn::scaled_dot_product_attention(in.q, in.k, in.v, rule.mask, options);
      EXPECT_FALSE(serial.hasNaN()) << rule.name;
      for (const auto& [threads, executor] : {std::pair(2, two), std::pair(3, three)}) {
        options.executor = executor;
        EXPECT_TRUE(attn_test::bitwise_equal(
            attn::scaled_dot_product_attention(in.q, in.k, in.v, rule.mask, options), serial))
            << rule.name << " " << describe(c) << " thread_executor(" << threads << ")";
      }
    };
    for_some_rules(c, ++seed, check);
    check(band_rule());
    check(mask_and_mask_rule());
  }
}

// ---------------------------------------------------------------------------------------------
// 5. Hidden blocks are never read
// ---------------------------------------------------------------------------------------------

// A score function that leaves the logits alone and records whether it saw a NaN. Every logit of
// every key block the kernel computes passes through it, the hidden pairs of a cut block too (the
// mask functions run after it), so a NaN key row it never sees never reached a tile.
struct NanProbe {
  std::shared_ptr<std::atomic<bool>> saw_nan = std::make_shared<std::atomic<bool>>(false);
  template <typename S>
  S operator()(S s, Index, Index, Index) const {
    if (attn_test::is_nan_bits(double(s))) saw_nan->store(true);
    return s;
  }
};

// Keys [a, b) hidden from every query, with a block predicate that says so.
auto outside_mask(Index a, Index b) {
  return attn::mask_function([a, b](Index, Index k) { return k < a || k >= b; },
                             [a, b](Index, Index, Index k0, Index k1) {
                               if (k0 >= a && k1 <= b) return Visibility::none;
                               if (k1 <= a || k0 >= b) return Visibility::all;
                               return Visibility::partial;
                             });
}
ReferenceVisible outside(Index a, Index b) {
  return [a, b](Index, Index, Index k) { return k < a || k >= b; };
}

/// Runs `mask` (with a NanProbe) on K and V whose rows [nan_begin, nan_end) are NaN, all hidden by
/// the mask from every query: the output is the reference's over the finite K and V, and the
/// probe saw a NaN iff `read` (a cut block holds some of those rows).
template <typename Scalar, typename SM>
void expect_nan_rows_hidden(const SM& mask, const ReferenceVisible& visible, const Shape& c,
                            Index nan_begin, Index nan_end, bool read, std::uint32_t seed,
                            const std::string& name) {
  const Inputs<Scalar> in = random_inputs<Scalar>(c, seed);
  Matrix<Scalar> k_nan = in.k, v_nan = in.v;
  for (Index j = nan_begin; j < nan_end; ++j) {
    ASSERT_FALSE(visible(0, c.m - 1, j)) << "row " << j << " is visible (a bug in the test)";
    k_nan.row(j).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    v_nan.row(j).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
  }
  const NanProbe probe;
  const Matrix<Scalar> got = attn::scaled_dot_product_attention(
      in.q, k_nan, v_nan, mask & attn::score_function(probe), options_for(c, std::nullopt));
  MatrixD lse;
  const MatrixD expected = attn_test::reference_score_mask(in.q, in.k, in.v, c.heads, c.kv_heads,
                                                           {}, visible, std::nullopt, 0, &lse);
  const std::string where = name + " " + describe(c) + " NaN rows [" + std::to_string(nan_begin) +
                            ", " + std::to_string(nan_end) + ")";
  EXPECT_FALSE(got.hasNaN()) << where;
  const double tol = attn_test::attention_tolerance<Scalar>(logit_bound(c, std::nullopt, 0), c.m);
  EXPECT_TRUE(agrees(got, expected, lse, c.dv, tol)) << where;
  EXPECT_EQ(probe.saw_nan->load(), read) << where;
}

// A key block of the kernel is at most 128 keys (prefill) or 64 (decode), so a row more than 128
// keys inside a hidden range lies only in blocks that are wholly hidden. NaN there never reaches a
// tile: documents (chunked prefill and decode, all queries in the last document, its key range),
// the middle between sinks and window, and a user predicate that says none. And as a control,
// NaN in hidden rows next to visible ones (a, b odd, so that no key block starts there) is read
// in a cut block, seen by the probe, and still hidden from the output.
TYPED_TEST(ScoreMaskTest, HiddenKeyBlocksNeverReachTheTiles) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  constexpr Index margin = 128;
  std::uint32_t seed = 1000;
  const std::vector<Index> lengths = {300, 400, 300};
  const ReferenceVisible same_document = [lengths](Index, Index q, Index k) {
    return attn_test::reference_same_document(lengths, q, k);
  };
  for (const Shape& c : {Shape{100, 1000, 4, 2}, Shape{1, 1000, 4, 1}}) {
    expect_nan_rows_hidden<Scalar>(attn::documents(lengths), same_document, c, 0, 700 - margin,
                                   false, ++seed, "documents");
  }
  const Index count = 4, window = 256;
  for (const Shape& c : {Shape{64, 2000, 4, 2}, Shape{1, 2000, 4, 1}, Shape{3, 2000}}) {
    const Index hidden_end = c.m - c.n - window;  // hidden from every query: [count, hidden_end)
    expect_nan_rows_hidden<Scalar>(
        attn::sinks(count, window),
        [=](Index, Index q, Index k) { return attn_test::reference_sinks(count, window, q, k); }, c,
        count + margin, hidden_end - margin, false, ++seed, "sinks");
  }
  struct Outside {
    Shape shape;
    Index a, b;
  };
  for (const Outside& o : {Outside{{600, 600, 4, 2}, 101, 499}, Outside{{1, 2000, 4, 1}, 301, 1701},
                           Outside{{37, 300}, 21, 299}}) {
    expect_nan_rows_hidden<Scalar>(outside_mask(o.a, o.b), outside(o.a, o.b), o.shape, o.a + margin,
                                   o.b - margin, false, ++seed, "outside");
    // The control: rows a and b − 1, in cut blocks.
    expect_nan_rows_hidden<Scalar>(outside_mask(o.a, o.b), outside(o.a, o.b), o.shape, o.a, o.a + 1,
                                   true, ++seed, "outside, row a");
    expect_nan_rows_hidden<Scalar>(outside_mask(o.a, o.b), outside(o.a, o.b), o.shape, o.b - 1, o.b,
                                   true, ++seed, "outside, row b - 1");
  }
}

// A predicate that says all where the mask is indeed full only skips the per-pair masking: the
// result is the one without a predicate (and the reference's).
TYPED_TEST(ScoreMaskTest, AllFromAPredicateChangesNothing) {
  using Scalar = TypeParam;
  const auto causal = [](Index q, Index k) { return k <= q; };
  const auto causal_blocks = [](Index q0, Index q1, Index k0, Index k1) {
    if (k0 > q1 - 1) return Visibility::none;
    return k1 - 1 <= q0 ? Visibility::all : Visibility::partial;
  };
  const auto with =
      make_rule("causal lambda with blocks", attn::mask_function(causal, causal_blocks), {},
                [](Index, Index q, Index k) { return k <= q; });
  const auto without = make_rule("causal lambda", attn::mask_function(causal), {},
                                 [](Index, Index q, Index k) { return k <= q; });
  std::uint32_t seed = 1100;
  for (const Shape& c :
       {Shape{300, 300, 4, 2}, Shape{37, 300}, Shape{1, 2000, 4, 1}, Shape{3, 2000}}) {
    const Inputs<Scalar> in = random_inputs<Scalar>(c, ++seed);
    const attn::AttentionOptions options = options_for(c, std::nullopt);
    const Matrix<Scalar> a =
        attn::scaled_dot_product_attention(in.q, in.k, in.v, with.mask, options);
    const Matrix<Scalar> b =
        attn::scaled_dot_product_attention(in.q, in.k, in.v, without.mask, options);
    const Matrix<Scalar> plain =
        attn::scaled_dot_product_attention(in.q, in.k, in.v, attn::Mask::causal(), options);
    const double tol = tolerance<Scalar>(c, with);
    EXPECT_TRUE(attn_test::matrix_near(a, b, tol)) << describe(c);
    EXPECT_TRUE(attn_test::matrix_near(a, plain, tol)) << describe(c);
    expect_matches_reference<Scalar>(with, c, seed);
  }
}

// ---------------------------------------------------------------------------------------------
// 6. BlockMap
// ---------------------------------------------------------------------------------------------

/// Visibility of query positions [q0, q1) × keys [k0, k1) of head h, pair by pair.
Visibility brute_force(const ReferenceVisible& visible, Index h, Index q0, Index q1, Index k0,
                       Index k1) {
  Index seen = 0;
  for (Index q = q0; q < q1; ++q) {
    for (Index k = k0; k < k1; ++k)
      seen += visible(h, q, k) ? 1 : 0;
  }
  if (seen == 0) return Visibility::none;
  return seen == (q1 - q0) * (k1 - k0) ? Visibility::all : Visibility::partial;
}

const char* visibility_name(Visibility v) {
  switch (v) {
    case Visibility::none:
      return "none";
    case Visibility::partial:
      return "partial";
    case Visibility::all:
      return "all";
  }
  return "?";
}

/// Every cell of the map (plane, query cell, key cell) against brute force; count() of each
/// visibility; the planes; any block of queries × keys answered conservatively (none only if
/// nothing is visible, all only if everything is); and the same cells when built on two threads.
template <typename SM>
void expect_map_is_exact(const Rule<SM>& rule, const Shape& c, bool head_dependent,
                         std::uint32_t seed) {
  const std::string where = rule.name + " " + describe(c);
  const attn::BlockMap map(rule.mask, c.n, c.m, c.heads);
  EXPECT_EQ(map.queries(), c.n) << where;
  EXPECT_EQ(map.keys(), c.m) << where;
  EXPECT_EQ(map.planes(), head_dependent ? c.heads : 1) << where;
  const Index query_cells = (c.n + 63) / 64, key_cells = (c.m + 15) / 16;
  EXPECT_EQ(
      map.count(Visibility::none) + map.count(Visibility::partial) + map.count(Visibility::all),
      map.planes() * query_cells * key_cells)
      << where;
  const attn::BlockMap threaded(rule.mask, c.n, c.m, c.heads, attn::thread_executor(2));
  const Index offset = c.m - c.n;
  Index counts[3] = {0, 0, 0};
  bool all_cells_match = true, threaded_matches = true;
  for (Index plane = 0; plane < map.planes(); ++plane) {
    for (Index r = 0; r < query_cells; ++r) {
      const Index q0 = r * 64 + offset, q1 = std::min(c.n, (r + 1) * 64) + offset;
      for (Index kc = 0; kc < key_cells; ++kc) {
        const Index k0 = kc * 16, k1 = std::min(c.m, k0 + 16);
        const Visibility expected = brute_force(rule.visible, plane, q0, q1, k0, k1);
        ++counts[int(expected)];
        const Visibility got = map(plane, q0, q1, k0, k1);
        threaded_matches = threaded_matches && threaded(plane, q0, q1, k0, k1) == got;
        if (got != expected && all_cells_match) {
          all_cells_match = false;
          ADD_FAILURE() << where << ": cell (plane " << plane << ", queries [" << q0 << ", " << q1
                        << "), keys [" << k0 << ", " << k1 << ")) is " << visibility_name(got)
                        << ", expected " << visibility_name(expected);
        }
      }
    }
  }
  EXPECT_EQ(map.count(Visibility::none), counts[0]) << where;
  EXPECT_EQ(map.count(Visibility::partial), counts[1]) << where;
  EXPECT_EQ(map.count(Visibility::all), counts[2]) << where;

  Random rng(seed);
  for (int trial = 0; trial < 60 && c.n > 0 && c.m > 0; ++trial) {
    const Index h = rng.integer(0, c.heads - 1);
    const Index i0 = rng.integer(0, c.n - 1), i1 = rng.integer(i0 + 1, std::min(c.n, i0 + 80));
    const Index k0 = rng.integer(0, c.m - 1), k1 = rng.integer(k0 + 1, std::min(c.m, k0 + 160));
    const Visibility exact = brute_force(rule.visible, h, i0 + offset, i1 + offset, k0, k1);
    const Visibility got = map(h, i0 + offset, i1 + offset, k0, k1);
    const bool sound = got == Visibility::partial || got == exact;
    EXPECT_TRUE(sound) << where << ": head " << h << ", queries [" << i0 + offset << ", "
                       << i1 + offset << "), keys [" << k0 << ", " << k1 << ") is "
                       << visibility_name(got) << ", but pair by pair " << visibility_name(exact);
    if (!sound) break;
  }

  EXPECT_TRUE(threaded_matches) << where << ": the cells built on two threads differ";
}

// The map of masks without a base Mask (which the map leaves to the kernel): one evaluated pair
// by pair (no predicate), built-ins with predicates (documents, prefix-LM, sinks, a tree bound to
// the call's m), a band with its predicate, head-dependent masks; prefill, chunked prefill,
// decode, n > m.
TEST(BlockMapTest, CellsAgreeWithBruteForce) {
  std::uint32_t seed = 1200;
  for (const Shape& c :
       {Shape{300, 300}, Shape{37, 300}, Shape{1, 2000}, Shape{100, 40}, Shape{65, 129, 3, 3}}) {
    Random rng(++seed);
    expect_map_is_exact(user_mask_rule(), c, false, ++seed);
    expect_map_is_exact(documents_rule(c, rng), c, false, ++seed);
    expect_map_is_exact(prefix_lm_rule(c, rng), c, false, ++seed);
    expect_map_is_exact(sinks_rule(c, rng), c, false, ++seed);
    expect_map_is_exact(tree_rule(c, rng), c, false, ++seed);
    expect_map_is_exact(band_rule(), c, false, ++seed);
    expect_map_is_exact(head_mask_rule(), c, true, ++seed);
    expect_map_is_exact(head_mask_blocks_rule(), c, true, ++seed);
    expect_map_is_exact(mask_and_mask_rule(), c, true, ++seed);
  }
}

/// A block predicate asked about random blocks of query positions [q_begin, q_end) × keys
/// [0, m): none only where no pair is visible, all only where every pair is. Half the blocks span
/// 1 to 4 positions each way, so that every edge of a rule (a window's reach, a prefix, a
/// document's end, the tree's first node) falls on a block's edge somewhere.
template <typename Blocks>
::testing::AssertionResult predicate_is_sound(const Blocks& blocks, const ReferenceVisible& visible,
                                              Index heads, Index q_begin, Index q_end, Index m,
                                              Random& rng) {
  const auto span = [&rng](Index most) {
    return std::min(most, rng.bernoulli(0.5) ? rng.integer(1, 4) : rng.integer(1, 48));
  };
  for (int trial = 0; trial < 150; ++trial) {
    const Index h = rng.integer(0, heads - 1);
    const Index q0 = rng.integer(q_begin, q_end - 1), q1 = q0 + span(q_end - q0);
    const Index k0 = rng.integer(0, m - 1), k1 = k0 + span(m - k0);
    const Visibility got = blocks(h, q0, q1, k0, k1);
    const Visibility exact = brute_force(visible, h, q0, q1, k0, k1);
    if (got != Visibility::partial && got != exact) {
      return ::testing::AssertionFailure()
             << "head " << h << ", queries [" << q0 << ", " << q1 << "), keys [" << k0 << ", " << k1
             << ") is " << visibility_name(got) << ", but pair by pair " << visibility_name(exact);
    }
  }
  return ::testing::AssertionSuccess();
}

// The block predicates (ScoreMask::blocks()) of the built-ins and of the tests' own rules, on any
// block: the kernel's and the map's blocks are fixed, so an off-by-one at an edge would show
// there only where an edge happens to line up. Random parameters, with reaches near the block
// sizes, and chunks of queries at the end of the keys (n ≤ m) or before them (n > m). The tree's
// predicate is bound to the call's shape first, as the kernel binds it. Documents with queries at
// negative positions: ScoreMaskTest.DocumentsHideQueriesAtNegativePositions.
TEST(BlockPredicates, AreSoundOnAnyBlock) {
  Random rng(1250);
  for (int config = 0; config < 40; ++config) {
    const Index m = rng.integer(1, 300);
    const Index n = rng.integer(1, m + 20);
    const Index q_begin = m - n, q_end = m;
    const std::string where = "m=" + std::to_string(m) + " n=" + std::to_string(n);
    const Index count = rng.integer(0, 20), window = rng.integer(0, 70);
    EXPECT_TRUE(predicate_is_sound(
        attn::sinks(count, window).blocks(),
        [=](Index, Index q, Index k) { return attn_test::reference_sinks(count, window, q, k); }, 1,
        q_begin, q_end, m, rng))
        << "sinks(" << count << ", " << window << ") " << where;
    const Index prefix = rng.integer(0, m + 2);
    EXPECT_TRUE(predicate_is_sound(
        attn::prefix_lm(prefix).blocks(),
        [=](Index, Index q, Index k) { return attn_test::reference_prefix_lm(prefix, q, k); }, 1,
        q_begin, q_end, m, rng))
        << "prefix_lm(" << prefix << ") " << where;
    const std::vector<Index> lengths = random_lengths(m, rng);
    EXPECT_TRUE(predicate_is_sound(
        attn::documents(lengths).blocks(),
        [&](Index, Index q, Index k) { return attn_test::reference_same_document(lengths, q, k); },
        1, std::max<Index>(q_begin, 0), q_end, m, rng))
        << "documents " << where;
    std::vector<Index> parents;
    for (Index t = 0, nodes = rng.integer(0, std::min<Index>(m, 30)); t < nodes; ++t)
      parents.push_back(rng.bernoulli(0.5) ? t - 1 : rng.integer(-1, t - 1));
    const auto tree = attn::tree(parents);
    EXPECT_TRUE(predicate_is_sound(
        attn::detail::bind_part(tree.blocks(), n, m, 1),
        [&](Index, Index q, Index k) { return attn_test::reference_tree(parents, m, q, k); }, 1,
        q_begin, q_end, m, rng))
        << "tree of " << parents.size() << " nodes " << where;
    EXPECT_TRUE(
        predicate_is_sound(band_mask().blocks(), band_rule().visible, 1, q_begin, q_end, m, rng))
        << "band " << where;
    EXPECT_TRUE(predicate_is_sound(head_mask_blocks_rule().mask.blocks(), head_window, 4, q_begin,
                                   q_end, m, rng))
        << "head window " << where;
    const Index a = rng.integer(0, m), b = rng.integer(a, m);
    EXPECT_TRUE(
        predicate_is_sound(outside_mask(a, b).blocks(), outside(a, b), 1, q_begin, q_end, m, rng))
        << "outside(" << a << ", " << b << ") " << where;
  }
}

// With n > m the first n − m queries stand at negative positions, where documents() lets
// nothing through: a block that holds any of them is never all visible, for the predicate
// and for a BlockMap, and those rows are zero.
TYPED_TEST(ScoreMaskTest, DocumentsHideQueriesAtNegativePositions) {
  using Scalar = TypeParam;
  const Shape c{70, 33, 1, 1, 4, 4};  // positions −37 … 32; one document over all keys
  const std::vector<Index> lengths = {33};
  const auto mask = attn::documents(lengths);
  EXPECT_STRNE(visibility_name(mask.blocks()(0, -37, 27, 0, 33)), "all")
      << "queries [-37, 27) x keys [0, 33): the queries at negative positions see nothing";
  EXPECT_STRNE(visibility_name(attn::BlockMap(mask, c.n, c.m)(0, -37, 27, 0, 16)), "all")
      << "the map's cell of queries [-37, 27) x keys [0, 16)";
  const Inputs<Scalar> in = random_inputs<Scalar>(c, 1290);
  const Matrix<Scalar> out =
      attn::scaled_dot_product_attention(in.q, in.k, in.v, mask, options_for(c, std::nullopt));
  EXPECT_TRUE(attn_test::bitwise_equal(out.topRows(37), Matrix<Scalar>::Zero(37, 4)))
      << "rows 0 … 36 stand before the keys, in no document; row 0 is " << out.row(0);
  expect_matches_reference<Scalar>(make_rule("documents({33})", mask, {},
                                             [lengths](Index, Index q, Index k) {
                                               return attn_test::reference_same_document(lengths, q,
                                                                                         k);
                                             }),
                                   c, 1291);
}

// With .with_blocks(map) the kernel skips what the map hides and masks only what it cuts: the
// result is that without the map, and the reference's.
TYPED_TEST(ScoreMaskTest, BlockMapGivesTheSameResults) {
  using Scalar = TypeParam;
  std::uint32_t seed = 1300;
  for (const Shape& c :
       {Shape{300, 300, 4, 2}, Shape{37, 300}, Shape{1, 2000, 4, 1}, Shape{3, 2000}}) {
    Random rng(++seed);
    const Inputs<Scalar> in = random_inputs<Scalar>(c, ++seed);
    const auto check = [&](const auto& rule) {
      const attn::BlockMap map(rule.mask, c.n, c.m, c.heads);
      const auto mapped = make_rule(rule.name + ".with_blocks(map)", rule.mask.with_blocks(map),
                                    rule.score, rule.visible, rule.bias_bound, rule.scale);
      const attn::AttentionOptions options = options_for(c, rule.scale);
      const Matrix<Scalar> with =
          attn::scaled_dot_product_attention(in.q, in.k, in.v, mapped.mask, options);
      const Matrix<Scalar> without =
          attn::scaled_dot_product_attention(in.q, in.k, in.v, rule.mask, options);
      EXPECT_TRUE(attn_test::matrix_near(with, without, tolerance<Scalar>(c, rule)))
          << mapped.name << " " << describe(c);
      expect_matches_reference<Scalar>(mapped, c, ++seed);
    };
    check(user_mask_rule());
    check(documents_rule(c, rng));
    check(sinks_rule(c, rng));
    check(head_mask_rule());
    check(mask_and_mask_rule());
    // A base Mask and a score function stay with the kernel: only the mask functions are mapped.
    check(make_rule("causal & alibi & mask_function(h, q, k)",
                    attn::Mask::causal() & attn::alibi(c.heads) & head_mask(),
                    causal_alibi_rule(c).score, head_window, log_keys(c)));
  }
}

// A map makes a mask function without a predicate skip what it hides: NaN rows inside the hidden
// range never reach a tile. The map answers per cell of 16 keys, so the margin grows by a cell:
// a key block holding a row ≥ a + 144 starts at a + 17 or later, in a cell wholly hidden.
TYPED_TEST(ScoreMaskTest, BlockMapSkipsHiddenBlocks) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using Scalar = TypeParam;
  constexpr Index margin = 128 + 16;
  constexpr Index a = 101, b = 499;
  const auto mask = attn::mask_function([](Index, Index k) { return k < a || k >= b; });
  for (const Shape& c : {Shape{600, 600, 4, 2}, Shape{1, 600, 4, 1}}) {
    const attn::BlockMap map(mask, c.n, c.m, c.heads);
    expect_nan_rows_hidden<Scalar>(mask.with_blocks(map), outside(a, b), c, a + margin, b - margin,
                                   false, 1400, "mask_function.with_blocks(map)");
    // Without the map every block is cut and read.
    expect_nan_rows_hidden<Scalar>(mask, outside(a, b), c, a + margin, b - margin, true, 1401,
                                   "mask_function");
  }
}

// planes(): one for a mask of positions, one per head for a head-dependent mask; a map fits only
// its (n, m), and, with planes per head, its number of heads.
TEST(BlockMapTest, PlanesAndShapeChecks) {
  const attn::BlockMap positions(band_mask(), 300, 300, 4);
  EXPECT_EQ(positions.planes(), 1);
  EXPECT_EQ(positions.num_heads(), 4);
  const attn::BlockMap heads(head_mask(), 300, 300, 4);
  EXPECT_EQ(heads.planes(), 4);
  EXPECT_EQ(attn::BlockMap(band_mask() & head_mask(), 300, 300, 4).planes(), 4);
  EXPECT_EQ(attn::BlockMap(attn::documents({100, 200}), 300, 300, 8).planes(), 1);
  EXPECT_GT(positions.bytes(), 0u);

  Random rng(1500);
  const Matrix<float> q = rng.uniform_matrix<float>(300, 4 * 8);
  const Matrix<float> k = rng.uniform_matrix<float>(300, 4 * 8);
  const Matrix<float> v = rng.uniform_matrix<float>(300, 4 * 8);
  attn::AttentionOptions options;
  options.num_heads = 4;
  EXPECT_NO_THROW(
      attn::scaled_dot_product_attention(q, k, v, band_mask().with_blocks(positions), options));
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(
                         q.topRows(299), k, v, band_mask().with_blocks(positions), options),
                     "scaled_dot_product_attention", "block map was built for 300 queries",
                     "300 keys", "299 queries");
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention(q.topRows(100), k.topRows(200), v.topRows(200),
                                         band_mask().with_blocks(positions), options),
      "block map", "100 queries, 200 keys");
  // One plane serves any number of heads; planes per head only theirs.
  attn::AttentionOptions two_heads;
  two_heads.num_heads = 2;
  EXPECT_NO_THROW(attn::scaled_dot_product_attention(q.leftCols(16), k.leftCols(16), v.leftCols(16),
                                                     band_mask().with_blocks(positions),
                                                     two_heads));
  EXPECT_SHAPE_ERROR(
      attn::scaled_dot_product_attention(q.leftCols(16), k.leftCols(16), v.leftCols(16),
                                         head_mask().with_blocks(heads), two_heads),
      "block map", "4 heads", "2 heads");
  // Empty shapes: no cells.
  for (const auto& [n, m] : {std::pair<Index, Index>{0, 10}, {10, 0}, {0, 0}}) {
    const attn::BlockMap empty(band_mask(), n, m, 4);
    EXPECT_EQ(empty.count(Visibility::none) + empty.count(Visibility::partial) +
                  empty.count(Visibility::all),
              0);
    const Matrix<float> out = attn::scaled_dot_product_attention(
        q.topRows(n), k.topRows(m), v.topRows(m), band_mask().with_blocks(empty), options);
    EXPECT_TRUE(attn_test::bitwise_equal(out, Matrix<float>::Zero(n, 4 * 8))) << n << "x" << m;
  }
  EXPECT_SHAPE_ERROR(attn::BlockMap(band_mask(), -1, 5), "BlockMap", "n is -1");
  EXPECT_SHAPE_ERROR(attn::BlockMap(band_mask(), 5, -2), "BlockMap", "m is -2");
  EXPECT_SHAPE_ERROR(attn::BlockMap(band_mask(), 5, 5, 0), "BlockMap", "num_heads is 0");
  EXPECT_SHAPE_ERROR(attn::BlockMap(attn::tree({-1, 0, 1, 1, 0, -1}), 4, 4), "BlockMap",
                     "the tree has 6 nodes", "4 keys");
  EXPECT_SHAPE_ERROR(attn::BlockMap(attn::documents({3, 4}), 10, 10), "BlockMap",
                     "documents cover 7 positions", "10 keys");
}

// ---------------------------------------------------------------------------------------------
// 7. Errors: ShapeError naming the part, out and the extras untouched
// ---------------------------------------------------------------------------------------------

// Each call that fails leaves out and the log-sum-exp as they were.
template <typename SM>
void expect_call_error(const SM& mask, const Shape& c, std::initializer_list<const char*> parts,
                       const std::string& what) {
  Random rng(1600);
  const Matrix<float> q = rng.uniform_matrix<float>(c.n, c.heads * c.d);
  const Matrix<float> k = rng.uniform_matrix<float>(c.m, c.kv_heads * c.d);
  const Matrix<float> v = rng.uniform_matrix<float>(c.m, c.kv_heads * c.dv);
  Matrix<float> out = Matrix<float>::Constant(c.n, c.heads * c.dv, 7.25f);
  Matrix<float> lse = Matrix<float>::Constant(2, 3, 4.5f);
  attn::AttentionExtras<float> extras;
  extras.log_sum_exp = &lse;
  EXPECT_TRUE(attn_test::throws_shape_error(
      what.c_str(),
      [&] {
        attn::scaled_dot_product_attention_into(q, k, v, out, mask, options_for(c, std::nullopt),
                                                extras);
      },
      parts));
  EXPECT_TRUE((out.array() == 7.25f).all()) << what << ": out changed";
  EXPECT_TRUE(lse.rows() == 2 && lse.cols() == 3 && (lse.array() == 4.5f).all())
      << what << ": log_sum_exp changed";
}

TEST(ScoreMaskErrors, CallsThatDoNotFitTheirMasks) {
  const Shape c{5, 10, 4, 4, 8, 8};
  expect_call_error(attn::alibi(2), c,
                    {"scaled_dot_product_attention", "alibi has 2 slopes", "one per head (4)"},
                    "alibi for 2 heads");
  expect_call_error(attn::Mask::causal() & attn::alibi(std::vector<double>{0.5, 0.25, 0.125}), c,
                    {"alibi has 3 slopes", "(4)"}, "alibi with 3 slopes");
  expect_call_error(
      relative_position_bias(Matrix<float>::Zero(32, 3)), c,
      {"scaled_dot_product_attention", "relative_position_bias table is 32x3", "num_buckets x 4"},
      "relative_position_bias with 3 columns");
  expect_call_error(head_bias(Matrix<float>::Zero(4 * 5 + 1, 10)), c,
                    {"scaled_dot_product_attention", "head_bias is 21x10", "expected 20x10"},
                    "head_bias of 21 rows");
  expect_call_error(head_bias(Matrix<double>::Zero(20, 9)), c,
                    {"head_bias is 20x9", "expected 20x10"}, "head_bias of 9 columns");
  expect_call_error(
      attn::documents({3, 0, 4}), c,
      {"scaled_dot_product_attention", "the documents cover 7 positions", "at least the 10 keys"},
      "documents over 7 positions");
  expect_call_error(attn::Mask::causal() & attn::document_ids({1, 1, 2, 2, 2}), c,
                    {"documents cover 5 positions", "10 keys"}, "document_ids of 5 positions");
  expect_call_error(
      attn::tree(std::vector<Index>(11, -1)), c,
      {"scaled_dot_product_attention", "the tree has 11 nodes", "at most the 10 keys"},
      "tree of 11 nodes");
  // Composed parts are checked too.
  expect_call_error(attn::sinks(2, 3) & attn::documents({4, 4}), c, {"documents cover 8 positions"},
                    "sinks & documents over 8 positions");
  expect_call_error(
      attn::Mask::causal() & attn::alibi(4) & attn::tree({-1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}), c,
      {"the tree has 11 nodes"}, "causal & alibi & tree of 11 nodes");
  // A documents() covering more than m keys is fine (a growing cache).
  EXPECT_NO_THROW(attn::scaled_dot_product_attention(
      Matrix<float>::Zero(5, 32), Matrix<float>::Zero(10, 32), Matrix<float>::Zero(10, 32),
      attn::documents({6, 6}), options_for(c, std::nullopt)));
}

TEST(ScoreMaskErrors, BadParametersOfTheBuiltIns) {
  EXPECT_SHAPE_ERROR(attn::alibi_slopes(0), "alibi_slopes", "num_heads is 0");
  EXPECT_SHAPE_ERROR(attn::alibi(-3), "alibi_slopes", "num_heads is -3");
  // Lengths, ids, parents, counts.
  EXPECT_SHAPE_ERROR(attn::documents({3, -1, 4}), "documents", "a length is -1", ">= 0");
  EXPECT_SHAPE_ERROR(attn::document_ids({1, 1, 2, 2, 1}), "document_ids", "id 1 at position 4",
                     "comes back");
  EXPECT_SHAPE_ERROR(attn::document_ids({7, 3, 7}), "document_ids", "id 7 at position 2");
  EXPECT_NO_THROW(attn::document_ids({7, 7, 3, 3, 3, 9}));
  EXPECT_SHAPE_ERROR(attn::tree({-1, 0, 2}), "tree", "parents[2] is 2", "[0, 2)");
  EXPECT_SHAPE_ERROR(attn::tree({-1, 0, 5}), "tree", "parents[2] is 5");
  EXPECT_SHAPE_ERROR(attn::tree({-2}), "tree", "parents[0] is -2");
  EXPECT_SHAPE_ERROR(attn::tree({0}), "tree", "parents[0] is 0");
  EXPECT_SHAPE_ERROR(attn::sinks(-1, 4), "sinks", "count is -1");
  EXPECT_SHAPE_ERROR(attn::sinks(2, -3), "sinks", "window is -3");
  EXPECT_SHAPE_ERROR(attn::prefix_lm(-1), "prefix_lm", "prefix is -1");
  EXPECT_NO_THROW(attn::sinks(0, 0));
  EXPECT_NO_THROW(attn::prefix_lm(0));
}

// The factories' own checks of their arguments.
TEST(ScoreMaskErrors, BadTablesAndBiases) {
  // T5: at least 2 buckets per direction, max_distance beyond the exact buckets.
  EXPECT_SHAPE_ERROR(attn::relative_position_bias(Matrix<float>::Zero(3, 4), true),
                     "relative_position_bias", "table is 3x4");
  EXPECT_SHAPE_ERROR(attn::relative_position_bias(Matrix<float>::Zero(32, 4), true, 8),
                     "relative_position_bias", "max_distance 8", "max_distance > 8");
  EXPECT_NO_THROW(attn::relative_position_bias(Matrix<float>::Zero(32, 4), true, 9));
  // head_bias: +∞, NaN and (double) beyond float's range, named by position; −∞ is fine.
  Matrix<float> bias = Matrix<float>::Zero(4, 6);
  bias(1, 2) = std::numeric_limits<float>::infinity();
  EXPECT_SHAPE_ERROR(attn::head_bias(bias), "head_bias", "bias(1, 2) is inf", "-inf");
  bias(1, 2) = -std::numeric_limits<float>::infinity();
  EXPECT_NO_THROW(attn::head_bias(bias));
  bias(3, 5) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_SHAPE_ERROR(attn::head_bias(bias), "head_bias", "bias(3, 5)");
  Matrix<double> large = Matrix<double>::Zero(2, 2);
  large(0, 1) = 1e300;
  EXPECT_SHAPE_ERROR(attn::head_bias(large), "head_bias", "bias(0, 1)");
}

}  // namespace
