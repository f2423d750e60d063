// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/packet_math.hpp
/// attn's packet layer on Eigen's packet types (AVX-512, AVX2+FMA, SSE or NEON: whatever the
/// compiler was told to target): the operations the kernel uses, the softmax exponential, bit
/// tests on lanes and prefetching. The only header that uses Eigen::internal.

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

/// Packets of Scalar as the compiler was told to target them.
template <typename Scalar>
struct PacketTraits {
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  static constexpr int size = Eigen::internal::packet_traits<Scalar>::size;
};

/// attn's packet operations. Eigen does not promise that Eigen::internal stays as it is, so this
/// header is the one place that reaches into it: every other header of the kernel calls these.
/// Each takes whole packets (or, where noted, plain scalars as one-lane packets).
namespace simd {

template <typename Packet>
using ScalarOf = typename Eigen::internal::unpacket_traits<Packet>::type;

template <typename Packet>
EIGEN_ALWAYS_INLINE Packet load(const ScalarOf<Packet>* from) {
  return Eigen::internal::ploadu<Packet>(from);
}
template <typename Packet>
EIGEN_ALWAYS_INLINE void store(ScalarOf<Packet>* to, const Packet& x) {
  Eigen::internal::pstoreu(to, x);
}
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet broadcast(ScalarOf<Packet> x) {
  return Eigen::internal::pset1<Packet>(x);
}
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet add(const Packet& a, const Packet& b) {
  return Eigen::internal::padd(a, b);
}
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet sub(const Packet& a, const Packet& b) {
  return Eigen::internal::psub(a, b);
}
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet mul(const Packet& a, const Packet& b) {
  return Eigen::internal::pmul(a, b);
}
/// a·b + c (one instruction where the target has FMA).
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet fmadd(const Packet& a, const Packet& b, const Packet& c) {
  return Eigen::internal::pmadd(a, b, c);
}
/// Lane-wise max where a NaN in either operand wins.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet max_nan(const Packet& a, const Packet& b) {
  return Eigen::internal::pmax<Eigen::PropagateNaN>(a, b);
}
/// Lane-wise max that is cheaper than max_nan: where either operand is NaN, one of the two.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet max(const Packet& a, const Packet& b) {
  return Eigen::internal::pmax(a, b);
}
/// All bits set in the lanes where a == b (or a < b), zero elsewhere.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet equal(const Packet& a, const Packet& b) {
  return Eigen::internal::pcmp_eq(a, b);
}
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet less(const Packet& a, const Packet& b) {
  return Eigen::internal::pcmp_lt(a, b);
}
/// a & ~b, bitwise.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet and_not(const Packet& a, const Packet& b) {
  return Eigen::internal::pandnot(a, b);
}
/// mask's lanes (all bits set or none) choose a, else b.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet select(const Packet& mask, const Packet& a, const Packet& b) {
  return Eigen::internal::pselect(mask, a, b);
}
/// Every bit set.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet all_ones() {
  return Eigen::internal::ptrue(Eigen::internal::pset1<Packet>(ScalarOf<Packet>(0)));
}
/// The sum of the lanes.
template <typename Packet>
EIGEN_ALWAYS_INLINE ScalarOf<Packet> sum_lanes(const Packet& x) {
  return Eigen::internal::predux(x);
}
/// out[0..3] = the sums of the lanes of a, b, c and d: two shuffle-and-add steps shared by the
/// four, then one reduction of a single packet, where four sum_lanes would take four reductions.
/// (Float packets on x86 and AArch64; others reduce one by one.)
template <typename Packet>
EIGEN_ALWAYS_INLINE void sum_lanes4(const Packet& a, const Packet& b, const Packet& c,
                                    const Packet& d, ScalarOf<Packet>* out) {
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<Packet, __m512>) {
    // Per 128-bit lane: [a0 + a2, b0 + b2, a1 + a3, b1 + b3], and so for c, d; then
    // [a0 + a2, b0 + b2, c0 + c2, d0 + d2] + [a1 + a3, b1 + b3, c1 + c3, d1 + d3].
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    const __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                      _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 halves =
        _mm256_add_ps(_mm512_castps512_ps256(abcd),
                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    _mm_storeu_ps(out,
                  _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1)));
    return;
  }
