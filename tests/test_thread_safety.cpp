// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// Thread safety: one SelfAttention and one CrossAttention instance, one remembered source, one
// Mask and one executor, all shared by four std::threads that call them at once, each thread with
// its own inputs, outputs and KV cache. Every result must be bitwise the serial one: the functors
// are immutable and the kernel's results do not depend on which thread computes what. The tsan
// preset runs this file under ThreadSanitizer (and the functor's executor is one thread_executor
// pool, which the four threads call into at once).

#include <attn/cross_attention.hpp>
#include <attn/kv_cache.hpp>
#include <attn/mask.hpp>
#include <attn/parallel.hpp>
#include <attn/scaled_dot_product.hpp>
#include <attn/self_attention.hpp>
#include <attn/workspace.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "support/random.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn_test::Random;

template <typename Scalar>
class ThreadSafety : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ThreadSafety, Scalars);

constexpr int thread_count = 4;
constexpr int repeats = 3;  // each thread calls again, interleaving differently each time

/// Runs body(t) on thread_count std::threads at once (released together), then joins them.
void run_concurrently(const std::function<void(int)>& body) {
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < thread_count)
        std::this_thread::yield();
      body(t);
    });
  }
  for (std::thread& thread : threads)
    thread.join();
}

template <typename Scalar>
bool bitwise_equal(const attn::Matrix<Scalar>& a, const attn::Matrix<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && (a.array() == b.array()).all();
}

/// Per-thread inputs: different lengths, masks and packings, so the threads do different work.
template <typename Scalar>
struct ThreadInputs {
  attn::Matrix<Scalar> x;       // self-attention input, L × E
  attn::Matrix<Scalar> target;  // cross-attention target, n × E
  attn::Matrix<Scalar> source;  // cross-attention source, m × S
  Mask self_mask;
  Mask cross_mask;
  std::vector<Index> lengths;  // a packing of x's rows
};

template <typename Scalar>
ThreadInputs<Scalar> make_inputs(int t, Index model_dim, Index source_dim) {
  Random rng(static_cast<std::uint32_t>(700 + t));
  ThreadInputs<Scalar> in;
  const Index length = 60 + 13 * t;  // 60 … 99: one or two query tiles
  in.x = rng.uniform_matrix<Scalar>(length, model_dim);
  in.target = rng.uniform_matrix<Scalar>(5 + 20 * t, model_dim);
  in.source = rng.uniform_matrix<Scalar>(40 + 30 * t, source_dim);
  switch (t % 4) {
    case 0:
      in.self_mask = Mask::causal();
      break;
    case 1:
      in.self_mask = Mask::causal() & Mask::window(16, 0);
      break;
    case 2:
      in.self_mask = Mask::keep(rng.bernoulli_matrix(length, length, 0.7));
      break;
    default:
      in.self_mask = Mask::bias(rng.uniform_matrix<Scalar>(length, length, -2, 2)) & Mask::causal();
      break;
  }
  in.cross_mask = t % 2 == 0 ? Mask() : Mask::window(10, 10);
  in.lengths = {length / 3, length - length / 3};
  return in;
}

