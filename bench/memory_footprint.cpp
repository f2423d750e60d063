// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// Memory that the kernel needs beyond its inputs and output, at a length where materialised
// scores could not exist: one head, L = 32 768, d = 64, causal. An n×m float score matrix would
// be 4 GiB; the fused kernel needs a few tiles of scratch per thread.
//
//   ./build/default/bench/bench_memory_footprint      (or under /usr/bin/time -v)
//
// Prints the peak resident set size before and after the call (getrusage's high-water mark);
// their difference is what the call added. Exits 1 if it exceeds 32 MiB. Then the same for the
// backward pass over that forward (its inputs, dO and the three gradients allocated and written
// first): exits 1 if it adds 64 MiB or more.

#include <sys/resource.h>

#include <attn/attn.hpp>
#include <chrono>
#include <cstdio>

namespace {

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // kilobytes on Linux
}

}  // namespace

int main() {
  const attn::Index length = 32768, head_dim = 64;
  // Written, not just allocated, so their pages are resident before the first measurement.
  attn::Matrix<float> q = attn::Matrix<float>::Random(length, head_dim);
  attn::Matrix<float> k = attn::Matrix<float>::Random(length, head_dim);
  attn::Matrix<float> v = attn::Matrix<float>::Random(length, head_dim);
  attn::Matrix<float> out = attn::Matrix<float>::Zero(length, head_dim);
  const double inputs_mib = 4.0 * double(q.size() + k.size() + v.size() + out.size()) / (1 << 20);
  const double before = peak_rss_mib();

  const auto start = std::chrono::steady_clock::now();
  attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask::causal());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double after = peak_rss_mib();

  const double scores_gib = 4.0 * double(length) * double(length) / (1 << 30);
  std::printf("one head, L = %ld, d = %ld, causal: %.2f s\n", long(length), long(head_dim),
              seconds);
  std::printf("inputs and output: %.1f MiB; peak RSS before the call %.1f MiB, after %.1f MiB\n",
              inputs_mib, before, after);
  std::printf("added by the call: %.1f MiB (a materialised n x m float score matrix: %.0f GiB)\n",
              after - before, scores_gib);
  // The backward pass: dO, the log-sum-exp and the gradients resident first.
  attn::Matrix<float> lse(length, 1);
  attn::AttentionExtras<float> extras;
  extras.log_sum_exp = &lse;
  attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask::causal(), {}, extras);
  attn::Matrix<float> d_out = attn::Matrix<float>::Random(length, head_dim);
  attn::Matrix<float> dq = attn::Matrix<float>::Zero(length, head_dim);
  attn::Matrix<float> dk = attn::Matrix<float>::Zero(length, head_dim);
  attn::Matrix<float> dv = attn::Matrix<float>::Zero(length, head_dim);
  const double backward_before = peak_rss_mib();
  const auto backward_start = std::chrono::steady_clock::now();
  attn::scaled_dot_product_attention_backward_into(q, k, v, out, lse, d_out, dq, dk, dv,
                                                   attn::Mask::causal());
  const double backward_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - backward_start).count();
  const double backward_after = peak_rss_mib();
  std::printf(
      "backward: %.2f s; peak RSS before %.1f MiB, after %.1f MiB; added %.1f MiB "
      "(materialised P and dP: %.0f GiB)\n",
      backward_seconds, backward_before, backward_after, backward_after - backward_before,
      2 * scores_gib);
  return after - before < 32.0 && backward_after - backward_before < 64.0 ? 0 : 1;
}
