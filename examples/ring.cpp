// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// ring: long-context causal self-attention split across MPI processes. Each process holds a
// zigzag shard of the sequence's queries, keys and values (two chunks, one early and one late,
// so that every process has the same causal work); the keys and values travel around the ring
// of processes while each attends over the shard at hand. Every process then checks its rows
// against one process's attention over the whole sequence, and rank 0 prints each process's
// time, bytes sent and time spent waiting.
//
//   mpirun -np 4 ./build/default/examples/ring                 # 16 384 tokens, 8 heads of 64
//   mpirun -np 4 ./build/default/examples/ring --length=4096
//   (as root, or with more processes than cores, Open MPI also wants --allow-run-as-root and
//   --oversubscribe)

#include <attn/attn.hpp>
#include <attn/mpi.hpp>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

constexpr attn::Index heads = 8, head_dim = 64;

// The same pseudo-random sequence on every process, row by row, so that each can make any row.
attn::Matrix<float> rows_of(attn::Index first, attn::Index count, unsigned salt) {
  attn::Matrix<float> m(count, heads * head_dim);
  for (attn::Index i = 0; i < count; ++i) {
    for (attn::Index j = 0; j < m.cols(); ++j) {
      unsigned x = unsigned(first + i) * 2654435761u ^ unsigned(j) * 40503u ^ salt;
      x ^= x >> 13;
      x *= 0x5bd1e995u;
      x ^= x >> 15;
      m(i, j) = float(x % 2001u) / 1000.0f - 1.0f;
    }
  }
  return m;
}

// This process's rows of one of q (salt 1), k (2) or v (3).
attn::Matrix<float> shard(const std::vector<attn::mpi::Segment>& segments, attn::Index rows,
                          unsigned salt) {
  attn::Matrix<float> m(rows, heads * head_dim);
  for (const attn::mpi::Segment& s : segments)
    m.middleRows(s.local, s.rows) = rows_of(s.position, s.rows, salt);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  attn::Index length = 16384;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--length=", 9) == 0) length = std::atol(argv[i] + 9);
  }

  const auto segments = attn::mpi::shard_segments(attn::mpi::Layout::zigzag, length, ranks, rank);
  const attn::Index rows = attn::mpi::shard_rows(attn::mpi::Layout::zigzag, length, ranks, rank);
  const attn::Matrix<float> q = shard(segments, rows, 1), k = shard(segments, rows, 2),
                            v = shard(segments, rows, 3);

  attn::AttentionOptions options;
  options.num_heads = heads;
  options.executor = attn::serial_executor;  // one thread per process
  attn::mpi::Traffic traffic;
  attn::mpi::ParallelOptions parallel;
  parallel.schedule = attn::mpi::Schedule::ring;
  parallel.layout = attn::mpi::Layout::zigzag;
  parallel.traffic = &traffic;

  MPI_Barrier(MPI_COMM_WORLD);
  const double start = MPI_Wtime();
  const attn::Matrix<float> out = attn::mpi::scaled_dot_product_attention(
      MPI_COMM_WORLD, q, k, v, attn::Mask::causal(), options, parallel);
  const double seconds = MPI_Wtime() - start;

  // One process's answer for this process's rows: queries at positions [p, p + rows) see keys
  // 0 … p + rows − 1, which is the causal mask over exactly those keys (aligned bottom-right).
  double error = 0;
  for (const attn::mpi::Segment& s : segments) {
    const attn::Index end = s.position + s.rows;
    const attn::Matrix<float> expected =
        attn::scaled_dot_product_attention(rows_of(s.position, s.rows, 1), rows_of(0, end, 2),
                                           rows_of(0, end, 3), attn::Mask::causal(), options);
    error =
        std::max(error, double((out.middleRows(s.local, s.rows) - expected).cwiseAbs().maxCoeff()));
  }

  // Rank 0 prints everyone's figures.
  const double mine[5] = {double(rows), seconds, traffic.bytes_sent, traffic.wait_seconds, error};
  std::vector<double> all(5 * std::size_t(ranks));
  MPI_Gather(mine, 5, MPI_DOUBLE, all.data(), 5, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  // float: each output is a convex combination of values in [-1, 1], computed in float with a
  // merge of `ranks` parts; 1e-4 is far above its rounding (about 1e-6 here) and far below what
  // a wrong shard or position would give (order 0.1).
  const double tolerance = 1e-4;
  int failed = 0;
  if (rank == 0) {
    std::printf(
        "ring attention: %ld tokens, %ld heads of %ld, causal, float, over %d processes "
        "(zigzag shards, one thread each)\n\n",
        long(length), long(heads), long(head_dim), ranks);
    std::printf("  rank   rows   time (s)   sent (MB)   waiting (s)   max |error|\n");
    for (int r = 0; r < ranks; ++r) {
      const double* f = &all[5 * std::size_t(r)];
      std::printf("  %4d  %5ld   %8.3f   %9.2f   %11.4f   %.2e\n", r, long(f[0]), f[1], f[2] / 1e6,
                  f[3], f[4]);
      if (!(f[4] <= tolerance)) failed = 1;
    }
    std::printf(
        "\n%s: every process's rows %s one process's attention over the whole sequence "
        "(tolerance %.0e)\n",
        failed ? "FAILED" : "ok", failed ? "differ from" : "match", tolerance);
  }
  MPI_Bcast(&failed, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed;
}
