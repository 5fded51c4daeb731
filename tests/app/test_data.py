"""Corpus readers on synthetic trees that mimic each corpus's published layout, the manifest
format, and the feature cache."""

import re

import numpy as np
import pytest
import soundfile as sf
import torch

from atfnn_fast import manifest as manifest_csv
from atfnn_fast.app import datasets as data
from atfnn_fast.app.datasets import FeatureCache, prepare
from atfnn_fast.manifest import ManifestError, read_manifest


def tone(path, seconds=0.3, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), 0.3 * np.sin(2 * np.pi * 220 * t), rate)


def make_iemocap(root):
    lines = {
        "Ses01F_impro01": [
            ("Ses01F_impro01_F000", "neu"),
            ("Ses01F_impro01_M001", "ang"),
            ("Ses01F_impro01_F002", "exc"),
            ("Ses01F_impro01_M003", "fru"),
        ],
        "Ses01F_script01_1": [("Ses01F_script01_1_F000", "sad")],
        "Ses02M_impro03": [("Ses02M_impro03_M000", "hap"), ("Ses02M_impro03_F001", "sad")],
    }
    for dialog, utts in lines.items():
        session = f"Session{int(dialog[3:5])}"
        text = [f"[{i}.0 - {i}.5]\t{u}\t{e}\t[2.5, 2.5, 2.5]" for i, (u, e) in enumerate(utts)]
        evaluation = root / session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        evaluation.parent.mkdir(parents=True, exist_ok=True)
        evaluation.write_text("% header\n\n" + "\n".join(text) + "\n")
        for utt, _ in utts:
            tone(root / session / "sentences" / "wav" / dialog / f"{utt}.wav")


def rows(manifest):
    return sorted((i.path.name, i.label, i.speaker, i.session) for i in read_manifest(manifest))


def test_iemocap_improvised_four_classes_with_sessions(tmp_path):
    make_iemocap(tmp_path / "IEMOCAP")
    manifest, _ = prepare("iemocap", tmp_path / "IEMOCAP", tmp_path / "m.csv")
    assert rows(manifest) == [
        ("Ses01F_impro01_F000.wav", "neutral", "Ses01F", "Session1"),
        ("Ses01F_impro01_M001.wav", "angry", "Ses01M", "Session1"),
        ("Ses02M_impro03_F001.wav", "sad", "Ses02F", "Session2"),
        ("Ses02M_impro03_M000.wav", "happy", "Ses02M", "Session2"),
    ]  # scripted dialogs, "fru" and (without the merge) "exc" are left out
    merged, _ = prepare("iemocap", tmp_path / "IEMOCAP", tmp_path / "m2.csv", merge_excited=True)
    assert ("Ses01F_impro01_F002.wav", "happy", "Ses01F", "Session1") in rows(merged)


def test_casia(tmp_path):
    for speaker in ("liuchanhg", "wangzhe"):
        for emotion in ("angry", "fear", "happy", "neutral", "sad", "surprise"):
            tone(tmp_path / "CASIA" / speaker / emotion / "201.wav")
    tone(tmp_path / "CASIA" / "wangzhe" / "unknown" / "1.wav")
    manifest, items = prepare("casia", tmp_path / "CASIA", tmp_path / "m.csv")
    assert len(items) == 12 and manifest_csv.labels_of(items) == sorted(data.CASIA_EMOTIONS)
    assert {i.speaker for i in items} == {"liuchanhg", "wangzhe"}
    assert read_manifest(manifest)[0].path.exists()


def test_emodb(tmp_path):
    for name in ("03a01Fa", "03a01Wa", "16b10Tb", "11a05Nd", "readme"):
        tone(tmp_path / "emodb" / "wav" / f"{name}.wav")
    _, items = prepare("emodb", tmp_path / "emodb", tmp_path / "m.csv")
    assert sorted((i.speaker, i.label) for i in items) == [
        ("03", "anger"),
        ("03", "happiness"),
        ("11", "neutral"),
        ("16", "sadness"),
    ]


