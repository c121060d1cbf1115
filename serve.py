"""nanochat chat server entry point (Hydra): web UI + OpenAI-compatible API on one port.

    python serve.py                                  # newest trained model, http://127.0.0.1:8000/
    python serve.py ckpt=latest:sft port=8080
    python serve.py ckpt=outputs/sft/d20/model replicas=8 max_concurrency=16
    python serve.py ui=false                         # API only
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from nanochat.config.app import run  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig):
    from nanochat.common import NanochatError
    from nanochat.config.command import fail
    from nanochat.config.schema import ServeConfig
    from nanochat.config.typed import check_ranges
    from nanochat.layout import set_outputs_root

    try:
        check_ranges(cfg, ServeConfig)  # port 99999 -> one line, before anything starts
        set_outputs_root(cfg.paths.outputs)
        from nanochat.checkpoint import resolve_model_path

        path = resolve_model_path(cfg.ckpt)  # fail fast (one line) before the web stack is imported
        from nanochat.server import serve

        opts = OmegaConf.to_container(cfg, resolve=True)
        serve(host=opts["host"], port=opts["port"], log_level=opts["log_level"], ckpt=str(path),
              device=opts["device"], replicas=opts["replicas"], max_concurrency=opts["max_concurrency"],
              max_queue=opts["max_queue"], limits=opts["limits"], defaults=opts["defaults_sampling"],
              ui=opts["ui"], model_name=opts["model_name"], batching=opts["batching"])
    except NanochatError as e:
        fail(str(e))


if __name__ == "__main__":
    run(main, "serve")
