"""Byte-level BPE tokenizer: trained with nanochat_rustbpe, run with tiktoken.

- `Tokenizer.train(texts, vocab_size)` learns merges (GPT-4 split pattern by default);
  `vocab_size` counts the special tokens too.
- The 9 special tokens get the ids right after the mergeable ranks. User text is always
  encoded as ordinary text: a literal "<|bos|>" in a document never becomes a special id.
- `save`/`load` use one folder: `tokenizer.pkl` (ranks, pattern, special tokens, and `training_data`: which
  data it was trained on, see `nanochat.provenance`) and `token_bytes.pt` (UTF-8 length of every token's
  decoded text, 0 for specials, for bits-per-byte).
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from nanochat.common import NanochatError, atomic_path, get_base_dir

if TYPE_CHECKING:  # pragma: no cover
    import tiktoken
    import torch

SPECIAL_TOKENS = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]

# Same strings as nanochat_rustbpe.GPT4_PATTERN / GPT4_PATTERN_LATE (checked by the tests); kept
# here so that importing this module does not need the extension.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SPLIT_PATTERN_LATE = SPLIT_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}{1,2}")

TOKENIZER_FILE = "tokenizer.pkl"
TOKEN_BYTES_FILE = "token_bytes.pt"
_FORMAT = "nanochat-tokenizer"
_FORMAT_VERSION = 1


def _check_ranks(ranks: dict[bytes, int]) -> None:
    if not isinstance(ranks, dict) or not ranks:
        raise NanochatError("mergeable ranks must be a non-empty dict of bytes -> int")
    n = len(ranks)
    seen = set()
    for token, rank in ranks.items():
        if not isinstance(token, bytes) or not isinstance(rank, int) or isinstance(rank, bool):
            raise NanochatError("mergeable ranks must map bytes to int")
        if not 0 <= rank < n or rank in seen:
            raise NanochatError(f"mergeable ranks must be exactly 0..{n - 1}, each once")
        seen.add(rank)
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise NanochatError(f"mergeable ranks lack {len(missing)} of the 256 single bytes (e.g. {missing[0]})")


class _SafeUnpickler(pickle.Unpickler):
    """Loads plain data only (dict/list/str/bytes/int); refuses any class or function."""

    def find_class(self, module, name):  # noqa: D401
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


class Tokenizer:
    """BPE tokenizer with nanochat's special tokens; runtime is a `tiktoken.Encoding`."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN,
                 training_data: dict | None = None):
        import tiktoken

        ranks = dict(mergeable_ranks)
        _check_ranks(ranks)
        if not isinstance(pattern, str) or not pattern:
            raise NanochatError("the split pattern must be a non-empty string")
        self._ranks = ranks
        self.pattern = pattern
        n = len(ranks)
        self._special = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        try:
            self._enc = tiktoken.Encoding(
                name="nanochat", pat_str=pattern, mergeable_ranks=ranks, special_tokens=self._special
            )
        except ValueError as e:
            raise NanochatError(f"invalid split pattern {pattern!r}: {e}") from None
        self._token_bytes = None
        # what it was trained on (`nanochat.provenance`); None when unknown
        self.training_data = dict(training_data) if isinstance(training_data, dict) else None

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN) -> "Tokenizer":
        """Learn a vocabulary of `vocab_size` tokens (special tokens included) from `texts`."""
        import nanochat_rustbpe

        n_special = len(SPECIAL_TOKENS)
        if not isinstance(vocab_size, int) or vocab_size < 256 + n_special:
            raise NanochatError(
                f"vocab_size must be at least {256 + n_special} (256 bytes + {n_special} special tokens), "
                f"got {vocab_size}"
            )
        if isinstance(texts, str):
            texts = [texts]
        try:
            ranks = nanochat_rustbpe.train_from_iterator(iter(texts), vocab_size - n_special, pattern=pattern)
        except ValueError as e:
            raise NanochatError(f"tokenizer training failed: {e}") from None
        return cls({bytes(token): rank for token, rank in ranks}, pattern)

    @classmethod
    def byte_level(cls, pattern: str = SPLIT_PATTERN) -> "Tokenizer":
        """256 single-byte tokens + the special tokens; no training."""
        return cls({bytes([b]): b for b in range(256)}, pattern)

    # ------------------------------------------------------------------ persistence

    def save(self, directory) -> None:
        """Write tokenizer.pkl and token_bytes.pt into `directory`, each atomically.

        Both files are fully written to temporary files before either replaces an existing
        one, so a failure while saving leaves the previous tokenizer intact.
        """
        import torch

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": list(SPECIAL_TOKENS),
            "mergeable_ranks": self._ranks,
        }
        if self.training_data:
            payload["training_data"] = self.training_data
        with atomic_path(directory / TOKENIZER_FILE) as tmp_pkl:
            with open(tmp_pkl, "wb") as f:
                pickle.dump(payload, f, protocol=4)
            with atomic_path(directory / TOKEN_BYTES_FILE) as tmp_tb:
                with open(tmp_tb, "wb") as f:
                    torch.save(self.token_bytes(), f)

    @classmethod
    def load(cls, directory) -> "Tokenizer":
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise NanochatError(f"no tokenizer at {directory}; run `python train.py stage=tokenizer` first")
        try:
            data = path.read_bytes()
            payload = _SafeUnpickler(io.BytesIO(data)).load()
            if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
                raise ValueError("not a nanochat tokenizer file")
            if payload.get("version") != _FORMAT_VERSION:
                raise ValueError(f"unsupported format version {payload.get('version')!r}")
            if payload.get("special_tokens") != SPECIAL_TOKENS:
                raise ValueError("special tokens differ from this version of nanochat")
            ranks, pattern = payload["mergeable_ranks"], payload["pattern"]
            training_data = payload.get("training_data")
        except NanochatError:
            raise
        except Exception as e:  # truncated, garbage, wrong structure
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise NanochatError(f"corrupt tokenizer file {path}: {msg}") from None
        try:
            return cls(ranks, pattern, training_data)
        except NanochatError as e:
            raise NanochatError(f"corrupt tokenizer file {path}: {e}") from None

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        return len(self._ranks) + len(SPECIAL_TOKENS)

    @property
    def bos_token_id(self) -> int:
        return self._special["<|bos|>"]

    @property
    def encoding(self) -> "tiktoken.Encoding":
        """The underlying tiktoken encoding."""
        return self._enc

    def mergeable_ranks(self) -> dict[bytes, int]:
        return dict(self._ranks)

    def get_special_tokens(self) -> list[str]:
        return list(SPECIAL_TOKENS)

    def encode_special(self, name: str) -> int:
        try:
            return self._special[name]
        except KeyError:
            raise NanochatError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_TOKENS)}") from None

    # ------------------------------------------------------------------ encode / decode

    def _extra_id(self, x) -> int:
        if isinstance(x, str):
            return self.encode_special(x)
        if isinstance(x, int) and not isinstance(x, bool) and 0 <= x < self.vocab_size:
            return x
        raise NanochatError(f"prepend/append must be a special token name or a token id, got {x!r}")

    def encode(self, text, prepend=None, append=None, num_threads: int = 8):
        """Encode ordinary text (a str, or a list of str in parallel).

        Special-token strings inside the text are encoded as plain text. `prepend`/`append`
        add one token (a special token name or an id) to each sequence.
        """
        pre = None if prepend is None else self._extra_id(prepend)
        post = None if append is None else self._extra_id(append)
        if isinstance(text, str):
            ids = self._enc.encode_ordinary(text)
            if pre is not None:
                ids.insert(0, pre)
            if post is not None:
                ids.append(post)
            return ids
        if isinstance(text, (list, tuple)):
            if not all(isinstance(t, str) for t in text):
                raise TypeError("encode expects a str or a list of str")
            batch = self._enc.encode_ordinary_batch(list(text), num_threads=max(1, int(num_threads)))
            for ids in batch:
                if pre is not None:
                    ids.insert(0, pre)
                if post is not None:
                    ids.append(post)
            return batch
        raise TypeError(f"encode expects a str or a list of str, got {type(text).__name__}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self._enc.decode(list(ids))

    def id_to_token(self, i: int) -> str:
        """The token's text (invalid UTF-8 shown with replacement characters)."""
        return self._enc.decode_single_token_bytes(int(i)).decode("utf-8", errors="replace")

    def token_bytes(self, kind: str = "decoded") -> "torch.Tensor":
        """int32 tensor [vocab_size]: bytes of text each token stands for, for bits per byte.

        kind="decoded" (the reference's definition, used for val bpb): UTF-8 length of the token's decoded text,
        an ill-formed byte sequence decoding to U+FFFD (3 bytes) as `decode` does; 0 for special tokens (and for
        a token whose text is a special token's name, as the reference compares strings). kind="raw": the
        token's byte length; 0 for special tokens.
        """
        import torch

        if kind not in ("decoded", "raw"):
            raise NanochatError(f"token_bytes kind must be 'decoded' or 'raw', got {kind!r}")
        if not isinstance(self._token_bytes, dict):
            self._token_bytes = {}
        cache = self._token_bytes
        if kind not in cache:
            lengths = [0] * self.vocab_size
            specials = set(SPECIAL_TOKENS)
            for token, rank in self._ranks.items():
                if kind == "raw":
                    lengths[rank] = len(token)
                else:
                    text = token.decode("utf-8", errors="replace")
                    lengths[rank] = 0 if text in specials else len(text.encode("utf-8"))
            cache[kind] = torch.tensor(lengths, dtype=torch.int32)
        return cache[kind].clone()

    def __getstate__(self):
        return {"mergeable_ranks": self._ranks, "pattern": self.pattern, "training_data": self.training_data}

    def __setstate__(self, state):
        self.__init__(state["mergeable_ranks"], state["pattern"], state.get("training_data"))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, pattern={self.pattern[:24]!r}...)"


