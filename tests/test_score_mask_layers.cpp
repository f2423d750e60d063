// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// SelfAttention and CrossAttention with a ScoreMask (the built-ins of builtin_masks.hpp and the
// user's own score and mask functions, with and without a block predicate) against the fp64
// reference of support/reference_functions.hpp, which evaluates the documented rules position by
// position:
// - one sequence, and packed batches, which run as one kernel call in which each sequence sees
//   positions counted from its own start (so each is compared with the reference run on it
//   alone), for MHA and GQA;
// - KVCache decoding and chunked prefill, where positions are absolute in the cache, also over
//   more than 1024 keys (a decoding step split into parts) and in bfloat16 and qint8 storage
//   (against the reference on the stored keys and values);
// - a tree of draft tokens verified over a cached prefix (speculative decoding);
// - cross-attention, direct, packed (target and source lengths differing per sequence) and over
//   a remembered source, with queries at negative positions (more target rows than source rows);
// - keys hidden by a score function's −∞ are hidden (zero rows where nothing is left, no NaN from
//   the bias);
// - a packed batch is one call: bitwise the same on every executor, and equal to its sequences
//   called one by one;
// - parts tied to one sequence (tree, head_bias, BlockMap, explicit masks) are refused for a
//   batch of several, and a call that throws changes neither the cache nor out.

#include <attn/attn.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/counting_executor.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/reference_functions.hpp"
#include "support/shape_error.hpp"
#include "support/stored_values.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::MultiHeadConfig;
using attn::Visibility;
using attn_test::bitwise_equal;
using attn_test::LayerRule;
using attn_test::MatrixD;
using attn_test::Random;

MultiHeadConfig config(Index model_dim, Index heads, Index kv_heads, Index source_dim = 0) {
  MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.source_dim = source_dim;
  return cfg;
}

std::string describe(const MultiHeadConfig& cfg) {
  return "E=" + std::to_string(cfg.model_dim) + " H=" + std::to_string(cfg.num_heads) +
         " Hkv=" + std::to_string(cfg.kv_heads()) + " S=" + std::to_string(cfg.source_features());
}

Index sum(const std::vector<Index>& lengths) {
  Index total = 0;
  for (const Index length : lengths)
    total += length;
  return total;
}

// MHA with a head count that is not a power of two (ALiBi's slopes then interleave two series),
// and GQA.
const std::vector<MultiHeadConfig> configs = {config(24, 6, 6), config(32, 4, 2)};

// ---------------------------------------------------------------------------------------------
// The user's functions, as a model would write them
// ---------------------------------------------------------------------------------------------

// A score function: a temperature per head and a wave of the distance, the added term computed
// in double and rounded once to the kernel's Scalar. The reference calls it with double.
const auto tempered_wave = [](auto s, Index h, Index q, Index k) {
  using S = decltype(s);
  return S(1.0 - 0.125 * double(h % 4)) * s + S(0.25 * std::sin(0.5 * double(q - k)));
};
// |tempered_wave(s) − s| ≤ 0.375·|s| + 0.25: the logit bound grows by at most half.
constexpr double wave_shift = 0.25;

// A score function that hides keys by −∞: a pattern of positions and heads, and every key from
// the query at position 3 (which then sees nothing: a zero row of the kernel).
const auto hiding_score = [](auto s, Index h, Index q, Index k) {
  using S = decltype(s);
  return (q + 2 * k + h) % 5 == 0 || q == 3 ? -std::numeric_limits<S>::infinity() : s;
};

// A mask function of the head: causal, and for head h only keys at a distance that is not 1
// modulo h + 2 (so every query sees at least itself).
const auto strided_causal = [](Index h, Index q, Index k) {
  return k <= q && (q - k) % (h + 2) != 1;
};

// A mask function of positions only, with an exact block predicate: causal within chunks of 16
// positions (chunked local attention); a query at a negative position (a cross-attention target
// longer than its source) sees nothing.
constexpr Index chunk = 16;
const auto chunked_causal = [](Index q, Index k) {
  return q >= 0 && k <= q && q / chunk == k / chunk;
};
const auto chunked_causal_blocks = [](Index q0, Index q1, Index k0, Index k1) {
  const Index first = std::max<Index>(q0, 0), last = q1 - 1;
  if (last < first || k0 > last) return Visibility::none;
  if (last / chunk < k0 / chunk || first / chunk > (k1 - 1) / chunk) return Visibility::none;
  const bool one_chunk = first / chunk == (k1 - 1) / chunk && k0 / chunk == last / chunk;
  return q0 >= 0 && one_chunk && k1 - 1 <= first ? Visibility::all : Visibility::partial;
};

LayerRule wave_rule() {
  return {[](double s, Index h, Index q, Index k) { return tempered_wave(s, h, q, k); }, {}};
}
LayerRule hiding_score_rule() {
  return {[](double s, Index h, Index q, Index k) { return hiding_score(s, h, q, k); }, {}};
}
LayerRule strided_causal_rule() {
  return {{}, [](Index h, Index q, Index k) { return strided_causal(h, q, k); }};
}
LayerRule chunked_causal_rule() {
  return attn_test::layer_visible([](Index q, Index k) { return chunked_causal(q, k); });
}

// Documents covering up to 133 positions, an empty one among them.
const std::vector<Index> documents = {13, 1, 29, 0, 40, 50};

// The largest ALiBi slope for any head count here (0.5 from 8 heads on, or 6 heads' interleaved
// series): |slope·(k − q)| ≤ 0.5·m.
constexpr double max_slope = 0.5;

