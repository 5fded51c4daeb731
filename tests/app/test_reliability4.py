"""Issue 31 (Reliability IV), causes 4-7 and 9-14, through the command line and the API
with real faults: labels that differ by whitespace, case, Unicode form or control
characters; a resume with other options; a 2,000-level tree, symlinked and looping
folders; formula, bidi and look-alike names in CSV and text; collisions and bad
environments found before any work; closed, full and ASCII-only standard outputs;
SIGTERM; a manifest row that is a symlink loop, a name with a newline."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import tiny_model, tiny_norm_stats

from atfnn_fast.app.cli import main
from atfnn_fast.app.synth import CLASSES, make_corpus
from atfnn_fast.checkpoint import load_checkpoint, save_checkpoint
from atfnn_fast.features import speech_sample
from atfnn_fast.manifest import ManifestError, read_manifest
from atfnn_fast.text import csv_cell

LABELS = sorted(CLASSES)
ROOT = os.geteuid() == 0


def cli(capsys, *argv):
    """(exit code, stdout, stderr lines) of ``atfnn-fast ...``; never a traceback. The line
    of ``predict`` saying what runs is left out."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in err.splitlines() if not line.startswith("predict: ")]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    model = tiny_model(len(LABELS))
    return save_checkpoint(folder / "ok", model, labels=LABELS, norm_stats=tiny_norm_stats())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), speakers=3, per_class=1, seed=3)


def _edit_labels(ckpt, tmp_path, labels):
    copy = Path(shutil.copytree(ckpt, tmp_path / "edited"))
    meta = json.loads((copy / "config.json").read_text())
    meta["labels"] = labels
    (copy / "config.json").write_text(json.dumps(meta))
    return copy


def _manifest(tmp_path, corpus, labels):
    """A copy of ``corpus``'s manifest with its labels replaced (one per row)."""
    items = read_manifest(corpus)
    lines = ["path,label,speaker"] + [
        f'{i.path},"{label}",{i.speaker}' for i, label in zip(items, labels, strict=False)
    ]
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------- 4: one rule for labels, three doors
def test_manifest_labels_are_normalised_and_refused_by_one_rule(corpus, tmp_path):
    n = len(read_manifest(corpus))
    nfd = unicodedata.normalize("NFD", "colère")
    labels = (["happy", "happy ", " happy", "colère", nfd, "sad"] * n)[:n]
    items = read_manifest(_manifest(tmp_path, corpus, labels))
    assert sorted({i.label for i in items}) == ["colère", "happy", "sad"]  # 3 classes, not 5
    assert all(unicodedata.is_normalized("NFC", i.label) for i in items)
    for bad, why in [
        ("a\x1b[2Jb", "holds a control character (U+001B)"),
        ("evil\u202e", "holds a format character (bidi control or zero-width) (U+202E)"),
        ("zero\u200bwidth", "holds a format character (bidi control or zero-width) (U+200B)"),
    ]:
        with pytest.raises(ManifestError) as caught:
            read_manifest(_manifest(tmp_path, corpus, [bad] + ["sad"] * n))
        assert str(caught.value) == (
            f"{tmp_path / 'm.csv'}: line 2 {bad!r} {why}; labels reach terminals, "
            "CSV files and logs, so they may not"
        )
    with pytest.raises(ManifestError, match=r"labels 'sad' \(line 2\) and 'SAD' \(line 3\) differ"):
        read_manifest(_manifest(tmp_path, corpus, ["sad", "SAD"] + ["x"] * n))


