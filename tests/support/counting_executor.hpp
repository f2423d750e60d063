// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

#include <attn/parallel.hpp>

namespace attn_test {

/// An executor that counts its calls in `calls` (which must outlive it) and runs them serially:
/// shows which executor a call used.
inline attn::Executor counting_executor(int& calls) {
  return [&calls](attn::Index count, const attn::RangeFunction& work) {
    ++calls;
    attn::serial_executor(count, work);
  };
}

}  // namespace attn_test
