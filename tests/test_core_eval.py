"""CORE evaluation: hand-computed scores with a scripted model, few-shot determinism, full and cropped prompts,
the bundle, and (when a reference checkout is given) example-for-example agreement with the reference."""
import csv
import importlib.util
import io
import json
import math
import os
import random
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nanochat.common import NanochatError, shared_data_dir
from nanochat.core_bundle import TaskSpec, ensure_bundle, load_bundle, load_task_data
from nanochat.core_eval import (TaskError, build_examples, centered, crop_left, evaluate_core, evaluate_task,
                                example_results, fewshot_indices, render_prompts)
from nanochat.tokenizer import Tokenizer
from tests.test_download import Server

TOK = Tokenizer.byte_level()  # token id = byte value, <|bos|> = 256
V = TOK.vocab_size


class BigramModel(torch.nn.Module):
    """Scripted model: the logits at each position depend only on the current token, through a fixed table."""

    def __init__(self, max_seq_len=None, context=None, positions=None):
        super().__init__()
        table = torch.zeros(V, V)
        table[:, ord("Y")] = 5.0             # multiple choice: "Y" is always likely
        table[ord("A"), ord(" ")] = 6.0      # schema: a space is likely after "A"
        for a, b in ("ab", "bc", "c=", "=d", "de"):  # language modeling: a -> b -> c -> = -> d -> e
            table[ord(a), ord(b)] = 10.0
        self.register_buffer("table", table)
        self.max_seq_len = max_seq_len
        if context is not None:  # like GPT: a training context, and a rotary table of `positions`
            self.config = SimpleNamespace(sequence_len=context)
            self.rotary_len = positions
        self.seen = []

    def forward(self, idx):
        self.seen.append(idx.clone())
        for limit in (self.max_seq_len, getattr(self, "rotary_len", None)):
            assert limit is None or idx.shape[1] <= limit
        return self.table[idx]


MC_ROWS = [
    {"query": "q1", "choices": ["N", "YYYYYYY"], "gold": 1},  # mean loss picks YYYYYYY (a sum would pick N)
    {"query": "q2", "choices": ["YY", "NN"], "gold": 1},       # picks YY: wrong
    {"query": "q3", "choices": ["NY", "YN", "NN"], "gold": 0},  # NY and YN tie exactly: the first wins
]
SCHEMA_ROWS = [
    {"context_options": ["I saw A", "I saw B"], "continuation": "Z", "gold": 0},  # " " after A: right
    {"context_options": ["it was B", "it was A"], "continuation": "Z", "gold": 0},  # picks option 1: wrong
    {"context_options": ["xA", "yA"], "continuation": "Z", "gold": 1},  # common suffix "A Z": tie, picks 0
]
LM_ROWS = [
    {"context": "abc", "continuation": "de"},    # c -> = -> d -> e: right
    {"context": "abc", "continuation": "dx"},    # x is not predicted: wrong
    {"context": "  abc \n", "continuation": "d"},  # context is stripped before the delimiter: right
]


def spec(task_type, delimiter, shots=0, baseline=0.0, label="t"):
    return TaskSpec(label, task_type, shots, delimiter, Path("unused.jsonl"), baseline)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_hand_computed_accuracy_per_type(batch_size):
    model = BigramModel()
    mc = evaluate_task(model, TOK, spec("multiple_choice", " ", baseline=25.0), MC_ROWS, batch_size=batch_size,
                       progress=False)
    assert mc["accuracy"] == pytest.approx(2 / 3) and mc["n"] == 3
    assert mc["centered"] == pytest.approx((2 / 3 - 0.25) / 0.75)
    sc = evaluate_task(model, TOK, spec("schema", " "), SCHEMA_ROWS, batch_size=batch_size, progress=False)
    assert sc["accuracy"] == pytest.approx(1 / 3)
    lm = evaluate_task(model, TOK, spec("language_modeling", "="), LM_ROWS, batch_size=batch_size, progress=False)
    assert lm["accuracy"] == pytest.approx(2 / 3)
    if batch_size > 1:  # several examples really shared a forward pass
        assert max(x.shape[0] for x in model.seen) > 3


