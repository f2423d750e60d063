// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// serve: several users' prompts of different lengths decoded together, as an LLM server does,
// through one paged KV cache pool per layer (attn::PagedKVCache) with a shared system prompt.
//
//   1. The system prompt is prefilled once, into a root sequence.
//   2. Each user's sequence is a fork of the root: it shares the root's pages (nothing is
//      copied) and its own prompt is appended to it; all users' prompts go through each layer in
//      one attend_batch call.
//   3. All users decode together, one token each per step, through one attend_batch call per
//      layer. One user finishes early and is dropped: its pages go back to the pool.
//
// It prints the latency of the decoding steps (median, max and some single steps), tokens per
// second, and the pools' memory: pages and bytes in use against what separate caches, each with
// its own copy of the system prompt, would hold, and the pages copied so far (copy-on-write of a
// shared, partly filled last page). It then checks, and exits nonzero if either check fails,
// that one user's logits are those of
//   - the same user decoded alone, in pools of its own, with SelfAttention's single-sequence call
//     (layer(x, pool, id)), fed the same tokens: bitwise equal, as attend_batch promises;
//   - one causal forward pass over the user's whole text (system prompt, prompt and generated
//     tokens) with no cache at all: equal up to rounding, so the paged, shared, batched cache
//     gave the model exactly the context it should have.
//
// The model is an LLM-shaped decoder with random weights (a fixed seed): token embeddings plus a
// sinusoidal code of the absolute position, pre-norm layers of grouped-query self-attention and a
// ReLU feed-forward, and a readout tied to the embeddings. Its text is gibberish; its shapes and
// costs are those of a (very) small LLM.
//
//   ./build/default/examples/serve              # 4 layers, model_dim 256, 64 steps
//   ./build/default/examples/serve --steps 200  # longer
//   ./build/default/examples/serve --small      # 2 layers, model_dim 64: fast in a Debug build

#include <attn/attn.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using Matrix = attn::Matrix<float>;
using attn::Index;
using attn::SequenceId;

struct Settings {
  // The model.
  Index layers = 4;
  Index model_dim = 256;
  Index heads = 8;
  Index kv_heads = 2;  // grouped-query attention: 4 query heads per kv head
  Index ffn_dim = 512;
  Index vocab = 512;
  // The workload.
  Index system_length = 200;
  std::vector<Index> prompt_lengths{23, 71, 9, 40, 112, 56};
  Index steps = 64;
  // The pools: the library's default page size, the decode kernel's tile.
  Index page_size = attn::PagedKVCache<float>::default_page_size;
  // Who does what.
  std::size_t finishing_user = 2;  // stops after `finish_after` tokens and is dropped
  Index finish_after = 16;
  std::size_t checked_user = 3;  // compared with a decode alone and with a forward pass

  static Settings small() {
    Settings s;
    s.layers = 2;
    s.model_dim = 64;
    s.ffn_dim = 128;
    s.vocab = 128;
    s.system_length = 40;
    s.prompt_lengths = {5, 14, 2, 8, 22, 11};
    s.steps = 16;
    s.page_size = 16;
    s.finish_after = 6;
    return s;
  }
};

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

// Rows of x times w, one row at a time: a row's result must not depend on which other rows share
// its batch, and Eigen evaluates a product of many rows (a GEMM) in another order than the
// product of one row (a GEMV), so the two differ in the last bits.
Matrix times(const Matrix& x, const Matrix& w) {
  Matrix y(x.rows(), w.cols());
  for (Index r = 0; r < x.rows(); ++r)
    y.row(r).noalias() = x.row(r) * w;
  return y;
}

// RMS normalisation of each row (no learned gain), summed in order so that it too is a function of
// the row alone.
Matrix normalised(const Matrix& x) {
  Matrix y(x.rows(), x.cols());
  for (Index r = 0; r < x.rows(); ++r) {
    float sum = 0;
    for (Index c = 0; c < x.cols(); ++c)
      sum += x(r, c) * x(r, c);
    y.row(r) = x.row(r) / std::sqrt(sum / float(x.cols()) + 1e-6f);
  }
  return y;
}

