// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// Sequence-parallel attention over MPI: run it with mpirun (e.g. `mpirun -np 2 bench_mpi`).
// Every rank builds the same float problem (L rows, 8 heads of 64 by default) and passes its
// shard; each rank works with one thread. One run measures, interleaved three times:
//   one_rank      rank 0 alone over the whole sequence (the others wait): the yardstick;
//   ring, all_gather, head_scatter over all ranks, without a mask (contiguous shards) and causal
//                 (zigzag shards; ring also contiguous, to show what zigzag balances);
//   link          one rank sending a shard-sized message to the next (MPI's bandwidth here).
// Time per iteration is the slowest rank's. Counters: GFLOP/s of the whole problem (4·d FLOPs per
// visible query-key pair and head), the bytes each rank sends (the most of any rank), and the
// seconds the slowest waiter spent blocked in MPI. The summary prints each schedule's speedup
// over one_rank (the medians of the interleaved repetitions, from this one run).
//
// Flags: --length=L (default 16384), --heads=H (8), --head_dim=d (64), --repetitions=R (3), then
// Google Benchmark's own.

#include <attn/mpi.hpp>
#include <attn/scaled_dot_product.hpp>
#include <benchmark/benchmark.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "../summary_reporter.hpp"

namespace {

using attn::Index;
using attn::Matrix;
using attn::mpi::Layout;
using attn::mpi::Schedule;

struct Setup {
  Index length = 16384, heads = 8, head_dim = 64;
  int repetitions = 3;
  int rank = 0, ranks = 1;
};
Setup setup;

struct Problem {
  Matrix<float> q, k, v;  // the whole sequence (every rank holds it, to take any shard)
};
Problem* problem = nullptr;

double slowest(double seconds) {
  double most = 0;
  MPI_Allreduce(&seconds, &most, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return most;
}

// FLOPs of the whole problem: QKᵀ and PV, 2·d each per visible pair and head.
double flops(bool causal) {
  const double l = double(setup.length);
  const double pairs = causal ? l * (l + 1) / 2 : l * l;
  return 4.0 * double(setup.head_dim) * double(setup.heads) * pairs;
}

attn::AttentionOptions options() {
  attn::AttentionOptions o;
  o.num_heads = setup.heads;
  o.executor = attn::serial_executor;  // one thread per rank
  return o;
}

void one_rank(benchmark::State& state, bool causal) {
  Matrix<float> out(setup.length, setup.heads * setup.head_dim);
  const attn::Mask mask = causal ? attn::Mask::causal() : attn::Mask();
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    if (setup.rank == 0) {
      attn::scaled_dot_product_attention_into(problem->q, problem->k, problem->v, out, mask,
                                              options());
    }
    state.SetIterationTime(slowest(MPI_Wtime() - start));
  }
  state.counters["GFLOP/s"] = benchmark::Counter(flops(causal) * double(state.iterations()) / 1e9,
                                                 benchmark::Counter::kIsRate);
}

void parallel(benchmark::State& state, Schedule schedule, Layout layout, bool causal) {
  const auto segments = attn::mpi::shard_segments(layout, setup.length, setup.ranks, setup.rank);
  const Matrix<float> q = attn::mpi::shard_of(problem->q, segments),
                      k = attn::mpi::shard_of(problem->k, segments),
                      v = attn::mpi::shard_of(problem->v, segments);
  Matrix<float> out(q.rows(), q.cols());
  const attn::Mask mask = causal ? attn::Mask::causal() : attn::Mask();
  attn::mpi::Traffic traffic;
  attn::mpi::ParallelOptions parallel;
  parallel.schedule = schedule;
  parallel.layout = layout;
  parallel.traffic = &traffic;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    attn::mpi::scaled_dot_product_attention_into(MPI_COMM_WORLD, q, k, v, out, mask, options(),
                                                 parallel);
    state.SetIterationTime(slowest(MPI_Wtime() - start));
  }
  const double iterations = double(state.iterations());
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops(causal) * iterations / 1e9, benchmark::Counter::kIsRate);
  state.counters["sent_MB"] = slowest(traffic.bytes_sent / iterations) / 1e6;
  state.counters["wait_s"] = slowest(traffic.wait_seconds / iterations);
  state.counters["compute_s"] = slowest(traffic.compute_seconds / iterations);
}

