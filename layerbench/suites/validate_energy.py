"""``layerbench validate-energy``: does the meter give numbers a power-measurement expert can trust?

Four checks, each printing what it measured, its threshold and PASS/FAIL (SKIP where the machine
has no energy meter):

(c) idle:        right after the idle baseline, an idle window measured like a kernel's window
                 reads as idle power: |mean power - baseline| <= 5 % of the baseline.
(a) repeatable:  the same point measured in two separate trials (each with its cooldown) agrees
                 within 3 % J/launch for a kernel >= 50 us (a big conv) and within 10 % for one
                 >= 5 us (a small ReLU), hot mode.
(b) additive:    thesis Table 5-1 — AlexNet forward, batch 128, split into its layers (conv1-5,
                 the ReLU after each conv and after fc6/fc7, pool1/2/5, fc6-8), each measured alone
                 on inputs of its size; the sum of their time and of their energy matches the whole
                 network run as one torch model (eval, no_grad) within 5 %.
(d) order-free:  two implementations of one conv point (cuDNN's F.conv2d and an unfold+matmul
                 im2col) interleaved A B A B and B A B A give the same energy ratio within 3 %.

(c) runs first, while the card is at its idle state; the idle baseline is re-measured at the end
to show how far idle drifted after load (reported, not checked).  Everything runs in true fp32
(TF32 off).  Sized to finish in about four minutes on an H100.

``--training`` runs one check instead, (b) in training mode, as the thesis measured Table 5-1:

(t) additive, training: one AlexNet training iteration, batch 128 (the forward and backward of every
                 layer, no optimizer step), split into the training pass of each layer of (b) (its
                 forward, then the gradients of its input and of its parameters for a fixed upstream
                 gradient, as the torch implementation's ``training`` pass runs it), each measured
                 alone on tensors of its size; the sums of their time and energy match the whole
                 iteration run as one torch model with autograd (forward, then ``autograd.grad`` of
                 the input and every parameter for a fixed upstream gradient) within 5 %.  The
                 network's input takes a gradient too, so that conv1 runs the same passes in both.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from layerbench.dtypes import get_dtype, precision
from layerbench.measure.energy import EnergyConfig, EnergyMeter, EnergyStats, pairwise_ratios
from layerbench.measure.environment import collect_environment
from layerbench.measure.timing import TimeStats, TimingConfig, time_kernel

REPEAT_LONG = (50e-6, 0.03)   # kernels >= 50 us: within 3 %
REPEAT_SHORT = (5e-6, 0.10)   # kernels >= 5 us: within 10 %
ADDITIVITY = 0.05
IDLE = 0.05
ORDER = 0.03


@dataclass
class Check:
    name: str
    description: str
    threshold: str
    status: str = "SKIP"                       # PASS | FAIL | SKIP
    measured: dict[str, object] = field(default_factory=dict)
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description, "threshold": self.threshold,
                "status": self.status, "measured": self.measured, "detail": self.detail}


def alexnet(batch: int, device: torch.device) -> tuple[list[tuple[str, nn.Module]], torch.Tensor]:
    """AlexNet's forward layers (torchvision's single-GPU variant; no dropout in eval) and an input."""
    layers = [
        ("conv1", nn.Conv2d(3, 64, 11, stride=4, padding=2)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, stride=2)),
        ("conv2", nn.Conv2d(64, 192, 5, padding=2)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(3, stride=2)),
        ("conv3", nn.Conv2d(192, 384, 3, padding=1)), ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 256, 3, padding=1)), ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(256, 256, 3, padding=1)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, stride=2)),
        ("flatten", nn.Flatten()),  # a view: no kernel, not measured alone
        ("fc6", nn.Linear(256 * 6 * 6, 4096)), ("relu6", nn.ReLU()),
        ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()),
        ("fc8", nn.Linear(4096, 1000)),
    ]
    for _, m in layers:
        m.to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    return layers, x


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else math.inf


class _Bench:
    """Times a kernel and measures its energy, keeping every record for the JSON output."""

    def __init__(self, device: torch.device, tcfg: TimingConfig, meter: EnergyMeter) -> None:
        self.device, self.tcfg, self.meter = device, tcfg, meter
        self.records: list[dict[str, object]] = []

    def time(self, kernels: dict[str, Callable[[], object]]) -> dict[str, TimeStats]:
        out = {}
        for name, k in kernels.items():
            out[name] = time_kernel(k, self.device, self.tcfg)
        return out

    def energy(self, label: str, kernels: dict[str, Callable[[], object]],
               times: dict[str, TimeStats]) -> dict[str, EnergyStats]:
        stats = self.meter.measure(kernels, {n: times[n].median_s for n in kernels})
        for n, s in stats.items():
            rec = {"trial": label, "kernel": n, **times[n].to_record(), **s.to_record()}
            rec.pop("time_samples_s", None)
            self.records.append(rec)
        return stats


def _check_idle(meter: EnergyMeter) -> Check:
    c = Check("idle", "an idle window reads as idle power; energy above idle ~ 0",
              f"|power - idle| <= {IDLE:.0%} of idle")
    if not meter.available:
        c.detail = f"no energy meter: {meter.reason}"
        return c
    w = meter.idle_window()
    if w.get("power_w") is None:
        c.status, c.detail = "FAIL", f"idle window failed: {w.get('reason')}"
        return c
    c.measured = {k: w[k] for k in ("power_w", "idle_power_w", "above_idle_w", "above_idle_j", "seconds")}
    rel = abs(w["above_idle_w"]) / w["idle_power_w"]  # type: ignore[arg-type,operator]
    c.measured["relative"] = rel
    c.status = "PASS" if rel <= IDLE else "FAIL"
    return c


def _check_repeatability(bench: _Bench, device: torch.device, batch: int) -> list[Check]:
    conv = nn.Conv2d(64, 192, 5, padding=2).to(device).eval()
    xc = torch.randn(batch, 64, 27, 27, device=device)
    xr = torch.randn(4 * 1024 * 1024 if device.type == "cuda" else 256 * 1024, device=device)
    kernels: dict[str, Callable[[], object]] = {"conv2 (AlexNet)": lambda: conv(xc), "relu 4M": lambda: F.relu(xr)}
    times = bench.time(kernels)
    checks = []
    for name, k in kernels.items():
        t = times[name].median_s
        limit = REPEAT_LONG[1] if t >= REPEAT_LONG[0] else REPEAT_SHORT[1] if t >= REPEAT_SHORT[0] else None
        c = Check(f"repeatable: {name}", "the same point measured in two trials agrees",
                  f"<= {limit:.0%} J/launch" if limit else "kernel < 5 us: no threshold")
        first = bench.energy(f"repeat-1 {name}", {name: k}, times)[name]
        second = bench.energy(f"repeat-2 {name}", {name: k}, times)[name]
        c.measured = {"time_s": t, "j_first": first.j_per_launch, "j_second": second.j_per_launch,
                      "spread_first": first.spread, "spread_second": second.spread,
                      "flags": sorted(set(first.flags) | set(second.flags))}
        if first.j_per_launch is None or second.j_per_launch is None:
            c.detail = f"no energy: {first.reason or second.reason}"
        elif limit is not None:
            rel = _rel(second.j_per_launch, first.j_per_launch)
            c.measured["relative"] = rel
            c.status = "PASS" if rel <= limit else "FAIL"
        checks.append(c)
    return checks


NETWORK = "network"  # the whole model's kernel among the layers' (see forward_kernels)


def forward_kernels(layers: list[tuple[str, nn.Module]], x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Each layer's forward on fresh inputs of its size (views such as flatten left out), then the
    whole network's forward as ``NETWORK``."""
    model = nn.Sequential(*(m for _, m in layers)).eval()
    kernels: dict[str, Callable[[], object]] = {}
    h = x
    for name, m in layers:
        if name != "flatten":
            inp = torch.randn_like(h)  # the layer's input size, fresh values
            kernels[name] = (lambda m=m, inp=inp: m(inp))
        h = m(h)
    kernels[NETWORK] = lambda: model(x)
    return kernels


