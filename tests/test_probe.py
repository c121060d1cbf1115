"""hardware.peak_flops=auto: the matmul probe, its cache, resolution for a run and for a plan made elsewhere."""
import json

import pytest
import torch

from nanochat import probe, scaling
from nanochat.common import NanochatError
from nanochat.hardware import HardwareConfig, duration, estimate_run

TINY = (32, 64)


def test_matmul_rate_and_measure_on_cpu():
    rate = probe.matmul_rate(32, torch.float32, "cpu", reps=2)
    assert rate > 0
    assert probe.measure_peak("cpu", torch.float32, sizes=TINY, reps=1) > 0


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("bf16-cast", torch.bfloat16),
                                              ("bf16-true", torch.bfloat16), ("16-mixed", torch.float16),
                                              ("32-true", torch.float32), ("32", torch.float32)])
def test_probe_dtype_follows_the_precision(precision, dtype):
    assert probe.probe_dtype(precision) is dtype


def test_cache_round_trip(tmp_path, monkeypatch):
    path = tmp_path / "peak.json"
    calls = []
    real = probe.measure_peak
    monkeypatch.setattr(probe, "measure_peak", lambda *a, **k: calls.append(1) or real(*a, **k))
    first, cached = probe.measured_peak("cpu", torch.float32, sizes=TINY, path=path)
    assert not cached and first > 0 and len(calls) == 1
    again, cached = probe.measured_peak("cpu", torch.float32, sizes=TINY, path=path)
    assert cached and again == first and len(calls) == 1  # no second probe
    data = json.loads(path.read_text())
    key = probe.cache_key(probe.device_label("cpu"), torch.float32)
    assert key in data and torch.__version__ in key and "fp32" in key and data[key]["flops"] == first
    # another dtype is another entry; the first survives the rewrite
    probe.measured_peak("cpu", torch.bfloat16, sizes=TINY, path=path)
    assert len(json.loads(path.read_text())) == 2 and len(calls) == 2
    # a damaged cache file is probed again and rewritten, not an error
    path.write_text("{not json")
    _, cached = probe.measured_peak("cpu", torch.float32, sizes=TINY, path=path)
    assert not cached and key in json.loads(path.read_text())


@pytest.mark.parametrize("value", [1e14, 3, "4e14", "auto", None])
def test_check_accepts_numbers_auto_and_null(value):
    probe.check_peak_flops(value)


@pytest.mark.parametrize("value", ["fast", "", 0, -1.0, True, float("inf"), [1e14]])
def test_check_rejects_anything_else_in_one_line(value):
    with pytest.raises(NanochatError, match=r"^hardware\.peak_flops: .* expected a positive number") as e:
        probe.check_peak_flops(value)
    assert "\n" not in str(e.value)


def test_resolve_number_auto_and_plan_elsewhere(tmp_path):
    path = tmp_path / "peak.json"
    assert probe.resolve_peak_flops(HardwareConfig(peak_flops=2e11), path=path) == probe.PeakFlops(2e11, "configured")
    assert probe.resolve_peak_flops(HardwareConfig(peak_flops=None), path=path).value is None
    # a CPU profile measures this CPU in its precision
    cpu = HardwareConfig(peak_flops="auto", precision="32-true")
    path.write_text(json.dumps({probe.cache_key(probe.device_label("cpu"), torch.float32): {"flops": 1.5e11}}))
    got = probe.resolve_peak_flops(cpu, path=path)
    assert got.value == 1.5e11 and "measured, fp32 matmul probe, cached" == got.source
    # a GPU profile on a machine without CUDA: the nominal figure, never a probe of the CPU
    spark = HardwareConfig(name="dgx_spark", accelerator="gpu", precision="bf16-mixed", peak_flops="auto",
                           peak_flops_nominal=9.5e13)
    got = probe.resolve_peak_flops(spark, cuda_available=False, path=tmp_path / "untouched.json")
    assert got.value == 9.5e13 and "nominal for dgx_spark" in got.source and "not measured" in got.source
    assert not (tmp_path / "untouched.json").exists()
    no_nominal = HardwareConfig(name="x", accelerator="gpu", peak_flops="auto")
    assert probe.resolve_peak_flops(no_nominal, cuda_available=False).value is None
    with pytest.raises(NanochatError, match="peak_flops"):
        probe.resolve_peak_flops(HardwareConfig(peak_flops="fast"))


def test_estimate_names_where_the_peak_came_from(monkeypatch):
    plan = scaling.plan(4, vocab_size=4096, seq_len=256, device_batch_size=8, num_iterations=10)
    spark = HardwareConfig(name="dgx_spark", accelerator="gpu", peak_flops="auto", peak_flops_nominal=9.5e13,
                           expected_mfu=0.5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = estimate_run(plan, spark).splitlines()[0]
    hours = plan.total_flops / (9.5e13 * 0.5) / 3600
    assert "9.5e+13 FLOP/s each (nominal for dgx_spark, not measured: no CUDA GPU here)" in line
    assert line.endswith(f"-> {duration(hours)}")
    # a configured number prints as before, with no source
    assert "FLOP/s each ->" in estimate_run(plan, HardwareConfig(peak_flops=1e14))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_measures_the_gpu(tmp_path):
    hw = HardwareConfig(name="gpu", accelerator="gpu", precision="bf16-mixed", peak_flops="auto",
                        peak_flops_nominal=1.0)
    got = probe.resolve_peak_flops(hw, path=tmp_path / "peak.json")
    assert got.value > 1e12 and got.source == "measured, bf16 matmul probe"  # any CUDA GPU beats a TFLOP/s
    assert probe.resolve_peak_flops(hw, path=tmp_path / "peak.json").source.endswith("cached")