def test_centered():
    assert centered(0.5, 25.0) == pytest.approx(1 / 3)
    assert centered(0.25, 25.0) == 0.0
    assert centered(1.0, 50.0) == 1.0
    assert centered(0.3, 0.0) == pytest.approx(0.3)


def test_render_prompts_exact_text():
    shot = [{"query": "E1", "choices": ["x", "y"], "gold": 1}]
    assert render_prompts("multiple_choice", {"query": "Q", "choices": ["a", "b"], "gold": 0}, "\nAnswer: ", shot) \
        == ["E1\nAnswer: y\n\nQ\nAnswer: a", "E1\nAnswer: y\n\nQ\nAnswer: b"]
    shot = [{"context_options": ["o1", "o2"], "continuation": "c", "gold": 0}]
    assert render_prompts("schema", {"context_options": ["p", "q"], "continuation": "k", "gold": 1}, " ", shot) \
        == ["o1 c\n\np k", "o1 c\n\nq k"]
    shot = [{"context": "  c1 ", "continuation": "k1"}]
    assert render_prompts("language_modeling", {"context": "ctx ", "continuation": "k"}, " ", shot) \
        == ["c1 k1\n\nctx", "c1 k1\n\nctx k"]


def test_fewshot_determinism():
    got = fewshot_indices(5, 20, 3)
    assert got == random.Random(1234 + 5).sample([i for i in range(20) if i != 5], 3)
    assert got == fewshot_indices(5, 20, 3) and 5 not in got
    assert all(i not in fewshot_indices(i, 10, 9) for i in range(10))
    assert fewshot_indices(0, 3, 2) == random.Random(1234).sample([1, 2], 2)
    assert fewshot_indices(0, 1, 0) == []
    with pytest.raises(ValueError):  # never fewer shots than asked (the reference's random.sample fails too)
        fewshot_indices(0, 3, 3)


def test_too_few_rows_for_the_fewshot_count_is_an_error_naming_the_task(tmp_path):
    with pytest.raises(TaskError, match="task t has 3 rows, but its 3-shot prompts need at least 4"):
        evaluate_task(BigramModel(), TOK, spec("language_modeling", "=", shots=3), LM_ROWS, progress=False)
    assert evaluate_task(BigramModel(), TOK, spec("language_modeling", "=", shots=2), LM_ROWS,
                         progress=False)["n"] == 3
    bundle = write_bundle(tmp_path / "b", {"mc": MC_ROWS, "lm": LM_ROWS}, shots={"lm": 2})
    model = BigramModel()
    with pytest.raises(NanochatError, match=r"task lm has 2 rows, but its 2-shot prompts need at least 3 "
                                            r"\(max_per_task=2: use at least 3\)"):
        evaluate_core(model, TOK, bundle, max_per_task=2, progress=False)
    assert model.seen == []  # found before anything was scored


def test_model_sees_the_fewshot_prompt():
    rows = [{"context": f"c{i}", "continuation": f"k{i}"} for i in range(6)]
    model = BigramModel()
    evaluate_task(model, TOK, spec("language_modeling", " ", shots=2), rows, batch_size=1, progress=False)
    first = TOK.decode(model.seen[0][0].tolist())
    shots = fewshot_indices(0, 6, 2)
    assert first == "<|bos|>" + "".join(f"c{i} k{i}\n\n" for i in shots) + "c0 k0"


def test_left_cropping():  # prompts="crop"
    assert crop_left(list(range(10)), 6, 10, 4) == ([6, 7, 8, 9], 1, 4)  # start clamped: token 0 has no prediction
    assert crop_left(list(range(10)), 8, 10, 4) == ([6, 7, 8, 9], 2, 4)
    assert crop_left([1, 2, 3], 1, 3, 8) == ([1, 2, 3], 1, 3)
    long_rows = [{"context": "q" * 200 + "abc", "continuation": "de"}, {"context": "z" * 50 + "abc",
                                                                         "continuation": "dx"}]
    model = BigramModel(max_seq_len=8)
    res = evaluate_task(model, TOK, spec("language_modeling", "="), long_rows, prompts="crop", max_seq_len=8,
                        batch_size=2, progress=False)
    assert res["accuracy"] == 0.5 and res["cropped"] == 2  # the continuation survives the crop and is scored
    assert all(x.shape[1] <= 8 for x in model.seen)
    mc = [{"query": "w" * 100, "choices": ["N", "YYYYYYY"], "gold": 1}]
    model = BigramModel(max_seq_len=12)
    assert evaluate_task(model, TOK, spec("multiple_choice", " "), mc, prompts="crop", max_seq_len=12,
                         progress=False)["accuracy"] == 1
    with pytest.raises(NanochatError, match="prompts must be one of full, crop"):
        evaluate_task(model, TOK, spec("multiple_choice", " "), mc, prompts="half", progress=False)


