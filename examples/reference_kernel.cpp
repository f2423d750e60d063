// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// The code examples of the API reference's pages on the kernel, its masks and its options: each
// block between `//! [name]` markers is shown on a page (Doxygen's \snippet), compiled here and
// run as a smoke test, with a check after each block that what it shows really holds.

#include <attn/attn.hpp>

#include "reference_check.hpp"

#include <iostream>
#include <string>
#include <vector>

namespace {

using reference::check;
using reference::close;

// The given rows of x, in order: the keys or values a query may see, for attention over them
// without a mask.
attn::Matrix<float> pick_rows(const attn::Matrix<float>& x, const std::vector<attn::Index>& which) {
  attn::Matrix<float> picked(attn::Index(which.size()), x.cols());
  for (std::size_t r = 0; r < which.size(); ++r)
    picked.row(attn::Index(r)) = x.row(which[r]);
  return picked;
}

void scaled_dot_product() {
  //! [scaled_dot_product]
  attn::Matrix<float> q = attn::Matrix<float>::Random(10, 64);  // 10 queries
  attn::Matrix<float> k = attn::Matrix<float>::Random(20, 64);  // 20 keys
  attn::Matrix<float> v = attn::Matrix<float>::Random(20, 32);
  attn::Matrix<float> o = attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal());
  // o is 10 × 32; the mask is aligned bottom-right: query i sees keys 0 … i + 10.
  //! [scaled_dot_product]
  // The first query sees keys 0 … 10 only: the same as attention over those keys without a mask.
  check(close(o.topRows(1),
              attn::scaled_dot_product_attention(q.topRows(1), k.topRows(11), v.topRows(11))),
        "scaled_dot_product_attention: a causal mask aligned bottom-right");
}

void attention_options() {
  //! [attention_options]
  // Grouped-query attention: 8 query heads of 16 sharing 2 key/value heads.
  attn::Matrix<float> q = attn::Matrix<float>::Random(6, 8 * 16);
  attn::Matrix<float> k = attn::Matrix<float>::Random(9, 2 * 16);
  attn::Matrix<float> v = attn::Matrix<float>::Random(9, 2 * 16);
  attn::AttentionOptions options;
  options.num_heads = 8;
  options.num_kv_heads = 2;  // query heads 0-3 read kv head 0, 4-7 kv head 1
  options.softcap = 30;      // logits become 30·tanh(logits / 30), as Gemma 2
  attn::Matrix<float> o(6, 8 * 16);
  attn::scaled_dot_product_attention_into(q, k, v, o, attn::Mask::causal(), options);
  //! [attention_options]
  attn::AttentionOptions one_head;
  one_head.softcap = 30;
  const attn::Matrix<float> head5 = attn::scaled_dot_product_attention(
      q.middleCols(5 * 16, 16), k.rightCols(16), v.rightCols(16), attn::Mask::causal(), one_head);
  check(close(o.middleCols(5 * 16, 16), head5), "AttentionOptions: query head 5 reads kv head 1");
}

void extras() {
  //! [extras]
  attn::Matrix<float> q = attn::Matrix<float>::Random(4, 2 * 8);  // 2 heads of 8
  attn::Matrix<float> k = attn::Matrix<float>::Random(5, 2 * 8);
  attn::Matrix<float> v = attn::Matrix<float>::Random(5, 2 * 8);
  attn::AttentionOptions options;
  options.num_heads = 2;
  attn::Matrix<float> log_sum_exp, weights;
  attn::AttentionExtras<float> extras;
  extras.log_sum_exp = &log_sum_exp;  // 4 × 2: one per query and head
  extras.weights = &weights;          // (2·4) × 5: head 0's rows, then head 1's
  attn::Matrix<float> o =
      attn::scaled_dot_product_attention(q, k, v, attn::Mask(), options, extras);
  //! [extras]
  check(close(weights.rowwise().sum(), attn::Matrix<float>::Ones(8, 1)) &&
            close(o.leftCols(8), weights.topRows(4) * v.leftCols(8)) && log_sum_exp.rows() == 4 &&
            log_sum_exp.cols() == 2,
        "AttentionExtras: weights sum to one per row and give the output");
}

