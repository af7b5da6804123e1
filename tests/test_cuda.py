"""The CUDA kernels (csrc/cuda): correctness per SPEC section 4 on a GPU, and everything around
them that can be checked without one (what was built, the AUTO rule, argument checking, errors).

Without a GPU (or without compiled CUDA kernels) the GPU tests skip; the rest still run.
On a GPU, run them with ``scripts/gpu_check.sh``.
"""
from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
import torch

from nvwavenet import Impl, NVWaveNet, autotune, build_info, engines, reference
from nvwavenet.engines import CUDA_VARIANTS, check_cuda_build, spin_timeout_ns
from nvwavenet.state import layer_offsets
from nvwavenet.testing import (TOLERANCES, compare_with_reference, generate_in_chunks, random_cond_input,
                               random_nv_wavenet_args)

INFO = build_info()
HAVE_KERNELS = bool(INFO["cuda"])
HAVE_GPU = torch.cuda.is_available()
SIZES_H = Path(__file__).resolve().parents[1] / "csrc" / "sizes.h"

needs_kernels = pytest.mark.skipif(not HAVE_KERNELS, reason="nvwavenet was built without CUDA kernels (no nvcc)")
_skip_without_gpu = pytest.mark.skipif(not (HAVE_KERNELS and HAVE_GPU),
                                       reason="needs a CUDA GPU and nvwavenet built with CUDA kernels")


def needs_gpu(test):
    """Marks a test ``cuda`` (pyproject.toml) and skips it without a GPU and CUDA kernels."""
    return pytest.mark.cuda(_skip_without_gpu(test))


VARIANTS = [Impl.SINGLE_BLOCK, Impl.DUAL_BLOCK, Impl.PERSISTENT, Impl.CLUSTER, Impl.TENSOR_CORE, Impl.CLUSTER_ROLES,
            Impl.CLUSTER_FOLD, Impl.CLUSTER_BATCHED, Impl.CLUSTER_SKIP_BLOCKS]
# One kernel, two hand-offs, CLUSTER_ROLES's layer blocks, the fold, several streams per cluster or
# skip blocks: the same kind of plans (CLUSTER_ROLES: at most 11 layers per block; CLUSTER_FOLD,
# CLUSTER_BATCHED: fewer layers per block; CLUSTER_SKIP_BLOCKS: more layers, part of W_skip in
# skip blocks).
CLUSTER_KERNELS = (Impl.PERSISTENT, Impl.CLUSTER, Impl.CLUSTER_ROLES, Impl.CLUSTER_FOLD, Impl.CLUSTER_BATCHED,
                   Impl.CLUSTER_SKIP_BLOCKS)
BUILT_SIZES = [tuple(size) for size in INFO["sizes"]] or [(64, 256, 256)]
TARGET = dict(n_residual=64, n_skip=256, n_classes=256, n_layers=20, max_dilation=512)

# (batch, layers, max_dilation, samples): together they cover batch 1, 3, 8, 64, L 1, 2, 16, 20,
# 30 and max_dilation 1, 128, 512 without the full product.
SHAPES = [(1, 20, 512, 48), (3, 2, 1, 40), (8, 16, 128, 32), (64, 1, 1, 12), (3, 30, 512, 24)]


def streams_per_cluster(monkeypatch, k):
    """CLUSTER_BATCHED runs with k streams per cluster (the other variants keep their tiles)."""
    chosen = autotune.streams_per_block
    monkeypatch.setattr(autotune, "streams_per_block",
                        lambda name, batch, sms: k if name == "CLUSTER_BATCHED" else chosen(name, batch, sms))
    monkeypatch.setattr(engines, "_DECISIONS", {})  # the cached decisions hold the tile


@pytest.fixture(autouse=True)
def _cluster_batched_with_two_streams(monkeypatch):
    """At the batches of these tests CLUSTER_BATCHED's plan would mostly pick one stream per cluster
    (CLUSTER's own kernel), so the shared tests run it with 2, a partial last group wherever the
    batch is odd; test_cluster_batched_* cover 1, 4, 8 and the plan's own choice."""
    streams_per_cluster(monkeypatch, 2)


def make_net(size, layers, max_dilation, dtype, seed=0, **kwargs):
    R, S, A = size
    args = random_nv_wavenet_args(R, S, A, layers, max_dilation, seed=seed, **kwargs)
    return NVWaveNet(**args, dtype=dtype)


def run_or_refused(variant, action):
    """action() or, when a variant declines the configuration by design, a skip that shows its
    reason: PERSISTENT or CLUSTER when the weights do not fit one cluster's shared memory,
    TENSOR_CORE for R=256 float32 (its slab ring alone exceeds a block's shared memory). Any other
    refusal fails."""
    try:
        return action()
    except ValueError as error:
        if variant in CLUSTER_KERNELS and "cannot run this configuration" in str(error):
            pytest.skip(f"{variant.name} declines: {error}")
        if variant is Impl.TENSOR_CORE and "not built for this size and weight type" in str(error):
            pytest.skip(f"TENSOR_CORE declines: {error}")
        raise


# ---------------------------------------------------------------------------------------------
# Checks that need no GPU.

