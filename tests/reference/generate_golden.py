#!/usr/bin/env python3
# SPDX-FileCopyrightText: 2026 The attn authors
# SPDX-License-Identifier: MIT
"""Writes the golden files of tests/test_golden.cpp (attention outputs computed by PyTorch), of
tests/test_rotary.cpp (rotary position embeddings, rotary_*.txt) and of tests/test_gradients.cpp
and tests/test_training.cpp (gradients by torch autograd, grad_*.txt).

Run it with Debian's python3, which has PyTorch (`apt-get install python3-torch`):

    /usr/bin/python3 tests/reference/generate_golden.py

It rewrites tests/reference/golden/*.txt. The output is deterministic: every case seeds
torch.manual_seed with its own fixed seed, and everything is computed in float64 on the CPU.
The C++ tests only read the committed files; they never need Python.

Inputs and weights are drawn on a grid (multiples of 1/64, or 1/16 for biases), so they are exact in
float as well as in double: the float tests then measure attn's arithmetic, not input rounding.

File format (one file per case, `<case>.txt`):

    # comment lines start with '#'; blank lines are ignored
    <name> <rows> <cols>
    <rows lines of <cols> whitespace-separated numbers>
    <name> <rows> <cols>
    ...

Numbers are Python's repr of a float64 (the shortest text that reads back to the same double, so
at most 17 significant digits), or `inf`, `-inf`, `nan`; integers (head counts, window reaches) and
boolean masks (1 = true, 0 = false) are written as integers. Vectors are written as 1 x n
matrices. A scalar is a 1 x 1 matrix. A matrix with a zero dimension has no value lines.

Conventions the files follow (those of attn, see include/attn/mask.hpp):
- Structured masks are aligned bottom-right: with n queries and m keys, query i sits at key
  position p(i) = i + m - n; causal lets it see key j iff j <= p(i), window(left, right) iff
  p(i) - left <= j <= p(i) + right.
- `keep` matrices are true where a key is visible; `bias` matrices are added to the logits after
  scaling (and soft-capping); -inf hides a key.
- A query row that sees no key at all has an output row of ZEROS in attn. PyTorch's softmax gives
  NaN for such a row, so the golden sets it to zero.
- Soft-capping: logits = softcap * tanh(scale * q.k / softcap), before bias and mask.
- Multi-head kernel inputs hold heads as column blocks: q is n x H*d, k is m x Hkv*d, v is
  m x Hkv*dv, out is n x H*dv; query head h reads kv head h // (H / Hkv).
- Module weights keep nn.MultiheadAttention's state_dict names and layout (in_proj_weight,
  in_proj_bias, out_proj.weight, out_proj.bias, or q_proj_weight, k_proj_weight, v_proj_weight).
  torch's bool attn_mask and key_padding_mask are True where attention is NOT allowed.
- Rotary cases hold heads as column blocks of x (n x H*d); row i of x stands at positions[i].
  layout and scaling are written as integers (see the comment in each file).
"""

import math
import os

import torch
import torch.nn.functional as F

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
DTYPE = torch.float64
NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# Inputs


def grid(shape, bound=1.0, step=64):
    """Uniform random multiples of 1/step in [-bound, bound]: exact in float and double."""
    top = int(round(bound * step))
    return torch.randint(-top, top + 1, shape, dtype=torch.int64).to(DTYPE) / step


def window_keep(n, m, left, right):
    """Bottom-right aligned window as a keep matrix; left/right None means unbounded."""
    i = torch.arange(n).unsqueeze(1)
    j = torch.arange(m).unsqueeze(0)
    p = i + (m - n)
    keep = torch.ones(n, m, dtype=torch.bool)
    if left is not None:
        keep &= j >= p - left
    if right is not None:
        keep &= j <= p + right
    return keep


def causal_keep(n, m):
    return window_keep(n, m, None, 0)


# ---------------------------------------------------------------------------------------------
# Reference attention (torch 1.13 has no F.scaled_dot_product_attention)


