"""The shared downloader (`nanochat.download`), through the shard download, against a local HTTP server that
misbehaves on purpose.

Every shard must end verified or absent (never half), Range resumes must really resume, permanent errors must
not be retried, and the per-file lock must prevent a second fetch. `Server` is also used by test_core_eval and
test_climbmix.
"""
from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.common import NanochatError
from nanochat.dataset import download_shard, download_shards, get_source, main, shard_name, verify_shard
from nanochat.download import Permanent, download_file

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(retries=3, backoff=0.001, timeout=5.0)


def make_shard(seed: int, column: str = "text") -> bytes:
    rng = random.Random(seed)
    docs = ["".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(50, 400))) for _ in range(300)]
    buf = BytesIO()
    pq.write_table(pa.table({column: docs}), buf, row_group_size=100, compression="none")
    return buf.getvalue()


class Server:
    """Serves `files` under `prefix` (any other path is a 404); `plan[name]` is a list of behaviours used one per
    request (then "ok")."""

    def __init__(self, prefix: str = "/data"):
        self.prefix = prefix
        self.paths: list[str] = []
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.log: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                rng_header = self.headers.get("Range")
                with outer.lock:
                    outer.paths.append(self.path)
                    outer.log.append((name, rng_header))
                    queue = outer.plan.get(name) or []
                    mode = queue.pop(0) if queue else outer.always.get(name, "ok")
                if mode == "slow":
                    time.sleep(0.4)
                if mode == "404" or name not in outer.files or self.path != f"{outer.prefix}/{name}":
                    return self._error(404)
                if mode == "503":
                    return self._error(503)
                data = outer.files[name]
                if mode == "corrupt":
                    data = random.Random(1).randbytes(len(data))
                if mode == "short":  # a complete response carrying a truncated file
                    data = data[: len(data) // 2]
                start = 0
                if rng_header and mode != "ignore_range":
                    start = int(rng_header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "drop":  # promise the whole body, send a third, hang up
                    self.wfile.write(body[: len(body) // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def _error(self, code):
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{prefix}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def requests(self, name: str) -> list[str | None]:
        return [r for n, r in self.log if n == name]


@pytest.fixture
def server():
    s = Server()
    for i in range(6):
        s.files[shard_name(i)] = make_shard(i)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def assert_clean(folder: Path):
    """Every shard file present verifies; no temporary files pose as shards."""
    for p in folder.glob("*.parquet"):
        assert verify_shard(p) is None, p
    assert not list(folder.glob("*.tmp"))


def test_downloads_n_plus_validation_in_parallel(server, tmp_path):
    paths = download_shards(3, base_url=server.url, directory=tmp_path, workers=3, total_shards=6, progress=False,
                            **FAST)
    assert [p.name for p in paths] == [shard_name(i) for i in (0, 1, 2, 5)]
    for p in paths:
        assert p.read_bytes() == server.files[p.name]
    assert not list(tmp_path.glob("*.partial"))
    assert_clean(tmp_path)
    # already present and verified: nothing is fetched again
    before = len(server.log)
    download_shards(3, base_url=server.url, directory=tmp_path, total_shards=6, progress=False, **FAST)
    assert len(server.log) == before
    src = get_source("fineweb_edu", dir=str(tmp_path), total_shards=6)
    assert len(src.files("train")) == 3 and src.num_documents("val") == 300


def test_dropped_connection_resumes_with_range(server, tmp_path):
    name = shard_name(0)
    server.plan[name] = ["drop", "drop"]
    download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)
    reqs = server.requests(name)
    assert reqs[0] is None and len(reqs) == 3
    starts = [int(r.split("=")[1].rstrip("-")) for r in reqs[1:]]
    assert 0 < starts[0] < starts[1] < len(server.files[name])  # each attempt continued where the last stopped
    assert (tmp_path / name).read_bytes() == server.files[name]
    assert not (tmp_path / (name + ".partial")).exists()


def test_server_ignoring_range_restarts(server, tmp_path):
    name = shard_name(1)
    server.plan[name] = ["drop", "ignore_range"]
    download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)
    assert server.requests(name)[1] is not None  # asked to resume, got the whole file back
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_server_errors_retry_then_fail(server, tmp_path):
    name = shard_name(2)
    server.plan[name] = ["503", "503"]
    download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)
    assert len(server.requests(name)) == 3 and verify_shard(tmp_path / name) is None
    name = shard_name(3)
    server.always[name] = "503"
    with pytest.raises(NanochatError, match=r"after 4 attempts.*HTTP 503"):
        download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)
    assert not (tmp_path / name).exists()
    assert len(server.requests(name)) == 4


