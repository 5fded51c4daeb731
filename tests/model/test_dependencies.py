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