def test_ravdess_speech_only(tmp_path):
    names = [
        "03-01-05-01-01-01-01",
        "03-01-01-01-02-02-12",
        "03-02-03-01-01-01-01",
        "01-01-04-01-01-01-01",
    ]
    for name in names:
        tone(tmp_path / "RAVDESS" / f"Actor_{name[-2:]}" / f"{name}.wav")
    _, items = prepare("ravdess", tmp_path / "RAVDESS", tmp_path / "m.csv")
    assert sorted((i.speaker, i.label) for i in items) == [
        ("Actor_01", "angry"),
        ("Actor_12", "neutral"),
    ]  # the song (02) and the video-modality file are left out


def test_cremad(tmp_path):
    for name in ("1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1091_TAI_SAD_LO", "bad_name"):
        tone(tmp_path / "CREMA-D" / "AudioWAV" / f"{name}.wav")
    _, items = prepare("cremad", tmp_path / "CREMA-D", tmp_path / "m.csv")
    assert sorted((i.speaker, i.label) for i in items) == [
        ("1001", "angry"),
        ("1001", "happy"),
        ("1091", "sad"),
    ]


def test_prepare_errors(tmp_path):
    with pytest.raises(ValueError, match="dataset must be one of"):
        prepare("timit", tmp_path, tmp_path / "m.csv")
    with pytest.raises(FileNotFoundError, match="corpus folder not found"):
        prepare("casia", tmp_path / "nope", tmp_path / "m.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no casia utterances found"):
        prepare("casia", tmp_path / "empty", tmp_path / "m.csv")


def test_manifest_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,emotion\na.wav,sad\n")
    with pytest.raises(ManifestError, match="header must be path,label,speaker"):
        read_manifest(bad)
    bad.write_text("path,label,speaker\na.wav,sad\n")
    with pytest.raises(ManifestError, match=r"bad.csv:2: expected 3 fields"):
        read_manifest(bad)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")


def test_feature_cache_computes_once(tmp_path, monkeypatch):
    wav = tmp_path / "a.wav"
    tone(wav, seconds=0.5)
    cache = FeatureCache(tmp_path / "cache")
    calls = []
    real = data.iter_audio
    monkeypatch.setattr(data, "iter_audio", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = cache.get(wav)
    second = FeatureCache(tmp_path / "cache").get(wav)
    assert torch.equal(first, second) and len(calls) == 1
    assert first.shape == (80, 1 + 8000 // 160)


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda lm: b"damaged", r"is unreadable \(UnpicklingError\)"),
        (lambda lm: lm[:, :0], "holds no frames"),
        (lambda lm: lm[:40], r"shape \(40, 51\), expected float32 \(80, frames\)"),
        (lambda lm: lm.double(), r"holds a torch\.float64 tensor"),
        (lambda lm: lm.index_fill(1, torch.tensor([3]), float("nan")), "holds NaN or Inf"),
        (lambda lm: {"x": lm}, "holds a dict, not a tensor"),
    ],
)
def test_damaged_cache_entry_is_rebuilt_with_a_warning_naming_it(tmp_path, damage, problem):
    wav = tmp_path / "a.wav"
    tone(wav, seconds=0.5)
    cache = FeatureCache(tmp_path / "cache")
    first = cache.get(wav)
    (entry,) = (tmp_path / "cache").glob("*.pt")
    bad = damage(first.clone())
    if isinstance(bad, bytes):
        entry.write_bytes(bad)
    else:
        torch.save(bad, entry)
    with pytest.warns(data.CacheWarning, match=rf"{re.escape(str(entry))}: damaged .*{problem}"):
        again = cache.get(wav)
    assert torch.equal(again, first)
    assert torch.equal(torch.load(entry, weights_only=True), first)  # rewritten


# ------------------------------------------------------------------ manifest checks (#13)
def write_rows(path, rows, header="path,label,speaker", bom=False, newline="\n"):
    text = newline.join([header, *(",".join(r) for r in rows)]) + newline
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_bom_and_crlf_are_accepted(tmp_path, newline):
    rows = [("a.wav", "sad", "s1"), ("b.wav", "angry", "s2")]
    plain = read_manifest(write_rows(tmp_path / "plain.csv", rows))
    spreadsheet = read_manifest(write_rows(tmp_path / "bom.csv", rows, bom=True, newline=newline))
    assert spreadsheet == plain
    assert [(i.path.name, i.label, i.speaker) for i in plain] == [
        ("a.wav", "sad", "s1"),
        ("b.wav", "angry", "s2"),
    ]


