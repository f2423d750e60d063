// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// parallel.hpp: thread_executor(n) over its persistent pool. Every call covers each item exactly
// once, runs its first chunk on the calling thread and returns only when its own chunks are done;
// the pool's threads are the same across calls and shared by copies, and are joined with the last
// copy; several threads may call one executor at once; an exception in a chunk reaches the caller
// and leaves the executor usable; nested calls do not deadlock; and a call allocates nothing.
// Allocations are counted by replacing the global operator new for this test binary only (not
// under ThreadSanitizer, whose runtime owns operator new). The tsan preset runs this file.

#include <attn/mask.hpp>
#include <attn/parallel.hpp>
#include <attn/scaled_dot_product.hpp>
#include <attn/workspace.hpp>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "support/counting_new.hpp"
#include "support/random.hpp"

// ThreadSanitizer's runtime defines operator new itself, so under it nothing is counted and the
// allocation tests are skipped.

namespace {

using attn::Index;

/// A number unique to the thread that asks, drawn on its first call. Thread ids may be reused by
/// the next thread the system starts; these are not, so a pool that started fresh threads per
/// call would show new numbers on every call.
std::atomic<int> next_thread_number{1};
int thread_number() {
  static thread_local const int number = next_thread_number.fetch_add(1);
  return number;
}

/// Counts the threads that ran a chunk and have since exited: each such thread holds one of
/// these, whose destructor runs as the thread ends (before a join of it returns).
std::atomic<int> exited_threads{0};
struct ExitCounter {
  bool armed = false;
  ~ExitCounter() {
    if (armed) exited_threads.fetch_add(1);
  }
};
void count_my_exit() {
  static thread_local ExitCounter counter;
  counter.armed = true;
}

/// How often each item of [0, count) was visited, and whether any range fell outside it.
class Coverage {
 public:
  explicit Coverage(Index count) : m_hits(static_cast<std::size_t>(count)) {}

  void visit(Index begin, Index end) {
    if (begin < 0 || end > static_cast<Index>(m_hits.size()) || begin >= end) {
      m_bad_ranges.fetch_add(1);
      return;
    }
    for (Index i = begin; i < end; ++i)
      m_hits[static_cast<std::size_t>(i)].fetch_add(1);
  }

  ::testing::AssertionResult exactly_once() const {
    if (m_bad_ranges.load() != 0)
      return ::testing::AssertionFailure() << m_bad_ranges.load() << " empty or outside ranges";
    for (std::size_t i = 0; i < m_hits.size(); ++i) {
      if (m_hits[i].load() != 1)
        return ::testing::AssertionFailure() << "item " << i << " of " << m_hits.size()
                                             << " visited " << m_hits[i].load() << " times";
    }
    return ::testing::AssertionSuccess();
  }

 private:
  std::vector<std::atomic<int>> m_hits;
  std::atomic<int> m_bad_ranges{0};
};

/// Runs body on a thread of its own and fails if it does not finish within a minute. A thread
/// that deadlocked can be neither joined nor cancelled, so the test binary then aborts.
::testing::AssertionResult finishes(const std::function<void()>& body) {
  std::packaged_task<void()> task(body);
  std::future<void> done = task.get_future();
  std::thread runner(std::move(task));
  if (done.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    std::fprintf(stderr, "test_parallel: deadlock (no return within 60 s), aborting\n");
    std::abort();
  }
  runner.join();
  done.get();  // rethrows what body threw
  return ::testing::AssertionSuccess();
}

/// Runs body(t) on `threads` std::threads released together, then joins them.
void run_concurrently(int threads, const std::function<void(int)>& body) {
  std::atomic<int> ready{0};
  std::vector<std::thread> running;
  for (int t = 0; t < threads; ++t) {
    running.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < threads)
        std::this_thread::yield();
      body(t);
    });
  }
  for (std::thread& thread : running)
    thread.join();
}

