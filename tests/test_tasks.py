"""Tasks: GSM8K tool-call conversion on real rows, local-file loaders (and bad schemas), generated tasks, identity."""
import gzip
import json
import re

import pytest

from nanochat.chat import render_conversation, validate_conversation
from nanochat.common import NanochatError, shared_data_dir
from nanochat.tasks import Task, build_task
from nanochat.tasks.gsm8k import answer_to_parts
from nanochat.tasks.humaneval import extract_program
from nanochat.tasks.identity import load_identity
from nanochat.tasks.spelling import load_words
from nanochat.tokenizer import Tokenizer
from nanochat.tools import calculator

SHARED = shared_data_dir()
GSM8K_DIR = SHARED / "gsm8k" if SHARED and (SHARED / "gsm8k" / "train.jsonl").exists() else None
HUMANEVAL = SHARED / "humaneval" / "HumanEval.jsonl.gz" if SHARED else None
needs_gsm8k = pytest.mark.skipif(GSM8K_DIR is None, reason="shared GSM8K data not available")
needs_humaneval = pytest.mark.skipif(HUMANEVAL is None or not HUMANEVAL.exists(), reason="shared HumanEval not available")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def parts_to_annotated(parts):
    """Inverse of the GSM8K conversion: parts back to the '<<expr=result>>' text."""
    out = []
    for p in parts:
        if p["type"] == "text":
            out.append(p["text"])
        elif p["type"] == "python":
            out.append("<<" + p["text"])
        else:
            out.append("=" + p["text"] + ">>")
    return "".join(out)


# ---------------------------------------------------------------- GSM8K


def test_gsm8k_conversion_golden():
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nSo <<48+24=72>>72 in all.\n#### 72"
    assert answer_to_parts(answer) == [
        {"type": "text", "text": "Natalia sold 48/2 = "},
        {"type": "python", "text": "48/2"}, {"type": "python_output", "text": "24"},
        {"type": "text", "text": "24 clips in May.\nSo "},
        {"type": "python", "text": "48+24"}, {"type": "python_output", "text": "72"},
        {"type": "text", "text": "72 in all.\n#### 72"},
    ]
    # back-to-back calls leave no empty text part; an annotation without "=" has an empty result
    assert answer_to_parts("<<1+1=2>><<2*3>>x") == [
        {"type": "python", "text": "1+1"}, {"type": "python_output", "text": "2"},
        {"type": "python", "text": "2*3"}, {"type": "python_output", "text": ""}, {"type": "text", "text": "x"}]


@needs_gsm8k
def test_gsm8k_real_rows_round_trip_and_render():
    rows = [json.loads(line) for line in (GSM8K_DIR / "train.jsonl").read_text().splitlines()[:300]]
    tok = Tokenizer.byte_level()
    n_calls = 0
    for row in rows:
        parts = answer_to_parts(row["answer"])
        assert parts_to_annotated(parts) == row["answer"]
        n_calls += sum(p["type"] == "python" for p in parts)
        c = {"messages": [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": parts}]}
        ids, mask = render_conversation(tok, c)
        assert len(ids) == len(mask) and ids.count(261) == ids.count(263) == sum(p["type"] == "python" for p in parts)
        # tool output is never supervised
        for i in (k for k, t in enumerate(ids) if t == 263):
            j = ids.index(264, i)
            assert set(mask[i:j + 1]) == {0}
    assert n_calls > 300


@needs_gsm8k
def test_gsm8k_task_from_local_folder_and_evaluate():
    train = build_task("gsm8k", local_path=str(GSM8K_DIR), split="train")
    test = build_task("gsm8k", local_path=str(GSM8K_DIR), split="test")
    assert (len(train), len(test)) == (7473, 1319)
    assert train.eval_type == "generative"
    for c in test:
        validate_conversation(c)  # every real row converts to a valid conversation
    c = test[0]
    ref = re.search(r"#### (\S+)", c["messages"][-1]["content"][-1]["text"]).group(1)
    assert test.evaluate(c, f"blah blah\n#### {ref}") == 1
    assert test.evaluate(c, "#### 123456789") == 0
    assert test.evaluate(c, "no answer") == 0
    assert test.reward(c, f"#### {ref}") == 1.0
    # commas are stripped from the completion's number
    fake = {"messages": [{"role": "user", "content": "q"},
                         {"role": "assistant", "content": [{"type": "text", "text": "#### 1200"}]}]}
    assert test.evaluate(fake, "#### 1,200") == 1
    # slicing and determinism: the same example at the same index every time
    sub = build_task("gsm8k", local_path=str(GSM8K_DIR / "test.jsonl"), split="test", size=10)
    assert len(sub) == 10 and sub[3] == test[3] and sub[-1] == test[9]


# ---------------------------------------------------------------- HumanEval


@needs_humaneval
def test_humaneval_local_gz_and_evaluate():
    pytest.importorskip("nanochat.execution")
    task = build_task("humaneval", local_path=str(HUMANEVAL))
    assert len(task) == 164 and task.eval_type == "generative"
    c = task[0]
    assert {"entry_point", "test", "task_id"} <= set(c) and c["messages"][0]["content"] in c["messages"][1]["content"]
    assert task.evaluate(c, f"Here you go:\n```python\n{c['messages'][1]['content']}\n```\nDone.") is True
    assert task.evaluate(c, "def nothing():\n    pass\n") is False


def test_extract_program():
    assert extract_program("text\n```python\nx = 1\n```\nmore ```\ny\n```") == "x = 1"
    assert extract_program("  def f(): pass  ") == "def f(): pass"


def test_humaneval_schema_error(tmp_path):
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"task_id": "x", "prompt": "p", "test": "t", "entry_point": "f"}) + "\n")
    with pytest.raises(NanochatError, match=r"he\.jsonl\.gz: missing column 'canonical_solution'"):
        build_task("humaneval", local_path=str(path))


