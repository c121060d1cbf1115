"""Mixtures: sizes, repeats, deterministic order, specs, and the nanochat/mixtures YAML files."""
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from nanochat.chat import render_conversation
from nanochat.common import NanochatError
from nanochat.tasks import (TASKS, Task, TaskMixture, TaskSequence, build_from_config, build_mixture, build_sequence,
                            validate_spec)
from nanochat.tokenizer import Tokenizer

CONF = Path(__file__).resolve().parent.parent / "nanochat" / "mixtures"


class Tagged(Task):
    def __init__(self, tag, n, **kwargs):
        super().__init__(**kwargs)
        self.tag, self.n = tag, n

    def num_examples(self):
        return self.n

    def get_example(self, i):
        return {"tag": self.tag, "i": i}


def load(name):
    return yaml.safe_load((CONF / f"{name}.yaml").read_text())


def test_mixture_sizes_and_repeats():
    a, b = Tagged("a", 5), Tagged("b", 3)
    m = TaskMixture([a, b, a])
    assert len(m) == 13
    items = [m[i] for i in range(len(m))]
    counts = Counter((x["tag"], x["i"]) for x in items)
    assert counts == Counter({**{("a", i): 2 for i in range(5)}, **{("b", i): 1 for i in range(3)}})
    assert len(TaskMixture([Tagged("a", 0), b])) == 3


def test_mixture_determinism_and_reference_order():
    tasks = [Tagged("a", 50), Tagged("b", 30), Tagged("c", 20)]
    order = [(x["tag"], x["i"]) for x in TaskMixture(tasks)]
    assert order == [(x["tag"], x["i"]) for x in TaskMixture(tasks, seed=42)]
    assert order != [(x["tag"], x["i"]) for x in TaskMixture(tasks, seed=43)]
    # the same permutation as shuffling the list of (task, index) pairs with random.Random(seed)
    pairs = [(t.tag, i) for t in tasks for i in range(t.n)]
    random.Random(42).shuffle(pairs)
    assert order == pairs
    # tasks are interleaved, not in blocks
    assert len({tag for tag, _ in order[:20]}) == 3


def test_mixture_slicing_and_sequence():
    m = TaskMixture([Tagged("a", 10), Tagged("b", 10)], stop=5)
    assert len(m) == 5 and [m[i] for i in range(5)] == [TaskMixture([Tagged("a", 10), Tagged("b", 10)])[i]
                                                        for i in range(5)]
    s = TaskSequence([Tagged("a", 2), Tagged("x", 0), Tagged("b", 3)])
    assert [(x["tag"], x["i"]) for x in s] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
    with pytest.raises(NanochatError, match="at least one task"):
        TaskMixture([])


def test_build_mixture_from_spec():
    spec = [{"task": "identity", "size": 20, "repeat": 2},
            {"task": "arithmetic", "size": 30, "split": "test"},
            {"task": "simple_spelling", "size": 10, "repeat": 0}]
    m = build_mixture(spec)
    assert len(m) == 70 and len(m.tasks) == 3 and m.tasks[0] is m.tasks[1]
    assert [m[i] for i in range(70)] == [build_mixture(spec)[i] for i in range(70)]
    assert [m[i] for i in range(70)] != [build_mixture(spec, seed=7)[i] for i in range(70)]
    # a mapping spec carries its own seed and task options
    m2 = build_mixture({"tasks": spec, "seed": 7, "task_options": {"arithmetic": {"split": "train"}}})
    assert m2.seed == 7 and m2.tasks[2].split == "test"  # the entry's own key wins over task_options
    seq = build_sequence(spec)
    assert len(seq) == 70 and seq[0] == m.tasks[0][0] and seq[69] == m.tasks[2][29]


@pytest.mark.parametrize("spec, message", [
    ([{"task": "nope"}], r"mixture entry 0: unknown task 'nope'; known tasks:"),
    ([{"size": 3}], r"mixture entry 0: must be a mapping with a 'task' key"),
    ([{"task": "identity", "repeat": -1}], r"repeat must be an integer >= 0"),
    ([{"task": "identity", "colour": 1}], r"mixture entry 0: task identity: unknown option\(s\) colour"),
    ([{"task": "identity", "repeat": 0}], r"the mixture has no tasks"),
    ("identity", r"must be a list of task entries"),
    ({"task": "identity"}, r"mapping with 'tasks'"),
    ({"tasks": [], "extra": 1}, r"unknown: extra"),
])
def test_bad_specs(spec, message):
    with pytest.raises(NanochatError, match=message):
        build_mixture(spec)
    with pytest.raises(NanochatError, match=message):
        validate_spec(spec)


