// SPDX-FileCopyrightText: 2026 The attn authors
// SPDX-License-Identifier: MIT

// A consumer of the installed (or add_subdirectory'd) attn: one head of attention on 3x4 inputs.
#include <attn/attn.hpp>

#include <cstdio>

#ifdef ATTN_IMPORT_EVERY_TEMPLATE
bool exercise_every_template();  // every_template.cpp
#else
bool exercise_every_template() {
  return true;
}
#endif

int main() {
  const attn::Matrix<float> q = attn::Matrix<float>::Random(3, 4);
  const attn::Matrix<float> k = attn::Matrix<float>::Random(3, 4);
  // Every row of v is the same, so every output row must equal it: attention weights sum to 1.
  const attn::Matrix<float> v = Eigen::RowVector4f(1.0f, -2.0f, 3.0f, 0.5f).replicate(3, 1);

  const attn::Matrix<float> out = attn::scaled_dot_product_attention(q, k, v);

  if (out.rows() != 3 || out.cols() != 4) {
    std::fprintf(stderr, "cmake_import: output is %ldx%ld, expected 3x4\n",
                 static_cast<long>(out.rows()), static_cast<long>(out.cols()));
    return 1;
  }
  if (!out.isApprox(v, 1e-5f)) {
    std::fprintf(stderr, "cmake_import: output rows differ from the constant value row\n");
    return 1;
  }
  std::printf("cmake_import: ok (3x4 attention output)\n");
  return exercise_every_template() ? 0 : 1;
}
