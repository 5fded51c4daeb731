"""A timing model read from the SASS: per launch, what one program executes, and from that a
time on H100, H200, RTX 4090 and RTX 5090 without running anything.

    python -m benchmarks.sass_model                       # the current backward's launches, ranked
    python -m benchmarks.sass_model --case freq_encoder_fwd_bwd --dtype float32
    python -m benchmarks.sass_model --calibrate --root /tmp/old \\
        --results benchmarks/results/nvidia-h100-80gb-hbm3-20261126.json

How it works. The launches of a benchmark case (B = 128, T = 128, default config) are
recorded through the package's one launch path (the launch recorder of
:mod:`benchmarks.resources`: nothing runs) and compiled for the arch of each device
(sm_90 for H100 / H200, sm_89 for RTX 4090, sm_120 for RTX 5090). For each compiled kernel,
``cuobjdump --dump-sass`` is parsed (:func:`parse_sass`) into instructions with their
addresses and branch targets, and the *dynamic* count of one warp of one program is the
static count weighted by the trip counts of the loops around each instruction
(:func:`find_loops`, :func:`dynamic_counts`).

Loops and trip counts (the approximation). A loop is a backward branch; its body the
addresses from the branch target to the branch. The trip count is read from the SASS: the
predicate of the back edge (or, for an unconditional back edge, of the first predicated
branch or EXIT leaving the body) is set by an ``ISETP`` comparing a register with an
immediate bound, and the loop adds an immediate step to that register (``IADD3 R, R, imm``);
trips = ceil(bound / step), i.e. the counter is assumed to start at 0 (Triton's ``range``
loops over constexpr bounds compile this way). A prologue the software pipeliner peels off
is counted once, as it stands. A loop whose bound is not an immediate (a runtime argument,
e.g. the rows of a parameter-gradient sum) counts ``default_trips`` times (1) and is
reported as unresolved. Predicated-off instructions count: they still issue.

Counts per warp and program: every instruction (``instr``), matrix instructions (HMMA /
HGMMA, with their FLOPs from the shape in the opcode: ``HMMA.16816`` = 2*16*8*16 per warp,
``HGMMA.64xNxK`` = 2*64*N*K per warpgroup, a quarter per warp), FFMA (2 FLOPs a lane),
MUFU, and the bytes of global loads and stores (``LDG`` / ``STG`` / ``LDGSTS`` / ``RED`` /
``ATOM``, width from the modifier, 32 lanes a warp, every lane assumed active).

From those, per launch (``programs`` = the grid's size, ``warps`` per program):

* issue: ``instr * warps * programs / (min(SMs, programs) * 4 schedulers * clock)``;
* matrix FLOPs / the device's dense tensor peak for the operand type;
* FFMA FLOPs / the fp32 peak; MUFU / (16 per SM per clock);
* bytes / the memory bandwidth (global traffic, so an upper bound on DRAM traffic where
  tiles are re-read from L2: y1's band neighbours);

the launch's model time is the largest, plus :data:`LAUNCH_US` per launch (the GPU-side gap
between back-to-back kernels). A case's model time is the sum over its launches.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Device:
    """Peak rates (dense, vendor specifications) of one GPU."""

    name: str
    arch: int
    sms: int
    clock_hz: float  # boost clock
    fp32_flops: float  # FFMA peak, FLOP/s
    tf32_flops: float  # dense tensor peak, FP32 accumulate
    bf16_flops: float  # dense tensor peak, FP32 accumulate (fp16 the same)
    bytes_per_s: float  # memory bandwidth
    mufu_per_sm_clk: int = 16


DEVICES = {
    "H100": Device("H100 SXM 80GB", 90, 132, 1.98e9, 66.9e12, 494.7e12, 989.4e12, 3.35e12),
    "H200": Device("H200 SXM 141GB", 90, 132, 1.98e9, 66.9e12, 494.7e12, 989.4e12, 4.8e12),
    "RTX 4090": Device("GeForce RTX 4090", 89, 128, 2.52e9, 82.6e12, 82.6e12, 165.2e12, 1.008e12),
    # NVIDIA's RTX Blackwell (GB202) specification of the GeForce RTX 5090: 170 SMs, 21,760
    # CUDA cores, 2.407 GHz boost; FP32 = 21,760 x 2 x 2.407 GHz = 104.8 TFLOPS; tensor,
    # dense: FP16/BF16 with FP32 accumulate 209.5 TFLOPS (half the 419 with FP16 accumulate,
    # 838 sparse), TF32 104.8; 32 GB GDDR7, 512-bit at 28 Gbps = 1792 GB/s.
    "RTX 5090": Device(
        "GeForce RTX 5090", 120, 170, 2.407e9, 104.8e12, 104.8e12, 209.5e12, 1.792e12
    ),
}
LAUNCH_US = 2.0  # GPU-side gap between two back-to-back kernels (our assumption)
SCHEDULERS = 4  # warp schedulers per SM, one instruction a clock each


# ---------------------------------------------------------------------------- parsing
@dataclass
class Instr:
    """One SASS instruction: address, guard predicate (``P0``, ``!P3`` or None), opcode
    with modifiers, operands, branch target address (``BRA``) or None."""

    addr: int
    pred: str | None
    opcode: str
    operands: list[str]
    target: int | None = None

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


_LINE = re.compile(
    r"^\s*/\*(?P<addr>[0-9a-f]{4,})\*/\s+(?:@(?P<pred>!?U?P[T0-9]+)\s+)?"
    r"(?P<op>[A-Z][A-Z0-9_.]*)(?P<rest>[^;]*);"
)


_ANNOTATION = re.compile(r"\s+[&?][^\s,]*")


def parse_sass(text: str) -> list[Instr]:
    """The instructions of one kernel's ``cuobjdump --dump-sass`` (or ``nvdisasm``) text.
    The scheduling annotations newer disassemblers print after the operands (``&req={1}``,
    ``&wr=0x2``, ``?WAIT5_END_GROUP``, ``?trans1``: sm_120 with Triton 3.6's cuobjdump) are
    dropped."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        rest = _ANNOTATION.sub("", m["rest"]).strip()
        operands = [o.strip() for o in rest.split(",")] if rest else []
        target = None
        if m["op"].split(".")[0] in ("BRA", "BRX", "JMP", "CALL"):
            t = re.search(r"0x([0-9a-f]+)", rest)
            target = int(t[1], 16) if t else None
        out.append(Instr(int(m["addr"], 16), m["pred"], m["op"], operands, target))
    return out


@dataclass
class Loop:
    start: int  # index of the first instruction of the body
    end: int  # index of the back edge
    trips: int
    resolved: bool
    bound: int | None = None
    step: int | None = None


_IMM = re.compile(r"^-?0x[0-9a-f]+$|^-?\d+$")


def _imm(s: str) -> int | None:
    s = s.strip()
    if not _IMM.match(s):
        return None
    return int(s, 16) if "x" in s else int(s)


def _setp_of(instrs: list[Instr], lo: int, hi: int, pred: str) -> Instr | None:
    """The last ISETP (UISETP for a uniform predicate) in instrs[lo:hi] writing predicate
    ``pred`` (``P4``, ``UP0``); through a ``PLOP3`` that copies one predicate into ``pred``
    (``PLOP3.LUT P5, PT, PT, PT, UP0, ...``: sm_120's loop exits), that predicate's."""
    for k in range(hi - 1, lo - 1, -1):
        ins = instrs[k]
        if not ins.operands or ins.operands[0] != pred:
            continue
        if ins.base in ("ISETP", "UISETP"):
            if ".EX" in ins.opcode:  # the high half of a 64-bit compare: the low half decides
                continue
            return ins
        if ins.base in ("PLOP3", "UPLOP3"):
            srcs = {
                o.lstrip("!")
                for o in ins.operands[1:]
                if _PRED.match(o) and o.lstrip("!") not in ("PT", "UPT")
            }
            return _setp_of(instrs, lo, k, srcs.pop()) if len(srcs) == 1 else None
    return None


def _counter(instrs: list[Instr], lo: int, hi: int, setp: Instr) -> tuple[int | None, int | None]:
    """(bound, step) of the counter an ``ISETP`` / ``UISETP`` compares with an immediate
    (a register ``R``, or a uniform register ``UR``), or Nones."""
    if len(setp.operands) < 4:
        return None, None
    reg, bound = setp.operands[2], _imm(setp.operands[3])
    if bound is None or not reg.startswith(("R", "UR")) or reg in ("RZ", "URZ"):
        return None, None
    for k in range(lo, hi + 1):
        ins = instrs[k]
        if ins.base in _ADDS and ins.operands and ins.operands[0] == reg:
            srcs = [o for o in ins.operands[1:] if not _PRED.match(o) and o not in ("RZ", "URZ")]
            if reg in srcs:
                imms = [v for v in (_imm(o) for o in srcs if o != reg) if v]
                if imms:
                    return bound, imms[0]
    return bound, None


_ADDS = ("IADD3", "IADD", "UIADD3", "UIADD")
_PRED = re.compile(r"^!?U?P[T0-9]+$")


def branch_pred(ins: Instr) -> str | None:
    """The predicate a branch is taken on: its guard (``@!P4 BRA``) or, for a uniform
    branch (``BRA.U !UP0, 0x1ca0``, as sm_90+ compiles loop back edges), its first
    operand; None when unconditional."""
    if ins.pred:
        return ins.pred
    if ins.base == "BRA" and ins.operands and _PRED.match(ins.operands[0]):
        return None if ins.operands[0].lstrip("!") in ("PT", "UPT") else ins.operands[0]
    return None


def _trip_count(instrs: list[Instr], lo: int, hi: int) -> tuple[int | None, int | None, int | None]:
    """(trips, bound, step) of the loop instrs[lo..hi] (hi: the back edge), or Nones. The
    deciding predicate: the back edge's own, else that of a predicated branch or EXIT
    leaving the body (its ISETP before it in the body, else the body's last one: a test
    carried over from the previous iteration)."""
    back = instrs[hi]
    exits = [(branch_pred(back), hi)] if branch_pred(back) else []
    for k in range(lo, hi):
        ins = instrs[k]
        leaves = ins.base == "EXIT" or (
            ins.base in ("BRA", "CALL")  # a loop's exit may be a CALL.REL.NOINC to the EXIT
            and ins.target is not None
            and not instrs[lo].addr <= ins.target <= back.addr
        )
        if branch_pred(ins) and leaves:
            exits.append((branch_pred(ins), k))
    for pred, at in exits:
        name = pred.lstrip("!")
        setp = _setp_of(instrs, lo, at, name) or _setp_of(instrs, lo, hi, name)
        if setp is None:
            continue
        bound, step = _counter(instrs, lo, hi, setp)
        if bound and step and bound > 0 and step > 0:
            return max(1, math.ceil(bound / step)), bound, step
    return None, None, None


def find_loops(instrs: list[Instr], default_trips: int = 1) -> list[Loop]:
    """Every backward branch of the listing as a :class:`Loop` with its trip count."""
    index = {ins.addr: k for k, ins in enumerate(instrs)}
    loops = []
    for k, ins in enumerate(instrs):
        if ins.base == "BRA" and ins.target is not None and ins.target < ins.addr:
            lo = index.get(ins.target)
            if lo is None:
                continue
            trips, bound, step = _trip_count(instrs, lo, k)
            loops.append(
                Loop(lo, k, trips or default_trips, trips is not None, bound=bound, step=step)
            )
    return loops


# -------------------------------------------------------------------------- counting
_WIDTH = {"8": 1, "U8": 1, "S8": 1, "16": 2, "U16": 2, "S16": 2, "64": 8, "128": 16}
MEMORY_OPS = {"LDG": "ld_bytes", "LDGSTS": "ld_bytes", "STG": "st_bytes", "RED": "st_bytes"}
MEMORY_OPS["ATOM"] = "st_bytes"
MMA_OPS = ("HMMA", "HGMMA", "IMMA", "DMMA", "QMMA", "BMMA", "IGMMA", "QGMMA", "BGMMA")


def access_bytes(opcode: str) -> int:
    """Bytes one lane moves in a global load / store (``LDG.E.128`` = 16)."""
    width = 4
    for mod in opcode.split(".")[1:]:
        if mod in _WIDTH:
            width = _WIDTH[mod]
    return width


def mma_flops(opcode: str) -> int:
    """FLOPs of one warp's matrix instruction (HGMMA: a quarter of the warpgroup's)."""
    parts = opcode.split(".")
    if parts[0] == "HGMMA":
        m = re.match(r"(\d+)x(\d+)x(\d+)", parts[1]) if len(parts) > 1 else None
        if not m:
            return 0
        return 2 * int(m[1]) * int(m[2]) * int(m[3]) // 4
    if parts[0] == "HMMA" and len(parts) > 1 and parts[1].startswith("168"):
        return 2 * 16 * 8 * int(parts[1][3:])
    if parts[0] == "HMMA" and len(parts) > 1 and parts[1] == "884":
        return 2 * 8 * 8 * 4
    return 0


@dataclass
class Counts:
    """Dynamic counts of one warp of one program."""

    instr: float = 0
    mma: float = 0
    mma_flops: float = 0
    ffma: float = 0
    mufu: float = 0
    ld_bytes: float = 0
    st_bytes: float = 0
    mma_kind: str = "-"  # "tf32", "bf16" / "fp16" (the tensor peak it runs at), "-" without
    unresolved: int = 0
    loops: list = field(default_factory=list)


def dynamic_counts(instrs: list[Instr], default_trips: int = 1) -> Counts:
    """The counts of one warp of one program: every instruction weighted by the product of
    the trip counts of the loops around it (:func:`find_loops`)."""
    loops = find_loops(instrs, default_trips)
    weight = [1] * len(instrs)
    for lp in loops:
        for k in range(lp.start, lp.end + 1):
            weight[k] *= lp.trips
    c = Counts(unresolved=sum(not lp.resolved for lp in loops), loops=loops)
    for ins, w in zip(instrs, weight, strict=True):
        base = ins.base
        if base in ("NOP",) or (base == "BRA" and ins.target == ins.addr):
            continue  # the trailing self-branch after EXIT never runs
        c.instr += w
        if base in MMA_OPS:
            c.mma += w
            c.mma_flops += w * mma_flops(ins.opcode)
            if "TF32" in ins.opcode:
                c.mma_kind = "tf32"
            elif c.mma_kind == "-":
                c.mma_kind = "bf16"
        elif base in ("FFMA", "FFMA32I"):
            c.ffma += w
        elif base == "MUFU":
            c.mufu += w
        elif base in MEMORY_OPS:
            setattr(
                c,
                MEMORY_OPS[base],
                getattr(c, MEMORY_OPS[base]) + w * 32 * access_bytes(ins.opcode),
            )
    return c


def launch_times(c: Counts, programs: int, warps: int, dev: Device) -> dict[str, float]:
    """Seconds of each floor of one launch on ``dev`` (see the module docstring)."""
    n_warps = programs * warps
    active_sms = max(1, min(dev.sms, programs))
    tensor_peak = dev.tf32_flops if c.mma_kind == "tf32" else dev.bf16_flops
    return {
        "issue": c.instr * n_warps / (active_sms * SCHEDULERS * dev.clock_hz),
        "mma": c.mma_flops * n_warps / tensor_peak * dev.sms / active_sms,
        "fma": c.ffma * 64 * n_warps / dev.fp32_flops * dev.sms / active_sms,
        "mufu": c.mufu * 32 * n_warps / (active_sms * dev.mufu_per_sm_clk * dev.clock_hz),
        "bytes": (c.ld_bytes + c.st_bytes) * n_warps / dev.bytes_per_s,
    }


def model_time(times: dict[str, float]) -> tuple[float, str]:
    """The launch's model time (the largest floor + :data:`LAUNCH_US`) and its bound."""
    bound = max(times, key=times.get)
    return times[bound] + LAUNCH_US * 1e-6, bound


# ------------------------------------------------------------------------- recording
CASES = ("freq_encoder_fwd", "freq_encoder_fwd_bwd", "front_end_fwd", "front_end_fwd_bwd")


def _use_root(root: Path | None) -> None:
    """Import ``atfnn_fast`` from another checkout (``--root``): its ``kernels`` and
    ``export`` folders are linked into its ``atfnn_fast`` as the installed package maps them."""
    if root is None:
        return
    root = root.resolve()
    for sub in ("kernels", "export"):
        link = root / "atfnn_fast" / sub
        if not link.exists() and (root / sub).is_dir():
            link.symlink_to(root / sub, target_is_directory=True)
    sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m == "atfnn_fast" or m.startswith("atfnn_fast.")]:
        del sys.modules[name]


