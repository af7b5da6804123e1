"""A client of ``nvwavenet serve`` (protocol in :mod:`nvwavenet.server`), on ``websockets`` and ``httpx``.

    client = Client("http://127.0.0.1:8000")
    audio = client.vocode(mel, seed=3)                  # one request: (n_mels, frames) -> (frames * hop,)
    for chunk in client.stream(mel_chunks, seed=3):     # audio as soon as the server generates it
        play(chunk)
    async for chunk in client.astream(mel_chunks):      # the same from asyncio

Audio comes back as float32 numpy arrays in [-1, 1] (``sample_format="float32"``, bit for bit the
server's) or int16 PCM (``"pcm16"``, half the bytes). A refusal or an abnormal close raises
:class:`ServerError` with the server's code and reason.
"""
from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import numpy as np

__all__ = ["Client", "ServerError", "vocode_files"]

_DTYPES = {"float32": "<f4", "pcm16": "<i2"}


class ServerError(RuntimeError):
    """The server refused a request or closed a stream abnormally: ``code`` is the WebSocket close
    code or the HTTP status, ``reason`` its message (see :mod:`nvwavenet.server` for the codes)."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"server answered {code}: {reason}")
        self.code, self.reason = code, reason


class Client:
    """``url``: the server's base URL (``http://host:port``, or ``https://`` for a server with TLS);
    ``timeout``: seconds for each HTTP request and for each message awaited from a stream;
    ``token``: the server's bearer token (``nvwavenet serve --token-file``), if it asks for one;
    ``verify``: for ``https``, True (the system's CAs), a CA bundle's path, an ``ssl.SSLContext``, or
    False (no verification)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout: float = 60.0, token: str | None = None,
                 verify=True):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url: expected the server's http://host:port, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.verify = verify
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        self._front_end = None
        self._ws_base = urlunsplit(("ws" if parts.scheme == "http" else "wss", parts.netloc,
                                    parts.path.rstrip("/"), "", ""))
        self._model: dict | None = None

    def model_info(self) -> dict:
        """The server's ``/v1/model``: sample rate, hop, mel bands, sizes, limits."""
        if self._model is None:
            response = self._request("GET", "/v1/model")
            self._model = response.json()
        return self._model

    def mel_spectrogram(self, audio):
        """The server model's own mel front end, computed here: float audio ``(samples,)`` at its
        sample rate to the ``(n_mels, frames)`` mel its vocoder takes (what ``Vocoder.mel_spectrogram``
        gives for the same model)."""
        import torch

        from .audio import AudioConfig
        from .mel import MelSpectrogram

        if self._front_end is None:
            self._front_end = MelSpectrogram(AudioConfig.from_dict(self.model_info()["audio_config"]).mel)
        with torch.no_grad():
            return self._front_end(audio)

    def vocode(self, mel, *, seed: int = 0, sample_format: str = "float32") -> np.ndarray:
        """One ``POST /v1/vocode``: the audio of ``mel`` ``(n_mels, frames)`` (float32, or int16 for ``pcm16``)."""
        import scipy.io.wavfile

        body = io.BytesIO()
        np.save(body, np.ascontiguousarray(np.asarray(mel, dtype=np.float32)), allow_pickle=False)
        response = self._request("POST", "/v1/vocode", params={"seed": seed, "format": sample_format},
                                 content=body.getvalue())
        return scipy.io.wavfile.read(io.BytesIO(response.content))[1]

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = httpx.request(method, f"{self.url}{path}", timeout=self.timeout, headers=self._headers,
                                     verify=self._ssl() or True, **kwargs)
        except httpx.TransportError as error:  # refused, unreachable, timed out: an OSError, like a socket's
            raise ConnectionError(f"{self.url}: {error or type(error).__name__}") from error
        if response.status_code != 200:
            try:
                reason = response.json()["detail"]
            except (ValueError, KeyError, TypeError):
                reason = response.text[:200]
            raise ServerError(response.status_code, reason)
        return response

    def _ssl(self):
        """The TLS context of an https:// server, as ``verify`` says; None for http://."""
        if not self._ws_base.startswith("wss:"):
            return None
        import ssl

        if isinstance(self.verify, ssl.SSLContext):
            return self.verify
        if self.verify is False:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=None if self.verify is True else str(self.verify))

    def stream_url(self, seed: int = 0, sample_format: str = "float32", n_mels: int | None = None) -> str:
        query = {"seed": seed, "format": sample_format, **({} if n_mels is None else {"n_mels": n_mels})}
        return f"{self._ws_base}/v1/stream?{urlencode(query)}"

    def stream(self, mel_chunks: Iterable, *, seed: int = 0, sample_format: str = "float32") -> Iterator[np.ndarray]:
        """Send ``mel_chunks`` (each ``(n_mels, k)``) from a thread while yielding the audio as it comes."""
        from websockets.exceptions import ConnectionClosed, InvalidStatus
        from websockets.sync.client import connect

        chunks = iter(mel_chunks)
        first = next(chunks, None)  # its bands go in the URL, for the server to check
        url = self.stream_url(seed, sample_format, None if first is None else len(first))
        try:
            websocket = connect(url, max_size=None, open_timeout=self.timeout, additional_headers=self._headers,
                                ssl=self._ssl())
        except InvalidStatus as refused:
            raise _refused(refused) from None
        with websocket:
            failure: list[BaseException] = []

            def send_all() -> None:
                try:
                    for chunk in ([] if first is None else itertools.chain([first], chunks)):
                        websocket.send(_frame_bytes(chunk))
                    websocket.send(json.dumps({"type": "end"}))
                except ConnectionClosed:
                    pass  # the receiving side reports why
                except BaseException as error:  # noqa: BLE001 - a bad chunk: reported to the caller below
                    failure.append(error)
                    websocket.close()

            sender = threading.Thread(target=send_all, daemon=True)
            sender.start()
            try:
                while True:
                    try:
                        message = websocket.recv(timeout=self.timeout)
                    except ConnectionClosed as closed:
                        if failure:
                            raise failure[0] from None
                        raise _closed_error(closed) from None
                    if (audio := _audio(message, sample_format)) is None:
                        return
                    yield audio
            finally:
                sender.join(self.timeout)

    async def astream(self, mel_chunks: Iterable | AsyncIterable, *, seed: int = 0,
                      sample_format: str = "float32") -> AsyncIterator[np.ndarray]:
        """:meth:`stream` for asyncio: ``mel_chunks`` may be an iterable or an async iterable."""
        import asyncio

        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        if isinstance(mel_chunks, AsyncIterable):
            chunks = aiter(mel_chunks)
            first = await anext(chunks, None)
        else:
            chunks = iter(mel_chunks)
            first = next(chunks, None)
        url = self.stream_url(seed, sample_format, None if first is None else len(first))
        try:
            websocket = await connect(url, max_size=None, open_timeout=self.timeout,
                                      additional_headers=self._headers, ssl=self._ssl())
        except InvalidStatus as refused:
            raise _refused(refused) from None
        async with websocket:
            async def send_all() -> None:
                try:
                    if first is not None:
                        await websocket.send(_frame_bytes(first))
                    if isinstance(chunks, AsyncIterator):
                        async for chunk in chunks:
                            await websocket.send(_frame_bytes(chunk))
                    else:
                        for chunk in chunks:
                            await websocket.send(_frame_bytes(chunk))
                    await websocket.send(json.dumps({"type": "end"}))
                except ConnectionClosed:
                    pass  # the receiving side reports why
                except Exception:  # a bad chunk: the receiving side raises it once the connection is closed
                    await websocket.close()
                    raise

            sender = asyncio.create_task(send_all())
            try:
                while True:
                    try:
                        message = await asyncio.wait_for(websocket.recv(), self.timeout)
                    except ConnectionClosed as closed:
                        if sender.done() and sender.exception() is not None:
                            raise sender.exception() from None
                        raise _closed_error(closed) from None
                    if (audio := _audio(message, sample_format)) is None:
                        return
                    yield audio
            finally:
                sender.cancel()


