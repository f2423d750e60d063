// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/register_tile.hpp
/// The kernel's inner loops on packets: the register tile of both prefill products (its shape
/// from TileTraits), the block transpose, and the decode path's multi-row dot and axpy.

#include <algorithm>

#include "../types.hpp"
#include "convert.hpp"
#include "packet_math.hpp"
#include "tile_traits.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

// Loops over a tile's registers must be unrolled for the accumulators to live in registers;
// undefined again at the end of this header.
#if defined(__GNUC__)
#define ATTN_DETAIL_UNROLL _Pragma("GCC unroll 16")
#else
#define ATTN_DETAIL_UNROLL
#endif

namespace attn::detail {

/// C(r, 0 : N·P) (=, or += if Accumulate) Σ_k A(r, k) · B(k, 0 : N·P) for r < Rows, where P is
/// the packet size, A(r, k) = a[r·a_row + k·a_col] is broadcast and B's rows are read as N
/// packets. The whole Rows × N·P tile of C stays in registers over the depth loop. If column_max
/// is given, its N·P entries become the max of themselves and the tile's columns, which spares
/// the softmax a pass over the tile. That max may miss a NaN: the softmax only shifts by it, and
/// a NaN logit makes its row NaN through its own exponential whatever the shift.
template <int Rows, int N, bool Accumulate, typename Scalar>
EIGEN_ALWAYS_INLINE void register_tile(Index depth, const Scalar* a, Index a_row, Index a_col,
                                       const Scalar* b, Index b_stride, Scalar* c, Index c_stride,
                                       Scalar* column_max) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr int size = PacketTraits<Scalar>::size;
  Packet acc[Rows][N];
  ATTN_DETAIL_UNROLL
  for (int r = 0; r < Rows; ++r) {
    ATTN_DETAIL_UNROLL
    for (int i = 0; i < N; ++i) {
      acc[r][i] = Accumulate ? simd::load<Packet>(c + r * c_stride + i * size)
                             : simd::broadcast<Packet>(Scalar(0));
    }
  }
  // Two depth steps per iteration: half the loop's scalar bookkeeping, which competes with the
  // FMAs for issue slots.
#if defined(__GNUC__)
#pragma GCC unroll 2
#endif
  for (Index k = 0; k < depth; ++k) {
    Packet b_k[N];
    ATTN_DETAIL_UNROLL
    for (int i = 0; i < N; ++i)
      b_k[i] = simd::load<Packet>(b + k * b_stride + i * size);
    const Scalar* a_k = a + k * a_col;
    ATTN_DETAIL_UNROLL
    for (int r = 0; r < Rows; ++r) {
      const Packet a_rk = simd::broadcast<Packet>(a_k[r * a_row]);
      ATTN_DETAIL_UNROLL
      for (int i = 0; i < N; ++i)
        acc[r][i] = simd::fmadd(a_rk, b_k[i], acc[r][i]);
    }
  }
  ATTN_DETAIL_UNROLL
  for (int r = 0; r < Rows; ++r) {
    ATTN_DETAIL_UNROLL
    for (int i = 0; i < N; ++i)
      simd::store(c + r * c_stride + i * size, acc[r][i]);
  }
  if (column_max != nullptr) {
    ATTN_DETAIL_UNROLL
    for (int i = 0; i < N; ++i) {
      Packet max = simd::load<Packet>(column_max + i * size);
      ATTN_DETAIL_UNROLL
      for (int r = 0; r < Rows; ++r)
        max = simd::max(max, acc[r][i]);
      simd::store(column_max + i * size, max);
    }
  }
}

/// The remainder tile of register_block: `rows` < Rows rows, one instantiation per count.
template <int Rows, int N, bool Accumulate, typename Scalar>
EIGEN_ALWAYS_INLINE void register_remainder(Index rows, Index depth, const Scalar* a, Index a_row,
                                            Index a_col, const Scalar* b, Index b_stride, Scalar* c,
                                            Index c_stride, Scalar* column_max) {
  if constexpr (Rows > 1) {
    if (rows == Rows - 1) {
      register_tile<Rows - 1, N, Accumulate>(depth, a, a_row, a_col, b, b_stride, c, c_stride,
                                             column_max);
    } else {
      register_remainder<Rows - 1, N, Accumulate>(rows, depth, a, a_row, a_col, b, b_stride, c,
                                                  c_stride, column_max);
    }
  }
}

