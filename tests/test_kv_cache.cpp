// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::KVCache on its own (views, capacity, reset, errors) and SelfAttention with a cache:
// decoding token by token and chunked prefill of any split give the rows of one causal pass, for
// MHA, GQA and MQA, with and without a sliding window, over lengths that cross every threshold of
// the kernel (the packet size below which a block takes the decode path, the key blocks of at most
// 128 keys, and the 512-key parts a decode step is split into once it sees 1024 keys or more).

#include <attn/kv_cache.hpp>
#include <attn/self_attention.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::MultiHeadConfig;
using attn_test::Random;
using attn_test::ReferenceMask;

static_assert(std::is_base_of_v<attn::ShapeError, attn::CapacityError>,
              "CapacityError must be a ShapeError");
static_assert(std::is_base_of_v<std::invalid_argument, attn::CapacityError>,
              "CapacityError must be a std::invalid_argument");

template <typename Scalar>
class KVCacheTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(KVCacheTest, Scalars);

MultiHeadConfig config(Index model_dim, Index heads, Index kv_heads) {
  MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  return cfg;
}

// A small model so that sequences of 1100 tokens decode in milliseconds: E = 16, H = 4, d = 4,
// as MHA, GQA (2 kv heads) and MQA (1 kv head).
const std::vector<MultiHeadConfig> configs = {config(16, 4, 4), config(16, 4, 2), config(16, 4, 1)};

// Long enough that decode steps see more than 1024 keys (two 512-key parts, merged), with every
// length below on the way: step t sees t + 1 keys.
constexpr Index long_length = 1100;

// Sliding windows: none (causal only), one far shorter than the sequence, and one long enough
// (1031 visible keys) that a windowed decode step is split too, with a window start that moves.
constexpr Index no_window = -1;
const std::vector<Index> windows = {no_window, 100, 1030};

Mask causal_mask(Index window) {
  return window == no_window ? Mask::causal() : Mask::causal() & Mask::window(window, 0);
}

ReferenceMask reference_causal_mask(Index window) {
  return window == no_window ? ReferenceMask::causal()
                             : ReferenceMask::causal() & ReferenceMask::window(window, 0);
}

std::string describe(const MultiHeadConfig& cfg, Index window) {
  return "E=" + std::to_string(cfg.model_dim) + " H=" + std::to_string(cfg.num_heads) +
         " Hkv=" + std::to_string(cfg.kv_heads()) +
         (window == no_window ? std::string(" causal") : " window=" + std::to_string(window));
}

std::string describe(const std::vector<Index>& chunks) {
  std::string s = "chunks {";
  for (std::size_t i = 0; i < chunks.size(); ++i)
    s += (i ? ", " : "") + std::to_string(chunks[i]);
  return s + "}";
}

// Cached decoding against one causal pass: both are the same layer computed in Scalar along
// different paths (a 1-row GEMV versus an L-row GEMM for the projections; the split-key decode
// path with its log-sum-exp merge versus the prefill path's query blocks; different summation
// orders). test_self_attention checks each path to within layer_tolerance of the fp64 reference,
// so by the triangle inequality they agree to within twice that. For E = 16, d = 4, L = 1100 this
// is ≈ 4e-5 in float and ≈ 8e-14 in double, while a wrong key position, a missed window edge or a
// badly merged split is off by O(0.01) or more.
template <typename Scalar>
double cached_tolerance(const MultiHeadConfig& cfg, Index length) {
  return 2 *
         attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim, cfg.head_dim(), length);
}

// The cache's size and contents, to check that a failed call left it as it was.
template <typename Scalar>
struct Snapshot {
  explicit Snapshot(const attn::KVCache<Scalar>& cache)
      : size(cache.size()),
        capacity(cache.capacity()),
        keys(cache.keys()),
        values(cache.values()) {}
  Index size, capacity;
  attn::Matrix<Scalar> keys, values;
};