#endif
#if defined(EIGEN_VECTORIZE_AVX)
  if constexpr (std::is_same_v<Packet, __m256>) {
    const __m256 ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    const __m256 cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    const __m256 abcd = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                      _mm256_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
    return;
  }
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
  if constexpr (std::is_same_v<Packet, __m128>) {
    const __m128 ab = _mm_add_ps(_mm_unpacklo_ps(a, b), _mm_unpackhi_ps(a, b));
    const __m128 cd = _mm_add_ps(_mm_unpacklo_ps(c, d), _mm_unpackhi_ps(c, d));
    _mm_storeu_ps(out, _mm_add_ps(_mm_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2))));
    return;
  }
#endif
#if defined(EIGEN_VECTORIZE_NEON) && defined(__aarch64__)
  if constexpr (std::is_same_v<Packet, float32x4_t>) {
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d)));
    return;
  }
#endif
  out[0] = sum_lanes(a);
  out[1] = sum_lanes(b);
  out[2] = sum_lanes(c);
  out[3] = sum_lanes(d);
}

/// The max of the lanes, NaN if any lane is NaN.
template <typename Packet>
EIGEN_ALWAYS_INLINE ScalarOf<Packet> max_lanes(const Packet& x) {
  return Eigen::internal::predux_max<Eigen::PropagateNaN>(x);
}
/// Transposes a square of P packets of P lanes, rows[i] holding row i.
template <typename Packet, int Size>
EIGEN_ALWAYS_INLINE void transpose(Packet (&rows)[Size]) {
  Eigen::internal::PacketBlock<Packet, Size> block;
  for (int i = 0; i < Size; ++i)
    block.packet[i] = rows[i];
  Eigen::internal::ptranspose(block);
  for (int i = 0; i < Size; ++i)
    rows[i] = block.packet[i];
}
/// Eigen's exponential (full range, any Scalar).
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet exp(const Packet& x) {
  return Eigen::internal::pexp(x);
}

}  // namespace simd

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
  using Scalar = typename Eigen::internal::unpacket_traits<Packet>::type;
  using Bits = typename FloatBits<Scalar>::Unsigned;
  constexpr int size = Eigen::internal::unpacket_traits<Packet>::size;
  Scalar lanes[size];
  Eigen::internal::pstoreu(lanes, mask);
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
struct has_integer_packet<
    Packet, std::void_t<typename Eigen::internal::unpacket_traits<Packet>::integer_packet>>
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
  using PacketI = typename Eigen::internal::unpacket_traits<Packet>::integer_packet;
  const Packet log2e = Eigen::internal::pset1<Packet>(1.44269504088896341f);
  PacketI n_int;
  Packet n;
  if constexpr (RoundByConversion) {
    // Conversion truncates toward zero, so for y = x·log₂e ≤ 0 it rounds y − ½ up: the integer
    // nearest y. −∞ and NaN become the integer minimum; the underflow mask below covers them.
    n_int = Eigen::internal::pcast<Packet, PacketI>(
        Eigen::internal::pmadd(x, log2e, Eigen::internal::pset1<Packet>(-0.5f)));
    n = Eigen::internal::pcast<PacketI, Packet>(n_int);
  } else {
    const Packet magic = Eigen::internal::pset1<Packet>(12582912.0f);
    Packet shifted = Eigen::internal::pmadd(x, log2e, magic);
    optimization_barrier(shifted);
    n = Eigen::internal::psub(shifted, magic);
    // The magic number's own bits shift out past bit 31 in 2^n below.
    n_int = Eigen::internal::preinterpret<PacketI>(shifted);
  }
  // r = x − n·ln 2 with ln 2 = 0.693359375 − 2.12194440·10⁻⁴ (Cody–Waite): the first part has 9
  // significant bits, so n times it is exact even where pmadd is a multiply and an add.
  Packet r = Eigen::internal::pmadd(n, Eigen::internal::pset1<Packet>(-0.693359375f), x);
  r = Eigen::internal::pmadd(n, Eigen::internal::pset1<Packet>(2.12194440e-4f), r);
  Packet p = Eigen::internal::pset1<Packet>(1.394110848e-03f);
  p = Eigen::internal::pmadd(p, r, Eigen::internal::pset1<Packet>(8.375125937e-03f));
  p = Eigen::internal::pmadd(p, r, Eigen::internal::pset1<Packet>(4.166635126e-02f));
  p = Eigen::internal::pmadd(p, r, Eigen::internal::pset1<Packet>(1.666641533e-01f));
  p = Eigen::internal::pmadd(p, r, Eigen::internal::pset1<Packet>(0.5f));
  p = Eigen::internal::pmadd(p, r, Eigen::internal::pset1<Packet>(1.0f));
  p = Eigen::internal::pmadd(p, r, Eigen::internal::pset1<Packet>(1.0f));
  // 2^n for −126 ≤ n ≤ 0 is the float with biased exponent n + 127 and a zero mantissa. Outside
  // that range the bits are garbage, and the mask below replaces them (NaN·garbage is NaN).
  const PacketI biased = Eigen::internal::padd(n_int, Eigen::internal::pset1<PacketI>(127));
  const Packet two_n =
      Eigen::internal::preinterpret<Packet>(Eigen::internal::plogical_shift_left<23>(biased));
  const Packet underflow =
      Eigen::internal::pcmp_lt(x, Eigen::internal::pset1<Packet>(-87.3365447f));
  return Eigen::internal::pandnot(Eigen::internal::pmul(p, two_n), underflow);
}

