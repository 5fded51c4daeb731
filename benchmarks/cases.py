"""The benchmark cases of docs/design.md#benchmarks: what each one runs, per provider, and its roofline.

A case is built into a :class:`Bench`: one timed call (synchronised on CUDA, so the time is
the device time of the work), an untimed setup that clears gradients, and the compile time
measured on its own. Providers:

* ``eager``: :class:`atfnn_fast.ATFNNReference`, plain eager PyTorch;
* ``compile``: the same model with its front-end (or the case's block) under
  ``torch.compile`` (default mode); the Bi-LSTM stays eager (dynamo graph-breaks on RNNs);
* ``compile-rank1`` (F-Encoder cases): ``torch.compile`` of the plain-torch rank-one math of
  ``kernels/freq_encoder_op/rank_one.py`` (the same algebra as the kernels; forward, and forward +
  backward through autograd): whether the hand-written kernels beat Inductor on it;
* ``fused``: :class:`atfnn_fast.ATFNN`: its Triton ops on CUDA, its ops' ATen CPU path on the
  CPU (``ATFNN_BACKEND=aten``; the path before the native core, kept for comparison);
* ``native``: :class:`atfnn_fast.ATFNN` on the CPU under ``auto`` with the native CPU core
  (kernels/native.py): the path a CPU user of ``ATFNN`` gets;
* ``cudagraph``: ``fused`` captured once in a CUDA graph and replayed (inference cases,
  CUDA only): the same kernels without the host's launch overhead;
* ``onnxruntime``: the exported graph in ONNX Runtime (``full_fwd`` only);
* ``onnxruntime-int8``: the same graph dynamically quantised to int8
  (``export_onnx(..., quantize="int8")``), ONNX Runtime's CPU provider (``full_fwd``, CPU
  only: its quantised LSTM is a CPU op).

Timing: on CUDA every provider is timed the same way, by CUDA events
(:class:`CudaEventClock`, installed as pytest-benchmark's timer), and no timed call
synchronises; on the CPU by ``time.perf_counter``.

The counted flops, exponentials and bytes of each case, and its floor, come from
:mod:`benchmarks.floors` (the one place they are written).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from atfnn_fast import ATFNN, ATFNNConfig, ATFNNReference
from atfnn_fast.kernels import dispatch, use_backend
from atfnn_fast.kernels.freq_encoder_op import rank_one as fm
from benchmarks.floors import block, has_backward

CASES = (
    "band_attention_fwd",
    "band_attention_fwd_bwd",
    "freq_encoder_fwd",
    "freq_encoder_fwd_bwd",
    "front_end_fwd",
    "front_end_fwd_bwd",
    "full_fwd",
    "train_step",
)
PROVIDERS = (
    "eager",
    "compile",
    "compile-rank1",
    "fused",
    "native",
    "cudagraph",
    "onnxruntime",
    "onnxruntime-int8",
)
ONNX_PROVIDERS = {"onnxruntime": None, "onnxruntime-int8": "int8"}  # -> export_onnx quantize
# the fused ops each case needs before its "fused" provider can run
CASE_OPS = {
    "band_attention": ("band_attention",),
    "freq_encoder": ("freq_encoder",),
    "front_end": ("band_attention", "freq_encoder"),
    "full": ("band_attention", "freq_encoder"),
    "train": ("band_attention", "freq_encoder"),
}


def skip_reason(
    case: str, provider: str, device: torch.device, dtype: str = "float32"
) -> str | None:
    """Why ``provider`` cannot run ``case`` here, or None."""
    if provider == "compile-rank1" and block(case) != "freq_encoder":
        return "compile-rank1 runs the F-Encoder cases"
    if provider in ONNX_PROVIDERS:
        if case != "full_fwd":
            return f"{provider} runs full_fwd only"
        if dtype != "float32":
            return f"the {provider} provider runs the float32 graph"
        if provider == "onnxruntime-int8" and device.type == "cuda":
            return "onnxruntime-int8 runs on the CPU (its quantised LSTM is a CPU op)"
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "CUDA case: this onnxruntime has no CUDA execution provider"
    if provider == "cudagraph":
        if device.type != "cuda":
            return "the cudagraph provider captures CUDA kernels: CUDA only"
        if has_backward(case):
            return "the cudagraph provider runs the inference cases"
    if provider == "native":
        from atfnn_fast.kernels import native

        if device.type != "cpu":
            return "the native provider is the CPU core: CPU only"
        if not native.available():
            return f"native CPU core: {native.missing_reason()}"
    if provider in ("fused", "cudagraph") and device.type == "cuda":
        missing = [op for op in CASE_OPS[block(case)] if op not in dispatch.TRITON_IMPLS]
        if missing:
            return f"no Triton kernel yet for {', '.join('atfnn::' + op for op in missing)}"
    return None


# ------------------------------------------------------------------------------- runners
@dataclass
class Bench:
    fn: Callable[[], object]
    setup: Callable[[], None]
    compile_s: float | None


class CudaEventClock:
    """A pytest-benchmark timer in seconds of *device* time: each reading records a CUDA
    event and waits for it, so the span between two readings is the GPU time of the work
    issued in between (including any time the GPU waited for the host to launch it)."""

    def __init__(self) -> None:
        self._base = torch.cuda.Event(enable_timing=True)
        self._base.record()
        torch.cuda.synchronize()

    def __call__(self) -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        return self._base.elapsed_time(event) / 1e3


def _sync(device: torch.device) -> Callable[[], None]:
    """Nothing on CUDA (the event clock waits for the work), nothing on the CPU."""
    return lambda: None


def build(
    case: str,
    provider: str,
    cfg: ATFNNConfig,
    batch: int,
    frames: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Bench:
    """Model, inputs and the timed closure for one (case, provider, dtype, size)."""
    torch.manual_seed(0)
    blk, bwd = block(case), has_backward(case)
    ref = ATFNNReference(cfg)
    model = ATFNN(cfg) if provider in ("fused", "native") else ref
    if model is not ref:
        model.load_state_dict(ref.state_dict())
    # The NaN/Inf input check differs between providers (the reference's synchronises, the
    # fused one is a kernel with a device-side assert); the benchmarks time the model math.
    model.check_finite = False
    model = model.to(device).train(case == "train_step")
    x = torch.randn(batch, 1, cfg.n_mels, frames, device=device, requires_grad=bwd)
    enc = torch.randn(batch, frames, cfg.n_mels, cfg.encoding_width, device=device)
    enc.requires_grad_(bwd)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=5e-4) if case == "train_step" else None
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device)

    # body() -> (outputs the loss is taken of, attention maps); the maps are always
    # produced, as the model's return_attention contract asks of every provider.
    if blk == "band_attention":

        def body():
            x1, w_f = model._f_attention(x)
            enc2, w_t = model._t_attention(x, enc)
            return (x1, enc2), (w_f, w_t)

    elif blk == "freq_encoder" and provider == "compile-rank1":
        enc = model.f_encoder

        def rank1(x):
            derived = fm.derive(*enc.op_params(), num_heads=enc.num_heads)
            return fm.forward(x, None, derived, enc.eps)

        compiled = torch.compile(rank1)

        def body():
            return (compiled(x),), ()

    elif blk == "freq_encoder":

        def body():
            return (model._f_encoder(x),), ()

    elif blk == "front_end":

        def body():
            out, maps = model.front_end(x)
            return (out,), tuple(maps)

    else:

        def body():
            logits, maps = model(x, return_attention=True)
            return (logits,), tuple(maps)

    if provider in ONNX_PROVIDERS:
        body = _onnxruntime_body(model, x, device, ONNX_PROVIDERS[provider])
    elif provider not in ("eager", "compile", "compile-rank1", "fused", "native", "cudagraph"):
        raise ValueError(f"unknown provider {provider!r}")
    if provider == "compile":
        if blk in ("full", "train"):
            model.front_end = torch.compile(model.front_end)
        else:
            body = torch.compile(body)

    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if dtype != torch.float32
        else torch.autocast(device.type, enabled=False)
    )
    sync = _sync(device)
    # on a CPU, "fused" is ATFNN's ATen path and "native" its native core (under auto, the
    # default, a CPU tensor takes the core where it is built)
    backend = {"native": "auto", "fused": "aten" if device.type == "cpu" else None}
    backend = backend.get(provider)
    path = use_backend(backend) if backend else contextlib.nullcontext()

    def step():
        with autocast, path:
            if case == "train_step":
                (logits,), _ = body()
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
                loss.backward()
                optimizer.step()
                sync()
                return loss
            if not bwd:
                with torch.no_grad():
                    out = body()
                sync()
                return out
            outs, _ = body()
            loss = sum(o.float().sum() for o in outs)
            loss.backward()
        sync()
        return loss

    def setup():
        for p in params:
            p.grad = None
        for t in (x, enc):
            t.grad = None

    setup()
    start = time.perf_counter()
    step()  # first call: compiles (compile provider) or warms the caches
    first = time.perf_counter() - start
    if provider == "cudagraph":
        step = _captured(step)
    return Bench(step, setup, first if provider.startswith("compile") else None)


def _captured(step: Callable[[], object]) -> Callable[[], object]:
    """``step`` (an inference call) captured in a CUDA graph; returns its replay, which
    gives the captured outputs (rewritten in place by each replay)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay():
        graph.replay()
        return out

    return replay


