"""The CUDA kernels' own sources run on the CPU (the host build, csrc/cuda/host and
scripts/cuda_host.py) and compared with the float64 reference as SPEC section 4 says: every
variant x float32/float16/bfloat16 x R32 and R64, partial tiles, L=20 with max_dilation 512 on
a few steps, chunked calls equal to one call bit for bit, the timeout/abort path, and random
block and thread schedules giving the very same bits. The launcher and planner (launch.cu) run
unchanged against an emulated sm_90 device, so a plan a GPU refuses is refused here too.

The results are listed at the end of the run (cases per variant, passes). The larger matrix:
``python scripts/cuda_host_matrix.py``; planted bugs: ``python scripts/cuda_host_mutants.py``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from nvwavenet import Impl, NVWaveNet, build_check, engines
from nvwavenet.state import new_state
from nvwavenet.testing import compare_with_reference, generate_in_chunks, random_cond_input, random_nv_wavenet_args

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cuda_host.py"
_spec = importlib.util.spec_from_file_location("cuda_host", SCRIPT)
cuda_host = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_host)

pytestmark = pytest.mark.skipif(
    shutil.which(cuda_host.compiler()) is None or platform.machine() != "x86_64" or not engines.has_extension(),
    reason="the host build needs g++ on x86-64 and the compiled nvwavenet._C (for its Params type)")

VARIANTS = [Impl.SINGLE_BLOCK, Impl.DUAL_BLOCK, Impl.PERSISTENT, Impl.CLUSTER, Impl.TENSOR_CORE, Impl.CLUSTER_ROLES,
            Impl.CLUSTER_FOLD, Impl.CLUSTER_BATCHED, Impl.CLUSTER_SKIP_BLOCKS]
CLUSTER_KERNELS = (Impl.PERSISTENT, Impl.CLUSTER, Impl.CLUSTER_ROLES, Impl.CLUSTER_FOLD,  # persistent.cuh's one kernel
                   Impl.CLUSTER_BATCHED, Impl.CLUSTER_SKIP_BLOCKS)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Streams per block (per cluster for CLUSTER_BATCHED) where the variant has a tile: chosen so that
# the batches below leave the last block's (cluster's) tile partly empty.
TILES = {Impl.SINGLE_BLOCK: 2, Impl.TENSOR_CORE: 8, Impl.CLUSTER_BATCHED: 2}
BATCH = {Impl.SINGLE_BLOCK: 3, Impl.DUAL_BLOCK: 2, Impl.PERSISTENT: 1, Impl.CLUSTER: 1, Impl.TENSOR_CORE: 9,
         Impl.CLUSTER_ROLES: 1, Impl.CLUSTER_FOLD: 1, Impl.CLUSTER_BATCHED: 3, Impl.CLUSTER_SKIP_BLOCKS: 1}

RESULTS: dict[str, dict[str, int]] = defaultdict(lambda: {"cases": 0, "passed": 0, "refused": 0})


@contextlib.contextmanager
def case(variant):
    """Counts a case of `variant` for the summary, and a pass when the block completes."""
    RESULTS[variant.name]["cases"] += 1
    yield
    RESULTS[variant.name]["passed"] += 1


class _Summary:
    """Lists the cases per variant at the end of the run (a plugin registered by the fixture)."""

    @staticmethod
    def pytest_terminal_summary(terminalreporter):
        if not RESULTS:
            return
        terminalreporter.section("host build of csrc/cuda against the float64 reference")
        for name, counts in RESULTS.items():
            terminalreporter.write_line(f"{name:19s} {counts['cases']:3d} cases run, {counts['passed']:3d} passed; "
                                        f"{counts['refused']} refused by the plan (by design)")


@pytest.fixture(scope="module")
def host(request):
    if not request.config.pluginmanager.has_plugin("cuda_host_summary"):
        request.config.pluginmanager.register(_Summary(), "cuda_host_summary")
    try:
        return cuda_host.load()
    except subprocess.CalledProcessError as error:
        pytest.fail(f"the host build does not compile:\n{error.stderr[-6000:]}")


def make_net(R, layers, max_dilation, dtype, seed=0):
    return NVWaveNet(**random_nv_wavenet_args(R, 128, 256, layers, max_dilation, seed=seed), dtype=dtype)


def shape(variant, R, dtype):
    """(layers, max_dilation, samples) of a matrix case: R64 at L=20, max_dilation 512 on three
    steps (float32 cluster kernels at L=10: twenty float32 R64 layers need more than a 16-block
    cluster, which the next test checks is refused; CLUSTER_SKIP_BLOCKS's 5 layer blocks there hold
    rows [0, 124) of W_skip and 1 skip block the rest); R32 at L=3 on six steps."""
    if R == 32:
        return 3, 2, 6
    if variant in CLUSTER_KERNELS and dtype is torch.float32:
        return 10, 512, 3
    return 20, 512, 3


@pytest.mark.parametrize("R", [32, 64])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_kernel_matches_the_reference(host, variant, dtype_name, R):
    dtype = DTYPES[dtype_name]
    layers, max_dilation, samples = shape(variant, R, dtype)
    net = make_net(R, layers, max_dilation, dtype)
    batch = BATCH[variant]
    cond = random_cond_input(R, batch, layers, samples, seed=R + layers)
    runner = cuda_host.HostNet(net, host, variant, streams_per_block=TILES.get(variant, 0))
    with case(variant):
        figures = compare_with_reference(runner, cond, variant, seed=7)
    print(f"{variant.name} {dtype_name} R{R} L{layers} batch {batch}: {figures}")


@pytest.mark.parametrize("variant, tile", [(Impl.SINGLE_BLOCK, 1), (Impl.SINGLE_BLOCK, 4), (Impl.SINGLE_BLOCK, 8),
                                           (Impl.TENSOR_CORE, 16), (Impl.TENSOR_CORE, 32), (Impl.TENSOR_CORE, 64)],
                         ids=lambda v: getattr(v, "name", v))
def test_every_tile_with_a_partial_last_block(host, variant, tile):
    """The other tiles each variant is built for (the matrix above uses 2 and 8), with one stream
    more than a tile: a second block with a single live stream."""
    net = make_net(32, 2, 2, torch.float16, seed=tile)
    cond = random_cond_input(32, tile + 1, 2, 3, seed=tile)
    runner = cuda_host.HostNet(net, host, variant, streams_per_block=tile)
    with case(variant):
        compare_with_reference(runner, cond, variant, seed=tile)
        assert runner.last_plan["grid_blocks"] == 2


def test_plans_the_gpu_refuses_are_refused(host):
    net = make_net(64, 20, 512, torch.float32)
    cond = random_cond_input(64, 1, 20, 2)
    for variant in CLUSTER_KERNELS:
        if variant == Impl.CLUSTER_SKIP_BLOCKS:  # what it is for: its refusals are below
            continue
        with pytest.raises(ValueError, match=r"needs a cluster of \d+ blocks .*the largest cluster has 16"):
            cuda_host.HostNet(net, host, variant, streams_per_block=TILES.get(variant, 0)).infer(
                cond, selectors=torch.rand(1, 2))
        RESULTS[variant.name]["refused"] += 1
    with pytest.raises(ValueError, match=r"at most 1 per block with 4 streams per cluster"):
        cuda_host.HostNet(net, host, Impl.CLUSTER_BATCHED, streams_per_block=4).infer(cond, selectors=torch.rand(1, 2))
    with pytest.raises(ValueError, match="streams_per_block must be 1, 2, 4 or 8 for CLUSTER_BATCHED"):
        cuda_host.HostNet(net, host, Impl.CLUSTER_BATCHED, streams_per_block=3).infer(cond, selectors=torch.rand(1, 2))
    with pytest.raises(ValueError, match="streams_per_block must be 1, 2, 4 or 8"):
        cuda_host.HostNet(net, host, Impl.SINGLE_BLOCK, streams_per_block=3).infer(cond, selectors=torch.rand(1, 2))
    with pytest.raises(ValueError, match="streams_per_block must be 8, 16, 32 or 64"):
        cuda_host.HostNet(net, host, Impl.TENSOR_CORE, streams_per_block=4).infer(cond, selectors=torch.rand(1, 2))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_chunked_calls_equal_one_call_bit_for_bit(host, variant):
    net = make_net(32, 4, 4, torch.float16, seed=3)
    batch, samples = BATCH[variant], 7
    cond = random_cond_input(32, batch, 4, samples, seed=5)
    u = torch.rand(batch, samples, generator=torch.Generator().manual_seed(11))
    runner = cuda_host.HostNet(net, host, variant, streams_per_block=TILES.get(variant, 0))
    with case(variant):
        whole, whole_logits, whole_state = generate_in_chunks(runner, cond, u, [samples], variant)
        parts, parts_logits, parts_state = generate_in_chunks(runner, cond, u, [3, 1, 3], variant)
        assert torch.equal(whole, parts)
        assert torch.equal(whole_logits, parts_logits)
        for key in ("queues", "history", "position"):
            assert torch.equal(whole_state[key], parts_state[key]), key


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_random_schedules_give_the_same_bits(host, variant):
    """Blocks interleaved and threads resumed in random orders (each seed its own schedule, st.async
    landing after random delays): every output bit is the in-order schedule's."""
    net = make_net(32, 3, 2, torch.bfloat16, seed=4)
    batch = BATCH[variant] + (1 if variant in CLUSTER_KERNELS else 0)  # two clusters
    cond = random_cond_input(32, batch, 3, 5, seed=6)
    u = torch.rand(batch, 5, generator=torch.Generator().manual_seed(12))
    with case(variant):
        runs = []
        for seed in (0, 1, 2):
            runner = cuda_host.HostNet(net, host, variant, seed=seed, streams_per_block=TILES.get(variant, 0))
            runs.append(runner.infer(cond, selectors=u, return_logits=True))
        for samples, logits in runs[1:]:
            assert torch.equal(samples, runs[0][0])
            assert torch.equal(logits, runs[0][1])


