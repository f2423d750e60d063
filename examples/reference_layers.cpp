// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// The code examples of the API reference's pages on the layers, their caches, rotary embeddings
// and training: each block between `//! [name]` markers is shown on a page (Doxygen's \snippet),
// compiled here and run as a smoke test, with a check after each block that what it shows really
// holds.

#include <attn/attn.hpp>

#include "reference_check.hpp"

#include <cmath>
#include <vector>

namespace {

using reference::check;
using reference::close;

void self_attention() {
  //! [self_attention]
  // nn.MultiheadAttention(64, 4)'s tensors (random here; a program loads them from PyTorch):
  attn::Matrix<float> in_proj_weight = attn::Matrix<float>::Random(3 * 64, 64) * 0.2f;
  attn::Vector<float> in_proj_bias = attn::Vector<float>::Random(3 * 64) * 0.1f;
  attn::Matrix<float> out_proj_weight = attn::Matrix<float>::Random(64, 64) * 0.2f;
  attn::Vector<float> out_proj_bias = attn::Vector<float>::Random(64) * 0.1f;
  attn::MultiHeadConfig cfg{/*model_dim*/ 64, /*num_heads*/ 4};
  auto w = attn::MultiHeadWeights<float>::from_pytorch(in_proj_weight, in_proj_bias,
                                                       out_proj_weight, out_proj_bias);
  attn::SelfAttention<float> self_attn(cfg, w);
  attn::Matrix<float> x = attn::Matrix<float>::Random(10, 64);  // 10 tokens
  attn::Matrix<float> y = self_attn(x, attn::Mask::causal());   // 10 × 64
  // Two sequences of 4 and 6 tokens packed row-wise, attending only within themselves:
  attn::Matrix<float> y2 = self_attn(x, {4, 6}, attn::Mask::causal());
  //! [self_attention]
  // The layer by hand: projections, the kernel over 4 heads, the output projection.
  const attn::Matrix<float> qkv =
      (x * in_proj_weight.transpose()).rowwise() + in_proj_bias.transpose();
  attn::AttentionOptions heads;
  heads.num_heads = 4;
  const attn::Matrix<float> o = attn::scaled_dot_product_attention(
      qkv.leftCols(64), qkv.middleCols(64, 64), qkv.rightCols(64), attn::Mask::causal(), heads);
  const attn::Matrix<float> by_hand =
      (o * out_proj_weight.transpose()).rowwise() + out_proj_bias.transpose();
  check(close(y, by_hand, 1e-4), "SelfAttention: nn.MultiheadAttention's computation");
  check(close(y2.bottomRows(6), self_attn(x.bottomRows(6), attn::Mask::causal()), 1e-4),
        "SelfAttention: packed sequences attend within themselves");
}

void cross_attention() {
  //! [cross_attention]
  const attn::Matrix<float> q_proj_weight = attn::Matrix<float>::Random(64, 64) * 0.2f;
  const attn::Matrix<float> k_proj_weight = attn::Matrix<float>::Random(64, 48) * 0.2f;
  const attn::Matrix<float> v_proj_weight = attn::Matrix<float>::Random(64, 48) * 0.2f;
  const attn::Vector<float> in_proj_bias = attn::Vector<float>::Random(3 * 64) * 0.1f;
  const attn::Matrix<float> out_proj_weight = attn::Matrix<float>::Random(64, 64) * 0.2f;
  const attn::Vector<float> out_proj_bias = attn::Vector<float>::Random(64) * 0.1f;
  attn::MultiHeadConfig cfg{/*model_dim*/ 64, /*num_heads*/ 4};
  cfg.source_dim = 48;  // the encoder's width
  auto w = attn::MultiHeadWeights<float>::from_pytorch(
      q_proj_weight, k_proj_weight, v_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias);
  attn::CrossAttention<float> cross(cfg, w);
  attn::Matrix<float> source = attn::Matrix<float>::Random(30, 48);  // e.g. the encoder's output
  attn::Matrix<float> target = attn::Matrix<float>::Random(5, 64);   // the decoder's states
  // 5 × 64: the queries from the target, the keys and values from the source.
  attn::Matrix<float> y = cross(target, source);
  auto memory = cross.remember(source);  // the source's K and V, projected once
  attn::Matrix<float> step = cross(target.bottomRows(1), memory);  // each decoding step
  // The same step into storage of your own, with scratch kept between steps:
  attn::Workspace workspace;
  attn::MultiHeadOptions options;
  options.workspace = &workspace;
  cross.attend_into(target.bottomRows(1), memory, step, attn::Mask(), options);
  //! [cross_attention]
  check(close(step, y.bottomRows(1), 1e-4) && memory.rows() == 30,
        "CrossAttention: a step over the remembered source is the last row of the whole call");
}

void multi_head_options() {
  //! [multi_head_options]
  // A layer of model_dim 64 with 4 heads (random weights in PyTorch's layout):
  attn::SelfAttention<float> self_attn(
      attn::MultiHeadConfig{64, 4},
      attn::MultiHeadWeights<float>::from_pytorch(
          attn::Matrix<float>::Random(3 * 64, 64) * 0.2f, attn::Vector<float>::Zero(3 * 64),
          attn::Matrix<float>::Random(64, 64) * 0.2f, attn::Vector<float>::Zero(64)));
  const attn::MultiHeadConfig& cfg = self_attn.config();
  const int steps = 6;
  attn::Matrix<float> x = attn::Matrix<float>::Random(steps, cfg.model_dim);  // one row per step
  attn::KVCache<float> cache = self_attn.make_cache(steps);
  attn::Workspace workspace;  // one per thread that decodes
  attn::MultiHeadOptions options;
  options.workspace = &workspace;
  attn::Matrix<float> y(1, cfg.model_dim);
  for (int step = 0; step < steps; ++step) {  // no heap allocation after the first step
    self_attn.attend_into(x.row(step), cache, y, attn::Mask::causal(), options);
  }
  //! [multi_head_options]
  check(close(y, self_attn(x, attn::Mask::causal()).bottomRows(1), 1e-4),
        "MultiHeadOptions: decoding step by step is the last row of the whole sequence");
}

void kv_cache() {
  //! [kv_cache]
  // A layer of model_dim 64 with 4 heads (random weights in PyTorch's layout):
  attn::SelfAttention<float> layer(
      attn::MultiHeadConfig{64, 4},
      attn::MultiHeadWeights<float>::from_pytorch(
          attn::Matrix<float>::Random(3 * 64, 64) * 0.2f, attn::Vector<float>::Zero(3 * 64),
          attn::Matrix<float>::Random(64, 64) * 0.2f, attn::Vector<float>::Zero(64)));
  attn::Matrix<float> prompt = attn::Matrix<float>::Random(7, 64);  // 7 tokens
  attn::Matrix<float> tokens = attn::Matrix<float>::Random(3, 64);  // 3 generated, one at a time
  attn::KVCache<float> cache = layer.make_cache(/*capacity*/ 2048);
  attn::Matrix<float> y = layer(prompt, cache);  // prefill: causal over the prompt
  for (attn::Index t = 0; t < tokens.rows(); ++t) {
    y = layer(tokens.row(t), cache);  // one step: sees everything cached
  }
  // Half the bytes: keys and values kept in bfloat16, converted in registers when read.
  attn::KVCache<float, attn::bfloat16> small = layer.make_cache<attn::bfloat16>(2048);
  attn::Matrix<float> y_small = layer(prompt, small);
  cache.reset();  // the next sequence, in the same storage
  //! [kv_cache]
  attn::Matrix<float> whole(10, 64);
  whole << prompt, tokens;
  check(close(y, layer(whole, attn::Mask::causal()).bottomRows(1), 1e-4) && cache.size() == 0,
        "KVCache: prefill then steps give the whole sequence's last row");
  check(close(y_small, layer(prompt, attn::Mask::causal()), 2e-2) &&
            small.bytes() * 2 == layer.make_cache(2048).bytes(),
        "KVCache<float, bfloat16>: half the bytes, bfloat16's rounding");
  attn::KVCache<float> full = layer.make_cache(2);
  bool refused = false;
  try {
    layer(prompt, full);  // 7 rows into room for 2
  } catch (const attn::CapacityError&) {
    refused = full.size() == 0;
  }
  check(refused, "CapacityError: a prompt too long for the cache, which is left unchanged");
}

void paged_kv_cache() {
  //! [paged_kv_cache]
  // A layer of model_dim 64 with 4 heads (random weights in PyTorch's layout):
  attn::SelfAttention<float> layer(
      attn::MultiHeadConfig{64, 4},
      attn::MultiHeadWeights<float>::from_pytorch(
          attn::Matrix<float>::Random(3 * 64, 64) * 0.2f, attn::Vector<float>::Zero(3 * 64),
          attn::Matrix<float>::Random(64, 64) * 0.2f, attn::Vector<float>::Zero(64)));
  attn::Matrix<float> system_prompt = attn::Matrix<float>::Random(70, 64);
  attn::Matrix<float> x = attn::Matrix<float>::Random(16, 64);  // a new token for each of 16 users
  attn::PagedKVCache<float> pool = layer.make_paged_cache(/*pages*/ 64);
  attn::SequenceId prompt = pool.create();
  layer(system_prompt, pool, prompt);  // prefill once
  std::vector<attn::SequenceId> users;
  for (int u = 0; u < 16; ++u)
    users.push_back(pool.fork(prompt));  // no copy
  // Each step: one row of x per user, decoded together.
  attn::Matrix<float> y = layer.attend_batch(x, pool, users);
  // What the kernel reads: each sequence's rows through its table of runs, in place.
  attn::PagedView<float> keys = pool.keys(users[3]);  // 71 rows
  //! [paged_kv_cache]
  attn::KVCache<float> cache = layer.make_cache(71);
  layer(system_prompt, cache);
  check(close(y.row(3), layer(x.row(3), cache), 1e-4) && keys.rows() == 71 &&
            keys.run_count() == 2 && keys.runs()[1].position == 64,
        "PagedKVCache: a forked sequence's step is its own cache's step; its rows in two runs");
  pool.drop(users[0]);
  bool unknown = false;
  try {
    pool.keys(users[0]);
  } catch (const attn::SequenceError&) {
    unknown = true;
  }
  check(unknown, "SequenceError: a dropped sequence is unknown");
}

void rotary() {
  //! [rotary]
  const attn::Index n = 5, p0 = 12, H = 4, Hkv = 2;
  attn::Matrix<float> qkv = attn::Matrix<float>::Random(n, (H + 2 * Hkv) * 128);
  attn::Matrix<float> q = attn::Matrix<float>::Random(5, 128);
  attn::Matrix<float> keys_after_gap = attn::Matrix<float>::Random(3, 128);
  const attn::Index evicted = 40;
  const attn::Matrix<float> original = qkv;  // (for the check after this example)
  attn::RotaryConfig cfg;
  cfg.head_dim = 128;  // LLaMA 3: every feature rotates, half_split pairs
  cfg.base = 500000;
  cfg.scaling = attn::RotaryScaling::linear(2);  // positions stretched twice as far
  attn::Rotary rope(cfg);
  // A fused projection [Q | K | V] of n new tokens, n × (H + 2·Hkv)·128, at positions p0, p0 + 1…
  // Q and K are adjacent column blocks of whole heads, so one call rotates both and computes
  // each row's cos and sin once.
  rope.apply(qkv.leftCols((H + Hkv) * 128), p0);
  // Rows at explicit positions (packed sequences, a tree of draft tokens):
  rope.apply(q, std::vector<attn::Index>{0, 1, 2, 0, 1});
  // Keys cached at positions s… after `evicted` positions were dropped before them:
  rope.shift(keys_after_gap, -evicted);  // now at positions s − evicted…
  //! [rotary]
  // A rotation keeps each pair's length: every head row keeps its norm; V is untouched.
  bool kept = qkv.rightCols(Hkv * 128) == original.rightCols(Hkv * 128);
  for (attn::Index h = 0; h < H + Hkv; ++h) {
    kept = kept && close(qkv.middleCols(h * 128, 128).rowwise().norm(),
                         original.middleCols(h * 128, 128).rowwise().norm());
  }
  check(kept && !(qkv.leftCols(128) == original.leftCols(128)),
        "Rotary: Q and K rotated (norms kept), V untouched");
}

void training() {
  //! [training]
  const attn::SelfAttention<double> layer(
      attn::MultiHeadConfig{16, 2},
      attn::MultiHeadWeights<double>::from_pytorch(
          attn::Matrix<double>::Random(48, 16), attn::Vector<double>::Random(48),
          attn::Matrix<double>::Random(16, 16), attn::Vector<double>::Random(16)));
  const attn::Matrix<double> x = attn::Matrix<double>::Random(6, 16);
  attn::LayerTape<double> tape;  // what the forward keeps for the backward
  attn::Matrix<double> y = attn::forward(layer, x, tape, attn::Mask::causal());
  attn::Matrix<double> dy = 2 * y;  // ∂loss/∂y for loss = Σ y²
  attn::LayerGradients<double> g = attn::backward(layer, tape, dy, attn::Mask::causal());
  // g.d_input: ∂loss/∂x; g.weights.q_weight, …, g.weights.out_bias: ∂loss/∂ each weight
  //! [training]
  // A central difference of the loss in x(2, 3) against g.d_input(2, 3).
  const double h = 1e-5;
  attn::Matrix<double> plus = x, minus = x;
  plus(2, 3) += h;
  minus(2, 3) -= h;
  const double difference = (layer(plus, attn::Mask::causal()).squaredNorm() -
                             layer(minus, attn::Mask::causal()).squaredNorm()) /
                            (2 * h);
  check(std::abs(difference - g.d_input(2, 3)) < 1e-6 * (1 + std::abs(difference)) &&
            g.weights.out_bias.size() == 16,
        "LayerGradients: d_input agrees with a central difference");
}

}  // namespace

int main() {
  self_attention();
  cross_attention();
  multi_head_options();
  kv_cache();
  paged_kv_cache();
  rotary();
  training();
  return reference::exit_status();
}
