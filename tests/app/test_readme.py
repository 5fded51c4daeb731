"""The README runs word for word: its Python quickstart, and the commands of its
first-hour section (every one parses; the slow test runs them all)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quickstart_runs(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no Python quickstart"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), {})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out.splitlines()
    # the timeline block (after the quickstart): a row per 1.28 s segment of the 6.3 s file
    rows = [line for line in out if re.fullmatch(r" ?\d+\.\d\d s to +\d+\.\d\d s: \w+", line)]
    assert [r.split(":")[0] for r in rows] == [
        " 0.00 s to  1.28 s", " 1.28 s to  2.56 s", " 2.56 s to  3.84 s", " 3.84 s to  5.12 s",
        " 5.12 s to  6.33 s",
    ]  # fmt: skip
    assert all(r.split(": ")[1] in ("angry", "happy", "sad", "neutral") for r in rows)
    out = [line for line in out if line not in rows]
    assert "torch.Size([16, 80, 128]) torch.Size([16, 80, 128])" in out
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
    # the quickstart ends by labelling a file: a label and its score, then the whole line
    label, score = out[-2].split()
    assert label in ("angry", "happy", "sad", "neutral") and 0.25 <= float(score) <= 1
    assert re.fullmatch(rf".*speech\.wav: {label} \((\w+ \d\.\d{{3}}(, )?){{4}}\)", out[-1])


def first_hour_commands() -> list[str]:
    """The shell commands of the README's first-hour section, continuation lines joined."""
    text = README.read_text()
    section = text[text.index("## Your first hour on a CPU") :]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_first_hour_commands_parse():
    from atfnn_fast.app.cli import build_parser

    commands = first_hour_commands()
    cli = [c for c in commands if c.startswith(".venv/bin/atfnn-fast ")]
    assert [shlex.split(c)[1] for c in cli] == [
        "datasets", "train", "evaluate", "predict", "export", "predict",
    ]  # fmt: skip
    assert "--preset tiny" in cli[1] and "--fold spk1" in cli[1]
    for command in cli:
        words = shlex.split(command.split(" #")[0].split(" > ")[0])[1:]
        build_parser().parse_args(words)  # exits (fails the test) on an unknown option
    assert any("download.pytorch.org/whl/cpu" in c for c in commands)  # the CPU-only hint


@pytest.mark.slow  # the whole first hour, minus the install: 1 to 20 minutes on 2 cores
def test_first_hour_runs_word_for_word(tmp_path):
    script = []
    for command in first_hour_commands():
        if command.startswith(".venv/bin/atfnn-fast "):
            script.append(command.replace(".venv/bin/atfnn-fast", "atfnn-fast", 1))
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", "-euc", "\n".join(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,  # 18 min measured for the training alone on two cores shared by other jobs
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert out[0].startswith("wrote ") and "160 utterances, 5 speakers" in out[0]
    result = next(line for line in out if line.startswith("test speaker spk1: "))
    uar = float(re.search(r"UAR (\d+\.\d)%", result).group(1))
    assert uar >= 60  # chance is 25%
    assert "first-hour/runs/spk1/best" in out
    assert any(line.startswith("fold spk1: WAR ") and f"UAR {uar}%" in line for line in out)
    assert any(line.startswith("first-hour/corpus/spk1/high_rising_0.wav: ") for line in out)
    assert "  PASS (relative tolerance 0.0001)" in out
    rows = (tmp_path / "first-hour" / "spk1.csv").read_text().splitlines()
    assert rows[0].startswith("path,label,") and len(rows) == 33
    assert "on ONNX Runtime CPUExecutionProvider" in proc.stderr