def _recording():
    """The launch recorder of the imported checkout (looked for by file: the installed
    package's import hook would otherwise find this checkout's ``launch`` module)."""
    import importlib

    import atfnn_fast.kernels as k

    old = (Path(k.__file__).parent / "_triton_utils.py").exists()  # before House V (05dec36a)
    module = "atfnn_fast.kernels._triton_utils" if old else "atfnn_fast.kernels.launch"
    return importlib.import_module(module).recording


def record_case(
    case: str,
    dtype_name: str,
    arch: int,
    batch: int = 128,
    frames: int = 128,
    config: str = "default",
):
    """The launches ``(compiled kernel, grid, label)`` of one benchmark case's fused call
    (``config``: a configuration of :func:`benchmarks.resources.configs`, the default one
    unless named), compiled for ``arch`` (in launch order; nothing runs)."""
    import torch
    from triton.runtime import driver

    from atfnn_fast import ATFNN
    from atfnn_fast.kernels import use_backend

    from .resources import StandInDriver, configs, variant

    driver.set_active(StandInDriver(arch))
    cfg = configs()[config]
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    model = ATFNN(cfg).to(dtype=dtype)
    model.train("bwd" in case)
    bwd = case.endswith("_bwd")
    x = torch.randn(batch, 1, cfg.n_mels, frames, dtype=dtype, requires_grad=bwd)
    launched = []

    def record(kernel, grid, args, kwargs):
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
        launched.append((compiled, tuple(grid), variant(kwargs)))

    torch.set_flush_denormal(True)
    with _recording()(record), use_backend("triton"):
        if case.startswith("freq_encoder"):
            outs = [model._f_encoder(x)]
        else:
            enc, maps = model.front_end(x)
            outs = [enc, *[m for m in maps if m is not None]]
        if bwd:
            torch.autograd.backward(outs, [torch.empty_like(o) for o in outs])
    return launched