def test_gpt_gets_whole_prompts_or_its_context():
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(sequence_len=16, vocab_size=V, n_layer=1, n_head=1, n_kv_head=1, n_embd=64))
    gpt.init_weights()
    widths = []
    gpt.register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    rows = [{"query": "x" * 40, "choices": ["a", "b"], "gold": 0}]
    res = evaluate_task(gpt, TOK, spec("multiple_choice", " "), rows, progress=False)
    assert widths == [43] and res["n"] == 1 and res["cropped"] == 0  # <|bos|> + 40 + " " + choice, past 16
    res = evaluate_task(gpt, TOK, spec("multiple_choice", " "), rows, prompts="crop", progress=False)
    assert widths[1:] == [16] and res["cropped"] == 1  # the context of model.config


# -----------------------------------------------------------------------------------------------------------------
# A prompt longer than the model's context, checked by hand

# multiple choice after "q ": choice 0 = 3 likely "Y" then 9 unlikely "N" (12 tokens), choice 1 = "NNNNY" (5)
LONG_MC = [{"query": "q", "choices": ["YYY" + "N" * 9, "NNNNY"], "gold": 0}]


class RecallModel(torch.nn.Module):
    """Scripted model: after a "K" anywhere earlier in the row it predicts "d", before any "K" it predicts "x"."""

    config = SimpleNamespace(sequence_len=8)
    rotary_len = 80

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, idx):
        self.seen.append(idx.shape[1])
        recalled = torch.cumsum(idx == ord("K"), dim=1) > 0
        logits = torch.zeros(*idx.shape, V)
        logits[..., ord("d")] = recalled.float() * 5
        logits[..., ord("x")] = (~recalled).float() * 5
        return logits


def test_long_prompt_full_scores_the_whole_prompt_and_crop_crops():
    model = BigramModel(context=8, positions=80)
    s = spec("multiple_choice", " ")
    # <|bos|> "q" " " is the common prefix (3 tokens); the rows are 15 and 8 tokens long
    assert [ex.spans for ex in build_examples(TOK, s, LONG_MC, [0], None)] == [[(3, 15), (3, 8)]]
    # cropped to 8: choice 0 keeps its last 8 tokens (all "N"), scored from the second: 7 tokens
    assert [ex.spans for ex in build_examples(TOK, s, LONG_MC, [0], 8)] == [[(1, 8), (3, 8)]]
    # every position's logits: "Y" 5, all else 0, so a "Y" costs eps and anything else costs big
    eps, big = math.log(math.exp(5) + V - 1) - 5, math.log(math.exp(5) + V - 1)
    full0, full1, crop0 = (3 * eps + 9 * big) / 12, (4 * big + eps) / 5, big
    assert full0 < full1 < crop0  # full: choice 0 (right); cropped: choice 1 (wrong)
    assert example_results(model, TOK, s, LONG_MC, prompts="full") == ([True], 0)
    assert [x.shape[1] for x in model.seen] == [15]  # the whole prompt, nearly twice the context
    assert example_results(model, TOK, s, LONG_MC, prompts="crop") == ([False], 1)
    assert [x.shape[1] for x in model.seen[1:]] == [8]

    rows = [{"context": "K" + "-" * 20, "continuation": "d"},  # 24 tokens: the "K" is 23 tokens back
            {"context": "-" * 20, "continuation": "d"},        # no "K" at all: wrong either way
            {"context": "K--", "continuation": "d"}]           # 6 tokens: fits the context
    recall, lm = RecallModel(), spec("language_modeling", "=")
    assert example_results(recall, TOK, lm, rows, prompts="full", batch_size=1) == ([True, False, True], 0)
    assert sorted(recall.seen) == [6, 23, 24]
    recall.seen.clear()
    assert example_results(recall, TOK, lm, rows, prompts="crop", batch_size=1) == ([False, False, True], 2)
    assert sorted(recall.seen) == [6, 8, 8]


