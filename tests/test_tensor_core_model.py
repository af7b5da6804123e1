"""The arithmetic of the TENSOR_CORE kernel (csrc/cuda/tensor_core.cuh), modelled on the CPU.

No GPU needed. Two things are checked here, before any GPU time is spent on them:

1. The fragment bookkeeping: the lane addresses the kernel gives ``ldmatrix`` and the register
   layouts of ``mma.sync.m16n8k16`` (PTX ISA, "Matrix Fragments for mma.m16n8k16") put every
   weight, activation and accumulator element where the kernel's epilogue assumes it is. The
   address formulas below are the kernel's (``a_fragment_row/col``, ``b_fragment_row/col``,
   ``c_fragment_row/col``), written out once more on purpose: this is the other side of the check.
2. The rounding: a model of one generation step in the kernel's order (weights and biases stored
   in the network's dtype; every product's inputs rounded to that dtype, float32 accumulation
   one k16 block at a time; x, the skip sums, the gate and the logits in float32) meets SPEC
   section 4's tolerance against the float64 reference, and its float16 error is set beside the
   error of a float16 PyTorch run of the same network (flash-attention's style of bound). The
   float32 plan (3xTF32: each float32 operand split into a TF32 high part and a TF32 remainder,
   three m16n8k8 products) is modelled the same way and meets 1e-4; plain TF32 is shown not to.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nvwavenet import reference
from nvwavenet.network import WaveNetWeights
from nvwavenet.state import layer_offsets
from nvwavenet.testing import TOLERANCES, random_cond_input, random_nv_wavenet_args
from nvwavenet.sampling import select_classes

LANES = np.arange(32)


# ---------------------------------------------------------------------------------------------
# 1. Fragments.

def ldmatrix(tile: np.ndarray, rows: np.ndarray, cols: np.ndarray, count: int) -> np.ndarray:
    """``ldmatrix.sync.aligned.m8n8.x{count}.b16``: lanes 8i..8i+7 give the row addresses of
    matrix i (each 8 consecutive elements); register i of lane l is matrix i's row l // 4,
    elements 2 (l % 4) and 2 (l % 4) + 1. Returns (32 lanes, count registers, 2 elements)."""
    regs = np.empty((32, count, 2), tile.dtype)
    for i in range(count):
        for lane in LANES:
            source = 8 * i + lane // 4
            start = cols[source]
            regs[lane, i] = tile[rows[source], start + 2 * (lane % 4): start + 2 * (lane % 4) + 2]
    return regs


def a_addresses():
    """Lane l's row and column of the 16x16 A tile it points ldmatrix.x4 at (tensor_core.cuh)."""
    return (LANES & 7) + ((LANES >> 3) & 1) * 8, (LANES >> 4) * 8


def b_addresses():
    """Lane l's stream (row of the [stream][k] activations) and k for ldmatrix.x2 of B."""
    return LANES & 7, ((LANES >> 3) & 1) * 8