def test_task_options_errors():
    with pytest.raises(NanochatError, match="task_options: unknown task 'gsm9k'"):
        build_mixture([{"task": "identity"}], task_options={"gsm9k": {}})
    with pytest.raises(NanochatError, match="mixture entry 0: task identity: unknown option"):
        build_mixture([{"task": "identity"}], task_options={"identity": {"local_path": "x"}})


@pytest.mark.parametrize("name, n_train, n_val", [("offline_mid", 6200, 600), ("offline_sft", 1500, 200)])
def test_offline_mixtures_build_and_render(name, n_train, n_val):
    cfg = load(name)
    train, val = build_from_config(cfg, "train"), build_from_config(cfg, "val")
    assert (len(train), len(val)) == (n_train, n_val)
    assert {type(t).name for t in train.tasks} == {"identity", "simple_spelling", "spelling_bee", "arithmetic"}
    assert all(t.split == "test" for t in val.tasks if hasattr(t, "split"))
    tok = Tokenizer.byte_level()
    for part in (train, val):
        for i in range(0, len(part), max(1, len(part) // 150)):
            ids, mask = render_conversation(tok, part[i])
            assert len(ids) == len(mask) and 0 < sum(mask) < len(ids)
    assert [train[i] for i in range(0, n_train, 97)] == [build_from_config(cfg, "train")[i]
                                                         for i in range(0, n_train, 97)]


def test_reference_mixture_configs():
    mid, sft = load("mid"), load("sft")
    for cfg in (mid, sft):
        for part in ("train", "val"):
            validate_spec(cfg[part], cfg["task_options"])
        assert cfg["seed"] == 42 and set(cfg["task_options"]) <= set(TASKS)
    summary = {(e["task"], e.get("size"), e.get("repeat", 1)) for e in mid["train"]}
    assert summary == {("smoltalk", None, 1), ("mmlu", None, 1), ("gsm8k", None, 1), ("identity", 1000, 2),
                       ("simple_spelling", 200000, 1), ("spelling_bee", 80000, 1)}
    assert {(e["task"], e.get("size")) for e in mid["val"]} == {("smoltalk", None), ("mmlu", 5200), ("gsm8k", 420)}
    assert {(e["task"], e.get("size")) for e in sft["train"]} == {
        ("arc_easy", None), ("arc_challenge", None), ("gsm8k", None), ("smoltalk", 10000), ("identity", 300),
        ("simple_spelling", 300), ("spelling_bee", 300)}
    # the generated part of the reference SFT mixture builds offline
    generated = [e for e in sft["train"] if e["task"] in ("identity", "simple_spelling", "spelling_bee")]
    assert len(build_mixture(generated, task_options=sft["task_options"])) == 900


def test_local_paths_through_task_options(tmp_path):
    import json

    rows = [{"question": f"q{i}", "answer": f"a <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    cfg = {"seed": 1, "task_options": {"gsm8k": {"local_path": str(tmp_path)}},
           "train": [{"task": "gsm8k", "split": "train"}, {"task": "arithmetic", "size": 4}],
           "val": [{"task": "gsm8k", "split": "test", "size": 2}]}
    assert len(build_from_config(cfg, "train")) == 12 and len(build_from_config(cfg, "val")) == 2
    with pytest.raises(NanochatError, match="no 'test' list"):
        build_from_config(cfg, "test")


def test_mixture_key_selects_a_mixture_file(tmp_path):
    """`mixture=sft` reads nanochat/mixtures/sft.yaml, a path reads that file, an unknown name lists the known ones."""
    from omegaconf import OmegaConf

    from nanochat.common import NanochatError
    from nanochat.stages.chat_common import mixture_config

    def cfg(stage, mixture):
        return OmegaConf.create({"mixture": mixture, "stage": {"name": stage, "task_options": {}}})

    for name in ("mid", "sft", "offline_mid", "offline_sft", "sft2026", "offline_sft2026"):
        assert mixture_config(cfg("sft", name))["train"] == load(name)["train"]
    assert mixture_config(cfg("mid", None))["train"] == load("offline_mid")["train"]  # null = the stage's own
    custom = tmp_path / "mine.yaml"
    custom.write_text("train:\n  - {task: identity, size: 3}\n")
    assert mixture_config(cfg("sft", str(custom)))["train"] == [{"task": "identity", "size": 3}]
    with pytest.raises(NanochatError, match="unknown mixture 'nope'; choose one of: mid, offline_mid"):
        mixture_config(cfg("sft", "nope"))
