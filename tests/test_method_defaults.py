"""Every option of conf/method/ trains to a sound network with its defaults alone, on the embedded
default (digits, small_cnn, 30 epochs): `quantlab train method=<name>` and nothing else.

Floors, per family (one seed; measured: float 99.2 %):
- methods that keep weights in float or quantize them to 4+ bits (float, the regularizers, STE, WaveQ,
  the BNN+ forms): 97 %, i.e. within ~2 points of float;
- methods that train weights to binary levels (MD, GD-tanh, PMF, BC, PQ): 50 %, five times chance
  (10 %): the exact mirror-descent forms and ProxQuant are the slowest to converge in 570 steps
  (measured 78-84 % and 67 %), their straight-through forms reach 95-99 %.
Slow (20 training runs): CI runs it (`.ci/run`).
"""

from __future__ import annotations

import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from quantlab.methods.weights import WeightQuantizer
from quantlab.runs.config import group_options
from tests.conftest import REPO, quantlab, results


def floor(name: str) -> float:
    cls = get_class(OmegaConf.load(REPO / "conf" / "method" / f"{name}.yaml")["_target_"])
    return 50.0 if issubclass(cls, WeightQuantizer) else 97.0


@pytest.mark.slow
@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_trains_soundly_with_its_defaults(workdir, method):
    run = workdir / "run"
    quantlab("train", f"method={method}", f"hydra.run.dir={run}", cwd=workdir)
    res = results(run)
    assert res["status"] == "completed"
    assert res["metrics"]["test/acc_exported"] >= floor(method), res["metrics"]["test/acc_exported"]
