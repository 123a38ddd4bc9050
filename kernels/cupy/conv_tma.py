"""The convolution on Hopper's TMA and wgmma (``conv_tma.cu``): fp16 and bf16, one group, any
window, stride (dividing the input's sides), padding and dilation.  NCHW input is copied to NHWC
inside the timed call (layout.cu, as the implicit GEMM does; one already channels_last is read as
it is), and an NCHW output is written from registers through its strides.

The implicit GEMMs of igemm.cu compute each input element's address in the threads that
multiply; here the TMA unit cuts each k tile out of the image, so the warpgroups only multiply
(the pipeline of the TMA GEMM, linear_tma.cu): as a box of a strided view (a tile is a patch of
images x rows x columns), or through an im2col map (a tile is a run of 128 consecutive output
pixels, none past the plane's edges).  Every configuration of both modes (64, 128, 256 output
channels a tile; one block an SM, or two that overlap each other's stores) is timed at build and
the fastest kept; the kernel competes in
conv2d.py only after its output on the layer's own tensors has passed the float64 check.  A
weight in OIHW order is copied to OHWI once, at build (not timed).
"""

from __future__ import annotations

import ctypes

import torch

from kernels.cupy import conv_tma_plan as plan
from kernels.cupy import linear_wgmma, sources, support, tensor_map
from kernels.cupy.layout import channels_last_copy
from layerbench.builders import Built, Kernel, Tensors, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

OUT_BOX_COLS = 64  # output channels a TMA store box holds: one 128-byte line of 16-bit values
GROUP_M = 8  # patches walked down each column of weight tiles (weight tiles reused from L2)


class Geometry(ctypes.Structure):
    """conv_tma.cu's ct::Geometry, field for field."""

    _fields_ = [(name, ctypes.c_int) for name in (
        "channels", "out_channels", "kernel_h", "kernel_w", "stride_h", "stride_w", "padding_h", "padding_w",
        "dilation_h", "dilation_w", "channel_tiles", "patch_i", "patch_h", "patch_w", "tiles_i", "tiles_h", "tiles_w",
        "group_m", "batch", "out_h", "out_w", "store_by_tma", "os_n", "os_c", "os_h", "os_w", "im2col")]


RUN = plan.Patch(1, 1, plan.TILE_PIXELS)  # im2col mode's tile: a run of consecutive output pixels


def geometry(spec: Conv2d, patch: plan.Patch | None, by_tma: bool, out_strides: tuple[int, int, int, int]) -> Geometry:
    """The kernel's geometry, tiles of ``patch`` (None: im2col mode, runs of pixels);
    ``out_strides``: the output's element strides (N, C, H, W)."""
    tiles = plan.tiles(spec, patch) if patch else (1, 1, plan.run_tiles(spec))
    shape = patch or RUN
    return Geometry(spec.in_channels, spec.out_channels, spec.kernel_h, spec.kernel_w, spec.stride_h, spec.stride_w,
                    spec.padding_h, spec.padding_w, spec.dilation_h, spec.dilation_w, plan.channel_tiles(spec),
                    shape.images, shape.rows, shape.cols, *tiles, GROUP_M,
                    spec.batch, spec.out_height, spec.out_width, int(by_tma), *out_strides, int(patch is None))


def _map(t: torch.Tensor, view: tuple[tuple[int, ...], tuple[int, ...]], box: tuple[int, ...]) -> tensor_map.TensorMap:
    dims, strides = view
    return tensor_map.encode(t, dims, tuple(s * t.element_size() for s in strides), box)


def _input_map(spec: Conv2d, patch: plan.Patch | None, x: torch.Tensor) -> tensor_map.TensorMap:
    """x's map: boxes of the strided view for ``patch``, or (None) the im2col map of its windows."""
    if patch:
        return _map(x, plan.input_view(spec), plan.input_box(patch))
    lower, upper = plan.window(spec)
    return tensor_map.encode_im2col(x, tensor_map.Im2col(lower, upper, (spec.stride_h, spec.stride_w),
                                                         plan.TILE_PIXELS, plan.BLOCK_K))


