"""Spelling practice for small models: SimpleSpelling ("Spell the word: apple") and SpellingBee (count a letter).

Words come from the ``english-words`` package (Webster's Second International word list, 234K words, lower-case
letters only), or from your own file (``words_path``, one word per line); nothing is downloaded. One word in 20
is held out for the test split, so validation conversations use words never seen in training. Example i is
generated from its own seed (SpellingBee: random.Random(i); test split: i + 10,000,000), so any index is
reproducible on its own.
SpellingBee answers like the reference: spell the word out, count by hand, double-check with a python tool
call ``'word'.count('l')``, and finish with ``#### N``.
"""
from __future__ import annotations

import functools
import random
import string
from pathlib import Path

from nanochat.common import NanochatError
from nanochat.tasks.base import Task, assistant_text, extract_answer

TEST_SEED_OFFSET = 10_000_000  # larger than any train size, so train and test seeds never meet
TEST_WORD_EVERY = 20  # 1 in 20 words is held out for the test split

USER_TEMPLATES = [
    "How many {letter} are in the word {word}",
    "How many {letter} are in {word}",
    "Count the number of {letter} in {word}",
    "How many times does {letter} appear in {word}",
    "What's the count of {letter} in {word}",
    "In the word {word}, how many {letter} are there",
    "How many letter {letter} are in the word {word}",
    "Tell me the number of {letter} in {word}",
    "How many occurrences of {letter} are in {word}",
    "Can you count the {letter} letters in {word}",
    "How many {letter}s are in {word}",
    "How many {letter}'s are in {word}",
    "Number of {letter} in {word}",
    "How many {letter} does {word} have",
    "{word} has how many {letter}",
    "In {word}, count the {letter}",
    "Give me the count of {letter} in {word}",
    "¿Cuántas {letter} hay en {word}?",
    "Combien de {letter} dans {word}",
    "Wie viele {letter} sind in {word}",
    "{word}中有多少个{letter}",
    "{word}に{letter}は何個ありますか",
]


@functools.lru_cache(maxsize=4)
def load_words(words_path: str | None = None) -> tuple[str, ...]:
    """Sorted unique lower-case words (at least 2 letters) from the file, or from the english-words package."""
    if words_path is None:
        try:
            from english_words import get_english_words_set
        except ImportError:
            raise NanochatError("the spelling tasks need the 'english-words' package (pip install english-words), "
                                "or give them words_path=<a file with one word per line>") from None
        words = get_english_words_set(["web2"], lower=True, alpha=True)
    else:
        path = Path(words_path).expanduser()
        try:
            words = {w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines()}
        except OSError as e:
            raise NanochatError(f"cannot read word list {path}: {e.strerror or e}") from None
        words = {w for w in words if w.isalpha()}
    words = tuple(sorted(w for w in words if len(w) >= 2))
    if not words:
        raise NanochatError(f"word list {words_path or 'english-words'} has no words of two or more letters")
    return words


@functools.lru_cache(maxsize=8)
def split_words(words: tuple[str, ...], split: str) -> tuple[str, ...]:
    """Every TEST_WORD_EVERY-th word is a test word, the rest train words: test conversations use unseen words."""
    if split == "test":
        return words[::TEST_WORD_EVERY]
    return tuple(w for i, w in enumerate(words) if i % TEST_WORD_EVERY)


class _WordTask(Task):
    """Shared parts: size, split, word list, per-example seeded generator."""

    seed_base = 0

    def __init__(self, size: int = 1000, split: str = "train", words_path: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise NanochatError(f"{self.name} size must be a non-negative integer, got {size!r}")
        if split not in ("train", "test"):
            raise NanochatError(f"{self.name} split must be train or test, got {split!r}")
        self.size, self.split = size, split
        self.words = split_words(load_words(words_path), split)
        if not self.words:
            raise NanochatError(f"{self.name}: the word list has no {split} words (1 in {TEST_WORD_EVERY} is a test word)")

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return self.size

    def rng(self, index: int) -> random.Random:
        return random.Random(self.seed_base + index + (TEST_SEED_OFFSET if self.split == "test" else 0))


class SimpleSpelling(_WordTask):
    """"Spell the word: apple" -> "apple:a,p,p,l,e"."""

    name = "simple_spelling"

    seed_base = 20_000_000  # other seeds than SpellingBee's, so example i spells a different word

    def get_example(self, index: int) -> dict:
        word = self.rng(index).choice(self.words)
        return {"messages": [
            {"role": "user", "content": f"Spell the word: {word}"},
            {"role": "assistant", "content": f"{word}:{','.join(word)}"},
        ]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return completion.strip() == assistant_text(conversation)


class SpellingBee(_WordTask):
    """"How many r are in strawberry?" solved by hand, checked with python, answered with '#### N'."""

    name = "spelling_bee"

    def get_example(self, index: int) -> dict:
        rng = self.rng(index)
        word = rng.choice(self.words)
        # mostly a letter of the word; sometimes one that may not occur (answer 0)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(string.ascii_lowercase)
        count = word.count(letter)
        template = rng.choice(USER_TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()  # people type lazily
        lq, wq = rng.choice(["", "'", '"']), rng.choice(["", "'", '"'])
        user = template.format(letter=f"{lq}{letter}{lq}", word=f"{wq}{word}{wq}")
        if rng.random() < 0.5:
            user += "?"
        lines = [
            f"We are asked to find the number '{letter}' in the word '{word}'. Let me try a manual approach first.",
            "", "First spell the word out:", f"{word}:{','.join(word)}", "",
            f"Then count the occurrences of '{letter}':",
        ]
        running = 0
        for i, ch in enumerate(word, 1):
            if ch == letter:
                running += 1
                lines.append(f"{i}:{ch} hit! count={running}")  # no space before ch: " a" and "a" differ as tokens
            else:
                lines.append(f"{i}:{ch}")
        manual = "\n".join(lines) + f"\n\nThis gives us {running}."
        parts = [
            {"type": "text", "text": manual},
            {"type": "text", "text": "\n\nLet me double check this using Python:\n\n"},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": parts}]}

    def evaluate(self, conversation: dict, completion: str) -> int:
        reference = extract_answer(assistant_text(conversation))
        return int(reference is not None and extract_answer(completion) == reference)