def test_full_prompts_beyond_the_position_limit_keep_their_end_with_a_warning(capsys):
    model = BigramModel(context=8, positions=10)
    res = evaluate_task(model, TOK, spec("multiple_choice", " "), LONG_MC, progress=False)
    assert res["cropped"] == 1 and res["accuracy"] == 0  # 9 "N" left in choice 0's span: choice 1 wins
    assert [x.shape[1] for x in model.seen] == [10]
    assert "1 of 1 prompts are longer than the model can run (10 positions)" in capsys.readouterr().err


def test_batched_equals_one_at_a_time():
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(sequence_len=64, vocab_size=V, n_layer=1, n_head=1, n_kv_head=1, n_embd=64))
    gpt.init_weights()
    torch.nn.init.normal_(gpt.lm_head.weight, std=0.5)
    rng = random.Random(0)
    rows = [{"query": "".join(rng.choice("abc ") for _ in range(rng.randint(3, 30))),
             "choices": ["".join(rng.choice("xyz") for _ in range(rng.randint(1, 6))) for _ in range(3)],
             "gold": rng.randint(0, 2)} for _ in range(24)]
    s = spec("multiple_choice", " ", shots=1)
    one = evaluate_task(gpt, TOK, s, rows, batch_size=1, progress=False)
    many = evaluate_task(gpt, TOK, s, rows, batch_size=7, max_batch_tokens=300, progress=False)
    assert one["accuracy"] == many["accuracy"] and 0 < one["accuracy"] < 1


def test_bad_row_fails_only_its_task(tmp_path):
    bundle = write_bundle(tmp_path / "b", {"mc": MC_ROWS, "schema": SCHEMA_ROWS + [{"context_options": "oops"}],
                                           "lm": LM_ROWS})
    res = evaluate_core(BigramModel(), TOK, bundle, progress=False)
    assert res["failed"] == ["schema"] and "context_options" in res["tasks"]["schema"]["error"]
    assert res["tasks"]["mc"]["accuracy"] == pytest.approx(2 / 3)
    assert res["core"] == pytest.approx(((2 / 3 - 0.25) / 0.75 + 2 / 3) / 2)
    with pytest.raises(TaskError):
        evaluate_task(BigramModel(), TOK, spec("multiple_choice", " "), [{"query": "q", "choices": ["a"],
                                                                          "gold": 3}], progress=False)


