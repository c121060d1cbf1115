"""The structured configs of train.py, evaluate.py and serve.py: every key, once, with its type, default and doc.

Hydra composes YAML files on top of these dataclasses (registered in the ConfigStore by `register()`): the files
under conf/ only choose and override values, so a wrong type or an unknown key fails while composing, naming the
key. The recipe settings (learning rates, schedule, horizon) are the fields of `nanochat.recipe`, inherited here
into the stages that use them, so `stage.matrix_lr` *is* `OptimSettings.matrix_lr`.
"""
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Dict, List, Optional, get_type_hints

from omegaconf import MISSING

from nanochat.common import knob
from nanochat.hardware import PRECISIONS, HardwareConfig  # noqa: F401  (the hardware group)
from nanochat.recipe import BatchSettings, HorizonSettings, OptimSettings, ScheduleSettings



# -- the machine ------------------------------------------------------------------------------------------------
# -- the model ---------------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """Depth is the one dial: width, heads, lr scaling and horizon follow from it. Switches left null = the preset's."""

    preset: str = knob("v0", "reference recipe (v0 = first release, jan2026 = commit 348fbb3, jul2026 = commit "
                             "92d63d4); docs/presets.md")
    depth: int = knob(20, "transformer layers (d_model = aspect_ratio x depth)", low=1)
    aspect_ratio: int = knob(64, "d_model per layer (rounded up to a multiple of head_dim)", low=1)
    head_dim: int = knob(128, "attention head width", low=2)
    sequence_len: int = knob(2048, "context length in tokens", low=2)
    n_kv_head: Optional[int] = knob(None, "key/value heads (null = n_head, no GQA)", low=1)
    # switches (GPTConfig fields; null = the preset's)
    rope_base: Optional[float] = knob(None, "RoPE base (v0 10000)", low=1)
    logit_softcap: Optional[float] = knob(None, "logits soft-capped at this (v0 15; 0 = off)", low=0)
    window_pattern: Optional[str] = knob(None, "sliding windows per layer, e.g. SSSL (S short, L full)")
    short_window_frac: Optional[float] = knob(None, "short window as a fraction of the context", low=1e-9, high=1)
    value_embeds: Optional[bool] = knob(None, "value embeddings on alternate layers")
    resid_scalars: Optional[bool] = knob(None, "per-layer residual scalars")
    x0_init: Optional[float] = knob(None, "initial x0 residual scalar")
    short_window_multiple: Optional[int] = knob(None, "short window rounded up to a multiple of this (jul2026 128)",
                                                low=1)
    ve_gate_scale: Optional[float] = knob(None, "value-embedding gate = this x sigmoid (jan2026 2, jul2026 3)",
                                          low=1e-9)
    qk_scale: Optional[float] = knob(None, "queries and keys multiplied by this after QK-norm (jul2026 1.2)", low=1e-9)
    smear: Optional[bool] = knob(None, "mix a gated share of the previous token's embedding into each token")
    backout: Optional[bool] = knob(None, "subtract the scaled mid-depth residual before the final norm")


MODEL_SHAPE_KEYS = ("preset", "depth", "aspect_ratio", "head_dim", "sequence_len", "n_kv_head")  # plan() arguments


def model_switches(model) -> dict:
    """The GPTConfig switches a model config sets (every ModelConfig field that is not a shape argument)."""
    return {f.name: model[f.name] for f in fields(ModelConfig)
            if f.name not in MODEL_SHAPE_KEYS and model[f.name] is not None}


# -- data ----------------------------------------------------------------------------------------------------------
@dataclass
class TokenizerDataConfig:
    vocab_size: int = knob(32768, "tokenizer vocabulary, including the 9 special tokens", low=265)
    max_chars: int = knob(2_000_000_000, "characters of training text the tokenizer reads", low=1)


