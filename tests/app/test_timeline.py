"""Issue 30 item 3, the emotion timeline: ``predictor.timeline(path)`` and ``predict
--timeline`` give a row per segment (start, end, each class's score, top label) that
finds where a recording's class changes, whose mean is the file's scores, streamed and
optionally smoothed; ``plot-timeline`` draws it.

The change points are checked on a recording of pure tones whose pitch changes at known
times, scored by a stand-in model whose output depends on the segment's content alone:
the mean normalised log-Mel energy of three groups of Mel bands (low, mid, high), so the
class of each segment is known. It replaces the checkpoint's model (PyTorch) and the ONNX
Runtime session (ONNX), so both predictors' own timeline paths run around it."""

import csv
import io
import itertools
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import tiny_model, tiny_norm_stats

from atfnn_fast.app.cli import main
from atfnn_fast.app.plots import (
    TimelinePlotData,
    bin_timeline,
    read_timeline,
    timeline_figure,
)
from atfnn_fast.app.synth import CLASSES, RATE, recording
from atfnn_fast.checkpoint import save_checkpoint
from atfnn_fast.export import OnnxPredictor, export_onnx
from atfnn_fast.export.onnx_export import INPUT_NAME
from atfnn_fast.features import NormStats, mel_centre_frequencies, speech_sample
from atfnn_fast.inference import CheckpointPredictor, check_smooth, smooth_probabilities

LABELS = ["low", "mid", "high"]
GROUPS = (slice(0, 3), slice(3, 6), slice(6, 10))  # of the tiny config's 10 Mel bands
SEGMENT = 16 * 160 / 16_000  # the tiny config's 16 frames of 10 ms: 0.16 s
# (tone in Hz, seconds): the tones sit in the low, mid and high band groups
PLAN = [(400.0, 2.0), (1500.0, 1.3), (4800.0, 2.45), (400.0, 1.0)]
CHANGES = np.cumsum([s for _, s in PLAN])[:-1]  # 2.0, 3.3, 5.75 s
SECTION_LABELS = ["low", "mid", "high", "low"]


def band_logits(x: np.ndarray) -> np.ndarray:
    """Segments ``(b, 1, 10, 16)`` -> logits ``(b, 3)``: 4 x the mean of each band group."""
    return np.stack([4 * x[:, 0, g].mean(axis=(1, 2)) for g in GROUPS], 1)


class BandModel(torch.nn.Module):
    """The stand-in PyTorch model: :func:`band_logits`, counting its calls."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.from_numpy(band_logits(x.numpy())).float()


class BandSession:
    """The stand-in ONNX Runtime session: :func:`band_logits` of the fed spectrograms."""

    def run(self, outputs, feed):
        return [band_logits(feed[INPUT_NAME].astype(np.float64)).astype(np.float32)]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in err.splitlines() if not line.startswith("predict: ")]


def tones(path, plan, rate=RATE):
    t = np.arange(round(sum(s for _, s in plan) * rate)) / rate
    wave = np.zeros_like(t)
    start = 0.0
    for freq, seconds in plan:
        inside = (t >= start) & (t < start + seconds)
        wave[inside] = 0.5 * np.sin(2 * np.pi * freq * t[inside])
        start += seconds
    noise = np.random.default_rng(0).normal(0, 1e-3, t.size)
    sf.write(path, (wave + noise).astype(np.float32), rate, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tone recording, the bundled speech, a tiny random model as a checkpoint and
    an ONNX file (equal statistics in every band, so normalising keeps the band order)."""
    folder = tmp_path_factory.mktemp("timeline")
    stats = NormStats((-5.0,) * 10, (4.0,) * 10, 1)
    model = tiny_model(3, seed=2)
    kw = dict(labels=LABELS, norm_stats=stats)
    uneven = dict(labels=LABELS, norm_stats=tiny_norm_stats())  # random per band
    return {
        "tones": tones(folder / "tones.wav", PLAN),
        "speech": speech_sample(),
        "ckpt": save_checkpoint(folder / "ckpt", model, **kw),
        "onnx": export_onnx(model, folder / "model.onnx", **kw),
        "random_stats": save_checkpoint(folder / "random", model, **uneven),
        "random_stats_onnx": export_onnx(model, folder / "random.onnx", **uneven),
    }


def band_predictor(kind, files, batch_size=4):
    if kind == "checkpoint":
        predictor = CheckpointPredictor(files["ckpt"], batch_size=batch_size)
        predictor.model = BandModel()
    else:
        predictor = OnnxPredictor(files["onnx"], batch_size=batch_size)
        predictor.session = BandSession()
    return predictor