def _output_map(spec: Conv2d, patch: plan.Patch | None, out: torch.Tensor) -> tensor_map.TensorMap:
    """An NHWC output's map: a warpgroup's half patch, or (None) its 64 pixels of the [pixels, K] matrix."""
    if patch:
        return _map(out, plan.output_view(spec), plan.output_box(patch, OUT_BOX_COLS))
    return _map(out, plan.matrix_output_view(spec), (OUT_BOX_COLS, plan.TILE_PIXELS // 2))


def _launch(spec: Conv2d, dtype: DType, layout: str, patch: plan.Patch | None, x: torch.Tensor,
            weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, index: int, block_n: int,
            stages: int, blocks: int) -> support.Launch:
    """conv_tma.cu on dense NHWC ``x`` and OHWI ``weight`` in tiles of ``patch`` (None: runs of
    pixels, im2col mode), ``blocks`` blocks an SM, writing ``out`` in ``layout``."""
    by_tma = plan.stores_by_tma(spec, layout)
    g = geometry(spec, patch, by_tma, tuple(out.stride()))
    smem = linear_wgmma.tma_shared_bytes(block_n, stages)
    fn = support.function("conv_tma", sources.conv_tma_name(support.ctype_of(dtype), block_n, stages, blocks),
                          index)
    support.allow_shared(fn, smem, index, blocks)
    maps = [_input_map(spec, patch, x), _map(weight, plan.weight_view(spec), (plan.BLOCK_K, 1, block_n)),
            _output_map(spec, patch, out) if by_tma else tensor_map.TensorMap()]
    tiles = g.tiles_i * g.tiles_h * g.tiles_w * -(-spec.out_channels // block_n)
    return support.Launch(  # persistent: `blocks` blocks an SM, each taking tiles in turn
        fn, (min(tiles, blocks * support.sm_count(index)), 1, 1), (linear_wgmma.TMA_THREADS, 1, 1),
        [*maps, support.ptr(bias), support.ptr(out), g], index, keep=(x, weight, bias, out), shared_bytes=smem)


def _ohwi(weight: torch.Tensor) -> torch.Tensor:
    """The weight with each output channel's taps in (row, column, channel) order, contiguous."""
    if weight.is_contiguous(memory_format=torch.channels_last):
        return weight
    return weight.contiguous(memory_format=torch.channels_last)  # at build: the weight is a constant


def variants(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
             out: torch.Tensor) -> tuple[dict[str, Kernel], plan.Patch | None]:
    """Every configuration of the TMA convolution for this point in each mode it can run, by name
    (``Unsupported`` with the reason where it cannot run at all), and the patch the patch mode's
    share (None where only the im2col mode runs)."""
    reason = plan.refusal(spec, dtype.name, layout)
    if reason:
        raise Unsupported(reason)
    x = tensors["x"]
    bias = tensors.get("bias") if spec.bias else None
    index = support.check_tensors(dtype, {"x": x, "weight": tensors["weight"], "bias": bias, "out": out})
    linear_wgmma.check_gpu(index)
    dense = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    x_nhwc = x.is_contiguous(memory_format=torch.channels_last)
    for name, t in (("x", x), ("out", out)):
        if not (t.is_contiguous(memory_format=dense) or name == "x" and x_nhwc):
            raise Unsupported(f"the TMA convolution needs a dense {layout} {name}")
    copies: list[Kernel] = []
    if not x_nhwc:  # NCHW input copied to NHWC in the timed call (the unfolded convolution's is NHWC)
        x, copy_x = channels_last_copy(x, support.ctype_of(dtype), index)
        copies.append(copy_x)
    weight = _ohwi(tensors["weight"])
    patch = plan.choose_patch(spec) if plan.patch_refusal(spec) is None else None
    modes = {"tma_conv": patch} if patch else {}
    if plan.im2col_refusal(spec) is None:
        modes["tma_im2col"] = None
    found: dict[str, Kernel] = {}
    for mode, tiling in modes.items():
        try:
            found.update({f"{mode}_{linear_wgmma.tma_variant(n, b)}": in_order(
                *copies, _launch(spec, dtype, layout, tiling, x, weight, bias, out, index, n, s, b))
                for n, s, b in sources.TMA_CONFIGS})
        except Unsupported:
            if tiling is None and patch:  # the driver refused the im2col map: the patches still run
                continue
            raise
    return found, patch


def build(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The fastest configuration of the TMA convolution whose output passes the float64 check."""
    found, patch = variants(spec, dtype, layout, tensors, out)
    built = support.fastest_right_variant(found, spec, dtype, layout, tensors, out, "the TMA convolution")
    if built.details["variant"].startswith("tma_im2col"):
        return Built(built.launch, {**built.details, "patch": f"runs of {plan.TILE_PIXELS} pixels"})
    return Built(built.launch, {**built.details, "patch": f"{patch.images}x{patch.rows}x{patch.cols}"})
