// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/packet_math.hpp
/// The register-blocked inner kernel and the softmax exponential, on Eigen's packet types
/// (AVX-512, AVX2+FMA, SSE or NEON: whatever the compiler was told to target).

#include <cstdint>
#include <Eigen/Core>
#include <type_traits>

#include "../types.hpp"

// Packet types such as __m256 carry alignment attributes that GCC reports as ignored when they
// are template arguments; Eigen's own headers are system headers and never warn about it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace attn::detail {

namespace packet = Eigen::internal;

template <typename Scalar>
struct PacketTraits {
  using Packet = typename packet::packet_traits<Scalar>::type;
  static constexpr int size = packet::packet_traits<Scalar>::size;
  /// Columns of the register tile: two packets, so each broadcast feeds two FMAs.
  static constexpr int tile_cols = 2 * size;
  /// Rows of the register tile: 6 × 2 accumulators + 2 column loads + 1 broadcast fit the 16
  /// vector registers of AVX2 (and leave room on AVX-512's 32).
  static constexpr int tile_rows = 6;
};

#if defined(__GNUC__)
#define ATTN_UNROLL _Pragma("GCC unroll 8")
#else
#define ATTN_UNROLL
#endif

/// C(r, 0 : 2·P) (=, or += if Accumulate) Σ_k A(r, k) · B(k, 0 : 2·P) for r < Rows, where P is
/// the packet size, A(r, k) = a[r·a_row + k·a_col] is broadcast and B's rows are read as two
/// packets. The whole Rows × 2P tile of C stays in registers over the depth loop.
template <int Rows, bool Accumulate, typename Scalar>
EIGEN_ALWAYS_INLINE void register_tile(Index depth, const Scalar* a, Index a_row, Index a_col,
                                       const Scalar* b, Index b_stride, Scalar* c, Index c_stride) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr int size = PacketTraits<Scalar>::size;
  Packet left[Rows];
  Packet right[Rows];
  ATTN_UNROLL
  for (int r = 0; r < Rows; ++r) {
    if constexpr (Accumulate) {
      left[r] = packet::ploadu<Packet>(c + r * c_stride);
      right[r] = packet::ploadu<Packet>(c + r * c_stride + size);
    } else {
      left[r] = packet::pset1<Packet>(Scalar(0));
      right[r] = left[r];
    }
  }
  for (Index k = 0; k < depth; ++k) {
    const Packet b_left = packet::ploadu<Packet>(b + k * b_stride);
    const Packet b_right = packet::ploadu<Packet>(b + k * b_stride + size);
    const Scalar* a_k = a + k * a_col;
    ATTN_UNROLL
    for (int r = 0; r < Rows; ++r) {
      const Packet a_rk = packet::pset1<Packet>(a_k[r * a_row]);
      left[r] = packet::pmadd(a_rk, b_left, left[r]);
      right[r] = packet::pmadd(a_rk, b_right, right[r]);
    }
  }
  ATTN_UNROLL
  for (int r = 0; r < Rows; ++r) {
    packet::pstoreu(c + r * c_stride, left[r]);
    packet::pstoreu(c + r * c_stride + size, right[r]);
  }
}

/// C (=, or +=) A·B for a `rows` × 2P block of C, in register tiles of PacketTraits::tile_rows
/// rows and one smaller tile for the remainder.
template <bool Accumulate, typename Scalar>
void register_block(Index rows, Index depth, const Scalar* a, Index a_row, Index a_col,
                    const Scalar* b, Index b_stride, Scalar* c, Index c_stride) {
  constexpr int tile = PacketTraits<Scalar>::tile_rows;
  Index r = 0;
  for (; r + tile <= rows; r += tile) {
    register_tile<tile, Accumulate>(depth, a + r * a_row, a_row, a_col, b, b_stride,
                                    c + r * c_stride, c_stride);
  }
  const Scalar* a_r = a + r * a_row;
  Scalar* c_r = c + r * c_stride;
  switch (rows - r) {
    case 5:
      register_tile<5, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride);
      break;
    case 4:
      register_tile<4, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride);
      break;
    case 3:
      register_tile<3, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride);
      break;
    case 2:
      register_tile<2, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride);
      break;
    case 1:
      register_tile<1, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride);
      break;
    default:
      break;
  }
}

/// Hints that the `rows` × `cols` row-major block at `data` (row stride `stride`) will be read
/// soon, so that its cache lines start coming from L3 or memory while the caller computes. Every
/// line the block touches is asked for once; it changes no result.
template <typename Scalar>
EIGEN_ALWAYS_INLINE void prefetch_block(const Scalar* data, Index stride, Index rows, Index cols) {
#if defined(__GNUC__)
  constexpr std::uintptr_t line = 64;
  if (cols <= 0) return;
  for (Index r = 0; r < rows; ++r) {
    const auto first = reinterpret_cast<std::uintptr_t>(data + r * stride) & ~(line - 1);
    const auto last = reinterpret_cast<std::uintptr_t>(data + r * stride + cols - 1);
    for (std::uintptr_t address = first; address <= last; address += line)
      __builtin_prefetch(reinterpret_cast<const void*>(address), 0, 3);
  }
#else
  (void)data, (void)stride, (void)rows, (void)cols;
#endif
}

/// e^x for the softmax, where x = logit − row max ≤ 0 or −∞: exactly 0 below the smallest normal
/// result (where Eigen's pexp returns a tiny positive number, which would make a fully masked
/// row look visible), NaN stays NaN.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet softmax_exp(const Packet& x) {
  using Scalar = typename packet::unpacket_traits<Packet>::type;
  // log of the smallest normal number: −87.34 (float), −708.40 (double).
  constexpr Scalar log_min =
      std::is_same_v<Scalar, float> ? Scalar(-87.3365447f) : Scalar(-708.396418532264);
  const Packet underflow = packet::pset1<Packet>(log_min);
  return packet::pandnot(packet::pexp(x), packet::pcmp_lt(x, underflow));
}

}  // namespace attn::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