template <typename Scalar>
::testing::AssertionResult unchanged(const attn::KVCache<Scalar>& cache,
                                     const Snapshot<Scalar>& before) {
  if (cache.size() != before.size || cache.capacity() != before.capacity) {
    return ::testing::AssertionFailure()
           << "size/capacity " << cache.size() << "/" << cache.capacity() << ", was " << before.size
           << "/" << before.capacity;
  }
  if (cache.keys() != before.keys) return ::testing::AssertionFailure() << "keys changed";
  if (cache.values() != before.values) return ::testing::AssertionFailure() << "values changed";
  return ::testing::AssertionSuccess();
}

// Runs x through the cache in chunks of the given sizes, returning the stacked outputs.
template <typename Scalar>
attn::Matrix<Scalar> run_chunks(const attn::SelfAttention<Scalar>& layer,
                                const attn::Matrix<Scalar>& x, const std::vector<Index>& chunks,
                                const Mask& mask, attn::KVCache<Scalar>& cache) {
  attn::Matrix<Scalar> y(x.rows(), x.cols());
  Index start = 0;
  for (const Index rows : chunks) {
    y.middleRows(start, rows) = layer(x.middleRows(start, rows), cache, mask);
    start += rows;
  }
  return y;
}

// A random split of `total` rows: chunks of 1–4 rows (decode path, some split when decoding
// far into the sequence), 5–70 rows (one or two query blocks) and 71–300 rows.
std::vector<Index> random_chunks(Random& rng, Index total) {
  std::vector<Index> chunks;
  for (Index done = 0; done < total;) {
    const Index kind = rng.integer(0, 2);
    Index rows = kind == 0   ? rng.integer(1, 4)
                 : kind == 1 ? rng.integer(5, 70)
                             : rng.integer(71, 300);
    rows = std::min(rows, total - done);
    chunks.push_back(rows);
    done += rows;
  }
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// KVCache on its own
// ---------------------------------------------------------------------------------------------

TYPED_TEST(KVCacheTest, SizeCapacityWidthAndViewsOfTheStorage) {
  using Scalar = TypeParam;
  Random rng(1);
  attn::KVCache<Scalar> cache(6, 8);
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(cache.capacity(), 6);
  EXPECT_EQ(cache.width(), 8);
  EXPECT_EQ(cache.keys().rows(), 0);
  EXPECT_EQ(cache.keys().cols(), 8);
  EXPECT_EQ(cache.values().rows(), 0);
  const Scalar* const keys_data = cache.keys().data();
  const Scalar* const values_data = cache.values().data();
  ASSERT_NE(keys_data, nullptr);
  ASSERT_NE(values_data, nullptr);

  const attn::Matrix<Scalar> k1 = rng.uniform_matrix<Scalar>(2, 8);
  const attn::Matrix<Scalar> v1 = rng.uniform_matrix<Scalar>(2, 8);
  cache.append(k1, v1);
  EXPECT_EQ(cache.size(), 2);
  EXPECT_EQ(cache.capacity(), 6);
  EXPECT_EQ(cache.keys(), k1);
  EXPECT_EQ(cache.values(), v1);

  // Appending any expression (here a block of a wider matrix and a scaled matrix).
  const attn::Matrix<Scalar> wide = rng.uniform_matrix<Scalar>(3, 20);
  const attn::Matrix<Scalar> v2 = rng.uniform_matrix<Scalar>(3, 8);
  cache.append(wide.middleCols(5, 8), Scalar(2) * v2);
  EXPECT_EQ(cache.size(), 5);
  EXPECT_EQ(cache.keys().topRows(2), k1);
  EXPECT_EQ(cache.keys().bottomRows(3), wide.middleCols(5, 8));
  EXPECT_EQ(cache.values().topRows(2), v1);
  EXPECT_EQ(cache.values().bottomRows(3), Scalar(2) * v2);

  // keys() and values() are views of the storage: the same memory after every append, with the
  // storage's row stride, never a copy.
  EXPECT_EQ(cache.keys().data(), keys_data);
  EXPECT_EQ(cache.values().data(), values_data);
  EXPECT_EQ(cache.keys().outerStride(), 8);
  EXPECT_EQ(cache.values().outerStride(), 8);
  EXPECT_EQ(cache.keys().row(4).data(), keys_data + 4 * 8);

  // Appending nothing is allowed and changes nothing.
  cache.append(attn::Matrix<Scalar>(0, 8), attn::Matrix<Scalar>(0, 8));
  EXPECT_EQ(cache.size(), 5);
}

TYPED_TEST(KVCacheTest, ResetKeepsTheStorage) {
  using Scalar = TypeParam;
  Random rng(2);
  attn::KVCache<Scalar> cache(5, 4);
  const Scalar* const keys_data = cache.keys().data();
  cache.append(rng.uniform_matrix<Scalar>(5, 4), rng.uniform_matrix<Scalar>(5, 4));
  ASSERT_EQ(cache.size(), 5);
  cache.reset();
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(cache.capacity(), 5);
  EXPECT_EQ(cache.width(), 4);
  EXPECT_EQ(cache.keys().rows(), 0);
  EXPECT_EQ(cache.keys().data(), keys_data);
  // The full capacity is available again, written from the first row.
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(5, 4);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(5, 4);
  cache.append(k, v);
  EXPECT_EQ(cache.size(), 5);
  EXPECT_EQ(cache.keys(), k);
  EXPECT_EQ(cache.values(), v);
  EXPECT_EQ(cache.keys().data(), keys_data);
}

TYPED_TEST(KVCacheTest, OverflowThrowsCapacityErrorAndLeavesTheCacheUnchanged) {
  using Scalar = TypeParam;
  Random rng(3);
  attn::KVCache<Scalar> cache(6, 8);
  cache.append(rng.uniform_matrix<Scalar>(4, 8), rng.uniform_matrix<Scalar>(4, 8));
  const Snapshot<Scalar> before(cache);
  const attn::Matrix<Scalar> k3 = rng.uniform_matrix<Scalar>(3, 8);
  const attn::Matrix<Scalar> v3 = rng.uniform_matrix<Scalar>(3, 8);

  EXPECT_THROW(cache.append(k3, v3), attn::CapacityError);
  EXPECT_THROW(cache.append(k3, v3), std::invalid_argument);
  // The message names the rows appended (3), the rows held (4) and the capacity (6).
  EXPECT_SHAPE_ERROR(cache.append(k3, v3), "KVCache::append", " 3 ", " 4 ", " 6");
  EXPECT_TRUE(unchanged(cache, before));

  // Filling it exactly is fine; then even one more row is too many.
  cache.append(k3.topRows(2), v3.topRows(2));
  EXPECT_EQ(cache.size(), 6);
  EXPECT_EQ(cache.keys().topRows(4), before.keys);
  EXPECT_EQ(cache.keys().bottomRows(2), k3.topRows(2));
  const Snapshot<Scalar> full(cache);
  EXPECT_THROW(cache.append(k3.topRows(1), v3.topRows(1)), attn::CapacityError);
  EXPECT_TRUE(unchanged(cache, full));
  cache.append(k3.topRows(0), v3.topRows(0));  // nothing still fits
  EXPECT_TRUE(unchanged(cache, full));

  // A cache of capacity 0 holds nothing.
  attn::KVCache<Scalar> none(0, 8);
  EXPECT_THROW(none.append(k3.topRows(1), v3.topRows(1)), attn::CapacityError);
  EXPECT_EQ(none.size(), 0);
}

TYPED_TEST(KVCacheTest, WidthMismatchThrowsShapeErrorAndLeavesTheCacheUnchanged) {
  using Scalar = TypeParam;
  Random rng(4);
  attn::KVCache<Scalar> cache(6, 8);
  cache.append(rng.uniform_matrix<Scalar>(2, 8), rng.uniform_matrix<Scalar>(2, 8));
  const Snapshot<Scalar> before(cache);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(2, 8);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(2, 8);
  const attn::Matrix<Scalar> narrow = rng.uniform_matrix<Scalar>(2, 7);
  const attn::Matrix<Scalar> three_rows = rng.uniform_matrix<Scalar>(3, 8);

  EXPECT_SHAPE_ERROR(cache.append(narrow, v), "KVCache::append", "2x7", "8");
  EXPECT_SHAPE_ERROR(cache.append(k, narrow), "KVCache::append", "2x7", "8");
  EXPECT_SHAPE_ERROR(cache.append(k, three_rows), "KVCache::append", "2x8", "3x8");
  // A shape error, not a capacity error: the rows would fit.
  try {
    cache.append(narrow, v);
  } catch (const attn::CapacityError& e) {
    ADD_FAILURE() << "a width mismatch threw CapacityError: " << e.what();
  } catch (const attn::ShapeError&) {
  }
  EXPECT_TRUE(unchanged(cache, before));

  EXPECT_SHAPE_ERROR(attn::KVCache<Scalar>(-1, 8), "capacity", "-1");
  EXPECT_SHAPE_ERROR(attn::KVCache<Scalar>(4, -2), "key_width", "-2");
}

// ---------------------------------------------------------------------------------------------
// SelfAttention with a cache
// ---------------------------------------------------------------------------------------------

TYPED_TEST(KVCacheTest, MakeCacheStoresOnlyTheKvHeads) {
  using Scalar = TypeParam;
  Random rng(10);
  for (const MultiHeadConfig& cfg : configs) {
    const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
    const attn::KVCache<Scalar> cache = layer.make_cache(37);
    EXPECT_EQ(cache.width(), cfg.kv_heads() * cfg.head_dim()) << describe(cfg, no_window);
    EXPECT_EQ(cache.capacity(), 37);
    EXPECT_EQ(cache.size(), 0);
  }
}

// The cache holds exactly the projected keys and values of the rows seen, in order.
TYPED_TEST(KVCacheTest, CacheHoldsTheProjectedKeysAndValues) {
  using Scalar = TypeParam;
  Random rng(11);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> layer(cfg, w);
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(40, cfg.model_dim);
  attn::KVCache<Scalar> cache = layer.make_cache(50);
  run_chunks(layer, x, {13, 1, 26}, Mask::causal(), cache);
  ASSERT_EQ(cache.size(), 40);
  // A projection is a length-E reduction of O(1) terms (see tolerance.hpp).
  const double tol = attn_test::layer_tolerance<Scalar>(cfg.model_dim, 0, 0, 1);
  const attn_test::ReferenceWeights r = attn_test::reference_weights(w);
  EXPECT_MATRIX_NEAR(cache.keys(), attn_test::reference_linear(x, r.k_weight, r.k_bias), tol);
  EXPECT_MATRIX_NEAR(cache.values(), attn_test::reference_linear(x, r.v_weight, r.v_bias), tol);
}

TYPED_TEST(KVCacheTest, DecodingTokenByTokenEqualsOneCausalPass) {
  using Scalar = TypeParam;
  std::uint32_t seed = 100;
  for (const MultiHeadConfig& cfg : configs) {
    for (const Index window : windows) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<Scalar>(cfg, rng);
      const attn::SelfAttention<Scalar> layer(cfg, w);
      const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(long_length, cfg.model_dim);
      const Mask mask = causal_mask(window);
      const attn::Matrix<Scalar> full = layer(x, mask);

      attn::KVCache<Scalar> cache = layer.make_cache(long_length + 7);  // some room to spare
      attn::Matrix<Scalar> decoded(long_length, cfg.model_dim);
      for (Index t = 0; t < long_length; ++t)
        decoded.row(t) = layer(x.row(t), cache, mask);
      EXPECT_EQ(cache.size(), long_length);
      // The worst element's row is the step that differs.
      EXPECT_TRUE(attn_test::matrix_near(decoded, full, cached_tolerance<Scalar>(cfg, long_length)))
          << describe(cfg, window) << " seed=" << seed;

      // Anchor both to the fp64 reference on the last rows (bottom-right aligned, so the last
      // rows of x as queries over all of x are exactly those rows of the causal pass).
      const Index last = 8;
      const attn_test::MatrixD expected = attn_test::reference_mha(
          x.bottomRows(last), x, w, cfg.num_heads, cfg.kv_heads(), reference_causal_mask(window));
      const double tol = attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim,
                                                            cfg.head_dim(), long_length);
      EXPECT_TRUE(attn_test::matrix_near(decoded.bottomRows(last), expected, tol))
          << describe(cfg, window) << " seed=" << seed;
      EXPECT_TRUE(attn_test::matrix_near(full.bottomRows(last), expected, tol))
          << describe(cfg, window) << " seed=" << seed;
    }
  }
}

