"""nanochat evaluation entry point (Hydra).

    python evaluate.py ckpt=latest:base                 # CORE + bits per byte of the newest base model
    python evaluate.py ckpt=latest:sft max_per_task=100 # ARC, MMLU, GSM8K, HumanEval, SpellingBee, ChatCORE
    python evaluate.py ckpt=outputs/sft/d4 evals=[gsm8k] tasks.gsm8k.local_path=/data/gsm8k
    python evaluate.py report                           # (re)build outputs/report.md from every run folder
    python evaluate.py --help                           # every key with its type, default and doc
"""
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

if len(sys.argv) > 1 and sys.argv[1] == "report":  # `python evaluate.py report ...` = python -m nanochat.report ...
    from nanochat.report import main as report_main

    sys.exit(report_main(sys.argv[2:]))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from nanochat.config.app import run  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig):
    from nanochat.common import NanochatError
    from nanochat.config.command import fail
    from nanochat.layout import outputs_root, set_outputs_root

    try:
        from nanochat.config.schema import EvaluateConfig
        from nanochat.config.typed import check_ranges

        check_ranges(cfg, EvaluateConfig)
        set_outputs_root(cfg.paths.outputs)
        from nanochat.evaluation import run_evaluations, run_folder_of, write_results

        device = cfg.device or ("cuda" if cfg.hardware.accelerator == "gpu" else "cpu")
        evals = list(cfg.evals) if cfg.evals is not None else None
        record = run_evaluations(
            cfg.ckpt, evals=evals, max_per_task=cfg.max_per_task, batch_size=cfg.batch_size, device=device,
            max_new_tokens=cfg.max_new_tokens,
            task_options=OmegaConf.to_container(cfg.tasks, resolve=True),
            core_options=OmegaConf.to_container(cfg.core, resolve=True),
            bpb_options=OmegaConf.to_container(cfg.bpb, resolve=True))
        json_path, md_path = write_results(record, run_folder_of(record["model"]))
        print(open(md_path).read())
        print(f"results: {json_path}")
        if cfg.report:
            from nanochat.report import build_report

            print(f"report: {build_report(outputs_root())}")
        return record
    except NanochatError as e:
        fail(str(e))


if __name__ == "__main__":
    run(main, "evaluate")
