"""Compile every launch candidate of ``kernels/tuning.py`` for named archs, without a GPU.

    python scripts/check_candidates.py --arch 80 86 89 90 100 120 --dtype float32 bfloat16

Until ``python -m benchmarks.resources`` (the resource gate) compiles the candidates itself,
this runs its machinery (stand-in driver, ``JITFunction.warmup``, ``cuobjdump``) for each
candidate of :func:`atfnn_fast.kernels.tuning.candidate_settings`: the fused front-end
forward + backward runs on CPU tensors under ``tuning.override`` with that one setting, and
only the launches of the candidate's own kernel are compiled (``num_stages`` passed as the
candidate says). Prints one JSON line per (arch, dtype, candidate); exit 1 when a candidate
misses the resource target (shared memory, 0 local memory, ``tuning.warps_target``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def check(arch: int, dtype_name: str, cand) -> dict:
    import gpu_sweep
    import torch
    from triton.runtime import driver

    from atfnn_fast.kernels import launch as launch_path
    from atfnn_fast.kernels import use_backend
    from benchmarks import resources
    from benchmarks.floors import launch_label
    from benchmarks.profile import kernel_name

    driver.set_active(resources.StandInDriver(arch))
    cfg = resources.configs()["encoding" if cand.slot.endswith("wide") else "default"]
    compiled = []

    def record(kernel, grid, args, kwargs):
        label = launch_label(kernel_name(kernel), kwargs)
        if gpu_sweep.launch_slot(label, kwargs) != cand.slot:
            return
        kw = dict(kwargs)
        if getattr(cand.setting, "num_stages", None) is not None:
            kw["num_stages"] = cand.setting.num_stages
        compiled.append(kernel.warmup(*args, grid=grid, **kw))

    with launch_path.recording(record), use_backend("triton"), gpu_sweep._override(cand):
        resources._run_front_end(cfg, getattr(torch, dtype_name))
    rows = [resources.row_for(c, arch, dtype_name, "candidate") for c in compiled]
    worst = [r for r in rows if not r["meets_target"]] or rows
    keys = ("kernel", "num_warps", "regs", "shared_bytes", "local_bytes", "warps_per_sm")
    return dict(
        arch=arch,
        dtype=dtype_name,
        slot=cand.slot,
        setting=gpu_sweep._setting_json(cand.setting),
        ok=all(r["meets_target"] for r in rows),  # no rows: no config launches this slot
        rows=len(rows),
        worst={k: worst[0][k] for k in keys} if worst else None,
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.resources import ARCHS

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", type=int, nargs="+", default=sorted(ARCHS))
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    from atfnn_fast.kernels import tuning

    failed = 0
    for dtype_name in args.dtype:
        for arch in args.arch:
            for cand in tuning.candidate_settings():
                row = check(arch, dtype_name, cand)
                failed += not row["ok"]
                print(json.dumps(row), flush=True)
    print(f"{failed} candidate row(s) miss the target")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
