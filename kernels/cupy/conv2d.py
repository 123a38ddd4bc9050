"""Convolution launcher: the implicit GEMM of igemm.cu, or for fp32 the FFT convolution of
fft_conv.cu, on NCHW or NHWC tensors; a depthwise convolution (groups == in_channels) runs
depthwise.cu's direct kernels instead (depthwise.py), 3x3 ones at stride 1 or 2 also its
flat-run kernels (NHWC or NCHW), timed beside the direct one and the faster kept.

Every conv field runs: per-axis stride and padding and dilation enter the implicit GEMM's index
math (its k table and its output-pixel origins), groups its grid (one GEMM per group, in the
kernels' grouped instantiation); the FFT convolution runs plain convolutions only.

Algorithm (recorded in ``kernel.details``): where the FFT kernels can run the layer (fp32,
stride 1; padded planes over 128 x 128 as overlap-save tiles) and a first guess from flops and bytes gives them a
chance, both are built and timed on the real buffers and the faster is kept, as cudnnFind does
for cuDNN (which itself runs FFT or Winograd on the thesis's layers in NCHW).  On Hopper, in fp16
and bf16, the implicit GEMM on wgmma (igemm_wgmma.cu) is timed beside the mma.sync one, and a
pointwise (1x1, stride 1, unpadded, one group) NHWC convolution, a plain GEMM, also runs
linear_wgmma.cu's GEMM on views of its tensors; a strided one runs it after copying the pixels on
the stride's grid to a buffer (layout.cu).  A pointwise convolution in fp16 or bf16 also runs as
mma.sync GEMMs on its tensors as they are (pointwise_gemm.cu: one per image in NCHW; in NHWC one,
in small tiles that stream layers of few channels), checked the same way before it competes.  A
convolution of one group also runs conv_tma.cu, whose TMA unit cuts each k tile out of the NHWC
image (conv_tma.py).  An NHWC convolution whose input pixels are narrower than 16 bytes (RGB first
layers) also runs lowered: layout.cu's im2col, then the linear layer's GEMM; in either layout such
a convolution also runs with its input unfolded along the width by the same copy, then conv_tma.cu
on an R x 1 filter (lowered_conv.py, kernels/lowering.py).  A wgmma path competes only after its
output on the layer's own tensors has passed the float64 check.
What the bench measured for each choice is in notes/perf.md.

Implicit GEMM:
fp32 runs on FFMA (no tensor cores); tf32, fp16 and bf16 on tensor cores (mma.sync), all with
fp32 accumulation.  Both layouts run the same kernels through the tensors' strides; NHWC with
a group's channels a multiple of 16 bytes moves the input in 16-byte chunks, anything else
element-wise.  NCHW input with such a channel count is first copied to NHWC, and the weight to OHWI, by
layout.cu inside the timed call (as cuDNN does): the GEMM then takes the 16-byte path and writes
the NCHW output through its strides, where the element-wise NCHW gather would be much slower.
"""

from __future__ import annotations

import torch

from kernels.cupy import (conv_tma, depthwise, depthwise_plan, fft_conv, igemm, igemm_plan, linear_wgmma,
                          pointwise_gemm, sources, support)
from kernels.cupy.layout import channels_last_copy
from kernels.cupy.lowered_conv import build_lowered, build_unfolded
from kernels.cupy.fft_plan import fft_plan
from kernels.lowering import lowered_refusal, unfolded_refusal
from kernels.pointwise_views import (forward_views, nchw_pointwise_refusal, pointwise_refusal, strided_refusal,
                                     subsampled)
from layerbench.builders import (Built, Kernel, Tensors, check_workspace, choice_of, fastest_of, in_order,
                                 selection_ms)
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.registry import register
from layerbench.layers import Conv2d

