// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// attn::PagedKVCache and attn::PagedView, and the kernel and SelfAttention forms that read them:
// 1. the kernel over a sequence's pages equals the kernel over the same stored rows laid out
//    contiguously (a KVCache of the same storage fed the same rows) and the fp64 reference over
//    them, for float, double, bfloat16, half and qint8 pools, decoding and prefill, GQA, pages of
//    16 and 64 positions handed out of order; the batched kernel call is bitwise the separate
//    calls on every executor;
// 2. the pool's operations (append, fork, drop, truncate, evict, reorder) against a model of what
//    each sequence holds, with the pages and copies each is documented to cost;
// 3. the figures of the issue: a beam reorder at 2048 positions copies no page, and 16 sequences
//    forked from one 1024-token prompt hold its pages once;
// 4. every error (a full pool, an unknown or dropped id, a bad length, index or count, a value
//    beyond the storage's range) leaves the pool as it was;
// 5. SelfAttention: the paged form equals the KVCache form, and a batched step (one row or a
//    chunk per sequence) is bitwise the separate calls, on any executor;
// 6. decoding after fork, reorder, truncate and eviction equals recomputing from scratch.

#include <attn/attn.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/stored_values.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn::MultiHeadConfig;
using attn::SequenceId;
using attn_test::bitwise_equal;
using attn_test::MatrixD;
using attn_test::Random;
using attn_test::ReferenceMask;
using attn_test::stored_values;

MultiHeadConfig config(Index model_dim, Index heads, Index kv_heads) {
  MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.bias = true;
  return cfg;
}

// ---------------------------------------------------------------------------------------------
// Pools of every storage, and what their rows stand for
// ---------------------------------------------------------------------------------------------

template <typename Scalar_, typename Storage_>
struct Pool {
  using Scalar = Scalar_;
  using Storage = Storage_;
};
using PoolTypes =
    ::testing::Types<Pool<float, float>, Pool<double, double>, Pool<float, attn::bfloat16>,
                     Pool<float, attn::half>, Pool<float, attn::qint8>>;

template <typename Storage>
std::string storage_name() {
  if constexpr (std::is_same_v<Storage, float>) {
    return "float";
  } else if constexpr (std::is_same_v<Storage, double>) {
    return "double";
  } else if constexpr (std::is_same_v<Storage, attn::bfloat16>) {
    return "bfloat16";
  } else if constexpr (std::is_same_v<Storage, attn::half>) {
    return "half";
  } else {
    return "qint8";
  }
}
struct PoolNames {
  template <typename T>
  static std::string GetName(int) {
    return storage_name<typename T::Storage>();
  }
};

// Every row of a paged view, read run by run through run_from, as the values they stand for.
template <typename S>
MatrixD paged_rows(const attn::PagedView<S>& view) {
  MatrixD rows(view.rows(), view.cols());
  for (Index j = 0; j < view.rows();) {
    const MatrixD run = stored_values(view.run_from(j));
    if (run.rows() == 0 || run.rows() > view.rows() - j) {
      throw std::logic_error("paged_rows: the run from row " + std::to_string(j) + " holds " +
                             std::to_string(run.rows()) + " rows, with " +
                             std::to_string(view.rows() - j) + " left");
    }
    rows.middleRows(j, run.rows()) = run;
    j += run.rows();
  }
  return rows;
}

// The table of a view is what PagedView documents: runs in position order from 0, each following
// the last without a gap, none empty, each inside one page of the pool.
template <typename S>
::testing::AssertionResult valid_table(const attn::PagedView<S>& view, Index page_size,
                                       Index pool_rows) {
  Index position = 0;
  for (Index r = 0; r < view.run_count(); ++r) {
    const attn::PageRun& run = view.runs()[r];
    if (run.position != position || run.rows <= 0 || run.row < 0 ||
        run.row + run.rows > pool_rows ||
        run.row / page_size != (run.row + run.rows - 1) / page_size) {
      return ::testing::AssertionFailure()
             << "run " << r << " {position " << run.position << ", row " << run.row << ", rows "
             << run.rows << "}: expected position " << position
             << ", at least one row, inside one page of " << page_size << " of a pool of "
             << pool_rows << " rows";
    }
    position += run.rows;
  }
  if (position != view.rows()) {
    return ::testing::AssertionFailure()
           << "the runs cover " << position << " positions, the view has " << view.rows();
  }
  return ::testing::AssertionSuccess();
}

// The pages a view's runs lie in.
template <typename S>
std::set<Index> pages_of(const attn::PagedView<S>& view, Index page_size) {
  std::set<Index> pages;
  for (Index r = 0; r < view.run_count(); ++r)
    pages.insert(view.runs()[r].row / page_size);
  return pages;
}

// Whether some run lies in another page than the one after the previous run's: the pages are
// not handed out in order, so a view that ignored its table would read the wrong rows.
template <typename S>
bool pages_out_of_order(const attn::PagedView<S>& view, Index page_size) {
  for (Index r = 1; r < view.run_count(); ++r) {
    if (view.runs()[r].row / page_size != view.runs()[r - 1].row / page_size + 1) return true;
  }
  return false;
}

// What a pool of Storage holds for rows x: each rounded (or quantised in groups of head_dim) once,
// as a KVCache of the same storage keeps them.
template <typename Storage, typename Scalar>
MatrixD rounded(const attn::Matrix<Scalar>& x, Index head_dim) {
  attn::KVCache<Scalar, Storage> cache(x.rows(), x.cols(), head_dim);
  cache.append(x, x);
  return stored_values(cache.keys());
}

template <typename Scalar>
attn::Matrix<Scalar> stack(const attn::Matrix<Scalar>& top, const attn::Matrix<Scalar>& bottom) {
  attn::Matrix<Scalar> both(top.rows() + bottom.rows(), std::max(top.cols(), bottom.cols()));
  if (top.rows() > 0) both.topRows(top.rows()) = top;
  if (bottom.rows() > 0) both.bottomRows(bottom.rows()) = bottom;
  return both;
}

