// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn/simd.hpp's report, and every public computation against the fp64 reference in one
// translation unit, so that .ci/portability can build it cheaply for every instruction set,
// compiler and -ffast-math cell: the kernel under each mask kind, grouped heads, soft-capping,
// decoding and its extras, the partial merge, keys and values stored in 16 and 8 bits, the
// backward pass, and both functors with a KV cache and a remembered memory. The other test files
// go deeper into each; this one is their common ground.

#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/reference_gradients.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn_test::Random;
using attn_test::ReferenceMask;

// The report names what the compiler was told: the widest of its instruction sets, the packet
// width, and -ffast-math.
TEST(SimdReport, NamesTheInstructionSetOfThisBuild) {
  const std::string report = attn::simd_instruction_set();
#if defined(EIGEN_DONT_VECTORIZE)
  const std::string expected = "no SIMD: scalars";
  const int bits = 0;
#elif defined(__AVX512F__)
  const std::string expected = "AVX-512";
  const int bits = 512;
#elif defined(__AVX2__)
  const std::string expected = "AVX2";
  const int bits = 256;
#elif defined(__ARM_NEON)
  const std::string expected = "NEON";
  const int bits = 128;
#elif defined(__SSE2__)
  const std::string expected = "SSE";
  const int bits = 128;
#else
  const std::string expected = "";
  const int bits = 0;
#endif
  EXPECT_EQ(report.rfind(expected, 0), 0u) << report;
  if (bits > 0) {
    EXPECT_NE(report.find(std::to_string(bits) + "-bit packets (" + std::to_string(bits / 32) +
                          " floats, " + std::to_string(bits / 64) + " doubles)"),
              std::string::npos)
        << report;
  }
#if defined(EIGEN_DONT_VECTORIZE)
  EXPECT_EQ(report.find("FMA"), std::string::npos) << report;  // scalar code: no packet FMA
#elif defined(__FMA__) || defined(__AVX512F__)
  EXPECT_NE(report.find("+ FMA"), std::string::npos) << report;
#elif defined(__x86_64__)
  EXPECT_EQ(report.find("FMA"), std::string::npos) << report;
#endif
#if defined(__FAST_MATH__)
  EXPECT_NE(report.find("-ffast-math"), std::string::npos) << report;
#else
  EXPECT_EQ(report.find("fast-math"), std::string::npos) << report;
#endif
}

template <typename Scalar>
class SimdPaths : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SimdPaths, Scalars);

struct Shape {
  Index n, m, d, heads, kv_heads;
};

// Prefill over several tiles with grouped heads, a ragged head dim, and decoding steps of one and
// three queries over keys split for threads.
const Shape shapes[] = {
    {70, 300, 64, 2, 1}, {130, 129, 13, 1, 1}, {1, 1100, 32, 4, 2}, {3, 700, 64, 2, 2}};

TYPED_TEST(SimdPaths, KernelMatchesTheReferenceForEveryMaskKind) {
  using Scalar = TypeParam;
  Random rng(1201);
  for (const Shape& s : shapes) {
    const auto q = rng.uniform_matrix<Scalar>(s.n, s.heads * s.d);
    const auto k = rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.d);
    const auto v = rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.d);
    attn::Matrix<bool> keep = rng.bernoulli_matrix(s.n, s.m, 0.7);
    keep.row(0).setConstant(false);  // a row that sees nothing gives zeros
    attn::Matrix<Scalar> bias = rng.uniform_matrix<Scalar>(s.n, s.m, -2, 2);
    bias(s.n - 1, s.m - 1) = -std::numeric_limits<Scalar>::infinity();  // −∞ hides the key
    struct Case {
      const char* name;
      Mask mask;
      ReferenceMask reference;
    };
    const Index w = s.m / 3;
    const std::vector<Case> cases = {
        {"none", Mask(), ReferenceMask()},
        {"causal", Mask::causal(), ReferenceMask::causal()},
        {"sliding window", Mask::causal() & Mask::window(w, 0),
         ReferenceMask::causal() & ReferenceMask::window(w, 0)},
        {"key length", Mask::key_length(s.m - 5), ReferenceMask::key_length(s.m - 5)},
        {"keep", Mask::keep(keep), ReferenceMask::keep(keep)},
        {"bias and causal", Mask::bias(bias) & Mask::causal(),
         ReferenceMask::bias(bias) & ReferenceMask::causal()},
    };
    for (const Case& c : cases) {
      for (const double softcap : {0.0, 5.0}) {
        attn::AttentionOptions options;
        options.num_heads = s.heads;
        options.num_kv_heads = s.kv_heads;
        options.softcap = softcap;
        options.executor = attn::thread_executor(2);
        const attn_test::MatrixD expected = attn_test::reference_multi_head(
            q, k, v, s.heads, s.kv_heads, c.reference, std::nullopt, softcap);
        const attn::Matrix<Scalar> got =
            attn::scaled_dot_product_attention(q, k, v, c.mask, options);
        const double logit_bound = std::sqrt(double(s.d)) + 2.0;
        EXPECT_TRUE(attn_test::matrix_near(
            got, expected, attn_test::attention_tolerance<Scalar>(logit_bound, s.m)))
            << c.name << ", softcap " << softcap << ", n " << s.n << ", m " << s.m << ", d " << s.d
            << ", heads " << s.heads << "/" << s.kv_heads;
      }
    }
  }
}