// A cached call without a mask is causal (the documented default), bitwise the same as passing
// Mask::causal().
TYPED_TEST(KVCacheTest, DefaultMaskOfACachedCallIsCausal) {
  using Scalar = TypeParam;
  Random rng(150);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(30, cfg.model_dim);
  attn::KVCache<Scalar> a = layer.make_cache(30), b = layer.make_cache(30);
  const attn::Matrix<Scalar> with_default = layer(x.topRows(20), a);
  const attn::Matrix<Scalar> with_causal = layer(x.topRows(20), b, Mask::causal());
  EXPECT_EQ(with_default, with_causal);
  EXPECT_EQ(layer(x.row(20), a), layer(x.row(20), b, Mask::causal()));
}

TYPED_TEST(KVCacheTest, ChunkedPrefillOfAnySplitEqualsOnePass) {
  using Scalar = TypeParam;
  std::uint32_t seed = 200;
  for (const MultiHeadConfig& cfg : configs) {
    for (const Index window : windows) {
      Random rng(++seed);
      const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
      const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(long_length, cfg.model_dim);
      const Mask mask = causal_mask(window);
      const attn::Matrix<Scalar> full = layer(x, mask);

      // Sizes around the packet width and the 64-row query blocks, then the rest in one chunk.
      std::vector<std::vector<Index>> splits = {{1, 7, 64, 65, 130, long_length - 267}};
      for (int i = 0; i < 3; ++i)
        splits.push_back(random_chunks(rng, long_length));
      for (const std::vector<Index>& chunks : splits) {
        attn::KVCache<Scalar> cache = layer.make_cache(long_length);
        const attn::Matrix<Scalar> chunked = run_chunks(layer, x, chunks, mask, cache);
        EXPECT_EQ(cache.size(), long_length);
        EXPECT_TRUE(
            attn_test::matrix_near(chunked, full, cached_tolerance<Scalar>(cfg, long_length)))
            << describe(cfg, window) << " " << describe(chunks) << " seed=" << seed;
      }
    }
  }
}