def _audio(message, sample_format: str) -> np.ndarray | None:
    """A server message's samples; None for its end message."""
    if isinstance(message, bytes):
        return np.frombuffer(message, dtype=_DTYPES[sample_format])
    if json.loads(message).get("type") != "end":
        raise ServerError(1000, f"unexpected message {message[:80]!r}")
    return None


def _frame_bytes(chunk) -> bytes:
    """Mel frames ``(n_mels, k)`` as the protocol's frame-major float32 bytes."""
    array = np.asarray(chunk.cpu() if hasattr(chunk, "cpu") else chunk, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"mel chunk: expected (n_mels, frames), got shape {array.shape}")
    return np.ascontiguousarray(array.T).astype("<f4").tobytes()


def _refused(refused) -> ServerError:
    """A WebSocket handshake the server answered with an HTTP status (401, 403, 503, ...)."""
    response = refused.response
    try:
        reason = json.loads(response.body)["detail"]
    except (ValueError, KeyError, TypeError):
        reason = bytes(response.body or b"")[:200].decode("utf-8", "replace") or response.reason_phrase
    return ServerError(response.status_code, reason)


def _closed_error(closed) -> ServerError:
    received = closed.rcvd
    if received is None:
        return ServerError(1006, "connection lost without a close frame")
    return ServerError(received.code, received.reason)


def vocode_files(client: Client, inputs: list[Path], targets: list[Path], mels: list, *, seed: int = 0,
                 log=print) -> int:
    """``nvwavenet vocode --server URL``: each mel of ``mels`` (read from ``inputs``) vocoded by the
    server with ``seed + i`` for the i-th, as ``nvwavenet vocode --batch-size 1`` does locally, and
    written to its target WAV."""
    from .audio import write_wav

    model = client.model_info()
    for index, (path, target, mel) in enumerate(zip(inputs, targets, mels)):
        write_wav(target, client.vocode(np.asarray(mel), seed=seed + index), model["sample_rate"])
        if log:
            log(f"{path} -> {target} ({mel.shape[1] * model['hop_length'] / model['sample_rate']:.2f} s "
                f"at {model['sample_rate']} Hz, from {client.url})")
    return 0