// A score function and a mask function compiled into the tiles (the score loop is vectorised
// and tests −∞ on the bits, so it must hold under every flag), against the reference given the
// same functions as an n×m bias and keep matrix.
TYPED_TEST(SimdPaths, ScoreAndMaskFunctionsMatchTheReference) {
  using Scalar = TypeParam;
  Random rng(1213);
  for (const Shape& s : shapes) {
    const auto q = rng.uniform_matrix<Scalar>(s.n, s.heads * s.d);
    const auto k = rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.d);
    const auto v = rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.d);
    const auto slope = [](Index qp, Index kp) { return -0.05 * double(qp - kp); };
    const auto visible = [](Index qp, Index kp) { return (qp + 2 * kp) % 5 != 0 || kp < 3; };
    const Index first = s.m - s.n;  // query row i stands at position i + m − n
    attn_test::MatrixD bias(s.n, s.m);
    attn::Matrix<bool> keep(s.n, s.m);
    const Index document = std::max<Index>(s.m / 3, 1);
    for (Index i = 0; i < s.n; ++i) {
      for (Index j = 0; j < s.m; ++j) {
        bias(i, j) = slope(i + first, j);
        keep(i, j) = visible(i + first, j) && (i + first) / document == j / document;
      }
    }
    std::vector<Index> documents;
    for (Index p = 0; p < s.m; p += document)
      documents.push_back(std::min(document, s.m - p));
    const auto mask = attn::Mask::causal() &
                      attn::score_function([&](Scalar x, Index, Index qp, Index kp) {
                        return x + Scalar(slope(qp, kp));
                      }) &
                      attn::mask_function(visible) & attn::documents(documents);
    attn::AttentionOptions options;
    options.num_heads = s.heads;
    options.num_kv_heads = s.kv_heads;
    options.executor = attn::thread_executor(2);
    const attn_test::MatrixD expected = attn_test::reference_multi_head(
        q, k, v, s.heads, s.kv_heads,
        ReferenceMask::causal() & ReferenceMask::bias(bias) & ReferenceMask::keep(keep));
    const attn::Matrix<Scalar> got = attn::scaled_dot_product_attention(q, k, v, mask, options);
    const double logit_bound = std::sqrt(double(s.d)) + 0.05 * double(s.m + s.n);
    EXPECT_TRUE(attn_test::matrix_near(got, expected,
                                       attn_test::attention_tolerance<Scalar>(logit_bound, s.m)))
        << "n " << s.n << ", m " << s.m << ", d " << s.d;
  }
}

