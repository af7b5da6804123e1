"""Would folding W_cur(l+1) W_res(l) into one stored matrix keep the CUDA tolerances?

    python scripts/fold_replay.py [--layers 20] [--steps 64] [--seeds 3]

The fold shortens the dependent chain to one product per layer: the x_t-tap input of layer l+1 is
    W_cur(l+1) x_{l+1} = W_cur(l+1) x_l + F_l h_l + W_cur(l+1) b_res(l),   F_l = W_cur(l+1) W_res(l),
where W_cur(l+1) x_l runs beside layer l's own product (x_l is known when layer l starts) and only
F_l h_l (2R x R) waits for h_l. F_l is computed once on the host in float64 and stored in the
network's dtype, so it is rounded once more than the reference's separate products. This replays
the target network teacher-forced in float64 with F_l (and the folded bias) rounded to each dtype
and prints the relative L2 error of the logits against nvwavenet.reference (SPEC section 4
tolerances: float32 1e-4, float16 1e-2, bfloat16 3e-2). No GPU needed.
"""
from __future__ import annotations

import argparse

import torch

from nvwavenet import NVWaveNet, reference
from nvwavenet.testing import TOLERANCES, random_cond_input, random_nv_wavenet_args


def folded_logits(weights, cond, samples, u, fold_dtype):
    """Teacher-forced logits (batch, A, T) with the fold, in float64 arithmetic on the weights
    rounded to fold_dtype (as the kernels store them), F_l and its bias rounded once more."""
    net = reference.prepare(weights.to("cpu", fold_dtype), torch.float64, torch.device("cpu"))
    w, R, L = net.w, weights.n_residual, weights.n_layers
    cur = [w.dilate_w[l, :, :, 1] for l in range(L)]  # (2R, R): the x_l[t] tap
    fold = [(cur[l + 1] @ w.res_w[l]).to(fold_dtype).double() for l in range(L - 1)]
    fold_b = [(cur[l + 1] @ w.res_b[l]).to(fold_dtype).double() for l in range(L - 1)]
    state = reference.init_state(weights, cond.shape[1])
    queues, history = state["queues"], state["history"].long()
    offsets, dilations = reference.slot_table(weights, "cpu")
    out = []
    for t in range(cond.shape[3]):
        slots = offsets + t % dilations
        pasts = queues[:, slots]
        x = reference._embed(net, history[:, 0], history[:, 1])
        inputs, skip = [], torch.zeros(x.shape[0], weights.n_skip, dtype=torch.float64)
        cur_x = x @ cur[0].T  # W_cur(0) x_0
        for l in range(L):
            inputs.append(x)
            pre = w.dilate_b[l] + cond[:, :, l, t].T + pasts[:, l] @ w.dilate_w[l, :, :, 0].T + cur_x
            h = reference._gate(pre, R)
            if l < L - 1:
                cur_x = x @ cur[l + 1].T + h @ fold[l].T + fold_b[l]  # the chain: one product on h
                x = x + h @ w.res_w[l].T + w.res_b[l]  # off the chain: queues and W_cur(l+2) x_{l+1}
            skip = skip + h @ w.skip_w[l].T + w.skip_b[l]
        queues[:, slots] = torch.stack(inputs, dim=1)
        out.append(reference._head(net, skip))
        history = torch.stack([history[:, 1], samples[:, t].long()], dim=1)
    return torch.stack(out, dim=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"R64/S256/A256 L={args.layers} max_dilation=512, {args.steps} steps teacher-forced, float64 replay")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        worst = worst_unfolded = 0.0
        for seed in range(args.seeds):
            net = NVWaveNet(**random_nv_wavenet_args(64, 256, 256, args.layers, 512, seed=seed), dtype=dtype)
            cond = random_cond_input(64, 2, args.layers, args.steps, seed=seed).double()
            u = torch.rand(2, args.steps, generator=torch.Generator().manual_seed(seed))
            samples, ref = reference.incremental(net.weights, cond, u, return_logits=True)
            got = folded_logits(net.weights, cond, samples, u, dtype)
            worst = max(worst, float((got - ref).norm() / ref.norm()))
            _, unfolded = reference.incremental(net.weights.to("cpu", dtype), cond, u, teacher_forcing=samples,
                                                return_logits=True)
            worst_unfolded = max(worst_unfolded, float((unfolded.double() - ref).norm() / ref.norm()))
        print(f"{str(dtype).replace('torch.', ''):<9} weights rounded, folded: worst relative L2 {worst:.2e}; "
              f"unfolded: {worst_unfolded:.2e} (tolerance {TOLERANCES[dtype]:g})")


if __name__ == "__main__":
    main()
