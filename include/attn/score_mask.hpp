// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file score_mask.hpp
/// attn::ScoreMask: programmable attention. A score function and a mask function compiled into
/// the kernel's tiles, with block-level knowledge so that hidden key blocks are never read.

#include <type_traits>
#include <utility>

#include "detail/score_mask_parts.hpp"
#include "mask.hpp"
#include "types.hpp"

namespace attn {

/// Everything the kernel does to the logits: a structured or explicit attn::Mask (the `base`), a
/// score function, a mask function and a block predicate, each optional. Every function is a
/// template parameter: a lambda (with captures) or a functor is inlined into the kernel's loops,
/// with no step at run time other than calling it.
///
/// **Positions.** The functions see absolute positions, aligned bottom-right like attn::Mask: for
/// n queries and m keys, query row i stands at position q = i + m − n and key row j at k = j.
/// A decoding step over a KVCache (n = 1, m cached) is therefore query m − 1, chunked prefill
/// continues where the cache ends, and `q >= k` is causal in every case:
///
///     keys k:        0  1  2  3  4  5         n = 3 queries, m = 6 keys:
///     query row 0    .  .  .  q=3             query row i stands at q = i + 3
///     query row 1    .  .  .  .  q=4
///     query row 2    .  .  .  .  .  q=5
///
/// When n > m the first n − m queries stand at negative positions. In the functors' packed
/// batches the positions count from the start of each sequence (and of its keys), so a function
/// sees one sequence at a time.
///
/// **The hooks.**
/// - score function `(score, head, q, k) → score`, on the scaled logit after soft-capping and
///   before the base mask's bias; −∞ hides the key. Called for every visible pair (never for a
///   block the mask functions hide), so it must be cheap and pure. For the backward pass it must
///   be differentiable: give its derivative (score_function(fn, derivative)), or make it additive
///   (score_bias); the built-ins alibi, relative_position_bias and head_bias are.
/// - mask function `(head, q, k) → bool` or `(q, k) → bool`, true where query q may see key k. The
///   two-argument form says the pattern is the same for every head (a BlockMap then holds one
///   plane instead of one per head).
/// - block predicate `(head, q_begin, q_end, k_begin, k_end) → attn::Visibility` (or without
///   head), for the positions q_begin ≤ q < q_end, k_begin ≤ k < k_end: Visibility::none if no
///   query of the block sees any key of it, Visibility::all if every query sees every key, else
///   Visibility::partial. It must agree with the mask function (partial is always safe). Without
///   one, every block is partial and the mask function is evaluated per pair; build a BlockMap
///   once to skip hidden blocks.
/// Composition with `&`: a key is visible iff every part lets it through; score functions apply
/// left to right. A query row that sees no key gets a zero row (and a log-sum-exp of −∞).
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp score_mask
template <typename ScoreFn = detail::NoScore, typename MaskFn = detail::NoMaskFunction,
          typename BlockFn = detail::NoBlocks>
class ScoreMask {
 public:
  /// The score function's type.
  using score_type = ScoreFn;
  /// The mask function's type.
  using mask_type = MaskFn;
  /// The block predicate's type.
  using blocks_type = BlockFn;

  /// No mask: every key visible, logits unchanged.
  ScoreMask() = default;
  /// A plain attn::Mask, as a ScoreMask without functions (implicit: every Mask is one).
  template <typename S = ScoreFn, typename M = MaskFn, typename B = BlockFn,
            typename = std::enable_if_t<std::is_same_v<S, detail::NoScore> &&
                                        std::is_same_v<M, detail::NoMaskFunction> &&
                                        std::is_same_v<B, detail::NoBlocks>>>
  ScoreMask(Mask base) : m_base(std::move(base)) {}  // NOLINT: implicit on purpose
  /// The parts as they are; score_function, mask_function and `&` build these.
  ScoreMask(Mask base, ScoreFn score, MaskFn mask, BlockFn blocks)
      : m_base(std::move(base)),
        m_score(std::move(score)),
        m_mask(std::move(mask)),
        m_blocks(std::move(blocks)) {}

  /// The structured or explicit part.
  const Mask& base() const { return m_base; }
  /// The score function (detail::NoScore when none).
  const ScoreFn& score() const { return m_score; }
  /// The mask function (detail::NoMaskFunction when none).
  const MaskFn& mask() const { return m_mask; }
  /// The block predicate (detail::NoBlocks when none).
  const BlockFn& blocks() const { return m_blocks; }

  /// The same score and mask with block visibility taken from a predicate of the user's, or from
  /// a BlockMap built for this ScoreMask (which must outlive the copy).
  template <typename Blocks>
  ScoreMask<ScoreFn, MaskFn, detail::BlockPredicate<Blocks>> with_blocks(Blocks blocks) const {
    return {m_base, m_score, m_mask, detail::BlockPredicate<Blocks>{std::move(blocks)}};
  }

  /// True if the kernel calls a score function.
  static constexpr bool has_score = !std::is_same_v<ScoreFn, detail::NoScore>;
  /// True if the kernel calls a mask function.
  static constexpr bool has_mask_function = !std::is_same_v<MaskFn, detail::NoMaskFunction>;
  /// True if some part describes a single sequence (an explicit matrix, a key length, or a
  /// built-in tied to one shape, such as a tree or a per-head bias).
  bool one_sequence() const {
    return m_base.has_explicit() || m_base.has_key_length() || detail::one_sequence_v<ScoreFn> ||
           detail::one_sequence_v<MaskFn> || detail::one_sequence_v<BlockFn>;
  }

