"""The ``nvwavenet serve`` app as a Ray Serve deployment: one replica per GPU or per group of cores,
each with its own scheduler batching the streams routed to it (``pip install "nvwavenet[ray]"``).

    serve run nvwavenet.ray_serve:build_app checkpoint=/path/to/ckpt replicas=2 cpus_per_replica=4

Arguments (``key=value``): ``checkpoint`` (required), ``device`` (``cpu`` or ``cuda``; a ``cuda``
replica asks Ray for one GPU), ``dtype``, ``replicas`` (default 1), ``cpus_per_replica``
(default 1), and the :class:`~nvwavenet.server.ServeSettings` fields (``max_streams``,
``chunk_frames``, ...). The routes, protocol and close codes are the server's
(:mod:`nvwavenet.server`), under Ray Serve's HTTP proxy (port 8000 by default).

On a cluster: ``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the others
(each with nvwavenet and the checkpoint at the same path), then ``serve run`` as above on the head
with ``replicas`` up to the cluster's GPUs (``device=cuda``) or cores / ``cpus_per_replica``. Ray
places the replicas and its proxy spreads connections over them. A stream stays on the replica
it was routed to, so its audio is still that replica's scheduler's: bit for bit ``Vocoder``'s.
"""
from __future__ import annotations

import dataclasses

from ray import serve

from .server import ServeSettings, create_app
from .vocoder import Vocoder

__all__ = ["VocoderServer", "build_app"]


@serve.deployment
@serve.ingress()
class VocoderServer:
    """One replica: a vocoder, its scheduler and the server's app."""

    def __init__(self, checkpoint: str, device: str = "cpu", dtype: str = "float32", **settings):
        self.asgi = create_app(Vocoder.from_checkpoint(checkpoint, device=device, dtype=dtype),
                              ServeSettings(**settings))
        # Ray Serve may not run the app's lifespan on a replica; starting twice is harmless. (Not
        # "self.app": Ray Serve's wrapper has a property of that name.)
        self.asgi.state.service.scheduler.start()

    def __serve_build_asgi_app__(self):
        return self.asgi

    def __del__(self):
        self.asgi.state.service.scheduler.stop(timeout=5)


_SETTINGS = {field.name: field.type for field in dataclasses.fields(ServeSettings)}


def build_app(args: dict):
    """The application ``serve run nvwavenet.ray_serve:build_app key=value ...`` deploys."""
    args = dict(args)
    if "checkpoint" not in args:
        raise ValueError("checkpoint: required (serve run nvwavenet.ray_serve:build_app checkpoint=PATH)")
    checkpoint = str(args.pop("checkpoint"))
    device, dtype = str(args.pop("device", "cpu")), str(args.pop("dtype", "float32"))
    try:
        replicas, cpus = int(args.pop("replicas", 1)), float(args.pop("cpus_per_replica", 1))
        settings = {name: (float if _SETTINGS[name] == "float" else int)(args.pop(name))
                    for name in list(args) if name in _SETTINGS}
    except ValueError as error:
        raise ValueError(f"build_app: {error}") from None
    if args:
        raise ValueError(f"build_app: unknown arguments {sorted(args)}; expected checkpoint, device, dtype, replicas, "
                         f"cpus_per_replica or {', '.join(_SETTINGS)}")
    options = {"num_cpus": cpus, **({"num_gpus": 1} if device.startswith("cuda") else {})}
    return VocoderServer.options(num_replicas=replicas, ray_actor_options=options).bind(
        checkpoint, device=device, dtype=dtype, **settings)
