// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn against PyTorch: golden outputs computed by tests/reference/generate_golden.py (float64,
// torch.softmax math for the kernel, torch.nn.MultiheadAttention for the functors, torch ops for
// grouped-query attention, and for the built-in masks T5's and ALiBi's own formulas and torch's
// scaled_dot_product_attention), read from tests/reference/golden/ without Python.

#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "support/golden.hpp"
#include "support/golden_layers.hpp"
#include "support/matrix_near.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::Matrix;
using attn::Vector;
using attn_test::config_from;
using attn_test::Golden;
using attn_test::load_golden;
using attn_test::vector_or_empty;
using attn_test::weights_from;

// Tolerances.
//
// The golden values are PyTorch's float64 results on inputs and weights that are multiples of
// 1/64 (1/16 for biases), hence exact in float as well as in double: what is measured is the
// rounding of attn's arithmetic, not of its inputs. Every output element ends a chain of
// reductions of total length
//   K = d (the logit's dot product) + m (the softmax's sum and the weighted sum of the values)
//       [+ S (input projection) + E (output projection) for the functors],
// and a K-term sum in precision eps is off by at most about K·eps times the sum of its terms'
// magnitudes (Higham's gamma_K; blocked and pairwise sums do better, so this is a worst case).
// The terms here are O(1): inputs lie in [-1, 1] ([-2, 2] in the soft-cap cases), weights in
// [-1/2, 1/2], logits and biases are a few units, so exp adds a relative error of a few eps and
// projected values stay O(1); matrix_near compares |got − expected| / max(1, |expected|). The
// factor 8 covers magnitudes up to 4 and, for double, that the golden itself carries float64
// rounding of the same size as attn's (two such errors). So:
//   float:  8·K·1.19e-7, e.g. 1.8e-5 for K = 19 and 2.9e-4 for the long case (K = 308);
//   double: 8·K·2.2e-16, e.g. 3.4e-14 for K = 19 and 5.5e-13 for the long case.
// A real disagreement (a mask misaligned by one key, a wrong scale, cap after bias) moves outputs
// by 1e-3 to 1, far above either.
template <typename T>
double tolerance(Index reduction_length) {
  return 8.0 * static_cast<double>(reduction_length) * Eigen::NumTraits<T>::epsilon();
}

template <typename T>
class GoldenTest : public ::testing::Test {};

using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(GoldenTest, Scalars);

// ---------------------------------------------------------------------------------------------
// Kernel: scaled_dot_product_attention against torch.softmax(q @ k.T * scale + bias) @ v.

/// The file's scale, softcap and head counts when present.
attn::AttentionOptions options_from(const Golden& g) {
  attn::AttentionOptions options;
  if (g.has("num_heads")) options.num_heads = g.index("num_heads");
  if (g.has("num_kv_heads")) options.num_kv_heads = g.index("num_kv_heads");
  if (g.has("scale")) options.scale = g.scalar<double>("scale");
  if (g.has("softcap")) options.softcap = g.scalar<double>("softcap");
  return options;
}

/// Runs the kernel on the golden q, k, v (cast to T) with options_from(g) and compares with the
/// golden entry `output`. With `queries` ≥ 0, only the last `queries` rows of q are run, and
/// compared with the last rows of `output`: a chunk of queries (or a decoding step, 1) that
/// continues the others over the same keys, which bottom-right alignment must place where they
/// stood (an output row depends on its own query only).
template <typename T, typename M = Mask>
void expect_kernel_matches(const Golden& g, const std::string& output, const M& mask,
                           Index queries = -1) {
  Matrix<T> q = g.matrix<T>("q");
  const Matrix<T> k = g.matrix<T>("k");
  const Matrix<T> v = g.matrix<T>("v");
  Matrix<double> expected = g.matrix<double>(output);
  if (queries >= 0) {
    q = Matrix<T>(q.bottomRows(queries));
    expected = Matrix<double>(expected.bottomRows(queries));
  }
  const attn::AttentionOptions options = options_from(g);
  const Index head_dim = q.cols() / options.num_heads;
  const Matrix<T> out = attn::scaled_dot_product_attention(q, k, v, mask, options);
  EXPECT_MATRIX_NEAR(out, expected, tolerance<T>(head_dim + k.rows()))
      << g.path() << ": " << output << (queries >= 0 ? ", last " + std::to_string(queries) : "")
      << (queries >= 0 ? " queries" : "");
}

