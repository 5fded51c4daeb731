"""Training, resume, evaluation, attention plots, DDP and the demo, on tiny synthetic data."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from atfnn_fast.app.cli import main
from atfnn_fast.app.synth import CLASSES, make_corpus
from atfnn_fast.app.train import TrainConfig, folds, split, summary_table, train_fold
from atfnn_fast.manifest import Item, read_manifest, write_manifest

TINY = dict(batch_size=16, hop=32, preset="tiny", device="cpu", progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), speakers=3, per_class=3, seed=1)


def test_folds_and_splits(corpus, tmp_path):
    items = read_manifest(corpus)
    assert folds(items, "loso") == ["spk1", "spk2", "spk3"]
    train_items, val, test = split(items, "loso", "spk2", 0.2, seed=0)
    assert {i.speaker for i in test} == {"spk2"}
    assert len({i.speaker for i in val}) == 1 and not {i.speaker for i in val} & {"spk2"}
    assert not {i.speaker for i in train_items} & ({i.speaker for i in val} | {"spk2"})
    with pytest.raises(ValueError, match="needs a session column"):
        folds(items, "session")
    with pytest.raises(ValueError, match="fold 'spk9' has no utterances"):
        split(items, "loso", "spk9", 0.2, 0)
    sessions = [
        Item(i.path, i.label, i.speaker, "S1" if i.speaker != "spk3" else "S2") for i in items
    ]
    assert folds(sessions, "session") == ["S1", "S2"]


def test_train_one_fold_writes_everything(corpus, tmp_path):
    metrics = train_fold(corpus, tmp_path, "spk1", tc=TrainConfig(epochs=2, **TINY))
    folder = tmp_path / "spk1"
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"train_loss", "val_war", "val_uar", "seconds"} <= set(log[0])
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["utterances"] == 3 * len(CLASSES)
    assert set(saved["recall"]) == set(CLASSES) and len(saved["confusion"]) == len(CLASSES)
    assert sum(map(sum, saved["confusion"])) == saved["utterances"]
    assert 0 <= saved["war"] <= 1 and 0 <= saved["uar"] <= 1
    assert metrics["best_epoch"] in (1, 2) and (folder / "confusion.png").stat().st_size > 1000
    assert json.loads((folder / "best" / "config.json").read_text())["labels"] == sorted(CLASSES)


def test_resume_continues_exactly(corpus, tmp_path):
    straight = tmp_path / "straight"
    train_fold(corpus, straight, "spk3", tc=TrainConfig(epochs=2, **TINY))
    resumed = tmp_path / "resumed"
    train_fold(corpus, resumed, "spk3", tc=TrainConfig(epochs=1, **TINY))
    train_fold(corpus, resumed, "spk3", tc=TrainConfig(epochs=2, **TINY), resume=True)
    a = load_file(str(straight / "spk3" / "last" / "model.safetensors"))
    b = load_file(str(resumed / "spk3" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((resumed / "spk3" / "log.jsonl").read_text().splitlines()) == 2


def test_cli_train_all_folds_summary_and_last_line(corpus, tmp_path, capsys):
    code = main(
        [
            "train",
            "--manifest",
            str(corpus),
            "--out",
            str(tmp_path),
            "--fold",
            "all",
            "--epochs",
            "1",
            "--preset",
            "tiny",
            "--batch-size",
            "16",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    best = Path(lines[-1])
    assert best.name == "best" and (best / "model.safetensors").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["fold"] for r in summary] == ["spk1", "spk2", "spk3"]
    table = (tmp_path / "summary.md").read_text().strip().splitlines()
    assert table[-1].startswith("| mean | 36 |")
    assert lines[-1 - len(table) : -1] == table  # the summary table ends the run, then the path
    results = [line for line in lines if line.startswith("test speaker ")]
    assert [r.split(":")[0] for r in results] == [f"test speaker spk{k}" for k in (1, 2, 3)]


def test_cli_evaluate_and_plot_attention(corpus, tmp_path, capsys):
    train_fold(corpus, tmp_path, "spk2", tc=TrainConfig(epochs=1, **TINY))
    capsys.readouterr()
    ckpt = tmp_path / "spk2" / "best"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(ckpt),
                "--manifest",
                str(corpus),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert out.startswith("fold spk2: WAR ") and ", 12 utterances\n" in out and err == ""
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["utterances"] == 12 and metrics["fold"] == "spk2"  # the held-out speaker
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    wav = read_manifest(corpus)[0].path
    png = tmp_path / "att.png"
    assert main(["plot-attention", "--checkpoint", str(ckpt), str(wav), "--output", str(png)]) == 0
    assert png.stat().st_size > 5000


def test_cli_datasets_prepare(tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    for speaker in ("liuchanhg", "wangzhe"):
        for emotion in ("angry", "sad"):
            path = tmp_path / "CASIA" / speaker / emotion / "1.wav"
            path.parent.mkdir(parents=True)
            sf.write(str(path), np.zeros(4000), 16000)
    out = tmp_path / "m.csv"
    assert (
        main(
            [
                "datasets",
                "prepare",
                "--dataset",
                "casia",
                "--root",
                str(tmp_path / "CASIA"),
                "--out",
                str(out),
                "--features",
            ]
        )
        == 0
    )
    assert "4 utterances, 2 speakers" in capsys.readouterr().out
    assert len(list((tmp_path / ".atfnn-cache").glob("*.pt"))) == 4


def test_summary_table():
    rows = [
        {"fold": "a", "utterances": 10, "war": 0.5, "uar": 0.4},
        {"fold": "b", "utterances": 10, "war": 0.7, "uar": 0.6},
    ]
    assert "| mean | 20 | 60.00% | 50.00% |" in summary_table(rows)


@pytest.mark.slow
def test_ddp_with_gloo_two_processes(corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "atfnn_fast.app.cli",
        "train",
        "--manifest",
        str(corpus),
        "--out",
        str(tmp_path),
        "--fold",
        "spk1",
        "--epochs",
        "2",
        "--preset",
        "tiny",
        "--batch-size",
        "16",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the process group is closed before exit: no abort from gloo's threads (1 run in 8
    # aborted after a successful run when it was left to interpreter exit)
    assert "terminate called" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].endswith(str(Path("spk1") / "best"))
    assert len((tmp_path / "spk1" / "log.jsonl").read_text().splitlines()) == 2  # rank 0 only
    assert json.loads((tmp_path / "spk1" / "metrics.json").read_text())["utterances"] == 12


@pytest.mark.slow
def test_demo_pipeline_beats_chance(tmp_path, capfd):
    from atfnn_fast.app.demo import run_pipeline

    result = run_pipeline(tmp_path, epochs=12)
    assert "\r" not in capfd.readouterr().err  # no progress bar when stderr is not a TTY
    assert result["metrics"]["uar"] >= 0.6  # chance is 0.25
    assert result["onnx_max_rel"] <= 1e-4
    assert result["int8_agreement"] >= 0.99  # int8 graph vs float32 eager, demo corpus
    assert (tmp_path / "attention.png").exists() and (tmp_path / "model.onnx").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    "env,tty,drawn",
    [("", False, False), ("", True, True), ("1", False, True), ("0", True, False)],
)
def test_progress_bars_only_on_a_terminal(monkeypatch, env, tty, drawn):
    """A bar (carriage-return updates) when stderr is a terminal or ATFNN_PROGRESS=1;
    nothing at all in a log or a pipe, or with ATFNN_PROGRESS=0."""
    from atfnn_fast.app.progress import PROGRESS_ENV, progress

    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv(PROGRESS_ENV, env)
    with progress(range(5), "work", "item") as bar:
        assert list(bar) == [0, 1, 2, 3, 4]
    assert ("\r" in err.getvalue()) is drawn
    assert ("work" in err.getvalue()) is drawn


def test_manifest_round_trip_keeps_sessions(tmp_path):
    items = [Item((tmp_path / f"{k}.wav").resolve(), "sad", "s1", "S1") for k in range(2)]
    path = write_manifest(items, tmp_path / "m.csv")
    assert read_manifest(path) == sorted(items, key=lambda i: str(i.path))


@pytest.mark.isa
def test_bf16_autocast_training_on_cpu(corpus, tmp_path):
    tc = TrainConfig(epochs=1, **{**TINY, "progress": True})
    tc.amp = "bf16"
    metrics = train_fold(corpus, tmp_path, "spk1", tc=tc)
    assert 0 <= metrics["uar"] <= 1
    log = json.loads((tmp_path / "spk1" / "log.jsonl").read_text())
    assert log["train_loss"] == log["train_loss"]  # finite, not NaN


# ---------------------------------------------------------------- issue 13: reliability
ARGS = ["--epochs", "1", "--preset", "tiny", "--batch-size", "16", "--hop", "32", "--device", "cpu"]


def cli(capsys, *argv):
    """(exit code, stdout, the lines atfnn-fast wrote on stderr) of one `atfnn-fast` call;
    progress bars and epoch lines aside, nothing else may be on stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in re.split(r"[\r\n]", err) if line.startswith("atfnn")]


