"""The waveform-in graph (issue 33, item 1): `export --input waveform`, its agreement with
the Python pipeline, both graph kinds through `OnnxPredictor` and `predict --onnx`."""

import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
from helpers import randomize, tiny_config

from atfnn_fast import ATFNN, ATFNNConfig
from atfnn_fast.app.cli import main
from atfnn_fast.checkpoint import save_checkpoint
from atfnn_fast.export import OnnxError, OnnxPredictor, export_onnx, read_metadata
from atfnn_fast.export.waveform import (
    FEATURES_OUTPUT,
    expose_features,
    validate_waveform,
    validation_recordings,
)
from atfnn_fast.features import (
    AudioError,
    FeatureConfig,
    NormStats,
    iter_segment_batches,
    load_audio,
    log_mel,
    speech_sample,
)
from atfnn_fast.inference import CheckpointPredictor

LABELS = ["angry", "happy", "sad", "neutral"]


def speech_stats(n_mels: int) -> NormStats:
    """Statistics as training computes them (the bundled speech's log-Mel frames)."""
    return NormStats.fit([log_mel(load_audio(speech_sample()), n_mels).double()])


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """The default model (80 bands, 128 frames), random weights, as a checkpoint and as both
    graph kinds."""
    folder = tmp_path_factory.mktemp("waveform")
    torch.manual_seed(0)
    model = randomize(ATFNN(ATFNNConfig(dropout=0.0)), 0.2).eval()
    kw = dict(labels=LABELS, norm_stats=speech_stats(80))
    return {
        "model": model,
        "ckpt": save_checkpoint(folder / "ckpt", model, **kw),
        "spectrogram": export_onnx(model, folder / "spec.onnx", **kw),
        "waveform": export_onnx(model, folder / "wave.onnx", input="waveform", **kw),
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model (10 bands, 16 frames: many segments, many tails) with its waveform graph
    in chunks of 3 segments (so files take several Loop steps and a partial last one)."""
    folder = tmp_path_factory.mktemp("tiny-waveform")
    torch.manual_seed(1)
    model = randomize(ATFNN(tiny_config()), 0.3).eval()
    kw = dict(labels=["a", "b", "c"], norm_stats=speech_stats(10))
    return {
        "model": model,
        "waveform": export_onnx(model, folder / "w3.onnx", input="waveform", segment_batch=3, **kw),
        "spectrogram": export_onnx(model, folder / "spec.onnx", **kw),
    }


def features_session(path):
    """The graph with its features exposed (what validate_waveform runs)."""
    proto = expose_features(onnx.load(str(path)))
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def python_pipeline(file, model, stats, cfg):
    """`predict --checkpoint`'s features and segment probabilities."""
    x = torch.cat(
        list(iter_segment_batches(file, n_mels=cfg.n_mels, frames=cfg.frames, stats=stats))
    )
    with torch.no_grad():
        return x.numpy(), model(x).double().softmax(-1).numpy()


# ------------------------------------------------------------------------------ agreement
def test_agrees_with_the_python_pipeline_on_recordings(default):
    """Shorter than a segment, a multiple of the hop, 12 s and the bundled speech: the same
    segments, features within 1e-4 (relative), probabilities within 1e-4, the same label."""
    report = validate_waveform(default["waveform"], default["model"], long_seconds=12)
    assert report.passed, str(report)
    got = {r.name: r for r in report.recordings}
    assert list(got) == [
        "shorter-than-a-segment.wav",
        "multiple-of-the-hop.wav",
        "0.2-minutes.wav",
        "speech.wav",
    ]
    # 64 hops -> 65 frames: one padded segment; 632 hops -> 633 frames: 4 + a 121-frame
    # tail; 12 s -> 1201 frames: 9 + a 49-frame tail; 101215 samples -> 633 frames
    assert [r.segments for r in report.recordings] == [1, 5, 10, 5]
    for r in report.recordings:
        assert r.graph_segments == r.segments
        assert r.feature_rel <= 1e-4 and r.feature_diff <= 2.5e-4, r
        assert r.prob_diff <= 1e-4 and r.file_diff <= 1e-4 and r.same_label, r
        assert r.top1 == 1.0
    assert "PASS" in str(report)


@pytest.mark.slow
def test_ten_minute_recording_through_export_validate(default, tmp_path, capsys):
    """`export --input waveform --validate` on the checkpoint: the 10-minute recording (469
    segments) agrees like the short ones, and the file is written."""
    out = tmp_path / "w.onnx"
    argv = ["export", "--checkpoint", str(default["ckpt"]), "--output", str(out)]
    assert main([*argv, "--input", "waveform", "--validate"]) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if "10-minutes.wav" in x)
    assert "(600.00 s, 469 segments)" in line and "file label same" in line
    rel, _absolute, prob, file_diff = map(
        float,
        re.search(
            r"features (\S+) relative \((\S+) absolute\), probabilities (\S+) \(file (\S+)\)", line
        ).groups(),
    )
    assert rel <= 1e-4 and prob <= 1e-4 and file_diff <= 1e-4
    assert "PASS" in text and out.exists()