# The block that the others wait on and that is starved: DUAL_BLOCK's head block (the residual
# block waits for its sample), a cluster's layer block 0 (the head blocks wait for its skip share).
STARVED = {Impl.DUAL_BLOCK: 1, Impl.PERSISTENT: 0, Impl.CLUSTER: 0, Impl.CLUSTER_ROLES: 0, Impl.CLUSTER_FOLD: 0,
           Impl.CLUSTER_BATCHED: 0, Impl.CLUSTER_SKIP_BLOCKS: 0}


@pytest.mark.parametrize("variant", list(STARVED), ids=lambda v: v.name)
def test_a_wait_that_times_out_stops_the_kernel_cleanly(host, variant):
    """A 1 ns limit on the waits between blocks, one block starved (it runs only when the others
    are stuck; emulated time passes with every poll): a RuntimeError that says where the kernel
    stopped, no emulation error (deadlock, st.async into a block that exited, ...), and the next
    normal call is right."""
    net = make_net(32, 3, 2, torch.float16, seed=8)
    cond = random_cond_input(32, BATCH[variant], 3, 6, seed=9)
    runner = cuda_host.HostNet(net, host, variant, spin_timeout_ns=1, starve_block=STARVED[variant],
                               streams_per_block=TILES.get(variant, 0))
    with case(variant):
        stopped = r"kernel stopped: block \d+, .+ at step \d+, waited more than"
        with pytest.raises(RuntimeError, match=stopped) as caught:
            runner.infer(cond, selectors=torch.rand(BATCH[variant], 6))
        assert not isinstance(caught.value, host.EmulationError), str(caught.value)
        compare_with_reference(cuda_host.HostNet(net, host, variant, streams_per_block=TILES.get(variant, 0)), cond,
                               variant)