def manifest_rows(corpus):
    lines = corpus.read_text().splitlines()
    return lines[0], [line.split(",") for line in lines[1:]]


def write_manifest_rows(path, header, rows, bom=False, newline="\n"):
    text = newline.join([header, *(",".join(r) for r in rows)]) + newline
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


@pytest.mark.parametrize(
    "speaker,reason",
    [
        ("../../escaped_fold", "contains a path separator"),
        ("ABSOLUTE", "is an absolute path"),
        ("..", r"is a relative path \(\. or \.\.\)"),
        ("spk\x07", r"contains a control or non-printable character \('\\x07'\)"),
    ],
)
def test_hostile_manifest_writes_nothing_outside_out(corpus, tmp_path, capsys, speaker, reason):
    speaker = str(tmp_path / "abs_fold") if speaker == "ABSOLUTE" else speaker
    header, rows = manifest_rows(corpus)
    for row in rows[-6:]:
        row[2] = speaker
    hostile = write_manifest_rows(corpus.parent / f"hostile{len(speaker)}.csv", header, rows)
    out = tmp_path / "deep" / "er" / "out"
    code, out_text, err = cli(capsys, "train", "--manifest", hostile, "--out", out, *ARGS)
    assert code == 1 and out_text == ""
    assert len(err) == 1 and re.fullmatch(
        rf"atfnn-fast: error: {re.escape(str(hostile))}:{len(rows) - 4}: speaker "
        rf"{re.escape(repr(speaker))} {reason}; speaker and session values name the fold "
        "directories of a training run",
        err[0],
    ), err
    assert tree(tmp_path) == []  # nothing written, inside --out or outside it