void masks() {
  //! [masks]
  const attn::Index n = 6, m = 6;
  attn::Mask causal = attn::Mask::causal();
  attn::Mask local = attn::Mask::causal() & attn::Mask::window(2, 0);  // itself and 2 before
  attn::Mask padded = attn::Mask::key_length(4);                       // keys 4, 5, … are padding
  attn::Matrix<bool> allowed = attn::Matrix<bool>::Constant(n, m, true);
  allowed(0, 3) = false;
  attn::Mask explicit_keep = attn::Mask::keep(allowed);
  //! [masks]
  attn::Matrix<float> q = attn::Matrix<float>::Random(n, 8), k = attn::Matrix<float>::Random(m, 8),
                      v = attn::Matrix<float>::Random(m, 8);
  const attn::Matrix<float> windowed = attn::scaled_dot_product_attention(q, k, v, local);
  check(close(windowed.row(5),
              attn::scaled_dot_product_attention(q.row(5), k.middleRows(3, 3), v.middleRows(3, 3))),
        "Mask: causal & window(2, 0) shows a row itself and two keys before");
  const attn::Matrix<float> short_keys = attn::scaled_dot_product_attention(q, k, v, padded);
  check(close(short_keys, attn::scaled_dot_product_attention(q, k.topRows(4), v.topRows(4))),
        "Mask: key_length(4) hides the keys from 4 on");
  check(close(attn::scaled_dot_product_attention(q, k, v, causal).row(2),
              attn::scaled_dot_product_attention(q.row(2), k.topRows(3), v.topRows(3))),
        "Mask: causal shows row 2 keys 0-2");
  check(close(attn::scaled_dot_product_attention(q, k, v, explicit_keep).row(0),
              attn::scaled_dot_product_attention(q.row(0), pick_rows(k, {0, 1, 2, 4, 5}),
                                                 pick_rows(v, {0, 1, 2, 4, 5}))),
        "Mask: keep hides key 3 from row 0");
}

void builtin_masks() {
  //! [builtin_masks]
  const attn::Index num_heads = 4;
  attn::Matrix<float> q = attn::Matrix<float>::Random(12, num_heads * 8);
  attn::Matrix<float> k = attn::Matrix<float>::Random(12, num_heads * 8);
  attn::Matrix<float> v = attn::Matrix<float>::Random(12, num_heads * 8);
  attn::AttentionOptions options;
  options.num_heads = num_heads;
  using attn::Mask;
  auto with_alibi = Mask::causal() & attn::alibi(num_heads);  // ALiBi, the standard slopes
  auto packed = Mask::causal() & attn::documents({5, 4, 3});  // causal within each document
  auto stream = attn::sinks(/*count*/ 2, /*window*/ 4);       // StreamingLLM
  attn::Matrix<float> out = attn::scaled_dot_product_attention(q, k, v, packed, options);
  //! [builtin_masks]
  // The third document (rows 9-11) attends only within itself.
  check(close(out.bottomRows(3),
              attn::scaled_dot_product_attention(q.bottomRows(3), k.bottomRows(3), v.bottomRows(3),
                                                 Mask::causal(), options)),
        "documents: no token attends across a document boundary");
  // sinks(2, 4): the last row sees the two sinks, the four keys before it and itself.
  const std::vector<attn::Index> seen = {0, 1, 7, 8, 9, 10, 11};
  check(close(attn::scaled_dot_product_attention(q, k, v, stream, options).bottomRows(1),
              attn::scaled_dot_product_attention(q.bottomRows(1), pick_rows(k, seen),
                                                 pick_rows(v, seen), Mask(), options)),
        "sinks: the last row sees the sinks and its window");
  // ALiBi: head h adds −slope_h·(i − j) to the logit of query i and key j.
  const std::vector<double> slopes = attn::alibi_slopes(num_heads);
  const attn::Matrix<float> alibi_out =
      attn::scaled_dot_product_attention(q, k, v, with_alibi, options);
  bool alibi_ok = true;
  for (attn::Index h = 0; h < num_heads; ++h) {
    attn::Matrix<float> bias(12, 12);
    for (attn::Index i = 0; i < 12; ++i)
      for (attn::Index j = 0; j < 12; ++j)
        bias(i, j) = float(-slopes[std::size_t(h)] * double(i - j));
    alibi_ok = alibi_ok && close(alibi_out.middleCols(h * 8, 8),
                                 attn::scaled_dot_product_attention(
                                     q.middleCols(h * 8, 8), k.middleCols(h * 8, 8),
                                     v.middleCols(h * 8, 8), Mask::causal() & Mask::bias(bias)));
  }
  check(alibi_ok, "alibi: each head's slope times the distance, subtracted from the logits");
}

