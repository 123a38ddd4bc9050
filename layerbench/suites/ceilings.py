"""The two ceilings a kernel is judged against, measured on the card at hand (not datasheet values).

* copy bandwidth: a large device-to-device copy, counting bytes read plus bytes written, the best of
  cudaMemcpy (what ``Tensor.copy_`` runs) and a streaming copy kernel (``kernels/triton/copy.py``).  On an H100 cudaMemcpy
  reached only ~2.43 TB/s while elementwise kernels reached ~2.85 TB/s, so a memcpy-only
  ceiling let kernels score over 100 %;
* matrix rate: square matrix products through the vendor library (cuBLAS), per dtype: the fastest
  sample of several sizes timed both hot and cold (``MATMUL_RUNS``).  Products held for a while
  keep the board at its power limit and the clocks drop, so their median depends on how warm the
  card is (an H100, bf16: medians 674-795 TFLOP/s, cuDNN's short convolutions up to 746), while
  their fastest samples, each run after a second's rest, agree within 2 % (797-811): the rate at
  full clocks.  Run straight after the copy ceiling, the 8192^3 products' fastest samples reached
  only 731-733, so each run starts after ``MATMUL_REST_S`` of rest.  Every run's fastest and
  median rate is kept (``matmul_runs``).

The copy is timed in hot mode; all on random data (never zeros: products of zeros run faster than
real data on Hopper).

Beside them, the copy curve: the streaming copy's bandwidth at sizes from 1 MiB to 512 MiB each
way, timed like the bench's kernels (cold: L2 flushed before each sample).  A memory-bound
kernel on a thesis shape moves tens of MB, where launch and ramp-up take a visible share of the
time; the copy of the same bytes shows what is reachable at that size (``copy_gbps_at``).
"""

from __future__ import annotations

import math
import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from kernels.triton.copy import COPY_BLOCK, copy_launcher
from layerbench.dtypes import get_dtype, precision
from layerbench.measure.timing import TimingConfig, time_kernel
from layerbench.run.executors import child_environment