_SASS_CACHE: dict[str, list[Instr]] = {}


def kernel_instrs(compiled) -> list[Instr]:
    from .resources import cubin_sass

    if compiled.hash not in _SASS_CACHE:
        _SASS_CACHE[compiled.hash] = parse_sass(cubin_sass(compiled.asm["cubin"]))
    return _SASS_CACHE[compiled.hash]


_MODELLED: dict = {}


def model_case(case: str, dtype_name: str, device: str, config: str = "default") -> list[dict]:
    """One row per launch of the case on ``device``: counts, floors, model time."""
    key = (case, dtype_name, device, config)
    if key not in _MODELLED:
        _MODELLED[key] = _model_case(case, dtype_name, device, config)
    return _MODELLED[key]


def _model_case(case: str, dtype_name: str, device: str, config: str) -> list[dict]:
    dev = DEVICES[device]
    rows = []
    for compiled, grid, var in record_case(case, dtype_name, dev.arch, config=config):
        c = dynamic_counts(kernel_instrs(compiled))
        programs = math.prod(grid)
        warps = compiled.metadata.num_warps
        times = launch_times(c, programs, warps, dev)
        t, bound = model_time(times)
        rows.append(
            dict(
                kernel=compiled.metadata.name,
                variant=var,
                programs=programs,
                warps=warps,
                instr=c.instr,
                mma=c.mma,
                mma_kind=c.mma_kind,
                ffma=c.ffma,
                mufu=c.mufu,
                bytes=c.ld_bytes + c.st_bytes,
                unresolved=c.unresolved,
                loops=[(lp.trips, lp.resolved) for lp in c.loops],
                **{f"{k}_us": v * 1e6 for k, v in times.items()},
                model_us=t * 1e6,
                bound=bound,
            )
        )
    return rows


