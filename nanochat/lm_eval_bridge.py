"""EleutherAI lm-evaluation-harness bridge: any lm-eval task on a nanochat model.

    python -m nanochat.lm_eval_bridge --model_args path=latest:base --tasks hellaswag,arc_easy --batch_size 16

That command is `lm_eval` itself with our model registered as `nanochat` (`--model nanochat` is implied; every
other lm_eval flag works). lm-eval discovers no model plugins from installed packages, so from Python import
this module before `lm_eval.simple_evaluate(model="nanochat", model_args="path=...")`.

The one idea: lm-eval's `TemplateLM` turns every request into token ids (context, continuation); we right-pad
rows of similar length into one batch (padding after the real tokens cannot affect a causal model's scores),
run one forward pass per batch and read the continuation's log-probabilities. Documents in pretraining start
with <|bos|>, so contexts do too (`add_bos=false` to turn that off), and <|bos|> is the end-of-text token.
Generation recomputes the whole window per new token (no KV cache): simple, exact, fine for short answers.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError

try:
    import lm_eval.models  # noqa: F401  (lm-eval loads its built-in models only into an empty registry)
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    _MISSING = None
except ImportError as _e:  # keep `import nanochat.lm_eval_bridge` harmless without the extra
    TemplateLM = object
    _MISSING = f"lm-eval is not installed ({_e}); pip install 'nanochat[lmeval]'"

    def register_model(*_names):
        return lambda cls: cls

_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def load_any(spec, device) -> tuple:
    """(model, tokenizer) from what `resolve_model_path` accepts, or from a `nanochat.export` folder."""
    from nanochat.checkpoint import load_model, resolve_model_path
    from nanochat.tokenizer import Tokenizer

    path = resolve_model_path(None if spec in (None, "", "latest") else str(spec))
    if path.is_dir() and (path / "model.safetensors").exists() and not (path / "model.pt").exists():
        from nanochat.export import load_export

        model, _ = load_export(path, device=device)
        return model, Tokenizer.load(path / "tokenizer")
    model, tokenizer, _ = load_model(path, device=device)
    return model, tokenizer


@register_model("nanochat")
class NanochatLM(TemplateLM):
    """lm-eval model: `--model_args path=<model folder | .ckpt | latest:<stage> | export folder>[,add_bos=false]`."""

    def __init__(self, path=None, device=None, batch_size=8, max_batch_size=None, max_length=None,
                 add_bos=True, model=None, tokenizer=None, **kwargs):
        if _MISSING:
            raise NanochatError(_MISSING)
        super().__init__()
        unknown = {k: v for k, v in kwargs.items() if v is not None}
        if unknown:
            raise NanochatError(f"unknown nanochat model_args: {', '.join(unknown)}; known: path, device, "
                                "batch_size, max_length, add_bos")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line asks for cuda unless told otherwise
            print(f"nanochat: device {device} is not available, using cpu", file=sys.stderr)
            device = "cpu"
        if model is None:  # `model`/`tokenizer` objects: for use from Python without a folder
            model, tokenizer = load_any(path, device)
        elif tokenizer is None:
            raise NanochatError("pass a tokenizer together with a model object")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._device = next(model.parameters()).device
        if str(batch_size).startswith("auto"):
            batch_size = 32 if self._device.type == "cuda" else 8
        try:
            self.batch_size = max(1, int(batch_size))
            self._max_length = int(max_length) if max_length else model.config.sequence_len
        except (TypeError, ValueError):
            raise NanochatError(f"batch_size and max_length must be integers, got {batch_size!r}, {max_length!r}")
        self.add_bos = add_bos if isinstance(add_bos, bool) else _BOOL.get(str(add_bos).lower(), True)
        self.stop_ids = {tokenizer.bos_token_id, tokenizer.encode_special("<|assistant_end|>")}

    # -- what TemplateLM needs ------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.bos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None, **kwargs) -> list[int]:
        ids = self.tokenizer.encode(string)
        if add_special_tokens is not False and self.add_bos:
            ids = [self.tokenizer.bos_token_id] + ids
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    @torch.no_grad()
    def _logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """log-softmax (B, T, V) in fp32 for right-padded rows."""
        width = max(len(r) for r in rows)
        batch = torch.full((len(rows), width), self.eot_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return F.log_softmax(self.model(batch.to(self._device)).float(), dim=-1)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: (cache key, context ids, continuation ids) -> (sum log p(continuation), greedy?)."""
        from tqdm import tqdm

        prepared = []
        for key, ctx, cont in requests:
            if not cont:
                raise NanochatError("lm-eval asked to score an empty continuation")
            if len(cont) > self.max_length:
                raise NanochatError(f"continuation of {len(cont)} tokens exceeds the {self.max_length}-token context")
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]
            prepared.append((whole[:-1], list(cont)))
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))  # similar lengths share a batch
        results: list = [None] * len(prepared)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="nanochat scoring"):
            idx = order[start: start + self.batch_size]
            logp = self._logprobs([prepared[i][0] for i in idx])
            for row, i in enumerate(idx):
                inp, cont = prepared[i]
                pos = torch.arange(len(inp) - len(cont), len(inp), device=logp.device)
                target = torch.tensor(cont, device=logp.device)
                scores = logp[row, pos]
                greedy = bool((scores.argmax(-1) == target).all())
                results[i] = (float(scores.gather(-1, target[:, None]).sum()), greedy)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood in disjoint windows of the model's context, each token scored once."""
        windows, owner = [], []
        for n, req in enumerate(requests):
            (text,) = req.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (ll, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[n] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], max_new: int, until: list[str], temperature: float,
                  top_k: int | None, seed: int) -> list[str]:
        """Equal-length prompts, one batch; each row stops at a stop token or when an `until` string appears."""
        ids = torch.tensor(prompts, dtype=torch.long, device=self._device)
        rng = torch.Generator(device=self._device).manual_seed(seed)
        out = [[] for _ in prompts]
        done = [False] * len(prompts)
        for _ in range(max_new):
            logits = self.model(ids[:, -self.max_length:])[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(int(top_k), logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=rng)[:, 0]
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            for i, t in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                if t in self.stop_ids:
                    done[i] = True
                    continue
                out[i].append(t)
                if until and any(u in self.tok_decode(out[i]) for u in until):
                    done[i] = True
            if all(done):
                break
        texts = []
        for toks in out:
            text = self.tok_decode(toks)
            for u in until:  # cut at the earliest stop string
                text = text.split(u)[0] if u else text
            texts.append(text)
        return texts

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        jobs = []
        for n, req in enumerate(requests):
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.pop("max_gen_toks", 256))
            do_sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 1.0 if do_sample else 0.0)) if do_sample else 0.0
            top_k = kw.pop("top_k", None)
            ctx = self.tok_encode(context, left_truncate_len=max(1, self.max_length - max_new))
            jobs.append((len(ctx), max_new, tuple(until), temperature, top_k, n, ctx))
        jobs.sort(key=lambda j: j[:5])  # equal prompt length and settings batch together exactly
        results: list = [None] * len(requests)
        bar = tqdm(total=len(jobs), disable=disable_tqdm, desc="nanochat generating")
        i = 0
        while i < len(jobs):
            j = i
            while j < len(jobs) and j - i < self.batch_size and jobs[j][:5] == jobs[i][:5]:
                j += 1
            _, max_new, until, temperature, top_k, _, _ = jobs[i]
            texts = self._generate([job[6] for job in jobs[i:j]], max_new, list(until), temperature, top_k,
                                   seed=1234 + i)
            for job, text in zip(jobs[i:j], texts):
                results[job[5]] = text
                self.cache_hook.add_partial("generate_until", requests[job[5]].args, text)
            bar.update(j - i)
            i = j
        bar.close()
        return results


def main(argv=None) -> int:
    """`lm_eval` with the nanochat model registered; `--model nanochat` is added when no --model is given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if _MISSING:
        print(f"error: {_MISSING}", file=sys.stderr)
        return 1
    from lm_eval.__main__ import cli_evaluate

    if not any(a == "--model" or a.startswith("--model=") for a in argv) and argv[:1] not in (["ls"], ["validate"]):
        argv = ["--model", "nanochat", *argv]
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except (NanochatError, ValueError) as e:  # our bad input, or lm-eval's (an unknown task, a bad flag value)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