def write_bundle(folder: Path, tasks: dict, shots: dict | None = None) -> Path:
    """A CORE bundle with tasks 'mc' (MC, baseline 25%), 'schema' (0%) and 'lm' (delimiter '=', 0%); 0-shot
    unless `shots` says otherwise."""
    meta = {"mc": ("multiple_choice", " ", 25.0), "schema": ("schema", " ", 0.0), "lm": ("language_modeling", "=", 0.0)}
    (folder / "eval_data" / "sub").mkdir(parents=True)
    lines = ["icl_tasks:"]
    for label, rows in tasks.items():
        kind, delim, _ = meta[label]
        (folder / "eval_data" / "sub" / f"{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        lines += [f"- label: {label}", f"  dataset_uri: sub/{label}.jsonl",
                  f"  num_fewshot: [{(shots or {}).get(label, 0)}]",
                  f"  icl_task_type: {kind}", f"  continuation_delimiter: {json.dumps(delim)}"]
    (folder / "core.yaml").write_text("\n".join(lines) + "\n")
    with open(folder / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Task Category", "Random baseline"])
        for label in tasks:
            w.writerow([label, "x", meta[label][2]])
    return folder


def test_core_over_a_hand_bundle(tmp_path):
    bundle = write_bundle(tmp_path / "b", {"mc": MC_ROWS, "schema": SCHEMA_ROWS, "lm": LM_ROWS})
    res = evaluate_core(BigramModel(), TOK, bundle, progress=False, batch_size=2)
    expected = [(2 / 3 - 0.25) / 0.75, 1 / 3, 2 / 3]
    assert [res["tasks"][k]["centered"] for k in ("mc", "schema", "lm")] == pytest.approx(expected)
    assert res["core"] == pytest.approx(sum(expected) / 3) and res["failed"] == [] and res["prompts"] == "full"
    assert evaluate_core(BigramModel(), TOK, bundle, progress=False, prompts="crop")["prompts"] == "crop"
    assert evaluate_core(BigramModel(), TOK, bundle, progress=False, max_per_task=1)["tasks"]["lm"]["n"] == 1
    assert list(evaluate_core(BigramModel(), TOK, bundle, progress=False, tasks=["lm"])["tasks"]) == ["lm"]


def test_eval_md_and_the_report_say_which_prompts_were_used(tmp_path):
    from nanochat.evaluation import to_markdown
    from nanochat.report import _eval_lines
    from nanochat.report_runs import Run
    from tests.test_report import write_run

    core = {"score": 0.1, "prompts": "crop", "tasks": {"copa": {"accuracy": 0.5, "centered": 0.0, "n": 4,
                                                                "cropped": 2}}}
    md = to_markdown({"stage": "base", "model": "m", "results": {"core": core}, "failed": {}})
    assert "CORE prompts: crop (each prompt cut to the model's context" in md and "| copa | 0.5000 | 0.0000 | 2 |" in md
    run = Run.load(write_run(tmp_path, "base", "d2", evals={"core": core}), "base")
    assert "| CORE (prompts cropped to the context) | 0.1000 |" in _eval_lines(run)
    run = Run.load(write_run(tmp_path, "base", "d3", evals={"core": {**core, "prompts": "full"}}), "base")
    assert "| CORE (full prompts) | 0.1000 |" in _eval_lines(run)


def test_shuffle_and_cut(tmp_path):
    rows = [{"context": str(i), "continuation": "x"} for i in range(30)]
    bundle = write_bundle(tmp_path / "b", {"lm": rows})
    spec_ = load_bundle(bundle)[0]
    data = load_task_data(spec_, max_per_task=5)
    expected = list(rows)
    random.Random(1337).shuffle(expected)
    assert data == expected[:5]


def test_corrupt_or_missing_files(tmp_path):
    bundle = write_bundle(tmp_path / "b", {"mc": MC_ROWS, "lm": LM_ROWS})
    (bundle / "eval_data" / "sub" / "lm.jsonl").write_text('{"context": "a", "continuation": "b"}\n{oops\n')
    with pytest.raises(NanochatError, match="lm.jsonl line 2"):
        evaluate_core(BigramModel(), TOK, bundle, progress=False)
    (bundle / "eval_data" / "sub" / "lm.jsonl").unlink()
    with pytest.raises(NanochatError, match="missing task data"):
        load_bundle(bundle)
    (bundle / "core.yaml").write_text("icl_tasks: [\n")
    with pytest.raises(NanochatError, match="not valid YAML"):
        load_bundle(bundle)
    (bundle / "core.yaml").write_text("icl_tasks:\n- label: mc\n  dataset_uri: sub/mc.jsonl\n"
                                      "  num_fewshot: [0]\n  icl_task_type: generation\n")
    with pytest.raises(NanochatError, match="unknown icl_task_type"):
        load_bundle(bundle)
    (bundle / "core.yaml").unlink()
    with pytest.raises(NanochatError, match="has no core.yaml"):
        load_bundle(bundle)


# -----------------------------------------------------------------------------------------------------------------
# Download from a local HTTP server


def bundle_zip(tmp_path: Path) -> bytes:
    src = write_bundle(tmp_path / "src", {"mc": MC_ROWS, "lm": LM_ROWS})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, "eval_bundle/" + p.relative_to(src).as_posix())
    return buf.getvalue()


ZIP = "eval_bundle.zip"