def test_features_and_segments_match_at_every_kind_of_length(tiny, tmp_path):
    """Lengths around every boundary of the segmentation (one frame, a tail just under and
    at the kept minimum, exact multiples of a segment, several Loop steps): the graph cuts
    the segments the pipeline cuts, with the same features and probabilities."""
    model, cfg = tiny["model"], tiny["model"].config
    stats = read_metadata(tiny["waveform"])["norm_stats"]
    sess = features_session(tiny["waveform"])
    hop, frames = 160, cfg.frames  # a segment: 16 frames; a tail counts from 4 frames
    lengths = [257, 300, 3 * hop - 1, 3 * hop, 15 * hop, 16 * hop, 18 * hop, 19 * hop + 5]
    lengths += [32 * hop - 1, 32 * hop, 47 * hop, 52 * hop + 159, 200 * hop + 7]
    wave = load_audio(speech_sample()).numpy()
    for n in lengths:
        file = tmp_path / f"{n}.wav"
        sf.write(str(file), wave[:n], 16000, subtype="FLOAT")
        want_x, want_p = python_pipeline(file, model, stats, cfg)
        seg, scores, x = sess.run(
            ["segment_scores", "scores", FEATURES_OUTPUT], {"waveform": wave[:n]}
        )
        n_frames = 1 + n // hop
        tail = n_frames % frames
        expected = n_frames // frames + (1 if tail and (tail >= 4 or n_frames < frames) else 0)
        assert len(seg) == len(want_p) == expected, n
        assert np.abs(x - want_x).max() <= 1e-4 * np.abs(want_x).max(), n
        np.testing.assert_allclose(seg, want_p, atol=1e-4, err_msg=str(n))
        np.testing.assert_allclose(scores, want_p.mean(0), atol=1e-4, err_msg=str(n))


def test_chunk_size_does_not_change_the_scores(tiny, tmp_path):
    """Segments through the Loop 3 at a time, 64 at a time or one at a time (a static-batch
    export): the same scores."""
    model = tiny["model"]
    meta = read_metadata(tiny["waveform"])
    big = export_onnx(
        model,
        tmp_path / "w64.onnx",
        input="waveform",
        labels=meta["labels"],
        norm_stats=meta["norm_stats"],
    )
    one = export_onnx(
        model,
        tmp_path / "static.onnx",
        input="waveform",
        dynamic_batch=False,
        labels=meta["labels"],
        norm_stats=meta["norm_stats"],
    )
    sizes = [read_metadata(p)["segment_batch"] for p in (tiny["waveform"], big, one)]
    assert sizes == [3, 64, 1]  # a static-batch model: one segment per step
    wave = load_audio(speech_sample()).numpy()  # 40 segments: 14 steps of 3, one, or 40
    a = OnnxPredictor(tiny["waveform"]).predict_waveform(wave)
    assert a[0].shape == (40, 3)
    for other in (big, one):
        b = OnnxPredictor(other).predict_waveform(wave)
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)
        np.testing.assert_allclose(a[1], b[1], atol=1e-6)


