// SPDX-FileCopyrightText: 2026 The attn authors
// SPDX-License-Identifier: MIT

// Instantiates every public template of attn, for float and for double, in this consumer's C++17
// and with its warnings as errors (-Wshadow -Wconversion included): a template that no one
// instantiates is never compiled, so main.cpp's one call would leave most of the headers unchecked.
#include <attn/attn.hpp>

#include <cstdio>
#include <type_traits>
#include <vector>

namespace {

template <typename Scalar>
bool exercise() {
  using M = attn::Matrix<Scalar>;
  const M q = M::Random(5, 8), k = M::Random(7, 4), v = M::Random(7, 6);
  attn::Workspace workspace;
  attn::AttentionOptions options;
  options.num_heads = 2;
  options.num_kv_heads = 1;
  options.executor = attn::thread_executor(2);
  options.workspace = &workspace;
  M lse, weights;
  attn::AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &lse;
  extras.weights = &weights;
  const attn::Mask mask = attn::Mask::causal() & attn::Mask::window(3, attn::Mask::unbounded) &
                          attn::Mask::keep(attn::Matrix<bool>::Constant(5, 7, true)) &
                          attn::Mask::bias(M::Zero(5, 7)) &
                          attn::Mask::bias(attn::Matrix<float>::Zero(5, 7));
  const M out = attn::scaled_dot_product_attention(q, k, v, mask, options, extras);
  M into(5, 12);
  attn::scaled_dot_product_attention_into(q, k, v, into, mask, options);
  auto merged = attn::scaled_dot_product_attention_partial(q, k.topRows(3), v.topRows(3),
                                                           attn::Mask(), options);
  attn::merge_partial_attention(
      merged, attn::scaled_dot_product_attention_partial(q, k.bottomRows(4), v.bottomRows(4),
                                                         attn::Mask(), options));
  const M whole = attn::scaled_dot_product_attention(q, k, v, attn::Mask(), options);
  bool ok = out.isApprox(into) && merged.out.isApprox(whole, Scalar(1e-4));

  attn::MultiHeadConfig cfg{/*model_dim*/ 8, /*num_heads*/ 2, /*num_kv_heads*/ 1};
  const auto w =
      attn::MultiHeadWeights<Scalar>::from_pytorch(M::Random(16, 8), attn::Vector<Scalar>::Zero(16),
                                                   M::Random(8, 8), attn::Vector<Scalar>::Zero(8));
  const attn::SelfAttention<Scalar> self_attn(cfg, w);
  const M x = M::Random(6, 8);
  const M y = self_attn(x, attn::Mask::causal());
  const M packed = self_attn(x, std::vector<attn::Index>{2, 4}, attn::Mask::causal());
  attn::KVCache<Scalar> cache = self_attn.make_cache(6);
  M decoded(6, 8);
  decoded.topRows(3) = self_attn(x.topRows(3), cache);
  for (attn::Index i = 3; i < 6; ++i)
    decoded.row(i) = self_attn(x.row(i), cache);
  ok = ok && decoded.isApprox(y, Scalar(1e-4)) && packed.rows() == 6;

  attn::MultiHeadConfig cross_cfg{/*model_dim*/ 8, /*num_heads*/ 2};
  cross_cfg.source_dim = 4;
  const auto cross_w = attn::MultiHeadWeights<Scalar>::from_pytorch(
      M::Random(8, 8), M::Random(8, 4), M::Random(8, 4), attn::Vector<Scalar>::Zero(24),
      M::Random(8, 8), attn::Vector<Scalar>::Zero(8));
  const attn::CrossAttention<Scalar> cross(cross_cfg, cross_w);
  const M source = M::Random(9, 4);
  const auto memory = cross.remember(source);
  ok = ok && cross(x, memory).isApprox(cross(x, source)) &&
       cross(x, std::vector<attn::Index>{6}, source, std::vector<attn::Index>{9}).rows() == 6;

  // The _into forms, with per-call options.
  attn::MultiHeadOptions call;
  call.softcap = 30;
  call.executor = attn::serial_executor;
  call.workspace = &workspace;
  M into_y(6, 8), into_step(1, 8);
  self_attn.attend_into(x, into_y, attn::Mask::causal(), call, extras);
  self_attn.attend_into(x, std::vector<attn::Index>{2, 4}, into_y, attn::Mask::causal(), call);
  attn::KVCache<Scalar> into_cache = self_attn.make_cache(6);
  self_attn.attend_into(x.topRows(5), into_cache, into_y.topRows(5), attn::Mask::causal(), call);
  self_attn.attend_into(x.row(5), into_cache, into_step, attn::Mask::causal(), call);
  ok = ok && into_step.isApprox(self_attn(x, attn::Mask::causal(), {}, call).row(5), Scalar(1e-4));
  cross.attend_into(x, memory, into_y, attn::Mask(), call, extras);
  cross.attend_into(x, source, into_y, attn::Mask(), call);
  cross.attend_into(x, std::vector<attn::Index>{6}, memory, into_y, attn::Mask(), call);
  cross.attend_into(x, std::vector<attn::Index>{6}, source, std::vector<attn::Index>{9}, into_y,
                    attn::Mask(), call);
  ok = ok && into_y.isApprox(cross(x, source, attn::Mask(), {}, call));

  // Score and mask functions, the built-ins and a block map, through the kernel and the functors.
  const auto user_score =
      attn::score_function([](Scalar s, attn::Index h, attn::Index qp, attn::Index kp) {
        return s - Scalar(0.125) * Scalar(h + 1) * Scalar(qp - kp);
      });
  const auto user_mask =
      attn::mask_function([](attn::Index qp, attn::Index kp) { return kp <= qp; },
                          [](attn::Index q0, attn::Index q1, attn::Index k0, attn::Index k1) {
                            if (k0 > q1 - 1) return attn::Visibility::none;
                            return k1 - 1 <= q0 ? attn::Visibility::all : attn::Visibility::partial;
                          });
  const auto built_ins = attn::Mask::causal() & attn::alibi(2) & attn::documents({3, 4}) &
                         attn::prefix_lm(1) & attn::sinks(1, 5) &
                         attn::relative_position_bias(M::Random(8, 2), true, 8) &
                         attn::head_bias(M::Zero(10, 7));
  const attn::BlockMap map(user_mask, 5, 7, 2);
  const M scored = attn::scaled_dot_product_attention(q, k, v, user_score & user_mask, options);
  const M mapped = attn::scaled_dot_product_attention(q, k, v, user_mask.with_blocks(map), options);
  const M tree_out = attn::scaled_dot_product_attention(q, k, v, attn::tree({-1, 0, 0}), options);
  attn::scaled_dot_product_attention_into(q, k, v, into, built_ins, options, extras);
  ok = ok && scored.allFinite() &&
       mapped.isApprox(attn::scaled_dot_product_attention(q, k, v, attn::Mask::causal(), options),
                       Scalar(1e-4)) &&
       tree_out.allFinite() && into.allFinite() && attn::document_ids({7, 7, 9}).has_mask_function;
  ok = ok &&
       self_attn(x, std::vector<attn::Index>{2, 4}, attn::Mask::causal() & user_score).allFinite();
  attn::KVCache<Scalar> sink_cache = self_attn.make_cache(6);
  ok = ok && self_attn(x, sink_cache, attn::sinks(1, 2) & user_score).allFinite();
  ok = ok && cross(x, memory, user_mask & attn::alibi(2)).allFinite();

  // Rotary position embeddings on the Q and K blocks of a fused projection, every overload.
  attn::RotaryConfig rotary_cfg{/*head_dim*/ 4, /*rotary_dim*/ 2};
  rotary_cfg.scaling = attn::RotaryScaling::linear(2);
  const attn::Rotary rope(rotary_cfg);
  M qkv = M::Random(3, 16);
  const M before = qkv;
  rope.apply(qkv.leftCols(12), 5);  // rows at 5, 6, 7
  rope.apply(qkv.leftCols(12), std::vector<attn::Index>{-5, -6, -7});
  const attn::Index ones[] = {1, 1, 1};
  rope.apply(qkv.leftCols(12), ones, 3);
  rope.shift(qkv.leftCols(12), -1);  // back at 0
  ok = ok && qkv.isApprox(before, Scalar(1e-4)) && rope.inverse_frequencies().size() == 1;

  // A paged pool: a layer with rotary, one sequence forked, batched steps, the kernel over its
  // views (alone and batched), and every pool operation.
  attn::MultiHeadConfig rotary_layer = cfg;
  rotary_layer.rotary = attn::RotaryConfig{};
  const attn::SelfAttention<Scalar> roped(rotary_layer, w);
  attn::PagedKVCache<Scalar> pool = roped.make_paged_cache(4, 16);
  const attn::SequenceId first = pool.create();
  const M prefill = roped(x.topRows(4), pool, first);
  const attn::SequenceId second = pool.fork(first);
  M steps(2, 8);
  roped.attend_batch_into(x.bottomRows(2), std::vector<attn::Index>{1, 1}, pool,
                          std::vector<attn::SequenceId>{first, second}, steps, attn::Mask::causal(),
                          call);
  const M batch = roped.attend_batch(x.bottomRows(2), pool, {first, second});
  M step(1, 8);
  roped.attend_into(x.row(5), pool, first, step, attn::Mask::causal(), call);
  const std::vector<attn::PagedView<Scalar>> keys{pool.keys(first), pool.keys(second)};
  const std::vector<attn::PagedView<Scalar>> values{pool.values(first), pool.values(second)};
  const M q2 = M::Random(2, 8);
  M kernel_batch(2, 8);
  attn::scaled_dot_product_attention_batch_into(q2, std::vector<attn::Index>{1, 1}, keys, values,
                                                kernel_batch, attn::Mask::causal(), options);
  const M kernel_one = attn::scaled_dot_product_attention(q2.topRows(1), keys[0], values[0],
                                                          attn::Mask::causal(), options);
  pool.reorder({first, second}, {1, 1});
  pool.truncate(first, 3);
  pool.evict(second, 1, 2);
  pool.drop(first);
  ok = ok && prefill.allFinite() && steps.allFinite() && batch.allFinite() && step.allFinite() &&
       kernel_batch.row(0).isApprox(kernel_one) && pool.size(second) == 3 &&
       pool.position(second) == 6 && pool.used_pages() >= 1;
  if constexpr (std::is_same_v<Scalar, float>) {
    attn::PagedKVCache<float, attn::qint8> small = roped.template make_paged_cache<attn::qint8>(2);
    ok = ok && roped(x, small, small.create()).allFinite();
  }
  return ok;
}

}  // namespace

/// Runs every template for both precisions; false if a result is wrong.
bool exercise_every_template() {
  const bool ok = exercise<float>() && exercise<double>();
  std::printf("cmake_import: every public template compiled and ran for float and double: %s\n",
              ok ? "ok" : "WRONG RESULTS");
  return ok;
}
