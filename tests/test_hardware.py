"""Device facts (memory sources, attention kernel, run estimate) and the device-batch fit, all on CPU with fakes."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from nanochat import scaling
from nanochat.common import NanochatError
from nanochat.gpt import GPTConfig
from nanochat.hardware import (DeviceMemory, device_memory, estimate_run, is_unified_memory, parse_meminfo,
                               resolve_attention)
from nanochat.hardware import HardwareConfig as HW
from nanochat.lit.memfit import (ProbeResult, apply_fit, batch_candidates, choose_device_batch, fit_plan,
                                 memory_budget, planning_batch_size)
from nanochat.memory import estimate_training_memory

CONF = Path(__file__).resolve().parent.parent / "conf" / "hardware"
GiB = 2**30

# what a DGX Spark's /proc/meminfo looks like (kB): 128 GB unified, ~110 GB available
SPARK_MEMINFO = """MemTotal:       128330240 kB
MemFree:        60123456 kB
MemAvailable:   115343360 kB
Buffers:          123456 kB
Cached:         52000000 kB
SwapTotal:             0 kB
HugePages_Total:       0
"""


def test_parse_meminfo_units():
    info = parse_meminfo(SPARK_MEMINFO)
    assert info["MemTotal"] == 128330240 * 1024
    assert info["MemAvailable"] == 115343360 * 1024
    assert info["HugePages_Total"] == 0  # no unit: a count, kept as is


def test_device_memory_gb10_reads_meminfo_not_cuda():
    def broken(_):  # on GB10 NVML/CUDA figures are not the memory the process can use
        raise AssertionError("must not be asked")

    m = device_memory(device_name="NVIDIA GB10", mem_get_info=broken, meminfo_text=SPARK_MEMINFO)
    assert m.unified and m.source == "meminfo" and m.device == "NVIDIA GB10"
    assert m.available == 115343360 * 1024 and m.total == 128330240 * 1024
    assert "unified" in m.describe()


def test_device_memory_discrete_gpu_uses_cuda_and_falls_back():
    m = device_memory(device_name="NVIDIA H100 80GB HBM3", integrated=False,
                      mem_get_info=lambda i: (70 * GiB, 80 * GiB), meminfo_text=SPARK_MEMINFO)
    assert (m.source, m.available, m.total, m.unified) == ("cuda", 70 * GiB, 80 * GiB, False)
    # a driver that reports nothing: the host's view (better than a zero budget)
    m = device_memory(device_name="Some GPU", integrated=False, mem_get_info=lambda i: (0, 0),
                      meminfo_text=SPARK_MEMINFO)
    assert m.source == "meminfo"
    # integrated GPUs are unified whatever their name
    assert device_memory(device_name="Other", integrated=True, meminfo_text=SPARK_MEMINFO).unified
    assert is_unified_memory("NVIDIA GB10") and not is_unified_memory("NVIDIA H100 80GB HBM3")


def test_device_memory_cpu_and_old_kernel():
    m = device_memory(device_name="cpu", meminfo_text="MemTotal: 1000 kB\nMemFree: 100 kB\nCached: 50 kB\n")
    assert (m.total, m.available, m.source) == (1000 * 1024, 150 * 1024, "meminfo")  # no MemAvailable line
    with pytest.raises(NanochatError, match="MemTotal"):
        device_memory(device_name="cpu", meminfo_text="nonsense\n")
    assert device_memory().total > 0  # this machine


WINDOWED = GPTConfig(sequence_len=2048, n_layer=4, n_head=4, n_kv_head=4, n_embd=256, window_pattern="SSSL",
                     short_window_multiple=128)
FULL = replace(WINDOWED, window_pattern=None)


@pytest.mark.parametrize("choice,config,device,cap,expected", [
    ("auto", WINDOWED, "cuda", (9, 0), "flex"),  # windows shorter than the context on a GPU: flex
    ("auto", WINDOWED, "cuda", (12, 1), "flex"),
    ("auto", WINDOWED, "cuda", (7, 5), "sdpa"),  # flex's kernels want sm_80+
    ("auto", FULL, "cuda", (9, 0), "sdpa"),  # no windows: SDPA's causal flash kernel everywhere
    ("auto", replace(WINDOWED, short_window_frac=1.0), "cuda", (9, 0), "sdpa"),  # "S" = the whole context
    ("auto", WINDOWED, "cpu", None, "sdpa"),
    ("auto", WINDOWED, "mps", None, "sdpa"),
    ("sdpa", WINDOWED, "cuda", (9, 0), "sdpa"),  # explicit choices are honoured
    ("flex", FULL, "cuda", (9, 0), "flex"),
    ("flex", WINDOWED, "cpu", None, "flex"),
])
def test_resolve_attention(choice, config, device, cap, expected):
    got = resolve_attention(choice, config, device, cap)
    assert got.name == expected and got.reason
    assert got.describe() == f"attention: {expected} ({got.reason})"
    if (choice, device, expected) == ("auto", "cuda", "flex"):
        assert "3 of 4 layers look back 512 of 2048 tokens" in got.reason
    if choice == "flex" and device == "cpu":
        assert "cannot train" in got.reason


def test_resolve_attention_refuses():
    with pytest.raises(NanochatError, match="must be one of: auto, sdpa, flex"):
        resolve_attention("fa3", WINDOWED, "cuda", (9, 0))
    with pytest.raises(NanochatError, match="cannot train on cpu"):
        resolve_attention("flex", WINDOWED, "cpu", training=True)
    assert resolve_attention("flex", WINDOWED, "cuda", (9, 0), training=True).name == "flex"
    assert HW().attention == "auto"


def test_estimate_run_time_energy_cost():
    plan = scaling.plan(20, vocab_size=65536, world_size=8, device_batch_size=32)
    hw = HW(**{"peak_flops": 9.89e14, "expected_mfu": 0.4, "power_watts": 700, "price_per_hour": 3.0})
    text = estimate_run(plan, hw)
    hours = plan.total_flops / (9.89e14 * 8 * 0.4) / 3600
    assert f"{hours:.2f} h" in text
    assert f"{hours * 700 * 8 / 1000:,.2f} kWh" in text
    assert f"${hours * 3.0 * 8:,.2f}" in text
    # an owned machine: electricity price instead of rent; an explicit MFU wins over the profile's
    spark = HW(**{"peak_flops": 2.09e14, "power_watts": 240, "price_per_kwh": 0.3})
    text = estimate_run(scaling.plan(16, vocab_size=65536, device_batch_size=32), spark, mfu=0.3)
    assert "of electricity" in text and "30% MFU" in text
    assert "set hardware.peak_flops" in estimate_run(plan, HW(peak_flops=None))
    with pytest.raises(NanochatError, match="MFU"):
        estimate_run(plan, hw, mfu=1.5)


def test_hardware_profiles_carry_cost_keys():
    for path in sorted(CONF.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if "defaults" in cfg and path.stem not in ("cpu",):
            continue  # inherits the keys
        for key in ("peak_flops", "power_watts", "memory_headroom", "expected_mfu"):
            assert key in cfg, f"{path.name} lacks {key}"


# -----------------------------------------------------------------------------------------------------------
# memfit: the selection logic with a fake memory budget


def small_plan(batch=8, world=1, total=8192, seq=256, depth=2):
    return scaling.plan(depth, vocab_size=4096, seq_len=seq, device_batch_size=batch, world_size=world,
                        head_dim=64, num_iterations=10, total_batch_tokens=total)


def fake_memory(available):
    return DeviceMemory(total=available, available=available, source="test", unified=False, device="fake")


def test_batch_candidates_are_power_of_two_divisors():
    assert batch_candidates(8192, 256, 1) == [32, 16, 8, 4, 2, 1]
    assert batch_candidates(524288, 2048, 8) == [32, 16, 8, 4, 2, 1]
    assert batch_candidates(3 * 2048, 2048, 1) == [1]  # 3 rows: only 1 keeps the token batch
    with pytest.raises(NanochatError, match="not a multiple"):
        batch_candidates(1000, 256, 1)


def test_auto_picks_largest_fitting_and_keeps_token_batch():
    plan = small_plan()
    budget_for = {b: estimate_training_memory(plan, device_batch_size=b).total for b in (32, 16, 8, 4)}
    hw = HW(**{"device_batch_size": "auto", "accelerator": "cpu", "precision": "32-true", "memory_headroom": 0.0})
    for b in (32, 16, 8, 4):
        mem = fake_memory(budget_for[b] + 1)
        batch, accum, report = choose_device_batch(plan, hw, probe=False, memory=mem)
        assert batch == b and batch * plan.seq_len * plan.world_size * accum == plan.total_batch_tokens
        assert not report.pinned and "largest that fits" in report.describe()
    # headroom is a fraction of total memory kept free
    mem = fake_memory(budget_for[16] + 1)
    assert choose_device_batch(plan, replace(hw, memory_headroom=0.2), probe=False, memory=mem)[0] < 16


def test_probe_halves_from_the_estimate():
    plan = small_plan()
    hw = HW(**{"device_batch_size": "auto", "accelerator": "gpu", "precision": "bf16-mixed", "memory_headroom": 0.0})
    mem = fake_memory(10 * GiB)  # the estimate allows 32; the (fake) device only manages 8
    tried = []

    def probe(b):
        tried.append(b)
        return ProbeResult(fits=b <= 8, peak=b * GiB, error="" if b <= 8 else "out of memory")

    batch, accum, report = choose_device_batch(plan, hw, probe=True, memory=mem, try_batch=probe)
    assert (batch, accum) == (8, 4) and tried == [32, 16, 8]
    assert "device batch 16: does not fit (out of memory)" in report.describe()
    # several devices: estimate only (every rank must choose the same size)
    plan2 = small_plan(batch=4, world=2)
    batch, _, report = choose_device_batch(plan2, hw, probe=True, memory=mem)
    assert report.probed == {} and batch == 16


def test_pinned_size_kept_or_rejected_with_the_largest_that_fits():
    plan = small_plan()
    hw = HW(**{"device_batch_size": 16, "accelerator": "cpu", "precision": "32-true", "memory_headroom": 0.0})
    est = {b: estimate_training_memory(plan, device_batch_size=b).total for b in (16, 8)}
    batch, accum, report = choose_device_batch(plan, hw, probe=False, memory=fake_memory(est[16] + 1))
    assert (batch, accum, report.pinned) == (16, 2, True)
    with pytest.raises(NanochatError) as e:
        choose_device_batch(plan, hw, probe=False, memory=fake_memory(est[8] + 1))
    msg = str(e.value)
    assert "device_batch_size=16 does not fit" in msg and "largest that fits is device_batch_size=8" in msg
    with pytest.raises(NanochatError, match="not even device batch 1"):
        choose_device_batch(plan, hw, probe=False, memory=fake_memory(1000))
    with pytest.raises(NanochatError, match="not divisible"):
        choose_device_batch(plan, replace(hw, device_batch_size=3), probe=False, memory=fake_memory(100 * GiB))
    with pytest.raises(NanochatError, match="positive integer or auto"):
        choose_device_batch(plan, replace(hw, device_batch_size="big"), probe=False, memory=fake_memory(GiB))
    # a probe overrules the estimate for a pinned size
    batch, _, _ = choose_device_batch(plan, replace(hw, accelerator="gpu"), probe=True, memory=fake_memory(1000),
                                      try_batch=lambda b: ProbeResult(True, 10))
    assert batch == 16


def test_fit_plan_apply_fit_and_planning_batch():
    plan = small_plan(batch=32)
    hw = HW(device_batch_size="auto", accelerator="cpu", precision="32-true", memory_headroom=0.0)
    assert planning_batch_size("auto", 8192, 256) == 32 and planning_batch_size(4, 8192, 256) == 4
    mem = fake_memory(estimate_training_memory(plan, device_batch_size=4).total + 1)
    new, report = fit_plan(plan, hw, probe=False, memory=mem)
    assert (new.device_batch_size, new.grad_accum) == (4, 8) and plan.device_batch_size == 32
    assert new.num_steps == plan.num_steps and new.total_batch_tokens == plan.total_batch_tokens

    class DM:
        batch_size = val_batch_size = 32

    class Run:
        pass

    run = Run()
    run.plan, run.datamodule = plan, DM()
    report = apply_fit(run, hw, probe=False, memory=mem)
    assert run.plan.device_batch_size == run.datamodule.batch_size == run.datamodule.val_batch_size == 4
    assert report.grad_accum == 8
    with pytest.raises(NanochatError, match="memory_headroom"):
        memory_budget(mem, 1.5)
