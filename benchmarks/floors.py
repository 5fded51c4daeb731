"""Counted work of every Triton kernel and every benchmark case, and the floors they imply.

The one source of truth for FLOPs, exponentials and bytes (docs/design.md#benchmarks): the
pytest-benchmark suite, ``scripts/gpu_timing.py`` and ``python -m benchmarks.profile`` all
read their counts here.

How things are counted (per kernel, as the kernel executes it, from kernels/*.py):

* ``flops``: arithmetic on *useful* (unpadded) elements: a multiply-add is 2, an add,
  multiply, compare-select or divide is 1. Padding columns of the ``tl.dot`` tiles
  (``CK = 16`` for 8 channels) and recomputation *are* what the kernel does, so recompute
  is counted (the backward's re-run of norm1 and the FFN) while padding is not;
  :func:`padded_dot_flops` gives the padded FFN work for comparison.
* ``exps``: exponentials (``tl.exp``, the exponential inside ``tl.sigmoid``): the special
  function unit's work (MUFU on NVIDIA GPUs). Per-row square roots and reciprocals are
  negligible and counted as flops.
* ``bytes``: *compulsory* global-memory traffic of the launch: every tensor the kernel reads
  counted once, every tensor it writes counted once (re-reads that hit L2, e.g. the
  streamed band chunks, are not counted). Parameters are negligible and left out, except in
  the LSTM and the optimiser step of the full-model cases.

A floor is ``max(flops / compute peak, exps / exp peak, bytes / copy bandwidth)``: the time
the work would take at the measured peak of its tightest resource, with perfect overlap of
the others (:func:`floor_ms`). The F-Encoder kernels run their dots in float32 (``ieee``,
or ``tf32`` where the precision selection allows), so their compute peak is the fp32 (or
tf32) matmul peak whatever the input dtype.

Case counts (:func:`case_counts`): flops and exps are the work of the launches ``ATFNN``'s
fused path makes for the case (:func:`fused_launches`, recompute included) plus, for
``full_fwd`` / ``train_step``, the Bi-LSTM, the classifier and Adam; bytes are the case's
compulsory traffic (each input read once, each output written once: the floor any
implementation could reach, not the fused path's intermediate round trips).

Notation: ``N = B*T`` frames, ``F = n_mels`` bands, ``c`` channels, ``h`` heads, ``k`` the
FFN kernel, ``p`` FFN channels, ``HP`` heads padded to a power of two (>= 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from atfnn_fast import ATFNNConfig
from atfnn_fast.kernels import tuning

F32 = 4  # bytes of the float32 scratch tensors (y1, d r2, d y1, beta/gamma, ...)


@dataclass(frozen=True)
class Counts:
    """Work of a launch or a case: flops, exponentials, bytes of global-memory traffic."""

    flops: int = 0
    exps: int = 0
    bytes: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.flops + other.flops, self.exps + other.exps, self.bytes + other.bytes)

    def scaled(self, factor: int) -> Counts:
        return Counts(self.flops * factor, self.exps * factor, self.bytes * factor)


def _sum(items) -> Counts:
    total = Counts()
    for item in items:
        total = total + item
    return total


def _p2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _hp(heads: int) -> int:
    return max(2, 1 << (heads - 1).bit_length())


# ------------------------------------------------------------------ band attention kernels
def _conv_weights(c: int, cin: int, group: int) -> tuple[int, int]:
    """flops and exps of one window's weight: C conv outputs over ``cin*group`` inputs
    (+ bias), their sigmoid (exp, add, divide) and the mean over C."""
    return c * (2 * cin * group + 1) + 2 * c + c + 1, c


def band_fwd(windows: int, c: int, cin: int, group: int, width: int, elem: int, target: bool):
    """``_band_fwd_kernel``: ``windows`` windows of ``group`` positions, ``cin`` source
    channels, ``c`` conv channels, ``width`` target channels. ``target=False``: the source is
    re-weighted (F-Attention, or the T-Attention weights of the fused front-end, whose ``out``
    is written and unused)."""
    flops, exps = _conv_weights(c, cin, group)
    flops += 2 * group * width  # out = tgt + w * tgt
    read = cin * group + (group * width if target else 0)
    written = group * width + group  # out, the weight map
    return Counts(windows * flops, windows * exps, windows * (read + written) * elem)


def band_bwd(
    windows: int,
    c: int,
    cin: int,
    group: int,
    width: int,
    elem: int,
    target: bool,
    grad_map: bool,
    grad_out: bool = True,
) -> Counts:
    """``_band_bwd_kernel``: the weights recomputed, then per conv channel the conv and
    its sigmoid again (the kernel's loop), ``dz``, ``d source`` and the weight/bias
    partials; ``d target``; reads source, target (when separate), ``d out`` (unless
    ``grad_out`` is False: an unused output, ``HAS_GOUT``) and the map's gradient
    (``grad_map``); writes ``d source`` and ``d target``."""
    flops, exps = _conv_weights(c, cin, group)
    gw = group * width
    flops += 2 * gw + (group if grad_map else 0) + 1  # d weight of the window
    flops += 2 * gw  # d target = d out * (1 + w)
    per_c = (2 * cin * group + 1) + 2 + 3 + 2 * cin * group + 2 * cin * group + 1
    flops += c * per_c
    exps += c
    if not target:
        flops += gw  # d source += d target (one tensor)
    read = cin * group + (gw if target else 0) + (gw if grad_out else 0)
    read += group if grad_map else 0
    written = cin * group + (gw if target else 0)
    return Counts(windows * flops, windows * exps, windows * (read + written) * elem)


def param_grad_sum(rows: int, width: int, elem: int) -> Counts:
    """``_band_param_grad_kernel`` / ``_fenc_param_grad_kernel``: ``rows`` float32 partial
    rows of ``width`` values summed (the derive's vector-Jacobian product on the summed row
    is negligible); writes one row of parameter gradients."""
    return Counts(rows * width, 0, rows * width * F32 + width * elem)


def fenc_derive(c: int, h: int, k: int, p: int) -> Counts:
    """``_fenc_derive_kernel``: the packed rank-one parameters from the module's (a few
    hundred FMAs, the FFN weights copied into their im2col layout)."""
    size = packed_size(c, h, k, p)
    return Counts(2 * 3 * c * c + 4 * c * c, 0, 2 * size * F32)


def packed_size(c: int, h: int, k: int, p: int) -> int:
    """Values of the packed parameter buffer (kernels/fenc_common.param_layout)."""
    return 7 * c + 2 * h + h * c + p + 2 * k * c * p


# --------------------------------------------------------------------- F-Encoder kernels
def _softmax(f: int, h: int, with_var: bool) -> tuple[int, int]:
    """flops and exps of one band's streamed rank-one softmax (``_band_softmax``)."""
    per_g = 6 + (3 if with_var else 0)  # d, s*d, den +=, num += e*d (, sq += e*d*d)
    flops = h * f * per_g + 2 * h + h + 2 * h + (4 * h if with_var else 0)
    return flops, h * f


