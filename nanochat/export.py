"""Export a trained model for other tools: safetensors weights, a Hugging Face `transformers` folder, the Hub.

The one idea: our first-release ("v0") architecture is exactly the `NanoChat` model class that `transformers`
ships (RoPE -> QK-norm, parameter-free RMSNorm also after the embedding, relu^2 MLP, untied head, soft-capped
logits), so exporting it is renaming weights and config fields. Later switches (value embeddings, residual
scalars, sliding windows, smear, backout, scaled queries/keys) have no counterpart there; such models are exported
in our own layout only, with a message that names the features in the way.

    python -m nanochat.export ckpt=latest:sft out=exports/sft [hf=auto|true|false] [dtype=float32|bfloat16]
                              [push_to_hub=true repo=user/name [private=true]]      # --help: every key

Output folder: `model.safetensors`, `config.json`, `tokenizer/` (ours), `README.md` (model card), and when the
architecture allows it the files `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(out)` read
(`config.json` is then the transformers config, with ours under its "nanochat" key; `tokenizer.json`, whose
special tokens are spelled "<｜bos｜>" so that text saying "<|bos|>" stays text, as in ours). `out`
must be new, empty or an earlier export (replaced as a whole): any other folder is refused, so an export never
overwrites files it did not write.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from nanochat.common import NanochatError, atomic_path, atomic_write_bytes, knob
from nanochat.gpt import GPT, GPTConfig

WEIGHTS_FILE = "model.safetensors"
# our module names -> transformers' NanoChat names (per layer, then the rest)
_LAYER_MAP = {
    "attn.c_q": "self_attn.q_proj", "attn.c_k": "self_attn.k_proj", "attn.c_v": "self_attn.v_proj",
    "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_TOP_MAP = {"transformer.wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}
# F.rms_norm(eps=None) uses the dtype's machine epsilon; fp32's is what our weights were evaluated with
_RMS_EPS = float(torch.finfo(torch.float32).eps)
# The exported tokenizer's special tokens are spelled with a fullwidth bar, "<｜bos｜>" (decoded back to "<|bos|>"),
# so text that says "<|bos|>" stays ordinary text, as in our tokenizer. The chat template escapes that spelling
# in message text ("｜" -> "\ue000｜", undone by the tokenizer's normalizer before BPE), so no message, and no two
# message parts put together, can spell a special token: a chat cannot inject a role.
_BAR, _ESC = "\uff5c", "\ue000"


def hf_special(name: str) -> str:
    """The exported spelling of our special token `name` ("<|bos|>" -> "<｜bos｜>")."""
    return name.replace("|", _BAR)


def _chat_template() -> str:
    """Chat rendering as our tokenizer does it: BOS, the system message folded into the first user turn, an
    assistant message a string or a list of parts (text, python, python_output) like `nanochat.chat`'s."""
    tpl = (
        "{{ bos_token }}{% set sys = namespace(text='') %}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{% set sys.text = (m['content'] ESCAPE) + '\\n\\n' %}"
        "{% elif m['role'] == 'user' %}<|user_start|>{{ sys.text }}{{ m['content'] ESCAPE }}<|user_end|>"
        "{% set sys.text = '' %}"
        "{% elif m['role'] == 'assistant' %}<|assistant_start|>"
        "{% if m['content'] is string %}{{ m['content'] ESCAPE }}{% else %}{% for p in m['content'] %}"
        "{% if p['type'] == 'python' %}<|python_start|>{{ p['text'] ESCAPE }}<|python_end|>"
        "{% elif p['type'] == 'python_output' %}<|output_start|>{{ p['text'] ESCAPE }}<|output_end|>"
        "{% else %}{{ p['text'] ESCAPE }}{% endif %}{% endfor %}{% endif %}<|assistant_end|>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant_start|>{% endif %}"
    )
    tpl = re.sub(r"<\|\w+\|>", lambda m: hf_special(m.group(0)), tpl)
    return tpl.replace("ESCAPE", f"| replace('{_BAR}', '{_ESC}{_BAR}')")  # every piece of message text


CHAT_TEMPLATE = _chat_template()