TYPED_TEST(ThreadSafety, SharedSelfAndCrossAttentionFromFourThreads) {
  using Scalar = TypeParam;
  Random rng(701);
  attn::MultiHeadConfig self_cfg{/*model_dim*/ 32, /*num_heads*/ 4, /*num_kv_heads*/ 2};
  attn::MultiHeadConfig cross_cfg{/*model_dim*/ 32, /*num_heads*/ 4};
  cross_cfg.source_dim = 24;
  // The self-attention functor runs its kernel on two threads of its own; the cross-attention
  // one uses the default executor.
  const attn::SelfAttention<Scalar> self_attn(
      self_cfg, attn_test::random_weights<Scalar>(self_cfg, rng), attn::thread_executor(2));
  const attn::CrossAttention<Scalar> cross(cross_cfg,
                                           attn_test::random_weights<Scalar>(cross_cfg, rng));
  const attn::Matrix<Scalar> shared_source = rng.uniform_matrix<Scalar>(90, 24);
  const auto memory = cross.remember(shared_source);  // one memory read by every thread

  std::vector<ThreadInputs<Scalar>> inputs;
  for (int t = 0; t < thread_count; ++t)
    inputs.push_back(make_inputs<Scalar>(t, 32, 24));

  struct Results {
    attn::Matrix<Scalar> self, packed, cross, remembered;
  };
  const auto compute = [&](int t) {
    const ThreadInputs<Scalar>& in = inputs[static_cast<std::size_t>(t)];
    Results r;
    r.self = self_attn(in.x, in.self_mask);
    r.packed = self_attn(in.x, in.lengths, Mask::causal());
    r.cross = cross(in.target, in.source, in.cross_mask);
    r.remembered = cross(in.target, memory);
    return r;
  };
  std::vector<Results> serial;
  for (int t = 0; t < thread_count; ++t)
    serial.push_back(compute(t));

  std::vector<std::vector<Results>> concurrent(thread_count);
  run_concurrently([&](int t) {
    for (int r = 0; r < repeats; ++r)
      concurrent[static_cast<std::size_t>(t)].push_back(compute(t));
  });

  for (std::size_t t = 0; t < thread_count; ++t) {
    for (const Results& r : concurrent[t]) {
      EXPECT_TRUE(bitwise_equal(r.self, serial[t].self)) << "thread " << t << ", self";
      EXPECT_TRUE(bitwise_equal(r.packed, serial[t].packed)) << "thread " << t << ", packed";
      EXPECT_TRUE(bitwise_equal(r.cross, serial[t].cross)) << "thread " << t << ", cross";
      EXPECT_TRUE(bitwise_equal(r.remembered, serial[t].remembered))
          << "thread " << t << ", remembered";
    }
  }
}

// The kernel with one Mask (explicit matrices shared by reference count) and one executor object
// shared by all threads, each thread writing into its own block of one output matrix.
TYPED_TEST(ThreadSafety, KernelWithSharedMaskAndExecutor) {
  using Scalar = TypeParam;
  Random rng(702);
  const Index n = 80, m = 120, d = 16, dv = 8;
  const attn::Matrix<Scalar> q = rng.uniform_matrix<Scalar>(n, 2 * d);
  const attn::Matrix<Scalar> k = rng.uniform_matrix<Scalar>(m, d);
  const attn::Matrix<Scalar> v = rng.uniform_matrix<Scalar>(m, dv);
  const Mask mask = Mask::keep(rng.bernoulli_matrix(n, m, 0.8)) &
                    Mask::bias(rng.uniform_matrix<double>(n, m)) & Mask::window(50, 5);
  attn::AttentionOptions options;
  options.num_heads = 2;
  options.num_kv_heads = 1;
  options.executor = attn::thread_executor(2);
  const attn::Matrix<Scalar> serial = attn::scaled_dot_product_attention(q, k, v, mask, options);

  // Thread t writes its own column block of one matrix, twice per repeat: by value and into.
  attn::Matrix<Scalar> into = attn::Matrix<Scalar>::Zero(n, thread_count * 2 * dv);
  std::vector<std::vector<attn::Matrix<Scalar>>> by_value(thread_count);
  run_concurrently([&](int t) {
    const Mask copy = mask;  // copies share the matrices
    for (int r = 0; r < repeats; ++r) {
      by_value[static_cast<std::size_t>(t)].push_back(
          attn::scaled_dot_product_attention(q, k, v, r % 2 == 0 ? mask : copy, options));
      attn::scaled_dot_product_attention_into(q, k, v, into.middleCols(t * 2 * dv, 2 * dv), mask,
                                              options);
    }
  });
  for (std::size_t t = 0; t < thread_count; ++t) {
    for (const auto& result : by_value[t])
      EXPECT_TRUE(bitwise_equal(result, serial)) << t;
    const attn::Matrix<Scalar> block = into.middleCols(static_cast<Index>(t) * 2 * dv, 2 * dv);
    EXPECT_TRUE(bitwise_equal(block, serial)) << "into, thread " << t;
  }
}

