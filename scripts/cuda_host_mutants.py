"""Planted bugs: copies csrc/ to a scratch directory, changes one known-critical line of a kernel
at a time (a wrong expect_tx byte count, a missing cp.async wait, a wrong ldmatrix address, a
wrong mbarrier parity, an off-by-one queue slot, a missing barrier, ...), builds the host build of
the copy (scripts/cuda_host.py; only the objects that include the changed file recompile) and
runs the variant's checks on it: SPEC section 4's comparison with the reference under the in-order
schedule and two random ones, and for the cooperating variants the timeout/abort path. A mutant
is caught when a check fails (wrong numbers, an emulation
error such as a deadlock or bytes landing in an unconsumed phase, a timeout report, a crash).
The unmutated copy must pass the same checks first.

    python scripts/cuda_host_mutants.py [--only NAME ...] [--jobs N]

Prints one line per mutant and exits non-zero if any survived.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cuda_host", ROOT / "scripts" / "cuda_host.py")
cuda_host = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_host)

# (name, variant checked, file under csrc/cuda, anchor, old, new): the first `old` after `anchor`
# becomes `new`.
MUTANTS = [
    ("single_block: no barrier between the gate and the residual/skip products", "SINGLE_BLOCK", "single_block.cuh",
     "gated[b * R + m] = gate(", "      __syncthreads();\n      // Phase U.", "      // Phase U."),
    ("single_block: queue write-back one slot off", "SINGLE_BLOCK", "single_block.cuh",
     "void write_back(", "queue_slot(p, stream0 + b, rows, offset, dilation, t)",
     "queue_slot(p, stream0 + b, rows, offset, dilation, t + 1)"),
    ("dual_block: chain writes x_l[t] one queue slot off", "DUAL_BLOCK", "dual_block.cuh",
     "// x_l[t] into its queue slot", "queue_slot(p, stream, rows, offset, dilation, t)",
     "queue_slot(p, stream, rows, offset, dilation, t + 1)"),
    ("dual_block: publisher releases before its warp copied the row", "DUAL_BLOCK", "dual_block.cuh",
     "__stcg(reinterpret_cast<float4*>(mailbox", "    __syncwarp();\n", ""),
    ("dual_block: publisher meets the chain's barrier with the chain's thread count", "DUAL_BLOCK", "dual_block.cuh",
     "for (uint64_t entry = 0;", "group_barrier(kDualPublishBarrier, kDualThreads)",
     "group_barrier(kDualPublishBarrier, kDualChainThreads)"),
    ("dual_block: a chain that gave up leaves the publisher at its barrier", "DUAL_BLOCK", "dual_block.cuh",
     "if (!ok) {  // release the publisher", "    group_arrive(kDualPublishBarrier, kDualThreads);\n", ""),
    ("cluster: one hand-off mbarrier never initialised", "CLUSTER", "persistent.cuh",
     "using H = std::conditional_t", "if (tid < 4) {", "if (tid < 3) {"),
    ("persistent: signal before the block finished storing x", "PERSISTENT", "persistent.cuh",
     "// x entering the next block's first layer", "        __syncthreads();\n", ""),
    ("cluster: expect_tx of the skip shares 4 bytes short", "CLUSTER", "persistent.cuh",
     "block_wait<H>(counters + Layout::kSkipCounter", "uint32_t(live) * S * 4,", "uint32_t(live) * S * 4 - 4,"),
    ("cluster: expect_tx of the input 4 bytes too many", "CLUSTER", "persistent.cuh",
     "block_wait<H>(counters + Layout::kInputCounter", "uint32_t(live) * R * 4,", "uint32_t(live) * R * 4 + 4,"),
    ("cluster: waits on the wrong mbarrier parity", "CLUSTER", "handoff.cuh",
     "const uint32_t parity", "static_cast<uint32_t>(phase & 1)", "static_cast<uint32_t>((phase + 1) & 1)"),
    ("cluster_roles: skip warps read h_i without the chain's named barrier", "CLUSTER_ROLES", "persistent.cuh",
     "void roles_skip_warps(", "      group_barrier(kRolesReadyBarrier + i, kPersistentThreads);\n", ""),
    ("cluster_roles: skip share sent before every skip warp has added its rows", "CLUSTER_ROLES", "persistent.cuh",
     "void roles_skip_warps(", "    group_barrier(kRolesSkipBarrier, kRoleThreads);\n", ""),
    ("cluster_roles: a chain that gave up leaves the skip warps at ready(0)", "CLUSTER_ROLES", "persistent.cuh",
     "if (roles_chain_stop() == t) {", "        group_arrive(kRolesReadyBarrier, kPersistentThreads);\n", ""),
    ("cluster_fold: the folded bias g_l left out", "CLUSTER_FOLD", "persistent.cuh",
     "const float tanh_in", "(v[0] + WeightsInShared::value(g + m))", "v[0]"),
    ("cluster_fold: x_l not written into its queue row", "CLUSTER_FOLD", "persistent.cuh",
     "x_this[m] = value;", "          p.queues[slot * R + m] = value;\n", ""),
    ("cluster_fold: W_cur(l) multiplies x_l, being written, instead of x_{l-1}", "CLUSTER_FOLD", "persistent.cuh",
     "dilate_w + int64_t(i) * 4 * R * R + R, 2 * R, R, R, x_prev", "x_prev", "x_this"),
    ("cluster_fold: the planner splits without the fold's bytes", "CLUSTER_FOLD", "persistent.cuh",
     "int capacity = 0;", "Layout(capacity + 1, 1, A, kFold, KS)", "Layout(capacity + 1, 1, A, false, KS)"),
    ("cluster_batched: every sampling warp draws from stream 0's logits", "CLUSTER_BATCHED", "persistent.cuh",
     "if (sampling_warp) {\n        const float*", "logits + own * A", "logits"),
    ("cluster_batched: the W_prev terms of every stream from stream 0's queue", "CLUSTER_BATCHED", "persistent.cuh",
     "void precompute_layers_batched(", "queue_slot(p, stream0 + k / R,", "queue_slot(p, stream0,"),
    ("cluster_batched: expect_tx of the skip shares counts one stream", "CLUSTER_BATCHED", "persistent.cuh",
     "block_wait<H>(counters + Layout::kSkipCounter", "uint32_t(live) * S * 4,", "S * 4,"),
    ("cluster_batched: the abort drain counts one stream's bytes sent", "CLUSTER_BATCHED", "persistent.cuh",
     "void add_sent_bytes(", "phases * bytes * live", "phases * bytes"),
    ("cluster_skip_blocks: expect_tx of the layers' h one layer short", "CLUSTER_SKIP_BLOCKS", "persistent.cuh",
     "block_wait<H>(counters + Layout::kInputCounter, t, 0,", "uint32_t(L) * R * 4", "uint32_t(L - 1) * R * 4"),
    ("cluster_skip_blocks: the head reads a skip block's rows one row off", "CLUSTER_SKIP_BLOCKS", "persistent.cuh",
     "skip block k's rows sit in its own slot", "* S + c + rows.first;", "* S + c + rows.first + 1;"),
    ("cluster_skip_blocks: the summed biases left out", "CLUSTER_SKIP_BLOCKS", "persistent.cuh",
     "const float sum = l == 0 ? v[0] : share[m] + v[0];", "l == L - 1 ? sum + bias[m] : sum", "sum"),
    ("cluster_skip_blocks: the head adds a skip share onto the row's last sum", "CLUSTER_SKIP_BLOCKS",
     "persistent.cuh", "skip block k's rows sit in its own slot", "skip_sum[c + rows.first + m] = share[m]",
     "skip_sum[c + rows.first + m] += share[m]"),
    ("cluster_skip_blocks: the planner's c one unit more than fits", "CLUSTER_SKIP_BLOCKS", "persistent.cuh",
     "int c = 0;  // rows of W_skip beside the chain", "1, c + Units::kSkip, 0, 0, true)",
     "1, c, 0, 0, true)"),
    ("cluster_skip_blocks: the abort drain misses the h sent to the skip blocks", "CLUSTER_SKIP_BLOCKS",
     "persistent.cuh", "and each of its layers' h into every skip block",
     "add(skip_rank0 + k, Layout::kInputCounter, phases, count * R * 4)",
     "add(skip_rank0 + k, Layout::kInputCounter, phases, 0)"),
    ("tensor_core: no cp.async wait before the slab is read", "TENSOR_CORE", "tensor_core.cuh",
     "const auto next_slab", "    ptx::cp_async_wait_group<kTcStages - 2>();\n", ""),
    ("tensor_core: ldmatrix B rows from the wrong k half", "TENSOR_CORE", "tensor_core.cuh",
     "int b_fragment_col(int lane)", "((lane >> 3) & 1)", "((lane >> 4) & 1)"),
    ("tensor_core: no barrier before a slab buffer is refilled", "TENSOR_CORE", "tensor_core.cuh",
     "const auto next_slab", "    __syncthreads();\n    ahead = following_slab", "    ahead = following_slab"),
]


def mutate(text: str, anchor: str, old: str, new: str) -> str:
    at = text.index(anchor)
    where = text.index(old, at)
    return text[:where] + new + text[where + len(old):]


CHECK = r"""
import sys, importlib.util, torch
sys.path.insert(0, {root!r})
spec = importlib.util.spec_from_file_location("cuda_host", {script!r})
cuda_host = importlib.util.module_from_spec(spec); spec.loader.exec_module(cuda_host)
import nvwavenet._C
spec = importlib.util.spec_from_file_location("nvwavenet_cuda_host", {module!r})
host = importlib.util.module_from_spec(spec); spec.loader.exec_module(host)
from nvwavenet import Impl, NVWaveNet
from nvwavenet.testing import compare_with_reference, random_cond_input, random_nv_wavenet_args
variant = Impl[{variant!r}]
batch = {{"SINGLE_BLOCK": 3, "DUAL_BLOCK": 2, "TENSOR_CORE": 9, "CLUSTER_BATCHED": 3}}.get(variant.name, 1)
tile = {{"SINGLE_BLOCK": 2, "TENSOR_CORE": 8, "CLUSTER_BATCHED": 2}}.get(variant.name, 0)
# Several layer blocks (hand-offs between them; CLUSTER_FOLD: 2 blocks of 6 in float16, 3 of 4 in float32).
layers = 12 if variant in (Impl.PERSISTENT, Impl.CLUSTER, Impl.CLUSTER_ROLES, Impl.CLUSTER_FOLD,
                           Impl.CLUSTER_BATCHED) else 3