@needs_kernels
def test_build_info_lists_exactly_the_sizes_in_sizes_h():
    if not SIZES_H.exists():
        pytest.skip("not a source checkout")
    listed = [tuple(int(v) for v in m) for m in re.findall(r"X\((\d+),\s*(\d+),\s*(\d+)\)", SIZES_H.read_text())]
    assert [tuple(s) for s in INFO["sizes"]] == listed
    assert INFO["precisions"] == ["float32", "float16", "bfloat16"]
    assert INFO["cuda_archs"], "build_info() names no CUDA architecture"
    variant_sizes = {name: [tuple(s) for s in sizes] for name, sizes in INFO["variant_sizes"].items()}
    assert set(variant_sizes) == set(CUDA_VARIANTS)
    assert variant_sizes["SINGLE_BLOCK"] == listed and variant_sizes["DUAL_BLOCK"] == listed
    assert variant_sizes["TENSOR_CORE"] == listed


@needs_kernels
def test_persistent_is_built_for_sizes_whose_layer_fits_one_block():
    """One layer (both dilation taps, residual, skip, biases) plus its activations must fit the
    227 KB of shared memory an sm_90 block can have, in every precision (persistent_layout.h)."""
    def fits(R, S, A, weight_bytes):
        weights = (4 * R * R + R * R + S * R + 2 * R + R + S) * weight_bytes
        return 64 + 4 * R + weights + 4 * (2 * R + R + S) <= 227 * 1024

    expected = [s for s in map(tuple, INFO["sizes"]) if all(fits(*s, b) for b in (4, 2))]
    assert [tuple(s) for s in INFO["variant_sizes"]["PERSISTENT"]] == expected
    for variant in ("CLUSTER", "CLUSTER_ROLES", "CLUSTER_FOLD", "CLUSTER_BATCHED", "CLUSTER_SKIP_BLOCKS"):  # one kernel
        assert INFO["variant_sizes"][variant] == INFO["variant_sizes"]["PERSISTENT"]
    assert (64, 256, 256) in expected and (128, 256, 256) not in expected


def fake_plan(runnable=True, groups=1, reason=""):
    return {"runnable": runnable, "co_resident_groups": groups, "reason": reason}


def test_auto_prefers_latency_variants_while_their_groups_run_at_once():
    plans = {"SINGLE_BLOCK": fake_plan(groups=264), "DUAL_BLOCK": fake_plan(groups=66),
             "PERSISTENT": fake_plan(groups=7)}
    assert autotune.choose_variant(1, plans) == "PERSISTENT"
    assert autotune.choose_variant(7, plans) == "PERSISTENT"
    assert autotune.choose_variant(8, plans) == "DUAL_BLOCK"
    assert autotune.choose_variant(66, plans) == "DUAL_BLOCK"
    assert autotune.choose_variant(67, plans) == "SINGLE_BLOCK"
    assert autotune.choose_variant(100000, plans) == "SINGLE_BLOCK"


@pytest.mark.parametrize("name", ["CLUSTER", "CLUSTER_ROLES", "CLUSTER_FOLD", "CLUSTER_BATCHED",
                                  "CLUSTER_SKIP_BLOCKS"])
def test_auto_never_plans_or_picks_cluster_before_it_has_run_on_a_gpu(name):
    # Without a measured table that lists it as passed, AUTO does not even plan it.
    assert name not in autotune.candidates(None, "NVIDIA H200", "float16", (64, 256, 256))
    every = {variant: fake_plan(groups=1000 if variant == name else 1) for variant in CUDA_VARIANTS}
    assert all(autotune.choose_variant(batch, every) != name for batch in (1, 2, 16, 2048))


def test_auto_never_picks_a_variant_that_cannot_run():
    plans = {"SINGLE_BLOCK": fake_plan(groups=264), "DUAL_BLOCK": fake_plan(False, 0, "too much shared memory"),
             "PERSISTENT": fake_plan(False, 0, "cluster too large")}
    for batch in (1, 3, 64, 5000):
        assert autotune.choose_variant(batch, plans) == "SINGLE_BLOCK"
    only_dual = {"SINGLE_BLOCK": fake_plan(False, 0, "a"), "DUAL_BLOCK": fake_plan(groups=2),
                 "PERSISTENT": fake_plan(False, 0, "b")}
    assert autotune.choose_variant(50, only_dual) == "DUAL_BLOCK"  # more waves than allowed, but it runs
    none = {name: fake_plan(False, 0, f"reason {name}") for name in CUDA_VARIANTS}
    with pytest.raises(ValueError, match="implementation: no CUDA variant.*reason PERSISTENT"):
        autotune.choose_variant(1, none)


def test_provisional_rule_never_picks_tensor_core():
    plans = {name: fake_plan(groups=1000) for name in CUDA_VARIANTS}
    for batch in (1, 64, 4096):
        decision = autotune.decide(batch, plans, gpu="G", dtype="float16", size=(64, 256, 256), table=None)
        assert decision.variant != "TENSOR_CORE" and decision.rule == "provisional"
    assert "TENSOR_CORE" not in autotune.candidates(None, "G", "float16", (64, 256, 256))


