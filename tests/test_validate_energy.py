"""validate-energy's additivity checks (thesis Table 5-1), forward and training mode, on a tiny network
with a fake bench: the split into layers, the sums and the verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from torch import nn

from layerbench.cli import build_parser
from layerbench.suites import validate_energy as ve

TINY_NAMES = ["conv1", "relu1", "pool1", "fc6"]


def tiny(batch: int, device: torch.device) -> tuple[list[tuple[str, nn.Module]], torch.Tensor]:
    """A four-layer network shaped like AlexNet's kinds of layers (conv, ReLU, pool, a view, FC)."""
    torch.manual_seed(0)
    layers = [("conv1", nn.Conv2d(2, 3, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2, 2)),
              ("flatten", nn.Flatten()), ("fc6", nn.Linear(3 * 2 * 2, 5))]
    return [(n, m.to(device)) for n, m in layers], torch.randn(batch, 2, 4, 4, device=device)


def test_training_pass_gives_autograds_gradients_of_input_and_parameters() -> None:
    lin = nn.Linear(4, 3).double()
    x, dy = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():  # as run_validation runs it: the pass turns autograd on itself
        dx, dw, db = ve.training_pass(lin, x, dy)()
    assert torch.allclose(dx, dy @ lin.weight) and torch.allclose(dw, dy.t() @ x)
    assert torch.allclose(db, dy.sum(0))
    assert lin.weight.grad is None  # no .grad accumulates: every launch does the same work


def test_training_kernels_are_each_layers_training_pass_and_the_whole_iteration() -> None:
    layers, x = tiny(2, torch.device("cpu"))
    with torch.no_grad():
        kernels = ve.training_kernels(layers, x)
        assert list(kernels) == [*TINY_NAMES, ve.NETWORK]  # the view (flatten) runs no kernel
        shapes = {name: [tuple(g.shape) for g in k()] for name, k in kernels.items()}
    # forward, then the gradient of the layer's input and of each of its parameters
    assert shapes["conv1"] == [(2, 2, 4, 4), (3, 2, 3, 3), (3,)]
    assert shapes["relu1"] == [(2, 3, 4, 4)] and shapes["pool1"] == [(2, 3, 4, 4)]
    assert shapes["fc6"] == [(2, 12), (5, 12), (5,)]
    # the whole iteration: the input's gradient too (conv1 runs its data gradient in both), and every parameter's
    assert shapes[ve.NETWORK] == [(2, 2, 4, 4), (3, 2, 3, 3), (3,), (5, 12), (5,)]


def test_forward_kernels_leave_out_views() -> None:
    layers, x = tiny(2, torch.device("cpu"))
    with torch.no_grad():
        kernels = ve.forward_kernels(layers, x)
        assert list(kernels) == [*TINY_NAMES, ve.NETWORK]
        assert tuple(kernels[ve.NETWORK]().shape) == (2, 5) and tuple(kernels["pool1"]().shape) == (2, 3, 2, 2)


class FakeBench:
    """Runs each kernel once (they must work) and reports the times and energies it is given."""

    def __init__(self, seconds: dict[str, float], joules: dict[str, float | None],
                 throttled: tuple[str, ...] = ()) -> None:
        self.seconds, self.joules, self.throttled = seconds, joules, throttled
        self.trials: list[str] = []

    def time(self, kernels: dict[str, Callable[[], object]]) -> dict[str, SimpleNamespace]:
        for k in kernels.values():
            k()
        return {n: SimpleNamespace(median_s=self.seconds[n]) for n in kernels}

    def energy(self, label: str, kernels: dict[str, Callable[[], object]],
               times: dict[str, SimpleNamespace]) -> dict[str, SimpleNamespace]:
        self.trials.append(label)
        return {n: SimpleNamespace(j_per_launch=self.joules[n], reason=None if self.joules[n] else "no meter",
                                   throttled=n in self.throttled) for n in kernels}


