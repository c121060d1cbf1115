"""data=climbmix: the hub layout (validation = the last of 6,543 shards, always fetched), the shared verified
resumable download with its disk estimate, the tokenizer's record of its training data, and the one-line warning
when a model trains on other data.

A local HTTP server on 127.0.0.1 serves tiny parquet shards at the hub's own paths.
"""
from __future__ import annotations

import pickle

import pytest
from hydra.core.global_hydra import GlobalHydra

from nanochat import hub_shards
from nanochat.common import NanochatError
from nanochat.dataset import CLIMBMIX, FINEWEB_EDU, download_shards, get_source, main, shard_name, verify_shard
from nanochat.provenance import data_identity, data_mismatch, describe, warn_if_other_data
from nanochat.tokenizer import Tokenizer
from tests.test_download import Server, make_shard

HUB_PATH = "/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
VAL = shard_name(6542)
FAST = dict(retries=2, backoff=0.001, timeout=5.0)


@pytest.fixture
def hub():
    s = Server(prefix=HUB_PATH)
    for i in (0, 1, 2, 6542):
        s.files[shard_name(i)] = make_shard(i)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def names(folder):
    return sorted(p.name for p in folder.glob("*.parquet"))


def test_spec_matches_the_hub(tmp_path, monkeypatch):
    assert CLIMBMIX.repo == "karpathy/climbmix-400b-shuffle" and CLIMBMIX.total_shards == 6543
    assert CLIMBMIX.base_url == "https://huggingface.co" + HUB_PATH
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    assert CLIMBMIX.folder() == tmp_path / "base_data_climbmix" and FINEWEB_EDU.folder() == tmp_path / "base_data"


def test_n_training_shards_plus_the_last_as_validation(hub, tmp_path):
    src = get_source("climbmix", dir=str(tmp_path), num_shards=2, download=True, base_url=hub.url, progress=False,
                     **FAST)
    assert names(tmp_path) == [shard_name(0), shard_name(1), VAL]
    assert sorted(hub.paths) == sorted(f"{HUB_PATH}/{n}" for n in names(tmp_path))  # the hub's own paths
    assert src.name == "climbmix" and [p.name for p in src.files("val")] == [VAL]
    assert src.num_documents("train") == 600 and src.num_documents("val") == 300
    # n=0 still fetches the validation shard; what is there is not fetched again
    before = len(hub.paths)
    download_shards(0, data="climbmix", base_url=hub.url, directory=tmp_path / "v", progress=False, **FAST)
    assert names(tmp_path / "v") == [VAL] and len(hub.paths) == before + 1
    download_shards(2, data="climbmix", base_url=hub.url, directory=tmp_path, progress=False, **FAST)
    assert len(hub.paths) == before + 1


def test_resumes_a_partial_shard(hub, tmp_path):
    name = shard_name(1)
    half = len(hub.files[name]) // 2
    (tmp_path / (name + ".partial")).write_bytes(hub.files[name][:half])
    download_shards(2, data="climbmix", base_url=hub.url, directory=tmp_path, progress=False, **FAST)
    assert hub.requests(name) == [f"bytes={half}-"]  # only the missing bytes were asked for
    assert (tmp_path / name).read_bytes() == hub.files[name] and not list(tmp_path.glob("*.partial"))


def test_verification_failure_is_one_clear_error(hub, tmp_path, capsys):
    hub.always[VAL] = "corrupt"  # right size, not a parquet file
    args = ["download", "data=climbmix", "n=1", f"base_url={hub.url}", f"dir={tmp_path}", "retries=1",
            "backoff=0.001"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]  # (and the progress bar)
    assert len(err) == 1 and err[0].startswith(f"error: download of {VAL} failed after 2 attempts") \
        and "corrupt" in err[0], err
    assert VAL not in names(tmp_path) and not (tmp_path / (VAL + ".partial")).exists()
    for p in tmp_path.glob("*.parquet"):
        assert verify_shard(p) is None


