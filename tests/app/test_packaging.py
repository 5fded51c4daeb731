"""Installed layout (docs/design.md#overview), console script and demo."""

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import atfnn_fast
from atfnn_fast.app.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_subpackages_map_to_the_repository_folders():
    import atfnn_fast.export
    import atfnn_fast.kernels

    assert Path(atfnn_fast.kernels.__file__).parent == ROOT / "kernels"
    assert Path(atfnn_fast.export.__file__).parent == ROOT / "export"


@pytest.mark.slow
def test_wheel_installs_everything_under_one_namespace(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("atfnn_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"atfnn_fast", f"{wheel.name.split('-')[0]}-{atfnn_fast.__version__}.dist-info"}
    for needed in (
        "atfnn_fast/kernels/__init__.py",
        "atfnn_fast/kernels/dispatch.py",
        "atfnn_fast/kernels/resource_needs.json",
        "atfnn_fast/export/__init__.py",
        "atfnn_fast/app/cli.py",
        "atfnn_fast/assets/speech.wav",
    ):
        assert needed in names
    # every module of every folder, the op folders under kernels/ included
    for folder, package in (("kernels", "atfnn_fast/kernels"), ("export", "atfnn_fast/export")):
        for source in (ROOT / folder).rglob("*.py"):
            assert f"{package}/{source.relative_to(ROOT / folder).as_posix()}" in names, source
    # the measured launch settings per arch (kernels/tuning.py) ship with the kernels
    for table in (ROOT / "kernels" / "tuned").glob("*.json"):
        assert f"atfnn_fast/kernels/tuned/{table.name}" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "atfnn-fast = atfnn_fast.app.cli:main" in text
    # the native CPU core is built into the wheel; installed into a fresh venv, it runs
    assert any(n.startswith("atfnn_fast/kernels/_atfnn_native") for n in names), names
    out = _run_in_fresh_venv(tmp_path, wheel, NATIVE_CHECK)
    assert "native ok" in out and "warning" not in out.lower(), out


# run in a fresh venv with only the wheel installed: the native path runs and agrees with
# the ATen path
NATIVE_CHECK = """
import torch, warnings
warnings.simplefilter("error")
import atfnn_fast
from atfnn_fast.kernels import native, use_backend, freq_encoder
from atfnn_fast.reference import FrequencyEncoder
from atfnn_fast.config import ATFNNConfig
assert "site-packages" in atfnn_fast.__file__ and native.available(), native.info()
enc = FrequencyEncoder(ATFNNConfig(frames=8))
x = torch.randn(2, 1, 80, 8)
with torch.no_grad():
    got = freq_encoder(x, *enc.op_params(), num_heads=2, eps=1e-5)
    with use_backend("aten"):
        want = freq_encoder(x, *enc.op_params(), num_heads=2, eps=1e-5)
assert (got - want).abs().max() < 1e-4
print("native ok", native.isa())
"""


def _run_in_fresh_venv(tmp_path, wheel, code: str) -> str:
    """A new venv whose only own package is the wheel (its dependencies come from this
    interpreter's site-packages through a .pth line: no download); runs ``code`` there."""
    import site
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    Path(purelib).mkdir(parents=True, exist_ok=True)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "_deps.pth").write_text("\n".join(deps) + "\n")
    py = venv / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--quiet",
            "--no-deps",
            str(wheel),
        ],
        check=True,
    )
    proc = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_without_a_compiler_the_package_installs_and_says_so_once(tmp_path):
    """No C++ compiler at install time: the wheel builds without the native core, installs,
    and the CPU path is ATen with one line naming what to install."""
    import os

    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        env=env,
    )
    (wheel,) = tmp_path.glob("atfnn_fast-*.whl")
    assert not any("_atfnn_native" in n for n in zipfile.ZipFile(wheel).namelist())
    code = (
        "import torch\n"
        "from atfnn_fast.kernels import freq_encoder, native\n"
        "from atfnn_fast.reference import FrequencyEncoder\n"
        "from atfnn_fast.config import ATFNNConfig\n"
        "enc = FrequencyEncoder(ATFNNConfig(frames=8))\n"
        "x = torch.randn(2, 1, 80, 8)\n"
        "with torch.no_grad():\n"
        "    for _ in range(3): freq_encoder(x, *enc.op_params(), num_heads=2, eps=1e-5)\n"
        "print('path', native.info()['cpu_path'])\n"
    )
    out = _run_in_fresh_venv(tmp_path, wheel, code)
    assert "path aten" in out
    lines = [line for line in out.splitlines() if "native CPU core" in line]
    assert len(lines) == 1 and "C++ compiler" in lines[0], out


def test_tuned_tables_are_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    line = next(x for x in text.splitlines() if x.startswith('"atfnn_fast.kernels" = ['))
    assert '"tuned/*.json"' in line


def test_cli_version(capsys):
    assert main(["--version"]) == 0  # main returns argparse's exit code
    assert capsys.readouterr().out.strip() == f"atfnn-fast {atfnn_fast.__version__}"


def test_demo_prints_shapes_parameters_and_time():
    from atfnn_fast.app.demo import run

    out = io.StringIO()
    result = run(device="cpu", hop=64, repeats=1, out=out)
    text = out.getvalue()
    assert "batch          (9, 1, 80, 128)" in text
    assert "logits         (9, 4)" in text
    assert "parameters     1,583,092 (ATFNN)" in text
    assert "ms per batch of 9" in text
    assert "gives identical logits" in text
    assert result["logits"].shape == (9, 4) and result["median_ms"] > 0


@pytest.mark.slow
def test_console_script_runs_the_demo():
    exe = Path(sys.executable).with_name("atfnn-fast")
    proc = subprocess.run(
        [str(exe), "demo", "--repeats", "1", "--model-only"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "parameters     1,583,092" in proc.stdout


def test_source_checkout_works_without_installing():
    """PYTHONPATH=<checkout> finds atfnn_fast.kernels / .export in the sibling folders (the
    GPU machine runs the checkout this way: it has no package registry)."""
    code = (
        "import sys\n"
        "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "import atfnn_fast.kernels, atfnn_fast.export\n"
        "print(atfnn_fast.kernels.__file__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == ROOT / "kernels" / "__init__.py"
