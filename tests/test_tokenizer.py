"""nanochat.tokenizer: training, encoding/decoding, special tokens, persistence, errors."""
from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat.common import NanochatError, shared_data_dir
from nanochat import tokenizer as tk
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, compression_ratio

pytest.importorskip("nanochat_rustbpe")
torch = pytest.importorskip("torch")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def encode(self, text):\n    return [self.vocab[t] for t in text.split()]\n",
    "Numbers 1234567890 and 3.14159; dates 2024-01-31. Ünïcödé, 中文, русский, العربية 😀😀",
    "<|bos|> special strings inside documents stay ordinary text <|assistant_end|>",
] * 5


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, 256 + len(SPECIAL_TOKENS) + 120)


def test_train_sizes_and_specials(tok):
    n = len(SPECIAL_TOKENS)
    assert tok.vocab_size == 256 + n + 120
    assert [tok.encode_special(s) for s in SPECIAL_TOKENS] == list(range(256 + 120, 256 + 120 + n))
    assert tok.bos_token_id == tok.encode_special("<|bos|>")
    assert tok.pattern == tk.SPLIT_PATTERN
    with pytest.raises(NanochatError, match="unknown special token"):
        tok.encode_special("<|nope|>")


def test_patterns_match_the_extension():
    import nanochat_rustbpe

    assert tk.SPLIT_PATTERN == nanochat_rustbpe.GPT4_PATTERN
    assert tk.SPLIT_PATTERN_LATE == nanochat_rustbpe.GPT4_PATTERN_LATE


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_strings_in_text_stay_ordinary(tok):
    special_ids = set(range(tok.vocab_size - len(SPECIAL_TOKENS), tok.vocab_size))
    for name in SPECIAL_TOKENS:
        text = f"before {name} after{name}"
        ids = tok.encode(text)
        assert not special_ids & set(ids)
        assert tok.decode(ids) == text
        assert not special_ids & set(tok.encode([text, name])[1])


def test_batch_equals_single_and_prepend_append(tok):
    texts = CORPUS[:4] + ["", "x"]
    singles = [tok.encode(t) for t in texts]
    assert tok.encode(texts) == singles
    assert tok.encode(texts, num_threads=1) == singles
    bos = tok.bos_token_id
    end = tok.encode_special("<|assistant_end|>")
    assert tok.encode("hi", prepend="<|bos|>") == [bos] + tok.encode("hi")
    assert tok.encode("hi", prepend=bos, append="<|assistant_end|>") == [bos] + tok.encode("hi") + [end]
    assert tok.encode(texts, prepend=bos, append=end) == [[bos] + s + [end] for s in singles]
    assert tok.decode([bos] + tok.encode("hi")) == "<|bos|>hi"
    with pytest.raises(NanochatError):
        tok.encode("hi", prepend="<|nope|>")
    with pytest.raises(NanochatError):
        tok.encode("hi", append=tok.vocab_size)
    with pytest.raises(TypeError):
        tok.encode(123)


def test_decode_accepts_tensors_and_id_to_token(tok):
    ids = tok.encode("hello world")
    assert tok.decode(torch.tensor(ids)) == "hello world"
    assert "".join(tok.id_to_token(i) for i in ids) == "hello world"
    assert tok.id_to_token(tok.bos_token_id) == "<|bos|>"
    assert tok.id_to_token(ord("a")) == "a"


