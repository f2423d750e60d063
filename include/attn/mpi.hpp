// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file mpi.hpp
/// attn beyond one machine (optional; CMake target attn::mpi, which finds MPI): attention over a
/// sequence split across the ranks of an MPI communicator, by ring, all-gather or head-scatter
/// schedules, and decoding over a KV cache split across ranks. Nothing else in attn includes it.
///
/// Example (examples/reference_mpi.cpp, compiled and run as a test):
/// \snippet reference_mpi.cpp sequence_parallel

#include "mpi/layers.hpp"
#include "mpi/layout.hpp"
#include "mpi/sequence_parallel.hpp"
#include "mpi/sharded_kv_cache.hpp"
