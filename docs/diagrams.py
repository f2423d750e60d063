#!/usr/bin/env python3
# SPDX-FileCopyrightText: 2026 The attn authors
# SPDX-License-Identifier: MIT
"""Draws the pictures of docs/pages/kernel.md ("How the kernel works") as PNG files.

Usage: python3 docs/diagrams.py [output directory, default: docs]   (Debian: python3-matplotlib)

The pictures are committed beside this script; rerun it after changing it. They illustrate the
rules the kernel follows (tiles classified by the mask, the online softmax's rescaling, the
decode split of 512 keys for steps over more than 1024, bottom-right mask alignment); nothing
here is measured.
"""
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

SKIPPED, WHOLE, CUT = "#eeeeee", "#f4a259", "#5b8e7d"


def tiles(path):
    """A causal mask over 8 query blocks x 8 key blocks: the tiles above the diagonal are
    skipped, those on it cut entry by entry, those below computed whole."""
    blocks = 8
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for qb in range(blocks):
        for kb in range(blocks):
            colour = SKIPPED if kb > qb else (CUT if kb == qb else WHOLE)
            ax.add_patch(Rectangle((kb, qb), 1, 1, facecolor=colour, edgecolor="white", lw=2))
    for qb in range(blocks):  # the diagonal tiles' visible half
        ax.add_patch(Rectangle((qb, qb), 1, 1, fill=False, hatch="////", edgecolor="white", lw=0))
    ax.annotate("", xy=(blocks - 0.2, 2.5), xytext=(0.2, 2.5),
                arrowprops=dict(arrowstyle="->", color="black", lw=1.5))
    ax.text(0.25, 2.35, "work item: query block 2 walks its key blocks", fontsize=9)
    ax.set_xlim(0, blocks)
    ax.set_ylim(blocks, 0)
    ax.set_xlabel("key blocks (Bk keys each)")
    ax.set_ylabel("query blocks (Bq queries each)")
    ax.set_title("Causal mask, tile by tile")
    handles = [Rectangle((0, 0), 1, 1, facecolor=c) for c in (WHOLE, CUT, SKIPPED)]
    ax.legend(handles, ["all visible: computed whole", "partial: each entry masked",
                        "none visible: skipped, never read"],
              loc="lower left", bbox_to_anchor=(0, -0.32), ncol=1, frameon=False, fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def online_softmax(path):
    """One row's scores in four tiles: the running max M steps up, and each step rescales the
    running sum L by exp(M_old - M_new) before the new tile's terms are added."""
    tiles_scores = [[0.2, 1.0, -0.5, 0.4], [2.5, 0.1, 1.7, -1.0], [0.9, 1.2, 0.3, 2.0],
                    [3.1, 0.0, 2.2, 1.5]]
    m, l, maxima, sums = -math.inf, 0.0, [], []
    for scores in tiles_scores:
        new_m = max(m, max(scores))
        c = 0.0 if m == -math.inf else math.exp(m - new_m)
        l = c * l + sum(math.exp(s - new_m) for s in scores)
        m = new_m
        maxima.append(m)
        sums.append(l)
    exact = sum(math.exp(s - m) for row in tiles_scores for s in row)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2))
    x = range(1, len(tiles_scores) + 1)
    for i, scores in enumerate(tiles_scores):
        a1.scatter([i + 1] * len(scores), scores, color="#888888", s=14)
    a1.step(x, maxima, where="mid", color="#c0392b", label="running max M")
    a1.set_xlabel("tile")
    a1.set_ylabel("score")
    a1.set_title("scores of one query row")
    a1.legend(frameon=False, fontsize=9)
    a2.plot(x, sums, marker="o", color="#2c7fb8", label="running sum L (after rescale)")
    a2.axhline(exact, color="black", ls=":", label="sum over all keys, last M")
    a2.set_xlabel("tile")
    a2.set_title("L' = exp(M - M') L + sum exp(S - M')")
    a2.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def decode_split(path):
    """A decoding step over 2600 keys: parts of 512 (the last shorter), each a work item,
    merged in order by log-sum-exp."""
    m, part = 2600, 512
    fig, ax = plt.subplots(figsize=(8, 2.6))
    colours = ["#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f"]
    start, i = 0, 0
    while start < m:
        end = min(start + part, m)
        ax.add_patch(Rectangle((start, 0.4), end - start, 0.5, facecolor=colours[i % 6],
                               edgecolor="white"))
        ax.text((start + end) / 2, 0.65, f"part {i}\n{end - start} keys", ha="center",
                va="center", fontsize=8)
        ax.annotate("", xy=(m + 150, 0.15), xytext=((start + end) / 2, 0.4),
                    arrowprops=dict(arrowstyle="->", color="#555555", lw=0.8))
        start, i = end, i + 1
    ax.text(m + 170, 0.15, "merge in part order:\nout, log-sum-exp", va="center", fontsize=9)
    ax.set_xlim(0, m + 700)
    ax.set_ylim(0, 1.1)
    ax.set_yticks([])
    ax.set_xlabel("cached keys")
    ax.set_title("One query row, 2600 keys: split into parts of 512, each its own work item")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mask_alignment(path):
    """Causal for n = m = 8, and for a chunk of n = 3 queries over m = 8 keys: query i stands at
    position i + m - n, so the chunk's rows are the full mask's last rows."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), gridspec_kw={"width_ratios": [8, 8]})
    for ax, n, title in ((axes[0], 8, "prefill: n = m = 8"),
                         (axes[1], 3, "a chunk: n = 3 over m = 8 (5 cached)")):
        m = 8
        for i in range(n):
            pos = i + m - n
            for j in range(m):
                ax.add_patch(Rectangle((j, i + (m - n)), 1, 1,
                                       facecolor=WHOLE if j <= pos else SKIPPED,
                                       edgecolor="white", lw=1.5))
        for i in range(m - n):  # rows the chunk does not have
            ax.add_patch(Rectangle((0, i), m, 1, facecolor="white", edgecolor="#dddddd",
                                   ls=":", lw=1))
        ax.set_xlim(0, m)
        ax.set_ylim(m, 0)
        ax.set_aspect("equal")
        ax.set_xticks([j + 0.5 for j in range(m)], [str(j) for j in range(m)])
        ax.set_yticks([r + 0.5 for r in range(m - n, m)],
                      [f"q{i} @ {i + m - n}" for i in range(n)])
        ax.set_xlabel("key position j")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("query i at position i + m - n")
    fig.suptitle("Mask::causal(): query i sees key j iff j <= i + m - n", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__))
    os.makedirs(out, exist_ok=True)
    for name, draw in (("kernel_tiles.png", tiles), ("kernel_online_softmax.png", online_softmax),
                       ("kernel_decode_split.png", decode_split),
                       ("kernel_mask_alignment.png", mask_alignment)):
        draw(os.path.join(out, name))
        print("wrote", os.path.join(out, name))


if __name__ == "__main__":
    main()