def _token_norm(c: int, h: int) -> int:
    """flops of the pre-norm token (lift + heads) and one LayerNorm with its affine."""
    return 2 * c * (1 + h) + (5 * c + 4) + 2 * c


def _frame_range(f: int) -> int:
    return 2 * f  # max and min over the bands, per frame


def fenc_norm1(n: int, f: int, c: int, h: int, elem: int) -> Counts:
    """``_fenc_norm1_kernel``: per (frame, band) the softmax over every band and head, the
    token, LayerNorm1; reads x, writes ``y1`` (float32)."""
    sm_flops, exps = _softmax(f, h, False)
    flops = n * (_frame_range(f) + f * (sm_flops + _token_norm(c, h)))
    return Counts(flops, n * f * exps, n * f * (elem + c * F32))


def ffn_flops(c: int, k: int, p: int) -> int:
    """Useful FFN flops per (frame, band): two convolutions of ``k`` taps, ``c -> p -> c``."""
    return 2 * k * c * p + 2 * k * p * c


def padded_dot_flops(c: int, k: int, p: int) -> int:
    """The FFN flops per (frame, band) the ``tl.dot`` tiles issue (dims padded to >= 16)."""
    ck = max(16, 1 << (c - 1).bit_length())
    pk = max(16, 1 << (p - 1).bit_length())
    return 2 * k * ck * pk + 2 * k * pk * ck


