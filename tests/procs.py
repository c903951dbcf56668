"""Child processes for tests: each with a deadline, and nothing it started outlives it.

``run`` starts a command and waits for it; ``started`` keeps one running (a server, a run to kill) for
the body of a ``with`` block. The child leads a new process group (``start_new_session``) and carries
a mark in its environment that everything it starts inherits, so its whole tree is known even where
a launcher puts workers in sessions of their own (torchrun does, for each rank) or a worker outlives
its parent. On a timeout, a failure or the end of the block the tree goes: first a stack dump of
every process still running (``py-spy dump --native`` when installed, else Python's faulthandler,
which every child has on, via SIGABRT), then SIGTERM, then SIGKILL. The test fails with the dumps
and the tails of the child's stderr and stdout. ``free_port`` gives a port for distributed runs and
servers, so two runs on one machine never collide.

Example:
    >>> import sys
    >>> run([sys.executable, "-c", "print('hi')"], timeout=60).stdout
    'hi\\n'
"""

from __future__ import annotations

import contextlib
import itertools
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

#: In the environment of every child: the id of the outermost pytest process. A process that carries
#: it belongs to this test run even after its parent died and it was re-parented.
OWNER_ENV = "BUDGET_FORCING_TEST_OWNER"
#: In the environment of every child: space-separated marks, one per enclosing ``run``/``started``.
TREE_ENV = "BUDGET_FORCING_TEST_TREE"
TAIL_CHARS = 6000
GRACE_S = 5.0  # between SIGTERM and SIGKILL
_counter = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no one listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(env: Mapping[str, str] | None, mark: str) -> dict[str, str]:
    """``env`` (default: this process's environment) plus faulthandler (so SIGABRT prints every
    thread's Python stack), the owner for the end-of-run check and ``mark`` for the child's tree."""
    out = dict(os.environ if env is None else env)
    out["PYTHONFAULTHANDLER"] = "1"
    out.setdefault(OWNER_ENV, str(os.getpid()))  # a nested test run keeps the outermost owner
    out[TREE_ENV] = f"{out.get(TREE_ENV, '')} {mark}".strip()
    return out


def _alive(processes) -> list[psutil.Process]:
    alive = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def _scan(pid: int, belongs) -> list[psutil.Process]:
    """Live descendants of ``pid`` and every other process for which ``belongs(process)`` is true."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        found.update((p.pid, p) for p in psutil.Process(pid).children(recursive=True))
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if p.pid not in found and belongs(p):
                found[p.pid] = p
    return _alive(found.values())


def tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """``proc`` and the processes it started, while alive: its descendants, its process group, its mark."""
    return _scan(
        proc.pid,
        lambda p: os.getpgid(p.pid) == proc.pid or proc.mark in p.environ().get(TREE_ENV, "").split(),
    )


def leftovers() -> list[psutil.Process]:
    """The live processes this test run started: descendants of this process and, re-parented
    after their parent died, every process that carries this run's owner mark."""
    return _scan(os.getpid(), lambda p: p.environ().get(OWNER_ENV) == str(os.getpid()))


