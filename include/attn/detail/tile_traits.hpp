// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/tile_traits.hpp
/// The shape of the register tile per instruction set, and the block sizes per problem: what
/// Eigen's gebp_traits and its blocking do for a GEMM, for the kernel's two products.

#include <algorithm>
#include <Eigen/Core>

#include "../types.hpp"
#include "packet_math.hpp"

namespace attn::detail {

/// The instruction set the tiles are shaped for: what the compiler was told to target.
enum class SimdTarget { avx512, avx2_fma, sse, neon64, neon32, generic };

inline constexpr SimdTarget simd_target =
#if defined(__AVX512F__)
    SimdTarget::avx512;
#elif defined(__AVX2__) && defined(__FMA__)
    SimdTarget::avx2_fma;
#elif defined(__SSE2__)  // SSE2 to SSE4.2, and AVX or AVX2 without FMA
    SimdTarget::sse;
#elif defined(__ARM_NEON) && defined(__aarch64__)
    SimdTarget::neon64;
#elif defined(__ARM_NEON)
    SimdTarget::neon32;
#else
    SimdTarget::generic;
#endif

/// The register tile of both products per instruction set, as Eigen's gebp_traits chooses its
/// GEMM's: C (rows × packets·P) += A (rows × depth) · B (depth × packets·P). Each depth step loads
/// `packets` packets of B, broadcasts `rows` elements of A and issues rows·packets FMAs into
/// accumulators that stay in registers.
///
/// The shape follows from three limits. Accumulators + B's packets + a broadcast must fit the
/// vector registers, or the compiler spills them. rows·packets accumulators must cover the FMA
/// latency times the FMA pipes (about 4 × 2 on current x86 and ARM cores) so that the pipes never
/// wait on a result. And every load should feed as many FMAs as it can: a step issues `packets`
/// loads and `rows` broadcasts for rows·packets FMAs.
template <SimdTarget Target>
struct TileShape;

/// 32 registers: 6 × 4 packets, 24 accumulators + 5. With 16 floats a packet the tile spans a
/// whole query block of 64, so each of the block's products is one sweep over the key rows; 10
/// loads feed 24 FMAs, where an 8 × 2 tile feeds 16.
template <>
struct TileShape<SimdTarget::avx512> {
  static constexpr int registers = 32, rows = 6, packets = 4;
};
/// 16 registers: 6 × 2 packets, 12 accumulators + 3; a wider tile would spill.
template <>
struct TileShape<SimdTarget::avx2_fma> {
  static constexpr int registers = 16, rows = 6, packets = 2;
};
/// 16 registers, and FMAs are a multiply and an add: the AVX2 tile, whose 12 accumulators also
/// cover the longer latency of that pair.
template <>
struct TileShape<SimdTarget::sse> {
  static constexpr int registers = 16, rows = 6, packets = 2;
};
/// AArch64: 32 registers of 4 floats, the AVX-512 tile (16 queries wide).
template <>
struct TileShape<SimdTarget::neon64> {
  static constexpr int registers = 32, rows = 6, packets = 4;
};
/// 32-bit ARM: 16 registers, the AVX2 tile.
template <>
struct TileShape<SimdTarget::neon32> {
  static constexpr int registers = 16, rows = 6, packets = 2;
};
/// No SIMD (or Eigen's vectorisation turned off): 4 × 2 scalars in the floating-point registers.
template <>
struct TileShape<SimdTarget::generic> {
  static constexpr int registers = 16, rows = 4, packets = 2;
};

/// The tile for Scalar: the target's shape, or the generic one where Eigen gives Scalar no packet
/// wider than one lane.
template <typename Scalar>
struct TileTraits {
  static constexpr int packet_size = PacketTraits<Scalar>::size;
  using Shape = TileShape<packet_size == 1 ? SimdTarget::generic : simd_target>;
  static constexpr int rows = Shape::rows;
  static constexpr int packets = Shape::packets;
  /// Queries per register tile (its columns).
  static constexpr Index columns = Index(packets) * packet_size;
  static_assert(rows * packets + packets + 1 <= Shape::registers,
                "the register tile must fit the vector registers");
};

/// Block sizes of the prefill path for one problem's head dims, from the cache sizes Eigen
/// detects (Eigen::l1CacheSize() and l2CacheSize(): CPUID on x86, defaults elsewhere).
///
/// A query block of Bq queries keeps three transposed blocks: scale·Qᵀ (d × Bq), the logits Sᵀ
/// (Bk × Bq) and the accumulator Oᵀ (dv × Bq); a key block is Bk rows of K and of V. The register
/// tiles sweep the key block: S = K_b·Qᵀ reads each K row once per column panel, O += V_bᵀ·Pᵀ
/// broadcasts from every V row once per tile of value columns, so the V rows are read dv / rows
/// times. So:
/// - Bk: the key block's K and V rows, Bk·(d + dv) scalars, fill at most ¾ of L1 (the rest holds
///   the panels of Qᵀ, Pᵀ and Oᵀ a tile is working on, streamed from L2 by the hardware
///   prefetchers), rounded down to whole register tiles, within [rows, 128]. The depth of the
///   P·V tiles is Bk, so a larger block also spreads each tile's load and store of Oᵀ over more
///   FMAs.
/// - Bq: 64 queries, a whole number of tiles, fewer only if the three blocks would not fit half
///   of L2. K and V then stream from L2 or L3 once per query block at Bq / 2 FLOP per byte, far
///   below what those caches deliver, so larger blocks gain nothing and balance worse over
///   threads.
/// - Bd (decode): the decode path is memory-bound and walks each key row across all heads, so
///   its tiles only need to hold Bd logits per query and head next to the key rows: 64.
/// The sizes never depend on the thread count, so neither does any result.
struct BlockSizes {
  Index query_rows;   // Bq
  Index key_rows;     // Bk
  Index decode_keys;  // Bd
  /// Row stride of the transposed blocks: one cache line more than Bq. A row of 64 floats is 256
  /// bytes, so a column panel (one line per row) would fall into a quarter of the L1's sets, the
  /// same quarter in all three blocks; the extra line spreads each panel over all the sets.
  Index block_stride;

  template <typename Scalar>
  static BlockSizes of(Index head_dim, Index value_dim) {
    using Tile = TileTraits<Scalar>;
    const Index scalar = Index(sizeof(Scalar));
    const Index l1 = std::max<Index>(Index(Eigen::l1CacheSize()), 16 * 1024) / scalar;
    const Index l2 = std::max<Index>(Index(Eigen::l2CacheSize()), 256 * 1024) / scalar;
    const Index fit = l1 * 3 / 4 / std::max<Index>(head_dim + value_dim, 1);
    const Index most = 128 / Tile::rows * Tile::rows;
    const Index key_rows = std::clamp<Index>(fit / Tile::rows * Tile::rows, Tile::rows, most);
    Index query_rows = std::max<Index>(64 / Tile::columns, 1) * Tile::columns;
    while (query_rows > Tile::columns && query_rows * (head_dim + key_rows + value_dim) > l2 / 2) {
      query_rows -= Tile::columns;
    }
    return {query_rows, key_rows, 64, query_rows + 64 / scalar};
  }
};

}  // namespace attn::detail