def attention(q, k, v, scale=None, keep=None, bias=None, softcap=0.0):
    """One head: softmax(q k^T * scale [softcapped] + bias, masked by keep) v.

    q (n, d), k (m, d), v (m, dv) -> (n, dv). Rows with no visible key are zero.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    logits = (q @ k.transpose(-2, -1)) * scale
    if softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    if bias is not None:
        logits = logits + bias
    if keep is not None:
        logits = logits.masked_fill(~keep, NEG_INF)
    out = torch.softmax(logits, dim=-1) @ v
    empty = torch.isneginf(logits).all(dim=-1)
    return out.masked_fill(empty.unsqueeze(-1), 0.0)


def multi_head_attention(q, k, v, heads, kv_heads, **kwargs):
    """Heads as column blocks: q (n, H*d), k (m, Hkv*d), v (m, Hkv*dv) -> (n, H*dv)."""
    n, m = q.shape[0], k.shape[0]
    d = q.shape[1] // heads
    dv = v.shape[1] // kv_heads
    qh = q.reshape(n, heads, d).transpose(0, 1)  # (H, n, d)
    group = heads // kv_heads
    kh = k.reshape(m, kv_heads, d).transpose(0, 1).repeat_interleave(group, dim=0)  # (H, m, d)
    vh = v.reshape(m, kv_heads, dv).transpose(0, 1).repeat_interleave(group, dim=0)
    out = attention(qh, kh, vh, **kwargs)  # (H, n, dv)
    return out.transpose(0, 1).reshape(n, heads * dv)


def projected_attention(target, source, w, heads, kv_heads, keep=None):
    """Multi-head attention with separate Linear projections (PyTorch layout), -> (n, E)."""
    e = w["q_proj_weight"].shape[0]
    kv = w["k_proj_weight"].shape[0]
    bias = w.get("in_proj_bias")
    bq, bk, bv = (None, None, None) if bias is None else (bias[:e], bias[e:e + kv], bias[e + kv:])
    q = F.linear(target, w["q_proj_weight"], bq)
    k = F.linear(source, w["k_proj_weight"], bk)
    v = F.linear(source, w["v_proj_weight"], bv)
    heads_out = multi_head_attention(q, k, v, heads, kv_heads, keep=keep)
    return F.linear(heads_out, w["out_proj.weight"], w.get("out_proj.bias"))


# ---------------------------------------------------------------------------------------------
# Output


def format_number(x):
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, int):
        return str(x)
    return repr(float(x))


class GoldenFile:
    def __init__(self, name, description):
        self.name = name
        self.lines = [
            f"# attn golden case {name}: {description}",
            f"# Generated by tests/reference/generate_golden.py (torch {torch.__version__}); "
            "do not edit.",
        ]

    def comment(self, text):
        self.lines.append(f"# {text}")

    def matrix(self, name, value):
        """A tensor of rank 0-2 (rank < 2 is written as one row), or a Python scalar."""
        if not torch.is_tensor(value):
            value = torch.tensor(value)
        value = value.detach()
        if value.dim() < 2:
            value = value.reshape(1, -1)
        rows, cols = value.shape
        self.lines.append(f"{name} {rows} {cols}")
        for row in value.tolist():
            self.lines.append(" ".join(format_number(x) for x in row))

    def write(self):
        os.makedirs(GOLDEN_DIR, exist_ok=True)
        path = os.path.join(GOLDEN_DIR, self.name + ".txt")
        with open(path, "w", encoding="ascii", newline="\n") as f:
            f.write("\n".join(self.lines) + "\n")
        return path


def check_close(a, b, what):
    """Cross-checks two float64 computations of the same thing inside the generator."""
    err = (a - b).abs().max().item()
    if not err <= 1e-12:
        raise AssertionError(f"{what}: torch paths disagree by {err}")


# ---------------------------------------------------------------------------------------------
# Kernel cases: one head unless stated


def kernel_case(name, description, seed, n, m, d, dv=None, bound=1.0, **kwargs):
    """q, k, v on the grid; returns (file, q, k, v) with the inputs already saved."""
    torch.manual_seed(seed)
    dv = d if dv is None else dv
    q, k, v = grid((n, d), bound), grid((m, d), bound), grid((m, dv))
    g = GoldenFile(name, description)
    g.matrix("q", q)
    g.matrix("k", k)
    g.matrix("v", v)
    return g, q, k, v


def kernel_cases():
    files = []

    g, q, k, v = kernel_case("kernel_no_mask", "one head, no mask", 101, n=7, m=11, d=8)
    g.matrix("out", attention(q, k, v))
    files.append(g)

    g, q, k, v = kernel_case("kernel_causal_n_lt_m", "causal, n < m (bottom-right)", 102,
                             n=5, m=12, d=8)
    g.matrix("out", attention(q, k, v, keep=causal_keep(5, 12)))
    files.append(g)

    g, q, k, v = kernel_case("kernel_causal_n_gt_m", "causal, n > m (bottom-right)", 103,
                             n=12, m=5, d=8)
    g.comment("queries 0..6 see no key (j <= i + m - n < 0): their rows of out are zero")
    g.matrix("out", attention(q, k, v, keep=causal_keep(12, 5)))
    files.append(g)

    g, q, k, v = kernel_case("kernel_window", "window(left, right), bottom-right", 104,
                             n=9, m=16, d=8)
    g.matrix("left", 3)
    g.matrix("right", 2)
    g.matrix("out", attention(q, k, v, keep=window_keep(9, 16, 3, 2)))
    files.append(g)

    g, q, k, v = kernel_case("kernel_keep", "explicit keep mask, row 3 fully masked", 105,
                             n=8, m=10, d=8)
    keep = torch.rand(8, 10) < 0.6
    keep[3, :] = False
    keep[:, 0] |= torch.arange(8) != 3  # every other row sees at least one key
    g.comment("keep: 1 = visible; row 3 sees no key, so out row 3 is zero")
    g.matrix("keep", keep)
    g.matrix("out", attention(q, k, v, keep=keep))
    files.append(g)

    g, q, k, v = kernel_case("kernel_bias", "explicit additive bias with some -inf", 106,
                             n=6, m=10, d=8)
    bias = grid((6, 10), bound=2.0, step=16)
    bias[torch.rand(6, 10) < 0.2] = NEG_INF
    bias[:, 4] = 0.5  # no row is entirely -inf
    g.matrix("bias", bias)
    g.matrix("out", attention(q, k, v, bias=bias))
    files.append(g)

    g, q, k, v = kernel_case("kernel_value_dim", "value dim dv = 5 differs from d = 8", 107,
                             n=6, m=9, d=8, dv=5)
    g.matrix("out", attention(q, k, v))
    files.append(g)

    g, q, k, v = kernel_case("kernel_scale", "custom scale 0.6875 instead of 1/sqrt(8)", 108,
                             n=6, m=9, d=8)
    g.matrix("scale", 0.6875)
    g.matrix("out", attention(q, k, v, scale=0.6875))
    files.append(g)

    g, q, k, v = kernel_case("kernel_softcap", "softcap 1.5 (inputs in [-2, 2] to saturate)", 109,
                             n=6, m=10, d=8, bound=2.0)
    g.matrix("softcap", 1.5)
    g.matrix("out", attention(q, k, v, softcap=1.5))
    files.append(g)

    g, q, k, v = kernel_case("kernel_softcap_bias", "softcap 1.5 applied before an additive bias",
                             110, n=6, m=10, d=8, bound=2.0)
    bias = grid((6, 10), bound=2.0, step=16)
    g.matrix("softcap", 1.5)
    g.matrix("bias", bias)
    g.matrix("out", attention(q, k, v, softcap=1.5, bias=bias))
    files.append(g)

    g, q, k, v = kernel_case("kernel_combined", "causal & keep & bias; row 2 biased all -inf",
                             111, n=7, m=10, d=8)
    keep = torch.rand(7, 10) < 0.7
    keep[:, 0] = True
    bias = grid((7, 10), bound=2.0, step=16)
    bias[2, :] = NEG_INF
    g.comment("row 2 has -inf bias on every key, so it sees no key and out row 2 is zero")
    g.matrix("keep", keep)
    g.matrix("bias", bias)
    g.matrix("out", attention(q, k, v, keep=keep & causal_keep(7, 10), bias=bias))
    files.append(g)

    # Multi-head with grouped-query attention: H = 4 query heads over Hkv = 2 kv heads.
    torch.manual_seed(112)
    n, m, heads, kv_heads, d, dv = 6, 10, 4, 2, 4, 3
    q, k, v = grid((n, heads * d)), grid((m, kv_heads * d)), grid((m, kv_heads * dv))
    g = GoldenFile("kernel_gqa", "H = 4, Hkv = 2, d = 4, dv = 3; heads as column blocks")
    g.matrix("num_heads", heads)
    g.matrix("num_kv_heads", kv_heads)
    g.matrix("q", q)
    g.matrix("k", k)
    g.matrix("v", v)
    out = multi_head_attention(q, k, v, heads, kv_heads)
    for h in range(heads):  # cross-check the reshape against per-head slicing
        kv = h // (heads // kv_heads)
        check_close(out[:, h * dv:(h + 1) * dv],
                    attention(q[:, h * d:(h + 1) * d], k[:, kv * d:(kv + 1) * d],
                              v[:, kv * dv:(kv + 1) * dv]), "kernel_gqa head slicing")
    g.matrix("out", out)
    g.matrix("out_causal", multi_head_attention(q, k, v, heads, kv_heads, keep=causal_keep(n, m)))
    files.append(g)

    # Long: several query blocks (64 rows) and key blocks (128 keys) of the tiled kernel.
    n, m, left = 70, 300, 100
    g, q, k, v = kernel_case("kernel_long", f"n = {n}, m = {m}: several tiles each way", 113,
                             n=n, m=m, d=8)
    g.matrix("left", left)
    g.matrix("out", attention(q, k, v))
    g.matrix("out_causal", attention(q, k, v, keep=causal_keep(n, m)))
    g.comment(f"out_window: causal & window({left}, 0)")
    g.matrix("out_window", attention(q, k, v, keep=window_keep(n, m, left, 0)))
    files.append(g)

    return files


# ---------------------------------------------------------------------------------------------
# Module cases: torch.nn.MultiheadAttention, and grouped-query attention from torch ops


def make_mha(seed, embed_dim, num_heads, bias=True, kdim=None):
    """nn.MultiheadAttention in float64 with its parameters replaced by grid values."""
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(embed_dim, num_heads, bias=bias, batch_first=True,
                                      kdim=kdim, vdim=kdim, dtype=DTYPE)
    mha.eval()
    with torch.no_grad():
        for name, p in mha.named_parameters():
            p.copy_(grid(p.shape, bound=0.5, step=64 if "weight" in name else 16))
    return mha


def run_mha(mha, query, key, attn_mask=None, key_padding_mask=None):
    with torch.no_grad():
        y, _ = mha(query.unsqueeze(0), key.unsqueeze(0), key.unsqueeze(0), attn_mask=attn_mask,
                   key_padding_mask=None if key_padding_mask is None
                   else key_padding_mask.unsqueeze(0), need_weights=False)
    return y.squeeze(0)


def mha_weights(mha):
    """state_dict in PyTorch's names, plus q/k/v views of a packed in_proj_weight."""
    w = {name: t.detach().clone() for name, t in mha.state_dict().items()}
    if "in_proj_weight" in w:
        e = mha.embed_dim
        w["q_proj_weight"], w["k_proj_weight"], w["v_proj_weight"] = w["in_proj_weight"].split(e)
        del w["in_proj_weight"]
    return w


