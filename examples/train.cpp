// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// train: a tiny encoder–decoder trained in C++ to write strings backwards, with attn's
// gradients. One encoder self-attention layer, one causal decoder self-attention layer and one
// cross-attention layer (each with a residual connection), learned token and position
// embeddings and a linear head; Adam; everything but the attention is plain Eigen. Nothing says
// which source position a decoder step should read: the cross-attention has to find it. The
// program prints the loss as it trains, the exact-sequence accuracy on strings it never saw
// (decoded greedily, one letter at a time), and writes the learned cross-attention of one of them
// as train_attention.png: rows are the decoder's steps, columns the source letters, and the
// anti-diagonal is what training found.
//
//   ./build/default/examples/train               # until 99.5 % of held-out strings are right
//   ./build/default/examples/train --steps=300   # a short run: checks only that the loss falls

#include <attn/attn.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "picture.hpp"

namespace {

using attn::Index;
using Matrix = attn::Matrix<float>;
using Vector = attn::Vector<float>;

constexpr Index letters = 10;   // 'a' … 'j'
constexpr Index bos = letters;  // the decoder's first input
constexpr Index length = 8;     // every string has 8 letters
constexpr Index model_dim = 32;
constexpr Index heads = 2;

using Text = std::vector<Index>;

std::string spell(const Text& text) {
  std::string s;
  for (const Index t : text)
    s += char('a' + t);
  return s;
}

Text reversed(const Text& text) {
  return Text(text.rbegin(), text.rend());
}

// Every trainable matrix: embeddings, the three layers' weights, the head.
struct Parameters {
  Matrix source_embedding, source_position, target_embedding, target_position;
  attn::MultiHeadWeights<float> encoder, decoder, cross;
  Matrix head_weight;
  Vector head_bias;

  // fn(parameter, gradient of the same field) for every field, in a fixed order.
  template <typename Fn>
  friend void for_each(Parameters& p, const Parameters& g, Fn fn) {
    fn(p.source_embedding, g.source_embedding);
    fn(p.source_position, g.source_position);
    fn(p.target_embedding, g.target_embedding);
    fn(p.target_position, g.target_position);
    for (auto [w, gw] : {std::pair{&p.encoder, &g.encoder}, std::pair{&p.decoder, &g.decoder},
                         std::pair{&p.cross, &g.cross}}) {
      fn(w->q_weight, gw->q_weight);
      fn(w->k_weight, gw->k_weight);
      fn(w->v_weight, gw->v_weight);
      fn(w->out_weight, gw->out_weight);
      fn(w->q_bias, gw->q_bias);
      fn(w->k_bias, gw->k_bias);
      fn(w->v_bias, gw->v_bias);
      fn(w->out_bias, gw->out_bias);
    }
    fn(p.head_weight, g.head_weight);
    fn(p.head_bias, g.head_bias);
  }
};

attn::MultiHeadConfig config() {
  return attn::MultiHeadConfig{model_dim, heads};
}

attn::MultiHeadWeights<float> random_layer(std::mt19937& rng) {
  const float bound = 1.0f / std::sqrt(float(model_dim));
  std::uniform_real_distribution<float> u(-bound, bound);
  const auto random = [&](Index rows, Index cols) {
    return Matrix(Matrix::NullaryExpr(rows, cols, [&] { return u(rng); }));
  };
  attn::MultiHeadWeights<float> w;
  w.q_weight = random(model_dim, model_dim);
  w.k_weight = random(model_dim, model_dim);
  w.v_weight = random(model_dim, model_dim);
  w.out_weight = random(model_dim, model_dim);
  w.q_bias = Vector::Zero(model_dim);
  w.k_bias = Vector::Zero(model_dim);
  w.v_bias = Vector::Zero(model_dim);
  w.out_bias = Vector::Zero(model_dim);
  return w;
}

Parameters initial_parameters(std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 0.5f);
  const auto gaussian = [&](Index rows, Index cols) {
    return Matrix(Matrix::NullaryExpr(rows, cols, [&] { return normal(rng); }));
  };
  Parameters p;
  p.source_embedding = gaussian(letters, model_dim);
  p.source_position = gaussian(length, model_dim);
  p.target_embedding = gaussian(letters + 1, model_dim);
  p.target_position = gaussian(length, model_dim);
  p.encoder = random_layer(rng);
  p.decoder = random_layer(rng);
  p.cross = random_layer(rng);
  p.head_weight = gaussian(letters, model_dim) * 0.2f;
  p.head_bias = Vector::Zero(letters);
  return p;
}