// A chunk of no rows returns no rows and leaves the cache as it was.
TYPED_TEST(KVCacheTest, EmptyChunkIsANoOp) {
  using Scalar = TypeParam;
  Random rng(250);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(5, cfg.model_dim);
  attn::KVCache<Scalar> cache = layer.make_cache(5);
  layer(x, cache);
  const Snapshot<Scalar> before(cache);
  const attn::Matrix<Scalar> y = layer(x.topRows(0), cache);
  EXPECT_EQ(y.rows(), 0);
  EXPECT_EQ(y.cols(), cfg.model_dim);
  EXPECT_TRUE(unchanged(cache, before));
}

// The same cache reused for a second sequence after reset() decodes it as a fresh cache would.
TYPED_TEST(KVCacheTest, ResetCacheDecodesTheNextSequence) {
  using Scalar = TypeParam;
  Random rng(260);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> first = rng.uniform_matrix<Scalar>(40, cfg.model_dim);
  const attn::Matrix<Scalar> second = rng.uniform_matrix<Scalar>(25, cfg.model_dim);
  attn::KVCache<Scalar> reused = layer.make_cache(40);
  layer(first, reused);
  reused.reset();
  attn::KVCache<Scalar> fresh = layer.make_cache(40);
  EXPECT_EQ(run_chunks(layer, second, {10, 1, 14}, Mask::causal(), reused),
            run_chunks(layer, second, {10, 1, 14}, Mask::causal(), fresh));
  EXPECT_EQ(reused.keys(), fresh.keys());
  EXPECT_EQ(reused.values(), fresh.values());
}