def fenc_ffn(n: int, f: int, c: int, k: int, p: int, elem: int, has_wt: bool, grad: bool) -> Counts:
    """``_fenc_ffn_kernel``: FFN1 + ReLU, FFN2, residual, LayerNorm2, ``* (1 + w_t)``;
    reads ``y1`` and ``w_t``, writes the output. With ``grad`` (the backward's step 2):
    reads ``d out`` instead, writes ``d w_t`` and ``d r2`` (float32), LayerNorm2 backward."""
    flops = ffn_flops(c, k, p) + 2 * p + 2 * c + (5 * c + 4) + 2 * c
    if has_wt:
        flops += 1 + (c if not grad else 0)
    read = c * F32 + (elem if has_wt else 0)
    if grad:
        flops += (2 * c + c if has_wt else 0) + 3 * c + 8 * c  # d w_t, LN2 grads, LN2 bwd
        read += c * elem
        written = c * F32 + (elem if has_wt else 0)
    else:
        written = c * elem
    return Counts(n * f * flops, 0, n * f * (read + written))


def fenc_bwd_dh1(n: int, f: int, c: int, k: int, p: int, elem: int) -> Counts:
    """``_fenc_bwd_dh1_kernel``: recomputes FFN1 (``h1``), forms ``d a1`` (FFN2
    transposed) and ``d h1``, and accumulates both weight gradients and the FFN biases'.
    Reads ``y1`` and ``d r2``; writes ``d h1`` (16-bit for bf16 / fp16 inputs, else
    float32)."""
    half = ffn_flops(c, k, p) // 2  # one convolution: 2 k c p
    flops = 4 * half + p + 3 * p + p + c  # h1, d a1, d W1, d W2, bias, relu masks, sums
    return Counts(n * f * flops, 0, n * f * (2 * c * F32 + p * _dh1_elem(elem)))


def fenc_bwd_dy1(n: int, f: int, c: int, k: int, p: int, elem: int) -> Counts:
    """``_fenc_bwd_dy1_kernel``: ``d y1 = d r2 + d h1`` through FFN1 transposed (one
    convolution). Reads ``d r2`` and ``d h1``, writes ``d y1``."""
    half = ffn_flops(c, k, p) // 2
    return Counts(n * f * (half + c), 0, n * f * (2 * c * F32 + p * _dh1_elem(elem)))


def _dh1_elem(elem: int) -> int:
    """Bytes of a ``d h1`` element: the dots' operand width (2 for bf16 / fp16 inputs)."""
    return elem if elem == 2 else F32


def fenc_bwd_norm1(n: int, f: int, c: int, h: int, elem: int) -> Counts:
    """``_fenc_bwd_norm1_kernel``: the softmax again with its variance, the token and
    LayerNorm1 again, LayerNorm1 backward, the direct attention gradients; reads x and
    ``d y1``, writes ``d x`` (direct part) and beta/gamma (``2*HP`` per head slot)."""
    sm_flops, exps = _softmax(f, h, True)
    back = 3 * c + 8 * c + 3 * c + 4 * c * h + h + 3 * h + 2 * c + 2 * h + 4 * h
    flops = n * (_frame_range(f) + f * (sm_flops + _token_norm(c, h) + back))
    return Counts(flops, n * f * exps, n * f * (elem + c * F32 + F32 + 2 * _hp(h) * F32))


def fenc_bwd_softmax(n: int, f: int, h: int, elem: int) -> Counts:
    """``_fenc_bwd_softmax_kernel``: for every band g, the transposed attention over every
    band f and head: ``exp(s_f x_g - M_f) (beta_f + gamma_f x_g)``; reads x, the direct
    ``d x`` and beta/gamma, writes ``d x``."""
    flops = n * (_frame_range(f) + f * (9 * h * f + 2 * h))
    return Counts(flops, n * f * h * f, n * f * (2 * elem + F32 + 2 * _hp(h) * F32))