// Zeros of every parameter's shape.
Parameters zeros_like(Parameters p) {
  for_each(p, p, [](auto& x, const auto&) { x.setZero(); });
  return p;
}

// The model, built from the current parameters (the layers copy their weights).
struct Model {
  explicit Model(const Parameters& p)
      : encoder(config(), p.encoder), decoder(config(), p.decoder), cross(config(), p.cross) {}
  attn::SelfAttention<float> encoder, decoder;
  attn::CrossAttention<float> cross;
};

// Rows of an embedding for a text, plus positions.
Matrix embed(const Matrix& table, const Matrix& positions, const Text& text) {
  Matrix x(Index(text.size()), model_dim);
  for (Index i = 0; i < Index(text.size()); ++i)
    x.row(i) = table.row(text[std::size_t(i)]) + positions.row(i);
  return x;
}

// The decoder's input: BOS, then the target shifted right by one.
Text decoder_input(const Text& target_prefix) {
  Text input = {bos};
  input.insert(input.end(), target_prefix.begin(), target_prefix.end());
  return input;
}

struct Tapes {
  attn::LayerTape<float> encoder, decoder, cross;
  Matrix encoded, summed;  // h and c of the forward
};

// Logits (rows: decoder steps) for a source and a decoder input; keeps the tapes.
Matrix logits(const Parameters& p, const Model& model, const Text& source, const Text& input,
              Tapes& t) {
  const Matrix xs = embed(p.source_embedding, p.source_position, source);
  t.encoded = xs + attn::forward(model.encoder, xs, t.encoder);
  const Matrix y = embed(p.target_embedding, p.target_position, input);
  const Matrix s = y + attn::forward(model.decoder, y, t.decoder, attn::Mask::causal());
  t.summed = s + attn::forward(model.cross, s, t.encoded, t.cross);
  return (t.summed * p.head_weight.transpose()).rowwise() + p.head_bias.transpose();
}

// Cross-entropy of one pair, and its gradients added to g.
float train_pair(const Parameters& p, const Model& model, const Text& source, const Text& target,
                 Parameters& g, float weight) {
  Tapes t;
  const Text input = decoder_input(Text(target.begin(), target.end() - 1));
  const Matrix z = logits(p, model, source, input, t);
  // Softmax cross-entropy per step, averaged.
  Matrix d_logits(z.rows(), z.cols());
  float loss = 0;
  for (Index i = 0; i < z.rows(); ++i) {
    const float top = z.row(i).maxCoeff();
    const Eigen::RowVectorXf e = (z.row(i).array() - top).exp();
    const float sum = e.sum();
    const Index answer = target[std::size_t(i)];
    loss -= std::log(e(answer) / sum);
    d_logits.row(i) = e / sum;
    d_logits(i, answer) -= 1;
  }
  d_logits *= weight / float(z.rows());
  g.head_weight.noalias() += d_logits.transpose() * t.summed;
  g.head_bias += d_logits.colwise().sum().transpose();
  const Matrix d_summed = d_logits * p.head_weight;
  // c = s + cross(s, h)
  const attn::LayerGradients<float> gc = attn::backward(model.cross, t.cross, d_summed);
  const Matrix d_s = d_summed + gc.d_input;
  // s = y + decoder(y)
  const attn::LayerGradients<float> gd =
      attn::backward(model.decoder, t.decoder, d_s, attn::Mask::causal());
  const Matrix d_y = d_s + gd.d_input;
  // h = xs + encoder(xs)
  const attn::LayerGradients<float> ge = attn::backward(model.encoder, t.encoder, gc.d_source);
  const Matrix d_xs = gc.d_source + ge.d_input;
  for (Index i = 0; i < length; ++i) {
    g.target_embedding.row(input[std::size_t(i)]) += d_y.row(i);
    g.target_position.row(i) += d_y.row(i);
    g.source_embedding.row(source[std::size_t(i)]) += d_xs.row(i);
    g.source_position.row(i) += d_xs.row(i);
  }
  for (auto [layer, grads] :
       {std::pair{&g.encoder, &ge}, std::pair{&g.decoder, &gd}, std::pair{&g.cross, &gc}}) {
    layer->q_weight += grads->weights.q_weight;
    layer->k_weight += grads->weights.k_weight;
    layer->v_weight += grads->weights.v_weight;
    layer->out_weight += grads->weights.out_weight;
    layer->q_bias += grads->weights.q_bias;
    layer->k_bias += grads->weights.k_bias;
    layer->v_bias += grads->weights.v_bias;
    layer->out_bias += grads->weights.out_bias;
  }
  return loss * weight / float(z.rows());
}