/// C (=, or += if Accumulate) A·B for a `rows` × TileTraits::columns block of C, in register
/// tiles of TileTraits::rows rows and one narrower tile for the remainder; column_max as for
/// register_tile. before_tile(t, tiles) runs before tile t of `tiles` (the caller's prefetches,
/// spread over the block).
template <bool Accumulate, typename Scalar, typename BeforeTile>
void register_block(Index rows, Index depth, const Scalar* a, Index a_row, Index a_col,
                    const Scalar* b, Index b_stride, Scalar* c, Index c_stride, Scalar* column_max,
                    const BeforeTile& before_tile) {
  using Tile = TileTraits<Scalar>;
  const Index tiles = (rows + Tile::rows - 1) / Tile::rows;
  Index r = 0;
  for (; r + Tile::rows <= rows; r += Tile::rows) {
    before_tile(r / Tile::rows, tiles);
    register_tile<Tile::rows, Tile::packets, Accumulate>(
        depth, a + r * a_row, a_row, a_col, b, b_stride, c + r * c_stride, c_stride, column_max);
  }
  if (r == rows) return;
  before_tile(r / Tile::rows, tiles);
  register_remainder<Tile::rows, Tile::packets, Accumulate>(rows - r, depth, a + r * a_row, a_row,
                                                            a_col, b, b_stride, c + r * c_stride,
                                                            c_stride, column_max);
}

/// register_block's rows for N packets of columns: full tiles, then the remainder tile.
template <int N, bool Accumulate, typename Scalar>
EIGEN_ALWAYS_INLINE void register_rows(Index rows, Index depth, const Scalar* a, Index a_row,
                                       Index a_col, const Scalar* b, Index b_stride, Scalar* c,
                                       Index c_stride) {
  constexpr int tile_rows = TileTraits<Scalar>::rows;
  Index r = 0;
  for (; r + tile_rows <= rows; r += tile_rows) {
    register_tile<tile_rows, N, Accumulate>(depth, a + r * a_row, a_row, a_col, b, b_stride,
                                            c + r * c_stride, c_stride,
                                            static_cast<Scalar*>(nullptr));
  }
  if (r < rows) {
    register_remainder<tile_rows, N, Accumulate>(rows - r, depth, a + r * a_row, a_row, a_col, b,
                                                 b_stride, c + r * c_stride, c_stride,
                                                 static_cast<Scalar*>(nullptr));
  }
}

/// The last column panel of register_product: `packets` < N packets, one instantiation per
/// count.
template <int N, bool Accumulate, typename Scalar>
void register_last_panel(Index packets, Index rows, Index depth, const Scalar* a, Index a_row,
                         Index a_col, const Scalar* b, Index b_stride, Scalar* c, Index c_stride) {
  if constexpr (N > 1) {
    if (packets == N - 1) {
      register_rows<N - 1, Accumulate>(rows, depth, a, a_row, a_col, b, b_stride, c, c_stride);
    } else {
      register_last_panel<N - 1, Accumulate>(packets, rows, depth, a, a_row, a_col, b, b_stride, c,
                                             c_stride);
    }
  }
}

/// C (=, or += if Accumulate) A·B for a `rows` × `cols` block of C, any shape: A(r, k) =
/// a[r·a_row + k·a_col] for r < rows, k < depth (read in place, any layout: a transpose is a
/// swap of the strides), B row-major. The columns are taken in whole packets, so B's rows and
/// C's rows must hold `cols` rounded up to the packet size (the caller pads them); the padding
/// columns of C get whatever the padding of B makes. The backward pass's five products, whose
/// operands are blocks of q, k, v and dO and tiles of P and dS.
template <bool Accumulate, typename Scalar>
void register_product(Index rows, Index cols, Index depth, const Scalar* a, Index a_row,
                      Index a_col, const Scalar* b, Index b_stride, Scalar* c, Index c_stride) {
  using Tile = TileTraits<Scalar>;
  const Index padded = (cols + Tile::packet_size - 1) / Tile::packet_size * Tile::packet_size;
  // Empty operands may be null pointers, which must not be offset.
  if (rows == 0 || cols == 0) return;
  if (depth == 0) {
    if (!Accumulate) {
      for (Index r = 0; r < rows; ++r)
        std::fill(c + r * c_stride, c + r * c_stride + padded, Scalar(0));
    }
    return;
  }
  Index col = 0;
  for (; col + Tile::columns <= padded; col += Tile::columns) {
    register_rows<Tile::packets, Accumulate>(rows, depth, a, a_row, a_col, b + col, b_stride,
                                             c + col, c_stride);
  }
  const Index packets = (padded - col) / Tile::packet_size;  // fewer than Tile::packets
  if (packets > 0) {
    register_last_panel<Tile::packets, Accumulate>(packets, rows, depth, a, a_row, a_col, b + col,
                                                   b_stride, c + col, c_stride);
  }
}

