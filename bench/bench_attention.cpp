// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// Attention throughput, with its yardsticks measured in the same run: the FP32 FMA peak of one
// core and of two, Eigen's own GEMM on the two products of one head, and a naive
// materialise-the-scores Eigen baseline on the same shapes. After the runs, a summary table gives
// each fused run's GFLOP/s, its fraction of peak, its ratios to the baseline and to Eigen's GEMM,
// a causal run's ratio to the same run unmasked and, for 2 threads, the ratio to 1 thread.
//
//   build/native/bench/bench_attention --benchmark_repetitions=7
//                                      --benchmark_enable_random_interleaving=true
//
// On a shared machine the clock and the memory system change from minute to minute; interleaving
// the repetitions of all runs at random spreads those changes evenly over the peak and the
// kernels, so the medians compare like with like.
//
// FLOPs count 4·n·m·d per head (Q·Kᵀ and P·V, a multiply-add each), only the visible pairs for
// causal masks, so a causal kernel that skips hidden blocks is not credited for them.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <attn/attn.hpp>
#include <chrono>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "summary_reporter.hpp"

namespace {

using attn::Index;
template <typename T>
using Matrix = attn::Matrix<T>;

constexpr Index head_dim = 64;
constexpr Index heads = 8;

double attention_flops(Index n, Index m, Index d, Index h, bool causal) {
  double pairs = double(n) * double(m);
  if (causal) {
    // Visible pairs under the bottom-right causal mask: query i sees min(m, i + m − n + 1) keys.
    pairs = 0;
    for (Index i = 0; i < n; ++i)
      pairs += double(std::clamp<Index>(i + m - n + 1, 0, m));
  }
  return 4.0 * pairs * double(d) * double(h);
}

// ---- 1. The FP32 FMA peak: independent chains of packet FMAs, no memory traffic, on 1 or more
// threads. Twelve chains cover the FMA latency × pipes of current x86 cores (4 cycles × 2 pipes)
// and, with the two operands, fit AVX2's 16 vector registers. The chains are named variables,
// not an array: GCC keeps an array of packets on the stack, and then every FMA waits on a store
// and a reload (that version measured 53 GFLOP/s here, against 90 with registers).
constexpr long fma_iterations = 1 << 21;
constexpr int fma_chains = 12;

void fma_chains_loop() {
  using Packet = Eigen::internal::packet_traits<float>::type;
  using Eigen::internal::pmadd;
  using Eigen::internal::pset1;
  Packet c0 = pset1<Packet>(0.0f), c1 = pset1<Packet>(1e-3f), c2 = pset1<Packet>(2e-3f),
         c3 = pset1<Packet>(3e-3f), c4 = pset1<Packet>(4e-3f), c5 = pset1<Packet>(5e-3f),
         c6 = pset1<Packet>(6e-3f), c7 = pset1<Packet>(7e-3f), c8 = pset1<Packet>(8e-3f),
         c9 = pset1<Packet>(9e-3f), c10 = pset1<Packet>(1e-2f), c11 = pset1<Packet>(1.1e-2f);
  const Packet a = pset1<Packet>(0.999999f);
  const Packet b = pset1<Packet>(1e-7f);
  for (long i = 0; i < fma_iterations; ++i) {
    c0 = pmadd(c0, a, b), c1 = pmadd(c1, a, b), c2 = pmadd(c2, a, b), c3 = pmadd(c3, a, b);
    c4 = pmadd(c4, a, b), c5 = pmadd(c5, a, b), c6 = pmadd(c6, a, b), c7 = pmadd(c7, a, b);
    c8 = pmadd(c8, a, b), c9 = pmadd(c9, a, b), c10 = pmadd(c10, a, b), c11 = pmadd(c11, a, b);
  }
  for (Packet* c : {&c0, &c1, &c2, &c3, &c4, &c5, &c6, &c7, &c8, &c9, &c10, &c11})
    benchmark::DoNotOptimize(*c);
}

void BM_FmaPeak(benchmark::State& state) {
  constexpr int lanes = Eigen::internal::packet_traits<float>::size;
  const int threads = int(state.range(0));
  for (auto _ : state) {
    std::vector<std::thread> others;
    for (int t = 1; t < threads; ++t)
      others.emplace_back(fma_chains_loop);
    fma_chains_loop();
    for (std::thread& t : others)
      t.join();
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * lanes * fma_chains * double(fma_iterations) * threads,
                         benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(std::to_string(lanes * 32) + "-bit packets");
}

struct Inputs {
  Matrix<float> q, k, v, out;
  Inputs(Index n, Index m, Index h, Index d)
      : q(n, h * d), k(m, h * d), v(m, h * d), out(n, h * d) {
    q.setRandom();
    k.setRandom();
    v.setRandom();
  }
};

// ---- 2. The naive baseline: per head, materialise S = Q·Kᵀ·scale (n×m), mask, softmax, P·V.
void naive_attention(const Inputs& in, Matrix<float>& scores, Matrix<float>& out, bool causal) {
  const Index n = in.q.rows(), m = in.k.rows(), d = head_dim;
  const float scale = 1.0f / std::sqrt(float(d));
  for (Index h = 0; h < heads; ++h) {
    scores.noalias() = scale * in.q.middleCols(h * d, d) * in.k.middleCols(h * d, d).transpose();
    if (causal) {
      for (Index i = 0; i < n; ++i) {
        const Index visible = std::clamp<Index>(i + m - n + 1, 0, m);
        scores.row(i).tail(m - visible).setConstant(-std::numeric_limits<float>::infinity());
      }
    }
    const Eigen::VectorXf row_max = scores.rowwise().maxCoeff();
    scores = (scores.colwise() - row_max).array().exp();
    const Eigen::VectorXf row_sum = scores.rowwise().sum();
    out.middleCols(h * d, d).noalias() = scores * in.v.middleCols(h * d, d);
    out.middleCols(h * d, d).array().colwise() /= row_sum.array();
  }
}

void BM_Naive(benchmark::State& state) {
  const Index n = state.range(0), m = state.range(1);
  const bool causal = state.range(2) != 0;
  Inputs in(n, m, heads, head_dim);
  Matrix<float> scores(n, m);
  for (auto _ : state) {
    naive_attention(in, scores, in.out, causal);
    benchmark::DoNotOptimize(in.out.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(attention_flops(n, m, head_dim, heads, causal),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// ---- 2b. Eigen's own GEMM on one head's two products, S = Q·Kᵀ (n×m) and O = S·V, without the
// softmax: what Eigen's GEMM reaches on these shapes on this machine.
void BM_EigenGemm(benchmark::State& state) {
  const Index n = state.range(0), m = state.range(1);
  const Matrix<float> q = Matrix<float>::Random(n, head_dim),
                      k = Matrix<float>::Random(m, head_dim),
                      v = Matrix<float>::Random(m, head_dim);
  Matrix<float> scores(n, m), out(n, head_dim);
  for (auto _ : state) {
    scores.noalias() = q * k.transpose();
    out.noalias() = scores * v;
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(attention_flops(n, m, head_dim, 1, false),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// ---- 3. The library's kernel: 8 heads as column blocks, on 1 or more threads, with K and V
//         stored in float or, for the Kernel{BF16,Half,Q8} runs, in 16 or 8 bits (Q and the
//         output in float; the prefill path converts them and runs the same register tiles).
template <typename Storage>
auto stored(const Matrix<float>& x) {
  if constexpr (std::is_same_v<Storage, attn::qint8>) {
    return attn::QuantizedMatrix::quantize(x, head_dim);
  } else {
    return Matrix<Storage>(x.cast<Storage>());
  }
}

template <typename Storage>
void BM_Kernel(benchmark::State& state) {
  const Index n = state.range(0), m = state.range(1);
  const bool causal = state.range(2) != 0;
  const int threads = int(state.range(3));
  Inputs in(n, m, heads, head_dim);
  const auto k = stored<Storage>(in.k);
  const auto v = stored<Storage>(in.v);
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.executor = attn::thread_executor(threads);
  const attn::Mask mask = causal ? attn::Mask::causal() : attn::Mask();
  for (auto _ : state) {
    attn::scaled_dot_product_attention_into(in.q, k, v, in.out, mask, options);
    benchmark::DoNotOptimize(in.out.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(attention_flops(n, m, head_dim, heads, causal),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// ---- 3a. The backward pass (float, no mask): the kernel's against a naive Eigen backward that
//          materialises P per head. FLOPs are counted as FlashAttention counts them: 2.5 times
//          the forward's (five products of the forward's two sizes), for both.
double backward_flops(Index n, Index m) {
  return 2.5 * attention_flops(n, m, head_dim, heads, false);
}

struct BackwardInputs : Inputs {
  Matrix<float> lse, d_out, dq, dk, dv;
  BackwardInputs(Index n, Index m)
      : Inputs(n, m, heads, head_dim),
        d_out(Matrix<float>::Random(n, heads * head_dim)),
        dq(n, heads * head_dim),
        dk(m, heads * head_dim),
        dv(m, heads * head_dim) {
    attn::AttentionOptions options;
    options.num_heads = heads;
    attn::AttentionExtras<float> extras;
    extras.log_sum_exp = &lse;
    attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask(), options, extras);
  }
};

void BM_Backward(benchmark::State& state) {
  const Index l = state.range(0);
  const int threads = int(state.range(1));
  BackwardInputs in(l, l);
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.executor = attn::thread_executor(threads);
  for (auto _ : state) {
    attn::scaled_dot_product_attention_backward_into(in.q, in.k, in.v, in.out, in.lse, in.d_out,
                                                     in.dq, in.dk, in.dv, attn::Mask(), options);
    benchmark::DoNotOptimize(in.dq.data());
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(backward_flops(l, l), benchmark::Counter::kIsIterationInvariantRate);
}

// Per head: S and P = softmax(S) materialised (n×m), then dV = Pᵀ·dO, dP = dO·Vᵀ,
// dS = P ∘ (dP − rowsum(P ∘ dP)), dQ = scale·dS·K, dK = scale·dSᵀ·Q, each one Eigen expression.
void BM_NaiveBackward(benchmark::State& state) {
  const Index l = state.range(0), d = head_dim;
  BackwardInputs in(l, l);
  const float scale = 1.0f / std::sqrt(float(d));
  Matrix<float> p(l, l), dp(l, l);
  for (auto _ : state) {
    for (Index h = 0; h < heads; ++h) {
      const auto q = in.q.middleCols(h * d, d), k = in.k.middleCols(h * d, d);
      const auto v = in.v.middleCols(h * d, d), d_out = in.d_out.middleCols(h * d, d);
      p.noalias() = scale * q * k.transpose();
      const Eigen::VectorXf row_max = p.rowwise().maxCoeff();
      p = (p.colwise() - row_max).array().exp();
      const Eigen::VectorXf row_sum = p.rowwise().sum();
      p.array().colwise() /= row_sum.array();
      in.dv.middleCols(h * d, d).noalias() = p.transpose() * d_out;
      dp.noalias() = d_out * v.transpose();
      const Eigen::VectorXf dot = (p.array() * dp.array()).rowwise().sum();
      dp = (p.array() * (dp.colwise() - dot).array()) * scale;
      in.dq.middleCols(h * d, d).noalias() = dp * k;
      in.dk.middleCols(h * d, d).noalias() = dp.transpose() * q;
    }
    benchmark::DoNotOptimize(in.dq.data());
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(backward_flops(l, l), benchmark::Counter::kIsIterationInvariantRate);
}

// ---- 3b. Score and mask functions (float, 1 thread): each against the plain kernel it extends,
//          or, for the sparse patterns at L = 16 384, against the dense kernel's throughput at
//          L = 4 096 (a dense run at 16 384 takes seconds). FLOPs count the visible pairs only.
using Pairs = double (*)(Index l);

double all_pairs(Index l) {
  return double(l) * double(l);
}
double causal_pairs(Index l) {
  return double(l) * double(l + 1) / 2;
}
constexpr Index window = 256;
double window_pairs(Index l) {
  double pairs = 0;
  for (Index i = 0; i < l; ++i)
    pairs += double(std::min<Index>(i + 1, window + 1));
  return pairs;
}
constexpr Index document_length = 1024;
double document_pairs(Index l) {
  return double(l / document_length) * causal_pairs(document_length);
}
std::vector<Index> document_lengths(Index l) {
  return std::vector<Index>(std::size_t(l / document_length), document_length);
}

// A documents mask as a user writes it without a block predicate: the BlockMap gives the
// kernel its blocks.
auto user_documents() {
  return attn::mask_function(
      [](Index q, Index k) { return q / document_length == k / document_length && k <= q; });
}

template <typename MakeMask>
void BM_Masked(benchmark::State& state, MakeMask make_mask, Pairs pairs) {
  const Index l = state.range(0);
  Inputs in(l, l, heads, head_dim);
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.executor = attn::serial_executor;
  const auto mask = make_mask(l);
  for (auto _ : state) {
    attn::scaled_dot_product_attention_into(in.q, in.k, in.v, in.out, mask, options);
    benchmark::DoNotOptimize(in.out.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(4.0 * pairs(l) * double(head_dim * heads),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// Building a BlockMap for L × L and 8 heads: with the built-in's block predicate, and for the
// user's lambda without one (every pair evaluated once).
template <typename MakeMask>
void BM_BlockMap(benchmark::State& state, MakeMask make_mask) {
  const Index l = state.range(0);
  const auto mask = make_mask(l);
  for (auto _ : state) {
    const attn::BlockMap map(mask, l, l, heads, attn::serial_executor);
    benchmark::DoNotOptimize(&map);
  }
}

// ---- 4. The functors: projections + kernel + output projection (model_dim 512, 8 heads).
attn::MultiHeadWeights<float> random_weights(Index e, Index s) {
  attn::MultiHeadWeights<float> w;
  w.q_weight = Matrix<float>::Random(e, e) / std::sqrt(float(e));
  w.k_weight = Matrix<float>::Random(e, s) / std::sqrt(float(s));
  w.v_weight = Matrix<float>::Random(e, s) / std::sqrt(float(s));
  w.out_weight = Matrix<float>::Random(e, e) / std::sqrt(float(e));
  w.q_bias = w.k_bias = w.v_bias = w.out_bias = attn::Vector<float>::Zero(e);
  return w;
}

double projection_flops(Index n, Index m, Index e, Index s) {
  return 4.0 * double(n) * double(e) * double(e) +
         4.0 * double(m) * double(s) * double(e);  // Q, out; K, V
}

void BM_SelfAttention(benchmark::State& state) {
  const Index l = state.range(0), e = heads * head_dim;
  const bool causal = state.range(1) != 0;
  const attn::SelfAttention<float> self_attn({e, heads}, random_weights(e, e));
  const Matrix<float> x = Matrix<float>::Random(l, e);
  const attn::Mask mask = causal ? attn::Mask::causal() : attn::Mask();
  for (auto _ : state)
    benchmark::DoNotOptimize(self_attn(x, mask).data());
  state.counters["FLOP/s"] = benchmark::Counter(
      attention_flops(l, l, head_dim, heads, causal) + projection_flops(l, l, e, e),
      benchmark::Counter::kIsIterationInvariantRate);
}

void BM_CrossAttention(benchmark::State& state) {
  const Index n = state.range(0), m = state.range(1), e = heads * head_dim, s = 384;
  attn::MultiHeadConfig cfg{e, heads};
  cfg.source_dim = s;
  const attn::CrossAttention<float> cross(cfg, random_weights(e, s));
  const Matrix<float> target = Matrix<float>::Random(n, e);
  const Matrix<float> source = Matrix<float>::Random(m, s);
  for (auto _ : state)
    benchmark::DoNotOptimize(cross(target, source).data());
  state.counters["FLOP/s"] = benchmark::Counter(
      attention_flops(n, m, head_dim, heads, false) + projection_flops(n, m, e, s),
      benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
  for (const int threads : {1, 2}) {
    benchmark::RegisterBenchmark("FmaPeak", BM_FmaPeak)
        ->Arg(threads)
        ->ArgName("threads")
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (const Index l : {1024, 4096}) {
    benchmark::RegisterBenchmark("EigenGemm", BM_EigenGemm)
        ->Args({l, l})
        ->ArgNames({"n", "m"})
        ->Unit(benchmark::kMillisecond);
  }
  for (const int causal : {0, 1}) {
    for (const Index l : {128, 256, 512, 1024, 2048, 4096}) {
      benchmark::RegisterBenchmark("Naive", BM_Naive)
          ->Args({l, l, causal})
          ->ArgNames({"n", "m", "causal"})
          ->Unit(benchmark::kMillisecond);
      for (const int threads : {1, 2}) {
        if (threads == 2 && l < 1024) continue;
        benchmark::RegisterBenchmark("Kernel", BM_Kernel<float>)
            ->Args({l, l, causal, threads})
            ->ArgNames({"n", "m", "causal", "threads"})
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
    }
  }
  // K and V in 16 and 8 bits, against the float kernel of the same shape.
  for (const auto& [n, m] : {std::pair<long, long>{1024, 1024}, {4096, 4096}, {64, 4096}}) {
    for (const int threads : {1, 2}) {
      if (n == 64 && threads == 2) continue;
      const std::vector<long> args{n, m, 0, threads};
      const std::vector<std::string> names{"n", "m", "causal", "threads"};
      benchmark::RegisterBenchmark("KernelBF16", BM_Kernel<attn::bfloat16>)
          ->Args(args)
          ->ArgNames(names)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark("KernelHalf", BM_Kernel<attn::half>)
          ->Args(args)
          ->ArgNames(names)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark("KernelQ8", BM_Kernel<attn::qint8>)
          ->Args(args)
          ->ArgNames(names)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  // Score and mask functions.
  const auto masked = [](const char* name, auto make_mask, Pairs pairs, Index l) {
    benchmark::RegisterBenchmark(
        name, [=](benchmark::State& state) { BM_Masked(state, make_mask, pairs); })
        ->Arg(l)
        ->ArgName("L")
        ->Unit(benchmark::kMillisecond);
  };
  for (const Index l : {1024, 4096}) {
    masked(
        "Masked/identity",
        [](Index) { return attn::score_function([](float s, Index, Index, Index) { return s; }); },
        all_pairs, l);
    masked(
        "Masked/alibi", [](Index) { return attn::Mask::causal() & attn::alibi(heads); },
        causal_pairs, l);
  }
  constexpr Index long_l = 16384;
  masked(
      "Masked/window256",
      [](Index) { return attn::Mask::causal() & attn::Mask::window(window, 0); }, window_pairs,
      long_l);
  masked(
      "Masked/sinks4_window256", [](Index) { return attn::sinks(4, window); }, window_pairs,
      long_l);
  masked(
      "Masked/documents",
      [](Index l) { return attn::Mask::causal() & attn::documents(document_lengths(l)); },
      document_pairs, long_l);
  masked(
      "Masked/documents_blockmap",
      [](Index l) {
        const auto mask = user_documents();
        return mask.with_blocks(attn::BlockMap(mask, l, l, heads));
      },
      document_pairs, long_l);
  benchmark::RegisterBenchmark("BlockMap/documents",
                               [](benchmark::State& state) {
                                 BM_BlockMap(state, [](Index l) {
                                   return attn::Mask::causal() &
                                          attn::documents(document_lengths(l));
                                 });
                               })
      ->Arg(long_l)
      ->ArgName("L")
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark(
      "BlockMap/documents_lambda",
      [](benchmark::State& state) { BM_BlockMap(state, [](Index) { return user_documents(); }); })
      ->Arg(long_l)
      ->ArgName("L")
      ->Unit(benchmark::kMillisecond);
  // The backward pass.
  for (const Index l : {1024, 4096}) {
    benchmark::RegisterBenchmark("NaiveBackward", BM_NaiveBackward)
        ->Arg(l)
        ->ArgName("L")
        ->Unit(benchmark::kMillisecond);
    for (const int threads : {1, 2}) {
      benchmark::RegisterBenchmark("Backward", BM_Backward)
          ->Args({l, threads})
          ->ArgNames({"L", "threads"})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  // Cross-attention shape: a short target over a long source.
  benchmark::RegisterBenchmark("Naive", BM_Naive)
      ->Args({64, 4096, 0})
      ->ArgNames({"n", "m", "causal"})
      ->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("Kernel", BM_Kernel<float>)
      ->Args({64, 4096, 0, 1})
      ->ArgNames({"n", "m", "causal", "threads"})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (const Index l : {512, 2048}) {
    benchmark::RegisterBenchmark("SelfAttention", BM_SelfAttention)
        ->Args({l, 1})
        ->ArgNames({"L", "causal"})
        ->Unit(benchmark::kMillisecond);
  }
  benchmark::RegisterBenchmark("CrossAttention", BM_CrossAttention)
      ->Args({64, 4096})
      ->ArgNames({"n", "m"})
      ->Unit(benchmark::kMillisecond);
}

// Collects runs and prints, at the end, each run's fraction of the FMA peak and each kernel run's
// ratios: to the naive baseline of the same shape, to Eigen's GEMM on the same two products (one
// head, same n and m: GFLOP/s against GFLOP/s), to the same kernel run without the causal mask,
// and to itself on 1 thread; and each run with K and V in 16 or 8 bits, its ratio to the float
// kernel of the same shape.
class SummaryReporter : public attn_bench::SummaryReporter {
 public:
  void keep(const Run& run) override {
    const std::string name = run.run_name.str();
    const double seconds =
        run.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(run.time_unit);
    if (name.rfind("Backward/", 0) == 0 || name.rfind("NaiveBackward/", 0) == 0) {
      const auto it = run.counters.find("FLOP/s");
      m_backward.push_back({name, it == run.counters.end() ? 0.0 : it->second.value, seconds});
      return;
    }
    if (name.rfind("Masked/", 0) == 0 || name.rfind("BlockMap/", 0) == 0) {
      const auto it = run.counters.find("FLOP/s");
      m_masks.push_back({name, it == run.counters.end() ? 0.0 : it->second.value, seconds});
      return;
    }
    const auto it = run.counters.find("FLOP/s");
    if (it != run.counters.end()) m_rows.push_back({name, it->second.value, seconds});
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    // Interleaved repetitions report in random order; list the runs as registered instead.
    std::stable_sort(m_rows.begin(), m_rows.end(),
                     [](const Row& a, const Row& b) { return order(a.name) < order(b.name); });
    double peak = 0, peak_2 = 0;
    std::map<std::string, double> naive, kernel, gemm;
    for (const auto& row : m_rows) {
      if (row.name.rfind("FmaPeak/threads:1", 0) == 0) peak = row.flops;
      if (row.name.rfind("FmaPeak/threads:2", 0) == 0) peak_2 = row.flops;
      if (row.name.rfind("Naive/", 0) == 0) naive[row.name.substr(6)] = row.flops;
      if (row.name.rfind("Kernel/", 0) == 0) kernel[row.name] = row.flops;
      if (row.name.rfind("EigenGemm/", 0) == 0) gemm[row.name.substr(10)] = row.flops;
    }
    std::printf(
        "\nSummary (GFLOP/s; %% of the 1-core FP32 FMA peak %.1f GFLOP/s; x naive = ratio to "
        "the naive baseline of the same shape, 1 thread; x GEMM = ratio to Eigen's GEMM on the "
        "same n and m; x dense = a causal run's ratio to the same run without the mask; "
        "x 1 thread = a 2-thread run's ratio to the same shape on 1 thread, where the FMA peak "
        "itself scales %.2fx; x float = K and V in bfloat16 (BF16), half or qint8 (Q8) against "
        "the float kernel of the same shape)\n",
        peak * 1e-9, peak > 0 ? peak_2 / peak : 0.0);
    std::printf("%-52s %10s %8s %9s %8s %8s %11s %8s\n", "run", "GFLOP/s", "% peak", "x naive",
                "x GEMM", "x dense", "x 1 thread", "x float");
    const auto ratio = [](double a, const std::map<std::string, double>& to,
                          const std::string& key) -> std::string {
      const auto it = to.find(key);
      return it == to.end() ? "" : std::to_string(a / it->second).substr(0, 5);
    };
    for (const auto& row : m_rows) {
      std::string to_naive, to_gemm, to_dense, scaling, to_float;
      for (const char* stored : {"KernelBF16/", "KernelHalf/", "KernelQ8/"}) {
        const std::string prefix = stored;
        if (row.name.rfind(prefix, 0) == 0)
          to_float = ratio(row.flops, kernel, "Kernel/" + row.name.substr(prefix.size()));
      }
      if (row.name.rfind("Kernel/", 0) == 0) {
        // Kernel/n:…/m:…/causal:C/threads:T/real_time -> n:…/m:…/causal:C and /threads:T/…
        std::string shape = row.name.substr(7);
        const std::string threads = shape.substr(shape.find("/threads:"));
        shape = shape.substr(0, shape.find("/threads:"));
        const std::string sizes = shape.substr(0, shape.find("/causal:"));
        const bool causal = shape.substr(shape.find("/causal:")) == "/causal:1";
        to_naive = ratio(row.flops, naive, shape);
        if (!causal && threads == "/threads:1/real_time") to_gemm = ratio(row.flops, gemm, sizes);
        if (causal) to_dense = ratio(row.flops, kernel, "Kernel/" + sizes + "/causal:0" + threads);
        if (threads != "/threads:1/real_time")
          scaling = ratio(row.flops, kernel, "Kernel/" + shape + "/threads:1/real_time");
      }
      std::printf("%-52s %10.1f %8.1f %9s %8s %8s %11s %8s\n", row.name.c_str(), row.flops * 1e-9,
                  peak > 0 ? 100.0 * row.flops / peak : 0.0, to_naive.c_str(), to_gemm.c_str(),
                  to_dense.c_str(), scaling.c_str(), to_float.c_str());
    }
    print_masks(kernel);
    print_backward(peak);
  }

  // The backward pass: GFLOP/s at 2.5 times the forward's FLOPs, its fraction of the 1-core FMA
  // peak, its ratio to the naive backward of the same L, and a 2-thread run's to 1 thread.
  void print_backward(double peak) const {
    if (m_backward.empty()) return;
    std::map<std::string, double> flops;
    for (const auto& row : m_backward)
      flops[row.name] = row.flops;
    std::printf(
        "\nBackward (float, d = 64, 8 heads, no mask; GFLOP/s counting 2.5x the forward's FLOPs, "
        "as FlashAttention does; x naive = ratio to an Eigen backward that materialises P, 1 "
        "thread; x 1 thread = a 2-thread run's ratio to 1 thread)\n");
    std::printf("%-40s %10s %8s %9s %11s\n", "run", "GFLOP/s", "% peak", "x naive", "x 1 thread");
    for (const auto& [name, value] : flops) {
      const auto at = name.find("/L:");
      const std::string l = name.substr(at + 3, name.find('/', at + 3) - at - 3);
      std::string to_naive, scaling;
      if (name.rfind("Backward/", 0) == 0) {
        const auto naive = flops.find("NaiveBackward/L:" + l);
        if (naive != flops.end()) to_naive = std::to_string(value / naive->second).substr(0, 5);
        if (name.find("/threads:2") != std::string::npos) {
          const auto one = flops.find("Backward/L:" + l + "/threads:1/real_time");
          if (one != flops.end()) scaling = std::to_string(value / one->second).substr(0, 5);
        }
      }
      std::printf("%-40s %10.1f %8.1f %9s %11s\n", name.c_str(), value * 1e-9,
                  peak > 0 ? 100.0 * value / peak : 0.0, to_naive.c_str(), scaling.c_str());
    }
  }

  // Score and mask functions: GFLOP/s on visible pairs against the kernel they extend (identity:
  // the plain kernel; ALiBi: the causal kernel; the sparse patterns at L = 16 384: the dense
  // kernel at L = 4 096), the speed-up over computing all L² pairs at the dense kernel's rate,
  // and each block map's build time as a share of the call it serves.
  void print_masks(const std::map<std::string, double>& kernel) const {
    if (m_masks.empty()) return;
    std::map<std::string, double> seconds;
    for (const auto& row : m_masks)
      seconds[row.name] = row.seconds;
    // Interleaved repetitions report in random order; list the runs as registered instead.
    std::vector<Row> rows = m_masks;
    const auto rank = [](const std::string& name) {
      const char* const order[] = {"Masked/identity/",    "Masked/alibi/",
                                   "Masked/window256/",   "Masked/sinks4_window256/",
                                   "Masked/documents/",   "Masked/documents_blockmap/",
                                   "BlockMap/documents/", "BlockMap/documents_lambda/"};
      for (int i = 0; i < 8; ++i) {
        if (name.rfind(order[i], 0) == 0) return i;
      }
      return 8;
    };
    std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
      return rank(a.name) < rank(b.name) || (rank(a.name) == rank(b.name) && a.name < b.name);
    });
    std::printf(
        "\nScore and mask functions (float, d = 64, 8 heads, 1 thread; GFLOP/s on visible pairs; "
        "x plain = ratio to the kernel it extends: identity to the unmasked kernel, ALiBi to the "
        "causal kernel of the same L, the L = 16384 patterns to the unmasked kernel at L = 4096; "
        "x dense time = the dense L^2 computation's time at that rate over this run's; map = "
        "the block map's build time as a share of the call it serves)\n");
    std::printf("%-40s %10s %9s %13s %10s\n", "run", "GFLOP/s", "x plain", "x dense time",
                "% of call");
    const auto find = [&](const std::string& key) {
      const auto it = kernel.find(key);
      return it == kernel.end() ? 0.0 : it->second;
    };
    const double dense_4096 = find("Kernel/n:4096/m:4096/causal:0/threads:1/real_time");
    for (const auto& row : rows) {
      const auto at = row.name.find("/L:");
      const std::string l = at == std::string::npos ? "" : row.name.substr(at + 3);
      const long length = l.empty() ? 0 : std::stol(l);
      if (row.name.rfind("BlockMap/", 0) == 0) {
        const std::string served = row.name.find("lambda") != std::string::npos
                                       ? "Masked/documents_blockmap/L:" + l
                                       : "Masked/documents/L:" + l;
        const auto it = seconds.find(served);
        const double share = it == seconds.end() ? 0.0 : 100.0 * row.seconds / it->second;
        std::printf("%-40s %10s %9s %13s %9.2f%%  (%.2f ms)\n", row.name.c_str(), "", "", "", share,
                    row.seconds * 1e3);
        continue;
      }
      double plain = 0;
      if (row.name.rfind("Masked/identity/", 0) == 0) {
        plain = find("Kernel/n:" + l + "/m:" + l + "/causal:0/threads:1/real_time");
      } else if (row.name.rfind("Masked/alibi/", 0) == 0) {
        plain = find("Kernel/n:" + l + "/m:" + l + "/causal:1/threads:1/real_time");
      } else {
        plain = dense_4096;
      }
      std::string dense_time;
      if (length > 4096 && plain > 0) {
        const double dense_seconds =
            4.0 * double(length) * double(length) * head_dim * heads / plain;
        dense_time = std::to_string(dense_seconds / row.seconds).substr(0, 5);
      }
      std::printf("%-40s %10.1f %9s %13s\n", row.name.c_str(), row.flops * 1e-9,
                  plain > 0 ? std::to_string(row.flops / plain).substr(0, 5).c_str() : "",
                  dense_time.c_str());
    }
  }

 private:
  struct Row {
    std::string name;
    double flops;
    double seconds;  // per iteration
  };

  // Family as registered, then causal, shape and threads: Naive and Kernel of a shape side by side.
  static std::vector<long> order(const std::string& name) {
    const auto arg = [&](const std::string& key) {
      const auto at = name.find("/" + key + ":");
      return at == std::string::npos ? 0L : std::stol(name.substr(at + key.size() + 2));
    };
    long family = 2;  // Naive and Kernel
    const char* const others[] = {"FmaPeak", "EigenGemm", "", "SelfAttention", "CrossAttention"};
    for (long f = 0; f < 5; ++f) {
      if (f != 2 && name.rfind(others[f], 0) == 0) family = f;
    }
    long kernel = name.rfind("Kernel/", 0) == 0 ? 1 : 0;
    if (name.rfind("KernelBF16/", 0) == 0) kernel = 2;
    if (name.rfind("KernelHalf/", 0) == 0) kernel = 3;
    if (name.rfind("KernelQ8/", 0) == 0) kernel = 4;
    const long n = arg("n") + arg("L");
    return {family, arg("causal"), n == 64 ? 1L : 0L, n, arg("threads"), kernel};
  }
  std::vector<Row> m_rows;
  std::vector<Row> m_masks;
  std::vector<Row> m_backward;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("attn SIMD", attn::simd_instruction_set());
  benchmark::AddCustomContext("attn CPU", attn_bench::cpu_model());
  register_all();
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
