// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// A downstream program on attn::mpi: every schedule, the sharded cache and the two layers, on
// however many ranks it runs with (.ci/run: alone, and under mpirun -np 2), each checked against
// one process. Compiled as C++17 with the consumer's strict warnings; exits non-zero on a
// mismatch, on any rank.

#include <attn/attn.hpp>
#include <attn/mpi.hpp>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const attn::Index length = 40, heads = 4, d = 8;
  std::srand(3);
  const attn::Matrix<double> q = attn::Matrix<double>::Random(length, heads * d);
  const attn::Matrix<double> k = attn::Matrix<double>::Random(length, heads * d);
  const attn::Matrix<double> v = attn::Matrix<double>::Random(length, heads * d);
  attn::AttentionOptions options;
  options.num_heads = heads;
  const attn::Matrix<double> want =
      attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal(), options);
  double worst = 0;       // double: within rounding of 1e-16
  float worst_float = 0;  // the float layers: within rounding of 1e-7
  for (const attn::mpi::Schedule schedule :
       {attn::mpi::Schedule::ring, attn::mpi::Schedule::all_gather,
        attn::mpi::Schedule::head_scatter}) {
    if (schedule == attn::mpi::Schedule::head_scatter && heads % ranks != 0) continue;
    attn::mpi::ParallelOptions parallel;
    parallel.schedule = schedule;
    parallel.layout = attn::mpi::Layout::zigzag;
    const auto segments = attn::mpi::shard_segments(parallel.layout, length, ranks, rank);
    const attn::Matrix<double> got = attn::mpi::scaled_dot_product_attention(
        MPI_COMM_WORLD, attn::mpi::shard_of(q, segments), attn::mpi::shard_of(k, segments),
        attn::mpi::shard_of(v, segments), attn::Mask::causal(), options, parallel);
    worst = std::max(worst, (got - attn::mpi::shard_of(want, segments)).cwiseAbs().maxCoeff());
  }
  // Decoding over a sharded cache: the last row as a step after the others.
  attn::mpi::ShardedKVCache<double> cache(MPI_COMM_WORLD, length, heads * d, d);
  const auto prefix =
      attn::mpi::shard_segments(attn::mpi::Layout::contiguous, length - 1, ranks, rank);
  cache.append_shards(attn::mpi::shard_of(k, prefix), attn::mpi::shard_of(v, prefix));
  const attn::Matrix<double> step = cache.attend(q.bottomRows(1), k.bottomRows(1), v.bottomRows(1),
                                                 attn::Mask::causal(), options);
  worst = std::max(worst, (step - want.bottomRows(1)).cwiseAbs().maxCoeff());

  // The layers, in float: a rotary self-attention and a cross-attention over a narrower source.
  {
    attn::MultiHeadConfig self_config{16, 2};
    attn::RotaryConfig rotary;
    rotary.head_dim = 8;
    self_config.rotary = rotary;
    attn::MultiHeadConfig cross_config{16, 2};
    cross_config.source_dim = 12;
    const auto weights = [](const attn::MultiHeadConfig& c) {
      attn::MultiHeadWeights<float> w;
      w.q_weight = attn::Matrix<float>::Random(16, 16) * 0.25f;
      w.k_weight = attn::Matrix<float>::Random(c.kv_dim(), c.source_features()) * 0.25f;
      w.v_weight = attn::Matrix<float>::Random(c.kv_dim(), c.source_features()) * 0.25f;
      w.out_weight = attn::Matrix<float>::Random(16, 16) * 0.25f;
      return w;
    };
    attn::MultiHeadConfig no_bias = self_config;
    no_bias.bias = false;
    cross_config.bias = false;
    const attn::SelfAttention<float> self(no_bias, weights(no_bias));
    const attn::CrossAttention<float> cross(cross_config, weights(cross_config));
    const attn::Matrix<float> x = attn::Matrix<float>::Random(24, 16);
    const attn::Matrix<float> source = attn::Matrix<float>::Random(18, 12);
    const auto xs = attn::mpi::shard_segments(attn::mpi::Layout::contiguous, 24, ranks, rank);
    const auto ss = attn::mpi::shard_segments(attn::mpi::Layout::contiguous, 18, ranks, rank);
    const attn::Matrix<float> self_want = self(x, attn::Mask::causal());
    const attn::Matrix<float> cross_want = cross(x, source);
    const attn::Matrix<float> self_got = attn::mpi::self_attention(
        MPI_COMM_WORLD, self, x.middleRows(xs[0].position, xs[0].rows), attn::Mask::causal());
    const attn::Matrix<float> cross_got =
        attn::mpi::cross_attention(MPI_COMM_WORLD, cross, x.middleRows(xs[0].position, xs[0].rows),
                                   source.middleRows(ss[0].position, ss[0].rows));
    worst_float = std::max(
        worst_float,
        (self_got - self_want.middleRows(xs[0].position, xs[0].rows)).cwiseAbs().maxCoeff());
    worst_float = std::max(
        worst_float,
        (cross_got - cross_want.middleRows(xs[0].position, xs[0].rows)).cwiseAbs().maxCoeff());
  }

  double all_worst = 0;
  MPI_Allreduce(&worst, &all_worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  float all_worst_float = 0;
  MPI_Allreduce(&worst_float, &all_worst_float, 1, MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0) {
    std::printf(
        "attn::mpi over %d rank(s): largest difference from one process %.2e (double), "
        "%.2e (float layers)\n",
        ranks, all_worst, double(all_worst_float));
  }
  MPI_Finalize();
  return all_worst < 1e-12 && all_worst_float < 1e-5f ? 0 : 1;
}
