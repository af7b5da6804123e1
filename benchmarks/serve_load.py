"""``nvwavenet serve`` under load: real clients over loopback against in-process vocoding.

For each model (R64/S256/A256 L=20 max dilation 512 at 24 kHz, hop 300, 80 mels, random weights;
and the demo's small model), a server runs as ``python -m nvwavenet serve`` in its own process
(``--chunk-frames 4``: 50 ms of audio per engine call at 24 kHz) and this process runs the clients
(``nvwavenet.client``, asyncio, one WebSocket each):

- aggregate samples/s with 1, 8, 32, 64 concurrent clients, each vocoding one utterance of
  ``--utterance-seconds`` sent in 4-frame messages as fast as the server takes them (median of
  ``--rounds`` rounds); against the same utterances vocoded in-process one after another
  (``Vocoder`` at batch 1) and all at once (``Vocoder.stream`` at batch N, 4-frame chunks: the
  engine's own rate at that batch, which the server can at best match);
- first-audio latency per client, from opening its connection to its first audio message, p50 and
  p99 over every client of every round;
- server RSS over a soak of ``--soak-minutes`` with ``--soak-clients`` clients coming and going
  (each connects, vocodes 0.25 to 1.5 s, disconnects, again), sampled every 2 s.

The clients share the machine with the server: on a 2-core CPU they take part of its time.

    python benchmarks/serve_load.py [--device cuda] [--soak-minutes 10] [--results benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nvwavenet import bench
from nvwavenet.checkpoint import save_model
from nvwavenet.client import Client
from nvwavenet.demo import DemoSettings
from nvwavenet.testing import serve_process
from nvwavenet.vocoder import Vocoder
from streaming import make_model

HERE = Path(__file__).resolve().parent
CHUNK_FRAMES = 4


def server_args(args, *extra: str) -> list[str]:
    return ["--max-streams", str(max(*args.clients, args.soak_clients)), "--chunk-frames", str(CHUNK_FRAMES),
            "--device", args.device, "--dtype", args.dtype, *(extra or ("--admit", "all"))]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def utterance(n_mels: int, frames: int, seed: int) -> torch.Tensor:
    return torch.randn(n_mels, frames, generator=torch.Generator().manual_seed(seed)) - 5.0


async def one_client(client: Client, mel: torch.Tensor, seed: int) -> tuple[int, float]:
    """(samples received, seconds from connecting to the first audio)."""
    started, first, samples = time.perf_counter(), None, 0
    async for chunk in client.astream(torch.split(mel, CHUNK_FRAMES, dim=1), seed=seed, sample_format="pcm16"):
        if first is None:
            first = time.perf_counter() - started
        samples += chunk.shape[0]
    return samples, first


async def load_round(client: Client, mels: list[torch.Tensor]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    results = await asyncio.gather(*(one_client(client, mel, seed) for seed, mel in enumerate(mels)))
    elapsed = time.perf_counter() - start
    return sum(samples for samples, _ in results) / elapsed, [latency for _, latency in results]


def in_process_rates(vocoder: Vocoder, mels: list[torch.Tensor]) -> tuple[float, float]:
    """(one after another, all at once in 4-frame chunks) samples/s, after a warm-up. One after
    another times up to 4 utterances: its rate does not depend on how many follow."""
    vocoder(mels[0][:, :CHUNK_FRAMES])
    few = mels[:4]
    start = time.perf_counter()
    samples = sum(vocoder(mel).shape[-1] for mel in few)
    sequential = samples / (time.perf_counter() - start)
    batch = torch.stack(mels)
    start = time.perf_counter()
    samples = sum(chunk.numel() for chunk in vocoder.stream(torch.split(batch, CHUNK_FRAMES, dim=2)))
    return sequential, samples / (time.perf_counter() - start)


async def soak(client: Client, pid: int, args, n_mels: int, frame_rate: float) -> list[tuple[float, float]]:
    """(seconds, RSS MiB) samples while ``soak_clients`` clients come and go."""
    deadline = time.perf_counter() + args.soak_minutes * 60
    rng = random.Random(0)
    trace = []

    async def churn(index: int):
        seed = index
        while time.perf_counter() < deadline:
            frames = int(rng.uniform(0.25, 1.5) * frame_rate)
            await one_client(client, utterance(n_mels, frames, seed), seed)
            seed += args.soak_clients

    async def sample():
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            trace.append((time.perf_counter() - start, rss_mb(pid)))
            await asyncio.sleep(2.0)

    await asyncio.gather(sample(), *(churn(i) for i in range(args.soak_clients)))
    return trace


def run_model(name: str, model, audio_config, args, folder: Path) -> tuple[list[list[str]], dict]:
    checkpoint = save_model(folder / name, model, audio_config)
    vocoder = Vocoder(model, audio_config, device=args.device, dtype=args.dtype)
    n_mels, hop = audio_config.mel.n_mels, audio_config.mel.hop_length
    frames = int(args.utterance_seconds * audio_config.sample_rate / hop)
    rows, soak_result = [], {}
    with serve_process(checkpoint, *server_args(args), stop_timeout=60) as server:
        client = Client(server.url, timeout=600)
        asyncio.run(load_round(client, [utterance(n_mels, 8, 999)]))  # warm-up
        one_client_rate = None
        for count in args.clients:
            mels = [utterance(n_mels, frames, seed) for seed in range(count)]
            rates, latencies = [], []
            for _ in range(args.rounds):
                rate, firsts = asyncio.run(load_round(client, mels))
                rates.append(rate)
                latencies += firsts
            served = statistics.median(rates)
            one_client_rate = one_client_rate or served
            sequential, batched = in_process_rates(vocoder, mels)
            p50, p99 = np.percentile(latencies, [50, 99]) * 1000
            rows.append([name, str(count), f"{served:,.0f}", f"{served / one_client_rate:.2f}x",
                         f"{sequential:,.0f}", f"{batched:,.0f}", f"{served / batched:.2f}x",
                         f"{p50:.0f} ms", f"{p99:.0f} ms"])
            print(bench.text_table(HEADER, rows[-1:]), flush=True)
        if args.soak_minutes > 0 and name == args.soak_model:
            trace = asyncio.run(soak(client, server.process.pid, args, n_mels, audio_config.sample_rate / hop))
            mark = min(60.0, trace[-1][0] / 10)  # minute 1, or a tenth of a shorter soak
            early = next(rss for at, rss in trace if at >= mark)
            soak_result = {"minutes": args.soak_minutes, "mark_s": mark, "early": early, "end": trace[-1][1],
                           "max": max(rss for _, rss in trace), "samples": len(trace)}
    return rows, soak_result


def short_call_seconds(vocoder: Vocoder, batch: int, n_mels: int) -> float:
    """In-process: the median time of one engine call (conditioning included) of a 1-frame chunk at
    ``batch`` streams, the least a joining stream's first audio can take."""
    mel = utterance(n_mels, 12, 7).expand(batch, -1, -1).contiguous()
    chunks = iter(vocoder.stream(torch.split(mel, 1, dim=2)))
    next(chunks)
    times, start = [], time.perf_counter()
    for _ in chunks:
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    return statistics.median(times)


