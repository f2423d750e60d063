// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file parallel.hpp
/// The one seam through which attn uses threads: parallel_for over a count of independent work
/// items. Serial by default, OpenMP when the program is compiled with it, or an executor of the
/// user's own (a thread pool, TBB, ...).

#include <algorithm>
#include <exception>
#include <functional>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "types.hpp"

namespace attn {

/// Work over the items [begin, end), run on one thread. Called once per chunk, so a chunk sizes its
/// scratch once.
using RangeFunction = std::function<void(Index begin, Index end)>;

/// Runs `work` over a partition of [0, count) into contiguous chunks, possibly concurrently, and
/// returns when all chunks are done. Chunks must cover every item exactly once. The kernel orders
/// its items so that contiguous chunks of equal length carry equal work.
using Executor = std::function<void(Index count, const RangeFunction& work)>;

/// Runs all items on the calling thread.
inline void serial_executor(Index count, const RangeFunction& work) {
  if (count > 0) work(0, count);
}

namespace detail {

/// Splits [0, count) into `chunks` contiguous chunks of near-equal length; chunk c is
/// [count·c/chunks, count·(c+1)/chunks).
inline Index chunk_begin(Index count, Index chunks, Index c) {
  return count * c / chunks;
}

/// Runs chunk(c) for c in [0, chunks) on fresh std::threads (the caller runs chunk 0) and
/// rethrows the first exception any chunk threw.
template <typename ChunkFunction>
void run_on_threads(Index chunks, const ChunkFunction& chunk) {
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(chunks));
  auto guarded = [&](Index c) {
    try {
      chunk(c);
    } catch (...) {
      errors[static_cast<std::size_t>(c)] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(chunks));
  for (Index c = 1; c < chunks; ++c)
    threads.emplace_back(guarded, c);
  guarded(0);
  for (auto& thread : threads)
    thread.join();
  for (auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace detail

/// An executor that splits the items over `threads` std::threads started per call (the caller
/// is one of them). Useful without OpenMP; a long-lived pool of the user's own is cheaper for
/// small calls.
inline Executor thread_executor(int threads) {
  return [threads](Index count, const RangeFunction& work) {
    const Index chunks = std::min<Index>(std::max(threads, 1), count);
    if (chunks <= 1) return serial_executor(count, work);
    detail::run_on_threads(chunks, [&](Index c) {
      const Index begin = detail::chunk_begin(count, chunks, c);
      const Index end = detail::chunk_begin(count, chunks, c + 1);
      if (begin < end) work(begin, end);
    });
  };
}

/// The executor used when none is given: OpenMP's threads (omp_get_max_threads(), one chunk
/// each) when the program is compiled with OpenMP and not already inside a parallel region,
/// otherwise serial.
inline void default_executor(Index count, const RangeFunction& work) {
#ifdef _OPENMP
  const Index threads = omp_in_parallel() ? 1 : std::min<Index>(omp_get_max_threads(), count);
  if (threads > 1) {
    std::exception_ptr error;
#pragma omp parallel num_threads(static_cast <int>(threads))
    {
      const Index chunks = omp_get_num_threads();
      const Index c = omp_get_thread_num();
      const Index begin = detail::chunk_begin(count, chunks, c);
      const Index end = detail::chunk_begin(count, chunks, c + 1);
      try {
        if (begin < end) work(begin, end);
      } catch (...) {
#pragma omp critical(attn_parallel_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  serial_executor(count, work);
}

/// Runs `work` over [0, count) through `executor`, or default_executor when it is empty.
inline void parallel_for(Index count, const RangeFunction& work, const Executor& executor = {}) {
  if (count <= 0) return;
  if (executor) {
    executor(count, work);
  } else {
    default_executor(count, work);
  }
}

}  // namespace attn
