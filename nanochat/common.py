"""Small shared helpers: base directory, atomic writes, user-facing errors."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class NanochatError(Exception):
    """An error caused by the user's input or environment; printed as one line, exit code 1."""


def get_base_dir() -> Path:
    """Where caches live (sample corpus, downloaded shards, the latest tokenizer).

    $NANOCHAT_BASE_DIR, else ~/.cache/nanochat.
    """
    base = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (changing it races other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path beside `final`; on success it is fsynced and renamed over `final`.

    On any exception the temporary file is removed and `final` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would (0644 usually)
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        Path(tmp).write_bytes(data)


def read_json_cache(path: str | os.PathLike) -> dict:
    """A JSON object kept as a cache; {} when it is missing or damaged (a cache is only a shortcut)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError covers bad JSON and bad UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def update_json_cache(path: str | os.PathLike, key: str, value) -> None:
    """Set one entry of a JSON cache: re-read, merge, atomic rename (other entries, perhaps just written by another
    process, survive; the file is never half-written)."""
    import json

    data = read_json_cache(path)
    data[key] = value
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def shared_data_dir() -> Path | None:
    """Reference data for tests/benchmarks ($NANOCHAT_SHARED_DATA, default ../shared/data); None if absent."""
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    path = Path(os.environ.get("NANOCHAT_SHARED_DATA", default))
    return path if path.is_dir() else None


def knob(default=None, doc: str = "", *, low: float | None = None, high: float | None = None,
         choices: tuple | None = None, length: int | None = None, default_factory=None):
    """A dataclass field with the one-line doc and the valid range of a setting (its single definition).

    The type is the field's annotation; the config layer reads `doc`, `low`/`high` (inclusive) and `choices`
    from the metadata for --help and for the one-line error a bad value gets.
    """
    from dataclasses import MISSING, field

    meta = {"doc": doc, "low": low, "high": high, "choices": choices, "length": length}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default if default is not MISSING else MISSING, metadata=meta)