def _even(total: float, network: float) -> dict[str, float]:
    return {n: total / len(TINY_NAMES) for n in TINY_NAMES} | {ve.NETWORK: network}


@pytest.mark.parametrize(("time_sum", "energy_sum", "status"), [
    (1.04, 1.0, "PASS"), (0.96, 1.04, "PASS"), (1.06, 1.0, "FAIL"), (1.0, 0.94, "FAIL")])
def test_training_additivity_sums_layer_passes_against_the_iteration(
        monkeypatch: pytest.MonkeyPatch, time_sum: float, energy_sum: float, status: str) -> None:
    monkeypatch.setattr(ve, "alexnet", tiny)
    bench = FakeBench(_even(time_sum, 1.0), _even(energy_sum, 1.0))
    with torch.no_grad():
        c = ve._check_training_additivity(bench, torch.device("cpu"), 2)  # type: ignore[arg-type]
    assert c.status == status and bench.trials == ["alexnet training"]
    assert c.measured["time_sum_s"] == pytest.approx(time_sum)
    assert c.measured["j_sum"] == pytest.approx(energy_sum)
    assert c.measured["time_relative"] == pytest.approx(abs(time_sum - 1.0))
    assert set(c.measured["per_layer_j"]) == {*TINY_NAMES, ve.NETWORK}  # type: ignore[arg-type]
    assert "training passes of 4 layers" in c.description and "training mode" in c.description


def test_additivity_names_the_layers_throttled_in_their_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer alone at the power cap draws otherwise than inside the network: the check says which."""
    monkeypatch.setattr(ve, "alexnet", tiny)
    bench = FakeBench(_even(1.0, 1.0), _even(1.049, 1.0), throttled=("conv1",))
    with torch.no_grad():
        c = ve._check_training_additivity(bench, torch.device("cpu"), 2)  # type: ignore[arg-type]
    assert c.status == "PASS" and c.measured["throttled"] == ["conv1"] and "conv1" in c.detail
    quiet = FakeBench(_even(1.0, 1.0), _even(1.0, 1.0))
    with torch.no_grad():
        c = ve._check_training_additivity(quiet, torch.device("cpu"), 2)  # type: ignore[arg-type]
    assert "throttled" not in c.measured and c.detail == ""


def test_training_additivity_without_a_meter_judges_time_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ve, "alexnet", tiny)
    bench = FakeBench(_even(1.02, 1.0), {n: None for n in [*TINY_NAMES, ve.NETWORK]})
    with torch.no_grad():
        c = ve._check_training_additivity(bench, torch.device("cpu"), 2)  # type: ignore[arg-type]
    assert c.status == "PASS" and "j_sum" not in c.measured and c.detail == "time only; no energy: no meter"


def test_validate_energy_training_runs_that_check_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ve, "alexnet", tiny)
    checks: list[str] = []
    for name in ("_check_idle", "_check_repeatability", "_check_additivity", "_check_order"):
        monkeypatch.setattr(ve, name, lambda *a, name=name: checks.append(name))
    result = ve.run_validation(torch.device("cpu"), tmp_path, quick=True, training=True)
    assert checks == [] and [c["name"] for c in result["checks"]] == ["additive, training: AlexNet"]  # type: ignore[union-attr]
    saved = json.loads((tmp_path / "validate-energy-training.json").read_text())
    assert saved["training"] is True and {r["kernel"] for r in saved["records"]} == {*TINY_NAMES, ve.NETWORK}
    text = ve.format_validation(result)
    assert text.startswith("validate-energy --training on cpu") and "additive, training: AlexNet" in text
    assert build_parser().parse_args(["validate-energy", "--training"]).training


def test_alexnet_is_the_thesis_layer_list() -> None:
    layers, x = ve.alexnet(1, torch.device("meta"))
    names = [n for n, _ in layers if n != "flatten"]
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3", "conv4", "relu4",
                     "conv5", "relu5", "pool5", "fc6", "relu6", "fc7", "relu7", "fc8"]
    assert tuple(x.shape) == (1, 3, 224, 224)