@pytest.fixture()
def server(tmp_path):
    """The shard-download tests' misbehaving server, serving a good bundle zip."""
    s = Server()
    s.files[ZIP] = bundle_zip(tmp_path)
    s.zip_url = f"{s.url}/{ZIP}"
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_download_extract_and_reuse(tmp_path, server):
    dest = tmp_path / "cache" / "eval_bundle"
    specs = load_bundle(dest, url=server.zip_url, progress=False)
    assert [s.label for s in specs] == ["mc", "lm"] and len(server.requests(ZIP)) == 1
    assert (dest / "core.yaml").is_file() and not (dest.parent / ZIP).exists()
    res = evaluate_core(BigramModel(), TOK, dest, url=server.zip_url, progress=False)
    assert res["tasks"]["mc"]["accuracy"] == pytest.approx(2 / 3)
    assert len(server.requests(ZIP)) == 1  # not fetched again


def test_download_rejects_a_corrupt_zip(tmp_path, server):
    good = server.files[ZIP]
    server.files[ZIP] = good[: len(good) // 2] + b"\0" * (len(good) - len(good) // 2)
    dest = tmp_path / "cache" / "eval_bundle"
    with pytest.raises(NanochatError, match=f"download of {ZIP} failed after 2 attempts.*not a usable eval bundle zip"):
        ensure_bundle(dest, url=server.zip_url, retries=1, backoff=0.01, progress=False)
    assert not dest.exists() and len(server.requests(ZIP)) == 2
    assert not (dest.parent / (ZIP + ".partial")).exists()  # complete but corrupt: never resumed
    server.files[ZIP] = good
    assert (ensure_bundle(dest, url=server.zip_url, retries=0, progress=False) / "eval_meta_data.csv").is_file()


def test_bundle_download_resumes_through_the_shared_downloader(tmp_path, server):
    """A dropped connection resumes with a Range request (`nanochat.download`), like a FineWeb-EDU shard."""
    server.plan[ZIP] = ["drop", "drop"]
    dest = tmp_path / "eval_bundle"
    assert (ensure_bundle(dest, url=server.zip_url, retries=2, backoff=0.001, progress=False) / "core.yaml").is_file()
    reqs = server.requests(ZIP)
    assert reqs[0] is None and len(reqs) == 3
    starts = [int(r.split("=")[1].rstrip("-")) for r in reqs[1:]]
    assert 0 < starts[0] < starts[1] < len(server.files[ZIP])


def test_bundle_404_is_not_retried(tmp_path, server):
    with pytest.raises(NanochatError, match="HTTP 404"):
        ensure_bundle(tmp_path / "eval_bundle", url=f"{server.url}/missing.zip", retries=3, backoff=0.001,
                      progress=False)
    assert len(server.requests("missing.zip")) == 1 and not (tmp_path / "eval_bundle").exists()


# -----------------------------------------------------------------------------------------------------------------
# The real task files on a tiny random model

# Tasks of the DCLM set that llm-foundry's files do not describe: (type, few-shot, baseline %)
EXTRA = {"bigbench_cs_algorithms": ("language_modeling", 10, 0.0),
         "bigbench_language_identification": ("multiple_choice", 10, 25.0),
         "bigbench_repeat_copy_logic": ("language_modeling", 10, 0.0)}


def real_bundle(tmp_path: Path) -> Path:
    import yaml

    root = shared_data_dir()
    src = root / "core_eval" if root else None
    if src is None or not (src / "eval_data").is_dir():
        pytest.skip("shared CORE task files not present")
    tasks = yaml.safe_load((src / "llm-foundry_tasks_v0.3.yaml").read_text())["icl_tasks"]
    gauntlet = yaml.safe_load((src / "llm-foundry_eval_gauntlet_v0.3.yaml").read_text())["eval_gauntlet"]
    baselines = {b["name"]: 100.0 * b["random_baseline"] for c in gauntlet["categories"] for b in c["benchmarks"]}
    files = {p.name for p in (src / "eval_data").glob("*.jsonl")}
    out, rows = [], []
    for t in tasks:
        name = Path(t["dataset_uri"]).name
        if name in files and t["label"] not in EXTRA:
            out.append({"label": t["label"], "dataset_uri": name, "num_fewshot": t["num_fewshot"][:1],
                        "icl_task_type": t["icl_task_type"],
                        "continuation_delimiter": t.get("continuation_delimiter", " ")})
            rows.append((t["label"], baselines[t["label"]]))
    for label, (kind, shots, base) in EXTRA.items():
        out.append({"label": label, "dataset_uri": f"{label}.jsonl", "num_fewshot": [shots], "icl_task_type": kind})
        rows.append((label, base))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "eval_data").symlink_to(src / "eval_data")  # read in place, never copied
    (bundle / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": out}))
    with open(bundle / "eval_meta_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Eval Task", "Random baseline"])
        w.writerows(rows)
    return bundle