/// dst(c, r) = scale · src(r, c) for r < rows, c < cols (row-major, strides in elements), in
/// P × P squares through registers (P the packet size) and scalars at the ragged edges; src may
/// be stored in a narrower type (queries in bfloat16 or half). The kernel transposes every query
/// block in and every output block out; element by element, with a strided load or store each,
/// that costs several percent of the kernel.
template <typename Element, typename Scalar>
void transpose_scaled(const Element* src, Index src_stride, Index rows, Index cols, Scalar scale,
                      Scalar* dst, Index dst_stride) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr int size = PacketTraits<Scalar>::size;
  const Packet factor = simd::broadcast<Packet>(scale);
  const Index whole_rows = rows / size * size, whole_cols = cols / size * size;
  for (Index r = 0; r < whole_rows; r += size) {
    for (Index c = 0; c < whole_cols; c += size) {
      Packet square[size];
      for (int i = 0; i < size; ++i)
        square[i] = load_as<Packet>(src + (r + i) * src_stride + c);
      simd::transpose(square);
      for (int i = 0; i < size; ++i)
        simd::store(dst + (c + i) * dst_stride + r, simd::mul(square[i], factor));
    }
  }
  for (Index r = 0; r < rows; ++r) {
    const Index first = r < whole_rows ? whole_cols : 0;  // the ragged right edge, or all
    for (Index c = first; c < cols; ++c)
      dst[c * dst_stride + r] = scale * to_scalar<Scalar>(src[r * src_stride + c]);
  }
}

/// out[r] = Σ_i a[i]·b[r·b_stride + i] for r < Rows and i < count, a multiple of the packet
/// size: a is loaded once for all Rows dot products; b may be stored in a narrower type,
/// converted as it is loaded. The decode path takes these per head and key rows; Eigen's dot on
/// a dynamic-size map spends about as much again on its size and alignment cases.
template <int Rows, typename Scalar, typename Element>
EIGEN_ALWAYS_INLINE void packet_dot_rows(const Scalar* a, const Element* b, Index b_stride,
                                         Index count, Scalar* out) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index size = PacketTraits<Scalar>::size;
  Packet sum[Rows];
  ATTN_DETAIL_UNROLL
  for (int r = 0; r < Rows; ++r)
    sum[r] = simd::broadcast<Packet>(Scalar(0));
  for (Index i = 0; i < count; i += size) {
    const Packet a_i = simd::load<Packet>(a + i);
    ATTN_DETAIL_UNROLL
    for (int r = 0; r < Rows; ++r)
      sum[r] = simd::fmadd(a_i, load_as<Packet>(b + r * b_stride + i), sum[r]);
  }
  if constexpr (Rows == 4) {
    simd::sum_lanes4(sum[0], sum[1], sum[2], sum[3], out);
  } else {
    ATTN_DETAIL_UNROLL
    for (int r = 0; r < Rows; ++r)
      out[r] = simd::sum_lanes(sum[r]);
  }
}

/// y[i] += Σ_r w[r]·x[r·x_stride + i] for r < Rows and i < count, a multiple of the packet size:
/// several value rows per pass over y, so y is loaded and stored once for all of them; x may be
/// stored in a narrower type.
template <int Rows, typename Scalar, typename Element>
EIGEN_ALWAYS_INLINE void packet_axpy_rows(const Scalar* w, const Element* x, Index x_stride,
                                          Scalar* y, Index count) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index size = PacketTraits<Scalar>::size;
  Packet weight[Rows];
  ATTN_DETAIL_UNROLL
  for (int r = 0; r < Rows; ++r)
    weight[r] = simd::broadcast<Packet>(w[r]);
  for (Index i = 0; i < count; i += size) {
    Packet sum = simd::load<Packet>(y + i);
    ATTN_DETAIL_UNROLL
    for (int r = 0; r < Rows; ++r)
      sum = simd::fmadd(weight[r], load_as<Packet>(x + r * x_stride + i), sum);
    simd::store(y + i, sum);
  }
}

}  // namespace attn::detail

#undef ATTN_DETAIL_UNROLL

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
