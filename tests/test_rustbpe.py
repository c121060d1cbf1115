"""nanochat_rustbpe: BPE training against a plain Python reference, the fast pre-tokeniser
against the regex engine, determinism, errors, and loading the result into tiktoken."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nanochat.common import shared_data_dir

rb = pytest.importorskip("nanochat_rustbpe")


# ----------------------------------------------------------------------------- reference

def reference_bpe(texts, vocab_size, pattern=None):
    """Straightforward BPE: recount all pairs for every merge.

    Highest count wins, ties go to the smallest (left id, right id); a pair whose bytes
    already form a token is skipped for good. Returns the token bytes by rank, or None when
    the corpus runs out of pairs first.
    """
    counts = {}
    for t in texts:
        for chunk in rb.split(t, pattern):
            counts[chunk] = counts.get(chunk, 0) + 1
    words = [(list(chunk.encode("utf-8")), c) for chunk, c in counts.items()]
    tokens = [bytes([b]) for b in range(256)]
    known = set(tokens)
    banned = set()
    while len(tokens) < vocab_size:
        pair_counts = {}
        for w, c in words:
            for p in zip(w, w[1:]):
                pair_counts[p] = pair_counts.get(p, 0) + c
        candidates = [(-c, p) for p, c in pair_counts.items() if c > 0 and p not in banned]
        if not candidates:
            return None
        _, (a, b) = min(candidates)
        new_bytes = tokens[a] + tokens[b]
        if new_bytes in known:
            banned.add((a, b))
            continue
        new_id = len(tokens)
        tokens.append(new_bytes)
        known.add(new_bytes)
        for w, _ in words:
            i, out = 0, []
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            w[:] = out
    return tokens


def train(texts, vocab_size, **kw):
    ranks = rb.train_from_iterator(iter(texts), vocab_size, **kw)
    assert [r for _, r in ranks] == list(range(len(ranks)))
    return [bytes(t) for t, _ in ranks]


SMALL_CORPORA = [
    ["aaaa aaa aa a abab ababab bababa"],
    ["the cat sat on the mat; the cat ate the rat.", "1234567 12 123 ۱۲۳۴", "hello hello 'll 've 're"],
    ["  \n\n\t x  y\r\n z", "ÉÉé ée ß ẞ ǅ", "中文中文中 文", "😀😀 😀👍🏽👍🏽"],
]


def assert_matches_reference(corpus, vocab_size):
    """Same merges as the Python reference, or the same 'too small' verdict."""
    want = reference_bpe(corpus, vocab_size)
    if want is None:
        with pytest.raises(ValueError, match="too small"):
            train(corpus, vocab_size)
    else:
        assert train(corpus, vocab_size) == want


@pytest.mark.parametrize("corpus", SMALL_CORPORA)
@pytest.mark.parametrize("vocab_size", [256, 257, 275, 300])
def test_matches_reference_on_small_corpora(corpus, vocab_size):
    assert_matches_reference(corpus, vocab_size)


def test_matches_reference_on_shakespeare():
    data = shared_data_dir()
    if data is None or not (data / "text" / "tinyshakespeare.txt").exists():
        pytest.skip("shared reference data not available")
    text = (data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    docs = [text[i:i + 3000] for i in range(0, len(text), 3000)]
    assert train(docs, 400) == reference_bpe(docs, 400)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    corpus=st.lists(st.text(alphabet=st.sampled_from(list("aab ba\n1é'sx")), max_size=40), max_size=5),
    extra=st.integers(min_value=0, max_value=30),
)
def test_matches_reference_on_generated_corpora(corpus, extra):
    vocab_size = 256 + extra
    has_chunks = any(rb.split(t) for t in corpus)
    if not has_chunks:
        with pytest.raises(ValueError, match="empty"):
            train(corpus, vocab_size)
        return
    assert_matches_reference(corpus, vocab_size)


def test_matches_reference_with_custom_and_late_patterns():
    corpus = ["abc abc abd 12345 678901 hello, world!!", "x_y x_y zz 99999"]
    for pattern in [rb.GPT4_PATTERN_LATE, r"\w+|\s+|[^\w\s]+"]:
        assert train(corpus, 280, pattern=pattern) == reference_bpe(corpus, 280, pattern)


def test_same_result_for_any_buffer_size():
    docs = [f"document {i}: the quick brown fox {i * 37} jumps; über straße {i % 7}" for i in range(400)]
    want = train(docs, 420)
    for buffer_size in [1, 3, 64, 100_000]:
        assert train(docs, 420, buffer_size=buffer_size) == want
    # a generator works as well as a list
    assert train((d for d in docs), 420) == want


def test_same_result_for_any_thread_count():
    import os
    import subprocess
    import sys

    code = (
        "import nanochat_rustbpe as rb\n"
        "docs = [f'doc {i}: alpha beta {i * 31} gamma, delta; {i % 11}' for i in range(500)]\n"
        "print(','.join(bytes(t).hex() for t, _ in rb.train_from_iterator(docs, 450, buffer_size=50)))\n"
    )
    docs = [f"doc {i}: alpha beta {i * 31} gamma, delta; {i % 11}" for i in range(500)]
    want = ",".join(t.hex() for t in train(docs, 450))
    for threads in ("1", "3"):
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want


def test_matches_registry_rustbpe():
    ref = pytest.importorskip("rustbpe")
    if not hasattr(ref, "Tokenizer"):  # only the repo's rustbpe/ folder seen as a namespace package
        pytest.skip("the reference rustbpe package is not installed (pip install '.[bench]')")
    docs = [f"line {i}: some words repeat, some words don't; {i * i}\n" for i in range(300)]
    tok = ref.Tokenizer()
    tok.train_from_iterator(iter(docs), 500)
    assert train(docs, 500) == [bytes(t) for t, _ in tok.get_mergeable_ranks()]


# ----------------------------------------------------------------------------- pre-tokenisation

def _regex_engine(pattern):
    # Any pattern text other than the two GPT-4 patterns goes through the regex engine, so
    # wrapping the pattern in a group gives the same language but the slow path.
    return "(?:" + pattern + ")"


TRICKY = list("''''sSdDmMtTlLvVeErR") + ["\u017f"] + list("azé ßЖλ中アعह") + [
    "\u0301", "\u093f", "\u200d", "0", "7", "٣", "५", "²", "½", "Ⅻ", " ", " ", " ", "\t", "\n", "\r", "\r\n",
    "\x0b", "\x0c", "\x85", "\xa0", "\u2028", "\u3000", "\u200b", ".", ",", "!", "-", "_", "(", '"', "#", "€",
    "😀", "👍🏽", "\x00", "\ufeff",
]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(TRICKY), max_size=30).map("".join)))
def test_fast_scanner_equals_regex_engine(text):
    for pattern in (rb.GPT4_PATTERN, rb.GPT4_PATTERN_LATE):
        fast = rb.split(text, pattern)
        assert fast == rb.split(text, _regex_engine(pattern))
        assert "".join(fast) == text


def test_split_examples():
    assert rb.split("Hello world's 12345!!\n") == ["Hello", " world", "'s", " ", "123", "45", "!!\n"]
    assert rb.split("12345", rb.GPT4_PATTERN_LATE) == ["12", "34", "5"]
    assert rb.split("") == []
    assert rb.GPT4_PATTERN == (
        r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|"
        r"\s*[\r\n]|\s+(?!\S)|\s+"
    )
    assert rb.GPT4_PATTERN_LATE == rb.GPT4_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}{1,2}")


# ----------------------------------------------------------------------------- errors

def test_errors():
    with pytest.raises(ValueError, match="at least 256"):
        rb.train_from_iterator(["abc"], 255)
    with pytest.raises(ValueError, match="pattern"):
        rb.train_from_iterator(["abc"], 300, pattern="(unclosed")
    with pytest.raises(ValueError, match="pattern"):
        rb.split("abc", "[z-a]")
    with pytest.raises(ValueError, match="empty"):
        rb.train_from_iterator([], 300)
    with pytest.raises(ValueError, match="empty"):
        rb.train_from_iterator(["", ""], 256)
    with pytest.raises(ValueError, match="too small"):
        rb.train_from_iterator(["ab ab ab"], 1000)
    with pytest.raises(ValueError, match="buffer_size"):
        rb.train_from_iterator(["ab"], 300, buffer_size=0)
    with pytest.raises(TypeError, match="str"):
        rb.train_from_iterator(["ab", b"cd"], 300)
    with pytest.raises(TypeError):
        rb.train_from_iterator(42, 300)

    def failing():
        yield "abc"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        rb.train_from_iterator(failing(), 300)


def test_vocab_256_is_the_bytes():
    assert train(["hello"], 256) == [bytes([b]) for b in range(256)]


# ----------------------------------------------------------------------------- tiktoken

def test_round_trip_through_tiktoken():
    tiktoken = pytest.importorskip("tiktoken")
    docs = ["Hello world! Héllo wörld? 12345 6789", "print('hi')\n    return x + 1\n", "日本語のテキスト 😀"] * 20
    tokens = train(docs, 310)
    assert len(set(tokens)) == len(tokens) == 310
    enc = tiktoken.Encoding(name="t", pat_str=rb.GPT4_PATTERN, mergeable_ranks={t: i for i, t in enumerate(tokens)},
                            special_tokens={})
    for s in docs + ["unseen text, 🙃 مرحبا \r\n\t!!"]:
        ids = enc.encode_ordinary(s)
        assert enc.decode(ids) == s
    assert len(enc.encode_ordinary(docs[0])) < len(docs[0].encode("utf-8"))
