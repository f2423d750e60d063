// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// Decoding: one query row per step against a long KV cache is memory-bound, so it is measured in
// GB/s of K+V read (in their storage: float, bfloat16, half or qint8, and speed against float) against this machine's streaming-read bandwidth, measured in the same run
// (a sum over a 1 GiB buffer, on 1 and on 2 threads). Then a whole greedy decode of 64 tokens
// against a 512-token source: per-token time with the KV cache and the remembered cross memory,
// versus recomputing everything at every step.
//
//   cmake --preset native && cmake --build --preset native
//   ./build/native/bench/bench_decode --benchmark_repetitions=7
//                                     --benchmark_enable_random_interleaving=true
//
// Interleaving spreads the host's changing memory traffic evenly over the bandwidth yardstick
// and the decode steps. At 1 024 keys the cache (16 MiB of K and V) fits in the L3, so that
// step can read faster than memory streams; 4 096 and 16 384 keys (64 and 256 MiB) cannot.

#include <benchmark/benchmark.h>

#include <attn/attn.hpp>
#include <cstdio>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "summary_reporter.hpp"

namespace {

using attn::Index;
template <typename T>
using Matrix = attn::Matrix<T>;

// ---- 1. Streaming-read bandwidth: each thread sums its half of a 1 GiB buffer.
const std::vector<float>& big_buffer() {
  static const std::vector<float> buffer((std::size_t(1) << 30) / sizeof(float), 1.0f);
  return buffer;
}

void BM_ReadBandwidth(benchmark::State& state) {
  const int threads = int(state.range(0));
  const std::vector<float>& buffer = big_buffer();
  const attn::Executor executor = attn::thread_executor(threads);
  std::vector<float> sums(std::size_t(threads), 0.0f);
  for (auto _ : state) {
    // One chunk per thread: Eigen's vectorised sum over its contiguous part.
    executor(threads, [&](Index begin, Index end) {
      for (Index t = begin; t < end; ++t) {
        const std::size_t size = buffer.size() / std::size_t(threads);
        sums[std::size_t(t)] =
            Eigen::Map<const Eigen::VectorXf>(buffer.data() + std::size_t(t) * size, Index(size))
                .sum();
      }
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.counters["bytes/s"] = benchmark::Counter(double(buffer.size() * sizeof(float)),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1024);
}

// ---- 2. One decode step: 1 query row, 32 heads of d = 64, a cache of m positions, its keys and
//         values stored in float, bfloat16, half or qint8 (Q and the result in float). GB/s count
//         the bytes the step reads in that storage (qint8: values and scales).
constexpr Index decode_heads = 32;
constexpr Index decode_head_dim = 64;

template <typename Storage>
void BM_DecodeStep(benchmark::State& state) {
  const Index m = state.range(0);
  const int threads = int(state.range(1));
  const Index width = decode_heads * decode_head_dim;
  const Matrix<float> q = Matrix<float>::Random(1, width);
  Matrix<float> out(1, width);
  attn::AttentionOptions options;
  options.num_heads = decode_heads;
  options.executor = attn::thread_executor(threads);
  double bytes = 0;
  const auto run = [&](const auto& k, const auto& v) {
    for (auto _ : state) {
      attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask::causal(), options);
      benchmark::DoNotOptimize(out.data());
    }
  };
  if constexpr (std::is_same_v<Storage, attn::qint8>) {
    const auto k =
        attn::QuantizedMatrix::quantize(Matrix<float>::Random(m, width), decode_head_dim);
    const auto v =
        attn::QuantizedMatrix::quantize(Matrix<float>::Random(m, width), decode_head_dim);
    bytes = double(k.bytes() + v.bytes());
    run(k, v);
  } else {
    const Matrix<Storage> k = Matrix<float>::Random(m, width).cast<Storage>();
    const Matrix<Storage> v = Matrix<float>::Random(m, width).cast<Storage>();
    bytes = double(2 * m * width) * sizeof(Storage);
    run(k, v);
  }
  state.counters["bytes/s"] = benchmark::Counter(
      bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1024);
  state.counters["steps/s"] =
      benchmark::Counter(1.0, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- 3. Paged decoding (PagedKVCache): the same step with K and V in a pool's pages, read through
//         the sequence's table; and a batch of sequences advanced together in one call. The pools
//         are filled a page at a time in turn with other sequences, as a server fills them, so a
//         sequence's pages are not neighbours in memory.

/// A float pool of `sequences` sequences of m positions, filled round-robin a page at a time;
/// `extra` more sequences of m positions interleave with them and are not read.
struct FilledPool {
  attn::PagedKVCache<float> pool;
  std::vector<attn::SequenceId> ids;
  FilledPool(Index sequences, Index extra, Index m, Index page_size)
      : pool((sequences + extra) * ((m + page_size - 1) / page_size),
             decode_heads * decode_head_dim, decode_head_dim, page_size) {
    const Index width = decode_heads * decode_head_dim;
    std::vector<attn::SequenceId> all;
    for (Index s = 0; s < sequences + extra; ++s)
      all.push_back(pool.create());
    const Matrix<float> rows = Matrix<float>::Random(page_size, width);
    for (Index filled = 0; filled < m; filled += page_size) {
      const Index count = std::min(page_size, m - filled);
      for (const attn::SequenceId id : all)
        pool.append(id, rows.topRows(count), rows.topRows(count));
    }
    ids.assign(all.begin(), all.begin() + sequences);
  }
};

/// One decode step of one sequence of m positions in a pool of pages of page_size.
void BM_PagedDecodeStep(benchmark::State& state) {
  const Index m = state.range(0), page_size = state.range(1);
  const int threads = int(state.range(2));
  const Index width = decode_heads * decode_head_dim;
  const FilledPool filled(1, 1, m, page_size);
  const Matrix<float> q = Matrix<float>::Random(1, width);
  Matrix<float> out(1, width);
  attn::AttentionOptions options;
  options.num_heads = decode_heads;
  options.executor = attn::thread_executor(threads);
  const attn::SequenceId id = filled.ids[0];
  for (auto _ : state) {
    attn::scaled_dot_product_attention_into(q, filled.pool.keys(id), filled.pool.values(id), out,
                                            attn::Mask::causal(), options);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["bytes/s"] = benchmark::Counter(double(2 * m * width) * sizeof(float),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1024);
}

/// One decode step of B sequences of m positions each, in one batched call (or, batched = 0, one
/// call per sequence).
void BM_PagedBatch(benchmark::State& state) {
  const Index sequences = state.range(0), m = state.range(1);
  const bool batched = state.range(2) != 0;
  const int threads = int(state.range(3));
  const Index width = decode_heads * decode_head_dim;
  const FilledPool filled(sequences, 0, m, attn::PagedKVCache<float>::default_page_size);
  const Matrix<float> q = Matrix<float>::Random(sequences, width);
  Matrix<float> out(sequences, width);
  attn::AttentionOptions options;
  options.num_heads = decode_heads;
  options.executor = attn::thread_executor(threads);
  attn::Workspace workspace;
  options.workspace = &workspace;
  std::vector<attn::PagedView<float>> keys, values;
  for (const attn::SequenceId id : filled.ids) {
    keys.push_back(filled.pool.keys(id));
    values.push_back(filled.pool.values(id));
  }
  const std::vector<Index> rows(std::size_t(sequences), 1);
  for (auto _ : state) {
    if (batched) {
      attn::scaled_dot_product_attention_batch_into(q, rows, keys, values, out,
                                                    attn::Mask::causal(), options);
    } else {
      for (Index b = 0; b < sequences; ++b) {
        attn::scaled_dot_product_attention_into(q.row(b), keys[std::size_t(b)],
                                                values[std::size_t(b)], out.row(b),
                                                attn::Mask::causal(), options);
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["bytes/s"] = benchmark::Counter(double(sequences * 2 * m * width) * sizeof(float),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1024);
}

// ---- 4. A greedy decode: one decoder layer (self-attention with cache + cross-attention over
//         the encoder output), model_dim 512, 8 heads, 64 steps against a 512-token source.
constexpr Index model_dim = 512;
constexpr Index layer_heads = 8;
constexpr Index source_rows = 512;
constexpr Index steps = 64;

attn::MultiHeadWeights<float> random_weights() {
  attn::MultiHeadWeights<float> w;
  const float s = 1.0f / std::sqrt(float(model_dim));
  w.q_weight = Matrix<float>::Random(model_dim, model_dim) * s;
  w.k_weight = Matrix<float>::Random(model_dim, model_dim) * s;
  w.v_weight = Matrix<float>::Random(model_dim, model_dim) * s;
  w.out_weight = Matrix<float>::Random(model_dim, model_dim) * s;
  w.q_bias = w.k_bias = w.v_bias = w.out_bias = attn::Vector<float>::Zero(model_dim);
  return w;
}

void BM_GreedyDecode(benchmark::State& state) {
  const bool incremental = state.range(0) != 0;
  const attn::MultiHeadConfig cfg{model_dim, layer_heads};
  const attn::SelfAttention<float> self_attn(cfg, random_weights());
  const attn::CrossAttention<float> cross(cfg, random_weights());
  const Matrix<float> source = Matrix<float>::Random(source_rows, model_dim);
  Matrix<float> tokens(steps + 1, model_dim);
  tokens.row(0).setRandom();
  attn::KVCache<float> cache = self_attn.make_cache(steps);
  for (auto _ : state) {
    if (incremental) {
      cache.reset();
      const auto memory = cross.remember(source);  // once per sequence
      for (Index t = 0; t < steps; ++t) {
        const Matrix<float> h = self_attn(tokens.row(t), cache);
        tokens.row(t + 1) = cross(h, memory).array().tanh();
      }
    } else {
      // Without cache or memory: every step re-runs the whole prefix and re-projects the source.
      for (Index t = 0; t < steps; ++t) {
        const Matrix<float> h = self_attn(tokens.topRows(t + 1), attn::Mask::causal());
        tokens.row(t + 1) = cross(h.bottomRows(1), source).array().tanh();
      }
    }
    benchmark::DoNotOptimize(tokens.data());
  }
  state.counters["s/token"] = benchmark::Counter(
      double(steps), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

// 16 sequences sharing a 1 024-token prompt, each then 64 tokens of its own: the pool's pages with
// the prompt forked (stored once) against 16 sequences that each hold a copy.
void print_prefix_memory() {
  constexpr Index users = 16, prefix = 1024, own = 64;
  const Index width = decode_heads * decode_head_dim;
  const Index pages = users * (prefix + own) / 64 + users;
  const Matrix<float> rows = Matrix<float>::Random(prefix, width);
  attn::PagedKVCache<float> shared(pages, width, decode_head_dim),
      separate(pages, width, decode_head_dim);
  const attn::SequenceId root = shared.create();
  shared.append(root, rows, rows);
  for (Index u = 0; u < users; ++u) {
    const attn::SequenceId id = shared.fork(root);
    shared.append(id, rows.topRows(own), rows.topRows(own));
    const attn::SequenceId alone = separate.create();
    separate.append(alone, rows, rows);
    separate.append(alone, rows.topRows(own), rows.topRows(own));
  }
  std::printf(
      "%d sequences sharing a %d-token prefix, %d tokens each of their own: %d pages (%.1f MiB) "
      "with the prefix forked, %d pages (%.1f MiB) as separate caches: %.1fx less; %llu pages "
      "copied on write\n",
      int(users), int(prefix), int(own), int(shared.used_pages()),
      double(shared.used_bytes()) / double(1 << 20), int(separate.used_pages()),
      double(separate.used_bytes()) / double(1 << 20),
      double(separate.used_pages()) / double(shared.used_pages()),
      static_cast<unsigned long long>(shared.page_copies()));
}

// Prints, after the runs, each decode step's fraction of the streaming bandwidth on as many
// threads, and the greedy decode's speed-up from the cache and the memory.
class SummaryReporter : public attn_bench::SummaryReporter {
 public:
  void keep(const Run& run) override {
    for (const char* counter : {"bytes/s", "s/token"}) {
      const auto it = run.counters.find(counter);
      if (it != run.counters.end()) m_values[run.run_name.str()] = it->second.value;
    }
    const auto rate = run.counters.find("steps/s");
    if (rate != run.counters.end()) m_steps[run.run_name.str()] = rate->second.value;
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    // x 1 thread: a 2-thread step's speed-up over the same step on 1 thread (same bytes read).
    // x float: a step's speed-up over the same step with a float cache (steps per second).
    std::printf("\nSummary\n%-48s %10s %12s %11s %8s\n", "run", "GB/s", "% of stream", "x 1 thread",
                "x float");
    for (const auto& [name, value] : m_values) {
      if (name.rfind("DecodeStep", 0) != 0) continue;
      const std::size_t at = name.find("threads:") + 8;
      const std::string threads = name.substr(at, 1);
      const auto stream = m_values.find("ReadBandwidth/threads:" + threads + "/real_time");
      const double fraction = stream == m_values.end() ? 0.0 : 100.0 * value / stream->second;
      const auto one = m_values.find(name.substr(0, at) + "1" + name.substr(at + 1));
      const std::string scaling =
          threads == "1" || one == m_values.end() ? "" : std::to_string(value / one->second);
      const std::string shape = name.substr(name.find('/'));
      const auto self = m_steps.find(name);
      const auto as_float = m_steps.find("DecodeStepF32" + shape);
      const std::string to_float = self == m_steps.end() || as_float == m_steps.end()
                                       ? ""
                                       : std::to_string(self->second / as_float->second);
      std::printf("%-48s %10.2f %12.1f %11s %8s\n", name.c_str(), value / double(1 << 30), fraction,
                  scaling.substr(0, 4).c_str(), to_float.substr(0, 4).c_str());
    }
    for (const auto& [name, value] : m_values) {
      if (name.rfind("ReadBandwidth/", 0) == 0) {
        std::printf("%-44s %10.2f %12s\n", name.c_str(), value / double(1 << 30), "(stream)");
      }
    }
    std::printf("\nPaged decoding (float, %d heads, d = %d)\n%-56s %10s %12s %10s\n",
                int(decode_heads), int(decode_head_dim), "run", "GB/s", "% of stream", "x contig.");
    for (const auto& [name, value] : m_values) {
      if (name.rfind("Paged", 0) != 0) continue;
      const std::size_t at = name.find("threads:") + 8;
      const std::string threads = name.substr(at, 1);
      const auto stream = m_values.find("ReadBandwidth/threads:" + threads + "/real_time");
      const double fraction = stream == m_values.end() ? 0.0 : 100.0 * value / stream->second;
      // A paged step against the contiguous float step of as many keys and threads.
      std::string ratio;
      if (name.rfind("PagedDecodeStep/m:", 0) == 0) {
        const std::string m = name.substr(18, name.find('/', 18) - 18);
        const auto contiguous =
            m_values.find("DecodeStepF32/m:" + m + "/threads:" + threads + "/real_time");
        if (contiguous != m_values.end()) ratio = std::to_string(value / contiguous->second);
      }
      std::printf("%-56s %10.2f %12.1f %10s\n", name.c_str(), value / double(1 << 30), fraction,
                  ratio.substr(0, 5).c_str());
    }
    print_prefix_memory();
    const auto cached = m_values.find("GreedyDecode/incremental:1");
    const auto recomputed = m_values.find("GreedyDecode/incremental:0");
    if (cached != m_values.end() && recomputed != m_values.end()) {
      std::printf(
          "Greedy decode, 64 tokens over a 512-token source: %.3f ms/token with cache and "
          "memory, %.3f ms/token recomputing everything: %.1fx faster\n",
          cached->second * 1e3, recomputed->second * 1e3, recomputed->second / cached->second);
    }
  }

 private:
  std::map<std::string, double> m_values;
  std::map<std::string, double> m_steps;
};

void register_all() {
  for (const int threads : {1, 2}) {
    benchmark::RegisterBenchmark("ReadBandwidth", BM_ReadBandwidth)
        ->Arg(threads)
        ->ArgName("threads")
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (const Index m : {1024, 4096, 16384}) {
    for (const int threads : {1, 2}) {
      const auto add = [&](const char* name, auto* fn) {
        benchmark::RegisterBenchmark(name, fn)
            ->Args({m, threads})
            ->ArgNames({"m", "threads"})
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      };
      add("DecodeStepF32", BM_DecodeStep<float>);
      add("DecodeStepBF16", BM_DecodeStep<attn::bfloat16>);
      add("DecodeStepF16", BM_DecodeStep<attn::half>);
      add("DecodeStepQ8", BM_DecodeStep<attn::qint8>);
    }
  }
  for (const int threads : {1, 2}) {
    for (const Index page_size : {16, 64, 256}) {
      benchmark::RegisterBenchmark("PagedDecodeStep", BM_PagedDecodeStep)
          ->Args({16384, page_size, threads})
          ->ArgNames({"m", "page", "threads"})
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
    for (const int batched : {1, 0}) {
      benchmark::RegisterBenchmark("PagedBatch", BM_PagedBatch)
          ->Args({16, 2048, batched, threads})
          ->ArgNames({"sequences", "m", "batched", "threads"})
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  }
  for (const int incremental : {1, 0}) {
    benchmark::RegisterBenchmark("GreedyDecode", BM_GreedyDecode)
        ->Arg(incremental)
        ->ArgName("incremental")
        ->Unit(benchmark::kMillisecond);
  }
}

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