_EXPORTS: dict[tuple, str] = {}  # (config JSON, quantize) -> exported file, once per process


def _onnxruntime_body(model, x: torch.Tensor, device: torch.device, quantize: str | None):
    """full_fwd through the exported graph in ONNX Runtime (CPU EP; CUDA EP for CUDA)."""
    import atexit
    import shutil
    import tempfile

    from atfnn_fast.export import export_onnx
    from atfnn_fast.export.validate import session

    # the graph's time axis is fixed at config.frames: export at the benchmark's frames
    cfg = model.config.replace(frames=x.shape[-1])
    key = (cfg.to_json(), quantize)
    if key not in _EXPORTS:
        same_weights = ATFNNReference(cfg)
        same_weights.load_state_dict(model.state_dict())
        folder = tempfile.mkdtemp(prefix="atfnn-bench-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _EXPORTS[key] = str(export_onnx(same_weights, f"{folder}/model.onnx", quantize=quantize))
    ep = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    # on the CPU, ONNX Runtime gets torch's thread count: the providers share the cores alike
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    sess = session(_EXPORTS[key], [ep], threads=threads)
    feed = {sess.get_inputs()[0].name: x.detach().cpu().numpy()}

    def body():
        return (torch.from_numpy(sess.run(None, feed)[0]),), ()

    return body
