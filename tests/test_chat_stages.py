"""stage=mid and stage=sft: chat batches, the SFT loss normalisation, chaining, resume, bad input."""
import json
import subprocess
from pathlib import Path

import pytest
import torch

from nanochat.chat_data import ChatLoader
from nanochat.tokenizer import Tokenizer
from tests.helpers import ROOT, env_for, train_cmd

TOK = Tokenizer.byte_level()
BOS = TOK.bos_token_id
S = {name: TOK.encode_special(name) for name in TOK.get_special_tokens()}


def conv(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def rendered_len(c: dict) -> int:
    # BOS, <|user_start|> user <|user_end|>, <|assistant_start|> assistant <|assistant_end|> (bytes = tokens)
    return 1 + 2 + len(c["messages"][0]["content"]) + 2 + len(c["messages"][1]["content"])


# -- the chat loader -----------------------------------------------------------------------------------------------

def test_pack_layout_best_fit_rows_by_hand():
    # rendered lengths 9, 17, 7, 13 with rows of seq_len + 1 = 21 tokens (the buffer holds all four):
    # row 1: the largest that fits 21 is b (17) -> 4 left, none fits -> padded
    # row 2: d (13) -> 8 left -> c (7) -> 1 left -> padded;  row 3: a (9) + padding
    convs = [conv("a", "bcd"), conv("ab", "cdefghijkl"), conv("z", "x"), conv("abc", "defgh")]
    assert [rendered_len(c) for c in convs] == [9, 17, 7, 13]
    loader = ChatLoader(convs, TOK, batch_size=1, seq_len=20, layout="pack", mask=False, epochs=1)
    rows = [(x[0].tolist(), y[0].tolist()) for x, y in loader]
    from nanochat.chat import render_conversation

    ids = [render_conversation(TOK, c)[0] for c in convs]
    assert [len(i) for i in ids] == [9, 17, 7, 13]
    expect = [ids[1], ids[3] + ids[2], ids[0]]
    assert len(rows) == 3
    for (inputs, targets), row in zip(rows, expect):
        assert inputs[0] == BOS  # rows are BOS-aligned
        assert inputs[: len(row) - 1] == row[:-1] and targets[: len(row) - 1] == row[1:]
        assert all(t == -1 for t in targets[len(row) - 1:])  # padding is never learned
        assert inputs[len(row) - 1] == row[-1] and all(t == BOS for t in inputs[len(row):])


def test_pack_layout_splits_long_conversations_and_counts_them():
    from nanochat.chat import render_conversation

    long = conv("q", "x" * 60)  # 66 tokens > one row of 21: pieces of 21, 21, 21, 3
    ids = render_conversation(TOK, long)[0]
    loader = ChatLoader([long], TOK, batch_size=1, seq_len=20, layout="pack", mask=False, epochs=1)
    rows = [(x[0].tolist(), y[0].tolist()) for x, y in loader]
    assert loader.stats["split"] == 1 and len(ids) == 66 and len(rows) == 4
    # nothing dropped: each piece is a row's first tokens (inputs + its last target)
    pieces = [ids[s:s + 21] for s in range(0, 66, 21)]
    for (inputs, targets), piece in zip(rows, pieces):
        assert inputs[: len(piece) - 1] == piece[:-1] and targets[len(piece) - 2] == piece[-1]


def test_masking_keeps_only_assistant_targets():
    from nanochat.chat import render_conversation

    c = conv("hi", "yo")
    ids, mask = render_conversation(TOK, c)
    loader = ChatLoader([c], TOK, batch_size=1, seq_len=32, layout="pad", mask=True, epochs=1)
    x, y, n = next(iter(loader))
    supervised = [t for t, m in zip(ids[1:], mask[1:]) if m]
    assert [t for t in y[0].tolist() if t >= 0] == supervised == [ord("y"), ord("o"), S["<|assistant_end|>"]]
    assert int(n) == 3


@pytest.mark.parametrize("layout", ["pack", "pad", "bestfit"])
def test_chat_loader_resumes_exactly(layout):
    import random

    rng = random.Random(0)
    convs = [conv("q" * rng.randint(1, 9), "a" * rng.randint(1, 30)) for _ in range(40)]
    kw = dict(batch_size=2, seq_len=24, layout=layout, mask=True, accum=2, buffer_size=5)
    full = ChatLoader(convs, TOK, **kw)
    it = iter(full)
    ref = [next(it) for _ in range(30)]  # crosses an epoch boundary
    cut = 12
    resumed = ChatLoader(convs, TOK, cursor=full.state_dict_at(cut), **kw)
    got = [b for _, b in zip(range(30 - cut), resumed)]
    for a, b in zip(ref[cut:], got):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_two_ranks_split_the_conversations():
    convs = [conv(str(i), "z") for i in range(6)]
    seen = []
    for rank in (0, 1):
        loader = ChatLoader(convs, TOK, batch_size=1, seq_len=16, layout="pad", rank=rank, world_size=2, epochs=1)
        seen += [chr(int(x[0][2])) for x, _, _ in loader]  # BOS, <|user_start|>, the user text
    assert sorted(seen) == [str(i) for i in range(6)]


# -- the SFT loss: normalised over the whole accumulated step ------------------------------------------------------

def _grads_after_one_step(batches, accum):
    import lightning as L

    from nanochat import scaling
    from nanochat.gpt import GPTConfig
    from nanochat.lit.module import NanochatLM

    cfg = GPTConfig(sequence_len=32, vocab_size=TOK.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=64)
    plan = scaling.plan(cfg, device_batch_size=batches[0][0].shape[0], total_batch_tokens=32 * batches[0][0].shape[0] * accum,
                        num_iterations=1)
    torch.manual_seed(0)
    module = NanochatLM(plan, TOK.token_bytes())
    module.configure_model()
    with torch.no_grad():  # non-zero output layers so every weight gets a gradient
        for p in module.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    grads = {}

    class Grab(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            grads.update({n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None})

    trainer = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accum, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Grab()], limit_val_batches=0, num_sanity_val_steps=0)
    class Batches:  # an iterable of ready batches (a plain list would be taken for a list of loaders)
        def __iter__(self):
            return iter(batches)

    trainer.fit(module, train_dataloaders=Batches())
    return grads