// Same shape and the same values; on failure, the first row that differs.
::testing::AssertionResult same_rows(const MatrixD& actual, const MatrixD& expected) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
    return ::testing::AssertionFailure()
           << "shape " << actual.rows() << "x" << actual.cols() << ", expected " << expected.rows()
           << "x" << expected.cols();
  }
  for (Index r = 0; r < actual.rows(); ++r) {
    if (actual.row(r) != expected.row(r)) {
      return ::testing::AssertionFailure() << "row " << r << " is [" << actual.row(r)
                                           << "], expected [" << expected.row(r) << "]";
    }
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------------------------------------
// A pool beside a model of what it holds
// ---------------------------------------------------------------------------------------------

struct Counters {
  Index used_pages, free_pages, sequences;
  std::uint64_t page_copies;
  bool operator==(const Counters& other) const {
    return used_pages == other.used_pages && free_pages == other.free_pages &&
           sequences == other.sequences && page_copies == other.page_copies;
  }
};
std::ostream& operator<<(std::ostream& s, const Counters& c) {
  return s << "{used " << c.used_pages << ", free " << c.free_pages << ", sequences " << c.sequences
           << ", copies " << c.page_copies << "}";
}
template <typename Cache>
Counters counters(const Cache& pool) {
  return {pool.used_pages(), pool.free_pages(), pool.sequences(), pool.page_copies()};
}

// Everything a call that throws must leave as it was: the pool's counters and each sequence's
// size, position and rows (keys and values).
template <typename Cache>
class Snapshot {
 public:
  Snapshot(const Cache& pool, std::vector<SequenceId> ids)
      : m_counters(counters(pool)), m_ids(std::move(ids)) {
    for (const SequenceId id : m_ids) {
      m_sequences.push_back({pool.size(id), pool.position(id), paged_rows(pool.keys(id)),
                             paged_rows(pool.values(id))});
    }
  }

  ::testing::AssertionResult unchanged(const Cache& pool) const {
    if (!(counters(pool) == m_counters)) {
      return ::testing::AssertionFailure()
             << "counters " << counters(pool) << ", were " << m_counters;
    }
    for (std::size_t i = 0; i < m_ids.size(); ++i) {
      const SequenceId id = m_ids[i];
      const Sequence& was = m_sequences[i];
      if (!pool.contains(id)) return ::testing::AssertionFailure() << "sequence " << id << " gone";
      if (pool.size(id) != was.size || pool.position(id) != was.position) {
        return ::testing::AssertionFailure()
               << "sequence " << id << ": size " << pool.size(id) << ", position "
               << pool.position(id) << "; were " << was.size << ", " << was.position;
      }
      if (auto same = same_rows(paged_rows(pool.keys(id)), was.keys); !same) {
        return ::testing::AssertionFailure() << "sequence " << id << " keys: " << same.message();
      }
      if (auto same = same_rows(paged_rows(pool.values(id)), was.values); !same) {
        return ::testing::AssertionFailure() << "sequence " << id << " values: " << same.message();
      }
    }
    return ::testing::AssertionSuccess();
  }

 private:
  struct Sequence {
    Index size, position;
    MatrixD keys, values;
  };
  Counters m_counters;
  std::vector<SequenceId> m_ids;
  std::vector<Sequence> m_sequences;
};

// A PagedKVCache and, beside it, what each of its sequences should hold: the rows appended to it
// as the storage keeps them, its size and its position. Every operation goes to both, and holds()
// compares them (and checks each table).
template <typename Scalar, typename Storage>
class Tracked {
 public:
  using Cache = attn::PagedKVCache<Scalar, Storage>;
  static constexpr Index head_dim = 4;
  static constexpr Index width = 8;  // two kv heads

  Tracked(Index pages, Index page_size, std::uint32_t seed)
      : pool(pages, width, head_dim, page_size), m_rng(seed) {}

  SequenceId create() {
    const SequenceId id = pool.create();
    m_models.emplace(id, Model{});
    return id;
  }
  // Appends `rows` new random rows (keys and values) to sequence id.
  void append(SequenceId id, Index rows) {
    const attn::Matrix<Scalar> k = m_rng.uniform_matrix<Scalar>(rows, width);
    const attn::Matrix<Scalar> v = m_rng.uniform_matrix<Scalar>(rows, width);
    pool.append(id, k, v);
    Model& model = m_models.at(id);
    model.keys = stack(model.keys, rounded<Storage>(k, head_dim));
    model.values = stack(model.values, rounded<Storage>(v, head_dim));
    model.position += rows;
  }
  SequenceId fork(SequenceId id) {
    const SequenceId copy = pool.fork(id);
    m_models.emplace(copy, m_models.at(id));
    return copy;
  }
  void drop(SequenceId id) {
    pool.drop(id);
    m_models.erase(id);
  }
  void truncate(SequenceId id, Index length) {
    pool.truncate(id, length);
    Model& model = m_models.at(id);
    model.position -= model.keys.rows() - length;
    model.keys = MatrixD(model.keys.topRows(length));
    model.values = MatrixD(model.values.topRows(length));
  }
  void evict(SequenceId id, Index sinks, Index window) {
    pool.evict(id, sinks, window);
    Model& model = m_models.at(id);
    if (model.keys.rows() <= sinks + window) return;
    model.keys = stack(MatrixD(model.keys.topRows(sinks)), MatrixD(model.keys.bottomRows(window)));
    model.values =
        stack(MatrixD(model.values.topRows(sinks)), MatrixD(model.values.bottomRows(window)));
  }
  void reorder(const std::vector<SequenceId>& ids, const std::vector<Index>& sources) {
    pool.reorder(ids, sources);
    std::vector<Model> before;
    for (const SequenceId id : ids)
      before.push_back(m_models.at(id));
    for (std::size_t i = 0; i < ids.size(); ++i)
      m_models.at(ids[i]) = before[std::size_t(sources[i])];
  }

  ::testing::AssertionResult holds() const {
    if (pool.sequences() != Index(m_models.size())) {
      return ::testing::AssertionFailure()
             << "the pool holds " << pool.sequences() << " sequences, expected " << m_models.size();
    }
    const Index pool_rows = pool.pages() * pool.page_size();
    for (const auto& [id, model] : m_models) {
      if (!pool.contains(id)) return ::testing::AssertionFailure() << "sequence " << id << " gone";
      if (pool.size(id) != model.keys.rows() || pool.position(id) != model.position) {
        return ::testing::AssertionFailure()
               << "sequence " << id << ": size " << pool.size(id) << ", position "
               << pool.position(id) << "; expected " << model.keys.rows() << ", " << model.position;
      }
      const auto keys = pool.keys(id);
      const auto values = pool.values(id);
      for (const auto& table : {valid_table(keys, pool.page_size(), pool_rows),
                                valid_table(values, pool.page_size(), pool_rows)}) {
        if (!table)
          return ::testing::AssertionFailure() << "sequence " << id << ": " << table.message();
      }
      if (auto same = same_rows(paged_rows(keys), model.keys); !same) {
        return ::testing::AssertionFailure() << "sequence " << id << " keys: " << same.message();
      }
      if (auto same = same_rows(paged_rows(values), model.values); !same) {
        return ::testing::AssertionFailure() << "sequence " << id << " values: " << same.message();
      }
    }
    return ::testing::AssertionSuccess();
  }

  Cache pool;

 private:
  struct Model {
    MatrixD keys = MatrixD(0, width);
    MatrixD values = MatrixD(0, width);
    Index position = 0;
  };
  std::map<SequenceId, Model> m_models;
  Random m_rng;
};

// EXPECT_SEQUENCE_ERROR(statement, parts...): the statement throws attn::SequenceError with a
// message containing every part.
template <typename Function>
::testing::AssertionResult throws_sequence_error(const char* statement, Function&& function,
                                                 const std::vector<std::string>& parts) {
  try {
    function();
  } catch (const attn::SequenceError& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      if (message.find(part) == std::string::npos) {
        return ::testing::AssertionFailure() << statement << " threw SequenceError \"" << message
                                             << "\", which does not contain \"" << part << "\"";
      }
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure()
           << statement << " threw something other than SequenceError: " << e.what();
  }
  return ::testing::AssertionFailure() << statement << " threw nothing";
}
#define EXPECT_SEQUENCE_ERROR(statement, ...) \
  EXPECT_TRUE(throws_sequence_error(#statement, [&]() { statement; }, {__VA_ARGS__}))

struct NamedExecutor {
  std::string name;
  attn::Executor executor;
};
std::vector<NamedExecutor> executors() {
  return {{"serial", attn::serial_executor},
          {"2 threads", attn::thread_executor(2)},
          {"3 threads", attn::thread_executor(3)}};
}

// Prefills sequence ids[b] with the rows x[b] through the layer, in chunks of up to `chunk` rows
// given to the sequences in turn, so that their pages interleave in the pool.
template <typename Scalar, typename Storage>
void prefill_in_turn(const attn::SelfAttention<Scalar>& layer,
                     attn::PagedKVCache<Scalar, Storage>& pool, const std::vector<SequenceId>& ids,
                     const std::vector<attn::Matrix<Scalar>>& x, Index chunk) {
  std::vector<Index> done(ids.size(), 0);
  for (bool more = true; more;) {
    more = false;
    for (std::size_t b = 0; b < ids.size(); ++b) {
      const Index rows = std::min(chunk, x[b].rows() - done[b]);
      if (rows == 0) continue;
      (void)layer(x[b].middleRows(done[b], rows), pool, ids[b]);
      done[b] += rows;
      more = true;
    }
  }
}

// Cached decoding against recomputation from scratch: the same layer along different paths (a
// decode step over cached keys versus a prefill; a projection of one row versus a GEMM of many),
// each within layer_tolerance of the fp64 reference (test_self_attention, test_kv_cache), so
// within twice that of each other, as in test_kv_cache. A wrong key position, a row of another
// sequence or a missed copy is off by O(0.01) or more.
template <typename Scalar>
double cached_tolerance(const MultiHeadConfig& cfg, Index length) {
  return 2 *
         attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim, cfg.head_dim(), length);
}

// ---------------------------------------------------------------------------------------------
// 1. The kernel over pages
// ---------------------------------------------------------------------------------------------

template <typename T>
class PagedKernel : public ::testing::Test {};
TYPED_TEST_SUITE(PagedKernel, PoolTypes, PoolNames);

// Paged against contiguous: both compute in Scalar from the same stored values (checked bit for
// bit), along the same paths: prefill key blocks are cut the same way (the paged rows are staged
// or packed run by run, converted exactly), and so are decoding splits, since they depend on the
// number of keys only. What differs is where the decode path's 64-key tiles end: at a run's end
// too, so with pages of 16 (or runs not starting at a multiple of 64) the online softmax rescales
// at other keys and the partial sums group differently. The logits themselves are the same dot
// products, so the two results differ only by the rounding of those regroupings: a few units of
// roundoff per level of the summation, c·u·(log2(m + 1) + 2) with c = 8 as in tolerance.hpp but
// without its term for the logits' magnitude. For float at m = 1100 that is ≈ 1.2e-5, while the
// differences seen are below one unit of roundoff (and prefill blocks agree bit for bit); a key of
// the wrong run or page moves an output by O(0.01).
template <typename Scalar>
double regrouping_tolerance(Index m) {
  return attn_test::attention_tolerance<Scalar>(0, m);
}

TYPED_TEST(PagedKernel, EqualsTheKernelOverContiguousRowsAndTheReference) {
  using Scalar = typename TypeParam::Scalar;
  using Storage = typename TypeParam::Storage;
  constexpr Index heads = 8, kv_heads = 2, d = 8, width = kv_heads * d;
  Random rng(10);
  // A sequence long enough that a decoding step is split into two 512-key parts, and one whose
  // 300 rows are prefilled whole (several query blocks and a ragged last one).
  const std::vector<Index> lengths = {1100, 300};
  std::vector<attn::Matrix<Scalar>> k, v;
  std::vector<attn::KVCache<Scalar, Storage>> contiguous;
  for (const Index length : lengths) {
    k.push_back(rng.uniform_matrix<Scalar>(length, width));
    v.push_back(rng.uniform_matrix<Scalar>(length, width));
    contiguous.emplace_back(length, width, d);
    contiguous.back().append(k.back(), v.back());
  }
  // The rows go to the pool in chunks of 1 to 90, to the two sequences in turn.
  std::vector<std::pair<std::size_t, Index>> chunks;
  for (std::vector<Index> planned(2, 0); planned[0] < lengths[0] || planned[1] < lengths[1];) {
    for (std::size_t b = 0; b < 2; ++b) {
      const Index rows = std::min(rng.integer(1, 90), lengths[b] - planned[b]);
      if (rows > 0) chunks.emplace_back(b, rows);
      planned[b] += rows;
    }
  }
  // Queries: decoding steps of 1, 2 and 3 rows, and prefills of 70 rows over the long sequence
  // and of all 300 over the short one, causal; the reference over the stored values.
  struct Case {
    std::size_t sequence;
    attn::Matrix<Scalar> q;
    MatrixD expected;
  };
  std::vector<Case> cases;
  for (std::size_t b = 0; b < 2; ++b) {
    for (const Index n : {Index(1), Index(2), Index(3), b == 0 ? Index(70) : Index(300)}) {
      Case c{b, rng.uniform_matrix<Scalar>(n, heads * d), MatrixD()};
      c.expected = attn_test::reference_multi_head(c.q, stored_values(contiguous[b].keys()),
                                                   stored_values(contiguous[b].values()), heads,
                                                   kv_heads, ReferenceMask::causal());
      cases.push_back(std::move(c));
    }
  }
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.num_kv_heads = kv_heads;

  for (const Index page_size : {Index(16), Index(64)}) {
    attn::PagedKVCache<Scalar, Storage> pool((lengths[0] + lengths[1]) / page_size + 8, width, d,
                                             page_size);
    // Ten pages held by a sequence and dropped: the pool hands them out again last to first.
    const SequenceId filler = pool.create();
    pool.append(filler, attn::Matrix<Scalar>::Zero(10 * page_size, width),
                attn::Matrix<Scalar>::Zero(10 * page_size, width));
    pool.drop(filler);
    const std::vector<SequenceId> ids = {pool.create(), pool.create()};
    std::vector<Index> filled(2, 0);
    for (const auto& [b, rows] : chunks) {
      pool.append(ids[b], k[b].middleRows(filled[b], rows), v[b].middleRows(filled[b], rows));
      filled[b] += rows;
    }
    for (std::size_t b = 0; b < 2; ++b) {
      const auto keys = pool.keys(ids[b]);
      const auto values = pool.values(ids[b]);
      EXPECT_TRUE(valid_table(keys, page_size, pool.pages() * page_size));
      EXPECT_TRUE(pages_out_of_order(keys, page_size)) << "page size " << page_size;
      // The pool holds the rows the contiguous cache holds, bit for bit.
      EXPECT_TRUE(same_rows(paged_rows(keys), stored_values(contiguous[b].keys())));
      EXPECT_TRUE(same_rows(paged_rows(values), stored_values(contiguous[b].values())));
    }
    for (const Case& c : cases) {
      const std::size_t b = c.sequence;
      const Index m = lengths[b];
      const attn::Matrix<Scalar> paged = attn::scaled_dot_product_attention(
          c.q, pool.keys(ids[b]), pool.values(ids[b]), Mask::causal(), options);
      const attn::Matrix<Scalar> flat = attn::scaled_dot_product_attention(
          c.q, contiguous[b].keys(), contiguous[b].values(), Mask::causal(), options);
      const std::string what = "page size " + std::to_string(page_size) + ", " +
                               std::to_string(c.q.rows()) + " queries over " + std::to_string(m);
      EXPECT_TRUE(attn_test::matrix_near(paged, flat, regrouping_tolerance<Scalar>(m))) << what;
      // Entries in [−1, 1] (and their rounding): logits at most scale·d = √d.
      const double tol = attn_test::attention_tolerance<Scalar>(std::sqrt(double(d)), m);
      EXPECT_TRUE(attn_test::matrix_near(paged, c.expected, tol)) << what;
    }
  }
}

// The batched kernel call over several sequences' pages (decoding steps, two of them split into
// 512-key parts whose partial results share the call's buffer, a chunk, a sequence with no key,
// one with no query) is bitwise the separate calls, on every executor, with and without a
// Workspace, and the same on all of them.
TYPED_TEST(PagedKernel, BatchIsBitwiseTheSeparateCallsOnEveryExecutor) {
  using Scalar = typename TypeParam::Scalar;
  using Storage = typename TypeParam::Storage;
  constexpr Index heads = 8, kv_heads = 2, d = 8, width = kv_heads * d, page_size = 16;
  Random rng(20);
  const std::vector<Index> lengths = {1500, 3, 64, 700, 0, 130, 1100};
  const std::vector<Index> query_rows = {1, 3, 2, 20, 1, 0, 2};
  attn::PagedKVCache<Scalar, Storage> pool(3500 / page_size + 8, width, d, page_size);
  std::vector<SequenceId> ids;
  for (std::size_t b = 0; b < lengths.size(); ++b)
    ids.push_back(pool.create());
  for (std::vector<Index> filled(lengths.size(), 0);;) {
    bool more = false;
    for (std::size_t b = 0; b < lengths.size(); ++b) {
      const Index rows = std::min(rng.integer(1, 100), lengths[b] - filled[b]);
      if (rows == 0) continue;
      pool.append(ids[b], rng.uniform_matrix<Scalar>(rows, width),
                  rng.uniform_matrix<Scalar>(rows, width));
      filled[b] += rows;
      more = true;
    }
    if (!more) break;
  }
  Index total = 0;
  for (const Index n : query_rows)
    total += n;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(total, heads * d);
  std::vector<attn::PagedView<Storage>> keys, values;
  for (const SequenceId id : ids) {
    keys.push_back(pool.keys(id));
    values.push_back(pool.values(id));
  }

  const std::vector<NamedExecutor> list = executors();
  std::vector<attn::Matrix<Scalar>> results;
  attn::Workspace workspace;
  for (std::size_t run = 0; run < 2 * list.size(); ++run) {
    const NamedExecutor& e = list[run % list.size()];
    const bool with_workspace = run >= list.size();
    attn::AttentionOptions options;
    options.num_heads = heads;
    options.num_kv_heads = kv_heads;
    options.executor = e.executor;
    options.workspace = with_workspace ? &workspace : nullptr;
    attn::Matrix<Scalar> batched = attn::Matrix<Scalar>::Constant(total, heads * d, Scalar(7));
    attn::scaled_dot_product_attention_batch_into(q, query_rows, keys, values, batched,
                                                  Mask::causal(), options);
    attn::Matrix<Scalar> separate = attn::Matrix<Scalar>::Constant(total, heads * d, Scalar(-7));
    for (std::size_t b = 0, first = 0; b < ids.size(); first += std::size_t(query_rows[b]), ++b) {
      attn::scaled_dot_product_attention_into(
          q.middleRows(Index(first), query_rows[b]), keys[b], values[b],
          separate.middleRows(Index(first), query_rows[b]), Mask::causal(), options);
    }
    EXPECT_TRUE(bitwise_equal(batched, separate))
        << e.name << (with_workspace ? " with a workspace" : "");
    results.push_back(batched);
  }
  for (std::size_t run = 1; run < results.size(); ++run) {
    EXPECT_TRUE(bitwise_equal(results[run], results[0]))
        << list[run % list.size()].name << (run >= list.size() ? " with a workspace" : "");
  }
}

// Any table of runs that covers the rows in order is a valid PagedView: runs of 1 to 150 rows
// (longer than a decode tile, shorter than a packet) laid out in a buffer in reverse order, read
// by the kernel as the same rows laid out in order (within regrouping_tolerance).
TEST(PagedViewTable, AnyTableOfRunsReadsItsRows) {
  constexpr Index heads = 4, kv_heads = 2, d = 8, width = kv_heads * d, m = 1200;
  Random rng(30);
  const attn::Matrix<float> k = rng.uniform_matrix<float>(m, width);
  const attn::Matrix<float> v = rng.uniform_matrix<float>(m, width);
  std::vector<Index> sizes;
  for (Index done = 0; done < m;) {
    sizes.push_back(std::min(rng.integer(1, 150), m - done));
    done += sizes.back();
  }
  // The buffer holds the last run first; position p of run r is row (start of r in the buffer) +
  // (p − run's position).
  attn::Matrix<float> k_buffer(m, width), v_buffer(m, width);
  std::vector<attn::PageRun> runs;
  Index position = 0, row = m;
  for (const Index size : sizes) {
    row -= size;
    k_buffer.middleRows(row, size) = k.middleRows(position, size);
    v_buffer.middleRows(row, size) = v.middleRows(position, size);
    runs.push_back({position, row, size});
    position += size;
  }
  const attn::ConstMatrixView<float> k_pool(k_buffer.data(), m, width, Eigen::OuterStride<>(width));
  const attn::ConstMatrixView<float> v_pool(v_buffer.data(), m, width, Eigen::OuterStride<>(width));
  const attn::PagedView<float> k_view(k_pool, runs.data(), Index(runs.size()));
  const attn::PagedView<float> v_view(v_pool, runs.data(), Index(runs.size()));
  ASSERT_EQ(k_view.rows(), m);
  EXPECT_TRUE(same_rows(paged_rows(k_view), k.cast<double>()));
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.num_kv_heads = kv_heads;
  for (const Index n : {Index(1), Index(3), Index(100)}) {
    const attn::Matrix<float> q = rng.uniform_matrix<float>(n, heads * d);
    EXPECT_TRUE(attn_test::matrix_near(
        attn::scaled_dot_product_attention(q, k_view, v_view, Mask::causal(), options),
        attn::scaled_dot_product_attention(q, k, v, Mask::causal(), options),
        regrouping_tolerance<float>(m)))
        << n << " queries";
  }
}

// ---------------------------------------------------------------------------------------------
// 2. The pool's operations
// ---------------------------------------------------------------------------------------------

template <typename T>
class PagedPool : public ::testing::Test {};
TYPED_TEST_SUITE(PagedPool, PoolTypes, PoolNames);

TYPED_TEST(PagedPool, AppendFillsEachPageBeforeTakingTheNext) {
  Tracked<typename TypeParam::Scalar, typename TypeParam::Storage> t(8, 16, 100);
  attn::PagedKVCache<typename TypeParam::Scalar, typename TypeParam::Storage>& pool = t.pool;
  EXPECT_EQ(pool.pages(), 8);
  EXPECT_EQ(pool.page_size(), 16);
  EXPECT_EQ(pool.width(), 8);
  EXPECT_EQ(pool.head_dim(), 4);
  EXPECT_EQ(pool.page_bytes() * 8, pool.bytes());
  const SequenceId a = t.create();
  EXPECT_EQ(pool.size(a), 0);
  EXPECT_EQ(pool.keys(a).rows(), 0);
  EXPECT_EQ(pool.used_pages(), 0);
  EXPECT_EQ(pool.free_pages(), 8);
  EXPECT_EQ(pool.pages_needed(a, 5), 1);
  t.append(a, 5);
  EXPECT_EQ(pool.used_pages(), 1);
  EXPECT_EQ(pool.pages_needed(a, 11), 0);
  t.append(a, 11);  // fills the first page exactly
  EXPECT_EQ(pool.used_pages(), 1);
  EXPECT_EQ(pool.keys(a).run_count(), 1);
  EXPECT_EQ(pool.pages_needed(a, 1), 1);
  t.append(a, 1);  // crosses into a second page
  EXPECT_EQ(pool.used_pages(), 2);
  EXPECT_EQ(pool.pages_needed(a, 40), 2);
  t.append(a, 40);  // 57 rows: 16 + 16 + 16 + 9, the last 40 in one call over three pages
  EXPECT_EQ(pool.size(a), 57);
  EXPECT_EQ(pool.position(a), 57);
  EXPECT_EQ(pool.used_pages(), 4);
  EXPECT_EQ(pool.free_pages(), 4);
  EXPECT_EQ(pool.used_bytes(), 4 * pool.page_bytes());
  EXPECT_EQ(pool.keys(a).run_count(), 4);
  EXPECT_EQ(pool.pages_needed(a, 0), 0);
  t.append(a, 0);  // nothing
  EXPECT_EQ(pool.used_pages(), 4);
  EXPECT_EQ(pool.page_copies(), 0u);
  EXPECT_TRUE(t.holds());
  // A run's rows are contiguous in the pool: run_from(j) is the rest of j's run.
  const auto keys = pool.keys(a);
  EXPECT_EQ(keys.run_from(0).rows(), 16);
  EXPECT_EQ(keys.run_from(20).rows(), 12);
  EXPECT_EQ(keys.run_from(56).rows(), 1);
}

TYPED_TEST(PagedPool, ForkSharesPagesAndTheFirstAppendCopiesOnlyAPartlyFilledSharedPage) {
  Tracked<typename TypeParam::Scalar, typename TypeParam::Storage> t(16, 16, 110);
  auto& pool = t.pool;
  const SequenceId a = t.create();
  t.append(a, 20);  // a full page and 4 rows of a second
  const SequenceId b = t.fork(a);
  EXPECT_NE(b, a);
  EXPECT_EQ(pool.used_pages(), 2);
  EXPECT_EQ(pool.page_copies(), 0u);
  EXPECT_TRUE(t.holds());
  EXPECT_EQ(pool.pages_needed(b, 1), 1);  // the copy of the shared, partly filled page
  EXPECT_EQ(pool.pages_needed(a, 1), 1);
  t.append(b, 1);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), 3);
  EXPECT_TRUE(t.holds());  // a's rows are untouched
  // a is now the only holder of its last page: it writes there.
  EXPECT_EQ(pool.pages_needed(a, 1), 0);
  t.append(a, 1);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), 3);
  EXPECT_TRUE(t.holds());

  // A full last page is never copied: the rows go to a new page.
  const SequenceId c = t.create();
  t.append(c, 32);
  const SequenceId d = t.fork(c);
  EXPECT_EQ(pool.used_pages(), 5);
  EXPECT_EQ(pool.pages_needed(d, 1), 1);
  t.append(d, 1);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), 6);
  t.append(c, 1);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), 7);
  EXPECT_TRUE(t.holds());

  // Forks of forks: d's last page (1 row) is held by d, e and f; e's append copies it once, fills
  // its 15 free rows and takes one more page for the last 5.
  const SequenceId e = t.fork(d);
  const SequenceId f = t.fork(e);
  EXPECT_EQ(pool.used_pages(), 7);
  EXPECT_EQ(pool.pages_needed(e, 20), 2);
  t.append(e, 20);
  EXPECT_EQ(pool.page_copies(), 2u);
  EXPECT_EQ(pool.used_pages(), 9);
  EXPECT_EQ(pool.size(e), 53);
  EXPECT_TRUE(t.holds());
  EXPECT_EQ(pool.size(f), 33);
}