def save_state(g, mha):
    for name, t in mha.state_dict().items():
        g.matrix(name, t)


def module_cases():
    files = []
    e, heads = 16, 4

    # Self-attention, bias on: y = MHA(x, x, x), without mask and causal.
    for name, bias, seed in (("mha_self", True, 201), ("mha_self_no_bias", False, 202)):
        mha = make_mha(seed, e, heads, bias=bias)
        length = 7
        x = grid((length, e))
        causal = ~causal_keep(length, length)  # torch: True = not allowed
        g = GoldenFile(name, f"nn.MultiheadAttention(16, 4, bias={bias}), self-attention, L = 7")
        g.matrix("num_heads", heads)
        save_state(g, mha)
        g.matrix("x", x)
        y = run_mha(mha, x, x)
        y_causal = run_mha(mha, x, x, attn_mask=causal)
        check_close(y, projected_attention(x, x, mha_weights(mha), heads, heads), name)
        check_close(y_causal, projected_attention(x, x, mha_weights(mha), heads, heads,
                                                  keep=~causal), name + " causal")
        g.matrix("y", y)
        g.matrix("y_causal", y_causal)
        files.append(g)

    # Cross-attention, kdim = vdim = S != E: q_proj_weight, k_proj_weight, v_proj_weight.
    s, n, m = 12, 5, 9
    mha = make_mha(203, e, heads, kdim=s)
    target, source = grid((n, e)), grid((m, s))
    causal = ~causal_keep(n, m)  # bottom-right aligned, given to torch explicitly
    g = GoldenFile("mha_cross_kdim",
                   "nn.MultiheadAttention(16, 4, kdim=vdim=12), target n = 5, source m = 9")
    g.matrix("num_heads", heads)
    save_state(g, mha)
    g.matrix("target", target)
    g.matrix("source", source)
    y = run_mha(mha, target, source)
    check_close(y, projected_attention(target, source, mha_weights(mha), heads, heads),
                "mha_cross_kdim")
    g.matrix("y", y)
    g.comment("y_causal: attn_mask = bottom-right causal (key j hidden from query i iff "
              "j > i + m - n)")
    y_causal = run_mha(mha, target, source, attn_mask=causal)
    check_close(y_causal, projected_attention(target, source, mha_weights(mha), heads, heads,
                                              keep=~causal), "mha_cross_kdim causal")
    g.matrix("y_causal", y_causal)
    files.append(g)

    # Cross-attention, kdim = vdim = E: packed in_proj_weight; with a key_padding_mask.
    mha = make_mha(204, e, heads)
    target, source = grid((n, e)), grid((m, e))
    padding = torch.zeros(m, dtype=torch.bool)
    padding[6:] = True
    g = GoldenFile("mha_cross_packed",
                   "nn.MultiheadAttention(16, 4), target n = 5, source m = 9 of width E")
    g.matrix("num_heads", heads)
    save_state(g, mha)
    g.matrix("target", target)
    g.matrix("source", source)
    y = run_mha(mha, target, source)
    check_close(y, projected_attention(target, source, mha_weights(mha), heads, heads),
                "mha_cross_packed")
    g.matrix("y", y)
    g.comment("key_padding_mask as torch takes it: 1 = padding, the key is ignored by every query")
    g.matrix("key_padding_mask", padding)
    y_padded = run_mha(mha, target, source, key_padding_mask=padding)
    check_close(y_padded, run_mha(mha, target, source[:6]), "key padding = truncated source")
    g.matrix("y_key_padding", y_padded)
    files.append(g)

    # Grouped-query attention: H = 4, Hkv = 2, separate projection weights (kv_dim = 8).
    kv_heads = 2
    kv = kv_heads * (e // heads)
    for name, s, seed in (("gqa_self", e, 205), ("gqa_cross", 12, 206)):
        torch.manual_seed(seed)
        w = {
            "q_proj_weight": grid((e, e), 0.5),
            "k_proj_weight": grid((kv, s), 0.5),
            "v_proj_weight": grid((kv, s), 0.5),
            "in_proj_bias": grid((e + 2 * kv,), 0.5, 16),
            "out_proj.weight": grid((e, e), 0.5),
            "out_proj.bias": grid((e,), 0.5, 16),
        }
        self_attention = s == e
        n, m = (7, 7) if self_attention else (5, 9)
        target = grid((n, e))
        source = target if self_attention else grid((m, s))
        kind = "self-attention, L = 7" if self_attention else "cross-attention S = 12, n = 5, m = 9"
        g = GoldenFile(name, f"grouped-query attention from torch ops, E = 16, H = 4, Hkv = 2, "
                             f"{kind}")
        g.matrix("num_heads", heads)
        g.matrix("num_kv_heads", kv_heads)
        for key, t in w.items():
            g.matrix(key, t)
        if self_attention:
            g.matrix("x", target)
        else:
            g.matrix("target", target)
            g.matrix("source", source)
        g.matrix("y", projected_attention(target, source, w, heads, kv_heads))
        if self_attention:
            y_causal = projected_attention(target, source, w, heads, kv_heads,
                                           keep=causal_keep(n, m))
            g.matrix("y_causal", y_causal)
        files.append(g)

    # The GQA path with Hkv = H must reproduce nn.MultiheadAttention.
    mha = make_mha(207, e, heads)
    x = grid((6, e))
    check_close(run_mha(mha, x, x), projected_attention(x, x, mha_weights(mha), heads, heads),
                "projected_attention vs nn.MultiheadAttention")
    return files


# ---------------------------------------------------------------------------------------------
# Built-in masks and score functions (include/attn/builtin_masks.hpp), each written the way its
# original project writes it, on positions that start at 0 for the first key.


def t5_relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                                max_distance=128):
    """Hugging Face transformers, T5Attention._relative_position_bucket, as written there.

    relative_position = memory_position - query_position (k - q), a long tensor. Note the float32
    arithmetic (.float(), then Python floats): attn's relative_position_bucket computes in float
    too, so that both truncate the same value.
    """
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    # now relative_position is in the range [0, inf)

    # half of the buckets are for exact increments in positions
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact

    # The other half of the buckets are for logarithmically bigger bins in positions up to
    # max_distance
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1)
    )

    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