// Log-sum-exps and weights (a second pass), and attention over two parts of the keys merged.
TYPED_TEST(SimdPaths, ExtrasAndPartialMergeMatchTheReference) {
  using Scalar = TypeParam;
  Random rng(1202);
  for (const Shape& s : {shapes[0], shapes[2]}) {
    const auto q = rng.uniform_matrix<Scalar>(s.n, s.heads * s.d);
    const auto k = rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.d);
    const auto v = rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.d);
    attn::AttentionOptions options;
    options.num_heads = s.heads;
    options.num_kv_heads = s.kv_heads;
    attn_test::MatrixD lse_expected, weights_expected;
    const attn_test::MatrixD expected =
        attn_test::reference_multi_head(q, k, v, s.heads, s.kv_heads, ReferenceMask::causal(),
                                        std::nullopt, 0, &lse_expected, &weights_expected);
    attn::Matrix<Scalar> lse, weights;
    attn::AttentionExtras<Scalar> extras;
    extras.log_sum_exp = &lse;
    extras.weights = &weights;
    const attn::Matrix<Scalar> got =
        attn::scaled_dot_product_attention(q, k, v, Mask::causal(), options, extras);
    const double tol = attn_test::attention_tolerance<Scalar>(std::sqrt(double(s.d)), s.m);
    EXPECT_TRUE(attn_test::matrix_near(got, expected, tol));
    EXPECT_TRUE(attn_test::matrix_near(lse, lse_expected, tol));
    EXPECT_TRUE(attn_test::matrix_near(weights, weights_expected, tol));

    const Index half = s.m / 2;
    auto merged = attn::scaled_dot_product_attention_partial(q, k.topRows(half), v.topRows(half),
                                                             Mask(), options);
    attn::merge_partial_attention(
        merged, attn::scaled_dot_product_attention_partial(
                    q, k.bottomRows(s.m - half), v.bottomRows(s.m - half), Mask(), options));
    EXPECT_TRUE(attn_test::matrix_near(
        merged.out, attn_test::reference_multi_head(q, k, v, s.heads, s.kv_heads), tol));
  }
}

/// x as it is stored in Storage and read back (in double).
template <typename Storage>
attn_test::MatrixD stored(const attn::Matrix<float>& x, Index group) {
  if constexpr (std::is_same_v<Storage, attn::qint8>) {
    return attn::QuantizedMatrix::quantize(x, group).dequantize().cast<double>();
  } else {
    return x.cast<Storage>().template cast<float>().template cast<double>();
  }
}

/// x in Storage, as the kernel takes it.
template <typename Storage>
auto store(const attn::Matrix<float>& x, Index group) {
  if constexpr (std::is_same_v<Storage, attn::qint8>) {
    return attn::QuantizedMatrix::quantize(x, group);
  } else {
    return attn::Matrix<Storage>(x.cast<Storage>());
  }
}

/// The kernel over K and V stored in KeyStorage and ValueStorage (and q in QueryStorage), against the fp64 reference
/// over the same stored values: the float path's own tolerance, since the kernel converts in
/// registers and accumulates in float whatever the storage.
template <typename QueryStorage, typename KeyStorage, typename ValueStorage>
void expect_stored_kernel_matches(const char* name) {
  Random rng(1205);
  for (const Shape& s : shapes) {
    const attn::Matrix<float> q = rng.uniform_matrix<float>(s.n, s.heads * s.d);
    const attn::Matrix<float> k = rng.uniform_matrix<float>(s.m, s.kv_heads * s.d);
    const attn::Matrix<float> v = rng.uniform_matrix<float>(s.m, s.kv_heads * s.d);
    attn::AttentionOptions options;
    options.num_heads = s.heads;
    options.num_kv_heads = s.kv_heads;
    options.executor = attn::thread_executor(2);
    const attn::Matrix<QueryStorage> q_stored = q.cast<QueryStorage>();
    const attn::Matrix<float> got = attn::scaled_dot_product_attention(
        q_stored, store<KeyStorage>(k, s.d), store<ValueStorage>(v, s.d), Mask::causal(), options);
    const attn_test::MatrixD expected = attn_test::reference_multi_head(
        q_stored.template cast<float>(), stored<KeyStorage>(k, s.d), stored<ValueStorage>(v, s.d),
        s.heads, s.kv_heads, ReferenceMask::causal());
    EXPECT_TRUE(attn_test::matrix_near(
        got, expected, attn_test::attention_tolerance<float>(std::sqrt(double(s.d)), s.m)))
        << name << ", n " << s.n << ", m " << s.m << ", d " << s.d;
  }
}

