"""Checkpoints: round trip, atomic writes, and refusal of corrupted or mismatched files."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap

import helpers
import pytest
import torch
from helpers import VARIANTS, randomize, tiny_config

from atfnn_fast import ATFNN, ATFNNReference
from atfnn_fast import checkpoint as ckpt
from atfnn_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from atfnn_fast.features import FeatureConfig, NormStats

LABELS = ["angry", "happy", "sad"]


def saved(tmp_path, cfg=None, name="ckpt", **kwargs):
    model = randomize(ATFNN(cfg or tiny_config())).eval()
    stats = NormStats.fit([torch.randn(10, 40, dtype=torch.float64)])
    path = save_checkpoint(tmp_path / name, model, labels=LABELS, norm_stats=stats, **kwargs)
    return path, model, stats


def rewrite_meta(path, **changes):
    meta = json.loads((path / "config.json").read_text())
    meta.update(changes)
    (path / "config.json").write_text(json.dumps(meta))


def replace_weights(path, data: bytes):
    """Tamper with model.safetensors and record the new file's checksum, as an attacker
    (or a careless edit) with access to both files would."""
    (path / "model.safetensors").write_bytes(data)
    rewrite_meta(path, weights_sha256=hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cls", [ATFNN, ATFNNReference])
def test_round_trip_restores_everything(tmp_path, variant, cls):
    cfg = tiny_config(**VARIANTS[variant])
    path, model, stats = saved(tmp_path, cfg, features=FeatureConfig(f_max=7600.0))
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    loaded = load_checkpoint(path, model_class=cls)
    assert isinstance(loaded.model, cls)
    assert loaded.config == cfg
    assert loaded.labels == LABELS
    assert loaded.norm_stats == stats
    assert loaded.features == FeatureConfig(f_max=7600.0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    x = torch.randn(2, 1, 10, 16)
    with torch.no_grad():
        got, want = loaded.model.eval()(x), model(x)
    if cls is ATFNN:
        assert torch.equal(got, want)
    else:  # the reference computes the same math along another code path
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporaries left


def test_overwrite_replaces_the_old_checkpoint(tmp_path):
    path, _, _ = saved(tmp_path)
    _, second, _ = saved(tmp_path)
    loaded = load_checkpoint(path)
    for key, value in second.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert os.listdir(tmp_path) == ["ckpt"]


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path, _, _ = saved(tmp_path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    real = ckpt.write_new

    def broken_write(path, data, name_in_errors=None):
        if path.name != "config.json":
            return real(path, data, name_in_errors)
        path.write_bytes(data[: len(data) // 2])  # half-written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "write_new", broken_write)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, randomize(ATFNN(tiny_config())), labels=LABELS)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert os.listdir(tmp_path) == ["ckpt"]
    load_checkpoint(path)


def test_crash_mid_write_leaves_the_old_checkpoint_intact(tmp_path):
    """A process killed while writing (no cleanup runs) cannot damage the checkpoint."""
    path, _, _ = saved(tmp_path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(helpers.__file__)!r})
        from helpers import tiny_config
        from atfnn_fast import ATFNN, checkpoint
        def die(step, target):
            if step == "written":
                os._exit(9)  # hard crash: after every file is written, before the swap
        checkpoint._fault_hook = die
        checkpoint.save_checkpoint({str(path)!r}, ATFNN(tiny_config()))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    leftovers = [p for p in os.listdir(tmp_path) if p != "ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ckpt.")  # hidden, ignored
    assert leftovers[0].endswith(".new")
    assert load_checkpoint(path).labels == LABELS
    assert ckpt.recover_checkpoint(path) == [
        f"{path}: removed {leftovers[0]}, left by an interrupted save"
    ]
    assert os.listdir(tmp_path) == ["ckpt"]


def test_refuses_to_overwrite_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        save_checkpoint(tmp_path / "data", ATFNN(tiny_config()))
    assert (tmp_path / "data" / "keep.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_checkpoint(tmp_path / "file", ATFNN(tiny_config()))


def test_save_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="expected 3 names"):
        save_checkpoint(tmp_path / "c", ATFNN(tiny_config()), labels=["a"])
    with pytest.raises(TypeError, match="ATFNN or ATFNNReference"):
        save_checkpoint(tmp_path / "c", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="expected 10 bands"):
        save_checkpoint(
            tmp_path / "c", ATFNN(tiny_config()), norm_stats=NormStats((0.0,), (1.0,), 1)
        )


def test_corrupted_weights_are_refused(tmp_path):
    path, _, _ = saved(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256 differs"):
        load_checkpoint(path)


def test_truncated_weights_with_a_matching_checksum_are_refused(tmp_path):
    path, _, _ = saved(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    replace_weights(path, data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(path)


def test_pickle_payload_is_never_executed(tmp_path):
    """A pickle disguised as model.safetensors is refused without running its code."""
    path, _, _ = saved(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Payload())
    size = (path / "model.safetensors").stat().st_size  # a plausible size: parsed, refused
    replace_weights(path, payload + b"." * (size - len(payload)))
    with pytest.raises(CheckpointError, match="unreadable safetensors"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,pattern",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else"}', "not an atfnn-fast checkpoint"),
        ('["a list"]', "not an atfnn-fast checkpoint"),
    ],
)
def test_corrupted_config_is_refused(tmp_path, content, pattern):
    path, _, _ = saved(tmp_path)
    (path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    assert "config.json" in str(info.value)


def test_bad_metadata_values_are_refused(tmp_path):
    path, _, _ = saved(tmp_path)
    rewrite_meta(path, version=99)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)
    rewrite_meta(path, version=1, labels=["only-one"])
    with pytest.raises(CheckpointError, match="field 'labels': expected 3 names"):
        load_checkpoint(path)
    rewrite_meta(path, labels=None, model={"channels": -1})
    with pytest.raises(CheckpointError, match=r"field 'model': ATFNNConfig\.channels must be"):
        load_checkpoint(path)


def test_mismatched_config_lists_every_shape(tmp_path):
    path, _, _ = saved(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    rewrite_meta(path, model={**meta["model"], "channels": 6, "num_heads": 3})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "shape of f_attention.conv.weight: checkpoint (4, 1, 5, 1), model (6, 1, 5, 1)" in msg
    assert "shape of f_encoder.attn.in_proj_weight: checkpoint (12, 4), model (18, 6)" in msg
    assert "shape of t_encoder.weight_ih_l0: checkpoint (20, 40), model (20, 60)" in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _, _ = saved(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    del state["classifier.bias"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    replace_weights(path, (path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "missing key classifier.bias (3,)" in str(info.value)
    assert "unexpected key extra.weight (2,)" in str(info.value)


def test_missing_pieces(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nothing")
    path, _, _ = saved(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_checkpoint(path)
    (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_checkpoint(path)


# ------------------------------------------------------- untrusted checkpoints (#13)
def test_a_checkpoint_without_checksum_is_refused_and_can_be_resaved(tmp_path):
    path, model, _ = saved(tmp_path)
    rewrite_meta(path, weights_sha256=None)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path / 'config.json'}: has no weights_sha256, so ")
    assert f"resave_checkpoint({str(path)!r})" in str(info.value)
    assert ckpt.resave_checkpoint(path) == path
    meta = json.loads((path / "config.json").read_text())
    assert (
        meta["weights_sha256"]
        == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    )
    loaded = load_checkpoint(path)
    assert loaded.labels == LABELS
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in model.state_dict().items())


def test_non_finite_weights_are_refused_even_with_a_matching_checksum(tmp_path):
    from safetensors.torch import load_file, save_file

    path, _, _ = saved(tmp_path)
    state = load_file(str(path / "model.safetensors"))
    state["classifier.weight"][0, :2] = float("inf")
    state["classifier.bias"][2] = float("nan")
    save_file(state, str(path / "model.safetensors"))
    replace_weights(path, (path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path / 'model.safetensors'}: non-finite (NaN or Inf) weights in classifier.bias "
        "(1 of 3), classifier.weight (2 of 30)"
    )


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(frames=80_000_000), "frames = 80000000 exceeds the limit of 8192"),
        (dict(n_mels=100_000, f_group=5), "n_mels = 100000 exceeds the limit of 512"),
        (
            dict(n_mels=500, frames=8000, channels=8),
            "n_mels * frames * channels = 32000000 exceeds the limit of 16777216",
        ),
        (
            dict(lstm_hidden=4096, lstm_layers=16),
            "this config has 6,176,399,777 parameters, more than the limit of 200,000,000",
        ),
    ],
)
def test_sizes_in_config_json_are_bounded_before_any_allocation(tmp_path, changes, message):
    import resource

    path, _, _ = saved(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    rewrite_meta(path, model={**meta["model"], **changes}, norm_stats=None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path / 'config.json'}: field 'model': {message}"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_extra_files_travel_in_the_same_atomic_commit(tmp_path):
    path, _, _ = saved(tmp_path, extra_files={"state.json": b'{"epoch": 3}', "o.pt": b"x"})
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "o.pt", "state.json"]
    assert (path / "state.json").read_bytes() == b'{"epoch": 3}'
    with pytest.raises(ValueError, match=r"extra_files: '\.\./x' is not a plain file name"):
        saved(tmp_path, name="other", extra_files={"../x": b""})
    assert not (tmp_path / "other").exists()
