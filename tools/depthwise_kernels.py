"""Developer timing: each depthwise kernel a build times, alone, on MobileNetV2's depthwise layers
(batch 64) and a few held out from the bench.

    python tools/depthwise_kernels.py [NCHW|NHWC] [cupy|triton] [bf16|fp32|fp16 ...]

For each layer and dtype: a copy of the layer's bytes (x read and out written), then every
candidate of the backend's build (CuPy: the direct kernel, the NCHW rows kernel with two and with
four staging buffers, the flat-run kernels in their bands; Triton: the direct kernel, the 2-D row
kernel, the flat-run kernel and, in NCHW, each of its two tilings alone and the word-pair kernel),
hot-loop medians from triton.testing.do_bench in microseconds (not the harness's cold,
energy-aware measurement: use ``layerbench bench`` for results).  The build keeps the fastest; a
candidate that refuses the layer prints its reason.  Needs a CUDA GPU (and CuPy for its backend).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import triton.testing

from kernels.cupy import depthwise
from kernels.triton import depthwise as triton_depthwise, depthwise_pairs, depthwise_rows
from layerbench.dtypes import get_dtype
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d
from layerbench.testing import make_output, make_tensors

# (channels, plane, stride): MobileNetV2's ten depthwise layers, then three the bench does not hold.
LAYERS = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2), (384, 14, 1),
          (576, 14, 1), (576, 14, 2), (960, 7, 1), (240, 40, 1), (72, 33, 2), (48, 150, 1)]


def _us(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3


def _plane_tiling(flat: bool) -> Callable[..., object]:
    """The Triton flat-run build in NCHW with only one tiling's configs: flat (plane, column) pairs
    or planes x a power of two of columns."""
    def build(*args: object) -> object:
        every = depthwise_rows._plane_configs
        depthwise_rows._plane_configs = lambda q: [c for c in every(q) if (c.kwargs["BLOCK_Q"] == 0) == flat]
        try:
            return depthwise_rows.build_depthwise_flat_rows(*args)
        finally:
            depthwise_rows._plane_configs = every
    return build


def _builds(backend: str, spec: Conv2d, dtype: object, layout: str, tensors: dict, out: torch.Tensor) -> list:
    """(name, build returning an object with ``launch``, or a launch) for every candidate."""
    if backend == "cupy":
        return [("depthwise", lambda: depthwise.build(spec, dtype, layout, tensors, out)),
                *depthwise.candidates(spec, dtype, layout, tensors, out)]
    found = [("depthwise", triton_depthwise.build_depthwise), ("depthwise_rows", depthwise_rows.build_depthwise_rows)]
    if layout == "NCHW":
        found += [("flat_pairs", _plane_tiling(True)), ("flat_tiles", _plane_tiling(False)),
                  ("word_pairs", depthwise_pairs.build_depthwise_pairs)]
    else:
        found.append(("depthwise_flat_rows", depthwise_rows.build_depthwise_flat_rows))
    return [(name, lambda build=build: build(spec, dtype, layout, tensors, out)) for name, build in found]


def main(args: list[str]) -> None:
    layout = next((a for a in args if a in ("NCHW", "NHWC")), "NCHW")
    backend = next((a for a in args if a in ("cupy", "triton")), "cupy")
    dtypes = [a for a in args if a not in ("NCHW", "NHWC", "cupy", "triton")] or ["bf16", "fp32"]
    print(f"{torch.cuda.get_device_name()}, {backend}, {layout}, microseconds (do_bench median)")
    for name in dtypes:
        dtype = get_dtype(name)
        for channels, size, stride in LAYERS:
            spec = Conv2d(64, channels, channels, size, size, 3, 3, stride=stride, padding=1, groups=channels)
            tensors = make_tensors(spec, dtype, layout, "cuda")
            out = make_output(spec, tensors, layout)
            src = torch.empty(tensors["x"].numel() + out.numel(), dtype=out.dtype, device="cuda")
            dst, half = torch.empty_like(src), src.numel() // 2  # reads and writes the layer's bytes
            line = [f"copy {_us(lambda: dst[:half].copy_(src[:half])):7.1f}"]
            for candidate, build in _builds(backend, spec, dtype, layout, tensors, out):
                try:
                    built = build()
                    line.append(f"{candidate} {_us(getattr(built, 'launch', built)):7.1f}")
                except Unsupported as why:
                    line.append(f"{candidate}: {why}")
            print(f"{name} dw{channels}/{stride} @{size}: " + "  ".join(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