TEST(ThreadExecutor, CoversEveryItemExactlyOnce) {
  for (int threads : {-1, 0, 1, 2, 3, 4, 7}) {
    const attn::Executor executor = attn::thread_executor(threads);
    for (Index count : {0, 1, 2, 3, 5, 7, 8, 13, 64, 1000}) {
      Coverage coverage(count);
      std::atomic<int> calls{0};
      executor(count, [&](Index begin, Index end) {
        calls.fetch_add(1);
        coverage.visit(begin, end);
      });
      EXPECT_TRUE(coverage.exactly_once()) << "threads " << threads << ", count " << count;
      // min(threads, count) chunks, none of them empty.
      const int chunks = static_cast<int>(std::min<Index>(std::max(threads, 1), count));
      EXPECT_EQ(calls.load(), chunks) << "threads " << threads << ", count " << count;
    }
  }
}

// The caller runs the first chunk itself; one thread (or fewer) means no pool at all.
TEST(ThreadExecutor, CallerRunsTheFirstChunk) {
  const std::thread::id caller = std::this_thread::get_id();
  for (int threads : {1, 2, 4}) {
    const attn::Executor executor = attn::thread_executor(threads);
    for (int call = 0; call < 20; ++call) {
      std::mutex mutex;
      std::thread::id first_chunk;
      std::set<std::thread::id> others;
      executor(4, [&](Index begin, Index) {
        const std::lock_guard<std::mutex> lock(mutex);
        if (begin == 0) {
          first_chunk = std::this_thread::get_id();
        } else {
          others.insert(std::this_thread::get_id());
        }
      });
      EXPECT_EQ(first_chunk, caller) << "threads " << threads;
      if (threads == 1) {
        EXPECT_TRUE(others.empty());
      }
    }
  }
}

// Every call's pool chunks run on the same threads: at most threads - 1 of them over all calls,
// never the caller, and each has run chunks of several calls. Threads started per call would be
// new (new numbers, each running one chunk).
TEST(ThreadExecutor, PoolThreadsAreReusedAcrossCalls) {
  constexpr int threads = 3, calls = 30;
  const attn::Executor executor = attn::thread_executor(threads);
  const std::thread::id caller = std::this_thread::get_id();
  std::mutex mutex;
  std::vector<std::set<std::thread::id>> ids_per_call(calls);
  std::set<int> numbers;
  std::atomic<int> pool_chunks{0};
  for (int call = 0; call < calls; ++call) {
    executor(threads, [&](Index begin, Index) {
      if (begin == 0) return;  // the caller's chunk
      pool_chunks.fetch_add(1);
      const std::lock_guard<std::mutex> lock(mutex);
      ids_per_call[static_cast<std::size_t>(call)].insert(std::this_thread::get_id());
      numbers.insert(thread_number());
    });
  }
  std::set<std::thread::id> all_ids;
  for (const auto& ids : ids_per_call)
    all_ids.insert(ids.begin(), ids.end());
  EXPECT_EQ(pool_chunks.load(), calls * (threads - 1));
  EXPECT_GE(all_ids.size(), 1u);
  EXPECT_LE(all_ids.size(), std::size_t{threads - 1});
  EXPECT_EQ(all_ids.count(caller), 0u);
  EXPECT_GE(numbers.size(), 1u);
  EXPECT_LE(numbers.size(), std::size_t{threads - 1});
}

