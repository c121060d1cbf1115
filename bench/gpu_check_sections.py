"""The sections of bench/gpu_check.py, each a function of the running check that returns its figures as a dict.

Each section is self-contained (it builds what it needs, or reads what an earlier section left in `check.shared`
and says so), so one failing does not take the rest down. Sizes come from `check.sizes` (GPU or dry pass).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from nanochat.probe import synchronize

ROOT = Path(__file__).resolve().parent.parent


def _compute_dtype(check) -> torch.dtype:
    return torch.float32 if check.dry else torch.bfloat16


def _bench_module(name: str):
    """bench/<name>.py loaded by path (bench/ is scripts, not a package)."""
    path = ROOT / "bench" / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"bench/{name}.py is not in this checkout")
    spec = importlib.util.spec_from_file_location(f"nanochat_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: str(o) if not isinstance(o, float) else o))


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    """An installed distribution's version, without importing it (lightning alone takes seconds to import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# -----------------------------------------------------------------------------------------------------------
# device, peak, tokenizer


def env(check) -> dict:
    from nanochat.hardware import device_memory

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "triton": _version("triton"), "lightning": _version("lightning"), "hydra": _version("hydra-core"),
            "openai": _version("openai"), "fastapi": _version("fastapi"),
            "nanochat_rustbpe": _version("nanochat-rustbpe"), "nanochat_commit": _git_commit(),
            "profile": check.sizes.profile}
    if check.sizes.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    multiprocessors=props.multi_processor_count, total_memory_bytes=props.total_memory)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,power.limit,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:200]
        except (OSError, subprocess.SubprocessError) as e:
            info["nvidia_smi"] = f"not available ({type(e).__name__})"
    else:
        info["device"] = "cpu"
    info["memory"] = device_memory(device_name=None if check.sizes.device == "cuda" else "cpu").describe()
    return info


def peak(check) -> dict:
    """The dense matmul peak in bf16 (what MFU is against) and in the training profile's dtype, both written to
    nanochat.probe's cache so the training runs' `peak_flops=auto` divides by the same figures."""
    import yaml

    from nanochat.probe import dtype_name, measured_peak, probe_dtype

    s = check.sizes
    device = torch.device(s.device)
    profile = yaml.safe_load((ROOT / "conf" / "hardware" / f"{s.profile}.yaml").read_text())
    out = {"sizes": list(s.peak_sizes)}
    out["bf16_flops"], _ = measured_peak(device, torch.bfloat16, refresh=True, sizes=s.peak_sizes)
    train_dtype = probe_dtype(profile.get("precision", "32-true"))
    if train_dtype != torch.bfloat16:
        out[f"{dtype_name(train_dtype)}_flops"], _ = measured_peak(device, train_dtype, refresh=True, sizes=s.peak_sizes)
    nominal = profile.get("peak_flops_nominal")
    if nominal:
        out["profile_nominal_flops"] = float(nominal)
        out["measured_over_nominal"] = out["bf16_flops"] / float(nominal)
    check.shared["peak"] = out["bf16_flops"]
    return out


def _data_overrides(check) -> list[str]:
    """The training data: the embedded sample on a GPU; in the dry pass a few documents of it as a local folder
    (building the whole sample corpus takes a minute on a small CPU)."""
    if not check.dry:
        return list(check.sizes.data)
    corpus = check.work / "corpus"
    if not corpus.exists():
        from nanochat.sample_corpus import iter_documents

        corpus.mkdir(parents=True)
        for i, text in zip(range(24), iter_documents(max_files=12, include_topics=False)):
            (corpus / f"doc_{i:03d}.txt").write_text(text)
    return ["data=local", f"data.path={corpus}", "data.val_fraction=0.25"]