def changes(rows):
    """``(time, label before, label after)`` where the top label changes."""
    return [
        (rows[i].start, rows[i - 1].label, rows[i].label)
        for i in range(1, len(rows))
        if rows[i].label != rows[i - 1].label
    ]


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_the_timeline_finds_the_changes_within_one_segment(files, kind):
    # the stand-in model's premise: each tone lies in its band group
    centres = mel_centre_frequencies(10)
    for (freq, _), label in zip(PLAN, SECTION_LABELS, strict=True):
        group = GROUPS[LABELS.index(label)]
        assert centres[group][0] <= freq * 1.1 and freq * 0.9 <= centres[group][-1]
    rows = list(band_predictor(kind, files).timeline(files["tones"]))
    total = sum(s for _, s in PLAN)
    assert len(rows) == math.ceil(total / SEGMENT) == 43  # 6.75 s: 42 whole + a 0.11 s tail
    for i, row in enumerate(rows):
        assert row.segment == i and row.file == str(files["tones"])
        assert row.start == pytest.approx(i * SEGMENT, abs=1e-9)
        assert row.end == pytest.approx(min((i + 1) * SEGMENT, total), abs=1e-9)
        assert sum(row.scores.values()) == pytest.approx(1.0, abs=1e-9)
        assert row.label == max(row.scores, key=row.scores.get)
        # a segment wholly inside a section has that section's label, by a majority
        edges = np.concatenate([[0], CHANGES, [total]])
        section = int(np.searchsorted(edges, row.start, side="right")) - 1
        if row.end <= edges[section + 1] and row.start >= edges[section] + 0.01:
            assert row.label == SECTION_LABELS[section], (i, row)
            assert row.scores[row.label] > 0.5
    found = changes(rows)
    assert [(a, b) for _, a, b in found] == list(itertools.pairwise(SECTION_LABELS))
    for (time, _, _), true in zip(found, CHANGES, strict=True):
        assert abs(time - true) <= SEGMENT, (time, true)


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_the_file_scores_are_the_mean_of_the_rows(files, kind):
    """With the real (random) tiny model and uneven band statistics, on speech: the mean
    of the timeline's scores is predict_file's, and both predictors give the same rows."""
    if kind == "checkpoint":
        predictor = CheckpointPredictor(files["random_stats"], batch_size=7)
    else:
        predictor = OnnxPredictor(files["random_stats_onnx"], batch_size=7)
    rows = list(predictor.timeline(files["speech"]))
    whole = predictor.predict_file(files["speech"])
    mean = np.mean([[r.scores[k] for k in LABELS] for r in rows], 0)
    assert dict(zip(LABELS, mean, strict=True)) == pytest.approx(whole.scores, abs=1e-12)
    reference = CheckpointPredictor(files["random_stats"], batch_size=64)
    want = list(reference.timeline(files["speech"]))
    assert len(rows) == len(want) == 40
    for got, ref in zip(rows, want, strict=True):
        assert (got.start, got.end, got.label) == (ref.start, ref.end, ref.label)
        assert got.scores == pytest.approx(ref.scores, abs=1e-5)


def test_the_timeline_streams_batch_by_batch(files):
    """Rows come out as their batch finishes: the first row needs one forward pass of 4
    segments (smoothing over 5 needs 2 rows more, still inside it), the whole file 11."""
    for smooth in (1, 5):
        predictor = band_predictor("checkpoint", files, batch_size=4)
        rows = predictor.timeline(files["tones"], smooth=smooth)
        assert predictor.model.calls == 0  # nothing runs before the first row is asked for
        next(rows)
        assert predictor.model.calls == 1
        assert len(list(rows)) == 42 and predictor.model.calls == 11


def test_smoothing_is_the_centred_moving_average():
    rng = np.random.default_rng(0)
    for n in (1, 2, 10):
        rows = rng.dirichlet(np.ones(3), n)
        for window in (1, 3, 5, 7, 21):
            got = np.array(list(smooth_probabilities(iter(rows), window)))
            h = window // 2
            want = np.array([rows[max(0, i - h) : i + h + 1].mean(0) for i in range(n)])
            assert got.shape == (n, 3) and np.abs(got - want).max() < 1e-15, (n, window)
    for bad in (0, 2, -1, 1000, 3.0, True, "3"):
        with pytest.raises(ValueError, match=r"smooth must be an odd int in 1\.\.999"):
            check_smooth(bad)


