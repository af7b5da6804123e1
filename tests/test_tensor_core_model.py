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


def test_float32_fragments_are_those_of_mma_m16n8k8_tf32():
    """float32 weights: the same byte addresses (4 floats where 8 halves were) give ldmatrix rows of
    4 floats; lane l receives float l % 4 of row l // 4 of each matrix, which must be
    mma.m16n8k8.tf32's a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); b0 (k=t, n=g), b1 (k=t+4, n=g)."""
    rng = np.random.default_rng(1)
    K, pad = 32, 4
    weights = rng.standard_normal((16, K + pad))
    acts = rng.standard_normal((8, K + pad))
    a_rows, a_cols = a_addresses()
    b_rows, b_cols = b_addresses()
    a_cols, b_cols = a_cols // 2, b_cols // 2  # the kernel's column in floats: half as many per 16 bytes

    def ldmatrix32(tile, rows, cols, count):
        return np.array([[tile[rows[8 * i + lane // 4], cols[8 * i + lane // 4] + lane % 4] for i in range(count)]
                         for lane in LANES])

    for k0 in range(0, K, 8):
        a = ldmatrix32(weights, a_rows, a_cols + k0, 4)
        b = ldmatrix32(acts, b_rows, b_cols + k0, 2)
        A = np.full((16, 8), np.nan)
        B = np.full((8, 8), np.nan)
        for lane in LANES:
            g, t = lane // 4, lane % 4
            A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4] = a[lane]
            B[t, g], B[t + 4, g] = b[lane]
        np.testing.assert_array_equal(A, weights[:, k0:k0 + 8])
        np.testing.assert_array_equal(B, acts[:, k0:k0 + 8].T)


@pytest.mark.parametrize("element_bytes", [2, 4])
def test_padded_rows_make_every_ldmatrix_phase_free_of_bank_conflicts(element_bytes):
    """Each 8-lane phase of ldmatrix reads 8 rows of 16 bytes: with rows padded by 16 bytes they
    fall in 8 different 4-bank groups, for every K the kernel uses, 16-bit and float32."""
    a_rows, a_cols = a_addresses()
    column_bytes = a_cols * 2  # the same bytes for both element sizes
    for K in (32, 64, 128, 256, 512):
        stride_bytes = K * element_bytes + 16
        for phase in range(4):
            lanes = LANES[8 * phase: 8 * phase + 8]
            groups = {((a_rows[l] * stride_bytes + column_bytes[l]) // 16) % 8 for l in lanes}
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


# ---------------------------------------------------------------------------------------------
# 3. The kernel's schedule, emulated block by block: the slab sequence (TensorCoreSlabs,
# following_slab, issue_slab), the four-buffer copy ring with its waits, when each queue entry is
# read and written, the epilogues, and the state across calls. Products go through product_in, so
# the same emulation gives the exact (float64) and the kernel's rounding.

DILATE, RESIDUAL, SKIP, OUT, END = range(5)
STAGES = 4


def pow2_floor(v: int) -> int:
    return 1 << (v.bit_length() - 1)


class Slabs:
    """TensorCoreSlabs<R, S, A, W>: rows per slab of each product, and how many slabs. Shared rows
    are padded by 16 bytes (kTcPad)."""

    def __init__(self, R, S, A, weight_bytes):
        self.pad = 16 // weight_bytes
        row_bytes = lambda K: (K + self.pad) * weight_bytes
        self.capacity = max(16384, 32 * row_bytes(2 * R), 16 * row_bytes(max(S, A)))
        cut = lambda M, K, paired: min(M, pow2_floor(self.capacity // (row_bytes(K) * (2 if paired else 1))))
        self.rows = {DILATE: cut(R, 2 * R, True), RESIDUAL: cut(R, R, False), SKIP: cut(S, R, False),
                     OUT: cut(A, S, False), END: cut(A, A, False)}
        self.M = {DILATE: R, RESIDUAL: R, SKIP: S, OUT: A, END: A}
        for product, rows in self.rows.items():
            assert rows >= 16 and self.M[product] % rows == 0, (product, rows)

    def count(self, product):
        return self.M[product] // self.rows[product]

    def following(self, slab, L):
        layer, product, index = slab
        if index + 1 < self.count(product):
            return layer, product, index + 1
        if product == DILATE:
            return layer, RESIDUAL if layer + 1 < L else SKIP, 0
        if product == RESIDUAL:
            return layer, SKIP, 0
        if product == SKIP:
            return (layer + 1, DILATE, 0) if layer + 1 < L else (0, OUT, 0)
        return (0, END, 0) if product == OUT else (0, DILATE, 0)

    def weights_of(self, w, both_taps, slab):
        """What issue_slab copies: the slab's rows (dilation: its tanh rows, then its sigmoid rows)."""
        layer, product, index = slab
        rows = self.rows[product]
        span = slice(index * rows, index * rows + rows)
        R = w.n_residual
        if product == DILATE:
            return torch.cat([both_taps[layer][span], both_taps[layer][R + index * rows: R + index * rows + rows]])
        return {RESIDUAL: lambda: w.res_w[layer][span], SKIP: lambda: w.skip_w[layer][span],
                OUT: lambda: w.out_w[span], END: lambda: w.end_w[span]}[product]()


class Ring:
    """The cp.async ring: a copy lands in its buffer only when a wait retires its group."""

    def __init__(self):
        self.buffers = [None] * STAGES
        self.in_flight = []

    def issue(self, buffer, slab, weights):
        assert all(b != buffer for b, _ in self.in_flight), "a buffer rewritten while its copy is in flight"
        self.buffers[buffer] = None  # its old content is gone from the moment the copy starts
        self.in_flight.append((buffer, (slab, weights)))

    def wait(self, pending):
        while len(self.in_flight) > pending:
            buffer, content = self.in_flight.pop(0)
            self.buffers[buffer] = content


def emulate(weights: WaveNetWeights, cond: torch.Tensor, u: torch.Tensor, mode: str, *, tile: int,
            teacher: torch.Tensor | None = None, state: dict | None = None):
    """tensor_core_kernel on the CPU: (samples, logits (batch, A, T)); ``state`` (queues float64
    in mode "float64", else float32, as the kernels keep them) is read and updated as a call does."""
    storage = {"float64": torch.float64, "3xtf32": torch.float32, "tf32": torch.float32}.get(mode) or getattr(torch, mode)
    w = weights.to(dtype=storage).to(dtype=torch.float64)  # what the kernel reads, exactly
    operand = {"float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(mode, torch.float32)
    keep = (lambda v: v) if mode == "float64" else f32  # the kernel's float32 activations
    R, S, A, L = w.n_residual, w.n_skip, w.n_classes, w.n_layers
    slabs = Slabs(R, S, A, 4 if storage == torch.float32 else 2)  # float64 mode: the float16 kernel's cut
    both_taps = torch.cat([w.dilate_w[..., 0], w.dilate_w[..., 1]], dim=2)
    batch, T = cond.shape[1], cond.shape[3]
    dilations, offsets = w.dilations, layer_offsets(w.dilations)
    if state is None:
        state = reference.init_state(weights, batch, dtype=torch.float64 if mode == "float64" else torch.float32)
    queues, position = state["queues"], int(state["position"])
    samples = torch.full((batch, T), -1, dtype=torch.int32)
    logits_out = torch.full((batch, A, T), float("nan"), dtype=torch.float64)
    product = (lambda wm, act: act @ wm.T) if mode == "float64" else (lambda wm, act: product_in(mode, wm, act))

    for stream0 in range(0, batch, tile):  # one block per tile; blocks never meet
        valid = min(tile, batch - stream0)
        live = slice(stream0, stream0 + valid)
        history = torch.full((tile, 2), A // 2, dtype=torch.long)
        history[:valid] = state["history"][live].long()
        ring, ahead, current = Ring(), (0, DILATE, 0), 0
        ring.issue(0, ahead, slabs.weights_of(w, both_taps, ahead))
        for i in range(1, STAGES - 1):
            ahead = slabs.following(ahead, L)
            ring.issue(i, ahead, slabs.weights_of(w, both_taps, ahead))

        def load_past(layer, t):
            past = torch.zeros(tile, R, dtype=torch.float64)
            past[:valid] = queues[live, offsets[layer] + (position + t) % dilations[layer]].double()
            return past

        def embed(y2, y1):
            v = keep(w.embed_prev[y2] + w.embed_curr[y1])
            return keep(torch.tanh(v)) if w.use_embed_tanh else v

        def next_slab(expected):
            nonlocal ahead
            ring.wait(STAGES - 2)
            ahead = slabs.following(ahead, L)
            ring.issue((current + STAGES - 1) % STAGES, ahead, slabs.weights_of(w, both_taps, ahead))
            assert ring.buffers[current] is not None, "a slab read before its copy was waited for"
            slab, wm = ring.buffers[current]
            assert slab == expected, f"buffer {current} holds slab {slab}, the products expect {expected}"
            return wm

        past = load_past(0, 0)
        x = embed(history[:, 0], history[:, 1])
        inputs = torch.cat([past, x], dim=1)  # the kernel keeps these rounded to the operand type
        sums = torch.zeros(tile, max(S, A), dtype=torch.float64)
        gated = torch.zeros(tile, R, dtype=torch.float64)
        relu_skip = torch.zeros(tile, S, dtype=torch.float64)
        hidden = torch.zeros(tile, A, dtype=torch.float64)
        for t in range(T):
            for l in range(L):
                last, more = l == L - 1, l < L - 1 or t + 1 < T
                for i in range(slabs.count(DILATE)):
                    wm = next_slab((l, DILATE, i))
                    if i == 0:
                        queues[live, offsets[l] + (position + t) % dilations[l]] = x[:valid].to(queues.dtype)
                        if more:
                            past = load_past(0, t + 1) if last else load_past(l + 1, t)
                    h, first = slabs.rows[DILATE], i * slabs.rows[DILATE]
                    pre = torch.zeros(tile, 2 * R, dtype=torch.float64)
                    pre[:valid] = keep(w.dilate_b[l] + cond[:, live, l, t].T)
                    a = keep(product(wm, round_to(inputs, operand)))
                    tanh_in = keep(a[:, :h] + pre[:, first:first + h])
                    sigmoid_in = keep(a[:, h:] + pre[:, R + first:R + first + h])
                    gated[:, first:first + h] = keep(torch.tanh(tanh_in) * torch.sigmoid(sigmoid_in))
                    current = (current + 1) % STAGES
                if not last:
                    for i in range(slabs.count(RESIDUAL)):
                        wm = next_slab((l, RESIDUAL, i))
                        if i == 0:
                            inputs[:, :R] = past
                        span = slice(i * slabs.rows[RESIDUAL], (i + 1) * slabs.rows[RESIDUAL])
                        x[:, span] = keep(x[:, span] + keep(product(wm, round_to(gated, operand)) + w.res_b[l][span]))
                        inputs[:, R:] = x
                        current = (current + 1) % STAGES
                for i in range(slabs.count(SKIP)):
                    wm = next_slab((l, SKIP, i))
                    if i == 0 and last and more:
                        inputs[:, :R] = past
                    span = slice(i * slabs.rows[SKIP], (i + 1) * slabs.rows[SKIP])
                    part = keep(product(wm, round_to(gated, operand)) + w.skip_b[l][span])
                    sums[:, span] = part if l == 0 else keep(sums[:, span] + part)
                    if last:
                        relu_skip[:, span] = torch.relu(sums[:, span])
                    current = (current + 1) % STAGES
            for i in range(slabs.count(OUT)):
                wm = next_slab((0, OUT, i))
                span = slice(i * slabs.rows[OUT], (i + 1) * slabs.rows[OUT])
                hidden[:, span] = torch.relu(keep(product(wm, round_to(relu_skip, operand)) + w.out_b[span]))
                current = (current + 1) % STAGES
            for i in range(slabs.count(END)):
                wm = next_slab((0, END, i))
                span = slice(i * slabs.rows[END], (i + 1) * slabs.rows[END])
                sums[:, span] = keep(product(wm, round_to(hidden, operand)) + w.end_b[span])
                current = (current + 1) % STAGES
            logits = sums[:valid, :A]
            drawn = select_classes(logits, u[live, t].double())
            samples[live, t] = drawn.to(torch.int32)
            logits_out[live, :, t] = logits
            fed = drawn if teacher is None else teacher[live, t].long()
            history[:valid] = torch.stack([history[:valid, 1], fed], dim=1)
            history[valid:] = A // 2
            x = embed(history[:, 0], history[:, 1])
            inputs[:, R:] = x
        ring.wait(0)
        state["history"][live] = history[:valid].to(state["history"].dtype)
    state["position"].fill_(position + T)
    return samples, logits_out


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
    error = relative_l2(emulate(weights, cond, u, mode, tile=8, teacher=samples)[1], logits)
    print(f"{mode}: teacher-forced logits relative L2 {error:.3e} (tolerance {tolerance:g})")
    assert error <= tolerance


def test_plain_tf32_would_miss_the_float32_tolerance(target_case):
    """Why float32 needs the split: one TF32 product per term loses ~3 decimal digits."""
    weights, cond, u, samples, logits = target_case
    error = relative_l2(emulate(weights, cond, u, "tf32", tile=8, teacher=samples)[1], logits)
    print(f"plain tf32: {error:.3e}")
    assert error > TOLERANCES[torch.float32]


def test_float16_error_beside_a_float16_pytorch_run(target_case):
    """flash-attention's bound: the kernel's float16 error against float64 is no worse than that of
    the same network run by PyTorch in float16 (which also keeps x and the sums in float16),
    and both are printed side by side."""
    weights, cond, u, samples, logits = target_case
    ours = relative_l2(emulate(weights, cond, u, "float16", tile=8, teacher=samples)[1], logits)
    _, torch_fp16 = reference.incremental(weights, cond.half(), u, teacher_forcing=samples, return_logits=True,
                                          dtype=torch.float16)
    theirs = relative_l2(torch_fp16.double(), logits)
    print(f"float16 teacher-forced logits vs float64: tensor-core model {ours:.3e}, PyTorch float16 {theirs:.3e}")
    assert ours <= 2 * theirs + 1e-4


def test_sampled_classes_match_the_reference_away_from_cdf_boundaries(target_case):
    weights, cond, u, samples, logits = target_case
    from nvwavenet.sampling import distance_to_cdf_boundary

    drawn, _ = emulate(weights, cond, u, "float16", tile=8, teacher=samples)
    margin = distance_to_cdf_boundary(logits.transpose(1, 2), u)
    differ = drawn != samples
    assert not bool((differ & (margin > TOLERANCES[torch.float16])).any())


# (size, layers, max_dilation, batch, tile): one layer of dilation 1 (a slot read and rewritten in
# the same step), several layers, a partial last tile, and R = 256, whose dilated convolution
# takes several slabs.
SCHEDULES = [((32, 128, 256), 1, 1, 3, 8), ((32, 128, 256), 2, 2, 9, 8), ((64, 256, 256), 5, 4, 11, 8),
             ((64, 128, 256), 3, 2, 17, 16), ((256, 256, 256), 2, 2, 2, 8)]


@pytest.mark.parametrize("case", SCHEDULES, ids=lambda c: "R{}S{}A{}-L{}-d{}-b{}-tile{}".format(*c[0], *c[1:]))
def test_schedule_computes_the_reference_in_float64(case):
    """Exact arithmetic through the kernel's slab sequence, copy ring, queue timing and epilogues
    gives the float64 reference's samples and logits, teacher-forced and free-running."""
    (R, S, A), layers, max_dilation, batch, tile = case
    weights = WaveNetWeights.from_nv_wavenet_args(**random_nv_wavenet_args(R, S, A, layers, max_dilation, seed=R + layers,
                                                                           with_head_biases=True))
    cond = random_cond_input(R, batch, layers, 7, seed=layers).double()
    u = torch.rand(batch, 7, generator=torch.Generator().manual_seed(5))
    want, want_logits = reference.incremental(weights, cond, u, return_logits=True)
    got, got_logits = emulate(weights, cond, u, "float64", tile=tile)
    assert torch.equal(got, want)
    assert relative_l2(got_logits, want_logits) < 1e-12
    teacher = torch.randint(0, A, (batch, 7), generator=torch.Generator().manual_seed(6), dtype=torch.int32)
    _, want_logits = reference.incremental(weights, cond, u, teacher_forcing=teacher, return_logits=True)
    assert relative_l2(emulate(weights, cond, u, "float64", tile=tile, teacher=teacher)[1], want_logits) < 1e-12


@pytest.mark.parametrize("mode", ["float64", "float16"])
def test_chunked_calls_equal_one_call(mode):
    """The state between calls (float32 queues, history, position) is all a call needs: chunks of
    7, 1, 5 and 3 steps give one 16-step call's samples, logits and state, bit for bit."""
    weights = WaveNetWeights.from_nv_wavenet_args(**random_nv_wavenet_args(32, 128, 256, 4, 4, seed=3))
    batch, T = 10, 16
    cond = random_cond_input(32, batch, 4, T, seed=4).double()
    u = torch.rand(batch, T, generator=torch.Generator().manual_seed(7))
    whole_state = reference.init_state(weights, batch, dtype=torch.float64 if mode == "float64" else torch.float32)
    whole, whole_logits = emulate(weights, cond, u, mode, tile=8, state=whole_state)
    state = reference.init_state(weights, batch, dtype=whole_state["queues"].dtype)
    parts, start = [], 0
    for length in (7, 1, 5, 3):
        part = slice(start, start + length)
        parts.append(emulate(weights, cond[..., part], u[:, part], mode, tile=8, state=state))
        start += length
    assert torch.equal(torch.cat([p[0] for p in parts], dim=1), whole)
    assert torch.equal(torch.cat([p[1] for p in parts], dim=2), whole_logits)
    for key in ("queues", "history", "position"):
        assert torch.equal(state[key], whole_state[key]), key


@pytest.mark.parametrize("weight_bytes", [2, 4])
def test_slabs_fit_their_buffers_for_every_built_size(weight_bytes):
    """Each slab of every product fits the buffer (TensorCoreSlabs::kBytes), 16-bit and float32."""
    for R, S, A in [(32, 128, 256), (64, 128, 256), (64, 256, 256), (128, 256, 256), (256, 256, 256)]:
        slabs = Slabs(R, S, A, weight_bytes)
        widths = {DILATE: 2 * R, RESIDUAL: R, SKIP: R, OUT: S, END: A}
        for product, K in widths.items():
            rows = slabs.rows[product] * (2 if product == DILATE else 1)
            assert rows * (K + slabs.pad) * weight_bytes <= slabs.capacity, (R, S, A, product)
