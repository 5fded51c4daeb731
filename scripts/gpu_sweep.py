"""One GPU call explores the launch settings: every candidate of ``kernels/tuning.py``
(frames per program, warps, stages; dot precision ieee vs tf32), timed per kernel.

    python scripts/gpu_sweep.py --out sweep.json --write-tuned tuned/ [--budget-s 100]
    python scripts/gpu_sweep.py --dry-run          # CPU: the plan, and that overrides reach
                                                   # the launches (recorded, not run)

For each candidate of :func:`atfnn_fast.kernels.tuning.candidate_settings` the workload of
its op runs under :func:`tuning.override` with that one setting changed, every launch
timed between two CUDA events (:class:`benchmarks.profile.LaunchTimer`): the F-Encoder
forward + backward with the T-Attention weights (what training launches; B = 128, T = 128,
default config), the F- and T-Attention weights of the fused front-end ("narrow" rows) and
the T-Attention reading an encoding ("wide" rows); slots with no alternative to their default
(the forward FFN, "mid" rows) are not timed. A candidate's time is the median over
``--steps`` steps of the summed time of the launches it sets (norm1 runs twice per step:
forward and the backward's recompute). ``tf32``: ``torch.backends.cuda.matmul.allow_tf32``
and ``torch.backends.cudnn.allow_tf32`` on, for the kernels with dots; the precision the
kernels actually received (their ``PREC``) is recorded, and the tf32 pass stops when they
ignore the flags.

``--write-tuned DIR`` writes ``DIR/sm_<XX>.json`` in the format ``tuning.load_table`` reads
(commit it as ``kernels/tuned/sm_<XX>.json``): per slot the fastest candidate when it beats
the default by more than 3 % (``num_stages`` included: the host code passes a setting's
stages to its launches). With ``--timing-json`` (``scripts/gpu_timing.py``'s JSON) it also
names, per dtype, the F-Encoder passes that ``torch.compile`` of the rank-one math
("compile-rank1") ran faster than the kernels (:func:`pass_choices`). The JSON of all rows is rewritten after every
candidate, so a run cut off early keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atfnn_fast import ATFNN, ATFNNConfig, kernels  # noqa: E402
from atfnn_fast.kernels import launch as launch_path  # noqa: E402
from atfnn_fast.kernels import tuning  # noqa: E402
from benchmarks import device as dev  # noqa: E402
from benchmarks.profile import FENC_SLOTS, LaunchTimer  # noqa: E402

# slot order: the kernels that take the most time first (the budget may cut the tail)
SLOT_ORDER = (
    "ffn_bwd_dh1",
    "ffn_bwd_dy1",
    "ffn",
    "norm1_bwd",
    "softmax_bwd",
    "norm1",
    "bwd-narrow",
    "fwd-narrow",
    "bwd-wide",
    "fwd-wide",
    "bwd-mid",
    "fwd-mid",
)
IMPROVEMENT = 0.03  # a candidate must beat the default by more than this to be written


def launch_slot(label: str, consts: dict) -> str | None:
    """The tuning slot a recorded launch takes its setting from."""
    if label in FENC_SLOTS:
        return FENC_SLOTS[label]
    if label.startswith("_band_") and "KP" in consts and "GWP" in consts:
        return tuning.band_slot(consts["KP"], consts["GWP"], label.startswith("_band_bwd"))
    return None


def workloads(cfg: ATFNNConfig, batch: int, frames: int, device) -> dict:
    """op -> one step (forward + backward) launching that op's kernels."""
    torch.manual_seed(0)
    model = ATFNN(cfg, check_finite=False).to(device)
    enc_mod = model.f_encoder
    x = torch.randn(batch, 1, cfg.n_mels, frames, device=device, requires_grad=True)
    wt = torch.rand(batch, cfg.n_mels, frames, device=device, requires_grad=True)
    enc = torch.randn(batch, frames, cfg.n_mels, cfg.channels, device=device, requires_grad=True)
    f_conv, t_conv = model.f_attention.conv, model.t_attention.conv

    def fenc():
        out = kernels.freq_encoder(
            x, *enc_mod.op_params(), num_heads=enc_mod.num_heads, eps=enc_mod.eps, time_weights=wt
        )
        out.float().square().mean().backward()

    def band_narrow():
        out, _w_f = kernels.band_attention(x, f_conv.weight, f_conv.bias, axis="freq")
        _, w_t = kernels.band_attention(x, t_conv.weight, t_conv.bias, axis="time")
        (out.float().square().mean() + w_t.float().mean()).backward()

    def band_wide():
        out, _ = kernels.band_attention(x, t_conv.weight, t_conv.bias, enc, axis="time")
        out.float().square().mean().backward()

    return {"freq_encoder": fenc, "band_narrow": band_narrow, "band_wide": band_wide}


def _workload_of(cand: tuning.Candidate) -> str:
    if cand.op == "freq_encoder":
        return "freq_encoder"
    return "band_wide" if cand.slot.endswith("wide") else "band_narrow"