# ---------------------------------------------------------------- local loaders: MMLU, ARC, SmolTalk


MMLU_ROW = {"question": "2+2?", "choices": ["1", "2", "3", "4"], "answer": 3, "subject": "math"}


def test_mmlu_local_parquet_and_wrapped_rows(tmp_path):
    import datasets

    datasets.Dataset.from_list([MMLU_ROW] * 3).to_parquet(str(tmp_path / "test.parquet"))
    task = build_task("mmlu", subset="all", split="test", local_path=str(tmp_path / "test.parquet"))
    c = task[0]
    assert task.eval_type == "categorical" and c["letters"] == ["A", "B", "C", "D"]
    assert c["messages"][1]["content"] == "D" and "- 4=D\n" in c["messages"][0]["content"]
    assert task.evaluate(c, "D") and not task.evaluate(c, "A")
    # auxiliary_train on the Hub wraps each row in a "train" struct
    aux = tmp_path / "aux"
    aux.mkdir()
    write_jsonl(aux / "train.jsonl", [{"train": MMLU_ROW}] * 2)
    aux_task = build_task("mmlu", subset="auxiliary_train", split="train", local_path=str(aux))
    assert len(aux_task) == 2 and aux_task[1]["messages"][1]["content"] == "D"


def test_mmlu_bad_schema_and_split(tmp_path):
    path = write_jsonl(tmp_path / "mmlu.jsonl", [{"question": "q", "options": ["a"], "answer": 0}])
    with pytest.raises(NanochatError, match=r"mmlu\.jsonl: missing column 'choices' \(has: question, options, answer\)"):
        build_task("mmlu", local_path=str(path))
    with pytest.raises(NanochatError, match="auxiliary_train only has the split 'train'"):
        build_task("mmlu", subset="auxiliary_train", split="test")


def test_arc_local_folder_picks_split(tmp_path):
    def row(i, labels=("A", "B", "C", "D")):
        return {"id": str(i), "question": f"Q{i}", "answerKey": labels[1],
                "choices": {"text": [f"c{j}" for j in range(len(labels))], "label": list(labels)}}

    write_jsonl(tmp_path / "train.jsonl", [row(i) for i in range(5)])
    write_jsonl(tmp_path / "test.jsonl", [row(i, ("1", "2", "3")) for i in range(2)])
    train = build_task("arc_easy", split="train", local_path=str(tmp_path))
    test = build_task("arc_challenge", split="test", local_path=str(tmp_path))
    assert (len(train), len(test)) == (5, 2)
    c = test[0]
    assert c["letters"] == ["1", "2", "3"] and c["messages"][1]["content"] == "2"
    assert test.evaluate(c, "2") and not test.evaluate(c, "1")
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": {"text": [], "label": []}}])
    with pytest.raises(NanochatError, match=r"bad\.jsonl: missing column 'answerKey'"):
        build_task("arc_easy", local_path=str(tmp_path / "bad.jsonl"))


