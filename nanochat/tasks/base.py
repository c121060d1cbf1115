"""The Task interface and the two ways of combining tasks: TaskMixture (shuffled) and TaskSequence (in order).

A Task is a list-like view of conversations: ``len(task)``, ``task[i]`` -> conversation dict, sliced lazily
with ``start``/``stop``/``step`` over the underlying examples (``num_examples``/``get_example``). Evaluation
tasks say how they are scored: ``eval_type == "categorical"`` (the conversation carries its answer
``letters``; the evaluator takes the argmax over those letters' logits) or ``"generative"`` (sample a
completion, then ``evaluate(conversation, completion)``).
"""
from __future__ import annotations

import bisect
import operator
import random
import re
from array import array
from typing import Iterator, Sequence

from nanochat.common import NanochatError

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_answer(text: str) -> str | None:
    """The number after '####' with commas removed (GSM8K's official normalisation), or None."""
    match = ANSWER_RE.search(text)
    return match.group(1).strip().replace(",", "") if match else None


def assistant_text(conversation: dict) -> str:
    """All text the last assistant message shows (text and tool output parts, in order)."""
    content = conversation["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p["type"] != "python")


def render_mc(question: str, letters: Sequence[str], choices: Sequence[str]) -> str:
    """The multiple-choice prompt: each choice followed by "=" and its letter, no space before the letter.

    The answer is the bare letter; writing the letter right after "=" in the prompt makes it the same token
    as the answer (" A" and "A" are different tokens), which small models bind to much better.
    """
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NanochatError(f"{name} must be an integer >= {minimum}{' or null' if allow_none else ''}, got {value!r}")


class Task:
    """A lazily sliced dataset of conversations. Subclasses define num_examples() and get_example(i)."""

    name = "task"

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        _check_int("start", start, 0)
        _check_int("stop", stop, start, allow_none=True)
        _check_int("step", step, 1)
        self.start, self.stop, self.step = start, stop, step

    @property
    def eval_type(self) -> str:
        raise NanochatError(f"{self.name} is not an evaluation task")

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self.num_examples()
        stop = n if self.stop is None else min(self.stop, n)  # a stop past the end means "all"
        return max(0, (stop - self.start + self.step - 1) // self.step)

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, bool):
            raise TypeError("task indices must be integers, got bool")
        index = operator.index(index)  # ints and numpy integers; TypeError for anything else
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} with {n} conversations")
        return self.get_example(self.start + index * self.step)

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def evaluate(self, conversation: dict, completion: str):
        raise NanochatError(f"{self.name} has no evaluation")

    def reward(self, conversation: dict, completion: str) -> float:
        """RL reward: the evaluation outcome as a float."""
        return float(self.evaluate(conversation, completion))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(len={len(self)})"


class RowsTask(Task):
    """A task over loaded data-set rows (`self.ds`), scored as `EVAL_TYPE` ("categorical" / "generative")."""

    EVAL_TYPE: str | None = None

    @property
    def eval_type(self) -> str:
        if self.EVAL_TYPE is None:
            return super().eval_type
        return self.EVAL_TYPE

    def num_examples(self) -> int:
        return len(self.ds)


class TaskMixture(Task):
    """All examples of all tasks in one deterministic shuffle (list a task twice to see it twice).

    The order is random.Random(seed).shuffle over the (task, index) pairs, the same permutation as the
    reference mixture for the same task lengths. The map is stored as a compact int64 array.
    """

    name = "mixture"

    def __init__(self, tasks: Sequence[Task], seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        if not self.tasks:
            raise NanochatError("a task mixture needs at least one task")
        lengths = [len(t) for t in self.tasks]
        self.offsets = [0]
        for n in lengths:
            self.offsets.append(self.offsets[-1] + n)
        order = list(range(self.offsets[-1]))
        random.Random(seed).shuffle(order)
        self.order = array("q", order)
        self.seed = seed

    def num_examples(self) -> int:
        return len(self.order)

    def locate(self, index: int) -> tuple[int, int]:
        """(task number, index within that task) of mixture example `index` (before slicing)."""
        flat = self.order[index]
        t = bisect.bisect_right(self.offsets, flat) - 1
        return t, flat - self.offsets[t]

    def get_example(self, index: int) -> dict:
        t, local = self.locate(index)
        return self.tasks[t][local]


class TaskSequence(Task):
    """The tasks one after another, in the given order (curricula)."""

    name = "sequence"

    def __init__(self, tasks: Sequence[Task], **kwargs):
        super().__init__(**kwargs)
        self.tasks = list(tasks)
        self.offsets = [0]
        for t in self.tasks:
            self.offsets.append(self.offsets[-1] + len(t))

    def num_examples(self) -> int:
        return self.offsets[-1]

    def get_example(self, index: int) -> dict:
        t = bisect.bisect_right(self.offsets, index) - 1
        return self.tasks[t][index - self.offsets[t]]
