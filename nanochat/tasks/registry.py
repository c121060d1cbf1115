"""Tasks by name, and mixtures from plain specs (what conf/mixture/*.yaml holds).

``build_task("gsm8k", split="test", size=420)`` -> a Task; ``build_mixture([{"task": "identity", "repeat": 2},
...], seed=42)`` -> a TaskMixture. In a spec entry, ``task`` is the name, ``size`` caps a data set (its first n
examples after the fixed shuffle) or sets how many examples a generated task makes (null = all / the task's
default), ``repeat`` lists the task k times (k epochs of it), and every other key is an option of the task
(``split``, ``subset``, ``local_path``, ``identity_path``, ``words_path``, ``start``/``stop``/``step``...).
``task_options`` gives options to every entry of a task by name (e.g. one ``local_path`` for all GSM8K entries);
``build_from_config(cfg, "train"|"val")`` builds a part of a whole conf/mixture file.
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


def _options_of(cls: type) -> set[str]:
    """Keyword options of the task's constructor, including those its base classes take through **kwargs."""
    names = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"self"}


def _resolve(name: str, options: dict) -> tuple[type, dict]:
    """(class, constructor kwargs) for a task name and its options; every error a NanochatError."""
    if not isinstance(name, str) or name not in TASKS:
        raise NanochatError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    cls, fixed = TASKS[name]
    allowed = _options_of(cls) - set(fixed)
    options = dict(options)
    size = options.pop("size", None)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise NanochatError(f"task {name}: unknown option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(allowed | {'size'}))}")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise NanochatError(f"task {name}: size must be a non-negative integer or null, got {size!r}")
        if "size" in allowed:  # generated task: make exactly this many
            options["size"] = size
        else:  # data set: keep its first `size` examples (of the slice)
            if options.get("stop") is not None:
                raise NanochatError(f"task {name}: give size or stop, not both")
            options["stop"] = options.get("start", 0) + size * options.get("step", 1)
    return cls, {**fixed, **options}


def build_task(name: str, **options) -> Task:
    """The task called `name` with its options; `size` caps data sets or sizes generated tasks."""
    cls, kwargs = _resolve(name, options)
    return cls(**kwargs)


def _entries(spec) -> tuple[list, int | None, Mapping | None]:
    """(entries, seed, task_options) of a list spec or of a mapping {tasks, seed, task_options}."""
    seed = options = None
    if isinstance(spec, Mapping):
        extra = sorted(set(spec) - {"tasks", "seed", "task_options"})
        if "tasks" not in spec or extra:
            raise NanochatError("a mixture spec must be a list of task entries or a mapping with 'tasks' "
                                f"(and optionally 'seed', 'task_options'){'; unknown: ' + ', '.join(extra) if extra else ''}")
        seed, options, spec = spec.get("seed"), spec.get("task_options"), spec["tasks"]
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise NanochatError(f"a mixture spec must be a list of task entries, got {type(spec).__name__}")
    return list(spec), seed, options


def _defaults(task_options) -> dict[str, dict]:
    if task_options is None:
        return {}
    if not isinstance(task_options, Mapping):
        raise NanochatError(f"task_options must map task names to options, got {type(task_options).__name__}")
    out = {}
    for name, options in task_options.items():
        if name not in TASKS:
            raise NanochatError(f"task_options: unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
        if options is not None and not isinstance(options, Mapping):
            raise NanochatError(f"task_options.{name} must be a mapping of options")
        out[name] = dict(options or {})
    return out


def _plan(spec, task_options=None) -> list[tuple[str, type, dict, int]]:
    """(name, class, kwargs, repeat) per entry; checks names and options without loading anything."""
    entries, _, spec_options = _entries(spec)
    defaults = _defaults(task_options if task_options is not None else spec_options)
    plan = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "task" not in entry:
            raise NanochatError(f"mixture entry {i}: must be a mapping with a 'task' key, got {entry!r}")
        options = {**defaults.get(entry["task"], {}), **{str(k): v for k, v in entry.items()}}
        name, repeat = options.pop("task"), options.pop("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
            raise NanochatError(f"mixture entry {i} ({name}): repeat must be an integer >= 0, got {repeat!r}")
        try:
            cls, kwargs = _resolve(name, options)
        except NanochatError as e:
            raise NanochatError(f"mixture entry {i}: {e}") from None
        if repeat:  # repeat 0 switches an entry off (handy from the command line)
            plan.append((name, cls, kwargs, repeat))
    if not plan:
        raise NanochatError("the mixture has no tasks")
    return plan


def validate_spec(spec, task_options=None) -> None:
    """Fail fast on unknown task names, unknown options or bad sizes, before any data is loaded."""
    _plan(spec, task_options)


def build_tasks(spec, task_options=None) -> list[Task]:
    """The task list of a spec, each task repeated `repeat` times (the same object, so it is loaded once).

    task_options: {task name: {option: value}} applied to every entry of that task; an entry's own keys win.
    """
    tasks = []
    for name, cls, kwargs, repeat in _plan(spec, task_options):
        try:
            task = cls(**kwargs)
        except NanochatError as e:
            raise NanochatError(f"mixture task {name}: {e}") from None
        tasks += [task] * repeat
    return tasks


def build_mixture(spec, seed: int | None = None, task_options=None) -> TaskMixture:
    """A deterministic shuffled mixture of the spec's tasks (seed: argument, else the spec's, else 42)."""
    _, spec_seed, _ = _entries(spec)
    seed = seed if seed is not None else (spec_seed if spec_seed is not None else 42)
    return TaskMixture(build_tasks(spec, task_options), seed=seed)


def build_sequence(spec, task_options=None) -> TaskSequence:
    """The spec's tasks one after another (a curriculum)."""
    return TaskSequence(build_tasks(spec, task_options))


def build_from_config(cfg: Mapping, part: str = "train") -> TaskMixture:
    """The `train` or `val` mixture of a conf/mixture/*.yaml mapping (its seed and task_options applied)."""
    if not isinstance(cfg, Mapping) or part not in cfg or cfg[part] is None:
        raise NanochatError(f"the mixture config has no {part!r} list of tasks")
    return build_mixture(cfg[part], seed=cfg.get("seed"), task_options=cfg.get("task_options"))
