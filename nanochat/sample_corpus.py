"""An offline English corpus built from text that ships with every Python installation.

The documents are the docstrings and prose comment blocks of the standard library's source files (read with
`ast`/line scanning, never imported, so nothing runs) plus the language-reference topics of `pydoc_data`.
They are cleaned, de-duplicated, split into chunks of at most a few thousand characters, shuffled with a fixed
seed and written once to ``get_base_dir()/"sample"`` as parquet shards in the same layout as FineWeb-EDU:
a single ``text`` column, fixed-size row groups, ``shard_00000.parquet`` ... with the last shard holding the
validation documents.

The build is deterministic for a given Python installation, atomic (every file goes through a temporary file
and a rename; a manifest written last marks completion) and guarded by a file lock so that concurrent
processes build it once.
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import random
import re
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from nanochat.common import NanochatError, atomic_path, get_base_dir

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MAX_DOC_CHARS = 4000          # chunk size (documents longer than a training row get cropped anyway)
DOCS_PER_SHARD = 512          # train shards; the last (validation) shard holds VAL_DOCS documents
ROW_GROUP_DOCS = 128          # FineWeb uses 1024; the sample is small, so smaller groups keep several per shard
VAL_ROW_GROUP_DOCS = 16       # the small validation shard still has a row group for each of up to 8 ranks
VAL_FRACTION = 0.05
SHUFFLE_SEED = 20240517

_WORD = re.compile(r"[A-Za-z]{2,}")
_BOILER = re.compile(r"^(!|-\*-|noqa|type:|pragma|fmt:|pylint|XXX$|TODO$|FIXME$|vim?:|coding[:=])", re.I)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(root: Path) -> list[Path]:
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).as_posix()
        if any(part in ("site-packages", "dist-packages", "__pycache__") for part in p.relative_to(root).parts):
            continue
        if rel.startswith("lib2to3/tests/data") or "/badsyntax" in rel or rel.startswith("test/bad"):
            continue
        files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _is_prose(text: str, min_words: int = 6) -> bool:
    words = _WORD.findall(text)
    if len(words) < min_words:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / max(1, len(text)) >= 0.75


def _file_sections(path: Path, modname: str) -> list[tuple[int, str]]:
    """(line, text) sections of one source file: docstrings with a heading, and prose comment blocks."""
    try:
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError, RecursionError, MemoryError):
        return []
    try:
        lines = source.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines = source.decode("latin-1").splitlines()

    sections: list[tuple[int, str]] = []
    in_string = bytearray(len(lines) + 2)  # lines inside multi-line string literals are not comments

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc and _is_prose(doc, 3):
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    sections.append((child.lineno, f"{kind} {modname}.{name}\n{doc}"))
                visit(child, name + ".")
            else:
                if isinstance(child, (ast.Constant, ast.JoinedStr)):
                    end = getattr(child, "end_lineno", None)
                    if end is not None and end > child.lineno:
                        for i in range(child.lineno, end + 1):
                            in_string[i] = 1
                visit(child, prefix)

    doc = ast.get_docstring(tree, clean=True)
    if doc and _is_prose(doc, 3):
        sections.append((0, f"module {modname}\n{doc}"))
    visit(tree, "")

    block: list[str] = []
    start = 0
    for lineno, raw in enumerate(lines + [""], start=1):
        stripped = raw.strip()
        if stripped.startswith("#") and not in_string[lineno]:
            body = stripped.lstrip("#").strip()
            if _BOILER.match(body):
                continue
            if not block:
                start = lineno
            block.append(body)
            continue
        if block:
            text = inspect.cleandoc("\n".join(block))
            if _is_prose(text):
                sections.append((start, text))
            block = []
    sections.sort(key=lambda s: s[0])
    return sections


def _split(text: str, max_chars: int, seps: tuple[str, ...] = ("\n\n", "\n", " ")) -> list[str]:
    """Cut text into pieces of at most max_chars, preferring paragraph, then line, then word boundaries."""
    if len(text) <= max_chars:
        return [text]
    if not seps:
        return [text[i: i + max_chars] for i in range(0, len(text), max_chars)]
    sep, out, cur = seps[0], [], ""
    for part in text.split(sep):
        for piece in _split(part, max_chars, seps[1:]):
            if cur and len(cur) + len(sep) + len(piece) > max_chars:
                out.append(cur)
                cur = piece
            else:
                cur = f"{cur}{sep}{piece}" if cur else piece
    if cur:
        out.append(cur)
    return out


def _chunk(sections: Iterable[str], max_chars: int) -> Iterator[str]:
    """Join sections with blank lines into documents of at most max_chars (long sections are split)."""
    doc = ""
    for sec in sections:
        for piece in _split(sec, max_chars):
            if doc and len(doc) + 2 + len(piece) > max_chars:
                yield doc
                doc = piece
            else:
                doc = f"{doc}\n\n{piece}" if doc else piece
    if doc:
        yield doc


def iter_documents(root: Path | None = None, max_files: int | None = None,
                   max_chars: int = MAX_DOC_CHARS, include_topics: bool = True) -> Iterator[str]:
    """Documents in source order (not shuffled): per file, its de-duplicated sections chunked to max_chars."""
    root = Path(root) if root is not None else stdlib_root()
    seen: set[str] = set()
    files = _stdlib_files(root)
    if max_files is not None:
        files = files[:max_files]
    for path in files:
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modname = ".".join(parts) or rel.name
        fresh = []
        for _, text in _file_sections(path, modname):
            key = hashlib.sha1(text.split("\n", 1)[-1].encode()).hexdigest()
            if key in seen:
                continue
            seen.add(key)
            fresh.append(text)
        yield from _chunk(fresh, max_chars)
    if include_topics:
        topics = root / "pydoc_data" / "topics.py"
        try:
            tree = ast.parse(topics.read_bytes())
            table = {}
            for node in ast.walk(tree):
                if isinstance(node, ast.Dict):
                    for k, v in zip(node.keys, node.values):
                        if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and isinstance(v.value, str):
                            table[k.value] = v.value
                    break
        except (OSError, SyntaxError, ValueError):
            table = {}
        for key in sorted(table):
            text = inspect.cleandoc(table[key])
            if _is_prose(text):
                yield from _chunk([text], max_chars)


def build_documents(**kwargs) -> list[str]:
    docs = list(iter_documents(**kwargs))
    random.Random(SHUFFLE_SEED).shuffle(docs)
    return docs


def write_shards(docs: list[str], out_dir: Path, docs_per_shard: int = DOCS_PER_SHARD,
                 row_group_docs: int = ROW_GROUP_DOCS, val_fraction: float = VAL_FRACTION,
                 val_row_group_docs: int = VAL_ROW_GROUP_DOCS, extra_manifest: dict | None = None) -> list[Path]:
    """Write docs as FineWeb-style parquet shards (last shard = validation) plus a manifest, each atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(docs) < 2:
        raise NanochatError("sample corpus: fewer than 2 documents found in the Python installation")
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    train, val = docs[: len(docs) - n_val], docs[len(docs) - n_val:]
    groups = [train[i: i + docs_per_shard] for i in range(0, len(train), docs_per_shard)] + [val]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, group in enumerate(groups):
        path = out_dir / f"shard_{i:05d}.parquet"
        table = pa.table({"text": pa.array(group, type=pa.string())})
        rg = val_row_group_docs if i == len(groups) - 1 else row_group_docs
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=rg, compression="zstd")
        paths.append(path)
    manifest = {
        "format": FORMAT_VERSION,
        "files": [p.name for p in paths],
        "documents": [len(g) for g in groups],
        "chars": sum(len(d) for d in docs),
        "row_group_docs": row_group_docs,
        "val_row_group_docs": val_row_group_docs,
        "validation": paths[-1].name,
        **(extra_manifest or {}),
    }
    with atomic_path(out_dir / MANIFEST) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1))
    for stale in out_dir.glob("shard_*.parquet"):  # left over from an older layout
        if stale not in paths:
            stale.unlink(missing_ok=True)
    return paths


def sample_dir() -> Path:
    return get_base_dir() / "sample"


def read_manifest(directory: Path | None = None) -> dict | None:
    directory = Path(directory) if directory is not None else sample_dir()
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT_VERSION:
        return None
    if not all((directory / name).is_file() for name in manifest.get("files", [])):
        return None
    return manifest


def ensure_sample_corpus(directory: Path | None = None, **build_kwargs) -> Path:
    """Build the sample corpus once (lazily, under a file lock) and return its folder."""
    from filelock import FileLock

    directory = Path(directory) if directory is not None else sample_dir()
    if read_manifest(directory) is not None:
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if read_manifest(directory) is not None:  # built by another process while we waited
            return directory
        docs = build_documents(**build_kwargs)
        extra = {"python": sys.version.split()[0], "source": "CPython standard library docstrings/comments"}
        write_shards(docs, directory, extra_manifest=extra)
    return directory


if __name__ == "__main__":  # pragma: no cover - convenience
    d = ensure_sample_corpus()
    m = read_manifest(d)
    print(f"{d}: {len(m['files'])} shards, {sum(m['documents'])} documents, {m['chars'] / 1e6:.2f} M chars")
