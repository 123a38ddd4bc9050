"""A pointwise (1x1) convolution run as GEMMs on its own memory (``kernels/pointwise_views.py``).

NHWC: the Triton linear layer's GEMMs on views of its tensors: out = x @ W^T + b, dx = dy @ W,
dW = dy^T @ x, db = the column sums of dy, through ``linear.py`` (the tiled GEMM with split-K, on
Hopper also the persistent TMA GEMM) and ``linear_backward.py``; nothing is copied.  ResNet-50's
bottleneck ends and MobileNetV2's expansions and projections are such layers.  A strided 1x1
convolution without padding (ResNet-50's projections) reads only the pixels on the stride's grid:
they are copied to a dense buffer inside the timed call (``_subsample_kernel``, whole channel rows,
its tile timed at build) and the forward GEMM runs over them; or, with no copy, one GEMM whose A
tiles gather those pixels' channel rows straight from the input (``_strided_pointwise_kernel``).

NCHW: one product per image, out[n] = W @ x[n] + b with x[n] the (C, H*W) matrix the image is
in memory (``_nchw_pointwise_kernel``), and alike for the data gradient, dx[n] = W^T @ dy[n].  A
program owns a tile of output channels by pixels and walks the channels; the pixels are numbered
through the batch, so a tile may span two images and only the batch's last tile is ragged (a 28 x
28 image is 6.125 tiles of 128).  Its B tile is BLOCK_K channel rows of BLOCK_N pixels, contiguous
within each image, so neither input nor output is copied to channels_last, which the implicit
GEMMs do inside the timed call (on ResNet-50's 56 x 56 layers those copies cost more than the
product).  Output-channel tiles are the fastest program index:
the tiles of one pixel block run side by side and read its B tiles from L2.  The weight gradient
is the sum over images of dy[n] @ x[n]^T (``_nchw_pointwise_wgrad_kernel``): a program owns a
tile of dW and a slice of the images, and the slices' fp32 partials are summed in a fixed order.

The convolution's builds (forward, data and weight gradients) time these beside their implicit
GEMM and keep the faster.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from layerbench.builders import Built, Kernel, Tensors, as_built, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear
from layerbench.layers.passes import at_direction, direction_of

from kernels.pointwise_views import (forward_views, matrix, nchw_pointwise_refusal, pointwise_refusal,
                                     strided_refusal, subsampled, weight_matrix)
from kernels.triton import linear, linear_backward
from kernels.triton.grad_support import sum_slices
from kernels.triton.support import (DOT_MODE, DOT_PRECISION, INT32_MAX, bind, check_conv_tensors, check_inputs,
                                    grouped_tile, interpreting, next_pow2, pixel_of)

# The subsampling copy's tiles (pixels x channels, warps), timed at build: its time is the
# strided layer's overhead over the GEMM, and the best tile depends on the channel count (a
# program moving 4 KB runs far from the copy bandwidth where the rows are 1-2 KB long).
_SUBSAMPLE_TILES = ((32, 64, 4), (16, 128, 4), (64, 128, 8), (32, 256, 8), (16, 512, 8), (128, 64, 8))
_INTERPRETER_SUBSAMPLE = {"BLOCK_P": 32, "BLOCK_C": 64}


@triton.jit
def _subsample_kernel(x_ptr, dst_ptr, pixels, P, Q, H, W, C, SH, SW,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # dst[n, p, q, :] = x[n, p * SH, q * SW, :], NHWC both; int32 offsets (x has < 2^31 elements).
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    ch = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n, p, q = pixel_of(pix, P, Q)
    src = ((n * H + p * SH) * W + q * SW) * C
    ok = (pix < pixels)[:, None] & (ch < C)[None, :]
    row = tl.load(x_ptr + src[:, None] + ch[None, :], mask=ok)
    tl.store(dst_ptr + pix[:, None] * C + ch[None, :], row, mask=ok)


# The gathering strided GEMM's tiles, per arithmetic mode: (pixels, output channels, channels a
# step, warps, stages); sides wider than the layer's are cut to it (``_cut_tiles``).
_GATHER_TILES = {
    "mma16": ((128, 128, 64, 4, 4), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
              (64, 128, 64, 4, 4)),
    "tf32": ((128, 128, 32, 8, 3), (128, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4)),
    "fma32": ((64, 64, 16, 4, 3), (128, 64, 16, 8, 3), (64, 128, 16, 8, 3)),
}
_INTERPRETER_GATHER = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}


@triton.jit
def _strided_pointwise_kernel(x_ptr, w_ptr, b_ptr, y_ptr, PIXELS, K, C, P, Q, H, W, SH, SW,
                              HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, EVEN_C: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              GROUP_M: tl.constexpr):
    # y[pix, k] = sum_c x[n, p * SH, q * SW, c] * w[k, c] (+ b[k]), NHWC x and y, w (K, C): the
    # A rows are the channel runs of the pixels on the stride's grid; int32 offsets (checked).
    pid_m, pid_n = grouped_tile(tl.program_id(0), PIXELS, K, BLOCK_M, BLOCK_N, GROUP_M)
    pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    pix_ok, k_ok = pix < PIXELS, rk < K
    # Rows and columns past the edge read pixel 0 and channel row 0: loads need no mask, and
    # what they feed is never stored.
    n, p, q = pixel_of(tl.where(pix_ok, pix, 0), P, Q)
    a_rows = x_ptr + (((n * H + p * SH) * W + q * SW) * C)[:, None]
    b_cols = w_ptr + (tl.where(k_ok, rk, 0) * C)[None, :]
    rc = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_K):
        c = c0 + rc
        if EVEN_C:
            a = tl.load(a_rows + c[None, :])
            b = tl.load(b_cols + c[:, None])
        else:
            a = tl.load(a_rows + c[None, :], mask=(c < C)[None, :], other=0.0)
            b = tl.load(b_cols + c[:, None], mask=(c < C)[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + pix[:, None] * K + rk[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & k_ok[None, :])


# The per-image NCHW product's tiles, per arithmetic mode: (output channels, pixels, channels
# a step, warps, stages).  Sides wider than the layer's are cut to it (``_cut_tiles``).
_NCHW_TILES = {
    "mma16": ((128, 128, 64, 8, 3), (128, 128, 64, 4, 4), (64, 128, 64, 4, 4), (128, 256, 64, 8, 3),
              (64, 256, 64, 8, 3), (128, 64, 64, 4, 4)),
    "tf32": ((128, 128, 32, 8, 3), (64, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 256, 32, 8, 3)),
    "fma32": ((64, 64, 16, 4, 3), (128, 64, 16, 8, 3), (64, 128, 16, 8, 3)),
}
_INTERPRETER_NCHW = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}


@triton.jit
def _nchw_pointwise_kernel(a_ptr, x_ptr, b_ptr, y_ptr, R, M, HW, COLUMNS, stride_am, stride_ar,
                           RUN: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # y[n, m, p] = sum_r a[m, r] * x[n, r, p] (+ b[m]), NCHW x and y: per image (M, R) @ (R, HW), the
    # columns j = n * HW + p numbered through the batch so that a tile may span two images.
    # a is the 1x1 weight (forward: M = K, R = C) or, by its strides, its transpose (data gradient).
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    rm = (pid % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    j = (pid // tiles_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    n = (j // HW).to(tl.int64)  # 64-bit image offsets: a batch may hold more than 2^31 values
    p = j % HW
    # RUN divides HW and BLOCK_N, so each run of RUN columns lies in one image, contiguous there,
    # and every channel row starts at a multiple of RUN: the hints let the loads and stores move
    # whole runs (up to 16-byte vectors) whatever divisibility the compiler sees in HW itself.
    x_col = tl.max_contiguous(tl.multiple_of(n * R * HW + p, RUN), RUN)
    y_col = tl.max_contiguous(tl.multiple_of(n * M * HW + p, RUN), RUN)
    j_ok = tl.max_constancy(j < COLUMNS, RUN)  # COLUMNS = N * HW: a run is in or out whole
    rr = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_K):
        r = r0 + rr
        a = tl.load(a_ptr + rm[:, None] * stride_am + r[None, :] * stride_ar, mask=m_ok[:, None] & (r < R)[None, :],
                    other=0.0)
        x_row = tl.multiple_of(r * HW, RUN)
        b = tl.load(x_ptr + x_row[:, None] + x_col[None, :], mask=(r < R)[:, None] & j_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rm, mask=m_ok, other=0.0).to(tl.float32)[:, None]
    y = y_ptr + tl.multiple_of(rm * HW, RUN)[:, None] + y_col[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & j_ok[None, :])


def _cut_tiles(tiles: tuple[tuple[int, ...], ...], rows: int, reduction: int, columns: int) -> list[triton.Config]:
    """``tiles``, each side cut to the product's (a power of two, at least tl.dot's 16); where one
    step spans the whole reduction, two stages at most (more would pipeline nothing and only hold
    shared memory that caps the programs an SM runs; two keep the asynchronous copies)."""
    seen: dict[tuple[int, ...], None] = {}
    for bm, bn, bk, warps, stages in tiles:
        cut = (min(bm, max(16, next_pow2(rows))), min(bn, max(16, next_pow2(columns))),
               min(bk, max(16, next_pow2(reduction))))
        seen.setdefault((*cut, warps, min(stages, 2) if cut[2] >= reduction else stages))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
            for bm, bn, bk, warps, stages in seen]


def _check_image_fits_int32(channels: int, pixels: int) -> None:
    """Unsupported where an image of the per-image GEMMs holds more values than their int32 offsets reach."""
    if channels * pixels > INT32_MAX:
        raise Unsupported(f"the per-image GEMMs index an image in int32; {channels} channels of {pixels} pixels "
                          f"hold more than {INT32_MAX} values")


def _per_image_gemm(spec: Conv2d, dtype: DType, a: torch.Tensor, a_strides: tuple[int, int], x: torch.Tensor,
                    bias: torch.Tensor | None, y: torch.Tensor) -> Kernel:
    """y[n] = a @ x[n] (+ bias) over the NCHW images of ``x`` and ``y`` (the per-image GEMM)."""
    if not (x.is_contiguous() and y.is_contiguous()):
        raise Unsupported(f"the per-image GEMM needs its input and output dense in NCHW order, got strides "
                          f"{tuple(x.stride())} and {tuple(y.stride())}")
    n, reduction, rows = x.shape[0], x.shape[1], y.shape[1]
    hw = spec.height * spec.width
    _check_image_fits_int32(max(reduction, rows), hw)
    columns = n * hw
    # A tile's last column must fit int32 too: the widest tile's columns past the batch's last.
    most = INT32_MAX - max(tile[1] for tiles in _NCHW_TILES.values() for tile in tiles)
    if columns > most:
        raise Unsupported(f"the per-image GEMM numbers the batch's pixels in int32; {n} images of {hw} pixels are "
                          f"more than {most}")

    def grid(config: dict) -> tuple[int]:
        return (triton.cdiv(rows, config["BLOCK_M"]) * triton.cdiv(columns, config["BLOCK_N"]),)

    configs = _cut_tiles(_NCHW_TILES[DOT_MODE[dtype.name]], rows, reduction, columns)
    # The longest run of columns in one image that every tile's runs line up with: the power of two
    # dividing H*W, at most 16 (a 16-byte vector of 8 16-bit values is the widest access anyway).
    meta = {"RUN": min(hw & -hw, 16), "HAS_BIAS": bias is not None, "PRECISION": DOT_PRECISION[dtype.name]}
    args = (a, x, bias if bias is not None else y, y, reduction, rows, hw, columns, *a_strides)
    return bind(_nchw_pointwise_kernel, configs, grid, args, meta, _INTERPRETER_NCHW)


def build_nchw_pointwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """A 1x1 NCHW convolution as one product per image of the weight and the image's (C, H*W)
    matrix, on the tensors as they are."""
    reason = nchw_pointwise_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    check_inputs(_nchw_pointwise_kernel, dtype, Conv2d.dtypes, tensors, out, uses_dot=True)
    check_conv_tensors(spec, tensors, out)
    c, k = spec.in_channels, spec.out_channels
    return _per_image_gemm(spec, dtype, weight_matrix(tensors["weight"], k, c), (c, 1), tensors["x"],
                           tensors.get("bias"), out)


def build_nchw_pointwise_dgrad(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Kernel:
    """The data gradient of a 1x1 NCHW convolution: dx[n] = W^T @ dy[n] per image, the weight read
    transposed through its strides, on the tensors as they are."""
    reason = nchw_pointwise_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    dy, weight = tensors["dy"], tensors["weight"]
    check_inputs(_nchw_pointwise_kernel, dtype, Conv2d.dtypes, {"dy": dy, "weight": weight}, out, uses_dot=True)
    if (tuple(dy.shape), tuple(out.shape)) != (spec.output_shape, spec.input_shape):
        raise Unsupported(f"dy and dx must have shapes {spec.output_shape} and {spec.input_shape}, got "
                          f"{tuple(dy.shape)} and {tuple(out.shape)}")
    c, k = spec.in_channels, spec.out_channels
    return _per_image_gemm(spec, dtype, weight_matrix(weight, k, c), (1, c), dy, None, out)


@triton.jit
def _nchw_pointwise_wgrad_kernel(dy_ptr, x_ptr, out_ptr, K, C, HW, N, IMAGES, PARTIAL: tl.constexpr,
                                 PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_K: tl.constexpr):
    # dW[k, c] = sum over images n and pixels p of dy[n, k, p] * x[n, c, p], NCHW dy and x; program
    # axis 1 takes IMAGES images (a slice) and writes fp32 partials where there are several slices.
    pid, part = tl.program_id(0), tl.program_id(1)
    tiles_m = tl.cdiv(K, BLOCK_M)
    rk = (pid % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = (pid // tiles_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    rp = tl.arange(0, BLOCK_K)
    k_ok, c_ok = rk < K, rc < C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first = part * IMAGES
    for n in range(first, tl.minimum(first + IMAGES, N)):
        dy_img = dy_ptr + tl.cast(n, tl.int64) * K * HW
        x_img = x_ptr + tl.cast(n, tl.int64) * C * HW
        for p0 in range(0, HW, BLOCK_K):
            p = p0 + rp
            a = tl.load(dy_img + rk[:, None] * HW + p[None, :], mask=k_ok[:, None] & (p < HW)[None, :], other=0.0)
            b = tl.load(x_img + rc[None, :] * HW + p[:, None], mask=(p < HW)[:, None] & c_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
    at = rk[:, None] * C + rc[None, :]
    ok = k_ok[:, None] & c_ok[None, :]
    if PARTIAL:
        tl.store(out_ptr + part.to(tl.int64) * K * C + at, acc, mask=ok)
    else:
        tl.store(out_ptr + at, acc.to(out_ptr.dtype.element_ty), mask=ok)


def build_nchw_pointwise_wgrad(spec: Conv2d, dtype: DType, layout: str, x: torch.Tensor, dy: torch.Tensor,
                               dweight: torch.Tensor) -> Kernel:
    """The weight gradient of a 1x1 NCHW convolution, dW = sum over images of dy[n] @ x[n]^T, on x
    and dy as they are: the images split in slices whose fp32 partials a second kernel sums in a
    fixed order (one slice needs no partials).  The bias gradient is the caller's."""
    reason = nchw_pointwise_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    check_inputs(_nchw_pointwise_wgrad_kernel, dtype, Conv2d.dtypes, {"x": x, "dy": dy}, dweight, uses_dot=True)
    if not (x.is_contiguous() and dy.is_contiguous()):
        raise Unsupported(f"the per-image weight gradient needs x and dy dense in NCHW order, got strides "
                          f"{tuple(x.stride())} and {tuple(dy.stride())}")
    n, c, h, w = spec.input_shape
    k, hw = spec.out_channels, h * w
    _check_image_fits_int32(max(c, k), hw)
    dw = weight_matrix(dweight, k, c, "dweight")
    configs = _cut_tiles(_NCHW_TILES[DOT_MODE[dtype.name]], k, hw, c)
    if interpreting(_nchw_pointwise_wgrad_kernel):
        slices = min(n, 2)  # the partial path is checked too
    else:
        tiles = min(triton.cdiv(k, cfg.kwargs["BLOCK_M"]) * triton.cdiv(c, cfg.kwargs["BLOCK_N"]) for cfg in configs)
        slices = max(1, min(n, triton.cdiv(4 * torch.cuda.get_device_properties(x.device).multi_processor_count,
                                            tiles)))
    images = triton.cdiv(n, slices)
    slices = triton.cdiv(n, images)
    partial = slices > 1
    target = torch.empty((slices, k * c), dtype=torch.float32, device=x.device) if partial else dw

    def grid(config: dict) -> tuple[int, int]:
        return (triton.cdiv(k, config["BLOCK_M"]) * triton.cdiv(c, config["BLOCK_N"]), slices)

    meta = {"PARTIAL": partial, "PRECISION": DOT_PRECISION[dtype.name]}
    gemm = bind(_nchw_pointwise_wgrad_kernel, configs, grid, (dy, x, target, k, c, hw, n, images), meta,
                _INTERPRETER_NCHW)
    return in_order(gemm, sum_slices(target, dw, slices)) if partial else gemm


