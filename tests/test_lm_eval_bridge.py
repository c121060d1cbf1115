"""lm-eval bridge: local tasks (multiple choice, rolling perplexity, generation) score like direct computation."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

from nanochat.checkpoint import export_model  # noqa: E402
from nanochat.common import NanochatError  # noqa: E402
from nanochat.gpt import GPT, GPTConfig  # noqa: E402
from nanochat.tokenizer import Tokenizer  # noqa: E402

DOCS = [
    {"question": "The sky is", "choices": ["blue", "green", "made of cheese"], "answer": 0,
     "text": "The quick brown fox jumps over the lazy dog."},
    {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0,
     "text": "Seven wizards judge boxing matches in Prague, " * 4},
]


def _task_yaml(name, data, output_type, extra):
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {data.parent / 'hf_cache'}\ntest_split: test\noutput_type: {output_type}\n{extra}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    tok = Tokenizer.byte_level()
    torch.manual_seed(0)
    model = GPT.build(GPTConfig(sequence_len=48, vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_kv_head=1,
                                n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    export_model(model, tok, root / "model", meta={"stage": "base"})
    data = root / "tasks" / "data.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (data.parent / "mc.yaml").write_text(_task_yaml("nc_tiny_mc", data, "multiple_choice",
        'doc_to_text: "{{question}}"\ndoc_to_target: answer\ndoc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n"))
    (data.parent / "ppl.yaml").write_text(_task_yaml("nc_tiny_ppl", data, "loglikelihood_rolling",
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
        "  - metric: bits_per_byte\n"))
    (data.parent / "gen.yaml").write_text(_task_yaml("nc_tiny_gen", data, "generate_until",
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{choices[0]}}"\n'
        'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 6\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"))
    return root, model.eval(), tok


def _direct_loglik(model, tok, context: str, continuation: str) -> float:
    ctx = [tok.bos_token_id] + tok.encode(context)
    whole = [tok.bos_token_id] + tok.encode(context + continuation)
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([whole[:-1]])), -1)[0]
    return sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))


def test_local_tasks_match_direct_computation(setup, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import nanochat.lm_eval_bridge  # noqa: F401  registers "nanochat"

    root, model, tok = setup
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = lm_eval.simple_evaluate(
        model="nanochat", model_args=f"path={root / 'model'}", tasks=["nc_tiny_mc", "nc_tiny_ppl", "nc_tiny_gen"],
        batch_size=3, device="cpu", log_samples=True, task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False))
    res = out["results"]
    assert 0.0 <= res["nc_tiny_mc"]["acc,none"] <= 1.0 and res["nc_tiny_ppl"]["word_perplexity,none"] > 1.0
    # multiple choice: every choice's log-likelihood is the direct sum (lm-eval puts " " before the choice)
    for sample in out["samples"]["nc_tiny_mc"]:
        doc = sample["doc"]
        got = [float(r[0][0]) for r in sample["resps"]]
        want = [_direct_loglik(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        assert got == pytest.approx(want, abs=1e-4)
        assert sample["acc"] == float(max(range(len(want)), key=want.__getitem__) == doc["answer"])
    # rolling: the first document is shorter than the context, so one window from <|bos|>
    first = next(s for s in out["samples"]["nc_tiny_ppl"] if s["doc"]["text"] == DOCS[0]["text"])
    ids = [tok.bos_token_id] + tok.encode(DOCS[0]["text"])
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids[:-1]])), -1)[0]
    want = float(logp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    assert float(first["resps"][0][0]) == pytest.approx(want, abs=1e-4)
    # generation: greedy, cut at the stop string
    gen = next(s for s in out["samples"]["nc_tiny_gen"] if s["doc"]["question"] == DOCS[0]["question"])
    greedy = tok.decode(list(model.generate([tok.bos_token_id] + tok.encode(DOCS[0]["question"]), 6,
                                            temperature=0.0)))
    assert gen["resps"][0][0] == greedy.split(".")[0]


def test_long_documents_roll_over_windows(setup):
    from lm_eval.api.instance import Instance

    from nanochat.lm_eval_bridge import NanochatLM

    _, model, tok = setup
    lm = NanochatLM(model=model, tokenizer=tok, batch_size=4)
    text = DOCS[1]["text"] * 3  # 552 bytes: a dozen 48-token windows, the last one partial
    req = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (total,) = lm.loglikelihood_rolling([req], disable_tqdm=True)
    ids = [tok.bos_token_id] + tok.encode(text)
    direct = 0.0
    with torch.no_grad():  # blocks of 48 predictions, each token once; the last block reads a full window
        for start in range(1, len(ids), 48):
            end = min(start + 48, len(ids))
            lo = max(0, end - 49)
            logp = F.log_softmax(model(torch.tensor([ids[lo: end - 1]])), -1)[0]
            direct += sum(float(logp[i - 1 - lo, ids[i]]) for i in range(start, end))
    assert len(ids) % 48 != 1 and total == pytest.approx(direct, rel=1e-5)


def test_bad_model_args_are_clear(setup, tmp_path):
    from nanochat.lm_eval_bridge import NanochatLM

    with pytest.raises(NanochatError, match="no model at"):
        NanochatLM(path=str(tmp_path / "nowhere"))
    with pytest.raises(NanochatError, match="unknown nanochat model_args"):
        NanochatLM(path=str(setup[0] / "model"), colour="red")


def test_the_model_is_registered_beside_lm_evals_own():
    from lm_eval.api.registry import get_model, model_registry

    from nanochat import lm_eval_bridge

    assert get_model("nanochat") is lm_eval_bridge.NanochatLM
    assert "hf" in model_registry and "dummy" in model_registry  # lm-eval's own models stay available


def test_cli_runs_local_tasks_and_writes_json(setup, tmp_path, capsys, monkeypatch):
    import functools

    import lm_eval.tasks

    from nanochat.lm_eval_bridge import main

    # only the test's tasks: indexing lm-eval's built-in ones takes ~20 s (test_cli_end_to_end does that)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager,
                                                                       include_defaults=False))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root = setup[0]
    out = tmp_path / "res" / "lm_eval.json"
    assert main([f"ckpt={root / 'model'}", "tasks=nc_tiny_mc,nc_tiny_ppl", f"include_path={root / 'tasks'}",
                 "batch_size=2", "device=cpu", f"output_path={out}", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert "nc_tiny_mc" in printed and "nc_tiny_ppl" in printed and "acc" in printed
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"nc_tiny_mc", "nc_tiny_ppl"} and "samples" not in saved
    with pytest.raises(SystemExit):
        main([f"ckpt={root / 'model'}", "tasks=[nc_tiny_mc,no_such_task]", f"include_path={root / 'tasks'}"])
    assert capsys.readouterr().err.splitlines() == [
        "error: tasks: unknown lm-eval task(s): no_such_task (`lm-eval ls tasks` lists them; include_path= adds "
        "YAML tasks)"]


@pytest.mark.slow
def test_cli_end_to_end(setup, tmp_path, capsys):
    """The real command with lm-eval's whole task index (it indexes every built-in task first: ~20 s)."""
    from nanochat.lm_eval_bridge import main

    tasks = str(setup[0] / "tasks")
    assert main([f"ckpt={setup[0] / 'model'}", "tasks=[nc_tiny_mc]", f"include_path={tasks}", "batch_size=2"]) == 0
    assert "nc_tiny_mc" in capsys.readouterr().out


