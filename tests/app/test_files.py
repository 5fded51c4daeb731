"""Issue 25, through the command line and the API as a user runs them, with real faults:
crashes (SIGKILL at each step of the checkpoint swap), concurrent writers, a full or
read-only file system (a small tmpfs), another user (``seteuid``), symlink loops, FIFOs,
sockets and devices as targets, long names and umasks."""

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_model, tiny_norm_stats

from atfnn_fast import ATFNN, ATFNNConfig
from atfnn_fast.app.cli import main
from atfnn_fast.app.synth import CLASSES, make_corpus
from atfnn_fast.checkpoint import load_checkpoint, save_checkpoint
from atfnn_fast.export.onnx_export import read_metadata
from atfnn_fast.features import speech_sample

LABELS = sorted(CLASSES)
ROOT = os.geteuid() == 0


def cli(capsys, *argv):
    """(exit code, stdout, stderr lines) of ``atfnn-fast ...``; never a traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err.splitlines()


def _model(seed=0):
    return tiny_model(len(LABELS), seed)


_stats = tiny_norm_stats


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(folder / "ok", _model(), labels=LABELS, norm_stats=_stats())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), speakers=3, per_class=1, seed=3)


@contextlib.contextmanager
def tmpfs(size="1m", readonly=False):
    """A fresh tmpfs of ``size`` (root only), unmounted afterwards."""
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile.mkdtemp(prefix="atfnn-tmpfs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)])
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    try:
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)
        where.rmdir()


def fill(folder: Path, leave: int = 8192) -> None:
    """Fill the file system of ``folder`` until fewer than ``leave`` bytes are free."""
    with open(folder / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
                if os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize < leave:
                    break
        except OSError as err:
            assert err.errno == errno.ENOSPC


@contextlib.contextmanager
def as_user(uid=65534, gid=65534):
    """Run the block with the effective user ``nobody`` (root only): real permission
    checks in this process, restored afterwards."""
    if not ROOT:
        pytest.skip("switching users needs root")
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_dir():
    """A folder any user may enter (tmp_path's parents are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="atfnn-shared-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------- item 2: private, unique, short temporary names
def test_a_long_legal_output_name_exports_and_validates(ckpt, tmp_path, capsys):
    name = "m" * 250 + ".onnx"  # 255 bytes: the longest legal name
    out = tmp_path / name
    code, stdout, err = cli(capsys, "export", "--checkpoint", ckpt, "--output", out, "--validate")
    assert (code, err) == (0, [])
    assert f"wrote {out} (ATFNN, float32)" in stdout.splitlines()
    assert _listing(tmp_path) == [name]  # no temporary file left
    assert read_metadata(out)["labels"] == LABELS


def test_two_exports_to_one_output_the_last_complete_writer_wins(
    ckpt, tmp_path, capsys, monkeypatch
):
    """Export A validates its graph while export B of another checkpoint writes the same
    output from start to end: each validates its own graph under its own temporary name,
    both succeed, and the output is A's (renamed last), never a mix."""
    from atfnn_fast import export as export_package

    other = save_checkpoint(
        tmp_path / "other", _model(1), labels=["w", "x", "y", "z"], norm_stats=_stats()
    )
    out = tmp_path / "out" / "m.onnx"
    real = export_package.validate_onnx
    inner = []

    def validate_while_another_export_runs(path, *args, **kwargs):
        if not inner:
            inner.append(main(["export", "--checkpoint", str(other), "--output", str(out)]))
            assert read_metadata(out)["labels"] == ["w", "x", "y", "z"]  # B is complete
        return real(path, *args, **kwargs)

    monkeypatch.setattr(export_package, "validate_onnx", validate_while_another_export_runs)
    code, stdout, err = cli(capsys, "export", "--checkpoint", ckpt, "--output", out, "--validate")
    assert (inner, code, err) == ([0], 0, [])
    lines = stdout.splitlines()
    assert lines.count(f"wrote {out} (ATFNN, float32)") == 2  # B's line, then A's
    assert read_metadata(out)["labels"] == LABELS  # A renamed its graph last: A's stays
    assert _listing(out.parent) == ["m.onnx"]


EXPORT = [sys.executable, "-m", "atfnn_fast.app.cli", "export"]


@pytest.mark.slow  # two real processes at once: 15 to 40 s on two shared cores
def test_two_export_processes_to_one_output(ckpt, tmp_path):
    other = save_checkpoint(
        tmp_path / "other", _model(1), labels=["w", "x", "y", "z"], norm_stats=_stats()
    )
    out = tmp_path / "out" / "m.onnx"
    procs = [
        subprocess.Popen(
            [*EXPORT, "--checkpoint", str(c), "--output", str(out), "--validate"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in (ckpt, other)
    ]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    for code, stdout, stderr in results:
        assert (code, stderr) == (0, ""), stderr
        assert f"wrote {out} (ATFNN, float32)" in stdout
    assert read_metadata(out)["labels"] in (LABELS, ["w", "x", "y", "z"])
    assert _listing(out.parent) == ["m.onnx"]


# ------------------------------------------------------------ item 4: modes from the umask
@pytest.mark.slow  # features, evaluation, export and a plot: 5 to 30 s on two shared cores
def test_every_output_follows_the_umask(ckpt, tmp_path, capsys):
    umask = 0o027  # neither the usual 0o022 nor mkstemp's 0o077
    old = os.umask(umask)
    try:
        corpus = make_corpus(tmp_path / "corpus", speakers=3, per_class=1, seed=1)
        saved = save_checkpoint(tmp_path / "new" / "ckpt", _model(), labels=LABELS)
        args = ("--checkpoint", ckpt)
        assert cli(capsys, "export", *args, "--output", tmp_path / "m.onnx")[0] == 0
        code, _, _ = cli(
            capsys, "evaluate", *args, "--manifest", corpus, "--out", tmp_path / "eval"
        )
        assert code == 0
        out = tmp_path / "att.png"
        assert cli(capsys, "plot-attention", *args, "--output", out, speech_sample())[0] == 0
    finally:
        os.umask(old)
    files = [
        corpus,
        saved / "model.safetensors",
        saved / "config.json",
        tmp_path / "m.onnx",
        tmp_path / "eval" / "metrics.json",
        tmp_path / "eval" / "confusion.png",
        out,
        *sorted((corpus.parent / ".atfnn-cache").iterdir()),
    ]
    dirs = [saved, saved.parent, tmp_path / "eval", corpus.parent / ".atfnn-cache"]
    modes = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files + dirs}
    want = {str(p): oct(0o666 & ~umask) for p in files} | {
        str(p): oct(0o777 & ~umask) for p in dirs
    }
    assert modes == want
    assert len(files) > 7  # cache entries were written


# ----------------------------------------------- item 1: crash consistency and --resume
TRAIN = ["--fold", "spk1", "--preset", "tiny", "--batch-size", "16", "--hop", "32"]
TRAIN += ["--device", "cpu"]

KILL_AT = """
import os, signal, sys
from atfnn_fast import checkpoint
from atfnn_fast.app.cli import main
checkpoint.USE_EXCHANGE = {exchange}
def kill(step, target):
    if step == {step!r} and target.name == "last":
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill: nothing cleans up
checkpoint._fault_hook = kill
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """A corpus and a finished one-epoch run of fold spk1."""
    root = tmp_path_factory.mktemp("runs")
    manifest = make_corpus(root / "corpus", speakers=3, per_class=2, seed=1)
    argv = ["train", "--manifest", str(manifest), *TRAIN, "--out", str(root / "one")]
    assert main([*argv, "--epochs", "1"]) == 0
    return manifest, root / "one"


@pytest.fixture(scope="module")
def runs(one_run):
    """:func:`one_run` and a straight two-epoch run of the same fold."""
    manifest, one = one_run
    argv = ["train", "--manifest", str(manifest), *TRAIN, "--out", str(one.parent / "two")]
    assert main([*argv, "--epochs", "2"]) == 0
    return manifest, one, one.parent / "two"


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow  # per case a killed training process and a resumed run: 10 to 25 s
@pytest.mark.parametrize(
    "exchange,step,then",
    [
        (True, "written", "--resume"),
        (True, "swapped", "--resume"),
        (False, "written", "--resume"),
        (False, "moved-aside", "--resume"),
        (False, "renamed", "--resume"),
        (False, "moved-aside", "--overwrite"),
    ],
)
def test_a_kill_at_each_step_of_the_swap_resumes_or_is_cleaned(
    runs, tmp_path, capsys, exchange, step, then
):
    """Epoch 2's commit of ``last`` is killed (SIGKILL) at ``step``; ``--resume`` then
    continues at epoch 1 or 2 and ends exactly where a straight run ends, with every
    repair said in a warning line and nothing left behind; ``--overwrite`` removes the
    leftovers too."""
    manifest, one, two = runs
    run = Path(shutil.copytree(one, tmp_path / "run")) / "spk1"
    argv = ["train", "--manifest", str(manifest), "--out", str(run.parent), *TRAIN]
    argv += ["--epochs", "2"]
    script = KILL_AT.format(exchange=exchange, step=step)
    # the same torch threads as this process: an epoch trained there must be the same bits
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv, "--resume"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    hidden = [n for n in _listing(run) if n.startswith(".last.")]
    assert hidden, "the kill left no copy behind"  # the fault really hit the swap
    assert (run / "last").exists() == (step != "moved-aside")
    code, stdout, err = cli(capsys, *argv, then)
    assert code == 0, err
    if then == "--resume":
        repaired = [line for line in err if "interrupted save" in line]
        assert repaired and all(
            line.startswith(f"atfnn-fast: warning: {run / 'last'}: ") for line in repaired
        )
        resumed = 1 if step == "written" else 2  # before the swap: the old epoch
        # the line also names what the resume changed (--epochs 1 -> 2)
        said = f"resuming spk1 after epoch {resumed}"
        assert any(x == said or x.startswith(said + " (") for x in stdout.splitlines())
        straight, ours = _weights(two / "spk1" / "last"), _weights(run / "last")
        assert all(torch.equal(straight[k], ours[k]) for k in straight)
    assert not [n for n in _listing(run) if n.startswith(".") and n != ".lock"]
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


@pytest.mark.slow  # a one-epoch training first: 5 to 30 s on two shared cores
def test_resume_refuses_a_run_whose_last_is_lost(one_run, tmp_path, capsys):
    """``last`` gone (deleted by hand, or a crash on a file system that lost it) while the
    log lists a committed epoch: one line, exit 1, and ``best`` is not replaced."""
    manifest, one = one_run
    run = Path(shutil.copytree(one, tmp_path / "run")) / "spk1"
    shutil.rmtree(run / "last")
    best = (run / "best" / "model.safetensors").read_bytes()
    argv = ["train", "--manifest", manifest, "--out", run.parent, *TRAIN, "--epochs", "2"]
    code, stdout, err = cli(capsys, *argv, "--resume")
    assert (code, stdout) == (1, "")
    assert err == [
        f"atfnn-fast: error: {run / 'last' / 'state.json'}: missing, but log.jsonl lists 1 "
        "committed epoch(s): the resume state is lost, and starting at epoch 1 would replace "
        "best. Start again with --overwrite"
    ]
    assert (run / "best" / "model.safetensors").read_bytes() == best


@pytest.mark.slow  # a one-epoch training: 5 to 30 s on two shared cores
def test_resume_with_nothing_committed_says_it_starts_at_epoch_1(one_run, tmp_path, capsys):
    manifest, _ = one_run
    argv = ["train", "--manifest", manifest, "--out", tmp_path, *TRAIN, "--epochs", "1"]
    code, stdout, _ = cli(capsys, *argv, "--resume")
    assert code == 0
    assert "resuming spk1: no epoch was committed yet; starting at epoch 1" in stdout


# ---------------------------------------------------------- item 3: output targets first
def test_export_into_the_input_checkpoint_is_refused(ckpt, capsys):
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    for target in (ckpt / "model.safetensors", ckpt / "sub" / "m.onnx"):
        code, out, err = cli(capsys, "export", "--checkpoint", ckpt, "--output", target)
        assert (code, out) == (2, "")
        assert err == [
            f"atfnn-fast: error: --output {target}: is inside the input {ckpt}; writing there "
            "would replace or add to what is read. Choose a path outside it"
        ]
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def _special(kind, path):
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    else:
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null twin
        except PermissionError:
            pytest.skip("mknod is not allowed here")
    return None


def test_prepare_refuses_an_out_that_would_replace_an_audio_file(corpus, capsys):
    audio = sorted(corpus.parent.rglob("*.wav"))[0]
    before = audio.read_bytes()
    argv = ["datasets", "prepare", "--dataset", "casia", "--root", corpus.parent, "--out", audio]
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err == [
        f"atfnn-fast: error: --out {audio}: names an audio file; the manifest is a CSV file"
    ]
    assert audio.read_bytes() == before


@pytest.mark.parametrize(
    "kind,words",
    [
        ("fifo", "a FIFO (named pipe)"),
        ("socket", "a socket"),
        ("device", "a character device"),
    ],
)
def test_device_fifo_and_socket_targets_are_refused_and_kept(
    ckpt, corpus, tmp_path, capsys, kind, words
):
    target = tmp_path / "target"
    keep = _special(kind, target)
    mode = os.lstat(target).st_mode
    try:
        for argv in (
            ["export", "--checkpoint", ckpt, "--output", target],
            ["datasets", "prepare", "--dataset", "casia", "--root", corpus.parent],
            ["plot-attention", "--checkpoint", ckpt, "--output", target, speech_sample()],
        ):
            option = "--out" if argv[0] == "datasets" else "--output"
            if argv[0] == "datasets":
                argv = [*argv, "--out", target]
            code, out, err = cli(capsys, *argv)
            assert (code, out) == (2, ""), err
            assert err == [
                f"atfnn-fast: error: {option} {target}: is {words}; give the path of a regular "
                "file to write (it is never replaced or written into)"
            ]
            assert os.lstat(target).st_mode == mode  # still the same node
    finally:
        if keep is not None:
            keep.close()


def test_an_unwritable_evaluate_out_is_found_before_the_evaluation(ckpt, corpus, capsys):
    with tmpfs(readonly=True) as ro:
        code, out, err = cli(
            capsys, "evaluate", "--checkpoint", ckpt, "--manifest", corpus, "--out", ro / "eval"
        )
    assert (code, out) == (1, "")  # no metrics computed and lost
    assert err == [f"atfnn-fast: error: {ro / 'eval'}: Read-only file system"]


# ------------------------------------------------------ item 5: one line per OS error
def test_a_full_disk_is_one_line_naming_the_file(ckpt, corpus, capsys):
    with tmpfs("1m") as small:
        fill(small, leave=16384)
        target = small / "m.onnx"
        code, out, err = cli(capsys, "export", "--checkpoint", ckpt, "--output", target)
        assert (code, out) == (1, "")
        assert err == [f"atfnn-fast: error: {target}: No space left on device"]
        assert _listing(small) == ["filler"]  # no temporary file left on the full disk
        code, out, err = cli(
            capsys, "train", "--manifest", corpus, "--out", small / "run", *TRAIN, "--epochs", "1"
        )
        assert code == 1
        assert err == [
            f"atfnn-fast: error: {small / 'run' / 'spk1' / 'best' / 'model.safetensors'}: "
            "No space left on device"
        ]
        assert [n for n in _listing(small / "run" / "spk1") if n != ".lock"] == []


def test_a_read_only_file_system_is_one_line_before_any_work(ckpt, tmp_path, capsys):
    with tmpfs(readonly=True) as ro:
        code, out, err = cli(capsys, "export", "--checkpoint", ckpt, "--output", ro / "m.onnx")
    assert (code, out) == (1, "")
    assert err == [f"atfnn-fast: error: {ro}: Read-only file system"]


def test_a_name_too_long_and_a_symlink_loop_are_one_line(ckpt, tmp_path, capsys):
    target = tmp_path / ("m" * 256)
    code, out, err = cli(capsys, "export", "--checkpoint", ckpt, "--output", target)
    assert (code, out, err) == (1, "", [f"atfnn-fast: error: {target}: File name too long"])
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    target = tmp_path / "a" / "m.onnx"
    code, out, err = cli(capsys, "export", "--checkpoint", ckpt, "--output", target)
    assert (code, out) == (1, "")
    assert err == [f"atfnn-fast: error: {target}: Too many levels of symbolic links"]


def test_a_config_json_the_user_may_not_read_is_not_called_invalid_json(shared_dir, capsys):
    saved = save_checkpoint(shared_dir / "ckpt", _model(), labels=LABELS, norm_stats=_stats())
    (saved / "config.json").chmod(0o600)
    with as_user():
        code, out, err = cli(capsys, "predict", "--checkpoint", saved, speech_sample())
    assert (code, out) == (1, "")
    assert err == [f"atfnn-fast: error: {saved / 'config.json'}: Permission denied"]


def test_prepare_skips_unreadable_and_looping_files_with_a_warning(shared_dir, capsys):
    import soundfile as sf

    root = shared_dir / "emodb" / "wav"
    root.mkdir(parents=True)
    for name in ("03a01Fa", "03a01Wa", "08a01Ta", "08a01Na"):
        sf.write(str(root / f"{name}.wav"), np.zeros(1600), 16000)
    (root / "03a02Fa.wav").symlink_to(root / "03a02Wa.wav")  # a loop
    (root / "03a02Wa.wav").symlink_to(root / "03a02Fa.wav")
    (root / "08a02Ta.wav").write_bytes((root / "08a01Ta.wav").read_bytes())
    (root / "08a02Ta.wav").chmod(0o600)  # root's alone
    out = shared_dir / "emodb.csv"
    with as_user():
        code, stdout, err = cli(
            capsys, "datasets", "prepare", "--dataset", "emodb", "--root", root.parent,
            "--out", out,
        )  # fmt: skip
    assert code == 0, err
    assert stdout.splitlines()[0] == f"wrote {out}: 4 utterances, 2 speakers"
    assert err == [
        f"atfnn-fast: warning: {root / '03a02Fa.wav'}: skipped (Too many levels of symbolic links)",
        f"atfnn-fast: warning: {root / '03a02Wa.wav'}: skipped (Too many levels of symbolic links)",
        f"atfnn-fast: warning: {root / '08a02Ta.wav'}: skipped (Permission denied)",
    ]


# ------------------------------------------------------------------------- item 7: API
def test_a_compiled_model_saves_and_loads(tmp_path):
    model = _model()
    compiled = torch.compile(model)
    saved = save_checkpoint(tmp_path / "c", compiled, labels=LABELS)
    loaded = load_checkpoint(saved).model
    assert set(loaded.state_dict()) == set(model.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_predict_batch_size_is_bounded_by_a_memory_estimate(tmp_path, capsys, monkeypatch):
    from atfnn_fast import inference

    paper = save_checkpoint(tmp_path / "paper", ATFNN(ATFNNConfig(num_classes=4)))
    monkeypatch.setattr(inference, "available_memory", lambda device: 16 * 2**30)
    code, out, err = cli(
        capsys, "predict", "--checkpoint", paper, "--batch-size", "4096", speech_sample()
    )
    assert (code, out) == (2, "")
    assert err == [
        "atfnn-fast: error: --batch-size 4096: one batch would need about 35.8 GiB (8.9 MiB "
        "per segment of this model), over half of the 16.0 GiB available on cpu; use "
        "--batch-size 916 or less"
    ]
    code, out, err = cli(
        capsys, "predict", "--checkpoint", paper, "--batch-size", "916", speech_sample()
    )
    assert code == 0 and out.startswith(f"{speech_sample()}: class_")
    assert [line.split(" on ")[0] for line in err] == [f"predict: checkpoint {paper}"]


# ------------------------------------------------------- item 6: headers and odd names
def _patched(raw: bytes, riff: int | None, data: int | None) -> bytes:
    import struct

    out = bytearray(raw)
    if riff is not None:
        out[4:8] = struct.pack("<I", riff)
    at = out.find(b"data")
    if data is not None:
        out[at + 4 : at + 8] = struct.pack("<I", data)
    return bytes(out)


def test_wav_headers_of_streaming_writers_are_read_completely(ckpt, tmp_path, capsys):
    """ffmpeg writing to a pipe leaves the RIFF and data sizes at 0xFFFFFFFF, sox at
    0x7FFFF000; libsndfile reads such a file to its end, and so does predict. A header
    declaring 0 bytes of data (which libsndfile cannot read) is refused saying why."""
    import soundfile as sf
    from helpers import wav_bytes

    speech, rate = sf.read(str(speech_sample()))
    raw = wav_bytes(speech[: 2 * rate, None] * 0.9, rate, 16)
    files = {"plain": raw}
    files["ffmpeg"] = _patched(raw, 0xFFFFFFFF, 0xFFFFFFFF)
    files["sox"] = _patched(raw, 0x7FFFF000 + 36, 0x7FFFF000)
    files["zero"] = _patched(raw, 0, 0)
    for name, data in files.items():
        (tmp_path / f"{name}.wav").write_bytes(data)
    paths = [tmp_path / f"{name}.wav" for name in files]
    code, out, _ = cli(capsys, "predict", "--checkpoint", ckpt, "--json", *paths)
    plain, ffmpeg, sox, zero = json.loads(out)
    assert plain["scores"] == ffmpeg["scores"] == sox["scores"]  # every sample read
    assert code == 1 and zero["error"] == (
        f"{paths[3]}: empty audio: its header declares 0 bytes of data though the file is "
        "longer (a streaming writer that never fixed its header); rewrite the file, e.g. with "
        "sox or ffmpeg"
    )
    cut = tmp_path / "cut.wav"
    cut.write_bytes(raw[:-100])  # a cut file with a real size is still refused
    code, out, _ = cli(capsys, "predict", "--checkpoint", ckpt, "--json", cut)
    assert code == 1 and "truncated audio file" in json.loads(out)[0]["error"]


def test_predict_text_output_is_one_line_per_file_whatever_the_name(ckpt, tmp_path, capsys):
    names = ["a\nb.wav", "c\rd\te.wav", "f\x1b[31mred.wav", "g\u2028h.wav"]
    paths = []
    for name in names:
        paths.append(tmp_path / name)
        paths[-1].write_bytes(speech_sample().read_bytes())
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, *paths)
    assert code == 0 and [line.split(" on ")[0] for line in err] == [f"predict: checkpoint {ckpt}"]
    lines = out.split("\n")[:-1]
    assert len(lines) == 4
    escaped = ["a\\nb.wav", "c\\rd\\te.wav", "f\\x1b[31mred.wav", "g\\u2028h.wav"]
    assert [line.split(": ")[0] for line in lines] == [f"{tmp_path}/{e}" for e in escaped]
    code, out, err = cli(capsys, "predict", "--checkpoint", ckpt, "--json", *paths)
    assert [e["path"] for e in json.loads(out)] == [str(p) for p in paths]  # JSON: exact


# --------------------------------------------------- item 8: a cache for read-only corpora
def test_a_corpus_on_a_read_only_mount_uses_the_user_cache_or_cache(
    ckpt, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with tmpfs("8m") as mount:
        manifest = make_corpus(mount / "corpus", speakers=3, per_class=1, seed=2)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        args = ["evaluate", "--checkpoint", ckpt, "--manifest", manifest]
        code, out, err = cli(capsys, *args)
        assert code == 0 and out.startswith("the whole manifest: WAR ")
        user = tmp_path / "xdg" / "atfnn-fast" / "features"
        assert err == [
            f"atfnn-fast: warning: {manifest.parent / '.atfnn-cache'}: cannot hold the feature "
            f"cache (Read-only file system); using {user} (choose another with --cache)"
        ]
        assert len(list(user.glob("*.pt"))) == 12
        code, again, err = cli(capsys, *args, "--cache", tmp_path / "mine")
        assert (code, again, err) == (0, out, [])
        assert len(list((tmp_path / "mine").glob("*.pt"))) == 12


# --------------------------------------------------- item 9: the nearly-empty last segment
def test_a_nearly_empty_last_segment_does_not_count(ckpt, tmp_path, capsys):
    """Tiny model: segments of 16 frames, so a tail needs 4 real frames to count. 32
    frames are two segments; one frame (10 ms) more adds no third segment, four more do."""
    import soundfile as sf

    from atfnn_fast.features import file_segments, iter_segment_batches

    speech, _ = sf.read(str(speech_sample()))
    cfg = load_checkpoint(ckpt).config
    counts = {}
    for frames in (32, 33, 36):
        path = tmp_path / f"f{frames}.wav"
        sf.write(str(path), speech[: (frames - 1) * 160], 16000)
        kwargs = dict(n_mels=cfg.n_mels, frames=cfg.frames)
        batches = list(iter_segment_batches(path, batch_size=2, **kwargs))
        counts[frames] = sum(b.shape[0] for b in batches)
        # equal up to float rounding: the stream projects blocks of frames onto the Mel
        # filters, and BLAS may round a block of 1 frame unlike one of 33 (seen: 2.4e-7)
        whole = file_segments(path, **kwargs)
        torch.testing.assert_close(torch.cat(batches), whole, rtol=0, atol=1e-5)
    assert counts == {32: 2, 33: 2, 36: 3}
    code, out, _ = cli(
        capsys,
        "predict",
        "--checkpoint",
        ckpt,
        "--json",
        tmp_path / "f32.wav",
        tmp_path / "f33.wav",
    )
    a, b = json.loads(out)
    assert code == 0 and max(abs(a["scores"][k] - b["scores"][k]) for k in LABELS) < 0.05