@dataclass
class LoaderConfig:
    buffer_docs: int = knob(1000, "documents buffered for packing", low=1)
    tokenizer_threads: int = knob(4, "threads that tokenize documents", low=1)
    packing: Optional[str] = knob(None, "row packing (null = the preset's: jan2026 bestfit, v0 concat)",
                                  choices=("bestfit", "cropfit", "concat"))


@dataclass
class DataConfig:
    """data=<source>: where documents come from (conf/data/)."""

    name: str = knob(MISSING, "source name")
    tokenizer: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)


@dataclass
class SampleData(DataConfig):
    pass


@dataclass
class HubData(DataConfig):
    """A parquet shard set on the hub (fineweb_edu, climbmix: `nanochat.hub_shards`); the last shard is validation."""

    num_shards: int = knob(120, "training shards to download before training (FineWeb-EDU: d16 ~120, d20 ~240; "
                                "ClimbMix: ~150 for GPT-2 capability)", low=1)
    base_url: Optional[str] = knob(None, "where the shards are downloaded from (null = the data set's hub URL)")
    dir: Optional[str] = knob(None, "shard folder (null = <NANOCHAT_BASE_DIR>/base_data, or base_data_climbmix)")
    download: bool = knob(True, "fetch missing shards (verified, resumable) before the stage starts")
    download_workers: int = knob(4, "parallel downloads", low=1)


@dataclass
class FinewebData(HubData):
    pass


@dataclass
class ClimbmixData(HubData):
    pass


@dataclass
class LocalData(DataConfig):
    path: str = knob(MISSING, "a folder of parquet (text column), jsonl (text field) or .txt files")
    val_fraction: float = knob(0.05, "last fraction of files (or documents) held out", low=0, high=1)
    val_file: Optional[str] = knob(None, "a file inside path used as validation")


@dataclass
class LoggerConfig:
    name: str = knob("csv", "metrics logger", choices=("csv", "none", "wandb"))
    project: Optional[str] = knob(None, "W&B project")
    offline: bool = knob(False, "W&B offline mode (sync later with `wandb sync`)")


@dataclass
class PathsConfig:
    outputs: str = knob("${oc.env:NANOCHAT_OUTPUTS,outputs}", "root of every run folder (outputs/<stage>/<run>)")


# -- stages ----------------------------------------------------------------------------------------------------------
@dataclass
class StageCommon:
    name: str = knob(MISSING, "stage name")
    run_name: str = knob("d${model.depth}", "run folder: <paths.outputs>/<stage>/<run_name>")


@dataclass
class TrainCommon(StageCommon, OptimSettings, ScheduleSettings):
    init_from: Optional[str] = knob(None, "model folder / .ckpt the weights start from (null = the stage's default)")
    num_iterations: int = knob(-1, "optimizer steps (<= 0 = derived from the horizon / epochs)")
    save_every: int = knob(250, "checkpoint every this many steps (and at the end)", low=1)


@dataclass
class Cadence:
    eval_every: int = knob(250, "validate every this many steps (<= 0: only at the end)")
    sample_every: int = knob(2000, "print sample generations every this many steps (<= 0: never)")
    sample_prompts: List[str] = knob(["The capital of France is"], "prompts of the sample generations")
    sample_tokens: int = knob(16, "tokens per sample generation", low=0)


@dataclass
class TaskOptions:
    """Local copies of the hub data sets for offline use (null = keep the mixture's / download)."""

    smoltalk: Dict[str, Any] = knob({"local_path": None}, "SmolTalk options")
    mmlu: Dict[str, Any] = knob({"local_path": None}, "MMLU options")
    gsm8k: Dict[str, Any] = knob({"local_path": None}, "GSM8K options")
    arc_easy: Dict[str, Any] = knob({"local_path": None}, "ARC-Easy options")
    arc_challenge: Dict[str, Any] = knob({"local_path": None}, "ARC-Challenge options")
    identity: Dict[str, Any] = knob({"identity_path": None}, "identity conversations options")


