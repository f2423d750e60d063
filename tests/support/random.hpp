// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
#pragma once

/// \file support/random.hpp
/// Seeded random inputs for tests: every test states its seed, so every failure reproduces.

#include <attn/multi_head.hpp>
#include <attn/types.hpp>

#include <cmath>
#include <cstdint>
#include <random>

namespace attn_test {

/// A std::mt19937 with helpers for matrices. Values are drawn in double and rounded once to the
/// requested Scalar, so a float and a double matrix from the same seed hold the same numbers up to
/// float rounding.
class Random {
 public:
  explicit Random(std::uint32_t seed) : m_engine(seed) {}

  /// Uniform in [lo, hi).
  double uniform(double lo = -1, double hi = 1) {
    return std::uniform_real_distribution<double>(lo, hi)(m_engine);
  }
  /// Integer uniform in [lo, hi].
  Eigen::Index integer(Eigen::Index lo, Eigen::Index hi) {
    return std::uniform_int_distribution<Eigen::Index>(lo, hi)(m_engine);
  }
  /// True with probability p.
  bool bernoulli(double p) { return std::bernoulli_distribution(p)(m_engine); }

  /// rows × cols, entries uniform in [lo, hi).
  template <typename Scalar>
  attn::Matrix<Scalar> uniform_matrix(Eigen::Index rows, Eigen::Index cols, double lo = -1,
                                      double hi = 1) {
    attn::Matrix<Scalar> m(rows, cols);
    for (Eigen::Index r = 0; r < rows; ++r) {
      for (Eigen::Index c = 0; c < cols; ++c)
        m(r, c) = static_cast<Scalar>(uniform(lo, hi));
    }
    return m;
  }

  /// rows × cols, entries normal with mean 0 and standard deviation `stddev`.
  template <typename Scalar>
  attn::Matrix<Scalar> normal_matrix(Eigen::Index rows, Eigen::Index cols, double stddev = 1) {
    std::normal_distribution<double> normal(0.0, stddev);
    attn::Matrix<Scalar> m(rows, cols);
    for (Eigen::Index r = 0; r < rows; ++r) {
      for (Eigen::Index c = 0; c < cols; ++c)
        m(r, c) = static_cast<Scalar>(normal(m_engine));
    }
    return m;
  }

  /// A vector of `size` entries uniform in [lo, hi).
  template <typename Scalar>
  attn::Vector<Scalar> uniform_vector(Eigen::Index size, double lo = -1, double hi = 1) {
    attn::Vector<Scalar> v(size);
    for (Eigen::Index i = 0; i < size; ++i)
      v(i) = static_cast<Scalar>(uniform(lo, hi));
    return v;
  }

  /// rows × cols booleans, each true with probability p.
  attn::Matrix<bool> bernoulli_matrix(Eigen::Index rows, Eigen::Index cols, double p) {
    attn::Matrix<bool> m(rows, cols);
    for (Eigen::Index r = 0; r < rows; ++r) {
      for (Eigen::Index c = 0; c < cols; ++c)
        m(r, c) = bernoulli(p);
    }
    return m;
  }

  std::mt19937& engine() { return m_engine; }

 private:
  std::mt19937 m_engine;
};

/// Random weights for `cfg`, initialised like PyTorch's Linear: uniform in ±1/√fan_in, so that
/// inputs in [−1, 1] give projections of order one. Biases are empty when cfg.bias is false.
template <typename Scalar>
attn::MultiHeadWeights<Scalar> random_weights(const attn::MultiHeadConfig& cfg, Random& rng) {
  const Eigen::Index e = cfg.model_dim;
  const Eigen::Index kv = cfg.kv_dim();
  const Eigen::Index s = cfg.source_features();
  const double in_bound = 1.0 / std::sqrt(static_cast<double>(s));
  const double e_bound = 1.0 / std::sqrt(static_cast<double>(e));
  attn::MultiHeadWeights<Scalar> w;
  w.q_weight = rng.uniform_matrix<Scalar>(e, e, -e_bound, e_bound);
  w.k_weight = rng.uniform_matrix<Scalar>(kv, s, -in_bound, in_bound);
  w.v_weight = rng.uniform_matrix<Scalar>(kv, s, -in_bound, in_bound);
  w.out_weight = rng.uniform_matrix<Scalar>(e, e, -e_bound, e_bound);
  if (cfg.bias) {
    w.q_bias = rng.uniform_vector<Scalar>(e, -e_bound, e_bound);
    w.k_bias = rng.uniform_vector<Scalar>(kv, -in_bound, in_bound);
    w.v_bias = rng.uniform_vector<Scalar>(kv, -in_bound, in_bound);
    w.out_bias = rng.uniform_vector<Scalar>(e, -e_bound, e_bound);
  }
  return w;
}

}  // namespace attn_test
