"""The ``nvwavenet serve`` app as a Ray Serve deployment: one replica per GPU or per group of cores,
each with its own scheduler batching the streams routed to it (``pip install "nvwavenet[ray]"``).

    serve run nvwavenet.ray_serve:build_app checkpoint=/path/to/ckpt replicas=2 cpus_per_replica=4

Arguments (``key=value``): ``checkpoint`` (required), ``device`` (``cpu`` or ``cuda``; a ``cuda``
replica asks Ray for one GPU), ``dtype``, ``replicas`` (default 1), ``cpus_per_replica``
(default 1), ``torch_threads`` (PyTorch threads per replica; a comma list such as ``1,2`` gives
replica i the i-th, cyclically), ``token_file`` (a bearer token, as ``nvwavenet serve
--token-file``), and the :class:`~nvwavenet.server.ServeSettings` fields (``max_streams``,
``chunk_frames``, ``admit``, ``capacity``, ``idle_timeout``, ``allow_origins`` as a comma list,
...). The routes, protocol, close codes and limits are the server's (:mod:`nvwavenet.server`),
under Ray Serve's HTTP proxy (port 8000 by default).

The same promises as the standalone server:

- **Refusal, never a hang.** Ray queues a request at its router once a replica has
  ``max_ongoing_requests`` in flight; here that is ``2 * max_streams + 8`` per replica (every stream
  slot, as many refusals in flight, and health checks and scrapes), so that a stream beyond
  ``max_streams`` (or beyond the real-time capacity) reaches the app and is refused with 1013 / 503
  and ``Retry-After``. Ray's router queues every request briefly while it picks a replica, so
  ``max_queued_requests`` is as large as all replicas' ``max_ongoing_requests`` together (a burst of
  that many connections is assigned, not dropped); beyond it Ray refuses by itself (HTTP 503; a
  WebSocket handshake gets Ray's HTTP 500), still never a hang.
- **Metrics a Prometheus user can sum.** ``/metrics``, whichever replica the proxy picks, answers
  for every replica of the application: each series carries a ``replica`` label (the Ray replica
  id), so ``sum without (replica) (nvwavenet_samples_total)`` is the application's total and
  ``nvwavenet_capacity_streams`` sums to its capacity. Replicas publish their series to a small
  named Ray actor (``nvwavenet-metrics:APP``) every 2 s and when scraped; a replica silent for 30 s
  drops out. ``/healthz`` and ``/v1/model`` answer for the replica that serves them.
- **Drain on shutdown.** When the application is deleted (``serve shutdown``, ``serve delete``, a
  redeploy), each replica stops taking streams (1001 / 503) and gives the open ones
  ``shutdown_grace`` seconds to finish before closing them with 1001 and the reason; Ray's
  ``graceful_shutdown_timeout_s`` is set to leave it that time.
- **Message limits.** Ray's proxy accepts WebSocket messages up to 16 MiB and streams request
  bodies to the replica; the app refuses any message over ``max_pending_frames`` frames (1009) and
  any body over ``max_request_frames`` (413) as the standalone server does, so the limits a client
  sees are the same, while the proxy's own memory per message is Ray's (16 MiB at most).

On a cluster: ``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the others
(each with nvwavenet and the checkpoint at the same path), then ``serve run`` as above on the head
with ``replicas`` up to the cluster's GPUs (``device=cuda``) or cores / ``cpus_per_replica``. Ray
places the replicas and its proxy spreads connections over them. A stream stays on the replica
it was routed to, so its audio is still that replica's scheduler's: bit for bit ``Vocoder``'s.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import ray
import torch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from .server import LOG_CHARS, ServeSettings, create_app, log, read_token
from .vocoder import Vocoder

__all__ = ["VocoderServer", "build_app"]

PUBLISH_SECONDS, STALE_SECONDS, STATUS_POLL_SECONDS = 2.0, 30.0, 0.5


@ray.remote(num_cpus=0)
class _MetricsBoard:
    """The latest Prometheus text of every replica of one application."""

    def __init__(self):
        self.texts: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, text: str) -> None:
        self.texts[replica] = (time.monotonic(), text)

    def remove(self, replica: str) -> None:
        self.texts.pop(replica, None)

    def get(self) -> dict[str, str]:
        now = time.monotonic()
        for replica in [r for r, (at, _) in self.texts.items() if at < now - STALE_SECONDS]:
            del self.texts[replica]
        return {replica: text for replica, (_, text) in self.texts.items()}


class _Combined:
    """A collector of every replica's series, each with its ``replica`` label."""

    def __init__(self, texts: dict[str, str]):
        self.texts = texts

    def collect(self):
        families: dict[str, Metric] = {}
        for replica, text in sorted(self.texts.items()):
            for family in text_string_to_metric_families(text):
                combined = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                                   family.unit))
                for sample in family.samples:
                    combined.add_sample(sample.name, {**sample.labels, "replica": replica}, sample.value,
                                        sample.timestamp, sample.exemplar)
        return list(families.values())