class Model {
 public:
  Model(const Settings& s, std::uint32_t seed) : m_model_dim(s.model_dim) {
    std::mt19937 rng(seed);
    // Weights drawn from N(0, 1/fan_in) keep every layer's output at the scale of its input.
    const auto random = [&rng](Index rows, Index cols, Index fan_in) {
      std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(float(fan_in)));
      Matrix m(rows, cols);
      for (Index i = 0; i < m.size(); ++i)
        m.data()[i] = normal(rng);
      return m;
    };
    m_embedding = random(s.vocab, s.model_dim, 1);
    m_readout = m_embedding.transpose() / std::sqrt(float(s.model_dim));  // tied
    attn::MultiHeadConfig config{s.model_dim, s.heads};
    config.num_kv_heads = s.kv_heads;
    config.bias = false;
    const Index e = s.model_dim, kv = config.kv_dim();
    for (Index l = 0; l < s.layers; ++l) {
      attn::MultiHeadWeights<float> w;  // PyTorch's layout: out_features × in_features
      w.q_weight = random(e, e, e);
      w.k_weight = random(kv, e, e);
      w.v_weight = random(kv, e, e);
      w.out_weight = random(e, e, e);
      m_attention.emplace_back(config, std::move(w));
      m_up.push_back(random(e, s.ffn_dim, e));
      m_down.push_back(random(s.ffn_dim, e, s.ffn_dim));
    }
  }

  Index layers() const { return Index(m_attention.size()); }
  const attn::SelfAttention<float>& attention(Index layer) const {
    return m_attention[std::size_t(layer)];
  }

  // A row per token: its embedding plus a sinusoidal code of its absolute position.
  Matrix embed(const std::vector<Index>& tokens, const std::vector<Index>& positions) const {
    Matrix x(Index(tokens.size()), m_model_dim);
    for (Index r = 0; r < x.rows(); ++r) {
      x.row(r) = m_embedding.row(tokens[std::size_t(r)]);
      const double position = double(positions[std::size_t(r)]);
      for (Index c = 0; c + 1 < m_model_dim; c += 2) {
        const double angle = position * std::pow(10000.0, -double(c) / double(m_model_dim));
        x(r, c) += float(std::sin(angle));
        x(r, c + 1) += float(std::cos(angle));
      }
    }
    return x;
  }

  // x through every layer: x += attention(norm x), then x += feed_forward(norm x).
  // `attend(l, h)` is layer l's self-attention of the normalised rows h, with whatever cache the
  // caller decodes with (or none).
  template <typename Attend>
  Matrix run(Matrix x, const Attend& attend) const {
    for (Index l = 0; l < layers(); ++l) {
      x += attend(l, normalised(x));
      const Matrix hidden = times(normalised(x), m_up[std::size_t(l)]).cwiseMax(0.0f);
      x += times(hidden, m_down[std::size_t(l)]);
    }
    return x;
  }

  // The logits (rows × vocab) of the rows of x.
  Matrix logits(const Matrix& x) const { return times(normalised(x), m_readout); }

 private:
  Index m_model_dim;
  Matrix m_embedding;  // vocab × E
  Matrix m_readout;    // E × vocab
  std::vector<attn::SelfAttention<float>> m_attention;
  std::vector<Matrix> m_up;    // E × ffn
  std::vector<Matrix> m_down;  // ffn × E
};

Index argmax(const Matrix& logits, Index row) {
  Index token = 0;
  logits.row(row).maxCoeff(&token);
  return token;
}

// ---------------------------------------------------------------------------------------------
// One pool per layer
// ---------------------------------------------------------------------------------------------