TYPED_TEST(PagedPool, DropReturnsOnlyPagesNoOtherSequenceHolds) {
  Tracked<typename TypeParam::Scalar, typename TypeParam::Storage> t(16, 16, 120);
  auto& pool = t.pool;
  const SequenceId a = t.create();
  t.append(a, 40);  // pages of 16, 16 and 8 rows
  const SequenceId b = t.fork(a);
  // b copies the 8-row page, fills it, and takes two pages for the other 22 rows.
  t.append(b, 30);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), 6);
  t.drop(a);  // the two full pages stay (b holds them); a's 8-row page returns
  EXPECT_FALSE(pool.contains(a));
  EXPECT_EQ(pool.used_pages(), 5);
  EXPECT_EQ(pool.free_pages(), 11);
  EXPECT_TRUE(t.holds());
  t.drop(b);
  EXPECT_EQ(pool.used_pages(), 0);
  EXPECT_EQ(pool.free_pages(), 16);
  EXPECT_EQ(pool.sequences(), 0);
  // Every page can be taken again.
  const SequenceId c = t.create();
  t.append(c, 16 * 16);
  EXPECT_EQ(pool.free_pages(), 0);
  EXPECT_TRUE(t.holds());
}

// Truncating into the middle of a page another sequence shares, then appending, copies that page
// first: the sibling's rows past the cut are never overwritten.
TYPED_TEST(PagedPool, TruncateThenAppendNeverWritesIntoASiblingsPage) {
  Tracked<typename TypeParam::Scalar, typename TypeParam::Storage> t(16, 16, 130);
  auto& pool = t.pool;
  const SequenceId a = t.create();
  t.append(a, 40);  // pages p0, p1 (full), p2 (8 rows)
  const SequenceId b = t.fork(a);
  t.truncate(a, 20);  // into the middle of p1, which b shares
  EXPECT_EQ(pool.size(a), 20);
  EXPECT_EQ(pool.position(a), 20);
  EXPECT_EQ(pool.used_pages(), 3);  // b still holds all three
  EXPECT_EQ(pool.page_copies(), 0u);
  EXPECT_TRUE(t.holds());
  EXPECT_EQ(pool.pages_needed(a, 5), 1);
  t.append(a, 5);  // copies p1's first 4 rows, then writes 5 after them
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), 4);
  EXPECT_TRUE(t.holds());  // b's rows 20..24 are still its own

  // Truncating a sequence: pages it no longer needs return if nobody else holds them.
  t.truncate(b, 33);  // still one row in p2
  EXPECT_EQ(pool.used_pages(), 4);
  t.truncate(b, 32);  // p2 returns
  EXPECT_EQ(pool.used_pages(), 3);
  EXPECT_EQ(pool.pages_needed(b, 1), 1);  // p1 is full: a new page, no copy
  t.append(b, 1);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), 4);
  EXPECT_TRUE(t.holds());

  // To its own size: nothing; to 0: everything a alone held returns, and it starts afresh.
  t.truncate(a, pool.size(a));
  EXPECT_EQ(pool.used_pages(), 4);
  t.truncate(a, 0);
  EXPECT_EQ(pool.size(a), 0);
  EXPECT_EQ(pool.position(a), 0);
  EXPECT_EQ(pool.used_pages(), 3);
  t.append(a, 3);
  EXPECT_EQ(pool.used_pages(), 4);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_TRUE(t.holds());

  // A sequence alone in its page writes after the cut in place.
  const SequenceId c = t.create();
  t.append(c, 40);
  EXPECT_EQ(pool.used_pages(), 7);
  t.truncate(c, 20);
  EXPECT_EQ(pool.used_pages(), 6);
  EXPECT_EQ(pool.pages_needed(c, 5), 0);
  t.append(c, 5);
  EXPECT_EQ(pool.used_pages(), 6);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_TRUE(t.holds());
}