def t5_compute_bias(table, query_length, key_length, bidirectional, max_distance):
    """T5Attention.compute_bias: (H, query_length, key_length) from the table (num_buckets, H),
    which is relative_attention_bias.weight (nn.Embedding's weight)."""
    context_position = torch.arange(query_length, dtype=torch.long)[:, None]
    memory_position = torch.arange(key_length, dtype=torch.long)[None, :]
    relative_position = memory_position - context_position  # shape (query_length, key_length)
    relative_position_bucket = t5_relative_position_bucket(
        relative_position,
        bidirectional=bidirectional,
        num_buckets=table.shape[0],
        max_distance=max_distance,
    )
    values = F.embedding(relative_position_bucket, table)  # (query_length, key_length, H)
    return values.permute([2, 0, 1])


def t5_attention(q, k, v, heads, table, bidirectional, max_distance):
    """T5Attention.forward for n queries that continue m - n cached keys (heads as column blocks).

    T5 computes the bias for all m positions and keeps its last n rows (position_bias[:, :, -n:, :]
    in transformers before cache_position; the same rows as with it), does not scale the logits,
    and adds a causal mask in the decoder (bidirectional=False), here as -inf.
    """
    n, m = q.shape[0], k.shape[0]
    d, dv = q.shape[1] // heads, v.shape[1] // heads
    qh = q.reshape(n, heads, d).transpose(0, 1)  # (H, n, d)
    kh = k.reshape(m, heads, d).transpose(0, 1)
    vh = v.reshape(m, heads, dv).transpose(0, 1)
    position_bias = t5_compute_bias(table, m, m, bidirectional, max_distance)[:, -n:, :]
    if not bidirectional:
        position_bias = position_bias.masked_fill(~causal_keep(n, m), NEG_INF)
    scores = torch.matmul(qh, kh.transpose(2, 1))
    scores += position_bias
    attn_weights = F.softmax(scores, dim=-1)
    out = torch.matmul(attn_weights, vh)  # (H, n, dv)
    return out.transpose(0, 1).reshape(n, heads * dv)