// Every layer caches its own keys and values, so a model has one PagedKVCache per layer. A
// sequence lives in all of them: it is created, forked and dropped in every pool at once.
// Each pool numbers its sequences in the order they are made, so these lockstep calls return the
// same id from every pool (checked), and one SequenceId names a user in every layer.
class LayerPools {
 public:
  LayerPools(const Model& model, Index pages, Index page_size) {
    for (Index l = 0; l < model.layers(); ++l)
      m_pools.push_back(model.attention(l).make_paged_cache(pages, page_size));
  }

  attn::PagedKVCache<float>& operator[](Index layer) { return m_pools[std::size_t(layer)]; }

  SequenceId create() {
    return in_lockstep([](attn::PagedKVCache<float>& pool) { return pool.create(); });
  }
  SequenceId fork(SequenceId id) {
    return in_lockstep([id](attn::PagedKVCache<float>& pool) { return pool.fork(id); });
  }
  void drop(SequenceId id) {
    for (attn::PagedKVCache<float>& pool : m_pools)
      pool.drop(id);
  }

  // Rows a sequence holds, and the absolute position of its next token (the same in every layer).
  Index size(SequenceId id) const { return m_pools.front().size(id); }
  Index position(SequenceId id) const { return m_pools.front().position(id); }

  // Totals over the layers.
  Index pages() const {
    return total([](const auto& pool) { return pool.pages(); });
  }
  Index used_pages() const {
    return total([](const auto& pool) { return pool.used_pages(); });
  }
  std::size_t page_bytes() const { return m_pools.front().page_bytes(); }
  Index page_copies() const {
    return total([](const auto& pool) { return Index(pool.page_copies()); });
  }
  Index page_size() const { return m_pools.front().page_size(); }
  Index layers() const { return Index(m_pools.size()); }

 private:
  template <typename Make>
  SequenceId in_lockstep(const Make& make) {
    const SequenceId id = make(m_pools.front());
    for (std::size_t l = 1; l < m_pools.size(); ++l) {
      if (make(m_pools[l]) != id)
        throw std::logic_error("LayerPools: the layers' pools numbered a sequence differently");
    }
    return id;
  }
  template <typename Count>
  Index total(const Count& count) const {
    Index sum = 0;
    for (const attn::PagedKVCache<float>& pool : m_pools)
      sum += Index(count(pool));
    return sum;
  }

  std::vector<attn::PagedKVCache<float>> m_pools;
};

// Sequences ids[b] each take tokens[b] (a prompt, or one token), through every layer in one
// attend_batch call per layer; returns the logits of each sequence's last row (B × vocab).
Matrix decode_together(const Model& model, LayerPools& pools, const std::vector<SequenceId>& ids,
                       const std::vector<std::vector<Index>>& tokens,
                       const attn::MultiHeadOptions& options) {
  std::vector<Index> flat, positions, lengths, last_rows;
  for (std::size_t b = 0; b < ids.size(); ++b) {
    const Index first = pools.position(ids[b]);
    for (std::size_t i = 0; i < tokens[b].size(); ++i) {
      flat.push_back(tokens[b][i]);
      positions.push_back(first + Index(i));
    }
    lengths.push_back(Index(tokens[b].size()));
    last_rows.push_back(Index(flat.size()) - 1);
  }
  const Matrix x = model.run(model.embed(flat, positions), [&](Index l, const Matrix& h) {
    return model.attention(l).attend_batch(h, lengths, pools[l], ids, attn::Mask::causal(),
                                           options);
  });
  return model.logits(x(last_rows, Eigen::all));
}

