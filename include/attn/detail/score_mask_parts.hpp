// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/score_mask_parts.hpp
/// The pieces a ScoreMask is made of, and how they compose and bind to one call: absent parts,
/// the two signatures of a mask function and of a block predicate, and the and/then combinators.

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "../types.hpp"
#include "float_bits.hpp"

namespace attn {

/// What a block predicate says about a block of queries × keys (see ScoreMask).
enum class Visibility : unsigned char {
  none = 0,     ///< no query of the block sees any key of it: the block is never read
  partial = 1,  ///< some pairs are visible: the mask function decides per pair
  all = 2,      ///< every query sees every key: no per-pair masking
};

namespace detail {

/// The logits unchanged.
struct NoScore {};
/// Every key visible, as far as the mask function goes.
struct NoMaskFunction {};
/// No block-level knowledge: every block is partial where there is a mask function.
struct NoBlocks {};

/// Key positions a query range may see at most: [begin, end).
struct KeyRange {
  Index begin = std::numeric_limits<Index>::min() / 4;
  Index end = std::numeric_limits<Index>::max() / 4;
};

template <typename T, typename = void>
struct has_bind : std::false_type {};
template <typename T>
struct has_bind<T, std::void_t<decltype(std::declval<const T&>().bind(Index(), Index(), Index()))>>
    : std::true_type {};

/// What the kernel calls for a part: the part itself, or what its bind(n, m, heads) returns (a
/// part tied to the call's shape; see score_mask_bind.hpp).
template <typename Part, bool = has_bind<Part>::value>
struct bound_part {
  using type = Part;
};
template <typename Part>
struct bound_part<Part, true> {
  using type = decltype(std::declval<const Part&>().bind(Index(), Index(), Index()));
};
template <typename Part>
using bound_part_t = typename bound_part<Part>::type;

template <typename Fn>
inline constexpr bool mask_uses_head = std::is_invocable_r_v<bool, const Fn&, Index, Index, Index>;
template <typename Fn>
inline constexpr bool is_mask_function =
    mask_uses_head<bound_part_t<Fn>> ||
    std::is_invocable_r_v<bool, const bound_part_t<Fn>&, Index, Index>;

/// A mask function called with or without the head.
template <typename Fn>
EIGEN_ALWAYS_INLINE bool call_mask(const Fn& fn, Index head, Index q, Index k) {
  if constexpr (mask_uses_head<Fn>) {
    return fn(head, q, k);
  } else {
    (void)head;
    return fn(q, k);
  }
}

template <typename Fn>
inline constexpr bool blocks_use_head =
    std::is_invocable_r_v<Visibility, const Fn&, Index, Index, Index, Index, Index>;
template <typename Fn>
inline constexpr bool is_block_predicate =
    blocks_use_head<bound_part_t<Fn>> ||
    std::is_invocable_r_v<Visibility, const bound_part_t<Fn>&, Index, Index, Index, Index>;

template <typename T, typename = void>
struct has_key_range_member : std::false_type {};
template <typename T>
struct has_key_range_member<
    T, std::void_t<decltype(std::declval<const T&>().key_range(Index(), Index(), Index()))>>
    : std::true_type {};

/// A block predicate of any of the two signatures, and its key range when it knows one.
template <typename Fn>
struct BlockPredicate {
  static_assert(is_block_predicate<Fn>,
                "attn: a block predicate must be callable as attn::Visibility(Index head, Index "
                "q_begin, Index q_end, Index k_begin, Index k_end) or without the head");
  Fn fn;
  static constexpr bool uses_head = blocks_use_head<bound_part_t<Fn>>;
  Visibility operator()(Index head, Index q0, Index q1, Index k0, Index k1) const {
    if constexpr (blocks_use_head<Fn>) {
      return fn(head, q0, q1, k0, k1);
    } else {
      (void)head;
      return fn(q0, q1, k0, k1);
    }
  }
  KeyRange key_range(Index head, Index q0, Index q1) const {
    if constexpr (has_key_range_member<Fn>::value) {
      return fn.key_range(head, q0, q1);
    } else {
      (void)head, (void)q0, (void)q1;
      return {};
    }
  }
};

/// Block visibility of a ScoreMask without a predicate: all without a mask function, else
/// partial.
template <Visibility V>
struct ConstantBlocks {
  static constexpr bool uses_head = false;
  Visibility operator()(Index, Index, Index, Index, Index) const { return V; }
  KeyRange key_range(Index, Index, Index) const { return {}; }
};
using AllBlocks = ConstantBlocks<Visibility::all>;
using PartialBlocks = ConstantBlocks<Visibility::partial>;

template <typename MaskFn, typename BlockFn>
auto effective_blocks(const MaskFn&, const BlockFn& blocks) {
  if constexpr (!std::is_same_v<BlockFn, NoBlocks>) {
    return blocks;
  } else if constexpr (std::is_same_v<MaskFn, NoMaskFunction>) {
    return AllBlocks{};
  } else {
    return PartialBlocks{};
  }
}

/// Visibility of a block under two predicates at once.
inline Visibility both(Visibility a, Visibility b) {
  if (a == Visibility::none || b == Visibility::none) return Visibility::none;
  if (a == Visibility::all && b == Visibility::all) return Visibility::all;
  return Visibility::partial;
}

inline KeyRange intersect(const KeyRange& a, const KeyRange& b) {
  return {std::max(a.begin, b.begin), std::min(a.end, b.end)};
}

template <typename A, typename B>
struct ThenScore {
  A first;
  B second;
  template <typename Scalar>
  EIGEN_ALWAYS_INLINE Scalar operator()(Scalar s, Index head, Index q, Index k) const {
    return second(first(s, head, q, k), head, q, k);
  }
};

/// A score function with its derivative with respect to the score: derivative(s, head, q, k) =
/// ∂fn(s, head, q, k)/∂s, which the backward pass chains through (attn::score_function(fn,
/// derivative)).
template <typename Fn, typename Derivative>
struct DifferentiableScore {
  Fn fn;
  Derivative derivative_fn;
  template <typename Scalar>
  EIGEN_ALWAYS_INLINE Scalar operator()(Scalar s, Index head, Index q, Index k) const {
    return static_cast<Scalar>(fn(s, head, q, k));
  }
  template <typename Scalar>
  EIGEN_ALWAYS_INLINE Scalar derivative(Scalar s, Index head, Index q, Index k) const {
    return static_cast<Scalar>(derivative_fn(s, head, q, k));
  }
};

/// An additive score function s + bias(head, q, k) (attn::score_bias): its derivative is 1, so
/// the backward pass needs nothing more. A bias of −∞ hides the key, whatever the logit.
template <typename Fn>
struct ScoreBias {
  static constexpr bool additive = true;
  Fn bias;
  template <typename Scalar>
  EIGEN_ALWAYS_INLINE Scalar operator()(Scalar s, Index head, Index q, Index k) const {
    const Scalar b = static_cast<Scalar>(bias(head, q, k));
    return is_minus_infinity(b) ? -std::numeric_limits<Scalar>::infinity() : s + b;
  }
};

template <typename T, typename = void>
struct additive_member : std::false_type {};
template <typename T>
struct additive_member<T, std::void_t<decltype(T::additive)>> : std::bool_constant<T::additive> {};
template <typename A, typename B>
struct additive_member<ThenScore<A, B>>
    : std::bool_constant<additive_member<std::decay_t<A>>::value &&
                         additive_member<std::decay_t<B>>::value> {};

/// True if a (bound) score function is s + something that does not depend on s: the backward
/// pass then passes the gradient through unchanged.
template <typename T>
inline constexpr bool is_additive_score = additive_member<std::decay_t<T>>::value;

template <typename T, typename Scalar, typename = void>
struct has_derivative_member : std::false_type {};
template <typename T, typename Scalar>
struct has_derivative_member<
    T, Scalar,
    std::void_t<decltype(std::declval<const T&>().derivative(Scalar(), Index(), Index(), Index()))>>
    : std::true_type {};
template <typename T, typename Scalar>
struct differentiable_score
    : std::bool_constant<is_additive_score<T> || has_derivative_member<T, Scalar>::value> {};
template <typename A, typename B, typename Scalar>
struct differentiable_score<ThenScore<A, B>, Scalar>
    : std::bool_constant<differentiable_score<std::decay_t<A>, Scalar>::value &&
                         differentiable_score<std::decay_t<B>, Scalar>::value> {};

/// True if the backward pass can differentiate a (bound) score function: additive, or with a
/// derivative, or a composition of such.
template <typename T, typename Scalar>
inline constexpr bool is_differentiable_score =
    differentiable_score<std::decay_t<T>, Scalar>::value;

/// ∂fn(s, head, q, k)/∂s of a differentiable score function; a composition by the chain rule.
template <typename Scalar, typename Fn>
EIGEN_ALWAYS_INLINE Scalar score_derivative(const Fn& fn, Scalar s, Index head, Index q, Index k) {
  if constexpr (is_additive_score<Fn>) {
    (void)fn, (void)s, (void)head, (void)q, (void)k;
    return Scalar(1);
  } else {
    return static_cast<Scalar>(fn.derivative(s, head, q, k));
  }
}
template <typename Scalar, typename A, typename B>
EIGEN_ALWAYS_INLINE Scalar score_derivative(const ThenScore<A, B>& fn, Scalar s, Index head,
                                            Index q, Index k) {
  const Scalar inner = static_cast<Scalar>(fn.first(s, head, q, k));
  return score_derivative<Scalar>(fn.second, inner, head, q, k) *
         score_derivative<Scalar>(fn.first, s, head, q, k);
}

template <typename A, typename B>
struct AndMask {
  A first;
  B second;
  template <typename H = int,
            typename = std::enable_if_t<sizeof(H) != 0 && (mask_uses_head<A> || mask_uses_head<B>)>>
  EIGEN_ALWAYS_INLINE bool operator()(Index head, Index q, Index k) const {
    return call_mask(first, head, q, k) && call_mask(second, head, q, k);
  }
  template <typename H = int, typename = std::enable_if_t<sizeof(H) != 0 && !(mask_uses_head<A> ||
                                                                              mask_uses_head<B>)>>
  EIGEN_ALWAYS_INLINE bool operator()(Index q, Index k) const {
    return first(q, k) && second(q, k);
  }
};

template <typename A, typename B>
struct AndBlocks {
  A first;
  B second;
  static constexpr bool uses_head = A::uses_head || B::uses_head;
  Visibility operator()(Index head, Index q0, Index q1, Index k0, Index k1) const {
    const Visibility a = first(head, q0, q1, k0, k1);
    if (a == Visibility::none) return a;
    return both(a, second(head, q0, q1, k0, k1));
  }
  KeyRange key_range(Index head, Index q0, Index q1) const {
    return intersect(first.key_range(head, q0, q1), second.key_range(head, q0, q1));
  }
};

template <typename A, typename B>
auto then_score(const A& a, const B& b) {
  if constexpr (std::is_same_v<A, NoScore>) {
    return b;
  } else if constexpr (std::is_same_v<B, NoScore>) {
    return a;
  } else {
    return ThenScore<A, B>{a, b};
  }
}

template <typename A, typename B>
auto and_mask(const A& a, const B& b) {
  if constexpr (std::is_same_v<A, NoMaskFunction>) {
    return b;
  } else if constexpr (std::is_same_v<B, NoMaskFunction>) {
    return a;
  } else {
    return AndMask<A, B>{a, b};
  }
}

template <typename A, typename B>
auto and_blocks(const A& a, const B& b) {
  if constexpr (std::is_same_v<A, AllBlocks> && std::is_same_v<B, AllBlocks>) {
    return NoBlocks{};
  } else if constexpr (std::is_same_v<A, AllBlocks>) {
    return b;
  } else if constexpr (std::is_same_v<B, AllBlocks>) {
    return a;
  } else {
    return AndBlocks<A, B>{a, b};
  }
}

template <typename T, typename = void>
struct one_sequence_member : std::false_type {};
template <typename T>
struct one_sequence_member<T, std::void_t<decltype(T::one_sequence)>>
    : std::bool_constant<T::one_sequence> {};
template <typename A, typename B>
struct one_sequence_member<ThenScore<A, B>>
    : std::bool_constant<one_sequence_member<A>::value || one_sequence_member<B>::value> {};
template <typename A, typename B>
struct one_sequence_member<AndMask<A, B>>
    : std::bool_constant<one_sequence_member<A>::value || one_sequence_member<B>::value> {};
template <typename A, typename B>
struct one_sequence_member<AndBlocks<A, B>>
    : std::bool_constant<one_sequence_member<A>::value || one_sequence_member<B>::value> {};
template <typename Fn>
struct one_sequence_member<BlockPredicate<Fn>> : one_sequence_member<Fn> {};

/// True if a part describes one (n, m) only (a tree over the last keys, a per-head bias matrix):
/// the functors' packed batches refuse it.
template <typename T>
inline constexpr bool one_sequence_v = one_sequence_member<T>::value;

}  // namespace detail
}  // namespace attn