  /// Adds (and-s) a plain mask: the base masks intersect.
  friend ScoreMask operator&(const ScoreMask& a, const Mask& b) {
    return {a.m_base & b, a.m_score, a.m_mask, a.m_blocks};
  }
  /// Both: `a`'s parts and `b`'s (the same as `b & a`).
  friend ScoreMask operator&(const Mask& a, const ScoreMask& b) { return b & a; }

 private:
  Mask m_base;
  ScoreFn m_score{};
  MaskFn m_mask{};
  BlockFn m_blocks{};
};

/// Both score masks at once: bases intersected, mask functions and-ed (and their block
/// predicates), score functions applied a's first.
template <typename S1, typename M1, typename B1, typename S2, typename M2, typename B2>
auto operator&(const ScoreMask<S1, M1, B1>& a, const ScoreMask<S2, M2, B2>& b) {
  auto score = detail::then_score(a.score(), b.score());
  auto mask = detail::and_mask(a.mask(), b.mask());
  auto blocks = detail::and_blocks(detail::effective_blocks(a.mask(), a.blocks()),
                                   detail::effective_blocks(b.mask(), b.blocks()));
  return ScoreMask<decltype(score), decltype(mask), decltype(blocks)>(
      a.base() & b.base(), std::move(score), std::move(mask), std::move(blocks));
}

/// A score function `(score, head, q, k) → score` on the scaled logits (see ScoreMask).
template <typename Fn>
ScoreMask<Fn> score_function(Fn fn) {
  using Bound = detail::bound_part_t<Fn>;
  static_assert(std::is_invocable_r_v<float, const Bound&, float, Index, Index, Index> ||
                    std::is_invocable_r_v<double, const Bound&, double, Index, Index, Index>,
                "attn::score_function: the function must be callable as "
                "score(float or double score, Index head, Index query, Index key) and return the "
                "new score");
  return {Mask(), std::move(fn), {}, {}};
}

/// A score function with its derivative, for the backward pass (attn/gradients.hpp):
/// `derivative(score, head, q, k)` returns ∂fn(score, head, q, k)/∂score at that score. The
/// forward calls only `fn`; the backward calls both for every pair of the blocks it visits
/// (pairs a mask hides within them included, whose results it discards), so both must be pure.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp score_derivative
template <typename Fn, typename Derivative>
ScoreMask<detail::DifferentiableScore<Fn, Derivative>> score_function(Fn fn,
                                                                      Derivative derivative) {
  static_assert(std::is_invocable_r_v<float, const Fn&, float, Index, Index, Index> ||
                    std::is_invocable_r_v<double, const Fn&, double, Index, Index, Index>,
                "attn::score_function: the function must be callable as "
                "score(float or double score, Index head, Index query, Index key) and return the "
                "new score");
  static_assert(std::is_invocable_r_v<float, const Derivative&, float, Index, Index, Index> ||
                    std::is_invocable_r_v<double, const Derivative&, double, Index, Index, Index>,
                "attn::score_function: the derivative must be callable as "
                "derivative(float or double score, Index head, Index query, Index key) and return "
                "d score_function / d score");
  return {Mask(), {std::move(fn), std::move(derivative)}, {}, {}};
}

/// An additive score function: score + bias(head, q, k), the bias a float or double; −∞ hides
/// the key. The backward pass differentiates it with nothing more from the user (its derivative
/// is 1; the bias itself gets no gradient).
template <typename Fn>
ScoreMask<detail::ScoreBias<Fn>> score_bias(Fn bias) {
  static_assert(std::is_invocable_r_v<double, const Fn&, Index, Index, Index>,
                "attn::score_bias: the function must be callable as bias(Index head, Index query, "
                "Index key) and return a float or double");
  return {Mask(), {std::move(bias)}, {}, {}};
}

/// A mask function `(head, q, k) → bool` or `(q, k) → bool`, true where query q may see key k
/// (see ScoreMask); without a block predicate every block is partial.
template <typename Fn>
ScoreMask<detail::NoScore, Fn> mask_function(Fn fn) {
  static_assert(detail::is_mask_function<Fn>,
                "attn::mask_function: the function must be callable as bool(Index head, Index "
                "query, Index key) or bool(Index query, Index key), true where the key is visible");
  return {Mask(), {}, std::move(fn), {}};
}

/// A mask function with its block predicate `(head, q_begin, q_end, k_begin, k_end) →
/// Visibility` (or without head), which must agree with it.
template <typename Fn, typename Blocks>
ScoreMask<detail::NoScore, Fn, detail::BlockPredicate<Blocks>> mask_function(Fn fn, Blocks blocks) {
  static_assert(detail::is_mask_function<Fn>,
                "attn::mask_function: the function must be callable as bool(Index head, Index "
                "query, Index key) or bool(Index query, Index key), true where the key is visible");
  return {Mask(), {}, std::move(fn), detail::BlockPredicate<Blocks>{std::move(blocks)}};
}

}  // namespace attn
