"""Packing strategies against hand-worked rows and a literal re-statement of the reference algorithms; exact resume
for every strategy over 2 ranks; the validation token set; bytes per token as the reference defines them."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanochat.common import NanochatError
from nanochat.dataloader import PackingLoader, reference_val_steps, val_loader
from nanochat.dataset import get_source
from nanochat.lit.datamodule import NanochatDataModule
from nanochat.packing import PACKINGS, default_packing, resolve_packing
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer
from tests.test_dataloader import take, write_corpus

TOK = Tokenizer.byte_level()  # one token per byte, so a document of k characters is k+1 tokens with its BOS
BOS = TOK.bos_token_id


def toks(text: str) -> list[int]:
    return [BOS] + list(text.encode())


def write_docs(folder, files: list[list[list[str]]], val: list[str] | None = None):
    """One parquet file per entry of `files`, one row group per inner list (documents)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f, groups in enumerate(files):
        with pq.ParquetWriter(folder / f"part_{f}.parquet", pa.schema([("text", pa.string())])) as w:
            for docs in groups:
                w.write_table(pa.table({"text": docs}))
    if val is not None:
        pq.write_table(pa.table({"text": val}), folder / "zz_val.parquet")
    return get_source("local", path=folder, val_file="zz_val.parquet" if val is not None else None,
                      val_fraction=0)


def rows_of(batches) -> list[list[list[int]]]:
    """Each batch back as its rows of T+1 tokens (row packers)."""
    return [torch.cat([i[:, :1], t], dim=1).tolist() for i, t in batches]


# token lengths with BOS: 6, 3, 11 (longer than a row of 8), 2, 5, 3, 7, 2
HAND = ["aaaaa", "bb", "cccccccccc", "d", "eeee", "ff", "gggggg", "h"]


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("hand"), [[HAND]])


def test_bestfit_hand_worked(hand):
    # T=7 (rows of 8), B=2, buffer 3, refills of 2 documents (the reference refills 128 at a time)
    loader = PackingLoader(hand, TOK, 2, 7, buffer_docs=3, read_docs=2, epochs=1, tokenizer_threads=1)
    got = rows_of(list(loader))
    a, b, c, d, e, f, g, h = (toks(t) for t in HAND)
    expected = [
        # row 1: buffer < 3 -> add [a b], still < 3 -> add [c d]; largest fitting 8 is a (6); 2 left: d (2)
        # row 2: buffer {b c} < 3 -> add [e f]; largest fitting 8 is e (5); 3 left: b and f tie -> the older, b
        [a + d, e + b],
        # row 1: buffer {c f} < 3 -> add [g h]; g (7) fits; 1 left: nothing fits -> the shortest, h, gives its BOS
        # row 2: buffer {c f}, stream over; f (3) fits; 5 left: only c (11), the shortest, fills them (6 cropped)
        [g + h[:1], f + c[:5]],
    ]
    assert got == expected
    stats = loader.stats
    assert (stats["tokens"], stats["cropped"], stats["dropped"], stats["docs"]) == (32, 1 + 6, 0, 8)
    assert stats["tokens"] + stats["cropped"] == sum(len(toks(t)) for t in HAND)


def test_cropfit_differs_on_long_documents(hand):
    # the earlier packer crops c to a whole row as it enters the buffer, so c becomes an exact fit, chosen first
    loader = PackingLoader(hand, TOK, 2, 7, buffer_docs=3, epochs=1, tokenizer_threads=1, packing="cropfit")
    first = rows_of(take(loader, 1))[0]
    a, b, c, d = (toks(t) for t in HAND[:4])
    assert first == [c[:8], a + d]


def test_concat_hand_worked(hand):
    # v0: every batch is the next B*T+1 = 15 tokens of the stream a b c d e f g h (39 tokens)
    loader = PackingLoader(hand, TOK, 2, 7, epochs=1, tokenizer_threads=1, packing="concat")
    batches = list(loader)
    stream = [t for text in HAND for t in toks(text)]
    assert len(batches) == 2
    for k, (inputs, targets) in enumerate(batches):
        window = stream[15 * k: 15 * k + 15]
        assert inputs.tolist() == [window[0:7], window[7:14]]  # rows start mid-document
        assert targets.tolist() == [window[1:8], window[8:15]]
    assert batches[0][0].tolist()[1] == toks("bb")[1:] + toks(HAND[2])[:5]  # row 2 of batch 1: end of b, start of c
    stats = loader.stats
    assert (stats["tokens"], stats["dropped"], stats["cropped"]) == (30, 39 - 30, 0)
    # the cursor after batch 1 points into c: 6 of its 11 tokens are consumed
    again = PackingLoader(hand, TOK, 2, 7, epochs=1, tokenizer_threads=1, packing="concat")
    take(again, 1)
    cursor = again.state_dict()
    assert (cursor["doc_offset"], cursor["token_offset"], cursor["buffer"]) == (2, 6, [])
    resumed = PackingLoader(hand, TOK, 2, 7, epochs=1, tokenizer_threads=1, packing="concat", cursor=cursor)
    (inputs, targets), = list(resumed)
    assert torch.equal(inputs, batches[1][0]) and torch.equal(targets, batches[1][1])


