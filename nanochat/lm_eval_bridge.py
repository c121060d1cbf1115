"""EleutherAI lm-evaluation-harness bridge: any lm-eval task on a nanochat model.

    python -m nanochat.lm_eval_bridge tasks=[hellaswag,arc_easy] ckpt=latest:base batch_size=16 limit=100

Settings are `key=value` like every nanochat command (`--help` lists them: the model, the tasks and the
lm-eval options a nanochat user needs); the command runs `lm_eval.simple_evaluate` and prints lm-eval's table.
For lm-eval options not offered here use Python: import this module (lm-eval discovers no model plugins from
installed packages; the import registers ours as `nanochat`), then
`lm_eval.simple_evaluate(model="nanochat", model_args="path=...", ...)`.

The one idea: lm-eval's `TemplateLM` turns every request into token ids (context, continuation); we right-pad
rows of similar length into one batch (padding after the real tokens cannot affect a causal model's scores),
run one forward pass per batch and read the continuation's log-probabilities. Documents in pretraining start
with <|bos|>, so contexts do too (`add_bos=false` to turn that off), and <|bos|> is the end-of-text token.
Generation recomputes the whole window per new token (no KV cache): simple, exact, fine for short answers.
`apply_chat_template=true` renders prompts as `nanochat.chat.render_for_completion` does (same ids). Every
failure, lm-eval's own included (a hub task's data offline), is one `error:` line and exit code 1.
"""
from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

