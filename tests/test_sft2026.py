"""mixture=sft2026: the reference's SFT since 2026 - composition, packed rows and masks, recipe, input, batch."""
import json
import random

import pytest
import torch
import yaml

from nanochat.chat import render_conversation
from nanochat.chat_data import ChatLoader
from nanochat.common import NanochatError
from nanochat.tokenizer import Tokenizer
from tests.helpers import ROOT

TOK = Tokenizer.byte_level()
BOS = TOK.bos_token_id
S = {name: TOK.encode_special(name) for name in TOK.get_special_tokens()}
MIXTURES = ROOT / "nanochat" / "mixtures"


def conv(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def supervised(targets: list[int]) -> list[int]:
    return [t for t in targets if t >= 0]


# -- the mixture ----------------------------------------------------------------------------------------------------

def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def hub_copies(tmp_path_factory):
    """Local stand-ins for the three Hub data sets, laid out as their Hub repositories are."""
    root = tmp_path_factory.mktemp("hub")
    chat = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"yo {i}"}]}
            for i in range(13)]
    _jsonl(root / "smoltalk" / "train.jsonl", chat[:10])
    _jsonl(root / "smoltalk" / "test.jsonl", chat[10:])
    mc = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4, "subject": "x"} for i in range(9)]
    _jsonl(root / "mmlu" / "auxiliary_train" / "train.jsonl", mc[:4])
    _jsonl(root / "mmlu" / "all" / "test.jsonl", mc[4:])
    math = [{"question": f"{i}+1?", "answer": f"<<{i}+1={i + 1}>>\n#### {i + 1}"} for i in range(7)]
    _jsonl(root / "gsm8k" / "main" / "train.jsonl", math[:3])
    _jsonl(root / "gsm8k" / "main" / "test.jsonl", math[3:])
    return root


def compose(*overrides):
    from nanochat.config.app import compose as hydra_compose

    return hydra_compose("train", ["stage=sft", "hardware=cpu", *overrides])


def test_sft2026_composition_and_multipliers(hub_copies):
    from nanochat.stages.chat_common import build_tasks

    cfg = compose("mixture=sft2026", *[f"stage.task_options.{t}.local_path={hub_copies / t}"
                                       for t in ("smoltalk", "mmlu", "gsm8k")])
    train, val = build_tasks(cfg)
    names = [type(t).name for t in train.tasks]
    assert names == ["smoltalk", "mmlu", "mmlu", "mmlu", "gsm8k", "gsm8k", "gsm8k", "gsm8k"]
    assert train.tasks[1] is train.tasks[3] and train.tasks[4] is train.tasks[7]  # one load, k epochs
    assert (train.tasks[1].subset, len(train.tasks[1]), len(train.tasks[4])) == ("auxiliary_train", 4, 3)
    assert len(train) == 10 + 3 * 4 + 4 * 3 and train.seed == 42
    # every MMLU row 3 times, every GSM8K row 4 times, in the reference's one shuffle of all (task, index) pairs
    pairs = [(t, i) for t, n in enumerate([10, 4, 4, 4, 3, 3, 3, 3]) for i in range(n)]
    random.Random(42).shuffle(pairs)
    assert [train.locate(i) for i in range(len(train))] == pairs
    assert [type(t).name for t in val.tasks] == ["smoltalk", "mmlu", "gsm8k"] and len(val) == 3 + 5 + 4
    spec = yaml.safe_load((MIXTURES / "sft2026.yaml").read_text())
    assert [(e["task"], e.get("size")) for e in spec["val"]] == [("smoltalk", None), ("mmlu", 5200), ("gsm8k", 420)]
    assert [e["split"] for e in spec["val"]] == ["test"] * 3


def test_offline_variant_has_the_same_recipe():
    from nanochat.tasks import build_from_config

    online, offline = (yaml.safe_load((MIXTURES / f"{n}.yaml").read_text()) for n in ("sft2026", "offline_sft2026"))
    assert online["recipe"] == offline["recipe"]
    assert online["recipe"]["settings"]["lr_multiplier"] == 0.8 and online["recipe"]["starts_from"] == ["base"]
    assert len(build_from_config(offline, "train")) == 2700 and len(build_from_config(offline, "val")) == 200


