#!/usr/bin/env python3
# SPDX-FileCopyrightText: 2026 The attn authors
# SPDX-License-Identifier: MIT
"""Writes fuzz/corpus/: seed inputs for fuzz_attention, one per interesting corner, in the input
layout documented at the top of fuzz_attention.cpp. Deterministic: rerunning rewrites the same
files. Usage: python3 fuzz/make_corpus.py [output directory]

Byte 8 gained the storage bits (see storage()) after the first seeds were written: those have
zeros there, so they keep their meaning, and the storage seeds are made last, so that rerunning
the script leaves the earlier seeds' bytes as they were. Byte 11 gained the score and mask
function bits (see functions()) in the same way: the function seeds come after the storage
seeds."""

import os
import random
import sys

# Flags (byte 0).
DOUBLE, THREADS, INTO, STRIDED, FUNCTORS, SCALE, SOFTCAP, SPOIL = (1 << i for i in range(8))
# Byte 7: the scale code in bits 0-2; bit 3 cuts the backward check into blocks placed by
# AttentionOptions::positions. Seeds written before it have zeros there.
POSITIONS = 8


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


# Storage (byte 8, bits 2-6, with the soft-cap code in bits 0-1; float problems only): k in bits
# 2-3 and v in bits 4-5 from STORAGES (a pair the fuzzer does not instantiate, see fuzzed_pair,
# reads v as k's type); bit 6 stores q and v in k's type when that is bfloat16 or half. Seeds written before storage existed have zeros there: all float, as they were.
STORAGES = ["float", "bfloat16", "half", "qint8"]


def storage(k="float", v="float", all_three=False, paged=False):
    """Bit 7 (paged, without STRIDED): k and v pass as PagedViews, pages of 16 rows in reverse."""
    return (STORAGES.index(k) << 2) | (STORAGES.index(v) << 4) | (64 if all_three else 0) | \
        (128 if paged else 0)


# Score and mask functions (byte 11, bits 2-7, above the number of mask parts): the score function
# in bits 2-3 (SCORE_FUNCTIONS; "wave" also hides some keys from head 1), the mask function in bits
# 4-6 (MASK_FUNCTIONS), bit 7 spoils them. Their parameter bytes follow the mask's parts (see
# decode_functions()): documents() and tree() write theirs; prefix_lm takes one byte (the
# prefix), sinks two (count, window), chunked and chunked_coarse one (the chunk, minus one).
SCORE_FUNCTIONS = [None, "alibi", "wave", "alibi+wave"]
MASK_FUNCTIONS = [None, "documents", "prefix_lm", "sinks", "tree", "scattered", "chunked",
                  "chunked_coarse"]


def functions(score=None, mask=None, spoil=False):
    """The function bits of byte 11 (bits 2-7)."""
    return (SCORE_FUNCTIONS.index(score) << 2) | (MASK_FUNCTIONS.index(mask) << 4) | \
        (128 if spoil else 0)


def documents(lengths, slack=0):
    """Parameters of the documents mask function: lengths of 1 to 4 documents (each < 24), the
    last extended to cover the keys plus `slack` (< 3) unless spoiled (then pass slack=None)."""
    assert 1 <= len(lengths) <= 4 and all(0 <= x < 24 for x in lengths)
    return [len(lengths) - 1] + list(lengths) + ([] if slack is None else [slack])


def tree(parents, spoiled=False):
    """Parameters of the tree mask function: a size byte (none when spoiled: the tree then has
    m + 1 nodes, whose parents are read all the same) and parents[t] + 1 per node."""
    assert all(-1 <= p < t for t, p in enumerate(parents))
    return ([] if spoiled else [len(parents)]) + [p + 1 for p in parents]


def reach(r):
    """The byte for a window reach; None is Mask::unbounded."""
    if r is None:
        return 255
    if r == -2:
        return 253
    assert 0 <= r < 8
    return r


# Mask parts: functions of (n, m, rng) giving the part's bytes: a kind byte, its parameter and
# what that kind reads next (a window's right reach, a keep's emptied row, a bias's values).
def NONE(n, m, rng):
    return [0, 0]


def CAUSAL(n, m, rng):
    return [1, 0]