def test_sft_gradient_does_not_depend_on_micro_batching():
    import random

    rng = random.Random(3)
    convs = [conv("q" * rng.randint(1, 6), "a" * rng.randint(1, 20)) for _ in range(8)]
    one = list(ChatLoader(convs, TOK, batch_size=8, seq_len=31, layout="pad", accum=1, epochs=1))
    eight = list(ChatLoader(convs, TOK, batch_size=1, seq_len=31, layout="pad", accum=8, epochs=1))
    assert len(one) == 1 and len(eight) == 8 and int(eight[0][2]) == int(one[0][2])
    g1, g8 = _grads_after_one_step(one, 1), _grads_after_one_step(eight, 8)
    assert g1.keys() == g8.keys() and g1
    for k in g1:
        assert torch.allclose(g1[k], g8[k], atol=1e-6, rtol=1e-4), k


def test_fully_masked_step_gives_zero_gradient_not_nan():
    x = torch.randint(0, 256, (2, 16))
    y = torch.full((2, 16), -1)
    grads = _grads_after_one_step([(x, y, torch.tensor(0))], 1)
    assert grads and all(torch.isfinite(g).all() and (g == 0).all() for g in grads.values())


# -- through train.py ----------------------------------------------------------------------------------------------

MIXTURE = """
seed: 1
train:
  - {task: identity, size: 24}
  - {task: arithmetic, size: 40, split: train}
val:
  - {task: arithmetic, size: 8, split: test}
"""


@pytest.fixture(scope="module")
def chat_env(tmp_path_factory):
    """A tmp outputs/ tree holding a tiny base model (byte-level tokenizer), and a tiny mixture YAML."""
    from nanochat.checkpoint import export_model
    from nanochat.gpt import GPT, GPTConfig

    root = tmp_path_factory.mktemp("chat")
    torch.manual_seed(0)
    model = GPT.build(GPTConfig(sequence_len=128, vocab_size=TOK.vocab_size, n_layer=1, n_head=2, n_kv_head=2,
                                n_embd=64))
    export_model(model, TOK, root / "outputs" / "base" / "d1" / "model", meta={"stage": "base"})
    (root / "mix.yaml").write_text(MIXTURE)
    return root