def test_fold_directory_symlinked_outside_out_is_refused(corpus, tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "spk1").symlink_to(tmp_path / "elsewhere")
    code, _, err = cli(
        capsys, "train", "--manifest", corpus, "--out", tmp_path / "out", "--fold", "spk1", *ARGS
    )
    assert code == 1
    assert err == [
        f"atfnn-fast: error: {tmp_path / 'out' / 'spk1'}: resolves to {tmp_path / 'elsewhere'}, "
        f"outside the output folder {tmp_path / 'out'}"
    ]
    assert tree(tmp_path / "elsewhere") == []


def test_label_without_training_data_is_refused(corpus, tmp_path, capsys):
    header, rows = manifest_rows(corpus)
    for row in rows:
        if row[2] == "spk3" and row[1] == "low_flat":
            row[1] = "whisper"  # a class only speaker spk3 has
    manifest = write_manifest_rows(corpus.parent / "test_only_label.csv", header, rows)
    code, _, err = cli(capsys, "train", "--manifest", manifest, "--out", tmp_path / "o", *ARGS)
    assert code == 1
    assert err == [
        f"atfnn-fast: error: {manifest}: fold 'spk1': label(s) 'whisper' (only speakers "
        "['spk3']) have no training utterances; every label needs training data in every fold"
    ]  # spk1 is checked first; the fold that would train on spk3 is refused as well
    assert not (tmp_path / "o").exists()