# ------------------------------------------------------------- launches of the fused path
def _fused_t(cfg: ATFNNConfig) -> bool:
    return cfg.t_attention and cfg.f_encoder and cfg.t_attention_source == "input"


def fused_launches(
    cfg: ATFNNConfig, blk: str, batch: int, frames: int, elem: int, backward: bool
) -> list[tuple[str, Counts]]:
    """``(kernel label, Counts)`` of every Triton launch ``ATFNN`` makes for block ``blk``
    (``band_attention``, ``freq_encoder`` or ``front_end``; ``full``/``train`` launch the
    front-end's), forward then backward, with the sizes of the benchmark cases
    (:mod:`benchmarks.cases`). Labels are :func:`launch_label`'s."""
    n, f, c, h = batch * frames, cfg.n_mels, cfg.channels, cfg.num_heads
    k, p = cfg.ffn_kernel, cfg.ffn_channels
    bft = batch * f * frames
    fw, tw = bft // cfg.f_group, bft // cfg.t_group
    enc_w = cfg.encoding_width

    fs = tuning.freq_encoder_settings(f, c, p)
    fenc_rows = max(
        batch * -(-frames // kl.block_t) for kl in (fs.ffn, fs.ffn_bwd_dh1, fs.norm1_bwd)
    )

    def band_rows(windows: int, cin: int, group: int, width: int) -> int:
        kp, gwp = _p2(cin * group), _p2(group * width)
        return -(-windows // tuning.band_attention_settings(kp, gwp, True).block)

    def fenc(has_wt: bool) -> tuple[list, list]:
        fwd = [
            ("_fenc_derive_kernel", fenc_derive(c, h, k, p)),
            ("_fenc_norm1_kernel", fenc_norm1(n, f, c, h, elem)),
            ("_fenc_ffn_kernel", fenc_ffn(n, f, c, k, p, elem, has_wt, False)),
        ]
        bwd = [
            ("_fenc_norm1_kernel", fenc_norm1(n, f, c, h, elem)),
            ("_fenc_ffn_kernel[GRAD]", fenc_ffn(n, f, c, k, p, elem, has_wt, True)),
            ("_fenc_bwd_dh1_kernel", fenc_bwd_dh1(n, f, c, k, p, elem)),
            ("_fenc_bwd_dy1_kernel", fenc_bwd_dy1(n, f, c, k, p, elem)),
            ("_fenc_bwd_norm1_kernel", fenc_bwd_norm1(n, f, c, h, elem)),
            ("_fenc_bwd_softmax_kernel", fenc_bwd_softmax(n, f, h, elem)),
            ("_fenc_param_grad_kernel", param_grad_sum(fenc_rows, packed_size(c, h, k, p), elem)),
        ]
        return fwd, bwd

    def f_att() -> tuple[list, list]:
        args = (fw, c, 1, cfg.f_group, 1, elem)
        return (
            [(f"_band_fwd_kernel[G={cfg.f_group}]", band_fwd(*args, target=False))],
            [
                (
                    f"_band_bwd_kernel[G={cfg.f_group}]",
                    band_bwd(*args, target=False, grad_map=False),
                ),
                (
                    "_band_param_grad_kernel",
                    param_grad_sum(band_rows(fw, 1, cfg.f_group, 1), c * cfg.f_group + c, elem),
                ),
            ],
        )

    def t_att(
        width: int, cin: int, target: bool, grad_map: bool, grad_out: bool = True
    ) -> tuple[list, list]:
        args = (tw, c, cin, cfg.t_group, width, elem)
        rows = band_rows(tw, cin, cfg.t_group, width)
        return (
            [(f"_band_fwd_kernel[G={cfg.t_group}]", band_fwd(*args, target=target))],
            [
                (
                    f"_band_bwd_kernel[G={cfg.t_group}]",
                    band_bwd(*args, target=target, grad_map=grad_map, grad_out=grad_out),
                ),
                (
                    "_band_param_grad_kernel",
                    param_grad_sum(rows, c * cin * cfg.t_group + c, elem),
                ),
            ],
        )

    parts: list[tuple[list, list]] = []
    if blk == "band_attention":  # cases.build: F-Attention of x, T-Attention of (x, enc)
        if cfg.f_attention:
            parts.append(f_att())
        if cfg.t_attention:
            parts.append(t_att(enc_w, cfg.t_attention_in_channels, True, False))
    elif blk == "freq_encoder":
        if cfg.f_encoder:
            parts.append(fenc(False))
    elif blk in ("front_end", "full", "train"):
        if cfg.f_attention:
            parts.append(f_att())
        if _fused_t(cfg):
            # T-Attention weights from x (out written, unused: its gradient is never formed)
            parts.append(t_att(1, 1, False, True, grad_out=False))
            parts.append(fenc(True))
        else:
            if cfg.f_encoder:
                parts.append(fenc(False))
            if cfg.t_attention:
                parts.append(t_att(enc_w, cfg.t_attention_in_channels, True, True))
    else:
        raise ValueError(f"unknown block {blk!r}")
    launches = [item for fwd, _ in parts for item in fwd]
    if backward:
        launches += [item for _, bwd in reversed(parts) for item in bwd]
    return launches


def launch_label(kernel_name: str, kwargs: dict) -> str:
    """The label :func:`fused_launches` gives a launch of ``kernel_name`` with these launch
    keyword arguments (the variant flags of the shared kernels, the band attention's group)."""
    if kernel_name in ("_band_fwd_kernel", "_band_bwd_kernel"):
        return f"{kernel_name}[G={kwargs.get('G')}]"
    if kernel_name == "_fenc_ffn_kernel" and kwargs.get("GRAD"):
        return "_fenc_ffn_kernel[GRAD]"
    return kernel_name


# ------------------------------------------------------------------------- model parts
def lstm_counts(cfg: ATFNNConfig, batch: int, frames: int, elem: int) -> Counts:
    """Forward of the Bi-LSTM: per layer, direction and step the gate matmuls
    (``4H x (d_in + H)``), two biases, 3 sigmoids and 2 tanh (5 exps), the cell update;
    bytes: the weights once (float32) and the sequences in and out."""
    h = cfg.lstm_hidden
    flops = exps = weights = seq = 0
    for layer in range(cfg.lstm_layers):
        d_in = cfg.lstm_input_size if layer == 0 else 2 * h
        per_step = 2 * 4 * h * (d_in + h) + 2 * 4 * h + 3 * 3 * h + 2 * 2 * h + 4 * h
        flops += 2 * batch * frames * per_step
        exps += 2 * batch * frames * 5 * h
        weights += 2 * 4 * h * (d_in + h + 2)
        seq += batch * frames * (d_in + 2 * h)
    return Counts(flops, exps, weights * F32 + seq * elem)


def head_counts(cfg: ATFNNConfig, batch: int) -> Counts:
    return Counts(2 * batch * cfg.embedding_size * cfg.num_classes, 0, 0)


def parameter_count(cfg: ATFNNConfig) -> int:
    import torch

    from atfnn_fast import ATFNNReference

    with torch.device("meta"):
        return sum(q.numel() for q in ATFNNReference(cfg).parameters())


def adam_counts(cfg: ATFNNConfig) -> Counts:
    """Adam step: about 12 flops per parameter (moments, bias corrections, update); reads
    p, g, m, v and writes p, m, v in float32."""
    n = parameter_count(cfg)
    return Counts(12 * n, 0, 7 * F32 * n)


# ---------------------------------------------------------------------------- the cases
def block(case: str) -> str:
    return case.removesuffix("_fwd_bwd").removesuffix("_fwd").removesuffix("_step")


def has_backward(case: str) -> bool:
    return case.endswith("_fwd_bwd") or case == "train_step"


def bytes_moved(cfg: ATFNNConfig, case: str, batch: int, frames: int, elem: int) -> int:
    """Compulsory global-memory traffic of a case in bytes (``elem`` bytes per activation
    element): every tensor that must cross global memory read or written once."""
    bft = batch * cfg.n_mels * frames
    btfc = bft * cfg.encoding_width
    blk, bwd = block(case), has_backward(case)
    if blk == "band_attention":
        # F: read x, write x' and w_f. T: read x, read x̂, write x̂'' and w_t.
        fwd = 3 * bft + 2 * bft + 2 * btfc
        # F: read x, dout, write dx. T: read x, x̂, dout; write dx̂, dx.
        back = 3 * bft + 2 * bft + 3 * btfc
    elif blk == "freq_encoder":
        fwd = bft + btfc  # read x', write x̂
        back = 2 * bft + btfc  # read x' (recompute) and dout, write dx'
    else:
        fwd = 3 * bft + btfc  # read x, write x̂'' and the two maps
        back = 2 * bft + btfc
    total = (fwd + back if bwd else fwd) * elem
    if blk in ("full", "train"):
        lstm = lstm_counts(cfg, batch, frames, elem).bytes
        total += 3 * lstm if bwd else lstm
    if blk == "train":
        total += adam_counts(cfg).bytes
    return total


def case_counts(cfg: ATFNNConfig, case: str, batch: int, frames: int, elem: int) -> Counts:
    """flops and exps of the fused path's launches for the case (plus LSTM, classifier and
    Adam where the case has them; an LSTM backward costs twice its forward matmuls and no
    exps); bytes: :func:`bytes_moved`."""
    blk, bwd = block(case), has_backward(case)
    launches = fused_launches(cfg, blk, batch, frames, elem, bwd)
    work = _sum(c for _, c in launches)
    if blk in ("full", "train"):
        lstm, head = lstm_counts(cfg, batch, frames, elem), head_counts(cfg, batch)
        work = work + lstm + head
        if bwd:
            work = work + Counts(2 * lstm.flops, 0, 0) + head.scaled(2)
    if blk == "train":
        work = work + adam_counts(cfg)
    return Counts(work.flops, work.exps, bytes_moved(cfg, case, batch, frames, elem))


def flops(cfg: ATFNNConfig, case: str, batch: int, frames: int) -> int:
    """Counted flops of a case (see :func:`case_counts`)."""
    return case_counts(cfg, case, batch, frames, 4).flops


def compute_peak(
    peaks: dict, dtype: str, precision: str = "ieee", provider: str = ""
) -> float | None:
    """TFLOP/s a case's flops are held to: the int8 matmul peak for an int8 provider
    (``onnxruntime-int8``: its GEMMs run in int8; fp32 where int8 was not measured), the
    bf16 matmul peak for bf16 cases, else the fp32 (``ieee``) or tf32 matmul peak."""
    if provider.endswith("int8") and peaks.get("matmul_tops_int8"):
        return peaks["matmul_tops_int8"]
    if dtype != "float32":
        return peaks.get("matmul_tflops_bf16")
    key = "matmul_tflops_tf32" if precision == "tf32" else "matmul_tflops_fp32"
    return peaks.get(key)


def floor_ms(counts: Counts, peaks: dict, tflops: float | None) -> dict:
    """``{"floor_ms", "bound", "compute_ms", "exp_ms", "memory_ms"}``: the floor and which
    resource sets it, from the measured ``peaks`` (``copy_gbps``, ``exp_per_s``) and the
    compute peak ``tflops``; a term whose peak was not measured is None."""
    terms = {
        "compute": counts.flops / (tflops * 1e12) * 1e3 if tflops else None,
        "exp": counts.exps / peaks["exp_per_s"] * 1e3 if peaks.get("exp_per_s") else None,
        "memory": counts.bytes / (peaks["copy_gbps"] * 1e9) * 1e3
        if peaks.get("copy_gbps")
        else None,
    }
    known = {k: v for k, v in terms.items() if v is not None}
    bound = max(known, key=known.get) if known else None
    return {
        "floor_ms": known[bound] if bound else None,
        "bound": bound,
        **{f"{k}_ms": v for k, v in terms.items()},
    }
