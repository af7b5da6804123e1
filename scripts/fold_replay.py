"""CLUSTER_FOLD's order of computation replayed in float64 (no GPU): does the W_cur(l+1) W_res(l)
fold keep the CUDA tolerances?

    python scripts/fold_replay.py [--layers 20] [--steps 64] [--seeds 3] [--layers-per-block 2]
    python scripts/fold_replay.py --plans     # CLUSTER's and CLUSTER_FOLD's splits of R64/S256/A256

The fold shortens the dependent chain to one product per layer: the x_t-tap input of layer l+1 is
    W_cur(l+1) x_{l+1} = W_cur(l+1) x_l + F_l h_l + g_l,   F_l = W_cur(l+1) W_res(l), g_l = W_cur(l+1) b_res(l),
where W_cur(l+1) x_l needs only x_l, and F_l h_l (2R x R) waits for h_l. CLUSTER_FOLD does this
inside each layer block of its cluster; a block's first layer multiplies the x that arrived, and x
leaving a block is made with W_res as everywhere else (csrc/cuda/persistent.cuh, fold_layers).
F and g come from the pack the kernels get (nvwavenet.engines.PackedWeights: float64 from the
stored weights, rounded once to the network's dtype), so they are rounded once more than the
reference's separate products. :class:`FoldedReplay` replays that order, block by block, with
the state carried across calls as the kernels carry it; tests/test_fold_replay.py checks it against
``reference.incremental`` over chunked calls. This script prints, per dtype, the relative L2
error of teacher-forced logits against nvwavenet.reference with the weights and the fold rounded
to the dtype (SPEC section 4 tolerances: float32 1e-4, float16 1e-2, bfloat16 3e-2).
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from nvwavenet import NVWaveNet, engines, reference
from nvwavenet.sampling import select_classes
from nvwavenet.testing import TOLERANCES, random_cond_input, random_nv_wavenet_args


def layer_split(layers: int, layer_blocks: int) -> list[int]:
    """Layers per layer block as the cluster planner splits them (PersistentSplit: the first
    ``layers % layer_blocks`` blocks hold one more)."""
    base, extra = divmod(layers, layer_blocks)
    return [base + (1 if j < extra else 0) for j in range(layer_blocks)]


class FoldedReplay:
    """SPEC section 1 in CLUSTER_FOLD's order, in float64 on the CPU, with the weights rounded to
    ``dtype`` first (float64: not rounded) and the fold packed for ``dtype``. Enough of NVWaveNet's
    interface for nvwavenet.testing's generate_in_chunks: ``infer`` continues from ``state`` (a
    reference state, float64 queues) and updates it in place."""

    def __init__(self, weights, layers_per_block: list[int], dtype: torch.dtype = torch.float64):
        if sum(layers_per_block) != weights.n_layers or min(layers_per_block) < 1:
            raise ValueError(f"layers_per_block: expected positive counts summing to L = {weights.n_layers}, "
                             f"got {layers_per_block}")
        self.weights, self.blocks, self.A = weights, list(layers_per_block), weights.n_classes
        self.net = reference.prepare(weights.to("cpu", dtype), torch.float64, torch.device("cpu"))
        packed = engines.PackedWeights.pack(weights, torch.device("cpu"), dtype)
        self.fold_w, self.fold_b = packed.fold_w.double(), packed.fold_b.double()

    def init_state(self, batch: int, device="cpu") -> dict:
        return reference.init_state(self.weights, batch)

    def infer(self, cond_input, implementation=None, *, selectors, teacher_forcing=None,
              return_logits: bool = False, state: dict | None = None):
        w, R, L = self.net.w, self.weights.n_residual, self.weights.n_layers
        batch, samples = cond_input.shape[1], cond_input.shape[3]
        state = self.init_state(batch) if state is None else state
        queues, history, position = state["queues"], state["history"].long(), int(state["position"])
        offsets, dilations = reference.slot_table(self.weights, "cpu")
        cond = cond_input.double()
        out = torch.empty(batch, samples, dtype=torch.int32)
        logits_out = torch.empty(batch, self.A, samples, dtype=torch.float64)
        for t in range(samples):
            slots = offsets + (position + t) % dilations
            pasts = queues[:, slots]
            x = reference._embed(self.net, history[:, 0], history[:, 1])
            inputs, skip, first = [], torch.zeros(batch, self.weights.n_skip, dtype=torch.float64), 0
            for count in self.blocks:
                cur_x = x @ w.dilate_w[first, :, :, 1].T  # the block's first layer multiplies x
                for i in range(count):
                    layer = first + i
                    inputs.append(x)
                    pre = w.dilate_b[layer] + cond[:, :, layer, t].T + pasts[:, layer] @ w.dilate_w[layer, :, :, 0].T
                    h = reference._gate(pre + cur_x, R)
                    skip = skip + h @ w.skip_w[layer].T + w.skip_b[layer]
                    if layer < L - 1:
                        if i < count - 1:  # the fold: the next layer's x_t-tap term from x_l and h_l
                            cur_x = x @ w.dilate_w[layer + 1, :, :, 1].T + (h @ self.fold_w[layer].T
                                                                            + self.fold_b[layer])
                        x = x + (h @ w.res_w[layer].T + w.res_b[layer])
                first += count
            queues[:, slots] = torch.stack(inputs, dim=1).to(queues.dtype)
            logits = reference._head(self.net, skip)
            drawn = select_classes(logits, selectors[:, t].double())
            out[:, t] = drawn.to(torch.int32)
            logits_out[:, :, t] = logits
            fed = drawn if teacher_forcing is None else teacher_forcing[:, t].long()
            history = torch.stack([history[:, 1], fed], dim=1)
        state["history"].copy_(history)
        state["position"].fill_(position + samples)
        return (out, logits_out) if return_logits else out


def print_plans(layers_list=(20, 30)) -> None:
    """The planners' splits (launch.cu on the host build's emulated sm_90, 227 KB per block) of
    R64/S256/A256 for CLUSTER and CLUSTER_FOLD. Barriers per step in the layer blocks, from
    persistent.cuh's loops: CLUSTER two per layer but the network's last (2L - 1); CLUSTER_FOLD one
    per layer and one more per block that hands x on (L + layer blocks - 1). Hand-offs on the
    step's path: x into each layer block (x_0 from the sampler, then block to block), then the skip
    shares, z and the logits (layer blocks + 3)."""
    spec = importlib.util.spec_from_file_location("cuda_host", Path(__file__).with_name("cuda_host.py"))
    cuda_host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cuda_host)
    host = cuda_host.load(sizes="X(64, 256, 256)")
    from nvwavenet import Impl

    print(f"{'variant':<13} {'dtype':<9} {'L':>3} {'layer blocks':>12} {'head blocks':>11} {'layers/block':>12} "
          f"{'shared B':>9} {'hand-offs':>9} {'barriers':>8}")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for layers in layers_list:
            net = NVWaveNet(**random_nv_wavenet_args(64, 256, 256, layers, 512), dtype=dtype)
            for variant in (Impl.CLUSTER, Impl.CLUSTER_FOLD):
                runner = cuda_host.HostNet(net, host, variant)
                p = runner.params(random_cond_input(64, 1, layers, 1), torch.rand(1, 1),
                                  torch.zeros(1, 1, dtype=torch.int32), net.init_state(1))
                plan = host.plan(p, int(variant))
                name = str(dtype).replace("torch.", "")
                if not plan["runnable"]:
                    print(f"{variant.name:<13} {name:<9} {layers:>3}  refused: {plan['reason']}")
                    continue
                blocks = plan["layer_blocks"]
                barriers = 2 * layers - 1 if variant is Impl.CLUSTER else layers + blocks - 1
                print(f"{variant.name:<13} {name:<9} {layers:>3} {blocks:>12} {plan['head_blocks']:>11} "
                      f"{plan['max_layers_per_block']:>12} {plan['shared_bytes']:>9} {blocks + 3:>9} {barriers:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--layers-per-block", type=int, default=2,
                        help="the fold's split (2: R64/S256/A256 float16's, from the planner)")
    parser.add_argument("--plans", action="store_true", help="print the planners' splits instead (host build)")
    args = parser.parse_args()
    if args.plans:
        print_plans()
        return
    blocks = layer_split(args.layers, -(-args.layers // args.layers_per_block))
    print(f"R64/S256/A256 L={args.layers} max_dilation=512, layer blocks {blocks}, {args.steps} steps "
          f"teacher-forced, float64 replay")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        worst = worst_unfolded = 0.0
        for seed in range(args.seeds):
            net = NVWaveNet(**random_nv_wavenet_args(64, 256, 256, args.layers, 512, seed=seed), dtype=dtype)
            cond = random_cond_input(64, 2, args.layers, args.steps, seed=seed).double()
            u = torch.rand(2, args.steps, generator=torch.Generator().manual_seed(seed))
            samples, ref = reference.incremental(net.weights, cond, u, return_logits=True)
            _, got = FoldedReplay(net.weights, blocks, dtype).infer(cond, selectors=u, teacher_forcing=samples,
                                                                     return_logits=True)
            worst = max(worst, float((got - ref).norm() / ref.norm()))
            _, unfolded = reference.incremental(net.weights.to("cpu", dtype), cond, u, teacher_forcing=samples,
                                                return_logits=True)
            worst_unfolded = max(worst_unfolded, float((unfolded.double() - ref).norm() / ref.norm()))
        print(f"{str(dtype).replace('torch.', ''):<9} weights rounded, folded: worst relative L2 {worst:.2e}; "
              f"unfolded: {worst_unfolded:.2e} (tolerance {TOLERANCES[dtype]:g})")


if __name__ == "__main__":
    main()