TYPED_TEST(PagedPool, EvictKeepsTheSinksAndTheWindowAndReturnsTheRest) {
  Tracked<typename TypeParam::Scalar, typename TypeParam::Storage> t(16, 16, 140);
  auto& pool = t.pool;
  const SequenceId a = t.create();
  t.append(a, 100);  // six full pages and 4 rows of a seventh
  EXPECT_EQ(pool.used_pages(), 7);
  t.evict(a, 4, 20);  // rows [0, 4) in p0, [80, 100) in p5 and p6
  EXPECT_EQ(pool.size(a), 24);
  EXPECT_EQ(pool.position(a), 100);
  EXPECT_EQ(pool.used_pages(), 3);
  EXPECT_EQ(pool.page_copies(), 0u);
  EXPECT_TRUE(t.holds());
  // The next rows go after the window's last, in place.
  EXPECT_EQ(pool.pages_needed(a, 10), 0);
  t.append(a, 10);
  EXPECT_EQ(pool.size(a), 34);
  EXPECT_EQ(pool.position(a), 110);
  EXPECT_EQ(pool.used_pages(), 3);
  EXPECT_EQ(pool.page_copies(), 0u);
  EXPECT_TRUE(t.holds());
  // Nothing to forget when the sequence is no longer than sinks + window.
  t.evict(a, 4, 30);
  EXPECT_EQ(pool.size(a), 34);
  EXPECT_EQ(pool.used_pages(), 3);
  t.evict(a, 0, 0);  // everything
  EXPECT_EQ(pool.size(a), 0);
  EXPECT_EQ(pool.position(a), 110);
  EXPECT_EQ(pool.used_pages(), 0);
  t.append(a, 1);
  EXPECT_EQ(pool.position(a), 111);
  EXPECT_TRUE(t.holds());

  // Evicting from a sequence whose pages a fork shares returns none of them, and the first append
  // after it copies the shared, partly filled last page.
  const SequenceId c = t.create();
  t.append(c, 100);
  const SequenceId d = t.fork(c);
  const Index used = pool.used_pages();
  t.evict(c, 4, 20);
  EXPECT_EQ(pool.used_pages(), used);
  EXPECT_EQ(pool.size(d), 100);
  EXPECT_EQ(pool.pages_needed(c, 1), 1);
  t.append(c, 1);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), used + 1);
  EXPECT_TRUE(t.holds());
}

// Sinks and window in one page: the sequence is its page's only holder, so an append writes into
// it (as after any other eviction) and fits a pool with no free page.
TYPED_TEST(PagedPool, EvictWithSinksAndWindowInOnePageAppendsInPlace) {
  Tracked<typename TypeParam::Scalar, typename TypeParam::Storage> t(1, 16, 150);
  auto& pool = t.pool;
  const SequenceId a = t.create();
  t.append(a, 12);
  t.evict(a, 2, 3);  // rows [0, 2) and [9, 12), both in the pool's one page
  EXPECT_EQ(pool.size(a), 5);
  EXPECT_EQ(pool.used_pages(), 1);
  EXPECT_TRUE(t.holds());
  EXPECT_EQ(pool.pages_needed(a, 1), 0);
  EXPECT_NO_THROW(t.append(a, 1));
  EXPECT_EQ(pool.page_copies(), 0u);
  EXPECT_TRUE(t.holds());
}

TYPED_TEST(PagedPool, ReorderWithRepeatedSourcesCopiesNoPage) {
  Tracked<typename TypeParam::Scalar, typename TypeParam::Storage> t(32, 16, 160);
  auto& pool = t.pool;
  const std::vector<SequenceId> s = {t.create(), t.create(), t.create(), t.create()};
  const std::vector<Index> lengths = {20, 35, 16, 50};  // 2, 3, 1 and 4 pages
  for (std::size_t i = 0; i < s.size(); ++i)
    t.append(s[i], lengths[i]);
  EXPECT_EQ(pool.used_pages(), 10);
  // s0 and s1 become old s0, s2 stays, s3 becomes old s1: old s3's four pages return.
  t.reorder(s, {0, 0, 2, 1});
  EXPECT_EQ(pool.page_copies(), 0u);
  EXPECT_EQ(pool.used_pages(), 6);
  EXPECT_EQ(pool.size(s[1]), 20);
  EXPECT_EQ(pool.size(s[3]), 35);
  EXPECT_TRUE(t.holds());
  // The next step: s0 and s1 share old s0's 4-row last page, so s0 copies it and s1 then writes
  // into it alone; s2's last page is full (a new page); s3 holds old s1's alone (in place).
  for (const SequenceId id : s)
    t.append(id, 1);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_EQ(pool.used_pages(), 8);
  EXPECT_TRUE(t.holds());
  // The identity changes nothing; a reorder over some sequences leaves the others alone.
  const Counters before = counters(pool);
  t.reorder(s, {0, 1, 2, 3});
  t.reorder({}, {});
  EXPECT_EQ(counters(pool), before);
  t.reorder({s[2], s[0]}, {1, 1});  // s2 becomes s0: its two pages return
  EXPECT_EQ(pool.used_pages(), 6);
  EXPECT_EQ(pool.page_copies(), 1u);
  EXPECT_TRUE(t.holds());
}

TEST(PagedPoolIds, AreNeverReused) {
  attn::PagedKVCache<float> pool(4, 8, 4, 16);
  const SequenceId a = pool.create();
  const SequenceId b = pool.create();
  EXPECT_NE(a, b);
  pool.drop(a);
  EXPECT_FALSE(pool.contains(a));
  EXPECT_TRUE(pool.contains(b));
  std::set<SequenceId> seen = {a, b};
  const SequenceId c = pool.create();
  const SequenceId f = pool.fork(c);
  for (const SequenceId id : {c, f}) {
    EXPECT_EQ(seen.count(id), 0u) << id;
    seen.insert(id);
  }
  pool.drop(b);
  pool.drop(c);
  pool.drop(f);
  EXPECT_EQ(pool.sequences(), 0);
  for (int i = 0; i < 5; ++i) {
    const SequenceId id = pool.create();
    EXPECT_EQ(seen.count(id), 0u) << id;
    seen.insert(id);
    pool.drop(id);
  }
  EXPECT_THROW((void)pool.size(a), attn::SequenceError);
}

