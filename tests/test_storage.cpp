// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors

// Reduced-precision storage of queries, keys and values (storage.hpp, detail/convert.hpp,
// detail/stored_matrix.hpp): attn::bfloat16, attn::half and attn::qint8.
//
// - The converting loads give the exact value of every stored element, bit for bit, on whichever
//   path (native instructions or portable) this build compiles to.
// - qint8 quantisation keeps each element within half a step (max|group|/254) of its input.
// - The kernel over stored inputs is the float kernel: against the fp64 reference over the SAME
//   rounded (or dequantised) inputs it is within the float path's own tolerance, however long the
//   sequence; against the reference over the unrounded inputs, within a bound derived from the
//   storage's rounding that does not grow with the number of keys.
// - KVCache, SelfAttention::make_cache, CrossAttention::remember and partial attention keep and
//   read the rounded values, reject what a storage cannot hold without changing anything, and a
//   decode over a stored cache is bitwise the same on any executor.
//
// Every expected value comes from tests/support/reference.hpp (fp64, independent of attn), over
// stored values decoded here from their bits (bfloat16, half) or from the raw int8 values and
// scales (qint8), never through attn's own conversions.

#include <attn/cross_attention.hpp>
#include <attn/detail/convert.hpp>
#include <attn/kv_cache.hpp>
#include <attn/partial_attention.hpp>
#include <attn/scaled_dot_product.hpp>
#include <attn/self_attention.hpp>
#include <attn/storage.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "support/float_mode.hpp"
#include "support/matrix_near.hpp"
#include "support/random.hpp"
#include "support/reference.hpp"
#include "support/shape_error.hpp"
#include "support/stored_values.hpp"
#include "support/tolerance.hpp"

// Packet types carry alignment attributes that GCC reports as ignored in template arguments (as
// detail/packet_math.hpp explains).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace {

using attn::bfloat16;
using attn::half;
using attn::Index;
using attn::Mask;
using attn::MultiHeadConfig;
using attn::qint8;
using attn::QuantizedMatrix;
using attn::QuantizedView;
using attn_test::bfloat16_value;
using attn_test::bits_of;
using attn_test::half_value;
using attn_test::MatrixB;
using attn_test::MatrixD;
using attn_test::Random;
using attn_test::ReferenceMask;
using attn_test::stored_values;
using attn_test::value_of;
using attn_test::VectorD;
template <typename Scalar>
using Matrix = attn::Matrix<Scalar>;

static_assert(sizeof(bfloat16) == 2 && sizeof(half) == 2, "16-bit storage types");

// float's unit roundoff, and the least positive (subnormal) float.
constexpr double float_roundoff = 0x1p-24;
constexpr double float_denorm_min = 0x1p-149;

// ---------------------------------------------------------------------------------------------
// Stored values, decoded independently of attn
// ---------------------------------------------------------------------------------------------

template <typename T>
T from_bits(std::uint16_t bits) {
  static_assert(sizeof(T) == 2, "a 16-bit type");
  T x;
  std::memcpy(static_cast<void*>(&x), &bits, sizeof bits);
  return x;
}

// ---------------------------------------------------------------------------------------------
// What storing costs: a bound on |stored − x| per element
// ---------------------------------------------------------------------------------------------

// Rounding to nearest in a 16-bit type: |stored − x| ≤ relative·|x| + absolute for x in the type's
// range, with relative its unit roundoff (2^-8 for bfloat16's 8 significant bits, 2^-11 for half's
// 11) and absolute half the spacing of its subnormals (2^-133 / 2, 2^-24 / 2).
template <typename S>
struct Rounding;
template <>
struct Rounding<bfloat16> {
  static constexpr double relative = 0x1p-8, absolute = 0x1p-134;
};
template <>
struct Rounding<half> {
  static constexpr double relative = 0x1p-11, absolute = 0x1p-25;
};

// qint8 in a group whose largest magnitude is M: the steps are scale = M/127 apart, so rounding to
// the nearest costs at most M/254. On top of that, float arithmetic:
// - the stored scale fl(M/127) is off by at most u·M/127 (u = 2^-24), or by half the least
//   subnormal, 2^-150, where it is subnormal; times |q| ≤ 127 that is u·M + 127·2^-150;
// - q = round(x·127/M) is computed in double: the product is off by at most 2·2^-53 relative,
//   127·2^-52 steps, i.e. 2^-52·M, below u·M.
// So |x − scale·q| ≤ M/254 + 2u·M + 64·2^-149 (the slack is ~1e-7 of a step).
double qint8_error_bound(double group_max) {
  return group_max / 254 + 2 * float_roundoff * group_max + 64 * float_denorm_min;
}

// The largest |stored − x| for each element of magnitude `magnitude` (non-negative; for qint8 the
// rows are split into groups of `group` columns, each bounded through its largest magnitude).
template <typename S>
MatrixD storage_error_bound(const MatrixD& magnitude, Index group) {
  if constexpr (std::is_same_v<S, qint8>) {
    MatrixD bound(magnitude.rows(), magnitude.cols());
    for (Index r = 0; r < magnitude.rows(); ++r) {
      for (Index g = 0; g < magnitude.cols(); g += group) {
        const double max = magnitude.row(r).segment(g, group).maxCoeff();
        bound.row(r).segment(g, group).setConstant(qint8_error_bound(max));
      }
    }
    return bound;
  } else if constexpr (std::is_same_v<S, float>) {
    (void)group;
    return MatrixD::Zero(magnitude.rows(), magnitude.cols());  // float inputs are stored exactly
  } else {
    (void)group;
    return (Rounding<S>::relative * magnitude.array() + Rounding<S>::absolute).matrix();
  }
}

// Every |got − expected| within its bound; else the worst element, its position and its excess.
::testing::AssertionResult within_bound(const MatrixD& got, const MatrixD& expected,
                                        const MatrixD& bound) {
  if (got.rows() != expected.rows() || got.cols() != expected.cols()) {
    return ::testing::AssertionFailure() << "shapes differ: " << got.rows() << "x" << got.cols()
                                         << " vs " << expected.rows() << "x" << expected.cols();
  }
  double worst = 0;
  Index worst_r = -1, worst_c = -1;
  for (Index r = 0; r < got.rows(); ++r) {
    for (Index c = 0; c < got.cols(); ++c) {
      const double excess = std::abs(got(r, c) - expected(r, c)) / bound(r, c);
      if (attn_test::is_nan_bits(excess)) {
        return ::testing::AssertionFailure() << "element (" << r << ", " << c << "): got "
                                             << got(r, c) << ", expected " << expected(r, c);
      }
      if (excess > worst) {
        worst = excess;
        worst_r = r;
        worst_c = c;
      }
    }
  }
  if (worst <= 1) return ::testing::AssertionSuccess();
  std::ostringstream s;
  s.precision(10);
  s << "element (" << worst_r << ", " << worst_c << "): got " << got(worst_r, worst_c)
    << ", expected " << expected(worst_r, worst_c) << ", error "
    << std::abs(got(worst_r, worst_c) - expected(worst_r, worst_c)) << " > bound "
    << bound(worst_r, worst_c);
  return ::testing::AssertionFailure() << s.str();
}

// The error matrix_near measures, |a − b| / max(1, |b|) at worst, for the record.
template <typename Derived>
double max_error(const Eigen::MatrixBase<Derived>& a, const MatrixD& b) {
  double worst = 0;
  for (Index r = 0; r < b.rows(); ++r) {
    for (Index c = 0; c < b.cols(); ++c) {
      worst =
          std::max(worst, std::abs(double(a(r, c)) - b(r, c)) / std::max(1.0, std::abs(b(r, c))));
    }
  }
  return worst;
}

// Writes a measured error into the test's XML record (--gtest_output=xml).
void record_error(const std::string& key, double error) {
  std::ostringstream s;
  s.precision(3);
  s << error;
  ::testing::Test::RecordProperty(key, s.str());
}

// ---------------------------------------------------------------------------------------------
// Inputs in a storage, as the kernel takes them
// ---------------------------------------------------------------------------------------------

// A float matrix kept in S: a Matrix<S> (rounded to nearest by Eigen's conversion), or for qint8 a
// QuantizedMatrix in groups of `group` columns. argument() is the owning matrix, view() a view
// (an Eigen Map, or a QuantizedView), so that both kinds of argument reach the kernel.
template <typename S>
struct Stored {
  Stored(const Matrix<float>& x, Index) : data(x.template cast<S>()) {}
  const Matrix<S>& argument() const { return data; }
  attn::ConstMatrixView<S> view() const {
    return attn::ConstMatrixView<S>(data.data(), data.rows(), data.cols(),
                                    Eigen::OuterStride<>(data.cols()));
  }
  MatrixD exact() const { return stored_values(data); }
  Matrix<S> data;
};
template <>
struct Stored<qint8> {
  Stored(const Matrix<float>& x, Index group) : data(QuantizedMatrix::quantize(x, group)) {}
  const QuantizedMatrix& argument() const { return data; }
  QuantizedView view() const { return data.view(); }
  MatrixD exact() const { return stored_values(data.view()); }
  QuantizedMatrix data;
};

