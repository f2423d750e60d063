// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/score_mask_bind.hpp
/// A ScoreMask bound to one call. A part that depends on the call's shape (a tree over the last
/// keys, a per-head bias matrix, a table of relative-position buckets) has `check(who, n, m,
/// heads)`, run before anything changes, and `bind(n, m, heads)`, which returns what the tiles
/// call; any other part (a user's lambda) is called where it is, by reference.

#include <type_traits>
#include <utility>

#include "../score_mask.hpp"
#include "../types.hpp"
#include "score_mask_parts.hpp"

namespace attn::detail {

template <typename T, typename = void>
struct has_check : std::false_type {};
template <typename T>
struct has_check<
    T, std::void_t<decltype(std::declval<const T&>().check("", Index(), Index(), Index()))>>
    : std::true_type {};

template <typename Part>
void check_part(const Part& part, const char* who, Index n, Index m, Index heads) {
  if constexpr (has_check<Part>::value) part.check(who, n, m, heads);
  (void)part, (void)who, (void)n, (void)m, (void)heads;
}
template <typename A, typename B>
void check_part(const ThenScore<A, B>& p, const char* who, Index n, Index m, Index heads) {
  check_part(p.first, who, n, m, heads);
  check_part(p.second, who, n, m, heads);
}
template <typename A, typename B>
void check_part(const AndMask<A, B>& p, const char* who, Index n, Index m, Index heads) {
  check_part(p.first, who, n, m, heads);
  check_part(p.second, who, n, m, heads);
}
template <typename A, typename B>
void check_part(const AndBlocks<A, B>& p, const char* who, Index n, Index m, Index heads) {
  check_part(p.first, who, n, m, heads);
  check_part(p.second, who, n, m, heads);
}
template <typename Fn>
void check_part(const BlockPredicate<Fn>& p, const char* who, Index n, Index m, Index heads) {
  check_part(p.fn, who, n, m, heads);
}

/// \throws ShapeError naming `who` if a part of `mask` does not fit n queries, m keys and
///         `heads` query heads (its base Mask is checked with the call's other options).
template <typename SM>
void check_score_mask(const SM& mask, const char* who, Index n, Index m, Index heads) {
  check_part(mask.score(), who, n, m, heads);
  check_part(mask.mask(), who, n, m, heads);
  check_part(mask.blocks(), who, n, m, heads);
}

template <typename Part>
decltype(auto) bind_part(const Part& part, Index n, Index m, Index heads) {
  if constexpr (has_bind<Part>::value) {
    return part.bind(n, m, heads);
  } else {
    (void)n, (void)m, (void)heads;
    return (part);  // by reference
  }
}
template <typename A, typename B>
auto bind_part(const ThenScore<A, B>& p, Index n, Index m, Index heads) {
  return ThenScore<decltype(bind_part(p.first, n, m, heads)),
                   decltype(bind_part(p.second, n, m, heads))>{bind_part(p.first, n, m, heads),
                                                               bind_part(p.second, n, m, heads)};
}
template <typename A, typename B>
auto bind_part(const AndMask<A, B>& p, Index n, Index m, Index heads) {
  return AndMask<decltype(bind_part(p.first, n, m, heads)),
                 decltype(bind_part(p.second, n, m, heads))>{bind_part(p.first, n, m, heads),
                                                             bind_part(p.second, n, m, heads)};
}
template <typename A, typename B>
auto bind_part(const AndBlocks<A, B>& p, Index n, Index m, Index heads) {
  using First =
      std::remove_cv_t<std::remove_reference_t<decltype(bind_part(p.first, n, m, heads))>>;
  using Second =
      std::remove_cv_t<std::remove_reference_t<decltype(bind_part(p.second, n, m, heads))>>;
  return AndBlocks<First, Second>{bind_part(p.first, n, m, heads),
                                  bind_part(p.second, n, m, heads)};
}
template <typename Fn>
auto bind_part(const BlockPredicate<Fn>& p, Index n, Index m, Index heads) {
  using Bound = std::remove_cv_t<std::remove_reference_t<decltype(bind_part(p.fn, n, m, heads))>>;
  if constexpr (std::is_same_v<Bound, Fn> && !has_bind<Fn>::value) {
    return BlockPredicate<const Fn&>{p.fn};
  } else {
    return BlockPredicate<Bound>{bind_part(p.fn, n, m, heads)};
  }
}

/// What the kernel's tiles call: a ScoreMask's parts bound to one call, positions absolute.
template <typename Scalar, typename SM>
class BoundScoreMask {
  using ScoreFn = typename SM::score_type;
  using MaskFn = typename SM::mask_type;
  using BlockFn = typename SM::blocks_type;
  using EffectiveBlocks =
      decltype(effective_blocks(std::declval<const MaskFn&>(), std::declval<const BlockFn&>()));
  using ScoreBound = decltype(bind_part(std::declval<const ScoreFn&>(), 0, 0, 0));
  using MaskBound = decltype(bind_part(std::declval<const MaskFn&>(), 0, 0, 0));
  using BlocksBound = decltype(bind_part(std::declval<const EffectiveBlocks&>(), 0, 0, 0));

