"""The one downloader of nanochat: a file fetched over HTTP is either complete and verified, or it is not there.

Used for the hub shard sets, FineWeb-EDU and ClimbMix (`nanochat.hub_shards`), and the CORE eval bundle
(`nanochat.core_bundle`).

The one idea: bytes collect in ``<dest>.partial`` (an interrupted transfer resumes it with an HTTP Range request),
and only a body that has its announced size and passes the caller's `verify` check is renamed to ``dest``. A
per-file lock keeps two processes from fetching the same file. Failures are sorted into two kinds: `Permanent`
(404, a file of the wrong kind: fail at once) and `Transient` (5xx, dropped connection, truncated or corrupt body:
retry with exponential backoff), and end as one NanochatError line.
"""
from __future__ import annotations

import http.client
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Sequence

from nanochat.common import NanochatError

# verify(path) -> None when the file is usable, else the reason; it raises Permanent when re-fetching cannot help
Verify = Callable[[Path], "str | None"]


class Permanent(Exception):
    """Retrying cannot help (404, a file of the wrong kind)."""


class Transient(Exception):
    """Worth retrying (5xx, dropped connection, truncated or corrupt body)."""


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header; None for what it does not say."""
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    if not m:
        m2 = re.match(r"bytes \*/(\d+)", value or "")
        return (None, int(m2.group(1))) if m2 else (None, None)
    return int(m.group(1)), (None if m.group(2) == "*" else int(m.group(2)))


def fetch_once(url: str, partial: Path, timeout: float = 60.0, chunk: int = 1 << 20,
               on_bytes: Callable[[int], None] | None = None, user_agent: str = "nanochat") -> int | None:
    """One HTTP attempt appending to `partial` (resuming with Range). Returns the expected total size or None.

    Raises Permanent or Transient.
    """
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": user_agent}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            _, total = _content_range(e.headers.get("Content-Range"))
            if total is not None and total == have:
                return total  # already complete
            partial.unlink(missing_ok=True)
            raise Transient("server rejected the resume range; restarting") from e
        if e.code in (404, 410, 401, 403):
            raise Permanent(f"HTTP {e.code} {e.reason} for {url}") from e
        raise Transient(f"HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise Transient(f"network error: {reason}") from e
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                partial.unlink(missing_ok=True)
                raise Transient(f"server resumed at byte {start}, expected {have}; restarting")
            mode = "ab"
        elif status == 200:
            total, mode = length, "wb"  # fresh transfer, or a server that ignores Range: start over
            have = 0
        else:
            raise Transient(f"unexpected HTTP status {status}")
        received = 0
        try:
            with open(partial, mode) as f:
                while True:
                    block = resp.read(chunk)
                    if not block:
                        break
                    f.write(block)
                    received += len(block)
                    if on_bytes:
                        on_bytes(len(block))
        except (socket.timeout, ConnectionError, OSError, urllib.error.URLError) as e:
            if isinstance(e, OSError) and e.errno in (28,):  # ENOSPC: not worth retrying
                raise Permanent(f"cannot write {partial}: {e}") from e
            raise Transient(f"connection dropped after {have + received} bytes: {e}") from e
        except Exception as e:  # http.client.IncompleteRead and friends
            raise Transient(f"connection dropped after {have + received} bytes: {type(e).__name__}") from e
        if total is not None and have + received < total:
            raise Transient(f"truncated transfer: {have + received} of {total} bytes")
        return total


def _check(path: Path, total: int | None, verify: Verify | None) -> str | None:
    size = path.stat().st_size
    if total is not None and size != total:
        return f"size {size} bytes, expected {total}"
    return verify(path) if verify is not None else None


def download_file(url: str, dest: str | os.PathLike, verify: Verify | None = None, retries: int = 5,
                  backoff: float = 2.0, timeout: float = 60.0, chunk: int = 1 << 20,
                  on_bytes: Callable[[int], None] | None = None, lock_timeout: float = -1,
                  user_agent: str = "nanochat") -> Path:
    """Download `url` to `dest`, verified, resumable, under a per-file lock. Returns dest.

    A present `dest` that passes `verify` is kept (one that fails is deleted and fetched again). A complete body
    that fails `verify` is deleted (resuming cannot fix it) and fetched again; `verify` raising Permanent, or a
    404/403, fails at once. Other failures retry after ``backoff * 2**attempt`` seconds, then raise
    NanochatError; an unfinished `.partial` file stays for the next call to resume (it never counts as `dest`).
    """
    from filelock import FileLock, Timeout

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    lock = FileLock(str(dest) + ".lock", timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout as e:
        raise NanochatError(f"{dest.name}: another process holds {dest.name}.lock") from e
    try:
        if dest.exists():
            try:
                if _check(dest, None, verify) is None:
                    return dest
            except Permanent:
                pass
            dest.unlink()  # a file that fails verification never counts as present
        last = "no attempt made"
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * (2 ** (attempt - 1)) * (1 + 0.1 * random.random()))
            try:
                total = fetch_once(url, partial, timeout, chunk, on_bytes, user_agent)
                problem = _check(partial, total, verify)
                if problem is not None:
                    partial.unlink(missing_ok=True)  # complete but unusable: resuming cannot fix it
                    raise Transient(f"downloaded file is corrupt ({problem})")
                with open(partial, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(partial, dest)
                return dest
            except Permanent as e:
                partial.unlink(missing_ok=True)
                raise NanochatError(f"download of {dest.name} failed: {e}") from None
            except Transient as e:
                last = str(e)
        raise NanochatError(f"download of {dest.name} failed after {retries + 1} attempts: {last} ({url})")
    finally:
        lock.release()


def download_files(jobs: Sequence[tuple[str, Path]], verify: Verify | None = None, workers: int = 4,
                   progress: bool = True, desc: str = "downloading", unit: str = "file", **kwargs) -> None:
    """`download_file` for every (url, dest) of `jobs`, `workers` at a time; the first failure stops the rest.

    Files finished before the failure stay; the failure is raised as a NanochatError. Keyword arguments go to
    `download_file`.
    """
    from tqdm.auto import tqdm

    if not jobs:
        return
    bar = tqdm(total=len(jobs), unit=unit, desc=desc, disable=not progress, dynamic_ncols=True)
    nbytes = [0]

    def on_bytes(k: int) -> None:
        nbytes[0] += k

    def one(url: str, dest: Path) -> None:
        download_file(url, dest, verify, on_bytes=on_bytes, **kwargs)
        bar.set_postfix_str(f"{nbytes[0] / 1e6:.0f} MB")
        bar.update(1)

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="nanochat-download")
    try:
        futures = [pool.submit(one, url, dest) for url, dest in jobs]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
        if errors:
            err = errors[0]
            if isinstance(err, NanochatError):
                raise err
            raise NanochatError(f"download failed: {type(err).__name__}: {err}") from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
