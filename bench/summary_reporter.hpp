// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

// The console reporter the benchmarks share: Google Benchmark's usual output, and each run's
// median over its repetitions (or its only run, without repetitions) handed to keep(), so that a
// benchmark can print a summary of ratios measured in the same run from Finalize().

#include <benchmark/benchmark.h>

#include <vector>

namespace attn_bench {

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