// Calls visit(name, score mask, reference rule, shift) for each rule positions decide, for a
// layer of `heads` heads over sequences of up to `length` positions. shift bounds how far the
// score function moves a logit (what tolerance() adds to the logit bound). None of them is tied
// to one sequence, so every one also serves packed batches. In double only the first two (the
// second composes four kinds): each rule is a kernel instantiation per Scalar and path,
// and float meets every rule's logic at a tolerance a defect exceeds by orders of magnitude.
template <typename Scalar, typename Visit>
void for_each_rule(Index heads, Index length, const Visit& visit) {
  using attn_test::layer_causal;
  const double alibi_shift = max_slope * double(length);
  const std::vector<double> slopes = attn_test::layer_alibi_slopes(heads);
  visit("causal & alibi", Mask::causal() & attn::alibi(heads),
        layer_causal() & attn_test::layer_alibi(slopes), alibi_shift);
  visit("alibi & sinks & score lambda & mask lambda",
        attn::alibi(heads) & attn::sinks(4, 16) & attn::score_function(tempered_wave) &
            attn::mask_function(strided_causal),
        attn_test::layer_alibi(slopes) & attn_test::layer_sinks(4, 16) & wave_rule() &
            strided_causal_rule(),
        alibi_shift + wave_shift);
  // (Not a return for double: the statements after it would still be instantiated.)
  if constexpr (!std::is_same_v<Scalar, double>) {
    visit("sinks(4, 16)", attn::sinks(4, 16), attn_test::layer_sinks(4, 16), 0.0);
    visit("prefix_lm(10)", attn::prefix_lm(10), attn_test::layer_prefix_lm(10), 0.0);
    visit("causal & documents", Mask::causal() & attn::documents(documents),
          layer_causal() & attn_test::layer_documents(documents), 0.0);
    // Ids 0 (7 positions), 5 (3) and 2 (the rest, at least one), and a bidirectional prefix.
    std::vector<Index> ids(std::size_t(std::max<Index>(length, 11)), 2);
    std::fill(ids.begin(), ids.begin() + 7, 0);
    std::fill(ids.begin() + 7, ids.begin() + 10, 5);
    visit(
        "document_ids & prefix_lm(3)", attn::document_ids(ids) & attn::prefix_lm(3),
        attn_test::layer_documents({7, 3, Index(ids.size()) - 10}) & attn_test::layer_prefix_lm(3),
        0.0);
    visit("score lambda & causal", attn::score_function(tempered_wave) & Mask::causal(),
          wave_rule() & layer_causal(), wave_shift);
    visit("mask lambda of the head", attn::mask_function(strided_causal), strided_causal_rule(),
          0.0);
    visit("score lambda hiding keys & causal", attn::score_function(hiding_score) & Mask::causal(),
          hiding_score_rule() & layer_causal(), 0.0);
    visit("mask lambda with a block predicate",
          attn::mask_function(chunked_causal, chunked_causal_blocks), chunked_causal_rule(), 0.0);
    visit("mask lambda without a block predicate", attn::mask_function(chunked_causal),
          chunked_causal_rule(), 0.0);
  }
}

// A layer against the fp64 reference (support/tolerance.hpp's layer_tolerance), with the logit
// bound grown by the score function's shift (attention_tolerance: an absolute logit error of
// u·shift is a relative weight error as large).
template <typename Scalar>
double tolerance(const MultiHeadConfig& cfg, Index m, double shift) {
  return attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.source_features(), cfg.head_dim(),
                                            m) +
         attn_test::attention_tolerance<Scalar>(shift, m);
}

template <typename Scalar>
class ScoreMaskLayersTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ScoreMaskLayersTest, Scalars);

// ---------------------------------------------------------------------------------------------
// Self-attention: one sequence and packed batches
// ---------------------------------------------------------------------------------------------

TYPED_TEST(ScoreMaskLayersTest, OneSequenceMatchesTheReference) {
  using Scalar = TypeParam;
  std::uint32_t seed = 100;
  for (const MultiHeadConfig& cfg : configs) {
    for (const Index length : {1, 37, 130}) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::SelfAttention<Scalar> layer(cfg, w);
      const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
      for_each_rule<Scalar>(
          cfg.num_heads, length,
          [&](const char* name, const auto& mask, const LayerRule& rule, double shift) {
            EXPECT_TRUE(attn_test::matrix_near(
                layer(x, mask), attn_test::layer_mha(x, x, w, cfg.num_heads, cfg.kv_heads(), rule),
                tolerance<Scalar>(cfg, length, shift)))
                << describe(cfg) << " L=" << length << " " << name << " seed=" << seed;
          });
      // A BlockMap in place of the block predicate: one plane for a mask function of positions,
      // one per head for a mask function of the head.
      const auto chunked = attn::mask_function(chunked_causal);
      const attn::BlockMap map(chunked, length, length, cfg.num_heads);
      EXPECT_EQ(map.planes(), 1);
      EXPECT_TRUE(attn_test::matrix_near(
          layer(x, chunked.with_blocks(map)),
          attn_test::layer_mha(x, x, w, cfg.num_heads, cfg.kv_heads(), chunked_causal_rule()),
          tolerance<Scalar>(cfg, length, 0)))
          << describe(cfg) << " L=" << length << " BlockMap";
      const auto strided = attn::mask_function(strided_causal);
      const attn::BlockMap per_head(strided, length, length, cfg.num_heads);
      EXPECT_EQ(per_head.planes(), cfg.num_heads);
      EXPECT_TRUE(attn_test::matrix_near(
          layer(x, strided.with_blocks(per_head)),
          attn_test::layer_mha(x, x, w, cfg.num_heads, cfg.kv_heads(), strided_causal_rule()),
          tolerance<Scalar>(cfg, length, 0)))
          << describe(cfg) << " L=" << length << " BlockMap per head";
    }
  }
}