# ------------------------------------------------------------------------------------------------------------------
# literal statements of the reference algorithms (linear scans, list buffers) as oracles


def reference_docs(files, rank, world, chunk):
    """The reference's document fetch: files in order, row groups rank, rank+W, ... of each, `chunk` docs at a time;
    forever."""
    while True:
        for groups in files:
            for g in range(rank, len(groups), world):
                docs = groups[g]
                for i in range(0, len(docs), chunk):
                    yield [toks(t) for t in docs[i: i + chunk]]


def reference_bestfit(files, rank, world, B, T, buffer_size, chunk, n):
    batches, buf, out = reference_docs(files, rank, world, chunk), [], []
    for _ in range(n):
        rows = []
        for _ in range(B):
            row: list[int] = []
            while len(row) < T + 1:
                while len(buf) < buffer_size:
                    buf.extend(next(batches))
                remaining = T + 1 - len(row)
                best, best_len = -1, 0
                for i, doc in enumerate(buf):
                    if best_len < len(doc) <= remaining:
                        best, best_len = i, len(doc)
                if best >= 0:
                    row.extend(buf.pop(best))
                else:
                    shortest = min(range(len(buf)), key=lambda i: len(buf[i]))
                    row.extend(buf.pop(shortest)[:remaining])
            rows.append(row)
        out.append(rows)
    return out


def reference_concat(files, rank, world, B, T, n):
    stream = (t for chunk in reference_docs(files, rank, world, 128) for doc in chunk for t in doc)
    out = []
    for _ in range(n):
        window = [next(stream) for _ in range(B * T + 1)]
        out.append((window[:-1], window[1:]))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), world=st.sampled_from([1, 2]), buffer_docs=st.sampled_from([1, 4, 20]),
       chunk=st.sampled_from([2, 3, 128]))
def test_bestfit_and_concat_match_literal_reference(tmp_path_factory, data, world, buffer_docs, chunk):
    rng = random.Random(data.draw(st.integers(0, 10**6), label="seed"))
    files = [[["".join(rng.choice("abcxyz") for _ in range(rng.choice([0, 1, 2, 4, 6, 9, 15, 30])))
               for _ in range(rng.randint(1, 7))] for _ in range(rng.randint(world, 4))] for _ in range(2)]
    src = write_docs(tmp_path_factory.mktemp("lit"), files)
    B, T, n = 2, 9, 6
    for rank in range(world):
        ours = PackingLoader(src, TOK, B, T, rank=rank, world_size=world, buffer_docs=buffer_docs, read_docs=chunk,
                             tokenizer_threads=1)
        assert rows_of(take(ours, n)) == reference_bestfit(files, rank, world, B, T, buffer_docs, chunk, n)
        ours = PackingLoader(src, TOK, B, T, rank=rank, world_size=world, tokenizer_threads=1, packing="concat")
        got = [(i.flatten().tolist(), t.flatten().tolist()) for i, t in take(ours, n)]
        assert got == reference_concat(files, rank, world, B, T, n)


# ------------------------------------------------------------------------------------------------------------------
# exact resume, every strategy, 2 simulated ranks, across shard and epoch boundaries

N, K = 40, 5
_refs: dict = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder)  # 3 train files of 4, 2 and 3 row groups
    return get_source("local", path=folder, val_file="zz_val.parquet")


def make(source, packing, rank, buffer_docs, **kw):
    return PackingLoader(source, TOK, 2, 16, rank=rank, world_size=2, buffer_docs=buffer_docs, packing=packing,
                         tokenizer_threads=1, prefetch=2, **kw)


def reference_run(source, packing, rank, buffer_docs):
    key = (packing, rank, buffer_docs)
    if key not in _refs:
        loader = make(source, packing, rank, buffer_docs)
        it = iter(loader)
        batches, files = [], set()
        for _ in range(N):
            batches.append(next(it))
            files.add(loader.state_dict()["file_index"])
        it.close()
        assert loader.stats["epoch"] >= 2 and len(files) == 3  # the run crosses files and epochs
        _refs[key] = batches
    return _refs[key]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packing=st.sampled_from(PACKINGS), rank=st.sampled_from([0, 1]), buffer_docs=st.sampled_from([1, 5, 50]),
       stop=st.integers(0, N - K))
def test_exact_resume_every_packing(corpus, packing, rank, buffer_docs, stop):
    ref = reference_run(corpus, packing, rank, buffer_docs)
    first = make(corpus, packing, rank, buffer_docs)
    got = take(first, stop)
    cursor = json.loads(json.dumps(first.state_dict()))
    assert cursor["packing"] == packing and cursor["rank"] == rank
    resumed = make(corpus, packing, rank, buffer_docs, cursor=cursor)
    got += take(resumed, K)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, ref[: stop + K]))
    assert len(got) == stop + K


