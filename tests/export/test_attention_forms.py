"""The F-Encoder's attention forms of the export graph (export/graph.py ATTENTION_FORMS),
the shipped targets and the ONNX Runtime contrib-op candidates that scripts/ort_attention.py
measures: each is the reference math, each exported graph validates against eager and
predicts; the script's profile reading is checked on a trace with known times."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import max_rel_err, randomize, tiny_config

from atfnn_fast import ATFNNReference
from atfnn_fast.export import OnnxPredictor, export_onnx, onnx_export, validate_onnx
from atfnn_fast.export.graph import ATTENTION_FORMS, DeployGraph

ROOT = Path(__file__).resolve().parents[2]
# the attention node(s) each form writes: (domain, op type)
NODES = {
    "standard": ("", "Attention"),
    "materialized": ("", "Softmax"),
    "contrib-mha": ("com.microsoft", "MultiHeadAttention"),
    "contrib-attention": ("com.microsoft", "Attention"),
}


def _script():
    spec = importlib.util.spec_from_file_location(
        "ort_attention", ROOT / "scripts/ort_attention.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    cfg = tiny_config(num_heads=2, dropout=0.0)
    return randomize(ATFNNReference(cfg), 0.4).eval()


def test_forms_are_listed_once():
    assert sorted(NODES) == sorted(ATTENTION_FORMS)
    assert set(onnx_export.TARGETS.values()) <= set(ATTENTION_FORMS)


@pytest.mark.parametrize("form", ATTENTION_FORMS)
@pytest.mark.parametrize("heads", [1, 4])
def test_every_form_is_the_reference_math(form, heads):
    torch.manual_seed(heads)
    ref = randomize(ATFNNReference(tiny_config(num_heads=heads, channels=4)), 0.5).eval()
    x = torch.randn(3, 1, ref.config.n_mels, ref.config.frames) * 2
    with torch.no_grad():
        assert max_rel_err(DeployGraph(ref, attention=form)(x), ref(x)) < 2e-6


@pytest.mark.parametrize("form", ATTENTION_FORMS)
def test_every_form_exports_validates_and_predicts(tiny, form, tmp_path, monkeypatch):
    """Each form's graph (a shipped target or a measured candidate) runs in ONNX Runtime's
    CPU provider within the float32 tolerance of eager, with its one attention node (the
    nodes the script times); the predictor gives the eager model's probabilities."""
    monkeypatch.setitem(onnx_export.TARGETS, "measured", form)
    path = export_onnx(tiny, tmp_path / f"{form}.onnx", target="measured")
    proto = onnx.load(str(path))
    domain, op = NODES[form]
    assert [(n.domain, n.op_type) for n in proto.graph.node].count((domain, op)) == 1
    domains = {n.domain for n in proto.graph.node} - {""}
    assert domains == ({domain} - {""})  # contrib forms: com.microsoft for that node only
    # the nodes scripts/ort_attention.py times as the attention
    ops = {n.name: n.op_type for n in proto.graph.node}
    found = sorted(ops[name] for name in _script().attention_nodes(path, form))
    assert found == (["MatMul", "Mul", "Softmax"] if form == "materialized" else [op])
    report = validate_onnx(path, tiny, batch_sizes=(1, 3, 9), seed=0)
    assert report.passed and all(r.max_rel <= 1e-4 for r in report.results)
    x = torch.randn(4, 1, tiny.config.n_mels, tiny.config.frames)
    with torch.no_grad():
        want = tiny(x).softmax(-1).numpy()
    np.testing.assert_allclose(OnnxPredictor(path).predict_spectrograms(x.numpy()), want, atol=1e-5)


def test_script_reads_median_kernel_times_per_call(tmp_path):
    """The profile reader drops the warm-up call and takes each node's median over calls."""
    script = _script()

    def node(name, op, ts, dur):
        return {
            "cat": "Node",
            "name": f"{name}_kernel_time",
            "ts": ts,
            "dur": dur,
            "args": {"op_name": op},
        }

    events = []
    for call, (att, lstm) in enumerate([(900, 900), (100, 400), (300, 200), (200, 600)]):
        t0 = call * 10_000
        events.append({"cat": "Session", "name": "model_run", "ts": t0, "dur": 5_000})
        events += [node("att", "Attention", t0 + 10, att), node("lstm", "LSTM", t0 + 2000, lstm)]
        events.append({"cat": "Node", "name": "att_fence_before", "ts": t0, "dur": 1})
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(events))
    got = script._per_call(trace)
    assert got["nodes"] == {"att": 0.2, "lstm": 0.4}  # medians of calls 2-4, in ms
    assert got["ops"] == {"Attention": 0.2, "LSTM": 0.4}
    assert got["total"] == pytest.approx(0.5)  # median of 0.5, 0.5, 0.8