// A packed batch: sequence b sees only itself, with positions counted from its own start, so its
// rows equal the reference run on that sequence alone, and the functor called on it alone.
TYPED_TEST(ScoreMaskLayersTest, PackedBatchSeesEachSequenceFromItsStart) {
  using Scalar = TypeParam;
  std::uint32_t seed = 200;
  for (const MultiHeadConfig& cfg : configs) {
    // (Fewer rows in all than a packet: the decoding path, over every sequence at once.)
    for (const std::vector<Index>& lengths :
         {std::vector<Index>{5, 17, 64, 1, 40}, std::vector<Index>{0, 3, 0, 70},
          std::vector<Index>{1, 2}}) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::SelfAttention<Scalar> layer(cfg, w);
      const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(sum(lengths), cfg.model_dim);
      const Index longest = *std::max_element(lengths.begin(), lengths.end());
      for_each_rule<Scalar>(
          cfg.num_heads, longest,
          [&](const char* name, const auto& mask, const LayerRule& rule, double shift) {
            const attn::Matrix<Scalar> batch = layer(x, lengths, mask);
            ASSERT_EQ(batch.rows(), x.rows());
            const double tol = tolerance<Scalar>(cfg, longest, shift);
            Index row = 0;
            for (const Index length : lengths) {
              const auto one = x.middleRows(row, length);
              const auto rows = batch.middleRows(row, length);
              EXPECT_TRUE(attn_test::matrix_near(
                  rows, attn_test::layer_mha(one, one, w, cfg.num_heads, cfg.kv_heads(), rule),
                  tol))
                  << describe(cfg) << " " << name << ": the sequence at row " << row
                  << " of length " << length;
              // Called alone, the projections run over fewer rows and the kernel's query blocks
              // differ: both are within the layer's tolerance of the reference.
              EXPECT_TRUE(attn_test::matrix_near(rows, layer(one, mask), 2 * tol))
                  << describe(cfg) << " " << name << ": alone, the sequence at row " << row;
              row += length;
            }
          });
    }
  }
}

// A packed batch is one kernel call: one call of the executor, and the same bits whichever
// executor runs its work items, for self- and cross-attention.
TYPED_TEST(ScoreMaskLayersTest, PackedBatchIsOneCallBitwiseTheSameOnEveryExecutor) {
  using Scalar = TypeParam;
  Random rng(300);
  const MultiHeadConfig cfg = config(32, 4, 2);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const std::vector<Index> lengths = {5, 17, 64, 1, 40};
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(sum(lengths), cfg.model_dim);
  const auto mask = Mask::causal() & attn::alibi(cfg.num_heads) &
                    attn::score_function(tempered_wave) & attn::mask_function(strided_causal);

  int calls = 0;
  const attn::SelfAttention<Scalar> serial(cfg, w, attn::serial_executor);
  const attn::SelfAttention<Scalar> counted(cfg, w, attn_test::counting_executor(calls));
  const attn::Matrix<Scalar> expected = serial(x, lengths, mask);
  EXPECT_TRUE(bitwise_equal(counted(x, lengths, mask), expected));
  EXPECT_EQ(calls, 1) << "a packed batch of " << lengths.size() << " sequences";
  for (const int threads : {2, 3}) {
    const attn::SelfAttention<Scalar> threaded(cfg, w, attn::thread_executor(threads));
    EXPECT_TRUE(bitwise_equal(threaded(x, lengths, mask), expected)) << threads << " threads";
    attn::MultiHeadOptions options;
    options.executor = attn::thread_executor(threads);
    EXPECT_TRUE(bitwise_equal(serial(x, lengths, mask, options), expected))
        << threads << " threads in the options";
  }

  const MultiHeadConfig cross_cfg = config(32, 4, 2, 20);
  const auto cross_w = attn_test::random_weights<Scalar>(cross_cfg, rng);
  const std::vector<Index> source_lengths = {9, 0, 70, 4, 33};
  const attn::Matrix<Scalar> source =
      rng.uniform_matrix<Scalar>(sum(source_lengths), cross_cfg.source_dim);
  const attn::CrossAttention<Scalar> cross_serial(cross_cfg, cross_w, attn::serial_executor);
  const auto cross_mask = attn::mask_function(chunked_causal, chunked_causal_blocks) &
                          attn::score_function(tempered_wave);
  const attn::Matrix<Scalar> cross_expected =
      cross_serial(x, lengths, source, source_lengths, cross_mask);
  calls = 0;
  const attn::CrossAttention<Scalar> cross_counted(cross_cfg, cross_w,
                                                   attn_test::counting_executor(calls));
  EXPECT_TRUE(
      bitwise_equal(cross_counted(x, lengths, source, source_lengths, cross_mask), cross_expected));
  EXPECT_EQ(calls, 1);
  for (const int threads : {2, 3}) {
    const attn::CrossAttention<Scalar> threaded(cross_cfg, cross_w, attn::thread_executor(threads));
    EXPECT_TRUE(
        bitwise_equal(threaded(x, lengths, source, source_lengths, cross_mask), cross_expected))
        << threads << " threads";
  }
}