# ----------------------------------------------------------------------------- any length
def test_any_length_runs_including_very_short(tiny):
    """0 to 256 samples (which the pipeline refuses: reflect padding needs 257) give the
    scores of the same samples zero-padded to 257; 1-D and (1, samples) inputs agree."""
    predictor = OnnxPredictor(tiny["waveform"])
    wave = load_audio(speech_sample()).numpy()[8000:]
    for n in (0, 1, 100, 256):
        seg, scores = predictor.predict_waveform(wave[:n])
        padded = np.concatenate([wave[:n], np.zeros(257 - n, np.float32)])
        seg_257, scores_257 = predictor.predict_waveform(padded)
        assert seg.shape == (1, 3) and np.isfinite(seg).all()
        np.testing.assert_allclose(seg, seg_257, atol=1e-7)
        np.testing.assert_allclose(scores, scores_257, atol=1e-7)
    one, _ = predictor.predict_waveform(wave[:5000])
    two, _ = predictor.predict_waveform(wave[None, :5000])
    np.testing.assert_array_equal(one, two)
    with pytest.raises(
        ValueError, match=r"mono samples \(samples,\) or \(1, samples\), got shape \(2, 10\)"
    ):
        predictor.predict_waveform(np.zeros((2, 10), np.float32))


def test_very_short_file_is_refused_like_the_pipeline(tiny, default, tmp_path):
    """predict refuses a 100-sample file with the pipeline's own one-line error, whichever
    graph kind (or the checkpoint) runs."""
    file = tmp_path / "click.wav"
    sf.write(str(file), np.full(100, 0.1, np.float32), 16000, subtype="FLOAT")
    want = f"{file}: wave must have more than n_fft // 2 = 256 samples (16 ms), got 100"
    for predictor in (
        OnnxPredictor(default["waveform"]),
        OnnxPredictor(default["spectrogram"]),
        CheckpointPredictor(default["ckpt"]),
    ):
        with pytest.raises(AudioError) as err:
            predictor.predict_file(file)
        assert str(err.value) == want


