"""Evaluate one model: pick the evaluations that fit its stage, run them, record them in its run folder.

`evaluate.py` (Hydra) is a thin wrapper around `run_evaluations`. The checkpoint is only read: results go into
the model's run folder (`layout.RunFolder.containing`: its `eval_json` and `eval_md`), each file written
atomically, and an evaluation that fails is recorded with its reason while the others complete. The default
evaluations of a stage are its row of `layout.STAGES`. Nothing could be scored -> NanochatError.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from nanochat.common import NanochatError, atomic_write_bytes
from nanochat.layout import BASE_EVALS, CHAT_EVALS, STAGES, RunFolder

ALL_EVALS = BASE_EVALS + CHAT_EVALS
# eval name -> the chat_eval display name (ChatCORE's tasks)
CHAT_NAMES = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "mmlu": "MMLU", "gsm8k": "GSM8K",
              "humaneval": "HumanEval", "spellingbee": "spelling_bee"}


def _go_offline_without_hub() -> None:
    """When the Hugging Face Hub cannot be resolved, tell `datasets` at once (no minute of retries per task)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE"):
        return
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


def default_evals(stage: str) -> list[str]:
    """The stage's evaluations (base: CORE and bits per byte; chat stages: ChatCORE's); unknown stage: base."""
    known = STAGES.get(stage)
    return list(known.evals if known is not None and known.evals else BASE_EVALS)


def run_folder_of(model_path: Path) -> Path:
    """Where a model's results go: its run folder (outputs/<stage>/<run>/), else the model folder itself."""
    return RunFolder.containing(model_path).path


def _run_section(model_path: Path, key: str) -> dict:
    """One section of the model's run config.yaml ({} without one)."""
    import yaml

    cfg_file = RunFolder.containing(model_path).config
    try:
        return dict((yaml.safe_load(cfg_file.read_text()) or {}).get(key) or {})
    except (OSError, yaml.YAMLError):
        return {}


def bpb_bytes_kind(model_path: Path) -> str:
    """How the model's preset counts a token's bytes for bits per byte (nanochat.recipe.Preset.bpb_token_bytes)."""
    from nanochat.recipe import PRESETS, V0

    return PRESETS.get(_run_section(model_path, "model").get("preset"), V0).bpb_token_bytes


def _run_data(model_path: Path) -> tuple[str, dict] | None:
    """(source name, options) of the `data` section in the model's run config.yaml, if there is one."""
    data = _run_section(model_path, "data")
    if "name" not in data:
        return None
    name = data.pop("name")
    for key in ("tokenizer", "loader", "download", "download_workers"):  # evaluation never downloads
        data.pop(key, None)
    return name, data


def _bpb(model, tokenizer, options: dict, device, model_path: Path) -> dict:
    from nanochat.dataloader import val_loader
    from nanochat.dataset import get_source
    from nanochat.loss_eval import evaluate_bpb

    opts = dict(options)
    name, source_cfg = opts.pop("name", None), dict(opts.pop("source", None) or {})
    if name is None:  # the data the model was trained on, from its run folder's config
        name, source_cfg = _run_data(model_path) or ("sample", source_cfg)
    source = get_source(name, **source_cfg)
    if not source.has_split("val"):
        raise NanochatError(f"data source {source.name!r} has no validation split")
    seq = model.config.sequence_len
    batch, steps = int(opts.get("batch_size", 8)), int(opts.get("steps", 16))
    batches = ((x.to(device), y.to(device)) for x, y in val_loader(source, tokenizer, batch, seq, steps=steps))
    return {"score": evaluate_bpb(model, batches, tokenizer.token_bytes(bpb_bytes_kind(model_path)).to(device)), "steps": steps,
            "tokens": steps * batch * seq}


