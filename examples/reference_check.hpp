// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// What the API reference's example programs (reference_kernel, reference_layers) check after
// each example: a line per claim, and an exit status that fails the smoke test if one did not hold.
#pragma once

#include <cstdlib>
#include <iostream>
#include <string>

namespace reference {

inline int& failures() {
  static int count = 0;
  return count;
}

/// Prints whether `what` held, and counts it if not.
inline void check(bool ok, const std::string& what) {
  std::cout << (ok ? "ok    " : "FAILED") << "  " << what << "\n";
  if (!ok) ++failures();
}

/// a and b have the same shape and agree within `tolerance` relative to b's largest magnitude.
template <typename A, typename B>
bool close(const A& a, const B& b, double tolerance = 1e-5) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a - b).cwiseAbs().maxCoeff() <= tolerance * (1 + b.cwiseAbs().maxCoeff());
}

/// main's return value: EXIT_SUCCESS when every check held.
inline int exit_status() {
  if (failures() > 0) {
    std::cout << failures() << " example(s) did not hold\n";
    return EXIT_FAILURE;
  }
  std::cout << "every example held\n";
  return EXIT_SUCCESS;
}

}  // namespace reference
