"""The test-process rules hold: a hanging child and everything it started die with a report; no leftovers."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from procs import free_port, run, started

# A child that starts a grandchild, reports both pids and sleeps forever: a stuck launcher and its worker.
HANG = textwrap.dedent(
    """
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10_000)"])
    open(sys.argv[1], "w").write(f"{grandchild.pid} {__import__('os').getpid()}")
    print("stuck on purpose", file=sys.stderr, flush=True)
    def stuck_in_here():
        time.sleep(10_000)
    stuck_in_here()
    """
)


def _pids(path: Path, deadline: float = 30.0) -> list[int]:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if path.exists() and len(text := path.read_text().split()) == 2:
            return [int(p) for p in text]
        time.sleep(0.05)
    raise AssertionError(f"the child never wrote {path}")


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_hanging_child_is_killed_with_its_group_and_fails_with_its_stack(tmp_path):
    pids = tmp_path / "pids"
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        run([sys.executable, "-c", HANG, str(pids)], timeout=5)
    elapsed = time.monotonic() - start
    grandchild, child = _pids(pids)
    assert _dead(child) and _dead(grandchild)
    report = str(failed.value)
    assert "did not finish within its 5 s deadline" in report
    assert "stuck on purpose" in report  # the stderr tail
    assert "stuck_in_here" in report  # the stack of the stuck child (py-spy, or faulthandler on SIGABRT)
    assert elapsed < 5 + 60, f"took {elapsed:.0f} s to fail"  # deadline + dumps + SIGTERM grace


def test_a_failing_child_reports_its_exit_code_and_stderr():
    with pytest.raises(pytest.fail.Exception, match=r"(?s)exit code 3.*went wrong"):
        run(
            [sys.executable, "-c", "import sys; print('went wrong', file=sys.stderr); sys.exit(3)"],
            timeout=60,
        )
    done = run(
        [sys.executable, "-c", "import sys; print('out'); print('went wrong', file=sys.stderr)"], timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "went wrong\n")


def test_a_background_child_dies_with_the_block_even_when_the_body_fails(tmp_path, capfd):
    pids = tmp_path / "pids"
    with pytest.raises(AssertionError, match="body failed"), started([sys.executable, "-c", HANG, str(pids)]):
        _pids(pids)
        raise AssertionError("body failed")
    assert all(_dead(pid) for pid in _pids(pids))
    assert "stuck_in_here" in capfd.readouterr().err  # the stack dump comes with the failure


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 1024 <= port < 65536


def test_suite_timeout_interrupts_a_stuck_test_and_the_child_goes_with_it(tmp_path):
    """pytest-timeout stops a test stuck waiting on a child; the child's group is killed on the way out."""
    pids = tmp_path / "pids"
    (tmp_path / "test_stuck.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            from procs import run
            def test_stuck():
                run([sys.executable, "-c", {HANG!r}, {str(pids)!r}], timeout=10_000)
            """
        )
    )
    tests_dir = Path(__file__).parent
    done = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout",
            "5",
            "--rootdir",
            tmp_path,
        ]
        + [tmp_path / "test_stuck.py"],
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tests_dir)},
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout" in done.stdout and "1 failed" in done.stdout
    assert all(_dead(pid) for pid in _pids(pids))


def test_a_child_that_exits_but_leaves_a_worker_running_fails(tmp_path):
    """A launcher that returns while a worker it started (in a session of its own) still runs."""
    pids = tmp_path / "pids"
    leaver = textwrap.dedent(
        """
        import os, subprocess, sys
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10_000)"], start_new_session=True)
        open(sys.argv[1], "w").write(f"{worker.pid} {os.getpid()}")
        """
    )
    with pytest.raises(pytest.fail.Exception, match="exit code 0, but 1 of its processes kept running"):
        run([sys.executable, "-c", leaver, str(pids)], timeout=60)
    assert all(_dead(pid) for pid in _pids(pids))


def test_subprocess_is_not_used_directly_by_tests():
    """Every test starts processes through `procs`, so none escapes the group/deadline/cleanup rules."""
    offenders = [
        path.name
        for path in Path(__file__).parent.glob("*.py")
        if path.name not in {"procs.py", "test_procs.py"}
        and any(
            f"subprocess.{name}(" in path.read_text() for name in ("run", "Popen", "call", "check_output")
        )
    ]
    assert not offenders, f"start processes with tests/procs.py (run / started) instead: {offenders}"


def test_a_process_left_running_fails_the_test_run(tmp_path):
    """The session-end check (tests/conftest.py turns it on) fails a run that leaks a process, and kills it."""
    pids = tmp_path / "pids"
    (tmp_path / "conftest.py").write_text("from procs import no_process_left_behind  # noqa: F401\n")
    (tmp_path / "test_leak.py").write_text(
        textwrap.dedent(
            f"""
            import subprocess, sys
            def test_leak():
                leaked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10_000)"])
                open({str(pids)!r}, "w").write(f"{{leaked.pid}} {{leaked.pid}}")
            """
        )
    )
    done = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", tmp_path, tmp_path],
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "processes left running by the tests" in done.stdout
    assert all(_dead(pid) for pid in _pids(pids))