def synthetic_table(tmp_path, passed):
    """A table as scripts/cuda_timing.py writes it, with made-up rates: TENSOR_CORE fastest from
    batch 256, SINGLE_BLOCK below; float16 only."""
    rates = {("SINGLE_BLOCK", 1): 5e4, ("TENSOR_CORE", 1): 1e4, ("SINGLE_BLOCK", 256): 1e6,
             ("TENSOR_CORE", 256): 9e6, ("SINGLE_BLOCK", 4096): 4e6, ("TENSOR_CORE", 4096): 3e7}
    rows = [{"variant": name, "dtype": "float16", "size": [64, 256, 256], "batch": batch, "samples_per_s": rate}
            for (name, batch), rate in rates.items()]
    path = tmp_path / "table.json"
    autotune.write_table(path, gpu="GPU X", command="synthetic", commit="0000000", passed=passed, rows=rows)
    return autotune.load_table(path)


def test_auto_follows_a_measured_table_for_its_gpu_and_precision(tmp_path):
    table = synthetic_table(tmp_path, passed=["SINGLE_BLOCK", "TENSOR_CORE"])
    plans = {name: fake_plan(groups=132) for name in CUDA_VARIANTS}
    key = dict(gpu="GPU X", dtype="float16", size=(64, 256, 256), table=table)
    assert autotune.decide(1, plans, **key).variant == "SINGLE_BLOCK"
    assert autotune.decide(8, plans, **key).variant == "SINGLE_BLOCK"  # nearer 1 than 256 on a log scale
    decision = autotune.decide(300, plans, **key)
    assert decision.variant == "TENSOR_CORE" and "GPU X" in decision.rule and "batch 256" in decision.rule
    assert autotune.decide(100000, plans, **key).variant == "TENSOR_CORE"
    assert "TENSOR_CORE" in autotune.candidates(table, "GPU X", "float16", (64, 256, 256))
    # A variant whose plan cannot run this call is passed over; the table's next best is taken.
    assert autotune.decide(300, {**plans, "TENSOR_CORE": fake_plan(False, 0, "no")}, **key).variant == "SINGLE_BLOCK"
    # Another GPU, or a precision the table did not measure: the provisional rule, and it says so.
    for other in (dict(key, gpu="GPU Y"), dict(key, dtype="bfloat16")):
        assert autotune.decide(100, plans, **other) == autotune.Decision("PERSISTENT", "provisional")


def test_auto_ignores_table_rows_of_variants_that_did_not_pass(tmp_path):
    table = synthetic_table(tmp_path, passed=["SINGLE_BLOCK"])
    plans = {name: fake_plan(groups=132) for name in CUDA_VARIANTS}
    decision = autotune.decide(4096, plans, gpu="GPU X", dtype="float16", size=(64, 256, 256), table=table)
    assert decision.variant == "SINGLE_BLOCK" and decision.rule.startswith("table")
    assert "TENSOR_CORE" not in autotune.candidates(table, "GPU X", "float16", (64, 256, 256))


def test_only_variants_whose_gpu_tests_passed_may_enter_the_table(tmp_path):
    cases = {"test_matches_reference[TENSOR_CORE-R64S256A256-fp16]": "",
             "test_matches_reference[SINGLE_BLOCK-R64S256A256-fp16]": "",
             "test_matches_reference[DUAL_BLOCK-R64S256A256-fp16]": '<failure message="off"/>',
             "test_chunked_calls_equal_one_call[DUAL_BLOCK-fp16]": "",
             "test_persistent_runs_the_target_configuration": '<skipped message="no sm_90"/>',
             "test_tensor_core_tiles_match_reference[fp16-8]": ""}
    body = "".join(f'<testcase classname="tests.test_cuda" name="{name}">{inner}</testcase>'
                   for name, inner in cases.items())
    (tmp_path / "report.xml").write_text(f'<testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    assert autotune.passed_variants(tmp_path / "report.xml", list(CUDA_VARIANTS)) == ["SINGLE_BLOCK", "TENSOR_CORE"]


def test_a_file_that_is_not_a_table_is_refused_naming_it(tmp_path):
    assert autotune.load_table(tmp_path / "absent.json") is None
    for text in ("not json", '{"gpu": "X"}', '{"gpu": "X", "date": "", "command": "", "commit": "", '
                 '"passed": [], "rows": [{"variant": "SINGLE_BLOCK"}]}'):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match=r"bad\.json: not an autotune table"):
            autotune.load_table(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="rows: every row needs"):
        autotune.write_table(tmp_path / "t.json", gpu="X", command="", commit="", passed=[], rows=[{"batch": 1}])


def test_single_block_tile_follows_the_multiprocessor_count():
    expected = {1: 1, 132: 1, 133: 2, 264: 2, 265: 4, 528: 4, 529: 8, 4096: 8}
    assert {batch: autotune.single_block_tile(batch, 132) for batch in expected} == expected


def test_spin_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("NVWAVENET_SPIN_TIMEOUT_MS", raising=False)
    assert spin_timeout_ns() == 2_000_000_000
    monkeypatch.setenv("NVWAVENET_SPIN_TIMEOUT_MS", "1.5")
    assert spin_timeout_ns() == 1_500_000
    for bad in ("0", "-3", "soon", "nan"):
        monkeypatch.setenv("NVWAVENET_SPIN_TIMEOUT_MS", bad)
        with pytest.raises(ValueError, match="NVWAVENET_SPIN_TIMEOUT_MS"):
            spin_timeout_ns()