@functools.cache
def _subsample_tiles(max_block_c: int) -> list[triton.Config]:
    """The copy's tiles whose channel block is no wider than a row of ``max_block_c`` channels (a
    power of two), the narrowest always."""
    narrowest = min(c for _, c, _ in _SUBSAMPLE_TILES)
    tiles = [(p, c, w) for p, c, w in _SUBSAMPLE_TILES if c <= max(max_block_c, narrowest)]
    return [triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w) for p, c, w in tiles]


def build_pointwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The linear layer's GEMM on views of this 1x1 convolution's tensors."""
    gemm, views, out_matrix = forward_views(spec, layout, tensors, out)
    built = as_built(linear.build(gemm, dtype, "NCHW", views, out_matrix))
    return Built(built.launch, {"gemm": dict(built.details)})


def build_strided_pointwise(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """A strided 1x1 NHWC convolution without padding: the pixels on the stride's grid copied to a
    dense buffer inside the timed call, then the stride-1 convolution's GEMM over them."""
    reason = strided_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    x = tensors["x"]
    if not x.permute(0, 2, 3, 1).is_contiguous():
        raise Unsupported(f"the subsampling copy reads x dense in NHWC order, got strides {tuple(x.stride())}")
    dense = subsampled(spec)
    pixels = torch.empty((spec.batch, spec.in_channels, dense.height, dense.width), dtype=x.dtype, device=x.device,
                         memory_format=torch.channels_last)
    count = spec.batch * dense.height * dense.width

    def grid(config: dict) -> tuple[int, int]:
        return triton.cdiv(count, config["BLOCK_P"]), triton.cdiv(spec.in_channels, config["BLOCK_C"])

    args = (x, pixels, count, dense.height, dense.width, spec.height, spec.width, spec.in_channels,
            spec.stride_h, spec.stride_w)
    copy = bind(_subsample_kernel, _subsample_tiles(next_pow2(spec.in_channels)), grid, args, {},
                _INTERPRETER_SUBSAMPLE)
    copy()  # the GEMM's build times itself on the copied pixels
    gemm = build_pointwise(dense, dtype, layout, {**tensors, "x": pixels}, out)
    launch: Kernel = in_order(copy, gemm.launch)
    return Built(launch, dict(gemm.details))


