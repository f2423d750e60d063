// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file scaled_dot_product.hpp
/// attn::scaled_dot_product_attention: the one kernel behind every attention in the library.

#include <cmath>
#include <deque>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/scheduler.hpp"
#include "error.hpp"
#include "mask.hpp"
#include "paged_view.hpp"
#include "parallel.hpp"
#include "score_mask.hpp"
#include "storage.hpp"
#include "types.hpp"
#include "workspace.hpp"

namespace attn {

/// Where a call stands in a larger problem (see AttentionOptions::positions).
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp partial_attention
struct Positions {
  /// Query row i stands at position first_query + i.
  Index first_query = 0;
  /// Key row j stands at position first_key + j.
  Index first_key = 0;
  /// Query head h is head first_head + h to score and mask functions (heads split across calls).
  Index first_head = 0;
};

/// Options of scaled_dot_product_attention beyond the mask.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp attention_options
struct AttentionOptions {
  /// Query heads H: q's columns are H blocks of head_dim.
  Index num_heads = 1;
  /// Key/value heads Hkv (H must be a multiple); 0 means H. Query head h reads kv head
  /// h / (H / Hkv): Hkv = 1 is multi-query, 1 < Hkv < H grouped-query attention.
  Index num_kv_heads = 0;
  /// Factor on q·k; empty means 1/√head_dim (1 when head_dim is 0).
  std::optional<double> scale;
  /// Logit soft-capping: logits become softcap·tanh(logits/softcap) before bias and masking;
  /// 0 turns it off.
  double softcap = 0;
  /// Where the work items run; empty means default_executor (OpenMP if compiled in, else serial).
  Executor executor;
  /// Scratch kept between calls (not owned); null means scratch allocated per call. With a
  /// workspace, repeated calls of one shape allocate nothing after the first (see Workspace).
  Workspace* workspace = nullptr;
  /// Where the call's queries and keys stand, for the mask: structured masks, key_length and
  /// score and mask functions then see these positions instead of the bottom-right alignment
  /// (first_query = m − n, first_key = 0), so that one block of a larger problem (some of its
  /// queries over a part of its keys) is computed under the larger problem's mask, and parts
  /// merge exactly with merge_partial_attention (attn/mpi.hpp splits sequences this way).
  /// key_length(count) then hides the keys at positions ≥ count, whatever the call's m. Explicit
  /// keep/bias matrices stay indexed by the call's rows and keys; mask parts tied to one shape
  /// (a tree, a per-head bias matrix, a BlockMap) are rejected with positions.
  std::optional<Positions> positions;