void score_mask() {
  //! [score_mask]
  attn::Matrix<float> q = attn::Matrix<float>::Random(8, 2 * 4);
  attn::Matrix<float> k = attn::Matrix<float>::Random(8, 2 * 4);
  attn::Matrix<float> v = attn::Matrix<float>::Random(8, 2 * 4);
  attn::AttentionOptions options;
  options.num_heads = 2;
  // An ALiBi-like bias and a causal mask on the same call:
  auto bias = attn::score_function([](float s, attn::Index h, attn::Index query, attn::Index key) {
    return s - 0.5f * float(h + 1) * float(query - key);
  });
  auto out = attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal() & bias, options);
  // Every other query sees only the first half of each block of 8 keys:
  auto striped = attn::mask_function(
      [](attn::Index query, attn::Index key) { return query % 2 == 0 || key % 8 < 4; });
  auto out_striped = attn::scaled_dot_product_attention(q, k, v, striped, options);
  //! [score_mask]
  check(close(out_striped.row(1), attn::scaled_dot_product_attention(
                                      q.row(1), k.topRows(4), v.topRows(4), attn::Mask(), options)),
        "mask_function: row 1 sees keys 0-3 only");
  check(out.allFinite() && close(out.row(0), v.row(0)), "score_function: the first row sees key 0");
}

void score_derivative() {
  //! [score_derivative]
  const std::vector<float> t = {0.5f, 2.0f};  // one temperature per head
  attn::Matrix<float> q = attn::Matrix<float>::Random(5, 2 * 4);
  attn::Matrix<float> k = attn::Matrix<float>::Random(5, 2 * 4);
  attn::Matrix<float> v = attn::Matrix<float>::Random(5, 2 * 4);
  attn::AttentionOptions options;
  options.num_heads = 2;
  options.scale = 0.5;
  // A temperature per head, which the backward differentiates through:
  auto temperature = attn::score_function(
      [&](float s, attn::Index h, attn::Index, attn::Index) { return s * t[h]; },
      [&](float, attn::Index h, attn::Index, attn::Index) { return t[h]; });
  //! [score_derivative]
  // A temperature is a scale: head 1 with t = 2 is head 1 at twice the scale.
  attn::AttentionOptions doubled;
  doubled.scale = 1.0;
  const attn::Matrix<float> out = attn::scaled_dot_product_attention(q, k, v, temperature, options);
  check(close(out.rightCols(4),
              attn::scaled_dot_product_attention(q.rightCols(4), k.rightCols(4), v.rightCols(4),
                                                 attn::Mask(), doubled)),
        "score_function with a derivative: a temperature per head");
}