// ---------------------------------------------------------------------------------------------
// 3. The figures of the issue
// ---------------------------------------------------------------------------------------------

// Four beams decoded from one 2000-token prompt to 2048 positions (pages of 64): reordering them
// copies no page, nor does the step at position 2048 (every last page is full).
TEST(PagedIssueFigures, BeamReorderAt2048PositionsCopiesNoPage) {
  Tracked<float, float> t(48, 64, 200);
  auto& pool = t.pool;
  const SequenceId prompt = t.create();
  t.append(prompt, 2000);  // 31 full pages and 16 rows of a 32nd
  std::vector<SequenceId> beams;
  for (int b = 0; b < 4; ++b)
    beams.push_back(t.fork(prompt));
  t.drop(prompt);
  EXPECT_EQ(pool.used_pages(), 32);
  // 48 steps to position 2048. The first copies the prompt's partly filled last page for three
  // beams; the fourth, by then its only holder, writes into it.
  for (int step = 0; step < 48; ++step) {
    for (const SequenceId beam : beams)
      t.append(beam, 1);
  }
  EXPECT_EQ(pool.size(beams[0]), 2048);
  EXPECT_EQ(pool.page_copies(), 3u);
  EXPECT_EQ(pool.used_pages(), 35);  // 31 shared + each beam's full 32nd page

  const std::uint64_t copies = pool.page_copies();
  t.reorder(beams, {0, 0, 1, 3});
  EXPECT_EQ(pool.page_copies(), copies);  // no page copied
  EXPECT_EQ(pool.used_pages(), 34);       // old beam 2's own page returns
  EXPECT_TRUE(t.holds());
  // The step at position 2048: every last page is full, so each beam starts a new one.
  for (const SequenceId beam : beams)
    t.append(beam, 1);
  EXPECT_EQ(pool.page_copies(), copies);
  EXPECT_EQ(pool.used_pages(), 38);
  EXPECT_TRUE(t.holds());

  // The step at 2049 after the same reorder: beams 0 and 1 now share beam 0's new page, which
  // holds one row. The first of them to append copies it (one copy, of one row); the second then
  // writes into the page it holds alone. Beams 2 and 3 hold theirs alone. In general a step
  // after a reorder copies, per source given to k > 1 beams, k − 1 pages of at most
  // page_size − 1 rows, and nothing when the sources' last pages are full.
  t.reorder(beams, {0, 0, 1, 3});
  EXPECT_EQ(pool.page_copies(), copies);
  EXPECT_EQ(pool.used_pages(), 36);  // old beam 2's pages 32 and 33 (both its own) return
  for (const SequenceId beam : beams)
    t.append(beam, 1);
  EXPECT_EQ(pool.page_copies(), copies + 1);
  EXPECT_EQ(pool.used_pages(), 37);
  EXPECT_EQ(pool.size(beams[3]), 2050);
  EXPECT_TRUE(t.holds());
}