# -- packed rows --------------------------------------------------------------------------------------------------

def test_bestfit_rows_and_assistant_targets_by_hand():
    # rendered lengths 9, 17, 7, 13 (BOS <|user_start|> u <|user_end|> <|assistant_start|> a <|assistant_end|>);
    # rows of seq_len + 1 = 21: b (17) + 4 padding; d (13) + c (7) + 1 padding; a (9) + 12 padding
    convs = [conv("a", "bcd"), conv("ab", "cdefghijkl"), conv("z", "x"), conv("abc", "defgh")]
    ids = [render_conversation(TOK, c)[0] for c in convs]
    assert [len(i) for i in ids] == [9, 17, 7, 13]
    loader = ChatLoader(convs, TOK, batch_size=1, seq_len=20, layout="bestfit", accum=3, epochs=1)
    batches = list(loader)
    assert len(batches) == 3 and all(x.shape == (1, 20) for x, _, _ in batches)
    rows = [(x[0].tolist(), y[0].tolist()) for x, y, _ in batches]
    for (inputs, targets), content in zip(rows, [ids[1], ids[3] + ids[2], ids[0]]):
        n = len(content) - 1
        assert inputs[:n] == content[:-1] and inputs[n + 1:] == [BOS] * (19 - n)  # padded with BOS ...
        assert targets[n:] == [-1] * (20 - n)                                 # ... never learned
    end = S["<|assistant_end|>"]
    # only what the assistant wrote is learned: its text and its <|assistant_end|>
    assert supervised(rows[0][1]) == [*b"cdefghijkl", end]
    assert supervised(rows[1][1]) == [*b"defgh", end, *b"x", end]
    assert supervised(rows[2][1]) == [*b"bcd", end]
    assert rows[1][0][13] == BOS and rows[1][1][12] == -1  # the second conversation starts at its BOS, untrained
    # every micro-batch carries its optimizer step's supervised-target count
    assert [int(n) for _, _, n in batches] == [11 + 8 + 4] * 3


def test_bestfit_truncates_a_conversation_longer_than_a_row():
    long, short = conv("q", "x" * 40), conv("z", "x")  # 46 tokens > a row of 21; 7 tokens
    loader = ChatLoader([long, short], TOK, batch_size=1, seq_len=20, layout="bestfit", epochs=1)
    rows = [(x[0].tolist(), y[0].tolist()) for x, y, _ in loader]
    assert loader.stats["truncated"] == 1 and loader.stats["split"] == 0 and len(rows) == 2
    ids = render_conversation(TOK, long)[0]
    assert rows[0][0] == ids[:20] and rows[0][1] == [-1] * 4 + [ord("x")] * 16  # its first row's worth, no piece 2
    assert rows[1][0][0] == BOS


def reference_rows(convs, row, batch, buffer, rank=0, world=1, n_batches=6):
    """An independent restatement of the reference's SFT packer (scripts/chat_sft.py at 92d63d4), conversations
    cut to a row: a buffer topped up before every placement, the largest conversation that fits (first among
    equals), the rest of the row padded with BOS and mask 0 when none fits."""
    pending, cursor, out = [], rank, []
    for _ in range(n_batches):
        inputs, targets = [], []
        for _ in range(batch):
            ids, mask = [], []
            while len(ids) < row:
                while len(pending) < buffer:
                    c_ids, c_mask = render_conversation(TOK, convs[cursor])
                    pending.append((c_ids[:row], c_mask[:row]))
                    cursor = (cursor + world) % len(convs)
                room = row - len(ids)
                sizes = [len(p[0]) if len(p[0]) <= room else 0 for p in pending]
                if max(sizes) == 0:
                    ids, mask = ids + [BOS] * room, mask + [0] * room
                    break
                c_ids, c_mask = pending.pop(sizes.index(max(sizes)))
                ids, mask = ids + c_ids, mask + c_mask
            inputs.append(ids[:-1])
            targets.append([t if m else -1 for t, m in zip(ids[1:], mask[1:])])
        out.append((inputs, targets))
    return out