  /// num_kv_heads with 0 resolved to num_heads.
  Index kv_heads() const { return num_kv_heads == 0 ? num_heads : num_kv_heads; }
};

/// Optional outputs of the kernel beyond the attention result. Each is resized by the call (after
/// every check has passed) and left alone when null.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp extras
template <typename Scalar>
struct AttentionExtras {
  /// Out: n × H, the log-sum-exp of each row's logits (−∞ where no key is visible): what
  /// merge_partial_attention needs to combine results over disjoint key sets.
  Matrix<Scalar>* log_sum_exp = nullptr;
  /// Out: the attention weights softmax(logits): (H·n) × m with head h in rows [h·n, (h+1)·n),
  /// or n × m averaged over heads if average_heads. Opt-in for inspection and pictures: it costs
  /// a second pass over the logits and n×m memory; calls without it never pay for it.
  Matrix<Scalar>* weights = nullptr;
  /// With weights: average over heads instead of one block per head.
  bool average_heads = false;
};

namespace detail {

/// A Mask or a ScoreMask, as the kernel's entry points take them.
template <typename M>
inline constexpr bool is_mask_argument = false;
template <>
inline constexpr bool is_mask_argument<Mask> = true;
template <typename S, typename M, typename B>
inline constexpr bool is_mask_argument<ScoreMask<S, M, B>> = true;

/// Every mask argument as a ScoreMask: a plain Mask wrapped (a copy of its shared pointers), a
/// ScoreMask as it is.
inline ScoreMask<> as_score_mask(const Mask& mask) {
  return ScoreMask<>(mask);
}
template <typename S, typename M, typename B>
const ScoreMask<S, M, B>& as_score_mask(const ScoreMask<S, M, B>& mask) {
  return mask;
}

/// The checks of a call that need its shape but not its data: the mask (base and functions' parts
/// tied to a shape) fits n queries and m keys, a double bias fits a float call, scale and softcap
/// are valid. Returns the scale to use.
/// make_problem runs them, and so does a caller that must validate before it changes anything
/// (SelfAttention, before it appends to a KVCache). `who` prefixes every message.
template <typename Scalar, typename SM>
double check_mask_and_options(const char* who, Index n, Index m, Index head_dim,
                              const SM& score_mask, const AttentionOptions& options) {
  const Mask& mask = score_mask.base();
  mask.check_shape(who, n, m, !options.positions.has_value());
  if (options.positions &&
      (one_sequence_v<typename SM::score_type> || one_sequence_v<typename SM::mask_type> ||
       one_sequence_v<typename SM::blocks_type>)) {
    throw_shape_error(who,
                      ": options.positions is set, but a mask part is tied to one shape (a tree, "
                      "a per-head bias matrix, a BlockMap), which positions would not move");
  }
  check_score_mask(score_mask, who, n, m, options.num_heads);
  if constexpr (std::is_same_v<Scalar, float>) {
    // A double bias is converted to float for a float call: a value beyond float's range would
    // become +inf (a large negative one becomes −inf, which only hides the key, as intended).
    if (const Matrix<double>* bias = mask.bias_matrix<double>()) {
      for (Index i = 0; i < bias->rows(); ++i) {
        for (Index j = 0; j < bias->cols(); ++j) {
          if ((*bias)(i, j) > double(std::numeric_limits<float>::max())) {
            throw_shape_error(who, ": mask bias(", i, ", ", j, ") is ", (*bias)(i, j),
                              ", beyond the range of float in a float call");
          }
        }
      }
    }
  }
  const double scale =
      options.scale ? *options.scale : (head_dim > 0 ? 1.0 / std::sqrt(double(head_dim)) : 1.0);
  if (!is_finite(scale)) throw_shape_error(who, ": scale is ", scale, ", expected finite");
  if (!is_finite(options.softcap) || !(options.softcap >= 0)) {
    throw_shape_error(who, ": softcap is ", options.softcap, ", expected finite and >= 0");
  }
  return scale;
}

/// Validates shapes and options and fills an AttentionProblem; `who` prefixes every message.
template <typename Scalar, typename QS, typename KS, typename VS, typename SM>
AttentionProblem<Scalar, QS, KS, VS> make_problem(const char* who, const ConstMatrixRef<QS>& q,
                                                  const key_value_view_t<KS>& k,
                                                  const key_value_view_t<VS>& v,
                                                  MatrixRef<Scalar>& out, const SM& mask,
                                                  const AttentionOptions& options,
                                                  const AttentionExtras<Scalar>& extras = {}) {
  const Index heads = options.num_heads;
  const Index kv_heads = options.kv_heads();
  if (heads < 1) throw_shape_error(who, ": num_heads is ", heads, ", expected >= 1");
  if (kv_heads < 1 || heads % kv_heads != 0) {
    throw_shape_error(who, ": num_kv_heads is ", kv_heads, ", expected a divisor of num_heads ",
                      heads);
  }
  if (q.cols() % heads != 0) {
    throw_shape_error(who, ": q is ", shape_string(q),
                      ", expected q.cols() a multiple of num_heads ", heads);
  }
  const Index d = q.cols() / heads;
  if (k.cols() != kv_heads * d) {
    throw_shape_error(who, ": k is ", shape_string(k.rows(), k.cols()), " and q is ",
                      shape_string(q), ", expected k.cols() = num_kv_heads*head_dim = ", kv_heads,
                      "*", d, " = ", kv_heads * d);
  }
  if (v.rows() != k.rows()) {
    throw_shape_error(who, ": v is ", shape_string(v.rows(), v.cols()), " and k is ",
                      shape_string(k.rows(), k.cols()),
                      ", expected v.rows() = k.rows() = ", k.rows());
  }
  if (v.cols() % kv_heads != 0) {
    throw_shape_error(who, ": v is ", shape_string(v.rows(), v.cols()),
                      ", expected v.cols() a multiple of num_kv_heads ", kv_heads);
  }
  const Index dv = v.cols() / kv_heads;
  if constexpr (std::is_same_v<stored_t<KS>, qint8>) {
    if (k.group() != d) {
      throw_shape_error(who, ": k is qint8 in groups of ", k.group(),
                        ", expected groups of one head's row, head_dim = ", d);
    }
  }
  if constexpr (std::is_same_v<stored_t<VS>, qint8>) {
    if (v.group() != dv) {
      throw_shape_error(who, ": v is qint8 in groups of ", v.group(),
                        ", expected groups of one head's row, value_dim = ", dv);
    }
  }
  if (out.rows() != q.rows() || out.cols() != heads * dv) {
    throw_shape_error(who, ": out is ", shape_string(out), ", expected ",
                      shape_string(q.rows(), heads * dv), " (q.rows() x num_heads*value_dim)");
  }
  const double scale = check_mask_and_options<Scalar>(who, q.rows(), k.rows(), d, mask, options);
  AttentionProblem<Scalar, QS, KS, VS> problem{
      ConstMatrixView<QS>(q.data(), q.rows(), q.cols(), Eigen::OuterStride<>(q.outerStride())),
      k,
      v,
      MatrixView<Scalar>(out.data(), out.rows(), out.cols(),
                         Eigen::OuterStride<>(out.outerStride())),
      heads,
      kv_heads,
      d,
      dv,
      static_cast<Scalar>(scale),
      static_cast<Scalar>(options.softcap)};
  if (options.positions) {
    problem.first_query_position = options.positions->first_query;
    problem.first_key_position = options.positions->first_key;
    problem.first_head = options.positions->first_head;
  } else {
    problem.first_query_position = k.rows() - q.rows();  // bottom-right alignment
  }
  // Every check has passed: the extras may be resized now.
  if (extras.log_sum_exp != nullptr) {
    extras.log_sum_exp->resize(q.rows(), heads);
    problem.lse = extras.log_sum_exp->data();
    problem.lse_stride = heads;
  }
  if (extras.weights != nullptr) {
    extras.weights->setZero(heads * q.rows(), k.rows());
    problem.weights = extras.weights->data();
    problem.weights_stride = k.rows();
  }
  return problem;
}

/// How the kernel reads a k or v argument: any Eigen expression (of float, double, bfloat16 or
/// half) bound as a row-major view, evaluated once if it is not row-major storage; a
/// QuantizedView or QuantizedMatrix as it is.
template <typename Argument>
class KeyValueArgument {
 public:
  using Storage = typename Argument::Scalar;
  explicit KeyValueArgument(const Argument& argument) : m_ref(argument) {}
  StorageView<Storage> view() const {
    return StorageView<Storage>(m_ref.data(), m_ref.rows(), m_ref.cols(),
                                Eigen::OuterStride<>(m_ref.outerStride()));
  }

