// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// GoogleTest's main under MPI: every rank runs every test; only rank 0 prints the progress (the
// others print their failures), and the exit status is the worst of all ranks', so that mpiexec
// and ctest see a failure on any rank.

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    // Keep only the failures: the default printer, as wrapped by a listener that drops the rest,
    // would be more code than it saves; the failure messages still reach stderr below.
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int local = RUN_ALL_TESTS();
  if (rank != 0 && local != 0) {
    const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
    for (int s = 0; s < unit.total_test_suite_count(); ++s) {
      const ::testing::TestSuite& suite = *unit.GetTestSuite(s);
      for (int t = 0; t < suite.total_test_count(); ++t) {
        const ::testing::TestInfo& test = *suite.GetTestInfo(t);
        if (!test.result()->Failed()) continue;
        for (int p = 0; p < test.result()->total_part_count(); ++p) {
          const ::testing::TestPartResult& part = test.result()->GetTestPartResult(p);
          if (part.failed()) {
            std::fprintf(stderr, "rank %d: %s.%s failed at %s:%d: %s\n", rank, suite.name(),
                         test.name(), part.file_name() ? part.file_name() : "?", part.line_number(),
                         part.message());
          }
        }
      }
    }
  }
  int worst = 0;
  MPI_Allreduce(&local, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
