"""Issue 31: model files that lie. A file replaced while it loads (cause 1), sizes checked
before what they cover is read (cause 2), fields checked where they are used (cause 8), and
ONNX Runtime's worker threads that must not spin between files (cause 15)."""

import json
import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from helpers import tiny_model, tiny_norm_stats

from atfnn_fast import ATFNNConfig
from atfnn_fast.app.cli import main
from atfnn_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from atfnn_fast.export import OnnxError, OnnxPredictor, export_onnx, onnx_export, read_metadata
from atfnn_fast.export import predictor as predictor_module
from atfnn_fast.features import NormStats, speech_sample

A_LABELS, B_LABELS = ["angry", "happy", "sad"], ["calm", "fearful", "surprised"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two tiny models A and B (different weights, labels and statistics) as ONNX files, and
    A as a checkpoint."""
    folder = tmp_path_factory.mktemp("model-files")
    stats_b = NormStats.fit([torch.randn(10, 50, dtype=torch.float64) * 3 + 2])
    a, b = tiny_model(3, seed=11), tiny_model(3, seed=12)
    return {
        "a": export_onnx(a, folder / "a.onnx", labels=A_LABELS, norm_stats=tiny_norm_stats()),
        "b": export_onnx(b, folder / "b.onnx", labels=B_LABELS, norm_stats=stats_b),
        "ckpt": save_checkpoint(folder / "ckpt", a, labels=A_LABELS, norm_stats=tiny_norm_stats()),
    }


def predict(capsys, *argv):
    """(exit code, stdout, stderr lines other than the one saying what runs)."""
    code = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in err.splitlines() if not line.startswith("predict: ")]


# ------------------------------------------------------------------ cause 1: read once
def hook(monkeypatch, read_metadata) -> None:
    monkeypatch.setattr(onnx_export, "read_metadata", read_metadata)
    monkeypatch.setattr(predictor_module, "read_metadata", read_metadata, raising=False)


def test_a_model_file_replaced_while_it_loads_cannot_mix_two_models(
    files, tmp_path, capsys, monkeypatch
):
    """`export` renames B's graph over the deployed A right after the predictor has read
    A's metadata: the predictor still runs A whole (A's labels, statistics and graph), where
    it used to pair A's labels and statistics with B's graph, with exit 0 (the code before
    the fix called `read_metadata` from the predictor's module: the hook goes into both)."""
    deployed = tmp_path / "model.onnx"
    shutil.copyfile(files["a"], deployed)
    speech = speech_sample()
    code, want, err = predict(capsys, "--onnx", deployed, "--json", speech)
    assert code == 0 and err == []
    real = onnx_export.read_metadata
    swapped = []

    def read_then_redeploy(path, *args, **kwargs):
        meta = real(path, *args, **kwargs)
        staged = tmp_path / ".model.onnx.new"
        shutil.copyfile(files["b"], staged)
        os.replace(staged, deployed)  # what `export --output model.onnx` does
        swapped.append(path)
        return meta

    hook(monkeypatch, read_then_redeploy)
    assert predict(capsys, "--onnx", deployed, "--json", speech) == (0, want, [])
    assert swapped == [str(deployed)] and read_metadata(deployed)["labels"] == B_LABELS
    monkeypatch.undo()
    code, after, _ = predict(capsys, "--onnx", deployed, "--json", speech)
    assert code == 0 and json.loads(after)[0]["label"] in B_LABELS  # B is really another model

    x = np.random.default_rng(0).standard_normal((5, 1, 10, 16)).astype(np.float32)
    hook(monkeypatch, read_then_redeploy)
    shutil.copyfile(files["a"], deployed)
    mixed = OnnxPredictor(deployed)
    assert mixed.labels == A_LABELS
    np.testing.assert_array_equal(
        mixed.predict_spectrograms(x), OnnxPredictor(files["a"]).predict_spectrograms(x)
    )


# ------------------------------------------------- cause 2: sizes checked before reading
def test_onnx_external_data_is_refused_before_it_is_read(files, tmp_path, capsys):
    """An initializer whose data is declared to be 6 GiB in a sparse side file: refused
    without reading it (predict used to read it twice, a 12.8 GB peak)."""
    proto = onnx.load(str(files["a"]))
    tensor = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(6 << 30))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    lying = tmp_path / "lying.onnx"
    lying.write_bytes(proto.SerializeToString())
    with open(tmp_path / "weights.bin", "wb") as fh:
        fh.truncate(6 << 30)  # sparse: no disk space, but 6 GiB to anything that reads it
    message = (
        f"{lying}: tensor {tensor.name!r} keeps its data in another file (ONNX external "
        "data); atfnn-fast exports never do, and predict refuses them"
    )
    assert predict(capsys, "--onnx", lying, speech_sample()) == (
        1,
        "",
        [f"atfnn-fast: error: {message}"],
    )