void block_map() {
  //! [block_map]
  const attn::Index n = 300, m = 300;
  attn::Matrix<float> q = attn::Matrix<float>::Random(n, 16);
  attn::Matrix<float> k = attn::Matrix<float>::Random(m, 16);
  attn::Matrix<float> v = attn::Matrix<float>::Random(m, 16);
  attn::AttentionOptions options;
  auto mask = attn::mask_function(
      [](attn::Index query, attn::Index key) { return (query ^ key) % 7 != 0; });
  attn::BlockMap map(mask, n, m);     // once per shape: which tiles are empty, full or cut
  auto fast = mask.with_blocks(map);  // every layer, every call of shape (n, m)
  attn::Matrix<float> out = attn::scaled_dot_product_attention(q, k, v, fast, options);
  //! [block_map]
  check(close(out, attn::scaled_dot_product_attention(q, k, v, mask, options)),
        "BlockMap: the same result as the mask it was made from");
}

void workspace() {
  //! [workspace]
  const int steps = 4;
  attn::Matrix<float> cache_k = attn::Matrix<float>::Random(50, 32);
  attn::Matrix<float> cache_v = attn::Matrix<float>::Random(50, 32);
  attn::Matrix<float> q = attn::Matrix<float>::Random(1, 32);
  attn::Matrix<float> out(1, 32);
  attn::Workspace workspace;  // one per thread that calls the kernel
  attn::AttentionOptions options;
  options.workspace = &workspace;
  for (int step = 0; step < steps; ++step) {  // no heap allocation after the first call
    attn::scaled_dot_product_attention_into(q, cache_k, cache_v, out, attn::Mask::causal(),
                                            options);
  }
  //! [workspace]
  check(close(out, attn::scaled_dot_product_attention(q, cache_k, cache_v)),
        "Workspace: the same result as without one");
}

void executor() {
  //! [executor]
  const int steps = 2;
  attn::Matrix<float> q = attn::Matrix<float>::Random(256, 4 * 32);
  attn::Matrix<float> k = attn::Matrix<float>::Random(256, 4 * 32);
  attn::Matrix<float> v = attn::Matrix<float>::Random(256, 4 * 32);
  attn::Matrix<float> out(256, 4 * 32);
  attn::AttentionOptions options;
  options.num_heads = 4;
  options.executor = attn::thread_executor(2);  // once: the pool's threads start here
  for (int step = 0; step < steps; ++step)
    attn::scaled_dot_product_attention_into(q, k, v, out, attn::Mask::causal(), options);
  //! [executor]
  attn::AttentionOptions serial = options;
  serial.executor = attn::serial_executor;
  check(out == attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal(), serial),
        "thread_executor: bitwise the serial result");
}

void partial_attention() {
  //! [partial_attention]
  attn::Matrix<float> q = attn::Matrix<float>::Random(4, 16);
  attn::Matrix<float> k = attn::Matrix<float>::Random(10, 16);
  attn::Matrix<float> v = attn::Matrix<float>::Random(10, 16);
  // Keys 0-5 and 6-9 in two calls (two threads, two machines, a cache and fresh keys), each
  // placed in the whole problem so that the causal mask is the whole one's:
  attn::AttentionOptions first, second;
  first.positions = attn::Positions{/*first_query*/ 6, /*first_key*/ 0};
  second.positions = attn::Positions{/*first_query*/ 6, /*first_key*/ 6};
  attn::PartialAttention<float> a = attn::scaled_dot_product_attention_partial(
      q, k.topRows(6), v.topRows(6), attn::Mask::causal(), first);
  attn::PartialAttention<float> b = attn::scaled_dot_product_attention_partial(
      q, k.bottomRows(4), v.bottomRows(4), attn::Mask::causal(), second);
  attn::merge_partial_attention(a, b);  // a.out: attention over all 10 keys
  //! [partial_attention]
  check(close(a.out, attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal())),
        "PartialAttention: two parts merge into the whole");
}

