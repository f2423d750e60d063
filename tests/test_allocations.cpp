// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// The functors' hot paths allocate nothing: with a Workspace in MultiHeadOptions and the serial
// executor, a SelfAttention decode step over a KVCache and a CrossAttention step over a
// remembered memory perform no heap allocation after the first call, in the kernel's one-part
// decode and in its split-key decode (a step over 1024 keys or more) alike.
//
// Two allocators are watched while a test counts:
// - the global operator new, in all its forms (std::vector, std::function, std::shared_ptr and
//   Workspace allocate through it), replaced below by counting versions;
// - Eigen's heap (its matrices, and GEMM's packing buffers beyond EIGEN_STACK_ALLOCATION_LIMIT),
//   which uses std::malloc, not operator new. Eigen's documented EIGEN_RUNTIME_NO_MALLOC switch
//   makes each of its heap allocations check an assertion while set_is_malloc_allowed(false) is
//   in force; eigen_assert is defined here to count those (any other failed assertion aborts).
//
// To see where an unexpected allocation comes from, run the test under gdb with a breakpoint on
// attn_test_allocations::allocation_seen, or set ATTN_ALLOCATION_BACKTRACE=1 to print a raw
// backtrace of each one (resolve the addresses with addr2line -f -C -e test_allocations).

#include <cstddef>

namespace attn_test_allocations {
void eigen_check(bool ok, const char* condition, const char* file, int line);
}  // namespace attn_test_allocations

#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(condition) \
  ::attn_test_allocations::eigen_check(static_cast<bool>(condition), #condition, __FILE__, __LINE__)

#include <attn/attn.hpp>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#if defined(__GLIBC__)
#include <execinfo.h>
#include <unistd.h>
#endif

#include "support/random.hpp"

namespace attn_test_allocations {

std::atomic<bool> counting{false};
std::atomic<long> allocations{0};
thread_local bool in_hook = false;

/// Called for every allocation made while counting: a place for a breakpoint.
[[gnu::noinline]] void allocation_seen(const char* allocator, std::size_t bytes) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  // Keeps the call (and so the breakpoint) even where the compiler sees no side effect.
  asm volatile("" ::: "memory");
#if defined(__GLIBC__)
  if (std::getenv("ATTN_ALLOCATION_BACKTRACE") != nullptr && !in_hook) {
    in_hook = true;
    std::fprintf(stderr, "allocation while counting: %s, %zu bytes, at\n", allocator, bytes);
    void* frames[32];
    backtrace_symbols_fd(frames, backtrace(frames, 32), STDERR_FILENO);
    in_hook = false;
  }
#else
  (void)allocator;
  (void)bytes;
#endif
}

void note(const char* allocator, std::size_t bytes) {
  if (counting.load(std::memory_order_relaxed)) allocation_seen(allocator, bytes);
}

void eigen_check(bool ok, const char* condition, const char* file, int line) {
  if (ok) return;
  if (std::strstr(condition, "heap allocation is forbidden") != nullptr) {
    note("Eigen (std::malloc)", 0);
    return;
  }
  std::fprintf(stderr, "%s:%d: Eigen assertion failed: %s\n", file, line, condition);
  std::abort();
}

void* allocate(std::size_t size) {
  note("operator new", size);
  return std::malloc(size == 0 ? 1 : size);
}

void* allocate(std::size_t size, std::align_val_t alignment) {
  note("operator new (aligned)", size);
  const std::size_t a = static_cast<std::size_t>(alignment);
  return std::aligned_alloc(a, (size + a - 1) / a * a + (size == 0 ? a : 0));
}

/// Every operator delete. Out of line, so that GCC does not see std::free paired with a pointer
/// from operator new (-Wmismatched-new-delete) where both are inlined.
[[gnu::noinline]] void release(void* p) noexcept {
  std::free(p);
}

/// Counts the allocations fn() makes, Eigen's included.
template <typename Fn>
long count_allocations(const Fn& fn) {
  const long before = allocations.load();
  Eigen::internal::set_is_malloc_allowed(false);
  counting = true;
  fn();
  counting = false;
  Eigen::internal::set_is_malloc_allowed(true);
  return allocations.load() - before;
}

}  // namespace attn_test_allocations