def build_strided_gather(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Kernel:
    """A strided 1x1 NHWC convolution without padding as one GEMM whose A tiles gather the pixels on
    the stride's grid from the input as it is (no copy)."""
    reason = strided_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    check_inputs(_strided_pointwise_kernel, dtype, Conv2d.dtypes, tensors, out, uses_dot=True)
    check_conv_tensors(spec, tensors, out)
    x = tensors["x"]
    if not (x.permute(0, 2, 3, 1).is_contiguous() and out.permute(0, 2, 3, 1).is_contiguous()):
        raise Unsupported(f"the gathering GEMM needs x and out dense in NHWC order, got strides "
                          f"{tuple(x.stride())} and {tuple(out.stride())}")
    if max(x.numel(), out.numel()) > INT32_MAX:
        raise Unsupported(f"the gathering GEMM indexes in int32; x holds {x.numel()} and out {out.numel()} values")
    c, k = spec.in_channels, spec.out_channels
    pixels = spec.batch * spec.out_height * spec.out_width
    configs = [triton.Config({**cfg.kwargs, "GROUP_M": 8, "EVEN_C": c % cfg.kwargs["BLOCK_K"] == 0},
                             num_warps=cfg.num_warps, num_stages=cfg.num_stages)
               for cfg in _cut_tiles(_GATHER_TILES[DOT_MODE[dtype.name]], pixels, c, k)]

    def grid(config: dict) -> tuple[int]:
        return (triton.cdiv(pixels, config["BLOCK_M"]) * triton.cdiv(k, config["BLOCK_N"]),)

    bias = tensors.get("bias")
    meta = {"HAS_BIAS": bias is not None, "PRECISION": DOT_PRECISION[dtype.name]}
    args = (x, weight_matrix(tensors["weight"], k, c), bias if bias is not None else out, out, pixels, k, c,
            spec.out_height, spec.out_width, spec.height, spec.width, spec.stride_h, spec.stride_w)
    return bind(_strided_pointwise_kernel, configs, grid, args, meta,
                {**_INTERPRETER_GATHER, "EVEN_C": c % _INTERPRETER_GATHER["BLOCK_K"] == 0})


def build_pointwise_backward(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The linear layer's backward GEMM (the spec's direction: ``backward_data`` or
    ``backward_weight``) on views of this 1x1 convolution's tensors."""
    reason = pointwise_refusal(spec, layout)
    if reason:
        raise Unsupported(reason)
    direction = direction_of(spec)
    n, c, h, w = spec.input_shape
    k, rows = spec.out_channels, n * h * w
    gemm = at_direction(Linear(rows, c, k, bias=spec.bias), direction)
    views = {"x": matrix(tensors["x"], rows, c, "x"), "weight": weight_matrix(tensors["weight"], k, c),
             "dy": matrix(tensors["dy"], rows, k, "dy")}
    if direction == "backward_data":
        built = linear_backward.build_linear_backward_data(gemm, dtype, "NCHW", views, matrix(out, rows, c, "dx"))
    elif direction == "backward_weight":
        # With a bias, out is the flat buffer of dweight then dbias: the linear layer's own order.
        target = weight_matrix(out, k, c, "dweight") if out.dim() == 4 else out
        built = linear_backward.build_linear_backward_weight(gemm, dtype, "NCHW", views, target)
    else:
        raise Unsupported(f"the backward GEMM view runs backward_data or backward_weight, not {direction}")
    built = as_built(built)
    return Built(built.launch, {"gemm": dict(built.details)})
