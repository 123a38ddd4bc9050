"""GPU time of each stage of the CuPy FFT convolution (forward transforms, weight spectra, product,
inverse) on one or more conv points, from the PyTorch profiler's kernel records.

    python tools/fft_stage_times.py [--layout NCHW] [--launches 5] B,C,K,H,W,R,S[,PAD] ...

Without points: 224 x 224 (tiled), 128 x 128 and 64 x 64 planes, 96 -> 96 channels, batch 128.
It times the stages, not the convolution: the harness's timer gives the point's time.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from kernels.cupy import conv2d as cupy_conv2d
from kernels.cupy.fft_plan import fft_plan
from layerbench.dtypes import get_dtype
from layerbench.layers import Conv2d
from layerbench.testing import make_output, make_tensors

DEFAULT_POINTS = ["128,96,96,224,224,3,3", "128,96,96,128,128,3,3", "128,96,96,64,64,5,5"]


def stage_times(spec: Conv2d, layout: str, launches: int) -> dict[str, float]:
    """Mean GPU milliseconds a convolution spends in each kernel of the FFT path."""
    fp32 = get_dtype("fp32")
    tensors = make_tensors(spec, fp32, layout, "cuda")
    kernel = cupy_conv2d.build_fft(spec, fp32, tensors, make_output(spec, tensors, layout))
    for _ in range(3):
        kernel()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(launches):
            kernel()
        torch.cuda.synchronize()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type.name == "CUDA" and event.self_device_time_total > 0:
            name = event.key.split("(")[0].removeprefix("void ")
            times[name] = times.get(name, 0.0) + event.self_device_time_total / 1e3 / launches
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", nargs="*", default=DEFAULT_POINTS,
                        help="B,C,K,H,W,R,S[,PAD]: batch, channels in and out, plane, window, padding")
    parser.add_argument("--layout", default="NCHW", choices=Conv2d.layouts)
    parser.add_argument("--launches", type=int, default=5)
    args = parser.parse_args()
    for point in args.points:
        values = [int(v) for v in point.split(",")]
        spec = Conv2d(*values[:7], padding=values[7] if len(values) > 7 else 0)
        plan = fft_plan(spec)
        times = stage_times(spec, args.layout, args.launches)
        print(f"{point} {args.layout}: N {plan.n}, tiles {plan.tiles_h} x {plan.tiles_w}, weight from taps "
              f"{plan.pruned_weight}, product {plan.flops / 1e9:.1f} GFLOP, spectra {plan.workspace_bytes / 1e9:.2f} GB")
        for name, ms in sorted(times.items(), key=lambda kv: -kv[1]):
            print(f"  {name:40s} {ms:8.3f} ms")
        print(f"  {'total':40s} {sum(times.values()):8.3f} ms")


if __name__ == "__main__":
    main()
