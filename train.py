"""nanochat training entry point (Hydra).

    python train.py stage=tokenizer              # train the BPE tokenizer on the configured data
    python train.py                              # base pretraining on the embedded sample, hardware=auto
    python train.py stage=base hardware=dgx_spark model.depth=16 data=fineweb_edu
    python train.py -m model.depth=4,6 hardware=cpu
    python train.py ckpt_path=last               # resume the run folder's last checkpoint
    python train.py --help                       # every key with its type, default and doc
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from nanochat.config.app import run  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from nanochat.common import NanochatError
    from nanochat.config.command import fail

    try:
        from nanochat.stages import run_stage

        return run_stage(cfg)
    except NanochatError as e:
        fail(str(e))


if __name__ == "__main__":
    run(main, "train")