def combined_metrics(texts: dict[str, str]) -> bytes:
    """One Prometheus text of several replicas' texts (``{replica id: text}``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Combined(texts))
    return generate_latest(registry)


class _WatchOnFirstRequest:
    """ASGI middleware of a replica: the first request starts the watch for the application's
    deletion, in the event loop that serves the requests (and so the streams to drain)."""

    def __init__(self, app, replica: VocoderServer):
        self.app, self.replica = app, replica

    async def __call__(self, scope, receive, send):
        self.replica.watch_for_shutdown()
        return await self.app(scope, receive, send)


@serve.deployment
@serve.ingress()
class VocoderServer:
    """One replica: a vocoder, its scheduler and the server's app."""

    def __init__(self, checkpoint: str, device: str = "cpu", dtype: str = "float32", torch_threads: str = "",
                 token_file: str | None = None, **settings):
        context = serve.get_replica_context()
        self.replica_id, self.app_name = context.replica_id.unique_id, context.app_name
        if torch_threads:
            rank = getattr(getattr(context, "rank", None), "rank", 0) or 0
            choices = [int(t) for t in str(torch_threads).split(",")]
            torch.set_num_threads(choices[rank % len(choices)])
        self.asgi = create_app(Vocoder.from_checkpoint(checkpoint, device=device, dtype=dtype),
                               ServeSettings(**settings), token=read_token(token_file) if token_file else None)
        service = self.asgi.state.service
        service.exposition = self._every_replica
        self.asgi.add_middleware(_WatchOnFirstRequest, replica=self)
        # Ray Serve may not run the app's lifespan on a replica; starting twice is harmless. (Not
        # "self.app": Ray Serve's wrapper has a property of that name.)
        service.scheduler.start()
        self.board = _MetricsBoard.options(name=f"nvwavenet-metrics:{self.app_name}", get_if_exists=True,
                                           lifetime="detached").remote()
        self._stop = threading.Event()
        self._watcher: asyncio.Task | None = None
        # On the board from the start, not PUBLISH_SECONDS later: a replica that had not published
        # yet was missing from the other replicas' /metrics (the Ray test saw one of two).
        self.publish()
        threading.Thread(target=self._publish_loop, name="nvwavenet-metrics", daemon=True).start()
        log.info("replica %s: torch threads %d, capacity %d streams (%s)", self.replica_id,
                 torch.get_num_threads(), service.capacity.streams, service.capacity.source[:LOG_CHARS])

    def __serve_build_asgi_app__(self):
        return self.asgi

    def publish(self) -> str:
        text = generate_latest(self.asgi.state.service.metrics.registry).decode()
        self.board.put.remote(self.replica_id, text)
        return text

    async def _every_replica(self) -> bytes:
        """``/metrics``: every replica's series, each with its ``replica`` label."""
        own = await asyncio.to_thread(self.publish)
        try:
            texts = await asyncio.to_thread(lambda: ray.get(self.board.get.remote(), timeout=5))
        except (ray.exceptions.RayError, TimeoutError):  # the board is gone: this replica's own series
            texts = {}
        texts[self.replica_id] = own
        return combined_metrics(texts)

    def _publish_loop(self) -> None:
        while not self._stop.wait(PUBLISH_SECONDS):
            try:
                self.publish()
            except ray.exceptions.RayError:  # the board went away: the next scrape says so
                pass

    def watch_for_shutdown(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Drain once the application is being deleted: Ray itself would only wait for the open
        streams (which need not end) and then kill the replica under them."""
        while True:
            await asyncio.sleep(STATUS_POLL_SECONDS)
            try:
                status = await asyncio.to_thread(serve.status)
                application = status.applications.get(self.app_name)
                deleting = application is None or application.status == "DELETING"
            except ray.exceptions.RayActorError:  # the controller is gone: Serve is shutting down
                deleting = True
            except ray.exceptions.RayError:
                continue
            if deleting:
                log.info("replica %s: the application is being deleted; draining", self.replica_id)
                await self.asgi.state.service.drain()
                return

    async def __del__(self):
        self._stop.set()
        await self.asgi.state.service.drain()
        self.asgi.state.service.scheduler.stop(timeout=5)
        try:
            self.board.remove.remote(self.replica_id)
        except ray.exceptions.RayError:
            pass


_SETTINGS = {field.name: field.type for field in dataclasses.fields(ServeSettings)}


def _setting(name: str, text: str):
    kind = _SETTINGS[name]
    if name == "allow_origins":
        return tuple(origin for origin in str(text).split(",") if origin)
    if name == "docs":
        return str(text).lower() in ("1", "true", "yes")
    if name == "admit":
        return str(text)
    return float(text) if kind == "float" else int(text)


def build_app(args: dict):
    """The application ``serve run nvwavenet.ray_serve:build_app key=value ...`` deploys."""
    args = dict(args)
    if "checkpoint" not in args:
        raise ValueError("checkpoint: required (serve run nvwavenet.ray_serve:build_app checkpoint=PATH)")
    checkpoint = str(args.pop("checkpoint"))
    device, dtype = str(args.pop("device", "cpu")), str(args.pop("dtype", "float32"))
    torch_threads, token_file = str(args.pop("torch_threads", "")), args.pop("token_file", None)
    try:
        replicas, cpus = int(args.pop("replicas", 1)), float(args.pop("cpus_per_replica", 1))
        settings = {name: _setting(name, args.pop(name)) for name in list(args) if name in _SETTINGS}
    except ValueError as error:
        raise ValueError(f"build_app: {error}") from None
    if torch_threads and not all(t.isdigit() and int(t) > 0 for t in torch_threads.split(",")):
        raise ValueError(f"build_app: torch_threads: expected a positive integer or a comma list of them, "
                         f"got {torch_threads!r}")
    if args:
        raise ValueError(f"build_app: unknown arguments {sorted(args)}; expected checkpoint, device, dtype, replicas, "
                         f"cpus_per_replica, torch_threads, token_file or {', '.join(_SETTINGS)}")
    checked = ServeSettings(**settings)  # a bad value is refused here, not in every replica
    options = {"num_cpus": cpus, **({"num_gpus": 1} if device.startswith("cuda") else {})}
    return VocoderServer.options(
        num_replicas=replicas, ray_actor_options=options,
        max_ongoing_requests=2 * checked.max_streams + 8, max_queued_requests=replicas * (2 * checked.max_streams + 8),
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=checked.shutdown_grace + 10,
    ).bind(checkpoint, device=device, dtype=dtype, torch_threads=torch_threads, token_file=token_file, **settings)
