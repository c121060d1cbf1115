"""nanochat training entry point (Hydra).

    python train.py stage=tokenizer              # train the BPE tokenizer on the configured data
    python train.py                              # base pretraining on the embedded sample, hardware=auto
    python train.py stage=base hardware=dgx_spark model.depth=16 data=fineweb_edu
    python train.py -m model.depth=4,6 hardware=cpu
    python train.py ckpt_path=last               # resume the run folder's last checkpoint
"""
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from nanochat.stages.cli import fail, prepare_argv  # noqa: E402  (cheap imports only before Hydra parses argv)

prepare_argv(sys.argv, config_name="train")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from nanochat.common import NanochatError

    try:
        from nanochat.stages import run_stage
        from nanochat.stages.schema import validate_config

        validate_config(cfg)
        return run_stage(cfg)
    except NanochatError as e:
        fail(str(e))


if __name__ == "__main__":
    main()