@dataclass
class TokenizerStage(StageCommon):
    run_name: str = knob("vocab${data.tokenizer.vocab_size}", "run folder name")
    doc_cap: int = knob(10000, "each document is truncated to this many characters", low=1)
    pattern: str = knob("v0", "split regex: v0 / late (digits 1-2), gpt4 (digits 1-3), or a regex")
    eval_docs: int = knob(200, "held-out documents for the compression report", low=1)


@dataclass
class BaseStage(Cadence, TrainCommon, HorizonSettings, BatchSettings):
    target_flops: Optional[float] = knob(None, "total training FLOPs (used when num_iterations <= 0)", low=0)
    eval_tokens: int = knob(10_485_760, "validation tokens per evaluation", low=1)


@dataclass
class MidStage(Cadence, TrainCommon, BatchSettings):
    task_options: TaskOptions = field(default_factory=TaskOptions)
    mask_prompts: bool = knob(False, "learn only what the assistant writes (the reference trains on every token)")
    num_epochs: float = knob(1.0, "passes over the mixture (when num_iterations <= 0)", low=1e-9)
    eval_tokens: int = knob(10_485_760, "held-out conversation tokens per evaluation", low=1)


@dataclass
class SftStage(Cadence, TrainCommon, BatchSettings):
    """A mixture with a `recipe` (sft2026) sets these keys too; a key the run sets itself wins over it."""

    task_options: TaskOptions = field(default_factory=TaskOptions)
    num_epochs: float = knob(1.0, "passes over the mixture (when num_iterations <= 0)", low=1e-9)
    examples_per_step: int = knob(32, "conversations per optimizer step, all devices (one-per-row mixtures)", low=1)
    device_batch_size: int = knob(4, "rows per micro-batch (a packed mixture like sft2026 takes the input "
                                     "model's run's unless set)", low=1)
    eval_batches: int = knob(8, "held-out micro-batches per evaluation", low=1)


@dataclass
class RLStage(TrainCommon):
    gsm8k_path: Optional[str] = knob(None, "local GSM8K copy (null = download)")
    num_epochs: float = knob(1.0, "passes over GSM8K train (when num_iterations <= 0)", low=1e-9)
    examples_per_step: int = knob(16, "questions per step", low=1)
    num_samples: int = knob(16, "samples per question (one group)", low=1)
    max_new_tokens: int = knob(256, "tokens per sample (also capped by the context)", low=1)
    temperature: float = knob(1.0, "sampling temperature", low=0, high=2)
    top_k: int = knob(50, "top-k sampling (0 = off)", low=0, high=200)
    device_batch_size: int = knob(8, "rows per training forward/backward", low=1)
    rollout_batch: int = knob(64, "rows per generation call", low=1)
    eval_every: Optional[int] = knob(None, "pass@k every this many steps (null = 60 on a GPU, 20 on a CPU)")
    eval_examples: Optional[int] = knob(None, "test questions per evaluation (null = 400 GPU, 16 CPU)", low=1)
    eval_samples: int = knob(8, "samples per question for pass@k", low=1)
    eval_temperature: float = knob(1.0, "evaluation temperature", low=0, high=2)


@dataclass
class EvalOptions:
    evals: Optional[List[str]] = knob(None, "evaluations (null = what fits each stage)")
    max_per_task: Optional[int] = knob(50, "examples per task", low=1)
    max_new_tokens: int = knob(128, "generation budget per answer", low=1)


@dataclass
class PipelineStage(StageCommon):
    rl: bool = knob(False, "run the optional RL stage (GSM8K; needs the data)")
    evaluate: bool = knob(True, "evaluate every model and write the report card")
    eval: EvalOptions = field(default_factory=EvalOptions)


STAGE_SCHEMAS = {"tokenizer": TokenizerStage, "base": BaseStage, "mid": MidStage, "sft": SftStage,
                 "rl": RLStage, "all": PipelineStage}