def _override(cand: tuning.Candidate):
    if cand.op == "freq_encoder":
        return tuning.override(freq_encoder=tuning.freq_encoder_with(cand.slot, cand.setting))
    return tuning.override(band_attention={cand.slot: cand.setting})


def _setting_json(setting) -> list | dict:
    if isinstance(setting, tuning.KernelLaunch):
        out = [setting.block_t, setting.num_warps]
        return [*out, setting.num_stages] if setting.num_stages is not None else out
    out = {"block": setting.block, "num_warps": setting.num_warps}
    if setting.num_stages is not None:
        out["num_stages"] = setting.num_stages
    return out


def plan(precisions: list[str]) -> list[tuple[str, tuning.Candidate]]:
    """(precision, candidate) in the order the sweep times them; slots whose only candidate
    is the default have nothing to compare and are left out."""
    per_slot = defaultdict(int)
    for c in tuning.candidate_settings():
        per_slot[c.slot] += 1
    cands = sorted(
        (c for c in tuning.candidate_settings() if per_slot[c.slot] > 1),
        key=lambda c: SLOT_ORDER.index(c.slot),
    )
    out = [("ieee", c) for c in cands] if "ieee" in precisions else []
    if "tf32" in precisions:
        out += [("tf32", c) for c in cands if c.slot in tuning.DOT_FIELDS]
    return out


def time_candidate(step, cand, steps: int) -> dict:
    timer = LaunchTimer()
    with launch_path.recording(timer), _override(cand):
        step()
        timer.times()  # warm-up: compiles this setting
        per_step, seen = [], []
        for _ in range(steps):
            step()
            recs = [r for r in timer.times() if launch_slot(r["label"], r["consts"]) == cand.slot]
            per_step.append(sum(r["ms"] for r in recs))
            seen = recs
    if not seen:
        raise RuntimeError(f"no launch of slot {cand.slot} in its workload")
    return {
        "median_ms": round(statistics.median(per_step), 5),
        "launches": [r["label"] for r in seen],
        "prec_seen": sorted({str(r["consts"].get("PREC", "-")) for r in seen}),
        "stages_injected": any(r["stages_injected"] for r in seen),
        "tiles": sorted({f"kp{r['consts']['KP']}-gwp{r['consts']['GWP']}" for r in seen})
        if cand.op == "band_attention"
        else [],
    }


def set_precision(precision: str) -> None:
    on = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def tuned_table(rows: list[dict], cfg: ATFNNConfig, arch: int, device: str, commit) -> dict:
    """The tuning.load_table format from the sweep rows: per (precision, slot) the fastest
    candidate usable in production, when it beats the slot's default by > 3 %."""
    defaults = {}
    for c in tuning.candidate_settings():
        defaults.setdefault((c.op, c.slot), _setting_json(c.setting))
    best: dict = {}
    by_slot = defaultdict(list)
    for r in rows:
        if r.get("median_ms") is not None and not r.get("stages_injected"):
            prec = r["precision"]  # the mode the run set: the key the host reads with
            by_slot[(r["op"], r["slot"], prec if r["op"] == "freq_encoder" else "-")].append(r)
    for key, cands in by_slot.items():
        op, slot, _ = key
        default = next((r for r in cands if r["setting"] == defaults[(op, slot)]), None)
        fastest = min(cands, key=lambda r: r["median_ms"])
        if default is None or fastest is default:
            continue
        if fastest["median_ms"] < default["median_ms"] * (1 - IMPROVEMENT):
            best[key] = fastest
    table: dict = {
        "arch": arch,
        "device": device,
        "source": f"scripts/gpu_sweep.py, {dt.date.today().isoformat()}, commit {commit}",
        "freq_encoder": {},
        "band_attention": {},
    }
    for (op, slot, prec), r in sorted(best.items()):
        if op == "freq_encoder":
            key = tuning.table_key("float32", prec, cfg.channels, cfg.ffn_channels)
            table["freq_encoder"].setdefault(key, {})[slot] = r["setting"]
        else:
            for tile in r["tiles"]:
                table["band_attention"].setdefault(slot, {})[f"{tile}/float32"] = r["setting"]
    return table


