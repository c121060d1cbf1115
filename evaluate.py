"""nanochat evaluation entry point (Hydra).

    python evaluate.py ckpt=latest:base                 # CORE + bits per byte of the newest base model
    python evaluate.py ckpt=latest:sft max_per_task=100 # ARC, MMLU, GSM8K, HumanEval, SpellingBee, ChatCORE
    python evaluate.py ckpt=outputs/sft/d4 evals=[gsm8k] tasks.gsm8k.local_path=/data/gsm8k
    python evaluate.py report                           # (re)build outputs/report.md from every run folder
"""
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from nanochat.stages.cli import fail, prepare_argv  # noqa: E402

if len(sys.argv) > 1 and sys.argv[1] == "report":
    from nanochat.report import main as report_main

    sys.exit(report_main(sys.argv[2:]))

prepare_argv(sys.argv, config_name="evaluate")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig):
    from nanochat.common import NanochatError

    try:
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
            from nanochat.checkpoint import outputs_dir
            from nanochat.report import build_report

            print(f"report: {build_report(outputs_dir())}")
        return record
    except NanochatError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