// 16 sequences forked from one prompt, each then a few tokens further: the prompt's pages once,
// plus at most one page per sequence (a copy of the prompt's last page when it is partly filled,
// else a new one), against 17 (or 16) pages each for 16 separate sequences.
TEST(PagedIssueFigures, SixteenSequencesForkedFromAPromptHoldItsPagesOnce) {
  constexpr Index users = 16, page_size = 64;
  std::uint32_t seed = 210;
  for (const Index prompt_length : {Index(1024), Index(1000)}) {
    Tracked<float, float> t(64, page_size, ++seed);
    auto& pool = t.pool;
    const SequenceId prompt = t.create();
    t.append(prompt, prompt_length);
    const Index prefix_pages = (prompt_length + page_size - 1) / page_size;  // 16
    std::vector<SequenceId> forks;
    for (Index u = 0; u < users; ++u)
      forks.push_back(t.fork(prompt));
    EXPECT_EQ(pool.used_pages(), prefix_pages);
    for (Index u = 0; u < users; ++u)
      t.append(forks[std::size_t(u)], 1 + u % 4);
    EXPECT_EQ(pool.used_pages(), prefix_pages + users) << "prompt " << prompt_length;
    EXPECT_EQ(pool.page_copies(), prompt_length % page_size == 0 ? 0u : std::uint64_t(users))
        << "prompt " << prompt_length;
    EXPECT_TRUE(t.holds());

    attn::PagedKVCache<float> separate(users * 17, 8, 4, page_size);
    Index separate_pages = 0;
    for (Index u = 0; u < users; ++u) {
      const Index length = prompt_length + 1 + u % 4;
      separate.append(separate.create(), attn::Matrix<float>::Zero(length, 8),
                      attn::Matrix<float>::Zero(length, 8));
      separate_pages += (length + page_size - 1) / page_size;
    }
    EXPECT_EQ(separate.used_pages(), separate_pages);
    EXPECT_EQ(separate_pages, prompt_length == 1024 ? 272 : 256);
    EXPECT_EQ(pool.used_bytes() * std::size_t(separate_pages),
              separate.used_bytes() * std::size_t(prefix_pages + users));
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Errors leave the pool unchanged
// ---------------------------------------------------------------------------------------------

TEST(PagedErrors, FullPoolThrowsCapacityErrorAndChangesNothing) {
  Tracked<float, float> t(4, 16, 300);
  auto& pool = t.pool;
  const SequenceId a = t.create();
  t.append(a, 40);  // 3 pages, the last with 8 rows
  const SequenceId b = t.fork(a);
  const SequenceId c = t.create();
  t.append(c, 10);
  ASSERT_EQ(pool.free_pages(), 0);
  const Snapshot<attn::PagedKVCache<float>> before(pool, {a, b, c});
  const attn::Matrix<float> seven = attn::Matrix<float>::Ones(7, 8);
  // c has room for 6 more rows in its page.
  EXPECT_THROW(pool.append(c, seven, seven), attn::CapacityError);
  EXPECT_SHAPE_ERROR(pool.append(c, seven, seven), "PagedKVCache::append", "appending 7 rows",
                     "needs 1 free pages", "0 of 4");
  // b's last page is shared and partly filled: even one row needs a page for its copy.
  EXPECT_THROW(pool.append(b, seven.topRows(1), seven.topRows(1)), attn::CapacityError);
  EXPECT_THROW(pool.check_room("check", b, 1), attn::CapacityError);
  EXPECT_EQ(pool.pages_needed(b, 1), 1);
  EXPECT_TRUE(before.unchanged(pool));
  EXPECT_TRUE(t.holds());
  // What fits still goes in.
  t.append(c, 6);
  EXPECT_EQ(pool.free_pages(), 0);
  EXPECT_TRUE(t.holds());

  // A pool of no pages holds nothing.
  attn::PagedKVCache<float> none(0, 8, 4, 16);
  const SequenceId n = none.create();
  EXPECT_THROW(none.append(n, seven, seven), attn::CapacityError);
  none.append(n, seven.topRows(0), seven.topRows(0));
  EXPECT_EQ(none.size(n), 0);
}

// A batch whose sequences each fit alone but not together is refused whole: nothing appended,
// out untouched.
TEST(PagedErrors, BatchThatFitsOnlyOneSequenceAtATimeThrowsCapacityError) {
  Random rng(310);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<float> layer(cfg, attn_test::random_weights<float>(cfg, rng));
  auto pool = layer.make_paged_cache(5, 16);
  const SequenceId a = pool.create(), b = pool.create();
  (void)layer(rng.uniform_matrix<float>(16, 16), pool, a);
  (void)layer(rng.uniform_matrix<float>(16, 16), pool, b);
  ASSERT_EQ(pool.free_pages(), 3);
  const Snapshot<attn::PagedKVCache<float>> before(pool, {a, b});
  const attn::Matrix<float> x = rng.uniform_matrix<float>(40, 16);
  attn::Matrix<float> out = attn::Matrix<float>::Constant(40, 16, 7.0f);
  // 20 rows each: two pages each, four together, three free.
  EXPECT_EQ(pool.pages_needed(a, 20), 2);
  EXPECT_THROW(layer.attend_batch_into(x, {20, 20}, pool, {a, b}, out), attn::CapacityError);
  EXPECT_SHAPE_ERROR(layer.attend_batch_into(x, {20, 20}, pool, {a, b}, out), "SelfAttention",
                     "needs 4 free pages", "3 of 5");
  EXPECT_TRUE(before.unchanged(pool));
  EXPECT_TRUE((out.array() == 7.0f).all());
  // Either alone fits.
  (void)layer(x.topRows(20), pool, a);
  EXPECT_EQ(pool.size(a), 36);
}

// check_appends counts the pages the appends take together. Two sequences sharing a partly
// filled last page, one row each: the first copies the page, the second is then its only holder
// and writes into it. One page in all, as appending them one after the other shows.
TEST(PagedErrors, BatchOfTwoForksSharingALastPageNeedsOneCopy) {
  Random rng(320);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<float> layer(cfg, attn_test::random_weights<float>(cfg, rng));
  const attn::Matrix<float> prompt = rng.uniform_matrix<float>(8, 16);
  const attn::Matrix<float> x = rng.uniform_matrix<float>(2, 16);
  for (const bool batched : {false, true}) {
    auto pool = layer.make_paged_cache(2, 16);
    const SequenceId a = pool.create();
    (void)layer(prompt, pool, a);
    const SequenceId b = pool.fork(a);
    ASSERT_EQ(pool.free_pages(), 1);
    if (batched) {
      EXPECT_NO_THROW((void)layer.attend_batch(x, pool, {a, b})) << "batched";
    } else {
      (void)layer(x.row(0), pool, a);
      (void)layer(x.row(1), pool, b);
    }
    EXPECT_EQ(pool.page_copies(), 1u) << (batched ? "batched" : "one by one");
    EXPECT_EQ(pool.used_pages(), 2) << (batched ? "batched" : "one by one");
  }
}

TEST(PagedErrors, UnknownAndDroppedIdsThrowSequenceErrorForEveryOperation) {
  Random rng(330);
  const MultiHeadConfig cfg = config(16, 4, 2);  // kv width 8, as Tracked's
  const attn::SelfAttention<float> layer(cfg, attn_test::random_weights<float>(cfg, rng));
  Tracked<float, float> t(8, 16, 331);
  auto& pool = t.pool;
  const SequenceId a = t.create();
  t.append(a, 20);
  const SequenceId dropped = t.create();
  t.append(dropped, 5);
  t.drop(dropped);
  const SequenceId never = 1000;
  const attn::Matrix<float> k = rng.uniform_matrix<float>(2, 8);
  const attn::Matrix<float> x = rng.uniform_matrix<float>(2, 16);
  attn::Matrix<float> out = attn::Matrix<float>::Constant(2, 16, 7.0f);
  for (const SequenceId id : {dropped, never}) {
    const Snapshot<attn::PagedKVCache<float>> before(pool, {a});
    const std::string name = "sequence " + std::to_string(id);
    EXPECT_SEQUENCE_ERROR((void)pool.fork(id), "fork", name);
    EXPECT_SEQUENCE_ERROR(pool.drop(id), "drop", name);
    EXPECT_SEQUENCE_ERROR((void)pool.size(id), "size", name);
    EXPECT_SEQUENCE_ERROR((void)pool.position(id), "position", name);
    EXPECT_SEQUENCE_ERROR((void)pool.keys(id), "keys", name);
    EXPECT_SEQUENCE_ERROR((void)pool.values(id), "values", name);
    EXPECT_SEQUENCE_ERROR((void)pool.pages_needed(id, 1), "pages_needed", name);
    EXPECT_SEQUENCE_ERROR(pool.check_room("check_room_caller", id, 1), "check_room_caller", name);
    EXPECT_SEQUENCE_ERROR(pool.append(id, k, k), "PagedKVCache::append", name);
    EXPECT_SEQUENCE_ERROR(pool.truncate(id, 0), "truncate", name);
    EXPECT_SEQUENCE_ERROR(pool.evict(id, 0, 0), "evict", name);
    EXPECT_SEQUENCE_ERROR(pool.reorder({a, id}, {0, 0}), "reorder", name);
    EXPECT_SEQUENCE_ERROR(pool.reorder({id, a}, {1, 1}), "reorder", name);
    EXPECT_SEQUENCE_ERROR(pool.check_appends("check_appends_caller", {a, id}, {1, 1}, k, k),
                          "check_appends_caller", name);
    EXPECT_SEQUENCE_ERROR(layer.attend_into(x, pool, id, out), "SelfAttention", name);
    EXPECT_SEQUENCE_ERROR((void)layer(x, pool, id), "SelfAttention", name);
    EXPECT_SEQUENCE_ERROR(layer.attend_batch_into(x, {1, 1}, pool, {a, id}, out), "SelfAttention",
                          name);
    EXPECT_SEQUENCE_ERROR((void)layer.attend_batch(x, pool, {id, a}), "SelfAttention", name);
    EXPECT_TRUE(before.unchanged(pool)) << name;
    EXPECT_TRUE(t.holds()) << name;
    EXPECT_TRUE((out.array() == 7.0f).all()) << name;
  }
}

TEST(PagedErrors, BadLengthsIndicesAndCountsThrowShapeErrorAndChangeNothing) {
  Random rng(340);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<float> layer(cfg, attn_test::random_weights<float>(cfg, rng));
  Tracked<float, float> t(8, 16, 341);
  auto& pool = t.pool;
  const SequenceId a = t.create(), b = t.create();
  t.append(a, 20);
  t.append(b, 5);
  const Snapshot<attn::PagedKVCache<float>> before(pool, {a, b});

  EXPECT_SHAPE_ERROR(pool.truncate(a, -1), "PagedKVCache::truncate", "length is -1", "size 20");
  EXPECT_SHAPE_ERROR(pool.truncate(a, 21), "PagedKVCache::truncate", "length is 21", "size 20");
  EXPECT_SHAPE_ERROR(pool.evict(a, -1, 2), "PagedKVCache::evict", "sinks is -1");
  EXPECT_SHAPE_ERROR(pool.evict(a, 2, -1), "PagedKVCache::evict", "window is -1");
  EXPECT_SHAPE_ERROR(pool.reorder({a, b}, {0}), "PagedKVCache::reorder", "2 ids and 1 sources");
  EXPECT_SHAPE_ERROR(pool.reorder({a, b}, {0, 2}), "PagedKVCache::reorder", "sources[1] is 2",
                     "[0, 2)");
  EXPECT_SHAPE_ERROR(pool.reorder({a, b}, {-1, 0}), "PagedKVCache::reorder", "sources[0] is -1");
  EXPECT_SHAPE_ERROR(pool.reorder({a, a}, {0, 1}), "PagedKVCache::reorder", "ids[0] and ids[1]");
  const attn::Matrix<float> k = rng.uniform_matrix<float>(2, 8);
  const attn::Matrix<float> narrow = rng.uniform_matrix<float>(2, 7);
  EXPECT_SHAPE_ERROR(pool.append(a, narrow, k), "PagedKVCache::append", "2x7", "8");
  EXPECT_SHAPE_ERROR(pool.append(a, k, k.topRows(1)), "PagedKVCache::append", "2x8", "1x8");
  EXPECT_SHAPE_ERROR(pool.check_appends("caller", {a, a}, {1, 1}, k, k), "caller",
                     "ids[0] and ids[1]");
  EXPECT_TRUE(before.unchanged(pool));

  // Through SelfAttention's batch: every check before anything is appended.
  const attn::Matrix<float> x = rng.uniform_matrix<float>(3, 16);
  attn::Matrix<float> out = attn::Matrix<float>::Constant(3, 16, 7.0f);
  EXPECT_SHAPE_ERROR(layer.attend_batch_into(x, {1, 2}, pool, {a, a}, out), "SelfAttention",
                     "distinct ids");
  EXPECT_SHAPE_ERROR(layer.attend_batch_into(x, {3}, pool, {a, b}, out), "SelfAttention",
                     "1 lengths and 2 ids");
  EXPECT_SHAPE_ERROR(layer.attend_batch_into(x, {1, 1}, pool, {a, b}, out), "SelfAttention",
                     "sum to 2");
  EXPECT_SHAPE_ERROR(layer.attend_batch_into(x, {4, -1}, pool, {a, b}, out), "SelfAttention",
                     "lengths[1] is -1");
  EXPECT_SHAPE_ERROR(layer.attend_batch_into(x, {1, 2}, pool, {a, b}, out.topRows(2)),
                     "SelfAttention", "out is 2x16");
  EXPECT_SHAPE_ERROR(layer.attend_batch_into(x, {1, 2}, pool, {a, b}, out,
                                             Mask::keep(attn::Matrix<bool>::Constant(1, 21, true))),
                     "SelfAttention", "one sequence");
  attn::PagedKVCache<float> wide(4, 16, 4, 16);  // an MHA width for a GQA layer
  const SequenceId w = wide.create();
  EXPECT_SHAPE_ERROR((void)layer(x, wide, w), "SelfAttention", "cache width is 16", "8");
  EXPECT_EQ(wide.size(w), 0);
  EXPECT_TRUE(before.unchanged(pool));
  EXPECT_TRUE((out.array() == 7.0f).all());
  EXPECT_TRUE(t.holds());
}

TEST(PagedErrors, ConstructorRejectsBadPageSizesAndShapes) {
  for (const Index page_size : {Index(0), Index(8), Index(48), Index(-16)}) {
    EXPECT_SHAPE_ERROR((attn::PagedKVCache<float>(4, 8, 4, page_size)), "PagedKVCache",
                       "page_size is", "power of two of at least 16");
  }
  EXPECT_SHAPE_ERROR((attn::PagedKVCache<float>(-1, 8)), "PagedKVCache", "pages is -1");
  EXPECT_SHAPE_ERROR((attn::PagedKVCache<float>(4, -8)), "PagedKVCache", "key_width is -8");
  EXPECT_SHAPE_ERROR((attn::PagedKVCache<float>(4, 8, 3)), "PagedKVCache", "head_dim is 3");
  EXPECT_EQ((attn::PagedKVCache<float>(4, 8, 0, 32).page_size()), 32);
}

// The batched kernel call checks every sequence before it computes any: counts, rows, and each
// sequence's shapes (the message names the sequence); out is then untouched.
TEST(PagedErrors, KernelBatchChecksEverySequenceFirst) {
  Random rng(345);
  attn::PagedKVCache<float> pool(8, 8, 4, 16);
  const SequenceId a = pool.create(), b = pool.create();
  pool.append(a, rng.uniform_matrix<float>(20, 8), rng.uniform_matrix<float>(20, 8));
  pool.append(b, rng.uniform_matrix<float>(5, 8), rng.uniform_matrix<float>(5, 8));
  const std::vector<attn::PagedView<float>> keys = {pool.keys(a), pool.keys(b)};
  const std::vector<attn::PagedView<float>> values = {pool.values(a), pool.values(b)};
  attn::AttentionOptions options;
  options.num_heads = 4;
  options.num_kv_heads = 2;
  const attn::Matrix<float> q = rng.uniform_matrix<float>(3, 16);
  attn::Matrix<float> out = attn::Matrix<float>::Constant(3, 16, 7.0f);
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_batch_into(q, {3}, keys, values, out,
                                                                   Mask::causal(), options),
                     "scaled_dot_product_attention_batch", "1 query_rows, 2 k and 2 v");
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_batch_into(q, {4, -1}, keys, values, out,
                                                                   Mask::causal(), options),
                     "query_rows[1] is -1");
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_batch_into(q, {1, 1}, keys, values, out,
                                                                   Mask::causal(), options),
                     "query_rows sum to 2");
  // Sequence 1's keys have 8 columns, not the 16 of q's two heads per kv head.
  options.num_kv_heads = 4;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_batch_into(q, {1, 2}, keys, values, out,
                                                                   Mask::causal(), options),
                     "(sequence 0)", "num_kv_heads*head_dim");
  options.num_kv_heads = 2;
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention_batch_into(
                         q, {1, 2}, keys, values, out,
                         Mask::keep(attn::Matrix<bool>::Constant(2, 5, true)), options),
                     "(sequence 0)", "keep");
  EXPECT_TRUE((out.array() == 7.0f).all());
}

// A value the storage cannot hold (beyond half's range, rounding to infinity in bfloat16, not
// finite for qint8) is rejected before anything is written, even in the last row of an append
// that would take new pages.
template <typename Storage>
void expect_value_rejected(float bad, const char* storage) {
  Tracked<float, Storage> t(8, 16, 350);
  auto& pool = t.pool;
  const SequenceId a = t.create();
  t.append(a, 10);
  const SequenceId b = t.fork(a);  // the append below would copy the shared page first
  const Snapshot<attn::PagedKVCache<float, Storage>> before(pool, {a, b});
  attn::Matrix<float> k = attn::Matrix<float>::Constant(30, 8, 0.5f);
  attn::Matrix<float> v = k;
  v(29, 3) = bad;
  EXPECT_SHAPE_ERROR(pool.append(b, k, v), "PagedKVCache::append", "v(29, 3)", storage) << storage;
  EXPECT_SHAPE_ERROR(pool.append(b, v, k), "PagedKVCache::append", "k(29, 3)", storage) << storage;
  EXPECT_TRUE(before.unchanged(pool)) << storage;
  EXPECT_TRUE(t.holds()) << storage;
}

