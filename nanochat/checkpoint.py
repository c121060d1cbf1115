"""Model folders: weights + config + tokenizer in one place, loadable without Hydra or Lightning.

A model folder holds `model.pt` (state dict), `config.json` (GPTConfig + metadata) and `tokenizer/`.
`load_model` also accepts a Lightning `.ckpt` from a run folder (its tokenizer is the run's `tokenizer/`).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from nanochat.common import NanochatError, atomic_path, atomic_write_bytes
from nanochat.gpt import GPT, GPTConfig
from nanochat.layout import MODEL_STAGES, STAGES, RunFolder, outputs_root, run_folders

MODEL_PREFIX = "model."  # how NanochatLM names the GPT inside a Lightning state dict


def export_model(model: GPT, tokenizer, directory, meta: dict | None = None) -> Path:
    """Write a self-contained model folder (each file atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / "model.pt") as tmp:
        torch.save(state, tmp)
    info = {"config": asdict(model.config), "meta": meta or {}}
    atomic_write_bytes(directory / "config.json", json.dumps(info, indent=2).encode())
    tokenizer.save(directory / "tokenizer")
    return directory


def _read_ckpt(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise NanochatError(f"checkpoint not found: {path}") from None
    except Exception as e:
        raise NanochatError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__})") from None


def _from_lightning(ckpt: dict, path: Path) -> tuple[dict, dict]:
    if "state_dict" not in ckpt or "nanochat_model_config" not in ckpt:
        raise NanochatError(f"{path} is not a nanochat training checkpoint")
    sd = {k[len(MODEL_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    return sd, ckpt["nanochat_model_config"]


def load_state_dict(path) -> dict:
    """Model weights from a model folder, its model.pt, or a Lightning checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    obj = _read_ckpt(path)
    if path.suffix == ".ckpt":
        return _from_lightning(obj, path)[0]
    return obj


def load_model(path, device: str | torch.device = "cpu", tokenizer: bool = True):
    """Load (model, tokenizer, meta) from a model folder or a Lightning .ckpt; the model is in eval mode."""
    from nanochat.tokenizer import Tokenizer

    path = Path(path)
    if not path.exists():
        raise NanochatError(f"no model at {path}")
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise NanochatError(f"{path} is not a model folder (config.json missing)")
        try:
            info = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NanochatError(f"{cfg_file} is corrupt") from None
        config, meta = info["config"], info.get("meta", {})
        state = _read_ckpt(path / "model.pt")
        tok_dir = path / "tokenizer"
    else:
        state, config = _from_lightning(_read_ckpt(path), path)
        meta = {"source": str(path)}
        tok_dir = RunFolder.containing(path).tokenizer  # <run>/checkpoints/x.ckpt -> <run>/tokenizer
    model = GPT.build(GPTConfig(**config), device=device, init_weights=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise NanochatError(f"weights in {path} do not match their config: {str(e).splitlines()[0]}") from None
    model.eval()
    tok = Tokenizer.load(tok_dir) if tokenizer else None
    return model, tok, meta


# -- finding models -----------------------------------------------------------------------------------------
STAGE_ORDER = tuple(STAGES)  # pipeline order; later stages start from earlier ones
TRAIN_HINT = {name: STAGES[name].train_command for name in MODEL_STAGES}


def outputs_dir() -> Path:
    """Root of the run folders (`outputs/<stage>/<run_name>/`): see `nanochat.layout.outputs_root`."""
    return outputs_root()


def latest_model_dir(stage: str, root: Path | None = None) -> Path | None:
    """The most recently written complete model folder of a stage (outputs/<stage>/*/model), or None."""
    candidates = [run.model for run in run_folders(stage, root) if run.has_model()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (p / "model.pt").stat().st_mtime_ns)


def resolve_model_path(spec: str | None = None, prefer: tuple[str, ...] = tuple(reversed(MODEL_STAGES)),
                       root: Path | None = None) -> Path:
    """A model folder or .ckpt from `spec`: a path, `latest:<stage>`, or None (newest of `prefer`, in order).

    Raises a NanochatError that names the command to train the missing model.
    """
    if spec is not None and not str(spec).startswith("latest"):
        path = Path(spec)
        if not path.exists():
            raise NanochatError(f"no model at {path}")
        run = RunFolder(path)
        if path.is_dir() and not (path / "config.json").exists() and (run.model / "config.json").exists():
            path = run.model  # a run folder: its exported model
        return path
    stages = prefer
    if spec is not None and ":" in str(spec):
        stage = str(spec).split(":", 1)[1]
        if stage not in TRAIN_HINT:
            raise NanochatError(f"unknown stage in {spec!r}; use one of: "
                                + ", ".join(f"latest:{name}" for name in MODEL_STAGES))
        stages = (stage,)
    for stage in stages:
        found = latest_model_dir(stage, root)
        if found is not None:
            return found
    first = stages[-1] if spec is None else stages[0]
    where = (outputs_dir() if root is None else Path(root)).resolve()
    raise NanochatError(f"no trained {'/'.join(stages)} model under {where}; train one with `{TRAIN_HINT[first]}`")
