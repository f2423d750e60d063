// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file kv_cache.hpp
/// attn::KVCache: the keys and values of everything a self-attention layer has seen, for decoding
/// one token (or one chunk) at a time.

#include <type_traits>

#include "error.hpp"
#include "types.hpp"

namespace attn {

/// Thrown when appending to a KVCache would exceed its capacity; the cache is left unchanged.
class CapacityError : public ShapeError {
 public:
  using ShapeError::ShapeError;
};

/// Keys and values of one self-attention layer, all kv heads as column blocks (a GQA cache stores
/// only the num_kv_heads heads), in storage preallocated for `capacity` positions: appending
/// never reallocates, and keys()/values() are views of the filled rows, never copies.
///
/// Not synchronised: one cache belongs to one sequence being decoded; concurrent decodes use one
/// cache each (the functor itself may be shared).
///
/// \code
/// attn::SelfAttention<float> layer(cfg, weights);
/// attn::KVCache<float> cache = layer.make_cache(/*capacity*/ 2048);
/// attn::Matrix<float> y = layer(prompt, cache);      // prefill: causal over the prompt
/// while (decoding) {
///   y = layer(next_token_row, cache);                 // one step: sees everything cached
/// }
/// cache.reset();                                      // next sequence, same storage
/// \endcode
template <typename Scalar_>
class KVCache {
  static_assert(detail::is_supported_scalar<Scalar_>,
                "attn::KVCache: Scalar must be float or double");

 public:
  using Scalar = Scalar_;

  /// \param capacity  positions the cache can hold.
  /// \param key_width Hkv·head_dim, the width of a position's keys (and of its values).
  /// \throws ShapeError if capacity or key_width is negative.
  KVCache(Index capacity, Index key_width) {
    if (capacity < 0)
      detail::throw_shape_error("KVCache: capacity is ", capacity, ", expected >= 0");
    if (key_width < 0)
      detail::throw_shape_error("KVCache: key_width is ", key_width, ", expected >= 0");
    m_keys.resize(capacity, key_width);
    m_values.resize(capacity, key_width);
  }

  /// Positions held.
  Index size() const { return m_size; }
  /// Positions it can hold.
  Index capacity() const { return m_keys.rows(); }
  /// Width of a position's keys and of its values (Hkv·head_dim).
  Index width() const { return m_keys.cols(); }

  /// The cached keys, size() × width(), heads as column blocks: a view of the storage.
  ConstMatrixView<Scalar> keys() const {
    return ConstMatrixView<Scalar>(m_keys.data(), m_size, width(), Eigen::OuterStride<>(width()));
  }
  /// The cached values, size() × width().
  ConstMatrixView<Scalar> values() const {
    return ConstMatrixView<Scalar>(m_values.data(), m_size, width(), Eigen::OuterStride<>(width()));
  }

  /// Appends the keys and values of new positions (rows).
  /// \throws CapacityError if size() + k.rows() > capacity(), ShapeError if the shapes differ
  ///         from each other or from width(); the cache is then unchanged.
  template <typename DK, typename DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    static_assert(
        std::is_same_v<typename DK::Scalar, Scalar> && std::is_same_v<typename DV::Scalar, Scalar>,
        "attn::KVCache::append: keys and values must have the cache's Scalar");
    if (k.cols() != width() || v.cols() != width() || v.rows() != k.rows()) {
      detail::throw_shape_error("KVCache::append: k is ", detail::shape_string(k), " and v is ",
                                detail::shape_string(v), ", expected both rows x ", width());
    }
    check_room("KVCache::append", k.rows());
    m_keys.middleRows(m_size, k.rows()) = k;
    m_values.middleRows(m_size, v.rows()) = v;
    m_size += k.rows();
  }

  /// Throws CapacityError, naming `who`, unless `rows` more positions fit.
  void check_room(const char* who, Index rows) const {
    if (rows > capacity() - m_size) {
      throw CapacityError(std::string(who) + ": appending " + std::to_string(rows) +
                          " rows to a KVCache holding " + std::to_string(m_size) + " of capacity " +
                          std::to_string(capacity()) + " would overflow it");
    }
  }

  /// Forgets every position; the storage stays.
  void reset() { m_size = 0; }

 private:
  Matrix<Scalar> m_keys;  // capacity × width, rows [0, size) filled
  Matrix<Scalar> m_values;
  Index m_size = 0;
};

using KVCachef = KVCache<float>;
using KVCached = KVCache<double>;

}  // namespace attn
