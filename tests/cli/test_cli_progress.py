"""Progress bars: per pass while compiling, per device program while running, on a terminal only, never with
--quiet, and only once the work has taken the delay (1 s by default; the CLI tests set TTC_PROGRESS_DELAY=0
so a small model shows its bar)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from ttc import zoo
from ttc.progress import Bar, NoBar, progress, progress_delay

TTC = [sys.executable, "-m", "ttc"]


def on_terminal(args: list[str], delay: str = "0") -> tuple[int, str, str]:
    """Run ttc with stderr on a pseudo-terminal (100 columns); returns the exit code, stdout and the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = dict(os.environ, TTC_PROGRESS_DELAY=delay)
    proc = subprocess.Popen([*TTC, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closes when the process ends
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode() if proc.stdout else ""
    proc.wait()
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "mlp.onnx"
    zoo.save(zoo.mlp(sizes=(64, 32, 10), batch=2), path)
    return path


def test_compile_and_run_show_bars_on_a_terminal(model_path: Path, tmp_path: Path) -> None:
    code, _, terminal = on_terminal(["compile", str(model_path), "-o", str(tmp_path / "m.ttc")])
    assert code == 0 and "step/s]" in terminal and "/12 [" in terminal  # import + 10 passes + packing
    assert f"wrote {tmp_path / 'm.ttc'}" in terminal
    code, out, terminal = on_terminal(["run", str(tmp_path / "m.ttc")])
    assert code == 0 and "logits: shape [2, 10]" in out and "run:" in terminal and "program/s]" in terminal
    assert "timings:" in terminal


def test_quiet_or_a_short_task_shows_no_bar(model_path: Path, tmp_path: Path) -> None:
    code, _, terminal = on_terminal(["compile", str(model_path), "-o", str(tmp_path / "m.ttc"), "--quiet"])
    assert code == 0 and terminal == ""
    code, _, terminal = on_terminal(["run", str(tmp_path / "m.ttc"), "-q"])
    assert code == 0 and terminal == ""
    code, _, terminal = on_terminal(["run", str(tmp_path / "m.ttc")], delay="30")  # the default delay's rule
    assert code == 0 and "program/s" not in terminal and "timings:" in terminal


def test_no_bar_when_stderr_is_not_a_terminal(model_path: Path, tmp_path: Path) -> None:
    env = dict(os.environ, TTC_PROGRESS_DELAY="0")
    result = subprocess.run([*TTC, "run", str(model_path)], capture_output=True, text=True, env=env, check=True)
    assert "/s]" not in result.stderr and "\r" not in result.stderr and "timings:" in result.stderr


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_appears_during_a_long_step_and_vanishes_at_the_end() -> None:
    """The delay's timer draws the bar while the first step still runs; closing erases it."""
    stream = FakeTerminal()
    with progress(3, "pass slow", "pass", enabled=True, stream=stream, delay=0.05) as bar:
        assert isinstance(bar, Bar)
        deadline = time.monotonic() + 5
        while bar.drawn is None and time.monotonic() < deadline:  # a slow first pass: no advance yet
            time.sleep(0.01)
        assert "pass slow:   0%" in stream.getvalue() and "0/3" in stream.getvalue()
        bar.advance(label="pass next")
    assert bar.drawn is not None and stream.getvalue().endswith("\r")  # leave=False: the line is cleared


def test_a_fast_task_draws_nothing_and_a_disabled_bar_is_inert() -> None:
    stream = FakeTerminal()
    with progress(3, "fast", "step", enabled=True, stream=stream, delay=5.0) as bar:
        for _ in range(3):
            bar.advance()
    assert stream.getvalue() == "" and isinstance(bar, Bar) and bar.count == 3 and bar.drawn is None
    assert not any(isinstance(t, threading.Timer) and t.is_alive() for t in threading.enumerate())
    with progress(3, "x", "step", enabled=False, stream=stream, delay=0) as bar:
        bar.advance()
    assert isinstance(bar, NoBar) and stream.getvalue() == ""
    with progress(3, "x", "step", enabled=True, stream=io.StringIO(), delay=0) as bar:  # not a terminal
        assert isinstance(bar, NoBar)


def test_the_delay_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTC_PROGRESS_DELAY", raising=False)
    assert progress_delay() == 1.0
    monkeypatch.setenv("TTC_PROGRESS_DELAY", "0.25")
    assert progress_delay() == 0.25
    monkeypatch.setenv("TTC_PROGRESS_DELAY", "soon")
    assert progress_delay() == 1.0