def alibi_get_slopes(n):
    """ALiBi's get_slopes (Press et al., attention_with_linear_biases), as written there."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    # Not a power of two: the slopes of the closest lower power of two, then every other slope
    # of twice as many heads.
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + alibi_get_slopes(2 * closest_power_of_2)[0::2][:n - closest_power_of_2])


def alibi_future_mask(slopes, maxpos):
    """The ALiBi reference's decoder mask (fairseq TransformerDecoder): (H, maxpos, maxpos).

    It adds slope_h * j to key j on every row rather than slope_h * (j - i): the softmax does not
    see the missing -slope_h * i of row i. Future keys get -inf (fill_with_neg_inf, triu).
    """
    attn_heads = slopes.shape[0]
    alibi = slopes.unsqueeze(1).unsqueeze(1) * torch.arange(maxpos, dtype=DTYPE).unsqueeze(
        0).unsqueeze(0).expand(attn_heads, -1, -1)
    alibi = alibi.view(attn_heads, 1, maxpos)
    future_mask = torch.triu(torch.zeros([maxpos, maxpos], dtype=DTYPE).fill_(NEG_INF), 1)
    return future_mask.unsqueeze(0) + alibi


def torch_sdpa(q, k, v, keep):
    """torch's scaled_dot_product_attention with a boolean mask (True = attend), heads in the
    leading dimension. torch 1.13 has it as the private F._scaled_dot_product_attention."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    out, _ = F._scaled_dot_product_attention(q, k, v, keep, 0.0, False, False)
    return out


def sdpa_heads(q, k, v, heads, keep):
    """torch_sdpa on heads as column blocks: q (n, H*d), k (m, H*d), v (m, H*dv) -> (n, H*dv)."""
    n, m = q.shape[0], k.shape[0]
    d, dv = q.shape[1] // heads, v.shape[1] // heads
    out = torch_sdpa(q.reshape(n, heads, d).transpose(0, 1), k.reshape(m, heads, d).transpose(0, 1),
                     v.reshape(m, heads, dv).transpose(0, 1), keep)
    return out.transpose(0, 1).reshape(n, heads * dv)