def test_smoltalk_save_to_disk_and_bad_rows(tmp_path):
    import datasets

    good = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "v"}]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([good, good]),
                               "test": datasets.Dataset.from_list([good, bad])})
    dd.save_to_disk(str(tmp_path / "smol"))
    train = build_task("smoltalk", split="train", local_path=str(tmp_path / "smol"))
    assert len(train) == 2 and train[0] == good
    test = build_task("smoltalk", split="test", local_path=str(tmp_path / "smol"))
    with pytest.raises(NanochatError, match=r"smoltalk test row \d: message 1: expected role 'assistant'"):
        [test[i] for i in range(2)]
    datasets.Dataset.from_list([good]).save_to_disk(str(tmp_path / "single"))
    assert len(build_task("smoltalk", local_path=str(tmp_path / "single"))) == 1


def test_local_path_errors(tmp_path):
    with pytest.raises(NanochatError, match=r"local data .*nope\.jsonl does not exist"):
        build_task("gsm8k", local_path=str(tmp_path / "nope.jsonl"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(NanochatError, match="unsupported file type"):
        build_task("gsm8k", local_path=str(tmp_path / "data.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NanochatError, match="no .parquet/.jsonl/.json/.csv files"):
        build_task("gsm8k", local_path=str(tmp_path / "empty"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(NanochatError, match=r"broken\.jsonl: cannot read it as json"):
        build_task("gsm8k", local_path=str(tmp_path / "broken.jsonl"))


def test_hub_failure_is_one_clear_error(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(NanochatError, match=r"cannot load openai/gsm8k \(main\) split 'train' from the Hugging Face "
                                            r"Hub: .*give the task a local_path"):
        build_task("gsm8k")


# ---------------------------------------------------------------- generated tasks


def test_spelling_tasks():
    simple = build_task("simple_spelling", size=50)
    bee = build_task("spelling_bee", size=50)
    assert len(simple) == len(bee) == 50 and simple.eval_type == bee.eval_type == "generative"
    for c in simple:
        word = c["messages"][0]["content"].removeprefix("Spell the word: ")
        assert c["messages"][1]["content"] == f"{word}:{','.join(word)}"
        assert simple.evaluate(c, c["messages"][1]["content"]) and not simple.evaluate(c, "x:x")
    for c in bee:
        parts = c["messages"][1]["content"]
        code, out, final = parts[2]["text"], parts[3]["text"], parts[4]["text"]
        word, letter = re.fullmatch(r"'([a-z]+)'\.count\('([a-z])'\)", code).groups()
        assert calculator(code) == out == str(word.count(letter))  # the engine's tool agrees with the output
        assert final.endswith(f"#### {word.count(letter)}") and f"This gives us {out}." in parts[0]["text"]
        assert bee.evaluate(c, f"#### {out}") == 1 and bee.evaluate(c, f"#### {int(out) + 1}") == 0
    assert build_task("spelling_bee", size=50)[7] == bee[7]  # deterministic per index


def test_spelling_test_words_are_held_out(tmp_path):
    words = load_words()
    assert len(words) > 200_000 and words == tuple(sorted(set(words)))
    train = build_task("simple_spelling", size=300, split="train")
    test = build_task("simple_spelling", size=300, split="test")
    assert not set(train.words) & set(test.words)
    test_words = {c["messages"][0]["content"].split()[-1] for c in test}
    assert test_words <= set(test.words) and not test_words & set(train.words)
    own = tmp_path / "words.txt"
    own.write_text("\n".join(["Apple", "banana", "x", "it's", "cherry"] + [f"w{'a' * i}" for i in range(1, 40)]))
    task = build_task("spelling_bee", size=5, words_path=str(own))
    assert {"apple", "banana", "cherry"} <= set(task.words) | set(build_task("spelling_bee", split="test",
                                                                            words_path=str(own)).words)
    with pytest.raises(NanochatError, match="cannot read word list"):
        build_task("simple_spelling", words_path=str(tmp_path / "missing.txt"))


def test_arithmetic_tool_use():
    task = build_task("arithmetic", size=200)
    for c in task:
        validate_conversation(c)
        parts = c["messages"][1]["content"]
        code = next(p["text"] for p in parts if p["type"] == "python")
        out = next(p["text"] for p in parts if p["type"] == "python_output")
        assert re.fullmatch(r"[0-9+\-*/()]+", code)
        value = eval(code)  # digits and operators only, checked above
        assert float(out) == value and parts[-1]["text"].endswith(f"#### {out}")
        assert task.evaluate(c, f"The answer\n#### {out}") == 1 and task.evaluate(c, "#### 0.5") == 0
    assert build_task("arithmetic", size=3, split="test")[0] != task[0]


# ---------------------------------------------------------------- identity


def test_identity_default():
    task = build_task("identity", size=200)
    text = json.dumps([task[i] for i in range(len(task))])
    assert "nanochat" in text and "the nanochat open-source project" in text
    for c in task:
        validate_conversation(c)
    assert task[5] == build_task("identity", size=200)[5]
    assert task[5] != build_task("identity", size=200, split="test")[5]


def test_identity_customisation(tmp_path):
    path = tmp_path / "me.yaml"
    path.write_text("name: Zorp\nmaker: ACME Labs\ndescription: a tiny robot brain\n"
                    "abilities: [juggle numbers]\nlimitations: [cannot see]\n"
                    "qa:\n  - user: Favourite colour?\n    assistant: '{name} likes blue.'\n")
    task = build_task("identity", size=300, identity_path=str(path))
    text = json.dumps([c for c in task])
    assert "Zorp" in text and "ACME Labs" in text and "juggle numbers" in text and "Zorp likes blue." in text
    assert "nanochat" not in text
    assert "build" not in task.topics and "license" not in task.topics  # optional facts absent -> no such turns


@pytest.mark.parametrize("content, message", [
    ("name: X\n", "missing key 'maker'"),
    ("name: X\nmaker: Y\ndescription: d\nabilities: []\nlimitations: [l]\n", "missing key 'abilities'"),
    ("name: X\nmaker: Y\ndescription: d\nabilities: a\nlimitations: [l]\n", "abilities must be a list"),
    ("name: X\nmaker: Y\ndescription: d\nabilities: [a]\nlimitations: [l]\ncolour: red\n", "unknown key(s) colour"),
    ("name: X\nmaker: Y\ndescription: d\nabilities: [a]\nlimitations: [l]\nqa: [{user: hi}]\n", "qa[0] must have"),
    ("- just\n- a list\n", "must be a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_identity_errors(tmp_path, content, message):
    path = tmp_path / "id.yaml"
    path.write_text(content)
    with pytest.raises(NanochatError) as err:
        load_identity(path)
    assert message in str(err.value) and "id.yaml" in str(err.value)
    with pytest.raises(NanochatError, match="cannot read identity file"):
        load_identity(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- conversations file, slicing, registry


def test_conversations_file(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "tag": 1}
    path = write_jsonl(tmp_path / "c.jsonl", [good, good["messages"]])
    task = build_task("conversations", path=str(path))
    assert len(task) == 2 and task[0] == good and task[1] == {"messages": good["messages"]}
    write_jsonl(path, [good, {"messages": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(NanochatError, match=r"c\.jsonl:2: message 0: expected role 'user'"):
        build_task("conversations", path=str(path))
    path.write_text("{oops\n")
    with pytest.raises(NanochatError, match=r"c\.jsonl:1: not valid JSON"):
        build_task("conversations", path=str(path))


class Numbers(Task):
    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def num_examples(self):
        return self.n

    def get_example(self, i):
        return {"i": i}


def test_task_slicing():
    assert [c["i"] for c in Numbers(10)] == list(range(10))
    assert [c["i"] for c in Numbers(10, start=2, stop=9, step=3)] == [2, 5, 8]
    assert len(Numbers(10, start=2, stop=100)) == 8  # a stop past the end means "all"
    t = Numbers(10, start=1, step=2)
    assert len(t) == 5 and t[-1] == {"i": 9}
    with pytest.raises(IndexError):
        t[5]
    with pytest.raises(TypeError):
        t["1"]
    import numpy as np

    assert t[np.int64(1)] == t[1] == {"i": 3}
    with pytest.raises(NanochatError, match="step must be an integer >= 1"):
        Numbers(3, step=0)
    with pytest.raises(NanochatError, match="stop must be an integer >= 5"):
        Numbers(3, start=5, stop=2)
    with pytest.raises(NanochatError, match="not an evaluation task"):
        Numbers(3).eval_type


def test_registry_errors():
    with pytest.raises(NanochatError, match=r"unknown task 'gsm9k'; known tasks: arc_challenge, arc_easy, .*spelling_bee"):
        build_task("gsm9k")
    with pytest.raises(NanochatError, match=r"task arithmetic: unknown option\(s\) colour; known: .*size"):
        build_task("arithmetic", colour="red")
    with pytest.raises(NanochatError, match="size must be a non-negative integer"):
        build_task("arithmetic", size=-1)
    with pytest.raises(NanochatError, match="give size or stop, not both"):
        build_task("gsm8k", size=3, stop=5)
    with pytest.raises(NanochatError, match="arithmetic split must be train or test"):
        build_task("arithmetic", split="validation")