# -- compatibility and mapping ------------------------------------------------------------------------------
def hf_blockers(config: GPTConfig) -> list[str]:
    """Features of `config` that transformers' NanoChat model cannot represent (empty list: exportable)."""
    blockers = []
    if config.value_embeds:
        blockers.append("value embeddings (value_embeds=true)")
    if config.resid_scalars:
        blockers.append("per-layer residual scalars (resid_scalars=true)")
    if config.window_pattern is not None and "S" in config.window_pattern.upper() and config.n_layer > 1:
        blockers.append(f"sliding-window attention (window_pattern={config.window_pattern})")
    if config.smear:
        blockers.append("previous-token smear (smear=true)")
    if config.backout:
        blockers.append("mid-layer backout (backout=true)")
    if config.qk_scale != 1.0:  # its attention scale is fixed at head_dim^-0.5, after a QK-norm it has no knob for
        blockers.append(f"scaled queries and keys (qk_scale={config.qk_scale:g})")
    return blockers


def hf_config_dict(config: GPTConfig, tokenizer=None, meta: dict | None = None) -> dict:
    """Keyword arguments for `transformers.NanoChatConfig` describing the same network."""
    special = {}
    if tokenizer is not None:
        bos, end = tokenizer.bos_token_id, tokenizer.encode_special("<|assistant_end|>")
        special = {"bos_token_id": bos, "eos_token_id": [end, bos], "pad_token_id": bos}
    return {
        "vocab_size": config.vocab_size, "hidden_size": config.n_embd, "intermediate_size": 4 * config.n_embd,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head, "max_position_embeddings": config.sequence_len,
        "hidden_act": "relu2", "rms_norm_eps": _RMS_EPS, "attention_bias": False, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},
        "final_logit_softcapping": float(config.logit_softcap) if config.logit_softcap and config.logit_softcap > 0
        else None,
        **special,
        "nanochat": {"config": asdict(config), "meta": meta or {}},
    }


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our state dict to transformers' NanoChatForCausalLM names (a KeyError-free, complete map)."""
    out = {}
    for key, value in state.items():
        if key in _TOP_MAP:
            out[_TOP_MAP[key]] = value
            continue
        parts = key.split(".")  # transformer.h.{i}.{attn|mlp}.{name}.weight
        if parts[:2] != ["transformer", "h"] or ".".join(parts[3:5]) not in _LAYER_MAP:
            raise NanochatError(f"weight {key!r} has no transformers counterpart")
        out[f"model.layers.{parts[2]}.{_LAYER_MAP['.'.join(parts[3:5])]}.{'.'.join(parts[5:])}"] = value
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `to_hf_state_dict`."""
    top = {v: k for k, v in _TOP_MAP.items()}
    layer = {v: k for k, v in _LAYER_MAP.items()}
    out = {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        parts = key.split(".")  # model.layers.{i}.{self_attn|mlp}.{name}.weight
        name = ".".join(parts[3:5])
        if parts[:2] != ["model", "layers"] or name not in layer:
            raise NanochatError(f"unexpected weight {key!r} in a transformers NanoChat checkpoint")
        out[f"transformer.h.{parts[2]}.{layer[name]}.{'.'.join(parts[5:])}"] = value
    return out


# -- tokenizer ------------------------------------------------------------------------------------------------
def _bpe_split(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The last merge that builds `token`: byte-level BPE of its bytes with the ranks below its own."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            break
        parts[best: best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise NanochatError(f"token {token!r} cannot be built by merges of lower rank; the tokenizer is corrupt")
    return parts[0], parts[1]


def hf_tokenizer(tokenizer, model_max_length: int | None = None):
    """A `transformers` fast tokenizer (HF `tokenizers` BPE) that encodes exactly as our tiktoken runtime.

    Merges are recovered from the ranks (tiktoken stores none); `ignore_merges` mirrors tiktoken's
    whole-piece lookup; the split regex is ours; BOS is prepended when special tokens are requested. Special
    tokens are spelled "<｜name｜>" (see `hf_special`), so text saying "<|name|>" is encoded as text.
    """
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = tokenizer.mergeable_ranks()
    byte_map = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = [(text(a), text(b)) for a, b in
              (_bpe_split(tok, ranks) for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(tok) > 1)]
    tk = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tk.normalizer = normalizers.Replace(_ESC + _BAR, _BAR)  # the chat template's escape, undone before BPE
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    # byte-level token strings never hold a literal fullwidth bar: this only respells the special tokens
    tk.decoder = decoders.Sequence([decoders.Replace(_BAR, "|"), decoders.ByteLevel()])
    specials = tokenizer.get_special_tokens()
    tk.add_special_tokens([AddedToken(hf_special(s), special=True, normalized=False) for s in specials])
    for s in specials:  # added tokens take the next free ids: they must land on ours
        if tk.token_to_id(hf_special(s)) != tokenizer.encode_special(s):
            raise NanochatError(f"special token {s} would get id {tk.token_to_id(hf_special(s))}, "
                                f"not {tokenizer.encode_special(s)}")
    bos = hf_special("<|bos|>")
    tk.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, tokenizer.bos_token_id)])
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=hf_special("<|assistant_end|>"), pad_token=bos,
        chat_template=CHAT_TEMPLATE, **kwargs)


# -- writing --------------------------------------------------------------------------------------------------
def _save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        mode = tmp.stat().st_mode  # save_file writes a new file (0600): keep the mode atomic_path chose
        save_file(state, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)


def _fmt(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def model_card(config: GPTConfig, meta: dict, n_params: int, hf: bool, blockers: list[str],
               evals: dict | None = None) -> str:
    stage = meta.get("stage", "unknown")
    lines = ["---", "library_name: " + ("transformers" if hf else "nanochat"), "license: mit", "tags:",
             "- nanochat", f"- {stage}", "pipeline_tag: text-generation", "---", "",
             f"# nanochat d{config.n_layer} ({stage} stage)", "",
             f"A {n_params / 1e6:.1f}M-parameter GPT trained with nanochat: depth {config.n_layer}, width "
             f"{config.n_embd}, {config.n_head} heads ({config.n_kv_head} key/value), context {config.sequence_len}, "
             f"vocabulary {config.vocab_size:,}, RoPE base {config.rope_base:g}, logit soft-cap "
             f"{config.logit_softcap:g}, init `{config.init}`.", "",
             "| | |", "|---|---|",
             f"| training steps | {meta.get('steps', '-')} |",
             f"| validation bits per byte | {_fmt(meta.get('val_bpb'), '.4f')} |",
             f"| training time (s) | {_fmt(meta.get('fit_seconds'), '.0f')} |"]
    for name, res in sorted((evals or {}).items()):
        if isinstance(res, dict) and isinstance(res.get("score"), (int, float)):
            lines.append(f"| {name} | {res['score']:.4f} |")
    lines += ["", "## Use", ""]
    if hf:
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  "tok = AutoTokenizer.from_pretrained(PATH)", "model = AutoModelForCausalLM.from_pretrained(PATH)",
                  "ids = tok.apply_chat_template([{'role': 'user', 'content': 'Hi!'}], add_generation_prompt=True,",
                  "                              return_tensors='pt', return_dict=True)",
                  "out = model.generate(**ids, max_new_tokens=64, do_sample=False)",
                  "print(tok.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))", "```", "",
                  "Special tokens are spelled `<｜bos｜>`, `<｜user_start｜>`, ... in `tokenizer.json` (decoded as "
                  "`<|bos|>`, ...): text that says `<|user_end|>` stays text, and the chat template escapes "
                  "message text, so a message cannot open or close a turn.", ""]
    else:
        lines += [f"Not loadable by `transformers`: it uses {', '.join(blockers)}, which its NanoChat model "
                  "class does not have. Load it with nanochat:", ""]
    lines += ["```python", "from nanochat.export import load_export", "model, meta = load_export(PATH)", "```", "",
              "`tokenizer/` is nanochat's own tokenizer (`nanochat.tokenizer.Tokenizer.load`).", ""]
    return "\n".join(lines)


def is_export(path) -> bool:
    """Whether folder `path` holds an export of ours (either layout): the only non-empty folder we replace."""
    path = Path(path)
    try:
        info = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    ours = isinstance(info, dict) and ("nanochat" in info or {"config", "meta"} <= set(info))
    return ours and (path / WEIGHTS_FILE).exists()


def check_target(out) -> bool:
    """Refuse an `out` that is a file or a non-empty folder other than an earlier export; True: replace one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NanochatError(f"out: {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not is_export(out):
        raise NanochatError(f"out: {out} is not empty and holds no earlier export; give a new or empty folder "
                            "(nothing was written)")
    return True


def _move_entries(src: Path, dst: Path, keep=()) -> None:
    for entry in list(src.iterdir()):
        if entry not in keep:
            os.replace(entry, dst / entry.name)


def _write_files(model: GPT, tokenizer, folder: Path, meta: dict, use_hf: bool, dtype: torch.dtype) -> None:
    config = model.config
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    tokenizer.save(folder / "tokenizer")
    if use_hf:
        from transformers import GenerationConfig, NanoChatConfig

        hf_cfg = NanoChatConfig(**hf_config_dict(config, tokenizer, meta), dtype=str(dtype).split(".")[-1])
        hf_cfg.architectures = ["NanoChatForCausalLM"]
        _save_safetensors(to_hf_state_dict(state), folder / WEIGHTS_FILE, {"format": "pt"})
        atomic_write_bytes(folder / "config.json", hf_cfg.to_json_string().encode())
        gen = GenerationConfig(bos_token_id=hf_cfg.bos_token_id, eos_token_id=hf_cfg.eos_token_id,
                               pad_token_id=hf_cfg.pad_token_id)
        atomic_write_bytes(folder / "generation_config.json", gen.to_json_string().encode())
        hf_tokenizer(tokenizer, config.sequence_len).save_pretrained(str(folder))
    else:
        _save_safetensors(state, folder / WEIGHTS_FILE, {"format": "pt", "layout": "nanochat"})
        info = {"config": asdict(config), "meta": meta}
        atomic_write_bytes(folder / "config.json", json.dumps(info, indent=2).encode())


def export_model(model: GPT, tokenizer, out, meta: dict | None = None, hf: str = "auto",
                 dtype: torch.dtype = torch.float32, evals: dict | None = None) -> dict:
    """Write `model` (+ tokenizer, card) to folder `out`. hf: "auto" (when possible), "true" (or fail), "false".

    `out` must be new, empty, or an earlier export (replaced as a whole); anything else is refused before a
    byte is written. The files are written into a scratch folder inside `out` and moved in at the end, so a
    failed export leaves `out` as it was. Returns {"out": Path, "hf": bool, "blockers": [...], "replaced": bool}.
    """
    if hf not in ("auto", "true", "false"):
        raise NanochatError(f"hf: {hf!r} is not allowed; expected one of: auto, true, false")
    blockers = hf_blockers(model.config)
    if hf == "true" and blockers:
        raise NanochatError("cannot export to transformers: its NanoChat model has no " + ", no ".join(blockers)
                            + "; use hf=false (or hf=auto) for a safetensors export in nanochat's layout")
    use_hf = hf != "false" and not blockers
    out = Path(out)
    replaced = check_target(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        _write_files(model, tokenizer, scratch, dict(meta or {}), use_hf, dtype)
        card = model_card(model.config, dict(meta or {}), model.num_params(), use_hf, blockers, evals)
        atomic_write_bytes(scratch / "README.md", card.encode())
        old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=out))
        _move_entries(out, old, keep=(scratch, old))  # the earlier export, if any, out of the way
        _move_entries(scratch, out)
        shutil.rmtree(old)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
    return {"out": out, "hf": use_hf, "blockers": blockers, "replaced": replaced}