// The storages of q, k and v of one kernel call.
template <typename Q, typename K, typename V>
struct Storages {
  using QS = Q;
  using KS = K;
  using VS = V;
};

template <typename T>
struct NameOf {
  static std::string get() { return attn::detail::storage_name<T>(); }
};
template <typename Q, typename K, typename V>
struct NameOf<Storages<Q, K, V>> {
  static std::string get() {
    return "q_" + NameOf<Q>::get() + "_k_" + NameOf<K>::get() + "_v_" + NameOf<V>::get();
  }
};
struct TypeNames {
  template <typename T>
  static std::string GetName(int) {
    return NameOf<T>::get();
  }
};

// B of tolerance.hpp for these stored inputs: |scale·q·k| ≤ scale·d·max|q|·max|k| with the
// default scale 1/√d, plus the largest |bias|.
double logit_bound(const MatrixD& q, const MatrixD& k, Index d, double bias_bound = 0) {
  if (q.size() == 0 || k.size() == 0) return bias_bound;
  return std::sqrt(double(d)) * q.cwiseAbs().maxCoeff() * k.cwiseAbs().maxCoeff() + bias_bound;
}

double max_abs(const MatrixD& x) {
  return x.size() == 0 ? 0.0 : x.cwiseAbs().maxCoeff();
}

// ---------------------------------------------------------------------------------------------
// 1. Conversions. load_as is held to the scalar conversions for every bit pattern, in every
//    portability cell, by tests/test_packet_math.cpp; here the scalar conversions are held to
//    the values the bits stand for.
// ---------------------------------------------------------------------------------------------

// Equal floats by their bits, or both NaN (a conversion may quieten a signalling NaN or keep its
// payload; either is a NaN).
bool same_float(float a, float b) {
  if (attn_test::is_nan_bits(a) && attn_test::is_nan_bits(b)) return true;
  return std::memcmp(&a, &b, sizeof a) == 0;
}

// The scalar conversions that load_as is held to are themselves the values the bits stand for
// (decoded here from the fields), so load_as's bit-for-bit equality means exact values.
TEST(ConversionValues, ScalarConversionsGiveTheValuesTheBitsStandFor) {
  std::size_t bad_bfloat16 = 0, bad_half = 0;
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = std::uint16_t(b);
    const double bf = bfloat16_value(bits), hf = half_value(bits);
    const float bf_scalar = static_cast<float>(from_bits<bfloat16>(bits));
    const float hf_scalar = static_cast<float>(from_bits<half>(bits));
    if (!same_float(bf_scalar, float(bf))) ++bad_bfloat16;
    if (!same_float(hf_scalar, float(hf))) ++bad_half;
  }
  EXPECT_EQ(bad_bfloat16, 0u);
  EXPECT_EQ(bad_half, 0u);
  // A few known values, so that the decoders above are checked too.
  EXPECT_EQ(bfloat16_value(0x3f80), 1.0);
  EXPECT_EQ(bfloat16_value(0xc000), -2.0);
  EXPECT_EQ(bfloat16_value(0x0001), 0x1p-133);    // the least subnormal
  EXPECT_EQ(bfloat16_value(0x7f7f), 0x1.fep127);  // the largest finite, (2 − 2^-7)·2^127
  EXPECT_TRUE(std::isinf(bfloat16_value(0xff80)) && bfloat16_value(0xff80) < 0);
  EXPECT_TRUE(attn_test::is_nan_bits(bfloat16_value(0x7fc0)));
  EXPECT_EQ(half_value(0x3c00), 1.0);
  EXPECT_EQ(half_value(0x7bff), 65504.0);
  EXPECT_EQ(half_value(0x0001), 0x1p-24);
  EXPECT_EQ(half_value(0x0400), 0x1p-14);
  EXPECT_EQ(half_value(0x8000), 0.0);
  EXPECT_TRUE(std::signbit(half_value(0x8000)));
  EXPECT_TRUE(std::isinf(half_value(0x7c00)) && half_value(0x7c00) > 0);
  EXPECT_TRUE(attn_test::is_nan_bits(half_value(0x7e00)));
}

// ---------------------------------------------------------------------------------------------
// 2. QuantizedMatrix
// ---------------------------------------------------------------------------------------------

// Groups of every magnitude a float holds, including groups whose largest value is tiny (below
// 127 / FLT_MAX ≈ 3.7e-37, where 127 / max overflows float) or subnormal. (Not under -ffast-math,
// whose start-up code makes the CPU read subnormal inputs as zero.)
TEST(QuantizedMatrixTest, EveryElementIsWithinHalfAStepOfItsGroup) {
  Random rng(30);
  std::vector<double> magnitudes = {1.0, 7.5, 1e-3, 1e3, 1e30, 1e-30, 3e38};
#if !defined(__FAST_MATH__)
  magnitudes.insert(magnitudes.end(), {1e-37, 1e-38, 1e-41});
#endif
  for (const Index group : {Index(8), Index(12), Index(64)}) {
    const Index rows = 7, groups = 3, cols = groups * group;
    Matrix<float> x(rows, cols);
    std::size_t which = 0;
    for (Index r = 0; r < rows; ++r) {
      for (Index g = 0; g < groups; ++g) {
        const double magnitude = magnitudes[which++ % magnitudes.size()];
        for (Index c = 0; c < group; ++c)
          x(r, g * group + c) = static_cast<float>(rng.uniform(-1, 1) * magnitude);
      }
    }
    const QuantizedMatrix q = QuantizedMatrix::quantize(x, group);
    const QuantizedView view = q.view();
    ASSERT_EQ(view.rows(), rows);
    ASSERT_EQ(view.cols(), cols);
    ASSERT_EQ(view.group(), group);
    ASSERT_EQ(view.scale_stride(), groups);
    const MatrixD input = stored_values(x);
    const MatrixD dequantized = stored_values(view);
    MatrixD bound(rows, cols);
    double worst_steps = 0;  // the largest error in units of the group's max / 254
    for (Index r = 0; r < rows; ++r) {
      for (Index g = 0; g < groups; ++g) {
        const double max = input.row(r).segment(g * group, group).cwiseAbs().maxCoeff();
        bound.row(r).segment(g * group, group).setConstant(qint8_error_bound(max));
        // scale = max / 127, correctly rounded to float (or to a subnormal float).
        const double scale = view.scales()[r * view.scale_stride() + g];
        EXPECT_LE(std::abs(scale - max / 127), float_roundoff * max / 127 + 0x1p-150)
            << "row " << r << " group " << g << " max " << max;
        for (Index c = g * group; c < (g + 1) * group; ++c) {
          if (max >= 1e-30) {
            worst_steps =
                std::max(worst_steps, std::abs(dequantized(r, c) - input(r, c)) / (max / 254));
          }
        }
      }
    }
    EXPECT_TRUE(within_bound(dequantized, input, bound)) << "group " << group;
    record_error("worst_error_in_half_steps_group_" + std::to_string(group), worst_steps);
  }
}

TEST(QuantizedMatrixTest, ScaleIsMaxOver127AndTheExtremesAreExactly127) {
  Matrix<float> x(2, 8);
  x << 0.5f, -3.0f, 1.25f, 3.0f, 0.0f, -0.1f, 2.9f, -1.0f,  //
      -7.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 6.99f;
  const QuantizedMatrix q = QuantizedMatrix::quantize(x, 8);
  const QuantizedView view = q.view();
  EXPECT_EQ(view.scales()[0], 3.0f / 127.0f);
  EXPECT_EQ(view.scales()[1], 7.0f / 127.0f);
  // ±max of a group map to ±127 (here both signs in row 0, a negative max alone in row 1).
  EXPECT_EQ(view.data()[1], -127);
  EXPECT_EQ(view.data()[3], 127);
  EXPECT_EQ(view.data()[4], 0);
  EXPECT_EQ(view.data()[8], -127);
  // round(0.5 / 3 · 127) = round(21.17) = 21; round(6.99 / 7 · 127) = round(126.82) = 127.
  EXPECT_EQ(view.data()[0], 21);
  EXPECT_EQ(view.data()[15], 127);
}

TEST(QuantizedMatrixTest, AllZeroGroupHasScaleZeroAndZeros) {
  Matrix<float> x = Matrix<float>::Zero(3, 12);
  x(0, 5) = -0.0f;                           // a negative zero is a zero too
  x.row(1).segment(4, 4).setConstant(2.0f);  // group 1 of row 1 only
  const QuantizedMatrix q = QuantizedMatrix::quantize(x, 4);
  const QuantizedView view = q.view();
  for (Index r = 0; r < 3; ++r) {
    for (Index g = 0; g < 3; ++g) {
      const bool nonzero = r == 1 && g == 1;
      EXPECT_EQ(view.scales()[r * 3 + g], nonzero ? 2.0f / 127.0f : 0.0f) << r << ", " << g;
      for (Index c = g * 4; c < g * 4 + 4; ++c)
        EXPECT_EQ(view.data()[r * 12 + c], nonzero ? 127 : 0) << r << ", " << c;
    }
  }
  const Matrix<float> back = q.dequantize();
  EXPECT_FALSE(back.hasNaN());
  EXPECT_EQ(back.row(1).segment(4, 4), Matrix<float>::Constant(1, 4, 2.0f));
  EXPECT_EQ(back.row(0), Matrix<float>::Zero(1, 12));
  EXPECT_EQ(back.row(2), Matrix<float>::Zero(1, 12));
}

