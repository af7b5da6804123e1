"""The work split of the CUDA kernels' one matrix-vector product (csrc/cuda/common.cuh: MatvecShape,
matvec, reduce_scatter), emulated lane by lane on the CPU for every shape the kernels use.

No GPU needed: this checks the index arithmetic (which lane reads which 16-byte chunk, the
butterfly reduce-scatter over a row group, which lane owns which (row, stream) afterwards), so
that a change to it fails here before it costs GPU time. Each (row, stream) must reach the
epilogue exactly once, with the full dot product, for both paired rows.
"""
from __future__ import annotations

import numpy as np
import pytest

SIZES = [(32, 128, 256), (64, 128, 256), (64, 256, 256), (128, 256, 256), (256, 256, 256)]
VEC = {"float32": 4, "float16": 8}  # weights per 16-byte load (bfloat16 as float16)


def shape(V, K, NT):
    chunks = K // V
    assert K % V == 0 and chunks & (chunks - 1) == 0 and chunks >= 2
    LPR = min(chunks, 32)
    RPW = 32 // LPR
    return LPR, chunks // LPR, RPW, NT // 32, (NT // 32) * RPW


def reduce_scatter(acc, offset, n):
    """acc: (32 lanes, BT, NP). Mirrors reduce_scatter<OFFSET, N, BT, NP>."""
    lanes = np.arange(32)
    while offset > 0:
        partner = acc[lanes ^ offset]
        if n > 1:
            h = n // 2
            upper = ((lanes & offset) != 0)[:, None, None]
            keep = np.where(upper, acc[:, h:n], acc[:, :h])
            # The partner is on the other side: it sends the half this lane keeps.
            got = np.where(upper, partner[:, h:n], partner[:, :h])
            acc = acc.copy()
            acc[:, :h] = keep + got
            n = h
        else:
            acc = acc.copy()
            acc[:, 0] = acc[:, 0] + partner[:, 0]
        offset //= 2
    return acc


def emulate(W, X, V, K, BT, NP, NT, pair_rows, rows):
    """{(m, b): values[NP]} as the epilogue receives them."""
    LPR, CPL, RPW, warps, RPP = shape(V, K, NT)
    lanes = np.arange(32)
    r, g = lanes % LPR, lanes // LPR
    k_out = BT // LPR if BT >= LPR else 1
    first = (r * BT) // LPR
    owner = np.ones(32, bool) if BT >= LPR else (r % (LPR // min(BT, LPR))) == 0
    # Columns a lane reads: chunk c = r + j * LPR holds [c * V, c * V + V).
    cols = ((r[:, None] + np.arange(CPL)[None, :] * LPR)[:, :, None] * V + np.arange(V)).reshape(32, -1)
    out = {}
    for warp in range(warps):
        for m0 in range(warp * RPW, rows, RPP):
            m = m0 + g
            acc = np.zeros((32, BT, NP))
            for p in range(NP):
                w = W[m + p * pair_rows][np.arange(32)[:, None], cols]  # (32, CPL * V)
                acc[:, :, p] = np.einsum("lk,blk->lb", w, X[:, cols])
            acc = reduce_scatter(acc, LPR // 2, BT)
            for lane in np.nonzero(owner)[0]:
                for i in range(k_out):
                    key = (int(m[lane]), int(first[lane] + i))
                    assert key not in out, f"(row, stream) {key} reaches the epilogue twice"
                    out[key] = acc[lane, i]
    return out


def product_shapes(R, S, A, NT, BT):
    """(K, NP, pair_rows, rows) of every matvec call in single_block/dual_block/persistent.cuh."""
    if NT == 256:  # CLUSTER_ROLES's layer blocks: W_prev and W_cur, W_res (chain), W_skip (skip warps)
        return [(R, 2, R, R), (R, 1, 0, R), (R, 1, 0, S)]
    shapes = [(2 * R, 2, R, R),  # SINGLE_BLOCK dilated convolution, both taps
              (R, 2, R, R),  # W_prev (precompute_layers) and W_cur (chains)
              (R, 1, 0, R), (R, 1, 0, S), (S, 1, 0, A), (A, 1, 0, A)]
    if BT == 1 and NT == 512:  # PERSISTENT head slices: A / head_blocks rows
        shapes += [(K, 1, 0, A // h) for K in (S, A) for h in (2, 4, 8)]
    return shapes


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "R{}S{}A{}".format(*s))
@pytest.mark.parametrize("weights", sorted(VEC))
def test_every_row_and_stream_reaches_the_epilogue_once_with_its_dot_product(size, weights):
    R, S, A = size
    V = VEC[weights]
    rng = np.random.default_rng(R + V)
    # 512 threads: SINGLE_BLOCK (tiles 1, 2, 4 and 8), DUAL_BLOCK head, PERSISTENT; 480: DUAL_BLOCK chain;
    # 256: CLUSTER_ROLES's chain and skip warps.
    for NT, BT in ((512, 1), (512, 2), (512, 4), (512, 8), (480, 1), (256, 1)):
        for K, NP, pair_rows, rows in product_shapes(R, S, A, NT, BT):
            LPR, CPL, RPW, warps, RPP = shape(V, K, NT)
            assert rows % RPW == 0, f"rows {rows} not a multiple of the {RPW} rows a warp takes at once"
            W = rng.standard_normal((rows + pair_rows * (NP - 1), K))
            X = rng.standard_normal((BT, K))
            out = emulate(W, X, V, K, BT, NP, NT, pair_rows, rows)
            assert sorted(out) == [(m, b) for m in range(rows) for b in range(BT)]
            for (m, b), values in out.items():
                expected = [W[m + p * pair_rows] @ X[b] for p in range(NP)]
                np.testing.assert_allclose(values, expected, rtol=1e-12, atol=1e-12)