def test_single_label_manifest_is_refused(corpus, tmp_path, capsys):
    header, rows = manifest_rows(corpus)
    rows = [r for r in rows if r[1] == "low_flat"]
    manifest = write_manifest_rows(corpus.parent / "one_label.csv", header, rows)
    code, _, err = cli(capsys, "train", "--manifest", manifest, "--out", tmp_path / "o", *ARGS)
    assert code == 1
    assert err == [
        f"atfnn-fast: error: {manifest}: only one label ('low_flat'); training needs at least "
        "two classes"
    ]
    assert not (tmp_path / "o").exists()


def test_file_under_two_speakers_is_refused(corpus, tmp_path, capsys):
    header, rows = manifest_rows(corpus)
    leak = [rows[0][0], rows[0][1], "spk2"]
    manifest = write_manifest_rows(corpus.parent / "leak.csv", header, [*rows, leak])
    code, _, err = cli(capsys, "train", "--manifest", manifest, "--out", tmp_path / "o", *ARGS)
    assert code == 1
    assert err == [
        f"atfnn-fast: error: {manifest}: {rows[0][0]} is listed under two speakers: line 2 "
        f"({rows[0][1]}, spk1) and line {len(rows) + 2} ({rows[0][1]}, spk2)"
    ]


def test_spreadsheet_manifest_with_duplicates_trains_on_each_file_once(corpus, tmp_path, capsys):
    """BOM + CRLF (as spreadsheets save CSV) and two repeated rows of the test speaker."""
    header, rows = manifest_rows(corpus)
    spk1 = [r for r in rows if r[2] == "spk1"]
    manifest = write_manifest_rows(
        corpus.parent / "excel.csv", header, [*rows, spk1[0], spk1[1]], bom=True, newline="\r\n"
    )
    code, out, err = cli(
        capsys, "train", "--manifest", manifest, "--out", tmp_path / "o", "--fold", "spk1", *ARGS
    )
    assert code == 0 and out.strip().endswith(str(tmp_path / "o" / "spk1" / "best"))
    line = rows.index(spk1[0]) + 2, rows.index(spk1[1]) + 2
    assert err == [
        f"atfnn-fast: warning: {manifest}: 2 duplicate row(s) dropped (line {len(rows) + 2} "
        f"repeats line {line[0]}, line {len(rows) + 3} repeats line {line[1]})"
    ]
    metrics = json.loads((tmp_path / "o" / "spk1" / "metrics.json").read_text())
    assert metrics["utterances"] == len(spk1) == 12  # not 14


# ------------------------------------------------------------------ run directories
@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    """A one-epoch run of fold spk1, copied by the tests that change it."""
    out = tmp_path_factory.mktemp("run")
    assert (
        main(["train", "--manifest", str(corpus), "--out", str(out), "--fold", "spk1", *ARGS]) == 0
    )
    return out