@needs_kernels
def test_unbuilt_size_and_precision_are_value_errors_naming_what_was_built():
    net = make_net((48, 256, 256), 2, 2, torch.float32)
    with pytest.raises(ValueError, match=r"\(R, S, A\) = \(48, 256, 256\).*built: \(32, 128, 256\)"):
        check_cuda_build(net.weights, torch.float32)
    net = make_net((64, 256, 256), 2, 2, torch.float16)
    assert check_cuda_build(net.weights, torch.float16)["cuda"]


def fake_params(**fields):
    """Params as the CUDA entry points see them, with made-up (never dereferenced) addresses."""
    from nvwavenet import _C

    p = _C.Params()
    p.R, p.S, p.A, p.L, p.max_dilation = 64, 256, 256, 20, 512
    p.batch, p.num_samples = 2, 10
    address = 1 << 20
    for name in ("embed_prev", "embed_curr", "dilate_w", "dilate_b", "res_w", "res_b", "skip_w", "skip_b", "out_w",
                 "out_b", "end_w", "end_b", "fold_w", "fold_b", "cond", "selectors", "samples", "queues", "history",
                 "workspace"):
        setattr(p, name, address)
        address += 1 << 16
    for name, value in fields.items():
        setattr(p, name, value)
    return p


@needs_kernels
@pytest.mark.parametrize("fields, message", [
    (dict(R=48), r"\(R, S, A\) = \(48, 256, 256\) has no CUDA kernels; built: \(32, 128, 256\)"),
    (dict(L=65), r"L: the CUDA kernels support 1 to 64 layers, got 65"),
    (dict(max_dilation=2048), r"max_dilation: .* power of two from 1 to 1024, got 2048"),
    (dict(max_dilation=3), r"max_dilation: .*got 3"),
    (dict(batch=0), r"batch: expected at least 1 stream, got 0"),
    (dict(num_samples=-1), r"num_samples: expected >= 0"),
    (dict(position=-5), r"position: expected >= 0"),
    (dict(spin_timeout_ns=0), r"spin_timeout_ns: expected > 0"),
    (dict(dilate_w=0), r"dilate_w: expected a device pointer, got null"),
    (dict(history=0), r"history: expected a device pointer, got null"),
    (dict(out_w=(1 << 20) + 8), r"out_w: .* must be 16-byte aligned"),
    (dict(pool_rows=-1), r"pool_rows: expected >= 0 \(0: batch\), got -1"),
    (dict(batch=4, pool_rows=3), r"pool_rows: expected at least batch = 4 rows without slots, got 3"),
    (dict(slots=(1 << 22) + 2), r"slots: expected an address aligned to 4 bytes"),
    (dict(positions=(1 << 22) + 4), r"positions: expected an address aligned to 8 bytes"),
    (dict(steps=1 << 22), r"steps: the CUDA kernels run every stream for num_samples steps"),
])
def test_cuda_entry_points_name_the_bad_argument(fields, message):
    from nvwavenet import _C

    for variant in CUDA_VARIANTS.values():
        with pytest.raises(ValueError, match=message):
            _C.cuda_plan(fake_params(**fields), variant)
        with pytest.raises(ValueError, match=message):
            _C.cuda_generate(fake_params(**fields), variant)
        with pytest.raises(ValueError, match=message):
            _C.cuda_launch(fake_params(**fields), variant)


@needs_kernels
def test_cuda_entry_points_reject_auto_and_unknown_variants():
    from nvwavenet import _C

    with pytest.raises(ValueError, match="AUTO is resolved in Python"):
        _C.cuda_plan(fake_params(), 0)
    unknown = max(CUDA_VARIANTS.values()) + 1
    with pytest.raises(ValueError, match="variant: expected an nvwavenet.Impl value"):
        _C.cuda_generate(fake_params(), unknown + 1)
    with pytest.raises(ValueError, match="variant: expected an nvwavenet.Impl value"):
        _C.cuda_plan(fake_params(), unknown)
    with pytest.raises(ValueError, match="workspace: expected a device pointer"):
        _C.cuda_generate(fake_params(workspace=0), 1)


@needs_kernels
def test_one_layer_network_needs_no_residual_weights():
    """With L = 1 there is no residual layer: null res pointers pass validation."""
    from nvwavenet import _C

    if HAVE_GPU:
        pytest.skip("on a GPU this would plan for real; the GPU tests run L = 1")
    with pytest.raises(RuntimeError, match="CUDA error"):  # past validation, at the first CUDA call
        _C.cuda_plan(fake_params(L=1, res_w=0, res_b=0), 1)
    with pytest.raises(RuntimeError, match="CUDA error"):  # nor folded weights: no next layer to fold into
        _C.cuda_plan(fake_params(L=1, res_w=0, res_b=0, fold_w=0, fold_b=0), int(Impl.CLUSTER_FOLD))


