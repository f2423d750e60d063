// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file support/shape_error.hpp
/// EXPECT_SHAPE_ERROR(statement, "part", ...): the statement throws attn::ShapeError, which is a
/// std::invalid_argument, with a message containing every given part (the argument's name and
/// both shapes, e.g. "q is 5x8" and "7x6").

#include <attn/error.hpp>
#include <gtest/gtest.h>

#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace attn_test {

static_assert(std::is_base_of_v<std::invalid_argument, attn::ShapeError>,
              "attn::ShapeError must derive from std::invalid_argument");

template <typename Function>
::testing::AssertionResult throws_shape_error(const char* statement, Function&& function,
                                              std::initializer_list<const char*> parts) {
  try {
    function();
  } catch (const std::invalid_argument& e) {
    if (dynamic_cast<const attn::ShapeError*>(&e) == nullptr) {
      return ::testing::AssertionFailure()
             << statement << " threw a std::invalid_argument that is not "
             << "an attn::ShapeError: " << e.what();
    }
    const std::string message = e.what();
    for (const char* part : parts) {
      if (message.find(part) == std::string::npos) {
        return ::testing::AssertionFailure() << statement << " threw ShapeError \"" << message
                                             << "\", which does not contain \"" << part << "\"";
      }
    }
    return ::testing::AssertionSuccess() << message;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure()
           << statement << " threw something other than ShapeError: " << e.what();
  } catch (...) {
    return ::testing::AssertionFailure() << statement << " threw a non-std::exception";
  }
  return ::testing::AssertionFailure() << statement << " threw nothing";
}

}  // namespace attn_test

#define EXPECT_SHAPE_ERROR(statement, ...) \
  EXPECT_TRUE(::attn_test::throws_shape_error(#statement, [&]() { statement; }, {__VA_ARGS__}))
