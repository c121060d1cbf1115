"""A CSV metrics logger whose file survives a resumed run (`ckpt_path=last`).

Lightning's CSVLogger deletes `metrics.csv` when it finds one in its folder, so a resumed run used to lose every
row logged before the crash. `ResumableCSVLogger` keeps the file. The one idea: the first step the new process
logs is where the run continues, so rows of that step and later (written by the interrupted process after its
last checkpoint, and about to be recomputed) are dropped and the new rows follow; every step appears once.

Rows are appended every `flush_logs_every_n_steps` (default: every step) and at every checkpoint, so after a
kill -9 the file holds every step up to the checkpoint that the run resumes from. When a new metric name
appears (e.g. `val/bpb` at the first evaluation) the file is rewritten atomically with the wider header.

One gap remains, from Lightning's order of hooks: the checkpoint of step N is written (ModelCheckpoint in
`on_train_batch_end`) just before the metrics of step N-1 are handed to the logger, so a kill in that instant
loses step N-1's row (the resumed run starts at step N and does not recompute it).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from nanochat.common import NanochatError, atomic_path

METRICS_FILE = "metrics.csv"


def _step_of(row: dict) -> int:
    try:
        return int(float(row["step"]))
    except (KeyError, TypeError, ValueError):
        raise NanochatError(f"metrics row without a numeric step: {row}") from None


def read_metrics_file(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a metrics CSV; a last line cut short by a crash mid-append is ignored."""
    path = Path(path)
    if not path.is_file():
        return [], []
    with open(path, newline="") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # an incomplete last row (process killed while appending)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    if header and "step" not in header:
        raise NanochatError(f"{path} is not a metrics file (no 'step' column)")
    return header, [row for row in reader if row.get("step") not in (None, "")]


def read_metrics(path: str | os.PathLike) -> list[dict[str, float | int]]:
    """The rows of a metrics CSV (a file or the log folder holding `metrics.csv`) as numbers; empty cells left out.

    `step` is an int, every other value a float.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    _, rows = read_metrics_file(path)
    out = []
    for row in rows:
        parsed: dict[str, float | int] = {"step": _step_of(row)}
        parsed.update({k: float(v) for k, v in row.items() if k != "step" and v not in (None, "")})
        out.append(parsed)
    return out


def _csv_text(header: list[str], rows: list[dict], with_header: bool) -> str:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    if with_header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class ResumableWriter(ExperimentWriter):
    """Lightning's experiment writer (metrics + hparams.yaml) that continues an existing metrics file."""

    def __init__(self, log_dir: str) -> None:
        # not super().__init__: that deletes an existing metrics.csv
        self.metrics: list[dict[str, Any]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self.log_dir = str(log_dir)
        self.metrics_file_path = os.path.join(self.log_dir, METRICS_FILE)
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        self._continued = False  # set once the existing file has been trimmed to the first new step

    def _rewrite(self, header: list[str], rows: list[dict]) -> None:
        with atomic_path(self.metrics_file_path) as tmp:
            with open(tmp, "w", newline="") as f:
                f.write(_csv_text(header, rows, with_header=True))

    def _merge_keys(self, header: list[str]) -> bool:
        """Extend the known keys (file header order first, new names sorted after); True when the header grew."""
        new = sorted(set().union(*self.metrics) - set(header)) if self.metrics else []
        merged = list(header) if header else ["step"]
        merged += [k for k in new if k not in merged]
        grew = merged != header
        self.metrics_keys = merged
        return grew

    def save(self) -> None:
        if not self.metrics:
            return
        if not self._continued:
            header, old = read_metrics_file(self.metrics_file_path)
            first = min(_step_of(m) for m in self.metrics)
            kept = [r for r in old if _step_of(r) < first]
            self._merge_keys(header)
            self._rewrite(self.metrics_keys, kept + self.metrics)
            self._continued = True
        elif self._merge_keys(self.metrics_keys):
            _, old = read_metrics_file(self.metrics_file_path)
            self._rewrite(self.metrics_keys, old + self.metrics)
        else:
            with open(self.metrics_file_path, "a", newline="") as f:
                f.write(_csv_text(self.metrics_keys, self.metrics, with_header=False))
        self.metrics = []


class ResumableCSVLogger(CSVLogger):
    """Drop-in for `CSVLogger(save_dir=..., name="logs", version="")` that keeps the metrics of earlier segments
    of a resumed run (see the module docstring). Rows are written every `flush_logs_every_n_steps` logged steps and
    whenever a checkpoint is saved."""

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "logs", version: int | str | None = "",
                 prefix: str = "", flush_logs_every_n_steps: int = 1):
        super().__init__(save_dir=save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableWriter:
        if self._experiment is None:
            Path(self.root_dir).mkdir(parents=True, exist_ok=True)
            self._experiment = ResumableWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # the rows up to a checkpoint must be on disk before a crash can make the run resume from it
        self.save()