def _options_of(cls, extra: dict):
    """A dataclass with every field of `cls` (and `extra`) made optional, default null: a stage's pipeline options."""
    hints = get_type_hints(cls)
    specs = [(f.name, Optional[hints[f.name]], field(default=None, metadata=f.metadata))
             for f in fields(cls) if f.name not in ("name", "run_name")]
    specs += [(k, Optional[tp], field(default=None, metadata={"doc": doc})) for k, (tp, doc) in extra.items()]
    return make_dataclass(f"{cls.__name__}Options", specs)


# top-level keys a stage of the pipeline may set for itself (besides its stage keys)
PIPELINE_TOP_KEYS = {"mixture": (str, "conversation mixture of this stage")}
_STAGE_OPTIONS = {name: _options_of(STAGE_SCHEMAS[name], PIPELINE_TOP_KEYS if name in ("mid", "sft") else {})
                  for name in ("tokenizer", "base", "mid", "sft", "rl")}
# `pipeline.stages` lives beside the per-stage options (not in `stage`), so an experiment can name its chain and
# still compose for the single stages the pipeline runs
PipelineOptions = make_dataclass("PipelineOptions", [
    ("stages", List[str], knob(["tokenizer", "base", "mid", "sft", "rl"], "the stages to run, in order")),
    *[(name, cls, field(default_factory=cls)) for name, cls in _STAGE_OPTIONS.items()]])


