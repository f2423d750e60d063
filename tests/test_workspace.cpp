// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// The kernel's steady state allocates nothing: with a Workspace and the serial executor, a call
// after the first of its shape performs no heap allocation. Counted by replacing the global
// operator new for this test binary only.

#include <gtest/gtest.h>

#include <atomic>
#include <attn/attn.hpp>
#include <cstdlib>
#include <new>

#include "support/counting_new.hpp"
#include "support/matrix_near.hpp"

namespace {

using attn::Index;
template <typename T>
using Matrix = attn::Matrix<T>;

using attn_test::count_allocations;

template <typename T>
class WorkspaceTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(WorkspaceTest, Scalars);

// Prefill-like (wide blocks, causal) and decode-like (one query over split keys) calls.
TYPED_TEST(WorkspaceTest, RepeatedCallsAllocateNothing) {
  using T = TypeParam;
  struct Shape {
    Index n, m, heads, kv_heads, d;
    attn::Mask mask;
  };
  const Shape shapes[] = {{200, 300, 4, 2, 32, attn::Mask::causal()},
                          {1, 3000, 8, 8, 64, attn::Mask::causal()},
                          {3, 700, 2, 1, 16, attn::Mask::window(100, 0)}};
  for (const Shape& shape : shapes) {
    const Matrix<T> q = Matrix<T>::Random(shape.n, shape.heads * shape.d);
    const Matrix<T> k = Matrix<T>::Random(shape.m, shape.kv_heads * shape.d);
    const Matrix<T> v = Matrix<T>::Random(shape.m, shape.kv_heads * shape.d);
    Matrix<T> out(shape.n, shape.heads * shape.d);
    attn::Workspace workspace;
    attn::AttentionOptions options;
    options.num_heads = shape.heads;
    options.num_kv_heads = shape.kv_heads;
    options.executor = attn::serial_executor;
    options.workspace = &workspace;
    attn::scaled_dot_product_attention_into(q, k, v, out, shape.mask, options);  // sizes it
    const Matrix<T> first = out;
    EXPECT_GT(workspace.bytes(), 0u);
    const long counted = count_allocations([&] {
      for (int call = 0; call < 3; ++call) {
        attn::scaled_dot_product_attention_into(q, k, v, out, shape.mask, options);
      }
    });
    EXPECT_EQ(counted, 0) << "n " << shape.n << ", m " << shape.m;
    // Reused scratch must not change the result.
    EXPECT_TRUE((out.array() == first.array()).all());
  }
}

// The counter works: the same calls without a workspace do allocate (their scratch).
TYPED_TEST(WorkspaceTest, WithoutWorkspaceScratchIsAllocatedPerCall) {
  using T = TypeParam;
  const Matrix<T> q = Matrix<T>::Random(70, 32), k = Matrix<T>::Random(90, 32),
                  v = Matrix<T>::Random(90, 32);
  Matrix<T> out(70, 32);
  attn::AttentionOptions options;
  options.executor = attn::serial_executor;
  attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask(), options);
  EXPECT_GT(count_allocations([&] {
              attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask(), options);
            }),
            0);
}

}  // namespace
