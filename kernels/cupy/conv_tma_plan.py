"""What conv_tma.cu runs for a convolution, decided without a GPU: whether it can, in which
modes (patches of a strided view, or runs of pixels through an im2col map), the patch of output
pixels a tile holds and the views its tensor maps describe.  ``tests/test_cupy_conv_tma_plan.py``
runs the kernel's model (conv_tma_model.py) over them on the CPU against a direct convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerbench.layers import Conv2d

TILE_PIXELS = 128  # output pixels a tile holds: the two consumer warpgroups' 64 rows each
BLOCK_K = 64  # input channels a k tile holds: one 128-byte line of 16-bit values
MAX_PATCH_W = 64  # a warpgroup's half of the patch must be whole rows (or whole images)
DTYPES = ("fp16", "bf16")
# cuTensorMapEncodeIm2col on a 4-D tensor: the window's corners are 8-bit signed offsets from the
# image's corners and the traversal strides at most 8 (the driver refuses more; the refusal here
# names the field first); the copy's tap offsets lie in [0, 255] on a 4-D tensor, and CUTLASS
# keeps them below 255: so do we (a filter reaching that far is no real layer).
CORNER_RANGE = (-128, 127)
MAX_TRAVERSAL_STRIDE = 8
MAX_TAP_OFFSET = 254


@dataclass(frozen=True)
class Patch:
    """A tile's output pixels: ``images`` x ``rows`` x ``cols``, 128 in all."""

    images: int
    rows: int
    cols: int

    def halves(self) -> tuple[int, int]:
        """(images, rows) of one warpgroup's half: the outermost dimension longer than one is split."""
        return (self.images // 2, self.rows) if self.images > 1 else (1, self.rows // 2)


def refusal(spec: Conv2d, dtype: str, layout: str) -> str | None:
    """Why the TMA convolution cannot run ``spec`` in either mode (None where it can in one)."""
    if dtype not in DTYPES:
        return f"the TMA convolution runs fp16 and bf16, not {dtype}"
    if layout not in ("NCHW", "NHWC"):
        return f"the TMA convolution runs NCHW and NHWC, not {layout}"
    if spec.groups != 1:
        return f"the TMA convolution runs one group, this point has {spec.groups}"
    if spec.in_channels % 8:
        return f"the TMA convolution needs in_channels a multiple of 8 (16-byte pixel rows), got {spec.in_channels}"
    tiled, im2col = patch_refusal(spec), im2col_refusal(spec)
    return None if tiled is None or im2col is None else f"{tiled}; {im2col}"


def patch_refusal(spec: Conv2d) -> str | None:
    """Why the patches of the strided view cannot cover ``spec`` (None where they can)."""
    if spec.height % spec.stride_h or spec.width % spec.stride_w:
        return (f"the TMA convolution's strided view needs the input's sides multiples of the stride: "
                f"{spec.height}x{spec.width} at stride {spec.stride_h}x{spec.stride_w}")
    if spec.stride_w > 1 and spec.in_channels % BLOCK_K:
        # A box of 64 channels would run into the next column phase's channels, which are no zeros.
        return (f"the TMA convolution at stride_w {spec.stride_w} needs in_channels a multiple of {BLOCK_K}, "
                f"got {spec.in_channels}")
    return None


def im2col_refusal(spec: Conv2d) -> str | None:
    """Why an im2col map cannot gather ``spec``'s windows (None where it can)."""
    lo, hi = CORNER_RANGE
    lower, upper = window(spec)
    corners = (*lower, *upper)
    if not all(lo <= c <= hi for c in corners):
        return (f"the im2col copy's window corners must lie in [{lo}, {hi}] pixels of the image's corners, "
                f"got {corners} (padding, stride and output size)")
    if max(spec.stride_h, spec.stride_w) > MAX_TRAVERSAL_STRIDE:
        return f"the im2col copy strides at most {MAX_TRAVERSAL_STRIDE}, got {spec.stride_h}x{spec.stride_w}"
    reach = max((spec.kernel_h - 1) * spec.dilation_h, (spec.kernel_w - 1) * spec.dilation_w)
    if reach > MAX_TAP_OFFSET:
        return f"the im2col copy shifts a window by at most {MAX_TAP_OFFSET} pixels, this filter by {reach}"
    return None


def window(spec: Conv2d) -> tuple[tuple[int, int], tuple[int, int]]:
    """The im2col map's window of filter origins, (h, w) each: its lower corner from the image's
    (0, 0), its upper corner from (H - 1, W - 1), so that the traversal at the strides meets exactly
    the output's rows and columns."""
    lower = (-spec.padding_h, -spec.padding_w)
    upper = ((spec.out_height - 1) * spec.stride_h - spec.padding_h - (spec.height - 1),
             (spec.out_width - 1) * spec.stride_w - spec.padding_w - (spec.width - 1))
    return lower, upper


def run_tiles(spec: Conv2d) -> int:
    """Tiles of TILE_PIXELS consecutive output pixels (im2col mode)."""
    return -(-spec.batch * spec.out_height * spec.out_width // TILE_PIXELS)


def matrix_output_view(spec: Conv2d) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The NHWC output as the [pixels, K] matrix it is (im2col mode): (channels, pixels), strides."""
    return (spec.out_channels, spec.batch * spec.out_height * spec.out_width), (spec.out_channels,)


def choose_patch(spec: Conv2d) -> Patch:
    """The patch that covers the output with the fewest computed pixels; of equals, the one whose
    tile reads the fewest input pixels (its halo: the taps' reach around it, from L2), then the
    wider one."""
    best: tuple[tuple[int, int, int], Patch] | None = None
    cols = 8
    while cols <= MAX_PATCH_W:
        rows = 1
        while cols * rows <= TILE_PIXELS:
            images = TILE_PIXELS // (cols * rows)
            patch = Patch(images, rows, cols)
            if images * rows >= 2:
                computed = (-(-spec.batch // images) * images * -(-spec.out_height // rows) * rows
                            * -(-spec.out_width // cols) * cols)
                halo = images * ((rows - 1) * spec.stride_h + spec.dilation_h * (spec.kernel_h - 1) + 1) * (
                    (cols - 1) * spec.stride_w + spec.dilation_w * (spec.kernel_w - 1) + 1)
                score = (computed, halo, -cols)
                if best is None or score < best[0]:
                    best = (score, patch)
            rows *= 2
        cols *= 2
    assert best is not None
    return best[1]


def tiles(spec: Conv2d, patch: Patch) -> tuple[int, int, int]:
    """Patches along images, output rows and output columns."""
    return (-(-spec.batch // patch.images), -(-spec.out_height // patch.rows), -(-spec.out_width // patch.cols))


def input_view(spec: Conv2d) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The 5-D view of the NHWC input the kernel's boxes cut: dims innermost first (channels of
    one column phase, columns / stride_w, row phase, rows / stride_h, images) and the element
    strides of every dimension but the innermost."""
    c, w, h = spec.in_channels, spec.width, spec.height
    sh, sw = spec.stride_h, spec.stride_w
    dims = (sw * c, w // sw, sh, h // sh, spec.batch)
    strides = (sw * c, w * c, sh * w * c, h * w * c)
    return dims, strides


def input_box(patch: Patch) -> tuple[int, ...]:
    return (BLOCK_K, patch.cols, 1, patch.rows, patch.images)


def weight_view(spec: Conv2d) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The 3-D view of the KRSC weight: (channels, taps, output channels) and its strides."""
    taps = spec.kernel_h * spec.kernel_w
    return (spec.in_channels, taps, spec.out_channels), (spec.in_channels, taps * spec.in_channels)


def stores_by_tma(spec: Conv2d, layout: str) -> bool:
    """Whether the output goes out through a tensor map (NHWC with 16-byte pixel rows), else from
    registers through its strides."""
    return layout == "NHWC" and spec.out_channels % 8 == 0


def output_view(spec: Conv2d) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The 4-D view of the NHWC output: (channels, columns, rows, images) and its strides."""
    k, wo, ho = spec.out_channels, spec.out_width, spec.out_height
    return (k, wo, ho, spec.batch), (k, wo * k, ho * wo * k)


def output_box(patch: Patch, out_box_cols: int) -> tuple[int, ...]:
    images, rows = patch.halves()
    return (out_box_cols, patch.cols, rows, images)


def channel_tiles(spec: Conv2d) -> int:
    return -(-spec.in_channels // BLOCK_K)