def training_pass(module: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], object]:
    """One training iteration of ``module`` without the optimizer step: its forward, then autograd's
    gradients of the input and of every parameter for the fixed upstream gradient ``dy``."""
    leaves = [x.detach().requires_grad_(True), *module.parameters()]

    def kernel() -> object:
        with torch.enable_grad():
            return torch.autograd.grad(module(leaves[0]), leaves, dy)

    return kernel


def training_kernels(layers: list[tuple[str, nn.Module]], x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Each layer's training pass on fresh tensors of its size (views such as flatten left out), then
    the whole network's training iteration as ``NETWORK``."""
    kernels: dict[str, Callable[[], object]] = {}
    h = x
    with torch.no_grad():
        for name, m in layers:
            y = m(h)
            if name != "flatten":
                kernels[name] = training_pass(m, torch.randn_like(h), torch.randn_like(y))
            h = y
    model = nn.Sequential(*(m for _, m in layers))
    kernels[NETWORK] = training_pass(model, x, torch.randn_like(h))
    return kernels


def _check_additivity(bench: _Bench, device: torch.device, batch: int) -> Check:
    layers, x = alexnet(batch, device)
    kernels = forward_kernels(layers, x)
    c = Check("additive: AlexNet", f"sum of {len(kernels) - 1} layers measured alone vs the whole network "
              f"(batch {batch}, thesis Table 5-1)", f"time and energy within {ADDITIVITY:.0%}")
    return _additivity(bench, c, kernels, "alexnet")


def _check_training_additivity(bench: _Bench, device: torch.device, batch: int) -> Check:
    layers, x = alexnet(batch, device)
    kernels = training_kernels(layers, x)
    c = Check("additive, training: AlexNet", f"sum of the training passes of {len(kernels) - 1} layers "
              f"measured alone vs one training iteration of the whole network (batch {batch}, thesis "
              "Table 5-1 in training mode)", f"time and energy within {ADDITIVITY:.0%}")
    return _additivity(bench, c, kernels, "alexnet training")


def _additivity(bench: _Bench, c: Check, kernels: dict[str, Callable[[], object]], trial: str) -> Check:
    """Time and energy of the layers' kernels summed against ``NETWORK``'s, each within ADDITIVITY."""
    times = bench.time(kernels)
    t_sum = sum(times[n].median_s for n in kernels if n != NETWORK)
    t_net = times[NETWORK].median_s
    c.measured = {"time_sum_s": t_sum, "time_network_s": t_net, "time_relative": _rel(t_sum, t_net)}
    ok = c.measured["time_relative"] <= ADDITIVITY  # type: ignore[operator]
    stats = bench.energy(trial, kernels, times)
    if all(s.j_per_launch is not None for s in stats.values()):
        e_sum = sum(s.j_per_launch for n, s in stats.items() if n != NETWORK)  # type: ignore[misc]
        e_net = stats[NETWORK].j_per_launch
        c.measured.update(j_sum=e_sum, j_network=e_net, j_relative=_rel(e_sum, e_net),  # type: ignore[arg-type]
                          per_layer_j={n: s.j_per_launch for n, s in stats.items()},
                          per_layer_s={n: times[n].median_s for n in kernels})
        ok = ok and c.measured["j_relative"] <= ADDITIVITY  # type: ignore[operator]
        # A layer that meets the power (or thermal) cap alone in its loop runs at lower clocks
        # and draws otherwise than between the other layers of the network: name such windows.
        throttled = [n for n, s in stats.items() if s.throttled]
        if throttled:
            c.measured["throttled"] = throttled
            c.detail = (f"throttled in their windows (power or thermal cap): {', '.join(throttled)}; a "
                        "kernel held at the cap alone draws otherwise than inside the network")
    else:
        c.detail = f"time only; no energy: {next(s.reason for s in stats.values() if s.j_per_launch is None)}"
    c.status = "PASS" if ok else "FAIL"
    return c


def _im2col_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    k, p = conv.kernel_size[0], conv.padding[0]
    cols = F.unfold(x, k, padding=p)                                   # (N, C*k*k, L)
    out = conv.weight.view(conv.out_channels, -1) @ cols               # (N, O, L)
    out += conv.bias.view(1, -1, 1)
    return out.view(n, conv.out_channels, h + 2 * p - k + 1, w + 2 * p - k + 1)


def _check_order(bench: _Bench, device: torch.device, batch: int) -> Check:
    conv = nn.Conv2d(192, 384, 3, padding=1).to(device).eval()
    x = torch.randn(batch, 192, 13, 13, device=device)
    kernels: dict[str, Callable[[], object]] = {"cudnn": lambda: conv(x), "im2col": lambda: _im2col_conv(conv, x)}
    c = Check("order-free: conv3 cudnn vs im2col", "interleaved A B A B and B A B A give one energy ratio",
              f"ratios within {ORDER:.0%}")
    times = bench.time(kernels)
    ab = bench.energy("order A-first", kernels, times)
    ba = bench.energy("order B-first", dict(reversed(list(kernels.items()))), times)
    r1, r2 = pairwise_ratios(ab["cudnn"], ab["im2col"]), pairwise_ratios(ba["cudnn"], ba["im2col"])
    c.measured = {"ratio_a_first": r1["ratio"], "ratio_b_first": r2["ratio"],
                  "spread_a_first": r1["spread"], "spread_b_first": r2["spread"],
                  "time_cudnn_s": times["cudnn"].median_s, "time_im2col_s": times["im2col"].median_s}
    if math.isnan(r1["ratio"]) or math.isnan(r2["ratio"]):
        c.detail = f"no energy: {ab['cudnn'].reason}"
        return c
    rel = _rel(r2["ratio"], r1["ratio"])
    c.measured["relative"] = rel
    c.status = "PASS" if rel <= ORDER else "FAIL"
    return c


def run_validation(device: torch.device, out_dir: str | Path, quick: bool = False,
                   training: bool = False) -> dict[str, object]:
    """Run the four checks, or with ``training`` the training-mode additivity check alone; write
    ``validate-energy.json`` (``validate-energy-training.json``) under ``out_dir``; return the result."""
    device = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # Windows stay at the energy method's minimum (>= 1 s and >= 10 counter updates, 3 of them); only the
    # warm-up, the cooldown cap and the timing budget shrink to fit the run into ~4 minutes.
    ecfg = EnergyConfig(warmup_s=0.3 if quick else 0.4, cooldown="auto",
                        cooldown_max_s=4.0 if quick else 8.0)
    tcfg = TimingConfig(mode="hot", min_time_s=0.2 if quick else 0.3, max_time_s=2.0 if quick else 4.0)
    if device.type == "cpu":  # a smoke run: the real checks need a GPU's counter
        ecfg = replace(ecfg, window_s=0.2, min_updates=1, cooldown="none", idle_s=0.2, warmup_s=0.05)
        tcfg = replace(tcfg, min_time_s=0.02, max_time_s=0.5, min_samples=3)
    batch = 128 if device.type == "cuda" else 2
    meter = EnergyMeter(device, ecfg)
    bench = _Bench(device, tcfg, meter)
    checks: list[Check] = []
    with torch.no_grad(), precision(get_dtype("fp32")):
        idle_before = dict(meter.idle_baseline())
        if training:
            checks.append(_check_training_additivity(bench, device, batch))
        else:
            checks.append(_check_idle(meter))
            checks.extend(_check_repeatability(bench, device, batch))
            checks.append(_check_additivity(bench, device, batch))
            checks.append(_check_order(bench, device, batch))
        idle_after = dict(meter.idle_baseline(refresh=True)) if meter.available and not quick else None
    result: dict[str, object] = {
        "device": str(device), "quick": quick, "training": training,
        "energy_method": meter.method, "energy_reason": meter.reason,
        "idle_before": idle_before, "idle_after": idle_after,
        "checks": [c.to_dict() for c in checks],
        "passed": all(c.status == "PASS" for c in checks),
        "elapsed_s": time.monotonic() - t0,
        "energy_config": ecfg.__dict__, "timing_config": tcfg.__dict__,
        "environment": collect_environment(device),
        "records": bench.records,
    }
    name = "validate-energy-training.json" if training else "validate-energy.json"
    (out / name).write_text(json.dumps(result, indent=1, default=str))
    return result


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def format_validation(result: dict[str, object]) -> str:
    """A plain-text table: check, measured values, threshold, PASS/FAIL/SKIP."""
    mode = " --training" if result.get("training") else ""
    lines = [f"validate-energy{mode} on {result['device']} — method {result['energy_method']}"
             + (f" ({result['energy_reason']})" if result.get("energy_reason") else "")]
    idle = result.get("idle_before") or {}
    if isinstance(idle, dict) and idle.get("power_w") is not None:
        lines.append(f"idle baseline: {idle['power_w']:.1f} W at {idle.get('temp_c')} C, {idle.get('measured_at')}")
        after = result.get("idle_after")
        if isinstance(after, dict) and after.get("power_w") is not None:
            lines.append(f"idle after the checks: {after['power_w']:.1f} W at {after.get('temp_c')} C")
    rows = [("check", "measured", "threshold", "result")]
    for c in result["checks"]:  # type: ignore[union-attr]
        measured = {k: v for k, v in c["measured"].items() if k not in ("per_layer_j", "per_layer_s")}
        rows.append((c["name"], _fmt(measured) + (f" — {c['detail']}" if c["detail"] else ""),
                     c["threshold"], c["status"]))
    widths = [max(len(r[i]) for r in rows) for i in (0, 2, 3)]
    for name, measured, threshold, status in rows:
        lines.append(f"{name:<{widths[0]}}  {status:<{widths[2]}}  {threshold:<{widths[1]}}  {measured}")
    for c in result["checks"]:  # type: ignore[union-attr]
        per = c["measured"].get("per_layer_j")
        if per:
            lines.append("per layer (s, J/launch): " + ", ".join(
                f"{n} {c['measured']['per_layer_s'][n]:.3g} s {j:.3g} J" for n, j in per.items()))
    lines.append(f"{'ALL PASS' if result['passed'] else 'NOT ALL PASS'} in {result['elapsed_s']:.0f} s")
    return "\n".join(lines)