@pytest.mark.parametrize("rank, world, buffer", [(0, 1, 4), (1, 2, 3), (0, 1, 100)])
def test_bestfit_matches_the_reference_packer(rank, world, buffer):
    rng = random.Random(rank + 10 * buffer)
    # an even count: past the end the reference's ranks continue modulo the size (ours keep their conversations)
    convs = [conv("q" * rng.randint(1, 12), "a" * rng.randint(0, 40)) for _ in range(36)]
    loader = ChatLoader(convs, TOK, batch_size=3, seq_len=31, layout="bestfit", rank=rank, world_size=world,
                        buffer_size=buffer)
    got = [(x.tolist(), y.tolist()) for x, y, _ in (b for _, b in zip(range(6), loader))]
    assert got == reference_rows(convs, 32, 3, buffer, rank, world)


# -- the recipe, the input model and the batch --------------------------------------------------------------------

@pytest.fixture()
def outputs(tmp_path):
    """outputs/ with a base model (its run's plan: jan2026, 2,048 tokens per step, 2 rows per device) and a newer mid
    model."""
    from nanochat.checkpoint import export_model
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.layout import set_outputs_root

    torch.manual_seed(0)
    model = GPT.build(GPTConfig(sequence_len=256, vocab_size=TOK.vocab_size, n_layer=1, n_head=2, n_kv_head=2,
                                n_embd=64))
    root = tmp_path / "outputs"
    export_model(model, TOK, root / "base" / "d1" / "model",
                 meta={"stage": "base", "plan": {"preset": "jan2026", "total_batch_tokens": 2048, "device_batch_size": 2}})
    export_model(model, TOK, root / "mid" / "d1" / "model",
                 meta={"stage": "mid", "plan": {"total_batch_tokens": 4096, "device_batch_size": 8}})
    set_outputs_root(root)
    yield root
    set_outputs_root(None)


def prepare(tmp_path, *overrides):
    from nanochat.stages import sft

    cfg = compose("stage.num_iterations=10", *overrides)
    return sft.prepare(cfg, tmp_path / "run"), cfg


def test_sft2026_starts_from_base_with_its_schedule_and_the_base_run_s_batch(outputs, tmp_path, capsys):
    from nanochat.optim import lr_multiplier

    run, cfg = prepare(tmp_path, "mixture=offline_sft2026")
    assert run.init_from == str(outputs / "base" / "d1" / "model")  # not the newer mid model
    p = run.plan
    assert (p.optim.lr_multiplier, p.optim.muon_weight_decay, p.grad_clip) == (0.8, 0.0, 0.0)
    assert p.preset == "jan2026" and p.lr_scale == pytest.approx(0.8)  # the base run's preset; no batch scaling
    assert (p.optim.momentum_start, p.optim.momentum_end, p.optim.momentum_warmup, p.optim.momentum_final) == (
        0.85, 0.95, 300, 0.0)
    assert (p.schedule.warmup_steps, p.schedule.warmdown_ratio, p.schedule.final_lr_frac) == (0, 0.5, 0.0)
    lrs = [lr_multiplier(s, p.num_steps, **p.schedule_kwargs()) for s in range(p.num_steps + 1)]
    assert lrs[:6] == [1.0] * 6 and lrs[6:] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])  # flat, last 50% to 0
    assert (p.total_batch_tokens, p.device_batch_size, p.grad_accum) == (2048, 2, 4)  # the base run's: 8 rows of 256
    assert run.datamodule.chat_kwargs["layout"] == "bestfit" and run.datamodule.accum == 4
    assert (cfg.stage.lr_multiplier, cfg.stage.total_batch_tokens) == (0.8, 2048)  # the config the run records
    printed = capsys.readouterr().out
    assert "mixture offline_sft2026 - best-fit packed rows" in printed and "lr_multiplier=0.8" in printed
    assert "preset from the input model's run" in printed
    assert f"{outputs / 'base' / 'd1' / 'model'} (base model)" in printed and "input model's run" in printed


