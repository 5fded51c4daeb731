"""Issue 33, items 2-4: ``predict --ray`` on Ray Data and ``serve`` on Ray Serve, against a
real local Ray started here (one per module, 2 CPUs; the HTTP server on 127.0.0.1 only): the rows and scores of
one-machine ``predict``, a real worker killed mid-run, real HTTP requests to a real server,
and the one-line refusals. The Ray tests are ``slow`` (Ray and Serve take seconds to start);
the checks without Ray are not."""

from __future__ import annotations

import builtins
import csv
import functools
import hashlib
import http.client
import io
import json
import os
import re
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import tiny_model, tiny_norm_stats

from atfnn_fast.app.cli import main
from atfnn_fast.app.predict import expand_sources, file_entry, load_predictor
from atfnn_fast.checkpoint import save_checkpoint
from atfnn_fast.export.onnx_export import export_onnx
from atfnn_fast.features import AudioBytes, AudioError, iter_segment_batches

LABELS = ["ang", "hap", "neu"]
ROOT = Path(__file__).resolve().parents[2]
RATE = 16_000


def _clip(seed: int, seconds: float, rate: int = RATE) -> np.ndarray:
    """Noise shaped like speech's level: a real decode and a real feature path."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    return (0.1 * rng.standard_normal(n) * (1 + np.sin(np.arange(n) / 800.0))).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    model, stats = tiny_model(len(LABELS)), tiny_norm_stats()
    ckpt = save_checkpoint(folder / "ckpt", model, labels=LABELS, norm_stats=stats)
    onnx = export_onnx(model, folder / "m.onnx", labels=LABELS, norm_stats=stats)
    return Path(ckpt), Path(onnx)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """A folder of clips (one of them not audio), a manifest naming two of them, and a
    missing file: every kind of source ``predict`` takes."""
    folder = tmp_path_factory.mktemp("audio")
    for i in range(10):
        sf.write(folder / f"clip{i:02d}.wav", _clip(i, 0.5 + 0.3 * i), RATE)
    sf.write(
        folder / "stereo.flac",
        np.stack([_clip(20, 2.0, 44_100), _clip(21, 2.0, 44_100)], 1),
        44_100,
    )
    (folder / "notaudio.wav").write_bytes(b"hello, not a wav file")
    manifest = folder.parent / "manifest.csv"
    manifest.write_text(
        f"path,label,speaker\n{folder / 'clip01.wav'},ang,s1\n{folder / 'clip02.wav'},hap,s2\n"
    )
    return [str(folder), str(manifest), str(folder.parent / "missing.wav")]


# ------------------------------------------------------------------- without Ray (fast)
def test_scale_extra_is_declared_and_pinned():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["scale"] == ["ray[data,serve]"]
    assert "ray[data,serve]" in extras["dev"]  # make test and CI install it
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert "ray" in pins and "pyarrow" in pins


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--ray", "--onnx", "{onnx}", "{wav}"],
        ["serve", "--onnx", "{onnx}"],
    ],
)
def test_without_the_extra_one_line_says_what_to_install(
    argv, models, tmp_path, monkeypatch, capsys
):
    for name in ("ray", "ray.data", "ray.serve"):
        monkeypatch.setitem(sys.modules, name, None)  # as if ray were not installed
    wav = tmp_path / "a.wav"
    sf.write(wav, _clip(0, 1.0), RATE)
    code = main([a.format(onnx=models[1], wav=wav) for a in argv])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "comes with the 'scale' extra" in err and 'pip install "atfnn-fast[scale]"' in err


def test_ray_address_or_first_file(models, tmp_path, monkeypatch, capsys):
    """``--ray a.wav`` takes a.wav as an input, not as an address; --parquet needs --ray."""
    from atfnn_fast.app.scale import is_address

    assert is_address("auto") and is_address("10.0.0.5:6379") and is_address("ray://head:10001")
    assert not is_address("a.wav") and not is_address("clips/")
    port_named = tmp_path / "host:1"
    port_named.write_bytes(b"")
    assert not is_address(str(port_named))  # an existing path is a file
    code = main(
        ["predict", "--onnx", str(models[1]), "--parquet", str(tmp_path / "x.parquet"), "a"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "atfnn-fast: error: --parquet: needs --ray (Parquet output is part of the scale extra)"
    )


def test_the_readme_scaling_out_commands_parse():
    import shlex

    from atfnn_fast.app.cli import build_parser

    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Scaling out\n") :]
    block = section[section.index("```bash\n") + 8 : section.index("\n```\n")]
    commands = [
        shlex.split(line.split(" #")[0])[1:]
        for line in block.splitlines()
        if line.startswith(".venv/bin/atfnn-fast ")
    ]
    assert [c[0] for c in commands] == ["predict", "predict", "predict", "serve"]
    for words in commands:
        build_parser().parse_args(words)  # exits (fails the test) on an unknown option
    assert "--ray" in commands[0] and "--parquet" in commands[2]


def test_serve_options_default_to_the_module_values(capsys):
    from atfnn_fast.app import serve
    from atfnn_fast.app.cli import build_parser

    args = build_parser().parse_args(["serve", "--onnx", "m.onnx"])
    assert (args.host, args.port) == (serve.DEFAULT_HOST, serve.DEFAULT_PORT) == ("127.0.0.1", 8000)
    assert args.max_batch == serve.DEFAULT_MAX_BATCH
    assert args.batch_wait_ms / 1000 == serve.DEFAULT_BATCH_WAIT_S
    assert args.max_mib * 2**20 == serve.DEFAULT_MAX_BYTES
    assert args.max_seconds == serve.DEFAULT_MAX_SECONDS
    assert main(["predict", "--onnx", "m.onnx", "--workers", "2", "a.wav"]) == 2
    assert capsys.readouterr().err.strip() == (
        "atfnn-fast: error: --workers: needs --ray (the workers are Ray actors)"
    )


# the checkpoint's first forward passes warm its kernels up: seconds on 2 cores
@pytest.mark.parametrize("kind", ["onnx", pytest.param("checkpoint", marks=pytest.mark.slow)])
def test_a_batch_of_requests_scores_each_like_predict(kind, models, audio):
    """``serve``'s batch step: the segments of several requests through the model together,
    each request's scores those of ``predict`` for its file (1e-6); scores that are not
    finite fail their own request only."""
    from atfnn_fast.app.serve import request_segments, score_segments, segment_scorer

    predictor = load_predictor(**{kind: models[0 if kind == "checkpoint" else 1]}, batch_size=3)
    paths = [Path(audio[0]) / name for name in ("clip03.wav", "stereo.flac", "clip09.wav")]
    items = [request_segments(predictor, AudioBytes(p.read_bytes(), "request")) for p in paths]
    scorer = segment_scorer(predictor)
    assert scorer is not None
    got = score_segments(predictor, scorer, items)
    for probs, path in zip(got, paths, strict=True):
        want = predictor.predict_file(path).scores
        assert np.allclose(probs, [want[k] for k in LABELS], rtol=0, atol=1e-6)

    poisoned = items[1].clone().fill_(7.0)  # a request the model answers with NaN

    def broken(segs):
        probs = np.array(scorer(segs), dtype=np.float64)
        probs[segs[:, 0, 0, 0].numpy() == 7.0] = np.nan
        return probs

    got = score_segments(predictor, broken, [items[0], poisoned, items[2]])
    assert got[1].startswith("request: the model's scores are not finite")
    assert np.allclose(got[0], score_segments(predictor, scorer, items[:1])[0], atol=1e-12)


def test_a_waveform_graph_is_served_file_by_file(audio, tmp_path):
    """A graph that takes the waveform (its kind read from the metadata) cannot share
    forward passes with other requests' segments: ``serve`` scores it through
    ``predict_file`` on the request's bytes, with the scores ``predict`` gives."""
    from atfnn_fast.app.serve import segment_scorer

    path = export_onnx(
        tiny_model(len(LABELS)), tmp_path / "wave.onnx", labels=LABELS,
        norm_stats=tiny_norm_stats(), input="waveform",
    )  # fmt: skip
    predictor = load_predictor(onnx=path)
    assert predictor.input == "waveform" and segment_scorer(predictor) is None
    clip = Path(audio[0]) / "stereo.flac"
    got = predictor.predict_file(AudioBytes(clip.read_bytes(), "request"))
    want = file_entry(predictor, clip)[0]
    _same_entries([{"path": want["path"], "label": got.label, "scores": got.scores}], [want])


