"""Which GPU kernels an implementation really launched, and which library they belong to.

``kernel_names`` runs a kernel under ``torch.profiler`` and returns the names of the GPU kernels
it launched, so every result can say which library ran: an implementation is named cudnn only
when it provably runs cuDNN.  ``library`` sorts a name into a library by the first rule of
``LIBRARY_RULES`` whose substring it contains (case-insensitive):

* ``cudnn``: "cudnn" (the ``cudnn::`` namespace, and the ``..._cudnn`` suffix of cuDNN's xmma and
  cutlass kernels), "convolve" (cuDNN's SIMT conv kernels: ``implicit_convolve_sgemm``,
  ``explicit_convolve_sgemm``, ``precomputed_convolve_sgemm``), "xmma_fprop" (cuDNN's implicit-GEMM
  convolutions, which its graph API's engines launch without the ``_cudnn`` suffix);
* ``cublas``: "cublas" (namespace, template arguments or suffix), "nvjet" (cuBLASLt's Hopper
  kernels), "xmma_gemm", "sgemm", "gemv", "cutlass" (cuBLAS's cutlass kernels; cuDNN's carry
  "cudnn" and matched first);
* ``aten``: "at::" (PyTorch's own CUDA kernels live in ``at::native``);
* ``triton``: "triton_" (kernels that torch.compile's Inductor generates).

GEMM kernels that both libraries launch: cuDNN's graph API runs convolutions that are GEMMs (1x1
filters, for one) with cuBLASLt's kernels, called from inside cuDNN (cuDNN 9 runs such engines
through libcublasLt; on an H200,
``nvjet_sm90_tst_128x192_64x5_2x1_v_bz_coopB_bias_TNN`` and
``sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_...`` with no "cudnn" in the name; a split-K GEMM adds
``cublasLt::splitKreduce_kernel``).  A name with one of ``SHARED_GEMM`` ("nvjet", "xmma_gemm",
"sgemm", "gemv", "cutlass", "splitkreduce") belongs therefore to ``own_backend`` where that is "cudnn"
or "cublas" (the implementation called that library and nothing else), and to ``cublas`` for any
other owner.

Any other name is attributed to ``own_backend`` when given (our Triton and CuPy kernels have
names of their own choosing, so an implementation's unknown names are its own), else "unknown".
Our kernels should therefore not be named with the substrings above.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

LIBRARY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cudnn", ("cudnn", "convolve", "xmma_fprop")),
    ("cublas", ("cublas", "nvjet", "xmma_gemm", "sgemm", "gemv", "cutlass")),
    ("aten", ("at::",)),
    ("triton", ("triton_",)),
)

# cuBLASLt's kernels, launched by cuBLAS and by cuDNN's graph engines alike; and who may own them.
SHARED_GEMM = ("nvjet", "xmma_gemm", "sgemm", "gemv", "cutlass", "splitkreduce")
SHARED_OWNERS = ("cudnn", "cublas")

# Device activity that is not a kernel launch.
_NOT_KERNELS = ("memcpy", "memset")


def kernel_names(kernel: Callable[[], object], device: torch.device | str) -> list[str]:
    """Distinct names of the GPU kernels one call of ``kernel`` launched, in first-launch order.

    One warm-up call runs first, so JIT compilation, autotuning and cuDNN's algorithm search stay
    out of the trace.  Memory copies and sets are left out.  On a CPU device there are no GPU
    kernels and the result is ``[]``.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return []
    kernel()
    torch.cuda.synchronize(device)
    # acc_events: one profile per call anyway; without it torch warns on every second cycle.
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], acc_events=True) as prof:
        kernel()
        torch.cuda.synchronize(device)
    names = [e.name for e in prof.events()
             if e.device_type == DeviceType.CUDA and not e.name.lower().startswith(_NOT_KERNELS)]
    return list(dict.fromkeys(names))


def library(name: str, own_backend: str | None = None) -> str:
    """The library a GPU kernel name belongs to (see the module docstring for the rules)."""
    lowered = name.lower()
    for lib, needles in LIBRARY_RULES:
        if any(n in lowered for n in needles):
            if lib == "cublas" and own_backend in SHARED_OWNERS and any(n in lowered for n in SHARED_GEMM):
                return own_backend
            return lib
    return own_backend or "unknown"


def libraries(names: list[str], own_backend: str | None = None) -> dict[str, list[str]]:
    """Kernel names grouped by library, e.g. ``{"cudnn": [...], "aten": [...]}``."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(library(name, own_backend), []).append(name)
    return groups