# CLUSTER_SKIP_BLOCKS on the emulated 64 KB device at L6: float32 2 layer blocks with W_skip rows [0, 4),
# 2 skip blocks of 64/60 rows, 7 head blocks of 37/36 rows; float16 W_skip all in 1 skip block (c = 0).
device = 1 if variant == Impl.CLUSTER_SKIP_BLOCKS else 0
layers = 6 if variant == Impl.CLUSTER_SKIP_BLOCKS else layers
for dtype in (torch.float16, torch.float32):
    net = NVWaveNet(**random_nv_wavenet_args(32, 128, 256, layers, 2, seed=1), dtype=dtype)
    cond = random_cond_input(32, batch, layers, 6, seed=2)
    for seed in (0, 1, 2):
        compare_with_reference(cuda_host.HostNet(net, host, variant, seed=seed, streams_per_block=tile, device=device),
                               cond, variant)
# The abort path: a 1 ns limit with the block the others wait on starved must stop the kernel with
# its status report, not with an emulation error (tests/test_cuda_host.py does the same).
starved = {{"DUAL_BLOCK": 1, "PERSISTENT": 0, "CLUSTER": 0, "CLUSTER_ROLES": 0, "CLUSTER_FOLD": 0,
            "CLUSTER_BATCHED": 0, "CLUSTER_SKIP_BLOCKS": 0}}.get(variant.name)
