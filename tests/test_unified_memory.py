"""The unified-memory headroom rule on a (fake) DGX Spark: GB10's budget is /proc/meminfo's MemAvailable minus the
profile's memory_headroom share of MemTotal, never CUDA's figure, and the memory fit stays inside it."""
from pathlib import Path

import pytest
import yaml

from nanochat import scaling
from nanochat.common import NanochatError
from nanochat.hardware import HardwareConfig, device_memory
from nanochat.lit.memfit import choose_device_batch, memory_budget

SPARK = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "hardware" / "dgx_spark.yaml").read_text())
GIB = 2 ** 30


def meminfo(total_gib: float, available_gib: float) -> str:
    """/proc/meminfo as a GB10 box shows it (kB), with page cache that MemAvailable counts as reclaimable."""
    kb = lambda g: int(g * GIB / 1024)  # noqa: E731
    return (f"MemTotal:       {kb(total_gib)} kB\nMemFree:        {kb(available_gib / 4)} kB\n"
            f"MemAvailable:   {kb(available_gib)} kB\nBuffers:        {kb(0.1)} kB\nCached:         {kb(available_gib / 2)} kB\n")


def no_cuda_query(index):
    raise AssertionError("a unified-memory GPU must not be sized by cudaMemGetInfo")


def spark_hardware(**kw) -> HardwareConfig:
    return HardwareConfig(name="dgx_spark", accelerator="gpu", precision=SPARK["precision"], compile=SPARK["compile"],
                          memory_headroom=SPARK["memory_headroom"], **kw)


def test_gb10_memory_comes_from_meminfo():
    mem = device_memory(device_name="NVIDIA GB10", meminfo_text=meminfo(119.7, 110.0), mem_get_info=no_cuda_query)
    assert mem.unified and mem.source == "meminfo" and mem.device == "NVIDIA GB10"
    assert mem.total == pytest.approx(119.7 * GIB, rel=1e-6) and mem.available == pytest.approx(110.0 * GIB, rel=1e-6)
    # the profile leaves its headroom share of the whole 128 GB box free
    assert SPARK["memory_headroom"] > 0
    budget = memory_budget(mem, SPARK["memory_headroom"])
    assert budget == int(mem.available - SPARK["memory_headroom"] * mem.total)


@pytest.mark.parametrize("available_gib", [110.0, 60.0, 30.0])
def test_the_fit_leaves_the_headroom_on_a_fake_gb10(available_gib):
    """auto picks the largest device batch whose estimate fits MemAvailable minus the headroom; the next size up
    would not have fit. Less available memory (other programs, the OS) means a smaller batch, never an overrun."""
    mem = device_memory(device_name="NVIDIA GB10", meminfo_text=meminfo(119.7, available_gib),
                        mem_get_info=no_cuda_query)
    plan = scaling.plan(16, vocab_size=32768, seq_len=2048, device_batch_size=32, num_iterations=10,
                        total_batch_tokens=32 * 2048)
    batch, accum, report = choose_device_batch(plan, spark_hardware(device_batch_size="auto"), probe=False, memory=mem)
    headroom = SPARK["memory_headroom"] * mem.total
    assert report.budget == int(mem.available - headroom)
    assert report.estimate.total <= mem.available - headroom  # the headroom stays free
    assert batch * accum * 2048 == 32 * 2048  # the token batch is kept, only the split changes
    bigger = [b for b in report.estimates if b > batch]
    assert all(report.estimates[b] > report.budget for b in bigger)


def test_a_pinned_batch_that_eats_the_headroom_is_refused():
    mem = device_memory(device_name="NVIDIA GB10", meminfo_text=meminfo(119.7, 30.0), mem_get_info=no_cuda_query)
    plan = scaling.plan(16, vocab_size=32768, seq_len=2048, device_batch_size=32, num_iterations=10,
                        total_batch_tokens=32 * 2048)
    with pytest.raises(NanochatError, match="device_batch_size=32 does not fit.*unified memory available"):
        choose_device_batch(plan, spark_hardware(device_batch_size=32), probe=False, memory=mem)