@needs_kernels
@pytest.mark.parametrize("fields, message", [
    (dict(fold_w=0), r"fold_w: expected a device pointer, got null"),
    (dict(fold_b=(1 << 20) + 8), r"fold_b: .* must be 16-byte aligned"),
])
def test_cluster_fold_requires_its_folded_weights(fields, message):
    """Only CLUSTER_FOLD reads Params.fold_w / fold_b: it names them, the other variants ignore them."""
    from nvwavenet import _C

    for call in (_C.cuda_plan, _C.cuda_generate, _C.cuda_launch):
        with pytest.raises(ValueError, match=message):
            call(fake_params(**fields), int(Impl.CLUSTER_FOLD))
    if not HAVE_GPU:
        with pytest.raises(RuntimeError, match="CUDA error"):  # past validation, at the first CUDA call
            _C.cuda_plan(fake_params(**fields), int(Impl.CLUSTER))


@needs_kernels
def test_cuda_failure_without_a_gpu_is_a_runtime_error_with_cuda_message_and_location():
    from nvwavenet import _C

    if HAVE_GPU:
        pytest.skip("a GPU is present")
    for variant in CUDA_VARIANTS.values():
        with pytest.raises(RuntimeError, match=r"CUDA error cuda\w+ \(.+\) from .+ at .+launch\.cu:\d+"):
            _C.cuda_plan(fake_params(), variant)


@needs_kernels
def test_status_message_is_total_for_any_status_block():
    """The timeout text is built from fields the GPU wrote: garbage there (a site, block or variant
    outside its range, extreme integers) must still give a message, never an out-of-range lookup."""
    from nvwavenet import _C

    rng = random.Random(17)

    def pick(bits, signed=True, edges=()):
        low, high = (-2**(bits - 1), 2**(bits - 1) - 1) if signed else (0, 2**bits - 1)
        return rng.choice([low, high, *edges]) if rng.random() < 0.5 else rng.randint(low, high)

    for _ in range(300):
        code, site, block, variant = (pick(32, edges=(0, 1, 2, 7, 8, -1)) for _ in range(4))
        step, timeout = pick(64, edges=(0, -1)), pick(64, edges=(0, -1))
        observed, expected = pick(64, signed=False), pick(64, signed=False)
        text = _C.cuda_status_message(code, site, block, step, observed, expected, variant, timeout)
        assert "kernel stopped:" in text
        if code == 1:
            assert f"block {block}," in text and f"at step {step}," in text
            assert f"(flag {observed}, needed {expected})" in text
            if not 0 <= site <= 8:
                assert f"unknown wait (site {site})" in text
        elif code != 2:
            assert f"unknown status code {code}." in text
    timeout = _C.cuda_status_message(1, 4, 3, 17, 5, 6, 3, 2_000_000)
    assert re.search(r"kernel stopped: block \d+, .+ at step \d+, waited more than", timeout)
    assert timeout.startswith("nvwavenet PERSISTENT kernel stopped: block 3, a layer block waiting for its input")


# ---------------------------------------------------------------------------------------------
# On a GPU: SPEC section 4 for every variant, size and precision.