def test_disk_estimate(hub, tmp_path, monkeypatch, capsys):
    # nothing on disk yet: the data set's planning figure (~100 MB a shard), less what a .partial already holds
    (tmp_path / (shard_name(0) + ".partial")).write_bytes(b"x" * 1000)
    est = hub_shards.estimate_download("climbmix", tmp_path, [0, 1, 6542])
    assert est.measured_from == 0 and est.bytes_per_shard == 100e6 and est.need_bytes == 300_000_000 - 1000
    assert "ClimbMix: 3 shards to fetch" in est.describe() and "about 0.30 GB" in est.describe()
    (tmp_path / (shard_name(0) + ".partial")).unlink()
    # a download that cannot fit stops before any request, in one line
    monkeypatch.setattr(hub_shards, "_free_bytes", lambda folder: 150_000_000)
    with pytest.raises(NanochatError, match=r"not enough disk space: ClimbMix: 3 shards .* \(about n=0 fit\)"):
        download_shards(2, data="climbmix", base_url=hub.url, directory=tmp_path, progress=False, **FAST)
    assert hub.paths == []
    # with shards on disk the estimate is their measured mean size, and the download prints it first
    monkeypatch.setattr(hub_shards, "_free_bytes", lambda folder: 10**12)
    download_shards(1, data="climbmix", base_url=hub.url, directory=tmp_path, progress=True, **FAST)
    assert "ClimbMix: 2 shards to fetch into" in capsys.readouterr().out
    sizes = [len(hub.files[n]) for n in (shard_name(0), VAL)]
    est = hub_shards.estimate_download("climbmix", tmp_path, [1, 2], [0, 6542])
    assert est.measured_from == 2 and est.bytes_per_shard == sum(sizes) / 2 and est.fits


def test_cli_download_and_info(hub, tmp_path, capsys):
    assert main(["download", "data=climbmix", "n=1", f"base_url={hub.url}", f"dir={tmp_path}", "backoff=0.001"]) == 0
    assert names(tmp_path) == [shard_name(0), VAL]
    assert main(["info", "data=climbmix", f"dir={tmp_path}"]) == 0
    assert f"climbmix: {tmp_path}: 1 training shards, validation shard present" in capsys.readouterr().out


def record(name="climbmix", dataset="karpathy/climbmix-400b-shuffle"):
    return {"name": name, "dataset": dataset, "train_shards": [shard_name(0)], "chars": 1000}


def test_tokenizer_keeps_its_training_record(tmp_path):
    tok = Tokenizer.byte_level()
    assert tok.training_data is None
    tok.training_data = record()
    tok.save(tmp_path / "tok")
    assert Tokenizer.load(tmp_path / "tok").training_data == record()
    assert pickle.loads(pickle.dumps(tok)).training_data == record()  # data loader workers get it too


def test_tokenizer_stage_records_its_data(hub, tmp_path, monkeypatch):
    """stage=tokenizer data=climbmix (in-process): the saved tokenizer says which data set and shards it read."""
    import json

    from nanochat.config.app import compose
    from nanochat.stages import tokenizer as stage

    shards = tmp_path / "shards"
    download_shards(2, data="climbmix", base_url=hub.url, directory=shards, progress=False, **FAST)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setattr(stage, "run_dir", lambda: tmp_path / "run")
    GlobalHydra.instance().clear()
    try:
        cfg = compose("train", ["stage=tokenizer", "data=climbmix", f"data.dir={shards}", "data.num_shards=2", "data.download=false",
                                "data.tokenizer.vocab_size=300", "data.tokenizer.max_chars=200000"])
    finally:
        GlobalHydra.instance().clear()
    report = stage.run(cfg)
    src = get_source("climbmix", dir=str(shards))
    for folder in (tmp_path / "run" / "tokenizer", tmp_path / "tokenizer"):
        rec = Tokenizer.load(folder).training_data
        assert rec["name"] == "climbmix" and rec["dataset"] == "karpathy/climbmix-400b-shuffle"
        assert rec["fingerprint"] == src.fingerprint and rec["train_shards"] == [shard_name(0), shard_name(1)]
        assert 0 < rec["chars"] <= 200_000 and rec["max_chars"] == 200_000 and rec["doc_cap"] == 10_000
    assert json.loads((tmp_path / "run" / "tokenizer_report.json").read_text())["training_data"] == rec
    assert report["training_data"] == rec and "2 shards shard_00000.parquet .. shard_00001.parquet" in describe(rec)


