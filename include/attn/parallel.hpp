// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file parallel.hpp
/// The one seam through which attn uses threads: parallel_for over a count of work items, run by
/// an Executor. Serial by default, OpenMP when the program is compiled with it, a persistent pool
/// from thread_executor(n), or an executor of the user's own (a thread pool, TBB, ...).
///
/// **The executor contract.** An executor calls `work(begin, end)` over a partition of
/// [0, count) into ranges that cover every item exactly once, possibly on several threads at
/// once, and returns only when every call has returned; an exception from a call reaches the
/// executor's caller. How it splits the range is its own choice: attn's kernel does not read the
/// range it is given. Each call of the kernel's work function is one *worker* that takes work
/// items (a head's query block, or a key split when decoding) from a counter shared by the whole
/// kernel call until none are left, so a worker that starts late, or on a slower core, simply does
/// less. The executor therefore decides only how many workers run at the same time; which worker
/// computes an item never changes its result, so results are bitwise the same for any executor
/// and any thread count. (A worker that finds no item left returns at once; each worker that does
/// take one uses its own slot of the kernel's Workspace.)

#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <memory>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "types.hpp"

#include <unsupported/Eigen/CXX11/ThreadPool>

namespace attn {

/// Work over the items [begin, end), run on one thread. The signature is kept for executors
/// written against it; attn's kernel ignores the range and treats each call as one worker that
/// takes items from a shared counter (see the executor contract above).
using RangeFunction = std::function<void(Index begin, Index end)>;

/// Runs `work` over a partition of [0, count) into ranges that cover every item exactly once,
/// possibly concurrently, and returns when all calls have returned, rethrowing an exception that a
/// call threw. The number of calls running at once is the number of threads the kernel uses; the
/// partition itself does not affect the results (see the executor contract above).
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

/// True while this thread runs a chunk for a thread_executor (of any pool). A call made from
/// there runs inline: its threads are busy with the outer call, and a pool thread that waited for
/// work queued behind itself would never be woken.
inline bool& inside_pool_chunk() {
  static thread_local bool inside = false;
  return inside;
}

/// What thread_executor(n) returns shares one of these: n − 1 Eigen::ThreadPool threads, started
/// once, plus whichever thread calls. Eigen's pool is thread-safe to schedule into, so several
/// threads may call run() at once; each call waits only for its own chunks.
class PoolExecutor {
 public:
  explicit PoolExecutor(int threads) : m_threads(threads), m_pool(threads - 1) {}
  PoolExecutor(const PoolExecutor&) = delete;
  PoolExecutor& operator=(const PoolExecutor&) = delete;

  /// Splits [0, count) into min(threads, count) chunks; the caller runs chunk 0 and the pool the
  /// others. Allocates nothing: the state lives on the caller's stack, and each scheduled task
  /// captures two words, which std::function keeps in its own small buffer.
  void run(Index count, const RangeFunction& work) {
    const Index chunks = std::min<Index>(m_threads, count);
    if (chunks <= 1 || inside_pool_chunk()) return serial_executor(count, work);
    Call call(work, count, chunks);
    Call* const shared = &call;
    for (Index c = 1; c < chunks; ++c)
      m_pool.Schedule([shared, c] { shared->run_chunk(c); });
    call.run_chunk(0);
    call.pool_chunks_done.Wait();  // the call's state must outlive every chunk that reads it
    if (call.error) std::rethrow_exception(call.error);
  }

 private:
  /// One run() call: its chunks, the barrier its pool chunks notify, and the first exception.
  struct Call {
    Call(const RangeFunction& work_, Index count_, Index chunks_)
        : work(work_),
          count(count_),
          chunks(chunks_),
          pool_chunks_done(static_cast<unsigned>(chunks_ - 1)) {}

    void run_chunk(Index c) {
      bool& inside = inside_pool_chunk();
      const bool was_inside = inside;
      inside = true;
      try {
        const Index begin = chunk_begin(count, chunks, c);
        const Index end = chunk_begin(count, chunks, c + 1);
        if (begin < end) work(begin, end);
      } catch (...) {
        // The first chunk to fail keeps its exception; the barrier publishes it to the caller.
        if (!failed.exchange(true, std::memory_order_relaxed)) error = std::current_exception();
      }
      inside = was_inside;
      if (c != 0) pool_chunks_done.Notify();
    }

    const RangeFunction& work;
    const Index count, chunks;
    Eigen::Barrier pool_chunks_done;
    std::atomic<bool> failed{false};
    std::exception_ptr error;
  };

  Index m_threads;
  Eigen::ThreadPool m_pool;
};

}  // namespace detail

/// An executor that runs the items on `threads` threads: the calling thread and a persistent
/// pool of `threads − 1` (Eigen::ThreadPool), started here rather than per call, so that calls
/// as short as a decode step gain from threads. `threads` ≤ 1 gives serial_executor.
///
/// Each call splits [0, count) into min(threads, count) contiguous chunks; the calling thread
/// runs the first and the pool the others, and the call returns when all are done, rethrowing
/// the first exception a chunk threw (the executor stays usable). After the pool has started, a
/// call allocates no memory.
///
/// **Lifetime.** Every copy of the returned Executor shares the one pool; its threads are
/// joined when the last copy is destroyed (a call in progress keeps it alive until it returns).
///
/// **Concurrency.** Any number of threads may call one executor (or its copies) at once; their
/// chunks share the pool's threads, and each call waits only for its own.
///
/// **Nesting.** A call made from inside a chunk of any thread_executor runs all its items inline,
/// on the thread that makes it: the outer call already occupies the threads, and a pool thread
/// waiting for work queued behind itself would deadlock.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp executor
inline Executor thread_executor(int threads) {
  if (threads <= 1) return serial_executor;
  auto pool = std::make_shared<detail::PoolExecutor>(threads);
  return [pool = std::move(pool)](Index count, const RangeFunction& work) {
    // If a chunk drops the last other copy of this executor, the pool still outlives the call.
    const std::shared_ptr<detail::PoolExecutor> keep_alive = pool;
    keep_alive->run(count, work);
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