TYPED_TEST(GoldenTest, KernelNoMask) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_no_mask"), "out", Mask::none());
}

TYPED_TEST(GoldenTest, KernelCausalFewerQueriesThanKeys) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_causal_n_lt_m"), "out", Mask::causal());
}

TYPED_TEST(GoldenTest, KernelCausalMoreQueriesThanKeys) {
  // The first n − m = 7 queries see no key: their golden rows are zero.
  expect_kernel_matches<TypeParam>(load_golden("kernel_causal_n_gt_m"), "out", Mask::causal());
}

TYPED_TEST(GoldenTest, KernelWindow) {
  const Golden g = load_golden("kernel_window");
  expect_kernel_matches<TypeParam>(g, "out", Mask::window(g.index("left"), g.index("right")));
}

TYPED_TEST(GoldenTest, KernelKeepWithFullyMaskedRow) {
  const Golden g = load_golden("kernel_keep");
  expect_kernel_matches<TypeParam>(g, "out", Mask::keep(g.mask("keep")));
}

TYPED_TEST(GoldenTest, KernelBias) {
  const Golden g = load_golden("kernel_bias");
  expect_kernel_matches<TypeParam>(g, "out", Mask::bias(g.matrix<TypeParam>("bias")));
}

TYPED_TEST(GoldenTest, KernelValueDimDiffersFromHeadDim) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_value_dim"), "out", Mask::none());
}

TYPED_TEST(GoldenTest, KernelCustomScale) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_scale"), "out", Mask::none());
}

TYPED_TEST(GoldenTest, KernelSoftcap) {
  expect_kernel_matches<TypeParam>(load_golden("kernel_softcap"), "out", Mask::none());
}

TYPED_TEST(GoldenTest, KernelSoftcapBeforeBias) {
  const Golden g = load_golden("kernel_softcap_bias");
  expect_kernel_matches<TypeParam>(g, "out", Mask::bias(g.matrix<TypeParam>("bias")));
}

TYPED_TEST(GoldenTest, KernelCausalKeepBiasCombined) {
  // Row 2's bias is −∞ on every key: it sees no key, and its golden row is zero.
  const Golden g = load_golden("kernel_combined");
  const Mask mask =
      Mask::causal() & Mask::keep(g.mask("keep")) & Mask::bias(g.matrix<TypeParam>("bias"));
  expect_kernel_matches<TypeParam>(g, "out", mask);
}

TYPED_TEST(GoldenTest, KernelGroupedQueryHeads) {
  const Golden g = load_golden("kernel_gqa");
  expect_kernel_matches<TypeParam>(g, "out", Mask::none());
  expect_kernel_matches<TypeParam>(g, "out_causal", Mask::causal());
}

TYPED_TEST(GoldenTest, KernelLongSequenceSpansTiles) {
  // 70 queries over 300 keys: two query blocks of the tiled kernel and three key blocks, some
  // skipped entirely by the window.
  const Golden g = load_golden("kernel_long");
  expect_kernel_matches<TypeParam>(g, "out", Mask::none());
  expect_kernel_matches<TypeParam>(g, "out_causal", Mask::causal());
  expect_kernel_matches<TypeParam>(g, "out_window", Mask::window(g.index("left"), 0));
}

// ---------------------------------------------------------------------------------------------
// Functors: SelfAttention and CrossAttention against torch.nn.MultiheadAttention (and torch ops
// for grouped-query attention), with the weights as PyTorch holds them.

/// Reduction length of a functor's output: input projection over S, the kernel over d and m,
/// the output projection over E.
Index functor_reduction(const attn::MultiHeadConfig& cfg, Index keys) {
  return cfg.source_features() + cfg.head_dim() + keys + cfg.model_dim;
}