def build_strided_pointwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """A strided 1x1 NHWC convolution without padding: the input's pixels on the stride's grid
    copied to a dense buffer (layout.cu's subsample_nhwc, inside the timed call), then the wgmma
    GEMM of the stride-1 convolution over them (``pointwise_views.subsampled``)."""
    reason = strided_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    dense = subsampled(spec)
    x = tensors["x"]
    index = support.check_tensors(dtype, {"x": x, "out": out})
    linear_wgmma.check_dtype(dtype)  # before any copy
    linear_wgmma.check_gpu(index)
    row_bytes = spec.in_channels * x.element_size()
    if row_bytes % 16 or x.data_ptr() % 16 or not x.is_contiguous(memory_format=torch.channels_last):
        raise Unsupported(f"the subsampling copy moves 16-byte chunks of dense NHWC pixels: in_channels "
                          f"{spec.in_channels} of {x.element_size()}-byte elements")
    pixels = torch.empty((spec.batch, spec.in_channels, dense.height, dense.width), dtype=x.dtype, device=x.device,
                         memory_format=torch.channels_last)
    chunks = row_bytes // 16
    total = spec.batch * dense.height * dense.width * chunks
    i32 = support.i32
    copy = support.Launch(support.function("layout", sources.SUBSAMPLE_NHWC, index), (-(-total // 256), 1, 1),
                          (256, 1, 1), [support.ptr(x), support.ptr(pixels), support.i64(total), i32(chunks),
                                        i32(dense.height), i32(dense.width), i32(spec.height), i32(spec.width),
                                        i32(spec.stride_h), i32(spec.stride_w)], index, keep=(x, pixels))
    copy()  # the GEMM's build times its variants on the copied pixels
    gemm_spec, views, out_matrix = forward_views(dense, layout, {**tensors, "x": pixels}, out)
    gemm = linear_wgmma.build_wgmma(gemm_spec, dtype, views, out_matrix)
    kernel = in_order(copy, gemm.launch)
    support.check_result(kernel, spec, dtype, tensors, out, "the strided pointwise GEMM")
    return Built(kernel, {"gemm": dict(gemm.details)})


def build_igemm(spec: Conv2d, dtype: DType, tensors: Tensors, out: torch.Tensor, wgmma: bool = False) -> Kernel:
    """The implicit GEMM (after a layout copy where NCHW data has 16-byte channel runs); ``wgmma``:
    its multiply on Hopper's warpgroup MMA (igemm_wgmma.cu) instead of mma.sync."""
    x, weight = tensors["x"], tensors["weight"]
    index = support.check_tensors(dtype, {"x": x, "weight": weight, "out": out})
    ctype = support.ctype_of(dtype)
    copies: list[support.Launch] = []
    if (spec.in_channels // spec.groups) % sources.vector_width(ctype) == 0:
        if x.is_contiguous():
            x, copy_x = channels_last_copy(x, ctype, index)
            copies.append(copy_x)
        if weight.is_contiguous():
            weight, copy_w = channels_last_copy(weight, ctype, index)
            copies.append(copy_w)
    g = igemm.Geometry(
        batch=spec.batch, channels=spec.in_channels, height=spec.height, width=spec.width,
        out_channels=spec.out_channels, out_h=spec.out_height, out_w=spec.out_width,
        kernel_h=spec.kernel_h, kernel_w=spec.kernel_w,
        x_strides=tuple(x.stride()), w_strides=tuple(weight.stride()), out_strides=tuple(out.stride()),
        stride_h=spec.stride_h, stride_w=spec.stride_w, padding_h=spec.padding_h, padding_w=spec.padding_w,
        dilation_h=spec.dilation_h, dilation_w=spec.dilation_w, groups=spec.groups)
    bias = tensors.get("bias") if spec.bias else None
    return in_order(*copies, igemm.build(dtype, x, weight, bias, out, g, wgmma=wgmma))


def build_fft(spec: Conv2d, dtype: DType, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """The FFT convolution; Unsupported, with the reason, where it cannot run ``spec``."""
    if dtype.name != "fp32":
        raise Unsupported(f"the FFT convolution is fp32 only, not {dtype.name}")
    plan = fft_plan(spec)
    x, weight = tensors["x"], tensors["weight"]
    index = support.check_tensors(dtype, {"x": x, "weight": weight, "out": out})
    check_workspace(plan.workspace_bytes, x.device, "the FFT convolution")
    return fft_conv.build(plan, x, weight, tensors.get("bias") if spec.bias else None, out, index)


def _refusal(spec: Conv2d, dtype: str, layout: str) -> str | None:
    """Refuse what the kernels cannot run (declared to the registry, so ``plan`` shows it): grids
    and shared memory past the CUDA limits."""
    if spec.depthwise:
        try:
            depthwise_plan.plan_depthwise(spec, layout, sources.CTYPES[dtype])
        except Unsupported as why:
            return str(why)
        return None
    if spec.groups > igemm_plan.MAX_GRID_Z:
        return f"the CuPy implicit GEMM runs at most {igemm_plan.MAX_GRID_Z} groups, this point has {spec.groups}"
    return None


@register("conv2d", "cupy", backend="cupy", supports=_refusal,
          description="CUDA C (CuPy): implicit GEMM, 128x128 tiles (FFMA for fp32, mma.sync tensor "
                      "cores for tf32/fp16/bf16, split-K when the output is small, one GEMM per group); "
                      "for fp32 an FFT convolution instead where it times faster at build; 1x1 NCHW in "
                      "fp16/bf16 also as one mma.sync GEMM per image; on Hopper in "
                      "fp16/bf16 also on wgmma (and 1x1 NHWC as the wgmma GEMM, strided ones after a copy of the "
                      "pixels they read; and with its k tiles cut from the image by TMA); for inputs of few "
                      "channels an explicit im2col and the linear layer's GEMM, or on Hopper the input "
                      "unfolded along the width into the TMA convolution of an R x 1 filter; the fastest kept; "
                      "depthwise: direct memory-bound kernels (fp32 FMA), in NCHW also one on whole-width "
                      "input rows staged in shared memory (one or three chunks ahead), for 3x3 ones at "
                      "stride 1 or 2 also one on flat runs of output rows, the fastest kept")
def build(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel | Built:
    reason = _refusal(spec, dtype.name, layout)
    if reason:
        raise Unsupported(reason)
    support.check_dtype("conv2d", dtype, spec.dtypes)
    support.check_layout("conv2d", layout, spec.layouts)
    if spec.depthwise:
        direct = depthwise.build(spec, dtype, layout, tensors, out)
        others = depthwise.candidates(spec, dtype, layout, tensors, out)
        if not others:
            return direct
        return fastest_of("depthwise", direct, others,
                          lambda k: selection_ms(k, out.device),
                          after_failure=lambda: torch.cuda.synchronize(out.device),
                          remember=choice_of("cupy depthwise", spec, dtype.name, layout, tensors, out, "cupy"))
    gemm = build_igemm(spec, dtype, tensors, out)

    def fft() -> Kernel:
        if dtype.name == "fp32" and not fft_plan(spec).worth_timing():
            raise Unsupported("flops and bytes give the FFT no chance here")
        return build_fft(spec, dtype, tensors, out)

    def wgmma_gemm() -> Built:
        gemm_spec, views, out_matrix = forward_views(spec, layout, tensors, out)
        built = linear_wgmma.build_wgmma(gemm_spec, dtype, views, out_matrix)
        return Built(built.launch, {"gemm": dict(built.details)})

    def wgmma_implicit_gemm() -> Kernel:
        igemm.check_wgmma(dtype, support.device_index(tensors["x"]))
        kernel = build_igemm(spec, dtype, tensors, out, wgmma=True)
        support.check_result(kernel, spec, dtype, tensors, out, "the wgmma implicit GEMM")
        return kernel

    def mma_pointwise_gemm() -> Built:  # its build keeps only a variant whose output passed the check
        return pointwise_gemm.build(spec, dtype, layout, tensors, out)

    # A 1x1 NHWC convolution is a plain GEMM (on Hopper also the wgmma one), in NCHW one GEMM per
    # image, a strided one after a copy of the pixels it reads: no FFT for any of them.
    if pointwise_refusal(spec, layout) is None:
        other = ("wgmma_gemm", wgmma_gemm)
    elif nchw_pointwise_refusal(spec, layout) is None:
        other = ("nchw_pointwise_gemm", mma_pointwise_gemm)
    elif strided_refusal(spec, layout) is None:
        other = ("strided_wgmma_gemm", lambda: build_strided_pointwise(spec, dtype, layout, tensors, out))
    else:
        other = ("fft", fft)
    tma = ("tma_implicit_gemm", lambda: conv_tma.build(spec, dtype, layout, tensors, out))
    others = [other, ("wgmma_implicit_gemm", wgmma_implicit_gemm), tma]
    if pointwise_refusal(spec, layout) is None:
        others.append(("nhwc_pointwise_gemm", mma_pointwise_gemm))
    # The narrow-input paths only where they apply: no reason on every other point.
    if lowered_refusal(spec, dtype, layout) is None:
        others.append(("im2col_gemm", lambda: build_lowered(spec, dtype, layout, tensors, out)))
    if unfolded_refusal(spec, dtype) is None:
        others.append(("unfolded_tma", lambda: build_unfolded(spec, dtype, layout, tensors, out)))
    return fastest_of("implicit_gemm", gemm, others,
                      lambda k: selection_ms(k, out.device),
                      after_failure=lambda: torch.cuda.synchronize(out.device),  # a sticky error is no fallback
                      remember=choice_of("cupy conv2d", spec, dtype.name, layout, tensors, out, "cupy"))
