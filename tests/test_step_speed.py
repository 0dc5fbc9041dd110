"""Step speed options (issue 16): torch.compile, channels-last memory and bf16 / fp16 autocast change how
a step runs, not what it computes: the same loss trajectory (to float rounding) and, under autocast,
the same projected and exported weights as float32."""

from __future__ import annotations

import pytest
import torch

from quantlab.errors import ConfigError
from quantlab.methods.weights import WeightQuantizer
from tests.conftest import make_trainer, quantlab

STEPS = 5


def trajectory(overrides: list[str], tmp_path, name: str) -> tuple[list[float], object]:
    """The training losses of the first STEPS steps of epoch 2 (β and λ already annealing)."""
    trainer = make_trainer([*overrides, "trainer.grad_norms_every=2"], tmp_path / name)
    losses = []
    for x, y in trainer.train_loader.iterate(1):
        out = trainer.train_step(x, y)
        trainer.clock.step += 1
        losses.append(float(out.loss))
        if len(losses) == STEPS:
            break
    return losses, trainer


def close(a: list[float], b: list[float], first: float, rest: float) -> bool:
    """The first losses agree to `first` (same weights: only the arithmetic's order differs), the
    later ones to `rest` (Adam's first steps amplify rounding differences)."""
    rel = [abs(x - y) / abs(y) for x, y in zip(a, b, strict=True)]
    return rel[0] < first and max(rel) < rest


FIRST_ORDER = [
    "method=float",
    "method=md_tanh_s",
    pytest.param("method=ste", marks=pytest.mark.slow),  # w8a8: activation quantizers
    pytest.param("method=md_softmax_s,bitwidth=ternary", marks=pytest.mark.slow),
    pytest.param("method=pmf", marks=pytest.mark.slow),
    pytest.param("method=bc", marks=pytest.mark.slow),
    pytest.param("method=md_softmax", marks=pytest.mark.slow),
    pytest.param("method=waveq", marks=pytest.mark.slow),
    pytest.param("method=dq", marks=pytest.mark.slow),
    pytest.param("method=grad_l1,method.estimator=fd", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("setting", FIRST_ORDER)
def test_compiled_steps_follow_the_eager_trajectory(setting, tmp_path):
    overrides = setting.split(",")
    eager, _ = trajectory(overrides, tmp_path, "eager")
    compiled, trainer = trajectory([*overrides, "trainer.compile=true"], tmp_path, "compiled")
    assert trainer.forward is not trainer.model  # the step really ran the compiled module
    assert close(compiled, eager, first=1e-5, rest=1e-2), (compiled, eager)


def test_compile_recompiles_nothing_as_beta_anneals(tmp_path):
    """β is a tensor the graph reads: 20 steps with β ×1.2 every 2 steps compile one graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    overrides = ["method=md_tanh_s", "schedule.beta.interval=2", "trainer.compile=true"]
    trainer = make_trainer(overrides, tmp_path / "run")
    betas = set()
    for x, y in trainer.train_loader.iterate(0):
        trainer.train_step(x, y)
        betas.add(trainer.method.on_step(trainer.model, trainer.clock.step, 0)["beta"])
        trainer.clock.step += 1
    assert len(betas) > 5
    assert counters["stats"]["unique_graphs"] == 1


def test_a_method_that_needs_double_backward_refuses_compile_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer.compile=true: method=grad_l1 differentiates through"):
        make_trainer(["method=grad_l1", "trainer.compile=true"], tmp_path / "run")
    proc = quantlab("train", "method=grad_l2", "trainer.compile=true", cwd=tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 2 and len(lines) == 1 and "method.estimator=fd" in lines[0], proc.stderr


@pytest.mark.parametrize("method", ["float", "md_tanh_s"])
def test_channels_last_follows_the_contiguous_trajectory(method, tmp_path):
    base = [f"method={method}", "model=vgg_small", "dataset=synthetic", "dataset.shape=[3,16,16]"]
    contiguous, _ = trajectory([*base, "trainer.channels_last=false"], tmp_path, "nchw")
    channels_last, trainer = trajectory([*base, "trainer.channels_last=true"], tmp_path, "nhwc")
    convs = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
    latent = [WeightQuantizer.aux(m, "weight") if method != "float" else m.weight for m in convs]
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in latent)
    assert close(channels_last, contiguous, first=1e-5, rest=1e-2), (channels_last, contiguous)


def test_channels_last_auto_is_off_on_the_cpu(tmp_path):
    assert not make_trainer(["model=vgg_small"], tmp_path / "run").channels_last


PROJECTED = ["md_tanh_s", "gd_tanh", "md_softmax_s", "pmf", "md_softmax", "bc"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", PROJECTED)
@pytest.mark.parametrize("bitwidth", ["binary", "ternary"])
def test_projections_stay_float32_under_autocast(method, bitwidth, dtype, tmp_path):
    """With β = 1 and β = 1e4, every projected weight the layers see under bf16 / fp16 autocast is
    the float32 one bit for bit, and the exported network is the same."""
    if method == "bc" and bitwidth == "ternary":
        pytest.skip("BinaryConnect is binary")
    trainer = make_trainer([f"method={method}", f"bitwidth={bitwidth}"], tmp_path / "run")
    model, quantizer = trainer.model, trainer.method
    x, _ = next(iter(trainer.train_loader.iterate(0)))
    for beta in (1.0, 1e4):
        quantizer.beta.value = beta
        layers = [model.get_submodule(path) for path, _ in quantizer.targets]
        names = [name for _, name in quantizer.targets]
        plain = [getattr(m, n).detach().clone() for m, n in zip(layers, names, strict=True)]
        with torch.autocast("cpu", dtype=dtype):
            cast = [getattr(m, n).detach().clone() for m, n in zip(layers, names, strict=True)]
            model(x)  # the forward pass runs under autocast
        assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(cast, plain, strict=True))
    exported = quantizer.export(model)
    with torch.autocast("cpu", dtype=dtype):
        again = quantizer.export(model)
    a, b = exported.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "true"])
def test_autocast_runs_train_and_report(amp, tmp_path):
    overrides = ["method=float", f"trainer.amp={amp}", "schedule.epochs=2"]
    trainer = make_trainer(overrides, tmp_path / "run")
    expected = {"bf16": torch.bfloat16, "true": torch.bfloat16, "fp16": torch.float16}[amp]
    assert trainer.amp_dtype == expected and trainer.scaler.is_enabled() == (amp == "fp16")
    trainer.fit()
    metrics = trainer.test().metrics
    assert metrics["test/acc_exported"] > 50.0  # digits: ~90 % after two float epochs in float32


@pytest.mark.slow  # CI runs it (.ci/run); the default suite keeps under 10 minutes
def test_bad_step_settings_are_one_line_errors(tmp_path):
    for setting, field in (
        ("trainer.amp=fp8", "trainer.amp='fp8': must be false, bf16, fp16"),
        ("trainer.channels_last=maybe", "trainer.channels_last='maybe': must be auto, true or false"),
        ("trainer.num_workers=-1", "trainer.num_workers=-1: must be auto or an integer >= 0"),
    ):
        proc = quantlab("train", setting, cwd=tmp_path, check=False)
        lines = [line for line in proc.stderr.splitlines() if "error" in line]
        assert proc.returncode == 2 and len(lines) == 1 and field in lines[0], proc.stderr