def mma_operands(a_regs, b_regs):
    """The 16x16 A and 16x8 B that mma.m16n8k16.row.col reads from these registers (PTX layout:
    a{0,1}: (g, 2t+j), a{2,3}: (g+8, 2t+j), a{4,5}: (g, 2t+8+j), a{6,7}: (g+8, 2t+8+j);
    b{0,1}: (k=2t+j, n=g), b{2,3}: (k=2t+8+j, n=g); g = lane // 4, t = lane % 4)."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for lane in LANES:
        g, t = lane // 4, lane % 4
        for j in range(2):
            A[g, 2 * t + j] = a_regs[lane, 0, j]
            A[g + 8, 2 * t + j] = a_regs[lane, 1, j]
            A[g, 2 * t + 8 + j] = a_regs[lane, 2, j]
            A[g + 8, 2 * t + 8 + j] = a_regs[lane, 3, j]
            B[2 * t + j, g] = b_regs[lane, 0, j]
            B[2 * t + 8 + j, g] = b_regs[lane, 1, j]
    return A, B


def c_positions():
    """(row, column) of accumulator c0..c3 of each lane: c{0,1}: (g, 2t+j), c{2,3}: (g+8, 2t+j)."""
    g, t = LANES // 4, LANES % 4
    rows = np.stack([g, g, g + 8, g + 8], axis=1)
    cols = np.stack([2 * t, 2 * t + 1, 2 * t, 2 * t + 1], axis=1)
    return rows, cols


def test_ldmatrix_addresses_give_the_mma_operands_and_the_epilogue_finds_each_product():
    rng = np.random.default_rng(0)
    # A padded weight slab in shared memory (16 rows of K + 8) and the [stream][k] activations.
    K, pad = 64, 8
    weights = rng.standard_normal((16, K + pad))
    acts = rng.standard_normal((8, K + pad))
    a_rows, a_cols = a_addresses()
    b_rows, b_cols = b_addresses()
    c_rows, c_cols = c_positions()
    assert sorted(zip(c_rows.ravel(), c_cols.ravel())) == [(m, n) for m in range(16) for n in range(8)]
    product = np.zeros((16, 8))
    for k0 in range(0, K, 16):
        A, B = mma_operands(ldmatrix(weights, a_rows, a_cols + k0, 4), ldmatrix(acts, b_rows, b_cols + k0, 2))
        np.testing.assert_array_equal(A, weights[:, k0:k0 + 16])
        np.testing.assert_array_equal(B, acts[:, k0:k0 + 16].T)
        product += A @ B
    expected = weights[:, :K] @ acts[:, :K].T
    for lane in LANES:
        for c in range(4):
            assert product[c_rows[lane, c], c_cols[lane, c]] == pytest.approx(expected[c_rows[lane, c],
                                                                                       c_cols[lane, c]])


def test_padded_rows_make_every_ldmatrix_phase_free_of_bank_conflicts():
    """Each 8-lane phase of ldmatrix reads 8 rows of 16 bytes: with rows padded by 8 elements
    (16 bytes) they fall in 8 different 4-bank groups, for every K the kernel uses."""
    for K in (32, 64, 128, 256, 512):
        stride_bytes = (K + 8) * 2
        a_rows, a_cols = a_addresses()
        for phase in range(4):
            lanes = LANES[8 * phase: 8 * phase + 8]
            groups = {((a_rows[l] * stride_bytes + a_cols[l] * 2) // 16) % 8 for l in lanes}
            assert len(groups) == 8, (K, phase)


# ---------------------------------------------------------------------------------------------
# 2. Rounding.

def round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).double()


def f32(x: torch.Tensor) -> torch.Tensor:
    return round_to(x, torch.float32)


def tf32(x: torch.Tensor) -> torch.Tensor:
    """cvt.rna.tf32.f32: nearest of the 10-bit-mantissa values, ties away from zero."""
    bits = x.to(torch.float32).view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).double()


def mma_product(w: torch.Tensor, x: torch.Tensor, k_block: int) -> torch.Tensor:
    """x @ w.T as the kernel computes it: inputs already rounded; one mma per k_block columns,
    whose exact sum is added to the float32 accumulator (rounded once per mma)."""
    acc = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)
    for k0 in range(0, w.shape[1], k_block):
        acc = f32(acc + x[:, k0:k0 + k_block] @ w[:, k0:k0 + k_block].T)
    return acc


def product_in(mode: str, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One product of the kernel in ``mode``: float16 / bfloat16 (m16n8k16 on operands in that
    dtype), "3xtf32" (m16n8k8: hi*hi + hi*lo + lo*hi, the lo*lo term dropped) or "tf32"."""
    if mode in ("float16", "bfloat16"):
        dtype = getattr(torch, mode)
        return mma_product(round_to(w, dtype), round_to(x, dtype), 16)
    w_hi, x_hi = tf32(w), tf32(x)
    if mode == "tf32":
        return mma_product(w_hi, x_hi, 8)
    w_lo, x_lo = tf32(f32(w) - w_hi), tf32(f32(x) - x_hi)
    # Small terms first, as the kernel issues them, so they are not lost against the large one.
    acc = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)
    for k0 in range(0, w.shape[1], 8):
        k = slice(k0, k0 + 8)
        for a, b in ((w_lo, x_hi), (w_hi, x_lo), (w_hi, x_hi)):
            acc = f32(acc + b[:, k] @ a[:, k].T)
    return acc


