// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/packet_math.hpp
/// The register-blocked inner kernel and the softmax exponential, on Eigen's packet types
/// (AVX-512, AVX2+FMA, SSE or NEON: whatever the compiler was told to target).

#include <cstdint>
#include <type_traits>

#include "../types.hpp"
#include "float_bits.hpp"

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
/// packets. The whole Rows × 2P tile of C stays in registers over the depth loop. If column_max
/// is given, its 2P entries become the max of themselves and the tile's columns (NaN wins), which
/// spares the softmax a pass over the tile.
template <int Rows, bool Accumulate, typename Scalar>
EIGEN_ALWAYS_INLINE void register_tile(Index depth, const Scalar* a, Index a_row, Index a_col,
                                       const Scalar* b, Index b_stride, Scalar* c, Index c_stride,
                                       Scalar* column_max) {
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
  if (column_max != nullptr) {
    Packet max_left = packet::ploadu<Packet>(column_max);
    Packet max_right = packet::ploadu<Packet>(column_max + size);
    ATTN_UNROLL
    for (int r = 0; r < Rows; ++r) {
      max_left = packet::pmax<Eigen::PropagateNaN>(max_left, left[r]);
      max_right = packet::pmax<Eigen::PropagateNaN>(max_right, right[r]);
    }
    packet::pstoreu(column_max, max_left);
    packet::pstoreu(column_max + size, max_right);
  }
}

/// C (=, or +=) A·B for a `rows` × 2P block of C, in register tiles of PacketTraits::tile_rows
/// rows and one smaller tile for the remainder; column_max as for register_tile.
template <bool Accumulate, typename Scalar>
void register_block(Index rows, Index depth, const Scalar* a, Index a_row, Index a_col,
                    const Scalar* b, Index b_stride, Scalar* c, Index c_stride,
                    Scalar* column_max = nullptr) {
  constexpr int tile = PacketTraits<Scalar>::tile_rows;
  Index r = 0;
  for (; r + tile <= rows; r += tile) {
    register_tile<tile, Accumulate>(depth, a + r * a_row, a_row, a_col, b, b_stride,
                                    c + r * c_stride, c_stride, column_max);
  }
  const Scalar* a_r = a + r * a_row;
  Scalar* c_r = c + r * c_stride;
  switch (rows - r) {
    case 5:
      register_tile<5, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride,
                                   column_max);
      break;
    case 4:
      register_tile<4, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride,
                                   column_max);
      break;
    case 3:
      register_tile<3, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride,
                                   column_max);
      break;
    case 2:
      register_tile<2, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride,
                                   column_max);
      break;
    case 1:
      register_tile<1, Accumulate>(depth, a_r, a_row, a_col, b, b_stride, c_r, c_stride,
                                   column_max);
      break;
    default:
      break;
  }
}

/// dst(c, r) = scale · src(r, c) for r < rows, c < cols (row-major, strides in scalars), in
/// P × P squares through registers (P the packet size) and scalars at the ragged edges. The
/// kernel transposes every query block in and every output block out; element by element that
/// cost 7 % of the time at 8 heads, d = 64 (strided loads and stores, one per element).
template <typename Scalar>
void transpose_scaled(const Scalar* src, Index src_stride, Index rows, Index cols, Scalar scale,
                      Scalar* dst, Index dst_stride) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index size = PacketTraits<Scalar>::size;
  const Packet factor = packet::pset1<Packet>(scale);
  const Index whole_rows = rows / size * size, whole_cols = cols / size * size;
  for (Index r = 0; r < whole_rows; r += size) {
    for (Index c = 0; c < whole_cols; c += size) {
      packet::PacketBlock<Packet, size> square;
      for (Index i = 0; i < size; ++i)
        square.packet[i] = packet::ploadu<Packet>(src + (r + i) * src_stride + c);
      packet::ptranspose(square);
      for (Index i = 0; i < size; ++i)
        packet::pstoreu(dst + (c + i) * dst_stride + r, packet::pmul(square.packet[i], factor));
    }
  }
  for (Index r = 0; r < rows; ++r) {
    const Index first = r < whole_rows ? whole_cols : 0;  // the ragged right edge, or all
    for (Index c = first; c < cols; ++c)
      dst[c * dst_stride + r] = scale * src[r * src_stride + c];
  }
}