def test_sparse_onnx_file_is_refused_fast(tmp_path, capsys):
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as fh:
        fh.truncate(3 << 30)
    with pytest.raises(OnnxError) as info:  # refused on its size: nothing is read (no time
        OnnxPredictor(huge)  # is asserted: the message says which check refused it)
    message = (
        f"{huge}: 3,221,225,472 bytes, more than an ONNX file can hold (2,147,483,647, "
        "protobuf's limit); not read"
    )
    assert str(info.value) == message
    assert predict(capsys, "--onnx", huge, speech_sample()) == (
        1,
        "",
        [f"atfnn-fast: error: {message}"],
    )


@pytest.mark.parametrize("name,size", [("model.safetensors", 30 << 30), ("config.json", 1 << 30)])
def test_sparse_checkpoint_file_is_refused_before_it_is_hashed(files, tmp_path, capsys, name, size):
    """A sparse 30 GiB model.safetensors took 88 s to refuse (hashed first); now its size
    is compared with what the config implies before anything is read."""
    ckpt = shutil.copytree(files["ckpt"], tmp_path / "ckpt")
    with open(ckpt / name, "r+b") as fh:
        fh.truncate(size)
    with pytest.raises(CheckpointError) as info:  # refused on its size, before any read
        load_checkpoint(ckpt)
    if name == "config.json":
        message = (
            f"{ckpt / name}: 1,073,741,824 bytes, more than the 67,108,864 a checkpoint's "
            "config.json may have; not read"
        )
    else:
        count = ATFNNConfig(**json.loads((ckpt / "config.json").read_text())["model"])
        count = count.parameter_count
        message = (
            f"{ckpt / name}: 32,212,254,720 bytes, but the model in config.json ({count:,} "
            f"parameters) implies {8 + 2 * count:,} to {8 + (1 << 20) + 8 * count:,}; the "
            "file is corrupted or was replaced (not read)"
        )
    assert str(info.value) == message
    assert predict(capsys, "--checkpoint", ckpt, speech_sample()) == (
        1,
        "",
        [f"atfnn-fast: error: {message}"],
    )


# ---------------------------------------------- cause 8: fields checked where they are used
def _with_output(source, target, op: str, **attrs):
    """``source`` with one more node between the graph and its output ``logits``; the
    declared output stays (batch, num_classes)."""
    proto = onnx.load(str(source))
    for node in proto.graph.node:
        node.output[:] = ["inner" if o == "logits" else o for o in node.output]
    proto.graph.node.append(onnx.helper.make_node(op, ["inner", "inner"], ["logits"], **attrs))
    target.write_bytes(proto.SerializeToString())
    return target


def test_graph_whose_real_output_shape_differs_is_refused(files, tmp_path, capsys):
    """The declared output is (batch, 3); the graph really gives (batch, 6). predict used to
    fail on every file with `zip() argument 2 is longer than argument 1`; now the
    predictor refuses the graph when it loads it."""
    wide = _with_output(files["a"], tmp_path / "wide.onnx", "Concat", axis=1)
    message = (
        f"{wide}: graph output 'logits' has shape (2, 6) for a batch of 2, expected (2, 3) "
        "(batch, num_classes)"
    )
    with pytest.raises(OnnxError) as info:
        OnnxPredictor(wide)
    assert str(info.value) == message
    code, out, err = predict(capsys, "--onnx", wide, speech_sample())
    assert (code, out) == (1, "") and err[-1] == f"atfnn-fast: error: {message}"