def model_incremental(weights: WaveNetWeights, cond: torch.Tensor, teacher: torch.Tensor, mode: str):
    """Teacher-forced logits (batch, A, samples) of the kernel's step order in ``mode``."""
    storage = torch.float32 if mode in ("3xtf32", "tf32") else getattr(torch, mode)
    w = weights.to(dtype=storage).to(dtype=torch.float64)  # what the kernel reads, exactly
    R, L, A = w.n_residual, w.n_layers, w.n_classes
    batch, samples = cond.shape[1], cond.shape[3]
    dilations = w.dilations
    offsets = layer_offsets(dilations)
    queues = torch.zeros(batch, offsets[-1], R, dtype=torch.float64)
    history = torch.full((batch, 2), A // 2, dtype=torch.long)
    both_taps = torch.cat([w.dilate_w[..., 0], w.dilate_w[..., 1]], dim=2)
    logits_out = torch.empty(batch, A, samples, dtype=torch.float64)
    for t in range(samples):
        x = f32(w.embed_prev[history[:, 0]] + w.embed_curr[history[:, 1]])
        x = f32(torch.tanh(x)) if w.use_embed_tanh else x
        skip = None
        for l in range(L):
            slot = offsets[l] + t % dilations[l]
            past = queues[:, slot].clone()
            queues[:, slot] = x  # the queues hold float32 x, as in every variant
            a = f32(product_in(mode, both_taps[l], torch.cat([past, x], dim=1)) + f32(w.dilate_b[l] + cond[:, :, l, t].T))
            h = f32(torch.tanh(a[:, :R]) * torch.sigmoid(a[:, R:]))
            if l < L - 1:
                x = f32(x + f32(product_in(mode, w.res_w[l], h) + w.res_b[l]))
            part = f32(product_in(mode, w.skip_w[l], h) + w.skip_b[l])
            skip = part if skip is None else f32(skip + part)
        z = f32(torch.relu(product_in(mode, w.out_w, torch.relu(skip)) + w.out_b))
        logits_out[:, :, t] = f32(product_in(mode, w.end_w, z) + w.end_b)
        history = torch.stack([history[:, 1], teacher[:, t].long()], dim=1)
    return logits_out


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.fixture(scope="module")
def target_case():
    """R64/S256/A256, 20 layers (the issue's network), 4 streams, 6 steps, float64 reference."""
    args = random_nv_wavenet_args(64, 256, 256, 20, 512, seed=11, with_head_biases=True)
    net_weights = WaveNetWeights.from_nv_wavenet_args(**args)
    cond = random_cond_input(64, 4, 20, 6, seed=12).double()
    u = torch.rand(4, 6, generator=torch.Generator().manual_seed(13))
    samples, logits = reference.incremental(net_weights, cond, u, return_logits=True)
    return net_weights, cond, u, samples, logits


@pytest.mark.parametrize("mode, tolerance", [("float16", TOLERANCES[torch.float16]),
                                             ("bfloat16", TOLERANCES[torch.bfloat16]),
                                             ("3xtf32", TOLERANCES[torch.float32])])
def test_kernel_rounding_meets_spec_tolerance(target_case, mode, tolerance):
    weights, cond, u, samples, logits = target_case
    error = relative_l2(model_incremental(weights, cond, samples, mode), logits)
    print(f"{mode}: teacher-forced logits relative L2 {error:.3e} (tolerance {tolerance:g})")
    assert error <= tolerance


def test_plain_tf32_would_miss_the_float32_tolerance(target_case):
    """Why float32 needs the split: one TF32 product per term loses ~3 decimal digits."""
    weights, cond, u, samples, logits = target_case
    error = relative_l2(model_incremental(weights, cond, samples, "tf32"), logits)
    print(f"plain tf32: {error:.3e}")
    assert error > TOLERANCES[torch.float32]


def test_float16_error_beside_a_float16_pytorch_run(target_case):
    """flash-attention's bound: the kernel's float16 error against float64 is no worse than that of
    the same network run by PyTorch in float16 (which also keeps x and the sums in float16),
    and both are printed side by side."""
    weights, cond, u, samples, logits = target_case
    ours = relative_l2(model_incremental(weights, cond, samples, "float16"), logits)
    _, torch_fp16 = reference.incremental(weights, cond.half(), u, teacher_forcing=samples, return_logits=True,
                                          dtype=torch.float16)
    theirs = relative_l2(torch_fp16.double(), logits)
    print(f"float16 teacher-forced logits vs float64: tensor-core model {ours:.3e}, PyTorch float16 {theirs:.3e}")
    assert ours <= 2 * theirs + 1e-4


def test_sampled_classes_match_the_reference_away_from_cdf_boundaries(target_case):
    weights, cond, u, samples, logits = target_case
    from nvwavenet.sampling import distance_to_cdf_boundary

    model = model_incremental(weights, cond, samples, "float16")
    drawn = select_classes(model.transpose(1, 2).float(), u)
    margin = distance_to_cdf_boundary(logits.transpose(1, 2), u)
    differ = drawn != samples
    assert not bool((differ & (margin > TOLERANCES[torch.float16])).any())
