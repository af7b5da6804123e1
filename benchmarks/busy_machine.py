"""A busy machine: PyTorch's OpenMP wait policy against training and CPU engine speed.

Each measurement is a fresh process (the policy is read once, when torch is loaded):

- ``default``: imports torch before nvwavenet, so libgomp keeps its own default (spinning);
- ``passive``: imports nvwavenet first, which sets ``OMP_WAIT_POLICY=PASSIVE`` (nvwavenet/__init__.py).

It trains the demo's model (``DemoSettings``) for ``--steps`` steps, then, in the same process
after those PyTorch operations, runs the CPU engine (R64/S256/A256, L=20) on 8000 samples per
stream at batch 1 and 4. The two modes alternate ``--rounds`` times, with ``--busy-core N`` also
while ``yes`` runs pinned to core N (started and stopped here), since other load on a shared
machine changes by the minute: the table gives each figure's range over the rounds.

    python benchmarks/busy_machine.py [--rounds 2] [--steps 10] [--busy-core 1]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
MEASURES = [("train_steps_per_s", "training steps/s", "{:.2f}"), ("engine_b1", "engine batch 1, samples/s", "{:,.0f}"),
            ("engine_b4", "engine batch 4, samples/s (all streams)", "{:,.0f}")]


def measure(mode: str, steps: int) -> dict:
    """One measurement in this process (run as ``--child MODE``)."""
    if mode == "default":
        import torch  # noqa: F401 (loaded first: libgomp keeps its default wait policy)
    import nvwavenet  # noqa: F401 (before torch in the passive mode: it sets the policy)
    import torch
    from nvwavenet import Impl, NVWaveNet
    from nvwavenet.data import TrainingWindows, chirp
    from nvwavenet.demo import DemoSettings
    from nvwavenet.model import WaveNet
    from nvwavenet.testing import random_cond_input, random_nv_wavenet_args
    from nvwavenet.training import TrainConfig, train

    s = DemoSettings()
    torch.manual_seed(0)
    model = WaveNet(n_in_channels=s.n_classes, n_layers=s.n_layers, max_dilation=s.max_dilation,
                    n_residual_channels=s.n_residual, n_skip_channels=s.n_skip, n_out_channels=s.n_classes,
                    n_cond_channels=s.n_mels, upsamp_window=4 * s.hop, upsamp_stride=s.hop)
    clip = chirp(100, 400, s.sample_rate, int(s.sample_rate * s.seconds))
    windows = TrainingWindows([clip], s.sample_rate, model, targets_per_window=16 * s.hop, mel=s.mel())
    start = time.perf_counter()
    train(model, windows, TrainConfig(steps=steps, batch_size=s.batch_size, progress=False))
    result = {"policy": os.environ.get("OMP_WAIT_POLICY") or "libgomp default",
              "train_steps_per_s": steps / (time.perf_counter() - start)}
    net = NVWaveNet(**random_nv_wavenet_args(64, 256, 256, 20, 512, seed=0))
    for batch in (1, 4):
        cond = random_cond_input(64, batch, 20, 8000)
        start = time.perf_counter()
        net.infer(cond, Impl.AUTO)
        result[f"engine_b{batch}"] = batch * 8000 / (time.perf_counter() - start)
    return result


def run_rounds(rounds: int, steps: int) -> dict[str, list[dict]]:
    results = {"default": [], "passive": []}
    # Without the policy that importing nvwavenet here (for its bench helpers) put in this environment.
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    for _ in range(rounds):
        for mode in results:
            child = subprocess.run([sys.executable, __file__, "--child", mode, "--steps", str(steps)],
                                   capture_output=True, text=True, check=True, env=env)
            results[mode].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(mode, results[mode][-1], flush=True)
    return results


def load_average() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--busy-core", type=int, help="also measure while `yes` runs pinned to this core")
    parser.add_argument("--child", choices=["default", "passive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.environ.get("OMP_WAIT_POLICY") and not args.child:
        parser.error("OMP_WAIT_POLICY is set: unset it, this script compares the policies itself")
    if args.child:
        print(json.dumps(measure(args.child, args.steps)))
        return 0

    from nvwavenet import bench

    rows = []
    conditions = [("other jobs only", None)] + ([(f"plus `yes` on core {args.busy_core}", args.busy_core)]
                                                if args.busy_core is not None else [])
    for label, core in conditions:
        busy = subprocess.Popen(["taskset", "-c", str(core), "yes"], stdout=subprocess.DEVNULL) if core is not None \
            else None
        try:
            before = load_average()
            results = run_rounds(args.rounds, args.steps)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        for mode, runs in results.items():
            cells = [f"{label} (load average {before} before)", runs[0]["policy"]]
            for key, _, fmt in MEASURES:
                values = [run[key] for run in runs]
                cells.append(f"{fmt.format(min(values))} to {fmt.format(max(values))}")
            rows.append(cells)
    header = ["load", "OMP_WAIT_POLICY", *[name for _, name, _ in MEASURES]]
    command = "python benchmarks/busy_machine.py " + shlex.join(sys.argv[1:])
    body = "\n".join([
        "## A busy machine, CPU", "",
        f"The demo's model trained for {args.steps} steps, then the CPU engine (R64/S256/A256 L=20, 8000 samples per "
        f"stream) in the same process; each mode {args.rounds} times, alternating; ranges over the runs.",
        bench.environment_line(bench.environment(__import__("torch").device("cpu")), command), "",
        bench.markdown_table(header, rows)])
    bench.update_results(RESULTS, "busy-machine-cpu", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