def test_identity_ignores_where_and_how_much(tmp_path):
    assert data_identity("climbmix", {"dir": "/x", "num_shards": 3}) == data_identity("climbmix-400b") \
        == "karpathy/climbmix-400b-shuffle"
    assert data_identity("fineweb", {}) == "karpathy/fineweb-edu-100b-shuffle"
    assert data_identity("local", {"path": str(tmp_path / ".")}) == f"local:{tmp_path.resolve()}"
    assert data_identity("sample") == "sample"


def test_mismatch_warns_once_in_one_line(capsys, monkeypatch):
    tok = Tokenizer.byte_level()
    assert data_mismatch(tok, "sample") is None  # unknown training data: nothing to say
    tok.training_data = record()
    assert data_mismatch(tok, "climbmix", {"dir": "/elsewhere", "num_shards": 500}) is None
    message = data_mismatch(tok, "fineweb_edu", {})
    assert message == ("warning: the tokenizer was trained on climbmix (karpathy/climbmix-400b-shuffle) but this run "
                       "trains on fineweb_edu (karpathy/fineweb-edu-100b-shuffle); training goes on, with fewer "
                       "bytes per token and a val bpb not comparable to matched runs (to match: python train.py "
                       "stage=tokenizer data=fineweb_edu)")
    monkeypatch.setattr("nanochat.provenance._warned", set())
    monkeypatch.setenv("LOCAL_RANK", "1")
    warn_if_other_data(tok, "sample")  # not the first process: silent
    monkeypatch.delenv("LOCAL_RANK")
    for _ in range(3):
        assert warn_if_other_data(tok, "sample") is not None
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("warning: ")


def test_base_stage_warns_when_data_differs(tmp_path, monkeypatch, capsys):
    """The base stage's set-up (in-process) prints the line; with the tokenizer's own data it prints nothing."""
    from nanochat.config.app import compose
    from nanochat.stages.base import prepare

    tok = Tokenizer.byte_level()
    tok.training_data = record()
    tok.save(tmp_path / "tok")
    monkeypatch.setattr("nanochat.provenance._warned", set())
    for data, warned in (("climbmix", False), ("sample", True)):
        GlobalHydra.instance().clear()
        try:
            cfg = compose("train", ["stage=base", "hardware=cpu", f"data={data}", f"tokenizer_dir={tmp_path / 'tok'}",
                                    "model.depth=1", "model.sequence_len=64", "hardware.device_batch_size=2",
                                    "stage.total_batch_tokens=128", "stage.num_iterations=2"])
        finally:
            GlobalHydra.instance().clear()
        prepare(cfg, tmp_path / "run")
        err = capsys.readouterr().err
        assert ("warning: the tokenizer was trained on climbmix" in err) == warned, err


def test_base_stage_fetches_what_the_run_needs(hub, tmp_path):
    """data=climbmix through train.py: the data module downloads the configured shards (+ the validation shard),
    trains on them, and says once that the tokenizer was trained on other data."""
    from tests.helpers import run_train

    tok = Tokenizer.byte_level()
    tok.training_data = record("fineweb_edu", "karpathy/fineweb-edu-100b-shuffle")
    tok.save(tmp_path / "tok")
    shards = tmp_path / "shards"
    args = [f"{k}={v}" for k, v in {
        "hardware": "cpu", "data": "climbmix", "data.base_url": hub.url, "data.dir": shards,
        "data.num_shards": 2, "+data.retries": 2, "+data.backoff": 0.001,
        "tokenizer_dir": tmp_path / "tok", "model.depth": 1, "model.sequence_len": 64,
        "hardware.device_batch_size": 2, "stage.total_batch_tokens": 128, "stage.num_iterations": 2,
        "stage.eval_every": 2, "stage.eval_tokens": 128, "stage.sample_every": 0, "logger": "none",
        "hydra.run.dir": tmp_path / "run",
    }.items()]
    proc = run_train(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert names(shards) == [shard_name(0), shard_name(1), VAL]
    assert (tmp_path / "run" / "model" / "model.pt").exists()
    warnings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "tokenizer was trained on" in ln]
    assert len(warnings) == 1 and "fineweb_edu" in warnings[0] and "climbmix" in warnings[0], warnings