TYPED_TEST(KVCacheTest, WrongWidthCacheThrowsAndIsLeftUnchanged) {
  using Scalar = TypeParam;
  Random rng(300);
  const MultiHeadConfig cfg = config(16, 4, 2);  // kv_dim 8
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(2, cfg.model_dim);

  // A cache of the MHA width (16) for a GQA layer (8), already holding rows.
  attn::KVCache<Scalar> cache(20, 16);
  cache.append(rng.uniform_matrix<Scalar>(3, 16), rng.uniform_matrix<Scalar>(3, 16));
  const Snapshot<Scalar> before(cache);
  EXPECT_SHAPE_ERROR(layer(x, cache), "SelfAttention", "16", "8");
  EXPECT_SHAPE_ERROR(layer(x.row(0), cache), "SelfAttention", "16", "8");
  EXPECT_TRUE(unchanged(cache, before));
}

TYPED_TEST(KVCacheTest, OverflowThroughTheFunctorThrowsAndLeavesTheCacheUnchanged) {
  using Scalar = TypeParam;
  Random rng(310);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(10, cfg.model_dim);
  const attn::Matrix<Scalar> full = layer(x, Mask::causal());

  attn::KVCache<Scalar> cache = layer.make_cache(10);
  const attn::Matrix<Scalar> prefill = layer(x.topRows(8), cache);
  const Snapshot<Scalar> before(cache);
  // 3 rows do not fit in 10 - 8.
  EXPECT_THROW(layer(x.bottomRows(3), cache), attn::CapacityError);
  EXPECT_SHAPE_ERROR(layer(x.bottomRows(3), cache), "SelfAttention", " 3 ", " 8 ", " 10");
  EXPECT_TRUE(unchanged(cache, before));

  // Other errors of a cached call leave it unchanged too: x of the wrong width, and an explicit
  // mask that is not n × m (m = cache.size() + n).
  const attn::Matrix<Scalar> wide = rng.uniform_matrix<Scalar>(2, cfg.model_dim + 1);
  EXPECT_SHAPE_ERROR(layer(wide, cache), "SelfAttention", "2x17", "16");
  const Mask wrong_keep = Mask::keep(attn::Matrix<bool>::Constant(2, 2, true));
  EXPECT_SHAPE_ERROR(layer(x.middleRows(8, 2), cache, wrong_keep), "SelfAttention", "2x2", "2x10");
  EXPECT_TRUE(unchanged(cache, before));

  // The failed calls did no harm: the two rows that do fit continue the sequence exactly.
  const attn::Matrix<Scalar> rest = layer(x.bottomRows(2), cache);
  EXPECT_EQ(cache.size(), 10);
  attn::Matrix<Scalar> chunked(10, cfg.model_dim);
  chunked << prefill, rest;
  EXPECT_MATRIX_NEAR(chunked, full, cached_tolerance<Scalar>(cfg, 10));

  // A full cache rejects even one row.
  const Snapshot<Scalar> full_cache(cache);
  EXPECT_THROW(layer(x.row(0), cache), attn::CapacityError);
  EXPECT_TRUE(unchanged(cache, full_cache));
}

