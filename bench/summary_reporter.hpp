// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

// The console reporter the benchmarks share: Google Benchmark's usual output, and each run's
// median over its repetitions (or its only run, without repetitions) handed to keep(), so that a
// benchmark can print a summary of ratios measured in the same run from Finalize().

#include <benchmark/benchmark.h>

#include <fstream>
#include <string>
#include <vector>

namespace attn_bench {

/// The CPU's name as Linux gives it (/proc/cpuinfo's first "model name"), for the benchmarks'
/// context ("attn CPU", which bench/plot.py puts on its charts); "unknown CPU" elsewhere.
inline std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      if (run.run_type == Run::RT_Aggregate && run.aggregate_name != "median") continue;
      if (run.run_type == Run::RT_Iteration && run.repetitions > 1) continue;
      keep(run);
    }
  }

 protected:
  /// A median (or only) run, as it is reported.
  virtual void keep(const Run& run) = 0;
};

}  // namespace attn_bench
