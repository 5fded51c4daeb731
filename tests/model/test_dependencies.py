"""Dependencies a user can live with (docs/design.md#dependencies): the core needs torch,
numpy, soundfile, soxr and safetensors only; optional tools sit in extras and say so when
missing; torch is checked at import; CI's versions are pinned in constraints.txt."""

import re
from pathlib import Path

import pytest
import torch

import atfnn_fast
from atfnn_fast._deps import require

ROOT = Path(__file__).resolve().parents[2]


def _project():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_core_dependencies_and_extras():
    project = _project()
    assert project["dependencies"] == [
        f"torch>={atfnn_fast.MIN_TORCH[0]}.{atfnn_fast.MIN_TORCH[1]}",
        "numpy",
        "soundfile",
        "soxr",
        "safetensors",
    ]
    extras = project["optional-dependencies"]
    assert extras["export"] == ["onnx", "onnxscript", "onnxruntime"]
    assert extras["app"] == ["matplotlib", "tqdm"]
    assert extras["gpu"] == ["onnxruntime-gpu"]
    assert set(extras["export"] + extras["app"]) <= set(extras["dev"])
    assert {"pytest", "pytest-benchmark", "hypothesis", "librosa", "ruff"} <= set(extras["dev"])


def test_constraints_pin_a_supported_torch():
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    major, minor = (int(p) for p in pins["torch"].split(".")[:2])
    assert (major, minor) >= atfnn_fast.MIN_TORCH
    for name in ("numpy", "soundfile", "soxr", "safetensors", "onnx", "onnxruntime", "pytest"):
        assert name in pins, name
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_no_module_imports_torchaudio():
    """torchaudio pins one torch version, so the package must not need it."""
    sources = [*ROOT.glob("atfnn_fast/*.py"), *ROOT.glob("kernels/*.py"), *ROOT.glob("export/*.py")]
    users = [
        p.name for p in sources if re.search(r"^\s*(import|from) torchaudio", p.read_text(), re.M)
    ]
    assert users == []


def test_require_names_the_extra_to_install():
    assert require("json", extra="export").__name__ == "json"
    with pytest.raises(ImportError, match=r'pip install "atfnn-fast\[export\]"'):
        require("atfnn_no_such_module.sub", extra="export")
    with pytest.raises(ImportError, match=r"atfnn-fast\[gpu\]"):
        require("onnxruntime._atfnn_missing", extra="export")


def test_old_torch_is_refused_at_import(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    major, minor = atfnn_fast.MIN_TORCH
    with pytest.raises(ImportError, match=rf"torch >= {major}\.{minor}.*found torch 2\.5\.1"):
        atfnn_fast._check_torch()
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    atfnn_fast._check_torch()


def test_features_match_torchaudio_where_installed():
    """The plain-torch Mel spectrogram is torchaudio's algorithm."""
    torchaudio = pytest.importorskip("torchaudio")
    from atfnn_fast import features

    gen = torch.Generator().manual_seed(0)
    wave = torch.randn(2, 9000, generator=gen)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000,
        n_fft=512,
        win_length=320,
        hop_length=160,
        n_mels=80,
        window_fn=torch.hamming_window,
        power=2.0,
        center=True,
        pad_mode="reflect",
        mel_scale="htk",
        norm=None,
    )
    expected = torch.log(mel(wave[0]) + 1e-6)
    torch.testing.assert_close(features.log_mel(wave[0]), expected, rtol=1e-5, atol=1e-5)


NO_TRITON = r"""
import sys

sys.modules["triton"] = None  # as on torch's CPU-only wheels, macOS and Windows
import torch

from atfnn_fast import ATFNN, ATFNNConfig
from atfnn_fast.kernels import dispatch
from atfnn_fast.reference import ATFNNReference

assert dispatch.TRITON_IMPLS == {}, dispatch.TRITON_IMPLS
assert set(dispatch.CPU_IMPLS) == {"band_attention", "freq_encoder"}, dispatch.CPU_IMPLS
ran = []
for op, entry in list(dispatch.CPU_IMPLS.items()):
    def wrapped(*args, _entry=entry, _op=op, **kwargs):
        ran.append(_op)
        return _entry(*args, **kwargs)
    dispatch.CPU_IMPLS[op] = wrapped
torch.manual_seed(0)
cfg = ATFNNConfig(frames=24, channels=4, num_heads=2, ffn_channels=8, lstm_hidden=16)
fast, ref = ATFNN(cfg), ATFNNReference(cfg)
ref.load_state_dict(fast.state_dict())
fast.eval(), ref.eval()
x = torch.randn(3, 1, cfg.n_mels, cfg.frames)
outs, grads = [], []
for model in (fast, ref):
    xi = x.clone().requires_grad_(True)
    logits = model(xi)
    logits.square().sum().backward()
    outs.append(logits.detach())
    grads.append(xi.grad)
torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-5)
assert sorted(set(ran)) == ["band_attention", "freq_encoder"], ran
print("cpu implementation without triton:", " ".join(sorted(set(ran))))
"""


def test_without_triton_the_cpu_implementation_still_runs():
    """torch's CPU-only wheels (what the README installs on a machine without an NVIDIA GPU)
    ship no Triton: the custom ops cannot be registered, and CPU tensors must still take
    the ops' CPU implementations (not the slower reference), with the same values."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", NO_TRITON], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert out[-1] == "cpu implementation without triton: band_attention freq_encoder"
