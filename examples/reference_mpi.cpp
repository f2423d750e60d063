// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// The code examples of the API reference's pages on attn::mpi: each block between `//! [name]`
// markers is shown on a page (Doxygen's \snippet), compiled here and run as a smoke test under
// mpiexec on two ranks, with a check after each block that it gives one process's answer.

#include <mpi.h>

#include <attn/attn.hpp>
#include <attn/mpi.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

int failures = 0;

void check(int rank, bool ok, const std::string& what) {
  int all_ok = ok ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (rank == 0) std::printf("%s  %s\n", all_ok ? "ok    " : "FAILED", what.c_str());
  if (!all_ok) ++failures;
}

// The same matrix on every rank: a fixed seed, then Eigen's Random.
attn::Matrix<float> same_everywhere(attn::Index rows, attn::Index cols, unsigned seed) {
  std::srand(seed);
  return attn::Matrix<float>::Random(rows, cols);
}

void sequence_parallel(int rank, int ranks) {
  //! [sequence_parallel]
  // rank and ranks: this process's MPI_Comm_rank and MPI_Comm_size of MPI_COMM_WORLD.
  // A sequence of 1000 tokens, 8 heads of 16, the same on every rank (a fixed seed):
  const attn::Index length = 1000;
  const attn::Matrix<float> all_q = same_everywhere(length, 8 * 16, 1),
                            all_k = same_everywhere(length, 8 * 16, 2),
                            all_v = same_everywhere(length, 8 * 16, 3);
  // This rank's rows of it: the segments Layout::zigzag gives the rank, one after the other.
  const auto rows_of = [&](const attn::Matrix<float>& whole) {
    attn::Matrix<float> mine(attn::mpi::shard_rows(attn::mpi::Layout::zigzag, length, ranks, rank),
                             whole.cols());
    for (const attn::mpi::Segment& s :
         attn::mpi::shard_segments(attn::mpi::Layout::zigzag, length, ranks, rank))
      mine.middleRows(s.local, s.rows) = whole.middleRows(s.position, s.rows);
    return mine;
  };
  const attn::Matrix<float> q = rows_of(all_q), k = rows_of(all_k), v = rows_of(all_v);
  attn::AttentionOptions options;
  options.num_heads = 8;
  attn::mpi::ParallelOptions parallel;
  parallel.layout = attn::mpi::Layout::zigzag;  // even work under a causal mask
  attn::Matrix<float> out = attn::mpi::scaled_dot_product_attention(
      MPI_COMM_WORLD, q, k, v, attn::Mask::causal(), options, parallel);  // this rank's rows
  //! [sequence_parallel]
  const attn::Matrix<float> whole =
      attn::scaled_dot_product_attention(all_q, all_k, all_v, attn::Mask::causal(), options);
  check(rank, (out - rows_of(whole)).cwiseAbs().maxCoeff() < 1e-5f,
        "mpi::scaled_dot_product_attention: each rank's rows of one process's answer");
}

void sharded_kv_cache(int rank, int ranks) {
  //! [sharded_kv_cache]
  // rank and ranks: this process's MPI_Comm_rank and MPI_Comm_size of MPI_COMM_WORLD.
  // The keys and values of a 300-token prompt (the same on every rank), 8 heads of 64, and this
  // rank's contiguous share of them:
  const attn::Index length = 300;
  const attn::Matrix<float> all_k = same_everywhere(length, 8 * 64, 4),
                            all_v = same_everywhere(length, 8 * 64, 5);
  const attn::Index first =
      attn::mpi::shard_segments(attn::mpi::Layout::contiguous, length, ranks, rank)[0].position;
  const attn::Index rows =
      attn::mpi::shard_rows(attn::mpi::Layout::contiguous, length, ranks, rank);
  const attn::Matrix<float> k_rows = all_k.middleRows(first, rows),
                            v_rows = all_v.middleRows(first, rows);
  // The next token's query, key and value:
  const attn::Matrix<float> q = same_everywhere(1, 8 * 64, 6), k = same_everywhere(1, 8 * 64, 7),
                            v = same_everywhere(1, 8 * 64, 8);
  attn::AttentionOptions options;
  options.num_heads = 8;
  // Room for 8192 positions per rank, 8 heads of 64.
  attn::mpi::ShardedKVCache<float> cache(MPI_COMM_WORLD, 8192, 8 * 64, 64);
  cache.append_shards(k_rows, v_rows, attn::mpi::Layout::contiguous);  // after a prefill
  // A decode step: rank 0 holds the new token's q (1 × 8·64), k and v (1 × 8·64).
  attn::Matrix<float> o = cache.attend(q, k, v, attn::Mask::causal(), options);  // on every rank
  //! [sharded_kv_cache]
  attn::Matrix<float> keys(length + 1, 8 * 64), values(length + 1, 8 * 64);
  keys << all_k, k;
  values << all_v, v;
  const attn::Matrix<float> whole =
      attn::scaled_dot_product_attention(q, keys, values, attn::Mask::causal(), options);
  check(rank, cache.size() == length + 1 && (o - whole).cwiseAbs().maxCoeff() < 1e-5f,
        "mpi::ShardedKVCache: a step over the shards is one process's step over the whole cache");
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  sequence_parallel(rank, ranks);
  sharded_kv_cache(rank, ranks);
  if (rank == 0) {
    if (failures > 0)
      std::printf("%d example(s) did not hold\n", failures);
    else
      std::printf("every example held\n");
  }
  MPI_Finalize();
  return failures > 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
