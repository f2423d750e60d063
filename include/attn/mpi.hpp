// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mpi.hpp
/// attn beyond one machine (optional; CMake target attn::mpi, which finds MPI): attention over a
/// sequence split across the ranks of an MPI communicator, by ring, all-gather or head-scatter
/// schedules, and decoding over a KV cache split across ranks. Nothing else in attn includes it.
///
/// \code
/// MPI_Init(&argc, &argv);
/// int rank, ranks;
/// MPI_Comm_rank(MPI_COMM_WORLD, &rank);
/// MPI_Comm_size(MPI_COMM_WORLD, &ranks);
/// // This rank's rows of a 16 384-token sequence, 8 heads of 64:
/// const attn::Index rows = attn::mpi::shard_rows(attn::mpi::Layout::zigzag, 16384, ranks, rank);
/// attn::Matrix<float> q = attn::Matrix<float>::Random(rows, 512), k = q, v = q;
/// attn::AttentionOptions options;
/// options.num_heads = 8;
/// attn::mpi::ParallelOptions parallel;
/// parallel.layout = attn::mpi::Layout::zigzag;  // balanced under a causal mask
/// attn::Matrix<float> out = attn::mpi::scaled_dot_product_attention(
///     MPI_COMM_WORLD, q, k, v, attn::Mask::causal(), options, parallel);
/// \endcode

#include "mpi/layers.hpp"
#include "mpi/layout.hpp"
#include "mpi/sequence_parallel.hpp"
#include "mpi/sharded_kv_cache.hpp"
