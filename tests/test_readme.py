"""The README's Python example runs as written, and its set-up commands are the two it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_python_example_runs() -> None:
    [example] = re.findall(r"```python\n(.*?)```", README, re.S)
    result = subprocess.run([sys.executable, "-c", example], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "[NodeArg(name='input', type='tensor(float)', shape=[1, 784])]"
    shape, time_us = lines[1].split(") ")
    assert shape == "(1, 10" and float(time_us) > 0


def test_the_set_up_commands_stay_as_they_are() -> None:
    commands = [line for line in README.splitlines() if line.startswith("python3 -m venv .venv")]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/ttc run examples/mlp.onnx --golden",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/pytest -q -n auto",
    ]
