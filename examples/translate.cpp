// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// translate: a tiny encoder–decoder "translator" whose one skill is writing a word backwards
// ("stressed" -> "desserts"). Its weights are set by hand, not trained, so every number below has
// a reason you can read. It uses attention the three ways a sequence-to-sequence model does, and
// decodes the way a real one does: one token per step, with a KV cache and a remembered source.
//
//   encoder self-attention     every source token finds out how long the source is
//   decoder self-attention     over a KVCache of its own steps: each step finds out how far it got
//   cross-attention            queries from the decoder, keys AND values from the encoder output:
//                              step t looks up the source token t + 1 places from the end
//
// It prints the alignment, writes the cross-attention weights (target × source) as the heatmap
// translate_attention.png, and exits nonzero unless the output is the input reversed (ctest runs
// it as a smoke test). Then it decodes the word again with the KV cache and the remembered source
// kept in attn::bfloat16 (make_cache<attn::bfloat16>, remember<attn::bfloat16>), prints the bytes
// of both caches and both memories (bfloat16 takes half), and checks that the output word is the
// same: the kernel converts bfloat16 to float as it reads and accumulates in float, and this
// model's cached and remembered keys and values are zeros and ones (up to float rounding), which
// bfloat16 keeps to within 0.4%.
//
// Last, it decodes with beam search (4 beams) beside the greedy decoding, as translation models
// do: the decoder's self-attention keys and values live in an attn::PagedKVCache, one sequence per
// beam, all beams advance in one attend_batch call per step, and after each step's top-4 choice
// the pool is reordered (PagedKVCache::reorder: tables only, no row copied) so that each beam's
// sequence holds the history of the hypothesis it continues. It prints the best hypotheses and the
// pages copied, and checks that the best is the greedy output (this model's weights make every
// step's best token far likelier than any other, so greedy decoding is already optimal).
//
//   cmake --workflow --preset demo            # builds and runs it in build/default/examples
//   ./build/default/examples/translate        # "stressed"
//   ./build/default/examples/translate hello  # any lowercase word of up to 14 letters
//
// THE MODEL. A row (one token) is a vector of named slots, and every weight is a constant (1, 2
// or a gain) from one named slot to another, so each matrix reads as a sentence. Each layer adds
// its result to the row (the residual connection) in slots that were zero before, so no layer
// disturbs another. Vocabulary: <s>, </s>, a … z. The source is  <s> w_1 … w_m </s>  (L = m + 2
// tokens at positions j = 0 … L−1); the decoder starts from <s> and must write  w_m … w_1 </s>.
//
//  1. Encoder input: the token, one-hot, and the position j as a plain number.
//  2. Encoder self-attention, "how long is the source?" Queries and keys are zero, so every logit
//     is 0 and every token attends 1/L to each of the L tokens. A token's value is 2·j, so every
//     token receives 2·mean(0 … L−1) = L − 1, the position of the last token, in slot `last`.
//  3. Encoder feed-forward: r = last − j is the distance from the end (</s> 0, w_m 1, … <s> m + 1),
//     written as a one-hot code from_end[r] that the cross-attention can match exactly.
//  4. Decoder input: the previous output token, one-hot (<s> at step 0). No positional code.
//  5. Decoder self-attention with a KVCache, "how far have I got?" Uniform again, now over the
//     t + 1 cached rows of steps 0 … t. The value is 1 on the <s> row (step 0) only, so step t
//     receives 1/(t + 1) in slot `count`: a causal decoder can count without a positional code.
//  6. Decoder feed-forward: count = 1/(t + 1) becomes a one-hot code step[t].
//  7. Cross-attention, "which source token comes next?" The query of step t asks for
//     from_end = t + 1; the key of each source token is its from_end code; a match scores
//     `sharpness` and anything else 0. So step t attends to source position L − 2 − t = m − t,
//     the word w_{m−t}: w_m first, then w_{m−1}, …, w_1, and at step m the marker <s>. The value
//     is the dictionary: each source token maps to the same target token, except that the
//     source's <s> maps to the target's </s>, so the last step emits </s> and decoding stops.
//  8. Readout: the output token is the largest of the `next` slots the cross-attention wrote.

#include <attn/attn.hpp>

#include "picture.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <limits>
#include <string>
#include <vector>

