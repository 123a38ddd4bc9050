"""Developer profile of a few memory-bound convolutions (MobileNetV2's pointwise layers, bf16 NHWC):
each implementation built as the bench builds it, timed hot with do_bench, its traffic in TB/s and
its build details printed; with ``--profile`` each is then launched once inside a profiler range,
for Nsight Compute:

    python tools/conv_profile.py [LAYER,...] [IMPL,...]
    ncu --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats --section MemoryWorkloadAnalysis \\
        python tools/conv_profile.py expand24_144_56 triton,cupy,cudnn --profile

Layers: the names of ``LAYERS``; implementations: triton, cupy, cudnn, torch (default the first
three).  Needs a CUDA GPU.  Timings here are hot (L2 warm); the bench's are cold.
"""

from __future__ import annotations

import json
import sys

import torch
import triton.testing

import kernels.cupy  # noqa: F401 - registers the kernels
import kernels.reference  # noqa: F401
import kernels.triton  # noqa: F401
from layerbench.builders import as_built
from layerbench.check.inputs import make_output, make_tensors
from layerbench.dtypes import get_dtype, precision
from layerbench.layers import Conv2d
from layerbench.registry import get

LAYERS = {"expand24_144_56": Conv2d(64, 24, 144, 56, 56, 1, 1),
          "expand32_192_28": Conv2d(64, 32, 192, 28, 28, 1, 1),
          "project144_24_56": Conv2d(64, 144, 24, 56, 56, 1, 1)}


def main(args: list[str]) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("conv_profile needs a CUDA GPU")
    profile = "--profile" in args
    args = [a for a in args if a != "--profile"]
    names = args[0].split(",") if args else list(LAYERS)
    impls = args[1].split(",") if len(args) > 1 else ["triton", "cupy", "cudnn"]
    dtype = get_dtype("bf16")
    for name in names:
        spec = LAYERS[name]
        tensors = make_tensors(spec, dtype, "NHWC", "cuda")
        traffic = spec.min_bytes(dtype.itemsize)
        for impl in impls:
            out = make_output(spec, tensors, "NHWC")
            with precision(dtype):
                built = as_built(get("conv2d", impl).build(spec, dtype, "NHWC", tensors, out))
                ms = triton.testing.do_bench(built.launch, warmup=50, rep=300)
                print(f"{name} {impl:7s} {ms * 1e3:8.1f} us {traffic / ms / 1e9:6.2f} TB/s  "
                      f"{json.dumps(built.details, default=str)[:600]}", flush=True)
                if profile:
                    torch.cuda.synchronize()
                    torch.cuda.profiler.start()
                    built.launch()
                    torch.cuda.synchronize()
                    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