def chat_args(root: Path, stage: str, name: str, steps: int = 4, **extra) -> list[str]:
    args = {"stage": stage, "hardware": "cpu", "run_name": name, "mixture": str(root / "mix.yaml"),
            "stage.num_iterations": steps, "stage.save_every": 1, "stage.eval_every": 2, "stage.sample_every": 0,
            "logger": "csv", "hydra.run.dir": str(root / "outputs" / stage / name)}
    if stage == "mid":
        args.update({"hardware.device_batch_size": 2, "stage.total_batch_tokens": 512, "stage.eval_tokens": 512})
    else:
        args.update({"stage.examples_per_step": 4, "stage.device_batch_size": 2, "stage.eval_batches": 2})
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def run(root: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = env_for(root)
    env["NANOCHAT_OUTPUTS"] = str(root / "outputs")
    return subprocess.run(train_cmd(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_mid_then_sft_chain_without_arguments(chat_env):
    mid = run(chat_env, chat_args(chat_env, "mid", "m"))
    assert mid.returncode == 0, mid.stderr[-3000:]
    summary = json.loads((chat_env / "outputs" / "mid" / "m" / "summary.json").read_text())
    assert summary["input_model"].endswith("base/d1/model") and summary["steps"] == 4
    assert (chat_env / "outputs" / "mid" / "m" / "model" / "model.pt").exists()
    sft = run(chat_env, chat_args(chat_env, "sft", "s"))
    assert sft.returncode == 0, sft.stderr[-3000:]
    summary = json.loads((chat_env / "outputs" / "sft" / "s" / "summary.json").read_text())
    assert summary["input_model"].endswith("mid/m/model")  # sft starts from the latest mid model
    assert summary["supervised_tok_per_s"] > 0 and summary["val_loss"] == summary["val_loss"]


@pytest.mark.parametrize("stage", ["mid", "sft"])
def test_kill9_resume_is_exact(chat_env, tmp_path, stage):
    from tests.test_resume import kill_after_checkpoint, newest_checkpoint

    init = f"stage.init_from={chat_env / 'outputs' / 'base' / 'd1' / 'model'}"
    ref = run(chat_env, chat_args(chat_env, stage, f"ref_{stage}", steps=6) + [init])
    assert ref.returncode == 0, ref.stderr[-3000:]
    crash_dir = chat_env / "outputs" / stage / f"crash_{stage}"
    env = env_for(chat_env)
    env["NANOCHAT_OUTPUTS"] = str(chat_env / "outputs")
    kill_after_checkpoint(train_cmd(chat_args(chat_env, stage, f"crash_{stage}", steps=6) + [init]), env,
                          crash_dir / "checkpoints", 3, crash_dir / "model" / "model.pt")
    start = torch.load(newest_checkpoint(crash_dir / "checkpoints"), map_location="cpu", weights_only=False)["global_step"]
    assert 1 <= start < 6
    resumed = run(chat_env, chat_args(chat_env, stage, f"crash_{stage}", steps=6, ckpt_path="last") + [init])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(chat_env / "outputs" / stage / f"ref_{stage}" / "model" / "model.pt")
    b = torch.load(crash_dir / "model" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming {stage} at step {start}"


def test_missing_previous_stage_is_one_clear_line(tmp_path):
    (tmp_path / "mix.yaml").write_text(MIXTURE)
    proc = run(tmp_path, chat_args(tmp_path, "mid", "x"))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "python train.py stage=base" in last


def test_unknown_mixture_task_is_one_clear_line(chat_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  - {task: no_such_task, size: 3}\n")
    proc = run(chat_env, chat_args(chat_env, "sft", "bad", **{"mixture": str(bad)}))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "no_such_task" in last


def test_core_imports_without_lightning_hydra_omegaconf():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lightning', 'hydra', 'omegaconf', 'pytorch_lightning'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import nanochat.gpt, nanochat.tokenizer, nanochat.dataloader, nanochat.dataset, nanochat.optim\n"
        "import nanochat.scaling, nanochat.checkpoint, nanochat.chat, nanochat.chat_data, nanochat.tasks\n"
        "import nanochat.engine, nanochat.tools, nanochat.loss_eval, nanochat.core_eval, nanochat.execution\n"
        "import nanochat.chat_eval\n"
        "print('ok')\n"
    )
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