TEST(QuantizedMatrixTest, NonFiniteElementsAndBadGroupsThrowShapeError) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  Random rng(31);
  Matrix<float> x = rng.uniform_matrix<float>(3, 8);
  x(1, 6) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_SHAPE_ERROR(QuantizedMatrix::quantize(x, 4), "QuantizedMatrix::quantize", "x(1, 6)",
                     "qint8");
  x(1, 6) = 0.5f;
  x(2, 0) = std::numeric_limits<float>::infinity();
  EXPECT_SHAPE_ERROR(QuantizedMatrix::quantize(x, 4), "x(2, 0)", "inf");
  x(2, 0) = -std::numeric_limits<float>::infinity();
  EXPECT_SHAPE_ERROR(QuantizedMatrix::quantize(x, 4), "x(2, 0)", "inf");
  x(2, 0) = 0.5f;
  // A group must divide the columns (and be at least 1).
  EXPECT_SHAPE_ERROR(QuantizedMatrix::quantize(x, 3), "group is 3", "cols 8");
  EXPECT_SHAPE_ERROR(QuantizedMatrix::quantize(x, 0), "group is 0");
  EXPECT_SHAPE_ERROR(QuantizedMatrix::quantize(x, 16), "group is 16");
  EXPECT_NO_THROW(QuantizedMatrix::quantize(x, 8));
}

TEST(QuantizedMatrixTest, BytesAreOnePerValueAndFourPerGroup) {
  Random rng(32);
  for (const auto& [rows, cols, group] : std::vector<std::array<Index, 3>>{
           {5, 64, 64}, {5, 64, 16}, {9, 24, 8}, {0, 16, 4}, {3, 10, 10}, {4, 12, 1}}) {
    const QuantizedMatrix q =
        QuantizedMatrix::quantize(rng.uniform_matrix<float>(rows, cols), group);
    EXPECT_EQ(q.bytes(), std::size_t(rows * cols + 4 * rows * cols / group))
        << rows << "x" << cols << " in groups of " << group;
  }
}

// The view's accessors: element (r, c) is the float product scale·q (so dequantize() is too),
// and middleRows views the same storage from another row.
TEST(QuantizedMatrixTest, ViewReadsScaleTimesValue) {
  Random rng(33);
  const Matrix<float> x = rng.uniform_matrix<float>(6, 24, -4, 4);
  const QuantizedMatrix q = QuantizedMatrix::quantize(x, 8);
  const QuantizedView view = q.view();
  EXPECT_EQ(view.outerStride(), 24);
  const Matrix<float> all = q.dequantize();
  for (Index r = 0; r < 6; ++r) {
    for (Index c = 0; c < 24; ++c) {
      const float expected = view.scales()[r * 3 + c / 8] * float(view.data()[r * 24 + c]);
      EXPECT_EQ(view(r, c), expected);
      EXPECT_EQ(all(r, c), expected);
    }
  }
  const QuantizedView middle = view.middleRows(2, 3);
  ASSERT_EQ(middle.rows(), 3);
  EXPECT_EQ(middle.data(), view.data() + 2 * 24);
  EXPECT_EQ(middle.scales(), view.scales() + 2 * 3);
  EXPECT_EQ(middle.dequantize(), all.middleRows(2, 3));
  EXPECT_EQ(q.view(4).rows(), 4);
  EXPECT_EQ(view.middleRows(6, 0).rows(), 0);
}

// ---------------------------------------------------------------------------------------------
// 3. The kernel over stored inputs: the float path's own accuracy
// ---------------------------------------------------------------------------------------------

enum class MaskKind { none, causal, window, key_length, keep, bias };

struct Masks {
  Mask mask;
  ReferenceMask reference;
  double bias_bound = 0;
};

Masks make_masks(MaskKind kind, Index n, Index m, Random& rng) {
  switch (kind) {
    case MaskKind::none:
      return {Mask(), ReferenceMask::none(), 0};
    case MaskKind::causal:
      return {Mask::causal(), ReferenceMask::causal(), 0};
    case MaskKind::window:
      return {Mask::causal() & Mask::window(20, 0),
              ReferenceMask::causal() & ReferenceMask::window(20, 0), 0};
    case MaskKind::key_length: {
      const Index count = m - m / 4;
      return {Mask::key_length(count), ReferenceMask::key_length(count), 0};
    }
    case MaskKind::keep: {
      const MatrixB allowed = rng.bernoulli_matrix(n, m, 0.7);
      return {Mask::keep(allowed), ReferenceMask::keep(allowed), 0};
    }
    case MaskKind::bias: {
      const Matrix<float> bias = rng.uniform_matrix<float>(n, m, -2, 2);
      return {Mask::bias(bias), ReferenceMask::bias(bias), 2};
    }
  }
  return {};
}

const char* mask_name(MaskKind kind) {
  switch (kind) {
    case MaskKind::none:
      return "none";
    case MaskKind::causal:
      return "causal";
    case MaskKind::window:
      return "causal&window(20,0)";
    case MaskKind::key_length:
      return "key_length(3m/4)";
    case MaskKind::keep:
      return "keep";
    case MaskKind::bias:
      return "bias";
  }
  return "?";
}

struct KernelCase {
  const char* name;
  Index n, m, heads, kv_heads, d, dv;
  MaskKind mask;
};

std::string describe(const KernelCase& c) {
  return std::string(c.name) + ": n=" + std::to_string(c.n) + " m=" + std::to_string(c.m) +
         " H=" + std::to_string(c.heads) + " Hkv=" + std::to_string(c.kv_heads) +
         " d=" + std::to_string(c.d) + " dv=" + std::to_string(c.dv) + " mask " + mask_name(c.mask);
}

// Both paths of the kernel (decode: fewer rows than a float packet; prefill: more), a decode over
// 1100 keys (split into two parts, one per 512 keys, and merged), grouped-query heads, head dims
// that are a multiple of no packet size (10, 6) or not of the wider ones (12 of AVX's 8 lanes,
// 8 of AVX-512's 16), with dv ≠ d, and every kind of mask.
const std::vector<KernelCase> kernel_cases = {
    {"prefill", 100, 130, 3, 3, 32, 32, MaskKind::causal},
    {"prefill GQA", 96, 160, 4, 2, 16, 16, MaskKind::none},
    {"decode split", 1, 1100, 4, 4, 64, 64, MaskKind::none},
    {"decode n=3", 3, 200, 2, 2, 16, 16, MaskKind::causal},
    {"decode GQA window", 1, 300, 4, 2, 16, 16, MaskKind::window},
    {"decode GQA ragged", 3, 90, 4, 2, 12, 8, MaskKind::none},
    {"prefill ragged", 50, 90, 2, 2, 12, 8, MaskKind::causal},
    {"prefill GQA ragged", 40, 70, 4, 2, 10, 6, MaskKind::key_length},
    {"decode ragged keep", 1, 70, 2, 1, 10, 6, MaskKind::keep},
    {"prefill window", 64, 200, 2, 2, 16, 16, MaskKind::window},
    {"prefill key_length", 30, 200, 2, 2, 16, 16, MaskKind::key_length},
    {"prefill keep", 20, 60, 2, 2, 16, 16, MaskKind::keep},
    {"prefill GQA bias", 20, 60, 2, 1, 16, 16, MaskKind::bias},
    {"decode n=3 bias", 3, 60, 2, 2, 16, 16, MaskKind::bias},
    // m = 16384 keys for one query: 32 parts of 512 keys, merged. The float accumulators keep the
    // error at the float tolerance, which grows like log2(m); an accumulator of 16 bits (say the
    // storage type) would lose the sum's small terms long before 16384 keys (2^-8 relative per
    // addition in bfloat16), orders of magnitude beyond it.
    {"long decode", 1, 16384, 2, 2, 64, 64, MaskKind::none},
    // The prefill path over 4096 keys: 32 key blocks per query block, rescaled as the max rises.
    {"long prefill", 64, 4096, 2, 1, 64, 64, MaskKind::none},
};

template <typename T>
class StoredKernel : public ::testing::Test {};
using KernelStorages =
    ::testing::Types<Storages<float, bfloat16, bfloat16>, Storages<float, half, half>,
                     Storages<float, qint8, qint8>, Storages<float, bfloat16, half>,
                     Storages<bfloat16, bfloat16, bfloat16>, Storages<half, float, float>,
                     Storages<float, qint8, bfloat16>>;
