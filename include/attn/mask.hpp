// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mask.hpp
/// attn::Mask: which keys each query may see, and what is added to its logits.

#include <limits>
#include <memory>
#include <type_traits>
#include <utility>

#include "detail/float_bits.hpp"
#include "error.hpp"
#include "types.hpp"

namespace attn {

/// Describes which keys a query may see, as a description evaluated per tile by the kernel:
/// structured masks (causal, sliding window, key length) never allocate an n×m matrix.
///
/// Conventions, for n queries and m keys:
/// - **Bottom-right alignment.** Structured masks align the last query with the last key: query i
///   sits at key position p(i) = i + m − n (as FlashAttention ≥ 2.1 does). A decoder step with a
///   KV cache (n = 1, m keys cached) therefore sees every key under a causal mask, and chunked
///   prefill sees its own prefix. When n > m the first n − m queries see no key under causal.
/// - **causal**: query i sees key j iff j ≤ p(i).
/// - **window(left, right)**: query i sees key j iff p(i) − left ≤ j ≤ p(i) + right; either reach
///   may be Mask::unbounded. causal() is window(unbounded, 0).
/// - **key_length(count)**: padding; query i sees key j iff j < count. Only the first count rows of
///   K and V are real (the rest may hold anything: key blocks wholly beyond count are never read).
///   Windows stay aligned to all m rows: every part of a mask tests (i, j) on its own.
/// - **keep(allowed)**: an explicit n×m boolean matrix, true where the key is visible.
/// - **bias(additive)**: an explicit n×m matrix added to the scaled logits; −∞ hides a key, +∞
///   is rejected (ShapeError), NaN makes the rows it reaches NaN.
/// - Masks compose with `&`: a key is visible iff every part lets it through (windows intersect,
///   keep matrices are and-ed, biases are summed).
/// - A query row with no visible key gets an output row of zeros (and a log-sum-exp of −∞),
///   never NaN.
///
/// Explicit matrices are copied (or moved) into the mask, which shares them cheaply on copy, so a
/// Mask may outlive the matrix it was built from.
///
/// Anything else (ALiBi, relative positions, documents, prefix-LM, trees, sinks, a pattern of
/// your own) is a score or mask function compiled into the kernel: see ScoreMask
/// (score_mask.hpp) and the built-ins (builtin_masks.hpp). A Mask combines with them by `&`.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp masks
class Mask {
 public:
  /// Reach of a window that does not end.
  static constexpr Index unbounded = -1;

  /// No mask: every query sees every key.
  Mask() = default;

  /// No mask: every query sees every key.
  static Mask none() { return Mask(); }

  /// Causal, aligned bottom-right: query i sees key j iff j ≤ i + m − n.
  static Mask causal() { return window(unbounded, 0); }

  /// Local window aligned bottom-right: query i sees key j iff
  /// i + m − n − left ≤ j ≤ i + m − n + right. Reaches are ≥ 0 or Mask::unbounded.
  /// \throws ShapeError if a reach is negative and not Mask::unbounded.
  static Mask window(Index left, Index right) {
    if (left < 0 && left != unbounded) {
      detail::throw_shape_error("Mask::window: left is ", left,
                                ", expected >= 0 or Mask::unbounded");
    }
    if (right < 0 && right != unbounded) {
      detail::throw_shape_error("Mask::window: right is ", right,
                                ", expected >= 0 or Mask::unbounded");
    }
    Mask mask;
    mask.m_left = left;
    mask.m_right = right;
    return mask;
  }

  /// Padding: only keys j < count are visible; the rows of K and V from count on are not read
  /// where a whole key block lies beyond count, and are hidden where one straddles it.
  /// \throws ShapeError if count is negative; a call throws if count exceeds its number of keys.
  static Mask key_length(Index count) {
    if (count < 0)
      detail::throw_shape_error("Mask::key_length: count is ", count, ", expected >= 0");
    Mask mask;
    mask.m_key_length = count;
    return mask;
  }