// Greedy decoding: one letter at a time, each step over the prefix written so far.
Text decode(const Parameters& p, const Model& model, const Text& source) {
  Text written;
  Tapes t;
  while (Index(written.size()) < length) {
    const Matrix z = logits(p, model, source, decoder_input(written), t);
    Index best = 0;
    z.row(z.rows() - 1).maxCoeff(&best);
    written.push_back(best);
  }
  return written;
}

Text random_text(std::mt19937& rng) {
  std::uniform_int_distribution<Index> letter(0, letters - 1);
  Text text(static_cast<std::size_t>(length));
  for (Index& t : text)
    t = letter(rng);
  return text;
}

double accuracy(const Parameters& p, const std::vector<Text>& held_out) {
  const Model model(p);
  int right = 0;
  for (const Text& text : held_out)
    right += decode(p, model, text) == reversed(text) ? 1 : 0;
  return double(right) / double(held_out.size());
}

// Adam (Kingma & Ba), one state per parameter field.
class Adam {
 public:
  explicit Adam(float rate) : m_rate(rate) {}
  void step(Parameters& p, const Parameters& g) {
    ++m_step;
    std::size_t field = 0;
    const float correct1 = 1 - std::pow(beta1, float(m_step));
    const float correct2 = 1 - std::pow(beta2, float(m_step));
    for_each(p, g, [&](auto& x, const auto& dx) {
      if (m_first.size() <= field) {
        m_first.emplace_back(Eigen::ArrayXf::Zero(x.size()));
        m_second.emplace_back(Eigen::ArrayXf::Zero(x.size()));
      }
      Eigen::ArrayXf& first = m_first[field];
      Eigen::ArrayXf& second = m_second[field];
      const Eigen::Map<const Eigen::ArrayXf> grad(dx.data(), dx.size());
      Eigen::Map<Eigen::ArrayXf> value(x.data(), x.size());
      first = beta1 * first + (1 - beta1) * grad;
      second = beta2 * second + (1 - beta2) * grad.square();
      value -= m_rate * (first / correct1) / ((second / correct2).sqrt() + 1e-8f);
      ++field;
    });
  }

 private:
  static constexpr float beta1 = 0.9f, beta2 = 0.98f;
  float m_rate;
  long m_step = 0;
  std::vector<Eigen::ArrayXf> m_first, m_second;
};

// The cross-attention weights (decoder steps × source letters, averaged over heads) of one
// held-out string, teacher-forced with its answer.
Matrix cross_attention_weights(const Parameters& p, const Text& source) {
  const Model model(p);
  Tapes t;
  const Text target = reversed(source);
  const Text input = decoder_input(Text(target.begin(), target.end() - 1));
  logits(p, model, source, input, t);
  Matrix weights;
  attn::AttentionExtras<float> extras;
  extras.weights = &weights;
  extras.average_heads = true;
  const Matrix y = embed(p.target_embedding, p.target_position, input);
  const Matrix s = y + model.decoder(y, attn::Mask::causal());
  model.cross(s, t.encoded, attn::Mask(), extras);
  return weights;
}

}  // namespace