TYPED_TEST_SUITE(StoredKernel, KernelStorages, TypeNames);

// Against the fp64 reference over the same stored values, the only error left is the float
// kernel's own (the "accumulation" error): attention_tolerance<float>, the bound the float path
// meets with float inputs, with the logit bound B and max|v| of the stored values.
TYPED_TEST(StoredKernel, MatchesTheReferenceOverTheStoredValues) {
  using QS = typename TypeParam::QS;
  using KS = typename TypeParam::KS;
  using VS = typename TypeParam::VS;
  std::uint32_t seed = 100;
  double worst = 0;
  for (const KernelCase& c : kernel_cases) {
    Random rng(++seed);
    const Matrix<float> q = rng.uniform_matrix<float>(c.n, c.heads * c.d);
    const Matrix<float> k = rng.uniform_matrix<float>(c.m, c.kv_heads * c.d);
    const Matrix<float> v = rng.uniform_matrix<float>(c.m, c.kv_heads * c.dv);
    const Matrix<QS> q_stored = q.template cast<QS>();
    const Stored<KS> k_stored(k, c.d);
    const Stored<VS> v_stored(v, c.dv);
    const Masks masks = make_masks(c.mask, c.n, c.m, rng);
    attn::AttentionOptions options;
    options.num_heads = c.heads;
    options.num_kv_heads = c.kv_heads;
    // K as the owning matrix, V as a view: both kinds of argument.
    const Matrix<float> out = attn::scaled_dot_product_attention(
        q_stored, k_stored.argument(), v_stored.view(), masks.mask, options);

    const MatrixD q_exact = stored_values(q_stored);
    const MatrixD k_exact = k_stored.exact();
    const MatrixD v_exact = v_stored.exact();
    const MatrixD expected = attn_test::reference_multi_head(q_exact, k_exact, v_exact, c.heads,
                                                             c.kv_heads, masks.reference);
    const double tol = attn_test::attention_tolerance<float>(
        logit_bound(q_exact, k_exact, c.d, masks.bias_bound), c.m, max_abs(v_exact));
    EXPECT_TRUE(attn_test::matrix_near(out, expected, tol)) << describe(c) << " seed=" << seed;
    const double error = max_error(out, expected);
    worst = std::max(worst, error / tol);
    if (c.m >= 4096) record_error(std::string(c.name) + "_error", error);
  }
  record_error("worst_error_over_tolerance", worst);
}