def mask_cases():
    files = []

    # T5's buckets, every relative position in [-200, 200], for several bucket counts and
    # distances (half the buckets per direction when bidirectional).
    relative_position = torch.arange(-200, 201, dtype=torch.long)
    configs = [(1, 32, 128), (0, 32, 128), (1, 32, 20), (0, 32, 20), (1, 16, 50), (0, 8, 12),
               (1, 10, 9)]
    g = GoldenFile("mask_t5_buckets",
                   "T5Attention._relative_position_bucket (Hugging Face) of k - q in [-200, 200]")
    g.comment("configs: one row per case: bidirectional (1/0), num_buckets, max_distance; "
              "buckets: one row per case, one column per relative_position")
    g.matrix("configs", torch.tensor(configs))
    g.matrix("relative_position", relative_position)
    g.matrix("buckets", torch.stack([
        t5_relative_position_bucket(relative_position, bool(b), buckets, distance)
        for b, buckets, distance in configs]))
    files.append(g)

    # T5 attention: n = 9 queries continuing 31 cached keys, so that distances pass max_exact
    # (8 bidirectional, 16 unidirectional) and max_distance 20.
    torch.manual_seed(301)
    n, m, heads, d, dv, num_buckets, max_distance = 9, 40, 2, 4, 4, 32, 20
    q, k, v = grid((n, heads * d)), grid((m, heads * d)), grid((m, heads * dv))
    table = grid((num_buckets, heads), bound=2.0, step=16)
    g = GoldenFile("mask_t5_bias", f"T5 relative position bias, n = {n}, m = {m}, H = {heads}, "
                   f"{num_buckets} buckets, max_distance {max_distance}, scale 1")
    g.comment("table: num_buckets x H, as relative_attention_bias.weight")
    for name, value in (("num_heads", heads), ("scale", 1.0), ("max_distance", max_distance),
                        ("q", q), ("k", k), ("v", v), ("table", table)):
        g.matrix(name, value)
    for name, bidirectional in (("out_bidirectional", True), ("out_causal", False)):
        out = t5_attention(q, k, v, heads, table, bidirectional, max_distance)
        bias = t5_compute_bias(table, m, m, bidirectional, max_distance)[:, -n:, :]
        check_close(out, multi_head_attention(
            q, k, v, heads, heads, scale=1.0, bias=bias,
            keep=None if bidirectional else causal_keep(n, m)), f"mask_t5_bias {name}")
        if not bidirectional:
            g.comment("out_causal: the decoder's bias (bidirectional=False) and a causal mask")
        g.matrix(name, out)
    files.append(g)

    # ALiBi slopes for head counts powers of two and not.
    g = GoldenFile("mask_alibi_slopes", "ALiBi's get_slopes(H) from the reference implementation")
    for h in (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64):
        g.matrix(f"slopes_{h}", torch.tensor(alibi_get_slopes(h), dtype=DTYPE))
    files.append(g)

    # ALiBi attention, H = 6 (not a power of two), causal.
    torch.manual_seed(302)
    n, heads, d = 12, 6, 4
    q, k, v = grid((n, heads * d)), grid((n, heads * d)), grid((n, heads * d))
    slopes = torch.tensor(alibi_get_slopes(heads), dtype=DTYPE)
    g = GoldenFile("mask_alibi", f"causal attention with ALiBi, n = m = {n}, H = {heads}, d = {d}")
    for name, value in (("num_heads", heads), ("slopes", slopes), ("q", q), ("k", k), ("v", v)):
        g.matrix(name, value)
    qh, kh, vh = (t.reshape(n, heads, d).transpose(0, 1) for t in (q, k, v))
    scaling = d ** -0.5  # fairseq's MultiheadAttention scales q
    attn_weights = torch.bmm(qh * scaling, kh.transpose(1, 2)) + alibi_future_mask(slopes, n)
    out = torch.bmm(F.softmax(attn_weights, dim=-1), vh).transpose(0, 1).reshape(n, heads * d)
    distance = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # k - q
    check_close(out, multi_head_attention(q, k, v, heads, heads, bias=slopes[:, None, None] *
                                          distance, keep=causal_keep(n, n)), "mask_alibi")
    g.comment("out: softmax(q k^T / sqrt(d) + slope_h * (k - q), causal) v per head")
    g.matrix("out", out)
    files.append(g)

    # Documents packed along the positions, causal within each; the mask built in torch.
    torch.manual_seed(303)
    lengths = [5, 1, 7, 3]
    n, heads, d = sum(lengths), 2, 4
    q, k, v = grid((n, heads * d)), grid((n, heads * d)), grid((n, heads * d))
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    keep = (doc[:, None] == doc[None, :]) & causal_keep(n, n)
    g = GoldenFile("mask_documents", f"documents {lengths} packed, causal within each, H = {heads}")
    for name, value in (("num_heads", heads), ("lengths", torch.tensor(lengths)),
                        ("document_ids", doc), ("q", q), ("k", k), ("v", v), ("keep", keep)):
        g.matrix(name, value)
    out = sdpa_heads(q, k, v, heads, keep)
    check_close(out, multi_head_attention(q, k, v, heads, heads, keep=keep), "mask_documents")
    g.comment("out: torch's scaled_dot_product_attention with attn_mask = keep")
    g.matrix("out", out)
    files.append(g)

    # Prefix-LM: the prefix seen by every query, causal after it.
    torch.manual_seed(304)
    n, prefix, d = 12, 5, 8
    q, k, v = grid((n, d)), grid((n, d)), grid((n, d))
    j = torch.arange(n)[None, :]
    keep = (j < prefix) | causal_keep(n, n)
    g = GoldenFile("mask_prefix_lm", f"prefix-LM, prefix {prefix} of n = m = {n}, one head")
    for name, value in (("prefix", prefix), ("q", q), ("k", k), ("v", v), ("keep", keep)):
        g.matrix(name, value)
    out = sdpa_heads(q, k, v, 1, keep)
    check_close(out, attention(q, k, v, keep=keep), "mask_prefix_lm")
    g.comment("out: torch's scaled_dot_product_attention with attn_mask = keep")
    g.matrix("out", out)
    files.append(g)

    return files


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings (include/attn/rotary.hpp): Hugging Face's LLaMA (rotate_half) for
# half_split, Meta's original LLaMA (complex numbers) for interleaved, each as written there but
# in float64 and on explicit positions; partial rotary as GPT-NeoX (half_split) and GPT-J
# (interleaved) apply it to the first rotary_dim features of each head.

ROTARY_LAYOUTS = {"half_split": 0, "interleaved": 1}
ROTARY_SCALINGS = {"none": 0, "linear": 1, "ntk": 2}


def hf_inv_freq(dim, base):
    """LlamaRotaryEmbedding.__init__: 1 / base^(arange(0, dim, 2) / dim), here in float64."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=DTYPE) / dim))


def ntk_base(base, factor, dim):
    """Static NTK-aware scaling (bloc97): base * factor^(dim / (dim - 2)); Hugging Face's dynamic
    variant (LlamaDynamicNTKScalingRotaryEmbedding) puts a function of the sequence length in
    place of factor."""
    return base * factor ** (dim / (dim - 2))


def hf_cos_sin(positions, inv_freq, linear_factor=None):
    """LlamaRotaryEmbedding.forward: cos and sin of cat(freqs, freqs), (n, dim), with
    LlamaLinearScalingRotaryEmbedding's t = t / scaling_factor for position interpolation."""
    t = positions.to(DTYPE)
    if linear_factor is not None:
        t = t / linear_factor
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    """Rotates half the hidden dims of the input (transformers' modeling_llama)."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def hf_apply_rotary(x, heads, rotary_dim, cos, sin):
    """apply_rotary_pos_emb on heads as column blocks, partial as GPT-NeoX's attention splits
    query_rot / query_pass: x (n, H*d), cos and sin (n, rotary_dim) -> (n, H*d)."""
    n = x.shape[0]
    d = x.shape[1] // heads
    q = x.reshape(n, heads, d).transpose(0, 1)  # (H, n, d), as (bsz, heads, seq, d) in HF
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    q_embed = (q_rot * cos) + (rotate_half(q_rot) * sin)  # cos broadcast over heads
    return torch.cat((q_embed, q_pass), dim=-1).transpose(0, 1).reshape(n, heads * d)


def meta_freqs_cis(dim, positions, theta):
    """Meta's llama/model.py precompute_freqs_cis, on explicit positions and in complex128."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=DTYPE)[: (dim // 2)] / dim))
    t = positions.to(DTYPE)
    freqs = torch.outer(t, freqs)
    return torch.polar(torch.ones_like(freqs), freqs)