def tiny_gpt(context: int):
    from nanochat.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(sequence_len=context, vocab_size=V, n_layer=2, n_head=1, n_kv_head=1, n_embd=64,
                        window_pattern="SL"))
    gpt.init_weights()
    torch.nn.init.normal_(gpt.lm_head.weight, std=0.1)
    return gpt.eval()


# MC 0-shot, schema 3-shot, LM 3-shot: byte-level prompts of 39 to 399 tokens
SOME_TASKS = ["copa", "winograd", "bigbench_qa_wikidata"]


def test_real_task_files_on_a_tiny_model(tmp_path):
    bundle = real_bundle(tmp_path)
    assert len(load_bundle(bundle)) == 18
    gpt = tiny_gpt(48)
    with pytest.raises(NanochatError, match=r"^task winograd has 3 rows, but its 3-shot prompts need at least 4; "
                                            r"task bigbench_cs_algorithms has 3 rows, but its 10-shot prompts need "
                                            r"at least 11 \(max_per_task=3: use at least 11\)$"):
        evaluate_core(gpt, TOK, bundle, max_per_task=3, tasks=["copa", "winograd", "bigbench_cs_algorithms"],
                      progress=False)
    full = evaluate_core(gpt, TOK, bundle, max_per_task=4, batch_size=8, tasks=SOME_TASKS, progress=False)
    crop = evaluate_core(gpt, TOK, bundle, max_per_task=4, batch_size=8, tasks=SOME_TASKS, prompts="crop",
                         progress=False)
    assert full["failed"] == crop["failed"] == [] and sorted(full["tasks"]) == sorted(SOME_TASKS)
    assert all(r["n"] == 4 and 0 <= r["accuracy"] <= 1 for r in full["tasks"].values())
    assert all(r["cropped"] == 0 for r in full["tasks"].values())  # all within the rotary table (480)
    assert crop["tasks"]["winograd"]["cropped"] == crop["tasks"]["bigbench_qa_wikidata"]["cropped"] == 4


def reference_core_eval():
    """The reference's nanochat/core_eval.py from the checkout NANOCHAT_REFERENCE names, else None."""
    root = os.environ.get("NANOCHAT_REFERENCE")
    path = Path(root, "nanochat", "core_eval.py") if root else None
    if path is None or not path.is_file():
        return None
    pytest.importorskip("jinja2")
    spec_ = importlib.util.spec_from_file_location("reference_core_eval", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module


class ReferenceTokenizer:
    """The reference's tokenizer calls, answered by ours."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text, prepend=None):
        return self.tok.encode(text, prepend=prepend)

    def get_bos_token_id(self):
        return self.tok.bos_token_id


def test_full_prompts_agree_with_the_reference_example_for_example(tmp_path):
    """Only with NANOCHAT_REFERENCE=<reference checkout> and the shared task files; skips otherwise."""
    ref = reference_core_eval()
    if ref is None:
        pytest.skip("NANOCHAT_REFERENCE does not name a reference nanochat checkout")
    bundle = real_bundle(tmp_path)
    gpt = tiny_gpt(48)  # every 3-shot prompt runs past the context; all fit the rotary table (480)
    assert not hasattr(gpt, "max_seq_len")  # which would make the reference crop
    for spec_ in load_bundle(bundle):
        if spec_.label not in SOME_TASKS:
            continue
        data = load_task_data(spec_, 4)
        meta = {"task_type": spec_.task_type, "num_fewshot": spec_.num_fewshot,
                "continuation_delimiter": spec_.continuation_delimiter}
        theirs = [bool(ref.evaluate_example(i, gpt, ReferenceTokenizer(TOK), data, "cpu", meta))
                  for i in range(len(data))]
        ours, cropped = example_results(gpt, TOK, spec_, data, prompts="full", batch_size=1)
        assert (ours, cropped) == (theirs, 0), spec_.label