@needs_gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-L{}-d{}-T{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("size", BUILT_SIZES, ids=lambda s: "R{}S{}A{}".format(*s))
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_matches_reference(variant, size, dtype, shape):
    batch, layers, max_dilation, samples = shape
    net = make_net(size, layers, max_dilation, dtype, seed=batch * 100 + layers)
    cond = random_cond_input(size[0], batch, layers, samples, seed=layers, device="cuda")
    report = run_or_refused(variant, lambda: compare_with_reference(net, cond, variant))
    assert net.last_implementation is variant
    print(f"{variant.name} {size} {dtype} {shape}: {report}")


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_bfloat16_matches_reference(variant):
    for batch, layers, max_dilation, samples in SHAPES[:2]:
        net = make_net((64, 256, 256), layers, max_dilation, torch.bfloat16)
        cond = random_cond_input(64, batch, layers, samples, device="cuda")
        run_or_refused(variant, lambda: compare_with_reference(net, cond, variant))


@needs_gpu
def test_auto_runs_a_runnable_variant_and_matches_reference():
    for batch in (1, 8, 200):
        net = make_net((64, 256, 256), 4, 8, torch.float16)
        cond = random_cond_input(64, batch, 4, 16, device="cuda")
        compare_with_reference(net, cond, Impl.AUTO)
        assert net.last_implementation in VARIANTS
        assert net.last_auto_rule is not None


@needs_gpu
@pytest.mark.parametrize("variant", CLUSTER_KERNELS, ids=lambda v: v.name)
def test_persistent_runs_the_target_configuration(variant):
    """R64/S256/A256, L = 20, max_dilation 512, float16: the single-stream target must fit."""
    major, _ = torch.cuda.get_device_capability()
    if major < 9:
        pytest.skip(f"{variant.name} needs thread-block clusters (sm_90)")
    net = NVWaveNet(**random_nv_wavenet_args(**TARGET), dtype=torch.float16)
    cond = random_cond_input(64, 1, 20, 64, device="cuda")
    compare_with_reference(net, cond, variant)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_cluster_roles_equals_cluster_bit_for_bit(dtype):
    """CLUSTER_ROLES computes CLUSTER's products in the same per-row order on the same split, so
    its samples and logits are CLUSTER's bits (the host build shows it on the CPU; a difference
    here is the compiler's, in one of the two instantiations)."""
    major, _ = torch.cuda.get_device_capability()
    if major < 9:
        pytest.skip("the cluster kernels need thread-block clusters (sm_90)")
    layers = 20 if dtype is torch.float16 else 10  # twenty float32 R64 layers do not fit a cluster
    net = NVWaveNet(**random_nv_wavenet_args(**{**TARGET, "n_layers": layers}), dtype=dtype)
    cond = random_cond_input(64, 2, layers, 64, device="cuda")
    u = torch.rand(2, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    cluster = net.infer(cond, Impl.CLUSTER, selectors=u, return_logits=True)
    roles = net.infer(cond, Impl.CLUSTER_ROLES, selectors=u, return_logits=True)
    assert torch.equal(roles[0], cluster[0])
    assert torch.equal(roles[1], cluster[1])


@needs_gpu
@pytest.mark.parametrize("k", [1, 2, 4, 8, 0])
def test_cluster_batched_streams_equal_each_stream_alone_through_cluster(k, monkeypatch):
    """CLUSTER_BATCHED with k streams per cluster (0: the plan's choice) at the target network,
    a partial last group: within SPEC section 4 of the reference, and each stream's samples and
    logits are CLUSTER's for that stream alone, bit for bit (matvec's per-stream sums do not depend
    on the tile; the host build checks the same on the CPU)."""
    major, _ = torch.cuda.get_device_capability()
    if major < 9:
        pytest.skip("CLUSTER_BATCHED needs thread-block clusters (sm_90)")
    streams_per_cluster(monkeypatch, k)
    batch = 2 * max(k, 1) + 1
    net = NVWaveNet(**random_nv_wavenet_args(**TARGET), dtype=torch.float16)
    cond = random_cond_input(64, batch, 20, 16, device="cuda")
    compare_with_reference(net, cond, Impl.CLUSTER_BATCHED)
    u = torch.rand(batch, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(k))
    out, logits = net.infer(cond, Impl.CLUSTER_BATCHED, selectors=u, return_logits=True)
    for b in range(batch):
        alone, alone_logits = net.infer(cond[:, b:b + 1], Impl.CLUSTER, selectors=u[b:b + 1], return_logits=True)
        assert torch.equal(out[b:b + 1], alone), f"stream {b}: samples"
        assert torch.equal(logits[b:b + 1], alone_logits), f"stream {b}: logits"


@needs_gpu
@pytest.mark.parametrize("dtype, split", [(torch.float32, (10, 3, 3, 124)), (torch.float16, (4, 2, 3, 32))], ids=str)
def test_cluster_skip_blocks_runs_the_target_network_in_float32(dtype, split):
    """R64/S256/A256 L20 in float32, which the other cluster variants refuse (20 layer blocks):
    10 layer blocks with rows [0, 124) of W_skip, 3 head blocks and 3 skip blocks, a 16-block
    cluster, within SPEC section 4 of the reference; float16 (4 + 2 + 3 blocks) too. Not compared
    bit for bit with another variant: its split and its summed skip biases are its own (the host
    build checks chunked calls and schedules bit for bit on the CPU)."""
    from nvwavenet import _C
    from nvwavenet.engines import make_params

    major, _ = torch.cuda.get_device_capability()
    if major < 9:
        pytest.skip("CLUSTER_SKIP_BLOCKS needs thread-block clusters (sm_90)")
    net = NVWaveNet(**random_nv_wavenet_args(**TARGET), dtype=dtype)
    cond = random_cond_input(64, 2, 20, 64, device="cuda")
    compare_with_reference(net, cond, Impl.CLUSTER_SKIP_BLOCKS)
    params = make_params(net.weights, net._packed_for(cond.device), cond[..., :1], torch.rand(2, 1, device="cuda"),
                         torch.empty(2, 1, dtype=torch.int32, device="cuda"), net.init_state(2, "cuda"))
    plan = _C.cuda_plan(params, int(Impl.CLUSTER_SKIP_BLOCKS))
    assert (plan["layer_blocks"], plan["head_blocks"], plan["skip_blocks"], plan["chain_skip_rows"]) == split, plan
    print(f"CLUSTER_SKIP_BLOCKS {dtype}: {plan}")


@needs_gpu
def test_persistent_declines_what_does_not_fit_with_the_reason():
    net = make_net((64, 256, 256), 30, 512, torch.float32)  # 30 float32 layers: one per block, > 16
    cond = random_cond_input(64, 1, 30, 4, device="cuda")
    with pytest.raises(ValueError, match=r"implementation: Impl.PERSISTENT cannot run this configuration .*cluster"):
        net.infer(cond, Impl.PERSISTENT)
    net = make_net((128, 256, 256), 2, 2, torch.float16)
    cond = random_cond_input(128, 1, 2, 4, device="cuda")
    with pytest.raises(ValueError, match="not built for PERSISTENT"):
        net.infer(cond, Impl.PERSISTENT)


@needs_gpu
def test_unbuilt_size_on_cuda_is_a_value_error():
    net = make_net((48, 256, 256), 2, 2, torch.float32)
    cond = random_cond_input(48, 1, 2, 4, device="cuda")
    with pytest.raises(ValueError, match=r"\(48, 256, 256\).*built"):
        net.infer(cond, Impl.SINGLE_BLOCK)


@needs_gpu
@pytest.mark.parametrize("tile", [2, 4, 8])
@pytest.mark.parametrize("batch", [3, 8, 13])
def test_single_block_tiles_match_reference(batch, tile, monkeypatch):
    """Tiles of 2, 4 and 8 streams, including a partly filled last tile."""
    monkeypatch.setattr(autotune, "streams_per_block", lambda name, b, sms: tile if name == "SINGLE_BLOCK" else 0)
    for dtype in (torch.float32, torch.float16):
        net = make_net((64, 256, 256), 3, 4, dtype)
        compare_with_reference(net, random_cond_input(64, batch, 3, 20, device="cuda"), Impl.SINGLE_BLOCK)


@needs_gpu
@pytest.mark.parametrize("tile", [8, 16, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_tensor_core_tiles_match_reference(tile, dtype, monkeypatch):
    """Every tile TENSOR_CORE has, with a partly filled last tile and a tile larger than the batch;
    a tile larger than a size's shared memory allows must be refused as such."""
    monkeypatch.setattr(autotune, "streams_per_block", lambda name, batch, sms: tile if name == "TENSOR_CORE" else 0)
    for size, batch in (((64, 256, 256), tile + 3), ((32, 128, 256), 5)):
        net = make_net(size, 3, 4, dtype)
        try:
            compare_with_reference(net, random_cond_input(size[0], batch, 3, 20, device="cuda"), Impl.TENSOR_CORE)
        except ValueError as error:
            assert tile > 16 and "the most built for this size is" in str(error), str(error)


@needs_gpu
def test_tensor_core_target_configuration_and_its_plan():
    """R64/S256/A256, L = 20, float16 and float32 (3xTF32): a tile that gives every multiprocessor
    a block when the batch allows; R=256 float32 refused with the reason."""
    from nvwavenet import _C
    from nvwavenet.engines import make_params

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    net = NVWaveNet(**random_nv_wavenet_args(**TARGET), dtype=torch.float16)
    compare_with_reference(net, random_cond_input(64, 70, 20, 24, device="cuda"), Impl.TENSOR_CORE)
    cond = random_cond_input(64, 2, 20, 1, device="cuda")
    params = make_params(net.weights, net._packed_for(cond.device), cond, torch.rand(2, 1, device="cuda"),
                         torch.empty(2, 1, dtype=torch.int32, device="cuda"), net.init_state(2, "cuda"))
    for batch in (64, 1024, 8 * sms, 64 * sms):
        params.batch = batch  # a plan reads the sizes, never the buffers
        plan = _C.cuda_plan(params, int(Impl.TENSOR_CORE))
        assert plan["runnable"], plan["reason"]
        if batch >= 8 * sms:
            assert plan["grid_blocks"] >= sms, plan
        print(f"batch {batch}: tile {plan['streams_per_group']}, {plan['grid_blocks']} blocks, "
              f"{plan['shared_bytes']} B shared")
    net32 = NVWaveNet(**random_nv_wavenet_args(**TARGET), dtype=torch.float32)
    compare_with_reference(net32, random_cond_input(64, 70, 20, 24, device="cuda"), Impl.TENSOR_CORE)
    wide = make_net((256, 256, 256), 2, 2, torch.float32)
    with pytest.raises(ValueError, match="TENSOR_CORE cannot run .*not built for this size and weight type"):
        wide.infer(random_cond_input(256, 2, 2, 4, device="cuda"), Impl.TENSOR_CORE)


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_more_streams_than_run_at_once(variant):
    """DUAL_BLOCK pairs loop over streams and PERSISTENT clusters run in waves beyond what fits."""
    batch = 2 * torch.cuda.get_device_properties(0).multi_processor_count + 3
    net = make_net((32, 128, 256), 2, 2, torch.float16)
    compare_with_reference(net, random_cond_input(32, batch, 2, 6, device="cuda"), variant)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_chunked_calls_equal_one_call(variant, dtype):
    """Generation resumed from the state, in uneven chunks, is bit for bit one call."""
    net = make_net((64, 256, 256), 10, 64, dtype)
    batch, samples = 3, 60
    cond = random_cond_input(64, batch, 10, samples, device="cuda")
    u = torch.rand(batch, samples, generator=torch.Generator().manual_seed(1)).cuda()
    whole_state = net.init_state(batch, "cuda")
    # PERSISTENT float32: 10 layer blocks + 4 head blocks, a non-portable cluster the device may decline.
    whole, whole_logits = run_or_refused(
        variant, lambda: net.infer(cond, variant, selectors=u, state=whole_state, return_logits=True))
    parts, part_logits, state = generate_in_chunks(net, cond, u, [17, 1, 42], variant)
    assert torch.equal(parts, whole)
    assert torch.equal(part_logits, whole_logits)
    for key in ("queues", "history", "position"):
        assert torch.equal(state[key], whole_state[key]), key


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_strided_inputs_give_the_same_results(variant):
    """Conditioning, selectors and teacher classes with arbitrary strides read the same values."""
    net = make_net((64, 256, 256), 4, 8, torch.float32)
    batch, samples = 3, 24
    dense = random_cond_input(64, batch, 4, samples, device="cuda")
    # Time-major storage, and every other time step of a twice-as-long tensor.
    time_major = dense.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    padded = torch.zeros(128, batch, 4, 2 * samples, device="cuda")
    padded[..., ::2] = dense
    strided = padded[..., ::2]
    assert not time_major.is_contiguous() and not strided.is_contiguous()
    u = torch.rand(samples, batch, device="cuda").t()
    teacher = torch.randint(0, 256, (samples, batch), device="cuda", dtype=torch.int32).t()
    expected = net.infer(dense, variant, selectors=u.contiguous(), teacher_forcing=teacher.contiguous(),
                         return_logits=True)
    for cond in (time_major, strided):
        got = net.infer(cond, variant, selectors=u, teacher_forcing=teacher, return_logits=True)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_float16_conditioning_matches_reference(variant):
    net = make_net((64, 256, 256), 6, 8, torch.float32)
    cond = random_cond_input(64, 2, 6, 24, device="cuda", dtype=torch.float16)
    # PERSISTENT, float32 weights: 6 layer blocks + 4 head blocks, a non-portable cluster size.
    run_or_refused(variant, lambda: compare_with_reference(net, cond, variant))


def layer_errors(net, cuda_state, ref_state):
    """Per layer, the largest |difference| of the queues over the largest |reference| entry."""
    offsets = layer_offsets(net.weights.dilations)
    got, want = cuda_state["queues"].double().cpu(), ref_state["queues"]
    return [float((got[:, a:b] - want[:, a:b]).abs().max() / want[:, a:b].abs().max().clamp_min(1e-30))
            for a, b in zip(offsets[:-1], offsets[1:])]


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_queues_match_reference_layer_by_layer(variant, dtype):
    """The diagnostic for a wrong kernel: the queues hold every layer's recent inputs x_l, so the
    first layer whose queue departs from the float64 reference is where the bug is."""
    net = make_net((64, 256, 256), 20, 512, dtype)
    batch, samples = 2, 40  # fewer steps than most dilations: the queues keep x_l of every step
    cond = random_cond_input(64, batch, 20, samples, device="cuda")
    u = torch.rand(batch, samples, generator=torch.Generator().manual_seed(3))
    ref_state = reference.init_state(net.weights, batch)
    ref_samples = reference.incremental(net.weights, cond.cpu().double(), u, state=ref_state)
    state = net.init_state(batch, "cuda")
    # PERSISTENT declines float32 here by design: one R=64 float32 layer per block, 20 + 4 > 16 blocks.
    run_or_refused(variant, lambda: net.infer(cond, variant, selectors=u.cuda(),
                                              teacher_forcing=ref_samples.cuda(), state=state))
    errors = layer_errors(net, state, ref_state)
    tolerance = 10 * TOLERANCES[dtype]
    bad = [layer for layer, error in enumerate(errors) if not error <= tolerance]
    table = ", ".join(f"{layer}: {error:.2e}" for layer, error in enumerate(errors))
    assert not bad, f"first layer off: {bad[0]} (relative max error per layer: {table})"
    assert torch.equal(state["history"].cpu(), ref_state["history"])


@needs_gpu
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_zero_samples_return_empty_outputs(variant):
    net = make_net((64, 256, 256), 2, 2, torch.float32)
    out, logits = net.infer(random_cond_input(64, 2, 2, 0, device="cuda"), variant, return_logits=True)
    assert out.shape == (2, 0) and logits.shape == (2, 256, 0)


@needs_gpu
@pytest.mark.parametrize("variant", [Impl.DUAL_BLOCK, *CLUSTER_KERNELS], ids=lambda v: v.name)
def test_a_wait_that_times_out_stops_the_kernel_cleanly(variant, monkeypatch):
    """With a 1 ns wait limit the cooperating blocks usually give up: that must be a RuntimeError
    saying where, never a hang or a broken CUDA context (the next normal call must work)."""
    net = make_net((64, 256, 256), 20, 512, torch.float16)
    cond = random_cond_input(64, 1, 20, 200, device="cuda")
    monkeypatch.setenv("NVWAVENET_SPIN_TIMEOUT_MS", "0.000001")
    try:
        net.infer(cond, variant)
        outcome = "finished inside the limit"
    except RuntimeError as error:
        assert re.search(r"kernel stopped: block \d+, .+ at step \d+, waited more than", str(error)), str(error)
        outcome = "stopped"
    monkeypatch.delenv("NVWAVENET_SPIN_TIMEOUT_MS")
    compare_with_reference(net, cond[..., :32], variant)
    print(f"{variant.name} with a 1 ns limit: {outcome}")


@needs_gpu
def test_wrong_state_dtype_is_a_type_error():
    net = make_net((64, 256, 256), 2, 2, torch.float32)
    cond = random_cond_input(64, 1, 2, 4, device="cuda")
    state = reference.init_state(net.weights, 1, device="cuda")  # float64 queues
    with pytest.raises(TypeError, match=r"state\['queues'\]"):
        net.infer(cond, Impl.SINGLE_BLOCK, state=state)


def test_grid_covers_the_issue_shapes():
    assert {s[0] for s in SHAPES} >= {1, 3, 8, 64}
    assert {s[1] for s in SHAPES} >= {1, 2, 16, 20, 30}
    assert {s[2] for s in SHAPES} >= {1, 128, 512}
    assert all(math.log2(s[2]).is_integer() for s in SHAPES)
