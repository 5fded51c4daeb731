"""The int8 graph's format (issue 30): U8U8, so ONNX Runtime's integer products cannot
saturate on any CPU. Without VNNI (AVX2-only x86) the U8S8 kernels add two u8 x s8
products in an int16 (``vpmaddubsw``), which saturates; the U8U8 kernels widen to 16 bits
and add in 32. The agreement on real features is checked on the default graph by
tests/export/test_export.py::test_int8_export_of_the_default_graph_keeps_its_attention."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import randomize, tiny_config
from onnx import numpy_helper

from atfnn_fast import ATFNN
from atfnn_fast.export import export_onnx
from atfnn_fast.export.onnx_export import (
    U8S8_SAFE_WEIGHT,
    _quantize_int8,
    int8_saturation_risks,
)

LABELS = ["a", "b", "c"]
pytestmark = pytest.mark.isa


def vpmaddubsw(a_u8: np.ndarray, w_s8: np.ndarray) -> np.ndarray:
    """AVX2's ``vpmaddubsw``: u8 x s8 products, adjacent pairs added with int16 saturation."""
    prod = a_u8.astype(np.int32) * w_s8.astype(np.int32)
    return np.clip(prod[..., 0::2] + prod[..., 1::2], -32768, 32767)


def test_u8s8_pairs_saturate_above_the_safe_weight_and_not_at_it():
    """The arithmetic behind :data:`U8S8_SAFE_WEIGHT`: the largest activation (255) times
    two weights of 64 fits an int16; two of 65 (and int8's full 127) do not."""
    a = np.full(2, 255, np.uint8)
    for w, exact in ((U8S8_SAFE_WEIGHT, True), (U8S8_SAFE_WEIGHT + 1, False), (127, False)):
        weights = np.array([w, w], np.int8)
        got = int(vpmaddubsw(a, weights)[0])
        assert (got == 255 * 2 * w) is exact, (w, got)
    # the U8U8 path: u8 x u8 widened to int16 operands, added in int32 (vpmaddwd): exact
    u = np.array([255, 255], np.int32) * np.array([255, 255], np.int32)
    assert int(u.sum()) == 2 * 255 * 255


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize(ATFNN(tiny_config(dropout=0.0)), 0.5).eval()
    folder = tmp_path_factory.mktemp("int8")
    f32 = export_onnx(model, folder / "f32.onnx", labels=LABELS)
    q = export_onnx(model, folder / "int8.onnx", labels=LABELS, quantize="int8")
    return model, f32, q


def test_int8_export_is_u8u8_and_cannot_saturate(tiny_int8):
    """Every integer product's weight is uint8 (format U8U8), the LSTMs' included; ONNX
    Runtime's own default (int8 weights, U8S8) of the same graph is flagged."""
    _, f32, q = tiny_int8
    proto = onnx.load(str(q))
    ops = [n.op_type for n in proto.graph.node]
    assert "DynamicQuantizeLSTM" in ops and "MatMulInteger" in ops
    weights = [
        numpy_helper.to_array(t).dtype
        for t in proto.graph.initializer
        if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    ]
    assert weights and set(weights) == {np.dtype(np.uint8)}
    assert int8_saturation_risks(proto) == []
    u8s8 = _quantize_int8(onnx.load(str(f32)), weight_type="QInt8")
    risks = int8_saturation_risks(u8s8)
    assert len(risks) == 2 * ops.count("DynamicQuantizeLSTM") + ops.count("MatMulInteger")
    assert all("U8S8 may saturate" in r for r in risks)
    # ONNX Runtime's other remedy, 7-bit weights, is safe by the same rule
    assert int8_saturation_risks(_quantize_int8(onnx.load(str(f32)), "QInt8", True)) == []


def test_u8u8_lstm_weights_are_the_int8_ones_shifted(tiny_int8):
    """The LSTMs' weights re-stored as uint8 are the int8 ones + 128 with zero point 128
    (the same values); in ONNX Runtime the file's logits stay close to the float32
    graph's (not compared with the int8 one: that saturates on a CPU without VNNI)."""
    _, f32, q = tiny_int8
    u8 = onnx.load(str(q))
    s8 = _quantize_int8(onnx.load(str(f32)), weight_type="QInt8")
    s8_inits = {t.name: numpy_helper.to_array(t) for t in s8.graph.initializer}
    lstm = [n for n in u8.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    assert lstm
    for node in lstm:
        for i, zp in ((1, 9), (2, 11)):
            got = next(t for t in u8.graph.initializer if t.name == node.input[i])
            got = numpy_helper.to_array(got).astype(np.int16)
            zero = next(t for t in u8.graph.initializer if t.name == node.input[zp])
            assert set(numpy_helper.to_array(zero).ravel().tolist()) == {128}
            np.testing.assert_array_equal(got - 128, s8_inits[node.input[i]])
    x = np.random.default_rng(0).standard_normal((5, 1, 10, 16)).astype(np.float32)
    u8_out = ort.InferenceSession(u8.SerializeToString(), providers=["CPUExecutionProvider"])
    f32_out = ort.InferenceSession(str(f32), providers=["CPUExecutionProvider"])
    name = u8.graph.input[0].name
    got, want = u8_out.run(None, {name: x})[0], f32_out.run(None, {name: x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05 * float(np.abs(want).max()))


def test_an_older_u8s8_file_is_loaded_with_a_warning(tiny_int8, tmp_path):
    """int8 files exported before issue 30 (U8S8) still load, with a one-line warning that
    they are not portable; the U8U8 files load silently."""
    import warnings

    from atfnn_fast.export import OnnxPredictor
    from atfnn_fast.export.onnx_export import _set_metadata, read_metadata

    _, f32, q = tiny_int8
    meta = read_metadata(q)
    old = _quantize_int8(onnx.load(str(f32)), weight_type="QInt8")
    _set_metadata(old, meta["config"], meta["labels"], meta["norm_stats"], meta["features"],
                  "float32", "int8")  # fmt: skip
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.warns(UserWarning, match=r"old\.onnx: int8 weights in ONNX Runtime's U8S8 format"):
        OnnxPredictor(tmp_path / "old.onnx", provider="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OnnxPredictor(q, provider="cpu")