def key_length(count):
    """A key_length(count) part: kind 0 ("none") with a parameter of 128 or more."""
    assert 0 <= count < 128
    return lambda n, m, rng: [0, 128 + count]


def window(left, right):
    return lambda n, m, rng: [2, reach(left), reach(right)]


def keep(density=0.7, empty_row=False, wrong_shape=False):
    def part(n, m, rng):
        data = [3 | (0xF0 if wrong_shape else 0), (int(density * 255) & 0xFE) | int(empty_row)]
        return data + ([rng.randrange(256)] if empty_row else [])  # the row to empty
    return part


def bias(step=0, other_precision=False, minus_infinity_row=False, plus_infinity=False,
         wrong_shape=False, nan_at=()):
    """A bias of n × m values (m + 1 columns if wrong_shape); nan_at: (i, j) entries set to 127,
    NaN in NaN mode."""
    def part(n, m, rng):
        kind = (5 if other_precision else 4) | (0xF0 if wrong_shape else 0)
        parameter = step | (4 if minus_infinity_row else 0) | (0x30 if plus_infinity else 0)
        cols = m + (1 if wrong_shape else 0)
        values = [rng.randrange(256) for _ in range(n * cols)]
        for i, j in nan_at:
            values[i * cols + j] = 127
        data = [kind, parameter] + values
        if minus_infinity_row and n > 0:
            data.append(rng.randrange(256))
        if plus_infinity and n * cols > 0:
            data += [rng.randrange(256), rng.randrange(256)]
        return data
    return part


def shapes(flags, n, m, d, dv, head_code, spoiler):
    """n as the fuzzer uses it (shrunk for big problems) and the columns of q and k and the shape
    of v it reads, mirroring run() in fuzz_attention.cpp."""
    h, kv = HEADS[head_code % 8], KV_HEADS[(head_code >> 3) % 8]
    heads_for_shapes = h if h >= 1 else 1
    kv_for_shapes = kv if kv >= 1 else (heads_for_shapes if kv == 0 else 1)
    q_cols, k_cols, v_rows, v_cols = heads_for_shapes * d, kv_for_shapes * d, m, kv_for_shapes * dv
    if flags & SPOIL:
        case = spoiler % 10
        q_cols += case == 0
        k_cols += case == 1
        v_rows += case == 2
        v_cols += case == 3
    work = n * m * max(h, 1) * (d + dv + 1)
    if work > 2e6:
        n = max(1, int(2e6 / (work / n)))
    return n, q_cols, k_cols, v_rows, v_cols