// The optional outputs over bfloat16 keys and values: log-sum-exps and attention weights, on the
// prefill path and with fewer rows than a packet.
TEST(StoredKernelExtras, LogSumExpAndWeightsOverBfloat16KeysAndValues) {
  std::uint32_t seed = 200;
  for (const Index n : {Index(20), Index(2)}) {
    Random rng(++seed);
    const Index m = 90, heads = 2, kv_heads = 1, d = 16;
    const Matrix<float> q = rng.uniform_matrix<float>(n, heads * d);
    const Stored<bfloat16> k(rng.uniform_matrix<float>(m, kv_heads * d), d);
    const Stored<bfloat16> v(rng.uniform_matrix<float>(m, kv_heads * d), d);
    attn::AttentionOptions options;
    options.num_heads = heads;
    options.num_kv_heads = kv_heads;
    Matrix<float> lse, weights;
    attn::AttentionExtras<float> extras;
    extras.log_sum_exp = &lse;
    extras.weights = &weights;
    const Matrix<float> out = attn::scaled_dot_product_attention(q, k.argument(), v.argument(),
                                                                 Mask::causal(), options, extras);

    MatrixD expected_lse, expected_weights;
    const MatrixD q_exact = stored_values(q), k_exact = k.exact(), v_exact = v.exact();
    const MatrixD expected = attn_test::reference_multi_head(
        q_exact, k_exact, v_exact, heads, kv_heads, ReferenceMask::causal(), std::nullopt, 0,
        &expected_lse, &expected_weights);
    const double tol = attn_test::attention_tolerance<float>(logit_bound(q_exact, k_exact, d), m);
    EXPECT_TRUE(attn_test::matrix_near(out, expected, tol)) << "n=" << n;
    EXPECT_TRUE(attn_test::matrix_near(lse, expected_lse, tol)) << "n=" << n;
    EXPECT_TRUE(attn_test::matrix_near(weights, expected_weights, tol)) << "n=" << n;
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Storage error: against the reference over the unrounded inputs
// ---------------------------------------------------------------------------------------------

// What storing k and v in S can change in one head's exact output, over float inputs q, k, v
// (q kept as it is). Let k̃ = k + δk and ṽ = v + δv be the stored values, |δ| ≤ ε elementwise
// (storage_error_bound: 2^-8·|x| for bfloat16, 2^-11·|x| for half, max|group|/254 for qint8, plus
// their tiny slacks).
// - A logit s_ij = scale·q_i·k_j moves by |scale·q_i·δk_j| ≤ Δ_ij = scale·Σ_l |q_il|·ε(k_jl):
//   for entries in [−1, 1] and a relative rounding r, Δ ≤ r·B with B = scale·Σ|q||k| ≤ √d.
//   Let Δ = max_ij Δ_ij.
// - Softmax weights p_j = e^(s_j)/Σ e^(s_l) then change by a factor within [e^(−2Δ), e^(2Δ)], so
//   Σ_j |p̃_j − p_j| ≤ e^(2Δ) − 1, and the combination of values moves by at most
//   (e^(2Δ) − 1)·max|ṽ|.
// - The values themselves: Σ_j p_j·δv_j is a convex combination, at most max ε(v).
// So |õ − o| ≤ (e^(2Δ) − 1)·max|ṽ| + max ε(v), with no dependence on the number of keys m: the
// rounding of stored inputs does not accumulate along the sequence (errors of many keys average
// within a convex combination). On top comes the float kernel's own error over the stored
// values, attention_tolerance<float>, which grows like log2(m) only.
template <typename S>
double storage_tolerance(const MatrixD& q, const MatrixD& k, const MatrixD& v,
                         const MatrixD& v_stored, double scale) {
  const MatrixD k_error = storage_error_bound<S>(k.cwiseAbs(), k.cols());
  const MatrixD v_error = storage_error_bound<S>(v.cwiseAbs(), v.cols());
  const double delta = scale * (q.cwiseAbs() * k_error.transpose()).maxCoeff();
  return std::expm1(2 * delta) * max_abs(v_stored) + v_error.maxCoeff();
}

template <typename S>
class StoredRows : public ::testing::Test {};
using ReducedStorages = ::testing::Types<bfloat16, half, qint8>;
TYPED_TEST_SUITE(StoredRows, ReducedStorages, TypeNames);

// One head (d = 64) over m = 512, 4096 and 16384 keys, decoding one query and prefilling eight.
// Values lie in [0, 1), so every output is ≈ 0.5 whatever m: a sum that dropped the small terms
// of a long sequence would show as an error growing with m, not vanish into outputs near zero.
TYPED_TEST(StoredRows, StorageErrorIsBoundedIndependentlyOfTheSequenceLength) {
  using S = TypeParam;
  const Index d = 64;
  const double scale = 1 / std::sqrt(double(d));
  std::uint32_t seed = 300;
  double errors_at_512[2] = {0, 0};  // for n = 1 and n = 8
  for (const Index m : {Index(512), Index(4096), Index(16384)}) {
    for (const Index n : {Index(1), Index(8)}) {
      Random rng(++seed);
      const Matrix<float> q = rng.uniform_matrix<float>(n, d);
      const Matrix<float> k = rng.uniform_matrix<float>(m, d);
      const Matrix<float> v = rng.uniform_matrix<float>(m, d, 0, 1);
      const Stored<S> k_stored(k, d), v_stored(v, d);
      const Matrix<float> out =
          attn::scaled_dot_product_attention(q, k_stored.argument(), v_stored.argument());

      const MatrixD q_exact = stored_values(q), k_exact = stored_values(k),
                    v_exact = stored_values(v);
      const MatrixD v_kept = v_stored.exact();
      const MatrixD expected = attn_test::reference_multi_head(q_exact, k_exact, v_exact, 1, 1);
      const double storage = storage_tolerance<S>(q_exact, k_exact, v_exact, v_kept, scale);
      const double accumulation = attn_test::attention_tolerance<float>(
          logit_bound(q_exact, k_stored.exact(), d), m, max_abs(v_kept));
      const std::string what = "m=" + std::to_string(m) + " n=" + std::to_string(n);
      EXPECT_TRUE(attn_test::matrix_near(out, expected, storage + accumulation))
          << what << " seed=" << seed << " (storage bound " << storage << ", accumulation "
          << accumulation << ")";
      const double error = max_error(out, expected);
      record_error("error_" + what, error);
      record_error("bound_" + what, storage + accumulation);
      if (m == 512) errors_at_512[std::size_t(n == 8)] = error;
      // The rounding of each stored key and value averages out within the convex combination, so
      // the error does not grow with m (measured, it shrinks: ≈ 1e-4 at 512 keys and 2e-5 at 16384
      // for bfloat16). One that grew would be an accumulation defect: sums over keys kept in 16
      // bits, say, which the bound above also catches once the error reaches it; this catches it
      // earlier, at twice the error of 512 keys.
      if (m == 16384) {
        EXPECT_LE(error, 2 * errors_at_512[std::size_t(n == 8)]) << what << " seed=" << seed;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 5. Partial attention over parts in different storages, merged
// ---------------------------------------------------------------------------------------------

MatrixD stack_rows(const std::vector<MatrixD>& parts) {
  Index rows = 0;
  for (const MatrixD& p : parts)
    rows += p.rows();
  MatrixD all(rows, parts.front().cols());
  Index r = 0;
  for (const MatrixD& p : parts) {
    all.middleRows(r, p.rows()) = p;
    r += p.rows();
  }
  return all;
}

// Keys split in parts (a bfloat16 cache, fresh float rows, and for three parts a qint8 one),
// attended separately and merged by log-sum-exp: attention over the union. Each part is within
// the float tolerance T of its exact result and the merge adds a few roundings of exponentials of
// log-sum-exp differences (each ≲ u·|lse| ≤ u·(B + log m)), so the merged result is within 3T, as
// in test_partial_attention. A part from the wrong storage, a wrong scale or a misplaced
// log-sum-exp is off by O(0.01) or more.
TEST(StoredPartial, PartsInDifferentStoragesMergeToTheReferenceOverTheUnion) {
  std::uint32_t seed = 400;
  const Index heads = 2, kv_heads = 1, d = 16;
  attn::AttentionOptions options;
  options.num_heads = heads;
  options.num_kv_heads = kv_heads;
  for (const Index n : {Index(1), Index(3), Index(20)}) {
    for (const bool three : {false, true}) {
      Random rng(++seed);
      const Index m_bf16 = n == 1 ? 1100 : 300, m_float = 250, m_q8 = three ? 170 : 0;
      const Matrix<float> q = rng.uniform_matrix<float>(n, heads * d);
      const Stored<bfloat16> k1(rng.uniform_matrix<float>(m_bf16, kv_heads * d), d);
      const Stored<bfloat16> v1(rng.uniform_matrix<float>(m_bf16, kv_heads * d), d);
      const Matrix<float> k2 = rng.uniform_matrix<float>(m_float, kv_heads * d);
      const Matrix<float> v2 = rng.uniform_matrix<float>(m_float, kv_heads * d);
      const Stored<qint8> k3(rng.uniform_matrix<float>(m_q8, kv_heads * d), d);
      const Stored<qint8> v3(rng.uniform_matrix<float>(m_q8, kv_heads * d), d);

      std::vector<attn::PartialAttention<float>> parts;
      parts.push_back(
          attn::scaled_dot_product_attention_partial(q, k1.argument(), v1.view(), Mask(), options));
      parts.push_back(attn::scaled_dot_product_attention_partial(q, k2, v2, Mask(), options));
      if (three) {
        parts.push_back(attn::scaled_dot_product_attention_partial(q, k3.view(), v3.argument(),
                                                                   Mask(), options));
      }
      attn::PartialAttention<float> merged = parts.front();
      if (three) {
        merged = attn::merge_partial_attention(parts);
      } else {
        attn::merge_partial_attention(merged, parts.back());
      }

      std::vector<MatrixD> keys = {k1.exact(), stored_values(k2)};
      std::vector<MatrixD> values = {v1.exact(), stored_values(v2)};
      if (three) {
        keys.push_back(k3.exact());
        values.push_back(v3.exact());
      }
      const MatrixD all_keys = stack_rows(keys), all_values = stack_rows(values);
      MatrixD expected_lse;
      const MatrixD q_exact = stored_values(q);
      const MatrixD expected =
          attn_test::reference_multi_head(q_exact, all_keys, all_values, heads, kv_heads,
                                          ReferenceMask(), std::nullopt, 0, &expected_lse);
      const double tol = 3 * attn_test::attention_tolerance<float>(
                                 logit_bound(q_exact, all_keys, d), all_keys.rows());
      const std::string what = "n=" + std::to_string(n) + (three ? " three parts" : " two parts");
      EXPECT_TRUE(attn_test::matrix_near(merged.out, expected, tol)) << what;
      EXPECT_TRUE(attn_test::matrix_near(merged.log_sum_exp, expected_lse, tol)) << what;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 6. KVCache in reduced storage, and SelfAttention over it
// ---------------------------------------------------------------------------------------------

template <typename S>
std::size_t expected_bytes(Index rows, Index width, Index group) {
  if constexpr (std::is_same_v<S, qint8>) {
    return std::size_t(2 * (rows * width + 4 * rows * width / group));
  } else {
    return std::size_t(2 * rows * width) * sizeof(S);
  }
}

// The raw bytes of a view's rows (and for qint8 its scales): what "unchanged" compares.
template <typename View>
std::vector<unsigned char> raw_bytes(const View& x) {
  std::vector<unsigned char> bytes;
  const auto append = [&bytes](const void* from, std::size_t count) {
    const auto* first = static_cast<const unsigned char*>(from);
    bytes.insert(bytes.end(), first, first + count);
  };
  for (Index r = 0; r < x.rows(); ++r) {
    append(x.data() + r * x.outerStride(), std::size_t(x.cols()) * sizeof(*x.data()));
    if constexpr (std::is_same_v<View, QuantizedView>) {
      append(x.scales() + r * x.scale_stride(), sizeof(float) * std::size_t(x.cols() / x.group()));
    }
  }
  return bytes;
}

template <typename S>
struct CacheSnapshot {
  explicit CacheSnapshot(const attn::KVCache<float, S>& cache)
      : size(cache.size()), keys(raw_bytes(cache.keys())), values(raw_bytes(cache.values())) {}
  Index size;
  std::vector<unsigned char> keys, values;
};

template <typename S>
::testing::AssertionResult unchanged(const attn::KVCache<float, S>& cache,
                                     const CacheSnapshot<S>& before) {
  if (cache.size() != before.size) {
    return ::testing::AssertionFailure() << "size " << cache.size() << ", was " << before.size;
  }
  if (raw_bytes(cache.keys()) != before.keys) {
    return ::testing::AssertionFailure() << "keys changed";
  }
  if (raw_bytes(cache.values()) != before.values) {
    return ::testing::AssertionFailure() << "values changed";
  }
  return ::testing::AssertionSuccess();
}

// The stored rows are x rounded to S (Eigen's conversion, bit for bit), or for qint8 quantised as
// QuantizedMatrix::quantize does (the documented "quantised once"), bit for bit; and, checked
// against the input rather than a conversion, finite values are within S's rounding of x.
template <typename S, typename View>
::testing::AssertionResult stores_exactly(const View& stored, const Matrix<float>& x, Index group) {
  if (stored.rows() != x.rows() || stored.cols() != x.cols()) {
    return ::testing::AssertionFailure() << "stored " << stored.rows() << "x" << stored.cols()
                                         << ", expected " << x.rows() << "x" << x.cols();
  }
  if constexpr (std::is_same_v<S, qint8>) {
    const QuantizedMatrix expected = QuantizedMatrix::quantize(x, group);
    if (stored.group() != group) {
      return ::testing::AssertionFailure() << "group " << stored.group() << ", expected " << group;
    }
    if (raw_bytes(stored) != raw_bytes(expected.view())) {
      return ::testing::AssertionFailure() << "differs from QuantizedMatrix::quantize";
    }
    return within_bound(stored_values(stored), stored_values(x),
                        storage_error_bound<qint8>(stored_values(x).cwiseAbs(), group));
  } else {
    (void)group;
    for (Index r = 0; r < x.rows(); ++r) {
      for (Index c = 0; c < x.cols(); ++c) {
        const double value = value_of(stored(r, c)), input = x(r, c);
        if (bits_of(stored(r, c)) != bits_of(S(x(r, c)))) {
          return ::testing::AssertionFailure()
                 << "(" << r << ", " << c << "): stored " << value << " for " << input
                 << ", which rounds to " << value_of(S(x(r, c)));
        }
        if (std::isfinite(input) &&
            !(std::abs(value - input) <=
              Rounding<S>::relative * std::abs(input) + Rounding<S>::absolute)) {
          return ::testing::AssertionFailure() << "(" << r << ", " << c << "): stored " << value
                                               << " for " << input << ", beyond its rounding";
        }
      }
    }
    return ::testing::AssertionSuccess();
  }
}

TYPED_TEST(StoredRows, CacheBytesAreTheStorageAtFullCapacity) {
  using S = TypeParam;
  for (const auto& [capacity, width, head_dim] : std::vector<std::array<Index, 3>>{
           {10, 64, 16}, {7, 24, 8}, {0, 16, 4}, {5, 12, 12}, {3, 40, 10}}) {
    const attn::KVCache<float, S> cache(capacity, width, head_dim);
    EXPECT_EQ(cache.bytes(), expected_bytes<S>(capacity, width, head_dim))
        << capacity << " x " << width << " head_dim " << head_dim;
  }
  // head_dim 0 means one head as wide as the keys.
  EXPECT_EQ((attn::KVCache<float, S>(6, 32).bytes()), expected_bytes<S>(6, 32, 32));
  // For comparison, a float and a double cache: 4 and 8 bytes per value.
  EXPECT_EQ(attn::KVCache<float>(10, 64).bytes(), std::size_t(2 * 10 * 64 * 4));
  EXPECT_EQ(attn::KVCache<double>(10, 64).bytes(), std::size_t(2 * 10 * 64 * 8));
}

TYPED_TEST(StoredRows, CacheKeepsEachAppendRoundedOnce) {
  using S = TypeParam;
  Random rng(500);
  const Index width = 24, head_dim = 8;
  attn::KVCache<float, S> cache(12, width, head_dim);
  Matrix<float> keys(0, width), values(0, width);
  const Matrix<float> wide = rng.uniform_matrix<float>(4, 40, -3, 3);
  for (const Index rows : {Index(5), Index(4), Index(3)}) {
    // Keys and values of other magnitudes (so that qint8 scales differ), and once keys from a
    // block of a wider matrix (an expression with a row stride).
    const Matrix<float> k = rows == 4 ? Matrix<float>(wide.middleCols(7, width))
                                      : rng.uniform_matrix<float>(rows, width, -2, 2);
    const Matrix<float> v = rng.uniform_matrix<float>(rows, width, -100, 100);
    if (rows == 4) {
      cache.append(wide.middleCols(7, width), v);
    } else {
      cache.append(k, v);
    }
    keys.conservativeResize(keys.rows() + rows, Eigen::NoChange);
    values.conservativeResize(values.rows() + rows, Eigen::NoChange);
    keys.bottomRows(rows) = k;
    values.bottomRows(rows) = v;
    ASSERT_EQ(cache.size(), keys.rows());
    EXPECT_TRUE(stores_exactly<S>(cache.keys(), keys, head_dim)) << "after " << cache.size();
    EXPECT_TRUE(stores_exactly<S>(cache.values(), values, head_dim)) << "after " << cache.size();
  }
  cache.reset();
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(cache.keys().rows(), 0);
}

// bfloat16 and half keep NaN and ±inf (the kernel then treats them as float would); qint8 has no
// scale for a group holding one and rejects it, leaving the cache unchanged.
TYPED_TEST(StoredRows, CacheNonFiniteValuesAreKeptOrRejected) {
  ATTN_TEST_SKIP_UNDER_FINITE_MATH();
  using S = TypeParam;
  Random rng(510);
  attn::KVCache<float, S> cache(8, 16, 8);
  cache.append(rng.uniform_matrix<float>(2, 16), rng.uniform_matrix<float>(2, 16));
  Matrix<float> k = rng.uniform_matrix<float>(2, 16), v = rng.uniform_matrix<float>(2, 16);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  k(0, 1) = nan;
  k(1, 9) = inf;
  v(1, 3) = -inf;
  if constexpr (std::is_same_v<S, qint8>) {
    const CacheSnapshot<S> before(cache);
    EXPECT_SHAPE_ERROR(cache.append(k, v), "KVCache::append", "k(0, 1)", "qint8");
    EXPECT_TRUE(unchanged(cache, before));
    k(0, 1) = 0.5f;
    EXPECT_SHAPE_ERROR(cache.append(k, v), "k(1, 9)", "inf");
    EXPECT_TRUE(unchanged(cache, before));
    k(1, 9) = 0.5f;
    EXPECT_SHAPE_ERROR(cache.append(k, v), "v(1, 3)", "inf");
    EXPECT_TRUE(unchanged(cache, before));
    v(1, 3) = 0.5f;
    EXPECT_NO_THROW(cache.append(k, v));
    EXPECT_EQ(cache.size(), 4);
  } else {
    ASSERT_NO_THROW(cache.append(k, v));
    ASSERT_EQ(cache.size(), 4);
    const auto keys = cache.keys().bottomRows(2);
    const auto values = cache.values().bottomRows(2);
    // NaN: all-ones exponent and a nonzero mantissa; infinities: all-ones exponent, zero mantissa.
    const std::uint16_t exponent = std::is_same_v<S, bfloat16> ? 0x7f80 : 0x7c00;
    const std::uint16_t nan_bits = bits_of(keys(0, 1));
    EXPECT_EQ(nan_bits & exponent, exponent);
    EXPECT_NE(nan_bits & ~exponent & 0x7fff, 0);
    EXPECT_EQ(bits_of(keys(1, 9)), exponent);
    EXPECT_EQ(bits_of(values(1, 3)), exponent | 0x8000);
    // Every element, these included, is the input rounded to S.
    EXPECT_TRUE(stores_exactly<S>(keys, k, 8));
    EXPECT_TRUE(stores_exactly<S>(values, v, 8));
  }
}

// Finite values a 16-bit type would round to infinity are rejected, naming the element, and the
// cache is unchanged; the largest values that round to a finite one are kept.
TEST(StoredCacheRange, HalfRejectsValuesBeyond65504) {
  Random rng(520);
  attn::KVCache<float, half> cache(8, 8);
  cache.append(rng.uniform_matrix<float>(3, 8), rng.uniform_matrix<float>(3, 8));
  const CacheSnapshot<half> before(cache);
  Matrix<float> k = rng.uniform_matrix<float>(2, 8), v = rng.uniform_matrix<float>(2, 8);
  k(1, 2) = 70000.0f;
  EXPECT_SHAPE_ERROR(cache.append(k, v), "KVCache::append", "k(1, 2)", "70000", "half");
  EXPECT_TRUE(unchanged(cache, before));
  k(1, 2) = 0;
  // 65520 is halfway between 65504 and 2^16, and rounds to even: infinity.
  v(0, 7) = -65520.0f;
  EXPECT_SHAPE_ERROR(cache.append(k, v), "v(0, 7)", "half");
  EXPECT_TRUE(unchanged(cache, before));
  // Just below it rounds to the largest half, 65504.
  v(0, 7) = -std::nextafter(65520.0f, 0.0f);
  k(0, 0) = 65504.0f;
  ASSERT_NO_THROW(cache.append(k, v));
  EXPECT_EQ(half_value(bits_of(cache.values()(3, 7))), -65504.0);
  EXPECT_EQ(half_value(bits_of(cache.keys()(3, 0))), 65504.0);
}

TEST(StoredCacheRange, Bfloat16RejectsValuesThatRoundToInfinity) {
  Random rng(530);
  attn::KVCache<float, bfloat16> cache(8, 8);
  cache.append(rng.uniform_matrix<float>(3, 8), rng.uniform_matrix<float>(3, 8));
  const CacheSnapshot<bfloat16> before(cache);
  Matrix<float> k = rng.uniform_matrix<float>(2, 8), v = rng.uniform_matrix<float>(2, 8);
  k(0, 1) = 3.4e38f;
  EXPECT_SHAPE_ERROR(cache.append(k, v), "KVCache::append", "k(0, 1)", "bfloat16");
  EXPECT_TRUE(unchanged(cache, before));
  k(0, 1) = std::numeric_limits<float>::max();
  EXPECT_SHAPE_ERROR(cache.append(k, v), "k(0, 1)", "bfloat16");
  EXPECT_TRUE(unchanged(cache, before));
  k(0, 1) = 0;
  // bfloat16's largest finite value is (2 − 2^-7)·2^127; halfway to 2^128 rounds to even, up.
  const float halfway = 0x1.ffp127f;
  v(1, 4) = -halfway;
  EXPECT_SHAPE_ERROR(cache.append(k, v), "v(1, 4)", "bfloat16");
  EXPECT_TRUE(unchanged(cache, before));
  v(1, 4) = -std::nextafter(halfway, 0.0f);
  ASSERT_NO_THROW(cache.append(k, v));
  EXPECT_EQ(bfloat16_value(bits_of(cache.values()(4, 4))), -0x1.fep127);
}

MultiHeadConfig config(Index model_dim, Index heads, Index kv_heads, Index source_dim = 0) {
  MultiHeadConfig cfg;
  cfg.model_dim = model_dim;
  cfg.num_heads = heads;
  cfg.num_kv_heads = kv_heads;
  cfg.source_dim = source_dim;
  return cfg;
}

// Higham's γ_n = n·u / (1 − n·u): the relative bound of a length-n float dot product.
double dot_gamma(Index n) {
  return double(n) * float_roundoff / (1 - double(n) * float_roundoff);
}

// Rows a layer stored for projected keys or values, against the exact projection x·Wᵀ + b: the
// float projection is within t = γ_{S+1}·(|x|·|W|ᵀ + |b|) of it, and storing costs at most
// ε(|K| + t); so |stored − K| ≤ ε(|K| + t) + t. A row or head from the wrong projection (V for K)
// or position is off by O(0.1).
template <typename S>
::testing::AssertionResult stores_projection(const MatrixD& stored, const Matrix<float>& x,
                                             const MatrixD& weight, const VectorD& bias,
                                             Index group) {
  const MatrixD exact = attn_test::reference_linear(x, weight, bias);
  const MatrixD slack = dot_gamma(x.cols() + 1) *
                        attn_test::reference_linear(stored_values(x).cwiseAbs(), weight.cwiseAbs(),
                                                    VectorD(bias.cwiseAbs()));
  const MatrixD bound = storage_error_bound<S>(exact.cwiseAbs() + slack, group) + slack;
  return within_bound(stored, exact, bound);
}

// The layer's output for rows x over keys and values as stored (decoded to double): Q = x·Wqᵀ + bq,
// the heads by reference_multi_head, then the output projection, all in double from the weights.
MatrixD reference_layer(const Matrix<float>& x, const MatrixD& keys, const MatrixD& values,
                        const attn_test::ReferenceWeights& w, const MultiHeadConfig& cfg,
                        const ReferenceMask& mask) {
  const MatrixD q = attn_test::reference_linear(x, w.q_weight, w.q_bias);
  const MatrixD heads =
      attn_test::reference_multi_head(q, keys, values, cfg.num_heads, cfg.kv_heads(), mask);
  return attn_test::reference_linear(heads, w.out_weight, w.out_bias);
}

// SelfAttention with a cache made by make_cache<S>: a prefill of 1020 rows, then a 3-row chunk
// and single steps over 1024 to 1028 keys (causal: split into two parts, one per 512 keys, and
// merged), for MHA and GQA, causal and with a sliding window of 24. Each output is compared with the fp64 layer
// over the keys and values the cache actually holds, so the storage's rounding is not an error
// here and the layer must be within its float tolerance; and the rows each call stored are the
// call's projected keys and values, rounded.
TYPED_TEST(StoredRows, SelfAttentionOverItsCacheMatchesTheReference) {
  using S = TypeParam;
  std::uint32_t seed = 600;
  const std::vector<Index> chunks = {1020, 3, 1, 1, 1, 1, 1};
  for (const MultiHeadConfig& cfg : {config(32, 4, 4), config(32, 4, 2)}) {
    for (const Index window : {Index(-1), Index(24)}) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<float>(cfg, rng);
      const attn_test::ReferenceWeights rw = attn_test::reference_weights(w);
      const attn::SelfAttention<float> layer(cfg, w);
      attn::KVCache<float, S> cache = layer.template make_cache<S>(1040);
      EXPECT_EQ(cache.bytes(), expected_bytes<S>(1040, cfg.kv_dim(), cfg.head_dim()));
      const Mask mask = window < 0 ? Mask::causal() : Mask::causal() & Mask::window(window, 0);
      const ReferenceMask reference_mask =
          window < 0 ? ReferenceMask::causal()
                     : ReferenceMask::causal() & ReferenceMask::window(window, 0);
      const Index d = cfg.head_dim();
      for (const Index rows : chunks) {
        const Matrix<float> x = rng.uniform_matrix<float>(rows, cfg.model_dim);
        const Index first = cache.size();
        const Matrix<float> y = layer(x, cache, mask);
        const Index m = cache.size();
        ASSERT_EQ(m, first + rows);
        const std::string what = "H=" + std::to_string(cfg.num_heads) +
                                 " Hkv=" + std::to_string(cfg.kv_heads()) +
                                 " window=" + std::to_string(window) + " m=" + std::to_string(m);
        const MatrixD keys = stored_values(cache.keys());
        const MatrixD values = stored_values(cache.values());
        EXPECT_TRUE(
            stores_projection<S>(keys.middleRows(first, rows), x, rw.k_weight, rw.k_bias, d))
            << what << " keys";
        EXPECT_TRUE(
            stores_projection<S>(values.middleRows(first, rows), x, rw.v_weight, rw.v_bias, d))
            << what << " values";
        const MatrixD expected = reference_layer(x, keys, values, rw, cfg, reference_mask);
        EXPECT_TRUE(attn_test::matrix_near(
            y, expected, attn_test::layer_tolerance<float>(cfg.model_dim, cfg.model_dim, d, m)))
            << what;
      }
    }
  }
}

// A step whose keys do not fit half (an input of 10^6 projects to keys far beyond 65504) throws
// before anything changes: the cache (size and contents) and out are as they were, and the next
// good step works.
TEST(StoredCacheLayer, KeysBeyondHalfThrowAndChangeNothing) {
  const MultiHeadConfig cfg = config(32, 4, 2);
  Random rng(610);
  const attn::SelfAttention<float> layer(cfg, attn_test::random_weights<float>(cfg, rng));
  attn::KVCache<float, half> cache = layer.make_cache<half>(16);
  layer(rng.uniform_matrix<float>(5, cfg.model_dim), cache);
  const CacheSnapshot<half> before(cache);
  Matrix<float> huge = rng.uniform_matrix<float>(2, cfg.model_dim);
  huge.row(1) *= 1e6f;
  Matrix<float> out = Matrix<float>::Constant(2, cfg.model_dim, 42.0f);
  EXPECT_SHAPE_ERROR(layer.attend_into(huge, cache, out), "KVCache::append", "half");
  EXPECT_TRUE(unchanged(cache, before));
  EXPECT_EQ(out, Matrix<float>::Constant(2, cfg.model_dim, 42.0f));
  EXPECT_NO_THROW(layer.attend_into(huge.topRows(1), cache, out.topRows(1)));
  EXPECT_EQ(cache.size(), 6);
}

// A qint8 cache must keep one scale per head row: one made with another group is rejected by the
// layer (and by the kernel), before anything is appended.
TEST(StoredCacheLayer, Qint8CacheWithGroupsOtherThanAHeadIsRejected) {
  const MultiHeadConfig cfg = config(32, 4, 2);  // head_dim 8, kv_dim 16
  Random rng(620);
  const attn::SelfAttention<float> layer(cfg, attn_test::random_weights<float>(cfg, rng));
  const Matrix<float> x = rng.uniform_matrix<float>(3, cfg.model_dim);
  attn::KVCache<float, qint8> whole_rows(8, cfg.kv_dim());  // head_dim 0: groups of 16
  attn::KVCache<float, qint8> quarters(8, cfg.kv_dim(), 4);
  EXPECT_SHAPE_ERROR(layer(x, whole_rows), "SelfAttention", "groups of 16", "head_dim = 8");
  EXPECT_SHAPE_ERROR(layer(x, quarters), "SelfAttention", "groups of 4", "head_dim = 8");
  EXPECT_EQ(whole_rows.size(), 0);
  EXPECT_EQ(quarters.size(), 0);
  attn::KVCache<float, qint8> right = layer.make_cache<qint8>(8);
  EXPECT_NO_THROW(layer(x, right));

  attn::AttentionOptions options;
  options.num_heads = 4;
  options.num_kv_heads = 2;
  const QuantizedMatrix k = QuantizedMatrix::quantize(rng.uniform_matrix<float>(5, 16), 16);
  const QuantizedMatrix v = QuantizedMatrix::quantize(rng.uniform_matrix<float>(5, 16), 8);
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(x, k, v, Mask(), options),
                     "scaled_dot_product_attention", "k is qint8 in groups of 16");
  const QuantizedMatrix k8 = QuantizedMatrix::quantize(rng.uniform_matrix<float>(5, 16), 8);
  const QuantizedMatrix v16 = QuantizedMatrix::quantize(rng.uniform_matrix<float>(5, 16), 16);
  EXPECT_SHAPE_ERROR(attn::scaled_dot_product_attention(x, k8, v16, Mask(), options),
                     "v is qint8 in groups of 16");
}

// ---------------------------------------------------------------------------------------------
// 7. CrossAttention with a remembered memory in reduced storage
// ---------------------------------------------------------------------------------------------

// remember<S> projects the source once and keeps keys and values in S; steps over it match the
// fp64 layer over what the memory holds, for a short source and one long enough that a decoding
// step splits (1100 keys), and for sources packed with lengths.
TYPED_TEST(StoredRows, CrossAttentionOverARememberedMemoryMatchesTheReference) {
  using S = TypeParam;
  const MultiHeadConfig cfg = config(32, 4, 2, 20);
  const Index kv = cfg.kv_dim(), d = cfg.head_dim();
  std::uint32_t seed = 700;
  for (const Index m : {Index(50), Index(1100)}) {
    for (const Index n : {Index(1), Index(7)}) {
      Random rng(++seed);
      const auto w = attn_test::random_weights<float>(cfg, rng);
      const attn_test::ReferenceWeights rw = attn_test::reference_weights(w);
      const attn::CrossAttention<float> cross(cfg, w);
      const Matrix<float> source = rng.uniform_matrix<float>(m, cfg.source_features());
      const Matrix<float> target = rng.uniform_matrix<float>(n, cfg.model_dim);
      const attn::CrossAttentionMemory<float, S> memory = cross.template remember<S>(source);
      const std::string what = "m=" + std::to_string(m) + " n=" + std::to_string(n);
      EXPECT_EQ(memory.rows(), m);
      EXPECT_EQ(memory.bytes(), expected_bytes<S>(m, kv, d)) << what;
      const MatrixD keys = stored_values(memory.keys());
      const MatrixD values = stored_values(memory.values());
      EXPECT_TRUE(stores_projection<S>(keys, source, rw.k_weight, rw.k_bias, d)) << what;
      EXPECT_TRUE(stores_projection<S>(values, source, rw.v_weight, rw.v_bias, d)) << what;

      const double tol =
          attn_test::layer_tolerance<float>(cfg.model_dim, cfg.source_features(), d, m);
      const Matrix<float> y = cross(target, memory);
      EXPECT_TRUE(attn_test::matrix_near(
          y, reference_layer(target, keys, values, rw, cfg, ReferenceMask()), tol))
          << what;
      // With a mask, through attend_into.
      Matrix<float> masked(n, cfg.model_dim);
      cross.attend_into(target, memory, masked, Mask::causal());
      EXPECT_TRUE(attn_test::matrix_near(
          masked, reference_layer(target, keys, values, rw, cfg, ReferenceMask::causal()), tol))
          << what << " causal";
    }
  }

  // Three sources packed row-wise, each attended only by its own target rows.
  Random rng(++seed);
  const auto w = attn_test::random_weights<float>(cfg, rng);
  const attn_test::ReferenceWeights rw = attn_test::reference_weights(w);
  const attn::CrossAttention<float> cross(cfg, w);
  const std::vector<Index> source_lengths = {13, 1, 40}, target_lengths = {3, 1, 5};
  const Matrix<float> source = rng.uniform_matrix<float>(54, cfg.source_features());
  const Matrix<float> target = rng.uniform_matrix<float>(9, cfg.model_dim);
  const auto memory = cross.template remember<S>(source, source_lengths);
  EXPECT_EQ(memory.lengths(), source_lengths);
  EXPECT_EQ(memory.bytes(), expected_bytes<S>(54, kv, d));
  const Matrix<float> y = cross(target, target_lengths, memory);
  Index s0 = 0, t0 = 0;
  for (std::size_t b = 0; b < source_lengths.size(); ++b) {
    const Index m = source_lengths[b], n = target_lengths[b];
    const MatrixD keys = stored_values(memory.keys().middleRows(s0, m));
    const MatrixD values = stored_values(memory.values().middleRows(s0, m));
    const MatrixD expected =
        reference_layer(target.middleRows(t0, n), keys, values, rw, cfg, ReferenceMask());
    EXPECT_TRUE(attn_test::matrix_near(
        y.middleRows(t0, n), expected,
        attn_test::layer_tolerance<float>(cfg.model_dim, cfg.source_features(), d, m)))
        << "sequence " << b;
    s0 += m;
    t0 += n;
  }
}

// ---------------------------------------------------------------------------------------------
// 8. Thread invariance over a stored cache
// ---------------------------------------------------------------------------------------------

// Repeats `call` (one threaded call with a fresh Workspace; returns whether the second worker
// took a part) until the second worker has taken part `enough` times or `budget` has passed, at
// least once. Returns how many calls it took part in.
template <typename Call>
int repeat_until_both_take_part(const Call& call) {
  constexpr int enough = 3;
  const auto budget = std::chrono::milliseconds(600);
  const auto start = std::chrono::steady_clock::now();
  int both = 0;
  do {
    both += call() ? 1 : 0;
  } while (both < enough && !::testing::Test::HasFailure() &&
           std::chrono::steady_clock::now() - start < budget);
  return both;
}

// A decode over a bfloat16 cache of 3000 positions is split into parts by shape alone (five of
// 600 keys) and merged in a fixed order, so serial_executor and thread_executor(2) give the same
// bits: through the kernel (one and three query rows, with log-sum-exps) and through
// SelfAttention (two copies of one cache, each appended to by its own call).
//
// Which worker takes which part depends on timing: the calling thread may take every part before
// the pool's thread wakes up (or, on a busy machine, gets a core), and then the threaded call is
// the serial one. So the parts are made large (8 heads of 64: ~1 MB of keys and values each),
// each threaded call runs with a fresh Workspace, whose bytes show whether the second worker took
// a part (it sizes a scratch slot of its own, which the serial call never does), and the calls
// are repeated until it has taken part a few times (usually within the first few calls), for at
// most 0.6 s each. Every call must give the serial bits; if the second worker took no part in
// any of them, the test is reported as skipped rather than passed.
TEST(StoredThreads, DecodeOverABfloat16CacheIsBitwiseTheSameOnAnyExecutor) {
  const MultiHeadConfig cfg = config(512, 8, 8);  // head_dim 64, kv_dim 512
  const Index d = cfg.head_dim(), m = 3000;
  Random rng(800);
  const attn::SelfAttention<float> layer(cfg, attn_test::random_weights<float>(cfg, rng));
  attn::KVCache<float, bfloat16> cache = layer.make_cache<bfloat16>(m);
  cache.append(rng.uniform_matrix<float>(m - 1, cfg.kv_dim()),
               rng.uniform_matrix<float>(m - 1, cfg.kv_dim()));
  const attn::Executor serial = attn::serial_executor;
  const attn::Executor threads = attn::thread_executor(2);
  int took_part = 0;

  for (const Index n : {Index(1), Index(3)}) {
    const Matrix<float> q = rng.uniform_matrix<float>(n, cfg.model_dim);
    attn::AttentionOptions options;
    options.num_heads = cfg.num_heads;
    options.num_kv_heads = cfg.kv_heads();
    Matrix<float> lse_serial, lse;
    attn::AttentionExtras<float> extras;
    extras.log_sum_exp = &lse_serial;
    options.executor = serial;
    attn::Workspace serial_workspace;
    options.workspace = &serial_workspace;
    const Matrix<float> one = attn::scaled_dot_product_attention(q, cache.keys(), cache.values(),
                                                                 Mask(), options, extras);
    options.executor = threads;
    extras.log_sum_exp = &lse;
    const int both = repeat_until_both_take_part([&] {
      attn::Workspace workspace;
      options.workspace = &workspace;
      const Matrix<float> two = attn::scaled_dot_product_attention(q, cache.keys(), cache.values(),
                                                                   Mask(), options, extras);
      EXPECT_TRUE(attn_test::bitwise_equal(one, two)) << "n=" << n;
      EXPECT_TRUE(attn_test::bitwise_equal(lse_serial, lse)) << "n=" << n;
      return workspace.bytes() > serial_workspace.bytes();
    });
    RecordProperty("calls_with_two_workers_n" + std::to_string(n), both);
    took_part += both;
    // And the result is right.
    const MatrixD k = stored_values(cache.keys());
    const MatrixD expected = attn_test::reference_multi_head(
        stored_values(q), k, stored_values(cache.values()), cfg.num_heads, cfg.kv_heads());
    EXPECT_TRUE(attn_test::matrix_near(
        one, expected,
        attn_test::attention_tolerance<float>(logit_bound(stored_values(q), k, d), m - 1)))
        << "n=" << n;
  }

  // Through the layer: each call appends the step's key and value to its own copy of the cache.
  const Matrix<float> x = rng.uniform_matrix<float>(1, cfg.model_dim);
  attn::MultiHeadOptions options;
  options.executor = serial;
  attn::KVCache<float, bfloat16> serial_cache = cache;
  attn::Workspace serial_workspace;
  options.workspace = &serial_workspace;
  const Matrix<float> one = layer(x, serial_cache, Mask::causal(), {}, options);
  ASSERT_EQ(serial_cache.size(), m);
  options.executor = threads;
  const int both = repeat_until_both_take_part([&] {
    attn::KVCache<float, bfloat16> copy = cache;
    // Copying the cache takes long enough for the pool's thread to fall asleep; a threaded call
    // just before the step wakes it.
    attn::AttentionOptions wake;
    wake.num_heads = cfg.num_heads;
    wake.executor = threads;
    attn::scaled_dot_product_attention(x, cache.keys(), cache.values(), Mask(), wake);
    attn::Workspace workspace;
    options.workspace = &workspace;
    const Matrix<float> two = layer(x, copy, Mask::causal(), {}, options);
    EXPECT_TRUE(attn_test::bitwise_equal(one, two));
    EXPECT_EQ(raw_bytes(serial_cache.keys()), raw_bytes(copy.keys()));
    EXPECT_EQ(raw_bytes(serial_cache.values()), raw_bytes(copy.values()));
    return workspace.bytes() > serial_workspace.bytes();
  });
  RecordProperty("layer_calls_with_two_workers", both);
  took_part += both;
  if (took_part == 0) {
    GTEST_SKIP() << "thread_executor(2)'s second worker took no part in any call (the machine's "
                    "cores busy?): the threaded calls equalled the serial ones, but ran serially";
  }
}

}  // namespace
