"""One small generation with each CUDA variant, for compute-sanitizer (scripts/gpu_check.sh).

    compute-sanitizer --tool memcheck python scripts/cuda_sanitize_case.py [VARIANT ...]

Small on purpose (sanitizers slow kernels down by orders of magnitude), but with every feature a
kernel has: two streams, several layers with different dilations, teacher forcing for one call
and free running for the next (state carried over), logits output, float16 conditioning. Set
NVWAVENET_SPIN_TIMEOUT_MS high (gpu_check.sh does): the cooperating blocks wait on each other.
"""
from __future__ import annotations

import sys

import torch

from nvwavenet import Impl, NVWaveNet, autotune
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

# CLUSTER_BATCHED's plan gives each of two streams its own cluster (CLUSTER's kernel): run both in one.
_chosen_tile = autotune.streams_per_block
autotune.streams_per_block = lambda name, batch, sms: 2 if name == "CLUSTER_BATCHED" else _chosen_tile(name, batch, sms)


def run(variant: Impl) -> None:
    # CLUSTER_SKIP_BLOCKS in float32 at L=6, where it has a skip block (3 layer blocks with W_skip rows
    # [0, 124), 3 head blocks, 1 skip block); at this float16 size its layer blocks hold all of W_skip.
    skip_blocks = variant == Impl.CLUSTER_SKIP_BLOCKS
    layers = 6 if skip_blocks else 3
    net = NVWaveNet(**random_nv_wavenet_args(64, 256, 256, layers, 2, seed=1),
                    dtype=torch.float32 if skip_blocks else torch.float16)
    cond = random_cond_input(64, 2, layers, 6, device="cuda", dtype=torch.float16)
    state = net.init_state(2, "cuda")
    teacher = torch.randint(0, 256, (2, 3), dtype=torch.int32, device="cuda")
    first, logits = net.infer(cond[..., :3], variant, teacher_forcing=teacher, return_logits=True, state=state)
    second = net.infer(cond[..., 3:], variant, state=state)
    torch.cuda.synchronize()
    out = torch.cat([first, second], dim=1)
    assert bool(((out >= 0) & (out < 256)).all()), "samples out of range"
    assert bool(torch.isfinite(logits).all()), "logits not written"
    print(f"{variant.name}: ok ({net.last_implementation.name})", flush=True)


if __name__ == "__main__":
    names = sys.argv[1:] or ["SINGLE_BLOCK", "DUAL_BLOCK", "PERSISTENT", "CLUSTER", "TENSOR_CORE",
                             "CLUSTER_ROLES", "CLUSTER_FOLD", "CLUSTER_BATCHED", "CLUSTER_SKIP_BLOCKS"]
    if not torch.cuda.is_available():
        raise SystemExit(f"{__file__}: needs a CUDA GPU")
    for name in names:
        run(Impl[name])