def test_smoothing_removes_a_one_segment_blip(files, tmp_path):
    """A high tone over exactly segment 10 (1.60 .. 1.76 s) inside a low one: the raw
    timeline shows it, smoothing over 5 segments averages it away; the smoothed rows are
    the moving average of the raw ones, and their label is the average's top class."""
    path = tones(tmp_path / "blip.wav", [(400.0, 1.6), (4800.0, 0.16), (400.0, 1.44)])
    predictor = band_predictor("checkpoint", files)
    raw = list(predictor.timeline(path))
    smooth = list(predictor.timeline(path, smooth=5))
    assert [r.label for r in raw] == ["low"] * 10 + ["high"] + ["low"] * 9
    assert [r.label for r in smooth] == ["low"] * 20
    scores = np.array([[r.scores[k] for k in LABELS] for r in raw])
    for i, row in enumerate(smooth):
        want = scores[max(0, i - 2) : i + 3].mean(0)
        assert [row.scores[k] for k in LABELS] == pytest.approx(want, abs=1e-12)
        assert (row.segment, row.start, row.end) == (i, raw[i].start, raw[i].end)


def test_predict_timeline_csv_and_json_lines(files, capsys):
    """CLI rows: the CSV's columns, both formats' values against the API's rows, the mean
    of the rows against `predict --json`'s file scores, a failing file's error row."""
    ckpt, speech = files["random_stats"], files["speech"]
    api = list(CheckpointPredictor(ckpt).timeline(speech))
    missing = speech.with_name("missing.wav")
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--timeline", "--csv", speech)
    assert (code, err) == (0, [])
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == ["path", "segment", "start", "end", "label", *LABELS, "error"]
    assert len(table) == 1 + len(api) == 41
    for line, row in zip(table[1:], api, strict=True):
        assert line[:5] == [
            str(speech),
            str(row.segment),
            f"{row.start:.3f}",
            f"{row.end:.3f}",
            row.label,
        ]
        assert [float(v) for v in line[5:8]] == pytest.approx(
            [row.scores[k] for k in LABELS], abs=5e-7
        )
        assert line[8] == ""
    assert table[-1][3] == f"{sf.info(str(speech)).duration:.3f}"  # the last row ends the file

    code, out, err = cli(
        capsys, "predict", "--checkpoint", ckpt, "--timeline", "--json", speech, missing
    )
    assert code == 1 and err == [f"atfnn-fast: error: {missing}: audio file not found"]
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[-1] == {"path": str(missing), "error": f"{missing}: audio file not found"}
    assert [r for r in lines[:-1]] == [r.to_dict() for r in api]
    assert set(lines[0]) == {"path", "segment", "start", "end", "label", "scores"}
    code, out, _ = cli(capsys, "predict", "--checkpoint", ckpt, "--json", speech)
    file_scores = json.loads(out)[0]["scores"]
    mean = {k: np.mean([r["scores"][k] for r in lines[:-1]]) for k in LABELS}
    assert mean == pytest.approx(file_scores, abs=1e-12)

    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--timeline", speech)
    assert (code, err) == (0, []) and out.splitlines() == [str(r) for r in api]
    assert out.splitlines()[0].startswith(f"{speech} [0.00-0.16 s]: ")

    onnx = files["random_stats_onnx"]  # the ONNX predictor, smoothed
    want = list(OnnxPredictor(onnx).timeline(speech, smooth=3))
    code, out, err = cli(
        capsys, "predict", "--onnx", onnx, "--timeline", "--smooth", "3", "--csv", speech
    )
    assert (code, err) == (0, [])
    table = list(csv.reader(io.StringIO(out)))[1:]
    assert [line[4] for line in table] == [r.label for r in want]
    got = np.array([[float(v) for v in line[5:8]] for line in table])
    assert np.abs(got - [[r.scores[k] for k in LABELS] for r in want]).max() <= 5e-7


def test_predict_smooth_is_checked(files, capsys):
    speech = files["speech"]
    for argv, message in (
        (
            ["--smooth", "3"],
            "atfnn-fast: error: --smooth: smooths a timeline; add --timeline",
        ),
        (
            ["--timeline", "--smooth", "4"],
            "atfnn-fast predict: error: argument --smooth: must be odd (a window centred on "
            "each segment), got 4",
        ),
        (
            ["--timeline", "--smooth", "0"],
            "atfnn-fast predict: error: argument --smooth: must be between 1 and 999, got 0",
        ),
    ):
        code, out, err = cli(capsys, "predict", "--checkpoint", files["ckpt"], *argv, speech)
        assert (code, out, err) == (2, "", [message])


