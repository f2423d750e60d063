// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file kv_cache.hpp
/// attn::KVCache: the keys and values of everything a self-attention layer has seen, for decoding
/// one token (or one chunk) at a time.

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "detail/stored_matrix.hpp"
#include "error.hpp"
#include "storage.hpp"
#include "types.hpp"

namespace attn {

/// Keys and values of one self-attention layer, all kv heads as column blocks (a GQA cache stores
/// only the num_kv_heads heads), in storage preallocated for `capacity` positions: appending
/// never reallocates, and keys()/values() are views of the filled rows, never copies.
///
/// The rows are kept in `Storage`: Scalar itself, or, for a float cache, attn::bfloat16 or
/// attn::half (2 bytes per value) or attn::qint8 (1 byte per value and a float scale per head
/// row). Appending rounds (or quantises) each new value once; the kernel reads the stored values
/// and accumulates in float. bytes() is the storage held.
///
/// Not synchronised: one cache belongs to one sequence being decoded; concurrent decodes use one
/// cache each (the functor itself may be shared).
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp kv_cache
template <typename Scalar_, typename Storage_ = Scalar_>
class KVCache {
  static_assert(detail::is_supported_scalar<Scalar_>,
                "attn::KVCache: Scalar must be float or double");
  static_assert(detail::is_storage_for<Scalar_, Storage_>,
                "attn::KVCache: Storage must be Scalar, or, for a float cache, attn::bfloat16, "
                "attn::half or attn::qint8");

 public:
  /// The type of the computations (float or double).
  using Scalar = Scalar_;
  /// The type keys and values are kept in.
  using Storage = Storage_;
  /// What keys() and values() return: ConstMatrixView<Storage>, or QuantizedView for qint8.
  using View = StorageView<Storage>;

  /// \param capacity  positions the cache can hold.
  /// \param key_width Hkv·head_dim, the width of a position's keys (and of its values).
  /// \param head_dim  width of one head (qint8 keeps one scale per head row); 0 means key_width.
  /// \throws ShapeError if capacity or key_width is negative, or head_dim does not divide
  ///         key_width.
  KVCache(Index capacity, Index key_width, Index head_dim = 0) {
    if (capacity < 0)
      detail::throw_shape_error("KVCache: capacity is ", capacity, ", expected >= 0");
    if (key_width < 0)
      detail::throw_shape_error("KVCache: key_width is ", key_width, ", expected >= 0");
    if (head_dim == 0) head_dim = std::max<Index>(key_width, 1);
    if (head_dim < 0 || key_width % head_dim != 0) {
      detail::throw_shape_error("KVCache: head_dim is ", head_dim,
                                ", expected a positive divisor of key_width ", key_width);
    }
    m_head_dim = head_dim;
    m_keys = detail::StoredMatrix<Scalar, Storage>(capacity, key_width, head_dim);
    m_values = detail::StoredMatrix<Scalar, Storage>(capacity, key_width, head_dim);
  }

  /// Positions held.
  Index size() const { return m_size; }
  /// Positions it can hold.
  Index capacity() const { return m_keys.rows(); }
  /// Width of a position's keys and of its values (Hkv·head_dim).
  Index width() const { return m_keys.cols(); }
  /// Width of one head (a qint8 cache's group).
  Index head_dim() const { return m_head_dim; }
  /// Bytes of storage for keys and values at full capacity: 2·capacity·width·sizeof(Storage), or
  /// for qint8 2·capacity·(width + 4·width/head_dim).
  std::size_t bytes() const { return m_keys.bytes() + m_values.bytes(); }

  /// The cached keys, size() × width(), heads as column blocks: a view of the storage.
  View keys() const { return m_keys.view(m_size); }
  /// The cached values, size() × width().
  View values() const { return m_values.view(m_size); }

  /// Appends the keys and values of new positions (rows), rounding them to Storage.
  /// \throws CapacityError if size() + k.rows() > capacity(), ShapeError if the shapes differ
  ///         from each other or from width(), or if a value does not fit Storage (a finite value
  ///         beyond half's range, or one that would round to infinity in bfloat16; a NaN or
  ///         infinity for qint8); the cache is then unchanged.
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
    const ConstMatrixRef<Scalar> k_ref(k), v_ref(v);
    m_keys.check("KVCache::append", "k", k_ref);
    m_values.check("KVCache::append", "v", v_ref);
    m_keys.assign_rows(m_size, k_ref);
    m_values.assign_rows(m_size, v_ref);
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
  detail::StoredMatrix<Scalar, Storage> m_keys;  // capacity × width, rows [0, size) filled
  detail::StoredMatrix<Scalar, Storage> m_values;
  Index m_size = 0;
  Index m_head_dim = 1;
};

/// A KVCache of floats.
using KVCachef = KVCache<float>;
/// A KVCache of doubles.
using KVCached = KVCache<double>;

}  // namespace attn