def test_cursor_of_another_packing_is_rejected(corpus):
    loader = make(corpus, "bestfit", 0, 5)
    take(loader, 2)
    with pytest.raises(NanochatError, match="packing"):
        make(corpus, "concat", 0, 5, cursor=loader.state_dict())
    with pytest.raises(NanochatError, match="unknown packing"):
        make(corpus, "greedy", 0, 5)


def test_preset_defaults():
    assert default_packing("jan2026") == "bestfit" and default_packing("v0") == "concat"
    assert resolve_packing(None, "v0") == "concat" and resolve_packing("cropfit", "jan2026") == "cropfit"
    with pytest.raises(NanochatError, match="preset"):
        default_packing("2019")
    with pytest.raises(NanochatError, match="unknown packing"):
        resolve_packing("best", "v0")


# ------------------------------------------------------------------------------------------------------------------
# validation: the token set the reference evaluates

VAL = ["aaaaa", "bbb", "cc", "dddddddddd"]  # 6, 4, 3 and 11 tokens


def test_validation_token_set_is_pinned(tmp_path):
    train = [[["some training text", "more"]]]
    src = write_docs(tmp_path / "v", train, val=VAL)
    dm = NanochatDataModule(src, tokenizer=TOK, batch_size=2, seq_len=7, buffer_docs=4, tokenizer_threads=1,
                            val_tokens=30, packing="concat")
    val = dm.val_dataloader()
    assert len(val) == 30 // (2 * 7) == reference_val_steps(30, 2, 7, 1) == 2
    batches = list(val)
    # The reference's val loader never ends: its first refills cycle this 4-document shard until the buffer holds
    # 1000 documents (250 copies of each). Every row: the oldest a (6) fits; 2 left, nothing fits -> the shortest,
    # the oldest c, gives its first 2 tokens. Each row's refill adds one more copy of each, so every row is the same;
    # b and d are never used.
    row = toks("aaaaa") + toks("cc")[:2]
    assert rows_of(batches) == [[row, row], [row, row]]
    assert rows_of(list(val)) == rows_of(batches)  # every validation run sees the same tokens
    # the training loader uses the chosen packing; validation stays best fit
    assert dm.packing == "concat" and dm.val_buffer_docs == 1000


def test_validation_ranks_take_alternate_row_groups(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    write_docs(folder, [[["train"]]])
    with pq.ParquetWriter(folder / "zz_val.parquet", pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": ["aaaaaa"]}))  # row group 0 -> rank 0
        w.write_table(pa.table({"text": ["bbbbbb"]}))  # row group 1 -> rank 1
    src = get_source("local", path=folder, val_file="zz_val.parquet", val_fraction=0)
    for rank, ch in ((0, "a"), (1, "b")):
        (inputs, targets), = list(val_loader(src, TOK, 1, 6, steps=1, rank=rank, world_size=2, tokenizer_threads=1))
        assert inputs[0].tolist() == toks(ch * 6)[:6]


def test_reference_val_steps():
    assert reference_val_steps(20 * 524288, 32, 2048, 8) == 20  # the reference's d20 speedrun evaluation
    assert reference_val_steps(10, 2, 7, 1) == 1  # at least one batch
    with pytest.raises(NanochatError):
        reference_val_steps(100, 0, 7, 1)


# ------------------------------------------------------------------------------------------------------------------
# bytes per token


def test_token_bytes_decoded_vs_raw(tmp_path):
    ranks = {bytes([b]): b for b in range(256)}
    extra = ["é".encode(), "你".encode()[:2], b"\x80\x81", b"<|bos|>"]  # complete, incomplete, 2 stray, a name
    for i, token in enumerate(extra):
        ranks[token] = 256 + i
    tok = Tokenizer(ranks)
    decoded, raw = tok.token_bytes(), tok.token_bytes(kind="raw")
    assert decoded[ord("a")] == raw[ord("a")] == 1
    assert decoded[0xE4] == 3 and raw[0xE4] == 1  # a lone lead byte decodes to U+FFFD: 3 bytes
    assert decoded[256:260].tolist() == [2, 3, 6, 0]  # "é"; one U+FFFD; two U+FFFD; a special token's name counts 0
    assert raw[256:260].tolist() == [2, 2, 2, 7]
    assert decoded[-len(SPECIAL_TOKENS):].tolist() == raw[-len(SPECIAL_TOKENS):].tolist() == [0] * len(SPECIAL_TOKENS)
    assert decoded[257] == len(tok.decode([257]).encode())
    with pytest.raises(NanochatError, match="kind"):
        tok.token_bytes(kind="utf8")
    # a folder saved with the raw definition still loads, and the loaded tokenizer gives the decoded definition
    tok.save(tmp_path / "t")
    torch.save(raw, tmp_path / "t" / "token_bytes.pt")
    loaded = Tokenizer.load(tmp_path / "t")
    assert torch.equal(loaded.token_bytes(), decoded)
    tok.save(tmp_path / "u")
    assert torch.equal(torch.load(tmp_path / "u" / "token_bytes.pt"), decoded)
