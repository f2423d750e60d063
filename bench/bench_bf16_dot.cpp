// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// Does AVX512-BF16's VDPBF16PS pay for the logits S = K_b·Qᵀ of a bfloat16 cache? Each
// instruction multiplies 16 pairs of bfloat16 and adds both products to 16 floats: twice the
// multiply-adds of an FMA, and exact products (two 8-bit mantissas fit a float's), so for q and k
// both in bfloat16 it would compute what the float path computes. This measures the register tile
// of the prefill path (6 key rows × 64 queries, depth 64, in L1) both ways, in one run:
//
//   FmaTile    K and Qᵀ in float, FMA (what the kernel runs, after converting a bfloat16 key
//              block into L1 scratch)
//   Bf16Tile   K in bfloat16 pairs, Qᵀ as interleaved bfloat16 pairs, VDPBF16PS
//
// Built only where the compiler targets AVX512-BF16 (e.g. -march=native on such a CPU);
// elsewhere it says so and exits. GFLOP/s count 2 flops per multiply-add either way.
//
//   ./build/native/bench/bench_bf16_dot --benchmark_repetitions=5

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>

namespace {

constexpr int depth = 64, key_rows = 96, queries = 64, stride = queries + 16, rows = 6;

__attribute__((noinline)) void fma_block(const float* k, const float* q_t, float* s) {
  for (int r0 = 0; r0 < key_rows; r0 += rows) {
    __m512 acc[rows][4];
    for (auto& row : acc)
      for (auto& a : row)
        a = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int t = 0; t < depth; ++t) {
      __m512 b[4];
      for (int i = 0; i < 4; ++i)
        b[i] = _mm512_loadu_ps(q_t + t * stride + 16 * i);
      for (int r = 0; r < rows; ++r) {
        const __m512 a = _mm512_set1_ps(k[(r0 + r) * depth + t]);
        for (int i = 0; i < 4; ++i)
          acc[r][i] = _mm512_fmadd_ps(a, b[i], acc[r][i]);
      }
    }
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < 4; ++i)
        _mm512_storeu_ps(s + (r0 + r) * stride + 16 * i, acc[r][i]);
  }
}

__attribute__((noinline)) void bf16_block(const std::uint16_t* k, const std::uint32_t* q_pairs,
                                          float* s) {
  for (int r0 = 0; r0 < key_rows; r0 += rows) {
    __m512 acc[rows][4];
    for (auto& row : acc)
      for (auto& a : row)
        a = _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int t = 0; t < depth / 2; ++t) {
      __m512bh b[4];
      for (int i = 0; i < 4; ++i)
        b[i] = (__m512bh)_mm512_loadu_si512(q_pairs + t * stride + 16 * i);
      for (int r = 0; r < rows; ++r) {
        std::uint32_t pair;
        std::memcpy(&pair, k + (r0 + r) * depth + 2 * t, sizeof pair);
        const __m512bh a = (__m512bh)_mm512_set1_epi32(int(pair));
        for (int i = 0; i < 4; ++i)
          acc[r][i] = _mm512_dpbf16_ps(acc[r][i], a, b[i]);
      }
    }
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < 4; ++i)
        _mm512_storeu_ps(s + (r0 + r) * stride + 16 * i, acc[r][i]);
  }
}

double block_flops() {
  return 2.0 * key_rows * queries * depth;
}

void BM_FmaTile(benchmark::State& state) {
  const std::vector<float> k(key_rows * depth, 0.5f), q_t(depth * stride, 0.25f);
  std::vector<float> s(key_rows * stride);
  for (auto _ : state) {
    fma_block(k.data(), q_t.data(), s.data());
    benchmark::DoNotOptimize(s.data());
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(block_flops(), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Bf16Tile(benchmark::State& state) {
  const std::vector<std::uint16_t> k(key_rows * depth, 0x3f00);               // 0.5
  const std::vector<std::uint32_t> q_pairs(depth / 2 * stride, 0x3e803e80u);  // 0.25, 0.25
  std::vector<float> s(key_rows * stride);
  for (auto _ : state) {
    bf16_block(k.data(), q_pairs.data(), s.data());
    benchmark::DoNotOptimize(s.data());
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(block_flops(), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_FmaTile);
BENCHMARK(BM_Bf16Tile);
BENCHMARK_MAIN();

#else
int main() {
  std::printf(
      "bench_bf16_dot: not compiled for AVX512-BF16 (build with -march=native on a CPU "
      "that has it)\n");
  return 0;
}
#endif
