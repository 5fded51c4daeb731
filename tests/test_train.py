"""Training, resume, evaluation, attention plots, DDP and the demo, on tiny synthetic data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atfnn_fast.cli import main
from atfnn_fast.data import Item, read_manifest, write_manifest
from atfnn_fast.synth import CLASSES, make_corpus
from atfnn_fast.train import TrainConfig, folds, split, summary_table, train_fold

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
    code = main(["train", "--manifest", str(corpus), "--out", str(tmp_path), "--fold", "all",
                 "--epochs", "1", "--preset", "tiny", "--batch-size", "16", "--device", "cpu"])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    best = Path(lines[-1])
    assert best.name == "best" and (best / "model.safetensors").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["fold"] for r in summary] == ["spk1", "spk2", "spk3"]
    assert "| mean |" in (tmp_path / "summary.md").read_text()


def test_cli_evaluate_and_plot_attention(corpus, tmp_path, capsys):
    train_fold(corpus, tmp_path, "spk2", tc=TrainConfig(epochs=1, **TINY))
    ckpt = tmp_path / "spk2" / "best"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--manifest", str(corpus),
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert "WAR" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["utterances"] == len(read_manifest(corpus))
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
    assert main(["datasets", "prepare", "--dataset", "casia", "--root", str(tmp_path / "CASIA"),
                 "--out", str(out), "--features"]) == 0  # fmt: skip
    assert "4 utterances, 2 speakers" in capsys.readouterr().out
    assert len(list((tmp_path / ".atfnn-cache").glob("*.pt"))) == 4


def test_summary_table():
    rows = [{"fold": "a", "utterances": 10, "war": 0.5, "uar": 0.4},
            {"fold": "b", "utterances": 10, "war": 0.7, "uar": 0.6}]  # fmt: skip
    assert "| mean | 20 | 60.00% | 50.00% |" in summary_table(rows)


@pytest.mark.slow
def test_ddp_with_gloo_two_processes(corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", "-m", "atfnn_fast.cli", "train", "--manifest", str(corpus),
           "--out", str(tmp_path), "--fold", "spk1", "--epochs", "2", "--preset", "tiny",
           "--batch-size", "16", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].endswith(str(Path("spk1") / "best"))
    assert len((tmp_path / "spk1" / "log.jsonl").read_text().splitlines()) == 2  # rank 0 only
    assert json.loads((tmp_path / "spk1" / "metrics.json").read_text())["utterances"] == 12


@pytest.mark.slow
def test_demo_pipeline_beats_chance(tmp_path):
    from atfnn_fast.demo import run_pipeline

    result = run_pipeline(tmp_path, epochs=12)
    assert result["metrics"]["uar"] >= 0.6  # chance is 0.25
    assert result["onnx_max_rel"] <= 1e-4
    assert result["int8_agreement"] >= 0.99  # int8 graph vs float32 eager, demo corpus
    assert (tmp_path / "attention.png").exists() and (tmp_path / "model.onnx").exists()


def test_manifest_round_trip_keeps_sessions(tmp_path):
    items = [Item((tmp_path / f"{k}.wav").resolve(), "sad", "s1", "S1") for k in range(2)]
    path = write_manifest(items, tmp_path / "m.csv")
    assert read_manifest(path) == sorted(items, key=lambda i: str(i.path))


def test_bf16_autocast_training_on_cpu(corpus, tmp_path):
    tc = TrainConfig(epochs=1, **{**TINY, "progress": True})
    tc.amp = "bf16"
    metrics = train_fold(corpus, tmp_path, "spk1", tc=tc)
    assert 0 <= metrics["uar"] <= 1
    log = json.loads((tmp_path / "spk1" / "log.jsonl").read_text())
    assert log["train_loss"] == log["train_loss"]  # finite, not NaN
