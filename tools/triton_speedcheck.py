"""Developer speed check: the Triton kernels beside torch (cuDNN/cuBLAS/ATen) on the thesis shapes.

    python tools/triton_speedcheck.py [conv2d|linear|pool2d|relu ...]

Prints hot-loop times from triton.testing.do_bench (not the harness's cold, energy-aware
measurement: use ``layerbench run`` for results) with TFLOP/s for conv/linear and TB/s of
minimum traffic for pooling/ReLU.  Needs a CUDA GPU and layerbench installed (``pip install -e .``).
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
import torch.nn.functional as F
import triton.testing

import kernels.triton  # noqa: F401 - registers the kernels
from layerbench.dtypes import get_dtype, precision
from layerbench.builders import Tensors
from layerbench.registry import get
from layerbench.layers import Conv2d, LayerSpec, Linear, Pool2d, ReLU
from layerbench.testing import make_output, make_tensors

CASES: list[LayerSpec] = [
    Conv2d(128, 3, 96, 128, 128, 11, 11), Conv2d(128, 64, 128, 64, 64, 9, 9),
    Conv2d(128, 384, 384, 13, 13, 3, 3), Conv2d(128, 192, 192, 27, 27, 5, 5),
    Linear(128, 9216, 4096), Linear(128, 4096, 4096), Linear(128, 4096, 1000),
    Pool2d(128, 64, 55, 55, 3, 2), Pool2d(128, 192, 27, 27, 3, 2, method="avg"),
    Pool2d(128, 256, 13, 13, 2, 2), ReLU(128, 96, 55, 55),
]


def _torch_op(spec: LayerSpec, t: Tensors) -> Callable[[], torch.Tensor]:
    x = t["x"]
    if isinstance(spec, Conv2d):
        return lambda: F.conv2d(x, t["weight"], t.get("bias"), spec.stride, spec.padding)
    if isinstance(spec, Linear):
        return lambda: F.linear(x, t["weight"], t.get("bias"))
    if isinstance(spec, ReLU):
        return lambda: torch.relu(x)
    if spec.method == "max":
        return lambda: F.max_pool2d(x, spec.kernel, spec.stride, spec.padding)
    return lambda: F.avg_pool2d(x, spec.kernel, spec.stride, spec.padding)


def main(layers: list[str]) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("speedcheck needs a CUDA GPU")
    for spec in CASES:
        if layers and spec.layer not in layers:
            continue
        compute_bound = isinstance(spec, (Conv2d, Linear))
        for name in spec.dtypes:
            dtype = get_dtype(name)
            for layout in spec.layouts:
                tensors = make_tensors(spec, dtype, layout, "cuda")
                out = make_output(spec, tensors)
                with precision(dtype):
                    kernel = get(spec.layer, "triton").build(spec, dtype, layout, tensors, out)
                    ours = triton.testing.do_bench(kernel, warmup=25, rep=200)
                    theirs = triton.testing.do_bench(_torch_op(spec, tensors), warmup=25, rep=200)
                if compute_bound:
                    rate = f"{spec.flops / ours / 1e9:7.1f} TFLOP/s"
                else:
                    rate = f"{spec.min_bytes(dtype.itemsize) / ours / 1e9:7.2f} TB/s"
                print(f"{spec.layer:7s} {name:5s} {layout}  triton {ours:8.3f} ms  torch {theirs:8.3f} ms"
                      f"  torch/triton {theirs / ours:5.2f}  {rate}  {spec}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