if starved is not None:
    runner = cuda_host.HostNet(net, host, variant, spin_timeout_ns=1, starve_block=starved, streams_per_block=tile,
                               device=device)
    try:
        runner.infer(cond, selectors=torch.rand(batch, 6))
    except host.EmulationError:
        raise
    except RuntimeError as error:
        assert "kernel stopped" in str(error), str(error)
    else:
        raise AssertionError("a 1 ns wait limit with a starved block did not stop the kernel")
"""


def check(module: Path, variant: str, timeout: int = 600) -> tuple[bool, str]:
    """(passed, why not) for the variant's checks on the built module, in a child process (a crash
    or a hang is a catch too)."""
    code = CHECK.format(root=str(ROOT), script=str(ROOT / "scripts" / "cuda_host.py"), module=str(module),
                        variant=variant)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return False, f"no result within {timeout} s"
    if done.returncode == 0:
        return True, ""
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]  # the exception's first line, not its report
    return False, ((errors or lines)[-1] if lines else f"exit status {done.returncode}")[:300]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="substrings of the mutant names to run")
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or any(s in m[0] for s in args.only)]
    scratch = Path(tempfile.mkdtemp(prefix="cuda_host_mutants_"))
    survived = 0
    try:
        copy = scratch / "src"
        shutil.copytree(ROOT / "csrc", copy / "csrc")
        start = time.time()
        baseline = cuda_host.build(copy, args.jobs)
        for variant in sorted({m[1] for m in chosen}):
            ok, why = check(baseline, variant)
            if not ok:
                print(f"the unmutated kernels fail the {variant} checks: {why}")
                return 2
        print(f"unmutated: {', '.join(sorted({m[1] for m in chosen}))} pass ({time.time() - start:.0f} s)")
        for name, variant, file, anchor, old, new in chosen:
            path = copy / "csrc" / "cuda" / file
            original = path.read_text()
            start = time.time()
            try:
                path.write_text(mutate(original, anchor, old, new))
                try:
                    module = cuda_host.build(copy, args.jobs)
                    ok, why = check(module, variant)
                except subprocess.CalledProcessError as error:
                    ok, why = False, "does not compile: " + error.stderr.strip().splitlines()[-1][:200]
            finally:
                path.write_text(original)
            survived += ok
            print(f"{'SURVIVED' if ok else 'caught  '} {name} ({time.time() - start:.0f} s){'' if ok else ': ' + why}",
                  flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(chosen) - survived} of {len(chosen)} planted bugs caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
