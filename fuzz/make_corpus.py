#!/usr/bin/env python3
# SPDX-FileCopyrightText: 2026 The attn authors
# SPDX-License-Identifier: MIT
"""Writes fuzz/corpus/: seed inputs for fuzz_attention, one per interesting corner, in the input
layout documented at the top of fuzz_attention.cpp. Deterministic: rerunning rewrites the same
files. Usage: python3 fuzz/make_corpus.py [output directory]"""

import os
import random
import sys

# Flags (byte 0).
DOUBLE, THREADS, INTO, STRIDED, FUNCTORS, SCALE, SOFTCAP, SPOIL = (1 << i for i in range(8))


def length(n):
    """The byte that decodes to sequence length n (see sequence_length())."""
    if n < 6:
        return n
    if n < 80:
        return 96 + n
    assert n >= 64 and n % 2 == 0 and n <= 64 + 2 * 63
    return 192 + (n - 64) // 2


DIMS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 64]


def dim(d):
    return DIMS.index(d)


HEADS = [1, 1, 2, 4, 3, 8, 0, -1]
KV_HEADS = [0, 1, 2, 4, 3, -1, 0, 1]


def heads(h, kv=0, workspace=False, nan=False):
    return HEADS.index(h) | (KV_HEADS.index(kv) << 3) | (64 if workspace else 0) | (128 if nan else 0)


def reach(r):
    """The byte for a window reach; None is Mask::unbounded."""
    if r is None:
        return 255
    if r == -2:
        return 253
    assert 0 <= r < 8
    return r


# Mask parts: (kind byte, parameter byte[, extra byte]).
NONE = [0, 0]
CAUSAL = [1, 0]


def window(left, right):
    return [2, reach(left), reach(right)]


def keep(density=0.7, empty_row=False, wrong_shape=False):
    return [3 | (0xF0 if wrong_shape else 0), (int(density * 255) & 0xFE) | int(empty_row)]


def bias(step=0, other_precision=False, minus_infinity_row=False, plus_infinity=False,
         wrong_shape=False):
    kind = (5 if other_precision else 4) | (0xF0 if wrong_shape else 0)
    parameter = step | (4 if minus_infinity_row else 0) | (0x30 if plus_infinity else 0)
    return [kind, parameter]