// ---------------------------------------------------------------------------------------------
// KVCache: decoding and chunked prefill, positions absolute in the cache
// ---------------------------------------------------------------------------------------------

// Runs x through the cache in chunks (a prefill, single rows for decoding) with `mask`, and
// checks each chunk's rows against the reference over every position cached so far, the chunk's
// rows standing at the last positions. In Scalar storage the reference projects the keys and
// values itself; in reduced storage it reads those the cache holds (whose rounding is then not
// an error of the layer), after checking that they are the projected rows, rounded: bfloat16
// keeps 8 significant bits, qint8 half a step of max|head row|/127, so 1% of a row's largest
// value bounds both, while a row of the wrong position or projection is off by O(1).
template <typename Scalar, typename Storage, typename SM>
void expect_chunks_match(const attn::SelfAttention<Scalar>& layer,
                         const attn::MultiHeadWeights<Scalar>& w, const attn::Matrix<Scalar>& x,
                         const std::vector<Index>& chunks, const SM& mask, const LayerRule& rule,
                         double shift, attn::KVCache<Scalar, Storage>& cache,
                         const std::string& what) {
  const MultiHeadConfig& cfg = layer.config();
  const auto [keys, values] = attn_test::layer_keys_values(x, w);
  Index first = 0;
  for (const Index rows : chunks) {
    const auto chunk_rows = x.middleRows(first, rows);
    const attn::Matrix<Scalar> y = layer(chunk_rows, cache, mask);
    const Index m = first + rows;
    ASSERT_EQ(cache.size(), m) << what;
    MatrixD k = keys.topRows(m), v = values.topRows(m);
    if constexpr (!std::is_same_v<Storage, Scalar>) {
      const MatrixD k_stored = attn_test::stored_values(cache.keys()),
                    v_stored = attn_test::stored_values(cache.values());
      const auto near = [](const MatrixD& got, const MatrixD& exact) {
        const double slack = 0.01 * std::max(1.0, exact.cwiseAbs().maxCoeff());
        return attn_test::matrix_near(got, exact, slack);
      };
      EXPECT_TRUE(near(k_stored, k)) << what << " keys at m=" << m;
      EXPECT_TRUE(near(v_stored, v)) << what << " values at m=" << m;
      k = k_stored;
      v = v_stored;
    }
    EXPECT_TRUE(attn_test::matrix_near(
        y, attn_test::layer_mha_over(chunk_rows, k, v, w, cfg.num_heads, cfg.kv_heads(), rule),
        tolerance<Scalar>(cfg, m, shift)))
        << what << ": the chunk of " << rows << " rows at positions " << first << " to " << m - 1;
    first = m;
  }
}

// The rules a decoder uses over its cache: each is causal (a decoder sees no later token).
template <typename Visit>
void for_each_decoder_rule(Index heads, Index length, const Visit& visit) {
  const std::vector<double> slopes = attn_test::layer_alibi_slopes(heads);
  visit("sinks(4, 16)", attn::sinks(4, 16), attn_test::layer_sinks(4, 16), 0.0);
  visit("alibi & causal", attn::alibi(heads) & Mask::causal(),
        attn_test::layer_alibi(slopes) & attn_test::layer_causal(), max_slope * double(length));
  visit("score lambda & mask lambda",
        attn::score_function(tempered_wave) & attn::mask_function(strided_causal),
        wave_rule() & strided_causal_rule(), wave_shift);
  visit("prefix_lm(10) & documents", attn::prefix_lm(10) & attn::documents(documents),
        attn_test::layer_prefix_lm(10) & attn_test::layer_documents(documents), 0.0);
}

std::vector<Index> prompt_then_steps(Index prompt, Index steps) {
  std::vector<Index> chunks = {prompt};
  chunks.insert(chunks.end(), std::size_t(steps), Index(1));
  return chunks;
}

TYPED_TEST(ScoreMaskLayersTest, DecodingMatchesTheReferenceOverEveryPositionSoFar) {
  using Scalar = TypeParam;
  std::uint32_t seed = 400;
  for (const MultiHeadConfig& cfg : configs) {
    Random rng(++seed);
    const auto w = attn_test::random_weights<Scalar>(cfg, rng);
    const attn::SelfAttention<Scalar> layer(cfg, w);
    const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(70, cfg.model_dim);
    for_each_decoder_rule(
        cfg.num_heads, 70,
        [&](const char* name, const auto& mask, const LayerRule& rule, double shift) {
          attn::KVCache<Scalar> cache = layer.make_cache(70);
          expect_chunks_match(layer, w, x, prompt_then_steps(40, 30), mask, rule, shift, cache,
                              describe(cfg) + " " + name + " decoding");
          attn::KVCache<Scalar> chunked = layer.make_cache(70);
          expect_chunks_match(layer, w, x, {7, 7, 7, 7, 7, 7, 7, 7, 7, 7}, mask, rule, shift,
                              chunked, describe(cfg) + " " + name + " chunks of 7");
        });
  }
}