/// out[r] = Σ_i a[i]·b[r·b_stride + i] for r < Rows and i < count, a multiple of the packet
/// size: a is loaded once for all Rows dot products. The decode path takes these per head and
/// key rows; Eigen's dot on a dynamic-size map spends about as much again on its size and
/// alignment cases.
template <int Rows, typename Scalar>
EIGEN_ALWAYS_INLINE void packet_dot_rows(const Scalar* a, const Scalar* b, Index b_stride,
                                         Index count, Scalar* out) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index size = PacketTraits<Scalar>::size;
  Packet sum[Rows];
  ATTN_UNROLL
  for (int r = 0; r < Rows; ++r)
    sum[r] = packet::pset1<Packet>(Scalar(0));
  for (Index i = 0; i < count; i += size) {
    const Packet a_i = packet::ploadu<Packet>(a + i);
    ATTN_UNROLL
    for (int r = 0; r < Rows; ++r)
      sum[r] = packet::pmadd(a_i, packet::ploadu<Packet>(b + r * b_stride + i), sum[r]);
  }
  ATTN_UNROLL
  for (int r = 0; r < Rows; ++r)
    out[r] = packet::predux(sum[r]);
}

/// y[i] += Σ_r w[r]·x[r·x_stride + i] for r < Rows and i < count, a multiple of the packet size:
/// several value rows per pass over y, so y is loaded and stored once for all of them.
template <int Rows, typename Scalar>
EIGEN_ALWAYS_INLINE void packet_axpy_rows(const Scalar* w, const Scalar* x, Index x_stride,
                                          Scalar* y, Index count) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index size = PacketTraits<Scalar>::size;
  Packet weight[Rows];
  ATTN_UNROLL
  for (int r = 0; r < Rows; ++r)
    weight[r] = packet::pset1<Packet>(w[r]);
  for (Index i = 0; i < count; i += size) {
    Packet sum = packet::ploadu<Packet>(y + i);
    ATTN_UNROLL
    for (int r = 0; r < Rows; ++r)
      sum = packet::pmadd(weight[r], packet::ploadu<Packet>(x + r * x_stride + i), sum);
    packet::pstoreu(y + i, sum);
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

/// Whether any lane of a comparison's result (all bits set where true) is true. Eigen's generic
/// predux_any, which double packets get, adds the lanes as numbers, where all bits set is NaN:
/// under -ffinite-math-only the compiler may then take NaN != 0 to be false. Or-ing the lanes'
/// bits as integers holds under any flags.
template <typename Packet>
EIGEN_ALWAYS_INLINE bool any_lane(const Packet& mask) {
  using Scalar = typename packet::unpacket_traits<Packet>::type;
  using Bits = typename FloatBits<Scalar>::Unsigned;
  constexpr int size = packet::unpacket_traits<Packet>::size;
  Scalar lanes[size];
  packet::pstoreu(lanes, mask);
  Bits any = 0;
  for (int i = 0; i < size; ++i)
    any |= FloatBits<Scalar>::of(lanes[i]);
  return any != 0;
}

/// Whether Packet has an integer packet of the same width (every SIMD float packet of Eigen's;
/// not double on AVX2, not the scalar fallback), which the fast exponential needs.
template <typename Packet, typename = void>
struct has_integer_packet : std::false_type {};
template <typename Packet>
struct has_integer_packet<Packet,
                          std::void_t<typename packet::unpacket_traits<Packet>::integer_packet>>
    : std::true_type {};

/// Whether optimization_barrier exists here: on GCC-compatible compilers for x86 and ARM.
#if defined(__GNUC__) && (defined(__SSE2__) || defined(__ARM_NEON))
inline constexpr bool has_optimization_barrier = true;
#else
inline constexpr bool has_optimization_barrier = false;
#endif

/// Makes x opaque to the optimiser, at no cost: an empty assembly statement that claims to change
/// the vector register x lives in. Eigen's EIGEN_OPTIMIZATION_BARRIER allows a general register or
/// memory too, and clang then takes memory: a store and a load per packet.
template <typename Packet>
EIGEN_ALWAYS_INLINE void optimization_barrier(Packet& x) {
#if defined(__GNUC__) && defined(__SSE2__)
  __asm__("" : "+v"(x));  // any SSE/AVX register (with AVX-512, xmm16–31 too)
#elif defined(__GNUC__) && defined(__ARM_NEON)
  __asm__("" : "+w"(x));  // any NEON register
#else
  (void)x;
#endif
}

/// e^x for float packets with x ≤ 0 (or −∞, or NaN), in few operations: x = n·ln 2 + r with
/// n = round(x·log₂e) and |r| ≤ ln 2 / 2 (r accurate to an ulp whatever n is),
/// e^r from a degree-6 polynomial (the interpolant at the Chebyshev nodes: 2·10⁻⁸ relative error,
/// 8·10⁻⁸ after float Horner rounding), 2^n written straight into the exponent bits. About 17
/// operations per packet where Eigen's pexp, built for the whole range, takes about 28; the
/// softmax evaluates one per logit, which makes it the kernel's largest cost after the two
/// products. Results below the smallest normal (x < ln 2⁻¹²⁶) are exactly 0, as are those of −∞;
/// NaN stays NaN.
///
/// n is rounded one of two ways, both right under -ffast-math:
/// - By default, adding 1.5·2²³ to x·log₂e rounds it (in the current, round-to-nearest mode) and
///   leaves n in the low mantissa bits, for |n| < 2²²: no rounding instruction, no conversion.
///   -fassociative-math lets the compiler fold (y + c) − c back into y, which without FMA left n
///   unrounded and the results wrong by percents; an optimisation barrier on the sum forbids it.
/// - Where that barrier is unavailable (RoundByConversion), a conversion to integer: beyond any
///   floating-point flag, and a little slower (bench/bench_exp.cpp measures both).
template <typename Packet, bool RoundByConversion = !has_optimization_barrier>
EIGEN_ALWAYS_INLINE Packet softmax_exp_float(const Packet& x) {
  using PacketI = typename packet::unpacket_traits<Packet>::integer_packet;
  const Packet log2e = packet::pset1<Packet>(1.44269504088896341f);
  PacketI n_int;
  Packet n;
  if constexpr (RoundByConversion) {
    // Conversion truncates toward zero, so for y = x·log₂e ≤ 0 it rounds y − ½ up: the integer
    // nearest y. −∞ and NaN become the integer minimum; the underflow mask below covers them.
    n_int = packet::pcast<Packet, PacketI>(packet::pmadd(x, log2e, packet::pset1<Packet>(-0.5f)));
    n = packet::pcast<PacketI, Packet>(n_int);
  } else {
    const Packet magic = packet::pset1<Packet>(12582912.0f);
    Packet shifted = packet::pmadd(x, log2e, magic);
    optimization_barrier(shifted);
    n = packet::psub(shifted, magic);
    // The magic number's own bits shift out past bit 31 in 2^n below.
    n_int = packet::preinterpret<PacketI>(shifted);
  }
  // r = x − n·ln 2 with ln 2 = 0.693359375 − 2.12194440·10⁻⁴ (Cody–Waite): the first part has 9
  // significant bits, so n times it is exact even where pmadd is a multiply and an add.
  Packet r = packet::pmadd(n, packet::pset1<Packet>(-0.693359375f), x);
  r = packet::pmadd(n, packet::pset1<Packet>(2.12194440e-4f), r);
  Packet p = packet::pset1<Packet>(1.394110848e-03f);
  p = packet::pmadd(p, r, packet::pset1<Packet>(8.375125937e-03f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(4.166635126e-02f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(1.666641533e-01f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(0.5f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(1.0f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(1.0f));
  // 2^n for −126 ≤ n ≤ 0 is the float with biased exponent n + 127 and a zero mantissa. Outside
  // that range the bits are garbage, and the mask below replaces them (NaN·garbage is NaN).
  const PacketI biased = packet::padd(n_int, packet::pset1<PacketI>(127));
  const Packet two_n = packet::preinterpret<Packet>(packet::plogical_shift_left<23>(biased));
  const Packet underflow = packet::pcmp_lt(x, packet::pset1<Packet>(-87.3365447f));
  return packet::pandnot(packet::pmul(p, two_n), underflow);
}

/// e^x for the softmax, where x = logit − row max ≤ 0 or −∞: exactly 0 below the smallest normal
/// result (where Eigen's pexp returns a tiny positive number, which would make a fully masked
/// row look visible), NaN stays NaN. Float packets take the fast path above; double and the
/// scalar fallback take Eigen's pexp.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet softmax_exp(const Packet& x) {
  using Scalar = typename packet::unpacket_traits<Packet>::type;
  if constexpr (std::is_same_v<Scalar, float> && has_integer_packet<Packet>::value) {
    return softmax_exp_float(x);
  } else {
    // log of the smallest normal number: −87.34 (float), −708.40 (double).
    constexpr Scalar log_min =
        std::is_same_v<Scalar, float> ? Scalar(-87.3365447f) : Scalar(-708.396418532264);
    const Packet underflow = packet::pset1<Packet>(log_min);
    return packet::pandnot(packet::pexp(x), packet::pcmp_lt(x, underflow));
  }
}

}  // namespace attn::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