def test_checkpoint_and_onnx_loaders_apply_the_same_label_rule(ckpt, tmp_path, capsys):
    from atfnn_fast.export import export_onnx
    from atfnn_fast.export.onnx_export import load_model

    edited = _edit_labels(ckpt, tmp_path, ["sad", "Sad", "SAD", "x"])
    code, _, err = cli(capsys, "predict", "--checkpoint", edited, speech_sample())
    assert code == 1 and err == [
        f"atfnn-fast: error: {edited / 'config.json'}: field 'labels': labels 'sad' (name 0) "
        "and 'Sad' (name 1) differ only in case; they would be two classes. Use one spelling"
    ]
    padded = _edit_labels(ckpt, tmp_path / "p", [f" {x}\t" for x in LABELS])  # stripped
    assert load_checkpoint(padded).labels == LABELS
    good = export_onnx(load_checkpoint(ckpt).model, tmp_path / "m.onnx", labels=LABELS)
    proto = load_model(good)
    for entry in proto.metadata_props:
        if entry.key == "atfnn.labels":
            entry.value = json.dumps(["ok", "bell\x07", "c", "d"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(proto.SerializeToString())
    code, _, err = cli(capsys, "predict", "--onnx", bad, speech_sample())
    assert code == 1 and err == [
        f"atfnn-fast: error: {bad}: metadata atfnn.labels: name 1 'bell\\x07' holds a control "
        "character (U+0007); labels reach terminals, CSV files and logs, so they may not"
    ]


# ------------------------------------------------------------- 6: folders as they really are
def test_a_2000_level_tree_is_walked_without_recursion(ckpt, tmp_path, capsys):
    """Built with mkdir relative to an open folder (no chdir, no long path per call); the
    path stays under PATH_MAX (4,096 bytes) with one-letter names."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(2000):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        wav = os.open("x.wav", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wav, speech_sample().read_bytes())
        os.close(wav)
    finally:
        os.close(fd)
    deep = tmp_path.joinpath(*["d"] * 2000, "x.wav")
    try:
        code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--json", tmp_path)
    finally:
        _remove_deep(tmp_path / "d")  # pytest's clean-up (shutil.rmtree) recurses
    (entry,) = json.loads(out)
    assert (code, err, entry["path"]) == (0, [], str(deep)) and entry["label"] in LABELS


def _remove_deep(top: Path) -> None:
    """Remove a chain of folders ``top/d/d/...`` one level at a time, without recursion."""
    spare = top.with_name("spare")
    while True:
        for entry in top.iterdir():
            if entry.name != "d":
                entry.unlink()
        if not (top / "d").exists():
            top.rmdir()
            return
        (top / "d").rename(spare)
        top.rmdir()
        spare.rename(top)


def _tone(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), 0.3 * np.sin(np.arange(8000) / 5), 16000)


def test_symlinked_speakers_are_prepared_and_a_loop_is_walked_once(tmp_path, capsys):
    root = tmp_path / "CASIA"
    for speaker in ("liuchanhg", "wangzhe"):
        for emotion in ("angry", "sad"):
            _tone(root / speaker / emotion / "201.wav")
    elsewhere = tmp_path / "disk2" / "zhaoquanyin"
    for emotion in ("angry", "sad"):
        _tone(elsewhere / emotion / "201.wav")
    (root / "zhaoquanyin").symlink_to(elsewhere)  # a speaker on another disk
    (elsewhere / "angry" / "again").symlink_to(elsewhere)  # a loop
    out = tmp_path / "m.csv"
    code, stdout, err = cli(
        capsys, "datasets", "prepare", "--dataset", "casia", "--root", root, "--out", out
    )
    assert code == 0 and stdout.splitlines()[0] == f"wrote {out}: 6 utterances, 3 speakers"
    assert {i.speaker for i in read_manifest(out)} == {"liuchanhg", "wangzhe", "zhaoquanyin"}
    assert err == [
        f"atfnn-fast: warning: {root / 'zhaoquanyin' / 'angry' / 'again'}: skipped, the folder "
        f"{root / 'zhaoquanyin'} again (walked once); nothing is missed"
    ]


def test_predict_follows_linked_folders_and_reports_an_unreadable_one(ckpt, tmp_path, capsys):
    shutil.copy(speech_sample(), tmp_path / "real.wav")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a loop back to the root
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # a dangling link
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--json", tmp_path)
    good, dangling = json.loads(out)
    assert good["path"] == str(tmp_path / "real.wav") and good["label"] in LABELS
    assert dangling == {
        "path": str(tmp_path / "gone"),
        "error": f"{tmp_path / 'gone'}: folder skipped, a symbolic link that cannot be followed",
    }
    assert code == 1 and err == [
        f"atfnn-fast: warning: {tmp_path / 'sub' / 'up'}: skipped, the folder {tmp_path} again "
        "(walked once); nothing is missed",
        f"atfnn-fast: error: {dangling['error']}",
    ]


# ---------------------------------------------------------- 7: output other programs read
def test_csv_cells_are_neutralised_and_names_print_apart(ckpt, tmp_path, capsys):
    import csv

    nfc = unicodedata.normalize("NFC", "é.wav")
    names = ["=HYPERLINK(1).wav", "@x.wav", "a\u202egnp.wav", nfc, "e\u0301.wav", "b\\nc.wav"]
    for name in [*names, "b\nc.wav"]:
        shutil.copy(speech_sample(), tmp_path / name)
    files = [tmp_path / name for name in [*names, "b\nc.wav"]]
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--csv", *files)
    assert (code, err) == (0, [])
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "label", *LABELS, "error"]
    cells = [row[0] for row in rows[1:]]
    assert cells == [
        f"{tmp_path}/=HYPERLINK(1).wav",  # not at the cell's start: no formula
        f"{tmp_path}/@x.wav",
        f"{tmp_path}/a\\u202egnp.wav",
        f"{tmp_path}/é.wav",
        f"{tmp_path}/e\\u0301.wav",
        f"{tmp_path}/b\\\\nc.wav",
        f"{tmp_path}/b\\nc.wav",
    ]
    assert len(set(cells)) == len(cells)  # seven names, seven texts
    assert [csv_cell(x) for x in ("=1+1", "+1", "-1", "@A1", "\t=1", "ok")] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@A1",
        "\\t=1",
        "ok",
    ]
    code, out, _ = cli(capsys, "predict", "--checkpoint", ckpt, *files)  # text: same rule
    assert [line.rsplit(": ", 1)[0] for line in out.splitlines()] == cells
    assert not any(c in out for c in "\x1b\r\u202e\u200b")


# --------------------------------------------------------------- 9: checked before any work
def test_run_level_names_and_a_bad_mplbackend_are_refused_before_training(
    corpus, tmp_path, capsys, monkeypatch
):
    from atfnn_fast.app import train as train_module

    monkeypatch.setattr(train_module, "_run_fold", lambda *a: pytest.fail("work started"))
    items = read_manifest(corpus)
    lines = ["path,label,speaker"] + [
        f"{i.path},{i.label},{'summary.md' if i.speaker == 'spk2' else i.speaker}" for i in items
    ]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    args = ["train", "--manifest", manifest, "--out", tmp_path / "run", "--preset", "tiny"]
    code, _, err = cli(capsys, *args)
    assert code == 2 and err == [
        "atfnn-fast: error: fold 'summary.md': is the name of a file the run writes beside the "
        "fold directories (summary.md, summary.json); rename that speaker or session in the "
        "manifest"
    ]
    monkeypatch.setenv("MPLBACKEND", "bogus")
    code, _, err = cli(capsys, "train", "--manifest", corpus, "--out", tmp_path / "r2")
    assert code == 2 and err == [
        "atfnn-fast: error: MPLBACKEND='bogus': not a matplotlib backend; unset it (atfnn-fast "
        "draws its figures to PNG files with Agg whatever it says) or name one, e.g. "
        "MPLBACKEND=Agg"
    ]
    assert not (tmp_path / "r2").exists()


def test_demo_checks_its_output_folder_before_timing_the_model(tmp_path, capsys, monkeypatch):
    import functools

    from atfnn_fast.app import demo

    timed = functools.wraps(demo.run)(lambda **kw: pytest.fail("the model was timed"))
    monkeypatch.setattr(demo, "run", timed)
    taken = tmp_path / "a-file"
    taken.write_text("mine")
    code, out, err = cli(capsys, "demo", "--out", taken)
    assert (code, out) == (2, "") and err == [
        f"atfnn-fast: error: --out {taken}: is a regular file, not a folder"
    ]


# -------------------------------------------------------------- 10: synth keeps a corpus
def test_synth_refuses_to_replace_a_corpus_without_force(tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,speaker\nreal/a.wav,angry,anna\n")
    args = ["datasets", "synth", "--out", tmp_path, "--speakers", "3", "--per-class", "1"]
    code, out, err = cli(capsys, *args)
    assert (code, out) == (2, "") and err == [
        f"atfnn-fast: error: --out {tmp_path}: holds a corpus already ({manifest}); choose "
        "another folder, or add --force to replace its manifest and the synthetic files"
    ]
    assert manifest.read_text() == "path,label,speaker\nreal/a.wav,angry,anna\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]  # nothing written
    code, out, _ = cli(capsys, *args, "--force")
    assert code == 0 and len(read_manifest(manifest)) == 3 * len(CLASSES)


# ------------------------------------------------- 11: environment and stream errors, one line
def _run(*argv, env=None, **kwargs):
    environ = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "atfnn_fast.app.cli", *map(str, argv)],
        env=environ,
        capture_output=True,
        text=True,
        **kwargs,
    )


def test_a_bad_backend_and_a_closed_stdout_are_one_line_even_for_help(
    tmp_path, capsys, monkeypatch
):
    proc = _run("--help", env={"ATFNN_BACKEND": "bogus"})
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        2,
        "",
        "atfnn-fast: error: ATFNN_BACKEND must be one of ('auto', 'aten', 'triton', 'torch'), got "
        "'bogus'\n",
    )
    monkeypatch.setattr(sys, "stdout", None)  # what Python makes of a closed fd 1 (`>&-`)
    code = main(["datasets", "synth", "--out", str(tmp_path)])
    monkeypatch.undo()
    assert (code, capsys.readouterr().err) == (
        2,
        "atfnn-fast: error: standard output is closed (file descriptor 1); give the command "
        "somewhere to write, e.g. >/dev/null\n",
    )
    assert list(tmp_path.iterdir()) == []


def test_world_size_and_a_huge_manifest_field_are_one_line(
    ckpt, corpus, tmp_path, capsys, monkeypatch
):
    import csv

    huge = tmp_path / "huge.csv"
    items = read_manifest(corpus)
    huge.write_text(f'path,label,speaker\n{items[0].path},sad,a\n"{"x" * 200_000}",sad,b\n')
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", huge)
    assert code == 1 and err == [
        f"atfnn-fast: error: {huge}:3: not a CSV row (field larger than field limit "
        f"({csv.field_size_limit()}); a field longer than {csv.field_size_limit()} characters "
        "is often a quote left open)"
    ]
    monkeypatch.setenv("WORLD_SIZE", "abc")
    code, _, err = cli(capsys, "train", "--manifest", corpus, "--out", tmp_path / "run")
    assert code == 2 and err == [
        "atfnn-fast: error: WORLD_SIZE='abc': expected an integer >= 1 (torchrun sets it; unset "
        "it for a single-process run)"
    ]


def test_a_stdout_that_cannot_encode_a_name_escapes_it(ckpt, tmp_path, capsys, monkeypatch):
    path = tmp_path / "é-\u202e.wav"
    shutil.copy(speech_sample(), path)
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    code = main(["predict", "--checkpoint", str(ckpt), str(path)])
    ascii_out.flush()
    text = ascii_out.buffer.getvalue().decode("ascii")
    assert code == 0 and text.startswith(f"{tmp_path}/\\u00e9-\\u202e.wav: ")
    assert ascii_out.errors == "strict"  # restored after the command


# ------------------------------------------------------- 12: messages naming the right thing
def test_a_full_stdout_is_named(ckpt, capsys, monkeypatch):
    full = open("/dev/full", "w")
    monkeypatch.setattr(sys, "stdout", full)
    try:
        code = main(["predict", "--checkpoint", str(ckpt), str(speech_sample())])
    finally:
        monkeypatch.undo()
        full.close()
    _, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if not x.startswith("predict: ")]
    assert code == 1 and lines == ["atfnn-fast: error: standard output: No space left on device"]


def test_a_directory_is_not_reported_as_not_found(ckpt, tmp_path, capsys):
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", tmp_path)
    assert code == 2 and err == [f"atfnn-fast: error: {tmp_path}: is a directory, not a manifest"]
    code, _, err = cli(capsys, "predict", "--onnx", tmp_path, speech_sample())
    assert code == 2 and err == [f"atfnn-fast: error: {tmp_path}: is a directory, not an ONNX file"]
    file = ckpt / "config.json"
    code, _, err = cli(capsys, "export", "--checkpoint", file, "--output", tmp_path / "m.onnx")
    assert code == 2 and err == [
        f"atfnn-fast: error: {file}: is a file, not a checkpoint directory"
    ]


def test_onnx_reason_for_refusing_external_data_is_kept(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    weight.ClearField("raw_data")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    path = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph), str(path))
    code, _, err = cli(capsys, "predict", "--onnx", path, speech_sample())
    # refused before onnx reads it (docs/design.md#onnx-export, external data): the
    # message names the tensor and why, where onnx's own reason used to be dropped
    assert code == 1 and err == [
        f"atfnn-fast: error: {path}: tensor 'w' keeps its data in another file (ONNX "
        "external data); atfnn-fast exports never do, and predict refuses them"
    ]


def test_missing_files_are_counted_before_any_work(ckpt, corpus, tmp_path, capsys, monkeypatch):
    from atfnn_fast.app import datasets

    monkeypatch.setattr(datasets.FeatureCache, "warm", lambda *a, **k: pytest.fail("work"))
    items = read_manifest(corpus)
    lines = ["path,label,speaker"] + [f"{i.path},{i.label},{i.speaker}" for i in items]
    lines += [f"{tmp_path}/gone{k}.wav,{items[0].label},spk1" for k in range(5)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n")
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", manifest)
    assert code == 1 and err == [
        f"atfnn-fast: error: {manifest}: 5 of the {len(items) + 5} files it lists cannot be "
        f"read: {tmp_path}/gone0.wav (No such file or directory), {tmp_path}/gone1.wav (No "
        f"such file or directory), {tmp_path}/gone2.wav (No such file or directory) and 2 more"
    ]
    code, out, err = cli(capsys, "train", "--manifest", manifest, "--out", tmp_path / "run")
    assert (code, out) == (1, "") and err[0].startswith(f"atfnn-fast: error: {manifest}: 5 of")


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root")
def test_a_full_tmpdir_is_not_reported_as_a_full_output(ckpt, tmp_path, capsys, monkeypatch):
    import tempfile

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with open(small / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        monkeypatch.setattr(tempfile, "tempdir", str(small))
        output = tmp_path / "m.onnx"
        code, out, err = cli(
            capsys, "export", "--checkpoint", ckpt, "--output", output, "--quantize", "int8"
        )
    finally:
        subprocess.run(["umount", "-l", str(small)], check=True)
    assert (code, out, len(err)) == (1, "", 1) and not output.exists()
    assert err[0].startswith(f"atfnn-fast: error: {small}/atfnn-int8-")
    assert err[0].endswith(
        " (temporary folder of the int8 quantisation; TMPDIR): No space left on device"
    )


# ---------------------------------------------------------------------- 13: smaller ones
def test_export_of_a_compiled_model_matches_the_plain_one(tmp_path):
    import onnxruntime as ort

    from atfnn_fast.export import export_onnx

    model = tiny_model(len(LABELS))
    plain = export_onnx(model, tmp_path / "plain.onnx", labels=LABELS)
    compiled = export_onnx(torch.compile(model), tmp_path / "compiled.onnx", labels=LABELS)
    x = np.random.default_rng(0).standard_normal((2, 1, 10, 16)).astype(np.float32)
    run = [ort.InferenceSession(str(p)).run(None, {"spectrogram": x})[0] for p in (plain, compiled)]
    with torch.no_grad():
        eager = model(torch.from_numpy(x)).numpy()
    assert np.array_equal(run[0], run[1]) and np.allclose(run[0], eager, atol=1e-5)


def test_sigterm_during_export_validation_removes_the_temporary_graph(
    ckpt, tmp_path, capsys, monkeypatch
):
    from atfnn_fast.export import validate

    def killed(path, *args, **kwargs):
        assert Path(path).exists()  # the temporary graph, next to --output
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the validation")

    monkeypatch.setattr(validate, "validate_onnx", killed)
    monkeypatch.setattr("atfnn_fast.export.validate_onnx", killed)
    before = signal.getsignal(signal.SIGTERM)
    code, out, err = cli(
        capsys, "export", "--checkpoint", ckpt, "--output", tmp_path / "m.onnx", "--validate"
    )
    assert (code, out, err) == (143, "", ["atfnn-fast: terminated (SIGTERM)"])
    assert list(tmp_path.iterdir()) == []  # neither the graph nor a temporary copy
    assert signal.getsignal(signal.SIGTERM) is before  # restored


@pytest.mark.slow  # a real process killed while it validates: 5 to 40 s on two shared cores
def test_sigterm_to_a_real_export_process_cleans_up(ckpt, tmp_path):
    """SIGTERM as soon as the temporary graph exists: the signal lands in the validation
    (often inside ONNX Runtime's import, where it surfaces as an ImportError)."""
    import time

    output = tmp_path / "m.onnx"
    cmd = [sys.executable, "-m", "atfnn_fast.app.cli", "export", "--checkpoint", str(ckpt),
           "--output", str(output), "--validate"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not list(tmp_path.glob(".m.onnx.*.onnx")) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    if proc.returncode == 0:
        pytest.skip("the export finished before the signal")
    assert (proc.returncode, err) == (143, "atfnn-fast: terminated (SIGTERM)\n")
    assert list(tmp_path.iterdir()) == []  # no graph, no temporary copy, no .failed


def test_onnx_runtime_logs_stay_out_of_the_one_line_error(ckpt, tmp_path, capfd):
    """A graph that fails while it runs (a Reshape to 7 columns): ONNX Runtime's coloured
    ``[E:onnxruntime:...]`` log must not come before the file's one-line error."""
    from onnx import TensorProto, helper

    from atfnn_fast.export import export_onnx
    from atfnn_fast.export.onnx_export import load_model

    proto = load_model(export_onnx(load_checkpoint(ckpt).model, tmp_path / "m.onnx"))
    graph = proto.graph
    logits = graph.output[0].name
    for node in graph.node:
        node.output[:] = [o if o != logits else "raw" for o in node.output]
    graph.initializer.append(helper.make_tensor("shape7", TensorProto.INT64, [2], [-1, 7]))
    graph.node.append(helper.make_node("Reshape", ["raw", "shape7"], [logits]))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(proto.SerializeToString())
    capfd.readouterr()
    code = main(["predict", "--onnx", str(broken), str(speech_sample())])
    _out, err = capfd.readouterr()
    lines = [x for x in err.splitlines() if not x.startswith("predict: ")]
    assert (
        code == 1
        and len(lines) == 1
        # the predictor runs the graph once when it loads (its real output shape): the
        # failure is the model file's, before any audio
        and lines[0].startswith(f"atfnn-fast: error: {broken}: ")
    )
    assert "onnxruntime:" not in err.replace(lines[0], "")


def test_matplotlib_logs_are_quiet_and_a_relative_xdg_cache_is_ignored(tmp_path, monkeypatch):
    from atfnn_fast.app.datasets import user_cache

    config = tmp_path / "not-a-folder"
    config.write_text("")
    code = "from atfnn_fast.app.plotting import pyplot; pyplot().figure()"
    env = {**os.environ, "MPLCONFIGDIR": str(config), "MPLBACKEND": "agg"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")  # matplotlib would warn about the folder
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert user_cache() == Path.home() / ".cache" / "atfnn-fast" / "features"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache() == tmp_path / "atfnn-fast" / "features"


# -------------------------------------------------------- 14: Python 3.11's own behaviour
def test_a_manifest_row_that_is_a_symlink_loop_is_one_line(ckpt, corpus, tmp_path, capsys):
    items = read_manifest(corpus)
    loop = tmp_path / "loop.wav"
    loop.symlink_to(tmp_path / "loop.wav")
    lines = ["path,label,speaker"] + [f"{i.path},{i.label},{i.speaker}" for i in items]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join([*lines, f"{loop},sad,spk1"]) + "\n")
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", manifest)
    assert code == 1 and err == [
        f"atfnn-fast: error: {manifest}: 1 of the {len(items) + 1} files it lists cannot be "
        f"read: {loop} (Too many levels of symbolic links)"
    ]
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--json", manifest)
    entries = json.loads(out)
    assert code == 1 and [e["path"] for e in entries if "error" in e] == [str(loop)]
    assert len(err) == 1 and "Too many levels of symbolic links" in err[0]


def test_an_error_about_a_name_with_a_newline_stays_on_one_line(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad\nname.wav"
    bad.write_bytes(b"not audio at all")
    code, _, err = cli(capsys, "predict", "--checkpoint", ckpt, bad)
    assert (
        code == 1
        and len(err) == 1
        and err[0].startswith(f"atfnn-fast: error: {tmp_path}/bad\\nname.wav: cannot decode audio")
    )
    missing = tmp_path / "no\nsuch.csv"
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--manifest", missing)
    assert code == 2 and err == [f"atfnn-fast: error: {tmp_path}/no\\nsuch.csv: manifest not found"]


# --------------------------------------------------------- 5: a resume keeps the run's rules
TRAIN = ["--preset", "tiny", "--batch-size", "16", "--hop", "32", "--device", "cpu"]


def test_resume_refuses_changed_options_and_records_more_epochs(corpus, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "my-cache"
    base = ["train", "--manifest", corpus, "--out", out, "--fold", "spk1", "--cache", cache]
    code, stdout, _ = cli(capsys, *base, *TRAIN, "--epochs", "1")
    assert code == 0 and f"features of {3 * len(CLASSES)} files cached in {cache}" in stdout
    last = out / "spk1" / "last"
    before = (last / "model.safetensors").read_bytes()
    for option, value, was, why in [
        ("--seed", "1", "0", "it draws the validation speakers, the weights and the data order"),
        ("--lr", "0.001", "0.0005", "the optimiser's steps"),
        ("--hop", "16", "32", "the training segments"),
        ("--batch-size", "8", "16", "the optimiser's steps and the data order"),
    ]:
        args = [*TRAIN, "--epochs", "2", option, value]  # the later value wins
        code, _, err = cli(capsys, *base, *args, "--resume")
        assert (code, err) == (
            2,
            [
                f"atfnn-fast: error: {option} {value}: the run in {out / 'spk1'} was trained "
                f"with {option} {was}, and resuming with another value would change its "
                f"result ({why}); resume with {option} {was}, or start again with --overwrite"
            ],
        )
    assert (last / "model.safetensors").read_bytes() == before  # nothing was trained
    code, stdout, _ = cli(capsys, *base, *TRAIN, "--epochs", "2", "--resume")
    assert code == 0 and "resuming spk1 after epoch 1 (--epochs 1 -> 2)" in stdout
    state = json.loads((last / "state.json").read_text())
    assert state["epoch"] == 2 and state["resumes"] == [
        {"after_epoch": 1, "changed": {"epochs": [1, 2]}}
    ]
    assert json.loads((last / "config.json").read_text())["extra"]["train"]["epochs"] == 2
    code, _, err = cli(capsys, *base, *TRAIN, "--epochs", "1", "--resume")
    assert code == 2 and err == [
        f"atfnn-fast: error: --epochs 1: the run in {out / 'spk1'} has committed 2 epochs "
        "already; give at least 2 (more extends the run)"
    ]