def seed(flags=0, n=4, m=6, d=8, dv=8, head_code=0, spoiler=0, scale=0, softcap=0, qk=0, v=0,
         mask=(), values=256, rng=None):
    data = [flags, length(n), length(m), dim(d), dim(dv), head_code, spoiler, scale, softcap, qk, v,
            len(mask)]
    for part in mask:
        data += part
    data += [rng.randrange(256) for _ in range(values)]
    return bytes(data)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(2026)
    seeds = {
        # Sizes: empty, one, tiles.
        "tiny": seed(rng=rng),
        "n0": seed(n=0, m=5, rng=rng),
        "m0": seed(n=5, m=0, rng=rng),
        "d0": seed(d=0, dv=3, rng=rng),
        "dv0": seed(d=4, dv=0, rng=rng),
        "one_by_one": seed(n=1, m=1, d=1, dv=1, rng=rng),
        "tile_edges": seed(n=65, m=64, d=16, dv=16, mask=[CAUSAL], values=1024, rng=rng),
        "two_tiles": seed(n=70, m=130, d=8, dv=4, mask=[window(3, 2)], values=2048, rng=rng),
        "decode_long": seed(n=1, m=190, d=32, dv=32, mask=[CAUSAL], values=2048, rng=rng),
        "double": seed(flags=DOUBLE, n=9, m=12, mask=[CAUSAL], rng=rng),
        # Heads.
        "gqa": seed(n=6, m=7, d=4, dv=4, head_code=heads(4, 2), mask=[CAUSAL], rng=rng),
        "mqa": seed(flags=DOUBLE, n=5, m=9, d=8, dv=3, head_code=heads(8, 1), rng=rng),
        "three_heads": seed(n=5, m=5, d=5, dv=2, head_code=heads(3), rng=rng),
        "heads_zero": seed(head_code=heads(0), rng=rng),
        "heads_negative": seed(head_code=heads(-1), rng=rng),
        "kv_not_divisor": seed(head_code=heads(2, 3), rng=rng),
        "kv_negative": seed(head_code=heads(4, -1), rng=rng),
        # Masks.
        "window_unbounded": seed(n=5, m=5, mask=[window(None, 1)], rng=rng),
        "window_invalid": seed(mask=[window(-2, 0)], rng=rng),
        "sliding": seed(n=70, m=70, d=8, dv=8, mask=[CAUSAL, window(5, 0)], values=1024, rng=rng),
        "keep": seed(n=5, m=5, mask=[keep(0.5, empty_row=True)], rng=rng),
        "keep_and_causal": seed(flags=DOUBLE, n=5, m=4, mask=[keep(0.8), CAUSAL], rng=rng),
        "keep_wrong_shape": seed(mask=[keep(wrong_shape=True)], rng=rng),
        "keep_mismatch": seed(mask=[keep(), keep(wrong_shape=True)], rng=rng),
        "bias": seed(n=4, m=5, mask=[bias(0)], rng=rng),
        "bias_minus_inf_row": seed(n=4, m=5, mask=[bias(1, minus_infinity_row=True)], rng=rng),
        "bias_plus_inf": seed(n=4, m=5, mask=[bias(0, plus_infinity=True)], rng=rng),
        "bias_other_precision": seed(flags=DOUBLE, n=4, m=5, mask=[bias(2, other_precision=True)],
                                     rng=rng),
        "bias_sum_mixed": seed(n=4, m=5, mask=[bias(0), bias(3, other_precision=True), CAUSAL],
                               rng=rng),
        "bias_wrong_shape": seed(mask=[bias(0, wrong_shape=True)], rng=rng),
        "everything": seed(n=5, m=7, mask=[keep(0.9), bias(0), window(2, 1)], rng=rng),
        # Values.
        "huge_logits": seed(n=6, m=8, d=16, dv=4, qk=2, mask=[CAUSAL], rng=rng),
        "huge_logits_double": seed(flags=DOUBLE, n=6, m=8, d=16, dv=4, qk=3, rng=rng),
        "subnormal": seed(n=5, m=6, qk=5, v=4, rng=rng),
        "large_values": seed(n=5, m=6, v=3, rng=rng),
        "scale": seed(flags=SCALE, scale=3, qk=1, rng=rng),
        "scale_zero": seed(flags=SCALE, scale=0, rng=rng),
        "softcap": seed(flags=SOFTCAP, softcap=0, qk=2, d=16, rng=rng),
        # Layouts, threads, functors.
        "into": seed(flags=INTO, n=6, m=6, mask=[CAUSAL], rng=rng),
        "strided": seed(flags=STRIDED, n=6, m=7, head_code=heads(2, 1), rng=rng),
        "strided_into": seed(flags=STRIDED | INTO | DOUBLE, n=66, m=70, d=4, dv=4, values=1024,
                             rng=rng),
        "threads": seed(flags=THREADS, n=70, m=70, d=8, dv=8, head_code=heads(2), values=1024,
                        rng=rng),
        "functors": seed(flags=FUNCTORS, n=6, m=6, d=4, dv=4, head_code=heads(2, 1),
                         mask=[CAUSAL], rng=rng),
        "functors_cross": seed(flags=FUNCTORS | DOUBLE, n=3, m=7, d=4, dv=4, head_code=heads(4),
                               mask=[bias(0)], rng=rng),
        "functors_threads": seed(flags=FUNCTORS | THREADS, n=8, m=8, d=8, dv=8,
                                 head_code=heads(4, 2), mask=[keep(0.6)], rng=rng),
        "functors_d0": seed(flags=FUNCTORS, n=3, m=3, d=0, dv=0, rng=rng),
        "workspace_large": seed(flags=THREADS, n=70, m=130, d=16, dv=8,
                                head_code=heads(2, 1, workspace=True), values=1024, rng=rng),
        "workspace_small": seed(n=3, m=9, d=4, dv=4, head_code=heads(1, workspace=True),
                                mask=[CAUSAL], rng=rng),
        "workspace_decode": seed(n=1, m=190, d=8, dv=8, head_code=heads(4, 2, workspace=True),
                                 rng=rng),
    }
    # NaN mode: byte -128 (0x80) is NaN in q, k, v; 127 × step is NaN in a bias.
    def with_nan(data, positions):
        data = bytearray(data)
        for position in positions:
            data[position] = 0x80
        return bytes(data)
    header = 12  # bytes before the values when the mask has no parameters
    seeds["nan_q"] = with_nan(seed(n=70, m=70, d=8, dv=4, head_code=heads(2, nan=True),
                                   mask=[CAUSAL], values=2048, rng=rng), [header + 5 * 16 + 3])
    seeds["nan_k"] = with_nan(seed(n=70, m=70, d=8, dv=4, head_code=heads(2, 1, nan=True),
                                   mask=[CAUSAL], values=2048, rng=rng), [header + 70 * 16 + 37 * 8])
    seeds["nan_v"] = with_nan(seed(n=70, m=70, d=8, dv=4, head_code=heads(1, nan=True),
                                   mask=[CAUSAL], values=2048, rng=rng),
                              [header + 70 * 8 + 70 * 8 + 37 * 4 + 1])
    seeds["nan_v_decode"] = with_nan(seed(n=1, m=190, d=4, dv=4, head_code=heads(1, nan=True),
                                          mask=[CAUSAL, window(3, 0)], values=2048, rng=rng),
                                     [header + 4 + 190 * 4 + 7 * 4])
    nan_bias = bytearray(seed(n=4, m=5, head_code=heads(1, nan=True), mask=[bias(0), CAUSAL],
                              values=512, rng=rng))
    nan_bias[header + 2 + (4 * 8 + 5 * 8 + 5 * 8) + 2] = 127  # bias(0, 2): hidden by causal
    nan_bias[header + 2 + (4 * 8 + 5 * 8 + 5 * 8) + 5 * 3 + 1] = 127  # bias(3, 1): visible
    seeds["nan_bias"] = bytes(nan_bias)
    # Spoilers: one invalid shape or parameter each (see run()).
    for case in range(9):
        seeds["spoil_%d" % case] = seed(flags=SPOIL | (INTO if case in (4, 5) else 0),
                                        spoiler=case | (16 if case % 2 else 0), rng=rng)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(seeds), out))


if __name__ == "__main__":
    main()