def test_plot_timeline_from_rows_and_from_a_model(files, tmp_path, capsys):
    """`plot-timeline` writes a real PNG of the figure's size, from predict's rows (CSV
    or JSON lines) and from a checkpoint, and prints the file's mean scores."""
    from matplotlib.image import imread

    ckpt, speech = files["random_stats"], files["speech"]
    whole = CheckpointPredictor(ckpt).predict_file(speech)
    best = f"{whole.label} {whole.scores[whole.label]:.3f}"
    for fmt in ("--csv", "--json"):
        code, out, _ = cli(capsys, "predict", "--checkpoint", ckpt, "--timeline", fmt, speech)
        rows = tmp_path / f"rows.{fmt[2:]}"
        rows.write_text(out, encoding="utf-8")
        png = tmp_path / f"from-{fmt[2:]}.png"
        code, out, err = cli(capsys, "plot-timeline", "--rows", rows, "--output", png)
        assert (code, err) == (0, [])
        assert out.splitlines()[0].startswith(f"{speech}: 40 segments, 6.3 s; mean of the segments")
        assert best in out and out.splitlines()[1] == str(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(png).shape[:2] == (506, 1320)  # 12 x 4.6 inches at 110 dpi
    png = tmp_path / "from-model.png"
    code, out, err = cli(
        capsys, "plot-timeline", "--checkpoint", ckpt, "--smooth", "3", "--output", png, speech
    )
    assert (code, err) == (0, []) and best in out
    assert imread(png).shape[:2] == (506, 1320)
    code, out, err = cli(capsys, "plot-timeline", "--checkpoint", ckpt, "--output", png)
    assert (code, err) == (
        2,
        ["atfnn-fast: error: an audio file is needed with --checkpoint or --onnx"],
    )
    code, out, err = cli(
        capsys, "plot-timeline", "--rows", tmp_path / "rows.csv", "--output", tmp_path / "x.jpg"
    )
    assert code == 2 and err == [
        "atfnn-fast: error: --output: x.jpg must end in .png, .svg or .pdf (the format written)"
    ]


def hour(labels=LABELS, segments=2813, seconds=1.28):
    starts = np.arange(segments) * seconds
    ends = np.minimum(starts + seconds, 3600.0)
    scores = np.random.default_rng(1).dirichlet(np.ones(len(labels)), segments)
    return TimelinePlotData("call.wav", starts, ends, scores, list(labels))


def test_a_one_hour_timeline_is_drawn_in_minutes_and_columns():
    """2813 segments (an hour of 1.28 s) become 938 columns of 3 segments' mean scores, the
    x axis in minutes."""
    data = hour()
    edges, scores, k = bin_timeline(data)
    assert k == 3 and scores.shape == (938, 3) and edges.shape == (939,)
    assert np.abs(scores[5] - data.scores[15:18].mean(0)).max() < 1e-15
    assert np.abs(scores[-1] - data.scores[2811:].mean(0)).max() < 1e-15
    assert edges[1] == data.starts[3] and edges[-1] == 3600.0
    fig = timeline_figure(data, "call.wav", smooth=5)
    ax, strip = fig.axes[:2]
    assert strip.get_xlabel() == "time (min)" and ax.get_xlim() == (0.0, 60.0)
    title = fig._suptitle.get_text()
    assert "(60.0 min)" in title
    assert "2813 segments of 1.28 s; each smoothed over 5 segments; each column the mean of 3" in (
        title
    )
    short = timeline_figure(hour(segments=40), "short.wav")
    assert short.axes[1].get_xlabel() == "time (s)"
    assert "each column" not in short._suptitle.get_text()


def test_read_timeline_picks_a_file_and_refuses_other_text(tmp_path):
    rows = [
        {"path": p, "segment": i, "start": i * 1.0, "end": i + 1.0, "label": "low",
         "scores": {"low": 0.5, "mid": 0.3, "high": 0.2}}
        for p in ("a.wav", "b.wav") for i in range(3)
    ]  # fmt: skip
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"path": "c.wav", "error": "x"}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl: holds 2 files \(a\.wav, b\.wav\); name"):
        read_timeline(path)
    data = read_timeline(path, "b.wav")
    assert data.file == "b.wav" and data.labels == ["low", "mid", "high"]
    assert data.starts.tolist() == [0.0, 1.0, 2.0] and data.scores.shape == (3, 3)
    with pytest.raises(ValueError, match=r"has no rows of c\.wav"):
        read_timeline(path, "c.wav")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,low,error\na.wav,low,1,\n")
    with pytest.raises(ValueError, match=r"bad\.csv: not a timeline of `predict --timeline`"):
        read_timeline(bad)


def test_synthetic_recording_sections():
    plan = [("low_flat", 2.0), ("fast_loud", 0.75), ("high_rising", 1.5)]
    wave = recording(plan, seed=1)
    assert wave.dtype == np.float32 and wave.shape == (round(4.25 * RATE),)
    assert np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 1
    # fast_loud is the loud class: its section's RMS is above its neighbours'
    rms = [np.sqrt(np.mean(wave[a:b] ** 2)) for a, b in ((0, 32000), (32000, 44000), (44000, None))]
    assert rms[1] > 1.5 * max(rms[0], rms[2])
    with pytest.raises(ValueError, match="unknown class 'angry'"):
        recording([("angry", 1.0)])
    assert set(CLASSES) >= {c for c, _ in plan}