  /// Explicit n×m visibility, true where query i may see key j.
  /// \param allowed any boolean Eigen expression; copied (moved when it is an rvalue Matrix<bool>).
  template <typename Derived>
  static Mask keep(const Eigen::MatrixBase<Derived>& allowed) {
    static_assert(std::is_same_v<typename Derived::Scalar, bool>,
                  "attn::Mask::keep takes a boolean matrix: use (m.array() != 0) to convert");
    Mask mask;
    mask.m_keep = std::make_shared<const Matrix<bool>>(allowed);
    return mask;
  }
  /// The same as keep(const Eigen::MatrixBase<Derived>&), moving `allowed` rather than copying it.
  static Mask keep(Matrix<bool>&& allowed) {
    Mask mask;
    mask.m_keep = std::make_shared<const Matrix<bool>>(std::move(allowed));
    return mask;
  }

  /// Explicit n×m additive bias on the scaled logits (ALiBi, relative positions, −∞ to hide).
  /// \param additive a float or double Eigen expression; copied (moved when it is an rvalue
  ///        Matrix). A bias of the other precision than the call is converted once per call.
  template <typename Derived>
  static Mask bias(const Eigen::MatrixBase<Derived>& additive) {
    using Scalar = typename Derived::Scalar;
    static_assert(detail::is_supported_scalar<Scalar>,
                  "attn::Mask::bias takes a float or double matrix: use .cast<float>()");
    return from_bias(Matrix<Scalar>(additive));
  }
  /// The same as bias(const Eigen::MatrixBase<Derived>&), moving `additive` rather than copying.
  template <typename Scalar>
  static Mask bias(Matrix<Scalar>&& additive) {
    static_assert(detail::is_supported_scalar<Scalar>,
                  "attn::Mask::bias takes a float or double matrix: use .cast<float>()");
    return from_bias(std::move(additive));
  }

  /// A mask that lets a key through iff both a and b do.
  /// \throws ShapeError if both carry explicit matrices of different shapes.
  friend Mask operator&(const Mask& a, const Mask& b) {
    Mask mask;
    mask.m_left = intersect_reach(a.m_left, b.m_left);
    mask.m_right = intersect_reach(a.m_right, b.m_right);
    mask.m_key_length = intersect_reach(a.m_key_length, b.m_key_length);
    mask.m_keep = a.m_keep ? a.m_keep : b.m_keep;
    if (a.m_keep && b.m_keep) {
      check_same_shape("keep", *a.m_keep, *b.m_keep);
      mask.m_keep = std::make_shared<const Matrix<bool>>(a.m_keep->array() && b.m_keep->array());
    }
    mask.m_bias_float = a.m_bias_float ? a.m_bias_float : b.m_bias_float;
    mask.m_bias_double = a.m_bias_double ? a.m_bias_double : b.m_bias_double;
    if (a.has_bias() && b.has_bias()) {
      // Sums in double when the precisions differ, so nothing is lost before the call.
      if (a.m_bias_float && b.m_bias_float) {
        check_same_shape("bias", *a.m_bias_float, *b.m_bias_float);
        mask.m_bias_float =
            from_bias(Matrix<float>(*a.m_bias_float + *b.m_bias_float)).m_bias_float;
      } else {
        Matrix<double> sum = a.bias_as<double>();
        const Matrix<double> other = b.bias_as<double>();
        check_same_shape("bias", sum, other);
        sum += other;
        mask.m_bias_float.reset();
        mask.m_bias_double = from_bias(std::move(sum)).m_bias_double;
      }
    }
    return mask;
  }

  /// Left reach of the window, or Mask::unbounded.
  Index left() const { return m_left; }
  /// Right reach of the window (0 for causal), or Mask::unbounded.
  Index right() const { return m_right; }
  /// Keys visible under the key-length part (key_length(count): count), or Mask::unbounded.
  Index visible_keys() const { return m_key_length; }
  /// True if no key is ever hidden or biased.
  bool is_none() const { return !has_window() && !has_key_length() && !has_keep() && !has_bias(); }
  /// True if a structured (causal or window) part is present.
  bool has_window() const { return m_left != unbounded || m_right != unbounded; }
  /// True if a key-length (padding) part is present.
  bool has_key_length() const { return m_key_length != unbounded; }
  /// True if an explicit keep matrix is present.
  bool has_keep() const { return static_cast<bool>(m_keep); }
  /// True if an explicit additive bias is present.
  bool has_bias() const { return m_bias_float || m_bias_double; }
  /// True if the mask has a part given as an n×m matrix, which ties it to one (n, m).
  bool has_explicit() const { return has_keep() || has_bias(); }