 public:
  /// Whether a block predicate has anything to say (a mask function or a predicate is present).
  static constexpr bool has_blocks =
      !std::is_same_v<std::remove_cv_t<std::remove_reference_t<BlocksBound>>, AllBlocks>;

  BoundScoreMask(const SM& sm, Index n, Index m, Index heads)
      : m_effective(effective_blocks(sm.mask(), sm.blocks())),
        m_score(bind_part(sm.score(), n, m, heads)),
        m_mask(bind_part(sm.mask(), n, m, heads)),
        m_blocks(bind_part(m_effective, n, m, heads)) {}
  BoundScoreMask(const BoundScoreMask&) = delete;
  BoundScoreMask& operator=(const BoundScoreMask&) = delete;

  EIGEN_ALWAYS_INLINE Scalar score(Scalar s, Index h, Index q, Index k) const {
    if constexpr (SM::has_score) {
      return static_cast<Scalar>(m_score(s, h, q, k));
    } else {
      (void)h, (void)q, (void)k;
      return s;
    }
  }
  /// True if the score function leaves ∂score/∂logit at 1 (none, or additive).
  static constexpr bool score_additive = !SM::has_score || is_additive_score<ScoreBound>;
  /// True if the backward pass can differentiate the score function.
  static constexpr bool score_differentiable =
      !SM::has_score || is_differentiable_score<ScoreBound, Scalar>;
  /// ∂score(s, h, q, k)/∂s. Precondition: score_differentiable.
  EIGEN_ALWAYS_INLINE Scalar score_derivative(Scalar s, Index h, Index q, Index k) const {
    if constexpr (score_additive) {
      (void)s, (void)h, (void)q, (void)k;
      return Scalar(1);
    } else {
      return detail::score_derivative<Scalar>(m_score, s, h, q, k);
    }
  }
  EIGEN_ALWAYS_INLINE bool visible(Index h, Index q, Index k) const {
    if constexpr (SM::has_mask_function) {
      return call_mask(m_mask, h, q, k);
    } else {
      (void)h, (void)q, (void)k;
      return true;
    }
  }
  Visibility classify(Index h, Index q0, Index q1, Index k0, Index k1) const {
    return m_blocks(h, q0, q1, k0, k1);
  }
  KeyRange key_range(Index h, Index q0, Index q1) const { return m_blocks.key_range(h, q0, q1); }

 private:
  EffectiveBlocks m_effective;  // (NoBlocks resolved; bound below, which may refer to it)
  ScoreBound m_score;
  MaskBound m_mask;
  BlocksBound m_blocks;
};

}  // namespace attn::detail