def pass_choices(timing_rows: list[dict], cfg: ATFNNConfig) -> dict:
    """``{table key: {"forward" / "backward": "compile-rank1"}}`` from the rows of
    ``scripts/gpu_timing.py`` (its JSON's ``cases``): per dtype, the F-Encoder forward
    (``freq_encoder_fwd``) and backward (``freq_encoder_fwd_bwd`` minus the forward) of
    ``fused`` against ``compile-rank1``; a pass is sent to ``compile-rank1`` where that is
    faster by more than IMPROVEMENT (issue #16: dispatch a pass to it until a kernel wins).
    The timing runs under torch's default flags, so float32 is keyed ``tf32``."""
    ms = {(r["case"], r["provider"], r["dtype"]): r.get("median_ms") for r in timing_rows}
    out: dict = {}
    for dtype in sorted({r["dtype"] for r in timing_rows}):
        f = [ms.get(("freq_encoder_fwd", p, dtype)) for p in ("fused", "compile-rank1")]
        fb = [ms.get(("freq_encoder_fwd_bwd", p, dtype)) for p in ("fused", "compile-rank1")]
        entry = {}
        if None not in f and f[1] < f[0] * (1 - IMPROVEMENT):
            entry["forward"] = "compile-rank1"
        if None not in f + fb and fb[1] - f[1] < (fb[0] - f[0]) * (1 - IMPROVEMENT):
            entry["backward"] = "compile-rank1"
        if entry:
            out[tuning.table_key(dtype, "tf32", cfg.channels, cfg.ffn_channels)] = entry
    return out


def dry_run(cfg: ATFNNConfig) -> int:
    """CPU: print the plan and check, by recording the launches (nothing compiled), that
    every candidate's override reaches its kernels' launch arguments."""
    n = 0
    for precision, cand in plan(["ieee", "tf32"]):
        n += 1
        if precision != "ieee":
            continue
        steps = workloads(cfg, 2, 16, torch.device("cpu"))
        seen = []

        def record(kernel, grid, args, kwargs, seen=seen, cand=cand):
            from benchmarks.floors import launch_label
            from benchmarks.profile import kernel_name

            label = launch_label(kernel_name(kernel), kwargs)
            if launch_slot(label, kwargs) == cand.slot:
                seen.append(kwargs)

        with launch_path.recording(record), kernels.use_backend("triton"), _override(cand):
            steps[_workload_of(cand)]()
        s = cand.setting
        want = (s.block_t, s.num_warps) if cand.op == "freq_encoder" else (s.block, s.num_warps)
        got = {(kw.get("BT", kw.get("BLOCK")), kw["num_warps"]) for kw in seen}
        if got != {want}:
            raise SystemExit(f"{cand}: override not reaching the launches (saw {got})")
    print(f"dry run: {n} (precision, candidate) pairs; every override reaches its launches")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, help="JSON of every timed candidate")
    ap.add_argument("--write-tuned", type=Path, help="folder for sm_<XX>.json (tuning format)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", nargs="+", default=["ieee", "tf32"], choices=("ieee", "tf32"))
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting candidates")
    ap.add_argument("--dry-run", action="store_true", help="CPU: plan and override check")
    ap.add_argument(
        "--timing-json",
        type=Path,
        help="scripts/gpu_timing.py's JSON: passes compile-rank1 wins go into the tuned table",
    )
    args = ap.parse_args(argv)
    cfg = ATFNNConfig()
    if args.dry_run:
        return dry_run(cfg)
    if not torch.cuda.is_available():
        ap.error("the sweep times CUDA launches: it needs a CUDA device (or --dry-run)")
    t0 = time.perf_counter()
    device = torch.device("cuda")
    arch = tuning.current_arch()
    steps = workloads(cfg, args.batch, args.frames, device)
    rows: list[dict] = []
    result = {
        "device": dev.device_name(device),
        "arch": arch,
        "commit": dev.git_commit(),
        "date": dt.date.today().isoformat(),
        "batch": args.batch,
        "frames": args.frames,
        "rows": rows,
    }
    tf32_ignored = False
    was = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    for precision, cand in plan(args.precision):
        base = dict(
            precision=precision, op=cand.op, slot=cand.slot, setting=_setting_json(cand.setting)
        )
        if time.perf_counter() - t0 > (args.budget_s or float("inf")):
            row = {**base, "error": "skipped: time budget spent"}
        elif precision == "tf32" and tf32_ignored:
            row = {**base, "error": "skipped: the kernels ignore the tf32 flags (PREC stays ieee)"}
        else:
            set_precision(precision)
            try:
                row = {**base, **time_candidate(steps[_workload_of(cand)], cand, args.steps)}
                if precision == "tf32" and row["prec_seen"] == ["ieee"]:
                    tf32_ignored = True
            except Exception as exc:
                row = {**base, "error": repr(exc)[:400]}
                torch.cuda.synchronize()
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = was
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.write_tuned and arch is not None:
        table = tuned_table(rows, cfg, arch, result["device"], result["commit"])
        if args.timing_json and args.timing_json.is_file():
            timing = json.loads(args.timing_json.read_text())
            for key, entry in pass_choices(timing.get("cases", []), cfg).items():
                table["freq_encoder"].setdefault(key, {}).update(entry)
        args.write_tuned.mkdir(parents=True, exist_ok=True)
        path = args.write_tuned / f"sm_{arch}.json"
        path.write_text(json.dumps(table, indent=1) + "\n")
        tuning.load_table(path)  # what was written must load
        print(f"wrote {path}: {json.dumps(table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
