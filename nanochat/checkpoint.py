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
        tok_dir = path.parent.parent / "tokenizer"  # <run>/checkpoints/x.ckpt -> <run>/tokenizer
    with torch.device("meta"):
        model = GPT(GPTConfig(**config))
    model.to_empty(device=device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise NanochatError(f"weights in {path} do not match their config: {str(e).splitlines()[0]}") from None
    model.eval()
    tok = Tokenizer.load(tok_dir) if tokenizer else None
    return model, tok, meta