def meta_apply_rotary(x, heads, rotary_dim, freqs_cis):
    """Meta's apply_rotary_emb (pairs (2i, 2i+1) as complex numbers), partial as GPT-J applies
    rotate_every_two to the first rotary_dim features: x (n, H*d) -> (n, H*d)."""
    n = x.shape[0]
    d = x.shape[1] // heads
    xq = x.reshape(n, heads, d)  # (seqlen, n_heads, head_dim), bsz dropped
    x_rot, x_pass = xq[..., :rotary_dim], xq[..., rotary_dim:]
    xq_ = torch.view_as_complex(x_rot.reshape(*x_rot.shape[:-1], -1, 2).contiguous())
    freqs_cis = freqs_cis.view(n, 1, rotary_dim // 2)  # reshape_for_broadcast
    xq_out = torch.view_as_real(xq_ * freqs_cis).flatten(2)
    return torch.cat((xq_out, x_pass), dim=-1).reshape(n, heads * d)


def interleave_pairs(x, heads, rotary_dim):
    """Moves feature i + r/2 next to feature i (half_split's pairs to interleaved's) in the first
    rotary_dim features of every head, as Hugging Face's LLaMA conversion permutes Wq and Wk."""
    n = x.shape[0]
    xh = x.reshape(n, heads, -1)
    half = rotary_dim // 2
    rot = torch.stack((xh[..., :half], xh[..., half:rotary_dim]), dim=-1).flatten(2)
    return torch.cat((rot, xh[..., rotary_dim:]), dim=-1).reshape(n, -1)


def deinterleave_pairs(x, heads, rotary_dim):
    """The inverse of interleave_pairs."""
    n = x.shape[0]
    xh = x.reshape(n, heads, -1)
    rot = xh[..., :rotary_dim]
    return torch.cat((rot[..., 0::2], rot[..., 1::2], xh[..., rotary_dim:]), dim=-1).reshape(n, -1)


def rotary_case(name, description, seed, layout, heads, head_dim, positions, rotary_dim=None,
                base=10000.0, scaling="none", factor=1.0):
    """x on the grid at the given positions; out by Hugging Face's form (half_split) or Meta's
    (interleaved), cross-checked against the other form on permuted features."""
    torch.manual_seed(seed)
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    positions = torch.tensor(positions, dtype=torch.long)
    x = grid((len(positions), heads * head_dim))
    theta = ntk_base(base, factor, rotary_dim) if scaling == "ntk" else base
    linear_factor = factor if scaling == "linear" else None
    cos, sin = hf_cos_sin(positions, hf_inv_freq(rotary_dim, theta), linear_factor)
    # Meta's code has no linear scaling; for the cross-check its positions are divided by the
    # factor as LlamaLinearScalingRotaryEmbedding divides t.
    freqs_cis = meta_freqs_cis(rotary_dim, positions if linear_factor is None
                               else positions.to(DTYPE) / linear_factor, theta)
    if layout == "half_split":
        out = hf_apply_rotary(x, heads, rotary_dim, cos, sin)
        check_close(interleave_pairs(out, heads, rotary_dim),
                    meta_apply_rotary(interleave_pairs(x, heads, rotary_dim), heads, rotary_dim,
                                      freqs_cis), f"{name}: rotate_half vs complex pairs")
    else:
        out = meta_apply_rotary(x, heads, rotary_dim, freqs_cis)
        via_hf = hf_apply_rotary(deinterleave_pairs(x, heads, rotary_dim), heads, rotary_dim, cos,
                                 sin)
        check_close(out, interleave_pairs(via_hf, heads, rotary_dim),
                    f"{name}: complex pairs vs rotate_half")
    check_close(deinterleave_pairs(interleave_pairs(x, heads, rotary_dim), heads, rotary_dim), x,
                f"{name}: pair permutations")
    g = GoldenFile(name, description)
    g.comment("layout: 0 half_split (rotate_half), 1 interleaved (complex pairs); "
              "scaling: 0 none, 1 linear, 2 ntk")
    for key, value in (("num_heads", heads), ("head_dim", head_dim), ("rotary_dim", rotary_dim),
                       ("base", base), ("layout", ROTARY_LAYOUTS[layout]),
                       ("scaling", ROTARY_SCALINGS[scaling]), ("factor", factor),
                       ("positions", positions), ("x", x), ("out", out)):
        g.matrix(key, value)
    return g


def rotary_cases():
    offset = [1000, 1001, 1002]
    return [
        rotary_case("rotary_llama", "Hugging Face LLaMA (rotate_half), H = 2, d = 16, "
                    "positions 0..2", 401, "half_split", heads=2, head_dim=16, positions=[0, 1, 2]),
        rotary_case("rotary_llama_offset", "Hugging Face LLaMA (rotate_half), H = 2, d = 16, "
                    "base 500000, positions 1000..1002", 402, "half_split", heads=2, head_dim=16,
                    positions=offset, base=500000.0),
        rotary_case("rotary_meta", "Meta's LLaMA (complex pairs), H = 2, d = 16, positions 0..2",
                    403, "interleaved", heads=2, head_dim=16, positions=[0, 1, 2]),
        rotary_case("rotary_meta_offset", "Meta's LLaMA (complex pairs), H = 2, d = 16, "
                    "positions 1000..1002", 404, "interleaved", heads=2, head_dim=16,
                    positions=offset),
        rotary_case("rotary_neox_partial", "GPT-NeoX partial rotary (rotate_half on 16 of 48), "
                    "H = 2, positions 5..6", 405, "half_split", heads=2, head_dim=48,
                    rotary_dim=16, positions=[5, 6]),
        rotary_case("rotary_gptj_partial", "GPT-J partial rotary (pairs (2i, 2i+1) on 32 of 64), "
                    "H = 1, positions 1000..1002", 406, "interleaved", heads=1, head_dim=64,
                    rotary_dim=32, positions=offset),
        rotary_case("rotary_linear", "linear scaling (position interpolation) by 4, rotate_half, "
                    "H = 2, d = 16, positions 1000..1002", 407, "half_split", heads=2,
                    head_dim=16, positions=offset, scaling="linear", factor=4.0),
        rotary_case("rotary_ntk", "static NTK-aware scaling by 8 (base * 8^(16/14)), rotate_half, "
                    "H = 2, d = 16, positions 1000..1002", 408, "half_split", heads=2,
                    head_dim=16, positions=offset, scaling="ntk", factor=8.0),
        rotary_case("rotary_positions", "explicit positions, negative included, rotate_half, "
                    "H = 1, d = 16", 409, "half_split", heads=1, head_dim=16,
                    positions=[7, 0, 2047, 3, -2]),
        rotary_case("rotary_positions_interleaved", "explicit positions, complex pairs, partial "
                    "(12 of 16), H = 2", 410, "interleaved", heads=2, head_dim=16, rotary_dim=12,
                    positions=[4, 4, 0, 513]),
    ]

# ---------------------------------------------------------------------------------------------
# Gradient cases: torch autograd through the manual attention above and through
# nn.MultiheadAttention, for loss = sum(d_out * y).


def gradient_kernel_case(name, description, seed, n, m, heads, kv_heads, d, dv, keep=None,
                         bias=None, softcap=0.0):
    torch.manual_seed(seed)
    q = grid((n, heads * d)).requires_grad_()
    k = grid((m, kv_heads * d)).requires_grad_()
    v = grid((m, kv_heads * dv)).requires_grad_()
    d_out = grid((n, heads * dv))
    g = GoldenFile(name, description)
    g.matrix("num_heads", heads)
    g.matrix("num_kv_heads", kv_heads)
    g.matrix("softcap", softcap)
    g.matrix("q", q)
    g.matrix("k", k)
    g.matrix("v", v)
    if bias is not None:
        g.matrix("bias", bias)
    g.matrix("d_out", d_out)
    out = multi_head_attention(q, k, v, heads, kv_heads, keep=keep, bias=bias, softcap=softcap)
    (out * d_out).sum().backward()
    g.comment("gradients of sum(d_out * out) by torch autograd (float64)")
    g.matrix("dq", q.grad)
    g.matrix("dk", k.grad)
    g.matrix("dv", v.grad)
    return g


def gradient_mha_case(name, description, seed, n, m, kdim=None, causal=False):
    e, heads = 16, 4
    mha = make_mha(seed, e, heads, kdim=kdim)
    mha.train()  # no dropout: dropout = 0 by default
    target = grid((n, e)).requires_grad_()
    source = target if kdim is None and m is None else grid((m, kdim or e)).requires_grad_()
    length = target.shape[0]
    keys = source.shape[0]
    attn_mask = ~causal_keep(length, keys) if causal else None
    d_out = grid((length, e))
    g = GoldenFile(name, description)
    g.matrix("num_heads", heads)
    save_state(g, mha)
    g.matrix("target", target)
    if source is not target:
        g.matrix("source", source)
    g.matrix("d_out", d_out)
    y, _ = mha(target.unsqueeze(0), source.unsqueeze(0), source.unsqueeze(0),
               attn_mask=attn_mask, need_weights=False)
    (y.squeeze(0) * d_out).sum().backward()
    g.comment("gradients of sum(d_out * y) by torch autograd; d_<parameter> in state_dict names")
    g.matrix("d_target", target.grad)
    if source is not target:
        g.matrix("d_source", source.grad)
    for pname, param in mha.named_parameters():
        g.matrix("d_" + pname, param.grad)
    return g


def gradient_cases():
    n, m = 7, 9
    bias = grid((n, m), bound=2.0)
    return [
        gradient_kernel_case("grad_kernel_gqa_causal", "dQ, dK, dV of 4 heads over 2 kv heads, "
                             "d = 8, dv = 6, n = 7, m = 9, bottom-right causal", 501, n, m, 4, 2,
                             8, 6, keep=causal_keep(n, m)),
        gradient_kernel_case("grad_kernel_softcap_bias", "dQ, dK, dV of one head, d = 16, "
                             "softcap 3, an additive bias, n = 7, m = 9", 502, n, m, 1, 1, 16, 16,
                             bias=bias, softcap=3.0),
        gradient_mha_case("grad_mha_self_causal", "nn.MultiheadAttention(16, 4) self-attention, "
                          "L = 6, causal: d_x and every parameter's gradient", 503, 6, None,
                          causal=True),
        gradient_mha_case("grad_mha_cross_kdim", "nn.MultiheadAttention(16, 4, kdim=vdim=12) "
                          "cross-attention, n = 5, m = 8: d_target, d_source, every parameter's "
                          "gradient", 504, 5, 8, kdim=12),
    ]


def main():
    torch.set_num_threads(1)
    os.makedirs(GOLDEN_DIR, exist_ok=True)
    for stale in os.listdir(GOLDEN_DIR):
        if stale.endswith(".txt"):
            os.remove(os.path.join(GOLDEN_DIR, stale))
    total = 0
    for g in kernel_cases() + module_cases() + mask_cases() + rotary_cases() + gradient_cases():
        path = g.write()
        size = os.path.getsize(path)
        total += size
        print(f"{os.path.relpath(path)}: {size} bytes")
    print(f"total: {total} bytes")


if __name__ == "__main__":
    main()
