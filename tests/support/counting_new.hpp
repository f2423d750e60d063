// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

// Replaces the global operator new of the test binary that includes this header (once, in its
// one translation unit) with versions that count every allocation, so a test can check that a
// hot path allocates nothing. Under ThreadSanitizer, whose runtime defines operator new itself,
// nothing is replaced and ATTN_TEST_COUNTS_ALLOCATIONS is 0: tests then skip their counts.
// (test_allocations.cpp has its own, stricter counter: it also sees Eigen's malloc and counts
// only while a test asks it to.)

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

#if defined(__SANITIZE_THREAD__)
#define ATTN_TEST_COUNTS_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ATTN_TEST_COUNTS_ALLOCATIONS 0
#endif
#endif
#ifndef ATTN_TEST_COUNTS_ALLOCATIONS
#define ATTN_TEST_COUNTS_ALLOCATIONS 1
#endif

namespace attn_test {

// Allocations through operator new so far, on any thread.
inline std::atomic<long>& allocation_count() {
  static std::atomic<long> count{0};
  return count;
}

// Allocations made by fn().
template <typename Fn>
long count_allocations(const Fn& fn) {
  const long before = allocation_count().load();
  fn();
  return allocation_count().load() - before;
}

}  // namespace attn_test

#if ATTN_TEST_COUNTS_ALLOCATIONS
// GCC inlines these replacements and then sees free() of what operator new returned; here both
// are malloc's, so its -Wmismatched-new-delete is a false positive.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
  attn_test::allocation_count().fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  return operator new(size);
}
void* operator new(std::size_t size, std::align_val_t alignment) {
  attn_test::allocation_count().fetch_add(1, std::memory_order_relaxed);
  const std::size_t a = static_cast<std::size_t>(alignment);
  if (void* p = std::aligned_alloc(a, (size + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t alignment) {
  return operator new(size, alignment);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
#endif  // ATTN_TEST_COUNTS_ALLOCATIONS