template <typename T>
void expect_self_attention_matches(const Golden& g) {
  const Matrix<T> x = g.matrix<T>("x");
  const attn::MultiHeadConfig cfg = config_from(g, x.cols(), 0);
  const attn::SelfAttention<T> self_attention(cfg, weights_from<T>(g));
  const double tol = tolerance<T>(functor_reduction(cfg, x.rows()));
  EXPECT_MATRIX_NEAR(self_attention(x), g.matrix<double>("y"), tol) << g.path() << ": y";
  EXPECT_MATRIX_NEAR(self_attention(x, Mask::causal()), g.matrix<double>("y_causal"), tol)
      << g.path() << ": y_causal";
}

TYPED_TEST(GoldenTest, SelfAttentionMatchesMultiheadAttention) {
  expect_self_attention_matches<TypeParam>(load_golden("mha_self"));
}

TYPED_TEST(GoldenTest, SelfAttentionWithoutBiasMatchesMultiheadAttention) {
  expect_self_attention_matches<TypeParam>(load_golden("mha_self_no_bias"));
}

TYPED_TEST(GoldenTest, CrossAttentionWithSourceDimMatchesMultiheadAttention) {
  // kdim = vdim = 12 ≠ E = 16: q_proj_weight, k_proj_weight, v_proj_weight.
  using T = TypeParam;
  const Golden g = load_golden("mha_cross_kdim");
  const Matrix<T> target = g.matrix<T>("target");
  const Matrix<T> source = g.matrix<T>("source");
  const attn::MultiHeadConfig cfg = config_from(g, target.cols(), source.cols());
  const attn::CrossAttention<T> cross(cfg, weights_from<T>(g));
  const double tol = tolerance<T>(functor_reduction(cfg, source.rows()));
  EXPECT_MATRIX_NEAR(cross(target, source), g.matrix<double>("y"), tol);
  EXPECT_MATRIX_NEAR(cross(target, cross.remember(source)), g.matrix<double>("y"), tol);
  // torch was given the bottom-right causal attn_mask explicitly.
  EXPECT_MATRIX_NEAR(cross(target, source, Mask::causal()), g.matrix<double>("y_causal"), tol);
}

TYPED_TEST(GoldenTest, CrossAttentionPackedWeightsMatchesMultiheadAttention) {
  // kdim = vdim = E: in_proj_weight; key_padding_mask becomes a keep mask of identical rows.
  using T = TypeParam;
  const Golden g = load_golden("mha_cross_packed");
  const Matrix<T> target = g.matrix<T>("target");
  const Matrix<T> source = g.matrix<T>("source");
  const attn::MultiHeadConfig cfg = config_from(g, target.cols(), source.cols());
  const attn::CrossAttention<T> cross(cfg, weights_from<T>(g));
  const double tol = tolerance<T>(functor_reduction(cfg, source.rows()));
  EXPECT_MATRIX_NEAR(cross(target, source), g.matrix<double>("y"), tol);

  const Matrix<bool> padding = g.mask("key_padding_mask");  // 1 × m, true = ignored (torch)
  const Matrix<bool> keep = (!padding.array()).matrix().replicate(target.rows(), 1);
  EXPECT_MATRIX_NEAR(cross(target, source, Mask::keep(keep)), g.matrix<double>("y_key_padding"),
                     tol);
}

TYPED_TEST(GoldenTest, GroupedQuerySelfAttention) {
  using T = TypeParam;
  const Golden g = load_golden("gqa_self");
  expect_self_attention_matches<T>(g);

  // The packed overload of from_pytorch splits an (E + 2·kv_dim) × E in_proj_weight the same way.
  const Matrix<T> wq = g.matrix<T>("q_proj_weight");
  const Matrix<T> wk = g.matrix<T>("k_proj_weight");
  const Matrix<T> wv = g.matrix<T>("v_proj_weight");
  Matrix<T> in_proj(wq.rows() + wk.rows() + wv.rows(), wq.cols());
  in_proj << wq, wk, wv;
  const auto packed = attn::MultiHeadWeights<T>::from_pytorch(in_proj, g.vector<T>("in_proj_bias"),
                                                              g.matrix<T>("out_proj.weight"),
                                                              g.vector<T>("out_proj.bias"));
  const Matrix<T> x = g.matrix<T>("x");
  const attn::MultiHeadConfig cfg = config_from(g, x.cols(), 0);
  const attn::SelfAttention<T> self_attention(cfg, packed);
  EXPECT_MATRIX_NEAR(self_attention(x, Mask::causal()), g.matrix<double>("y_causal"),
                     tolerance<T>(functor_reduction(cfg, x.rows())));
}