namespace {

using Matrix = attn::Matrix<float>;
using attn::Index;

// ---------------------------------------------------------------------------------------------
// Vocabulary and feature slots
// ---------------------------------------------------------------------------------------------
constexpr Index vocab = 28;    // <s>, </s>, a … z
constexpr Index bos = 0;       // <s>
constexpr Index eos = 1;       // </s>
constexpr Index max_len = 16;  // longest source, markers included: words of up to 14 letters

// The token of a lowercase letter.
Index letter(char c) {
  return 2 + (c - 'a');
}
std::string spell(Index token) {
  if (token == bos) return "<s>";
  if (token == eos) return "</s>";
  return std::string(1, char('a' + (token - 2)));
}

// Slots (columns) of an encoder row, the source side: 46 of them.
struct SourceSlot {
  static constexpr Index token(Index w) { return w; }                 // one-hot token
  static constexpr Index position = vocab;                            // j
  static constexpr Index last = vocab + 1;                            // L − 1 (self-attention)
  static constexpr Index from_end(Index r) { return vocab + 2 + r; }  // one-hot L − 1 − j
  static constexpr Index width = vocab + 2 + max_len;
};

// Slots of a decoder row, the target side: 73 of them.
struct TargetSlot {
  static constexpr Index token(Index w) { return w; }             // one-hot previous output
  static constexpr Index count = vocab;                           // 1/(t + 1) (self-attention)
  static constexpr Index step(Index t) { return vocab + 1 + t; }  // one-hot t
  static constexpr Index next(Index w) { return vocab + 1 + max_len + w; }  // (cross-attention)
  static constexpr Index width = 2 * vocab + 1 + max_len;
};

// The logit of a matching query and key in the cross-attention: the matching source token gets
// weight e^8 / (e^8 + L − 1), 0.997 for L = 10.
constexpr float sharpness = 8;

// A hat: 1 at `centre`, falling linearly to 0 at `left` and at `right`, 0 beyond. A feed-forward
// layer with three ReLUs computes exactly this; ours use it to turn a number into a one-hot code.
float hat(float x, float left, float centre, float right) {
  return std::max(0.0f, std::min((x - left) / (centre - left), (right - x) / (right - centre)));
}

// Single-head, bias-free layer weights, all zero except an identity output projection: the head's
// coordinates are the row's slots, so a value written to coordinate s lands in slot s.
attn::MultiHeadWeights<float> blank_weights(Index model_dim, Index source_dim) {
  attn::MultiHeadWeights<float> w;
  w.q_weight = Matrix::Zero(model_dim, model_dim);
  w.k_weight = Matrix::Zero(model_dim, source_dim);
  w.v_weight = Matrix::Zero(model_dim, source_dim);
  w.out_weight = Matrix::Identity(model_dim, model_dim);
  return w;
}

attn::MultiHeadConfig one_head(Index model_dim, Index source_dim) {
  attn::MultiHeadConfig config{model_dim, /*num_heads*/ 1};
  config.source_dim = source_dim;
  config.bias = false;
  return config;
}

// ---------------------------------------------------------------------------------------------
// Encoder (steps 1–3)
// ---------------------------------------------------------------------------------------------
Matrix encode(const std::vector<Index>& source) {
  const Index length = Index(source.size());
  Matrix x = Matrix::Zero(length, SourceSlot::width);
  for (Index j = 0; j < length; ++j) {
    x(j, SourceSlot::token(source[std::size_t(j)])) = 1;
    x(j, SourceSlot::position) = float(j);
  }

  // 2. Self-attention: zero queries and keys give uniform weights 1/L, and the value of token j
  //    is 2·j in slot `last`, so every token receives 2·mean(j) = L − 1.
  attn::MultiHeadWeights<float> w = blank_weights(SourceSlot::width, SourceSlot::width);
  w.v_weight(SourceSlot::last, SourceSlot::position) = 2;
  const attn::SelfAttention<float> self_attention(one_head(SourceSlot::width, 0), w);
  x += self_attention(x);

  // 3. Feed-forward: from_end[r] = 1 where r = last − position.
  for (Index j = 0; j < length; ++j) {
    const float r = x(j, SourceSlot::last) - x(j, SourceSlot::position);
    for (Index k = 0; k < max_len; ++k)
      x(j, SourceSlot::from_end(k)) += hat(r, float(k - 1), float(k), float(k + 1));
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// Decoder (steps 4–8)
// ---------------------------------------------------------------------------------------------

// 5. Uniform over the cached steps; the value is 1 in slot `count` for the <s> row only.
attn::SelfAttention<float> decoder_self_attention() {
  attn::MultiHeadWeights<float> w = blank_weights(TargetSlot::width, TargetSlot::width);
  w.v_weight(TargetSlot::count, TargetSlot::token(bos)) = 1;
  return {one_head(TargetSlot::width, 0), w};
}

// 6. Feed-forward: step[k] = 1 where count = 1/(k + 1) (its neighbours are 1/(k + 2) and 1/k);
//    each row of x on its own.
void count_steps(Matrix& x) {
  for (Index row = 0; row < x.rows(); ++row) {
    for (Index k = 0; k < max_len; ++k) {
      const float above = k == 0 ? 2.0f : 1.0f / float(k);
      x(row, TargetSlot::step(k)) +=
          hat(x(row, TargetSlot::count), 1.0f / float(k + 2), 1.0f / float(k + 1), above);
    }
  }
}

// 7. Q from the decoder row (its step), K and V from the encoder output (from_end and token).
attn::CrossAttention<float> decoder_cross_attention() {
  attn::MultiHeadWeights<float> w = blank_weights(TargetSlot::width, SourceSlot::width);
  // Query and key coordinate r means "r tokens from the end". attn scales logits by
  // 1/sqrt(head_dim); the gain undoes that, so that a match scores exactly `sharpness`.
  const float gain = sharpness * std::sqrt(float(TargetSlot::width));
  for (Index t = 0; t + 1 < max_len; ++t)
    w.q_weight(t + 1, TargetSlot::step(t)) = gain;  // step t: "I want the token t + 1 from the end"
  for (Index r = 0; r < max_len; ++r)
    w.k_weight(r, SourceSlot::from_end(r)) = 1;  // source token: "I am r from the end"
  // The value is what a source token hands over: its translation, in the decoder's `next` slots.
  // A letter stays itself; the source's <s> becomes </s>, so reaching the start ends the output.
  for (Index token = 2; token < vocab; ++token)
    w.v_weight(TargetSlot::next(token), SourceSlot::token(token)) = 1;
  w.v_weight(TargetSlot::next(eos), SourceSlot::token(bos)) = 1;
  return {one_head(TargetSlot::width, SourceSlot::width), w};
}

struct Translation {
  std::vector<Index> output;     // target tokens, </s> not included
  Matrix alignment;              // cross-attention weights, one row per step (</s> included) × L
  std::size_t cache_bytes = 0;   // the decoder's KV cache
  std::size_t memory_bytes = 0;  // the remembered source's keys and values
};

// Decodes with the KV cache and the remembered source's keys and values kept in Storage: float,
// or attn::bfloat16 (rounded once as they are stored; the kernel converts them back in registers).
template <typename Storage>
Translation translate(const std::vector<Index>& source) {
  const Matrix encoded = encode(source);
  const attn::SelfAttention<float> self_attention = decoder_self_attention();
  const attn::CrossAttention<float> cross_attention = decoder_cross_attention();

  // The source's keys and values are projected once; every step only projects its query.
  const attn::CrossAttention<float>::MemoryIn<Storage> memory =
      cross_attention.remember<Storage>(encoded);
  // Room for every step's keys and values; the cache never reallocates.
  attn::KVCache<float, Storage> cache = self_attention.make_cache<Storage>(max_len);
  // Scratch the steps share: after the first step, a self-attention step allocates nothing.
  attn::Workspace workspace;
  attn::MultiHeadOptions options;
  options.workspace = &workspace;
  Matrix attended(1, TargetSlot::width);

  Translation result;
  result.alignment = Matrix::Zero(max_len, Index(source.size()));
  result.cache_bytes = cache.bytes();
  result.memory_bytes = memory.bytes();
  Index token = bos;
  for (Index t = 0; t < max_len; ++t) {
    // 4. This step's row: the previous output token.
    Matrix x = Matrix::Zero(1, TargetSlot::width);
    x(0, TargetSlot::token(token)) = 1;

    // 5. Appends this row's key and value to the cache, then attends over all t + 1 cached rows,
    //    into `attended` (a matrix of our own, reused every step).
    self_attention.attend_into(x, cache, attended, attn::Mask::causal(), options);
    x += attended;

    // 6. Feed-forward: the step number as a one-hot code.
    count_steps(x);

    // 7. Cross-attention over the remembered source, asking for the weights (averaged over heads;
    //    this model has one) for the picture. Without extras, attn never computes them.
    Matrix weights;  // 1 × L
    attn::AttentionExtras<float> extras;
    extras.weights = &weights;
    extras.average_heads = true;
    cross_attention.attend_into(x, memory, attended, attn::Mask::none(), options, extras);
    x += attended;
    result.alignment.row(t) = weights.row(0);

    // 8. Greedy readout.
    x.row(0).segment(TargetSlot::next(0), vocab).maxCoeff(&token);
    if (token == eos) {
      result.alignment.conservativeResize(t + 1, Eigen::NoChange);
      return result;
    }
    result.output.push_back(token);
  }
  return result;  // never saw </s>: the check in main reports it
}

// ---------------------------------------------------------------------------------------------
// Beam search
// ---------------------------------------------------------------------------------------------

// The readout as probabilities: a softmax over the `next` slots times `confidence`. The slot of
// the token attended to holds 0.997 and the others about 0.0003 or 0, so that token gets
// e^8 / (e^8 + 27) = 0.991 and each other token 0.0003.
constexpr double confidence = 8;

struct Hypothesis {
  std::vector<Index> tokens;   // </s> not included
  double log_probability = 0;  // of its tokens, </s> included once it has finished
  // Length-normalised score: the mean log-probability per token, </s> counted, so that a short
  // hypothesis does not win merely by having fewer factors below 1.
  double score() const { return log_probability / double(tokens.size() + 1); }
};

struct BeamSearch {
  std::vector<Hypothesis> finished;  // best score first
  Index steps = 0;
  Index reorders = 0;
  std::uint64_t page_copies = 0;     // copy-on-write copies of a shared last page, on append
  std::uint64_t reorder_copies = 0;  // pages copied by the reorders: none, they change tables only
  Index most_pages = 0;              // pages in use at once, at most
  Index pages = 0;                   // in the pool
};

// Beam search with `beam` hypotheses. Each live hypothesis has a sequence of one PagedKVCache
// (ids[b] for alive[b]) that holds the decoder self-attention's keys and values of its steps; all
// of them advance in one attend_batch call per step, and the remembered source serves them all.
BeamSearch beam_search(const std::vector<Index>& source, Index beam) {
  const Matrix encoded = encode(source);
  const attn::SelfAttention<float> self_attention = decoder_self_attention();
  const attn::CrossAttention<float> cross_attention = decoder_cross_attention();
  const attn::CrossAttention<float>::MemoryIn<float> memory = cross_attention.remember(encoded);

  // Pages of 16 positions (the smallest) hold a whole hypothesis of up to max_len = 16 steps: a
  // page for each beam, and as many again for the copies of shared pages made during a step.
  BeamSearch result;
  result.pages = 2 * beam;
  attn::PagedKVCache<float> pool = self_attention.make_paged_cache(result.pages, 16);
  attn::Workspace workspace;
  attn::MultiHeadOptions options;
  options.workspace = &workspace;

  std::vector<attn::SequenceId> ids{pool.create()};
  std::vector<Hypothesis> alive(1);
  for (Index t = 0; t < max_len && !alive.empty(); ++t) {
    // 4. A row per live hypothesis: its previous token.
    const Index rows = Index(alive.size());
    Matrix x = Matrix::Zero(rows, TargetSlot::width);
    for (Index b = 0; b < rows; ++b) {
      const std::vector<Index>& tokens = alive[std::size_t(b)].tokens;
      x(b, TargetSlot::token(tokens.empty() ? bos : tokens.back())) = 1;
    }
    // 5. Row b appends its key and value to sequence ids[b] and attends over that sequence: every
    //    hypothesis over its own history, all in one call.
    x += self_attention.attend_batch(x, pool, ids, attn::Mask::causal(), options);
    result.most_pages = std::max(result.most_pages, pool.used_pages());
    // 6. and 7. Every row, on its own, over the one remembered source.
    count_steps(x);
    x += cross_attention(x, memory, attn::Mask::none(), {}, options);

    // 8. Every hypothesis extended by every token, by log-probability, best first (ties: the
    //    earlier hypothesis, then the smaller token).
    struct Candidate {
      double log_probability;
      Index from;  // the hypothesis it extends
      Index token;
    };
    std::vector<Candidate> candidates;
    for (Index b = 0; b < rows; ++b) {
      const Eigen::ArrayXd logits =
          confidence * x.row(b).segment(TargetSlot::next(0), vocab).transpose().cast<double>();
      const double log_sum = std::log((logits - logits.maxCoeff()).exp().sum()) + logits.maxCoeff();
      for (Index token = 0; token < vocab; ++token) {
        candidates.push_back(
            {alive[std::size_t(b)].log_probability + logits(token) - log_sum, b, token});
      }
    }
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& a, const Candidate& b) {
                       return a.log_probability > b.log_probability;
                     });

    // The best candidates: one that ends in </s> among the best `beam` is finished; the others
    // refill the beam, `sources` naming the hypothesis each continues.
    std::vector<Hypothesis> next;
    std::vector<Index> sources;
    for (std::size_t i = 0; i < candidates.size() && Index(next.size()) < beam; ++i) {
      const Candidate& c = candidates[i];
      Hypothesis h = alive[std::size_t(c.from)];
      h.log_probability = c.log_probability;
      if (c.token == eos) {
        if (Index(i) < beam) result.finished.push_back(h);
        continue;
      }
      h.tokens.push_back(c.token);
      next.push_back(h);
      sources.push_back(c.from);
    }

    // The pool follows the hypotheses: sequence ids[i] becomes a copy of ids[sources[i]] as it
    // was before. Forks make the sequences a wider beam needs; reorder changes the tables and
    // the pages' reference counts and copies nothing; sequences left over are dropped.
    while (ids.size() < next.size())
      ids.push_back(pool.fork(ids.front()));
    for (std::size_t i = sources.size(); i < ids.size(); ++i)
      sources.push_back(Index(i));  // left over: stays itself until dropped
    const std::uint64_t copies = pool.page_copies();
    pool.reorder(ids, sources);
    result.reorder_copies += pool.page_copies() - copies;
    ++result.reorders;
    while (ids.size() > next.size()) {
      pool.drop(ids.back());
      ids.pop_back();
    }
    alive = std::move(next);
    result.steps = t + 1;

    // Stop when no live hypothesis can beat the best finished one: more tokens only lower its
    // log-probability, and its mean is over at most max_len tokens.
    double best = -std::numeric_limits<double>::infinity();
    for (const Hypothesis& h : result.finished)
      best = std::max(best, h.score());
    bool hopeful = false;
    for (const Hypothesis& h : alive)
      hopeful = hopeful || h.log_probability / double(max_len) > best;
    if (!hopeful) break;
  }
  result.page_copies = pool.page_copies();
  std::stable_sort(result.finished.begin(), result.finished.end(),
                   [](const Hypothesis& a, const Hypothesis& b) { return a.score() > b.score(); });
  return result;
}

// The tokens, and </s> after them if `finished`.
std::string spell_all(const std::vector<Index>& tokens, bool finished = false) {
  std::string s;
  for (Index token : tokens) {
    if (!s.empty()) s += ' ';
    s += spell(token);
  }
  if (finished) s += s.empty() ? "</s>" : " </s>";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string word = argc > 1 ? argv[1] : "stressed";
  const bool valid =
      !word.empty() && Index(word.size()) + 2 <= max_len &&
      std::all_of(word.begin(), word.end(), [](char c) { return c >= 'a' && c <= 'z'; });
  if (argc > 2 || !valid) {
    std::fprintf(stderr, "usage: %s [word of 1 to %d lowercase letters]\n", argv[0],
                 int(max_len - 2));
    return 2;
  }

  std::vector<Index> source{bos};
  for (char c : word)
    source.push_back(letter(c));
  source.push_back(eos);
  std::vector<Index> expected(source.rbegin() + 1, source.rend() - 1);

  try {
    const Translation result = translate<float>(source);
    std::printf("attn translate: a hand-wired encoder-decoder writes a word backwards\n\n");
    std::printf("source: %s\n", spell_all(source).c_str());
    std::printf("output: %s </s>\n\n", spell_all(result.output).c_str());

    std::printf("cross-attention (queries: decoder steps; keys and values: source positions)\n");
    std::printf("step  emits   attends most to        weight\n");
    bool aligned = true;
    for (Index t = 0; t < result.alignment.rows(); ++t) {
      Index j = 0;
      const float weight = result.alignment.row(t).maxCoeff(&j);
      const Index emitted = t < Index(result.output.size()) ? result.output[std::size_t(t)] : eos;
      std::printf("%4d  %-6s  source %2d %-6s      %.3f\n", int(t), spell(emitted).c_str(), int(j),
                  spell(source[std::size_t(j)]).c_str(), double(weight));
      // Step t should read source position m − t (the <s> at 0 for the final </s>).
      aligned = aligned && j == Index(word.size()) - t;
    }

    const char* path = "translate_attention.png";
    example::HeatmapLabels labels;
    labels.title = "cross-attention, translating \"" + word + "\"";
    labels.rows_name = "decoder step: the token it emits";
    labels.columns_name = "source token (keys and values)";
    for (Index t = 0; t < result.alignment.rows(); ++t)
      labels.rows.push_back(
          std::to_string(t) + ": " +
          spell(t < Index(result.output.size()) ? result.output[std::size_t(t)] : eos));
    for (const Index token : source)
      labels.columns.push_back(spell(token));
    if (example::write_heatmap(path, result.alignment, labels))
      std::printf("\nwrote %s: rows are the %d steps, columns the %d source tokens\n", path,
                  int(result.alignment.rows()), int(result.alignment.cols()));

    if (result.output != expected || !aligned) {
      std::printf("FAILED: expected %s, aligned to source positions %d .. 0\n",
                  spell_all(expected).c_str(), int(word.size()));
      return 1;
    }
    std::printf("ok: the output is the source reversed\n");

    // The same decode with keys and values stored in bfloat16: half the bytes, the same word.
    const Translation small = translate<attn::bfloat16>(source);
    std::printf("\nagain with the KV cache and the cross memory in bfloat16: %s </s>\n",
                spell_all(small.output).c_str());
    std::printf("bytes: KV cache %zu (float: %zu), cross memory %zu (float: %zu)\n",
                small.cache_bytes, result.cache_bytes, small.memory_bytes, result.memory_bytes);
    if (small.output != result.output) {
      std::printf("FAILED: the bfloat16 decode differs from the float one\n");
      return 1;
    }
    std::printf("ok: the same output\n");

    // Beam search beside the greedy decoding.
    const Index beam = 4;
    const BeamSearch search = beam_search(source, beam);
    std::printf(
        "\nbeam search, %d beams, the decoder's keys and values in a PagedKVCache "
        "(%d pages of 16 positions):\n",
        int(beam), int(search.pages));
    for (std::size_t i = 0; i < search.finished.size() && Index(i) < beam; ++i) {
      const Hypothesis& h = search.finished[i];
      std::printf("  %-24s mean log-probability per token %7.3f\n",
                  spell_all(h.tokens, true).c_str(), h.score());
    }
    std::printf("greedy: %s </s>\n", spell_all(result.output).c_str());
    std::printf(
        "pool: %d steps of one attend_batch call; %d reorders, which copied %llu pages; "
        "at most %d of %d pages in use\n",
        int(search.steps), int(search.reorders),
        static_cast<unsigned long long>(search.reorder_copies), int(search.most_pages),
        int(search.pages));
    std::printf(
        "      %llu page copies, each on a beam's first append to a page it shares with "
        "another (its rows so far)\n",
        static_cast<unsigned long long>(search.page_copies));
    if (search.finished.empty() || search.finished.front().tokens != result.output ||
        search.reorder_copies != 0) {
      std::printf(
          "FAILED: expected beam search's best to be the greedy output, and reorders to "
          "copy no page\n");
      return 1;
    }
    std::printf(
        "ok: beam search agrees with greedy decoding (this model makes each step's best "
        "token 0.99 likely, so no other path can beat it)\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "translate: %s\n", e.what());
    return 1;
  }
}