def run_in_pool(host, runner, pool, cond, u, slots, positions, teacher=None, seed=0):
    """One call of runner's variant on streams at pool rows `slots`, each at its own position:
    (samples, logits, plan)."""
    batch, samples = cond.shape[1], cond.shape[3]
    out = torch.full((batch, samples), -1, dtype=torch.int32)
    logits = torch.full((batch, runner.A, samples), float("nan"))
    p = runner.params(cond, u, out, pool, teacher, logits)
    slots, positions = torch.tensor(slots, dtype=torch.int32), torch.tensor(positions, dtype=torch.int64)
    p.pool_rows, p.slots, p.positions = pool["queues"].shape[0], slots.data_ptr(), positions.data_ptr()
    plan = host.plan(p, int(runner.variant))
    assert plan["runnable"], plan["reason"]
    workspace = torch.empty(plan["workspace_bytes"], dtype=torch.uint8)
    p.workspace, p.workspace_bytes = workspace.data_ptr(), workspace.numel()
    host.generate(p, int(runner.variant), seed, starve_block=-1)
    return out, logits, plan


@pytest.mark.parametrize("k, teacher", [(2, False), (4, True)])
def test_each_stream_of_a_batched_call_equals_it_alone_through_cluster(host, k, teacher):
    """CLUSTER_BATCHED's k streams per cluster share every weight read, and matvec's per-stream sums
    do not depend on the tile: each stream (own pool row, own position, own conditioning,
    selectors, teacher) gives CLUSTER's bits when run alone, samples, logits and state, also in
    the partial last group and under a random schedule; rows no call names stay untouched."""
    layers, samples, batch = 4, 5, 5  # k=2: groups of 2, 2, 1; k=4: 4, 1
    net = make_net(32, layers, 4, torch.float16, seed=k)
    generator = torch.Generator().manual_seed(k)
    pool = new_state(net.weights, 7)
    pool["queues"].normal_(generator=generator)
    pool["history"].random_(0, net.A, generator=generator)
    slots, positions = [5, 0, 3, 6, 2], [0, 7, 3, 12, 1]
    cond = random_cond_input(32, batch, layers, samples, seed=k)
    u = torch.rand(batch, samples, generator=generator)
    forced = torch.randint(0, net.A, (batch, samples), generator=generator, dtype=torch.int32) if teacher else None
    batched_pool = {key: value.clone() for key, value in pool.items()}
    runner = cuda_host.HostNet(net, host, Impl.CLUSTER_BATCHED, streams_per_block=k)
    with case(Impl.CLUSTER_BATCHED):
        out, logits, plan = run_in_pool(host, runner, batched_pool, cond, u, slots, positions, forced, seed=k)
        assert plan["streams_per_group"] == k
        assert plan["grid_blocks"] == plan["blocks_per_group"] * -(-batch // k)
        alone = cuda_host.HostNet(net, host, Impl.CLUSTER)
        for b in range(batch):
            alone_pool = {key: value.clone() for key, value in pool.items()}
            one = slice(b, b + 1)
            alone_out, alone_logits, _ = run_in_pool(
                host, alone, alone_pool, cond[:, one].contiguous(), u[one].contiguous(), slots[one], positions[one],
                None if forced is None else forced[one].contiguous())
            assert torch.equal(out[one], alone_out), f"stream {b}: samples"
            assert torch.equal(logits[one], alone_logits), f"stream {b}: logits"
            for key in ("queues", "history"):
                assert torch.equal(batched_pool[key][slots[b]], alone_pool[key][slots[b]]), f"stream {b}: {key}"
        for row in set(range(7)) - set(slots):
            assert torch.equal(batched_pool["queues"][row], pool["queues"][row])
            assert torch.equal(batched_pool["history"][row], pool["history"][row])


def test_batched_plan_picks_the_largest_k_that_fills_the_device(host):
    """streams_per_block 0: the largest of 8, 4, 2 streams per cluster whose clusters still fill
    every cluster slot of the device, else 1 (CLUSTER's kernel); an explicit k is kept."""
    net = make_net(32, 3, 2, torch.float16)
    runner = cuda_host.HostNet(net, host, Impl.CLUSTER_BATCHED)

    def plan(batch, k):
        cond = random_cond_input(32, batch, 3, 1)
        p = runner.params(cond, torch.rand(batch, 1), torch.zeros(batch, 1, dtype=torch.int32),
                          runner.init_state(batch))
        p.streams_per_block = k
        return host.plan(p, int(Impl.CLUSTER_BATCHED))

    picked = set()
    for batch in (1, 64, 150, 300, 600):
        expected = next((k for k in (8, 4, 2) if -(-batch // k) >= plan(batch, k)["co_resident_groups"]), 1)
        chosen = plan(batch, 0)
        assert chosen["runnable"] and chosen["streams_per_group"] == expected, (batch, chosen)
        picked.add(expected)
        assert plan(batch, 4)["streams_per_group"] == 4
    assert {1, 8} <= picked


@pytest.mark.parametrize("R, layers, dtype_name", [(64, 20, "float16"), (64, 10, "float32"), (32, 20, "bfloat16")])
def test_cluster_roles_equals_cluster_bit_for_bit(host, R, layers, dtype_name):
    """CLUSTER_ROLES computes CLUSTER's products in CLUSTER's per-row order on the same split
    (matvec's row sums do not depend on its thread count; each block's skip share adds its layers
    in order), so samples and logits are CLUSTER's bits, under a random schedule of its own."""
    net = make_net(R, layers, 512, DTYPES[dtype_name], seed=layers)
    cond = random_cond_input(R, 1, layers, 3, seed=R)
    u = torch.rand(1, 3, generator=torch.Generator().manual_seed(R + layers))
    cluster = cuda_host.HostNet(net, host, Impl.CLUSTER)
    roles = cuda_host.HostNet(net, host, Impl.CLUSTER_ROLES, seed=layers)
    with case(Impl.CLUSTER_ROLES):
        expected = cluster.infer(cond, selectors=u, return_logits=True)
        got = roles.infer(cond, selectors=u, return_logits=True)
        assert roles.last_plan["layer_blocks"] == cluster.last_plan["layer_blocks"]
        assert torch.equal(got[0], expected[0])
        assert torch.equal(got[1], expected[1])


def test_cluster_fold_splits_with_the_folds_bytes_and_crosses_blocks(host):
    """R32 float16 at L=11: CLUSTER holds all 11 layers in one block; with F and g beside them only
    10 fit, so CLUSTER_FOLD's planner makes two blocks of 6 (the fold inside each, x handed from
    one to the other). That split meets SPEC section 4, chunked calls and random block schedules
    give its bits, and they are not CLUSTER's (the fold's products run)."""
    net = make_net(32, 11, 8, torch.float16, seed=13)
    batch, samples = 2, 5
    cond = random_cond_input(32, batch, 11, samples, seed=14)
    u = torch.rand(batch, samples, generator=torch.Generator().manual_seed(15))
    cluster = cuda_host.HostNet(net, host, Impl.CLUSTER)
    cluster_logits = cluster.infer(cond, selectors=u, return_logits=True)[1]
    assert (cluster.last_plan["layer_blocks"], cluster.last_plan["max_layers_per_block"]) == (1, 11)
    with case(Impl.CLUSTER_FOLD):
        fold = cuda_host.HostNet(net, host, Impl.CLUSTER_FOLD)
        compare_with_reference(fold, cond, Impl.CLUSTER_FOLD, seed=16)
        assert (fold.last_plan["layer_blocks"], fold.last_plan["max_layers_per_block"]) == (2, 6)
        whole, whole_logits, whole_state = generate_in_chunks(fold, cond, u, [samples], Impl.CLUSTER_FOLD)
        parts, parts_logits, parts_state = generate_in_chunks(fold, cond, u, [2, 1, 2], Impl.CLUSTER_FOLD)
        assert torch.equal(whole, parts) and torch.equal(whole_logits, parts_logits)
        for key in ("queues", "history", "position"):
            assert torch.equal(whole_state[key], parts_state[key]), key
        shuffled = cuda_host.HostNet(net, host, Impl.CLUSTER_FOLD, seed=5).infer(cond, selectors=u, return_logits=True)
        assert torch.equal(shuffled[1], fold.infer(cond, selectors=u, return_logits=True)[1])
        assert not torch.equal(shuffled[1], cluster_logits)


def test_a_cached_plan_for_a_large_cluster_launches_after_a_small_one_was_planned(host):
    """Plans are cached (launch.cu), the kernel's attributes are not: planning a cluster of at most
    8 blocks must not take back the non-portable cluster size that a cached 9-block plan of the
    same kernel needs at launch (CLUSTER R64/S128 float16: L24 is 7 + 2 blocks, L2 2 blocks)."""
    batch = 5  # a batch no other test plans these with, so that the L2 plan is made here
    for layers in (24, 2, 24):
        net = make_net(64, layers, 2, torch.float16, seed=layers)
        runner = cuda_host.HostNet(net, host, Impl.CLUSTER)
        runner.infer(random_cond_input(64, batch, layers, 1), selectors=torch.rand(batch, 1))
        assert runner.last_plan["blocks_per_group"] == (9 if layers == 24 else 2)


# CLUSTER_SKIP_BLOCKS (issue 24, design item 2). The target network in the three precisions, through
# a host build of R64/S256/A256 (~75 s of compiling once, cached) in a process of its own (one
# process imports one build of the module); and R32 float32/bfloat16 L6 on the emulated device with
# 64 KB per block (device 1), where the planner splits W_skip as it does at the target: c < S,
# several skip blocks, uneven skip and head rows; bfloat16 there has c = 0 (every row of W_skip in
# a skip block).
SKIP_SPLITS = {  # (R, layers, dtype) on device 1: (layer blocks, head blocks, skip blocks, c)
    (32, 6, "float32"): (2, 7, 2, 4),
    (32, 6, "bfloat16"): (1, 4, 1, 0),
}
TARGET_RUN = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import cuda_host
from nvwavenet import Impl, NVWaveNet
from nvwavenet.testing import compare_with_reference, random_cond_input, random_nv_wavenet_args
host = cuda_host.load(sizes="X(64, 256, 256)")
results = {}
for name, layers in (("float32", 20), ("float16", 20), ("bfloat16", 20), ("float32", 30)):
    net = NVWaveNet(**random_nv_wavenet_args(64, 256, 256, layers, 512, seed=20), dtype=getattr(torch, name))
    runner = cuda_host.HostNet(net, host, Impl.CLUSTER_SKIP_BLOCKS)
    try:
        figures = compare_with_reference(runner, random_cond_input(64, 1, layers, 3, seed=21),
                                         Impl.CLUSTER_SKIP_BLOCKS, seed=22)
        results[f"{name} L{layers}"] = {"plan": runner.last_plan, "figures": figures}
    except ValueError as error:
        results[f"{name} L{layers}"] = {"refused": str(error)}
print(json.dumps(results))
"""


def split_of(plan):
    return plan["layer_blocks"], plan["head_blocks"], plan["skip_blocks"], plan["chain_skip_rows"]


@pytest.fixture(scope="module")
def target_results(host):
    # The child imports the nvwavenet this process runs (an installed one, or a source tree built in
    # place), not the clone's source tree that `-c` would put first from the clone's root.
    done = subprocess.run([sys.executable, "-c", TARGET_RUN, str(SCRIPT.parent)], capture_output=True, text=True,
                          env=build_check.python_env())
    if done.returncode != 0:
        pytest.fail(f"the R64/S256/A256 host-build run failed:\n{done.stderr[-6000:]}")
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("dtype_name, split", [("float32", (10, 3, 3, 124)), ("float16", (4, 2, 3, 32)),
                                               ("bfloat16", (4, 2, 3, 32))])
def test_skip_blocks_run_the_target_network(target_results, dtype_name, split):
    """R64/S256/A256 L=20 max_dilation 512, which CLUSTER refuses in float32 (20 layer blocks):
    float32 is 10 layer blocks of 2 layers with rows [0, 124) of W_skip, 3 skip blocks of 44 rows
    and 3 head blocks of 86/85/85 rows, 16 blocks; float16 and bfloat16 5 layers per block and
    rows [0, 32). SPEC section 4 against the float64 reference (compare_with_reference raises
    otherwise, which the run reports as a failure)."""
    with case(Impl.CLUSTER_SKIP_BLOCKS):
        result = target_results[f"{dtype_name} L20"]
        assert "plan" in result, result
        assert split_of(result["plan"]) == split
        assert result["plan"]["blocks_per_group"] == sum(split[:3])
    print(f"CLUSTER_SKIP_BLOCKS {dtype_name} R64/S256/A256 L20: {result}")


@pytest.mark.parametrize("R, layers, dtype_name", list(SKIP_SPLITS))
def test_skip_blocks_split_unevenly_on_a_small_device(host, R, layers, dtype_name):
    """On 64 KB per block: SPEC section 4; chunked calls and a random schedule (two clusters of 11
    or 6 blocks; ~10 s of emulation for the 11) give one call's bits."""
    net = make_net(R, layers, 4, DTYPES[dtype_name], seed=layers)
    batch, samples = 2, 5
    cond = random_cond_input(R, batch, layers, samples, seed=23)
    u = torch.rand(batch, samples, generator=torch.Generator().manual_seed(24))
    runner = cuda_host.HostNet(net, host, Impl.CLUSTER_SKIP_BLOCKS, device=1)
    with case(Impl.CLUSTER_SKIP_BLOCKS):
        compare_with_reference(runner, cond, Impl.CLUSTER_SKIP_BLOCKS, seed=25)
        assert split_of(runner.last_plan) == SKIP_SPLITS[R, layers, dtype_name]
        whole, whole_logits, whole_state = generate_in_chunks(runner, cond, u, [samples], Impl.CLUSTER_SKIP_BLOCKS)
        parts, parts_logits, parts_state = generate_in_chunks(runner, cond, u, [2, 1, 2], Impl.CLUSTER_SKIP_BLOCKS)
        assert torch.equal(whole, parts) and torch.equal(whole_logits, parts_logits)
        for key in ("queues", "history", "position"):
            assert torch.equal(whole_state[key], parts_state[key]), key
        shuffled = cuda_host.HostNet(net, host, Impl.CLUSTER_SKIP_BLOCKS, seed=3, device=1)
        samples_seen, logits_seen = shuffled.infer(cond, selectors=u, return_logits=True)
        assert torch.equal(samples_seen, whole) and torch.equal(logits_seen, whole_logits)


@pytest.mark.parametrize("starve", [0, 9, 10], ids=["layer block", "head block", "skip block"])
def test_skip_blocks_stop_cleanly_when_a_wait_times_out(host, starve):
    """R32 float32 L6 on 64 KB per block (2 layer blocks, 7 head blocks, skip blocks 9 and 10), a
    1 ns limit on the waits and one block starved: a RuntimeError that says where the kernel
    stopped and no emulation error (no st.async lands in a block that has exited: the abort
    drain counts the h sent to the skip blocks and their shares); then a normal call is right."""
    net = make_net(32, 6, 4, torch.float32, seed=6)
    cond = random_cond_input(32, 1, 6, 6, seed=26)
    runner = cuda_host.HostNet(net, host, Impl.CLUSTER_SKIP_BLOCKS, spin_timeout_ns=1, starve_block=starve, device=1)
    with case(Impl.CLUSTER_SKIP_BLOCKS):
        stopped = r"kernel stopped: block \d+, .+ at step \d+, waited more than"
        with pytest.raises(RuntimeError, match=stopped) as caught:
            runner.infer(cond, selectors=torch.rand(1, 6))
        assert not isinstance(caught.value, host.EmulationError), str(caught.value)
        compare_with_reference(cuda_host.HostNet(net, host, Impl.CLUSTER_SKIP_BLOCKS, device=1), cond,
                               Impl.CLUSTER_SKIP_BLOCKS)


def test_skip_blocks_refusals_say_why(host, target_results):
    """float32 at L=30 needs 15 layer blocks, 5 skip blocks and 3 head blocks; a float32 R64 layer's
    chain alone does not fit 64 KB."""
    assert re.search(r"needs a cluster of 23 blocks \(30 layers at most 2 per block, plus 3 head blocks and 5 skip "
                     r"blocks for W_skip rows 124 to 255\); the largest cluster has 16",
                     target_results["float32 L30"].get("refused", "")), target_results["float32 L30"]
    RESULTS[Impl.CLUSTER_SKIP_BLOCKS.name]["refused"] += 1
    net = make_net(64, 2, 2, torch.float32)
    runner = cuda_host.HostNet(net, host, Impl.CLUSTER_SKIP_BLOCKS, device=1)
    with pytest.raises(ValueError, match=r"one layer's chain \(W_dil, W_res, biases, buffers\) of R=64, S=128, A=256 "
                                         r"needs \d+ bytes of shared memory; a block on this device has 65536"):
        runner.infer(random_cond_input(64, 1, 2, 2), selectors=torch.rand(1, 2))
    RESULTS[Impl.CLUSTER_SKIP_BLOCKS.name]["refused"] += 1


@pytest.mark.parametrize("window, stride", [(16, 4), (7, 2)])
def test_conditioning_kernels_equal_the_cpu_conditioning_bit_for_bit(host, window, stride):
    """conditioning.cu, run on the CPU on the very arguments of the compiled CPU path
    (FrameConditioner.compiled_params): the same fixed-order fmaf chains give the same bits, for
    streams with different frame counts, under a random block and thread schedule."""
    from nvwavenet.conditioning import FrameConditioner
    from nvwavenet.model import WaveNet

    torch.manual_seed(window)
    model = WaveNet(n_in_channels=32, n_layers=3, max_dilation=2, n_residual_channels=8, n_skip_channels=8,
                    n_out_channels=32, n_cond_channels=6, upsamp_window=window, upsamp_stride=stride)
    conditioner = FrameConditioner(model)
    assert conditioner._compiled
    n, counts = 3, [3, 1, 0, 2]
    frames = torch.randn(len(counts), 6, conditioner.context + n)
    on_cpu = conditioner(frames, counts).permute(1, 2, 0, 3).reshape(len(counts), -1, n * stride)
    emulated = torch.full_like(on_cpu, float("nan"))
    p, counts_tensor = conditioner.compiled_params(frames, n, counts, emulated)
    workspace = torch.empty(host.condition_workspace_bytes(p), dtype=torch.uint8)
    p.workspace, p.workspace_bytes = workspace.data_ptr(), workspace.numel()
    host.condition(p, seed=3)
    for b, count in enumerate(counts):
        written = slice(0, count * stride)
        assert torch.equal(emulated[b, :, written], on_cpu[b, :, written]), f"stream {b}"
        # Samples beyond a stream's count are not written (conditioning.h).
        assert emulated[b, :, count * stride:].isnan().all(), f"stream {b} beyond its count"
