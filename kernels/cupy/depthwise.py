"""Depthwise convolution launchers (groups == in_channels): depthwise.cu's direct kernels, NHWC
(channel vectors per thread, several output pixels reusing each loaded input row) or NCHW (a tile
of one plane staged in shared memory); in NCHW also the rows kernel (whole-width input rows of
several planes or of one plane's band, staged by cp.async, one or three chunks in flight a block
while it computes another); and for 3x3 layers at stride 1 or 2 both ways the flat-run kernels,
NHWC or NCHW (each input row of a band loaded once, rolling accumulators); fp32 FMA for every
dtype, fp32 accumulation, bias fused.

The filter and the bias go to fp32 once, at build (the weights stay between launches, as in
inference): [tap][channel] for NHWC, where a thread reads its channels' tap as one vector, and
[channel][tap] for NCHW, where a block reads its channel's filter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.cupy import support
from kernels.cupy.depthwise_plan import (FLAT_BANDS, NCHW_FLAT_COLUMNS, DepthwisePlan, flat_plan, flat_refusal,
                                         plan_depthwise, rows_plan)
from layerbench.builders import Built, Tensors
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

MEMORY_FORMATS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}
DEEP_STAGES = 4  # the rows kernel's buffers in its deep build: three chunks in flight


def fp32_copy(t: torch.Tensor) -> torch.Tensor:
    """A fresh dense fp32 copy of ``t``: the kernels load it in 16- and 32-byte vectors, which a
    new allocation aligns (a view of the caller's tensor might not be)."""
    return torch.empty(t.shape, dtype=torch.float32, device=t.device).copy_(t)


def prepared_filter(spec: Conv2d, weight: torch.Tensor, layout: str) -> torch.Tensor:
    """The filter as fp32 [channel][tap] (NCHW) or [tap][channel] (NHWC), tap = kh * KW + kw."""
    taps = weight.reshape(spec.out_channels, spec.kernel_h * spec.kernel_w)
    return fp32_copy(taps.t() if layout == "NHWC" else taps)


def _prepared(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, str]:
    """x, the fp32 filter for ``layout``, the fp32 bias or None, the device index and the C type."""
    x, weight = tensors["x"], tensors["weight"]
    bias = tensors.get("bias") if spec.bias else None
    index = support.check_tensors(dtype, {"x": x, "weight": weight, "bias": bias, "out": out})
    fmt = MEMORY_FORMATS[layout]
    if not (x.is_contiguous(memory_format=fmt) and out.is_contiguous(memory_format=fmt)):
        raise Unsupported(f"the CuPy depthwise kernels take dense {layout} x and out")
    bt = fp32_copy(bias) if bias is not None else None
    return x, prepared_filter(spec, weight, layout), bt, index, support.ctype_of(dtype)


def build(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The direct kernel for ``spec`` in ``layout``."""
    x, wt, bt, index, ctype = _prepared(spec, dtype, layout, tensors, out)
    plan = plan_depthwise(spec, layout, ctype, x.data_ptr(), out.data_ptr())
    shape = (spec.in_channels, *_window(spec))
    sizes = (plan.items, *shape) if layout == "NHWC" else (*shape, *plan.tile)
    return Built(_launch(plan, x, wt, bt, out, index, sizes), {"algorithm": "depthwise", "kernel": plan.name})


def candidates(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
               out: torch.Tensor) -> list[tuple[str, Callable[[], Built]]]:
    """The builds worth timing beside the direct kernel's, named: in NCHW the rows kernel, one
    chunk in flight while a block computes another (``depthwise_rows``) and three
    (``depthwise_rows_deep``: where the chunks are small, one leaves DRAM idle), and the flat-run
    kernel's where it applies (no refusal recorded on every other point)."""
    found = []
    if layout == "NCHW":
        found += [("depthwise_rows", lambda: build_rows(spec, dtype, layout, tensors, out)),
                  ("depthwise_rows_deep", lambda: build_rows(spec, dtype, layout, tensors, out, DEEP_STAGES))]
    if not flat_refusal(spec, layout):
        found += flat_candidates(spec, dtype, layout, tensors, out)
    return found


def build_rows(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor,
               stages: int = 2) -> Built:
    """The NCHW rows kernel for ``spec``: whole-width input rows staged in shared memory by
    resident blocks, in ``stages`` buffers: the next stages - 1 chunks' while one is computed."""
    if layout != "NCHW":
        raise Unsupported(f"the depthwise rows kernel runs NCHW only, got {layout}")
    x, wt, bt, index, ctype = _prepared(spec, dtype, layout, tensors, out)
    plan = rows_plan(spec, ctype, support.sm_count(index), stages=stages)
    fn = support.function("depthwise", plan.name, index)
    resident = support.occupancy(fn, plan.threads, index, plan.shared_bytes)
    if resident < 1:
        raise Unsupported(f"{plan.name} cannot be resident with {plan.shared_bytes} bytes of shared memory")
    plan = rows_plan(spec, ctype, support.sm_count(index), resident, stages)  # a block a chunk up to what SMs hold
    sizes = (spec.batch * spec.in_channels, *_window(spec), plan.group, plan.band, -(-spec.out_height // plan.band),
             plan.chunks, plan.buffer, plan.stages)
    return Built(_launch(plan, x, wt, bt, out, index, sizes),
                 {"algorithm": "depthwise_rows", "kernel": plan.name, "band": plan.band, "planes_a_chunk": plan.group,
                  "stages": plan.stages})


def flat_candidates(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                    out: torch.Tensor) -> list[tuple[str, Callable[[], Built]]]:
    """The flat-run kernel's builds worth timing for ``spec``, named: in its usual bands and, where
    they differ, in the tallest (``depthwise_flat_tall``); in NCHW, four output columns a thread,
    and one or two in the tallest bands (``depthwise_flat_column``, ``depthwise_flat_two_columns``:
    narrow planes, where four leave few threads a row and one spends the most instructions an
    output)."""
    def build(band: int | None, columns: int = NCHW_FLAT_COLUMNS) -> Callable[[], Built]:
        return lambda: build_flat(spec, dtype, layout, tensors, out, band, columns)

    candidates = [("depthwise_flat", build(None))]
    try:
        usual = flat_plan(spec, layout, support.ctype_of(dtype), 0, 0,
                          support.sm_count(tensors["x"].device.index)).band
    except Unsupported:
        return candidates  # its build says why
    if usual != FLAT_BANDS[0]:
        candidates.append(("depthwise_flat_tall", build(FLAT_BANDS[0])))
    if layout == "NCHW":  # one or two columns a thread, in the tallest bands
        candidates += [("depthwise_flat_column", build(FLAT_BANDS[0], 1)),
                       ("depthwise_flat_two_columns", build(FLAT_BANDS[0], 2))]
    return candidates


def build_flat(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor,
               band: int | None = None, columns: int = NCHW_FLAT_COLUMNS) -> Built:
    """The flat-run kernel for ``spec`` (3x3, stride 1 or 2 both ways) in bands of ``band`` output
    rows (None: as ``flat_plan`` chooses), in NCHW ``columns`` output columns a thread;
    ``Unsupported`` says why not."""
    reason = flat_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    x, wt, bt, index, ctype = _prepared(spec, dtype, layout, tensors, out)
    plan = flat_plan(spec, layout, ctype, x.data_ptr(), out.data_ptr(), support.sm_count(index), band, columns)
    s = spec
    sizes = (s.in_channels, s.height, s.width, s.out_height, s.out_width, s.padding_h, s.padding_w, plan.band,
             plan.segments, -(-s.out_height // plan.band))
    if layout == "NCHW":
        sizes = (s.batch * s.in_channels, *sizes, plan.row_threads.bit_length() - 1)
    return Built(_launch(plan, x, wt, bt, out, index, sizes),
                 {"algorithm": "depthwise_flat", "kernel": plan.name, "band": plan.band})


def _window(spec: Conv2d) -> tuple[int, ...]:
    """The shape arguments the direct and rows kernels take after the input's channels or planes:
    H, W, CO, OH, OW, KH, KW, the strides, paddings and dilations (h, w each), the multiplier."""
    s = spec
    return (s.height, s.width, s.out_channels, s.out_height, s.out_width, s.kernel_h, s.kernel_w, s.stride_h,
            s.stride_w, s.padding_h, s.padding_w, s.dilation_h, s.dilation_w, s.out_channels // s.in_channels)


def _launch(plan: DepthwisePlan, x: torch.Tensor, wt: torch.Tensor, bt: torch.Tensor | None, out: torch.Tensor,
            index: int, sizes: tuple[int, ...]) -> support.Launch:
    """``plan``'s kernel on (x, wt, bias, out) followed by the int32 ``sizes``."""
    fn = support.function("depthwise", plan.name, index)
    args = [support.ptr(x), support.ptr(wt), support.ptr(bt), support.ptr(out), *[support.i32(v) for v in sizes]]
    return support.Launch(fn, plan.grid, (plan.threads, 1, 1), args, index, keep=(x, wt, bt, out),
                          shared_bytes=plan.shared_bytes)
