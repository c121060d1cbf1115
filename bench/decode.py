"""Decode speed: our KV-cached Engine vs our model without a cache vs Hugging Face GPT-2 `generate`.

Same width and depth on both sides (d_model = 64 * depth rounded to head_dim 64, n_head = d_model / 64, MLP
4x, same vocabulary), random weights, greedy decoding of a fixed number of tokens, same thread count, runs
alternating in one process. For each side T(1) (prefill + one token) and T(new) are timed:
prefill tok/s = B * prompt / T(1), decode tok/s = B * (new - 1) / (T(new) - T(1)).
Without a cache every step recomputes the whole sequence, so it runs only `--nocache-new` steps.
`--clock cpu` (the default) times with the process's CPU time: on a shared, oversubscribed machine wall time
mostly measures the neighbours; with one thread, CPU time is the honest cost. `--clock wall` for a quiet box.

    python bench/decode.py [--depths 4 8] [--batches 1 16] [--prompt 256] [--new 128] [--reps 3] [--threads 1]
                           [--clock cpu|wall] [--vocab 8192]

Needs `transformers` (pip install -e '.[bench]').
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from nanochat.engine import Engine, KVCache
from nanochat.scaling import model_config
from nanochat.gpt import GPT


def build_ours(depth: int, vocab: int, seq_len: int) -> GPT:
    model = GPT(model_config(depth, vocab_size=vocab, seq_len=seq_len, head_dim=64))
    torch.manual_seed(0)
    model.init_weights()
    with torch.no_grad():  # zero-initialised projections would make every logit equal
        for p in model.parameters():
            if p.ndim == 2 and p.abs().max() == 0:
                p.normal_(0.0, 0.02)
    return model.eval()


def build_peer(depth: int, vocab: int, seq_len: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = model_config(depth, vocab_size=vocab, head_dim=64).n_embd
    cfg = GPT2Config(vocab_size=vocab, n_positions=seq_len, n_embd=d, n_layer=depth, n_head=d // 64,
                     n_inner=4 * d, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.eos_token_id = None  # fixed-length generation
    model.generation_config.pad_token_id = 0
    return model


def ours_generate(engine: Engine, prompts: torch.Tensor, new: int) -> int:
    n = 0
    for _ in engine.generate(prompts.tolist(), max_tokens=new, temperature=0.0):
        n += 1
    return n


@torch.inference_mode()
def ours_nocache(model: GPT, prompts: torch.Tensor, new: int) -> int:
    ids = prompts
    for _ in range(new):
        nxt = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return new


@torch.inference_mode()
def peer_generate(model, prompts: torch.Tensor, new: int) -> int:
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False)
    return out.size(1) - prompts.size(1)


CLOCK = time.process_time


def timed(fn, *args) -> float:
    t0 = CLOCK()
    fn(*args)
    return CLOCK() - t0


def measure(fn, target, prompts, new, reps) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s), medians over reps of T(1) and T(new)."""
    fn(target, prompts, 2)  # warm-up
    t1 = statistics.median(timed(fn, target, prompts, 1) for _ in range(reps))
    tn = statistics.median(timed(fn, target, prompts, new) for _ in range(reps))
    B, P = prompts.shape
    return B * P / t1, B * (new - 1) / max(tn - t1, 1e-9)


@torch.inference_mode()
def prefill_strategies(model: GPT, batch: int, prompt: int, vocab: int, reps: int) -> tuple[float, float]:
    """Prefill tok/s for prompts of mixed lengths: the Engine's (prompts grouped by length, laid into one
    cache) vs one left-padded batch with a padding mask."""
    g = torch.Generator().manual_seed(1)
    lengths = [prompt // 2 + (i * prompt // 2) // max(batch - 1, 1) for i in range(batch)]
    prompts = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]
    longest, real = max(lengths), sum(lengths)

    def padded():
        pads = [longest - n for n in lengths]
        cache = KVCache.for_model(model, batch, longest + 1, pad=pads)
        model(torch.tensor([[0] * k + p for k, p in zip(pads, prompts)]), kv_cache=cache)

    def engine():
        for _ in Engine(model).generate(prompts, max_tokens=1, temperature=0.0):
            pass

    padded(), engine()
    t_pad = statistics.median(timed(padded) for _ in range(reps))
    t_engine = statistics.median(timed(engine) for _ in range(reps))
    return real / t_engine, real / t_pad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--nocache-new", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192, help="default: the cpu profile's sample tokenizer")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    ap.add_argument("--no-peer", action="store_true", help="skip transformers (ours only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    seq_len = 1024
    assert args.prompt + args.new <= seq_len
    print(f"clock {args.clock}, threads {torch.get_num_threads()}, prompt {args.prompt}, new {args.new}, vocab {args.vocab}, "
          f"torch {torch.__version__}")
    for depth in args.depths:
        ours = build_ours(depth, args.vocab, seq_len)
        engine = Engine(ours, tokenizer=None)
        peer = None if args.no_peer else build_peer(depth, args.vocab, seq_len)
        for batch in args.batches:
            g = torch.Generator().manual_seed(depth * 100 + batch)
            prompts = torch.randint(1, args.vocab, (batch, args.prompt), generator=g)
            tag = f"d{depth}_b{batch}"
            pre, dec = measure(ours_generate, engine, prompts, args.new, args.reps)
            nc_pre, nc_dec = measure(ours_nocache, ours, prompts, args.nocache_new, 1)
            print(f"decode_{tag}_nocache: ours {dec:.0f}, peer {nc_dec:.1f}, ratio {dec / nc_dec:.1f}", flush=True)
            if peer is not None:
                p_pre, p_dec = measure(peer_generate, peer, prompts, args.new, args.reps)
                print(f"decode_{tag}: ours {dec:.0f}, peer {p_dec:.0f}, ratio {dec / p_dec:.2f}")
                print(f"prefill_{tag}: ours {pre:.0f}, peer {p_pre:.0f}, ratio {pre / p_pre:.2f}", flush=True)
        if 16 in args.batches:
            grouped, padded = prefill_strategies(ours, 16, args.prompt, args.vocab, args.reps)
            print(f"prefill_mixed_d{depth}_b16: ours {grouped:.0f}, peer {padded:.0f}, ratio {grouped / padded:.2f} "
                  "(Engine, by length vs one left-padded masked batch)", flush=True)


if __name__ == "__main__":
    main()
