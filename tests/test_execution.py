"""The code sandbox: each attack is stopped, correct programs pass, nothing is left behind."""
import gzip
import json
import os
import socket
import sys
import time

import pytest

from nanochat.common import shared_data_dir
from nanochat.execution import run_program

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

CONNECT = """
import socket
try:
    s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("CONNECTED")
except OSError as e:
    print("BLOCKED", e.errno)
"""


@pytest.fixture()
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv
    srv.close()


def assert_no_connection(srv):
    srv.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing queued: the program never reached the server
        conn, _ = srv.accept()
        conn.close()


def test_trivial_program_passes():
    r = run_program("print(6 * 7)")
    assert r.passed and r.status == "passed" and r.output.strip() == "42"
    assert {"rlimits"} <= set(r.isolation)


def test_failure_exit_code_and_traceback():
    r = run_program("assert 1 == 2, 'nope'")
    assert not r.passed and r.status == "failed" and r.returncode == 1
    assert "AssertionError: nope" in r.output and "execution.py" not in r.output


def test_sys_exit_nonzero_fails():
    assert run_program("import sys; sys.exit(3)").returncode == 3


def test_socket_blocked(listener):
    r = run_program(CONNECT.format(port=listener.getsockname()[1]))
    assert "BLOCKED" in r.output and "CONNECTED" not in r.output
    assert_no_connection(listener)


@pytest.mark.parametrize("only", ["netns", "landlock-net", "seccomp"])
def test_each_network_layer_alone_blocks(listener, only):
    layers = {"netns", "landlock-net", "seccomp"}
    r = run_program(CONNECT.format(port=listener.getsockname()[1]), skip_layers=tuple(layers - {only}))
    if only not in r.isolation:
        pytest.skip(f"{only} is not available on this kernel")
    assert "BLOCKED" in r.output and "CONNECTED" not in r.output, r.output
    assert_no_connection(listener)


def test_refuses_to_run_without_network_isolation(listener):
    r = run_program(CONNECT.format(port=listener.getsockname()[1]),
                    skip_layers=("netns", "landlock-net", "seccomp"))
    assert r.status == "error" and not r.passed and "no network isolation" in r.output
    assert_no_connection(listener)


def test_write_outside_folder_blocked(tmp_path):
    target = tmp_path / "escape.txt"
    os.chmod(tmp_path, 0o777)  # ordinary permissions would allow it: the sandbox must still refuse
    r = run_program(f"open({str(target)!r}, 'w').write('x')\nprint('WROTE')")
    assert not r.passed and "WROTE" not in r.output and "PermissionError" in r.output
    assert not target.exists()


def test_write_inside_folder_allowed_and_removed():
    r = run_program("import os\nopen('a.txt', 'w').write('hello')\nprint(open('a.txt').read(), os.getcwd())")
    assert r.passed and r.output.startswith("hello")
    folder = r.output.split()[-1]
    assert not os.path.exists(folder)  # the throwaway folder is deleted


def test_fork_bomb():
    code = ("import os\nok = 0\nfor _ in range(200):\n    try:\n        if os.fork() == 0:\n            os._exit(0)\n"
            "        ok += 1\n    except OSError:\n        pass\nprint('forks', ok)")
    r = run_program(code, timeout=5)
    assert "forks 0" in r.output
    r = run_program("import subprocess; subprocess.run(['true'])")
    assert not r.passed and "PermissionError" in r.output


def test_infinite_loop_times_out_and_is_killed():
    t0 = time.monotonic()
    r = run_program("import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass", timeout=1.0)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - t0 < 4
    # the child was SIGKILLed and reaped: its pid is gone (or reused by an unrelated process)
    pid = int(r.output.split()[0])
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_other(pid)


def _is_zombie_or_other(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"--child" not in f.read()  # the pid was reused by something else
    except OSError:
        return True


def test_memory_bomb():
    r = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(16 << 20))", memory_mb=256)
    assert r.status == "memory" and not r.passed
    r = run_program("x = bytearray(1 << 30)", memory_mb=256)
    assert r.status == "memory"


def test_huge_output_capped():
    t0 = time.monotonic()
    r = run_program("while True:\n    print('y' * 1000)", max_output=10_000, timeout=5)
    assert r.status == "output_limit" and not r.passed
    assert len(r.output) <= 10_000
    assert time.monotonic() - t0 < 4


def test_environment_scrubbed(monkeypatch):
    monkeypatch.setenv("NANOCHAT_SECRET_TOKEN", "hunter2")
    r = run_program("import os\nprint(sorted(os.environ))")
    assert r.passed and "NANOCHAT_SECRET_TOKEN" not in r.output


def _humaneval():
    root = shared_data_dir()
    path = root / "humaneval" / "HumanEval.jsonl.gz" if root else None
    if path is None or not path.exists():
        pytest.skip("HumanEval.jsonl.gz not in the shared data")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_humaneval_canonical_solution_passes():
    problems = _humaneval()
    for p in problems[:3]:
        program = p["prompt"] + p["canonical_solution"] + "\n\n" + p["test"] + f"\n\ncheck({p['entry_point']})\n"
        r = run_program(program)
        assert r.passed, (p["task_id"], r.output)
    p = problems[0]
    wrong = p["prompt"] + "    return None\n\n" + p["test"] + f"\n\ncheck({p['entry_point']})\n"
    assert run_program(wrong).status == "failed"
