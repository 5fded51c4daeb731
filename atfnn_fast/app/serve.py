"""``atfnn-fast serve --onnx FILE | --checkpoint DIR``: label audio sent over HTTP, on Ray
Serve, with requests batched across clients (docs/design.md#scaling-out).

Routes (Ray Serve's HTTP proxy; this module writes no HTTP server):

* ``POST /`` (or ``/predict``) with the bytes of a WAV, FLAC, OGG or MP3 file as the body
  -> ``{"label": ..., "scores": {label: probability}}``, the scores of one-machine
  ``predict`` for the same file (:func:`atfnn_fast.app.predict.file_entry`'s numbers: the
  mean of the segments' softmax probabilities).
* ``GET /health`` -> ``{"status": "ok"}``; ``GET /metadata`` -> labels, sample rate, the
  model's SHA-256, the limits and the batching settings.

Each request's body is decoded from memory (:class:`atfnn_fast.features.AudioBytes`:
nothing in a request reaches the file system) and cut into normalised segments in a
thread; the segments of the requests that arrive within ``batch_wait_s`` of each other (up
to ``max_batch`` requests) go through the model together (``@serve.batch``), at most
``batch_size`` segments per forward pass, and each request gets the mean over its own
segments (the response header ``x-atfnn-batch`` says how many requests shared its batch).
A predictor without segment scoring (a graph that takes the waveform itself)
is asked file by file instead (:func:`segment_scorer` is where a new kind plugs in).

Bad input is a 4xx with ``{"error": "<one line>"}`` and the server goes on: a
Content-Type that is not audio (415), a body over ``max_bytes`` (413, from Content-Length
before reading, else while reading), an empty body (400), a truncated body (400), bytes that
are not audio, or cut-off audio (422), audio longer than ``max_seconds`` (413).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .predict import error_message, load_predictor
from .scale import require_serve

serve_api = require_serve()  # this module is the scale extra's: imported after the check
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BYTES = 64 * 2**20  # our choice: 10 minutes of 44.1 kHz 16-bit stereo WAV fit
DEFAULT_MAX_SECONDS = 600.0  # our choice: the length of audio one request may hold
DEFAULT_MAX_BATCH = 16  # requests per batch (our choice; 1: no batching)
DEFAULT_BATCH_WAIT_S = 0.01  # Ray Serve's default wait for a batch to fill
# Content-Types a request may carry: audio, or bytes without a type
CONTENT_TYPES = (
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/vnd.wave",
    "audio/flac",
    "audio/x-flac",
    "audio/ogg",
    "application/ogg",
    "audio/mpeg",
    "audio/mp3",
    "application/octet-stream",
)
BATCH_HEADER = "x-atfnn-batch"  # response header: requests scored together
REQUEST_NAME = "request"  # stands for the file's path in error messages


class BadRequest(Exception):
    """A request refused with ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def model_hash(checkpoint: str | os.PathLike | None, onnx: str | os.PathLike | None) -> str:
    """``sha256:<hex>`` of the ONNX file, or of a checkpoint directory's files (names and
    contents, sorted by name)."""
    digest = hashlib.sha256()
    if onnx is not None:
        files = [Path(onnx)]
    else:
        files = sorted(p for p in Path(checkpoint).iterdir() if p.is_file())
    for path in files:
        if onnx is None:
            digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(functools.partial(fh.read, 1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def segment_scorer(predictor) -> Callable | None:
    """``segments (S, 1, F, T) tensor -> probabilities (S, C)`` for predictors that take
    segments (a checkpoint, a spectrogram ONNX graph), so segments of several requests can
    share forward passes; None for any other kind (scored file by file through
    ``predict_file``)."""
    # OnnxPredictor.input, from the file's metadata: "spectrogram" or "waveform"
    if getattr(predictor, "input", "spectrogram") != "spectrogram":
        return None
    if hasattr(predictor, "predict_spectrograms"):
        return lambda segs: predictor.predict_spectrograms(segs.numpy())
    if hasattr(predictor, "model") and hasattr(predictor, "_probabilities"):
        return predictor._probabilities
    return None


def request_segments(predictor, audio):
    """All normalised segments ``(S, 1, F, T)`` of one request's audio, as ``predict``
    makes them (:func:`atfnn_fast.features.iter_segment_batches`)."""
    import torch

    from atfnn_fast.features import iter_segment_batches

    return torch.cat(
        list(
            iter_segment_batches(
                audio,
                n_mels=predictor.config.n_mels,
                frames=predictor.config.frames,
                stats=predictor.norm_stats,
                features=predictor.features,
                batch_size=predictor.batch_size,
            )
        )
    )


def score_segments(predictor, scorer, items: list) -> list:
    """Per request of ``items`` (segment tensors), the mean of its segments' probabilities
    (float64, ``(C,)``), or the error message when they are not finite; the segments of
    all requests go through ``scorer`` together, ``predictor.batch_size`` at a time."""
    import numpy as np
    import torch

    from atfnn_fast.inference import check_finite_scores

    def run(segs) -> np.ndarray:
        step = predictor.batch_size
        chunks = [scorer(segs[i : i + step]) for i in range(0, segs.shape[0], step)]
        probs = np.concatenate([np.asarray(c, dtype=np.float64) for c in chunks])
        check_finite_scores(probs)
        return probs

    try:
        probs = run(torch.cat(items))
    except ValueError:  # scores that are not finite: find whose, each request on its own
        out = []
        for segs in items:
            try:
                out.append(run(segs).mean(0))
            except ValueError as err:
                out.append(error_message(REQUEST_NAME, err))
        return out
    out, start = [], 0
    for segs in items:
        n = int(segs.shape[0])
        out.append(probs[start : start + n].mean(0))
        start += n
    return out


def _content_type(headers) -> str:
    return headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()


async def read_body(request, max_bytes: int) -> bytes:
    """The request's body, refused (:class:`BadRequest`) when its Content-Type is not
    audio, when it is longer than ``max_bytes`` (said by Content-Length, or found while
    reading), empty, or shorter than its Content-Length (the client stopped sending)."""
    kind = _content_type(request.headers)
    if kind not in CONTENT_TYPES:
        raise BadRequest(
            415,
            f"Content-Type {kind}: expected audio bytes (one of {', '.join(CONTENT_TYPES)})",
        )
    declared = request.headers.get("content-length")
    try:
        declared = int(declared) if declared is not None else None
    except ValueError:
        raise BadRequest(400, f"Content-Length {declared!r}: expected a number") from None
    if declared is not None and declared > max_bytes:
        raise BadRequest(413, f"body of {declared:,} bytes: over the limit of {max_bytes:,} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise BadRequest(413, f"body over the limit of {max_bytes:,} bytes")
            chunks.append(chunk)
    except BadRequest:
        raise
    except Exception as err:  # starlette's ClientDisconnect: the client stopped sending
        raise BadRequest(
            400, f"truncated body: the client stopped after {size:,} bytes ({type(err).__name__})"
        ) from None
    if declared is not None and size < declared:
        raise BadRequest(400, f"truncated body: {size:,} of the {declared:,} bytes declared")
    if not size:
        raise BadRequest(
            400, "empty body: expected the bytes of an audio file (WAV, FLAC, OGG, MP3)"
        )
    return b"".join(chunks)


class AudioModel:
    """The Ray Serve deployment: one predictor per replica (see the module docstring)."""

    def __init__(
        self,
        predictor_factory: Callable[[], object],
        metadata: dict,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        threads: int = 1,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        # features of up to `threads` requests at a time; one batch through the model at a time
        self.feature_threads = ThreadPoolExecutor(threads, thread_name_prefix="features")
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.predictor = predictor_factory()
        self.scorer = segment_scorer(self.predictor)
        self.metadata = metadata
        self.max_bytes, self.max_seconds = max_bytes, max_seconds
        self.score_batch.set_max_batch_size(max_batch)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_s)

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/") or "/"
        method = request.method
        routes = {"/": "POST", "/predict": "POST", "/health": "GET", "/metadata": "GET"}
        if path not in routes:
            return JSONResponse({"error": f"{path}: no such route ({', '.join(routes)})"}, 404)
        if method != routes[path]:
            return JSONResponse({"error": f"{method} {path}: use {routes[path]}"}, 405)
        if path == "/health":
            return JSONResponse({"status": "ok"})
        if path == "/metadata":
            return JSONResponse(self.metadata)
        try:
            body = await read_body(request, self.max_bytes)
            result, batch = await self.predict(body)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, err.status)
        # how many requests this one was scored with (1: alone), for clients and benchmarks
        headers = {BATCH_HEADER: str(batch)}
        if isinstance(result, str):  # the model's scores were not finite: not the client's fault
            return JSONResponse({"error": result}, 500, headers=headers)
        return JSONResponse(result, headers=headers)

    async def predict(self, body: bytes) -> tuple[dict | str, int]:
        """``{"label", "scores"}`` of one request's audio (or the error message of scores
        that are not finite) and the number of requests it was scored with; bad audio is a
        :class:`BadRequest`."""
        from atfnn_fast.features import AudioBytes, AudioError
        from atfnn_fast.inference import make_prediction

        audio = AudioBytes(body, REQUEST_NAME, self.max_seconds)
        loop = asyncio.get_running_loop()
        try:
            if self.scorer is None:
                prediction = await loop.run_in_executor(
                    self.model_thread, self.predictor.predict_file, audio
                )
                return {"label": prediction.label, "scores": prediction.scores}, 1
            segs = await loop.run_in_executor(
                self.feature_threads, request_segments, self.predictor, audio
            )
        except AudioError as err:
            status = 413 if "longer than the limit" in str(err) else 422
            raise BadRequest(status, error_message(REQUEST_NAME, err)) from None
        probs, batch = await self.score_batch(segs)
        if isinstance(probs, str):
            return probs, batch
        prediction = make_prediction(REQUEST_NAME, list(self.predictor.labels), probs)
        return {"label": prediction.label, "scores": prediction.scores}, batch

    @serve_api.batch
    async def score_batch(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(
            self.model_thread, score_segments, self.predictor, self.scorer, items
        )
        return [(result, len(items)) for result in out]


def build_app(
    *,
    checkpoint: str | os.PathLike | None = None,
    onnx: str | os.PathLike | None = None,
    device: str = "cpu",
    provider: str = "auto",
    batch_size: int | None = None,
    replicas: int = 1,
    threads: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    access_log: bool = True,
):
    """The Ray Serve application (``serve.run(build_app(...))``): ``replicas`` copies of
    :class:`AudioModel`, each with ``threads`` CPUs; ``access_log``: Ray Serve's line per
    request."""
    from atfnn_fast.inference import DEFAULT_BATCH_SIZE

    serve = serve_api
    kwargs = dict(
        checkpoint=checkpoint,
        onnx=onnx,
        device=device,
        provider=provider,
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
    )
    if onnx is not None:
        kwargs["threads"] = threads
    probe = load_predictor(**kwargs)  # a bad model fails here, once
    metadata = {
        "model": str(onnx if onnx is not None else checkpoint),
        "kind": "onnx" if onnx is not None else "checkpoint",
        "input": getattr(probe, "input", "spectrogram"),
        "sha256": model_hash(checkpoint, onnx).removeprefix("sha256:"),
        "labels": list(probe.labels),
        "sample_rate": probe.features.sample_rate,
        "n_mels": probe.config.n_mels,
        "frames": probe.config.frames,
        "max_bytes": max_bytes,
        "max_seconds": max_seconds,
        "max_batch": max_batch,
        "batch_wait_s": batch_wait_s,
        "content_types": list(CONTENT_TYPES),
    }
    del probe
    gpu = device == "cuda" or provider in ("cuda", "tensorrt")
    deployment = serve.deployment(
        AudioModel,
        name="atfnn",
        num_replicas=replicas,
        # room for a full batch and the next one filling
        max_ongoing_requests=max(8, 2 * max_batch),
        ray_actor_options={"num_cpus": threads, "num_gpus": 1 if gpu else 0},
        logging_config={"enable_access_log": access_log},
    )
    return deployment.bind(
        functools.partial(load_predictor, **kwargs),
        metadata,
        max_bytes=max_bytes,
        max_seconds=max_seconds,
        max_batch=max_batch,
        batch_wait_s=batch_wait_s,
        threads=threads,
    )


def start(app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, name: str = "atfnn"):
    """Start Ray Serve's HTTP proxy on ``host:port`` and run ``app`` at ``/``; returns when
    it is ready."""
    serve = serve_api
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=name, route_prefix="/", blocking=False)


def serve_forever(
    app,
    *,
    address: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    cpus: int = 1,
) -> int:
    """``atfnn-fast serve``: connect to Ray (:func:`atfnn_fast.app.scale.connect`; a local
    instance gets at least the ``cpus`` the replicas ask for), start the app, say where it
    listens, and serve until interrupted (then shut Serve down). A cluster with fewer than
    ``cpus`` CPUs is refused rather than left waiting for them."""
    import signal

    import torch

    from atfnn_fast.errors import UsageError

    from .scale import cluster_cpus, connect

    ray = connect(address, num_cpus=max(cpus, torch.get_num_threads()))
    have = cluster_cpus(ray)
    if have < cpus:
        ray.shutdown()
        raise UsageError(
            f"--replicas x --threads: {cpus} CPUs asked for, the Ray cluster has {have}"
        )
    serve = serve_api
    # `kill` (SIGTERM) stops it like Ctrl-C: Serve and a local Ray are shut down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        start(app, host, port)
        print(
            f"serve: listening on http://{host}:{port}/ (POST audio; GET /health, /metadata); "
            "Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()