def test_token_bytes(tok):
    tb = tok.token_bytes(kind="raw")
    assert tb.dtype == torch.int32 and tb.shape == (tok.vocab_size,)
    ranks = tok.mergeable_ranks()
    for token, rank in ranks.items():
        assert tb[rank].item() == len(token)
    assert tb[-len(SPECIAL_TOKENS):].tolist() == [0] * len(SPECIAL_TOKENS)
    assert tb[:256].tolist() == [1] * 256
    text = CORPUS[2]
    assert int(tb[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_save_load_identity(tok, tmp_path):
    tok.save(tmp_path / "t")
    assert sorted(os.listdir(tmp_path / "t")) == ["token_bytes.pt", "tokenizer.pkl"]
    loaded = Tokenizer.load(tmp_path / "t")
    text = "".join(CORPUS[:4]) + " unseen: 🙃 مرحبا"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size and loaded.pattern == tok.pattern
    assert torch.equal(torch.load(tmp_path / "t" / "token_bytes.pt"), tok.token_bytes())
    assert tk.get_tokenizer(tmp_path / "t").encode(text) == tok.encode(text)


def test_pickle_round_trip(tok):
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.encode(CORPUS[2]) == tok.encode(CORPUS[2]) and copy.vocab_size == tok.vocab_size


def test_default_location(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    assert tk.default_tokenizer_dir() == tmp_path / "base" / "tokenizer"
    with pytest.raises(NanochatError, match="python train.py stage=tokenizer"):
        tk.get_tokenizer()
    tok.save(tk.default_tokenizer_dir())
    assert tk.get_tokenizer().encode("abc") == tok.encode("abc")


def test_failed_save_keeps_the_old_tokenizer(tok, tmp_path, monkeypatch):
    old = Tokenizer.byte_level()
    old.save(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("tokenizer.pkl", "token_bytes.pt")}

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tok.save(tmp_path)
    after = {name: (tmp_path / name).read_bytes() for name in ("tokenizer.pkl", "token_bytes.pt")}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["token_bytes.pt", "tokenizer.pkl"]  # no temporary files left
    assert Tokenizer.load(tmp_path).vocab_size == 256 + len(SPECIAL_TOKENS)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(NanochatError, match="no tokenizer at .*run `python train.py stage=tokenizer` first"):
        Tokenizer.load(tmp_path / "does-not-exist")
    bad = tmp_path / "bad"
    bad.mkdir()
    for content in [b"", b"garbage\x00\x01", pickle.dumps({"format": "other"}), pickle.dumps([1, 2, 3]),
                    pickle.dumps(os.path.join),  # refers to a function: refused, never imported or called
                    pickle.dumps({"format": "nanochat-tokenizer", "version": 1, "pattern": "x",
                                  "special_tokens": SPECIAL_TOKENS, "mergeable_ranks": {b"a": 0}})]:
        (bad / "tokenizer.pkl").write_bytes(content)
        with pytest.raises(NanochatError, match="corrupt tokenizer file") as e:
            Tokenizer.load(bad)
        assert "\n" not in str(e.value)
    good = tmp_path / "good"
    Tokenizer.byte_level().save(good)
    data = (good / "tokenizer.pkl").read_bytes()
    (good / "tokenizer.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(NanochatError, match="corrupt tokenizer file"):
        Tokenizer.load(good)


def test_training_errors():
    with pytest.raises(NanochatError, match="vocab_size must be at least 265"):
        Tokenizer.train(CORPUS, 264)
    with pytest.raises(NanochatError, match="pattern"):
        Tokenizer.train(CORPUS, 300, pattern="(?<unclosed")
    with pytest.raises(NanochatError, match="empty"):
        Tokenizer.train([], 300)
    with pytest.raises(NanochatError, match="empty"):
        Tokenizer.train(["", ""], 300)
    with pytest.raises(NanochatError, match="too small"):
        Tokenizer.train(["ab"], 10_000)
    with pytest.raises(NanochatError):
        Tokenizer({b"a": 0})
    with pytest.raises(NanochatError, match="pattern"):
        Tokenizer({bytes([b]): b for b in range(256)}, pattern="(unclosed")


def test_byte_level():
    t = Tokenizer.byte_level()
    assert t.vocab_size == 256 + len(SPECIAL_TOKENS)
    text = "héllo <|bos|> 😀"
    assert t.encode(text) == list(text.encode("utf-8"))
    assert t.decode(t.encode(text)) == text


def test_compression_ratio(tok):
    assert compression_ratio(tok, CORPUS) > compression_ratio(Tokenizer.byte_level(), CORPUS) == 1.0
    assert compression_ratio(tok.encoding, CORPUS) == compression_ratio(tok, CORPUS)
    with pytest.raises(NanochatError):
        compression_ratio(tok, [""])


def test_late_pattern_and_shakespeare():
    data = shared_data_dir()
    if data is None or not (data / "text" / "tinyshakespeare.txt").exists():
        pytest.skip("shared reference data not available")
    text = (data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    docs = [text[i:i + 10_000] for i in range(0, len(text), 10_000)]
    t = Tokenizer.train(docs[:-5], 2048, pattern=tk.SPLIT_PATTERN_LATE)
    assert t.pattern == tk.SPLIT_PATTERN_LATE
    held = docs[-5:]
    assert compression_ratio(t, held) > 2.5
    assert all(t.decode(t.encode(d)) == d for d in held)


def test_reference_encodings_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert tk.reference_encodings() == {}
    # a cached file with the wrong content is ignored too (tiktoken would try to re-download it)
    import hashlib

    for _, url, _ in tk._REFERENCE_FILES:
        (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"not the real file")
    assert tk.reference_encodings() == {}