from nanochat.common import NanochatError, knob

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
        self.chat_mode = False  # set by `apply_chat_template`: contexts then carry our special tokens

    # -- what TemplateLM needs ------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.bos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens=None, left_truncate_len=None, **kwargs) -> list[int]:
        if self.chat_mode:  # a prompt from `apply_chat_template`: its markers are our special tokens, BOS included
            ids = self.tokenizer.encoding.encode(string, allowed_special="all")
        else:
            ids = self.tokenizer.encode(string)
            if add_special_tokens is not False and self.add_bos:
                ids = [self.tokenizer.bos_token_id] + ids
        return ids[-left_truncate_len:] if left_truncate_len else ids

    # -- chat prompts (apply_chat_template=true) ------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return "nanochat"

    def chat_template(self, chat_template=False) -> str:
        return "nanochat.chat.render_for_completion"

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt `nanochat.chat.render_for_completion` builds, as text that `tok_encode` turns into its ids.

        A final assistant message (lm-eval's answer prefix) is left open for the model to continue. Task text that
        spells a special token could not be told from the markers, so it is refused.
        """
        from nanochat.chat import validate_conversation

        for message in chat_history:
            text = message.get("content") if isinstance(message, dict) else None
            if isinstance(text, str) and any(name in text for name in self.tokenizer.get_special_tokens()):
                raise NanochatError("apply_chat_template: a task prompt contains special-token text "
                                    f"({text[:60]!r}); run this task without apply_chat_template")
        history, prefix = list(chat_history), None
        if history and isinstance(history[-1], dict) and history[-1].get("role") == "assistant":
            prefix = str(history.pop().get("content") or "")
        try:
            messages = validate_conversation(history)
        except NanochatError as e:
            raise NanochatError(f"apply_chat_template: lm-eval's chat cannot be rendered ({e})") from None
        self.chat_mode = True
        parts = ["<|bos|>"]
        for m in messages:
            tag = "user" if m["role"] == "user" else "assistant"
            parts.append(f"<|{tag}_start|>{m['content']}<|{tag}_end|>")
        if prefix is not None or add_generation_prompt:
            parts.append("<|assistant_start|>" + (prefix or ""))
        return "".join(parts)

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


# -- command line ---------------------------------------------------------------------------------------------
@dataclass
class LmEvalSettings:
    """`python -m nanochat.lm_eval_bridge`."""

    tasks: List[str] = knob(MISSING, "lm-eval task or group names: tasks=[hellaswag,arc_easy] (or tasks=hellaswag)")
    ckpt: Optional[str] = knob(None, "model folder, .ckpt, latest:<stage> or export folder (default: newest model)")
    batch_size: int = knob(8, "rows per forward pass", low=1)
    limit: Optional[float] = knob(None, "at most this many examples per task (below 1: a fraction of each)", low=0)
    num_fewshot: Optional[int] = knob(None, "few-shot examples per prompt (default: each task's own)", low=0)
    device: Optional[str] = knob(None, "cpu, cuda, cuda:1, mps (default: cuda when available)")
    add_bos: bool = knob(True, "start every context with <|bos|>, as pretraining documents do")
    apply_chat_template: bool = knob(False, "render prompts as chat turns with nanochat's template (chat models)")
    include_path: Optional[str] = knob(None, "a folder of extra task YAML files")
    output_path: Optional[str] = knob(None, "also write the results as JSON to this file")
    log_samples: bool = knob(False, "with output_path: keep every example's prompt and answer in the JSON")
    seed: Optional[int] = knob(None, "one seed for lm-eval's python, numpy, torch and few-shot sampling")


def _list_arg(arg: str) -> str:
    """`tasks=a` and `tasks=a,b` mean `tasks=[a]` and `tasks=[a,b]` (a bare comma is a sweep in the grammar)."""
    key, sep, value = arg.partition("=")
    if key == "tasks" and sep and not value.lstrip().startswith("["):
        return f"tasks=[{value}]"
    return arg


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


def evaluate(settings: LmEvalSettings) -> dict:
    """Run the tasks on the model with lm-eval, print its tables, write output_path; returns lm-eval's results."""
    if _MISSING:
        raise NanochatError(_MISSING)
    import json

    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    from nanochat.common import atomic_write_bytes

    if not settings.tasks:
        raise NanochatError("tasks: give at least one lm-eval task, e.g. tasks=[hellaswag]")
    if settings.device:
        try:
            torch.device(settings.device)
        except RuntimeError:
            raise NanochatError(f"device: {settings.device!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if settings.output_path and Path(settings.output_path).is_dir():
        raise NanochatError(f"output_path: {settings.output_path} is a folder; give the JSON file to write")
    if settings.include_path and not Path(settings.include_path).is_dir():
        raise NanochatError(f"include_path: no folder at {settings.include_path}")
    lm = NanochatLM(path=settings.ckpt, device=settings.device, batch_size=settings.batch_size,
                    add_bos=settings.add_bos)
    manager = TaskManager(include_path=settings.include_path)
    missing = [t for t in settings.tasks if not manager.match_tasks([t])]
    if missing:
        raise NanochatError(f"tasks: unknown lm-eval task(s): {', '.join(missing)} "
                            "(`lm-eval ls tasks` lists them; include_path= adds YAML tasks)")
    limit = settings.limit if settings.limit is None or settings.limit < 1 else int(settings.limit)
    seeds = {} if settings.seed is None else {f"{k}_seed": settings.seed for k in
                                               ("random", "numpy_random", "torch_random", "fewshot_random")}
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot,
                                          limit=limit, log_samples=settings.log_samples, task_manager=manager,
                                          apply_chat_template=settings.apply_chat_template, **seeds)
    except NanochatError:
        raise
    except ValueError as e:  # lm-eval's word on a task it cannot run (a broken YAML, a bad few-shot count)
        raise NanochatError(f"lm-eval: {_first_line(e)}") from None
    except OSError as e:  # ConnectionError included: a hub task's data that cannot be downloaded
        raise NanochatError(f"lm-eval could not load a task's data: {_first_line(e)} (hub tasks download their "
                            "data on first use; run once online, or give local tasks with include_path=)") from None
    except Exception as e:  # anything else lm-eval raises: one line, as for every nanochat command
        raise NanochatError(f"lm-eval failed: {type(e).__name__}: {_first_line(e)}") from None
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    if settings.output_path:
        out = Path(settings.output_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, json.dumps(results, indent=2, default=handle_non_serializable).encode())
        print(f"results: {out}")
    return results


def main(argv=None) -> int:
    """`key=value` settings (see LmEvalSettings); a bad one is one `error:` line and exit code 1."""
    from nanochat.config.command import run_command

    argv = [_list_arg(a) for a in (sys.argv[1:] if argv is None else argv)]
    return run_command(LmEvalSettings, argv, evaluate, prog="python -m nanochat.lm_eval_bridge",
                       summary="Run EleutherAI lm-evaluation-harness tasks on a nanochat model.")


if __name__ == "__main__":
    sys.exit(main())