TEST(PagedErrors, ValuesBeyondTheStorageRangeAreRejectedBeforeAnythingChanges) {
  expect_value_rejected<attn::half>(70000.0f, "half");
  expect_value_rejected<attn::bfloat16>(std::numeric_limits<float>::max(), "bfloat16");
  expect_value_rejected<attn::qint8>(std::numeric_limits<float>::quiet_NaN(), "qint8");
  expect_value_rejected<attn::qint8>(std::numeric_limits<float>::infinity(), "qint8");

  // Through SelfAttention: projections of a large input exceed half's range.
  Random rng(351);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<float> layer(cfg, attn_test::random_weights<float>(cfg, rng));
  auto pool = layer.make_paged_cache<attn::half>(4, 16);
  const SequenceId a = pool.create();
  (void)layer(rng.uniform_matrix<float>(5, 16), pool, a);
  const Snapshot<attn::PagedKVCache<float, attn::half>> before(pool, {a});
  const attn::Matrix<float> huge = attn::Matrix<float>::Constant(2, 16, 1e6f);
  // (The single-sequence form's message names the pool's append, which makes the check.)
  EXPECT_SHAPE_ERROR((void)layer(huge, pool, a), "beyond the range of half");
  EXPECT_SHAPE_ERROR((void)layer.attend_batch(huge.topRows(1), pool, {a}), "SelfAttention",
                     "beyond the range of half");
  EXPECT_TRUE(before.unchanged(pool));
}

// ---------------------------------------------------------------------------------------------
// 5. SelfAttention over a pool
// ---------------------------------------------------------------------------------------------

template <typename T>
class PagedLayer : public ::testing::Test {};
TYPED_TEST_SUITE(PagedLayer, PoolTypes, PoolNames);

// The paged form against the KVCache form of the same storage, chunk by chunk (a prefill, decoding
// steps, chunks of draft tokens), with another sequence's pages between this one's. The
// projections and the stored rows are the same (checked bit for bit); the kernels differ only
// as regrouping_tolerance describes, and the output projection (E weights of at most 1/√E per
// output) can add up such differences to √E times as much.
TYPED_TEST(PagedLayer, PagedFormEqualsTheKVCacheForm) {
  using Scalar = typename TypeParam::Scalar;
  using Storage = typename TypeParam::Storage;
  Random rng(400);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const std::vector<Index> chunks = {70, 1, 1, 3, 1, 20, 1, 40, 1, 1, 21};
  const Index length = 160;
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
  const attn::Matrix<Scalar> other = rng.uniform_matrix<Scalar>(length, cfg.model_dim);
  auto cache = layer.template make_cache<Storage>(length);
  auto pool = layer.template make_paged_cache<Storage>(24, 16);
  const SequenceId a = pool.create(), b = pool.create();
  const double tol = std::sqrt(double(cfg.model_dim)) * regrouping_tolerance<Scalar>(length);
  Index start = 0;
  for (const Index rows : chunks) {
    const attn::Matrix<Scalar> expected = layer(x.middleRows(start, rows), cache);
    const attn::Matrix<Scalar> paged = layer(x.middleRows(start, rows), pool, a);
    (void)layer(other.middleRows(start, rows), pool, b);
    EXPECT_TRUE(attn_test::matrix_near(paged, expected, tol)) << rows << " rows after " << start;
    start += rows;
  }
  EXPECT_TRUE(same_rows(paged_rows(pool.keys(a)), stored_values(cache.keys())));
  EXPECT_TRUE(same_rows(paged_rows(pool.values(a)), stored_values(cache.values())));
  EXPECT_TRUE(pages_out_of_order(pool.keys(a), 16));
}

// Whatever the bits, a batched step must be the separate calls up to rounding: within
// cached_tolerance (the projections of one row and of many are different reductions, and each
// path is within layer_tolerance of the reference). Only for keys and values kept in Scalar: a
// projection one ulp apart may round to a 16- or 8-bit value one step apart.
template <typename Storage, typename Scalar>
void expect_near_when_unrounded(const attn::Matrix<Scalar>& batched,
                                const attn::Matrix<Scalar>& separate, const MultiHeadConfig& cfg,
                                Index keys) {
  if constexpr (std::is_same_v<Storage, Scalar>) {
    EXPECT_TRUE(attn_test::matrix_near(batched, separate, cached_tolerance<Scalar>(cfg, keys)));
  }
}

// One decoding step of B sequences in one call is bitwise B separate calls, for sequences of 3,
// 700, 1500 (a step split into two 512-key parts), 64 (a full page: the step starts a new one) and
// 0 rows (a new sequence), over three steps, with the serial executor and pools of 2 and 3
// threads, and the same on all of them: what SelfAttention::attend_batch_into documents. The
// kernel's part is bitwise (PagedKernel.BatchIsBitwiseTheSeparateCallsOnEveryExecutor); so must
// be the projections of the batch's rows, which are also the keys and values it stores.
TYPED_TEST(PagedLayer, BatchedDecodeIsBitwiseSeparateCallsOnEveryExecutor) {
  using Scalar = typename TypeParam::Scalar;
  using Storage = typename TypeParam::Storage;
  Random rng(500);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const std::vector<Index> lengths = {3, 700, 1500, 64, 0};
  auto pool = layer.template make_paged_cache<Storage>(48, 64);
  std::vector<SequenceId> ids;
  std::vector<attn::Matrix<Scalar>> prompts;
  for (const Index length : lengths) {
    ids.push_back(pool.create());
    prompts.push_back(rng.uniform_matrix<Scalar>(length, cfg.model_dim));
  }
  prefill_in_turn(layer, pool, ids, prompts, 200);
  constexpr int steps = 3;
  std::vector<attn::Matrix<Scalar>> tokens;
  for (int t = 0; t < steps; ++t)
    tokens.push_back(rng.uniform_matrix<Scalar>(Index(ids.size()), cfg.model_dim));

  const std::vector<NamedExecutor> list = executors();
  std::vector<std::vector<attn::Matrix<Scalar>>> results;
  for (const NamedExecutor& e : list) {
    attn::MultiHeadOptions options;
    options.executor = e.executor;
    auto batched = pool;
    auto separate = pool;
    results.emplace_back();
    for (int t = 0; t < steps; ++t) {
      const attn::Matrix<Scalar> y =
          layer.attend_batch(tokens[std::size_t(t)], batched, ids, Mask::causal(), options);
      attn::Matrix<Scalar> one_by_one(Index(ids.size()), cfg.model_dim);
      for (std::size_t b = 0; b < ids.size(); ++b) {
        one_by_one.row(Index(b)) = layer(tokens[std::size_t(t)].row(Index(b)), separate, ids[b],
                                         Mask::causal(), {}, options);
      }
      EXPECT_TRUE(bitwise_equal(y, one_by_one)) << e.name << ", step " << t;
      expect_near_when_unrounded<Storage>(y, one_by_one, cfg, 1600);
      results.back().push_back(y);
    }
    for (const SequenceId id : ids) {
      EXPECT_TRUE(same_rows(paged_rows(batched.keys(id)), paged_rows(separate.keys(id))));
      EXPECT_EQ(batched.size(id), separate.size(id));
    }
    EXPECT_EQ(counters(batched), counters(separate)) << e.name;
  }
  for (std::size_t e = 1; e < results.size(); ++e) {
    for (int t = 0; t < steps; ++t) {
      EXPECT_TRUE(bitwise_equal(results[e][std::size_t(t)], results[0][std::size_t(t)]))
          << list[e].name << ", step " << t;
    }
  }
}

// A chunk per sequence (1, 4 or 20 draft tokens, or none) in one call is bitwise the separate
// calls, on every executor.
TYPED_TEST(PagedLayer, BatchedChunksAreBitwiseSeparateCallsOnEveryExecutor) {
  using Scalar = typename TypeParam::Scalar;
  using Storage = typename TypeParam::Storage;
  Random rng(550);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const std::vector<Index> lengths = {3, 700, 1500, 64};
  auto pool = layer.template make_paged_cache<Storage>(48, 64);
  std::vector<SequenceId> ids;
  std::vector<attn::Matrix<Scalar>> prompts;
  for (const Index length : lengths) {
    ids.push_back(pool.create());
    prompts.push_back(rng.uniform_matrix<Scalar>(length, cfg.model_dim));
  }
  prefill_in_turn(layer, pool, ids, prompts, 300);
  const std::vector<std::vector<Index>> rounds = {{4, 20, 1, 20}, {1, 4, 20, 0}};

  const std::vector<NamedExecutor> list = executors();
  std::vector<std::vector<attn::Matrix<Scalar>>> results;
  for (const NamedExecutor& e : list) {
    attn::MultiHeadOptions options;
    options.executor = e.executor;
    auto batched = pool;
    auto separate = pool;
    Random tokens(551);  // the same tokens for every executor
    results.emplace_back();
    for (const std::vector<Index>& chunk : rounds) {
      Index total = 0;
      for (const Index rows : chunk)
        total += rows;
      const attn::Matrix<Scalar> x = tokens.uniform_matrix<Scalar>(total, cfg.model_dim);
      const attn::Matrix<Scalar> y =
          layer.attend_batch(x, chunk, batched, ids, Mask::causal(), options);
      attn::Matrix<Scalar> one_by_one(total, cfg.model_dim);
      for (std::size_t b = 0, first = 0; b < ids.size(); first += std::size_t(chunk[b]), ++b) {
        one_by_one.middleRows(Index(first), chunk[b]) = layer(
            x.middleRows(Index(first), chunk[b]), separate, ids[b], Mask::causal(), {}, options);
      }
      EXPECT_TRUE(bitwise_equal(y, one_by_one)) << e.name << ", chunks " << chunk[0] << " "
                                                << chunk[1] << " " << chunk[2] << " " << chunk[3];
      expect_near_when_unrounded<Storage>(y, one_by_one, cfg, 1600);
      results.back().push_back(y);
    }
  }
  for (std::size_t e = 1; e < results.size(); ++e) {
    for (std::size_t r = 0; r < rounds.size(); ++r)
      EXPECT_TRUE(bitwise_equal(results[e][r], results[0][r])) << list[e].name;
  }
}

// ---------------------------------------------------------------------------------------------
// 6. Decoding after fork, reorder, truncate and eviction against recomputation from scratch
// ---------------------------------------------------------------------------------------------

template <typename Scalar>
class PagedRecompute : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(PagedRecompute, Scalars);