COPY_BYTES = 1 << 30  # 1 GiB each way: far beyond any L2
CURVE_BYTES = tuple(1 << k for k in range(20, 30))  # copy curve: 1 MiB .. 512 MiB each way
# (size, timing mode) of the matrix products whose fastest sample is the matrix ceiling.
MATMUL_RUNS = ((4096, "cold"), (8192, "cold"), (8192, "hot"))
MATMUL_REST_S = 1.0  # idle before each product, so that it starts at full clocks


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float  # GB/s, read + written: the best of copy_methods
    matmul_tflops: dict[str, float]  # dtype name -> TFLOP/s: the fastest sample of matmul_runs
    device_name: str
    copy_methods: dict[str, float] = field(default_factory=dict)  # method -> GB/s
    # bytes moved (read + written, as text for JSON) -> GB/s of the streaming copy, cold
    copy_curve: dict[str, float] = field(default_factory=dict)
    # dtype name -> {"<n> <mode>": {"best": TFLOP/s, "median": TFLOP/s}} of each product in MATMUL_RUNS
    matmul_runs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _copy_buffers(device: torch.device, nbytes: int) -> tuple[torch.Tensor, torch.Tensor, Callable[[], object]]:
    """Source, destination and the Triton copy launcher for ``nbytes`` each way."""
    if nbytes <= 0 or (nbytes // 4) % COPY_BLOCK or nbytes % 4:
        raise ValueError(f"nbytes must be a positive multiple of {4 * COPY_BLOCK}, got {nbytes}")
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.full_like(src, math.nan)  # poisoned: the copy is checked after timing
    return src, dst, copy_launcher(src, dst)


def _checked(src: torch.Tensor, dst: torch.Tensor) -> None:
    if not torch.equal(dst, src):  # the kernel copy is checked, not trusted
        raise RuntimeError("the copy kernel produced a wrong copy; no ceiling measured")


def copy_bandwidths(device: torch.device, nbytes: int = COPY_BYTES,
                    cfg: TimingConfig | None = None) -> dict[str, float]:
    """GB/s (read + written) of a device-to-device copy of ``nbytes`` by each method."""
    src, dst, triton_copy = _copy_buffers(device, nbytes)
    methods: dict[str, Callable[[], object]] = {"cudaMemcpy": lambda: dst.copy_(src),
                                                "triton-copy": triton_copy}
    out = {}
    for name, fn in methods.items():
        dst.fill_(math.nan)
        stats = time_kernel(fn, device, cfg or TimingConfig(mode="hot"))
        _checked(src, dst)
        out[name] = 2 * nbytes / stats.median_s / 1e9
    return out


def copy_curve(device: torch.device, sizes: tuple[int, ...] = CURVE_BYTES,
               cfg: TimingConfig | None = None) -> dict[str, float]:
    """Bytes moved (read + written) -> GB/s of the Triton copy of ``size`` bytes each way, cold."""
    out = {}
    for nbytes in sizes:
        src, dst, fn = _copy_buffers(device, nbytes)
        stats = time_kernel(fn, device, cfg or TimingConfig(mode="cold", min_time_s=0.1, max_time_s=2.0))
        _checked(src, dst)
        out[str(2 * nbytes)] = 2 * nbytes / stats.median_s / 1e9
    return out


def copy_gbps_at(curve: dict[str, float], nbytes: float) -> float:
    """The copy curve at ``nbytes`` moved: linear in log(size) between measured sizes, flat beyond.

    NaN when the curve is empty (ceilings measured before the curve existed).
    """
    if not curve:
        return math.nan
    points = sorted((float(k), v) for k, v in curve.items())
    sizes = np.log([p[0] for p in points])
    return float(np.interp(math.log(max(nbytes, 1.0)), sizes, [p[1] for p in points]))


def matmul_rate(device: torch.device, dtype: str, n: int, cfg: TimingConfig) -> dict[str, float]:
    """TFLOP/s of an n x n x n product in ``dtype`` (fp32 true fp32, tf32 on tensor cores): its
    fastest sample's (``best``) and the median's."""
    dt = get_dtype(dtype)
    a = torch.randn(n, n, device=device).to(dt.torch_dtype)
    b = torch.randn(n, n, device=device).to(dt.torch_dtype)
    c = torch.empty(n, n, device=device, dtype=dt.torch_dtype)
    with precision(dt):
        stats = time_kernel(lambda: torch.mm(a, b, out=c), device, cfg)
    return {"best": 2 * n**3 / stats.min_s / 1e12, "median": 2 * n**3 / stats.median_s / 1e12}


def matmul_rates(device: torch.device, dtype: str,
                 runs: tuple[tuple[int, str], ...] = MATMUL_RUNS) -> dict[str, dict[str, float]]:
    """``"<n> <mode>"`` -> ``matmul_rate`` of each (size, timing mode) in ``runs``."""
    timing = {"hot": TimingConfig(mode="hot"), "cold": TimingConfig(mode="cold", min_time_s=0.1, max_time_s=2.0)}
    rates = {}
    for n, mode in runs:
        time.sleep(MATMUL_REST_S)
        rates[f"{n} {mode}"] = matmul_rate(device, dtype, n, timing[mode])
    return rates


def measure(device: torch.device, dtypes: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")) -> Ceilings:
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"ceilings are measured on a CUDA device, got {device}")
    copies = copy_bandwidths(device)
    runs = {d: matmul_rates(device, d) for d in dtypes}
    return Ceilings(copy_gbps=max(copies.values()), copy_methods=copies, copy_curve=copy_curve(device),
                    matmul_tflops={d: max(r["best"] for r in rs.values()) for d, rs in runs.items()},
                    matmul_runs=runs,
                    device_name=torch.cuda.get_device_name(device))


def _measured(device: str) -> dict[str, object]:
    return measure(torch.device(device)).to_dict()


def measure_apart(device: str, visible: str | None = None) -> dict[str, object]:
    """``measure`` in a child process that ends before the bench's sets run, so that the process
    running the bench holds no CUDA context on a GPU its workers measure (NVML would list it beside
    them during every energy window).  ``visible``: the child's ``CUDA_VISIBLE_DEVICES`` entry."""
    ctx = multiprocessing.get_context("spawn")
    with child_environment({"CUDA_VISIBLE_DEVICES": visible} if visible is not None else None):
        pool = ctx.Pool(1)  # spawned here, so it starts with that environment
    with pool:
        return pool.apply(_measured, (device,))