def copy_run(finished_run, tmp_path):
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_existing_fold_directory_needs_resume_or_overwrite(corpus, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    train_args = ["train", "--manifest", corpus, "--out", run, "--fold", "spk1", *ARGS]
    code, _, err = cli(capsys, *train_args)
    assert code == 2
    assert err == [
        f"atfnn-fast: error: {run / 'spk1'}: holds a run already (best, confusion.png, last, "
        "log.jsonl, metrics.json); add --resume to continue it or --overwrite to replace it"
    ]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # untouched
    code, _, err = cli(capsys, *train_args, "--resume", "--overwrite")
    assert code == 2 and err == [
        "atfnn-fast train: error: argument --overwrite: not allowed with argument --resume"
    ]
    (run / "spk1" / "notes.txt").write_text("mine")
    with open(run / "spk1" / "log.jsonl", "a") as fh:
        fh.write('{"epoch": 99}\n')  # marks the old log
    code, _, _ = cli(capsys, *train_args, "--overwrite")
    assert code == 0
    log = [json.loads(x) for x in (run / "spk1" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]  # a new run, not appended to the old log
    assert (run / "spk1" / "notes.txt").read_text() == "mine"  # not the trainer's: kept
    assert not (run / "spk1" / ".lock").exists()  # released


def _start_training(corpus, out, epochs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "atfnn_fast.app.cli",
        "train",
        "--manifest",
        str(corpus),
        "--out",
        str(out),
        "--fold",
        "spk1",
        *ARGS[2:],
        "--epochs",
        str(epochs),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_runs_at_once_and_a_stale_lock(corpus, tmp_path, capsys):
    import signal
    import time

    out = tmp_path / "out"
    first = _start_training(corpus, out, epochs=200)
    try:
        lock = out / "spk1" / ".lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        assert lock.read_text() == f"{first.pid}\n"
        code, _, err = cli(
            capsys, "train", "--manifest", corpus, "--out", out, "--fold", "spk1", *ARGS, "--resume"
        )
        assert code == 1
        assert err == [
            f"atfnn-fast: error: {out / 'spk1'}: another run (PID {first.pid}) is writing to "
            f"this fold directory (lock file {lock}); wait for it or use another --out"
        ]
    finally:
        first.send_signal(signal.SIGKILL)  # no clean-up runs: the lock file stays behind
        first.wait()
    assert lock.read_text() == f"{first.pid}\n"
    code, _, err = cli(
        capsys, "train", "--manifest", corpus, "--out", out, "--fold", "spk1", *ARGS, "--resume"
    )
    assert code == 0
    assert err[0] == (
        f"atfnn-fast: warning: {lock}: stale lock of PID {first.pid} (that run ended without "
        "releasing it); taking it over"
    )
    assert not lock.exists()


CRASH = """
import os, sys
from pathlib import Path
from atfnn_fast.app import train
from atfnn_fast.app.cli import main
real = train.save_checkpoint
def save_then_die(directory, *args, **kwargs):
    path = real(directory, *args, **kwargs)
    if Path(directory).name == "last" and kwargs["extra"]["epoch"] == 2:
        os._exit(9)  # killed right after `last` of epoch 2 is on disk
    return path
train.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # three trainings of two epochs: 12 to 30 s on two shared cores
def test_crash_between_the_writes_of_an_epoch_resumes_exactly(corpus, tmp_path, capsys):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    common = ["--manifest", corpus, "--fold", "spk1", *ARGS[2:], "--epochs", "2"]
    assert cli(capsys, "train", "--out", straight, *common)[0] == 0
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, "train", "--out", str(crashed), *map(str, common)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 9, proc.stderr[-2000:]
    code, _, _ = cli(capsys, "train", "--out", crashed, *common, "--resume")
    assert code == 0
    a = load_file(str(straight / "spk1" / "last" / "model.safetensors"))
    b = load_file(str(crashed / "spk1" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # epoch 2 was not trained twice
    log = [json.loads(x) for x in (crashed / "spk1" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    state = json.loads((crashed / "spk1" / "last" / "state.json").read_text())
    assert state["epoch"] == 2 and [r["epoch"] for r in state["history"]] == [1, 2]


# ------------------------------------------------------------- one-line CLI errors
def _break_state(run):
    (run / "spk1" / "last" / "state.json").write_text('{"epoch": 1, "best_uar"')
    return f"{run / 'spk1' / 'last' / 'state.json'}: broken resume state ("


def _break_optimizer(run):
    import pickle

    (run / "spk1" / "last" / "optimizer.pt").write_bytes(pickle.dumps(Item(Path("x"), "a", "b")))
    return (
        f"{run / 'spk1' / 'last' / 'optimizer.pt'}: cannot be loaded as plain tensors "
        "(UnpicklingError); it is damaged or was not written by atfnn-fast, and is not trusted "
        "as code. Start again with --overwrite"
    )


@pytest.mark.parametrize("breaker", [_break_state, _break_optimizer])
def test_broken_resume_state_is_one_line_naming_the_file(
    corpus, finished_run, tmp_path, capsys, breaker
):
    run = copy_run(finished_run, tmp_path)
    expected = breaker(run)
    code, _, err = cli(
        capsys,
        "train",
        "--manifest",
        corpus,
        "--out",
        run,
        "--fold",
        "spk1",
        *ARGS[2:],
        "--epochs",
        "2",
        "--resume",
    )
    assert code == 1 and len(err) == 1
    assert err[0].startswith(f"atfnn-fast: error: {expected}")
    assert "weights_only=False" not in err[0]
    assert [
        json.loads(x)["epoch"] for x in (run / "spk1" / "log.jsonl").read_text().splitlines()
    ] == [1]


@pytest.mark.parametrize(
    "option,value,message",
    [
        (
            "--batch-size",
            "0",
            "atfnn-fast train: error: argument --batch-size: must be >= 1, got 0",
        ),
        ("--epochs", "0", "atfnn-fast train: error: argument --epochs: must be >= 1, got 0"),
        (
            "--lr",
            "nan",
            "atfnn-fast train: error: argument --lr: must be a number in (0, 1], got nan",
        ),
        ("--hop", "x", "atfnn-fast train: error: argument --hop: expected an integer, got 'x'"),
        (
            "--fold",
            "spk9",
            "atfnn-fast: error: fold 'spk9' has no utterances (folds: ['spk1', 'spk2', 'spk3'])",
        ),
        (
            "--hop",
            "65",
            "atfnn-fast: error: TrainConfig.hop = 65 is longer than a segment "
            "(64 frames of preset 'tiny'): frames would be skipped",
        ),
    ],
)
def test_bad_options_are_usage_errors(corpus, tmp_path, capsys, option, value, message):
    code, _, err = cli(
        capsys, "train", "--manifest", corpus, "--out", tmp_path / "o", *ARGS, option, value
    )
    assert (code, err) == (2, [message])
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(corpus, tmp_path, capsys):
    for command in (
        ["train", "--manifest", corpus, "--out", tmp_path / "o", *ARGS[:-2]],
        ["evaluate", "--checkpoint", tmp_path, "--manifest", corpus],
    ):
        code, _, err = cli(capsys, *command, "--device", "cuda")
        assert (code, err) == (
            2,
            [
                "atfnn-fast: error: --device cuda: CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use --device cpu or auto"
            ],
        )
    with pytest.raises(ValueError, match="CUDA is not available"):  # --debug: the traceback
        main(["--debug", *map(str, command), "--device", "cuda"])


@pytest.mark.parametrize(
    "samples,reason",
    [
        (np.full(8000, 3e38), "log-Mel features are not finite (samples too large?)"),
        (np.r_[np.zeros(4000), np.nan, np.zeros(3999)], "audio contains NaN or Inf samples"),
    ],
)
def test_non_finite_audio_names_the_file(corpus, tmp_path, capsys, samples, reason):
    import soundfile as sf

    header, rows = manifest_rows(corpus)
    bad = tmp_path / "bad.wav"
    sf.write(str(bad), samples.astype(np.float32), 16000, subtype="FLOAT")
    rows[5][0] = str(bad)
    manifest = write_manifest_rows(corpus.parent / f"nonfinite{len(reason)}.csv", header, rows)
    code, _, err = cli(
        capsys, "train", "--manifest", manifest, "--out", tmp_path / "o", "--fold", "spk1", *ARGS
    )
    assert (code, err) == (1, [f"atfnn-fast: error: {bad}: {reason}"])


def test_errors_in_a_real_process_are_one_line_and_debug_shows_the_traceback(corpus, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "atfnn_fast.app.cli",
        "train",
        "--manifest",
        str(corpus),
        "--out",
        str(tmp_path),
        "--fold",
        "spk1",
        "--protocol",
        "session",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "atfnn-fast: error: protocol 'session' needs a session column in the manifest, with a "
        "value on every row\n"
    )
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "ATFNN_DEBUG": "1"}
    )
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr
    assert "UsageError: protocol 'session' needs" in proc.stderr
