"""Developer profile of convolutions: each implementation built as the bench builds it, timed hot
with do_bench, its traffic in TB/s and its build details printed; with ``--kernels`` the GPU time
of each kernel one call launches (the PyTorch profiler's records), which says which launch of a
path of several (a layout copy, an unfold, an FFT's transforms) costs it; with ``--profile`` each
is launched once inside a profiler range, for Nsight Compute:

    python tools/conv_profile.py [LAYER ...] [--impls triton,cupy,cudnn] [--dtype bf16] [--layout NHWC] [--kernels]
    ncu --clock-control none --profile-from-start off --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats --section MemoryWorkloadAnalysis \\
        python tools/conv_profile.py expand24_144_56 --impls triton,cupy,cudnn --profile

A LAYER is a name of ``LAYERS`` or ``B,C,K,H,W,R,S[,STRIDE[,PAD]]`` (batch, channels in and out,
plane, window); default: the names of ``LAYERS``.  The layers have no bias, as in the bench's
ResNet-50 and MobileNetV2 sets (a batch norm follows each), unless ``--bias``: cuDNN may add a bias
in a kernel of its own (a 1x1 NCHW layer with a 64 x 512 x 28 x 28 output on an H100: a 96 us
generic tensor kernel beside its 24.5 us GEMM), where ours add it in the GEMM's epilogue.  Needs
a CUDA GPU.  Timings here are hot (L2 warm); the bench's are cold.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
import triton.testing
from torch.profiler import ProfilerActivity, profile

import kernels.cupy  # noqa: F401 - registers the kernels
import kernels.reference  # noqa: F401
import kernels.triton  # noqa: F401
from layerbench.builders import Kernel, as_built
from layerbench.check.inputs import make_output, make_tensors
from layerbench.dtypes import get_dtype, precision
from layerbench.layers import Conv2d
from layerbench.registry import get

LAYERS = {"expand24_144_56": Conv2d(64, 24, 144, 56, 56, 1, 1),
          "expand32_192_28": Conv2d(64, 32, 192, 28, 28, 1, 1),
          "project144_24_56": Conv2d(64, 144, 24, 56, 56, 1, 1)}


def layer(text: str) -> Conv2d:
    """A name of ``LAYERS`` or ``B,C,K,H,W,R,S[,STRIDE[,PAD]]``."""
    if text in LAYERS:
        return LAYERS[text]
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not 7 <= len(values) <= 9:
        raise argparse.ArgumentTypeError(f"layer {text!r}: one of {', '.join(LAYERS)} or B,C,K,H,W,R,S[,STRIDE[,PAD]]")
    return Conv2d(*values[:7], stride=values[7] if len(values) > 7 else 1,
                  padding=values[8] if len(values) > 8 else 0)


def kernel_times(launch: Kernel, calls: int = 5) -> dict[str, float]:
    """Mean GPU microseconds a call spends in each kernel it launches, by kernel name."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            launch()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type.name == "CUDA" and event.self_device_time_total > 0:
            name = event.key.split("(")[0].removeprefix("void ")[:70]
            times[name] = times.get(name, 0.0) + event.self_device_time_total / calls
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layers", nargs="*", type=layer, default=list(LAYERS.values()),
                        help="names of LAYERS or B,C,K,H,W,R,S[,STRIDE[,PAD]]")
    parser.add_argument("--impls", default="triton,cupy,cudnn", help="comma-separated implementations")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--layout", default="NHWC", choices=Conv2d.layouts)
    parser.add_argument("--bias", action="store_true", help="give every layer a bias (default: none)")
    parser.add_argument("--kernels", action="store_true", help="the GPU time of each kernel a call launches")
    parser.add_argument("--profile", action="store_true", help="one launch each inside a profiler range")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("conv_profile needs a CUDA GPU")
    dtype = get_dtype(args.dtype)
    for spec in args.layers:
        spec = dataclasses.replace(spec, bias=args.bias)
        tensors = make_tensors(spec, dtype, args.layout, "cuda")
        traffic = spec.min_bytes(dtype.itemsize)
        label = f"{spec.batch},{spec.in_channels},{spec.out_channels},{spec.height},{spec.width}," \
                f"{spec.kernel_h},{spec.kernel_w},/{spec.stride_h} {args.dtype} {args.layout}"
        for impl in args.impls.split(","):
            out = make_output(spec, tensors, args.layout)
            with precision(dtype):
                built = as_built(get("conv2d", impl).build(spec, dtype, args.layout, tensors, out))
                ms = triton.testing.do_bench(built.launch, warmup=50, rep=300)
                print(f"{label} {impl:7s} {ms * 1e3:8.1f} us {traffic / ms / 1e9:6.2f} TB/s  "
                      f"{json.dumps(built.details, default=str)[:600]}", flush=True)
                if args.kernels:
                    for name, us in sorted(kernel_times(built.launch).items(), key=lambda kv: -kv[1]):
                        print(f"    {us:9.1f} us  {name}")
                if args.profile:
                    torch.cuda.synchronize()
                    torch.cuda.profiler.start()
                    built.launch()
                    torch.cuda.synchronize()
                    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