async def paced_stream(url: str, n_mels: int, frame_seconds: float, stop: asyncio.Event, ready: asyncio.Event):
    """A client sending 4-frame messages in real time until ``stop``, reading its audio."""
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None) as websocket:
        async def read():
            async for message in websocket:
                if not isinstance(message, bytes):
                    return
        reader = asyncio.create_task(read())
        seed = 0
        while not stop.is_set():
            await websocket.send(np.ascontiguousarray(utterance(n_mels, CHUNK_FRAMES, seed).numpy().T).tobytes())
            ready.set()
            seed += 1
            await asyncio.sleep(CHUNK_FRAMES * frame_seconds)
        await websocket.send(json.dumps({"type": "end"}))
        await reader


async def join(url: str, n_mels: int) -> tuple[str, float]:
    """A client joining with a 1-frame first message: ("audio", seconds to its first audio) or
    ("refused CODE", seconds to the refusal)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(url, max_size=None) as websocket:
        start = time.perf_counter()
        try:
            await websocket.send(np.ascontiguousarray(utterance(n_mels, 1, 3).numpy().T).tobytes())
            while not isinstance(await websocket.recv(), bytes):
                pass
        except ConnectionClosed as closed:
            return f"refused {closed.rcvd.code if closed.rcvd else 1006}", time.perf_counter() - start
        seconds = time.perf_counter() - start
        await websocket.send(json.dumps({"type": "end"}))
        async for message in websocket:
            if not isinstance(message, bytes):
                break
        return "audio", seconds


def run_admission(name: str, model, audio_config, args, folder: Path) -> list[list[str]]:
    """Under ``--admit realtime`` (capacity measured at the server's startup): a client joining
    ``capacity - 1`` real-time streams gets its first audio within one engine call of a 1-frame
    chunk + 50 ms; one joining ``capacity`` streams is refused (1013, and a POST 503 + Retry-After)."""
    checkpoint = save_model(folder / f"{name}-admission", model, audio_config)
    vocoder = Vocoder(model, audio_config, device=args.device, dtype=args.dtype)
    n_mels, hop, rate = audio_config.mel.n_mels, audio_config.mel.hop_length, audio_config.sample_rate
    rows = []
    with serve_process(checkpoint, *server_args(args, "--admit", "realtime"), stop_timeout=60) as server:
        url = server.url
        client = Client(url, timeout=600)
        capacity = client.model_info()["capacity"]
        streams = capacity["admit_limit"]
        stream_url = client.stream_url(0, "pcm16", n_mels)

        async def scenario(background: int) -> list[tuple[str, float]]:
            stop, readies = asyncio.Event(), [asyncio.Event() for _ in range(background)]
            tasks = [asyncio.create_task(paced_stream(stream_url, n_mels, hop / rate, stop, ready)) for ready in readies]
            await asyncio.gather(*(ready.wait() for ready in readies))
            await asyncio.sleep(1.0)  # the background streams in their stride
            outcomes = []
            for _ in range(args.joins):
                outcomes.append(await join(stream_url, n_mels))
                await asyncio.sleep(0.2)
            if background == streams:
                response = await asyncio.to_thread(
                    lambda: __import__("httpx").post(url + "/v1/vocode", content=npy_body(utterance(n_mels, 4, 1))))
                outcomes.append((f"POST {response.status_code} Retry-After {response.headers.get('retry-after')}", 0.0))
            stop.set()
            await asyncio.gather(*tasks)
            return outcomes

        for background in (streams - 1, streams):
            bound = short_call_seconds(vocoder, background + 1, n_mels) + 0.05
            outcomes = asyncio.run(scenario(background))
            joined = [seconds for outcome, seconds in outcomes if outcome == "audio"]
            others = sorted({outcome for outcome, _ in outcomes if outcome != "audio"})
            expected = "first audio" if background < streams else "refused 1013"
            met = (len(joined) == args.joins and max(joined) <= bound) if background < streams else \
                (not joined and "refused 1013" in others)
            rows.append([name, f"{capacity['streams']} ({capacity['samples_per_second']:,.0f} samples/s)",
                         str(background), expected,
                         f"{statistics.median(joined) * 1000:.0f} / {max(joined) * 1000:.0f} ms" if joined else "-",
                         f"{bound * 1000:.0f} ms" if background < streams else "-",
                         ", ".join(others) or "-", "yes" if met else "NO"])
            print(bench.text_table(ADMISSION_HEADER, rows[-1:]), flush=True)
    return rows


def npy_body(mel: torch.Tensor) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, mel.numpy())
    return buffer.getvalue()


ADMISSION_HEADER = ["model", "capacity (measured at startup)", "streams already served", "expected",
                    "first audio median / max", "bound: 1-frame call + 50 ms", "refusals", "met"]

HEADER = ["model", "clients", "served samples/s", "vs 1 client", "in-process 1 by 1", "in-process batch N",
          "served / batch N", "first audio p50", "first audio p99"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--clients", default="1,8,32,64", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--utterance-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per client count (median rate)")
    parser.add_argument("--models", default="r64-l20,demo", help="r64-l20 and/or demo")
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="0: no soak")
    parser.add_argument("--soak-clients", type=int, default=16)
    parser.add_argument("--soak-model", default="r64-l20")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="PyTorch threads of this process (its in-process vocoding): on a loaded 2-core machine "
                             "2 threads made the conditioning 50x slower than 1")
    parser.add_argument("--joins", type=int, default=5, help="clients joining, one after another, per admission row")
    parser.add_argument("--admission-only", action="store_true",
                        help="only the admission rows (--admit realtime: joining below and at capacity)")
    parser.add_argument("--note", default="", help="a line about the machine's conditions, for the results")
    bench.add_results_option(parser, HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    command = "python benchmarks/serve_load.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    env = bench.environment(torch.device(args.device))
    demo = DemoSettings()
    models = {"r64-l20": lambda: make_model(64, 256, 20, 512), "demo": lambda: (demo.model(0).eval(), demo.audio())}
    rows, soak_result, admission_rows = [], {}, []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            built = models[name]()
            if not args.admission_only:
                model_rows, model_soak = run_model(name, *built, args, Path(folder))
                rows += model_rows
                soak_result = soak_result or model_soak
            admission_rows += run_admission(name, *built, args, Path(folder))
    admission = (f"Admission (`nvwavenet serve --admit realtime`, capacity measured at the server's startup): "
                 f"background clients send 4-frame messages in real time; a client joins {args.joins} times, one "
                 f"after another, with a 1-frame first message (first audio: from sending it). The bound is the "
                 f"in-process median engine call (conditioning included) of a 1-frame chunk at the joined batch, "
                 f"measured with the server idle, + 50 ms. {args.device}, {args.dtype}."
                 + (f" {args.note}" if args.note else "") + "\n" + bench.environment_line(env, command) + "\n\n"
                 + bench.markdown_table(ADMISSION_HEADER, admission_rows))
    admission_section = f"serve-admission-{args.device}"
    admission_body = f"## Serving: admission at real-time capacity, {args.device.upper()}\n\n{admission}"
    if args.admission_only:
        bench.write_results(args.results, {admission_section: admission_body})
        return 0
    lines = [f"Models: r64-l20 = R64/S256/A256 L=20 max dilation 512, 24 kHz, hop 300, 80 mels; demo = the demo's "
             f"R{demo.n_residual}/S{demo.n_skip}/A{demo.n_classes} L={demo.n_layers}, {demo.sample_rate} Hz, hop "
             f"{demo.hop}. Random weights. Server: `nvwavenet serve --chunk-frames {CHUNK_FRAMES}` in its own process; "
             f"clients: asyncio WebSockets in the benchmark's process, {args.utterance_seconds:g} s utterance each, "
             f"4-frame messages; median of {args.rounds} rounds. First audio: from opening the connection. "
             f"In-process: {args.torch_threads} PyTorch thread(s). {args.device}, {args.dtype}."]
    if args.note:
        lines.append(args.note)
    body = "\n".join(lines) + "\n" + bench.environment_line(env, command) + "\n\n" + bench.markdown_table(HEADER, rows)
    if soak_result:
        growth = soak_result["end"] / soak_result["early"] - 1
        soak_line = (f"Soak: {soak_result['minutes']:g} min, {args.soak_clients} clients coming and going "
                     f"({args.soak_model}); server RSS {soak_result['early']:,.1f} MiB at "
                     f"{soak_result['mark_s']:.0f} s, {soak_result['end']:,.1f} MiB at the end ({growth:+.1%}), "
                     f"{soak_result['max']:,.1f} MiB at most ({soak_result['samples']} samples, every 2 s).")
        print(soak_line)
        body += "\n\n" + soak_line
    bench.write_results(args.results, {f"serve-load-{args.device}": f"## Serving under load, {args.device.upper()}\n\n{body}",
                                       admission_section: admission_body})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