# -- the entry points ----------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """python train.py [stage=...] [hardware=...] [key=value ...]"""

    seed: int = knob(42, "random seed", low=0)
    plan_only: bool = knob(False, "print the derived plan (and estimates) and stop; writes nothing")
    time_budget: Optional[str] = knob(None, "stage=all or base: the largest model (and longest horizon) whose whole "
                                            "run fits this wall time, e.g. 10h, 20m, 1h30m (probes this device first)")
    ckpt_path: Optional[str] = knob(None, "null = fresh run; last = resume this run folder; or a .ckpt path")
    tokenizer_dir: Optional[str] = knob(None, "tokenizer folder (null = the latest trained tokenizer)")
    mixture: Optional[str] = knob(None, "conversation mixture of mid/sft: a name in nanochat/mixtures/ or a "
                                        "YAML path (null = offline_mid / offline_sft)")
    run_name: str = knob("${stage.run_name}", "run folder name (default: the stage's)")
    paths: PathsConfig = field(default_factory=PathsConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    stage: Any = MISSING
    pipeline: Any = knob(None, "stage=all only: per-stage options pipeline.<stage>.<key>=value (conf/stage/all.yaml "
                               "puts a typed PipelineOptions node here)")


@dataclass
class CoreOptions:
    bundle_dir: Optional[str] = knob(None, "CORE eval bundle folder (null = <NANOCHAT_BASE_DIR>/eval_bundle)")
    prompts: str = knob("full", "full = whole few-shot prompts, as the reference scores CORE; crop = keep each "
                                "prompt's last <context> tokens", choices=("full", "crop"))


@dataclass
class BpbOptions:
    name: Optional[str] = knob(None, "data source (null = the data the model trained on, else sample)")
    source: Dict[str, Any] = knob({}, "options of that source")
    batch_size: int = knob(8, "rows per batch", low=1)
    steps: int = knob(16, "batches", low=1)


@dataclass
class EvalTasks:
    arc_easy: Dict[str, Any] = knob({"local_path": None}, "ARC-Easy options")
    arc_challenge: Dict[str, Any] = knob({"local_path": None}, "ARC-Challenge options")
    mmlu: Dict[str, Any] = knob({"local_path": None}, "MMLU options")
    gsm8k: Dict[str, Any] = knob({"local_path": None}, "GSM8K options")
    humaneval: Dict[str, Any] = knob({"local_path": None}, "HumanEval options")
    spellingbee: Dict[str, Any] = knob({"words_path": None}, "SpellingBee options")


@dataclass
class EvaluateConfig:
    """python evaluate.py [ckpt=...] [key=value ...]"""

    ckpt: Optional[str] = knob(None, "model folder, .ckpt, latest:base|mid|sft|rl (null = newest of rl/sft/mid/base)")
    evals: Optional[List[str]] = knob(None, "evaluations (null = what fits the stage), e.g. [core] or [gsm8k]")
    max_per_task: Optional[int] = knob(None, "cap examples per task (CORE: more than a task's few-shot count, so "
                                             ">= 11 for the bundle's 10-shot tasks)", low=1)
    batch_size: int = knob(16, "rows per batch", low=1)
    max_new_tokens: int = knob(512, "generation budget per answer", low=1)
    device: Optional[str] = knob(None, "null = cuda with a GPU profile, else cpu")
    report: bool = knob(True, "rebuild the report card afterwards")
    paths: PathsConfig = field(default_factory=PathsConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    core: CoreOptions = field(default_factory=CoreOptions)
    bpb: BpbOptions = field(default_factory=BpbOptions)
    tasks: EvalTasks = field(default_factory=EvalTasks)


@dataclass
class SamplingDefaults:
    temperature: float = knob(0.8, "when a request leaves it out", low=0, high=2)
    top_k: int = knob(50, "when a request leaves it out", low=0, high=200)
    max_tokens: int = knob(512, "when a request leaves it out", low=1)


@dataclass
class ServeLimits:
    max_messages: int = knob(500, "messages per request", low=1)
    max_message_chars: int = knob(8000, "characters per message", low=1)
    max_total_chars: int = knob(32000, "characters per request", low=1)
    max_temperature: float = knob(2.0, "highest temperature", low=0)
    max_top_k: int = knob(200, "highest top-k", low=0)
    max_tokens: int = knob(4096, "highest max_tokens", low=1)
    max_n: int = knob(8, "completions per request", low=1)
    max_stop: int = knob(4, "stop strings per request", low=0)
    max_stop_chars: int = knob(64, "characters per stop string", low=1)
    max_body_bytes: int = knob(1_000_000, "HTTP request body size; larger is refused (413) before it is read",
                               low=1)
    max_logprobs: int = knob(20, "highest top_logprobs", low=0)


@dataclass
class ServeConfig:
    """python serve.py [ckpt=...] [port=8000] [key=value ...]"""

    ckpt: Optional[str] = knob(None, "null = newest trained model; a model folder, a .ckpt or latest:<stage>")
    host: str = knob("127.0.0.1", "0.0.0.0 exposes the server to your network (no authentication)")
    port: int = knob(8000, "TCP port", low=1, high=65535)
    device: str = knob("auto", "auto = cuda when available, else cpu; or cpu, cuda, cuda:1, mps")
    replicas: Any = knob("auto", "model copies (auto = one per visible GPU, 1 on CPU)")
    max_concurrency: Optional[int] = knob(None, "rows decoded at once across replicas (a request takes n rows; "
                                          "null = 32 per replica, or 4 one-request slots with batching=false)",
                                          low=1)
    batching: bool = knob(True, "one decode loop per replica runs every request's rows together; false = "
                                "one request per slot")
    max_queue: int = knob(256, "requests waiting for a slot; beyond that HTTP 503", low=0)
    model_name: Optional[str] = knob(None, "name in /v1/models and the UI (null = nanochat-d<depth>-<stage>-<run>)")
    ui: bool = knob(True, "false = API only")
    log_level: str = knob("info", "uvicorn log level", choices=("critical", "error", "warning", "info", "debug",
                                                                 "trace"))
    paths: PathsConfig = field(default_factory=PathsConfig)
    defaults_sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    limits: ServeLimits = field(default_factory=ServeLimits)


DATA_SCHEMAS = {"sample": SampleData, "fineweb_edu": FinewebData, "climbmix": ClimbmixData, "local": LocalData}