 private:
  ConstMatrixRef<Storage> m_ref;
};
template <>
class KeyValueArgument<QuantizedView> {
 public:
  using Storage = qint8;
  explicit KeyValueArgument(const QuantizedView& argument) : m_view(argument) {}
  QuantizedView view() const { return m_view; }

 private:
  QuantizedView m_view;
};
template <>
class KeyValueArgument<QuantizedMatrix> : public KeyValueArgument<QuantizedView> {
 public:
  explicit KeyValueArgument(const QuantizedMatrix& argument)
      : KeyValueArgument<QuantizedView>(argument.view()) {}
};
template <typename S>
class KeyValueArgument<PagedView<S>> {
 public:
  using Storage = Paged<S>;
  explicit KeyValueArgument(const PagedView<S>& argument) : m_view(argument) {}
  PagedView<S> view() const { return m_view; }

 private:
  PagedView<S> m_view;
};

/// The Scalar a call computes and returns in: float for queries in float, bfloat16 or half,
/// double for double.
template <typename DQ>
using result_t = compute_t<typename DQ::Scalar>;

template <typename DQ, typename K, typename V>
constexpr void check_storage() {
  using QS = typename DQ::Scalar;
  using Scalar = compute_t<QS>;
  static_assert(std::is_same_v<QS, float> || std::is_same_v<QS, double> ||
                    std::is_same_v<QS, bfloat16> || std::is_same_v<QS, half>,
                "attn::scaled_dot_product_attention: q must be float, double, attn::bfloat16 or "
                "attn::half");
  static_assert(is_storage_for<Scalar, stored_t<typename KeyValueArgument<K>::Storage>> &&
                    is_storage_for<Scalar, stored_t<typename KeyValueArgument<V>::Storage>>,
                "attn::scaled_dot_product_attention: k and v must be stored as q's compute type "
                "(double with double q) or, with float, bfloat16 or half q, in float, "
                "attn::bfloat16, attn::half or attn::qint8; cast one of them");
}

/// Turns per-head weights (H·n) × m into their average over heads, n × m, in place.
template <typename Scalar>
void average_head_weights(Matrix<Scalar>& weights, Index heads) {
  const Index n = weights.rows() / heads;
  Matrix<Scalar> average = weights.topRows(n);
  for (Index h = 1; h < heads; ++h)
    average += weights.middleRows(h * n, n);
  weights = average / Scalar(heads);
}

}  // namespace detail

/// Scaled dot-product attention, written into `out`:
/// \f$\mathrm{out} = \mathrm{softmax}(Q K^\top \cdot \mathrm{scale} + \mathrm{mask}) V\f$ per head.
///
/// Single head: q (n, d), k (m, d), v (m, dv) -> out (n, dv). With options.num_heads = H and
/// options.num_kv_heads = Hkv, heads are column blocks: q (n, H·d), k (m, Hkv·d),
/// v (m, Hkv·dv) -> out (n, H·dv), query head h reading kv head h / (H / Hkv).
///
/// \param q      In: any Eigen expression of float, double, attn::bfloat16 or attn::half. Row-major
///               storage (a Matrix, a block, a Map with a row stride) is read in place; anything
///               else is evaluated once.
/// \param k,v    In: as q, each stored in q's compute type or, when it is float, in float,
///               attn::bfloat16, attn::half (any mix), or attn::qint8 (a QuantizedMatrix or
///               QuantizedView in groups of one head's row); or a PagedView of any of these (a
///               sequence of a PagedKVCache), read through its table of runs. Reduced storage is converted as
///               it is read (decoding: in registers; prefill: a head's K and V once into the
///               worker's scratch, or block by block), and everything accumulates in float
///               (see storage.hpp).
/// \param out    Out: row-major storage of shape (n, H·dv) in the compute type (float for float,
///               bfloat16 or half queries, double for double), e.g. a row block of a larger matrix.
/// \param mask   Which keys each query sees (see attn::Mask); bottom-right aligned.
/// \param options heads, scale, soft-cap, executor.
/// \param extras  optional outputs: log-sum-exp per row and head, attention weights.
///
/// n = 0 gives an empty result; m = 0, or a row whose keys are all masked, gives zero rows.
/// A NaN in q, k, v or the bias makes NaN exactly the output rows that see it (a key hidden by
/// the mask reaches no row, even through a zero weight); under -ffinite-math-only (part of
/// -ffast-math) the compiler assumes there is no NaN, and NaN inputs are outside this contract.
/// Masks, −∞ biases and rows that see nothing behave the same under any flags. Values are summed
/// before the softmax's division: |v| times the number of visible keys must stay below the
/// largest finite Scalar.
/// The result does not depend on the executor or the number of threads: it is bitwise the same
/// for any of them (work is split by shape only, and partial results merge in a fixed order).
/// Never allocates an n×m matrix: memory is O((n + m)·H·d) whatever the mask, plus, per thread
/// and at most 64 MiB, a contiguous copy of one head's K and V when heads share rows.
/// \throws ShapeError (a std::invalid_argument) naming the argument and both shapes when the
///         shapes disagree, num_heads/num_kv_heads do not divide, the mask has the wrong shape,
///         or scale/softcap are not finite; out is then untouched.
template <typename DQ, typename K, typename V, typename M = Mask,
          typename = std::enable_if_t<detail::is_mask_argument<M>>>
void scaled_dot_product_attention_into(const Eigen::MatrixBase<DQ>& q, const K& k, const V& v,
                                       MatrixRef<detail::result_t<DQ>> out, const M& mask = M(),
                                       const AttentionOptions& options = {},
                                       const AttentionExtras<detail::result_t<DQ>>& extras = {}) {
  detail::check_storage<DQ, K, V>();
  using Scalar = detail::result_t<DQ>;
  using QS = typename DQ::Scalar;
  using KS = typename detail::KeyValueArgument<K>::Storage;
  using VS = typename detail::KeyValueArgument<V>::Storage;
  const ConstMatrixRef<QS> q_ref(q);
  const detail::KeyValueArgument<K> k_arg(k);
  const detail::KeyValueArgument<V> v_arg(v);
  const auto& score_mask = detail::as_score_mask(mask);
  const auto problem =
      detail::make_problem<Scalar, QS, KS, VS>("scaled_dot_product_attention", q_ref, k_arg.view(),
                                               v_arg.view(), out, score_mask, options, extras);
  detail::run_attention(problem, score_mask, options.executor, options.workspace);
  if (extras.weights != nullptr && extras.average_heads) {
    detail::average_head_weights(*extras.weights, options.num_heads);
  }
}

/// Scaled dot-product attention, returning a new (n, H·dv) matrix; see
/// scaled_dot_product_attention_into for the contract.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp scaled_dot_product
template <typename DQ, typename K, typename V, typename M = Mask,
          typename = std::enable_if_t<detail::is_mask_argument<M>>>
Matrix<detail::result_t<DQ>> scaled_dot_product_attention(
    const Eigen::MatrixBase<DQ>& q, const K& k, const V& v, const M& mask = M(),
    const AttentionOptions& options = {},
    const AttentionExtras<detail::result_t<DQ>>& extras = {}) {
  detail::check_storage<DQ, K, V>();
  using Scalar = detail::result_t<DQ>;
  const Index heads = options.num_heads;
  const Index kv_heads = options.kv_heads();
  // The output's width needs valid head counts; make_problem reports anything else.
  const Index value_width =
      (heads >= 1 && kv_heads >= 1 && v.cols() % kv_heads == 0) ? heads * (v.cols() / kv_heads) : 0;
  Matrix<Scalar> out(q.rows(), value_width);
  scaled_dot_product_attention_into(q, k, v, out, mask, options, extras);
  return out;
}

/// Scaled dot-product attention over a batch of sequences of different lengths in one parallel
/// call, written into `out`: sequence b's query rows, query_rows[b] of them, are packed row-wise
/// in q (sequence 0 first), and it attends over k[b] and v[b] under `mask` (aligned bottom-right
/// within each sequence); its output rows go to the same rows of out. Typically the sequences of
/// a PagedKVCache (k[b] = pool.keys(id_b)), each advanced by one token or a few.
///
/// The work items are those of every sequence's own call (key splits of a decode, query blocks of
/// a prefill), spread over the executor's workers together, and each sequence's results are
/// merged exactly as its own call merges them: the result is bitwise identical to B separate
/// calls of scaled_dot_product_attention_into, for any executor and thread count. A decode step's
/// item is one key split of one sequence over all its heads (the heads walk each key row
/// together, which is what keeps a step at the memory's bandwidth); B sequences give the workers
/// B times a sequence's items. Each call allocates a few small vectors for the B problems (the
/// kernel's scratch comes from options.workspace as usual).
///
/// \param q          In: (Σ query_rows, H·d), as for scaled_dot_product_attention_into.
/// \param query_rows In: the rows of each sequence, each ≥ 0.
/// \param k,v        In: one key and one value argument per sequence (the same type for all), as
///                   for scaled_dot_product_attention_into (PagedView, matrices, views).
/// \param out        Out: (Σ query_rows, H·dv).
/// \param mask       A mask that fits every sequence: structured, or functions of positions
///                   (an explicit matrix or a key length fits only equal shapes).
/// \throws ShapeError if the counts of query_rows, k and v differ, query_rows do not sum to
///         q.rows(), or any sequence fails a check of scaled_dot_product_attention_into (the
///         message names the sequence); out is then untouched.
template <typename DQ, typename K, typename V, typename M = Mask,
          typename = std::enable_if_t<detail::is_mask_argument<M>>>
void scaled_dot_product_attention_batch_into(const Eigen::MatrixBase<DQ>& q,
                                             const std::vector<Index>& query_rows,
                                             const std::vector<K>& k, const std::vector<V>& v,
                                             MatrixRef<detail::result_t<DQ>> out,
                                             const M& mask = M(),
                                             const AttentionOptions& options = {}) {
  detail::check_storage<DQ, K, V>();
  using Scalar = detail::result_t<DQ>;
  using QS = typename DQ::Scalar;
  using KS = typename detail::KeyValueArgument<K>::Storage;
  using VS = typename detail::KeyValueArgument<V>::Storage;
  constexpr const char* who = "scaled_dot_product_attention_batch";
  if (k.size() != query_rows.size() || v.size() != query_rows.size()) {
    detail::throw_shape_error(who, ": ", query_rows.size(), " query_rows, ", k.size(), " k and ",
                              v.size(), " v, expected one of each per sequence");
  }
  Index rows = 0;
  for (std::size_t b = 0; b < query_rows.size(); ++b) {
    if (query_rows[b] < 0) {
      detail::throw_shape_error(who, ": query_rows[", b, "] is ", query_rows[b], ", expected >= 0");
    }
    rows += query_rows[b];
  }
  if (rows != q.rows() || out.rows() != q.rows()) {
    detail::throw_shape_error(who, ": query_rows sum to ", rows, ", q is ", detail::shape_string(q),
                              " and out is ", detail::shape_string(out),
                              ", expected q.rows() = out.rows() = ", rows);
  }
  if (options.positions) {
    detail::throw_shape_error(who,
                              ": options.positions describes one sequence, expected none in a "
                              "batch (each sequence's positions count from its start)");
  }
  const ConstMatrixRef<QS> q_ref(q);
  const auto& score_mask = detail::as_score_mask(mask);
  using Problem = detail::AttentionProblem<Scalar, QS, KS, VS>;
  std::vector<Problem> problems;
  problems.reserve(query_rows.size());
  // The arguments as bound (an expression that is not row-major storage is evaluated into its
  // binding), kept in place while the problems point into them.
  std::deque<detail::KeyValueArgument<K>> k_args;
  std::deque<detail::KeyValueArgument<V>> v_args;
  Index first = 0;
  for (std::size_t b = 0; b < query_rows.size(); ++b) {
    const Index n = query_rows[b];
    const ConstMatrixRef<QS> q_b(q_ref.middleRows(first, n));
    MatrixRef<Scalar> out_b(out.middleRows(first, n));
    k_args.emplace_back(k[b]);
    v_args.emplace_back(v[b]);
    // The sequence's index joins the message only when a check fails: no string per call.
    try {
      problems.push_back(detail::make_problem<Scalar, QS, KS, VS>(
          who, q_b, k_args.back().view(), v_args.back().view(), out_b, score_mask, options));
    } catch (const ShapeError& e) {
      throw ShapeError(std::string(e.what()) + " (sequence " + std::to_string(b) + ")");
    }
    first += n;
  }
  detail::run_attention_batch(problems.data(), problems.size(), score_mask, options.executor,
                              options.workspace);
}

}  // namespace attn