TYPED_TEST(GoldenTest, GroupedQueryCrossAttention) {
  using T = TypeParam;
  const Golden g = load_golden("gqa_cross");
  const Matrix<T> target = g.matrix<T>("target");
  const Matrix<T> source = g.matrix<T>("source");
  const attn::MultiHeadConfig cfg = config_from(g, target.cols(), source.cols());
  const attn::CrossAttention<T> cross(cfg, weights_from<T>(g));
  EXPECT_MATRIX_NEAR(cross(target, source), g.matrix<double>("y"),
                     tolerance<T>(functor_reduction(cfg, source.rows())));
}

// ---------------------------------------------------------------------------------------------
// Built-in masks and score functions (builtin_masks.hpp) against the formulas as their original
// projects write them: Hugging Face's T5Attention, the ALiBi reference implementation, and
// document and prefix-LM masks built as boolean matrices in torch. The tolerances are the kernel
// cases': the logits reach 6 in magnitude (T5's unscaled q·k plus a table entry of up to 2), and
// the worst errors measured are about one eps in float and in double.

TEST(GoldenBuiltins, RelativePositionBucketMatchesTransformers) {
  // Every relative position k − q in [−200, 200] for each (bidirectional, num_buckets,
  // max_distance): exact, as the buckets are integers (T5 computes the logarithmic ones in float32
  // and truncates, and so must attn).
  const Golden g = load_golden("mask_t5_buckets");
  const Matrix<double> configs = g.matrix<double>("configs");
  const Matrix<double> positions = g.matrix<double>("relative_position");
  const Matrix<double> buckets = g.matrix<double>("buckets");
  ASSERT_EQ(buckets.rows(), configs.rows());
  ASSERT_EQ(buckets.cols(), positions.cols());
  for (Index c = 0; c < configs.rows(); ++c) {
    const bool bidirectional = configs(c, 0) != 0;
    const auto num_buckets = Index(configs(c, 1));
    const auto max_distance = Index(configs(c, 2));
    std::ostringstream wrong;  // the relative positions whose bucket differs
    for (Index j = 0; j < positions.cols(); ++j) {
      const auto position = Index(positions(0, j));
      const auto expected = Index(buckets(c, j));
      const Index got =
          attn::relative_position_bucket(position, bidirectional, num_buckets, max_distance);
      if (got != expected)
        wrong << " " << position << " (got " << got << ", expected " << expected << ")";
    }
    EXPECT_TRUE(wrong.str().empty())
        << "bidirectional " << bidirectional << ", num_buckets " << num_buckets << ", max_distance "
        << max_distance << ": wrong bucket at relative positions" << wrong.str();
  }
}

TEST(GoldenBuiltins, AlibiSlopesMatchReference) {
  // Both compute 2^(−2^−(log2(H) − 3)) and its powers with the C library's pow and log2: equal
  // up to a few ulps (EXPECT_DOUBLE_EQ allows 4), for H a power of two and not.
  const Golden g = load_golden("mask_alibi_slopes");
  for (const Index heads : {1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64}) {
    const Vector<double> expected = g.vector<double>("slopes_" + std::to_string(heads));
    const std::vector<double> slopes = attn::alibi_slopes(heads);
    ASSERT_EQ(Index(slopes.size()), expected.size()) << "H = " << heads;
    for (Index h = 0; h < heads; ++h)
      EXPECT_DOUBLE_EQ(slopes[std::size_t(h)], expected(h)) << "H = " << heads << ", head " << h;
  }
}

/// The weights of the kernel on the golden q, k, v under `mask` are nonzero exactly where the
/// golden `keep` is true, in every head.
template <typename T, typename M>
void expect_visible_where_kept(const Golden& g, const M& mask) {
  const Matrix<T> q = g.matrix<T>("q");
  const attn::AttentionOptions options = options_from(g);
  Matrix<T> weights;
  attn::AttentionExtras<T> extras;
  extras.weights = &weights;
  attn::scaled_dot_product_attention(q, g.matrix<T>("k"), g.matrix<T>("v"), mask, options, extras);
  const Matrix<bool> keep = g.mask("keep");
  for (Index h = 0; h < options.num_heads; ++h) {
    const Matrix<bool> visible = (weights.middleRows(h * q.rows(), q.rows()).array() > T(0));
    EXPECT_TRUE(visible == keep) << g.path() << ": head " << h << ", visible keys\n"
                                 << visible << "\nexpected\n"
                                 << keep;
  }
}