def run_evaluations(spec: str | None, evals: list[str] | None = None, max_per_task: int | None = None,
                    batch_size: int = 16, device: str = "cpu", task_options: dict | None = None,
                    max_new_tokens: int = 512,
                    core_options: dict | None = None, bpb_options: dict | None = None) -> dict:
    """Evaluate the model `spec` names (see checkpoint.resolve_model_path); returns the eval.json content."""
    from nanochat.checkpoint import load_model, resolve_model_path

    path = resolve_model_path(spec)
    model, tokenizer, meta = load_model(path, device=device)
    stage = meta.get("stage", "unknown")
    names = list(evals) if evals else default_evals(stage)
    unknown = [n for n in names if n not in ALL_EVALS + ("chatcore",)]
    if unknown:
        raise NanochatError(f"unknown evaluation(s): {', '.join(unknown)}; choose from: {', '.join(ALL_EVALS)}")
    names = [n for n in names if n != "chatcore"]
    if any(n in CHAT_EVALS for n in names):
        _go_offline_without_hub()
    print(f"evaluating {path} (stage {stage}): {', '.join(names)}", flush=True)
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    t0 = time.time()
    for name in names:
        t = time.time()
        try:
            with torch.no_grad():
                if name == "core":
                    from nanochat.core_eval import evaluate_core

                    core = evaluate_core(model, tokenizer, max_per_task=max_per_task, batch_size=batch_size,
                                         device=device, **(core_options or {}))
                    if core["core"] is None:
                        raise NanochatError("no CORE task could be scored: " + "; ".join(
                            f"{k}: {v.get('error')}" for k, v in core["tasks"].items()))
                    results[name] = {"score": core["core"], "prompts": core["prompts"], "tasks": core["tasks"]}
                elif name == "bpb":
                    results[name] = _bpb(model, tokenizer, bpb_options or {}, device, path)
                else:
                    from nanochat.chat_eval import build_eval_task, evaluate_chat_task

                    options = {"split": "test", "size": 256} if name == "spellingbee" else {}
                    options.update({k: v for k, v in ((task_options or {}).get(name) or {}).items() if v is not None})
                    task = build_eval_task(CHAT_NAMES[name], **options)
                    out = evaluate_chat_task(task, model, tokenizer, max_problems=max_per_task,
                                             batch_size=min(batch_size, 8), max_tokens=max_new_tokens)
                    results[name] = {"score": out["accuracy"], "n": out["total"]}
        except NanochatError as e:
            failed[name] = str(e)
            print(f"  {name}: failed ({e})", flush=True)
            continue
        results[name]["seconds"] = time.time() - t
        print(f"  {name}: {results[name]['score']:.4f} ({time.time() - t:.1f} s)", flush=True)
    chat = {CHAT_NAMES[n]: results[n]["score"] for n in names if n in CHAT_NAMES and n != "spellingbee"
            and n in results}
    if chat:
        from nanochat.chat_eval import chat_core

        score = chat_core(chat)
        if score is not None:
            results["chatcore"] = {"score": score, "tasks": sorted(chat)}
    if not results:
        raise NanochatError("nothing could be scored: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return {"stage": stage, "model": str(path), "seconds": time.time() - t0, "max_per_task": max_per_task,
            "results": results, "failed": failed}


def core_prompts_label(mode) -> str:
    """How CORE's prompts were given to the model (eval.json's results.core.prompts), for people."""
    return {"full": "full (whole few-shot prompts, as the reference)",
            "crop": "crop (each prompt cut to the model's context; not the reference's CORE)"}.get(mode, "unknown")


def to_markdown(record: dict) -> str:
    lines = [f"# Evaluation: {record['stage']} model", "", f"model: `{record['model']}`", "",
             "| evaluation | score |", "|---|---|"]
    for name, r in record["results"].items():
        lines.append(f"| {name} | {r['score']:.4f} |")
    for name, reason in record.get("failed", {}).items():
        lines.append(f"| {name} | failed: {reason} |")
    core = record["results"].get("core")
    if core:
        lines += ["", f"CORE prompts: {core_prompts_label(core.get('prompts'))}", "",
                  "| CORE task | accuracy | centered | cropped prompts |", "|---|---|---|---|"]
        for label, t in core["tasks"].items():
            acc = "-" if t.get("accuracy") is None else f"{t['accuracy']:.4f}"
            cen = "-" if t.get("centered") is None else f"{t['centered']:.4f}"
            lines.append(f"| {label} | {acc} | {cen} | {t.get('cropped', '-')} |")
    return "\n".join(lines) + "\n"


def write_results(record: dict, folder: Path) -> tuple[Path, Path]:
    """Write `record` as the run folder's eval.json and eval.md; returns both paths."""
    run = RunFolder(Path(folder))
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run.eval_json, json.dumps(record, indent=2, default=str).encode())
    atomic_write_bytes(run.eval_md, to_markdown(record).encode())
    return run.eval_json, run.eval_md