def test_keys_the_run_sets_win_over_the_recipe(outputs, tmp_path):
    run, _ = prepare(tmp_path, "mixture=offline_sft2026", "stage.lr_multiplier=0.5", "stage.device_batch_size=1",
                     "stage.warmdown_ratio=0.2")
    p = run.plan
    assert (p.optim.lr_multiplier, p.schedule.warmdown_ratio, p.optim.muon_weight_decay) == (0.5, 0.2, 0.0)
    assert (p.total_batch_tokens, p.device_batch_size, p.grad_accum) == (2048, 1, 8)
    assert run.info["recipe"]["lr_multiplier"] == 0.5


def test_input_stages_by_mixture():
    from nanochat.stages.chat_common import stage_inputs

    assert stage_inputs("sft", "sft2026") == stage_inputs("sft", "offline_sft2026") == ("base",)
    assert stage_inputs("sft", None) == stage_inputs("sft", "sft") == ("mid", "base")
    assert stage_inputs("mid", "sft2026") == ("base",) and stage_inputs("rl", None) == ("sft",)


def test_the_default_chain_is_unchanged(outputs, tmp_path):
    run, _ = prepare(tmp_path)  # mixture offline_sft: from mid, one conversation per row, 0.02 x the lrs
    assert run.init_from == str(outputs / "mid" / "d1" / "model")
    assert run.plan.optim.lr_multiplier == 0.02 and run.datamodule.chat_kwargs["layout"] == "pad"


def test_packed_steps_follow_the_mixture(outputs, tmp_path):
    from nanochat.stages import sft

    run = sft.prepare(compose("mixture=offline_sft2026", "stage.num_epochs=2"), tmp_path / "run")
    per_row = run.info["conversations_per_row"]
    assert 1 < per_row < 64 and run.plan.num_steps == pytest.approx(2 * 2700 / (8 * per_row), abs=1)


@pytest.mark.parametrize("override, message", [
    ("stage.examples_per_step=16", "stage.examples_per_step counts conversations of one-per-row SFT"),
    ("stage.total_batch_tokens=4096", "stage.total_batch_tokens applies to packed SFT"),
])
def test_batch_keys_of_the_other_layout_are_refused(outputs, tmp_path, override, message):
    mixture = "mixture=offline_sft2026" if "examples" in override else "mixture=offline_sft"
    with pytest.raises(NanochatError, match=message):
        prepare(tmp_path, mixture, override)


def test_a_bad_recipe_is_one_clear_error(outputs, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: {stage: sft, settings: {lr_multiplyer: 0.8}}\ntrain:\n  - {task: identity, size: 4}\n")
    with pytest.raises(NanochatError, match=r"recipe: settings has no stage key\(s\) lr_multiplyer"):
        prepare(tmp_path, f"mixture={bad}")


@pytest.mark.slow
def test_train_py_sft2026_end_to_end(outputs, tmp_path):
    """train.py: started_from.txt names the base model; a stock-valued key on the command line still wins."""
    import subprocess

    from tests.helpers import env_for, train_cmd

    folder = outputs / "sft" / "e2e"
    args = ["stage=sft", "hardware=cpu", "mixture=offline_sft2026", "run_name=e2e", "stage.num_iterations=2",
            "stage.eval_every=2", "stage.sample_every=0", "stage.eval_batches=1", "stage.warmdown_ratio=1.0",
            "logger=none", f"hydra.run.dir={folder}"]
    env = env_for(tmp_path)
    env["NANOCHAT_OUTPUTS"] = str(outputs)
    proc = subprocess.run(train_cmd(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (folder / "started_from.txt").read_text().strip() == str(outputs / "base" / "d1" / "model")
    recorded = yaml.safe_load((folder / "config.yaml").read_text())["stage"]
    assert (recorded["lr_multiplier"], recorded["warmdown_ratio"], recorded["total_batch_tokens"]) == (0.8, 1.0, 2048)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["layout"] == "bestfit" and summary["steps"] == 2 and summary["val_loss"] == summary["val_loss"]
