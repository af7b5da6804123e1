"""SHA-256 digests of ``NVWaveNet.infer``'s outputs and updated state on fixed seeds, on the CPU.

Run it on two trees (e.g. main and a branch that changes how ``infer`` reaches the engine) and
compare the printed JSON: equal digests mean bit-for-bit equal samples, logits and states. Cases
cover teacher forcing, ``prime``, ``return_logits``, strided and float16 conditioning, strided
selectors, state carried across calls, the weights' precisions, thread counts and every
instruction set this CPU has.

    PYTHONPATH=. python scripts/infer_digests.py > digests.json
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from nvwavenet import NVWaveNet, engines
from nvwavenet.testing import random_cond_input, random_nv_wavenet_args

R, S, A, L, MAX_DILATION = 16, 32, 64, 7, 8


def digest(*tensors) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(str((tensor.dtype, tuple(tensor.shape))).encode())
        sha.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:16]


def cases(net: NVWaveNet, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch, samples = 3, 40
    cond = random_cond_input(R, batch, L, samples, seed=seed)
    u = torch.rand(batch, samples, generator=g)
    teacher = torch.randint(0, A, (batch, samples), generator=g, dtype=torch.int32)
    strided = cond.permute(3, 1, 2, 0).contiguous().permute(3, 1, 2, 0)
    u_strided = torch.rand(samples, batch, generator=g).t()
    out = {
        "plain": digest(net.infer(cond, selectors=u)),
        "logits": digest(*net.infer(cond, selectors=u, return_logits=True)),
        "teacher": digest(*net.infer(cond, selectors=u, teacher_forcing=teacher, return_logits=True)),
        "prime": digest(*net.infer(cond, selectors=u, prime=teacher[:, :13], return_logits=True)),
        "prime_all": digest(net.infer(cond, selectors=u, prime=teacher)),
        "strided": digest(net.infer(strided, selectors=u_strided)),
        "half_cond": digest(*net.infer(cond.half()[..., ::2], selectors=u[:, ::2], return_logits=True)),
        "generator": digest(net.infer(cond, generator=torch.Generator().manual_seed(seed))),
        "empty": digest(net.infer(cond[..., :0], selectors=u[:, :0])),
    }
    state = net.init_state(batch)
    pieces = []
    for first, last in ((0, 1), (1, 9), (9, 9), (9, 40)):
        pieces.append(net.infer(cond[..., first:last], selectors=u[:, first:last], state=state))
    out["state_chunks"] = digest(torch.cat(pieces, dim=1), state["queues"], state["history"], state["position"])
    state = net.init_state(batch)
    out["state_teacher"] = digest(*net.infer(cond, selectors=u, teacher_forcing=teacher, state=state,
                                             return_logits=True), state["queues"], state["history"])
    one = net.init_state(1)
    out["batch1"] = digest(net.infer(cond[:, 1:2], selectors=u[1:2], state=one), one["queues"], one["history"])
    return out


def main() -> None:
    results = {}
    isas = ["generic", "avx2+fma", "avx512"]
    native = engines.extension().build_info()["cpu_isa"]
    isas = isas[:isas.index(native) + 1]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for threads in (1, 2):
            net = NVWaveNet(**random_nv_wavenet_args(R, S, A, L, MAX_DILATION, seed=7), dtype=dtype,
                            num_threads=threads)
            for isa in isas:
                os.environ["NVWAVENET_CPU_ISA"] = isa
                results[f"{dtype}/threads{threads}/{isa}"] = cases(net, seed=11)
    os.environ.pop("NVWAVENET_CPU_ISA")
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