// The backward (its own register-tile products, any shape, padded head dims) against the fp64
// reference's gradients: whole and ragged tiles, grouped heads, dv ≠ d, masks that cut tiles,
// soft-capping, and keys split into chunks for two threads. One mask type: one backward
// instantiation per Scalar.
TYPED_TEST(SimdPaths, BackwardMatchesTheReference) {
  using Scalar = TypeParam;
  struct GradientShape {
    Index n, m, heads, kv_heads, d, dv;
  };
  Random rng(1207);
  for (const GradientShape& s :
       {GradientShape{130, 300, 2, 1, 13, 7}, GradientShape{70, 129, 2, 2, 64, 32},
        GradientShape{1, 40, 1, 1, 8, 8}}) {
    const auto q = rng.uniform_matrix<Scalar>(s.n, s.heads * s.d);
    const auto k = rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.d);
    const auto v = rng.uniform_matrix<Scalar>(s.m, s.kv_heads * s.dv);
    const auto d_out = rng.uniform_matrix<Scalar>(s.n, s.heads * s.dv);
    const attn::Matrix<bool> keep = rng.bernoulli_matrix(s.n, s.m, 0.7);
    struct Case {
      const char* name;
      Mask mask;
      ReferenceMask reference;
      double softcap;
    };
    const std::vector<Case> cases = {
        {"none", Mask(), ReferenceMask(), 0.0},
        {"causal & window", Mask::causal() & Mask::window(40, 0),
         ReferenceMask::causal() & ReferenceMask::window(40, 0), 0.0},
        {"keep, softcap 5", Mask::keep(keep), ReferenceMask::keep(keep), 5.0},
    };
    for (const Case& c : cases) {
      attn::AttentionOptions options;
      options.num_heads = s.heads;
      options.num_kv_heads = s.kv_heads;
      options.softcap = c.softcap;
      options.executor = attn::thread_executor(2);
      attn::Matrix<Scalar> lse;
      attn::AttentionExtras<Scalar> extras;
      extras.log_sum_exp = &lse;
      const attn::Matrix<Scalar> out =
          attn::scaled_dot_product_attention(q, k, v, c.mask, options, extras);
      const attn::AttentionGradients<Scalar> got =
          attn::scaled_dot_product_attention_backward(q, k, v, out, lse, d_out, c.mask, options);
      const attn_test::ReferenceGradients want = attn_test::reference_gradients(
          q, k, v, d_out, s.heads, s.kv_heads, c.reference, std::nullopt, c.softcap);
      const double tol = attn_test::gradient_tolerance<Scalar>(s.d, s.dv, std::max(s.n, s.m));
      const std::string context = std::string(c.name) + ", n " + std::to_string(s.n) + ", m " +
                                  std::to_string(s.m) + ", d " + std::to_string(s.d) + ", dv " +
                                  std::to_string(s.dv);
      EXPECT_TRUE(attn_test::matrix_near(got.dq, want.dq, tol)) << context << ": dq";
      EXPECT_TRUE(attn_test::matrix_near(got.dk, want.dk, tol)) << context << ": dk";
      EXPECT_TRUE(attn_test::matrix_near(got.dv, want.dv, tol)) << context << ": dv";
    }
  }
}

// Keys and values (and queries) in 16 and 8 bits, through this build's conversions: two kernel
// instantiations, to keep each portability cell's build short (test_packet_math converts every
// value of each type; test_storage goes through every combination).
TEST(SimdStorage, KernelOverStoredValuesMatchesTheReference) {
  expect_stored_kernel_matches<attn::bfloat16, attn::half, attn::bfloat16>(
      "q bfloat16, k half, v bfloat16");
  expect_stored_kernel_matches<float, attn::qint8, attn::qint8>("qint8");
}

