"""Thread counts from what the machine can give, and no oversubscription in child processes."""

import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from procs import run

from budget_forcing import threads
from budget_forcing.threads import THREAD_VARS, cgroup_cpu_limit, other_load, pick_threads, thread_env


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [
        (2, 0.0, 2),
        (2, 0.4, 2),
        (2, 0.6, 1),
        (2, 1.0, 1),
        (2, 12.0, 1),
        (16, 3.2, 13),
        (16, 0.0, 16),
        (1, 0.0, 1),
    ],
)
def test_threads_are_the_cores_other_programs_leave_free(cores, load, expected):
    assert pick_threads(cores=cores, load=load) == expected


@given(st.integers(1, 512), st.floats(0, 1000, allow_nan=False))
def test_picked_threads_never_exceed_the_cores_nor_drop_below_one(cores, load):
    assert 1 <= pick_threads(cores=cores, load=load) <= cores


def test_requested_threads_win_and_bad_ones_name_the_fix():
    assert pick_threads(3, cores=2, load=5.0) == 3
    with pytest.raises(ValueError, match="leave it unset"):
        pick_threads(0)
    with pytest.raises(ValueError, match=">= 1"):
        thread_env(0)


def test_cgroup_quota_v2_v1_and_none(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 0.5
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_usable_cores_respect_the_cgroup_quota(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1.5)
    assert threads.usable_cores() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.usable_cores() == 8


def test_running_tasks_read_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nprocs_running 5\nprocs_blocked 0\n")
    assert threads._running_tasks(stat) == 5
    assert threads._running_tasks(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("average", "running", "expected"),
    [
        (1.9, 1, 0.0),  # a busy minute that just ended (an install before the run): the cores are free now
        (1.9, 2, 1.0),  # one other program running now and over the last minute
        (0.2, 4, 0.2),  # a burst right now that the last minute did not see: not worth giving cores up
    ],
)
def test_other_load_is_what_both_the_average_and_the_present_agree_on(
    monkeypatch, average, running, expected
):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (average, 0.0, 0.0))
    monkeypatch.setattr(threads, "_running_tasks", lambda: running)
    assert other_load(samples=3, interval=0.0) == pytest.approx(expected)


def test_thread_env_sizes_every_pool_and_turns_spinning_off():
    base = {"PATH": "/bin", "OMP_NUM_THREADS": "64"}
    env = thread_env(3, base)
    assert all(env[var] == "3" for var in THREAD_VARS)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["KMP_BLOCKTIME"] == "0"
    assert env["TOKENIZERS_PARALLELISM"] == "false" and env["PATH"] == "/bin"
    assert base["OMP_NUM_THREADS"] == "64"  # the input is left alone


def test_a_child_process_runs_torch_with_the_threads_it_was_given():
    code = "import torch; print(torch.get_num_threads())"
    env = thread_env(1, {k: v for k, v in os.environ.items() if k not in THREAD_VARS})
    out = run([sys.executable, "-c", code], env=env, timeout=120)
    assert out.stdout.strip() == "1"