// A call returns only when all its chunks have finished, however late the pool's chunks end.
TEST(ThreadExecutor, ReturnsOnlyWhenEveryChunkIsDone) {
  const attn::Executor executor = attn::thread_executor(4);
  for (int call = 0; call < 5; ++call) {
    std::vector<std::atomic<int>> done(8);
    executor(8, [&](Index begin, Index end) {
      if (begin != 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      for (Index i = begin; i < end; ++i)
        done[static_cast<std::size_t>(i)].store(1);
    });
    for (std::size_t i = 0; i < done.size(); ++i)
      EXPECT_EQ(done[i].load(), 1)
          << "item " << i << " unfinished when call " << call << " returned";
  }
}

// Four threads call one executor at once, many times, with different counts: every call covers
// its own items exactly once and returns only when they are done, though the pool's threads
// serve all four.
TEST(ThreadExecutor, ConcurrentCallsFromFourThreads) {
  constexpr int callers = 4, calls = 40;
  const attn::Executor executor = attn::thread_executor(3);
  std::atomic<int> failures{0}, completed{0};
  std::mutex mutex;
  std::string first_failure;
  EXPECT_TRUE(finishes([&] {
    run_concurrently(callers, [&](int t) {
      for (int call = 0; call < calls; ++call) {
        const Index count = 1 + (call * 7 + t * 5) % 23;
        Coverage coverage(count);
        executor(count, [&](Index begin, Index end) { coverage.visit(begin, end); });
        const ::testing::AssertionResult once = coverage.exactly_once();
        if (!once) {
          failures.fetch_add(1);
          const std::lock_guard<std::mutex> lock(mutex);
          if (first_failure.empty())
            first_failure = "caller " + std::to_string(t) + ", call " + std::to_string(call) +
                            ": " + once.message();
        }
        completed.fetch_add(1);
      }
    });
  }));
  EXPECT_EQ(completed.load(), callers * calls);
  EXPECT_EQ(failures.load(), 0) << first_failure;
}

// The first exception a chunk throws reaches the caller after every chunk has finished, and the
// executor keeps working: from a pool chunk, from the caller's chunk, and from all chunks at once.
TEST(ThreadExecutor, ExceptionIsRethrownAndTheExecutorStaysUsable) {
  const attn::Executor executor = attn::thread_executor(4);
  for (Index thrower : {Index(0), Index(2), Index(-1)}) {  // -1: every chunk throws
    std::atomic<int> finished{0};
    try {
      executor(8, [&](Index begin, Index end) {
        const bool throws = thrower < 0 || (begin <= thrower && thrower < end);
        if (!throws) std::this_thread::sleep_for(std::chrono::milliseconds(5));
        finished.fetch_add(1);
        if (throws) throw std::runtime_error("chunk at " + std::to_string(begin));
      });
      ADD_FAILURE() << "no exception reached the caller (thrower " << thrower << ")";
    } catch (const std::runtime_error& e) {
      if (thrower >= 0) {
        EXPECT_EQ(std::string(e.what()), "chunk at " + std::to_string(thrower));
      }
    }
    EXPECT_EQ(finished.load(), 4) << "a chunk was still running when the exception arrived";
    Coverage coverage(100);
    executor(100, [&](Index begin, Index end) { coverage.visit(begin, end); });
    EXPECT_TRUE(coverage.exactly_once()) << "after an exception from " << thrower;
  }
}

// A chunk that calls the same executor, or another thread_executor, gets its items covered
// instead of waiting forever for threads the outer call occupies; so do chunks of calls made
// from four threads at once.
TEST(ThreadExecutor, NestedCallsDoNotDeadlock) {
  const attn::Executor outer = attn::thread_executor(2);
  const attn::Executor other = attn::thread_executor(3);
  std::atomic<int> failures{0};
  const auto nested_body = [&] {
    outer(4, [&](Index begin, Index end) {
      for (Index i = begin; i < end; ++i) {
        for (const attn::Executor* inner : {&outer, &other}) {
          Coverage coverage(9);
          (*inner)(9, [&](Index b, Index e) {
            // Two levels deep.
            outer(2, [&](Index, Index) {});
            coverage.visit(b, e);
          });
          if (!coverage.exactly_once()) failures.fetch_add(1);
        }
      }
    });
  };
  EXPECT_TRUE(finishes(nested_body));
  EXPECT_TRUE(finishes([&] { run_concurrently(4, [&](int) { nested_body(); }); }));
  EXPECT_EQ(failures.load(), 0);
}

// A copy shares the pool and keeps it alive: after the original is destroyed, the copy still
// covers every item, on the same pool threads.
TEST(ThreadExecutor, CopyOutlivesTheOriginal) {
  auto original = std::make_unique<attn::Executor>(attn::thread_executor(3));
  std::mutex mutex;
  std::set<int> numbers;
  const auto record = [&](Index begin, Index) {
    if (begin == 0) return;
    const std::lock_guard<std::mutex> lock(mutex);
    numbers.insert(thread_number());
  };
  for (int call = 0; call < 10; ++call)
    (*original)(3, record);
  attn::Executor copy = *original;
  original.reset();
  for (int call = 0; call < 10; ++call)
    copy(3, record);
  Coverage coverage(50);
  copy(50, [&](Index begin, Index end) { coverage.visit(begin, end); });
  EXPECT_TRUE(coverage.exactly_once());
  EXPECT_LE(numbers.size(), 2u) << "the copy ran its chunks on threads of another pool";
}

// The pool's threads live as long as some copy does, and have been joined once the last copy is
// gone.
TEST(ThreadExecutor, LastCopyJoinsThePoolThreads) {
  auto executor = std::make_unique<attn::Executor>(attn::thread_executor(3));
  std::mutex mutex;
  std::set<int> numbers;
  const int exited_before = exited_threads.load();
  for (int call = 0; call < 10; ++call) {
    (*executor)(3, [&](Index begin, Index) {
      if (begin == 0) return;
      count_my_exit();
      const std::lock_guard<std::mutex> lock(mutex);
      numbers.insert(thread_number());
    });
  }
  auto copy = std::make_unique<attn::Executor>(*executor);
  executor.reset();
  EXPECT_EQ(exited_threads.load(), exited_before) << "a copy is alive, yet pool threads exited";
  copy.reset();
  EXPECT_EQ(exited_threads.load() - exited_before, static_cast<int>(numbers.size()))
      << "the last copy is gone, yet not every pool thread has been joined";
}

// After the pool has started, a call allocates nothing (neither does the one that throws nothing
// and nests nothing, whatever its count).
TEST(ThreadExecutor, CallsAllocateNothing) {
  if (!ATTN_TEST_COUNTS_ALLOCATIONS)
    GTEST_SKIP() << "allocations are not counted under ThreadSanitizer";
  const attn::Executor executor = attn::thread_executor(3);
  std::atomic<Index> sum{0};
  const attn::RangeFunction work = [&](Index begin, Index end) {
    for (Index i = begin; i < end; ++i)
      sum.fetch_add(i);
  };
  executor(3, work);  // the calling thread's first Schedule
  sum.store(0);
  const long before = attn_test::allocation_count().load();
  for (int call = 0; call < 50; ++call)
    executor(1 + call % 7, work);
  EXPECT_EQ(attn_test::allocation_count().load() - before, 0);
  Index expected = 0;
  for (int call = 0; call < 50; ++call)
    expected += (call % 7) * (call % 7 + 1) / 2;
  EXPECT_EQ(sum.load(), expected);
}

// The kernel on the pool with a Workspace allocates nothing, prefill and decode alike. A call may
// still size the workspace slot of a worker that took no item before (which worker gets items
// depends on timing), so only calls that left the workspace's size unchanged are checked; the
// slots are few, so most calls are.
TEST(ThreadExecutor, KernelWithAWorkspaceAllocatesNothing) {
  if (!ATTN_TEST_COUNTS_ALLOCATIONS)
    GTEST_SKIP() << "allocations are not counted under ThreadSanitizer";
  struct Shape {
    Index n, m;
  };
  attn_test::Random rng(901);
  for (const Shape& shape : {Shape{130, 200}, Shape{1, 3000}}) {
    const Index heads = 4, d = 16;
    const attn::Matrix<float> q = rng.uniform_matrix<float>(shape.n, heads * d);
    const attn::Matrix<float> k = rng.uniform_matrix<float>(shape.m, heads * d);
    const attn::Matrix<float> v = rng.uniform_matrix<float>(shape.m, heads * d);
    attn::Matrix<float> out(shape.n, heads * d);
    attn::Workspace workspace;
    attn::AttentionOptions options;
    options.num_heads = heads;
    options.executor = attn::thread_executor(2);
    options.workspace = &workspace;
    attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask::causal(), options);
    int checked = 0;
    for (int call = 0; call < 12; ++call) {
      const std::size_t bytes = workspace.bytes();
      const long before = attn_test::allocation_count().load();
      attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask::causal(), options);
      const long counted = attn_test::allocation_count().load() - before;
      if (workspace.bytes() != bytes) continue;
      ++checked;
      EXPECT_EQ(counted, 0) << "n " << shape.n << ", m " << shape.m << ", call " << call;
    }
    EXPECT_GT(checked, 0) << "n " << shape.n << ", m " << shape.m;
  }
}

}  // namespace
