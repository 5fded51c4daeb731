"""The kernels' layout (docs/design.md#kernels): shared machinery at the top of ``kernels/``,
one folder per fused op, each holding its reference beside its implementations."""

from pathlib import Path

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
# the shared machinery: dispatch, device fit, the one launch path, tuning, the finite check,
# the native CPU core's loader
SHARED = {
    "__init__.py",
    "dispatch.py",
    "fit.py",
    "launch.py",
    "tuning.py",
    "checks.py",
    "native.py",
}
# every op folder: its public entry, its specification and each implementation
OP_ROLES = {"__init__.py", "op.py", "reference.py", "cpu.py", "custom_op.py", "forward.py"}
OPS = {"band_attention_op", "freq_encoder_op"}


def test_only_shared_modules_sit_at_the_top_of_kernels():
    assert {p.name for p in KERNELS.glob("*.py")} == SHARED


def test_one_folder_per_op_with_its_reference_beside_its_implementations():
    folders = {p.name for p in KERNELS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == OPS
    for op in OPS:
        files = {p.name for p in (KERNELS / op).glob("*.py")}
        assert OP_ROLES <= files, f"{op}: missing {sorted(OP_ROLES - files)}"
        assert not any(f.startswith(("triton_", "fenc_")) for f in files), files


def test_the_public_names_still_import():
    import atfnn_fast.kernels as k

    for name in ("band_attention", "freq_encoder", "assert_finite", "use_backend"):
        assert callable(getattr(k, name)), name
    from atfnn_fast.kernels.band_attention_op import reference as ba
    from atfnn_fast.kernels.freq_encoder_op import rank_one, reference

    assert callable(ba.band_attention) and callable(reference.freq_encoder)
    assert callable(rank_one.forward) and callable(rank_one.backward)