def _train_py(check, overrides: list[str], run_dir: Path, name: str) -> subprocess.CompletedProcess:
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun starts fresh (a run folder with checkpoints would refuse)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCH_LOGS="recompiles")
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    check.log(f"--- {name}: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(30, check.left()))
    check.log(proc.stdout[-6000:] + "\n" + proc.stderr[-6000:])
    if proc.returncode != 0:
        lines = [x for x in (proc.stderr + "\n" + proc.stdout).splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("error:") or "Error" in x]
        raise RuntimeError(f"train.py {name} exited {proc.returncode}: {(errors or lines or ['?'])[-1][:240]}")
    return proc


def tokenizer(check) -> dict:
    run_dir = check.work / "tokenizer_run"
    overrides = ["stage=tokenizer", *_data_overrides(check), *check.sizes.tokenizer]
    t = time.monotonic()
    proc = _train_py(check, overrides, run_dir, "tokenizer")
    check.shared["tokenizer_dir"] = run_dir / "tokenizer"
    trained = [x for x in proc.stdout.splitlines() if x.startswith("trained in")]
    return {"wall_s": round(time.monotonic() - t, 1), "line": trained[0] if trained else None}


# -----------------------------------------------------------------------------------------------------------
# training per depth: the real train.py stage=base path


def _step_seconds(metrics_csv: Path) -> list[float]:
    if not metrics_csv.exists():
        return []
    with open(metrics_csv) as f:
        return [float(r["perf/step_s"]) for r in csv.DictReader(f) if r.get("perf/step_s")]


def train_depth(depth: int, extra: tuple[str, ...] = (), tag: str = ""):
    def run(check) -> dict:
        if "tokenizer_dir" not in check.shared:
            raise RuntimeError("no tokenizer: the tokenizer section did not finish")
        s = check.sizes
        run_dir = check.work / f"base_d{depth}{tag}"
        overrides = ["stage=base", f"hardware={s.profile}", *_data_overrides(check),
                     f"tokenizer_dir={check.shared['tokenizer_dir']}", f"run_name=gpu_check_d{depth}{tag}",
                     f"model.depth={depth}", f"model.sequence_len={s.seq_len}", "hardware.device_batch_size=auto",
                     "hardware.peak_flops=auto", f"stage.total_batch_tokens={s.batch_rows * s.seq_len}",
                     f"stage.num_iterations={s.steps}", "stage.eval_every=0",
                     f"stage.eval_tokens={s.batch_rows * s.seq_len}", f"stage.save_every={s.steps}",
                     "stage.sample_every=0", "logger=csv", *extra]
        t = time.monotonic()
        proc = _train_py(check, overrides, run_dir, f"d{depth}{tag}")
        wall = time.monotonic() - t
        summary = json.loads((run_dir / "summary.json").read_text())
        steps = _step_seconds(run_dir / "logs" / "metrics.csv")
        plan = summary.get("plan", {})
        mem = summary.get("memory", {})
        out = {"depth": depth, "wall_s": round(wall, 1), "fit_s": summary.get("fit_seconds"),
               "tok_per_s": summary.get("tok_per_s"), "mfu": summary.get("mfu"),
               "peak_flops": summary.get("peak_flops"), "peak_flops_source": summary.get("peak_flops_source"),
               "device_batch": plan.get("device_batch_size"), "grad_accum": plan.get("grad_accum"),
               "val_bpb": summary.get("val_bpb"), "steps": summary.get("steps"), "memory": mem,
               "attention": summary.get("attention"),
               "recompiles": sum("Recompiling function" in x for x in proc.stderr.splitlines()),
               "memory_fit": [x for x in proc.stdout.splitlines() if x.startswith(("memory fit", "  probe", "  estimate",
                                                                                   "  budget"))]}
        if len(steps) >= 2:
            steady = statistics.median(steps[1:])
            out.update(first_step_s=steps[0], steady_step_s=steady, compile_s=max(0.0, steps[0] - steady))
        peak_mem = mem.get("peak_reserved_bytes")
        if peak_mem and mem.get("estimate_bytes"):
            out["measured_over_estimate"] = peak_mem / mem["estimate_bytes"]
        if not tag:
            check.shared.setdefault("model_dir", summary.get("model_dir"))
            check.shared.setdefault("train", {})[depth] = out
        return out

    return run


# -----------------------------------------------------------------------------------------------------------
# kernels: attention backends, chunked loss, fp8


def attention(check) -> dict:
    mod = _bench_module("attention")
    a = check.sizes.attention
    return _jsonable(mod.compare_attention(a["depth"], a["seq_len"], a["batch"], check.sizes.device,
                                           _compute_dtype(check), a["steps"]))


def loss(check) -> dict:
    mod = _bench_module("logits_memory")
    a = check.sizes.loss
    return _jsonable(mod.compare_loss(a["depth"], a["seq_len"], a["batch"], check.sizes.device, _compute_dtype(check),
                                      a["chunk"], a["steps"], **({"vocab_size": 4096} if check.dry else {})))


def fp8(check) -> dict:
    """fp8 against bf16 for the layers fp8 converts (forward + backward of one Linear at d12's MLP shapes), then,
    on a GPU with fp8 and time left, d12 training with hardware.fp8=true against the bf16 run above."""
    from nanochat.fp8 import fp8_unsupported_reason

    device = torch.device(check.sizes.device)
    reason = fp8_unsupported_reason("gpu") if device.type == "cuda" else "no CUDA device (dry pass: CPU kernels)"
    out = {"supported": reason is None, "reason": reason}
    if device.type == "cuda" and reason is not None:
        return out
    f = check.sizes.fp8
    out["matmuls"] = _bench_module("fp8").matmul_rows(f["tokens"], f["d"], reps=5, device=device)
    base = check.shared.get("train", {}).get(check.sizes.depths[0])
    if reason is None and f["train_steps"] and base and check.left() > 100:
        run = train_depth(check.sizes.depths[0], ("hardware.fp8=true",), tag="_fp8")(check)
        out["train_fp8"] = run
        if base.get("tok_per_s") and run.get("tok_per_s"):
            out["train_speedup"] = run["tok_per_s"] / base["tok_per_s"]
            out["val_bpb_diff"] = (run.get("val_bpb") or float("nan")) - (base.get("val_bpb") or float("nan"))
    return out


# -----------------------------------------------------------------------------------------------------------
# evaluation after training steps, engine, server


def evaluation(check) -> dict:
    """Training steps of a compiled model, then the validation forward (eval mode, no grad, per-token loss) with the
    optimizer state still allocated: how many new graphs the evaluation compiles, and its memory on top."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from nanochat import scaling
    from nanochat.gpt import GPT
    from nanochat.optim import build_optimizer

    e, device = check.sizes.evaluation, torch.device(check.sizes.device)
    cuda = device.type == "cuda"
    plan = scaling.plan(e["depth"], vocab_size=32768 if cuda else 512, seq_len=e["seq_len"],
                        device_batch_size=e["batch"], num_iterations=e["steps"],
                        total_batch_tokens=e["batch"] * e["seq_len"])
    torch._dynamo.reset()
    model = GPT.build(plan.model, device=device)
    opt = build_optimizer(model, **plan.optimizer_kwargs())
    model.compile(dynamic=False, backend=e["backend"])
    dtype = torch.bfloat16 if cuda else None
    x = torch.randint(0, plan.model.vocab_size, (e["batch"], e["seq_len"]), device=device)

    def graphs() -> int:
        return int(counters["stats"]["unique_graphs"])

    def train_step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(x, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def reserved():
        return torch.cuda.max_memory_reserved(device) if cuda else None

    t = time.perf_counter()
    train_step()
    synchronize(device)
    first = time.perf_counter() - t
    for _ in range(max(0, e["steps"] - 1)):
        train_step()
    synchronize(device)
    train_graphs, train_peak = graphs(), reserved()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model.eval()
    t = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        nats = model(x, x, loss_reduction="none")
        synchronize(device)
        first_eval = time.perf_counter() - t
        eval_graphs = graphs() - train_graphs
        model(x, x, loss_reduction="none")
    synchronize(device)
    eval_peak, stable = reserved(), graphs() - train_graphs == eval_graphs
    model.train()
    before = graphs()
    train_step()
    synchronize(device)
    out = {"depth": e["depth"], "backend": e["backend"], "first_train_step_s": first, "train_graphs": train_graphs,
           "eval_new_graphs": eval_graphs, "eval_recompiled": eval_graphs > 0, "eval_graphs_stable": stable,
           "train_after_eval_new_graphs": graphs() - before, "first_eval_s": first_eval,
           "eval_loss_finite": bool(torch.isfinite(nats).all()),
           "train_peak_reserved_bytes": train_peak, "eval_peak_reserved_bytes": eval_peak}
    torch._dynamo.reset()  # the compiled graphs go with the model (memory is released after the section)
    return out


def engine(check) -> dict:
    """Prefill and decode tok/s of nanochat.engine.Engine on a fresh model (weights do not change the speed)."""
    from nanochat import scaling
    from nanochat.engine import Engine
    from nanochat.gpt import GPT

    e, device = check.sizes.engine, torch.device(check.sizes.device)
    cfg = scaling.model_config(e["depth"], vocab_size=32768 if device.type == "cuda" else 512,
                               seq_len=e["prompt"] + e["decode"])
    torch.manual_seed(0)
    model = GPT.build(cfg, device=device).eval()
    eng = Engine(model)
    gen = torch.Generator().manual_seed(0)

    def timed(batch: int, max_tokens: int) -> tuple[float, float]:
        """(seconds to the first token: the prompt's forward + one sample, seconds of the remaining steps)."""
        prompts = torch.randint(0, cfg.vocab_size, (batch, e["prompt"]), generator=gen).tolist()
        synchronize(device)
        t = time.perf_counter()
        first = None
        for _ in eng.generate(prompts, max_tokens=max_tokens, temperature=0.0):
            first = first or time.perf_counter()  # a yield follows a .tolist(), so the device has finished
        synchronize(device)
        return first - t, time.perf_counter() - first

    timed(1, 2)  # warm-up: kernels, cache allocation
    rows = {}
    for b in e["batches"]:
        prefill, decode_s = timed(b, e["decode"])
        rows[str(b)] = {"prefill_tok_per_s": b * e["prompt"] / prefill,
                        "decode_tok_per_s": b * (e["decode"] - 1) / max(decode_s, 1e-9), "prefill_s": prefill,
                        "decode_s": decode_s}
    return {"depth": e["depth"], "prompt_tokens": e["prompt"], "decode_tokens": e["decode"], "weights": "fp32",
            "batches": rows}


def serve(check) -> dict:
    """A few requests through the official openai client against our server (the model the first training run
    exported; a fresh d2 model folder when that run did not finish)."""
    import openai

    from nanochat.server import BackgroundServer, build_server

    model_dir = check.shared.get("model_dir")
    source = "trained"
    if not model_dir or not Path(model_dir).exists():
        from nanochat import scaling
        from nanochat.checkpoint import export_model
        from nanochat.gpt import GPT
        from nanochat.tokenizer import Tokenizer

        tok = Tokenizer.byte_level()
        model = GPT.build(scaling.model_config(2, vocab_size=tok.vocab_size, seq_len=256), device="cpu")
        model_dir, source = export_model(model, tok, check.work / "serve_model"), "fresh d2"
    app, info = build_server(ckpt=str(model_dir), device=check.sizes.device, replicas=1, ui=False)
    n = check.sizes.serve["max_tokens"]
    msgs = [{"role": "user", "content": "Say hello in three words."}]
    out = {"model": info.id, "model_source": source, "openai": openai.__version__}
    with BackgroundServer(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120)
        out["models"] = [m.id for m in client.models.list().data]
        t = time.perf_counter()
        r = client.chat.completions.create(model=info.id, messages=msgs, max_tokens=n, temperature=0)
        out["plain"] = {"s": time.perf_counter() - t, "finish_reason": r.choices[0].finish_reason,
                        "completion_tokens": r.usage.completion_tokens if r.usage else None}
        t = time.perf_counter()
        first, pieces = None, []
        for chunk in client.chat.completions.create(model=info.id, messages=msgs, max_tokens=n, stream=True,
                                                    temperature=0.8, seed=1):
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - t
                pieces.append(chunk.choices[0].delta.content)
        out["stream"] = {"s": time.perf_counter() - t, "first_text_s": first, "chunks": len(pieces)}
        r = client.chat.completions.create(model=info.id, messages=msgs, max_tokens=n, n=2, seed=3, temperature=1.0)
        out["n2_choices"] = len(r.choices)
        try:
            client.chat.completions.create(model=info.id, messages=msgs, max_tokens=n, temperature=-1)
            out["bad_request"] = "accepted (expected a 400)"
        except openai.BadRequestError as e:
            out["bad_request"] = f"400 as expected: {str(e)[:120]}"
    if out["n2_choices"] != 2 or not out["bad_request"].startswith("400"):
        raise RuntimeError(f"server answered unexpectedly: n=2 gave {out['n2_choices']} choices; {out['bad_request']}")
    return out


def SECTIONS(sizes) -> list[tuple[str, object]]:
    """The order matters only for the budget: the cheap and essential first, the largest depth last."""
    first, *rest = sizes.depths
    order = [("env", env), ("peak", peak), ("tokenizer", tokenizer), (f"train_d{first}", train_depth(first))]
    order += [(f"train_d{d}", train_depth(d)) for d in rest[:1]]
    order += [("engine", engine), ("serve", serve), ("attention", attention), ("loss", loss),
              ("evaluation", evaluation), ("fp8", fp8)]
    order += [(f"train_d{d}", train_depth(d)) for d in rest[1:]]
    return order


# -----------------------------------------------------------------------------------------------------------
# the markdown report


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _note(name: str, r: dict) -> str:
    """The headline figure of a finished section, for the summary table."""
    get = lambda k: _fmt(r.get(k)) if r.get(k) is not None else "n/a"  # noqa: E731
    if name.startswith("train_d"):
        return (f"{get('tok_per_s')} tok/s, MFU {get('mfu')}, compile ~{get('compile_s')} s, batch "
                f"{r.get('device_batch')} x {r.get('grad_accum')}, peak memory / estimate {get('measured_over_estimate')}")
    if name == "peak":
        return f"bf16 {r['bf16_flops']:.3g} FLOP/s" + (f" ({r['measured_over_nominal']:.2f} x nominal)"
                                                      if "measured_over_nominal" in r else "")
    if name == "engine":
        return "decode tok/s " + ", ".join(f"b{b} {_fmt(v['decode_tok_per_s'])}" for b, v in r["batches"].items())
    if name == "serve":
        return f"first streamed text after {_fmt((r.get('stream') or {}).get('first_text_s'))} s"
    if name == "env":
        return f"{r.get('device')}, torch {r.get('torch')}, CUDA {r.get('cuda')}"
    if name == "evaluation":
        return f"evaluation compiled {r['eval_new_graphs']} new graph(s)"
    if name == "attention":
        return f"sdpa / flex time {get('speedup')} ({r.get('mode')})"
    if name == "loss":
        return f"chunked / plain: memory {get('memory_ratio')}, speed {get('speed_ratio')}"
    if name == "fp8":
        speed = [_fmt(m["speedup"]) for m in r.get("matmuls", [])]
        return (f"matmul speed-up {', '.join(speed)}" if speed else r.get("reason") or "") + \
            (f"; training {get('train_speedup')}" if "train_speedup" in r else "")
    return ""


def render_markdown(record: dict) -> str:
    sections = record["sections"]
    env_ = sections.get("env", {})
    lines = ["# nanochat GPU check", "",
             f"{'Dry pass on CPU (toy sizes: proves the script, measures nothing)' if record['dry_run'] else env_.get('device', '?')}"
             f"; {record['elapsed_s']:.0f} s of a {record['budget_s']:.0f} s budget.", "",
             "| section | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, r in sections.items():
        note = r.get("error", "") if r.get("status") != "ok" else _note(name, r)
        lines.append(f"| {name} | {r.get('status')} | {r.get('seconds', '')} | {note.replace('|', '/')} |")
    lines += ["", "## Details", ""]
    for name, r in sections.items():
        body = {k: v for k, v in r.items() if k not in ("status", "seconds")}
        lines += [f"### {name}", "", "```json", json.dumps(body, indent=1, default=str), "```", ""]
    return "\n".join(lines)