def _fmt_rows(rows: list[dict]) -> str:
    head = (
        "| # | kernel | variant | programs x warps | instr/warp | mma | FFMA | MUFU | KB/prog "
        "| loops (trips) | issue us | mma us | fma us | mufu us | bytes us | model us | bound |"
    )
    lines = [head, "|" + "---|" * 17]
    for k, r in enumerate(rows):
        loops = ", ".join(f"{t}{'' if ok else '?'}" for t, ok in r["loops"]) or "-"
        lines.append(
            f"| {k + 1} | {r['kernel']} | {r['variant']} | {r['programs']} x {r['warps']} "
            f"| {r['instr']:.0f} | {r['mma']:.0f} {r['mma_kind']} | {r['ffma']:.0f} | {r['mufu']:.0f} "
            f"| {r['bytes'] * r['warps'] / 1024:.1f} | {loops} | {r['issue_us']:.1f} "
            f"| {r['mma_us']:.1f} | {r['fma_us']:.1f} | {r['mufu_us']:.1f} | {r['bytes_us']:.1f} "
            f"| {r['model_us']:.1f} | {r['bound']} |"
        )
    return "\n".join(lines)


def calibrate(results: Path, dtypes=("float32", "bfloat16"), kernel_dtype=None) -> list[dict]:
    """measured / model for each fused case of a recorded run (H100; its JSON rows). With
    ``kernel_dtype``, every row is modelled with the kernels of that dtype: the 2026-11-26
    run timed bf16 under ``torch.autocast`` with float32 inputs, and the custom ops of that
    commit have no autocast rule, so its "bfloat16" fused rows ran the float32 kernels."""
    data = json.loads(Path(results).read_text())
    rows = data["cases"] if isinstance(data, dict) else data
    out = []
    for r in rows:
        if r.get("provider") != "fused" or r["case"] not in CASES or r["dtype"] not in dtypes:
            continue
        launches = model_case(r["case"], kernel_dtype or r["dtype"], "H100")
        model_ms = sum(x["model_us"] for x in launches) / 1e3
        out.append(
            dict(
                case=r["case"],
                dtype=r["dtype"],
                measured_ms=r["median_ms"],
                model_ms=model_ms,
                ratio=r["median_ms"] / model_ms,
                launches=len(launches),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.sass_model", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--root", type=Path, default=None, help="checkout whose kernels to model")
    ap.add_argument("--case", default="freq_encoder_fwd_bwd", choices=CASES)
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument(
        "--config",
        default="default",
        help="model configuration, one of benchmarks.resources.configs() (default: default)",
    )
    ap.add_argument("--device", nargs="+", default=list(DEVICES), choices=list(DEVICES))
    ap.add_argument("--calibrate", action="store_true", help="measured / model of --results")
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--kernel-dtype", default=None, help="--calibrate: model every row with this")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = ap.parse_args(argv)
    _use_root(args.root)
    from .resources import configs

    if args.config not in configs():
        ap.error(f"--config must be one of {sorted(configs())}, got {args.config!r}")
    out: dict = {}
    if args.calibrate:
        rows = calibrate(args.results, tuple(args.dtype), args.kernel_dtype)
        print("| case | dtype | launches | measured ms | model ms | measured / model |")
        print("|---|---|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['case']} | {r['dtype']} | {r['launches']} | {r['measured_ms']:.3f} "
                f"| {r['model_ms']:.3f} | {r['ratio']:.2f} |"
            )
        out["calibration"] = rows
    else:
        for dt in args.dtype:
            for device in args.device:
                rows = model_case(args.case, dt, device, args.config)
                total = sum(r["model_us"] for r in rows)
                print(
                    f"\n## {args.case}, {dt}, {device}, {args.config} config: model "
                    f"{total / 1e3:.3f} ms, {len(rows)} launches"
                )
                ranked = sorted(rows, key=lambda r: -r["model_us"])
                print(_fmt_rows(ranked))
                key = f"{args.case}/{dt}/{device}"
                out[key if args.config == "default" else f"{key}/{args.config}"] = ranked
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
