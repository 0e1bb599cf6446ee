"""Runs one `ttc` command line per fuzz input and judges the outcome.

Each input runs in a child forked from a parent that has already imported ttc (so a thousand inputs cost a
thousand forks, not a thousand interpreter start-ups; the child is still a separate process: a crash, a hang
or a leak in one input cannot touch the next). The child

- records every file Python opens (an audit hook on `open`): anything outside the input's folder, the Python
  installation, ttc's own source, the system's libraries and /proc, /sys or /dev is "touched outside"
  (onnxruntime's own files count as allowed only when the command needed onnxruntime);
- runs `ttc.cli.main(argv)` with stdout and stderr sent to files of the input's folder;
- reports its exit code, the opened files outside and whether onnxruntime was imported.

The parent kills a child that runs past the time limit (a hang). With `strace=True` and strace installed,
strace is attached to the child before it starts (it waits on a pipe until the kernel shows the tracer) and
every file the child opens at the system-call level counts too (native code included).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

EXIT_NAMES = {0: "ok", 1: "golden failed", 2: "user error", 3: "device fault", 4: "internal error"}


@dataclass
class Outcome:
    """What one input did."""

    exit_code: int | None  # None: killed after the time limit (a hang)
    seconds: float
    outside: list[str] = field(default_factory=list)
    onnxruntime: bool = False
    stdout: str = ""
    stderr: str = ""

    @property
    def hang(self) -> bool:
        return self.exit_code is None


def allowed_roots(folder: Path) -> list[str]:
    """Where an input's run may open files: its folder, the Python installation (site-packages, the standard
    library), ttc's own source (an editable install), the system's libraries and the kernel's pseudo files."""
    roots = {str(folder.resolve()), sys.prefix, sys.base_prefix, sys.exec_prefix, str(ROOT / "ttc"),
             str(ROOT / "ir"), str(ROOT / "frontend"), str(ROOT / "passes"), str(ROOT / "backend"),
             str(ROOT / "runtime"), "/usr/lib", "/usr/local/lib", "/lib", "/lib64", "/usr/share/zoneinfo",
             "/proc", "/sys", "/dev", "/etc/ld.so.cache", "/etc/localtime"}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        roots.add(sysconfig.get_paths()[key])
    return sorted(os.path.realpath(r) for r in roots)


# What onnxruntime opens of its own accord when it creates a session (traced with strace on onnxruntime alone):
# its telemetry database under ~/.cache/Microsoft/DeveloperTools/.onnxruntime, /tmp/.ses and the container
# markers it probes. Allowed only when the command needed onnxruntime (a golden check or a host op).
_ONNXRUNTIME_OWN = ("/tmp/.ses", "/.dockerenv", "/run/.containerenv", "/run/systemd/container")


def _onnxruntime_own(path: str) -> bool:
    return "onnxruntime" in path or path in _ONNXRUNTIME_OWN


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


STRACE = shutil.which("strace")
_OPEN_CALL = re.compile(r'\b(?:open|openat|openat2|creat)\((?:[A-Z_]+|-?\d+), "((?:[^"\\]|\\.)*)"'
                        r'|\b(?:open|creat)\("((?:[^"\\]|\\.)*)"')
_RESULT = re.compile(r"= (-?\d+)")


def _strace_opens(trace: Path, folder: Path, roots: list[str]) -> list[str]:
    """Files the traced process opened (successfully, at the system-call level) outside `roots`."""
    if not trace.exists():
        return []
    outside = []
    for line in trace.read_text(errors="replace").splitlines():
        match = _OPEN_CALL.search(line)
        result = _RESULT.search(line[match.end():]) if match else None
        if not match or not result or int(result.group(1)) < 0:
            continue
        name = (match.group(1) or match.group(2)).encode().decode("unicode_escape", errors="replace")
        if not _inside(os.path.join(folder, name), roots):
            outside.append(name)
    return outside


def _attach_strace(pid: int, trace: Path) -> subprocess.Popen | None:
    """strace attached to `pid` (every thread and child, every open), once the kernel shows it tracing."""
    process = subprocess.Popen([STRACE, "-f", "-qq", "-s", "4096", "-e", "trace=open,openat,openat2,creat", "-o",
                                str(trace), "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        if re.search(r"TracerPid:\s+[1-9]", status):
            return process
        time.sleep(0.005)
    process.kill()
    process.wait()
    return None


def run_case(argv: list[str], folder: Path, timeout: float = 60.0, env: dict[str, str] | None = None,
             allowed: list[str] | None = None, strace: bool = False) -> Outcome:
    """Run `ttc argv` in a forked child with `folder` as its working directory; `allowed` names files it may
    open besides (the genuine source model of an artifact, which --golden opens when it matches). With
    `strace` (and strace installed), the child's opens are also traced at the system-call level."""
    folder = folder.resolve()
    roots = allowed_roots(folder) + [os.path.realpath(p) for p in allowed or ()]
    out_path, err_path, report_path = folder / ".stdout", folder / ".stderr", folder / ".report.json"
    trace_path = folder / ".strace"
    trace_path.unlink(missing_ok=True)
    strace = strace and STRACE is not None
    go_read, go_write = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child
        code = 4
        try:
            os.close(go_write)
            os.read(go_read, 1)  # wait until strace (if any) is attached
            os.close(go_read)
            os.chdir(folder)
            os.environ.update(env or {})
            opened: list[str] = []

            def audit(event: str, args: tuple) -> None:
                if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                    name = os.fsdecode(args[0]) if not isinstance(args[0], os.PathLike) else os.fspath(args[0])
                    if not _inside(os.path.join(folder, name), roots):
                        opened.append(name)

            out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            sys.addaudithook(audit)
            had_onnxruntime = "onnxruntime" in sys.modules
            from ttc.cli import main

            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
            sys.stdout.flush()
            sys.stderr.flush()
            report = {"code": code, "outside": sorted(set(opened)), "onnxruntime": had_onnxruntime or "onnxruntime" in sys.modules}
            fd = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, json.dumps(report).encode())
            os.close(fd)
        finally:
            os._exit(code if isinstance(code, int) and 0 <= code < 256 else 4)
    os.close(go_read)
    tracer = _attach_strace(pid, trace_path) if strace else None
    os.write(go_write, b"x")
    os.close(go_write)
    deadline = start + timeout
    status = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    if tracer is not None:
        try:
            tracer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait()
    stdout = out_path.read_text(errors="replace") if out_path.exists() else ""
    stderr = err_path.read_text(errors="replace") if err_path.exists() else ""
    if status is None:
        return Outcome(None, seconds, stdout=stdout, stderr=stderr)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal (a crash in native code): as bad as a traceback
        code = 4
    opened = [*report.get("outside", []), *_strace_opens(trace_path, folder, roots)]
    outside = sorted({p for p in opened if not (report.get("onnxruntime") and _onnxruntime_own(p))})
    return Outcome(code, seconds, outside, bool(report.get("onnxruntime")), stdout, stderr)