// One shard of K and V (as the ring passes it) from each rank to the next, all at once.
void link(benchmark::State& state) {
  const Index count = setup.length / setup.ranks * 2 * setup.heads * setup.head_dim;
  std::vector<float> send(static_cast<std::size_t>(count), 1.0f);
  std::vector<float> receive(static_cast<std::size_t>(count));
  const int next = (setup.rank + 1) % setup.ranks;
  const int previous = (setup.rank + setup.ranks - 1) % setup.ranks;
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    MPI_Sendrecv(send.data(), int(count), MPI_FLOAT, next, 1, receive.data(), int(count), MPI_FLOAT,
                 previous, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    state.SetIterationTime(slowest(MPI_Wtime() - start));
  }
  state.SetBytesProcessed(state.iterations() * count * Index(sizeof(float)));
}

// Medians per benchmark name, and the speedups over one_rank printed at the end (rank 0).
class Summary : public attn_bench::SummaryReporter {
 public:
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::map<std::string, double> median;
    for (auto& [name, times] : m_times) {
      std::sort(times.begin(), times.end());
      median[name] = times[times.size() / 2];
    }
    std::printf(
        "\nMedians of %d interleaved repetitions; %d ranks, 1 thread each; L = %ld, %ld "
        "heads, d = %ld, float\n",
        setup.repetitions, setup.ranks, long(setup.length), long(setup.heads),
        long(setup.head_dim));
    for (const bool causal : {false, true}) {
      const std::string suffix = causal ? "/causal" : "/none";
      const auto base = median.find("one_rank" + suffix);
      if (base == median.end()) continue;
      std::printf("%s mask: one rank %.3f s\n", causal ? "causal" : "no", base->second);
      for (const auto& [name, seconds] : median) {
        if (name.size() < suffix.size() ||
            name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0 ||
            name == base->first)
          continue;
        std::printf("  %-32s %.3f s  %.2fx one rank\n", name.c_str(), seconds,
                    base->second / seconds);
      }
    }
  }

 protected:
  void keep(const Run& run) override {
    // Repetitions are registered as separate benchmarks of one name: collect them all.
    m_times[run.run_name.function_name].push_back(run.GetAdjustedRealTime() / 1e3);  // ms -> s
  }

 private:
  std::map<std::string, std::vector<double>> m_times;
};

class Silent : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

bool flag(const char* arg, const char* name, long& value) {
  const std::size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  value = std::strtol(arg + n + 1, nullptr, 10);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &setup.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &setup.ranks);
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    long value = 0;
    if (flag(argv[i], "--length", value)) {
      setup.length = value;
    } else if (flag(argv[i], "--heads", value)) {
      setup.heads = value;
    } else if (flag(argv[i], "--head_dim", value)) {
      setup.head_dim = value;
    } else if (flag(argv[i], "--repetitions", value)) {
      setup.repetitions = int(value);
    } else {
      rest.push_back(argv[i]);
    }
  }
  int rest_count = int(rest.size());
  benchmark::Initialize(&rest_count, rest.data());

  Problem whole;
  srand(7);  // the same problem on every rank
  const Index width = setup.heads * setup.head_dim;
  whole.q = Matrix<float>::Random(setup.length, width);
  whole.k = Matrix<float>::Random(setup.length, width);
  whole.v = Matrix<float>::Random(setup.length, width);
  problem = &whole;

  // Each repetition registers every benchmark once, so that the repetitions interleave; one
  // iteration each (a run is seconds long), times from MPI_Wtime.
  const auto add = [](const std::string& name, auto fn) {
    benchmark::RegisterBenchmark(name.c_str(), fn)
        ->Iterations(1)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  };
  for (int r = 0; r < setup.repetitions; ++r) {
    add("link", [](benchmark::State& s) { link(s); });
    for (const bool causal : {false, true}) {
      const std::string mask = causal ? "/causal" : "/none";
      const Layout balanced = causal ? Layout::zigzag : Layout::contiguous;
      add("one_rank" + mask, [causal](benchmark::State& s) { one_rank(s, causal); });
      add(std::string("ring/") + (causal ? "zigzag" : "contiguous") + mask,
          [=](benchmark::State& s) { parallel(s, Schedule::ring, balanced, causal); });
      if (causal) {
        add("ring/contiguous" + mask,
            [=](benchmark::State& s) { parallel(s, Schedule::ring, Layout::contiguous, causal); });
      }
      add(std::string("all_gather/") + (causal ? "zigzag" : "contiguous") + mask,
          [=](benchmark::State& s) { parallel(s, Schedule::all_gather, balanced, causal); });
      if (setup.heads % setup.ranks == 0) {
        add(std::string("head_scatter/") + (causal ? "zigzag" : "contiguous") + mask,
            [=](benchmark::State& s) { parallel(s, Schedule::head_scatter, balanced, causal); });
      }
    }
  }
  if (setup.rank == 0) {
    Summary summary;
    benchmark::RunSpecifiedBenchmarks(&summary);
  } else {
    Silent silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  MPI_Finalize();
  return 0;
}
