"""The configuration layer (OmegaConf/Hydra side): one typed definition per setting.

- `typed`: ranges, --help tables and one-line errors read from the dataclass fields.
- `command`: the `key=value` convention of the small commands (dataset, export, report, chat, lm-eval bridge).
- `schema`: the structured configs of train.py / evaluate.py / serve.py, registered in Hydra's ConfigStore.
The plain-PyTorch core never imports this package.
"""