#if defined(EIGEN_VECTORIZE_AVX512)
/// softmax_exp_float's algorithm with two AVX-512 instructions that the generic packet operations
/// lack: VRNDSCALEPS rounds n, and VSCALEFPS computes p·2^n and zeroes the underflowing lanes
/// under a mask. That is five operations fewer per packet of the twenty the softmax spends, on
/// the two ports that also run the products' FMAs. The reduction and polynomial are
/// softmax_exp_float's, and so is the accuracy (n can differ only where x·log₂e is a tie to
/// within a float rounding, and r absorbs it). No rounding trick is involved, so no flag can fold
/// it away.
EIGEN_ALWAYS_INLINE __m512 softmax_exp_avx512(const __m512& x) {
  const __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.394110848e-03f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.375125937e-03f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166635126e-02f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666641533e-01f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  // Lanes with x ≥ ln 2⁻¹²⁶ keep p·2^n; the others (below the normal range, −∞, NaN) become 0 or
  // stay NaN: the comparison is false for NaN, so NaN lanes are kept, and p is NaN there.
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3365447f), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(keep, p, n);
}
#endif

/// e^x for the softmax, where x = logit − row max ≤ 0 or −∞: exactly 0 below the smallest normal
/// result (where Eigen's pexp returns a tiny positive number, which would make a fully masked
/// row look visible), NaN stays NaN. Float packets take the fast paths above (the AVX-512 one
/// for 16-lane packets); double and the scalar fallback take Eigen's pexp.
template <typename Packet>
EIGEN_ALWAYS_INLINE Packet softmax_exp(const Packet& x) {
  using Scalar = typename Eigen::internal::unpacket_traits<Packet>::type;
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<Packet, __m512>) return softmax_exp_avx512(x);
#endif
  if constexpr (std::is_same_v<Scalar, float> && has_integer_packet<Packet>::value) {
    return softmax_exp_float(x);
  } else {
    // log of the smallest normal number: −87.34 (float), −708.40 (double).
    constexpr Scalar log_min =
        std::is_same_v<Scalar, float> ? Scalar(-87.3365447f) : Scalar(-708.396418532264);
    const Packet underflow = Eigen::internal::pset1<Packet>(log_min);
    return Eigen::internal::pandnot(Eigen::internal::pexp(x),
                                    Eigen::internal::pcmp_lt(x, underflow));
  }
}

}  // namespace attn::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