  /// The keep matrix; precondition has_keep().
  const Matrix<bool>& keep_matrix() const {
    ATTN_ASSERT(has_keep());
    return *m_keep;
  }
  /// The bias matrix in the precision it was given in, or nullptr.
  template <typename Scalar>
  const Matrix<Scalar>* bias_matrix() const {
    if constexpr (std::is_same_v<Scalar, float>) {
      return m_bias_float.get();
    } else {
      return m_bias_double.get();
    }
  }
  /// The bias converted to Scalar; precondition has_bias().
  template <typename Scalar>
  Matrix<Scalar> bias_as() const {
    ATTN_ASSERT(has_bias());
    if (m_bias_float) return m_bias_float->template cast<Scalar>();
    return m_bias_double->template cast<Scalar>();
  }

  /// Checks that explicit parts fit n queries and m keys, and (unless the call places its keys
  /// at positions of its own, key_length_within_keys false) a key length m keys.
  /// \throws ShapeError naming `who`, the part and both shapes (or the length and m).
  void check_shape(const char* who, Index n, Index m, bool key_length_within_keys = true) const {
    if (key_length_within_keys && m_key_length > m) {
      detail::throw_shape_error(who, ": mask key_length is ", m_key_length, ", expected <= the ", m,
                                " keys (rows of k)");
    }
    if (m_keep) check_fits(who, "keep", m_keep->rows(), m_keep->cols(), n, m);
    if (m_bias_float) check_fits(who, "bias", m_bias_float->rows(), m_bias_float->cols(), n, m);
    if (m_bias_double) check_fits(who, "bias", m_bias_double->rows(), m_bias_double->cols(), n, m);
  }

 private:
  template <typename Scalar>
  static Mask from_bias(Matrix<Scalar>&& additive) {
    check_no_positive_infinity(additive);
    Mask mask;
    if constexpr (std::is_same_v<Scalar, float>) {
      mask.m_bias_float = std::make_shared<const Matrix<float>>(std::move(additive));
    } else {
      mask.m_bias_double = std::make_shared<const Matrix<double>>(std::move(additive));
    }
    return mask;
  }

  // +∞ is no logit offset: it would make every other key's weight 0/∞ = NaN. −∞ masks a key.
  template <typename Scalar>
  static void check_no_positive_infinity(const Matrix<Scalar>& additive) {
    for (Index i = 0; i < additive.rows(); ++i) {
      for (Index j = 0; j < additive.cols(); ++j) {
        if (detail::is_plus_infinity(additive(i, j))) {
          detail::throw_shape_error("Mask::bias: bias(", i, ", ", j,
                                    ") is +inf, expected a finite value or -inf (masked)");
        }
      }
    }
  }

  static Index intersect_reach(Index a, Index b) {
    if (a == unbounded) return b;
    if (b == unbounded) return a;
    return a < b ? a : b;
  }

  template <typename A, typename B>
  static void check_same_shape(const char* part, const A& a, const B& b) {
    if (a.rows() != b.rows() || a.cols() != b.cols()) {
      detail::throw_shape_error("Mask operator&: ", part, " matrices are ", detail::shape_string(a),
                                " and ", detail::shape_string(b), ", expected equal shapes");
    }
  }

  static void check_fits(const char* who, const char* part, Index rows, Index cols, Index n,
                         Index m) {
    if (rows != n || cols != m) {
      detail::throw_shape_error(who, ": mask ", part, " matrix is ",
                                detail::shape_string(rows, cols), ", expected ",
                                detail::shape_string(n, m), " (queries x keys)");
    }
  }

  Index m_left = unbounded;
  Index m_right = unbounded;
  Index m_key_length = unbounded;
  std::shared_ptr<const Matrix<bool>> m_keep;
  std::shared_ptr<const Matrix<float>> m_bias_float;
  std::shared_ptr<const Matrix<double>> m_bias_double;
};

}  // namespace attn
