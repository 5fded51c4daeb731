"""The README's Python quickstart runs word for word."""

import os
import re
from pathlib import Path

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
    assert "torch.Size([16, 80, 128]) torch.Size([16, 80, 128])" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]