def compression_ratio(tokenizer_or_encoding, texts) -> float:
    """Total UTF-8 bytes / total tokens over `texts` (a str or an iterable of str)."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if isinstance(tokenizer_or_encoding, Tokenizer):
        enc = tokenizer_or_encoding.encoding
    else:
        enc = tokenizer_or_encoding
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(texts))
    if n_tokens == 0:
        raise NanochatError("compression ratio of empty text is undefined")
    return n_bytes / n_tokens


# Public reference encodings: (name, file URL, sha256), as published with tiktoken.
_REFERENCE_FILES = [
    ("cl100k_base", "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
     "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
    ("o200k_base", "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
     "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
]


def _tiktoken_cache_dir() -> str:
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    import tempfile

    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def reference_encodings() -> dict[str, "tiktoken.Encoding"]:
    """cl100k_base / o200k_base, only those whose files are already in tiktoken's cache.

    Never touches the network: an encoding is loaded only if its cached file exists and has
    the published checksum (otherwise tiktoken would try to download it).
    """
    cache_dir = _tiktoken_cache_dir()
    if not cache_dir:
        return {}
    out = {}
    for name, url, sha256 in _REFERENCE_FILES:
        path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        try:
            with open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != sha256:
                    continue
        except OSError:
            continue
        try:
            import tiktoken

            out[name] = tiktoken.get_encoding(name)
        except Exception:  # pragma: no cover - unexpected tiktoken failure: treat as unavailable
            continue
    return out


def default_tokenizer_dir() -> Path:
    """The stable location of the latest trained tokenizer."""
    return get_base_dir() / "tokenizer"


def get_tokenizer(directory=None) -> Tokenizer:
    """Load the tokenizer from `directory`, or from the default location."""
    return Tokenizer.load(default_tokenizer_dir() if directory is None else directory)
