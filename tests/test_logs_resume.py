"""metrics.csv survives a resumed run: ResumableCSVLogger directly, in a real Trainer, and through train.py."""
import csv
import random
import signal
import subprocess
import time

import pytest
import torch

from nanochat.common import NanochatError
from nanochat.lit.loggers import ResumableCSVLogger, read_metrics, read_metrics_file


def log_steps(logger, steps, **extra):
    for s in steps:
        logger.log_metrics({"train/loss": 10.0 - s, **{k: v + s for k, v in extra.items()}}, step=s)


def rows_by_step(folder):
    return [(r["step"], r.get("train/loss")) for r in read_metrics(folder)]


def test_resumed_logger_keeps_earlier_rows_and_drops_the_rerun_segment(tmp_path):
    first = ResumableCSVLogger(tmp_path)
    log_steps(first, range(0, 7))  # the crashed process got to step 6; its checkpoint was at step 4
    assert rows_by_step(tmp_path / "logs") == [(s, 10.0 - s) for s in range(7)]  # on disk at once (kill -9 safe)

    second = ResumableCSVLogger(tmp_path)  # same folder, as train.py builds it on ckpt_path=last
    for s in range(4, 9):
        second.log_metrics({"train/loss": 100.0 + s}, step=s)
    second.finalize("success")
    assert rows_by_step(tmp_path / "logs") == [(s, 10.0 - s) for s in range(4)] + [(s, 100.0 + s) for s in range(4, 9)]


def test_a_fresh_run_in_an_old_folder_starts_a_new_file(tmp_path):
    log_steps(ResumableCSVLogger(tmp_path), range(5))
    log_steps(ResumableCSVLogger(tmp_path), range(2))
    assert [s for s, _ in rows_by_step(tmp_path / "logs")] == [0, 1]


def test_new_metric_names_widen_the_header_for_every_row(tmp_path):
    lg = ResumableCSVLogger(tmp_path)
    log_steps(lg, range(3))
    lg.log_metrics({"val/bpb": 1.5}, step=3)
    log_steps(lg, range(3, 5))
    lg2 = ResumableCSVLogger(tmp_path)  # a resume that brings yet another column
    lg2.log_metrics({"train/loss": 0.5, "perf/mfu": 0.25}, step=5)
    path = tmp_path / "logs" / "metrics.csv"
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    header, body = table[0], table[1:]
    assert header[0] == "step" and set(header) == {"step", "train/loss", "val/bpb", "perf/mfu"}
    assert all(len(row) == len(header) for row in body)
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 3, 4, 5]
    assert rows[3] == {"step": 3, "val/bpb": 1.5} and rows[-1] == {"step": 5, "train/loss": 0.5, "perf/mfu": 0.25}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_a_row_cut_short_by_kill_is_ignored(tmp_path):
    lg = ResumableCSVLogger(tmp_path)
    log_steps(lg, range(3))
    path = tmp_path / "logs" / "metrics.csv"
    with open(path, "a") as f:
        f.write("3,7.0")  # killed in the middle of appending step 3
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    lg2 = ResumableCSVLogger(tmp_path)
    log_steps(lg2, range(3, 5))
    assert rows_by_step(path.parent) == [(s, 10.0 - s) for s in range(5)]


def test_not_a_metrics_file_is_a_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\n1,2\n")
    with pytest.raises(NanochatError, match="not a metrics file"):
        read_metrics_file(tmp_path / "m.csv")
    assert read_metrics_file(tmp_path / "missing.csv") == ([], [])


def test_real_trainer_resume_logs_every_step_once(tmp_path):
    """Lightning fit to step 6 (checkpoint each step), crash, resume from step 4's checkpoint, fit to 9."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.crash = False

        def training_step(self, batch, i):
            loss = (self.w * batch).sum()
            self.log("train/loss", loss)
            if self.crash and self.global_step == 6:
                raise RuntimeError("crash")
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data:
        def __iter__(self):
            while True:
                yield torch.ones(2)

    def trainer():
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="step{step}", auto_insert_metric_name=False,
                               every_n_train_steps=1, save_top_k=-1)
        return L.Trainer(max_steps=9, callbacks=[ckpt], logger=ResumableCSVLogger(tmp_path), log_every_n_steps=1,
                         enable_progress_bar=False, enable_model_summary=False)

    net = Net()
    net.crash = True
    with pytest.raises(RuntimeError, match="crash"):
        trainer().fit(net, train_dataloaders=Data())
    logged = [r["step"] for r in read_metrics(tmp_path / "logs") if "train/loss" in r]
    assert logged == list(range(6))
    trainer().fit(Net(), train_dataloaders=Data(), ckpt_path=str(tmp_path / "ckpt" / "step4.ckpt"))
    logged = [r["step"] for r in read_metrics(tmp_path / "logs") if "train/loss" in r]
    assert logged == list(range(9))


def test_train_py_metrics_cover_every_step_once_after_kill_and_resume(tmp_path):
    """The training stage's csv logger is resumable: after kill -9 + ckpt_path=last, metrics.csv has every step."""
    from omegaconf import OmegaConf

    from nanochat.lit import runner
    from nanochat.tokenizer import Tokenizer
    from tests.helpers import ROOT, env_for, run_train, tiny_train_overrides, train_cmd, write_text_corpus

    cfg = OmegaConf.create({"logger": {"name": "csv"}, "run_name": "x"})
    if not isinstance(runner.make_logger(cfg, tmp_path / "probe"), ResumableCSVLogger):
        pytest.skip("the training stage still builds Lightning's CSVLogger (wire nanochat.lit.loggers.ResumableCSVLogger)")
    steps = 8
    corpus = write_text_corpus(tmp_path / "corpus", n_files=6, words=1500)
    Tokenizer.byte_level().save(tmp_path / "tok")
    args = tiny_train_overrides("run", corpus, tmp_path / "tok", steps, logger="csv")
    run = tmp_path / "outputs" / "run"
    proc = subprocess.Popen(train_cmd(args), cwd=ROOT, env=env_for(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def logged():
        return [r["step"] for r in read_metrics(run / "logs") if "train/loss" in r]

    # kill as soon as step `kill_at`'s row is on disk. (Not as soon as a checkpoint lands: Lightning writes the
    # checkpoint of step N before it logs step N-1, so a kill in between loses that one row - see loggers.py.)
    kill_at, deadline = random.Random().randint(2, steps - 3), time.time() + 240
    while proc.poll() is None and time.time() < deadline and len(logged()) <= kill_at:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists(), "the run finished before it was killed"
    before = logged()
    assert before == list(range(len(before))) and len(before) > kill_at
    resumed = run_train([*args, "ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = logged()
    assert after == list(range(steps)), f"killed after step {kill_at}: logged steps {after}"