// Decoding: one shared SelfAttention, one KVCache per thread; each thread prefills a prompt in a
// chunk and then decodes token by token. Every step equals the serial decode of the same sequence.
TYPED_TEST(ThreadSafety, DecodingWithOneCachePerThread) {
  using Scalar = TypeParam;
  Random rng(703);
  attn::MultiHeadConfig cfg{/*model_dim*/ 32, /*num_heads*/ 4, /*num_kv_heads*/ 1};
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng),
                                          attn::thread_executor(2));
  std::vector<attn::Matrix<Scalar>> sequences;
  for (int t = 0; t < thread_count; ++t) {
    sequences.push_back(rng.uniform_matrix<Scalar>(40 + 5 * t, 32));
  }
  const Index prompt = 24;
  const auto decode = [&](int t) {
    const attn::Matrix<Scalar>& x = sequences[static_cast<std::size_t>(t)];
    attn::KVCache<Scalar> cache = layer.make_cache(x.rows());
    attn::Matrix<Scalar> y(x.rows(), x.cols());
    y.topRows(prompt) = layer(x.topRows(prompt), cache);
    for (Index i = prompt; i < x.rows(); ++i)
      y.row(i) = layer(x.row(i), cache);
    return y;
  };
  std::vector<attn::Matrix<Scalar>> serial;
  for (int t = 0; t < thread_count; ++t)
    serial.push_back(decode(t));

  std::vector<attn::Matrix<Scalar>> concurrent(thread_count);
  run_concurrently([&](int t) { concurrent[static_cast<std::size_t>(t)] = decode(t); });
  for (std::size_t t = 0; t < thread_count; ++t) {
    EXPECT_TRUE(bitwise_equal(concurrent[t], serial[t])) << "thread " << t;
  }
}

// One Workspace per calling thread, reused across calls of growing and shrinking shapes (prefill
// tiles, a long decode step, ...), with thread_executor(2) inside each call so that its chunks
// take different slots of the workspace at once. Results are bitwise those of calls without a
// workspace.
TYPED_TEST(ThreadSafety, OneWorkspacePerThread) {
  using Scalar = TypeParam;
  struct Shape {
    Index n, m;
  };
  const Shape shapes[] = {{70, 130}, {1, 3000}, {5, 40}, {130, 70}, {2, 1500}};
  const Index d = 16, dv = 8;
  Random rng(704);
  std::vector<attn::Matrix<Scalar>> qs, ks, vs, serial;
  attn::AttentionOptions options;
  options.num_heads = 4;
  options.num_kv_heads = 2;
  for (const Shape& s : shapes) {
    qs.push_back(rng.uniform_matrix<Scalar>(s.n, 4 * d));
    ks.push_back(rng.uniform_matrix<Scalar>(s.m, 2 * d));
    vs.push_back(rng.uniform_matrix<Scalar>(s.m, 2 * dv));
    serial.push_back(attn::scaled_dot_product_attention(qs.back(), ks.back(), vs.back(),
                                                        Mask::causal(), options));
  }
  std::vector<std::vector<attn::Matrix<Scalar>>> results(thread_count);
  run_concurrently([&](int t) {
    attn::Workspace workspace;
    attn::AttentionOptions mine = options;
    mine.workspace = &workspace;
    mine.executor = attn::thread_executor(2);
    for (int r = 0; r < repeats; ++r) {
      for (std::size_t i = 0; i < qs.size(); ++i) {
        // Each thread walks the shapes from a different starting point.
        const std::size_t s = (i + static_cast<std::size_t>(t)) % qs.size();
        results[static_cast<std::size_t>(t)].push_back(
            attn::scaled_dot_product_attention(qs[s], ks[s], vs[s], Mask::causal(), mine));
      }
    }
  });
  for (std::size_t t = 0; t < thread_count; ++t) {
    for (std::size_t i = 0; i < results[t].size(); ++i) {
      const std::size_t s = (i % qs.size() + t) % qs.size();
      EXPECT_TRUE(bitwise_equal(results[t][i], serial[s])) << "thread " << t << ", call " << i;
    }
  }
}

}  // namespace