def seed(flags=0, n=4, m=6, d=8, dv=8, head_code=0, spoiler=0, scale=0, softcap=0, qk=0, v=0,
         mask=(), rng=None, nan_q=(), nan_k=(), nan_v=(), stored=0, fns=0, fn_params=()):
    """One input: the header, the mask, the functions' parameters, then every q, k and v value
    (random bytes). nan_q, nan_k, nan_v: (row, column) entries set to −128, NaN in NaN mode.
    stored: storage(...) bits. fns: functions(...) bits; fn_params: their parameter bytes."""
    assert 0 <= softcap < 4 and stored & 3 == 0 and fns & 3 == 0 and len(mask) < 4
    data = [flags, length(n), length(m), dim(d), dim(dv), head_code, spoiler, scale,
            softcap | stored, qk, v, len(mask) | fns]
    n_used, q_cols, k_cols, v_rows, v_cols = shapes(flags, n, m, d, dv, head_code, spoiler)
    for part in mask:
        data += part(n_used, m, rng)
    data += list(fn_params)
    q_values = [rng.randrange(256) for _ in range(n_used * q_cols)]
    k_values = [rng.randrange(256) for _ in range(m * k_cols)]
    v_values = [rng.randrange(256) for _ in range(v_rows * v_cols)]
    for values, cols, entries in ((q_values, q_cols, nan_q), (k_values, k_cols, nan_k),
                                  (v_values, v_cols, nan_v)):
        for row, col in entries:
            values[row * cols + col] = 0x80
    return bytes(data + q_values + k_values + v_values)


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
        "tile_edges": seed(n=65, m=64, d=16, dv=16, mask=[CAUSAL], rng=rng),
        "two_tiles": seed(n=70, m=130, d=8, dv=4, mask=[window(3, 2)], rng=rng),
        "decode_long": seed(n=1, m=190, d=32, dv=32, mask=[CAUSAL], rng=rng),
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
        "sliding": seed(n=70, m=70, d=8, dv=8, mask=[CAUSAL, window(5, 0)], rng=rng),
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
        "strided_into": seed(flags=STRIDED | INTO | DOUBLE, n=66, m=70, d=4, dv=4,
                             rng=rng),
        "threads": seed(flags=THREADS, n=70, m=70, d=8, dv=8, head_code=heads(2),
                        rng=rng),
        "functors": seed(flags=FUNCTORS, n=6, m=6, d=4, dv=4, head_code=heads(2, 1),
                         mask=[CAUSAL], rng=rng),
        "functors_cross": seed(flags=FUNCTORS | DOUBLE, n=3, m=7, d=4, dv=4, head_code=heads(4),
                               mask=[bias(0)], rng=rng),
        "functors_threads": seed(flags=FUNCTORS | THREADS, n=8, m=8, d=8, dv=8,
                                 head_code=heads(4, 2), mask=[keep(0.6)], rng=rng),
        "functors_d0": seed(flags=FUNCTORS, n=3, m=3, d=0, dv=0, rng=rng),
        "workspace_large": seed(flags=THREADS, n=70, m=130, d=16, dv=8,
                                head_code=heads(2, 1, workspace=True), rng=rng),
        "workspace_small": seed(n=3, m=9, d=4, dv=4, head_code=heads(1, workspace=True),
                                mask=[CAUSAL], rng=rng),
        "workspace_decode": seed(n=1, m=190, d=8, dv=8, head_code=heads(4, 2, workspace=True),
                                 rng=rng),
    }
    # NaN mode: byte -128 (0x80) is NaN in q, k, v; 127 × step is NaN in a bias.
    seeds["nan_q"] = seed(n=70, m=70, d=8, dv=4, head_code=heads(2, nan=True), mask=[CAUSAL],
                          nan_q=[(5, 3)], rng=rng)
    seeds["nan_k"] = seed(n=70, m=70, d=8, dv=4, head_code=heads(2, 1, nan=True), mask=[CAUSAL],
                          nan_k=[(37, 0)], rng=rng)
    seeds["nan_v"] = seed(n=70, m=70, d=8, dv=4, head_code=heads(1, nan=True), mask=[CAUSAL],
                          nan_v=[(37, 1)], rng=rng)
    seeds["nan_v_decode"] = seed(n=1, m=190, d=4, dv=4, head_code=heads(1, nan=True),
                                 mask=[CAUSAL, window(3, 0)], nan_v=[(7, 0), (187, 1)], rng=rng)
    # bias(0, 2) is hidden by causal, bias(3, 1) visible.
    seeds["nan_bias"] = seed(n=4, m=5, head_code=heads(1, nan=True),
                             mask=[bias(0, nan_at=[(0, 2), (3, 1)]), CAUSAL], rng=rng)
    # Spoilers: one invalid shape or parameter each (see run()).
    for case in range(9):
        seeds["spoil_%d" % case] = seed(flags=SPOIL | (INTO if case in (4, 5) else 0),
                                        spoiler=case | (16 if case % 2 else 0), rng=rng)
    # Key length (padding); in NaN mode, NaN in padding rows of K and V must not show.
    seeds["key_length"] = seed(n=70, m=130, d=8, dv=4, head_code=heads(2), mask=[key_length(100)],
                               rng=rng)
    seeds["key_length_beyond_m"] = seed(n=4, m=6, mask=[key_length(7)], rng=rng)
    seeds["key_length_nan_padding"] = seed(n=70, m=130, d=8, dv=4, head_code=heads(1, nan=True),
                                           mask=[key_length(70), CAUSAL], nan_k=[(120, 3)],
                                           nan_v=[(125, 1)], rng=rng)
    # Empty head dims over several key blocks, with strided views: a matrix without columns may
    # have null storage, which no prefetch or packing may offset.
    seeds["d0_two_blocks"] = seed(flags=STRIDED, n=70, m=130, d=0, dv=4, head_code=heads(2),
                                  rng=rng)
    seeds["dv0_two_blocks"] = seed(flags=STRIDED | INTO, n=70, m=130, d=4, dv=0,
                                   head_code=heads(2), rng=rng)
    # Storage of k, v (and q) in float problems; added last, so that the seeds above keep their
    # bytes. The kernel (prefill: several key blocks; decode: one query row) on each type and on
    # mixes, the functors' remembered memory and KV cache in it, and the corners: half v at the
    # largest value code (clamped to half's range), qint8 of subnormal groups, qint8 of an operand
    # with NaN (quantize must throw; it is then passed as float), and qint8 v in groups of 1 when
    # value_dim is 2 (spoiled width: the call must throw).
    seeds["storage_bf16"] = seed(n=6, m=7, head_code=heads(2, 1), mask=[CAUSAL],
                                 stored=storage("bfloat16", "bfloat16"), rng=rng)
    seeds["storage_half_large_v"] = seed(n=5, m=9, v=3, stored=storage("half", "half"), rng=rng)
    seeds["storage_qint8_prefill"] = seed(n=70, m=130, d=8, dv=4, head_code=heads(2),
                                          mask=[window(5, 2)],
                                          stored=storage("qint8", "qint8"), rng=rng)
    seeds["storage_qint8_decode"] = seed(n=1, m=190, d=16, dv=16, head_code=heads(4, 2),
                                         mask=[CAUSAL], stored=storage("qint8", "qint8"), rng=rng)
    seeds["storage_qint8_subnormal"] = seed(n=5, m=6, qk=5, v=4,
                                            stored=storage("qint8", "qint8"), rng=rng)
    seeds["storage_qint8_nan"] = seed(n=6, m=6, head_code=heads(1, nan=True), mask=[CAUSAL],
                                      nan_k=[(2, 1)], stored=storage("qint8", "qint8"), rng=rng)
    seeds["storage_qint8_wrong_group"] = seed(flags=SPOIL, d=4, dv=1, spoiler=3,
                                              stored=storage("float", "qint8"), rng=rng)
    seeds["storage_mixed_strided"] = seed(flags=STRIDED, n=5, m=6, head_code=heads(2, 1),
                                          stored=storage("float", "qint8"), rng=rng)
    seeds["storage_mixed_prefill"] = seed(flags=INTO, n=70, m=70, d=8, dv=8, mask=[CAUSAL],
                                          stored=storage("bfloat16", "half"), rng=rng)
    seeds["storage_all_half"] = seed(n=6, m=6, mask=[bias(0)],
                                     stored=storage("half", "float", all_three=True), rng=rng)
    seeds["storage_all_bf16_decode"] = seed(n=1, m=100, d=32, dv=32, head_code=heads(2),
                                            stored=storage("bfloat16", all_three=True), rng=rng)
    seeds["storage_functors_bf16"] = seed(flags=FUNCTORS, n=6, m=6, d=4, dv=4,
                                          head_code=heads(2, 1), mask=[CAUSAL],
                                          stored=storage("bfloat16"), rng=rng)
    seeds["storage_functors_half"] = seed(flags=FUNCTORS, n=7, m=7, d=8, dv=8,
                                          head_code=heads(2), stored=storage("half"), rng=rng)
    seeds["storage_functors_qint8"] = seed(flags=FUNCTORS | THREADS, n=8, m=8, d=8, dv=8,
                                           head_code=heads(4, 2), mask=[keep(0.6)],
                                           stored=storage("qint8"), rng=rng)
    seeds["storage_functors_cross_qint8"] = seed(flags=FUNCTORS, n=3, m=7, d=4, dv=4,
                                                 head_code=heads(4), mask=[bias(0)],
                                                 stored=storage("qint8"), rng=rng)
    # Score and mask functions (byte 11's upper bits); added after the storage seeds, so that the
    # seeds above keep their bytes. Each built-in and user function in prefill (several query and
    # key blocks) and decode shapes, composed with the mask's parts, in float and double, with the
    # functors (and their KV-cache decode with the functions), and spoiled (the call must throw).
    seeds["fn_alibi_causal"] = seed(n=70, m=70, d=8, dv=8, head_code=heads(4, 2), mask=[CAUSAL],
                                    fns=functions("alibi"), rng=rng)
    seeds["fn_alibi_three_heads_decode"] = seed(n=1, m=190, d=4, dv=4, head_code=heads(3),
                                                mask=[CAUSAL], fns=functions("alibi"), rng=rng)
    seeds["fn_wave_softcap"] = seed(flags=SOFTCAP, n=5, m=9, d=16, dv=4, qk=2, softcap=1,
                                    head_code=heads(2), fns=functions("wave"), rng=rng)
    seeds["fn_alibi_wave_double"] = seed(flags=DOUBLE, n=66, m=70, d=8, dv=8,
                                         head_code=heads(8, 2), mask=[CAUSAL],
                                         fns=functions("alibi+wave"), rng=rng)
    seeds["fn_alibi_wrong_slopes"] = seed(n=4, m=6, head_code=heads(4),
                                          fns=functions("alibi", spoil=True), rng=rng)
    seeds["fn_documents"] = seed(n=70, m=70, d=8, dv=4, head_code=heads(2), mask=[CAUSAL],
                                 fns=functions(mask="documents"),
                                 fn_params=documents([20, 5, 0, 17], slack=2), rng=rng)
    seeds["fn_documents_not_covering"] = seed(n=6, m=40, fns=functions(mask="documents", spoil=True),
                                              fn_params=documents([10, 7], slack=None), rng=rng)
    seeds["fn_prefix_lm_functors"] = seed(flags=FUNCTORS, n=12, m=12, d=4, dv=4,
                                          head_code=heads(2, 1), fns=functions(mask="prefix_lm"),
                                          fn_params=[5], rng=rng)
    seeds["fn_sinks_decode"] = seed(flags=THREADS, n=1, m=190, d=8, dv=8, head_code=heads(4, 1),
                                    fns=functions(mask="sinks"), fn_params=[4, 16], rng=rng)
    seeds["fn_sinks_prefill_wave"] = seed(n=130, m=130, d=4, dv=4, head_code=heads(2),
                                          mask=[window(None, 1)], fns=functions("wave", "sinks"),
                                          fn_params=[2, 40], rng=rng)
    seeds["fn_tree"] = seed(n=7, m=27, d=8, dv=8, head_code=heads(2, 1),
                            fns=functions(mask="tree"), fn_params=tree([-1, 0, 0, 1, 1, 2, -1]),
                            rng=rng)
    seeds["fn_tree_functors"] = seed(flags=FUNCTORS, n=9, m=9, d=4, dv=4, head_code=heads(2),
                                     fns=functions("alibi", "tree"),
                                     fn_params=tree([-1, 0, 1, 0]), rng=rng)
    seeds["fn_tree_too_large"] = seed(n=3, m=4, fns=functions(mask="tree", spoil=True),
                                      fn_params=tree([-1, 0, 1, 2, 3], spoiled=True), rng=rng)
    seeds["fn_scattered_functors"] = seed(flags=FUNCTORS | THREADS, n=20, m=20, d=4, dv=4,
                                          head_code=heads(4, 2), fns=functions(mask="scattered"),
                                          rng=rng)
    seeds["fn_chunked"] = seed(flags=STRIDED, n=70, m=130, d=8, dv=4, head_code=heads(2),
                               mask=[window(5, 2)], fns=functions(mask="chunked"), fn_params=[15],
                               rng=rng)
    seeds["fn_chunked_coarse_bias"] = seed(flags=INTO, n=66, m=66, d=4, dv=4, mask=[bias(0)],
                                           fns=functions(mask="chunked_coarse"), fn_params=[6],
                                           rng=rng)
    seeds["fn_everything_functors"] = seed(flags=FUNCTORS | THREADS, n=8, m=8, d=8, dv=8,
                                           head_code=heads(4, 2), mask=[CAUSAL],
                                           fns=functions("alibi+wave", "chunked"), fn_params=[2],
                                           rng=rng)
    seeds["fn_nan_sinks"] = seed(n=70, m=70, d=8, dv=4, head_code=heads(2, nan=True),
                                 fns=functions(mask="sinks"), fn_params=[1, 3], nan_k=[(20, 0)],
                                 nan_v=[(30, 1)], rng=rng)
    # Regressions, failing until the library is fixed (see tests/test_score_mask_layers.cpp):
    # queries at negative positions (n > m) under documents of one document must see nothing; a
    # key the score function hides (wave, head 1, q − k = 2) takes no NaN from the bias.
    seeds["regression_documents_negative_positions"] = seed(
        n=6, m=4, fns=functions(mask="documents"), fn_params=documents([4]), rng=rng)
    seeds["regression_nan_bias_on_a_key_the_score_hides"] = seed(
        n=6, m=6, head_code=heads(2, nan=True), mask=[bias(0, nan_at=[(3, 1)])],
        fns=functions("wave"), rng=rng)
    # k and v as PagedViews (byte 8, bit 7); added last, so that the seeds above keep their bytes.
    # Prefill and decode across page boundaries, reduced storage, functions, threads, NaN.
    seeds["paged_prefill_causal"] = seed(n=70, m=130, d=8, dv=8, head_code=heads(4, 2),
                                         mask=[CAUSAL], stored=storage(paged=True), rng=rng)
    seeds["paged_decode_qint8"] = seed(flags=THREADS, n=1, m=190, d=16, dv=16,
                                       head_code=heads(4, 2), mask=[CAUSAL],
                                       stored=storage("qint8", "qint8", paged=True), rng=rng)
    seeds["paged_decode_bf16_window"] = seed(n=3, m=100, d=8, dv=4, head_code=heads(2),
                                             mask=[window(5, 0)],
                                             stored=storage("bfloat16", "half", paged=True),
                                             rng=rng)
    seeds["paged_double_functions"] = seed(flags=DOUBLE | INTO, n=66, m=70, d=8, dv=8,
                                           head_code=heads(2), mask=[CAUSAL],
                                           fns=functions("alibi", "sinks"), fn_params=[2, 20],
                                           stored=storage(paged=True), rng=rng)
    seeds["paged_nan"] = seed(n=2, m=40, d=4, dv=4, head_code=heads(2, nan=True), mask=[CAUSAL],
                              nan_v=[(17, 1)], stored=storage(paged=True), rng=rng)
    seeds["paged_spoiled"] = seed(flags=SPOIL, n=4, m=20, d=4, dv=4, spoiler=3,
                                  stored=storage(paged=True), rng=rng)
    # The backward check's cut into blocks placed by AttentionOptions::positions (byte 7, bit 3;
    # the backward itself is checked for every valid float or double problem without NaN or
    # reduced storage, with n·m·H·(d + dv + 1) ≤ 2.5e5); added last, so that the seeds above keep
    # their bytes. Several query and key blocks of the cut, GQA, MQA,
    # threads, _into, strided inputs, explicit parts cut to the blocks, mask functions, soft-cap.
    seeds["backward_positions_gqa_causal_keep"] = seed(
        flags=THREADS | INTO, n=70, m=130, d=8, dv=4, head_code=heads(2, 1), scale=POSITIONS,
        mask=[CAUSAL, keep(0.8, empty_row=True)], rng=rng)
    seeds["backward_positions_documents_softcap"] = seed(
        flags=SOFTCAP | STRIDED, n=40, m=66, d=16, dv=8, head_code=heads(2), scale=POSITIONS,
        softcap=1, qk=2, mask=[bias(0, minus_infinity_row=True), key_length(60)],
        fns=functions(mask="documents"), fn_params=documents([20, 5, 0, 17], slack=1), rng=rng)
    seeds["backward_positions_double_window_sinks"] = seed(
        flags=DOUBLE | SCALE, n=30, m=140, d=4, dv=4, head_code=heads(3), scale=POSITIONS | 3,
        mask=[window(5, 1)], fns=functions(mask="sinks"), fn_params=[2, 20], rng=rng)
    seeds["backward_positions_decode_mqa"] = seed(
        flags=THREADS, n=1, m=190, d=16, dv=16, head_code=heads(4, 1), scale=POSITIONS,
        mask=[CAUSAL], rng=rng)
    # Regression: with a soft-cap, NaN in a key that the mask hides (the backward check puts NaN in
    # the keys no query sees) must reach no gradient; it once reached dq and that key's dk through
    # the derivative 1 − tanh² of its NaN logit, multiplied in after dS was zeroed where P is 0.
    seeds["regression_backward_softcap_hidden_nan_key"] = seed(
        flags=SOFTCAP, n=4, m=6, d=4, dv=4, softcap=1, mask=[key_length(5)], rng=rng)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print("wrote %d seeds to %s" % (len(seeds), out))


if __name__ == "__main__":
    main()
