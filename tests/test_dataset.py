"""Document sources: local folders (parquet / jsonl / txt), splits, fingerprints, errors, shard arithmetic."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.common import NanochatError
from nanochat.dataset import (GROUP_DOCS, disk_needs, disk_needs_table, get_source, iter_texts, params_for_depth,
                              shard_name, shards_needed)


def docs_for(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document number {i} " + "x" * (i % 7) for i in range(n)]


def write_parquet(path, docs, row_group_size=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs}), path, row_group_size=row_group_size)


def all_docs(src, split):
    return [d for _, _, docs in src.iter_row_groups(split) for d in docs]


def test_parquet_folder_split_by_files(tmp_path):
    for i in range(4):
        write_parquet(tmp_path / f"part_{i}.parquet", docs_for(f"f{i}", 10))
    src = get_source("local", path=str(tmp_path), val_fraction=0.25)
    assert [p.name for p in src.files("train")] == ["part_0.parquet", "part_1.parquet", "part_2.parquet"]
    assert [p.name for p in src.files("val")] == ["part_3.parquet"]
    assert all_docs(src, "train") == docs_for("f0", 10) + docs_for("f1", 10) + docs_for("f2", 10)
    # native row groups of 4 documents: 4 + 4 + 2
    assert [n for s, g, n in src.row_groups("train") if s == 0] == [4, 4, 2]
    assert src.read_row_group("train", 1, 2) == docs_for("f1", 10)[8:]
    # resuming mid-split
    rest = [(s, g) for s, g, _ in src.iter_row_groups("train", start=(1, 1))]
    assert rest[0] == (1, 1) and rest[-1] == (2, 2) and len(rest) == 5


def test_named_validation_file_and_nested_sorting(tmp_path):
    write_parquet(tmp_path / "b" / "x.parquet", docs_for("bx", 3))
    write_parquet(tmp_path / "a" / "y.parquet", docs_for("ay", 3))
    write_parquet(tmp_path / "held_out.parquet", docs_for("val", 3))
    src = get_source("local", path=tmp_path, val_file="held_out.parquet")
    assert [p.relative_to(tmp_path).as_posix() for p in src.files("train")] == ["a/y.parquet", "b/x.parquet"]
    assert all_docs(src, "val") == docs_for("val", 3)
    with pytest.raises(NanochatError, match="not found"):
        get_source("local", path=tmp_path, val_file="nope.parquet")


def test_single_parquet_file_split_by_documents(tmp_path):
    docs = docs_for("one", 40)
    write_parquet(tmp_path / "only.parquet", docs, row_group_size=16)
    src = get_source("local", path=tmp_path, val_fraction=0.1)
    assert all_docs(src, "train") == docs[:36] and all_docs(src, "val") == docs[36:]
    assert [n for _, _, n in src.row_groups("train")] == [16, 16, 4]
    assert [n for _, _, n in src.row_groups("val")] == [4]
    # a single file can also be passed directly
    assert all_docs(get_source("local", path=tmp_path / "only.parquet", val_fraction=0.1), "val") == docs[36:]
    no_val = get_source("local", path=tmp_path, val_fraction=0)
    assert not no_val.has_split("val") and all_docs(no_val, "train") == docs
    with pytest.raises(NanochatError, match="no val data"):
        no_val.files("val")


def test_jsonl_single_and_multi(tmp_path):
    docs = docs_for("j", 2 * GROUP_DOCS + 200)
    lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)]
    lines.insert(5, "")  # blank lines are ignored
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    src = get_source("local", path=tmp_path, val_fraction=0.05)
    n_val = round(len(docs) * 0.05)
    assert all_docs(src, "train") == docs[:-n_val] and all_docs(src, "val") == docs[-n_val:]
    assert [n for _, _, n in src.row_groups("train")] == [GROUP_DOCS, GROUP_DOCS, len(docs) - n_val - 2 * GROUP_DOCS]
    multi = tmp_path / "multi"
    multi.mkdir()
    for i in range(3):
        (multi / f"{i}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs_for(str(i), 5)))
    src = get_source("local", path=multi, val_fraction=0.3)
    assert [p.name for p in src.files("val")] == ["2.jsonl"]
    assert all_docs(src, "val") == docs_for("2", 5)


def test_txt_folder_one_document_per_file(tmp_path):
    for i in range(GROUP_DOCS + 30):
        (tmp_path / f"{i:05d}.txt").write_text(f"text file {i}\n")
    src = get_source("local", path=tmp_path, val_fraction=0.02)
    n_val = round((GROUP_DOCS + 30) * 0.02)
    train = all_docs(src, "train")
    assert len(train) == GROUP_DOCS + 30 - n_val and train[0] == "text file 0\n"
    assert [n for _, _, n in src.row_groups("train")] == [GROUP_DOCS, 30 - n_val]
    assert all_docs(src, "val")[-1] == f"text file {GROUP_DOCS + 29}\n"


def test_errors_are_one_clear_nanochat_error(tmp_path):
    with pytest.raises(NanochatError, match="does not exist"):
        get_source("local", path=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanochatError, match="no .parquet"):
        get_source("local", path=tmp_path / "empty")
    write_parquet(tmp_path / "bad" / "a.parquet", ["x"])
    pq.write_table(pa.table({"content": ["a", "b"]}), tmp_path / "bad" / "b.parquet")
    with pytest.raises(NanochatError, match="no 'text' column"):
        get_source("local", path=tmp_path / "bad")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "a.jsonl").write_text('{"body": "no text"}\n')
    with pytest.raises(NanochatError, match="'text'"):
        get_source("local", path=tmp_path / "badjson")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "a.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(NanochatError, match="cannot read parquet"):
        get_source("local", path=tmp_path / "corrupt")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text("lonely")
    with pytest.raises(NanochatError, match="at least 2"):
        get_source("local", path=tmp_path / "one")
    with pytest.raises(NanochatError, match="unknown data source"):
        get_source("webtext")
    with pytest.raises(NanochatError, match="bad options"):
        get_source("local", path=str(tmp_path / "one"), shuffle=True)
    with pytest.raises(NanochatError, match="needs path"):
        get_source("local")


def test_fingerprint_tracks_dataset_and_layout(tmp_path):
    for i in range(3):
        write_parquet(tmp_path / "a" / f"{i}.parquet", docs_for(str(i), 8))
    fp = get_source("local", path=tmp_path / "a").fingerprint
    assert fp == get_source("local", path=tmp_path / "a").fingerprint
    assert fp.startswith("local:")
    assert fp != get_source("local", path=tmp_path / "a", val_fraction=0.5).fingerprint
    write_parquet(tmp_path / "a" / "3.parquet", docs_for("3", 8))
    assert fp != get_source("local", path=tmp_path / "a").fingerprint


def test_iter_texts_caps(tmp_path):
    docs = ["a" * 50, "b" * 5, "c" * 30, "d" * 30]
    write_parquet(tmp_path / "0.parquet", docs)
    write_parquet(tmp_path / "1.parquet", ["val"])
    src = get_source("local", path=tmp_path)
    assert list(iter_texts(src, doc_cap=20)) == ["a" * 20, "b" * 5, "c" * 20, "d" * 20]
    assert list(iter_texts(src, max_chars=60, doc_cap=None)) == ["a" * 50, "b" * 5, "c" * 5]
    assert list(iter_texts(src, "val")) == ["val"]


@pytest.mark.parametrize("name,title", [("fineweb_edu", "FineWeb-EDU"), ("climbmix", "ClimbMix")])
def test_hub_source_needs_shards(tmp_path, name, title):
    with pytest.raises(NanochatError, match=f"no {title} shards .*nanochat.dataset download data={name} n=1"):
        get_source(name, dir=str(tmp_path))
    for i in (0, 1, 3):
        write_parquet(tmp_path / shard_name(i), docs_for(str(i), 3))
    with pytest.raises(NanochatError, match=f"{title} validation shard shard_00004.parquet missing"):
        get_source(name, dir=str(tmp_path), total_shards=5)
    write_parquet(tmp_path / shard_name(4), docs_for("4", 3))  # gap at 2: only 0..1 are usable by default
    src = get_source(name, dir=str(tmp_path), total_shards=5)
    assert src.name == name and [p.name for p in src.files("train")] == [shard_name(0), shard_name(1)]
    assert src.files("val") == [tmp_path / shard_name(4)]
    with pytest.raises(NanochatError, match="missing"):
        get_source(name, dir=str(tmp_path), total_shards=5, num_shards=3)


def test_shard_arithmetic():
    assert params_for_depth(20) == pytest.approx(561e6, rel=0.01)
    assert params_for_depth(16) == pytest.approx(335e6, rel=0.01)
    d20 = disk_needs(20)
    assert d20["tokens"] == pytest.approx(11.2e9, rel=0.01)
    assert 215 <= shards_needed(d20["tokens"], margin=1.0) <= 217
    assert 230 <= d20["shards"] <= 245  # the reference speedrun downloads 240
    assert shards_needed(1) == 1
    table = disk_needs_table()
    assert "| d20 |" in table and table.count("\n") >= 3


def test_fineweb_config_keys_are_accepted(tmp_path):
    for i in (0, 4):
        write_parquet(tmp_path / shard_name(i), docs_for(str(i), 3))
    src = get_source("fineweb_edu", dir=str(tmp_path), num_shards=1, total_shards=5, download_workers=2,
                     base_url="http://127.0.0.1:9")
    assert len(src.files("train")) == 1