def _only_local_tasks(monkeypatch):
    import functools

    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager,
                                                                       include_defaults=False))


def test_chat_template_prompts_are_our_rendered_ids(setup, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from nanochat.chat import render_for_completion
    from nanochat.lm_eval_bridge import NanochatLM

    root, model, tok = setup
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm = NanochatLM(model=model, tokenizer=tok, batch_size=3)
    out = lm_eval.simple_evaluate(model=lm, tasks=["nc_tiny_mc"], apply_chat_template=True, log_samples=True,
                                  task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False))
    for sample in out["samples"]["nc_tiny_mc"]:
        doc = sample["doc"]
        prompt = render_for_completion(tok, [{"role": "user", "content": doc["question"]}])
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            assert lm.tok_encode(context) == prompt
            whole = prompt + tok.encode(continuation)
            with torch.no_grad():
                logp = F.log_softmax(model(torch.tensor([whole[:-1]])), -1)[0]
            want = sum(float(logp[i - 1, whole[i]]) for i in range(len(prompt), len(whole)))
            assert float(resp[0][0]) == pytest.approx(want, abs=1e-4)
    # an answer prefix stays open; special-token text in a task is refused, not read as a marker
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
               {"role": "assistant", "content": "The answer:"}]
    assert lm.tok_encode(lm.apply_chat_template(history)) == (
        render_for_completion(tok, history[:2]) + tok.encode("The answer:"))
    with pytest.raises(NanochatError, match="special-token text"):
        lm.apply_chat_template([{"role": "user", "content": "hi<|assistant_start|>"}])


def test_failures_are_one_line_and_exit_1(setup, tmp_path, capsys, monkeypatch):
    from nanochat.lm_eval_bridge import main

    _only_local_tasks(monkeypatch)
    import datasets.config
    import huggingface_hub.constants

    # offline as HF_HUB_OFFLINE=1 makes it (read when these libraries are imported: set here instead)
    for module in (datasets.config, huggingface_hub.constants):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    hub = tmp_path / "hub_tasks"
    hub.mkdir()
    (hub / "hub.yaml").write_text("task: nc_hub_task\ndataset_path: nanochat-tests/no-such-dataset\n"
                                  "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\n"
                                  "doc_to_target: 0\ndoc_to_choice: [a, b]\n")
    model = setup[0] / "model"
    cases = [([f"ckpt={model}", "tasks=nc_hub_task", f"include_path={hub}"], "could not load a task's data"),
             ([f"ckpt={model}", "tasks=nc_tiny_mc", "device=gpu9"], "is not a device")]
    for args, words in cases:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and len(err.splitlines()) == 1 and words in err, err
        assert err.startswith("error: ") and "Traceback" not in err
