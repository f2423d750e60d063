// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file version.hpp
/// Library version, kept equal to the CMake project version.

/// The major version: the API may change incompatibly when it changes.
#define ATTN_VERSION_MAJOR 0
/// The minor version: additions.
#define ATTN_VERSION_MINOR 1
/// The patch version: fixes.
#define ATTN_VERSION_PATCH 0

namespace attn {
/// "major.minor.patch"
inline constexpr const char* version = "0.1.0";
}  // namespace attn
