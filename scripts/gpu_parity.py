"""GPU parity table of the fused front-end: ``python scripts/gpu_parity.py --out DIR``.

Rows: model configuration x precision mode; columns: the relative error
(``max |got - truth| / max |truth|``) of the front-end output and of the worst gradient
(input and every front-end parameter) against the float64 reference, each beside the bound
``tests/helpers.assert_accurate`` would apply (docs/design.md "How accuracy is judged": the
per-mode floor, twice the same-dtype eager reference's error, twice the rounding
sensitivity). Written to ``DIR/parity.json`` and ``DIR/parity.md`` after every row, so a
run cut off by its time limit still leaves the rows it finished.

Configurations: the FFN kernel sizes 1 and 3 at the default ``ffn_channels`` (32) and at 6
(``ffn1``, ``ffn1-p6`` ...) first, then ``default`` (k = 5), ``ffn5-p6``, ``encoding``
(T-Attention read from the encoding), ``tiny`` (the training preset) and ``wide`` (F = 64,
c = 16, 4 heads): the H100 run of
2026-11-26 failed ``ffn_kernel=1, ffn_channels=6`` (rel. err 0.146), and the pairs tell a
fault of the kernel size from one of the padded FFN width. Every row forces the Triton
kernels (``ATFNN_BACKEND=triton``, all FFN kernel sizes admitted), so a fallback cannot hide
a kernel. Precision modes: fp32 with tf32 allowed and with "ieee" (``torch.backends.cudnn
.allow_tf32``, which the kernels follow), bf16 and fp16.

Needs CUDA; ``--device cpu`` runs the same table through the Triton interpreter (fp32
"ieee" rows only, tiny sizes) to check the script itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _configs(quick: bool) -> dict:
    from atfnn_fast import ATFNNConfig
    from atfnn_fast.app.train import PRESETS

    base = dict(frames=32, n_mels=20, f_group=5) if quick else {}
    # the sizes that failed on the H100 first, so a run cut short still answers that
    out = {}
    for k in (1, 3):
        out[f"ffn{k}-p6"] = ATFNNConfig(ffn_kernel=k, ffn_channels=6, **base)
        out[f"ffn{k}"] = ATFNNConfig(ffn_kernel=k, **base)
    out["default"] = ATFNNConfig(**base)  # = ffn5 at P = 32
    out["ffn5-p6"] = ATFNNConfig(ffn_channels=6, **base)
    out["encoding"] = ATFNNConfig(t_attention_source="encoding", **base)
    out["tiny"] = ATFNNConfig(**{**PRESETS["tiny"], **base})
    wide = {**base, "n_mels": 16 if quick else 64, "f_group": 4}
    out["wide"] = ATFNNConfig(**wide, channels=16, num_heads=4)
    return out


# (name, dtype, tf32 allowed)
MODES = (
    ("fp32-tf32", "float32", True),
    ("fp32-ieee", "float32", False),
    ("bf16", "bfloat16", False),
    ("fp16", "float16", False),
)


def _front_end_leaves(model, x, g):
    """Front-end output and the gradients of ``(out * g).sum()`` w.r.t. the input and every
    front-end parameter (the LSTM and classifier are cuDNN / plain torch: not ours)."""
    import torch

    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    enc, _ = model.front_end(x)
    (enc.float() * g.to(enc.device)).sum().backward()
    grads = {
        n: p.grad
        for n, p in model.named_parameters()
        if not n.startswith(("t_encoder", "classifier")) and p.grad is not None
    }
    return enc.detach(), x.grad, grads, torch


def _worst(got, truth) -> tuple[float, str]:
    from helpers import max_rel_err

    worst, label = 0.0, ""
    for name, t in truth.items():
        err = max_rel_err(got[name].double(), t)
        if err > worst:
            worst, label = err, name
    return worst, label


def _row(name, cfg, mode, dtype_name, tf32, device, batch) -> dict:
    import torch
    from helpers import FLOOR, max_rel_err, randomize

    from atfnn_fast import ATFNN, ATFNNReference

    dtype = getattr(torch, dtype_name)
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    floor = FLOOR[dtype]
    if tf32 and device == "cuda":  # tf32 operands: their own floor (helpers)
        floor = max(floor, getattr(sys.modules["helpers"], "FLOOR_TF32", 5e-3))
    ref = randomize(ATFNNReference(cfg)).to(device).eval()
    fast = ATFNN(cfg, check_finite=False).to(device).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 1, cfg.n_mels, cfg.frames, device=device)
    g = torch.randn(batch, cfg.frames, cfg.n_mels, cfg.channels, device=device)

    def leaves(model, xx):
        enc, dx, grads, _ = _front_end_leaves(model, xx, g)
        return {"out": enc, "x": dx, **grads}

    truth = leaves(copy.deepcopy(ref).double(), x.double())
    got = leaves(copy.deepcopy(fast).to(dtype), x.to(dtype))
    ref_same = leaves(copy.deepcopy(ref).to(dtype), x.to(dtype))
    # rounding sensitivity: the float64 result under one-rounding perturbations of the
    # inputs and parameters in this dtype (helpers.rounding_sensitivity, 4 roundings, 2 draws)
    u = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype] * 4
    sens: dict[str, float] = {k: 0.0 for k in truth}
    for _ in range(2):
        ref_p = copy.deepcopy(ref).double()
        with torch.no_grad():
            for p in ref_p.parameters():
                p.mul_(1 + u * (2 * torch.rand_like(p) - 1))
        moved = leaves(ref_p, x.double() * (1 + u * (2 * torch.rand_like(x.double()) - 1)))
        for k in truth:
            sens[k] = max(sens[k], max_rel_err(moved[k], truth[k]))

    def bound(k):
        return max(floor, 2 * max_rel_err(ref_same[k].double(), truth[k]), 2 * sens[k])

    grad_keys = [k for k in truth if k != "out"]
    out_err = max_rel_err(got["out"].double(), truth["out"])
    ratios = {k: max_rel_err(got[k].double(), truth[k]) / bound(k) for k in grad_keys}
    worst_key = max(ratios, key=ratios.get)
    worst_err = max_rel_err(got[worst_key].double(), truth[worst_key])
    return {
        "config": name,
        "mode": mode,
        "out_err": out_err,
        "out_bound": bound("out"),
        "grad_err": worst_err,
        "grad_bound": bound(worst_key),
        "grad_worst": worst_key,
        "ok": out_err <= bound("out") and all(r <= 1 for r in ratios.values()),
    }


def _write(out: Path, rows: list[dict], meta: dict) -> None:
    (out / "parity.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        f"# Parity of the fused front-end on {meta['device']} ({meta['date']})",
        "",
        "Relative error against the float64 reference; bound as in docs/design.md "
        "(How accuracy is judged). `worst gradient` names the gradient nearest its bound.",
        "",
        "| config | mode | out err | out bound | worst grad err | its bound | worst gradient | ok |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['mode']} | error: {r['error']} | | | | | FAIL |")
            continue
        lines.append(
            f"| {r['config']} | {r['mode']} | {r['out_err']:.2e} | {r['out_bound']:.2e} "
            f"| {r['grad_err']:.2e} | {r['grad_bound']:.2e} | {r['grad_worst']} "
            f"| {'ok' if r['ok'] else 'FAIL'} |"
        )
    (out / "parity.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-out"))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--configs", nargs="*", default=None, help="names (default: all)")
    ap.add_argument("--quick", action="store_true", help="small F and T (interpreter check)")
    args = ap.parse_args(argv)
    os.environ["ATFNN_BACKEND"] = "triton"
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from atfnn_fast.kernels import dispatch
    from atfnn_fast.kernels.freq_encoder_op import custom_op as fe_custom

    dispatch.set_backend("triton")
    # every FFN kernel size runs the kernels here, verified or not: that is what this checks
    fe_custom.CUDA_FFN_KERNELS = (1, 3, 5)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (interpreter)",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "batch": args.batch,
    }
    configs = _configs(args.quick or args.device == "cpu")
    names = args.configs or list(configs)
    modes = MODES if args.device == "cuda" else MODES[1:2]
    rows: list[dict] = []
    for name in names:
        for mode, dtype_name, tf32 in modes:
            torch.manual_seed(len(rows))
            try:
                row = _row(name, configs[name], mode, dtype_name, tf32, args.device, args.batch)
            except Exception as exc:  # a failing row is recorded, the table goes on
                traceback.print_exc()
                row = {"config": name, "mode": mode, "error": f"{type(exc).__name__}: {exc}"}
                row["error"] = row["error"].splitlines()[0][:200]
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(args.out, rows, meta)
    bad = [r for r in rows if not r.get("ok")]
    print(f"parity: {len(rows) - len(bad)} of {len(rows)} rows within their bounds")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
