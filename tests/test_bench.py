"""`quantlab bench data`: its measurements and its arguments (the numbers themselves are the bench's)."""

from __future__ import annotations

import json

import pytest

from quantlab.commands.bench_data import busy_fraction, loader_overrides
from tests.conftest import quantlab


def test_busy_fraction_merges_overlaps_and_clips_to_the_window():
    # [0,10] window; kernels [1,3] and [2,5] overlap (4 covered), [7,8] (1), [9,12] clipped to [9,10] (1)
    assert busy_fraction([(2, 5), (1, 3), (7, 8), (9, 12)], 0, 10) == pytest.approx(0.6)
    assert busy_fraction([(1, 9), (2, 3)], 0, 10) == pytest.approx(0.8)  # nested: counted once
    assert busy_fraction([], 0, 10) == 0.0


def test_loader_kinds_map_to_overrides():
    assert loader_overrides("resident") == ["dataset.loader=resident"]
    assert loader_overrides("torchvision:auto") == ["dataset.loader=torchvision", "trainer.num_workers=auto"]
    for bad in ("dali", "resident:2"):
        with pytest.raises(ValueError, match="must be resident or torchvision"):
            loader_overrides(bad)


def test_bench_data_times_loaders_step_and_epochs(tmp_path):
    out = tmp_path / "rows.json"
    args = ["--model", "small_cnn", "--num-train", "256", "--batch-size", "64", "--steps", "2"]
    args += ["--warmup", "1", "--loaders", "resident", "torchvision:0", "--json", str(out)]
    proc = quantlab("bench", "data", *args, cwd=tmp_path)
    assert "quantlab bench data" in proc.stderr
    rows = json.loads(out.read_text())
    assert [(r["stage"], r["what"]) for r in rows] == [
        ("loader", "resident"),
        ("loader", "torchvision:0"),
        ("step", "(batch on device)"),
        ("epoch", "resident"),
        ("epoch", "torchvision:0"),
    ]
    assert [r["images"] for r in rows] == [256, 256, 128, 256, 256]  # full passes: 4 batches of 64
    assert all(r["images_per_s"] > 0 and 0 <= r.get("wait", 0) < 1 for r in rows)
    assert rows[1]["vs_torchvision_0"] == pytest.approx(1.0)


def test_bench_data_refuses_bad_arguments_in_one_line(tmp_path):
    for args, field in (
        (["--loaders", "dali"], "--loaders dali: must be resident or torchvision"),
        (["--dataset", "svhn"], "--dataset=svhn: needs --data-root"),
        (["--batch-size", "0"], "--batch-size=0: must be > 0"),
    ):
        proc = quantlab("bench", "data", *args, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and field in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_method_specs_take_method_keys_and_dotted_settings():
    from quantlab.runs.components import method_overrides

    assert method_overrides("md_tanh_s:ternary") == ["method=md_tanh_s", "bitwidth=ternary"]
    assert method_overrides("grad_l1,estimator=fd,trainer.compile=true") == [
        "method=grad_l1",
        "bitwidth=binary",
        "method.estimator=fd",
        "trainer.compile=true",
    ]


def test_profiled_busy_measures_the_share_of_the_span_a_device_worked():
    import math
    import time

    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from quantlab.commands.bench_data import profiled_busy

    a = torch.randn(300, 300)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        a @ a
        time.sleep(0.2)  # no events: the "device" (here the CPU's ops) is idle
        a @ a
    events = prof.events()
    busy = profiled_busy(events, DeviceType.CPU)
    assert 0 < busy < 0.5
    assert math.isnan(profiled_busy(events, DeviceType.CUDA))  # no CUDA events on this machine
