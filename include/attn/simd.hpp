// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file simd.hpp
/// Which instruction set this build of attn computes with. attn is header-only: its SIMD code is
/// whatever the flags of the translation unit that includes it select (-march=native,
/// -march=x86-64-v3, -mavx2, ...), through Eigen's packet types, with no dispatch at run time.

#include <string>

#include "detail/packet_math.hpp"

namespace attn {

/// One line naming the instruction set, the packet width and the floating-point mode this
/// translation unit was compiled for, e.g. "AVX-512 + FMA: 512-bit packets (16 floats,
/// 8 doubles)", "SSE2: 128-bit packets (4 floats, 2 doubles); -ffast-math", or "no SIMD:
/// scalars" where Eigen's vectorisation is off (EIGEN_DONT_VECTORIZE). Print it beside
/// timings: a build without -march flags runs x86-64's baseline SSE2 even on an AVX-512 CPU.
inline std::string simd_instruction_set() {
#if defined(EIGEN_VECTORIZE_AVX512)
  std::string name = "AVX-512";
#elif defined(EIGEN_VECTORIZE_AVX2)
  std::string name = "AVX2";
#elif defined(EIGEN_VECTORIZE_AVX)
  std::string name = "AVX";
#elif defined(EIGEN_VECTORIZE_SSE4_2)
  std::string name = "SSE4.2";
#elif defined(EIGEN_VECTORIZE_SSE4_1)
  std::string name = "SSE4.1";
#elif defined(EIGEN_VECTORIZE_SSSE3)
  std::string name = "SSSE3";
#elif defined(EIGEN_VECTORIZE_SSE3)
  std::string name = "SSE3";
#elif defined(EIGEN_VECTORIZE_SSE2)
  std::string name = "SSE2";
#elif defined(EIGEN_VECTORIZE_NEON)
  std::string name = "NEON";
#elif defined(EIGEN_VECTORIZE_SVE)
  std::string name = "SVE";
#elif defined(EIGEN_VECTORIZE_ALTIVEC) || defined(EIGEN_VECTORIZE_VSX)
  std::string name = "AltiVec/VSX";
#elif defined(EIGEN_VECTORIZE)
  std::string name = "SIMD";
#else
  std::string name = "no SIMD";
#endif
#if defined(EIGEN_VECTORIZE_FMA) || defined(__ARM_FEATURE_FMA)
  name += " + FMA";
#endif
  constexpr int floats = detail::PacketTraits<float>::size;
  constexpr int doubles = detail::PacketTraits<double>::size;
  if (floats == 1 && doubles == 1) {
    name += ": scalars";
  } else {
    name += ": " + std::to_string(floats * 32) + "-bit packets (" + std::to_string(floats) +
            " floats, " + std::to_string(doubles) + " doubles)";
  }
#if defined(__FAST_MATH__)
  name += "; -ffast-math";
#elif defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__
  name += "; -ffinite-math-only";
#endif
  return name;
}

}  // namespace attn
