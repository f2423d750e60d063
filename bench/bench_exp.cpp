// SPDX-License-Identifier: MIT
// Copyright (c) 2026 The attn authors
//
// The softmax exponential, A/B: attn's float exponential as this build selects it (with AVX-512,
// VRNDSCALEPS and a masked VSCALEFPS; elsewhere the generic one), the generic one (the rounding
// trick of adding and subtracting 1.5·2²³ behind an optimisation barrier, right under
// -ffast-math), its fallback where no barrier exists (rounding by conversion to integer), the
// version it replaced (the same trick without the barrier, which -ffast-math folds away without
// FMA), and Eigen's own pexp. Each evaluates e^x over 4096 logits in [−30, 0] (L1-resident, as a
// score tile is) and writes the results; the summary gives each one's rate relative to attn's.
//
//   build/native/bench/bench_exp --benchmark_repetitions=15
//                                --benchmark_enable_random_interleaving=true
//
// GB/s counts the bytes read and written (8 per exponential).

#include <benchmark/benchmark.h>

#include <attn/attn.hpp>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "summary_reporter.hpp"

// Packet types such as __m256 carry alignment attributes that GCC reports as ignored when they are
// template arguments (as detail/packet_math.hpp explains).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace {

namespace packet = Eigen::internal;
using Packet = packet::packet_traits<float>::type;
using PacketI = packet::unpacket_traits<Packet>::integer_packet;
constexpr int lanes = packet::unpacket_traits<Packet>::size;

// The exponential as it was before the -ffast-math fix (3a6013b): the rounding trick without a
// barrier. Under -ffast-math without FMA its results are wrong; it is here for the speed it set.
EIGEN_ALWAYS_INLINE Packet replaced_exp(const Packet& x) {
  const Packet magic = packet::pset1<Packet>(12582912.0f);
  const Packet shifted = packet::pmadd(x, packet::pset1<Packet>(1.44269504088896341f), magic);
  const Packet n = packet::psub(shifted, magic);
  Packet r = packet::pmadd(n, packet::pset1<Packet>(-0.693359375f), x);
  r = packet::pmadd(n, packet::pset1<Packet>(2.12194440e-4f), r);
  Packet p = packet::pset1<Packet>(1.394110848e-03f);
  p = packet::pmadd(p, r, packet::pset1<Packet>(8.375125937e-03f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(4.166635126e-02f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(1.666641533e-01f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(0.5f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(1.0f));
  p = packet::pmadd(p, r, packet::pset1<Packet>(1.0f));
  const PacketI biased =
      packet::padd(packet::preinterpret<PacketI>(shifted), packet::pset1<PacketI>(127));
  const Packet two_n = packet::preinterpret<Packet>(packet::plogical_shift_left<23>(biased));
  const Packet underflow = packet::pcmp_lt(x, packet::pset1<Packet>(-87.3365447f));
  return packet::pandnot(packet::pmul(p, two_n), underflow);
}

template <Packet (*Exp)(const Packet&)>
void BM_Exp(benchmark::State& state) {
  constexpr int count = 4096;
  std::vector<float> in(count), out(count);
  for (int i = 0; i < count; ++i)
    in[std::size_t(i)] = -30.0f * float((i * 7919) % count) / float(count);
  for (auto _ : state) {
    for (int i = 0; i < count; i += lanes)
      packet::pstoreu(out.data() + i, Exp(packet::ploadu<Packet>(in.data() + i)));
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["GB/s"] =
      benchmark::Counter(8.0 * count, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::OneK::kIs1000);
  state.SetItemsProcessed(state.iterations() * count);
}

Packet attn_exp(const Packet& x) {
  return attn::detail::softmax_exp(x);
}
Packet attn_exp_by_magic_number(const Packet& x) {
  return attn::detail::softmax_exp_float<Packet, false>(x);
}
Packet attn_exp_by_conversion(const Packet& x) {
  return attn::detail::softmax_exp_float<Packet, true>(x);
}
Packet replaced(const Packet& x) {
  return replaced_exp(x);
}
Packet eigen_pexp(const Packet& x) {
  return packet::pandnot(packet::pexp(x), packet::pcmp_lt(x, packet::pset1<Packet>(-87.3365447f)));
}

// Prints each variant's median rate relative to attn's exponential.
class SummaryReporter : public attn_bench::SummaryReporter {
 public:
  void keep(const Run& run) override {
    const auto it = run.counters.find("GB/s");
    if (it != run.counters.end()) m_rate[run.run_name.function_name] = it->second.value;
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    const double attn = m_rate["AttnSoftmaxExp"];
    std::printf("\nSummary (%s; median GB/s of 4096 logits in L1, and rate relative to attn's)\n",
                attn::simd_instruction_set().c_str());
    for (const auto& [name, rate] : m_rate)
      std::printf("%-28s %8.1f GB/s %7.3fx\n", name.c_str(), rate * 1e-9,
                  attn > 0 ? rate / attn : 0.0);
  }

 private:
  std::map<std::string, double> m_rate;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("attn SIMD", attn::simd_instruction_set());
  benchmark::AddCustomContext("attn CPU", attn_bench::cpu_model());
  benchmark::RegisterBenchmark("AttnSoftmaxExp", BM_Exp<attn_exp>);
  benchmark::RegisterBenchmark("AttnSoftmaxExpByMagicNumber", BM_Exp<attn_exp_by_magic_number>);
  benchmark::RegisterBenchmark("AttnSoftmaxExpByConversion", BM_Exp<attn_exp_by_conversion>);
  benchmark::RegisterBenchmark("ReplacedExp", BM_Exp<replaced>);
  benchmark::RegisterBenchmark("EigenPexp", BM_Exp<eigen_pexp>);
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