def test_permanent_404_is_not_retried(server, tmp_path):
    with pytest.raises(NanochatError, match="HTTP 404"):
        download_shards(2, base_url=server.url, directory=tmp_path, total_shards=20, progress=False, **FAST)
    assert server.requests(shard_name(19)) == [None]  # the validation shard does not exist: one request only
    assert not (tmp_path / shard_name(19)).exists()
    assert_clean(tmp_path)


def test_corrupt_and_short_bodies_are_never_kept(server, tmp_path):
    name = shard_name(4)
    server.plan[name] = ["corrupt", "short"]
    download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)  # third attempt is fine
    assert (tmp_path / name).read_bytes() == server.files[name]
    server.always[shard_name(5)] = "corrupt"
    with pytest.raises(NanochatError, match="corrupt"):
        download_shard(f"{server.url}/{shard_name(5)}", tmp_path / shard_name(5), **FAST)
    assert not (tmp_path / shard_name(5)).exists()
    assert not (tmp_path / (shard_name(5) + ".partial")).exists()
    assert_clean(tmp_path)


def test_truncated_forever_keeps_only_a_partial(server, tmp_path):
    name = shard_name(0)
    server.always[name] = "drop"
    server.files[name] = server.files[name] * 1  # same bytes; every response hangs up early
    with pytest.raises(NanochatError, match="truncated"):
        download_shard(f"{server.url}/{name}", tmp_path / name, retries=1, backoff=0.001, timeout=5)
    assert not (tmp_path / name).exists()
    partial = tmp_path / (name + ".partial")
    assert partial.exists() and verify_shard(partial) is not None
    with pytest.raises(NanochatError, match="no FineWeb-EDU shards"):
        get_source("fineweb_edu", dir=str(tmp_path), total_shards=6)
    server.always.pop(name)
    download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)  # a later call resumes the partial file
    assert server.requests(name)[-1].startswith("bytes=")
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_shard_without_text_column_fails_clearly(server, tmp_path):
    name = shard_name(0)
    server.files[name] = make_shard(0, column="content")
    with pytest.raises(NanochatError, match="no 'text' column"):
        download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)
    assert len(server.requests(name)) == 1
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob("*.partial"))


def test_any_file_with_the_callers_check(server, tmp_path):
    """The downloader itself knows nothing of parquet: `verify` decides, and may declare a file hopeless."""
    server.files["notes.txt"] = b"hello " * 1000
    server.plan["notes.txt"] = ["drop"]
    assert download_file(f"{server.url}/notes.txt", tmp_path / "notes.txt", **FAST).read_bytes() == b"hello " * 1000
    assert server.requests("notes.txt")[1] == "bytes=2000-"  # resumed after the third the server sent

    def hopeless(path):
        raise Permanent("not what we asked for")

    with pytest.raises(NanochatError, match="not what we asked for"):
        download_file(f"{server.url}/notes.txt", tmp_path / "other.txt", hopeless, **FAST)
    assert len(server.requests("notes.txt")) == 3  # not retried
    assert not (tmp_path / "other.txt").exists() and not (tmp_path / "other.txt.partial").exists()


def test_network_down(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(NanochatError, match="network error"):
        download_shards(1, base_url=f"http://127.0.0.1:{port}", directory=tmp_path, total_shards=3,
                        progress=False, retries=1, backoff=0.001, timeout=2)
    assert not list(tmp_path.glob("*.parquet"))


def test_existing_corrupt_file_is_replaced(server, tmp_path):
    name = shard_name(1)
    (tmp_path / name).write_bytes(server.files[name][:1000])
    download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_lock_prevents_double_fetch_threads(server, tmp_path):
    name = shard_name(2)
    server.plan[name] = ["slow"]
    errors = []

    def fetch():
        try:
            download_shard(f"{server.url}/{name}", tmp_path / name, **FAST)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(server.requests(name)) == 1
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_lock_prevents_double_fetch_processes(server, tmp_path):
    name = shard_name(3)
    server.plan[name] = ["slow"]
    code = ("import sys; from nanochat.dataset import download_shard; "
            "download_shard(sys.argv[1], sys.argv[2], retries=1, backoff=0.001)")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"{server.url}/{name}", str(tmp_path / name)], cwd=ROOT)
             for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert len(server.requests(name)) == 1
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_cli(server, tmp_path, capsys):
    args = [f"base_url={server.url}", f"dir={tmp_path}", "total_shards=6", "backoff=0.001", "retries=1"]
    assert main(["download", "n=2", *args]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [shard_name(i) for i in (0, 1, 5)]
    assert main(["info", f"dir={tmp_path}", "total_shards=6"]) == 0
    assert "2 training shards, validation shard present" in capsys.readouterr().out
    server.always[shard_name(4)] = "404"
    proc = subprocess.run([sys.executable, "-m", "nanochat.dataset", "download", "n=5", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "404" in lines[0], proc.stderr
