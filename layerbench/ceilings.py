"""The two ceilings a kernel is judged against, measured on the card at hand (not datasheet values).

* copy bandwidth: a large device-to-device copy, counting bytes read plus bytes written;
* matrix rate: a large square matrix product through the vendor library (cuBLAS), per dtype.

Both are timed with ``layerbench.timing`` in hot mode, on random data (never zeros: products of
zeros run faster than real data on Hopper).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from layerbench.dtypes import get_dtype, precision
from layerbench.timing import TimingConfig, time_kernel

COPY_BYTES = 1 << 30  # 1 GiB each way: far beyond any L2
MATMUL_N = 8192


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float  # GB/s, read + written
    matmul_tflops: dict[str, float]  # dtype name -> TFLOP/s
    device_name: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def copy_bandwidth(device: torch.device, nbytes: int = COPY_BYTES, cfg: TimingConfig | None = None) -> float:
    """GB/s of a device-to-device copy of ``nbytes``, counting bytes read plus bytes written."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    stats = time_kernel(lambda: dst.copy_(src), device, cfg or TimingConfig(mode="hot"))
    return 2 * nbytes / stats.median_s / 1e9


def matmul_rate(device: torch.device, dtype: str, n: int = MATMUL_N, cfg: TimingConfig | None = None) -> float:
    """TFLOP/s of an n x n x n product in ``dtype`` (fp32 true fp32, tf32 on tensor cores)."""
    dt = get_dtype(dtype)
    a = torch.randn(n, n, device=device).to(dt.torch_dtype)
    b = torch.randn(n, n, device=device).to(dt.torch_dtype)
    c = torch.empty(n, n, device=device, dtype=dt.torch_dtype)
    with precision(dt):
        stats = time_kernel(lambda: torch.mm(a, b, out=c), device, cfg or TimingConfig(mode="hot"))
    return 2 * n**3 / stats.median_s / 1e12


def measure(device: torch.device, dtypes: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")) -> Ceilings:
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"ceilings are measured on a CUDA device, got {device}")
    return Ceilings(copy_gbps=copy_bandwidth(device),
                    matmul_tflops={d: matmul_rate(device, d) for d in dtypes},
                    device_name=torch.cuda.get_device_name(device))