// SelfAttention with grouped heads, in one causal pass and token by token through a KV cache.
TYPED_TEST(SimdPaths, SelfAttentionAndItsCacheMatchTheReference) {
  using Scalar = TypeParam;
  Random rng(1203);
  const attn::MultiHeadConfig cfg{/*model_dim*/ 64, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> self_attn(cfg, w);
  const Index length = 90;
  const auto x = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
  const attn_test::MatrixD expected =
      attn_test::reference_mha(x, x, w, cfg.num_heads, cfg.num_kv_heads, ReferenceMask::causal());
  const double tol = attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim, 16, length);
  EXPECT_TRUE(attn_test::matrix_near(self_attn(x, Mask::causal()), expected, tol));

  attn::KVCache<Scalar> cache = self_attn.make_cache(length);
  attn::Matrix<Scalar> decoded(length, cfg.model_dim);
  decoded.topRows(40) = self_attn(x.topRows(40), cache);  // a prefill chunk, then steps
  for (Index i = 40; i < length; ++i)
    decoded.row(i) = self_attn(x.row(i), cache);
  EXPECT_TRUE(attn_test::matrix_near(decoded, expected, tol));
}

// The same layer over a PagedKVCache of small pages: one sequence prefilled and decoded, a fork of
// it decoded beside it in batched steps (the kernel reads the pages through their tables, and the
// batch runs as one call).
TYPED_TEST(SimdPaths, SelfAttentionOverPagesMatchesTheReference) {
  using Scalar = TypeParam;
  Random rng(1206);
  const attn::MultiHeadConfig cfg{/*model_dim*/ 64, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> self_attn(cfg, w);
  const Index length = 90, shared = 37;
  const auto x = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
  const auto y = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
  attn::Matrix<Scalar> y_history(length, cfg.model_dim);  // the fork's input: x's prefix, then y
  y_history << x.topRows(shared), y.bottomRows(length - shared);
  const double tol = attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim, 16, length);

  attn::PagedKVCache<Scalar> pool = self_attn.make_paged_cache(/*pages*/ 16, /*page_size*/ 16);
  const attn::SequenceId a = pool.create();
  attn::Matrix<Scalar> decoded_x(length, cfg.model_dim), decoded_y(length, cfg.model_dim);
  decoded_x.topRows(shared) = self_attn(x.topRows(shared), pool, a);
  decoded_y.topRows(shared) = decoded_x.topRows(shared);
  const attn::SequenceId b = pool.fork(a);
  for (Index i = shared; i < length; ++i) {
    attn::Matrix<Scalar> rows(2, cfg.model_dim);
    rows << x.row(i), y.row(i);
    const attn::Matrix<Scalar> out = self_attn.attend_batch(rows, pool, {a, b});
    decoded_x.row(i) = out.row(0);
    decoded_y.row(i) = out.row(1);
  }
  EXPECT_TRUE(attn_test::matrix_near(
      decoded_x,
      attn_test::reference_mha(x, x, w, cfg.num_heads, cfg.num_kv_heads, ReferenceMask::causal()),
      tol));
  EXPECT_TRUE(
      attn_test::matrix_near(decoded_y,
                             attn_test::reference_mha(y_history, y_history, w, cfg.num_heads,
                                                      cfg.num_kv_heads, ReferenceMask::causal()),
                             tol));
}

// CrossAttention: queries from the target, keys and values from a source of another width, directly
// and through a remembered memory.
TYPED_TEST(SimdPaths, CrossAttentionAndItsMemoryMatchTheReference) {
  using Scalar = TypeParam;
  Random rng(1204);
  attn::MultiHeadConfig cfg{/*model_dim*/ 48, /*num_heads*/ 3};
  cfg.source_dim = 40;
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::CrossAttention<Scalar> cross(cfg, w);
  const auto target = rng.uniform_matrix<Scalar>(21, cfg.model_dim);
  const auto source = rng.uniform_matrix<Scalar>(333, cfg.source_dim);
  const attn_test::MatrixD expected =
      attn_test::reference_mha(target, source, w, cfg.num_heads, cfg.num_heads);
  const double tol =
      attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.source_dim, 16, source.rows());
  EXPECT_TRUE(attn_test::matrix_near(cross(target, source), expected, tol));
  const auto memory = cross.remember(source);
  EXPECT_TRUE(attn_test::matrix_near(cross(target, memory), expected, tol));
  EXPECT_TRUE(attn_test::matrix_near(cross(target.row(7), memory), expected.row(7), tol));
}

}  // namespace
