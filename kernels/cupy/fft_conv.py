"""Build and launch the FFT convolution of fft_conv.cu: input and weight spectra (the weight's
straight from its taps where the window is small), their per-frequency product, the inverse
transform with crop and bias, in one timed call; planes larger than the largest transform as
overlap-save tiles (``fft_plan``), each tile one more image to the product."""

from __future__ import annotations

import torch

from kernels.cupy import sources, support
from kernels.cupy.fft_plan import (BT, FT, GEMM_SHARED_BYTES, GEMM_THREADS, KT, WEIGHT_THREADS, FftPlan,
                                    planes_per_block, transform_shared_bytes, transform_threads,
                                    weight_planes_per_block, weight_shared_bytes)
from layerbench.builders import Kernel, in_order


def build(plan: FftPlan, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          out: torch.Tensor, index: int) -> Kernel:
    """fp32 tensors of any strides on device ``index``; the spectra are allocated here."""
    s = plan.spec
    smem = transform_shared_bytes(plan.n)
    forward = support.function("fft_conv", sources.fft_forward_name(plan.log_n), index)
    inverse = support.function("fft_conv", sources.fft_inverse_name(plan.log_n), index)
    gemm = support.function("fft_conv", sources.FFT_CGEMM_NAME, index)
    for fn in (forward, inverse):
        support.allow_shared(fn, smem, index)
    support.allow_shared(gemm, GEMM_SHARED_BYTES, index)
    xs, ws, ys = (torch.empty(n // 4, dtype=torch.float32, device=x.device) for n in plan.spectra_bytes())
    i32, i64, ptr = support.i32, support.i64, support.ptr
    block = (transform_threads(plan.n), 1, 1)

    def grid(planes: int) -> tuple[int, int, int]:
        return -(-planes // planes_per_block(plan.n)), 1, 1

    def transform(src: torch.Tensor, dst: torch.Tensor, pad: int, tiles: tuple[int, int, int]) -> support.Launch:
        """Every (image, tile, channel) plane of ``src``; ``tiles``: (count, a row, step)."""
        outer, inner, rows, cols = src.stride()
        planes = src.shape[0] * tiles[0] * src.shape[1]
        return support.Launch(forward, grid(planes), block,
                              [ptr(src), ptr(dst), i32(planes), i32(src.shape[1]), i64(outer),
                               i64(inner), i64(rows), i64(cols), i32(src.shape[2]), i32(src.shape[3]),
                               i32(pad), *(i32(v) for v in tiles)],
                              index, keep=(src, dst), shared_bytes=smem)

    def weight_spectra() -> support.Launch:
        """The weight's spectra: from its taps (fft_weight) where the window is small, else as a plane."""
        if not plan.pruned_weight:
            return transform(weight, ws, 0, (1, 1, plan.n))
        fn = support.function("fft_conv", sources.fft_weight_name(plan.log_n), index)
        nbytes = weight_shared_bytes(plan.n, s.kernel_h)
        support.allow_shared(fn, nbytes, index)
        planes, per_block = s.out_channels * s.in_channels, weight_planes_per_block(plan.n)
        outer, inner, rows, cols = weight.stride()
        return support.Launch(fn, (-(-planes // per_block), 1, 1), (WEIGHT_THREADS, 1, 1),
                              [ptr(weight), ptr(ws), i32(planes), i32(per_block), i32(s.in_channels), i64(outer),
                               i64(inner), i64(rows), i64(cols), i32(s.kernel_h), i32(s.kernel_w)],
                              index, keep=(weight, ws), shared_bytes=nbytes)

    tiles = (plan.tiles, plan.tiles_w, plan.step)

    on, oc, oh, ow = out.stride()
    return in_order(
        transform(x, xs, s.padding, tiles),
        weight_spectra(),
        support.Launch(gemm, (-(-s.out_channels // KT), -(-plan.images // BT), plan.freqs // FT),
                       (GEMM_THREADS, 1, 1),
                       [ptr(xs), ptr(ws), ptr(ys), i32(plan.images), i32(s.in_channels),
                        i32(s.out_channels), i32(plan.freqs)],
                       index, keep=(xs, ws, ys), shared_bytes=GEMM_SHARED_BYTES),
        support.Launch(inverse, grid(plan.images * s.out_channels), block,
                       [ptr(ys), ptr(out), ptr(bias), i32(plan.images * s.out_channels),
                        i32(s.out_channels), i64(on), i64(oc),
                        i64(oh), i64(ow), i32(s.out_height), i32(s.out_width), *(i32(v) for v in tiles)],
                       index, keep=(ys, out, bias), shared_bytes=smem))