@pytest.mark.parametrize(
    "value,reason",
    [
        ("../../escaped_fold", "contains a path separator"),
        ("/tmp/escaped_fold", "is an absolute path"),
        ("..", r"is a relative path \(\. or \.\.\)"),
        (".", r"is a relative path \(\. or \.\.\)"),
        ("spk\\..\\x", "contains a path separator"),
        ("spk\x1b[2J", r"contains a control or non-printable character \('\\x1b'\)"),
        ("spk\x00", r"contains a control or non-printable character \('\\x00'\)"),
        ("x" * 256, "is longer than 255 bytes"),
    ],
)
@pytest.mark.parametrize("column", ["speaker", "session"])
def test_fold_names_that_are_paths_are_refused_with_the_row(tmp_path, value, reason, column):
    rows = [("a.wav", "sad", "s1", "S1"), ("b.wav", "angry", "s2", "S1")]
    bad = ("c.wav", "sad", value, "S2") if column == "speaker" else ("c.wav", "sad", "s3", value)
    manifest = write_rows(tmp_path / "m.csv", [*rows, bad], header="path,label,speaker,session")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    assert re.fullmatch(
        rf"{re.escape(str(manifest))}:4: {column} {re.escape(repr(value))} {reason}; "
        "speaker and session values name the fold directories of a training run",
        str(info.value),
    ), str(info.value)


def test_plain_names_pass():
    for value in ("Ses01F", "Actor_01", "spk 1", "ÄÖÜ-ß", "a..b", ".hidden", "1001"):
        assert manifest_csv.fold_name_problem(value) is None, value


def test_duplicate_rows_are_dropped_with_a_warning(tmp_path):
    rows = [
        ("a.wav", "sad", "s1"),
        ("b.wav", "angry", "s2"),
        ("a.wav", "sad", "s1"),
        ("c.wav", "sad", "s2"),
        ("./b.wav", "angry", "s2"),
    ]
    manifest = write_rows(tmp_path / "m.csv", rows)
    with pytest.warns(manifest_csv.ManifestWarning) as record:
        items = read_manifest(manifest)
    assert [i.path.name for i in items] == ["a.wav", "b.wav", "c.wav"]
    (warning,) = record
    assert str(warning.message) == (
        f"{manifest}: 2 duplicate row(s) dropped (line 4 repeats line 2, line 6 repeats line 3)"
    )


@pytest.mark.parametrize(
    "second,what",
    [
        (("sub/../a.wav", "sad", "s2", "S1"), "two speakers"),
        (("a.wav", "angry", "s1", "S1"), "two labels"),
        (("a.wav", "sad", "s1", "S2"), "two sessions"),
    ],
)
def test_one_file_under_two_speakers_is_refused_naming_both_rows(tmp_path, second, what):
    rows = [("a.wav", "sad", "s1", "S1"), ("b.wav", "angry", "s2", "S1"), second]
    manifest = write_rows(tmp_path / "m.csv", rows, header="path,label,speaker,session")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    first = "(sad, s1, S1)"
    other = "(" + ", ".join(second[1:]) + ")"
    assert str(info.value) == (
        f"{manifest}: {second[0]} is listed under {what}: line 2 {first} and line 4 {other}"
    )


def test_manifest_that_is_not_utf8(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,label,speaker\na.wav,sad,Jürgen\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"m\.csv: not UTF-8 text \(invalid"):
        read_manifest(manifest)


def test_features_that_overflow_name_the_file(tmp_path):
    """Samples that are finite but so large that their power overflows (inf log-Mel)."""
    wav = tmp_path / "loud.wav"
    sf.write(str(wav), np.full(8000, 3e38, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(data.AudioError, match=r"loud\.wav: log-Mel features are not finite"):
        FeatureCache(tmp_path / "cache").get(wav)
