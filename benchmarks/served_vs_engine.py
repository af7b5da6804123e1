"""Served streams against the raw engine, and the server's own host overhead per turn.

One model (R64/S256/A256 L=20 max dilation 512, 24 kHz, hop 300, 80 mels, float32, random
weights), saved as a checkpoint with ``nvwavenet.checkpoint.save_model``, served as a user would
(``python -m nvwavenet serve CKPT --chunk-frames 4`` in its own process); for each stream count N:

- served: N WebSocket clients (``nvwavenet.client``, asyncio, in this process, over loopback) each
  vocode one utterance of ``--frames`` frames sent in 4-frame messages as fast as the server takes
  them; aggregate samples/s from the first connection to the last audio;
- raw engine: ``NVWaveNet.infer`` at batch N on the same utterances' conditioning, in 4-frame
  calls carrying the state (the server's call size), only the calls timed: what the engine alone
  does with the same work; and the same with the conditioning of each chunk (batched, in this
  process) timed too, which the server has to do as well;
- inside the server, from its ``nvwavenet_scheduler_seconds`` metric over the served round: engine
  time, conditioning time, and the rest of each turn (the scheduler's host overhead: state,
  selectors, audio, bookkeeping), each as a share of the engine's time; the engine's own rate
  there (served samples / engine seconds), beside the raw engine's; and the share of the served
  rounds' wall time the engine loop spent outside any turn (waiting for frames, for the clients
  to take audio, or for a core).

The server's conditioning is work the raw engine is given for free, so "served / raw" counts it
against the server; "served / (raw + conditioning)" does not. The clients share the machine with
the server.

    python benchmarks/served_vs_engine.py [--streams 8,32] [--frames 40] [--results benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from nvwavenet import bench
from nvwavenet.checkpoint import save_model
from nvwavenet.client import Client
from nvwavenet.testing import serve_process
from nvwavenet.vocoder import Vocoder
from streaming import make_model

HERE = Path(__file__).resolve().parent
CHUNK_FRAMES = 4


def utterance(frames: int, seed: int) -> torch.Tensor:
    return torch.randn(80, frames, generator=torch.Generator().manual_seed(seed)) - 5.0


def server_counters(url: str) -> dict[str, float]:
    """The scheduler's seconds by part, and the engine calls and streams over them, so far."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    counters = {part: float(value) for part, value in
                re.findall(r'^nvwavenet_scheduler_seconds\{part="(\w+)"\} (\S+)$', text, re.MULTILINE)}
    for name in ("count", "sum"):
        counters[f"calls_{name}"] = float(re.search(rf"^nvwavenet_batch_streams_{name} (\S+)$", text, re.MULTILINE)[1])
    return counters


async def served_round(client: Client, mels: list[torch.Tensor]) -> tuple[int, float]:
    """(samples, seconds) from the first connection to the last audio."""
    async def one(seed: int, mel: torch.Tensor) -> int:
        samples = 0
        async for chunk in client.astream(torch.split(mel, CHUNK_FRAMES, dim=1), seed=seed, sample_format="pcm16"):
            samples += chunk.shape[0]
        return samples

    start = time.perf_counter()
    total = sum(await asyncio.gather(*(one(seed, mel) for seed, mel in enumerate(mels))))
    return total, time.perf_counter() - start


def raw_rates(vocoder: Vocoder, mels: list[torch.Tensor]) -> tuple[float, float]:
    """Samples/s of ``NVWaveNet.infer`` alone at batch len(mels), in 4-frame calls with state; and
    of the same calls with each chunk's conditioning (``Vocoder.condition_chunk``, batched) counted."""
    conditioner, net = vocoder.conditioner, vocoder.net
    batch = torch.stack(mels)
    history, state = conditioner.start(len(mels)), net.init_state(len(mels))
    generator = torch.Generator().manual_seed(0)
    net.infer(conditioner(torch.cat([history, batch[:, :, :1]], dim=2)), generator=generator,
              state=net.init_state(len(mels)))  # warm-up (plans, pool threads)
    engine = conditioning = samples = 0
    buffer = torch.empty(len(mels) * conditioner.cond_weight.shape[0] * CHUNK_FRAMES * conditioner.hop)  # as the server's
    for chunk in torch.split(batch, CHUNK_FRAMES, dim=2):
        start = time.perf_counter()
        cond, history = vocoder.condition_chunk(history, chunk, buffer=buffer)
        conditioning += time.perf_counter() - start
        start = time.perf_counter()
        classes = net.infer(cond, vocoder.implementation, generator=generator, state=state)
        engine += time.perf_counter() - start
        samples += classes.numel()
    return samples / engine, samples / (engine + conditioning)


