// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file detail/convert.hpp
/// Loads of stored elements (float, double, bfloat16, half, int8) as packets of the type they
/// compute in, converted in registers: the native instructions where the compiler was told the
/// target has them (AVX-512F, AVX2, F16C, SSE2/SSE4.1, NEON), otherwise lane by lane through the
/// portable scalar conversions. Every path gives the exact value of the stored element.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../paged_view.hpp"
#include "../storage.hpp"
#include "../types.hpp"
#include "packet_math.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace attn::detail {

/// What a row of Storage holds: int8 for qint8 (its scales live apart), Storage otherwise.
template <typename Storage>
using element_t = std::conditional_t<std::is_same_v<Storage, qint8>, std::int8_t, Storage>;

/// One stored element as Scalar (exact: every bfloat16, half and int8 is a float).
template <typename Scalar, typename Element>
EIGEN_ALWAYS_INLINE Scalar to_scalar(const Element& x) {
  return static_cast<Scalar>(x);
}
template <typename Scalar>
EIGEN_ALWAYS_INLINE Scalar to_scalar(const std::int8_t& x) {
  return static_cast<Scalar>(int(x));
}

/// A packet of the elements at `from`, converted to the packet's scalars.
template <typename Packet, typename Element>
EIGEN_ALWAYS_INLINE Packet load_as(const Element* from) {
  using Scalar = simd::ScalarOf<Packet>;
  if constexpr (std::is_same_v<Element, Scalar>) {
    return simd::load<Packet>(from);
  } else {
#if defined(EIGEN_VECTORIZE_AVX512)
    if constexpr (std::is_same_v<Packet, __m512>) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from));
      if constexpr (std::is_same_v<Element, bfloat16>)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      if constexpr (std::is_same_v<Element, half>) return _mm512_cvtph_ps(h);
    }
    if constexpr (std::is_same_v<Packet, __m512> && std::is_same_v<Element, std::int8_t>) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from));
      return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
    }
#endif
#if defined(EIGEN_VECTORIZE_AVX2)
    if constexpr (std::is_same_v<Packet, __m256>) {
      if constexpr (std::is_same_v<Element, bfloat16>) {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(from));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      }
      if constexpr (std::is_same_v<Element, std::int8_t>) {
        const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(from));
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      }
    }
#endif
#if defined(EIGEN_VECTORIZE_AVX) && defined(__F16C__)
    if constexpr (std::is_same_v<Packet, __m256> && std::is_same_v<Element, half>)
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from)));
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
    if constexpr (std::is_same_v<Packet, __m128>) {
      if constexpr (std::is_same_v<Element, bfloat16>) {
        // Interleaving zeros below each 16-bit value puts it in the top half of a 32-bit lane:
        // the float it stands for.
        const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(from));
        return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));
      }
#if defined(__F16C__)
      if constexpr (std::is_same_v<Element, half>)
        return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(from)));
#endif
#if defined(EIGEN_VECTORIZE_SSE4_1)
      if constexpr (std::is_same_v<Element, std::int8_t>) {
        std::int32_t bytes;
        std::memcpy(&bytes, from, sizeof bytes);
        return _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(bytes)));
      }
#endif
    }
#endif
#if defined(EIGEN_VECTORIZE_NEON) && defined(__aarch64__)
    if constexpr (std::is_same_v<Packet, float32x4_t>) {
      if constexpr (std::is_same_v<Element, bfloat16>) {
        const uint16x4_t h = vld1_u16(reinterpret_cast<const std::uint16_t*>(from));
        return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
      }
      if constexpr (std::is_same_v<Element, half>) {
        const uint16x4_t h = vld1_u16(reinterpret_cast<const std::uint16_t*>(from));
        return vcvt_f32_f16(vreinterpret_f16_u16(h));
      }
      if constexpr (std::is_same_v<Element, std::int8_t>) {
        std::int32_t bytes;
        std::memcpy(&bytes, from, sizeof bytes);
        const int16x8_t wide = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(bytes)));
        return vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)));
      }
    }
#endif
    // The portable path: lane by lane.
    constexpr int size = int(sizeof(Packet) / sizeof(Scalar));
    Scalar lanes[size];
    for (int i = 0; i < size; ++i)
      lanes[i] = to_scalar<Scalar>(from[i]);
    return simd::load<Packet>(lanes);
  }
}

/// Which conversion load_as compiles to for Element into float packets here: "native" or
/// "portable" (for tests and benchmark labels).
template <typename Element>
constexpr const char* float_conversion_path() {
  using Packet = typename PacketTraits<float>::Packet;
  static_assert(sizeof(Packet) >= sizeof(float));
#if defined(EIGEN_VECTORIZE_AVX512)
  if constexpr (std::is_same_v<Packet, __m512>) return "native";
#endif
#if defined(EIGEN_VECTORIZE_AVX2)
  if constexpr (std::is_same_v<Packet, __m256> && !std::is_same_v<Element, half>) return "native";
#endif
#if defined(EIGEN_VECTORIZE_AVX) && defined(__F16C__)
  if constexpr (std::is_same_v<Packet, __m256> && std::is_same_v<Element, half>) return "native";
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
  if constexpr (std::is_same_v<Packet, __m128>) {
    if constexpr (std::is_same_v<Element, bfloat16>) return "native";
#if defined(__F16C__)
    if constexpr (std::is_same_v<Element, half>) return "native";
#endif
#if defined(EIGEN_VECTORIZE_SSE4_1)
    if constexpr (std::is_same_v<Element, std::int8_t>) return "native";
#endif
  }
#endif
#if defined(EIGEN_VECTORIZE_NEON) && defined(__aarch64__)
  if constexpr (std::is_same_v<Packet, float32x4_t>) return "native";
#endif
  return "portable";
}