// Sequence id alone takes `tokens`, through SelfAttention's single-sequence call (layer(x, pool,
// id)); returns the logits of its last row (1 × vocab).
Matrix decode_alone(const Model& model, LayerPools& pools, SequenceId id,
                    const std::vector<Index>& tokens, const attn::MultiHeadOptions& options) {
  std::vector<Index> positions;
  for (std::size_t i = 0; i < tokens.size(); ++i)
    positions.push_back(pools.position(id) + Index(i));
  const Matrix x = model.run(model.embed(tokens, positions), [&](Index l, const Matrix& h) {
    return model.attention(l)(h, pools[l], id, attn::Mask::causal(), {}, options);
  });
  return model.logits(x.bottomRows(1));
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

using Clock = std::chrono::steady_clock;

double milliseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double kib(std::size_t bytes) {
  return double(bytes) / 1024.0;
}

struct User {
  SequenceId id = 0;
  std::vector<Index> prompt;
  std::vector<Index> generated;  // generated[0] comes from the prompt's last row
  Index budget = 0;              // tokens to generate
  bool active = true;
};

// What separate caches would hold, one per user and layer, each with its own copy of the
// system prompt: every user's rows in pages of its own.
Index unshared_pages(const LayerPools& pools, const std::vector<User>& users) {
  Index pages = 0;
  for (const User& user : users) {
    if (user.active)
      pages += (pools.size(user.id) + pools.page_size() - 1) / pools.page_size() * pools.layers();
  }
  return pages;
}

void print_memory(const char* when, const LayerPools& pools, const std::vector<User>& users) {
  const Index used = pools.used_pages(), unshared = unshared_pages(pools, users);
  std::printf("memory %s (%d layers): %d of %d pages in use, %.0f KiB; page copies so far: %d\n",
              when, int(pools.layers()), int(used), int(pools.pages()),
              kib(std::size_t(used) * pools.page_bytes()), int(pools.page_copies()));
  std::printf(
      "  as separate caches, each user with its own copy of the system prompt: %d pages, "
      "%.0f KiB (%.2fx)\n",
      int(unshared), kib(std::size_t(unshared) * pools.page_bytes()),
      double(unshared) / double(std::max<Index>(used, 1)));
}

std::string join(const std::vector<Index>& numbers) {
  std::string s;
  for (Index n : numbers)
    s += (s.empty() ? "" : ", ") + std::to_string(n);
  return s;
}

// Compares logits row by row: the largest difference, relative to the largest logit, and whether
// every value is bitwise the same.
struct Comparison {
  double worst = 0;
  bool bitwise = true;
};
Comparison compare(const Matrix& a, const Matrix& b) {
  const double scale = std::max(double(a.cwiseAbs().maxCoeff()), 1e-30);
  return {double((a - b).cwiseAbs().maxCoeff()) / scale, (a.array() == b.array()).all()};
}

int usage(const char* program) {
  std::fprintf(stderr, "usage: %s [--small] [--steps N]\n", program);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  Index steps = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--small") {
      s = Settings::small();
    } else if (arg == "--steps" && i + 1 < argc) {
      steps = std::atol(argv[++i]);
      if (steps < 1) return usage(argv[0]);
    } else {
      return usage(argv[0]);
    }
  }
  if (steps > 0) s.steps = steps;

  try {
    const Model model(s, /*seed*/ 2026);
    std::mt19937 rng(7);
    std::uniform_int_distribution<Index> any_token(0, s.vocab - 1);
    const auto random_tokens = [&](Index count) {
      std::vector<Index> tokens(std::size_t(count), 0);
      for (Index& token : tokens)
        token = any_token(rng);
      return tokens;
    };
    const std::vector<Index> system_prompt = random_tokens(s.system_length);

    // Pages per layer for the root and every user at their longest, as if nothing were shared:
    // the pool never runs out.
    const Index longest = s.system_length +
                          *std::max_element(s.prompt_lengths.begin(), s.prompt_lengths.end()) +
                          s.steps + 1;
    const Index pages =
        (Index(s.prompt_lengths.size()) + 1) * ((longest + s.page_size - 1) / s.page_size);
    LayerPools pools(model, pages, s.page_size);
    attn::Workspace workspace;  // scratch shared by the steps (one call at a time)
    attn::MultiHeadOptions options;
    options.workspace = &workspace;

    const attn::MultiHeadConfig& config = model.attention(0).config();
    std::printf(
        "attn serve: %d users decoded together through a paged KV cache, one pool per "
        "layer\n\n",
        int(s.prompt_lengths.size()));
    std::printf(
        "model: %d layers, model_dim %d, %d heads (grouped: %d kv heads of %d), ffn %d, "
        "vocab %d, random weights\n",
        int(s.layers), int(s.model_dim), int(s.heads), int(config.kv_heads()),
        int(config.head_dim()), int(s.ffn_dim), int(s.vocab));
    std::printf(
        "pools: %d pages of %d positions per layer, %.0f KiB a page (keys and values); "
        "%s\n\n",
        int(pages), int(s.page_size), kib(pools.page_bytes()),
        attn::simd_instruction_set().c_str());

    // 1. The system prompt, once.
    Clock::time_point start = Clock::now();
    const SequenceId root = pools.create();
    decode_together(model, pools, {root}, {system_prompt}, options);
    std::printf("prefill: system prompt of %d tokens into sequence %lld, once: %.1f ms\n",
                int(s.system_length), static_cast<long long>(root), milliseconds_since(start));

    // 2. The users: forks of the root (no copy), then their own prompts in one batch.
    std::vector<User> users(s.prompt_lengths.size());
    std::vector<SequenceId> ids;
    std::vector<std::vector<Index>> prompts;
    for (std::size_t u = 0; u < users.size(); ++u) {
      users[u].id = pools.fork(root);
      users[u].prompt = random_tokens(s.prompt_lengths[u]);
      users[u].budget = u == s.finishing_user ? std::min(s.finish_after, s.steps) : s.steps;
      ids.push_back(users[u].id);
      prompts.push_back(users[u].prompt);
    }
    std::vector<Matrix> checked_logits;  // the checked user's, prompt's last row then every step
    start = Clock::now();
    Matrix logits = decode_together(model, pools, ids, prompts, options);
    const double prompt_ms = milliseconds_since(start);
    for (std::size_t u = 0; u < users.size(); ++u)
      users[u].generated.push_back(argmax(logits, Index(u)));
    checked_logits.push_back(logits.row(Index(s.checked_user)));
    std::printf(
        "prefill: %d users forked from it (no copy), their prompts of %s tokens in one "
        "attend_batch per layer: %.1f ms\n",
        int(users.size()), join(s.prompt_lengths).c_str(), prompt_ms);
    print_memory("after prefill", pools, users);
    std::printf(
        "  (the %d copies: each user's first append copied the system prompt's partly "
        "filled last page, %d rows, once per layer)\n\n",
        int(pools.page_copies()), int(s.system_length % s.page_size));

    // 3. Decoding: one token per active user per step, all of them in one call per layer.
    std::printf("decoding %d steps; user %d stops after %d tokens\n", int(s.steps),
                int(s.finishing_user), int(users[s.finishing_user].budget));
    std::printf("%6s %6s %12s %11s\n", "step", "users", "keys (max)", "latency");
    std::vector<double> latencies;
    Index tokens = 0;
    for (Index step = 0; step < s.steps; ++step) {
      User& finishing = users[s.finishing_user];
      if (finishing.active && Index(finishing.generated.size()) >= finishing.budget) {
        const Index before = pools.used_pages();
        pools.drop(finishing.id);
        finishing.active = false;
        std::printf(
            "%6d  user %d has its %d tokens: dropped, pages in use %d -> %d (%d back to "
            "the pool)\n",
            int(step), int(s.finishing_user), int(finishing.budget), int(before),
            int(pools.used_pages()), int(before - pools.used_pages()));
      }
      start = Clock::now();
      std::vector<std::size_t> active;
      std::vector<std::vector<Index>> next;
      ids.clear();
      for (std::size_t u = 0; u < users.size(); ++u) {
        if (!users[u].active) continue;
        active.push_back(u);
        ids.push_back(users[u].id);
        next.push_back({users[u].generated.back()});
      }
      Index keys = 0;
      for (SequenceId id : ids)
        keys = std::max(keys, pools.size(id) + 1);
      logits = decode_together(model, pools, ids, next, options);
      for (std::size_t b = 0; b < active.size(); ++b) {
        User& user = users[active[b]];
        user.generated.push_back(argmax(logits, Index(b)));
        if (active[b] == s.checked_user) checked_logits.push_back(logits.row(Index(b)));
      }
      const double ms = milliseconds_since(start);
      latencies.push_back(ms);
      tokens += Index(active.size());
      if (step < 3 || step % 16 == 0 || step + 1 == s.steps)
        std::printf("%6d %6d %12d %8.2f ms\n", int(step), int(active.size()), int(keys), ms);
    }
    std::vector<double> sorted = latencies;
    std::sort(sorted.begin(), sorted.end());
    double total_ms = 0;
    for (double ms : latencies)
      total_ms += ms;
    std::printf(
        "latency per step: median %.2f ms, max %.2f ms; %d tokens in %.1f ms: %.0f "
        "tokens/s\n",
        sorted[sorted.size() / 2], sorted.back(), int(tokens), total_ms,
        double(tokens) / (total_ms / 1000.0));
    print_memory("after decoding", pools, users);
    std::printf("\n");

    // 4. Checks on one user: its logits at every step (the prompt's last row, then each step).
    const User& checked = users[s.checked_user];
    Matrix batched(Index(checked_logits.size()), s.vocab);
    for (std::size_t i = 0; i < checked_logits.size(); ++i)
      batched.row(Index(i)) = checked_logits[i];

    //    a. The same user decoded alone, in pools of its own, fed the same tokens.
    Matrix alone(batched.rows(), s.vocab);
    {
      LayerPools own(model, pages, s.page_size);
      const SequenceId own_root = own.create();
      decode_alone(model, own, own_root, system_prompt, options);
      const SequenceId id = own.fork(own_root);
      alone.row(0) = decode_alone(model, own, id, checked.prompt, options);
      for (Index step = 1; step < alone.rows(); ++step) {
        alone.row(step) =
            decode_alone(model, own, id, {checked.generated[std::size_t(step - 1)]}, options);
      }
    }
    //    b. One causal forward pass over its whole text, no cache.
    std::vector<Index> text = system_prompt;
    text.insert(text.end(), checked.prompt.begin(), checked.prompt.end());
    text.insert(text.end(), checked.generated.begin(), checked.generated.end() - 1);
    std::vector<Index> positions(text.size());
    for (std::size_t i = 0; i < positions.size(); ++i)
      positions[i] = Index(i);
    const Matrix x = model.run(model.embed(text, positions), [&](Index l, const Matrix& h) {
      return model.attention(l)(h, attn::Mask::causal());
    });
    const Matrix forward = model.logits(x.bottomRows(batched.rows()));

    // Rounding differences of float sums over a few hundred terms through a few layers stay near
    // 1e-6 of the logits' scale; a cache read from the wrong rows or pages is off by the scale
    // itself.
    const double tolerance = 1e-4;
    const Comparison with_alone = compare(batched, alone), with_forward = compare(batched, forward);
    std::printf(
        "check: user %d's %d rows of logits (its prompt's last token, then each step), "
        "batched with the others, against\n",
        int(s.checked_user), int(batched.rows()));
    std::printf(
        "  decoded alone (own pools, layer(x, pool, id)): largest difference %.1e of the "
        "largest logit, %s\n",
        with_alone.worst, with_alone.bitwise ? "bitwise equal" : "not bitwise equal");
    std::printf(
        "  one causal forward pass over its %d tokens, no cache: largest difference "
        "%.1e\n",
        int(text.size()), with_forward.worst);
    if (!with_alone.bitwise || with_forward.worst > tolerance) {
      std::printf("FAILED: %s\n", with_alone.bitwise ? "a difference exceeds the tolerance"
                                                     : "batched and alone differ");
      return 1;
    }
    std::printf("ok: batched equals alone bitwise, and the forward pass within %.0e\n", tolerance);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serve: %s\n", e.what());
    return 1;
  }
}