HEADER = ["streams", "served samples/s", "raw engine samples/s", "served / raw", "raw engine + conditioning samples/s",
          "served / (raw + conditioning)", "server engine s", "server engine samples/s", "server idle / wall",
          "conditioning / engine", "host overhead / engine", "server deliveries", "streams per delivery"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="8,32", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--frames", type=int, default=40, help="frames per utterance (40: 0.5 s at 24 kHz)")
    parser.add_argument("--rounds", type=int, default=3, help="served and raw rounds per stream count (medians)")
    parser.add_argument("--note", default="", help="a line about the machine's conditions, for the results")
    bench.add_results_option(parser, HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    # This process's PyTorch work (conditioning the raw engine's input, the clients) on one thread:
    # the server and the engine have the CPUs.
    torch.set_num_threads(1)
    command = "python benchmarks/served_vs_engine.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    env = bench.environment(torch.device("cpu"))
    load_before = os.getloadavg()
    model, audio_config = make_model(64, 256, 20, 512)
    vocoder = Vocoder(model, audio_config)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = save_model(Path(folder) / "r64-l20", model, audio_config)
        # --admit all: the comparison is at a fixed stream count, beyond the real-time capacity if need be.
        with serve_process(checkpoint, "--max-streams", str(max(args.streams)), "--chunk-frames", str(CHUNK_FRAMES),
                           "--admit", "all", stop_timeout=60) as server:
            url = server.url
            client = Client(url, timeout=600)
            asyncio.run(served_round(client, [utterance(CHUNK_FRAMES, 999)]))  # warm-up
            for count in args.streams:
                mels = [utterance(args.frames, seed) for seed in range(count)]
                # Rounds alternate served and raw, so that a change in the machine's load falls on
                # both; medians over the rounds.
                before = server_counters(url)
                served, raw, raw_conditioned, rounds = [], [], [], []
                for _ in range(args.rounds):
                    rounds.append(asyncio.run(served_round(client, mels)))
                    served.append(rounds[-1][0] / rounds[-1][1])
                    for rates, rate in zip((raw, raw_conditioned), raw_rates(vocoder, mels)):
                        rates.append(rate)
                after = server_counters(url)
                spent = {name: after[name] - before[name] for name in after}
                served, raw, raw_conditioned = map(statistics.median, (served, raw, raw_conditioned))
                host = spent["turn"] - spent["engine"] - spent["conditioning"]
                samples, wall = map(sum, zip(*rounds))
                rows.append([str(count), f"{served:,.0f}", f"{raw:,.0f}", f"{served / raw:.2f}x",
                             f"{raw_conditioned:,.0f}", f"{served / raw_conditioned:.2f}x",
                             f"{spent['engine']:.1f}", f"{samples / spent['engine']:,.0f}",
                             f"{max(0.0, 1 - spent['turn'] / wall):.1%}", f"{spent['conditioning'] / spent['engine']:.1%}",
                             f"{host / spent['engine']:.1%}", f"{spent['calls_count']:.0f}",
                             f"{spent['calls_sum'] / spent['calls_count']:.1f}"])
                print(bench.text_table(HEADER, rows[-1:]), flush=True)
    load_after = os.getloadavg()
    lines = [f"R64/S256/A256 L=20 max dilation 512, 24 kHz, hop 300, 80 mels, float32, random weights. Server: "
             f"`python -m nvwavenet serve CKPT --chunk-frames {CHUNK_FRAMES}` in its own process; clients: asyncio "
             f"WebSockets in the benchmark's process, one {args.frames}-frame utterance each in 4-frame messages; "
             f"medians of {args.rounds} rounds, served and raw alternating; the server's shares over all rounds. "
             f"Raw engine: `NVWaveNet.infer` at batch N on the same conditioning, 4-frame calls with state, only "
             f"the calls timed (and with each chunk's conditioning timed too). Inside the server (its `nvwavenet_scheduler_seconds` over the served rounds): "
             f"conditioning and the rest of the turns (host overhead) as shares of the engine's time; the engine's rate "
             f"there; the loop's time outside turns as a share of the served rounds' wall time. "
             f"Load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in load_before)} before, "
             f"{', '.join(f'{x:.2f}' for x in load_after)} after; {os.cpu_count()} CPUs."]
    if args.note:
        lines.append(args.note)
    body = "\n".join(lines) + "\n" + bench.environment_line(env, command) + "\n\n" + bench.markdown_table(HEADER, rows)
    bench.write_results(args.results, {"served-vs-engine-cpu": f"## Served vs the raw engine, CPU\n\n{body}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