// Decoding steps over more than 1024 cached keys are split into parts of 512 keys merged by
// log-sum-exp; with sinks, the blocks between the sinks and the window are never read, and a part
// may hold nothing visible.
TYPED_TEST(ScoreMaskLayersTest, DecodingStepsSplitIntoPartsSkipHiddenBlocks) {
  using Scalar = TypeParam;
  Random rng(410);
  const MultiHeadConfig cfg = config(32, 4, 2);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> layer(cfg, w);
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(1100, cfg.model_dim);
  attn::KVCache<Scalar> cache = layer.make_cache(1100);
  expect_chunks_match(layer, w, x, {1020, 40, 1, 1, 1, 1, 35, 1}, attn::sinks(4, 16),
                      attn_test::layer_sinks(4, 16), 0.0, cache, "sinks(4, 16)");
  attn::KVCache<Scalar> alibi = layer.make_cache(1100);
  expect_chunks_match(layer, w, x, {1030, 1, 1, 1}, Mask::causal() & attn::alibi(cfg.num_heads),
                      attn_test::layer_causal() &
                          attn_test::layer_alibi(attn_test::layer_alibi_slopes(cfg.num_heads)),
                      max_slope * 1033, alibi, "causal & alibi");
}

// make_cache<bfloat16> and <qint8>: each step against the reference over the keys and values the
// cache holds, in float's tolerance.
template <typename Storage>
void expect_reduced_cache_matches() {
  Random rng(420);
  for (const MultiHeadConfig& cfg : configs) {
    const auto w = attn_test::random_weights<float>(cfg, rng);
    const attn::SelfAttention<float> layer(cfg, w);
    const attn::Matrix<float> x = rng.uniform_matrix<float>(60, cfg.model_dim);
    const std::string what =
        describe(cfg) + " in " + attn::detail::storage_name<Storage>() + " storage: ";
    {
      attn::KVCache<float, Storage> cache = layer.template make_cache<Storage>(60);
      expect_chunks_match(layer, w, x, prompt_then_steps(30, 30), attn::sinks(4, 16),
                          attn_test::layer_sinks(4, 16), 0.0, cache, what + "sinks(4, 16)");
    }
    {
      attn::KVCache<float, Storage> cache = layer.template make_cache<Storage>(60);
      expect_chunks_match(layer, w, x, {7, 7, 7, 7, 7, 7, 7, 7, 1, 1, 1, 1},
                          Mask::causal() & attn::alibi(cfg.num_heads),
                          attn_test::layer_causal() &
                              attn_test::layer_alibi(attn_test::layer_alibi_slopes(cfg.num_heads)),
                          max_slope * 60, cache, what + "causal & alibi");
    }
  }
}

TEST(ScoreMaskLayersStorage, Bfloat16CacheMatchesTheReferenceOnItsStoredRows) {
  expect_reduced_cache_matches<attn::bfloat16>();
}

TEST(ScoreMaskLayersStorage, Qint8CacheMatchesTheReferenceOnItsStoredRows) {
  expect_reduced_cache_matches<attn::qint8>();
}

// ---------------------------------------------------------------------------------------------
// A tree of draft tokens (speculative decoding)
// ---------------------------------------------------------------------------------------------

