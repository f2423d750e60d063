// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file error.hpp
/// The three tiers of errors: static_assert for what the compiler knows, ShapeError for bad shapes
/// and parameters at run time, ATTN_ASSERT for internal invariants.

#include <cassert>
#include <sstream>
#include <stdexcept>
#include <string>

#include "types.hpp"

/// Internal invariant check; define ATTN_ASSERT before including attn to route it elsewhere.
/// Gone under NDEBUG, like assert.
#ifndef ATTN_ASSERT
#define ATTN_ASSERT(condition) assert(condition)
#endif

namespace attn {

/// Thrown for every invalid shape or parameter. The message names the function, the argument, what
/// was expected and what was given, e.g. "CrossAttention: source.cols() is 40, expected source_dim
/// 48". Inputs and outputs are left untouched when it is thrown.
///
/// Example (examples/reference_kernel.cpp, compiled and run as a test):
/// \snippet reference_kernel.cpp errors
class ShapeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Thrown when appending to a KVCache, or to a sequence of a PagedKVCache, would need more room
/// than is left; the cache is left unchanged.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp kv_cache
class CapacityError : public ShapeError {
 public:
  using ShapeError::ShapeError;
};

/// Thrown when a PagedKVCache is asked about a sequence it does not hold (never created, or
/// dropped); the cache is left unchanged.
///
/// Example (examples/reference_layers.cpp, compiled and run as a test):
/// \snippet reference_layers.cpp paged_kv_cache
class SequenceError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// "5x8"
inline std::string shape_string(Index rows, Index cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

template <typename Derived>
std::string shape_string(const Eigen::EigenBase<Derived>& m) {
  return shape_string(m.rows(), m.cols());
}

/// Builds a message from streamable parts and throws ShapeError with it.
template <typename... Parts>
[[noreturn]] void throw_shape_error(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw ShapeError(message.str());
}

}  // namespace detail
}  // namespace attn