// Speculative decoding's rejection: 10 draft tokens appended, 5 rejected. The truncated sequence
// then decodes as a fresh sequence fed the 45 kept tokens; its fork, which shared the page it was
// truncated into, still decodes over its own 50.
TYPED_TEST(PagedRecompute, TruncatedSequenceDecodesAsAFreshOneAndItsForkKeepsItsRows) {
  using Scalar = TypeParam;
  Random rng(600);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(60, cfg.model_dim);
  const attn::Matrix<Scalar> z = rng.uniform_matrix<Scalar>(5, cfg.model_dim);
  const attn::Matrix<Scalar> z_fork = rng.uniform_matrix<Scalar>(3, cfg.model_dim);
  auto pool = layer.make_paged_cache(16, 16);
  const SequenceId a = pool.create();
  (void)layer(x.topRows(50), pool, a);  // pages of 16, 16, 16 and 2 rows
  const SequenceId sibling = pool.fork(a);
  (void)layer(x.middleRows(50, 10), pool, a);  // copies the shared 2-row page
  pool.truncate(a, 45);                        // into the third page, which the fork shares
  EXPECT_EQ(pool.size(a), 45);
  EXPECT_EQ(pool.position(a), 45);
  EXPECT_EQ(pool.page_copies(), 1u);

  auto fresh = layer.make_cache(64);
  (void)layer(x.topRows(45), fresh);
  const double tol = cached_tolerance<Scalar>(cfg, 50);
  for (Index t = 0; t < z.rows(); ++t) {
    EXPECT_TRUE(attn_test::matrix_near(layer(z.row(t), pool, a), layer(z.row(t), fresh), tol))
        << "step " << t;
  }
  EXPECT_EQ(pool.page_copies(), 2u);  // the first step copied the third page

  auto fresh_fork = layer.make_cache(64);
  (void)layer(x.topRows(50), fresh_fork);
  for (Index t = 0; t < z_fork.rows(); ++t) {
    EXPECT_TRUE(attn_test::matrix_near(layer(z_fork.row(t), pool, sibling),
                                       layer(z_fork.row(t), fresh_fork), tol))
        << "fork, step " << t;
  }
}

// StreamingLLM: after each step the sequence keeps its first 4 and last 20 rows. Each step sees
// exactly those (and itself): the fp64 reference over the kept tokens, whose keys and values are
// the projections of those tokens (no rotary embedding: positions enter only through the causal
// mask over what is held). The pages a sequence holds stay bounded.
TYPED_TEST(PagedRecompute, AfterEvictionADecodeStepSeesExactlyTheKeptRows) {
  using Scalar = TypeParam;
  Random rng(700);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const auto w = attn_test::random_weights<Scalar>(cfg, rng);
  const attn::SelfAttention<Scalar> layer(cfg, w);
  const attn_test::ReferenceWeights r = attn_test::reference_weights(w);
  constexpr Index sinks = 4, window = 20, prompt = 100, steps = 40;
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(prompt, cfg.model_dim);
  const attn::Matrix<Scalar> z = rng.uniform_matrix<Scalar>(steps, cfg.model_dim);
  auto pool = layer.make_paged_cache(16, 16);
  const SequenceId a = pool.create();
  (void)layer(x.topRows(37), pool, a);
  (void)layer(x.bottomRows(prompt - 37), pool, a);
  const SequenceId whole = pool.fork(a);  // keeps all 100
  const MatrixD whole_keys = paged_rows(pool.keys(whole));
  pool.evict(a, sinks, window);
  attn::Matrix<Scalar> kept = stack<Scalar>(x.topRows(sinks), x.bottomRows(window));
  EXPECT_EQ(pool.size(a), sinks + window);
  EXPECT_EQ(pool.position(a), prompt);
  for (Index t = 0; t < steps; ++t) {
    const attn::Matrix<Scalar> y = layer(z.row(t), pool, a);
    kept = stack<Scalar>(kept, z.row(t));
    const MatrixD expected =
        attn_test::reference_mha(z.row(t), kept, w, cfg.num_heads, cfg.kv_heads());
    EXPECT_TRUE(
        attn_test::matrix_near(y, expected,
                               attn_test::layer_tolerance<Scalar>(cfg.model_dim, cfg.model_dim,
                                                                  cfg.head_dim(), kept.rows())))
        << "step " << t;
    EXPECT_EQ(pool.position(a), prompt + t + 1);
    // The pool holds the kept tokens' keys, in order.
    EXPECT_TRUE(attn_test::matrix_near(paged_rows(pool.keys(a)),
                                       attn_test::reference_linear(kept, r.k_weight, r.k_bias),
                                       attn_test::layer_tolerance<Scalar>(cfg.model_dim, 0, 0, 1)))
        << "step " << t;
    pool.evict(a, sinks, window);
    if (kept.rows() > sinks + window)
      kept = stack<Scalar>(kept.topRows(sinks), kept.bottomRows(window));
    EXPECT_EQ(pool.size(a), kept.rows());
    // The sinks' page, and the window's 20 rows across at most three pages.
    EXPECT_LE(pages_of(pool.keys(a), 16).size(), 4u) << "step " << t;
  }
  EXPECT_TRUE(same_rows(paged_rows(pool.keys(whole)), whole_keys));
  EXPECT_EQ(pool.size(whole), prompt);
}

// Beam search: three beams forked from a prompt decode five steps each (one batched call per
// step), are reordered (beam 0 takes beam 2's history, beams 1 and 2 beam 0's), and decode on.
// Every beam's next steps equal a fresh sequence fed its source's history.
TYPED_TEST(PagedRecompute, ReorderedBeamsContinueTheirSourcesHistories) {
  using Scalar = TypeParam;
  Random rng(800);
  const MultiHeadConfig cfg = config(16, 4, 2);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> prompt = rng.uniform_matrix<Scalar>(30, cfg.model_dim);
  auto pool = layer.make_paged_cache(24, 16);
  const SequenceId p = pool.create();
  (void)layer(prompt, pool, p);
  std::vector<SequenceId> beams = {pool.fork(p), pool.fork(p), pool.fork(p)};
  pool.drop(p);
  std::vector<attn::Matrix<Scalar>> history(beams.size(), prompt);
  for (int step = 0; step < 5; ++step) {
    const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(3, cfg.model_dim);
    (void)layer.attend_batch(x, pool, beams);
    for (std::size_t b = 0; b < beams.size(); ++b)
      history[b] = stack<Scalar>(history[b], x.row(Index(b)));
  }
  const std::uint64_t copies = pool.page_copies();
  pool.reorder(beams, {2, 0, 0});
  EXPECT_EQ(pool.page_copies(), copies);
  history = {history[2], history[0], history[0]};
  for (int step = 0; step < 3; ++step) {
    const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(3, cfg.model_dim);
    const attn::Matrix<Scalar> y = layer.attend_batch(x, pool, beams);
    for (std::size_t b = 0; b < beams.size(); ++b) {
      auto fresh = layer.make_cache(64);
      (void)layer(history[b], fresh);
      const attn::Matrix<Scalar> expected = layer(x.row(Index(b)), fresh);
      EXPECT_TRUE(attn_test::matrix_near(y.row(Index(b)), expected,
                                         cached_tolerance<Scalar>(cfg, history[b].rows() + 1)))
          << "beam " << b << ", step " << step;
      history[b] = stack<Scalar>(history[b], x.row(Index(b)));
    }
  }
}

// Speculative decoding: drafts verified in one call, as a chain or as a tree (attn::tree), then
// the rejected ones truncated; every output equals decoding the accepted tokens one by one from
// scratch.
TEST(PagedSpeculative, DraftsVerifiedInOneCallThenTruncated) {
  Random rng(4201);
  const attn::MultiHeadConfig cfg{/*model_dim*/ 32, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  const auto w = attn_test::random_weights<float>(cfg, rng);
  const attn::SelfAttention<float> layer(cfg, w);
  const attn::Matrix<float> prompt = rng.uniform_matrix<float>(30, cfg.model_dim);
  const attn::Matrix<float> drafts = rng.uniform_matrix<float>(4, cfg.model_dim);
  const attn::Matrix<float> next = rng.uniform_matrix<float>(1, cfg.model_dim);
  const double tol = attn_test::layer_tolerance<float>(cfg.model_dim, cfg.model_dim, 8, 40);
  // The last row of one causal pass over `rows`: what decoding them one by one gives last.
  const auto last_of = [&](const attn::Matrix<float>& rows) {
    return attn::Matrix<float>(layer(rows, attn::Mask::causal()).bottomRows(1));
  };
  const auto concat = [](std::initializer_list<attn::Matrix<float>> parts) {
    Index rows = 0;
    for (const auto& p : parts)
      rows += p.rows();
    attn::Matrix<float> all(rows, parts.begin()->cols());
    Index r = 0;
    for (const auto& p : parts) {
      all.middleRows(r, p.rows()) = p;
      r += p.rows();
    }
    return all;
  };

  attn::PagedKVCache<float> pool = layer.make_paged_cache(8, 16);
  const attn::SequenceId id = pool.create();
  layer(prompt, pool, id);

  // A chain of 4 drafts in one call: row t is what the prompt plus drafts 0…t give.
  const attn::Matrix<float> chain = layer(drafts, pool, id);
  for (Index t = 0; t < 4; ++t) {
    EXPECT_TRUE(
        attn_test::matrix_near(chain.row(t), last_of(concat({prompt, drafts.topRows(t + 1)})), tol))
        << "draft " << t;
  }
  // Two accepted: the others go, and the next token sees the prompt and the two.
  pool.truncate(id, pool.size(id) - 2);
  EXPECT_EQ(pool.size(id), 32);
  EXPECT_EQ(pool.position(id), 32);
  EXPECT_TRUE(attn_test::matrix_near(layer(next, pool, id),
                                     last_of(concat({prompt, drafts.topRows(2), next})), tol));

  // A tree of drafts, node t's parent parents[t]: each node sees the prefix and its ancestors.
  pool.truncate(id, 30);
  const std::vector<Index> parents{-1, 0, 0, 1};
  const attn::Matrix<float> tree = layer(drafts, pool, id, attn::tree(parents));
  const std::vector<std::vector<Index>> paths{{0}, {0, 1}, {0, 2}, {0, 1, 3}};
  for (Index t = 0; t < 4; ++t) {
    attn::Matrix<float> path(Index(paths[std::size_t(t)].size()), cfg.model_dim);
    for (std::size_t i = 0; i < paths[std::size_t(t)].size(); ++i)
      path.row(Index(i)) = drafts.row(paths[std::size_t(t)][i]);
    EXPECT_TRUE(attn_test::matrix_near(tree.row(t), last_of(concat({prompt, path})), tol))
        << "tree node " << t;
  }
  // Path 0 → 2 accepted: truncate to the tree's start, append the path again, go on.
  pool.truncate(id, 30);
  attn::Matrix<float> accepted(2, cfg.model_dim);
  accepted << drafts.row(0), drafts.row(2);
  layer(accepted, pool, id);
  EXPECT_TRUE(attn_test::matrix_near(layer(next, pool, id),
                                     last_of(concat({prompt, accepted, next})), tol));
}

}  // namespace
