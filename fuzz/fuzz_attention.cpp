// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// Differential fuzzing of attn against the independent fp64 reference (tests/support/reference.hpp).
//
// Each input decodes into one attention problem: sizes n, m, d, dv (0 and 1 included), heads and
// kv heads (invalid combinations included), a mask of up to three parts joined with & (none,
// key length (beyond m included), causal, window with any reaches including Mask::unbounded and
// invalid ones, keep, bias in either precision with −∞ entries and fully hidden rows, +∞ in a
// bias, parts of the wrong shape), values from tiny (subnormal) to |q·k| ≈ 1e4 and beyond, scale
// and soft-cap, float or double, the by-value and the _into form, strided and column-major inputs,
// serial or two threads; then the SelfAttention and CrossAttention functors (and a KV-cache
// decode) on the same shapes and mask.
//
// Score and mask functions (attn::ScoreMask): a score function (none, ALiBi with the standard
// slopes, the user's wave s + 0.1·(h+1)·sin(q − k), which also hides some keys from head 1 with
// −∞, or both) and a mask function (none, documents with lengths from the input, prefix-LM,
// sinks, a tree of draft tokens over the last keys, the user's mask function of the head without
// a block predicate, the user's chunked causal function with an exact or a coarse block
// predicate) join the mask. They run through four ScoreMask types that forward to the built-ins
// at run time (each type is a kernel instantiation; see FunctionChoice), with q, k and v in
// Scalar. The reference applies them at the documented positions (query row i at i + m − n) with
// the rules of tests/support/reference_functions.hpp, which know nothing of attn: the score
// function after soft-capping and before the bias, each head's visibility and-ed with the
// mask's. A spoiled function (ALiBi with a slope too many, documents that do not cover the keys,
// a tree of more nodes than keys) must make the call throw ShapeError. The functors take the
// same functions, and a KV-cache decode with them (and causal) is checked step by step against
// the reference over the positions cached so far.
//
// Storage (float problems): k and v are each passed as float, attn::bfloat16, attn::half or
// attn::qint8 with q in float, in the pairs fuzzed_pair names (each pair is a kernel
// instantiation, which the fuzzer's build time pays for), or all three in bfloat16 or in half. The 16-bit types are made with Eigen's
// cast (round to nearest even), qint8 with QuantizedMatrix::quantize in groups of one head's row
// (head_dim for k, value_dim for v; strided layouts pass a QuantizedView of a wider matrix). The
// reference then runs on the stored values converted back to double (dequantised for qint8), and
// the tolerance stays float's own: agreement proves that the kernel converts exactly and
// accumulates in float. qint8 must also keep its documented bound, |x − scale·q| ≤ max |x| / 254
// over each group. Where the storage cannot hold an input, the contract decides:
//   - half's largest finite value is 65 504, so for half v the largest value step (1e20/127) is
//     clamped to 512 (|v| ≤ 65 024): rounding never makes a finite input infinite (q and k stay
//     below 128; bfloat16 has float's range, which no input comes near), and a rounding that did
//     would be reported as a fuzzer bug;
//   - qint8 needs a group: with head_dim or value_dim 0, or a spoiled width that a head's row does
//     not divide, that operand stays float; a group that is not the call's head_dim (a spoiled
//     width it happens to divide) must make the call throw ShapeError;
//   - NaN mode: QuantizedMatrix::quantize must throw ShapeError for an operand holding a NaN,
//     which is then passed as float; bfloat16 and half keep NaN, and the NaN contract below holds
//     for them as for float.
// With reduced k storage the functors also run a CrossAttention over remember<S>(source) and the
// KV-cache decode again in make_cache<S>, against the reference on the memory's and the cache's
// stored keys and values (keys() and values() converted to double); a half or qint8 cache must
// reject a row whose keys or values it cannot hold (ShapeError, the cache unchanged).
//
// The backward (attn::scaled_dot_product_attention_backward) is checked for a valid problem whose
// forward call returned, with q, k and v in Scalar (no reduced storage, not paged), not in NaN
// mode, with any mask function and score function (the score functions here are additive: the
// reference takes their shift as a bias per head; backward_differentiates_score_functions is
// the switch) and with n·m·H·(d + dv + 1) ≤ 2.5e5 (its reference costs
// about three forward references). The forward is called again with AttentionExtras::log_sum_exp
// (its output must be bitwise the checked call's), then the backward on the operands exactly as the
// forward took them (strided and column-major included), with d_out in [−1, 1] from the input's
// side seed (Input::side_seed, which leaves the layout's stream alone): by value, or (flag 4) into
// blocks of sentinel-filled matrices whose other entries must stay; with two threads (flag 2) also
// with the serial executor, which must give bitwise the same dq, dk and dv. They are compared with
// attn_test::reference_gradients (tests/support/reference_gradients.hpp) run head by head on the
// stored inputs in double, each head's visibility (mask and mask function) as a keep matrix, with
// the summed bias. Each entry must be finite and within its own bound (expected_gradients): a
// first-order model of the backward's rounding, scaled by the magnitudes that entry is computed
// from (the reference's weights P, |dO|·max|V|, |K| or |Q|) rather than by a global maximum; its
// logit error is twice the forward's model (tolerance.hpp), as P is recomputed from new logits and
// the forward's log-sum-exp. A query row that sees no key of a head must have exactly zero dq
// there, a key that no query of a kv head sees exactly zero dk and dv. Such a key may hold anything
// (gradients.hpp): the forward and the backward run again with NaN in those rows of k and v, and
// must pass the same comparison. With bit 3 of byte 7, the problem is also cut into two query
// blocks × two key parts (the cuts from the side seed), each a backward call placed by
// AttentionOptions::positions {first_query, first_key} with the whole's out, log-sum-exp and d_out
// rows (keep and bias matrices cut to the block; not with a tree, which is tied to one shape):
// summed, the parts' dq, dk and dv must equal the whole call's within twice its bound.
//
// It aborts, printing what it found, when
//   - the library disagrees with the reference beyond the documented tolerance
//     (tests/support/tolerance.hpp), or a row that sees no key is not exactly zero;
//   - a backward check above fails;
//   - the library gives NaN or ±∞ where the reference is finite, or (NaN mode) NaN anywhere but
//     exactly the output entries the NaN inputs reach;
//   - it throws anything but attn::ShapeError, or ShapeError for a valid problem, or nothing for
//     an invalid one (validity is decided here, independently of the library);
//   - a call that throws has written to its output.
// In NaN mode (bit 7 of byte 5) some inputs are NaN, and the contract of scaled_dot_product.hpp is
// checked exactly: a NaN in q (row i, head h), k (key j) or the bias (i, j) makes NaN every entry of
// the rows of the heads that see it; a NaN in v (key j, column c) makes NaN column c of the rows
// that see key j (or leaves it finite if that key's weight may have underflowed to zero); a key the
// mask hides reaches no row. Every other entry must match the reference run on the inputs with
// their NaNs replaced by 0 (which those entries do not depend on).
//
// Input layout (bytes past the end read as 0; values past the end come from a PRNG seeded with a
// hash of the input, so every input is deterministic):
//   0      flags: 1 double, 2 two threads, 4 _into a strided block, 8 strided/column-major inputs,
//          16 functors, 32 explicit scale, 64 soft-cap, 128 spoil one shape or parameter
//   1, 2   n, m        length codes (sequence_length() below)
//   3, 4   d, dv       dim codes (dim() below)
//   5      heads: low 3 bits index {1, 1, 2, 4, 3, 8, 0, -1}, the next 3 kv heads
//          {0, 1, 2, 4, 3, -1, 0, 1}[(b >> 3) % 8]; bit 6: through one attn::Workspace kept
//          across inputs (so scratch sized by earlier shapes is reused); bit 7: NaN mode (the
//          special byte −128 is NaN in q, k, v, and 127 is NaN in a bias)
//   6      spoiler (with flag 128)
//   7      scale code (bits 0–2, with flag 32); bit 3: the backward's cut into blocks placed by
//          positions (see above). Bits 3–7 were unused before: seeds written then have zeros there
//          (fuzz/make_corpus.py), and any other seed only gains the cut.
//   8      bits 0–1: soft-cap code; bits 2–6, float problems only (ignored for double): the storage
//          of k (bits 2–3) and of v (bits 4–5) from {float, bfloat16, half, qint8}, v taking k's
//          type where fuzzed_pair does not list the two; bit 6: if k is
//          bfloat16 or half, q and v are stored in that type too (else q is float). Bit 7 (without
//          strided inputs): k and v are passed as attn::PagedViews, their rows in pages of 16
//          stored last page first (runs in reverse order, so no run follows its predecessor).
//          These bits were unused before storage types existed: seeds written then have zeros
//          there and keep their all-float meaning.
//   9      q/k magnitude code, 10 v magnitude code
//   11     mask: number of parts (bits 0–1), then per part a kind byte, its parameters and, for a
//          bias, its values (fuzz/make_corpus.py writes seeds in this layout). Bits 2–7: the
//          functions (decode_functions): bits 2–3 the score function {none, alibi, wave, both},
//          bits 4–6 the mask function (MaskFunction), bit 7 spoils them; their parameters follow
//          the mask's parts: documents a count byte, one length byte per document and (unless
//          spoiled) a byte of slack; prefix_lm one byte; sinks two (count, window); tree a size
//          byte (unless spoiled) and one parent byte per node; chunked and chunked_coarse the
//          chunk byte. These bits were zero in seeds written before functions existed, which so
//          keep their meaning.
//   ...    then the values of q, k, v, one byte each (int8 × step; −128 is special)

#include <attn/attn.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/reference_functions.hpp"
#include "support/reference_gradients.hpp"
#include "support/tolerance.hpp"

namespace {

using attn::Index;
using attn::Mask;
using attn_test::MatrixB;
using attn_test::MatrixD;
using attn_test::ReferenceMask;

// ---------------------------------------------------------------------------------------------
// Reading the input
// ---------------------------------------------------------------------------------------------

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : m_data(data), m_size(size) {
    std::uint64_t h = 0x9E3779B97F4A7C15ull ^ size;
    for (std::size_t i = 0; i < size; ++i)
      h = (h ^ data[i]) * 0x100000001B3ull;
    m_state = h;
    m_hash = h;
  }

  std::uint8_t byte() { return m_next < m_size ? m_data[m_next++] : std::uint8_t(0); }

  /// Next byte of the input, or of the PRNG once the input is used up.
  std::uint8_t value_byte() {
    if (m_next < m_size) return m_data[m_next++];
    return static_cast<std::uint8_t>(next_random() >> 56);
  }

  /// Uniform in [0, 1), from the PRNG only.
  double uniform() { return static_cast<double>(next_random() >> 11) * 0x1.0p-53; }

  std::uint32_t seed() { return static_cast<std::uint32_t>(next_random() >> 32); }

  /// A seed of the input's own for values that the layout does not read (the backward check's
  /// d_out and cuts): it leaves the stream above alone, so they change nothing that an input
  /// decoded to before.
  std::uint32_t side_seed() const { return static_cast<std::uint32_t>(m_hash >> 32) ^ 0x5BD1E995u; }