def test_parquet_rows_are_the_csv_columns_written_atomically(tmp_path, capsys):
    """``--parquet``'s writer (the rows come from ``predict --ray`` as above): the columns
    of ``--csv``, an error row with empty scores, row groups as the rows come, and the file
    only once complete."""
    pq = pytest.importorskip("pyarrow.parquet")
    from atfnn_fast.app.scale import ParquetRows

    entries = [
        {
            "path": f"a{i}.wav",
            "label": "hap",
            "scores": {"ang": 0.1, "hap": 0.7 + i / 1e3, "neu": 0.2},
        }
        for i in range(5)
    ]
    entries.insert(2, {"path": "bad.wav", "error": "bad.wav: cannot decode audio"})
    target = tmp_path / "rows.parquet"
    out = ParquetRows(target, LABELS)
    out.ROW_GROUP = 4
    for entry in entries:
        out.write(entry)
        assert not target.exists()
    assert out.close() == 1
    assert capsys.readouterr().err == "atfnn-fast: error: bad.wav: cannot decode audio\n"
    table = pq.read_table(target)
    assert table.column_names == ["path", "label", *LABELS, "error"]
    assert pq.ParquetFile(target).num_row_groups == 2
    rows = table.to_pylist()
    assert rows[2] == {"path": "bad.wav", "label": None, "ang": None, "hap": None, "neu": None,
                       "error": "bad.wav: cannot decode audio"}  # fmt: skip
    assert [r["hap"] for r in rows if r["error"] is None] == [
        e["scores"]["hap"] for e in entries if "scores" in e
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.parquet"]  # no temporary left


def test_audio_bytes_decode_without_touching_the_file_system(audio, models, monkeypatch):
    """What ``serve`` does with a request's body: the same segments as the file, with
    open / os.open / os.stat blocked; the limits and errors name the request."""
    predictor = load_predictor(onnx=models[1], batch_size=4)
    path = Path(audio[0]) / "stereo.flac"
    data = path.read_bytes()
    kwargs = dict(n_mels=10, frames=16, stats=predictor.norm_stats, features=predictor.features)
    kwargs["batch_size"] = 4
    want = np.concatenate([b.numpy() for b in iter_segment_batches(path, **kwargs)])

    def blocked(*args, **kw):
        raise AssertionError(f"the file system was touched: {args[:1]}")

    def attempt(audio_bytes):
        try:
            return np.concatenate([b.numpy() for b in iter_segment_batches(audio_bytes, **kwargs)])
        except AudioError as err:
            return str(err)

    wav = io.BytesIO()
    sf.write(wav, _clip(3, 1.0), RATE, format="WAV")
    wav = wav.getvalue()
    with monkeypatch.context() as m:  # asserted afterwards: pytest's reports stat files
        for target, name in ((builtins, "open"), (os, "open"), (os, "stat")):
            m.setattr(target, name, blocked)
        got = attempt(AudioBytes(data, "req"))
        too_long = attempt(AudioBytes(data, "req", 1.5))
        not_audio = attempt(AudioBytes(b"hello there", "req"))
        cut = attempt(AudioBytes(wav[: len(wav) // 2], "req"))
    assert np.array_equal(got, want)
    assert re.match(r"^req: 2 s of audio .* longer than the limit of 1.5 s$", too_long), too_long
    assert re.match(r"^req: cannot decode audio .*starts with text", not_audio), not_audio
    assert cut.startswith("req: truncated audio file"), cut


# ------------------------------------------------------------------------ a local Ray
@pytest.fixture(scope="module")
def ray_local():
    """One real local Ray for the module, 2 CPUs."""
    from atfnn_fast.app.scale import connect

    ray = connect("local", num_cpus=2)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    errors = sorted(line for line in err.splitlines() if line.startswith("atfnn-fast: error"))
    return code, out, errors


def _same_entries(got: list[dict], want: list[dict]) -> None:
    assert [e["path"] for e in got] == [e["path"] for e in want]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys(), g
        if "error" in w:
            assert g["error"] == w["error"]
        else:
            assert g["label"] == w["label"]
            assert g["scores"].keys() == w["scores"].keys()
            for k in w["scores"]:
                assert abs(g["scores"][k] - w["scores"][k]) <= 1e-6, (g, w)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "checkpoint"])
def test_predict_ray_writes_the_rows_of_predict(kind, models, audio, ray_local, capsys):
    """Files, a folder, a manifest, a missing file and a file that is not audio: the same
    rows in the same order as one-machine predict (JSON with the ONNX file, CSV with the
    checkpoint); the bad files get their error rows and the exit code 1."""
    model = ["--onnx", models[1]] if kind == "onnx" else ["--checkpoint", models[0]]
    code, out, errors = _cli(capsys, "predict", *model, "--json", *audio)
    want = json.loads(out)
    assert code == 1 and len(want) == 15 and sum("error" in e for e in want) == 2
    if kind == "onnx":
        code_r, out_r, errors_r = _cli(capsys, "predict", *model, "--json", "--ray", *audio)
        assert (code_r, errors_r) == (code, errors)
        _same_entries(json.loads(out_r), want)
        return
    code_r, out_r, errors_r = _cli(capsys, "predict", *model, "--csv", *audio, "--ray")
    assert (code_r, errors_r) == (code, errors)
    rows = list(csv.DictReader(io.StringIO(out_r)))
    assert [r["path"] for r in rows] == [e["path"] for e in want]
    for row, entry in zip(rows, want, strict=True):
        assert row["error"] == entry.get("error", "")
        for k in LABELS:
            assert (row[k] == "") == ("error" in entry)
            if row[k]:
                assert abs(float(row[k]) - entry["scores"][k]) <= 1e-6


class SlowPredictor:
    """A real predictor that takes ``delay`` seconds more per file, so a worker can be
    killed while files are still in flight."""

    def __init__(self, onnx: str, delay: float) -> None:
        self.inner = load_predictor(onnx=onnx, threads=1)
        self.labels, self.delay = self.inner.labels, delay

    def predict_file(self, path):
        time.sleep(self.delay)
        return self.inner.predict_file(path)


def _map_workers() -> set[int]:
    """PIDs of the Ray Data scoring actors (their process title names the Scorer)."""
    pids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if b"MapBatches(Scorer)" in fh.read():
                        pids.add(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_worker_killed_mid_run_is_retried_and_every_file_appears_once(
    models, audio, ray_local, tmp_path
):
    import ray.cloudpickle

    from atfnn_fast.app.scale import iter_entries

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's predictor
    listed = expand_sources([audio[0]])
    predictor = load_predictor(onnx=models[1])
    want = [file_entry(predictor, path, problem)[0] for path, problem in listed]
    factory = functools.partial(SlowPredictor, str(models[1]), 0.4)
    got, before, after = [], None, set()
    for entry in iter_entries(factory, listed, workers=2, files_per_block=1):
        got.append(entry)
        if before is None:
            before, remaining = _map_workers(), len(listed) - len(got)
            assert len(before) == 2
            os.kill(min(before), signal.SIGKILL)  # a real worker, killed with files in flight
        else:
            after |= _map_workers()
    assert remaining >= 6
    assert after - before, "no scoring actor was restarted"
    _same_entries(got, want)  # every file exactly once, in order, with predict's scores


# --------------------------------------------------------------------------- a server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(models, ray_local):
    """The ONNX model on Ray Serve at 127.0.0.1:<free port>, 1 replica, batches of up to 8
    requests, bodies up to 1 MiB and 20 s of audio."""
    from atfnn_fast.app.serve import build_app, start

    port = _free_port()
    app = build_app(onnx=models[1], max_batch=8, batch_wait_s=0.05, max_bytes=2**20, max_seconds=20)
    start(app, "127.0.0.1", port)
    yield port


def _request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


def _post(port: int, data: bytes, kind: str = "audio/wav"):
    return _request(port, "POST", "/", data, {"Content-Type": kind})


def _encoded(x: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


FORMATS = [("WAV", "PCM_16", "audio/wav"), ("FLAC", "PCM_16", "audio/flac"),
           ("OGG", "VORBIS", "audio/ogg"), ("MP3", "MPEG_LAYER_III", "audio/mpeg")]  # fmt: skip


@pytest.mark.slow
def test_serve_scores_like_predict_and_batches_across_clients(server, models, tmp_path):
    predictor = load_predictor(onnx=models[1])
    bodies, want = [], []
    for i, (fmt, subtype, kind) in enumerate(FORMATS):
        data = _encoded(_clip(40 + i, 1.0 + i), RATE if i % 2 else 22_050, fmt, subtype)
        target = tmp_path / f"x{i}.{fmt.lower()}"
        target.write_bytes(data)
        bodies.append((data, kind))
        want.append(file_entry(predictor, target)[0])
    for (data, kind), entry in zip(bodies, want, strict=True):
        status, got, headers = _post(server, data, kind)
        assert status == 200, got
        assert headers["x-atfnn-batch"] == "1"  # alone
        _same_entries([{"path": entry["path"], **got}], [entry])

    # 16 clients at once: batched together, each still gets its own file's scores
    jobs = [bodies[i % 4] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda b: _post(server, *b), jobs))
    assert all(status == 200 for status, _, _ in results)
    assert max(int(h["x-atfnn-batch"]) for _, _, h in results) > 1
    for i, (_, got, _) in enumerate(results):
        _same_entries([{"path": want[i % 4]["path"], **got}], [want[i % 4]])


@pytest.mark.slow
def test_serve_health_and_metadata(server, models):
    assert _request(server, "GET", "/health")[:2] == (200, {"status": "ok"})
    status, meta, _ = _request(server, "GET", "/metadata")
    assert status == 200
    assert meta["labels"] == LABELS and meta["sample_rate"] == 16_000
    assert meta["sha256"] == hashlib.sha256(models[1].read_bytes()).hexdigest()
    assert (meta["max_bytes"], meta["max_seconds"], meta["max_batch"]) == (2**20, 20, 8)
    assert _request(server, "GET", "/nothing")[0] == 404
    assert _request(server, "GET", "/")[0] == 405


def _raw(port: int, head: bytes, body: bytes, close_early: bool) -> bytes:
    """Send a request by hand (a client that stops sending), return what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        if close_early:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks)


@pytest.mark.slow
def test_serve_refuses_bad_input_in_one_line_and_goes_on(server):
    good = _encoded(_clip(1, 1.0), RATE, "WAV", "PCM_16")
    long = _encoded(_clip(2, 25.0), RATE, "FLAC", "PCM_16")  # 25 s > 20 s, under 1 MiB
    cases = [
        (_post(server, b"hello, not audio"), 422, "request: cannot decode audio"),
        (_post(server, b""), 400, "empty body"),
        (_post(server, b"\0" * (2**20 + 1)), 413, "over the limit of 1,048,576 bytes"),
        (_post(server, long, "audio/flac"), 413, "request: 25 s of audio"),
        (_post(server, good, "text/plain"), 415, "Content-Type text/plain"),
        (_post(server, good, "multipart/form-data; boundary=x"), 415, "Content-Type multipart"),
        (_post(server, good[: len(good) // 2]), 422, "request: truncated audio file"),
    ]
    for (status, body, _), code, start in cases:
        assert status == code, body
        assert list(body) == ["error"] and "\n" not in body["error"]
        assert body["error"].startswith(start) or start in body["error"], body

    # a truncated body: the client declares 5000 bytes, sends 100 and stops
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
        f"Content-Length: {len(good)}\r\n\r\n"
    ).encode()
    reply = _raw(server, head, good[:100], close_early=True)
    assert reply == b"" or reply.split(b" ")[1][:1] == b"4", reply[:200]

    # many bad requests at once, then the server still answers a good one
    bad = [(b"junk" * i, "audio/wav") for i in range(24)] + [(good, "text/html")] * 8
    with ThreadPoolExecutor(32) as pool:
        statuses = [s for s, _, _ in pool.map(lambda b: _post(server, *b), bad)]
    assert all(400 <= s < 500 for s in statuses), statuses
    status, body, _ = _post(server, good)
    assert status == 200 and body["label"] in LABELS
    assert _request(server, "GET", "/health")[0] == 200