void* operator new(std::size_t size) {
  if (void* p = attn_test_allocations::allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
  if (void* p = attn_test_allocations::allocate(size)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
  return attn_test_allocations::allocate(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
  return attn_test_allocations::allocate(size);
}
void* operator new(std::size_t size, std::align_val_t alignment) {
  if (void* p = attn_test_allocations::allocate(size, alignment)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t alignment) {
  if (void* p = attn_test_allocations::allocate(size, alignment)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  return attn_test_allocations::allocate(size, alignment);
}
void* operator new[](std::size_t size, std::align_val_t alignment, const std::nothrow_t&) noexcept {
  return attn_test_allocations::allocate(size, alignment);
}
void operator delete(void* p) noexcept {
  attn_test_allocations::release(p);
}
void operator delete[](void* p) noexcept {
  attn_test_allocations::release(p);
}
void operator delete(void* p, std::size_t) noexcept {
  attn_test_allocations::release(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  attn_test_allocations::release(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  attn_test_allocations::release(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  attn_test_allocations::release(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  attn_test_allocations::release(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  attn_test_allocations::release(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  attn_test_allocations::release(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  attn_test_allocations::release(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  attn_test_allocations::release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  attn_test_allocations::release(p);
}

namespace {

using attn::Index;
using attn::Mask;
using attn::MultiHeadConfig;
using attn_test::Random;
using attn_test_allocations::count_allocations;

template <typename Scalar>
class Allocations : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Allocations, Scalars);

// Head dim 64: MHA with 4 heads, and GQA with 8 query heads reading 2 kv heads.
MultiHeadConfig config(Index heads, Index kv_heads, Index source_dim = 0) {
  MultiHeadConfig cfg;
  cfg.model_dim = heads * 64;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.source_dim = source_dim;
  return cfg;
}
const MultiHeadConfig configs[] = {config(4, 4), config(8, 2)};

// Cached keys before the counted steps: 600 decode in one part; from 1024 keys on the kernel
// splits a step's keys into parts (of 512) and merges them: 1100 + 21 stays within two parts,
// and 1010 crosses from one part to two during the counted steps (the first step sized the
// workspace for the cache's capacity, so the second part costs no allocation either).
constexpr Index prefixes[] = {600, 1010, 1100};
constexpr Index steps = 20;

attn::MultiHeadOptions serial_with(attn::Workspace* workspace) {
  attn::MultiHeadOptions options;
  options.executor = attn::serial_executor;
  options.workspace = workspace;
  return options;
}

// The counter sees both allocators.
TYPED_TEST(Allocations, CounterSeesOperatorNewAndEigen) {
  using Scalar = TypeParam;
  // Explicit calls: a new-expression or std::allocator's allocation may be elided.
  EXPECT_GT(count_allocations([] { ::operator delete(::operator new(16)); }), 0);
  EXPECT_GT(count_allocations([] { attn::Matrix<Scalar> m(10, 10); }), 0);
  EXPECT_EQ(count_allocations([] {}), 0);
}

TYPED_TEST(Allocations, DecodeStepWithWorkspaceAllocatesNothing) {
  using Scalar = TypeParam;
  std::uint32_t seed = 1900;
  for (const MultiHeadConfig& cfg : configs) {
    for (const Index prefix : prefixes) {
      Random rng(++seed);
      const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
      const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(prefix + 1 + steps, cfg.model_dim);
      attn::KVCache<Scalar> cache = layer.make_cache(x.rows() + 1000);
      (void)layer(x.topRows(prefix), cache);  // prefill
      attn::Workspace workspace;
      const attn::MultiHeadOptions options = serial_with(&workspace);
      attn::Matrix<Scalar> y(x.rows(), cfg.model_dim);
      layer.attend_into(x.row(prefix), cache, y.row(prefix), Mask::causal(), options);  // warm-up
      const long counted = count_allocations([&] {
        for (Index t = prefix + 1; t <= prefix + steps; ++t)
          layer.attend_into(x.row(t), cache, y.row(t), Mask::causal(), options);
      });
      EXPECT_EQ(counted, 0) << "H=" << cfg.num_heads << " Hkv=" << cfg.kv_heads() << ", steps over "
                            << prefix + 2 << " to " << prefix + steps + 1 << " keys";
      // The reused scratch changes nothing: the steps equal those of a decode without workspace.
      attn::KVCache<Scalar> fresh = layer.make_cache(x.rows());
      (void)layer(x.topRows(prefix), fresh);
      for (Index t = prefix; t <= prefix + steps; ++t) {
        const attn::Matrix<Scalar> expected = layer(x.row(t), fresh);
        EXPECT_TRUE((y.row(t).array() == expected.array()).all()) << "step at row " << t;
      }
    }
  }
}

TYPED_TEST(Allocations, CrossStepOverMemoryWithWorkspaceAllocatesNothing) {
  using Scalar = TypeParam;
  std::uint32_t seed = 1910;
  for (const MultiHeadConfig& base : configs) {
    const MultiHeadConfig cfg = config(base.num_heads, base.kv_heads(), /*source_dim*/ 96);
    for (const Index source_rows : prefixes) {
      for (const Mask& mask : {Mask(), Mask::key_length(source_rows - 7)}) {
        Random rng(++seed);
        const attn::CrossAttention<Scalar> cross(cfg, attn_test::random_weights<Scalar>(cfg, rng));
        const auto memory = cross.remember(rng.uniform_matrix<Scalar>(source_rows, 96));
        const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(1 + steps, cfg.model_dim);
        attn::Workspace workspace;
        const attn::MultiHeadOptions options = serial_with(&workspace);
        attn::Matrix<Scalar> y(target.rows(), cfg.model_dim);
        cross.attend_into(target.row(0), memory, y.row(0), mask, options);  // warm-up
        const long counted = count_allocations([&] {
          for (Index t = 1; t <= steps; ++t)
            cross.attend_into(target.row(t), memory, y.row(t), mask, options);
        });
        EXPECT_EQ(counted, 0) << "H=" << cfg.num_heads << " Hkv=" << cfg.kv_heads() << ", "
                              << source_rows << " source rows, key length " << mask.visible_keys();
        for (Index t = 0; t <= steps; ++t) {
          const attn::Matrix<Scalar> expected = cross(target.row(t), memory, mask);
          EXPECT_TRUE((y.row(t).array() == expected.array()).all()) << "step " << t;
        }
      }
    }
  }
}

// With keys and values in 16 or 8 bits, a step converts as it reads (and an append rounds in
// place): still no allocation, for a cache and for a remembered memory.
template <typename Storage>
void expect_stored_steps_allocate_nothing(const char* name) {
  const MultiHeadConfig cfg = config(8, 2, /*source_dim*/ 96);
  const MultiHeadConfig self_cfg = config(8, 2);
  Random rng(1920);
  const attn::SelfAttention<float> layer(self_cfg, attn_test::random_weights<float>(self_cfg, rng));
  const attn::CrossAttention<float> cross(cfg, attn_test::random_weights<float>(cfg, rng));
  const Index prefix = 1010;  // the steps cross from one key split to two
  const attn::Matrix<float> x = rng.uniform_matrix<float>(prefix + 1 + steps, self_cfg.model_dim);
  attn::KVCache<float, Storage> cache = layer.template make_cache<Storage>(x.rows());
  (void)layer(x.topRows(prefix), cache);
  const auto memory = cross.template remember<Storage>(rng.uniform_matrix<float>(prefix, 96));
  attn::Workspace workspace;
  const attn::MultiHeadOptions options = serial_with(&workspace);
  attn::Matrix<float> h(1, self_cfg.model_dim), y(1, cfg.model_dim);
  layer.attend_into(x.row(prefix), cache, h, Mask::causal(), options);  // warm-up
  cross.attend_into(h, memory, y, Mask(), options);
  const long counted = count_allocations([&] {
    for (Index t = prefix + 1; t <= prefix + steps; ++t) {
      layer.attend_into(x.row(t), cache, h, Mask::causal(), options);
      cross.attend_into(h, memory, y, Mask(), options);
    }
  });
  EXPECT_EQ(counted, 0) << name;
}

TEST(StoredAllocations, StepsOverReducedStorageAllocateNothing) {
  expect_stored_steps_allocate_nothing<attn::bfloat16>("bfloat16");
  expect_stored_steps_allocate_nothing<attn::half>("half");
  expect_stored_steps_allocate_nothing<attn::qint8>("qint8");
}

// The counter works on the same calls: without a workspace, every step allocates its scratch.
TYPED_TEST(Allocations, WithoutWorkspaceStepsAllocate) {
  using Scalar = TypeParam;
  Random rng(1920);
  const MultiHeadConfig cfg = config(4, 4);
  const attn::SelfAttention<Scalar> layer(cfg, attn_test::random_weights<Scalar>(cfg, rng));
  const attn::Matrix<Scalar> x = rng.uniform_matrix<Scalar>(603, cfg.model_dim);
  attn::KVCache<Scalar> cache = layer.make_cache(x.rows());
  (void)layer(x.topRows(600), cache);
  const attn::MultiHeadOptions options = serial_with(nullptr);
  attn::Matrix<Scalar> y(1, cfg.model_dim);
  layer.attend_into(x.row(600), cache, y, Mask::causal(), options);
  EXPECT_GT(
      count_allocations([&] { layer.attend_into(x.row(601), cache, y, Mask::causal(), options); }),
      0);

  const MultiHeadConfig cross_cfg = config(4, 4, 96);
  const attn::CrossAttention<Scalar> cross(cross_cfg,
                                           attn_test::random_weights<Scalar>(cross_cfg, rng));
  const auto memory = cross.remember(rng.uniform_matrix<Scalar>(600, 96));
  cross.attend_into(x.row(0), memory, y, Mask(), options);
  EXPECT_GT(count_allocations([&] { cross.attend_into(x.row(1), memory, y, Mask(), options); }), 0);
}

}  // namespace