 private:
  std::uint64_t next_random() {  // splitmix64
    std::uint64_t z = (m_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  const std::uint8_t* m_data;
  std::size_t m_size;
  std::size_t m_next = 0;
  std::uint64_t m_state;
  std::uint64_t m_hash;
};

/// Sequence lengths: mostly tiny (0 … 5), often across one tile (up to 79), sometimes two or
/// three tiles (64 … 190).
Index sequence_length(std::uint8_t b) {
  if (b < 96) return b % 6;
  if (b < 192) return (b - 96) % 80;
  return 64 + 2 * (b - 192);
}

/// Head dims, small ones and the usual powers of two.
Index dim(std::uint8_t b) {
  static constexpr Index dims[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 64, 1};
  return dims[b % 16];
}

/// A window reach: small, or up to 199, or Mask::unbounded, or invalid (−2, −7).
Index reach(std::uint8_t b) {
  if (b == 255 || b == 254) return Mask::unbounded;
  if (b == 253) return -2;
  if (b == 252) return -7;
  if (b < 128) return b % 8;
  return b % 200;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "\nfuzz_attention: %s\n", what.c_str());
  std::abort();
}

// ---------------------------------------------------------------------------------------------
// One problem
// ---------------------------------------------------------------------------------------------

/// How an operand reaches the kernel: in the problem's Scalar or, for float problems, in a
/// reduced storage type.
enum class Storage { scalar, bfloat16, half, qint8 };

const char* storage_name(Storage storage) {
  switch (storage) {
    case Storage::bfloat16:
      return "bfloat16";
    case Storage::half:
      return "half";
    case Storage::qint8:
      return "qint8";
    default:
      return "float";  // (double problems have no other storage)
  }
}

/// The (k, v) storage pairs the kernel is instantiated for: each type with itself, float with
/// qint8 and bfloat16 with half both ways round, so every type is met as k and as v, and beside
/// another type. (The kernel reads k and v through separate code, so the other mixed pairs add
/// build time, not paths.) Closed under a qint8 operand falling back to float (settle_qint8).
constexpr bool fuzzed_pair(Storage k, Storage v) {
  const auto either_way = [&](Storage a, Storage b) {
    return (k == a && v == b) || (k == b && v == a);
  };
  return k == v || either_way(Storage::scalar, Storage::qint8) ||
         either_way(Storage::bfloat16, Storage::half);
}

struct Problem {
  Storage q_storage = Storage::scalar, k_storage = Storage::scalar, v_storage = Storage::scalar;
  bool is_double = false;
  bool threads = false;
  bool into = false;
  bool strided = false;
  bool paged = false;
  bool functors = false;
  bool workspace = false;
  bool nan = false;
  bool positions = false;  // the backward's split into blocks placed by AttentionOptions::positions
  Index n = 0, m = 0, d = 0, dv = 0;
  Index heads = 1, kv_heads = 0;
  std::optional<double> scale;
  double softcap = 0;
  std::string description;
};

template <typename Scalar>
Scalar element(std::uint8_t byte, double step, Scalar special) {
  const int t = static_cast<int>(static_cast<std::int8_t>(byte));
  if (t == -128) return special;
  return static_cast<Scalar>(t * step);
}

/// The step of a byte for q and k: |q·k| up to ~1e-2, ~16·d, ~1e4, ~1.6e4·d, or subnormal.
template <typename Scalar>
double qk_step(std::uint8_t code, Index d) {
  const double dd = static_cast<double>(std::max<Index>(d, 1));
  switch (code % 6) {
    case 0:
      return 1.0 / 1024;
    case 1:
      return 1.0 / 32;
    case 2:
    case 3:
      return std::sqrt(1e4 / dd) / 127;  // |q·k| up to 1e4
    case 4:
      return 1.0;
    default:
      return std::numeric_limits<Scalar>::min() / 512;  // subnormal
  }
}

template <typename Scalar>
double v_step(std::uint8_t code) {
  switch (code % 5) {
    case 0:
      return 1.0 / 64;
    case 1:
      return 1.0 / 4;
    case 2:
      return 4.0;
    case 3:
      return 1e20 / 127;  // large, but m·max|v| stays finite in float
    default:
      return std::numeric_limits<Scalar>::min() / 512;  // subnormal
  }
}

/// A matrix of bytes × step; the byte −128 gives `special` (by default the smallest subnormal: a
/// value no step produces).
template <typename Scalar>
attn::Matrix<Scalar> read_matrix(Input& in, Index rows, Index cols, double step,
                                 Scalar special = std::numeric_limits<Scalar>::denorm_min()) {
  attn::Matrix<Scalar> m(rows, cols);
  for (Index r = 0; r < rows; ++r) {
    for (Index c = 0; c < cols; ++c)
      m(r, c) = element<Scalar>(in.value_byte(), step, special);
  }
  return m;
}

/// Calls f with a value of the C++ type of `storage` (Scalar itself for double problems, which
/// have no reduced storage).
template <typename Scalar, typename F>
void with_storage(Storage storage, const F& f) {
  if constexpr (std::is_same_v<Scalar, float>) {
    switch (storage) {
      case Storage::bfloat16:
        return f(attn::bfloat16());
      case Storage::half:
        return f(attn::half());
      case Storage::qint8:
        return f(attn::qint8());
      default:
        break;
    }
  }
  f(Scalar());
}

template <typename S>
inline constexpr bool is_qint8 = std::is_same_v<S, attn::qint8>;

/// The Storage of a C++ type with_storage passes (float and double: Storage::scalar).
template <typename S>
constexpr Storage storage_of() {
  if constexpr (std::is_same_v<S, attn::bfloat16>) return Storage::bfloat16;
  if constexpr (std::is_same_v<S, attn::half>) return Storage::half;
  if constexpr (std::is_same_v<S, attn::qint8>) return Storage::qint8;
  return Storage::scalar;
}
template <typename S>
inline constexpr bool is_16_bit =
    std::is_same_v<S, attn::bfloat16> || std::is_same_v<S, attn::half>;

/// A matrix kept in storage S: a QuantizedMatrix for qint8, else a row-major matrix of S.
template <typename S>
using Stored = std::conditional_t<is_qint8<S>, attn::QuantizedMatrix, attn::Matrix<S>>;

/// x in storage S: as it is, rounded to nearest even by Eigen's cast, or quantised in groups of
/// `group` columns.
template <typename S, typename Scalar>
Stored<S> store(const attn::Matrix<Scalar>& x, Index group) {
  if constexpr (is_qint8<S>) {
    return attn::QuantizedMatrix::quantize(x, group);
  } else {
    (void)group;
    return x.template cast<S>();
  }
}

/// What stored values stand for, in Scalar: exact for bfloat16 and half (every one is a float),
/// scale·q rounded to float for qint8 (as QuantizedView::dequantize and the kernel compute it).
template <typename Scalar, typename X>
attn::Matrix<Scalar> stored_values(const X& x) {
  if constexpr (std::is_same_v<X, attn::QuantizedMatrix> ||
                std::is_same_v<X, attn::QuantizedView>) {
    return x.dequantize().template cast<Scalar>();
  } else if constexpr (std::is_same_v<typename X::Scalar, double>) {
    return x.template cast<Scalar>();
  } else {
    return x.template cast<float>().template cast<Scalar>();
  }
}

/// QuantizedMatrix::quantize's documented bound, |x − scale·q| ≤ max |x| / 254 over each group of
/// a row, up to the rounding of scale and of scale·q to float (a relative 2⁻²¹ of max |x|) and of a
/// subnormal scale (128 times the smallest subnormal). `stored`: scale·q of x.
template <typename Scalar>
void check_quantized(const char* name, const attn::Matrix<Scalar>& x,
                     const attn::Matrix<Scalar>& stored, Index group, const std::string& context) {
  for (Index r = 0; r < x.rows(); ++r) {
    for (Index g = 0; g + group <= x.cols(); g += group) {
      const double max = x.row(r).segment(g, group).template cast<double>().cwiseAbs().maxCoeff();
      const double bound =
          max / 254 + max * 0x1.0p-21 + 128.0 * std::numeric_limits<float>::denorm_min();
      for (Index c = g; c < g + group; ++c) {
        const double error =
            std::abs(static_cast<double>(x(r, c)) - static_cast<double>(stored(r, c)));
        if (!(error <= bound)) {
          char buffer[256];
          std::snprintf(
              buffer, sizeof buffer,
              "QuantizedMatrix::quantize: %s(%ld, %ld) = %.9g is stored as %.9g, off by more "
              "than max|x|/254 = %.9g",
              name, static_cast<long>(r), static_cast<long>(c), static_cast<double>(x(r, c)),
              static_cast<double>(stored(r, c)), max / 254);
          fail(buffer + context);
        }
      }
    }
  }
}

/// A strided qint8 operand: the first x.cols() columns of x quantised one group wider (the extra
/// group holding large values, which no read may reach), as a QuantizedView whose row stride and
/// scale stride exceed its width. `wide` keeps the storage.
template <typename Scalar>
attn::QuantizedView strided_quantized(const attn::Matrix<Scalar>& x, Index group,
                                      attn::QuantizedMatrix& wide) {
  attn::Matrix<float> padded = attn::Matrix<float>::Constant(x.rows(), x.cols() + group, 1e30f);
  padded.leftCols(x.cols()) = x.template cast<float>();
  wide = attn::QuantizedMatrix::quantize(padded, group);
  const attn::QuantizedView all = wide.view();
  return {all.data(),   x.rows(),           x.cols(), all.outerStride(),
          all.scales(), all.scale_stride(), group};
}

/// A mask part for the block of rows [first_row, first_row + rows) and columns [first_col,
/// first_col + cols) of the whole problem, for a call placed there by AttentionOptions::positions:
/// explicit matrices are cut to the block (they stay indexed by the call's rows and keys), parts
/// of positions are the whole's.
using PartBuilder = std::function<Mask(Index first_row, Index first_col, Index rows, Index cols)>;

/// The mask, built twice (library and reference), and what the fuzzer expects of it.
struct MaskSpec {
  Mask mask;
  ReferenceMask reference;
  std::vector<PartBuilder> parts;    // mask's parts, to be cut to a block
  bool construction_throws = false;  // Mask::window, Mask::bias or operator& must throw
  std::string description;
  // Explicit parts' shapes, to decide whether the call must reject the mask.
  std::vector<std::pair<Index, Index>> keep_shapes, bias_shapes;
  Index key_length = Mask::unbounded;  // the smallest key_length part, which must not exceed m
  double bias_bound = 0;               // max |finite bias entry|
  std::uint8_t function_bits = 0;      // bits 2–7 of byte 11: the score and mask functions
};

template <typename Scalar>
void add_part(MaskSpec& spec, const Mask& part, const ReferenceMask& reference,
              PartBuilder block = {}) {
  spec.mask = spec.mask & part;  // may throw: decided by the caller
  spec.reference = spec.reference & reference;
  if (!block) block = [part](Index, Index, Index, Index) { return part; };  // (of positions)
  spec.parts.push_back(std::move(block));
}

/// The mask of a block of the whole problem (see PartBuilder).
Mask block_mask(const MaskSpec& spec, Index first_row, Index first_col, Index rows, Index cols) {
  Mask mask;
  for (const PartBuilder& part : spec.parts)
    mask = mask & part(first_row, first_col, rows, cols);
  return mask;
}

/// Decodes the mask; returns false if building it threw, as it had to.
template <typename Scalar>
bool decode_mask(Input& in, const Problem& p, MaskSpec& spec) {
  const std::uint8_t parts_byte = in.byte();
  const int parts = parts_byte % 4;
  spec.function_bits = static_cast<std::uint8_t>(parts_byte >> 2);
  for (int part = 0; part < parts; ++part) {
    const std::uint8_t kind = in.byte();
    const std::uint8_t parameter = in.byte();
    const bool wrong_shape = (kind >> 4) == 15;  // 1 in 16: an explicit part of the wrong shape
    const Index rows = p.n + (wrong_shape && (kind & 8) ? 1 : 0);
    const Index cols = p.m + (wrong_shape && !(kind & 8) ? 1 : 0);
    const auto check_pair = [&](const std::vector<std::pair<Index, Index>>& shapes) {
      // operator& must reject explicit parts of one kind with different shapes.
      return !shapes.empty() && shapes.front() != std::make_pair(rows, cols);
    };
    switch (kind % 6) {
      case 0:
        if (parameter < 128) {
          spec.description += " & none";
        } else {  // key_length(count), count up to m + 2 (beyond m: the call must throw)
          const Index count = (parameter - 128) % (p.m + 3);
          spec.description += " & key_length(" + std::to_string(count) + ")";
          add_part<Scalar>(spec, Mask::key_length(count), ReferenceMask::key_length(count));
          if (spec.key_length == Mask::unbounded || count < spec.key_length)
            spec.key_length = count;
        }
        break;
      case 1:
        spec.description += " & causal";
        add_part<Scalar>(spec, Mask::causal(), ReferenceMask::causal());
        break;
      case 2: {
        const Index left = reach(parameter), right = reach(in.byte());
        spec.description +=
            " & window(" + std::to_string(left) + ", " + std::to_string(right) + ")";
        const bool invalid =
            (left < 0 && left != Mask::unbounded) || (right < 0 && right != Mask::unbounded);
        Mask window;
        try {
          window = Mask::window(left, right);
        } catch (const attn::ShapeError&) {
          if (invalid) return false;
          fail("Mask::window(" + std::to_string(left) + ", " + std::to_string(right) +
               ") threw ShapeError for valid reaches");
        }
        if (invalid) fail("Mask::window accepted an invalid reach" + spec.description);
        add_part<Scalar>(spec, window, ReferenceMask::window(left, right));
        break;
      }
      case 3: {
        const double density = parameter / 255.0;
        MatrixB keep(rows, cols);
        for (Index i = 0; i < rows; ++i) {
          for (Index j = 0; j < cols; ++j)
            keep(i, j) = in.uniform() < density;
        }
        if (rows > 0 && (parameter & 1)) keep.row(in.byte() % rows).setConstant(false);
        spec.description += " & keep(" + attn::detail::shape_string(rows, cols) + ")";
        const bool mismatch = check_pair(spec.keep_shapes);
        spec.keep_shapes.emplace_back(rows, cols);
        try {
          add_part<Scalar>(spec, Mask::keep(keep), ReferenceMask::keep(keep),
                           [keep](Index i0, Index j0, Index r, Index c) {
                             return Mask::keep(keep.block(i0, j0, r, c));
                           });
        } catch (const attn::ShapeError&) {
          if (mismatch) return false;
          fail("operator& threw ShapeError for keep parts of one shape" + spec.description);
        }
        if (mismatch) fail("operator& accepted keep parts of different shapes" + spec.description);
        break;
      }
      default: {  // bias: 4 in the call's precision, 5 in the other
        const bool as_double = ((kind % 6) == 5) != p.is_double;
        static constexpr double steps[] = {1.0 / 16, 1.0 / 1024, 1.0, 1.0 / 4};
        const double step = steps[parameter % 4];
        const bool plus_infinity = (parameter & 0x30) == 0x30;  // 1 in 4: +∞ somewhere
        const auto make = [&](auto tag) {
          using B = decltype(tag);
          attn::Matrix<B> bias = read_matrix<B>(in, rows, cols, step);  // −128 gives denorm_min …
          for (Index i = 0; i < rows; ++i) {
            for (Index j = 0; j < cols; ++j) {  // … which becomes −∞ here
              if (bias(i, j) == std::numeric_limits<B>::denorm_min())
                bias(i, j) = -std::numeric_limits<B>::infinity();
            }
          }
          if (p.nan) {  // 127 × step is NaN
            const B nan_code = static_cast<B>(127 * step);
            for (Index i = 0; i < rows; ++i) {
              for (Index j = 0; j < cols; ++j) {
                if (bias(i, j) == nan_code) bias(i, j) = std::numeric_limits<B>::quiet_NaN();
              }
            }
          }
          if (rows > 0 && (parameter & 4)) {
            bias.row(in.byte() % rows).setConstant(-std::numeric_limits<B>::infinity());
          }
          if (plus_infinity && bias.size() > 0) {
            const Index i = in.byte() % rows;
            const Index j = in.byte() % cols;
            bias(i, j) = std::numeric_limits<B>::infinity();
          }
          return bias;
        };
        Mask bias_part;
        ReferenceMask reference;
        PartBuilder bias_block;
        bool has_plus_infinity = false;
        const auto build = [&](const auto& bias) {
          using B = typename std::decay_t<decltype(bias)>::Scalar;
          has_plus_infinity = (bias.array() == std::numeric_limits<B>::infinity()).any();
          for (Index i = 0; i < bias.rows(); ++i) {
            for (Index j = 0; j < bias.cols(); ++j) {
              if (std::isfinite(bias(i, j))) {
                spec.bias_bound =
                    std::max(spec.bias_bound, std::abs(static_cast<double>(bias(i, j))));
              }
            }
          }
          try {
            bias_part = Mask::bias(bias);
          } catch (const attn::ShapeError&) {
            if (has_plus_infinity) return false;
            fail("Mask::bias threw ShapeError for a bias without +inf" + spec.description);
          }
          if (has_plus_infinity) fail("Mask::bias accepted +inf" + spec.description);
          reference = ReferenceMask::bias(bias);
          bias_block = [bias](Index i0, Index j0, Index r, Index c) {
            return Mask::bias(bias.block(i0, j0, r, c));
          };
          return true;
        };
        spec.description += std::string(" & bias<") + (as_double ? "double" : "float") + ">(" +
                            attn::detail::shape_string(rows, cols) + ")";
        const bool built = as_double ? build(make(double())) : build(make(float()));
        if (!built) return false;
        const bool mismatch = check_pair(spec.bias_shapes);
        spec.bias_shapes.emplace_back(rows, cols);
        try {
          add_part<Scalar>(spec, bias_part, reference, bias_block);
        } catch (const attn::ShapeError&) {
          if (mismatch) return false;
          fail("operator& threw ShapeError for bias parts of one shape" + spec.description);
        }
        if (mismatch) fail("operator& accepted bias parts of different shapes" + spec.description);
        break;
      }
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Score and mask functions (attn::ScoreMask)
// ---------------------------------------------------------------------------------------------

/// The user's score function: a wave of the distance, stronger in later heads, computed in double
/// and rounded once to the kernel's Scalar (|wave(s) − s| ≤ 0.1·heads); and in head 1, −∞ (the
/// key hidden) at distances q − k of 2 modulo 5, whatever s is (NaN included).
template <typename S>
S wave(S s, Index h, Index q, Index k) {
  if (h == 1 && (q - k) % 5 == 2) return -std::numeric_limits<S>::infinity();
  return s +
         static_cast<S>(0.1 * static_cast<double>(h + 1) * std::sin(static_cast<double>(q - k)));
}

/// The user's mask function of the head, given without a block predicate.
bool scattered(Index h, Index q, Index k) {
  return (q * 7 + k * 3 + h) % 5 != 0;
}

/// The user's mask function of positions: causal within chunks of `chunk` positions (a query at
/// a negative position sees nothing).
bool chunked(Index chunk, Index q, Index k) {
  return q >= 0 && k <= q && q / chunk == k / chunk;
}

/// chunked's block predicate for queries [q0, q1) × keys [k0, k1): exact, or coarse (never all,
/// which is always allowed).
attn::Visibility chunked_blocks(Index chunk, bool exact, Index q0, Index q1, Index k0, Index k1) {
  const Index first = std::max<Index>(q0, 0), last = q1 - 1;
  if (last < first || k0 > last || last / chunk < k0 / chunk || first / chunk > (k1 - 1) / chunk)
    return attn::Visibility::none;
  const bool all =
      q0 >= 0 && first / chunk == (k1 - 1) / chunk && k0 / chunk == last / chunk && k1 - 1 <= first;
  return exact && all ? attn::Visibility::all : attn::Visibility::partial;
}

/// The mask functions, by their code (bits 4–6 of byte 11).
enum class MaskFunction {
  none,
  documents,
  prefix_lm,
  sinks,
  tree,
  scattered,
  chunked,
  chunked_coarse
};

using AlibiMask = decltype(attn::alibi(Index(1)));
using DocumentsMask = decltype(attn::documents(std::vector<Index>()));
using PrefixMask = decltype(attn::prefix_lm(0));
using SinksMask = decltype(attn::sinks(0, 0));
using TreeMask = decltype(attn::tree(std::vector<Index>()));
using TreeBound = decltype(std::declval<const TreeMask&>().mask().bind(0, 0, 0));

/// What one input asks for, shared by the score function, the mask function and the block
/// predicate below. They forward to the built-ins' own parts (attn::alibi, attn::documents, …,
/// whose checks and binding to the call's shape they pass on), so that every choice runs through
/// four ScoreMask types only: each type is a kernel instantiation, which the build pays for.
struct FunctionChoice {
  bool alibi = false, wave = false;
  MaskFunction kind = MaskFunction::none;
  Index chunk = 1;
  AlibiMask alibi_mask = attn::alibi(Index(1));
  DocumentsMask documents = attn::documents({});
  PrefixMask prefix = attn::prefix_lm(0);
  SinksMask sinks = attn::sinks(0, 0);
  TreeMask tree = attn::tree({});
};

struct FuzzScore {
  static constexpr bool additive = true;  // s + a shift of (h, q, k), or −∞: derivative 1
  std::shared_ptr<const FunctionChoice> c;
  template <typename S>
  S operator()(S s, Index h, Index q, Index k) const {
    if (c->alibi) s = c->alibi_mask.score()(s, h, q, k);
    if (c->wave) s = wave(s, h, q, k);
    return s;
  }
  void check(const char* who, Index n, Index m, Index heads) const {
    if (c->alibi) c->alibi_mask.score().check(who, n, m, heads);
  }
};

struct FuzzMask {
  std::shared_ptr<const FunctionChoice> c;
  struct Bound {
    const FunctionChoice* c;
    TreeBound tree;
    bool operator()(Index h, Index q, Index k) const {
      switch (c->kind) {
        case MaskFunction::none:
          return true;
        case MaskFunction::documents:
          return c->documents.mask()(q, k);
        case MaskFunction::prefix_lm:
          return c->prefix.mask()(q, k);
        case MaskFunction::sinks:
          return c->sinks.mask()(q, k);
        case MaskFunction::tree:
          return tree(q, k);
        case MaskFunction::scattered:
          return scattered(h, q, k);
        default:
          return chunked(c->chunk, q, k);
      }
    }
  };
  void check(const char* who, Index n, Index m, Index heads) const {
    if (c->kind == MaskFunction::documents) c->documents.mask().check(who, n, m, heads);
    if (c->kind == MaskFunction::tree) c->tree.mask().check(who, n, m, heads);
  }
  Bound bind(Index n, Index m, Index heads) const {
    return {c.get(),
            c->kind == MaskFunction::tree ? c->tree.mask().bind(n, m, heads) : TreeBound{}};
  }
};

struct FuzzBlocks {
  std::shared_ptr<const FunctionChoice> c;
  struct Bound {
    const FunctionChoice* c;
    TreeBound tree;
    attn::Visibility operator()(Index h, Index q0, Index q1, Index k0, Index k1) const {
      switch (c->kind) {
        case MaskFunction::none:
          return attn::Visibility::all;
        case MaskFunction::documents:
          return c->documents.blocks()(h, q0, q1, k0, k1);
        case MaskFunction::prefix_lm:
          return c->prefix.blocks()(h, q0, q1, k0, k1);
        case MaskFunction::sinks:
          return c->sinks.blocks()(h, q0, q1, k0, k1);
        case MaskFunction::tree:
          return tree(q0, q1, k0, k1);
        case MaskFunction::scattered:
          return attn::Visibility::partial;  // (no predicate of its own)
        default:
          return chunked_blocks(c->chunk, c->kind == MaskFunction::chunked, q0, q1, k0, k1);
      }
    }
    attn::detail::KeyRange key_range(Index h, Index q0, Index q1) const {
      switch (c->kind) {
        case MaskFunction::documents:
          return c->documents.blocks().key_range(h, q0, q1);
        case MaskFunction::prefix_lm:
          return c->prefix.blocks().key_range(h, q0, q1);
        case MaskFunction::sinks:
          return c->sinks.blocks().key_range(h, q0, q1);
        case MaskFunction::tree:
          return tree.key_range(h, q0, q1);
        case MaskFunction::chunked: {  // keys from the first query's chunk to the last query
          const Index first = std::max<Index>(q0, 0);
          if (q1 <= first) return {0, 0};
          return {first / c->chunk * c->chunk, q1};
        }
        default:
          return {};
      }
    }
  };
  Bound bind(Index n, Index m, Index heads) const {
    return {c.get(),
            c->kind == MaskFunction::tree ? c->tree.mask().bind(n, m, heads) : TreeBound{}};
  }
};

/// The score and mask functions of one input, the ScoreMask they make, and the fuzzer's own
/// description of them for the reference (attn_test::LayerRule: support/reference_functions.hpp,
/// which knows nothing of attn).
struct FunctionSpec {
  std::shared_ptr<FunctionChoice> choice = std::make_shared<FunctionChoice>();
  bool valid = true;     // false: a call with them must throw ShapeError
  double shift = 0;      // bound on |score(s) − s| for this problem's positions and heads
  Index tree_nodes = 0;  // (a call needs at least as many keys)
  std::vector<double> slopes;
  std::vector<Index> document_lengths, parents;
  Index prefix = 0, sink_count = 0, sink_window = 0;
  std::string description;

  bool any() const { return choice->alibi || choice->wave || choice->kind != MaskFunction::none; }

  /// base and the functions in the most general type (what the functors are called with).
  auto general(const Mask& base) const {
    return base & (attn::score_function(FuzzScore{choice}) &
                   attn::mask_function(FuzzMask{choice}, FuzzBlocks{choice}));
  }

  /// Calls f with `base` and the functions as a ScoreMask: one of four types (score function
  /// only; mask function only, without or with its block predicate; everything), or base alone.
  template <typename F>
  void with_mask(const Mask& base, const F& f) const {
    const bool score = choice->alibi || choice->wave;
    const FuzzScore s{choice};
    const FuzzMask m{choice};
    const FuzzBlocks b{choice};
    if (choice->kind == MaskFunction::none) {
      if (score) return f(base & attn::score_function(s));
      return f(base);
    }
    if (score) return f(general(base));
    if (choice->kind == MaskFunction::scattered) return f(base & attn::mask_function(m));
    f(base & attn::mask_function(m, b));
  }

  /// The rule for a call with m keys (a tree's nodes are the last keys of the call).
  attn_test::LayerRule rule(Index m) const {
    attn_test::LayerRule r;
    if (choice->alibi) r = r & attn_test::layer_alibi(slopes);
    if (choice->wave) {
      r = r & attn_test::LayerRule{
                  [](double x, Index h, Index q, Index k) { return wave(x, h, q, k); }, {}};
    }
    switch (choice->kind) {
      case MaskFunction::documents:
        return r & attn_test::layer_documents(document_lengths);
      case MaskFunction::prefix_lm:
        return r & attn_test::layer_prefix_lm(prefix);
      case MaskFunction::sinks:
        return r & attn_test::layer_sinks(sink_count, sink_window);
      case MaskFunction::tree:
        return r & attn_test::layer_tree(parents, m);
      case MaskFunction::scattered:
        return r & attn_test::LayerRule{
                       {}, [](Index h, Index q, Index k) { return scattered(h, q, k); }};
      case MaskFunction::chunked:
      case MaskFunction::chunked_coarse: {
        const Index size = choice->chunk;
        return r &
               attn_test::layer_visible([size](Index q, Index k) { return chunked(size, q, k); });
      }
      default:
        return r;
    }
  }
};

/// Decodes the functions (function bits: 0–1 the score function {none, alibi, wave, alibi and
/// wave}, 2–4 the mask function (MaskFunction), 5 spoil: alibi with one slope too many,
/// documents that do not cover the keys, a tree of more nodes than keys), reading their
/// parameters after the mask's parts. Returns false if building one threw, as it had to.
bool decode_functions(Input& in, const Problem& p, std::uint8_t bits, FunctionSpec& f) {
  FunctionChoice& c = *f.choice;
  const Index n = p.n, m = p.m;
  const bool spoil = bits & 32;
  c.alibi = bits & 1;
  c.wave = bits & 2;
  c.kind = static_cast<MaskFunction>((bits >> 2) & 7);
  const Index heads = std::max<Index>(p.heads, 1);
  const double distance = static_cast<double>(std::max(n, m));
  if (c.wave) {
    f.shift += 0.1 * static_cast<double>(heads);
    f.description += " & wave";
  }
  if (c.alibi) {
    if (p.heads < 1) {  // attn::alibi must refuse the head count
      try {
        (void)attn::alibi(p.heads);
      } catch (const attn::ShapeError&) {
        return false;
      }
      fail("attn::alibi(" + std::to_string(p.heads) + ") accepted a head count below 1");
    }
    f.slopes = attn_test::layer_alibi_slopes(heads);
    const std::vector<double> library = attn::alibi_slopes(heads);
    for (std::size_t h = 0; h < f.slopes.size(); ++h) {
      if (!(std::abs(library[h] - f.slopes[h]) <= 1e-15 * f.slopes[h]))
        fail("attn::alibi_slopes(" + std::to_string(heads) + ")[" + std::to_string(h) + "] is " +
             std::to_string(library[h]) + ", expected " + std::to_string(f.slopes[h]));
    }
    if (spoil) {
      c.alibi_mask = attn::alibi(std::vector<double>(std::size_t(heads + 1), 0.5));
      f.valid = false;
      f.description += " & alibi(" + std::to_string(heads + 1) + " slopes)";
    } else {
      c.alibi_mask = attn::alibi(heads);
      f.description += " & alibi";
    }
    f.shift += *std::max_element(f.slopes.begin(), f.slopes.end()) * distance;
  }
  switch (c.kind) {
    case MaskFunction::documents: {
      const int count = 1 + in.byte() % 4;
      Index total = 0;
      for (int b = 0; b < count; ++b) {
        f.document_lengths.push_back(in.byte() % 24);
        total += f.document_lengths.back();
      }
      // The last document reaches past the keys unless spoiled (the call must then throw).
      if (!spoil) f.document_lengths.back() += std::max<Index>(m - total, 0) + in.byte() % 3;
      total = 0;
      for (const Index length : f.document_lengths)
        total += length;
      f.valid = f.valid && total >= m;
      c.documents = attn::documents(f.document_lengths);
      f.description += " & documents(" + std::to_string(count) + ", " + std::to_string(total) + ")";
      break;
    }
    case MaskFunction::prefix_lm:
      f.prefix = in.byte() % (m + 3);
      c.prefix = attn::prefix_lm(f.prefix);
      f.description += " & prefix_lm(" + std::to_string(f.prefix) + ")";
      break;
    case MaskFunction::sinks:
      f.sink_count = in.byte() % 8;
      f.sink_window = in.byte() % 64;
      c.sinks = attn::sinks(f.sink_count, f.sink_window);
      f.description +=
          " & sinks(" + std::to_string(f.sink_count) + ", " + std::to_string(f.sink_window) + ")";
      break;
    case MaskFunction::tree: {
      f.tree_nodes = spoil ? m + 1 : std::min<Index>(m, in.byte() % 9);
      for (Index t = 0; t < f.tree_nodes; ++t)
        f.parents.push_back(Index(in.byte() % (t + 1)) - 1);
      f.valid = f.valid && f.tree_nodes <= m;
      c.tree = attn::tree(f.parents);
      f.description += " & tree(" + std::to_string(f.tree_nodes) + " nodes)";
      break;
    }
    case MaskFunction::scattered:
      f.description += " & mask lambda (no block predicate)";
      break;
    case MaskFunction::chunked:
    case MaskFunction::chunked_coarse:
      c.chunk = 1 + in.byte() % 20;
      f.description += std::string(" & chunked(") + std::to_string(c.chunk) + ") with " +
                       (c.kind == MaskFunction::chunked ? "an exact" : "a coarse") +
                       " block predicate";
      break;
    default:
      break;
  }
  return true;
}

/// One head as attn_test::reference_attention computes it, with the functions of `rule` at
/// positions (query row i at i + m − n): the score function between soft-capping and the bias
/// (ScoreMask's order), and visibility and-ed with `allowed`. An empty rule is
/// reference_attention itself.
MatrixD reference_head(const MatrixD& q, const MatrixD& k, const MatrixD& v, const MatrixB& allowed,
                       const MatrixD& bias, double scale, double softcap, Index head,
                       const attn_test::LayerRule& rule) {
  const Index n = q.rows(), m = k.rows();
  if (!rule.score && !rule.visible)
    return attn_test::reference_attention(q, k, v, allowed, bias, scale, softcap);
  MatrixB visible = allowed;
  for (Index i = 0; i < n && rule.visible; ++i) {
    for (Index j = 0; j < m; ++j)
      visible(i, j) = visible(i, j) && rule.visible(head, i + m - n, j);
  }
  if (!rule.score) return attn_test::reference_attention(q, k, v, visible, bias, scale, softcap);
  // The score function is not additive in general: the logits are computed here, as
  // reference_attention does, with it in its place.
  constexpr double minus_infinity = -std::numeric_limits<double>::infinity();
  MatrixD out = MatrixD::Zero(n, v.cols());
  std::vector<double> s(static_cast<std::size_t>(m));
  for (Index i = 0; i < n; ++i) {
    double row_max = minus_infinity;
    for (Index j = 0; j < m; ++j) {
      double logit = minus_infinity;
      if (visible(i, j) && !(bias.size() != 0 && bias(i, j) == minus_infinity)) {
        double dot = 0;
        for (Index l = 0; l < q.cols(); ++l)
          dot += q(i, l) * k(j, l);
        logit = scale * dot;
        if (softcap > 0) logit = softcap * std::tanh(logit / softcap);
        logit = rule.score(logit, head, i + m - n, j);
        if (bias.size() != 0) logit += bias(i, j);
      }
      s[std::size_t(j)] = logit;
      row_max = std::max(row_max, logit);
    }
    if (row_max == minus_infinity) continue;
    double sum = 0;
    for (Index j = 0; j < m; ++j)
      sum += std::exp(s[std::size_t(j)] - row_max);
    for (Index j = 0; j < m; ++j) {
      const double weight = std::exp(s[std::size_t(j)] - row_max) / sum;
      if (weight == 0) continue;
      for (Index c = 0; c < v.cols(); ++c)
        out(i, c) += weight * v(j, c);
    }
  }
  return out;
}

/// reference_multi_head (scale 1/√d, no soft-cap: the functors'), with the functions of `rule`
/// (reference_head), except that empty q or k give the answer directly: Eigen's middleCols on an
/// empty matrix offsets its null data pointer, which UBSan reports (in the reference, not in
/// attn).
template <typename DQ, typename DK, typename DV>
MatrixD reference_heads(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                        const Eigen::MatrixBase<DV>& v, Index heads, Index kv_heads,
                        const ReferenceMask& mask, const attn_test::LayerRule& rule = {}) {
  if (q.rows() == 0 || k.rows() == 0) return MatrixD::Zero(q.rows(), heads * (v.cols() / kv_heads));
  if (!rule.score && !rule.visible)
    return attn_test::reference_multi_head(q, k, v, heads, kv_heads, mask);
  const Index n = q.rows(), m = k.rows();
  const Index d = q.cols() / heads, dv = v.cols() / kv_heads, group = heads / kv_heads;
  const MatrixB allowed = mask.allowed(n, m);
  MatrixD bias = mask.bias(n, m);
  if (bias.size() == 0) bias = MatrixD::Zero(n, m);
  const double scale = d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0;
  MatrixD out(n, heads * dv);
  for (Index h = 0; h < heads; ++h) {
    const Index g = h / group;
    out.middleCols(h * dv, dv) = reference_head(q.middleCols(h * d, d).template cast<double>(),
                                                k.middleCols(g * d, d).template cast<double>(),
                                                v.middleCols(g * dv, dv).template cast<double>(),
                                                allowed, bias, scale, 0, h, rule);
  }
  return out;
}

/// reference_mha (projections, attention, output projection) through reference_heads.
template <typename Scalar>
MatrixD reference_layer(const attn::Matrix<Scalar>& target, const attn::Matrix<Scalar>& source,
                        const attn::MultiHeadWeights<Scalar>& weights, Index heads, Index kv_heads,
                        const ReferenceMask& mask, const attn_test::LayerRule& rule = {}) {
  const attn_test::ReferenceWeights w = attn_test::reference_weights(weights);
  const MatrixD q = attn_test::reference_linear(target, w.q_weight, w.q_bias);
  const MatrixD k = attn_test::reference_linear(source, w.k_weight, w.k_bias);
  const MatrixD v = attn_test::reference_linear(source, w.v_weight, w.v_bias);
  return attn_test::reference_linear(reference_heads(q, k, v, heads, kv_heads, mask, rule),
                                     w.out_weight, w.out_bias);
}

/// Compares a functor's result with the reference: no NaN or ∞ where the reference is finite, and
/// the documented tolerance everywhere.
template <typename Scalar>
void compare(const char* what, const attn::Matrix<Scalar>& got, const MatrixD& expected,
             double tolerance, const std::string& context) {
  if (got.rows() != expected.rows() || got.cols() != expected.cols()) {
    fail(std::string(what) + ": result is " + attn::detail::shape_string(got) + ", expected " +
         attn::detail::shape_string(expected) + context);
  }
  for (Index i = 0; i < got.rows(); ++i) {
    for (Index c = 0; c < got.cols(); ++c) {
      const double x = static_cast<double>(got(i, c)), y = expected(i, c);
      char buffer[256];
      if (!std::isfinite(x)) {
        std::snprintf(buffer, sizeof buffer, "%s: (%ld, %ld) is %g where the reference is %.17g",
                      what, static_cast<long>(i), static_cast<long>(c), x, y);
        fail(buffer + context);
      }
      const double error = std::abs(x - y) / std::max(1.0, std::abs(y));
      if (!(error <= tolerance)) {
        std::snprintf(buffer, sizeof buffer,
                      "%s: (%ld, %ld) is %.17g, the reference %.17g: error %.3g > tolerance %.3g",
                      what, static_cast<long>(i), static_cast<long>(c), x, y, error, tolerance);
        fail(buffer + context);
      }
    }
  }
}

/// Runs `call`, which must throw ShapeError iff `invalid`; returns true if it returned normally.
template <typename Call>
bool expect_shape_error_iff(bool invalid, const char* what, const std::string& context,
                            const Call& call) {
  try {
    call();
  } catch (const attn::ShapeError& e) {
    if (!invalid)
      fail(std::string(what) + " threw ShapeError for a valid problem: " + e.what() + context);
    return false;
  } catch (const std::exception& e) {
    fail(std::string(what) + " threw something other than ShapeError: " + e.what() + context);
  } catch (...) {
    fail(std::string(what) + " threw a non-std::exception" + context);
  }
  if (invalid) fail(std::string(what) + " accepted an invalid problem" + context);
  return true;
}

// ---------------------------------------------------------------------------------------------
// The backward pass (attn::scaled_dot_product_attention_backward)
// ---------------------------------------------------------------------------------------------

/// The fuzzer's score functions (ALiBi, the wave, both) are additive (FuzzScore::additive), so
/// the backward differentiates them with a derivative of 1, and the reference takes them as a
/// bias per head (expected_gradients' score_shift); their shift is in the logit bound
/// (FunctionSpec::shift). Turning this off skips the backward check for them.
constexpr bool backward_differentiates_score_functions = true;

/// Whether the backward check can call the backward with mask type M.
template <typename M>
constexpr bool backward_takes() {
  using SM = std::decay_t<decltype(attn::detail::as_score_mask(std::declval<const M&>()))>;
  return backward_differentiates_score_functions || !SM::has_score;
}

/// Whether an operand as the forward was given it is one the backward takes: an Eigen expression
/// in Scalar (not a reduced storage type, a QuantizedView or a PagedView).
template <typename Scalar, typename T>
constexpr bool dense_in() {
  using D = std::decay_t<T>;
  if constexpr (std::is_base_of_v<Eigen::MatrixBase<D>, D>) {
    return std::is_same_v<typename D::Scalar, Scalar>;
  } else {
    return false;
  }
}

/// Only problems of at most this n·m·H·(d + dv + 1) get the backward check: its fp64 reference
/// (reference_gradients: the weights, then the chain rule) costs about three times the forward's
/// (whose limit is 2e6), some 0.6 µs per unit of work in this build, and the inputs that reach the
/// backward's code are those the fuzzer keeps. 2.5e5 still holds two query tiles over two key
/// blocks (n = m = 130 with d = dv = 8, or n = 70, m = 130 and two heads).
constexpr double backward_work_limit = 2.5e5;

template <typename Scalar>
bool bitwise_equal(const attn::Matrix<Scalar>& a, const attn::Matrix<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(),
                                       sizeof(Scalar) * static_cast<std::size_t>(a.size())) == 0);
}

/// What the library gave for the backward check: the forward's output and log-sum-exp (through
/// AttentionExtras) and the gradients.
template <typename Scalar>
struct LibraryBackward {
  bool ran = false;
  attn::Matrix<Scalar> out, lse, dq, dk, dv;
};

/// The forward with AttentionExtras::log_sum_exp (its output bitwise that of the checked call
/// `forward`), then the backward on the operands exactly as the forward took them: by value, or
/// (p.into) into blocks of larger sentinel-filled matrices, of which nothing else may change; with
/// two threads (p.threads), again with the serial executor, which must give bitwise the same.
template <typename Scalar, typename Q, typename K, typename V, typename M>
void library_backward(const Q& q, const K& k, const V& v, const M& mask,
                      const attn::AttentionOptions& options, const Problem& p,
                      const attn::Matrix<Scalar>& forward, const attn::Matrix<Scalar>& d_out,
                      LibraryBackward<Scalar>& r, const std::string& context) {
  attn::AttentionExtras<Scalar> extras;
  extras.log_sum_exp = &r.lse;
  expect_shape_error_iff(false, "scaled_dot_product_attention with log_sum_exp", context, [&] {
    r.out = attn::scaled_dot_product_attention(q, k, v, mask, options, extras);
  });
  if (!bitwise_equal(r.out, forward)) {
    fail(
        "scaled_dot_product_attention with AttentionExtras::log_sum_exp gave another output than "
        "without" +
        context);
  }
  if (r.lse.rows() != q.rows() || r.lse.cols() != options.num_heads)
    fail("log_sum_exp is " + attn::detail::shape_string(r.lse) + context);
  if (p.into) {
    const Scalar sentinel = Scalar(-1234.5);
    const auto wide = [&](Index rows, Index cols) {
      return attn::Matrix<Scalar>::Constant(rows + 2, cols + 3, sentinel);
    };
    attn::Matrix<Scalar> dq = wide(q.rows(), q.cols()), dk = wide(k.rows(), k.cols()),
                         dv = wide(v.rows(), v.cols());
    expect_shape_error_iff(false, "scaled_dot_product_attention_backward_into", context, [&] {
      attn::scaled_dot_product_attention_backward_into(
          q, k, v, r.out, r.lse, d_out, dq.block(1, 1, q.rows(), q.cols()),
          dk.block(1, 1, k.rows(), k.cols()), dv.block(1, 1, v.rows(), v.cols()), mask, options);
    });
    const auto take = [&](attn::Matrix<Scalar>& all, Index rows, Index cols, const char* name) {
      attn::Matrix<Scalar> block = all.block(1, 1, rows, cols);
      all.block(1, 1, rows, cols).setConstant(sentinel);
      if (!(all.array() == sentinel).all())
        fail(std::string("scaled_dot_product_attention_backward_into wrote outside ") + name +
             context);
      return block;
    };
    r.dq = take(dq, q.rows(), q.cols(), "dq");
    r.dk = take(dk, k.rows(), k.cols(), "dk");
    r.dv = take(dv, v.rows(), v.cols(), "dv");
  } else {
    expect_shape_error_iff(false, "scaled_dot_product_attention_backward", context, [&] {
      attn::AttentionGradients<Scalar> g =
          attn::scaled_dot_product_attention_backward(q, k, v, r.out, r.lse, d_out, mask, options);
      r.dq = std::move(g.dq);
      r.dk = std::move(g.dk);
      r.dv = std::move(g.dv);
    });
  }
  r.ran = true;
  if (!p.threads) return;
  attn::AttentionOptions serial = options;
  serial.executor = attn::serial_executor;
  attn::AttentionGradients<Scalar> g;
  expect_shape_error_iff(false, "scaled_dot_product_attention_backward (serial)", context, [&] {
    g = attn::scaled_dot_product_attention_backward(q, k, v, r.out, r.lse, d_out, mask, serial);
  });
  if (!bitwise_equal(g.dq, r.dq) || !bitwise_equal(g.dk, r.dk) || !bitwise_equal(g.dv, r.dv)) {
    fail(std::string("scaled_dot_product_attention_backward") + (p.into ? "_into" : "") +
         " with thread_executor(2) is not bitwise the serial executor's (dq " +
         (bitwise_equal(g.dq, r.dq) ? "same" : "differs") + ", dk " +
         (bitwise_equal(g.dk, r.dk) ? "same" : "differs") + ", dv " +
         (bitwise_equal(g.dv, r.dv) ? "same" : "differs") + ")" + context);
  }
}

/// An additive score function's shift at head h, query row i and key row j (visible pairs only);
/// empty without one.
using ScoreShift = std::function<double(Index h, Index i, Index j)>;

/// The fp64 reference gradients and, entry by entry, a bound on the library's error.
struct ExpectedGradients {
  MatrixD dq, dk, dv;  // attn_test::reference_gradients
  MatrixD dq_bound, dk_bound, dv_bound;
  MatrixB dq_zero, dk_zero, dv_zero;  // rows (per head) that see no key, keys no query sees
};

/// The reference gradients, head by head (reference_gradients with one head, its visibility as a
/// keep matrix, so that mask functions of the head enter as the forward's reference has them),
/// and the error bound of each entry (see the top of the file): a first-order model of the
/// backward's rounding, in terms of the magnitudes the reference's own weights P give.
///
/// With δ = 2·attention_tolerance(B, m) (B: the forward's logit bound), the kernel's P̂ = exp(ŝ −
/// lse), recomputed logits less the forward's log-sum-exp, each within the forward's model of a
/// logit error, has |P̂ − P| ≤ EP = min(1, P·(e^δ − 1)) + F (F: Scalar's smallest normal, for exp
/// underflowing) and P̂ ≤ Pu = P + EP. With R_i = Σ_e |dO(i, e)|·max_j |V(j, e)| + 2·dv·tiny, a bound
/// on |dP(i, j)| = |dO(i)·V(j)| and on |D_i| = |dO(i)·O(i)| (tiny: the smallest subnormal, for
/// products that underflow), and γ_k = k·u (a length-k sum of rounded terms, in any order):
///   |ΔdS(i, j)| ≤ R_i·(2·EP + Pu·(ΣEP_i + γ_m + 2·γ_dv + 12u + 4δ/softcap)) + 2·tiny
/// (P's error times |dP − D| ≤ 2R; the error of D through the forward's O, ΣEP_i + γ_m of max|V|;
/// the two length-dv dots; the few roundings of dS, 1 − t² and the scale; with a softcap, 1 − t²'s
/// error through t), and then, summing over m keys for dQ and over the N = n·H/Hkv rows of a
/// group for dK and dV:
///   |ΔdQ(i, l)| ≤ |scale|·Σ_j (|ΔdS| + 2γ_m·Pu·R_i)·|K(j, l)| + (m + 2)·tiny
///   |ΔdK(j, l)| ≤ |scale|·Σ_(h,i) (|ΔdS| + 2γ_N·Pu·R_i)·|Q(i, l)| + (N + 2)·tiny
///   |ΔdV(j, e)| ≤ Σ_(h,i) (EP + γ_N·Pu)·|dO(i, e)| + (N + 2)·tiny,
/// all times 2 for float (the second order, the reference's own error is negligible) and 4 for
/// double (where the reference errs about as much as the library).
template <typename Scalar>
ExpectedGradients expected_gradients(const attn::Matrix<Scalar>& q, const attn::Matrix<Scalar>& k,
                                     const attn::Matrix<Scalar>& v,
                                     const attn::Matrix<Scalar>& d_out,
                                     const std::vector<MatrixB>& visible_by_head,
                                     const MatrixD& bias, const ScoreShift& score_shift,
                                     Index heads, Index kv_heads, Index d, Index dv, double scale,
                                     double softcap, double logit_bound) {
  const Index n = q.rows(), m = k.rows(), group = heads / kv_heads;
  constexpr double minus_infinity = -std::numeric_limits<double>::infinity();
  const double u = Eigen::NumTraits<Scalar>::epsilon();
  const double tiny = std::numeric_limits<Scalar>::denorm_min();
  const double floor = std::numeric_limits<Scalar>::min();
  const double delta = 2 * attn_test::attention_tolerance<Scalar>(logit_bound, m);
  const double relative = std::expm1(delta);
  const double rows = static_cast<double>(n * group);  // N
  const double gamma_m = static_cast<double>(m) * u, gamma_n = rows * u;
  const double gamma_dv = static_cast<double>(dv) * u;
  const double cap = softcap > 0 ? 4 * delta / softcap : 0.0;
  const double margin = std::is_same_v<Scalar, float> ? 2.0 : 4.0;

  ExpectedGradients e{MatrixD::Zero(n, heads * d),         MatrixD::Zero(m, kv_heads * d),
                      MatrixD::Zero(m, kv_heads * dv),     MatrixD::Zero(n, heads * d),
                      MatrixD::Zero(m, kv_heads * d),      MatrixD::Zero(m, kv_heads * dv),
                      MatrixB::Constant(n, heads, true),   MatrixB::Constant(m, kv_heads, true),
                      MatrixB::Constant(m, kv_heads, true)};
  if (n == 0 || m == 0) return e;  // (and Eigen blocks of empty matrices offset a null pointer)
  const MatrixD qd = q.template cast<double>(), kd = k.template cast<double>();
  const MatrixD vd = v.template cast<double>(), dod = d_out.template cast<double>();
  for (Index h = 0; h < heads; ++h) {
    const Index g = h / group;
    const MatrixB& allowed = visible_by_head[static_cast<std::size_t>(h)];
    // The head's bias: the mask's, plus the score function's shift where the key is visible.
    MatrixD head_bias = bias;
    if (score_shift) {
      for (Index i = 0; i < n; ++i) {
        for (Index j = 0; j < m; ++j) {
          if (allowed(i, j)) head_bias(i, j) += score_shift(h, i, j);
        }
      }
    }
    const MatrixD qh = qd.middleCols(h * d, d), kg = kd.middleCols(g * d, d);
    const MatrixD vg = vd.middleCols(g * dv, dv), doh = dod.middleCols(h * dv, dv);
    const attn_test::ReferenceGradients r = attn_test::reference_gradients(
        qh, kg, vg, doh, 1, 1, ReferenceMask::keep(allowed) & ReferenceMask::bias(head_bias), scale,
        softcap);
    e.dq.middleCols(h * d, d) = r.dq;
    e.dk.middleCols(g * d, d) += r.dk;
    e.dv.middleCols(g * dv, dv) += r.dv;

    // The weights P for the bounds, as reference_attention defines them, through an Eigen product
    // (the coefficient loops of the reference are slow in this build; the values compared come
    // from reference_gradients above).
    MatrixD p = scale * (qh * kg.transpose());
    MatrixD ep = MatrixD::Zero(n, m);
    for (Index i = 0; i < n; ++i) {
      double row_max = minus_infinity;
      for (Index j = 0; j < m; ++j) {
        double& logit = p(i, j);
        if (softcap > 0) logit = softcap * std::tanh(logit / softcap);
        logit = allowed(i, j) ? logit + head_bias(i, j) : minus_infinity;
        row_max = std::max(row_max, logit);
      }
      if (row_max == minus_infinity) {
        p.row(i).setZero();
        continue;
      }
      double sum = 0;
      for (Index j = 0; j < m; ++j) {
        p(i, j) = std::exp(p(i, j) - row_max);
        sum += p(i, j);
      }
      for (Index j = 0; j < m; ++j) {
        p(i, j) /= sum;
        if (!allowed(i, j) || head_bias(i, j) == minus_infinity) continue;
        ep(i, j) = std::min(1.0, p(i, j) * relative) + floor;
        e.dq_zero(i, h) = false;
        e.dk_zero(j, g) = false;
        e.dv_zero(j, g) = false;
      }
    }
    const MatrixD pu = p + ep;
    attn_test::VectorD v_max = attn_test::VectorD::Zero(dv);
    for (Index c = 0; c < dv; ++c)
      v_max(c) = vg.col(c).cwiseAbs().maxCoeff();
    const attn_test::VectorD r_rows =
        (doh.cwiseAbs() * v_max).array() + 2 * static_cast<double>(dv) * tiny;
    const attn_test::VectorD ep_sums = ep.rowwise().sum();
    MatrixD ds_error(n, m);
    for (Index i = 0; i < n; ++i) {
      const double factor = ep_sums(i) + gamma_m + 2 * gamma_dv + 12 * u + cap;
      for (Index j = 0; j < m; ++j) {
        ds_error(i, j) =
            r_rows(i) * (2 * ep(i, j) + pu(i, j) * factor) + (ep(i, j) > 0 ? 2 * tiny : 0.0);
      }
    }
    const MatrixD weighted = pu.array().colwise() * r_rows.array();  // Pu·R_i
    e.dq_bound.middleCols(h * d, d) =
        (std::abs(scale) * (ds_error + 2 * gamma_m * weighted) * kg.cwiseAbs()).array() +
        (static_cast<double>(m) + 2) * tiny;
    e.dk_bound.middleCols(g * d, d) +=
        std::abs(scale) * (ds_error + 2 * gamma_n * weighted).transpose() * qh.cwiseAbs();
    e.dv_bound.middleCols(g * dv, dv) += (ep + gamma_n * pu).transpose() * doh.cwiseAbs();
  }
  e.dk_bound.array() += (rows + 2) * tiny;
  e.dv_bound.array() += (rows + 2) * tiny;
  e.dq_bound *= margin;
  e.dk_bound *= margin;
  e.dv_bound *= margin;
  return e;
}

/// One gradient against the reference: finite, within its bound, and exactly zero in the rows
/// (per head) that `zero` marks: a query row that sees no key, a key that no query sees.
template <typename Scalar>
void compare_gradient(const char* what, const attn::Matrix<Scalar>& got, const MatrixD& expected,
                      const MatrixD& bound, const MatrixB& zero, Index width,
                      const std::string& context) {
  if (got.rows() != expected.rows() || got.cols() != expected.cols()) {
    fail(std::string(what) + " is " + attn::detail::shape_string(got) + ", expected " +
         attn::detail::shape_string(expected) + context);
  }
  for (Index i = 0; i < got.rows(); ++i) {
    for (Index c = 0; c < got.cols(); ++c) {
      const double x = static_cast<double>(got(i, c)), y = expected(i, c);
      const double error = std::abs(x - y);
      const Index head = c / width;
      char buffer[320];
      if (zero(i, head) && x != 0) {
        std::snprintf(buffer, sizeof buffer,
                      "%s(%ld, %ld) is %.9g, but its row sees no key of head %ld (expected 0)",
                      what, static_cast<long>(i), static_cast<long>(c), x, static_cast<long>(head));
        fail(buffer + context);
      }
      if (!std::isfinite(x) || !(error <= bound(i, c))) {
        std::snprintf(buffer, sizeof buffer,
                      "%s(%ld, %ld) (head %ld) is %.17g, the reference %.17g: error %.3g > bound "
                      "%.3g",
                      what, static_cast<long>(i), static_cast<long>(c), static_cast<long>(head), x,
                      y, error, bound(i, c));
        fail(buffer + context);
      }
    }
  }
}

/// The backward check of one problem (see the top): the library's gradients against
/// expected_gradients; then, with p.positions, the problem cut into query blocks × key parts, each
/// a backward call placed by AttentionOptions::positions with the whole's out, log-sum-exp and
/// d_out rows: summed over the key parts, the blocks' dq rows must be the whole's, and summed over
/// the query blocks, the parts' dk and dv rows too (each within twice the whole's bound, as both
/// are within it of the reference, plus the rounding of the sum).
template <typename Scalar>
void check_backward(const Problem& p, const MaskSpec& spec, const FunctionSpec& functions,
                    const attn::Matrix<Scalar>& q, const attn::Matrix<Scalar>& k,
                    const attn::Matrix<Scalar>& v, const attn::Matrix<Scalar>& d_out,
                    const LibraryBackward<Scalar>& whole,
                    const std::vector<MatrixB>& visible_by_head, const MatrixD& bias,
                    const ScoreShift& score_shift, Index heads, Index kv_heads, Index d, Index dv,
                    double scale, const attn::AttentionOptions& options, attn_test::Random& side,
                    double logit_bound, const std::string& context) {
  const Index n = q.rows(), m = k.rows();
  const ExpectedGradients e =
      expected_gradients(q, k, v, d_out, visible_by_head, bias, score_shift, heads, kv_heads, d, dv,
                         scale, p.softcap, logit_bound);
  const char* const name = p.into ? "scaled_dot_product_attention_backward_into"
                                  : "scaled_dot_product_attention_backward";
  const std::string what = std::string(name) + ": ";
  compare_gradient((what + "dq").c_str(), whole.dq, e.dq, e.dq_bound, e.dq_zero, d, context);
  compare_gradient((what + "dk").c_str(), whole.dk, e.dk, e.dk_bound, e.dk_zero, d, context);
  compare_gradient((what + "dv").c_str(), whole.dv, e.dv, e.dv_bound, e.dv_zero, dv, context);

  // A key that no query of its kv head sees may hold anything (gradients.hpp): with NaN in those
  // rows of k and v (that head's columns), the forward and the backward again must give the same
  // gradients within the bounds, the NaN rows' dk and dv exactly zero.
  attn::Matrix<Scalar> k_nan = k, v_nan = v;
  bool any_hidden = false;
  for (Index j = 0; j < m; ++j) {
    for (Index g = 0; g < kv_heads; ++g) {
      if (!e.dk_zero(j, g)) continue;
      any_hidden = true;
      k_nan.row(j).segment(g * d, d).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
      v_nan.row(j).segment(g * dv, dv).setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    }
  }
  if (any_hidden && n > 0) {
    const std::string nan_context = context + ", NaN in the keys and values no query sees";
    attn::Matrix<Scalar> out, lse;
    attn::AttentionGradients<Scalar> g;
    functions.with_mask(spec.mask, [&](const auto& mask) {
      if constexpr (backward_takes<std::decay_t<decltype(mask)>>()) {
        attn::AttentionExtras<Scalar> extras;
        extras.log_sum_exp = &lse;
        expect_shape_error_iff(
            false, "scaled_dot_product_attention (hidden NaN)", nan_context, [&] {
              out = attn::scaled_dot_product_attention(q, k_nan, v_nan, mask, options, extras);
            });
        expect_shape_error_iff(false, "scaled_dot_product_attention_backward (hidden NaN)",
                               nan_context, [&] {
                                 g = attn::scaled_dot_product_attention_backward(
                                     q, k_nan, v_nan, out, lse, d_out, mask, options);
                               });
      } else {
        fail("fuzzer bug: the hidden NaN check reached a mask the backward does not take" +
             context);
      }
    });
    compare_gradient("scaled_dot_product_attention_backward: dq", g.dq, e.dq, e.dq_bound, e.dq_zero,
                     d, nan_context);
    compare_gradient("scaled_dot_product_attention_backward: dk", g.dk, e.dk, e.dk_bound, e.dk_zero,
                     d, nan_context);
    compare_gradient("scaled_dot_product_attention_backward: dv", g.dv, e.dv, e.dv_bound, e.dv_zero,
                     dv, nan_context);
  }

  // A tree's nodes are the last keys of one call: positions would not move it (the library
  // cannot tell, as the fuzzer's mask function forwards to it).
  if (!p.positions || functions.choice->kind == MaskFunction::tree || n == 0 || m == 0 ||
      (n < 2 && m < 2)) {
    return;
  }
  const Index i1 = n >= 2 ? side.integer(1, n - 1) : n;  // query blocks [0, i1), [i1, n)
  const Index j1 = m >= 2 ? side.integer(1, m - 1) : m;  // key parts [0, j1), [j1, m)
  const std::string cut =
      ", positions: query blocks at " + std::to_string(i1) + ", key parts at " + std::to_string(j1);
  attn::Matrix<Scalar> dq = attn::Matrix<Scalar>::Zero(n, q.cols());
  attn::Matrix<Scalar> dk = attn::Matrix<Scalar>::Zero(m, k.cols());
  attn::Matrix<Scalar> dv_sum = attn::Matrix<Scalar>::Zero(m, v.cols());
  MatrixD dq_abs = MatrixD::Zero(n, q.cols()), dk_abs = MatrixD::Zero(m, k.cols());
  MatrixD dv_abs = MatrixD::Zero(m, v.cols());
  for (const Index i0 : {Index(0), i1}) {
    for (const Index j0 : {Index(0), j1}) {
      const Index rows = i0 == 0 ? i1 : n - i1, cols = j0 == 0 ? j1 : m - j1;
      if (rows == 0 || cols == 0) continue;
      attn::AttentionOptions placed = options;
      placed.positions = attn::Positions{i0 + m - n, j0, 0};
      attn::AttentionGradients<Scalar> g;
      const std::string where = cut + ", block of rows [" + std::to_string(i0) + ", " +
                                std::to_string(i0 + rows) + ") × keys [" + std::to_string(j0) +
                                ", " + std::to_string(j0 + cols) + ")";
      functions.with_mask(block_mask(spec, i0, j0, rows, cols), [&](const auto& mask) {
        if constexpr (backward_takes<std::decay_t<decltype(mask)>>()) {
          expect_shape_error_iff(
              false, "scaled_dot_product_attention_backward with positions", context + where, [&] {
                g = attn::scaled_dot_product_attention_backward(
                    q.middleRows(i0, rows), k.middleRows(j0, cols), v.middleRows(j0, cols),
                    whole.out.middleRows(i0, rows), whole.lse.middleRows(i0, rows),
                    d_out.middleRows(i0, rows), mask, placed);
              });
        } else {
          fail("fuzzer bug: the positions check reached a mask the backward does not take" +
               context);
        }
      });
      dq.middleRows(i0, rows) += g.dq;
      dk.middleRows(j0, cols) += g.dk;
      dv_sum.middleRows(j0, cols) += g.dv;
      dq_abs.middleRows(i0, rows) += g.dq.template cast<double>().cwiseAbs();
      dk_abs.middleRows(j0, cols) += g.dk.template cast<double>().cwiseAbs();
      dv_abs.middleRows(j0, cols) += g.dv.template cast<double>().cwiseAbs();
    }
  }
  const double u = Eigen::NumTraits<Scalar>::epsilon();
  const auto agree = [&](const char* gradient, const attn::Matrix<Scalar>& parts,
                         const attn::Matrix<Scalar>& all, const MatrixD& bound,
                         const MatrixD& magnitude) {
    for (Index i = 0; i < parts.rows(); ++i) {
      for (Index c = 0; c < parts.cols(); ++c) {
        const double x = static_cast<double>(parts(i, c)), y = static_cast<double>(all(i, c));
        const double limit = 2 * bound(i, c) + 2 * u * magnitude(i, c);
        if (!(std::abs(x - y) <= limit)) {
          char buffer[256];
          std::snprintf(buffer, sizeof buffer,
                        "scaled_dot_product_attention_backward with positions: %s(%ld, %ld) "
                        "summed over the blocks is %.17g, the whole call's %.17g: difference "
                        "%.3g > %.3g",
                        gradient, static_cast<long>(i), static_cast<long>(c), x, y, std::abs(x - y),
                        limit);
          fail(buffer + context + cut);
        }
      }
    }
  };
  agree("dq", dq, whole.dq, e.dq_bound, dq_abs);
  agree("dk", dk, whole.dk, e.dk_bound, dk_abs);
  agree("dv", dv_sum, whole.dv, e.dv_bound, dv_abs);
}

template <typename Scalar>
void run(Input& in, Problem& p, std::uint8_t spoiler, std::uint8_t qk_code, std::uint8_t v_code) {
  // Shapes as the flags say, then one of them spoiled.
  const Index heads_for_shapes = p.heads >= 1 ? p.heads : 1;
  const Index kv_for_shapes =
      p.kv_heads >= 1 ? p.kv_heads : (p.kv_heads == 0 ? heads_for_shapes : 1);
  Index q_cols = heads_for_shapes * p.d, k_cols = kv_for_shapes * p.d;
  Index v_rows = p.m, v_cols = kv_for_shapes * p.dv;
  Index extra_out_rows = 0, extra_out_cols = 0;
  switch (spoiler % 10) {
    case 0:
      ++q_cols;
      break;
    case 1:
      ++k_cols;
      break;
    case 2:
      ++v_rows;
      break;
    case 3:
      ++v_cols;
      break;
    case 4:
      ++extra_out_rows;
      break;
    case 5:
      ++extra_out_cols;
      break;
    case 6:
      p.scale = spoiler & 16 ? std::numeric_limits<double>::infinity()
                             : std::numeric_limits<double>::quiet_NaN();
      break;
    case 7:
      p.softcap = spoiler & 16 ? -1.0 : std::numeric_limits<double>::quiet_NaN();
      break;
    case 8:
      p.softcap = std::numeric_limits<double>::infinity();
      break;
    default:
      break;  // 9: nothing spoiled
  }
  const Index n = p.n, m = p.m;

  // The mask first (with any bias values), then q, k, v: the layout documented at the top.
  MaskSpec spec;
  if (!decode_mask<Scalar>(in, p, spec)) return;  // construction threw, as it had to
  FunctionSpec functions;
  if (!decode_functions(in, p, spec.function_bits, functions)) return;  // (as it had to)
  // With score or mask functions, q, k and v stay in Scalar (see the top).
  if (functions.any()) p.q_storage = p.k_storage = p.v_storage = Storage::scalar;

  const double qk = qk_step<Scalar>(qk_code, p.d);
  const Scalar special =
      p.nan ? std::numeric_limits<Scalar>::quiet_NaN() : std::numeric_limits<Scalar>::denorm_min();
  const attn::Matrix<Scalar> q = read_matrix<Scalar>(in, n, q_cols, qk, special);
  const attn::Matrix<Scalar> k = read_matrix<Scalar>(in, m, k_cols, qk, special);
  // (Half v: the step is clamped so that rounding to half keeps every finite value finite.)
  const double v_scale = p.v_storage == Storage::half ? std::min(v_step<Scalar>(v_code), 512.0)
                                                      : v_step<Scalar>(v_code);
  const attn::Matrix<Scalar> v = read_matrix<Scalar>(in, v_rows, v_cols, v_scale, special);

  // qint8 needs a group of one head's row (else the operand stays in Scalar); in NaN mode, quantize
  // must reject an operand holding a NaN, which is then passed in Scalar.
  Storage q_storage = p.q_storage, k_storage = p.k_storage, v_storage = p.v_storage;
  const auto settle_qint8 = [&](Storage& storage, const attn::Matrix<Scalar>& x, Index group) {
    if (storage != Storage::qint8) return;
    if (group < 1 || x.cols() % group != 0) {
      storage = Storage::scalar;
    } else if (x.hasNaN()) {
      expect_shape_error_iff(true, "QuantizedMatrix::quantize (NaN input)", "\n  " + p.description,
                             [&] { (void)attn::QuantizedMatrix::quantize(x, group); });
      storage = Storage::scalar;
    }
  };
  settle_qint8(k_storage, k, p.d);
  settle_qint8(v_storage, v, p.dv);

  // Validity, decided here from the documented contract.
  const Index heads = p.heads;
  const Index kv_heads = p.kv_heads == 0 ? heads : p.kv_heads;
  bool valid = heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0 && q_cols % heads == 0;
  const Index d = valid ? q_cols / heads : 0;
  valid = valid && k_cols == kv_heads * d && v_rows == m && v_cols % kv_heads == 0;
  const Index dv = valid ? v_cols / kv_heads : 0;
  for (const auto& shape : spec.keep_shapes)
    valid = valid && shape == std::make_pair(n, m);
  for (const auto& shape : spec.bias_shapes)
    valid = valid && shape == std::make_pair(n, m);
  valid = valid && spec.key_length <= m && functions.valid;
  const double scale = p.scale ? *p.scale : (d > 0 ? 1.0 / std::sqrt(static_cast<double>(d)) : 1.0);
  valid = valid && std::isfinite(scale) && std::isfinite(p.softcap) && p.softcap >= 0;
  // A qint8 operand must be in groups of one head's row.
  valid = valid && (k_storage != Storage::qint8 || p.d == d) &&
          (v_storage != Storage::qint8 || p.dv == dv);
  const bool valid_out = extra_out_rows == 0 && extra_out_cols == 0;

  const std::string context =
      "\n  " + p.description + ", q " + attn::detail::shape_string(q) + ", k " +
      attn::detail::shape_string(k) + ", v " + attn::detail::shape_string(v) + ", mask" +
      (spec.description.empty() ? std::string(" none") : spec.description) + functions.description +
      (p.into ? ", _into a strided block" : "") + (p.strided ? ", strided inputs" : "") +
      (p.paged ? ", paged k and v" : "") + (p.threads ? ", thread_executor(2)" : "") +
      (p.workspace ? ", a reused Workspace" : "") + (p.nan ? ", NaN mode" : "") +
      (q_storage == Storage::scalar && k_storage == Storage::scalar && v_storage == Storage::scalar
           ? std::string()
           : std::string(", stored: q ") + storage_name(q_storage) + ", k " +
                 storage_name(k_storage) + ", v " + storage_name(v_storage));

  attn::AttentionOptions options;
  options.num_heads = p.heads;
  options.num_kv_heads = p.kv_heads;
  options.scale = p.scale;
  options.softcap = p.softcap;
  if (p.threads) options.executor = attn::thread_executor(2);
  static attn::Workspace workspace;  // outlives the input: later inputs reuse its scratch
  if (p.workspace) options.workspace = &workspace;

  // The backward check (see the top): for valid problems with q, k and v in Scalar (not paged),
  // no NaN, small enough for its reference; d_out from the input's side
  // seed, in [−1, 1].
  const bool score_function = functions.choice->alibi || functions.choice->wave;
  const double backward_work = static_cast<double>(n) * static_cast<double>(m) *
                               static_cast<double>(std::max<Index>(heads, 1)) *
                               static_cast<double>(d + dv + 1);
  const bool backward_wanted = valid && valid_out && !p.nan && !p.paged &&
                               q_storage == Storage::scalar && k_storage == Storage::scalar &&
                               v_storage == Storage::scalar &&
                               (backward_differentiates_score_functions || !score_function) &&
                               backward_work <= backward_work_limit;
  attn_test::Random side(in.side_seed());
  attn::Matrix<Scalar> d_out;
  if (backward_wanted) d_out = side.uniform_matrix<Scalar>(n, heads * dv);
  LibraryBackward<Scalar> backward;

  // The library, by value or into a block of a larger, sentinel-filled matrix, on q, k, v in their
  // storage; qe, ke, ve: the values it reads (the stored ones, in Scalar), for the reference.
  attn::Matrix<Scalar> out;
  const Index out_rows = n + extra_out_rows,
              out_cols = heads_for_shapes * (v_cols / kv_for_shapes) + extra_out_cols;
  const Scalar sentinel = Scalar(-1234.5);
  attn::Matrix<Scalar> storage =
      attn::Matrix<Scalar>::Constant(out_rows + 3, out_cols + 2, sentinel);
  attn::Matrix<Scalar> qe, ke, ve;
  bool returned = false;
  const auto call = [&](auto q_tag, auto k_tag, auto v_tag) {
    using QS = decltype(q_tag);
    using KS = decltype(k_tag);
    using VS = decltype(v_tag);
    Stored<QS> qs;
    Stored<KS> ks;
    Stored<VS> vs;
    expect_shape_error_iff(false, "storing q, k and v", context, [&] {
      qs = store<QS>(q, 0);
      ks = store<KS>(k, p.d);
      vs = store<VS>(v, p.dv);
    });
    qe = stored_values<Scalar>(qs);
    ke = stored_values<Scalar>(ks);
    ve = stored_values<Scalar>(vs);
    if constexpr (is_qint8<KS>) check_quantized("k", k, ke, p.d, context);
    if constexpr (is_qint8<VS>) check_quantized("v", v, ve, p.dv, context);
    const auto invoke = [&](const auto& q_arg, const auto& k_arg, const auto& v_arg) {
      const auto attend = [&](const auto& mask) {
        if (p.into) {
          returned = expect_shape_error_iff(
              !valid || !valid_out, "scaled_dot_product_attention_into", context, [&] {
                attn::scaled_dot_product_attention_into(
                    q_arg, k_arg, v_arg, storage.block(1, 1, out_rows, out_cols), mask, options);
              });
        } else {
          returned = expect_shape_error_iff(!valid, "scaled_dot_product_attention", context, [&] {
            out = attn::scaled_dot_product_attention(q_arg, k_arg, v_arg, mask, options);
          });
        }
        // The backward on the same operands and mask (the operands in Scalar, the mask without a
        // score function: see backward_takes).
        if constexpr (dense_in<Scalar, decltype(q_arg)>() && dense_in<Scalar, decltype(k_arg)>() &&
                      dense_in<Scalar, decltype(v_arg)>() &&
                      backward_takes<std::decay_t<decltype(mask)>>()) {
          if (backward_wanted && returned) {
            const attn::Matrix<Scalar> forward =
                p.into ? attn::Matrix<Scalar>(storage.block(1, 1, out_rows, out_cols)) : out;
            library_backward<Scalar>(q_arg, k_arg, v_arg, mask, options, p, forward, d_out,
                                     backward, context);
          }
        }
      };
      // Functions only with every operand in Scalar (they set the storage so): four more kernel
      // instantiations per Scalar, not four per storage combination.
      if constexpr (std::is_same_v<QS, Scalar> && std::is_same_v<KS, Scalar> &&
                    std::is_same_v<VS, Scalar>) {
        functions.with_mask(spec.mask, attend);
      } else {
        attend(spec.mask);
      }
    };
    if (p.paged) {
      // k and v in pages of 16 rows, stored last page first: x's rows reordered so, stored (each
      // row's rounding or quantisation is its own, so the stored values are ks's and vs's), and
      // read through a table of runs in position order.
      const auto with_paged = [&](auto tag, const attn::Matrix<Scalar>& x, Index group,
                                  const auto& next) {
        using S = decltype(tag);
        constexpr Index page = 16;
        std::vector<attn::PageRun> runs;
        Index row = x.rows();
        for (Index position = 0; position < x.rows(); position += page) {
          const Index rows = std::min(page, x.rows() - position);
          row -= rows;
          runs.push_back(attn::PageRun{position, row, rows});
        }
        attn::Matrix<Scalar> reordered(x.rows(), x.cols());
        for (const attn::PageRun& run : runs)
          reordered.middleRows(run.row, run.rows) = x.middleRows(run.position, run.rows);
        const Stored<S> pool = store<S>(reordered, group);
        if constexpr (is_qint8<S>) {
          next(attn::PagedView<S>(pool.view(), runs.data(), Index(runs.size())));
        } else {
          next(attn::PagedView<S>(attn::ConstMatrixView<S>(pool.data(), pool.rows(), pool.cols(),
                                                           Eigen::OuterStride<>(pool.cols())),
                                  runs.data(), Index(runs.size())));
        }
      };
      return with_paged(KS(), k, p.d, [&](const auto& k_arg) {
        with_paged(VS(), v, p.dv, [&](const auto& v_arg) { invoke(qs, k_arg, v_arg); });
      });
    }
    if (!p.strided) return invoke(qs, ks, vs);
    // q a column block of a wider matrix; k column-major (evaluated once) or, for qint8, a
    // strided QuantizedView; v a strided Map or QuantizedView.
    attn::Matrix<QS> q_wide = attn::Matrix<QS>::Zero(q.rows(), q.cols() + 3);
    q_wide.leftCols(q.cols()) = qs;
    const auto q_block = q_wide.leftCols(q.cols());
    const auto with_strided_k = [&](const auto& next) {
      if constexpr (is_qint8<KS>) {
        attn::QuantizedMatrix wide;
        const attn::QuantizedView view = strided_quantized(k, p.d, wide);
        ke = stored_values<Scalar>(view);
        next(view);
      } else {
        const Eigen::Matrix<KS, Eigen::Dynamic, Eigen::Dynamic> k_column_major = ks;
        next(k_column_major);
      }
    };
    const auto with_strided_v = [&](const auto& next) {
      if constexpr (is_qint8<VS>) {
        attn::QuantizedMatrix wide;
        const attn::QuantizedView view = strided_quantized(v, p.dv, wide);
        ve = stored_values<Scalar>(view);
        next(view);
      } else {
        attn::Matrix<VS> v_wide = attn::Matrix<VS>::Zero(v.rows(), v.cols() + 1);
        v_wide.leftCols(v.cols()) = vs;
        next(attn::ConstMatrixView<VS>(v_wide.data(), v.rows(), v.cols(),
                                       Eigen::OuterStride<>(v_wide.cols())));
      }
    };
    with_strided_k([&](const auto& k_arg) {
      with_strided_v([&](const auto& v_arg) { invoke(q_block, k_arg, v_arg); });
    });
  };
  // (The combinations of the layout at the top: q in Scalar with any k and v, or all three in one
  // 16-bit type. Each is a kernel instantiation, which the fuzzer's build time pays for.)
  with_storage<Scalar>(k_storage, [&](auto k_tag) {
    using KS = decltype(k_tag);
    if constexpr (is_16_bit<KS>) {
      if (q_storage != Storage::scalar) return call(k_tag, k_tag, k_tag);
    }
    with_storage<Scalar>(v_storage, [&](auto v_tag) {
      if constexpr (fuzzed_pair(storage_of<KS>(), storage_of<decltype(v_tag)>())) {
        call(Scalar(), k_tag, v_tag);
      } else {
        fail(std::string("fuzzer bug: no kernel instantiated for k ") + storage_name(k_storage) +
             ", v " + storage_name(v_storage) + context);
      }
    });
  });
  // Rounding to the storage must not have made a finite input infinite (see the top).
  const auto check_kept_finite = [&](const attn::Matrix<Scalar>& x,
                                     const attn::Matrix<Scalar>& stored, const char* name) {
    if ((x.array().isFinite() && !stored.array().isFinite()).any())
      fail(std::string("fuzzer bug: storing ") + name + " made a finite value infinite" + context);
  };
  check_kept_finite(q, qe, "q");
  check_kept_finite(k, ke, "k");
  check_kept_finite(v, ve, "v");
  if (p.into) {
    // Nothing outside the block is ever written; inside it, only by a call that returned.
    attn::Matrix<Scalar> outside = storage;
    if (returned) {
      out = storage.block(1, 1, out_rows, out_cols);
      outside.block(1, 1, out_rows, out_cols).setConstant(sentinel);
    }
    if (!(outside.array() == sentinel).all()) {
      fail(returned ? "scaled_dot_product_attention_into wrote outside its block" + context
                    : "scaled_dot_product_attention_into threw but wrote to out" + context);
    }
  }
  if (!returned || (p.into && !valid_out)) return;

  // The reference, on the inputs with any NaN replaced by 0 (the entries it is compared with do
  // not depend on them), and the tolerance of tests/support/tolerance.hpp for this problem.
  const auto without_nan = [](const auto& x) {
    using X = std::decay_t<decltype(x)>;
    return X(x.array().isNaN().select(typename X::Scalar(0), x));
  };
  const attn::Matrix<Scalar> q0 = without_nan(qe), k0 = without_nan(ke), v0 = without_nan(ve);
  const MatrixB allowed = spec.reference.allowed(n, m);
  MatrixD bias = spec.reference.bias(n, m);  // summed parts, NaN included; empty without any
  if (bias.size() == 0) bias = MatrixD::Zero(n, m);
  const MatrixD bias0 = without_nan(bias);
  const Index group = heads / kv_heads;
  // Each head's visibility: the mask's, and the mask function's at the positions of its rows.
  const attn_test::LayerRule rule = functions.rule(m);
  // (A score function hides a key by −∞, here wave's, which depends on positions only.)
  std::vector<MatrixB> allowed_by_head(static_cast<std::size_t>(heads), allowed);
  for (Index h = 0; h < heads && (rule.visible || rule.score); ++h) {
    for (Index i = 0; i < n; ++i) {
      for (Index j = 0; j < m; ++j) {
        const Index position = i + m - n;
        allowed_by_head[static_cast<std::size_t>(h)](i, j) =
            allowed(i, j) && (!rule.visible || rule.visible(h, position, j)) &&
            (!rule.score ||
             rule.score(0.0, h, position, j) != -std::numeric_limits<double>::infinity());
      }
    }
  }
  MatrixD expected = MatrixD::Zero(n, heads * dv);
  if (n > 0 && m > 0) {  // (Eigen blocks of empty matrices offset a null pointer)
    for (Index h = 0; h < heads; ++h) {
      const Index g = h / group;
      expected.middleCols(h * dv, dv) =
          reference_head(q0.middleCols(h * d, d).template cast<double>(),
                         k0.middleCols(g * d, d).template cast<double>(),
                         v0.middleCols(g * dv, dv).template cast<double>(), allowed, bias0, scale,
                         p.softcap, h, rule);
    }
  }
  double logit_bound = 0;
  for (Index h = 0; h < heads && n > 0 && m > 0 && d > 0; ++h) {
    const Index g = h / group;
    const MatrixD products = q0.middleCols(h * d, d).template cast<double>().cwiseAbs() *
                             k0.middleCols(g * d, d).template cast<double>().cwiseAbs().transpose();
    logit_bound = std::max(logit_bound, std::abs(scale) * products.maxCoeff());
  }
  const double value_bound = v0.size() > 0 ? v0.template cast<double>().cwiseAbs().maxCoeff() : 0.0;
  const double tolerance = attn_test::attention_tolerance<Scalar>(
      logit_bound + p.softcap + spec.bias_bound + functions.shift, m, value_bound);
  // Whether a visible key's weight may underflow to exactly 0 (its logit more than ~87 (float)
  // or ~708 (double) below the row's max): then a NaN in its value may or may not show.
  const double spread = 2 * (p.softcap > 0 ? std::min(logit_bound, p.softcap) : logit_bound) +
                        2 * spec.bias_bound + 2 * functions.shift;
  const bool may_underflow = spread > (std::is_same_v<Scalar, float> ? 80.0 : 700.0);

  for (Index i = 0; i < n; ++i) {
    for (Index h = 0; h < heads; ++h) {
      const Index g = h / group;
      const MatrixB& visible = allowed_by_head[static_cast<std::size_t>(h)];
      bool sees_a_key = false, row_nan = false;
      std::vector<bool> column_nan(static_cast<std::size_t>(dv), false);
      for (Index j = 0; j < m; ++j) {
        if (!visible(i, j) || bias(i, j) == -std::numeric_limits<double>::infinity()) continue;
        sees_a_key = true;
        if (std::isnan(bias(i, j)) || k.row(j).segment(g * d, d).hasNaN()) row_nan = true;
        for (Index c = 0; c < dv; ++c) {
          if (std::isnan(v(j, g * dv + c))) column_nan[static_cast<std::size_t>(c)] = true;
        }
      }
      if (sees_a_key && q.row(i).segment(h * d, d).hasNaN()) row_nan = true;
      for (Index c = 0; c < dv; ++c) {
        const Index col = h * dv + c;
        const double x = static_cast<double>(out(i, col)), y = expected(i, col);
        const bool value_nan = column_nan[static_cast<std::size_t>(c)];
        char where[160];
        std::snprintf(where, sizeof where, "scaled_dot_product_attention: (%ld, %ld), head %ld",
                      static_cast<long>(i), static_cast<long>(col), static_cast<long>(h));
        if (row_nan || (value_nan && !may_underflow)) {
          if (!std::isnan(x)) {
            fail(std::string(where) + " is " + std::to_string(x) +
                 " but a NaN input reaches it (expected NaN)" + context);
          }
          continue;
        }
        if (std::isnan(x) && value_nan) continue;  // through a weight that may be 0 or not
        if (!std::isfinite(x)) {
          fail(std::string(where) + " is " + std::to_string(x) + " where the reference is " +
               std::to_string(y) + (p.nan ? " and no NaN input reaches it" : "") + context);
        }
        const double error = std::abs(x - y) / std::max(1.0, std::abs(y));
        if (!(error <= tolerance)) {
          char buffer[200];
          std::snprintf(buffer, sizeof buffer,
                        " is %.17g, the reference %.17g: error %.3g > tolerance %.3g", x, y, error,
                        tolerance);
          fail(where + std::string(buffer) + context);
        }
        if (!sees_a_key && x != 0) {
          fail(std::string(where) + " sees no key but is " + std::to_string(x) + context);
        }
      }
    }
  }

  if (backward.ran) {
    // The score functions are additive: their shift is the reference score of a zero logit.
    ScoreShift score_shift;
    if (rule.score) {
      score_shift = [&rule, n, m](Index h, Index i, Index j) {
        return rule.score(0.0, h, i + m - n, j);
      };
    }
    check_backward(p, spec, functions, qe, ke, ve, d_out, backward, allowed_by_head, bias,
                   score_shift, heads, kv_heads, d, dv, scale, options, side,
                   logit_bound + p.softcap + spec.bias_bound + functions.shift, context);
  }

  // The functors on the same shapes and mask, with inputs and weights as in the layer tests
  // (entries in [−1, 1], PyTorch's initialisation), so tests/support/tolerance.hpp applies.
  // (The functors scale by 1/√d, have no soft-cap and use one head dim for keys and values.)
  if (!p.functors || p.nan || p.scale.has_value() || p.softcap != 0 || dv != d) return;
  const Index model_dim = heads * d;
  attn_test::Random rng(in.seed());
  attn::MultiHeadConfig cfg{model_dim, heads, p.kv_heads};
  const double functor_tolerance =
      2 * attn_test::layer_tolerance<Scalar>(std::max<Index>(model_dim, 1),
                                             std::max<Index>(model_dim, 1), d, m) +
      8 * Eigen::NumTraits<Scalar>::epsilon() * (spec.bias_bound + functions.shift);
  attn::Executor executor;
  if (p.threads) executor = attn::thread_executor(2);
  if (model_dim < 1) {
    cfg.model_dim = 1;  // any weights: the config is what must be rejected
    const auto w = attn_test::random_weights<Scalar>(cfg, rng);
    cfg.model_dim = model_dim;
    expect_shape_error_iff(true, "CrossAttention(config with model_dim 0)", context,
                           [&] { attn::CrossAttention<Scalar> rejected(cfg, w); });
    return;
  }
  const auto weights = attn_test::random_weights<Scalar>(cfg, rng);

  // Cross-attention: target n × E over source m × E with the kernel's mask.
  const attn::Matrix<Scalar> target = rng.uniform_matrix<Scalar>(n, model_dim);
  const attn::Matrix<Scalar> source = rng.uniform_matrix<Scalar>(m, model_dim);
  const attn::CrossAttention<Scalar> cross(cfg, weights, executor);
  // The functors take functions in their most general ScoreMask type only: a functor call
  // instantiates the kernel for it and for packed batches of it.
  const auto with_functor_mask = [&](const Mask& base, const auto& body) {
    if (functions.any()) {
      body(functions.general(base));
    } else {
      body(base);
    }
  };
  attn::Matrix<Scalar> y;
  with_functor_mask(spec.mask, [&](const auto& mask) {
    expect_shape_error_iff(false, "CrossAttention", context,
                           [&] { y = cross(target, source, mask); });
  });
  // (A row that sees no key is the output projection's bias, not zero: no exact-zero check.)
  compare(
      "CrossAttention", y,
      reference_layer(target, source, weights, heads, kv_heads, spec.reference, functions.rule(m)),
      functor_tolerance, context);

  // With reduced k storage, the functors also keep keys and values in it (a remembered memory, a
  // KV cache); the reference then attends over what they store, converted to double.
  const attn_test::ReferenceWeights w = attn_test::reference_weights(weights);
  const MatrixD target_queries = attn_test::reference_linear(target, w.q_weight, w.q_bias);
  const auto reference_over = [&](const auto& keys, const auto& values, const ReferenceMask& mask) {
    return attn_test::reference_linear(
        reference_heads(target_queries, stored_values<double>(keys), stored_values<double>(values),
                        heads, kv_heads, mask),
        w.out_weight, w.out_bias);
  };
  const bool reduced = p.k_storage != Storage::scalar;
  if (reduced) {
    with_storage<Scalar>(p.k_storage, [&](auto tag) {
      using S = decltype(tag);
      const std::string what =
          std::string("CrossAttention over a ") + storage_name(p.k_storage) + " memory";
      std::optional<attn::CrossAttentionMemory<Scalar, S>> memory;
      expect_shape_error_iff(false, what.c_str(), context, [&] {
        memory.emplace(cross.template remember<S>(source));
        y = cross(target, *memory, spec.mask);
      });
      compare(what.c_str(), y, reference_over(memory->keys(), memory->values(), spec.reference),
              functor_tolerance, context);
    });
  }

  if (n != m) return;
  // Self-attention over the target with the same (square) mask, and a KV-cache decode of it
  // under causal: a prefill chunk, then one row at a time, must equal the full causal pass.
  const attn::SelfAttention<Scalar> self_attn(cfg, weights, executor);
  with_functor_mask(spec.mask, [&](const auto& mask) {
    expect_shape_error_iff(false, "SelfAttention", context, [&] { y = self_attn(target, mask); });
  });
  compare(
      "SelfAttention", y,
      reference_layer(target, target, weights, heads, kv_heads, spec.reference, functions.rule(n)),
      functor_tolerance, context);

  attn::KVCache<Scalar> cache = self_attn.make_cache(n);
  attn::Matrix<Scalar> decoded(n, model_dim);
  const Index prefill = n / 2;
  expect_shape_error_iff(false, "SelfAttention with a KV cache", context, [&] {
    decoded.topRows(prefill) = self_attn(target.topRows(prefill), cache);
    for (Index i = prefill; i < n; ++i)
      decoded.row(i) = self_attn(target.row(i), cache);
  });
  compare("SelfAttention with a KV cache", decoded,
          reference_layer(target, target, weights, heads, kv_heads, ReferenceMask::causal()),
          functor_tolerance, context);
  if (n > 0) {
    expect_shape_error_iff(true, "SelfAttention with a full KV cache", context,
                           [&] { (void)self_attn(target.topRows(1), cache); });
  }
  if (functions.any() && n > 0) {
    // The functions over a KV cache with causal: a prefill (holding at least the tree's nodes),
    // then one row at a time, each call against the reference over the positions cached so far
    // (the functions see positions counted from the start of the cache).
    attn::KVCache<Scalar> functions_cache = self_attn.make_cache(n);
    const MatrixD keys = attn_test::reference_linear(target, w.k_weight, w.k_bias);
    const MatrixD values = attn_test::reference_linear(target, w.v_weight, w.v_bias);
    const auto mask = functions.general(Mask::causal());
    for (Index first = 0; first < n;) {
      const Index rows = first == 0 ? std::max<Index>({prefill, functions.tree_nodes, 1}) : 1;
      const Index keys_so_far = first + rows;
      expect_shape_error_iff(false, "SelfAttention with functions over a KV cache", context, [&] {
        y = self_attn(target.middleRows(first, rows), functions_cache, mask);
      });
      compare("SelfAttention with functions over a KV cache", y,
              attn_test::reference_linear(
                  reference_heads(target_queries.middleRows(first, rows), keys.topRows(keys_so_far),
                                  values.topRows(keys_so_far), heads, kv_heads,
                                  ReferenceMask::causal(), functions.rule(keys_so_far)),
                  w.out_weight, w.out_bias),
              functor_tolerance, context + ", keys 0 to " + std::to_string(keys_so_far - 1));
      first = keys_so_far;
    }
  }
  if (!reduced) return;

  // The same decode in a cache of reduced storage (make_cache<S>).
  with_storage<Scalar>(p.k_storage, [&](auto tag) {
    using S = decltype(tag);
    const std::string what =
        std::string("SelfAttention with a ") + storage_name(p.k_storage) + " KV cache";
    attn::KVCache<Scalar, S> small = self_attn.template make_cache<S>(n);
    expect_shape_error_iff(false, what.c_str(), context, [&] {
      decoded.topRows(prefill) = self_attn(target.topRows(prefill), small);
    });
    // half and qint8 cannot hold every row: keys and values ~1e30 (from the row × 1e30) are beyond
    // half's range, and an infinity in the row makes keys infinite or NaN, which qint8 rejects.
    // The step must throw ShapeError and leave the cache and out unchanged.
    if constexpr (std::is_same_v<S, attn::half> || is_qint8<S>) {
      if (prefill < n) {
        attn::Matrix<Scalar> row = target.row(prefill);
        if constexpr (is_qint8<S>) {
          row(0, 0) = std::numeric_limits<Scalar>::infinity();
        } else {
          row *= Scalar(1e30);
        }
        // (Half: only if the reference's keys or values are far beyond 65 504, as they are
        // unless the row is degenerate.)
        const MatrixD keys = attn_test::reference_linear(row, w.k_weight, w.k_bias);
        const MatrixD values = attn_test::reference_linear(row, w.v_weight, w.v_bias);
        const bool beyond = !(std::max(keys.cwiseAbs().maxCoeff(), values.cwiseAbs().maxCoeff()) <
                              1e6);  // (NaN counts as beyond)
        if (is_qint8<S> || beyond) {
          const attn::Matrix<Scalar> keys_before = stored_values<Scalar>(small.keys());
          const attn::Matrix<Scalar> values_before = stored_values<Scalar>(small.values());
          attn::Matrix<Scalar> step = attn::Matrix<Scalar>::Constant(1, model_dim, Scalar(-1234.5));
          expect_shape_error_iff(true, (what + " given a row it cannot hold").c_str(), context,
                                 [&] { self_attn.attend_into(row, small, step); });
          if (small.size() != prefill || stored_values<Scalar>(small.keys()) != keys_before ||
              stored_values<Scalar>(small.values()) != values_before ||
              !(step.array() == Scalar(-1234.5)).all()) {
            fail(what + " changed the cache or out when it threw" + context);
          }
        }
      }
    }
    expect_shape_error_iff(false, what.c_str(), context, [&] {
      for (Index i = prefill; i < n; ++i)
        decoded.row(i) = self_attn(target.row(i), small);
    });
    compare(what.c_str(), decoded,
            reference_over(small.keys(), small.values(), ReferenceMask::causal()),
            functor_tolerance, context);
    if (n > 0) {
      expect_shape_error_iff(true, (what + ", full").c_str(), context,
                             [&] { (void)self_attn(target.topRows(1), small); });
    }
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Input in(data, size);
  Problem p;
  const std::uint8_t flags = in.byte();
  p.is_double = flags & 1;
  p.threads = flags & 2;
  p.into = flags & 4;
  p.strided = flags & 8;
  p.functors = flags & 16;
  const bool explicit_scale = flags & 32;
  const bool softcap = flags & 64;
  const bool spoil = flags & 128;
  p.n = sequence_length(in.byte());
  p.m = sequence_length(in.byte());
  p.d = dim(in.byte());
  p.dv = dim(in.byte());
  const std::uint8_t heads_code = in.byte();
  static constexpr Index head_counts[] = {1, 1, 2, 4, 3, 8, 0, -1};
  static constexpr Index kv_head_counts[] = {0, 1, 2, 4, 3, -1, 0, 1};
  p.heads = head_counts[heads_code % 8];
  p.kv_heads = kv_head_counts[(heads_code >> 3) % 8];
  p.workspace = heads_code & 64;
  p.nan = heads_code & 128;
  const std::uint8_t spoiler = in.byte();
  const std::uint8_t scale_code = in.byte();  // bits 0–2: the scale; bit 3: positions
  p.positions = scale_code & 8;
  const std::uint8_t softcap_code = in.byte();  // bits 2–7: the storage of k, v and q
  if (!p.is_double) {
    static constexpr Storage kv_storages[] = {Storage::scalar, Storage::bfloat16, Storage::half,
                                              Storage::qint8};
    p.k_storage = kv_storages[(softcap_code >> 2) & 3];
    p.v_storage = kv_storages[(softcap_code >> 4) & 3];
    if (!fuzzed_pair(p.k_storage, p.v_storage)) p.v_storage = p.k_storage;
    if ((softcap_code & 64) && (p.k_storage == Storage::bfloat16 || p.k_storage == Storage::half))
      p.q_storage = p.v_storage = p.k_storage;  // all three in one 16-bit type
  }
  p.paged = (softcap_code & 128) && !p.strided;
  const std::uint8_t qk_code = in.byte();
  const std::uint8_t v_code = in.byte();
  if (explicit_scale) {
    static constexpr double scales[] = {0.0, -0.5, 1.0, 3.0, 1e-3, 0.125, 1e3, -1.0};
    p.scale = scales[scale_code % 8];
  }
  if (softcap) {
    static constexpr double softcaps[] = {30.0, 5.0, 1.0, 50.0};
    p.softcap = softcaps[softcap_code % 4];
  }

  // Keep each input cheap for the O(n·m·H·(d + dv)) reference: shrink n when needed.
  const Index heads = std::max<Index>(p.heads, 1);
  const double work = static_cast<double>(p.n) * static_cast<double>(p.m) *
                      static_cast<double>(heads) * static_cast<double>(p.d + p.dv + 1);
  if (work > 2e6)
    p.n = std::max<Index>(1, static_cast<Index>(2e6 / (work / static_cast<double>(p.n))));

  p.description = std::string(p.is_double ? "double" : "float") + ", n " + std::to_string(p.n) +
                  ", m " + std::to_string(p.m) + ", d " + std::to_string(p.d) + ", dv " +
                  std::to_string(p.dv) + ", heads " + std::to_string(p.heads) + "/" +
                  std::to_string(p.kv_heads) +
                  (p.scale ? ", scale " + std::to_string(*p.scale) : std::string()) +
                  (p.softcap != 0 ? ", softcap " + std::to_string(p.softcap) : std::string());
  const std::uint8_t effective_spoiler = spoil ? spoiler : std::uint8_t(9);
  if (p.is_double) {
    run<double>(in, p, effective_spoiler, qk_code, v_code);
  } else {
    run<float>(in, p, effective_spoiler, qk_code, v_code);
  }
  return 0;
}
