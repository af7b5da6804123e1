"""Params.slots / Params.positions in every CUDA variant's own source, run on the CPU by the host
build (scripts/cuda_host.py): streams at different positions, in arbitrary rows of a pool, equal
the same variant run on each stream alone, bit for bit, and rows no call names stay untouched."""
from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from nvwavenet import Impl, NVWaveNet, engines
from nvwavenet.state import new_state
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cuda_host.py"
if SCRIPT.exists():
    _spec = importlib.util.spec_from_file_location("cuda_host", SCRIPT)
    cuda_host = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(cuda_host)

pytestmark = pytest.mark.skipif(
    not SCRIPT.exists() or shutil.which(cuda_host.compiler()) is None or platform.machine() != "x86_64"
    or not engines.has_extension(),
    reason="the host build of csrc/cuda (scripts/cuda_host.py, g++ on x86-64) and nvwavenet._C are needed")

R, L, T = 32, 6, 7
# (stream, pool row, position before, steps) per call: streams join at different steps, in
# rows out of order, and row 1 is never named.
CALLS = [
    [(0, 2, 0, 3)],
    [(1, 3, 0, 2), (0, 2, 3, 2)],
    [(2, 0, 0, 2), (0, 2, 5, 2), (1, 3, 2, 2)],
    [(1, 3, 4, 3), (2, 0, 2, 3)],
    [(2, 0, 5, 2)],
]


@pytest.fixture(scope="module")
def host():
    try:
        return cuda_host.load()
    except subprocess.CalledProcessError as error:
        pytest.fail(f"the host build does not compile:\n{error.stderr[-6000:]}")


@pytest.mark.parametrize("variant", [Impl.SINGLE_BLOCK, Impl.DUAL_BLOCK, Impl.PERSISTENT, Impl.CLUSTER,
                                     Impl.TENSOR_CORE, Impl.CLUSTER_ROLES, Impl.CLUSTER_FOLD, Impl.CLUSTER_BATCHED,
                                     Impl.CLUSTER_SKIP_BLOCKS],
                         ids=lambda variant: variant.name)
def test_every_variant_reads_and_writes_each_streams_own_row_and_slot(host, variant):
    net = NVWaveNet(**random_nv_wavenet_args(R, 128, 256, L, 4, seed=5))
    # CLUSTER_BATCHED with 2 streams per cluster: the 3-stream calls make a full and a partial group.
    alone_net = cuda_host.HostNet(net, host, variant, streams_per_block=2 if variant == Impl.CLUSTER_BATCHED else 0)
    conds = [random_cond_input(R, 1, L, T, seed=20 + i) for i in range(3)]
    us = [torch.rand(1, T, generator=torch.Generator().manual_seed(30 + i)) for i in range(3)]
    pool = new_state(net.weights, 4)
    pool["queues"].normal_(generator=torch.Generator().manual_seed(1))  # any state: row 1 must keep it
    row1 = pool["queues"][1].clone()
    for row in (0, 2, 3):
        pool["queues"][row].zero_()
    got = [[] for _ in conds]
    for call in CALLS:
        steps = call[0][3]
        assert all(entry[3] == steps for entry in call)
        cond = torch.cat([conds[s][..., p:p + steps] for s, _, p, _ in call], dim=1).contiguous()
        u = torch.cat([us[s][:, p:p + steps] for s, _, p, _ in call]).contiguous()
        out = torch.full((len(call), steps), -1, dtype=torch.int32)
        slots = torch.tensor([row for _, row, _, _ in call], dtype=torch.int32)
        positions = torch.tensor([p for _, _, p, _ in call], dtype=torch.int64)
        p = alone_net.params(cond, u, out, pool)
        p.pool_rows, p.slots, p.positions = 4, slots.data_ptr(), positions.data_ptr()
        plan = host.plan(p, int(variant))
        assert plan["runnable"], plan["reason"]
        workspace = torch.empty(plan["workspace_bytes"], dtype=torch.uint8)
        p.workspace, p.workspace_bytes = workspace.data_ptr(), workspace.numel()
        host.generate(p, int(variant), 0, starve_block=-1)
        for i, (s, _, _, _) in enumerate(call):
            got[s].append(out[i])
    for s in range(3):
        alone = alone_net.infer(conds[s], selectors=us[s])
        assert torch.equal(torch.cat(got[s]), alone[0]), f"{variant.name}: stream {s}"
    assert torch.equal(pool["queues"][1], row1)