int main(int argc, char** argv) {
  long steps = 0;  // 0: until held-out accuracy reaches the goal (or the step limit)
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--steps=", 8) == 0) {
      steps = std::atol(argv[i] + 8);
    } else {
      std::fprintf(stderr, "usage: train [--steps=N]\n");
      return 2;
    }
  }
  constexpr long max_steps = 20000;
  constexpr int batch = 32;
  constexpr double goal = 0.995;
  std::mt19937 rng(2026);
  Parameters p = initial_parameters(rng);
  std::vector<Text> held_out;
  for (int i = 0; i < 1000; ++i)
    held_out.push_back(random_text(rng));
  // 10^8 strings: a training batch all but never holds a held-out one; skip them if it does.
  const auto is_held_out = [&](const Text& t) {
    for (const Text& h : held_out)
      if (h == t) return true;
    return false;
  };

  std::printf(
      "train: reverse strings of %ld letters (a-j); 1 encoder self-attention, 1 decoder "
      "self-attention and 1 cross-attention layer, model_dim %ld, %ld heads, Adam, "
      "batches of %d\n\n",
      long(length), long(model_dim), long(heads), batch);
  Adam adam(3e-3f);
  const auto start = std::chrono::steady_clock::now();
  const long limit = steps > 0 ? steps : max_steps;
  double first_loss = 0, last_loss = 0, reached = 0;
  double window = 0;
  long step = 0;
  for (step = 1; step <= limit; ++step) {
    const Model model(p);
    Parameters g = zeros_like(p);
    double loss = 0;
    for (int b = 0; b < batch; ++b) {
      Text text = random_text(rng);
      while (is_held_out(text))
        text = random_text(rng);
      loss += train_pair(p, model, text, reversed(text), g, 1.0f / batch);
    }
    adam.step(p, g);
    window += loss;
    if (step == 1) first_loss = loss;
    if (step % 100 == 0) {
      last_loss = window / 100;
      window = 0;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf("step %5ld  loss %.4f  (%.1f s)\n", step, last_loss, seconds);
      if (steps == 0 && step % 500 == 0) {
        reached = accuracy(p, held_out);
        std::printf("            held-out exact-sequence accuracy %.1f %%\n", 100 * reached);
        if (reached >= goal) break;
      }
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  reached = accuracy(p, held_out);
  std::printf(
      "\nafter %ld steps (%.1f s): held-out exact-sequence accuracy %.1f %% (%zu strings "
      "never trained on)\n",
      std::min(step, limit), seconds, 100 * reached, held_out.size());
  const Text example = held_out.front();
  const Model model(p);
  std::printf("e.g. %s -> %s\n", spell(example).c_str(), spell(decode(p, model, example)).c_str());

  const Matrix weights = cross_attention_weights(p, example);
  std::printf(
      "\ncross-attention of %s (rows: decoder steps, columns: source letters; averaged "
      "over heads):\n      ",
      spell(example).c_str());
  for (const Index t : example)
    std::printf("   %c ", char('a' + t));
  std::printf("\n");
  for (Index i = 0; i < weights.rows(); ++i) {
    std::printf("  %c  ", char('a' + reversed(example)[std::size_t(i)]));
    for (Index j = 0; j < weights.cols(); ++j)
      std::printf(" %.2f", double(weights(i, j)));
    std::printf("\n");
  }
  example::HeatmapLabels labels;
  labels.title = "learned cross-attention, reversing " + spell(example);
  labels.rows_name = "decoder step: the letter it emits";
  labels.columns_name = "source letter";
  const Text emitted = reversed(example);
  for (Index i = 0; i < weights.rows(); ++i)
    labels.rows.push_back(std::to_string(i) + ": " + char('a' + emitted[std::size_t(i)]));
  for (const Index t : example)
    labels.columns.push_back(std::string(1, char('a' + t)));
  if (example::write_heatmap("train_attention.png", weights, labels))
    std::printf("wrote train_attention.png\n");

  if (steps > 0) {
    // A short run: the loss must have fallen.
    const bool fell = last_loss < 0.8 * first_loss;
    std::printf("%s: loss %.3f at the start, %.3f over the last 100 steps\n",
                fell ? "ok" : "FAILED", first_loss, last_loss);
    return fell ? 0 : 1;
  }
  const bool learned = reached >= 0.99;
  std::printf("%s: %.1f %% of held-out strings reversed exactly (goal 99 %%)\n",
              learned ? "ok" : "FAILED", 100 * reached);
  return learned ? 0 : 1;
}