// Every argument of a cached call is checked before anything is appended: a bias beyond float's
// range in a float call, a mask of the wrong shape or key length, an invalid scale or softcap in
// the options, an out of the wrong shape. Each throws, and the cache keeps its size and its bits.
TYPED_TEST(KVCacheTest, EveryArgumentIsCheckedBeforeTheCacheChanges) {
  using Scalar = TypeParam;
  using M = attn::Matrix<Scalar>;
  Random rng(320);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const M x = rng.uniform_matrix<Scalar>(12, cfg.model_dim);
  attn::KVCache<Scalar> cache = layer.make_cache(12);
  (void)layer(x.topRows(8), cache);
  const M keys = cache.keys(), values = cache.values();
  const auto bitwise_unchanged = [&] {
    return cache.size() == 8 &&
           std::memcmp(cache.keys().data(), keys.data(),
                       sizeof(Scalar) * std::size_t(keys.size())) == 0 &&
           std::memcmp(cache.values().data(), values.data(),
                       sizeof(Scalar) * std::size_t(values.size())) == 0;
  };
  M out = M::Constant(2, cfg.model_dim, Scalar(7));
  const auto x_new = x.middleRows(8, 2);  // n = 2, m = 10

  // A double bias beyond float's range: rejected by a float layer, fine for a double one.
  attn::Matrix<double> huge = attn::Matrix<double>::Zero(2, 10);
  huge(1, 4) = 1e39;
  if constexpr (std::is_same_v<Scalar, float>) {
    EXPECT_SHAPE_ERROR(layer(x_new, cache, Mask::bias(huge)), "SelfAttention", "bias(1, 4)",
                       "beyond the range of float");
    EXPECT_SHAPE_ERROR(layer.attend_into(x_new, cache, out, Mask::bias(huge) & Mask::causal()),
                       "beyond the range of float");
    EXPECT_TRUE(bitwise_unchanged());
  }
  // Masks of the wrong shape, and a key length beyond the keys.
  EXPECT_SHAPE_ERROR(layer(x_new, cache, Mask::bias(M::Zero(2, 8))), "SelfAttention", "bias", "2x8",
                     "2x10");
  EXPECT_SHAPE_ERROR(layer(x_new, cache, Mask::keep(attn::Matrix<bool>::Constant(1, 10, true))),
                     "keep", "1x10", "2x10");
  EXPECT_SHAPE_ERROR(layer.attend_into(x_new, cache, out, Mask::key_length(11)), "key_length is 11",
                     "10 keys");
  EXPECT_TRUE(bitwise_unchanged());
  // Scale and softcap from the options.
  for (const double bad :
       {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(), -1.0}) {
    attn::MultiHeadOptions options;
    options.softcap = bad;
    EXPECT_SHAPE_ERROR(layer(x_new, cache, Mask::causal(), {}, options), "SelfAttention",
                       "softcap is");
    EXPECT_SHAPE_ERROR(layer.attend_into(x_new, cache, out, Mask::causal(), options), "softcap");
    if (bad < 0) continue;  // a negative scale is a valid scale
    options.softcap = 0;
    options.scale = bad;
    EXPECT_SHAPE_ERROR(layer(x_new, cache, Mask::causal(), {}, options), "SelfAttention",
                       "scale is");
    EXPECT_SHAPE_ERROR(layer.attend_into(x_new, cache, out, Mask::causal(), options), "scale");
  }
  EXPECT_TRUE(bitwise_unchanged());
  // out of the wrong shape.
  EXPECT_SHAPE_ERROR(layer.attend_into(x_new, cache, out.topRows(1)), "SelfAttention",
                     "out is 1x16", "expected 2x16");
  EXPECT_SHAPE_ERROR(layer.attend_into(x_new, cache, out.leftCols(15)), "out is 2x15",
                     "expected 2x16");
  EXPECT_TRUE(bitwise_unchanged());
  EXPECT_TRUE((out.array() == Scalar(7)).all());

  // The cache goes on as if nothing had happened.
  layer.attend_into(x_new, cache, out);
  attn::KVCache<Scalar> fresh = layer.make_cache(12);
  (void)layer(x.topRows(8), fresh);
  EXPECT_EQ(out, layer(x_new, fresh));
  EXPECT_EQ(cache.keys(), fresh.keys());
}

}  // namespace