def dump_stacks(proc: subprocess.Popen) -> str:
    """The stack of every live process of ``proc``'s tree, for a failure report.

    ``py-spy dump --native`` (Python and C/C++ frames of every thread) where py-spy is installed and
    may attach; any process it could not read gets SIGABRT, on which faulthandler (enabled by
    ``child_env``) writes every thread's Python stack to that process's stderr, then the process dies.
    """
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    reports, aborted = [], []
    for member in tree(proc):
        header = f"--- pid {member.pid}"
        with contextlib.suppress(psutil.Error):
            header += ": " + " ".join(member.cmdline())[:200].replace("\n", " ")
        dumped = ""
        if py_spy:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                done = subprocess.run(
                    [py_spy, "dump", "--native", "--pid", str(member.pid)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                dumped = done.stdout if done.returncode == 0 else ""
        if not dumped:
            with contextlib.suppress(psutil.Error):
                member.send_signal(signal.SIGABRT)
                aborted.append(member)
            dumped = (
                "(no py-spy stack; sent SIGABRT: a Python process's faulthandler dump is in stderr below)\n"
            )
        reports.append(f"{header}\n{dumped}")
    psutil.wait_procs(aborted, timeout=5)  # let faulthandler finish writing before the tree is killed
    return "".join(reports)


def kill_tree(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """SIGTERM ``proc``'s group and tree, SIGKILL whatever is left after ``grace`` seconds, reap ``proc``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc.poll()  # reap the leader: a zombie is not alive
        members = tree(proc)
        if not members:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.send_signal(sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            if not tree(proc):
                break
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fail the test run if a process the tests started is still alive at its end (and kill it).

    Import it into a ``conftest.py`` to turn it on.
    """
    yield
    _, still = psutil.wait_procs(leftovers(), timeout=GRACE_S)  # one that is exiting gets a moment
    described = []
    for proc in still:
        with contextlib.suppress(psutil.Error):
            described.append(f"pid {proc.pid}: " + " ".join(proc.cmdline())[:300])
            proc.kill()
    if described:
        pytest.fail("processes left running by the tests (now killed):\n" + "\n".join(described))


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
    """Start ``cmd`` as the leader of a new process group, output to files; kill its tree at the end."""
    mark = f"{os.getpid()}-{next(_counter)}"
    with tempfile.TemporaryDirectory(prefix="test-proc-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                cwd=cwd,
                env=child_env(env, mark),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        proc.mark, proc.command, proc.stdout_path, proc.stderr_path = mark, shlex.join(proc.args), out, err
        try:
            yield proc
        finally:
            kill_tree(proc)


@contextlib.contextmanager
def started(
    cmd: Sequence[str | os.PathLike],
    *,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group for the body of the ``with`` block; kill its tree after.

    stdout and stderr go to files (a pipe nobody reads would block a chatty child), named by
    ``proc.stdout_path`` and ``proc.stderr_path``. When the body raises (a failed assertion, a
    pytest-timeout), the stacks of the processes still running and both tails are printed to stderr,
    which pytest shows with the failure.
    """
    with _child(cmd, cwd, env) as proc:
        try:
            yield proc
        except BaseException:
            stacks = dump_stacks(proc) if proc.poll() is None or tree(proc) else ""
            kill_tree(proc)
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

    The test fails on the deadline, when the command exits but processes it started keep running
    (after ``GRACE_S``), or when ``check`` and the exit code is not 0: with the stacks of the
    processes still running, then the tails of stderr and stdout. The tree is killed in every case.
    Returns stdout and stderr as text.
    """
    with _child(cmd, cwd, env) as proc:
        try:
            proc.wait(timeout)
        except BaseException as exc:  # the deadline, or a pytest-timeout / Ctrl-C while waiting
            stacks = dump_stacks(proc)
            kill_tree(proc)
            if not isinstance(exc, subprocess.TimeoutExpired):
                print(_report(proc, "interrupted", stacks), file=sys.stderr)
                raise
            what = f"did not finish within its {timeout:g} s deadline: it and its processes were killed"
            pytest.fail(_report(proc, what, stacks), pytrace=False)
        _, left = psutil.wait_procs(tree(proc), timeout=GRACE_S)
        if left:
            stacks = dump_stacks(proc)
            kill_tree(proc)
            what = f"exit code {proc.returncode}, but {len(left)} of its processes kept running: killed"
            pytest.fail(_report(proc, what, stacks), pytrace=False)
        if check and proc.returncode != 0:
            pytest.fail(_report(proc, f"exit code {proc.returncode}", ""), pytrace=False)
        stdout, stderr = _read(proc.stdout_path), _read(proc.stderr_path)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