def _edit_config(ckpt, **changes):
    meta = json.loads((ckpt / "config.json").read_text())
    for key, value in changes.items():
        target = meta
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    (ckpt / "config.json").write_text(json.dumps(meta))
    return ckpt


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "norm_stats.mean",
            "0123456789",  # ten characters for ten bands: used to be read as 0, 1, ..., 9
            "field 'norm_stats': NormStats: mean must be a list of numbers, got str",
        ),
        (
            "norm_stats.std",
            ["1.5"] * 10,
            "field 'norm_stats': NormStats: std[0] must be a number, got str '1.5'",
        ),
        (
            "norm_stats.mean",
            [True] * 10,
            "field 'norm_stats': NormStats: mean[0] must be a number, got bool 'True'",
        ),
        (
            "norm_stats.mean",
            [10**400] * 10,
            "field 'norm_stats': NormStats: mean holds a number too large for a float",
        ),
        (
            "weights_sha256",
            5,
            "field 'weights_sha256': expected 64 lowercase hex digits, got 5",
        ),
        (
            "model.num_classes",
            1,
            "field 'model': ATFNNConfig.num_classes must be at least 2 (a one-class model "
            "answers that class with score 1.000 whatever it hears), got 1",
        ),
    ],
)
def test_wrong_checkpoint_fields_are_one_line_naming_the_field(
    files, tmp_path, capsys, field, value, message
):
    ckpt = _edit_config(shutil.copytree(files["ckpt"], tmp_path / "ckpt"), **{field: value})
    if field == "model.num_classes":
        _edit_config(ckpt, labels=None)
    out = tmp_path / "model.onnx"
    for command in ("predict", "export"):
        argv = [command, "--checkpoint", str(ckpt)]
        argv += [str(speech_sample())] if command == "predict" else ["--output", str(out)]
        assert main(argv) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"atfnn-fast: error: {ckpt / 'config.json'}: {message}"
        ]
    assert not out.exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            {"fold": "s1", "speakers": {"train": 5}},
            "field 'extra.speakers': expected lists of speaker names by split, got {'train': 5}",
        ),
        ({"fold": 7}, "field 'extra.fold': expected a speaker or session name, got 7"),
        (
            {"fold": "s1", "protocol": ["loso"]},
            "field 'extra.protocol': expected one of ['loso', 'session'], got ['loso']",
        ),
    ],
)
def test_wrong_run_record_fields_are_one_line_naming_the_field(
    files, tmp_path, capsys, extra, message
):
    """evaluate reads the run record (``extra``) of a checkpoint: a wrongly typed field used
    to be a bare `TypeError: 'int' object is not iterable`."""
    ckpt = _edit_config(shutil.copytree(files["ckpt"], tmp_path / "ckpt"), extra=extra)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,label,speaker\n{speech_sample()},happy,s1\n")
    argv = ["evaluate", "--checkpoint", str(ckpt), "--manifest", str(manifest)]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"atfnn-fast: error: {ckpt / 'config.json'}: {message}"
    ]


def _with_metadata(source, target, **props):
    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        if entry.key in props:
            entry.value = props[entry.key]
    target.write_bytes(proto.SerializeToString())
    return target


def test_onnx_norm_stats_of_strings_and_one_class_graphs_are_refused(files, tmp_path, capsys):
    stats = read_metadata(files["a"])["norm_stats"].to_dict()
    strings = _with_metadata(
        files["a"],
        tmp_path / "strings.onnx",
        **{"atfnn.norm_stats": json.dumps({**stats, "mean": [str(v) for v in stats["mean"]]})},
    )
    config = json.loads(read_metadata(files["a"])["config"].to_json())
    one = _with_metadata(
        files["a"],
        tmp_path / "one.onnx",
        **{"atfnn.config": json.dumps({**config, "num_classes": 1}), "atfnn.labels": "null"},
    )
    first = str(stats["mean"][0])
    for path, message in (
        (
            strings,
            f"metadata atfnn.norm_stats: NormStats: mean[0] must be a number, got str {first!r}",
        ),
        (
            one,
            "metadata atfnn.config: ATFNNConfig.num_classes must be at least 2 (a one-class "
            "model answers that class with score 1.000 whatever it hears), got 1",
        ),
    ):
        assert predict(capsys, "--onnx", path, speech_sample()) == (
            1,
            "",
            [f"atfnn-fast: error: {path}: {message}"],
        )
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        tiny_model(1)  # so no one-class model reaches export or its validation


# ------------------------------------------------------------ cause 15: no spinning threads
def test_onnx_runtime_threads_do_not_spin(files):
    options = OnnxPredictor(files["a"]).session.get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == "0"