TYPED_TEST(GoldenTest, RelativePositionBiasMatchesT5) {
  // 9 queries continuing 31 cached keys, unscaled logits (the file's scale is 1, as T5's).
  using T = TypeParam;
  const Golden g = load_golden("mask_t5_bias");
  const Matrix<T> table = g.matrix<T>("table");
  const Index max_distance = g.index("max_distance");
  const auto encoder = attn::relative_position_bias(table, /*bidirectional*/ true, max_distance);
  const auto decoder =
      Mask::causal() & attn::relative_position_bias(table, /*bidirectional*/ false, max_distance);
  expect_kernel_matches<T>(g, "out_bidirectional", encoder);
  expect_kernel_matches<T>(g, "out_causal", decoder);
  // A decoding step (the last query alone) takes the decode path; the same bias must reach it.
  expect_kernel_matches<T>(g, "out_bidirectional", encoder, 1);
  expect_kernel_matches<T>(g, "out_causal", decoder, 1);
}

TYPED_TEST(GoldenTest, AlibiMatchesReference) {
  // H = 6 takes get_slopes' branch for head counts that are not powers of two. The reference adds
  // slope·k rather than slope·(k − q); the softmax cannot tell.
  using T = TypeParam;
  const Golden g = load_golden("mask_alibi");
  const Vector<double> slopes = g.vector<double>("slopes");
  const auto standard = Mask::causal() & attn::alibi(g.index("num_heads"));
  const auto given = Mask::causal() &
                     attn::alibi(std::vector<double>(slopes.data(), slopes.data() + slopes.size()));
  expect_kernel_matches<T>(g, "out", standard);
  expect_kernel_matches<T>(g, "out", given);
  expect_kernel_matches<T>(g, "out", standard, 4);  // a chunk of the last 4 queries
  expect_kernel_matches<T>(g, "out", standard, 1);  // a decoding step
}

TYPED_TEST(GoldenTest, DocumentsMatchTorchMask) {
  // Packed documents of lengths 5, 1, 7, 3, causal within each.
  using T = TypeParam;
  const Golden g = load_golden("mask_documents");
  const Matrix<double> lengths = g.matrix<double>("lengths");
  const Matrix<double> ids = g.matrix<double>("document_ids");
  std::vector<Index> by_length, with_empty, by_id;
  for (Index b = 0; b < lengths.cols(); ++b) {
    by_length.push_back(Index(lengths(0, b)));
    with_empty.push_back(Index(lengths(0, b)));
    if (b == 1) with_empty.push_back(0);  // an empty document changes nothing
  }
  for (Index p = 0; p < ids.cols(); ++p)
    by_id.push_back(Index(ids(0, p)));
  const auto packed = Mask::causal() & attn::documents(by_length);
  expect_kernel_matches<T>(g, "out", packed);
  expect_kernel_matches<T>(g, "out", Mask::causal() & attn::documents(with_empty));
  expect_kernel_matches<T>(g, "out", Mask::causal() & attn::document_ids(by_id));
  expect_kernel_matches<T>(g, "out", packed, 6);  // a chunk starting inside the third document
  expect_kernel_matches<T>(g, "out", packed, 1);
  expect_visible_where_kept<T>(g, packed);
}

TYPED_TEST(GoldenTest, PrefixLMMatchesTorchMask) {
  // A bidirectional prefix of 5 positions, causal after it.
  using T = TypeParam;
  const Golden g = load_golden("mask_prefix_lm");
  const auto prefix_lm = attn::prefix_lm(g.index("prefix"));
  expect_kernel_matches<T>(g, "out", prefix_lm);
  expect_kernel_matches<T>(g, "out", prefix_lm, 9);  // a chunk starting inside the prefix
  expect_kernel_matches<T>(g, "out", prefix_lm, 1);
  expect_visible_where_kept<T>(g, prefix_lm);
}

}  // namespace