/// The factor row r of a view's group `group_index` is stored with: its scale for qint8, 1
/// otherwise (the compiler then drops the multiplication).
template <typename Scalar, typename View>
EIGEN_ALWAYS_INLINE Scalar row_scale(const View&, Index, Index) {
  return Scalar(1);
}
template <typename Scalar>
EIGEN_ALWAYS_INLINE Scalar row_scale(const QuantizedView& view, Index r, Index group_index) {
  return view.scales()[r * view.scale_stride() + group_index];
}

/// Whether a view's rows are stored with a scale each.
template <typename View>
inline constexpr bool is_quantized_view = std::is_same_v<std::remove_cv_t<View>, QuantizedView>;

/// dst(r, c) = src(first + r, col + c) as Scalar for r < count, c < cols (dst row-major with row
/// stride dst_stride): stored rows converted, and dequantised, into rows the register tiles read.
/// For qint8 the columns must lie in one group (a head).
template <typename Scalar, typename View>
void convert_rows(const View& src, Index first, Index count, Index col, Index cols, Scalar* dst,
                  Index dst_stride) {
  using Packet = typename PacketTraits<Scalar>::Packet;
  constexpr Index size = PacketTraits<Scalar>::size;
  const Index whole = cols / size * size;
  for (Index r = 0; r < count; ++r) {
    const auto* row = src.data() + (first + r) * src.outerStride() + col;
    Scalar* out = dst + r * dst_stride;
    if constexpr (is_quantized_view<View>) {
      const Scalar scale = row_scale<Scalar>(src, first + r, col / src.group());
      const Packet factor = simd::broadcast<Packet>(scale);
      for (Index c = 0; c < whole; c += size)
        simd::store(out + c, simd::mul(load_as<Packet>(row + c), factor));
      for (Index c = whole; c < cols; ++c)
        out[c] = scale * to_scalar<Scalar>(row[c]);
    } else {
      for (Index c = 0; c < whole; c += size)
        simd::store(out + c, load_as<Packet>(row + c));
      for (Index c = whole; c < cols; ++c)
        out[c] = to_scalar<Scalar>(row[c]);
    }
  }
}

/// Whether every element of rows [first, first + count), columns [col, col + cols) of a view is
/// finite (on the bits, right under -ffinite-math-only). qint8 rows always are: quantisation
/// rejects what is not.
template <typename View>
bool rows_finite(const View& view, Index first, Index count, Index col, Index cols) {
  if constexpr (is_quantized_view<View>) {
    (void)view, (void)first, (void)count, (void)col, (void)cols;
    return true;
  } else {
    using Element = typename View::Scalar;
    if (count == 0 || cols == 0) return true;  // (the view may have no storage)
    const Element* data = view.data() + first * view.outerStride() + col;
    if constexpr (std::is_same_v<Element, float> || std::is_same_v<Element, double>) {
      return all_finite(data, view.outerStride(), count, cols);
    } else {
      // bfloat16: exponent bits 0x7f80; half: 0x7c00.
      constexpr std::uint16_t exponent = std::is_same_v<Element, bfloat16> ? 0x7f80 : 0x7c00;
      for (Index r = 0; r < count; ++r) {
        const Element* row = data + r * view.outerStride();
        unsigned any_all_ones = 0;
        for (Index c = 0; c < cols; ++c) {
          std::uint16_t bits;
          std::memcpy(&bits, row + c, sizeof bits);
          any_all_ones |= (bits & exponent) == exponent;
        }
        if (any_all_ones != 0) return false;
      }
      return true;
    }
  }
}

/// convert_rows over a paged view: run by run.
template <typename Scalar, typename S>
void convert_rows(const PagedView<S>& src, Index first, Index count, Index col, Index cols,
                  Scalar* dst, Index dst_stride) {
  while (count > 0) {
    const auto run = src.run_from(first);
    const Index rows = std::min(count, run.rows());
    convert_rows(run, 0, rows, col, cols, dst, dst_stride);
    first += rows;
    count -= rows;
    dst += rows * dst_stride;
  }
}

/// rows_finite over a paged view: run by run.
template <typename S>
bool rows_finite(const PagedView<S>& view, Index first, Index count, Index col, Index cols) {
  while (count > 0) {
    const auto run = view.run_from(first);
    const Index rows = std::min(count, run.rows());
    if (!rows_finite(run, 0, rows, col, cols)) return false;
    first += rows;
    count -= rows;
  }
  return true;
}

}  // namespace attn::detail

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