void gradients() {
  //! [gradients]
  attn::Matrix<double> q = attn::Matrix<double>::Random(5, 8);
  attn::Matrix<double> k = attn::Matrix<double>::Random(7, 8);
  attn::Matrix<double> v = attn::Matrix<double>::Random(7, 4);
  attn::Matrix<double> log_sum_exp;
  attn::AttentionExtras<double> extras;
  extras.log_sum_exp = &log_sum_exp;  // what the backward needs from the forward
  attn::Matrix<double> out =
      attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal(), {}, extras);
  attn::Matrix<double> d_out = attn::Matrix<double>::Ones(5, 4);  // ∂loss/∂out for loss = Σ out
  attn::AttentionGradients<double> g = attn::scaled_dot_product_attention_backward(
      q, k, v, out, log_sum_exp, d_out, attn::Mask::causal());
  // g.dq (5 × 8), g.dk (7 × 8), g.dv (7 × 4)
  //! [gradients]
  // Each output row is a convex combination of the values: Σ out moves with v exactly as the
  // visible weights say, so ∂(Σ out)/∂v[j][c] is the sum of key j's weights over the rows.
  attn::Matrix<double> weights;
  attn::AttentionExtras<double> with_weights;
  with_weights.weights = &weights;
  attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal(), {}, with_weights);
  const attn::Matrix<double> expected_dv =
      weights.colwise().sum().transpose() * attn::Matrix<double>::Ones(1, 4);
  check(close(g.dv, expected_dv, 1e-12) && g.dq.allFinite() && g.dk.allFinite(),
        "AttentionGradients: dv of Σ out is the keys' summed weights");
}

void quantized() {
  //! [quantized]
  attn::Matrix<float> k = attn::Matrix<float>::Random(1000, 8 * 64);  // 8 heads of 64
  attn::Matrix<float> v = attn::Matrix<float>::Random(1000, 8 * 64);
  attn::QuantizedMatrix k8 = attn::QuantizedMatrix::quantize(k, /*group*/ 64);
  attn::QuantizedMatrix v8 = attn::QuantizedMatrix::quantize(v, /*group*/ 64);
  // k8.bytes() is 1000·512 bytes of values and 1000·8 floats of scales: 27 % of k's.
  attn::Matrix<float> q = attn::Matrix<float>::Random(1, 8 * 64);
  attn::AttentionOptions options;
  options.num_heads = 8;
  attn::Matrix<float> o =
      attn::scaled_dot_product_attention(q, k8.view(), v8.view(), attn::Mask(), options);
  //! [quantized]
  // Each value is within max|x| / 254 of its original (here max|x| ≤ 1): the output, a weighted
  // mean of values, moves by that much at most and the logits by 64 of them.
  const attn::Matrix<float> exact =
      attn::scaled_dot_product_attention(q, k, v, attn::Mask(), options);
  check(k8.bytes() == 1000 * 512 + 1000 * 8 * 4 && (o - exact).cwiseAbs().maxCoeff() < 0.05f &&
            (k8.dequantize() - k).cwiseAbs().maxCoeff() <= 1.0f / 254 + 1e-6f,
        "QuantizedMatrix: 8-bit keys and values within their bound");
}

void errors() {
  //! [errors]
  attn::Matrix<float> q = attn::Matrix<float>::Random(3, 8);
  attn::Matrix<float> k = attn::Matrix<float>::Random(5, 6);  // 6 columns, not 8
  attn::Matrix<float> v = attn::Matrix<float>::Random(5, 8);
  std::string message;
  try {
    attn::Matrix<float> o = attn::scaled_dot_product_attention(q, k, v);
  } catch (const attn::ShapeError& e) {  // a std::invalid_argument
    message = e.what();  // names the function, the argument, what was expected and what came
  }
  //! [errors]
  std::cout << "        " << message << "\n";
  check(message.find("k is 5x6") != std::string::npos && message.find("= 8") != std::string::npos,
        "ShapeError: the message names k and both widths");
}

}  // namespace

int main() {
  scaled_dot_product();
  attention_options();
  extras();
  masks();
  builtin_masks();
  score_mask();
  score_derivative();
  block_map();
  workspace();
  executor();
  partial_attention();
  gradients();
  quantized();
  errors();
  return reference::exit_status();
}