def load_export(path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Our GPT (eval mode) and its meta from an export folder, in either layout."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights = path / "config.json", path / WEIGHTS_FILE
    if not cfg_file.exists() or not weights.exists():
        raise NanochatError(f"{path} is not an export folder (config.json and {WEIGHTS_FILE} expected)")
    try:
        info = json.loads(cfg_file.read_text())
        state = load_file(str(weights))
    except Exception as e:
        raise NanochatError(f"export in {path} is unreadable ({type(e).__name__}: {str(e)[:120]})") from None
    if "nanochat" in info:  # transformers layout
        info = info["nanochat"]
        state = from_hf_state_dict(state)
    try:
        config = GPTConfig(**info["config"])
    except (KeyError, TypeError) as e:
        raise NanochatError(f"{cfg_file} has no valid nanochat config ({e})") from None
    model = GPT.build(config, device=device, init_weights=False)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise NanochatError(f"weights in {path} do not match their config: {str(e).splitlines()[0]}") from None
    return model.eval(), info.get("meta", {})


def push_folder(out, repo: str, private: bool = False, token: str | None = None,
                endpoint: str | None = None) -> str:
    """Upload an export folder to the Hugging Face Hub (creates the repo if needed); returns the commit URL.

    `endpoint` overrides the Hub address (a mirror or a private Hub; default $HF_ENDPOINT or huggingface.co).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token, endpoint=endpoint)
    try:
        api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="model",
                                 commit_message="Upload nanochat export")
    except Exception as e:  # network, authentication, bad repo id: one clear line for the user
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NanochatError(f"upload to the Hub repo {repo!r} failed: {msg} (log in with `hf auth login` "
                            "or set HF_TOKEN)") from None
    return str(getattr(info, "commit_url", info))


# -- command line ---------------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class ExportSettings:
    """`python -m nanochat.export`."""

    out: str = knob(MISSING, "the folder to write: new, empty, or an earlier export (which is replaced)")
    ckpt: Optional[str] = knob(None, "model folder, .ckpt or latest:<stage> (default: newest of rl/sft/mid/base)")
    hf: str = knob("auto", "transformers layout: auto (when the model allows it), true (or fail) or false")
    dtype: str = knob("float32", "weight precision of the export", choices=tuple(_DTYPES))
    push_to_hub: bool = knob(False, "upload the folder to the Hugging Face Hub afterwards")
    repo: Optional[str] = knob(None, "the Hub repo (user/name) for push_to_hub=true")
    private: bool = knob(False, "create the Hub repo private")


def run(settings: ExportSettings) -> dict:
    """Check every setting (and the target folder), then load the model, export it, push it if asked."""
    from nanochat.checkpoint import load_model, resolve_model_path
    from nanochat.layout import RunFolder

    hf = str(settings.hf).lower()  # `hf=true` reaches us as the bool's text
    if hf not in ("auto", "true", "false"):
        raise NanochatError(f"hf: {settings.hf!r} is not allowed; expected one of: auto, true, false")
    if settings.push_to_hub and not settings.repo:
        raise NanochatError("push_to_hub=true needs repo=<user>/<name>")
    check_target(settings.out)
    path = resolve_model_path(settings.ckpt)
    model, tokenizer, meta = load_model(path)
    evals = None
    eval_json = RunFolder.containing(path).eval_json
    if eval_json.exists():
        try:
            evals = json.loads(eval_json.read_text()).get("results")
        except (json.JSONDecodeError, AttributeError):
            evals = None  # a broken eval file should not block an export
    result = export_model(model, tokenizer, settings.out, meta={**meta, "source": str(path)}, hf=hf,
                          dtype=_DTYPES[settings.dtype], evals=evals)
    print(f"exported {path} -> {result['out']}" + (" (the earlier export there replaced)" if result["replaced"]
                                                     else ""))
    if result["hf"]:
        print("transformers: AutoModelForCausalLM.from_pretrained / AutoTokenizer.from_pretrained load this folder")
    else:
        print("transformers: not exported; its NanoChat model has no " + ", no ".join(result["blockers"])
              if result["blockers"] else "transformers: skipped (hf=false)")
    if settings.push_to_hub:
        url = push_folder(result["out"], settings.repo, private=settings.private)
        print(f"pushed to the Hub: {url}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """`key=value` settings (see ExportSettings); a bad one is one `error:` line and exit code 1."""
    from nanochat.config.command import run_command

    return run_command(ExportSettings, argv, run, prog="python -m nanochat.export",
                       summary="Export a trained model: safetensors, a transformers folder when the "
                               "architecture allows it, optionally pushed to the Hugging Face Hub.")


if __name__ == "__main__":
    sys.exit(main())
