// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// The error of attention with keys and values stored in bfloat16, half or qint8, separated into
// its two sources and measured against the independent fp64 reference (tests/support/
// reference.hpp), at m = 512, 4 096 and 16 384 keys:
//
//   accumulation  the result against fp64 attention over the SAME rounded keys and values: what
//                 the arithmetic adds. attn accumulates in float whatever the storage, so this
//                 must be the float path's own error (a 16-bit accumulator would grow with m);
//   storage       the result against fp64 attention over the unrounded inputs: what rounding the
//                 keys and values to the storage type costs.
//
// Both on the decode path (1 query) and the prefill path (64 queries), 4 heads of d = 64,
// q, k, v standard normal (fixed seed), scale 1/√d. Errors are relative to the reference's size:
// max |err| / max |ref| and RMS(err) / RMS(ref) (the normalised RMS error; its square is the
// normalised MSE that ggml's tests bound by 5·10⁻⁴). Prints Markdown tables (README's).
//
//   ./build/default/bench/bench_storage_accuracy

#include <attn/attn.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>

#include "../tests/support/reference.hpp"

namespace {

using attn::Index;
using attn::Matrix;
using attn_test::MatrixB;
using attn_test::MatrixD;

constexpr Index heads = 4;
constexpr Index head_dim = 64;

Matrix<float> normal(Index rows, Index cols, std::mt19937& rng) {
  std::normal_distribution<float> draw(0.0f, 1.0f);
  Matrix<float> x(rows, cols);
  for (Index i = 0; i < x.size(); ++i)
    x.data()[i] = draw(rng);
  return x;
}

/// fp64 attention of every head, by the reference's explicit loops.
MatrixD reference(const MatrixD& q, const MatrixD& k, const MatrixD& v) {
  MatrixD out(q.rows(), heads * head_dim);
  const MatrixB all = MatrixB::Constant(q.rows(), k.rows(), true);
  const double scale = 1.0 / std::sqrt(double(head_dim));
  for (Index h = 0; h < heads; ++h) {
    out.middleCols(h * head_dim, head_dim) = attn_test::reference_attention(
        q.middleCols(h * head_dim, head_dim), k.middleCols(h * head_dim, head_dim),
        v.middleCols(h * head_dim, head_dim), all, MatrixD(), scale);
  }
  return out;
}

struct Errors {
  double max = 0;  // max |err| / max |ref|
  double rms = 0;  // RMS(err) / RMS(ref)
};

Errors errors(const Matrix<float>& got, const MatrixD& ref) {
  const MatrixD err = got.cast<double>() - ref;
  const double size = double(ref.size());
  return {err.cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff(),
          std::sqrt(err.squaredNorm() / size) / std::sqrt(ref.squaredNorm() / size)};
}

struct Row {
  Errors accumulation;
  Errors storage;
};

/// Attention with K and V in Storage against both references.
template <typename Storage>
Row measure(const Matrix<float>& q, const Matrix<float>& k, const Matrix<float>& v,
            const MatrixD& unrounded) {
  attn::AttentionOptions options;
  options.num_heads = heads;
  Matrix<float> got;
  MatrixD k_stored, v_stored;
  if constexpr (std::is_same_v<Storage, attn::qint8>) {
    const auto k8 = attn::QuantizedMatrix::quantize(k, head_dim);
    const auto v8 = attn::QuantizedMatrix::quantize(v, head_dim);
    got = attn::scaled_dot_product_attention(q, k8, v8, attn::Mask(), options);
    k_stored = k8.dequantize().cast<double>();
    v_stored = v8.dequantize().cast<double>();
  } else {
    const Matrix<Storage> ks = k.cast<Storage>(), vs = v.cast<Storage>();
    got = attn::scaled_dot_product_attention(q, ks, vs, attn::Mask(), options);
    k_stored = ks.template cast<float>().template cast<double>();
    v_stored = vs.template cast<float>().template cast<double>();
  }
  const MatrixD rounded = reference(q.cast<double>(), k_stored, v_stored);
  return {errors(got, rounded), errors(got, unrounded)};
}

void print(const char* storage, Index m, Index n, const Row& row) {
  std::printf("| %-8s | %6ld | %3ld | %9.1e | %9.1e | %9.1e | %9.1e |\n", storage, long(m), long(n),
              row.accumulation.max, row.accumulation.rms, row.storage.max, row.storage.rms);
}

}  // namespace

int main() {
  std::printf("SIMD: %s\n\n", attn::simd_instruction_set().c_str());
  std::printf(
      "| storage  |      m |   n | accumulation max | accumulation RMS | storage max | storage "
      "RMS |\n|---|---:|---:|---:|---:|---:|---:|\n");
  std::mt19937 rng(2026);
  for (const Index m : {512, 4096, 16384}) {
    const Matrix<float> k = normal(m, heads * head_dim, rng);
    const Matrix<float> v = normal(m, heads * head_dim, rng);
    for (const Index n : {1, 64}) {
      const Matrix<float> q = normal(n, heads * head_dim, rng);
      const MatrixD unrounded = reference(q.cast<double>(), k.cast<double>(), v.cast<double>());
      print("float", m, n, measure<float>(q, k, v, unrounded));
      print("bfloat16", m, n, measure<attn::bfloat16>(q, k, v, unrounded));
      print("half", m, n, measure<attn::half>(q, k, v, unrounded));
      print("qint8", m, n, measure<attn::qint8>(q, k, v, unrounded));
    }
  }
  return 0;
}
