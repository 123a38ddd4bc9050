"""How depthwise.cu's kernels run a depthwise convolution, worked out on the CPU before any launch.

NHWC: one thread per (image, output row, PIX output columns, VEC channels), VEC channels in one
16-byte vector where the multiplier is 1 and the channels and pointers are aligned; square 3x3,
5x5 and 7x7 windows at stride 1 or 2 along w, without dilation, run unrolled.  For 3x3 windows
at stride 1 or 2 both ways, a second NHWC kernel takes flat runs of output rows: one thread per
VEC elements of a row's OW * C, down a band of rows (``flat_plan``; the build times both).  NCHW:
one block per TH x TW tile of one output plane, its input tile (halo included) staged in shared
memory; also the rows kernel (``rows_plan``): a block stages whole-width input rows, of several
whole planes or under a band of one plane's output rows, and a thread computes strips of output
rows of one or two neighbouring columns; for 3x3 layers at stride 1 or 2 both ways, a flat-run
kernel too: one thread per four (or one) output columns of a plane, down a band of rows, a block
several planes' rows.
Needs neither CuPy nor a GPU, so that tests can check the index math on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels import depthwise_scope
from kernels.cupy import sources
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

# Must match depthwise.cu.
NHWC_THREADS = 256
PIX = 4  # output pixels per NHWC thread
FLAT_THREADS = 128
# Band heights of the flat kernels, tallest first.  A band reads two input rows more than its
# output rows (at stride 1), so taller bands read less twice, and shorter ones balance the SMs
# better.  The build times two: the tallest band that leaves FLAT_BLOCKS_PER_SM blocks an SM
# (about four waves of the resident blocks: three in NHWC, whose threads hold 150 registers, 16 in
# NCHW), and the tallest band: on the H100, taller bands ran NHWC 14 x 14 and 28 x 28 planes up to
# 1.3x faster than 4-row ones at fewer blocks than the SMs hold.
FLAT_BANDS = (32, 16, 8, 4)
FLAT_BLOCKS_PER_SM = {"NHWC": 12, "NCHW": 64}
# NCHW: output columns a thread of the flat-run kernel (sources.DEPTHWISE_NCHW_FLAT_COLUMNS): four
# load 1.5 input elements an output at stride 1, two load 2, one loads three.  The build also times
# one and two (narrow planes: more threads a row).
NCHW_FLAT_COLUMNS = 4
NCHW_MAX_THREADS = 256

SHARED_LIMIT = 48 * 1024  # the NCHW tile stays within what a block gets without opting in
# The NCHW rows kernel (must match depthwise.cu): output rows a thread's strip at stride 1 or 2
# (unrolled windows; one in the loops), output columns an item side by side for windows up to
# ROWS_COLUMNS_MAX_K (a filter copy each column: two 7 x 7 copies would not fit the registers of
# two blocks an SM), a chunk's items for a block's threads, about (whole planes, or a band's
# rows), the chunks an SM a group of whole planes leaves at least, where there are planes
# enough, so that each resident block walks several, and the staging buffers a block has at most
# (stages - 1 chunks in flight while it computes one).
ROWS_THREADS = 256
ROWS_STRIPS = {1: 8, 2: 4}
ROWS_COLUMNS = 2
ROWS_COLUMNS_MAX_K = 5
ROWS_ITEMS = 512
ROWS_CHUNKS_PER_SM = 16
ROWS_MAX_STAGES = 4
TILE_OUTPUTS = 1024  # NCHW: outputs of a tile, four per thread at 256 threads
MIN_TILE_W = 8
MAX_TILE_W = 32
MAX_GRID_YZ = 65535
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class DepthwisePlan:
    name: str  # the kernel's instantiation (sources.depthwise_*_name)
    grid: tuple[int, int, int]
    threads: int
    shared_bytes: int
    vec: int  # elements a thread: NHWC channels (1 for the NCHW tile kernel), flat NCHW output columns
    kernel: int  # the unrolled window (K x K), 0 for the loops
    items: int  # NHWC: threads that compute (the rest of the last block return at once)
    tile: tuple[int, int, int, int]  # NCHW: (TH, TW, IH, IW): output tile, staged input tile
    band: int = 0  # flat: output rows a block walks down
    segments: int = 0  # flat: blocks along an output row's run
    row_threads: int = 0  # flat NCHW: threads along a plane's row (a power of two), planes a block the rest
    group: int = 0  # rows NCHW: input planes a chunk stages (1: the rows under a band of one plane)
    chunks: int = 0  # rows NCHW: chunks the blocks walk
    buffer: int = 0  # rows NCHW: elements of each of a block's staging buffers
    stages: int = 0  # rows NCHW: staging buffers a block (stages - 1 chunks in flight while one is computed)


def multiplier(spec: Conv2d) -> int:
    return spec.out_channels // spec.in_channels


def _square(spec: Conv2d) -> int:
    """K of a K x K window whose taps depthwise.cu unrolls; 0 for any other window."""
    return spec.kernel_h if spec.kernel_h == spec.kernel_w and spec.kernel_h in sources.DEPTHWISE_UNROLLED else 0


def nhwc_plan(spec: Conv2d, ctype: str, x_ptr: int, out_ptr: int) -> DepthwisePlan:
    s = spec
    width = sources.vector_width(ctype)
    aligned = s.in_channels % width == 0 and x_ptr % 16 == 0 and out_ptr % 16 == 0
    vec = width if multiplier(s) == 1 and aligned else 1
    # The unrolled rows: vectors, no dilation, the stride along w a template argument.
    rows = vec > 1 and (s.dilation_h, s.dilation_w) == (1, 1) and s.stride_w in sources.DEPTHWISE_NHWC_STRIDES
    k = _square(s) if rows else 0
    items = s.batch * s.out_height * -(-s.out_width // PIX) * (s.out_channels // vec)
    if items > INT32_MAX - NHWC_THREADS:
        raise Unsupported(f"the depthwise NHWC kernel indexes its {items} threads in int32")
    return DepthwisePlan(sources.depthwise_nhwc_name(ctype, vec, k, s.stride_w if k else 0),
                         (-(-items // NHWC_THREADS), 1, 1), NHWC_THREADS, 0, vec, k, items, (0, 0, 0, 0))


def flat_refusal(spec: Conv2d, layout: str) -> str | None:
    """Why the flat-run kernels cannot run ``spec`` in ``layout`` whatever the data, or None."""
    return depthwise_scope.flat_refusal(spec, layout, "the flat-run depthwise kernel")


def flat_plan(spec: Conv2d, layout: str, ctype: str, x_ptr: int, out_ptr: int, sms: int,
              band: int | None = None, columns: int = NCHW_FLAT_COLUMNS) -> DepthwisePlan:
    """The flat-run kernel's launch for ``layout`` on a GPU of ``sms`` SMs, in bands of ``band``
    output rows (None: the tallest that give each SM FLAT_BLOCKS_PER_SM blocks, the shortest where
    none does), in NCHW ``columns`` output columns a thread; Unsupported, with the reason, where it
    cannot run ``spec`` (see ``flat_refusal``; and in NHWC whole 16-byte vectors of channels)."""
    s = spec
    reason = flat_refusal(s, layout)
    if reason:
        raise Unsupported(reason)
    if band is not None and band < 1:
        raise ValueError(f"band must be at least 1 output row, got {band}")
    if layout == "NHWC":
        vec, threads_in_row = sources.vector_width(ctype), 0
        if s.in_channels % vec or x_ptr % 16 or out_ptr % 16:
            raise Unsupported(f"the flat-run depthwise kernel needs channels a multiple of {vec} and 16-byte "
                              f"aligned x and out, got {s.in_channels} channels")
        segments = -(-s.out_width * s.in_channels // (FLAT_THREADS * vec))
        groups = s.batch
        name = sources.depthwise_flat_name(ctype, vec, s.stride_h)
    else:
        if columns not in sources.DEPTHWISE_NCHW_FLAT_COLUMNS:
            raise ValueError(f"columns must be one of {sources.DEPTHWISE_NCHW_FLAT_COLUMNS}, got {columns}")
        groups_in_row = -(-s.out_width // columns)  # a thread's columns
        vec, threads_in_row = columns, min(1 << (groups_in_row - 1).bit_length(), FLAT_THREADS)
        segments = -(-groups_in_row // threads_in_row)
        groups = -(-s.batch * s.in_channels // (FLAT_THREADS // threads_in_row))
        name = sources.depthwise_nchw_flat_name(ctype, s.stride_h, columns)
    per_sm = FLAT_BLOCKS_PER_SM[layout]
    if band is None:
        band = next((b for b in FLAT_BANDS if groups * -(-s.out_height // b) * segments >= per_sm * sms),
                    FLAT_BANDS[-1])
    blocks = groups * -(-s.out_height // band) * segments
    if blocks > INT32_MAX:
        raise Unsupported(f"the flat-run depthwise kernel's grid of {blocks} blocks exceeds the CUDA limit")
    return DepthwisePlan(name, (blocks, 1, 1), FLAT_THREADS, 0, vec, 3, 0, (0, 0, 0, 0), band, segments,
                         threads_in_row)


def input_tile(spec: Conv2d, th: int, tw: int) -> tuple[int, int]:
    """(IH, IW): the input rows and columns under a TH x TW output tile, halo included."""
    s = spec
    return ((th - 1) * s.stride_h + (s.kernel_h - 1) * s.dilation_h + 1,
            (tw - 1) * s.stride_w + (s.kernel_w - 1) * s.dilation_w + 1)


def nchw_tile(spec: Conv2d) -> tuple[int, int]:
    """(TH, TW): TW a power of two in [8, 32] covering the row where it can, TH rows up to
    TILE_OUTPUTS outputs, both halved (TH first) until the input tile fits SHARED_LIMIT."""
    s = spec
    tw = min(MAX_TILE_W, max(MIN_TILE_W, 1 << (s.out_width - 1).bit_length()))
    th = min(s.out_height, TILE_OUTPUTS // tw)
    while 4 * _area(input_tile(s, th, tw)) > SHARED_LIMIT:
        if th > 1:
            th = (th + 1) // 2
        elif tw > MIN_TILE_W:
            tw //= 2
        else:
            ih, iw = input_tile(s, 1, MIN_TILE_W)
            raise Unsupported(f"the depthwise NCHW kernel stages the input under its tile in shared memory: "
                              f"{ih} x {iw} fp32 values for the smallest tile, more than {SHARED_LIMIT} bytes")
    return th, tw


def _area(hw: tuple[int, int]) -> int:
    return hw[0] * hw[1]


def nchw_threads(th: int, tw: int) -> int:
    """TW threads per output row, as many rows as the tile has up to NCHW_MAX_THREADS threads,
    rounded up to whole warps."""
    rows = min(th, NCHW_MAX_THREADS // tw)
    per_warp = 32 // tw  # rows of a warp
    return tw * -(-rows // per_warp) * per_warp


def nchw_plan(spec: Conv2d, ctype: str) -> DepthwisePlan:
    s = spec
    th, tw = nchw_tile(s)
    ih, iw = input_tile(s, th, tw)
    grid = (s.batch * s.out_channels, -(-s.out_height // th), -(-s.out_width // tw))
    if max(grid[1:]) > MAX_GRID_YZ:
        raise Unsupported(f"the depthwise NCHW kernel's grid {grid} exceeds the CUDA limits")
    k = _square(s)  # any stride and dilation: the taps read shared memory
    return DepthwisePlan(sources.depthwise_nchw_name(ctype, k), grid, nchw_threads(th, tw), 4 * ih * iw, 1, k,
                         0, (th, tw, ih, iw))


def rows_columns(k: int) -> int:
    """Output columns a thread of the rows kernel computes side by side for a k x k window (k = 0:
    any window, in loops, one output an item)."""
    return ROWS_COLUMNS if 0 < k <= ROWS_COLUMNS_MAX_K else 1


def rows_input(spec: Conv2d, band: int) -> int:
    """Input rows under ``band`` consecutive output rows (at most the plane's)."""
    return min(spec.height, input_tile(spec, band, 1)[0])


def rows_plan(spec: Conv2d, ctype: str, sms: int, resident: int = 2, stages: int = 2) -> DepthwisePlan:
    """The NCHW rows kernel's launch on a GPU of ``sms`` SMs, each holding ``resident`` of its
    blocks, each staging ``stages`` chunks (2 to ROWS_MAX_STAGES): chunks of about ROWS_ITEMS
    items, of whole planes where a plane has fewer outputs (as many planes as leave
    ROWS_CHUNKS_PER_SM chunks an SM), else of a band of one plane's rows, shorter until ``stages``
    buffers of their input rows fit SHARED_LIMIT; one block a chunk up to ``resident`` an SM.
    Unsupported where one strip's rows do not fit."""
    if not 2 <= stages <= ROWS_MAX_STAGES:
        raise ValueError(f"stages must be 2 to {ROWS_MAX_STAGES}, got {stages}")
    s = spec
    square = (s.stride_h == s.stride_w and s.stride_h in sources.DEPTHWISE_ROWS_STRIDES
              and (s.dilation_h, s.dilation_w) == (1, 1))
    k = _square(s) if square else 0
    strip = ROWS_STRIPS[s.stride_h] if k else 1
    vec = sources.vector_width(ctype)
    planes, mult = s.batch * s.in_channels, multiplier(s)
    plane = s.height * s.width
    whole = -(-s.out_height // strip) * strip  # a plane's output rows, in whole strips
    room = SHARED_LIMIT // (stages * sources.ITEMSIZE[ctype]) // vec * vec - vec  # a buffer's elements past its lead
    target = ROWS_ITEMS * strip * rows_columns(k)  # outputs a chunk
    outputs = s.out_height * s.out_width * mult
    if outputs <= target and plane <= room:
        group = max(1, min(target // outputs, room // plane, -(-planes // (ROWS_CHUNKS_PER_SM * sms))))
        band, staged = whole, group * plane
    else:
        group = 1
        band = min(whole, max(strip, target // (s.out_width * mult) // strip * strip))
        while band > strip and rows_input(s, band) * s.width > room:
            band -= strip
        staged = rows_input(s, band) * s.width
        if staged > room:
            raise Unsupported(f"the depthwise NCHW rows kernel stages whole input rows in shared memory, "
                              f"{stages} buffers of {rows_input(s, band)} rows of {s.width} values for one strip "
                              f"of output rows: more than {SHARED_LIMIT} bytes")
    chunks = -(-planes // group) * -(-s.out_height // band)
    grid = min(chunks, resident * sms)
    if chunks + (stages - 1) * grid > INT32_MAX:  # a block counts chunks stages - 1 ahead in int32
        raise Unsupported(f"the depthwise NCHW rows kernel's {chunks} chunks exceed int32")
    buffer = -(-(staged + vec) // vec) * vec  # elements, whole 16-byte granules
    return DepthwisePlan(sources.depthwise_nchw_rows_name(ctype, k, s.stride_h if k else 0),
                         (grid, 1, 1), ROWS_THREADS, stages * buffer * sources.ITEMSIZE[ctype],
                         strip, k, 0, (0, 0, 0, 0), band, group=group, chunks=chunks, buffer=buffer, stages=stages)


def plan_depthwise(spec: Conv2d, layout: str, ctype: str, x_ptr: int = 0, out_ptr: int = 0) -> DepthwisePlan:
    """The plan for ``spec`` with data of C type ``ctype`` at ``x_ptr`` and ``out_ptr``;
    Unsupported, with the reason, where the kernels cannot run it."""
    if not spec.depthwise:
        raise ValueError(f"not a depthwise convolution: groups {spec.groups}, in_channels {spec.in_channels}")
    return nhwc_plan(spec, ctype, x_ptr, out_ptr) if layout == "NHWC" else nchw_plan(spec, ctype)
