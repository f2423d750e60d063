// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// basics: the kernel, a mask, and the SelfAttention and CrossAttention functors on inputs small
// enough to read the attention weights off the printed numbers.
//
//   ./build/default/examples/basics

#include <attn/attn.hpp>
#include <cstdio>
#include <string>
#include <vector>

namespace {

void print(const char* title, const attn::Matrix<float>& m, const std::vector<std::string>& rows) {
  std::printf("%s\n", title);
  for (attn::Index i = 0; i < m.rows(); ++i) {
    std::printf("  %-6s", rows[std::size_t(i)].c_str());
    for (attn::Index j = 0; j < m.cols(); ++j)
      std::printf(" %6.3f", double(m(i, j)));
    std::printf("\n");
  }
}

// One-hot-ish embeddings so the attention weights can be read off the output.
attn::Matrix<float> one_hot(attn::Index rows, attn::Index cols, float strength) {
  attn::Matrix<float> m = attn::Matrix<float>::Zero(rows, cols);
  for (attn::Index i = 0; i < rows; ++i)
    m(i, i % cols) = strength;
  return m;
}

}  // namespace

int main() {
  std::printf("attn %s: softmax(Q·Kᵀ/√d + mask)·V\n", attn::version);
  std::printf("compiled for %s\n\n", attn::simd_instruction_set().c_str());

  // 1. The kernel. Keys equal to the queries make each query prefer its own key; values are the
  //    identity, so each output row is that query's attention weights over the keys.
  const std::vector<std::string> words = {"the", "cat", "sat", "down"};
  const attn::Matrix<float> q = one_hot(4, 4, 3.0f);
  const attn::Matrix<float> identity = attn::Matrix<float>::Identity(4, 4);
  print("Self-attention weights, no mask (row: query, column: key)",
        attn::scaled_dot_product_attention(q, q, identity), words);
  print("\nSame, causal mask: a word sees only itself and the words before it",
        attn::scaled_dot_product_attention(q, q, identity, attn::Mask::causal()), words);

  // 2. Cross-attention: queries from the target (3 decoder positions), keys AND values from the
  //    source (5 encoder positions). Target position t looks for source position 4 − t.
  const std::vector<std::string> targets = {"t0", "t1", "t2"};
  attn::Matrix<float> target_queries = attn::Matrix<float>::Zero(3, 5);
  for (attn::Index t = 0; t < 3; ++t)
    target_queries(t, 4 - t) = 8.0f;
  const attn::Matrix<float> source_keys = attn::Matrix<float>::Identity(5, 5);
  attn::Matrix<float> source_values(5, 2);  // what each source position carries
  source_values << 0, 1, 10, 11, 20, 21, 30, 31, 40, 41;
  print("\nCross-attention weights: target rows over 5 source positions",
        attn::scaled_dot_product_attention(target_queries, source_keys,
                                           attn::Matrix<float>::Identity(5, 5)),
        targets);
  print("Cross-attention output: each target row reads mostly the value of its source position",
        attn::scaled_dot_product_attention(target_queries, source_keys, source_values), targets);

  // 3. The multi-head functors, with weights in torch.nn.MultiheadAttention's layout.
  const attn::Index model_dim = 8, heads = 2, source_dim = 6;
  attn::MultiHeadConfig self_config{model_dim, heads};
  attn::MultiHeadWeights<float> w;
  w.q_weight = w.out_weight = attn::Matrix<float>::Identity(model_dim, model_dim);
  w.k_weight = w.v_weight = attn::Matrix<float>::Identity(model_dim, model_dim);
  w.q_bias = w.k_bias = w.v_bias = w.out_bias = attn::Vector<float>::Zero(model_dim);
  const attn::SelfAttention<float> self_attn(self_config, w);
  const attn::Matrix<float> x = one_hot(4, model_dim, 2.0f);
  print("\nSelfAttention (E = 8, 2 heads, identity weights), causal: x (4x8) -> y (4x8)",
        self_attn(x, attn::Mask::causal()), words);

  attn::MultiHeadConfig cross_config{model_dim, heads};
  cross_config.source_dim = source_dim;  // the encoder is narrower than the decoder
  w.k_weight = w.v_weight = attn::Matrix<float>::Identity(model_dim, source_dim);
  const attn::CrossAttention<float> cross(cross_config, w);
  const attn::Matrix<float> encoder_output = one_hot(5, source_dim, 2.0f);
  const auto memory = cross.remember(encoder_output);  // K and V projected once
  print("\nCrossAttention over a remembered 5x6 source: target (3x8) -> y (3x8)",
        cross(one_hot(3, model_dim, 2.0f), memory), targets);
  return 0;
}
