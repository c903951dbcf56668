"""Child processes for tests: each in its own process group, with a deadline, and nothing left behind.

``run`` starts a command and waits for it; ``started`` keeps one running (a server, a run to kill) for
the body of a ``with`` block. Either way the child leads a new process group (``start_new_session``),
so everything it starts (accelerate's ranks, engines, tokenizer pools) is one group, and on a
timeout, a failure or the end of the block the whole group goes: first a stack dump of every
process still in it (``py-spy dump --native`` when installed, else Python's faulthandler, which
every child has enabled, via SIGABRT), then SIGTERM, then SIGKILL. The test then fails with the
dumps and the tail of the child's stderr and stdout. ``free_port`` gives a port for distributed
runs and servers, so two runs on one machine never collide.

Example:
    >>> import sys
    >>> run([sys.executable, "-c", "print('hi')"], timeout=60).stdout
    'hi\\n'
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import pytest

#: Set in the environment of every child, to the pytest process id: a process that carries it
#: belongs to this test run even after its parent died and it was re-parented.
OWNER_ENV = "BUDGET_FORCING_TEST_OWNER"
TAIL_CHARS = 6000
GRACE_S = 5.0  # between SIGTERM and SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no one listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) plus what every child gets: faulthandler on,
    so SIGABRT prints every thread's Python stack, and the owner mark the session-end check looks for."""
    out = dict(os.environ if env is None else env)
    out["PYTHONFAULTHANDLER"] = "1"
    out.setdefault(OWNER_ENV, str(os.getpid()))  # a nested test run keeps the outermost owner
    return out


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def dump_stacks(pgid: int) -> str:
    """The stack of every live process in group ``pgid``, for a failure report.

    ``py-spy dump --native`` (Python and C/C++ frames of every thread) where py-spy is installed and
    may attach; any process it could not read gets SIGABRT, on which faulthandler (enabled by
    ``child_env``) writes every thread's Python stack to that process's stderr, then the process dies.
    """
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    reports, aborted = [], []
    for proc in group_members(pgid):
        header = f"--- pid {proc.pid}"
        with contextlib.suppress(psutil.Error):
            header += ": " + " ".join(proc.cmdline())[:200].replace("\n", " ")
        dumped = ""
        if py_spy:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                done = subprocess.run(
                    [py_spy, "dump", "--native", "--pid", str(proc.pid)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                dumped = done.stdout if done.returncode == 0 else ""
        if not dumped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGABRT)
                aborted.append(proc)
            dumped = "(no py-spy stack; sent SIGABRT: faulthandler's dump is in its stderr below)\n"
        reports.append(f"{header}\n{dumped}")
    psutil.wait_procs(aborted, timeout=5)  # let faulthandler finish writing before the group is killed
    return "".join(reports)


def kill_group(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM the group ``proc`` leads, SIGKILL whatever is left after ``grace`` seconds, reap ``proc``."""

    def alive() -> bool:
        proc.poll()  # reap the leader: a zombie is not a live member
        return bool(group_members(proc.pid))

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive():
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)


def _read(path: Path, chars: int | None = None) -> str:
    """The text of ``path``, or its last ``chars`` characters."""
    text = path.read_bytes().decode("utf-8", "replace")
    return text if chars is None or len(text) <= chars else "[...]\n" + text[-chars:]


def _report(proc: subprocess.Popen, what: str, stacks: str) -> str:
    parts = [f"{proc.command}\n{what}"]
    if stacks:
        parts.append(f"=== stacks of the processes still running ===\n{stacks}")
    parts.append(f"=== stderr (tail) ===\n{_read(proc.stderr_path, TAIL_CHARS)}")
    parts.append(f"=== stdout (tail) ===\n{_read(proc.stdout_path, TAIL_CHARS // 3)}")
    return "\n".join(parts)


@contextlib.contextmanager
def _child(cmd: Sequence[str | os.PathLike], cwd, env) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` as the leader of a new process group, output to files; kill the group at the end."""
    with tempfile.TemporaryDirectory(prefix="test-proc-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                cwd=cwd,
                env=child_env(env),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        proc.command, proc.stdout_path, proc.stderr_path = shlex.join(proc.args), out, err
        try:
            yield proc
        finally:
            kill_group(proc)


@contextlib.contextmanager
def started(
    cmd: Sequence[str | os.PathLike],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group for the body of the ``with`` block; kill the group after.

    stdout and stderr go to files (a pipe nobody reads would block a chatty child), named by
    ``proc.stdout_path`` and ``proc.stderr_path``. When the body raises (a failed assertion, a
    pytest-timeout), the stacks of the processes still running and both tails are printed to stderr,
    which pytest shows with the failure.
    """
    with _child(cmd, cwd, env) as proc:
        try:
            yield proc
        except BaseException:
            stacks = dump_stacks(proc.pid) if proc.poll() is None or group_members(proc.pid) else ""
            kill_group(proc)
            print(_report(proc, f"exit code {proc.returncode}", stacks), file=sys.stderr)
            raise


def run(
    cmd: Sequence[str | os.PathLike],
    *,
    timeout: float,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end in its own process group, with a deadline of ``timeout`` seconds.

    On the deadline (or when ``check`` and the exit code is not 0) the test fails with the stacks of
    the processes still running, then the tails of stderr and stdout; the whole group is killed in
    every case, so processes the command left behind go too. Returns stdout and stderr as text.
    """
    with _child(cmd, cwd, env) as proc:
        try:
            proc.wait(timeout)
        except BaseException as exc:  # the deadline, or a pytest-timeout / Ctrl-C while waiting
            stacks = dump_stacks(proc.pid)
            kill_group(proc)
            if not isinstance(exc, subprocess.TimeoutExpired):
                print(_report(proc, "interrupted", stacks), file=sys.stderr)
                raise
            what = f"did not finish within its {timeout:g} s deadline: its process group was killed"
            pytest.fail(_report(proc, what, stacks), pytrace=False)
        if check and proc.returncode != 0:
            pytest.fail(_report(proc, f"exit code {proc.returncode}", ""), pytrace=False)
        stdout, stderr = _read(proc.stdout_path), _read(proc.stderr_path)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