// A prefix of 20 tokens cached, then 7 draft tokens in a tree: two roots, and branches. Each
// draft row equals the reference over the 27 positions, and equals what the cache gives when its
// own branch alone (its ancestors, then itself) is decoded after the prefix.
TYPED_TEST(ScoreMaskLayersTest, TreeOfDraftTokensOverACachedPrefix) {
  using Scalar = TypeParam;
  std::uint32_t seed = 500;
  const std::vector<Index> parents = {-1, 0, 0, 1, 1, 2, -1};
  for (const MultiHeadConfig& cfg : configs) {
    Random rng(++seed);
    const auto w = attn_test::random_weights<Scalar>(cfg, rng);
    const attn::SelfAttention<Scalar> layer(cfg, w);
    const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(27, cfg.model_dim);
    const auto prefix = x.topRows(20);
    const auto draft = x.bottomRows(7);
    attn::KVCache<Scalar> cache = layer.make_cache(27);
    (void)layer(prefix, cache);
    const attn::Matrix<Scalar> y = layer(draft, cache, attn::tree(parents));
    const auto [keys, values] = attn_test::layer_keys_values(x, w);
    const double tol = tolerance<Scalar>(cfg, 27, 0);
    EXPECT_TRUE(attn_test::matrix_near(
        y,
        attn_test::layer_mha_over(draft, keys, values, w, cfg.num_heads, cfg.kv_heads(),
                                  attn_test::layer_tree(parents, 27)),
        tol))
        << describe(cfg);

    for (Index t = 0; t < 7; ++t) {
      std::vector<Index> branch;  // t's ancestors, root first, then t
      for (Index u = t; u >= 0; u = parents[std::size_t(u)])
        branch.insert(branch.begin(), u);
      attn::KVCache<Scalar> alone = layer.make_cache(27);
      (void)layer(prefix, alone);
      attn::Matrix<Scalar> last;
      for (const Index u : branch)
        last = layer(draft.row(u), alone);
      EXPECT_TRUE(attn_test::matrix_near(y.row(t), last, 2 * tol))
          << describe(cfg) << " node " << t << " decoded along its branch";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cross-attention
// ---------------------------------------------------------------------------------------------

template <typename Visit>
void for_each_cross_rule(Index heads, const Visit& visit) {
  const auto any_key_but_every_third = [](Index q, Index k) { return k % 3 != 1 || k <= q; };
  visit("mask lambda", attn::mask_function(any_key_but_every_third),
        attn_test::layer_visible(any_key_but_every_third), 0.0);
  visit("mask lambda of the head", attn::mask_function(strided_causal), strided_causal_rule(), 0.0);
  visit("documents", attn::documents({7, 9, 7, 40}), attn_test::layer_documents({7, 9, 7, 40}),
        0.0);
  visit("chunks & score lambda",
        attn::mask_function(chunked_causal, chunked_causal_blocks) &
            attn::score_function(tempered_wave),
        chunked_causal_rule() & wave_rule(), wave_shift);
  visit("alibi", attn::alibi(heads), attn_test::layer_alibi(attn_test::layer_alibi_slopes(heads)),
        max_slope * 63);
}

// A target over a source, directly and over the remembered source; with more target rows than
// source rows, the first queries stand at negative positions.
TYPED_TEST(ScoreMaskLayersTest, CrossAttentionMatchesTheReference) {
  using Scalar = TypeParam;
  std::uint32_t seed = 600;
  const MultiHeadConfig cfg = config(16, 4, 2, 12);
  for (const auto& shape : {std::pair<Index, Index>{9, 23}, {30, 23}, {1, 63}}) {
    const Index n = shape.first, m = shape.second;
    Random rng(++seed);
    const auto w = attn_test::random_weights<Scalar>(cfg, rng);
    const attn::CrossAttention<Scalar> cross(cfg, w);
    const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(n, cfg.model_dim);
    const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(m, cfg.source_dim);
    const auto memory = cross.remember(source);
    for_each_cross_rule(cfg.num_heads, [&](const char* name, const auto& mask,
                                           const LayerRule& rule, double shift) {
      const MatrixD expected =
          attn_test::layer_mha(target, source, w, cfg.num_heads, cfg.kv_heads(), rule);
      const double tol = tolerance<Scalar>(cfg, m, shift);
      EXPECT_TRUE(attn_test::matrix_near(cross(target, source, mask), expected, tol))
          << describe(cfg) << " n=" << n << " m=" << m << " " << name;
      EXPECT_TRUE(attn_test::matrix_near(cross(target, memory, mask), expected, tol))
          << describe(cfg) << " n=" << n << " m=" << m << " " << name << ", remembered";
    });
  }
}

// With more queries than keys the first n − m queries stand at negative positions, where
// attn::documents hides every key: those rows see nothing (zero rows of the kernel, the output
// projection's bias of a layer), in one document as in several.
TYPED_TEST(ScoreMaskLayersTest, DocumentsHideEveryKeyFromQueriesAtNegativePositions) {
  using Scalar = TypeParam;
  Random rng(650);
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(6, 8);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(4, 8);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(4, 8);
  for (const std::vector<Index>& lengths : {std::vector<Index>{4}, std::vector<Index>{1, 3}}) {
    const attn::Matrix<Scalar> out =
        attn::scaled_dot_product_attention(q, k, v, attn::documents(lengths));
    EXPECT_TRUE((out.topRows(2).array() == Scalar(0)).all())
        << lengths.size() << " documents: rows at positions -2 and -1 are\n"
        << out.topRows(2);
  }
  const MultiHeadConfig cfg = config(16, 4, 2, 12);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::CrossAttention<Scalar> cross(cfg, w);
  const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(6, cfg.model_dim);
  const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(4, cfg.source_dim);
  EXPECT_TRUE(
      attn_test::matrix_near(cross(target, source, attn::documents({4})),
                             attn_test::layer_mha(target, source, w, cfg.num_heads, cfg.kv_heads(),
                                                  attn_test::layer_documents({4})),
                             tolerance<Scalar>(cfg, 4, 0)));
}

// A key the score function hides with −∞ is hidden as one the mask hides: a NaN in the bias at
// that key reaches no row, as with keep = false or a mask function that hides it.
TYPED_TEST(ScoreMaskLayersTest, AKeyTheScoreFunctionHidesTakesNoNaNFromTheBias) {
  using Scalar = TypeParam;
  Random rng(660);
  const MultiHeadConfig cfg = config(16, 2, 1);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> layer(cfg, w);
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(6, cfg.model_dim);
  attn::Matrix<Scalar> bias = attn::Matrix<Scalar>::Zero(6, 6);
  bias(2, 4) = std::numeric_limits<Scalar>::quiet_NaN();
  const auto hide_key_4 = [](auto s, Index, Index, Index k) {
    return k == 4 ? -std::numeric_limits<decltype(s)>::infinity() : s;
  };
  const MatrixD expected =
      attn_test::layer_mha(x, x, w, cfg.num_heads, cfg.kv_heads(),
                           attn_test::layer_visible([](Index, Index k) { return k != 4; }));
  const double tol = tolerance<Scalar>(cfg, 6, 0);
  EXPECT_TRUE(attn_test::matrix_near(
      layer(x, Mask::bias(bias) & attn::mask_function([](Index, Index k) { return k != 4; })),
      expected, tol))
      << "hidden by a mask function";
  EXPECT_TRUE(attn_test::matrix_near(layer(x, Mask::bias(bias) & attn::score_function(hide_key_4)),
                                     expected, tol))
      << "hidden by the score function";
}

// Packed pairs with target and source lengths differing per pair (empty ones included): causal
// is bottom-right within each pair, and every function sees the pair's own positions. Also a
// batch of one target row in all (the decoding path) over 1100 keys of its own, split into parts.
TYPED_TEST(ScoreMaskLayersTest, PackedCrossAttentionSeesEachPairFromItsStart) {
  using Scalar = TypeParam;
  std::uint32_t seed = 700;
  const MultiHeadConfig cfg = config(16, 4, 2, 12);
  for (const auto& batch :
       {std::pair<std::vector<Index>, std::vector<Index>>{{3, 0, 9, 1, 12, 5}, {5, 4, 9, 30, 7, 0}},
        {{0, 1, 0}, {300, 1100, 200}}}) {
    const std::vector<Index>& target_lengths = batch.first;
    const std::vector<Index>& source_lengths = batch.second;
    Random rng(++seed);
    const auto w = attn_test::random_weights<Scalar>(cfg, rng);
    const attn::CrossAttention<Scalar> cross(cfg, w);
    const attn::Matrix<Scalar> target =
        rng.uniform_matrix<Scalar>(sum(target_lengths), cfg.model_dim);
    const attn::Matrix<Scalar> source =
        rng.uniform_matrix<Scalar>(sum(source_lengths), cfg.source_dim);
    const auto memory = cross.remember(source, source_lengths);
    const auto check = [&](const char* name, const auto& mask, const LayerRule& rule,
                           double shift) {
      const attn::Matrix<Scalar> direct =
          cross(target, target_lengths, source, source_lengths, mask);
      const attn::Matrix<Scalar> remembered = cross(target, target_lengths, memory, mask);
      EXPECT_TRUE(bitwise_equal(remembered, direct)) << name;
      Index t0 = 0, s0 = 0;
      for (std::size_t b = 0; b < target_lengths.size(); ++b) {
        const Index n = target_lengths[b], m = source_lengths[b];
        EXPECT_TRUE(attn_test::matrix_near(
            direct.middleRows(t0, n),
            attn_test::layer_mha(target.middleRows(t0, n), source.middleRows(s0, m), w,
                                 cfg.num_heads, cfg.kv_heads(), rule),
            tolerance<Scalar>(cfg, m, shift)))
            << describe(cfg) << " " << name << ": pair " << b << " (" << n << " over " << m << ")";
        t0 += n;
        s0 += m;
      }
    };
    check("causal", Mask::causal(), attn_test::layer_causal(), 0.0);
    check("causal & alibi & score lambda & mask lambda",
          Mask::causal() & attn::alibi(cfg.num_heads) & attn::score_function(tempered_wave) &
              attn::mask_function(strided_causal),
          attn_test::layer_causal() &
              attn_test::layer_alibi(attn_test::layer_alibi_slopes(cfg.num_heads)) & wave_rule() &
              strided_causal_rule(),
          max_slope * 1100 + wave_shift);
    check("window & documents", Mask::window(3, 2) & attn::documents({20, 1200}),
          attn_test::layer_visible([](Index q, Index k) { return k >= q - 3 && k <= q + 2; }) &
              attn_test::layer_documents({20, 1200}),
          0.0);
  }
}

// ---------------------------------------------------------------------------------------------
// Errors: parts tied to one sequence, and calls that throw
// ---------------------------------------------------------------------------------------------

// A tree, a BlockMap and explicit masks describe one (n, m): a packed batch of two or more
// sequences refuses them (and out is untouched), a batch of one takes them. (A per-head bias:
// HeadBiasIsTiedToOneSequence below.)
TYPED_TEST(ScoreMaskLayersTest, PartsTiedToOneSequenceAreRefusedForABatch) {
  using Scalar = TypeParam;
  Random rng(800);
  const MultiHeadConfig cfg = config(16, 2, 1, 0);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> layer(cfg, w);
  const MultiHeadConfig cross_cfg = config(16, 2, 1, 12);
  const attn::CrossAttention<Scalar> cross(cross_cfg,
                                           attn_test::random_weights<Scalar>(cross_cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(12, cfg.model_dim);
  const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(12, 12);
  const std::vector<Index> two = {5, 7};

  const auto tree = attn::tree({-1, 0, 0});
  const auto chunked = attn::mask_function(chunked_causal);
  const attn::BlockMap map(chunked, 12, 12, cfg.num_heads);
  const auto mapped = chunked.with_blocks(map);
  const Mask keep = Mask::keep(attn::Matrix<bool>::Constant(12, 12, true));
  const Mask key_length = Mask::key_length(3);

  attn::Matrix<Scalar> out = attn::Matrix<Scalar>::Constant(12, cfg.model_dim, Scalar(-7));
  const auto refused = [&](const auto& mask, const char* part) {
    EXPECT_SHAPE_ERROR(layer.attend_into(x, two, out, mask), "SelfAttention", part,
                       "describes one sequence", "2 sequences");
    EXPECT_SHAPE_ERROR((void)cross(x, two, source, two, mask), "CrossAttention", part,
                       "2 sequences");
    EXPECT_TRUE((out.array() == Scalar(-7)).all()) << part << ": out was written to";
  };
  refused(tree, "a mask function tied to one shape");
  refused(mapped, "a mask function tied to one shape");
  refused(Mask::causal() & tree & attn::alibi(cfg.num_heads), "a mask function tied to one shape");
  refused(keep, "an explicit keep/bias mask");
  refused(attn::alibi(cfg.num_heads) & keep, "an explicit keep/bias mask");
  refused(key_length, "a key-length mask");

  // A batch of one sequence is one sequence: the same as the plain call, bitwise.
  const std::vector<Index> one = {12};
  EXPECT_TRUE(bitwise_equal(layer(x, one, tree), layer(x, tree)));
  EXPECT_TRUE(bitwise_equal(layer(x, one, mapped), layer(x, mapped)));
}

// The cache's size and contents, to check that a failed step left it as it was.
template <typename Scalar>
struct Snapshot {
  explicit Snapshot(const attn::KVCache<Scalar>& cache)
      : size(cache.size()), keys(cache.keys()), values(cache.values()) {}
  bool unchanged(const attn::KVCache<Scalar>& cache) const {
    return cache.size() == size && cache.keys() == keys && cache.values() == values;
  }
  Index size;
  attn::Matrix<Scalar> keys, values;
};

// A step whose score mask does not fit its shape (a tree of more nodes than keys, slopes for
// another head count, a BlockMap of another shape, documents that do not cover the keys) throws ShapeError before the cache is appended to: cache and out unchanged,
// and the next good step matches the reference.
TYPED_TEST(ScoreMaskLayersTest, AStepThatThrowsChangesNeitherTheCacheNorOut) {
  using Scalar = TypeParam;
  Random rng(900);
  const MultiHeadConfig cfg = config(32, 4, 2);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> layer(cfg, w);
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(12, cfg.model_dim);
  attn::KVCache<Scalar> cache = layer.make_cache(12);
  (void)layer(x.topRows(10), cache, attn::sinks(2, 4));
  const Snapshot<Scalar> before(cache);

  const auto chunked = attn::mask_function(chunked_causal);
  const attn::BlockMap map(chunked, 1, 10, cfg.num_heads);  // a step over 10 keys, not 11
  attn::Matrix<Scalar> out = attn::Matrix<Scalar>::Constant(1, cfg.model_dim, Scalar(-7));
  const auto step = x.row(10);
  const auto fails = [&](const auto& mask, const char* what) {
    EXPECT_SHAPE_ERROR(layer.attend_into(step, cache, out, mask), "SelfAttention", what);
    EXPECT_TRUE(before.unchanged(cache)) << what << ": the cache changed";
    EXPECT_TRUE((out.array() == Scalar(-7)).all()) << what << ": out was written to";
  };
  fails(attn::tree(std::vector<Index>(12, -1)), "the tree has 12 nodes");
  fails(Mask::causal() & attn::alibi(cfg.num_heads + 1), "alibi has 5 slopes");
  fails(chunked.with_blocks(map), "the block map was built for 1 queries, 10 keys");
  fails(attn::documents({4, 6}), "the documents cover 10 positions");
  fails(attn::sinks(2, 4) & Mask::key_length(12), "key_length");

  layer.attend_into(step, cache, out, attn::sinks(2, 4));
  const auto [keys, values] = attn_test::layer_keys_values(x.topRows(11), w);
  EXPECT_TRUE(attn_test::matrix_near(
      out,
      attn_test::layer_mha_over(step, keys, values, w, cfg.num_heads, cfg.kv_heads(),
                                attn_test::layer_sinks(2, 4)),
      tolerance<Scalar>(cfg, 11, 0)));
}

// A per-head bias, head h's n × m block in rows [h·n, (h+1)·n) added to its logits: against the
// reference; one sequence only (a batch of two refuses it, a batch of one takes it); and a step
// over a KVCache with a bias of the wrong shape throws and changes nothing.
TYPED_TEST(ScoreMaskLayersTest, HeadBiasIsTiedToOneSequence) {
  using Scalar = TypeParam;
  Random rng(1000);
  const MultiHeadConfig cfg = config(16, 2, 1);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> layer(cfg, w);
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(12, cfg.model_dim);
  const attn::Matrix<Scalar> bias = rng.uniform_matrix<Scalar>(cfg.num_heads * 12, 12, -1, 1);
  const auto head_bias = attn::head_bias(bias);
  const LayerRule bias_rule = {
      [&bias](double s, Index h, Index q, Index k) { return s + double(bias(h * 12 + q, k)); }, {}};
  const attn::Matrix<Scalar> y = layer(x, head_bias);
  EXPECT_TRUE(attn_test::matrix_near(
      y, attn_test::layer_mha(x, x, w, cfg.num_heads, cfg.kv_heads(), bias_rule),
      tolerance<Scalar>(cfg, 12, 1.0)));
  EXPECT_TRUE(bitwise_equal(layer(x, std::vector<Index>{12}, head_bias), y));
  attn::Matrix<Scalar> out = attn::Matrix<Scalar>::Constant(12, cfg.model_dim, Scalar(-7));
  EXPECT_SHAPE_ERROR(layer.attend_into(x, {5, 7}, out, head_bias), "SelfAttention",
                     "a mask function tied to one shape", "2 sequences");
  EXPECT_SHAPE_ERROR(
      layer.attend_into(x, {5, 7}, out, Mask::causal() & head_bias & attn::sinks(2, 3)),
      "SelfAttention", "a mask function tied to one shape", "2 sequences");
  EXPECT_TRUE((out.array() == Scalar(-7)).all());

  attn::KVCache<Scalar> cache = layer.make_cache(12);
  (void)layer(x.topRows(10), cache);
  const Snapshot<Scalar> before(cache);
  attn::Matrix<Scalar> step = attn::Matrix<Scalar>::Constant(1, cfg.model_dim, Scalar(-7));
  EXPECT_SHAPE_ERROR(
      layer.attend_into(x.row(10), cache, step,
                        attn::head_bias(attn::Matrix<Scalar>::Zero(cfg.num_heads, 10))),
      "SelfAttention", "head_bias is 2x10", "expected 2x11");
  EXPECT_TRUE(before.unchanged(cache));
  EXPECT_TRUE((step.array() == Scalar(-7)).all());
}

}  // namespace
