"""One RL step on CPU: rollout tokens/s (sampling), training tokens/s (learning), their share of the step, peak memory.

The step is the one `stage=rl` takes (`nanochat.lit.rl_module`), with its own pieces from `nanochat.rl`: real
GSM8K questions rendered as chat prompts, the KV-cached engine with the calculator on (temperature 1.0, top-k 50),
then the policy-gradient loss in device-sized chunks, backward and the Muon/AdamW update. The model has random
weights, so a synthetic reward (parity of the completion's length) stands in for correctness: every group then
has something to learn and the learning phase does its full work (a real weak model mostly earns 0 everywhere,
and its step skips learning). Random weights rarely sample <|assistant_end|>, so samples run to max_new_tokens:
the longest rollouts a step can have.

rollout tok/s = sampled tokens / sampling time; train tok/s = trained tokens / learning time (forward + backward
+ update). `--clock cpu` (default) uses process CPU time: on a shared, oversubscribed machine wall time mostly
measures the neighbours. Peak memory is the process's max RSS after each phase of the first step.

    python bench/rl_step.py [--depth 4] [--vocab 8192] [--questions 4] [--samples 4] [--max-new 256]
                            [--device-batch 8] [--rollout-batch 16] [--steps 3] [--threads 1] [--clock cpu|wall]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanochat.common import shared_data_dir  # noqa: E402
from nanochat.engine import Engine  # noqa: E402
from nanochat.gpt import GPT  # noqa: E402
from nanochat.optim import build_optimizer  # noqa: E402
from nanochat.rl import build_train_rows, collect_rollouts, mix_seed, pack_rows, policy_loss, step_questions  # noqa: E402
from nanochat.scaling import model_config, plan  # noqa: E402
from nanochat.tokenizer import Tokenizer  # noqa: E402


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_model(depth: int, vocab: int, seq_len: int) -> GPT:
    torch.manual_seed(0)
    model = GPT.build(model_config(depth, vocab_size=vocab, seq_len=seq_len, head_dim=64))
    with torch.no_grad():  # zero-initialised projections and lm_head would make every logit equal
        for p in model.parameters():
            if p.ndim == 2 and p.abs().max() == 0:
                p.normal_(0.0, 0.02)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192, help="BPE trained on GSM8K train text at this size")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--device-batch", type=int, default=8)
    ap.add_argument("--rollout-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--gsm8k", default=None, help="local GSM8K folder (default: the shared reference data)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    from nanochat.tasks.registry import build_task

    path = args.gsm8k or (shared_data_dir() / "gsm8k" if shared_data_dir() else None)
    if path is None:
        sys.exit("no GSM8K data: pass --gsm8k DIR (train.jsonl / test.jsonl)")
    task = build_task("gsm8k", split="train", local_path=str(path))
    texts = [task.ds[i]["question"] + "\n" + task.ds[i]["answer"] for i in range(len(task))]
    tok = Tokenizer.train(texts, args.vocab)
    model = build_model(args.depth, tok.vocab_size, args.seq_len)
    p = plan(model.config, device_batch_size=args.device_batch, num_iterations=args.steps,
             total_batch_tokens=args.device_batch * args.seq_len, lr_multiplier=0.05)
    opt = build_optimizer(model, **p.optimizer_kwargs())
    print(f"d{args.depth}: {p.n_params:,} params, vocab {tok.vocab_size:,}, {args.questions} questions x "
          f"{args.samples} samples, <= {args.max_new} new tokens, device batch {args.device_batch}, "
          f"{args.threads} thread(s), {args.clock} clock", flush=True)

    rss_base = max_rss_mb()
    rows_out = []
    for step in range(args.steps):
        t0 = clock()
        model.eval()
        groups, stats = collect_rollouts(
            Engine(model, tok), tok, task, step_questions(len(task), args.questions, step),
            num_samples=args.samples, max_new_tokens=args.max_new, temperature=1.0, top_k=50,
            seed=mix_seed(0, step), rows_per_call=args.rollout_batch, context_len=args.seq_len,
            score=lambda conversation, text: float(len(text) % 2))
        rows = build_train_rows(groups)
        t1 = clock()
        rss_sample = max_rss_mb()
        model.train()
        for chunk in rows.chunks(args.device_batch):
            batch = pack_rows([rows.tokens[i] for i in chunk], [rows.masks[i] for i in chunk],
                              [rows.advantages[i] for i in chunk], pad_id=tok.bos_token_id)
            policy_loss(model, *batch, rows.num_tokens).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = clock()
        trained = sum(sum(m) for m in rows.masks)
        rows_out.append((stats.sampled_tokens + stats.forced_tokens, t1 - t0, trained, t2 - t1))
        print(f"  step {step}: sampled {stats.sampled_tokens + stats.forced_tokens:,} tokens in {t1 - t0:.2f} s, "
              f"trained {trained:,} tokens ({len(rows.tokens)} rows) in {t2 - t1:.2f} s; max RSS after sampling "
              f"{rss_sample:,.0f} MB, after learning {max_rss_mb():,.0f} MB (before the first step {rss_base:,.0f})",
              flush=True)
    steady = rows_out[1:] or rows_out  # the first step pays one-off allocations
    roll = statistics.median(n / t for n, t, _, _ in steady)
    train = statistics.median(n / t for _, _, n, t in steady)
    share = statistics.median(ts / (ts + tl) for _, ts, _, tl in steady)
    print(f"rl_step d{args.depth}: rollout {roll:,.0f} tok/s, train {train:,.0f} tok/s, sampling {share:.0%} of the "
          f"step, peak RSS {max_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