# ------------------------------------------------------------------ kinds and metadata
def test_metadata_tells_the_kinds_apart(default, tmp_path):
    spec, wave = read_metadata(default["spectrogram"]), read_metadata(default["waveform"])
    assert (spec["input"], wave["input"]) == ("spectrogram", "waveform")
    assert wave["sample_rate"] == 16000 and wave["segment_batch"] == 64
    assert "sample_rate" not in spec and spec["batch"] is None
    props = {p.key: p.value for p in onnx.load(str(default["waveform"])).metadata_props}
    assert (props["atfnn.input"], props["atfnn.sample_rate"]) == ("waveform", "16000")
    graph = onnx.load(str(default["waveform"])).graph
    assert [i.name for i in graph.input] == ["waveform"]
    assert [o.name for o in graph.output] == ["segment_scores", "scores"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["samples"]
    ops = {n.op_type for n in graph.node}
    body = next(n for n in graph.node if n.op_type == "Loop").attribute[0].g
    assert {"Pad", "Loop", "Softmax", "ReduceMean"} <= ops
    assert {"STFT", "MatMul", "Log", "LSTM", "Attention"} <= {n.op_type for n in body.node}
    assert all(n.domain in ("", "ai.onnx") for n in [*graph.node, *body.node])

    # a file from before the key is a spectrogram graph; a wrong kind or rate is refused
    def tampered(source, key, value):
        proto = onnx.load(str(source))
        entries = [p for p in proto.metadata_props if p.key == key]
        if value is None:
            proto.metadata_props.remove(entries[0])
        else:
            entries[0].value = value
        out = tmp_path / f"{key}-{value}.onnx"
        onnx.save(proto, str(out))
        return out

    assert (
        read_metadata(tampered(default["spectrogram"], "atfnn.input", None))["input"]
        == "spectrogram"
    )
    bad = tampered(default["spectrogram"], "atfnn.input", "video")
    with pytest.raises(
        OnnxError, match=r"metadata atfnn.input is 'video', expected 'spectrogram' or 'waveform'"
    ):
        read_metadata(bad)
    bad = tampered(default["waveform"], "atfnn.sample_rate", "8000")
    with pytest.raises(
        OnnxError, match=r"metadata atfnn.sample_rate is 8000, atfnn.features sample_rate is 16000"
    ):
        read_metadata(bad)
    bad = tampered(default["spectrogram"], "atfnn.input", "waveform")
    with pytest.raises(OnnxError, match=r"metadata atfnn.sample_rate is missing"):
        read_metadata(bad)


def test_both_kinds_through_onnx_predictor(default, tmp_path):
    """The same scores from both kinds and the checkpoint, on a 44.1 kHz stereo file (the
    predictor resamples first); each kind refuses the other's entry point."""
    stereo = tmp_path / "stereo_44k.wav"
    wave, _ = sf.read(str(speech_sample()))
    sf.write(str(stereo), np.stack([wave, wave * 0.5], 1), 44100)
    results = [
        OnnxPredictor(default["waveform"]).predict_file(stereo),
        OnnxPredictor(default["spectrogram"]).predict_file(stereo),
        CheckpointPredictor(default["ckpt"]).predict_file(stereo),
    ]
    for other in results[1:]:
        assert other.label == results[0].label
        assert other.scores == pytest.approx(results[0].scores, abs=1e-4)
    with pytest.raises(ValueError, match="is a waveform-in graph"):
        OnnxPredictor(default["waveform"]).predict_spectrograms(np.zeros((1, 1, 80, 128)))
    with pytest.raises(ValueError, match="takes spectrograms"):
        OnnxPredictor(default["spectrogram"]).predict_waveform(np.zeros(1000, np.float32))


def test_both_kinds_through_cli_predict(default, tmp_path, capsys):
    files = [str(speech_sample()), str(tmp_path / "missing.wav")]
    outputs = []
    for kind in ("waveform", "spectrogram"):
        code = main(["predict", "--onnx", str(default[kind]), "--json", *files])
        out, err = capsys.readouterr()
        assert code == 1 and "Traceback" not in err
        result, missing = json.loads(out)
        assert missing == {"path": files[1], "error": f"{files[1]}: audio file not found"}
        outputs.append(result)
    assert outputs[0]["label"] == outputs[1]["label"]
    assert outputs[0]["scores"] == pytest.approx(outputs[1]["scores"], abs=1e-4)


def test_cli_export_waveform(default, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    argv = [
        "export",
        "--checkpoint",
        str(default["ckpt"]),
        "--output",
        str(out),
        "--input",
        "waveform",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (ATFNN, float32, waveform in at 16000 Hz)" in text
    assert "TensorRT" not in text  # mentioned only for --target tensorrt
    assert read_metadata(out)["input"] == "waveform"


# ------------------------------------------------------------------------------ int8, args
def test_int8_waveform_graph_validates(tiny, tmp_path):
    meta = read_metadata(tiny["spectrogram"])
    q = export_onnx(
        tiny["model"],
        tmp_path / "q.onnx",
        input="waveform",
        quantize="int8",
        labels=meta["labels"],
        norm_stats=meta["norm_stats"],
    )
    assert read_metadata(q)["quantization"] == "int8-dynamic"
    report = validate_waveform(q, tiny["model"], long_seconds=10)
    assert report.passed, str(report)
    assert all(r.feature_rel <= 1e-4 for r in report.recordings)


def test_export_checks_the_waveform_arguments(tiny, tmp_path):
    model = tiny["model"]
    with pytest.raises(ValueError, match=r"input must be one of \('spectrogram', 'waveform'\)"):
        export_onnx(model, tmp_path / "a.onnx", input="audio")
    with pytest.raises(ValueError, match="input='waveform' writes a float32 graph"):
        export_onnx(model, tmp_path / "b.onnx", input="waveform", dtype="float16")
    with pytest.raises(ValueError, match=r"segment_batch must be an int in 1..4096, got 0"):
        export_onnx(model, tmp_path / "c.onnx", input="waveform", segment_batch=0)
    assert not list(tmp_path.iterdir())


def test_validation_recordings(tmp_path):
    """The synthesised recordings are what their names say."""
    files = validation_recordings(tmp_path, FeatureConfig(), 128, long_seconds=600)
    lengths = [sf.info(str(f)).frames for f in files]
    assert lengths[0] == 64 * 160 and 1 + lengths[0] // 160 < 128  # under one segment
    assert lengths[1] % 160 == 0 and lengths[1] > 128 * 160
    assert lengths[2] == 600 * 16000
    assert all(sf.info(str(f)).samplerate == 16000 for f in files)
