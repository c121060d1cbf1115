"""The offline sample corpus: FineWeb-style format, determinism, locking, and the `sample` source."""
from __future__ import annotations

import threading

import pyarrow.parquet as pq
import pytest

from nanochat import sample_corpus as sc
from nanochat.dataset import get_source, iter_texts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    mp = pytest.MonkeyPatch()
    mp.setenv("NANOCHAT_BASE_DIR", str(base))
    try:
        yield sc.ensure_sample_corpus()
    finally:
        mp.undo()


def test_layout_matches_fineweb(built):
    manifest = sc.read_manifest(built)
    files = sorted(built.glob("shard_*.parquet"))
    assert [f.name for f in files] == manifest["files"]
    assert [f.name for f in files] == [f"shard_{i:05d}.parquet" for i in range(len(files))]
    assert len(files) >= 3
    total_docs = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert pq.ParquetFile(f).schema_arrow.names == ["text"]
        assert meta.num_row_groups >= 1
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        rg = manifest["val_row_group_docs"] if f == files[-1] else manifest["row_group_docs"]
        assert all(s == rg for s in sizes[:-1]) and 0 < sizes[-1] <= rg
        total_docs += sum(sizes)
    assert total_docs == sum(manifest["documents"])
    assert manifest["validation"] == files[-1].name
    assert pq.ParquetFile(files[-1]).metadata.num_row_groups >= 2  # enough for a few data-parallel ranks
    # "a few MB" of real English from the Python installation
    assert manifest["chars"] > 2_000_000


def test_documents_are_clean_english(built):
    texts = pq.read_table(built / "shard_00000.parquet").column("text").to_pylist()
    assert all(0 < len(t) <= sc.MAX_DOC_CHARS for t in texts)
    joined = " ".join(texts[:200]).lower()
    for word in (" the ", " and ", " return", " of "):
        assert word in joined
    assert len(set(texts)) == len(texts)


def test_second_call_reuses(built, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(built.parent))
    mtimes = [p.stat().st_mtime_ns for p in sorted(built.glob("*.parquet"))]
    monkeypatch.setattr(sc, "build_documents", lambda **kw: pytest.fail("rebuilt"))
    assert sc.ensure_sample_corpus() == built
    assert [p.stat().st_mtime_ns for p in sorted(built.glob("*.parquet"))] == mtimes


def test_sample_source(built, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(built.parent))
    src = get_source("sample")
    assert src.files("val") == [sorted(built.glob("shard_*.parquet"))[-1]]
    assert len(src.files("train")) == len(list(built.glob("shard_*.parquet"))) - 1
    docs = list(iter_texts(src, "val"))
    assert len(docs) == src.num_documents("val") > 0
    capped = list(iter_texts(src, "train", max_chars=10_000, doc_cap=100))
    assert all(len(d) <= 100 for d in capped) and sum(map(len, capped)) == 10_000


def test_deterministic_build(tmp_path):
    kw = dict(max_files=40, include_topics=False)
    a = sc.ensure_sample_corpus(tmp_path / "a", **kw)
    b = sc.ensure_sample_corpus(tmp_path / "b", **kw)
    names = sorted(p.name for p in a.glob("*.parquet"))
    assert names == sorted(p.name for p in b.glob("*.parquet")) and names
    for n in names:
        assert pq.read_table(a / n).equals(pq.read_table(b / n))
    assert sc.build_documents(**kw) == sc.build_documents(**kw)


def test_parallel_builders_build_once(tmp_path, monkeypatch):
    calls = []
    real = sc.build_documents

    def counting(**kw):
        calls.append(1)
        return real(**kw)

    monkeypatch.setattr(sc, "build_documents", counting)
    out = []
    threads = [threading.Thread(target=lambda: out.append(sc.ensure_sample_corpus(tmp_path / "s", max_files=20)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(out)) == 1
    assert not list((tmp_path / "s").glob("*.tmp"))
