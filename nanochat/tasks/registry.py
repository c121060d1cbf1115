"""Tasks by name, and mixtures from plain specs (what conf/mixture/*.yaml holds).

``build_task("gsm8k", split="test", size=420)`` -> a Task; ``build_mixture([{"task": "identity", "repeat": 2},
...], seed=42)`` -> a TaskMixture. In a spec entry, ``task`` is the name, ``size`` caps a data set (its first n
examples after the fixed shuffle) or sets how many examples a generated task makes (null = all / the task's
default), ``repeat`` lists the task k times (k epochs of it), and every other key is an option of the task
(``split``, ``subset``, ``local_path``, ``identity_path``, ``words_path``, ``start``/``stop``/``step``...).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from nanochat.common import NanochatError
from nanochat.tasks.arc import ARC
from nanochat.tasks.arithmetic import Arithmetic
from nanochat.tasks.base import Task, TaskMixture, TaskSequence
from nanochat.tasks.conversations import Conversations
from nanochat.tasks.gsm8k import GSM8K
from nanochat.tasks.humaneval import HumanEval
from nanochat.tasks.identity import Identity
from nanochat.tasks.mmlu import MMLU
from nanochat.tasks.smoltalk import SmolTalk
from nanochat.tasks.spelling import SimpleSpelling, SpellingBee

# name -> (class, fixed options)
TASKS: dict[str, tuple[type, dict]] = {
    "smoltalk": (SmolTalk, {}),
    "mmlu": (MMLU, {}),
    "gsm8k": (GSM8K, {}),
    "arc_easy": (ARC, {"subset": "ARC-Easy"}),
    "arc_challenge": (ARC, {"subset": "ARC-Challenge"}),
    "humaneval": (HumanEval, {}),
    "identity": (Identity, {}),
    "simple_spelling": (SimpleSpelling, {}),
    "spelling_bee": (SpellingBee, {}),
    "arithmetic": (Arithmetic, {}),
    "conversations": (Conversations, {}),
}
_SLICE = ("start", "stop", "step")


def _options_of(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {p for p in params if p not in ("self", "args", "kwargs")} | set(_SLICE)


def build_task(name: str, **options) -> Task:
    """The task called `name` with its options; `size` caps data sets or sizes generated tasks."""
    if name not in TASKS:
        raise NanochatError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    cls, fixed = TASKS[name]
    allowed = _options_of(cls) - set(fixed)
    options = dict(options)
    size = options.pop("size", None)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise NanochatError(f"task {name}: unknown option(s) {', '.join(unknown)}; "
                            f"known: size, {', '.join(sorted(allowed))}")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise NanochatError(f"task {name}: size must be a non-negative integer or null, got {size!r}")
        if "size" in allowed:  # generated task: make exactly this many
            options["size"] = size
        else:  # data set: keep its first `size` examples (of the slice)
            if options.get("stop") is not None:
                raise NanochatError(f"task {name}: give size or stop, not both")
            options["stop"] = options.get("start", 0) + size * options.get("step", 1)
    return cls(**fixed, **options)


def _entries(spec) -> tuple[list, int | None]:
    seed = None
    if isinstance(spec, Mapping):
        if "tasks" not in spec:
            raise NanochatError("a mixture spec must be a list of task entries or a mapping with 'tasks'")
        seed = spec.get("seed")
        spec = spec["tasks"]
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise NanochatError(f"a mixture spec must be a list of task entries, got {type(spec).__name__}")
    return list(spec), seed


def build_tasks(spec) -> list[Task]:
    """The task list of a spec, each task repeated `repeat` times (the same object, so it is loaded once)."""
    entries, _ = _entries(spec)
    tasks = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "task" not in entry:
            raise NanochatError(f"mixture entry {i}: must be a mapping with a 'task' key, got {entry!r}")
        options = {str(k): v for k, v in entry.items()}
        name, repeat = options.pop("task"), options.pop("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
            raise NanochatError(f"mixture entry {i} ({name}): repeat must be an integer >= 0, got {repeat!r}")
        if repeat == 0:  # a quick way to switch an entry off from the command line
            continue
        try:
            task = build_task(name, **options)
        except NanochatError as e:
            raise NanochatError(f"mixture entry {i}: {e}") from None
        tasks += [task] * repeat
    if not tasks:
        raise NanochatError("the mixture has no tasks")
    return tasks


def build_mixture(spec, seed: int | None = None) -> TaskMixture:
    """A deterministic shuffled mixture of the spec's tasks (seed: argument, else the spec's, else 42)."""
    _, spec_seed = _entries(spec)
    seed = seed if seed is not None else (spec_seed if spec_seed is not None else 42)
    return TaskMixture(build_tasks(spec), seed=seed)


def build_sequence(spec) -> TaskSequence:
    """The spec's tasks one after another (a curriculum)."""
    return TaskSequence(build_tasks(spec))
