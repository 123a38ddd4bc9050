"""Tensor maps (TMA descriptors) for the CuPy kernels, encoded by the CUDA driver.

A tensor map tells Hopper's TMA unit where a tensor lives (a 2-D matrix, or a strided view of up
to 5 dimensions), which box of it one copy moves and how the box lands in shared memory (here:
the 128-byte swizzle that wgmma's descriptors read).  ``cuTensorMapEncodeTiled`` is a host
function of the driver library (libcuda), which CuPy does not wrap; it is called through ctypes,
as is ``cuTensorMapEncodeIm2col`` (the im2col mode: a box of consecutive output pixels' windows).
The 128 bytes go to a kernel by value, as a ``__grid_constant__`` parameter: ``support.Launch``
passes any ctypes object.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from layerbench.errors import Unsupported

# cuda.h's enums (CUDA 12 and 13).
DATA_TYPES = {torch.float16: 6, torch.bfloat16: 9}  # CU_TENSOR_MAP_DATA_TYPE_FLOAT16, _BFLOAT16
INTERLEAVE_NONE = 0
SWIZZLE_128B = 3
L2_PROMOTION_256B = 3
OOB_FILL_ZEROS = 0  # CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: elements past the tensor read as zeros

SWIZZLE_BYTES = 128  # a box row may span at most one swizzle line
MAX_BOX = 256  # elements along each box dimension
MAX_STRIDE = 1 << 40  # bytes
MAX_RANK = 5
ALIGN = 16  # bytes: the tensor's address and its row stride

TensorMap = ctypes.c_uint64 * 16  # CUtensorMap: 128 opaque bytes


def _row_bytes(t: torch.Tensor) -> int:
    """Bytes from one row to the next; a single row's stride is arbitrary (torch may report 1), so
    it gets the canonical one, its length rounded up to the 16 bytes a tensor map steps in."""
    if t.shape[0] == 1:
        return -(-t.shape[1] * t.element_size() // ALIGN) * ALIGN
    return t.stride(0) * t.element_size()


def check_2d(t: torch.Tensor, box_rows: int, box_cols: int) -> None:
    """Raise Unsupported unless the TMA unit can copy (box_rows x box_cols) boxes of ``t`` in the
    128-byte swizzle: a row-major 2-D fp16/bf16 tensor, 16-byte aligned rows, rows of at most
    one swizzle line a box."""
    row_bytes = _check_matrix(t)
    check_view(t, (t.shape[1], t.shape[0]), (row_bytes,), (box_cols, box_rows))


def _check_matrix(t: torch.Tensor) -> int:
    """The bytes from one row of ``t`` to the next; Unsupported unless ``t`` is a row-major matrix
    whose rows a tensor map can step through."""
    if t.dim() != 2 or (t.stride(1) != 1 and t.shape[1] > 1):
        raise Unsupported(f"a tensor map needs a 2-D tensor with unit column stride, got shape "
                          f"{tuple(t.shape)} strides {t.stride()}")
    row_bytes = _row_bytes(t)
    if t.data_ptr() % ALIGN or row_bytes % ALIGN or not 0 < row_bytes < MAX_STRIDE:
        raise Unsupported(f"a tensor map needs a {ALIGN}-byte aligned address and row stride, got address "
                          f"{t.data_ptr():#x} and {row_bytes} bytes a row")
    return row_bytes


@lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise Unsupported(f"tensor maps need the CUDA driver library libcuda.so.1: {e}") from e
    if not hasattr(lib, "cuTensorMapEncodeTiled"):
        raise Unsupported("this CUDA driver has no cuTensorMapEncodeTiled (CUDA 12.0 or newer needed)")
    lib.cuTensorMapEncodeTiled.restype = ctypes.c_int
    lib.cuTensorMapEncodeIm2col.restype = ctypes.c_int
    lib.cuGetErrorName.restype = ctypes.c_int
    return lib


def _error_name(lib: ctypes.CDLL, code: int) -> str:
    name = ctypes.c_char_p()
    if lib.cuGetErrorName(code, ctypes.byref(name)) != 0 or name.value is None:
        return f"CUresult {code}"
    return name.value.decode()


def encode_2d(t: torch.Tensor, box_rows: int, box_cols: int) -> TensorMap:
    """The tensor map of row-major ``t`` for boxes of box_rows x box_cols elements, written to
    shared memory in the 128-byte swizzle; parts of a box past the tensor's end read as zeros."""
    return encode(t, (t.shape[1], t.shape[0]), (_check_matrix(t),), (box_cols, box_rows))


def check_view(t: torch.Tensor, dims: Sequence[int], strides: Sequence[int], box: Sequence[int]) -> None:
    """Raise Unsupported unless the TMA unit can copy ``box`` boxes of the view of ``t``'s memory
    that ``dims`` and ``strides`` (bytes) describe, in the 128-byte swizzle (see ``encode``)."""
    rank = len(dims)
    if not (len(box) == rank and len(strides) == rank - 1 and 1 <= rank <= MAX_RANK):
        raise ValueError(f"a tensor map has 1 to {MAX_RANK} dimensions, a box and a stride for each but the "
                         f"innermost; got dims {tuple(dims)}, strides {tuple(strides)}, box {tuple(box)}")
    if t.dtype not in DATA_TYPES:
        raise Unsupported(f"tensor maps here take fp16 or bf16 data, not {t.dtype}")
    if t.data_ptr() % ALIGN or any(s % ALIGN or not 0 < s < MAX_STRIDE for s in strides):
        raise Unsupported(f"a tensor map needs a {ALIGN}-byte aligned address and strides, got address "
                          f"{t.data_ptr():#x} and strides {tuple(strides)} bytes")
    if any(not 1 <= b <= MAX_BOX for b in box):
        raise Unsupported(f"a TMA box has 1 to {MAX_BOX} elements a side, got {tuple(box)}")
    if box[0] * t.element_size() > SWIZZLE_BYTES:
        raise Unsupported(f"a box row of the 128-byte swizzle spans at most {SWIZZLE_BYTES} bytes, got "
                          f"{box[0] * t.element_size()}")


def encode(t: torch.Tensor, dims: Sequence[int], strides: Sequence[int], box: Sequence[int]) -> TensorMap:
    """The tensor map of a view of ``t``'s memory: ``dims`` elements along each dimension and
    ``box`` elements a box, innermost first (the innermost dimension contiguous), ``strides`` bytes
    between steps of every dimension but the innermost; boxes land in the 128-byte swizzle and
    read zeros wherever they lie past the view's ends."""
    check_view(t, dims, strides, box)
    rank = len(dims)
    u64, u32 = ctypes.c_uint64, ctypes.c_uint32
    return _encoded("cuTensorMapEncodeTiled", f"a {t.dtype} view of dims {tuple(dims)} with boxes {tuple(box)}",
                    DATA_TYPES[t.dtype], u32(rank), ctypes.c_void_p(t.data_ptr()), (u64 * rank)(*dims),
                    (u64 * max(1, rank - 1))(*strides), (u32 * rank)(*box), (u32 * rank)(*([1] * rank)),
                    INTERLEAVE_NONE, SWIZZLE_128B, L2_PROMOTION_256B, OOB_FILL_ZEROS)


def _encoded(encoder: str, what: str, *args: object) -> TensorMap:
    """The tensor map the driver's ``encoder`` writes for ``args`` (Unsupported, naming ``what``,
    where it refuses them)."""
    lib = _driver()
    # The driver writes a 64-byte aligned object; the kernel parameter is copied from it.
    raw = (ctypes.c_uint8 * (ctypes.sizeof(TensorMap) + 64))()
    at = -ctypes.addressof(raw) % 64
    status = getattr(lib, encoder)(ctypes.c_void_p(ctypes.addressof(raw) + at), *args)
    if status != 0:
        raise Unsupported(f"{encoder} refused {what}: {_error_name(lib, status)}")
    return TensorMap.from_buffer_copy(raw, at)


@dataclass(frozen=True)
class Im2col:
    """An im2col tensor map's geometry over an NHWC tensor (see ``encode_im2col``): the window of
    filter origins, relative to the image's corners (lower: from (0, 0); upper: from (H - 1, W - 1),
    both (h, w)), the traversal strides (h, w), and the box: ``pixels`` consecutive windows of
    ``channels`` channels each."""

    lower: tuple[int, int]
    upper: tuple[int, int]
    strides: tuple[int, int]
    pixels: int
    channels: int


def encode_im2col(t: torch.Tensor, geometry: Im2col) -> TensorMap:
    """The im2col tensor map of a dense NHWC ``t`` (a channels_last [N, C, H, W] tensor): a copy at
    (c, w, h, n) with offsets (s, r) loads, for ``pixels`` filter origins from (n, h, w) on, in the
    order of the output's pixels (columns, then rows within the window, then images), the
    ``channels`` channels from c of the input pixel at origin + (r, s), zeros where that lies past
    the image; rows land in the 128-byte swizzle, as ``encode``'s boxes do."""
    dims, strides = check_im2col(t, geometry)
    u64, u32, i32 = ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int
    # The driver's order is innermost first: (w, h) for the corners and the traversal strides.
    return _encoded("cuTensorMapEncodeIm2col", f"{geometry} over a {t.dtype} tensor of shape {tuple(t.shape)}",
                    DATA_TYPES[t.dtype], u32(4), ctypes.c_void_p(t.data_ptr()), (u64 * 4)(*dims), (u64 * 3)(*strides),
                    (i32 * 2)(*geometry.lower[::-1]), (i32 * 2)(*geometry.upper[::-1]), u32(geometry.channels),
                    u32(geometry.pixels), (u32 * 4)(1, *geometry.strides[::-1], 1),
                    INTERLEAVE_NONE, SWIZZLE_128B, L2_PROMOTION_256B, OOB_FILL_ZEROS)


def check_im2col(t: torch.Tensor, geometry: Im2col) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The dims (c, w, h, n) and byte strides (w, h, n) of NHWC ``t``'s im2col map; Unsupported
    unless ``t`` is dense NHWC fp16 or bf16 and the box fits a tensor map."""
    n, c, h, w = t.shape
    size = t.element_size()
    if t.dtype not in DATA_TYPES or not t.is_contiguous(memory_format=torch.channels_last):
        raise Unsupported(f"an im2col tensor map needs a dense NHWC fp16 or bf16 tensor, got {t.dtype} with "
                          f"strides {t.stride()}")
    dims, strides = (c, w, h, n), (c * size, w * c * size, h * w * c * size)
    check_view(t, dims, strides, (geometry.channels, 1, 1, 1))
    if not 1 <= geometry.pixels <= MAX_BOX:
        raise Unsupported(f"an im2col box holds 1 to {MAX_BOX} pixels, got {geometry.pixels}")
    return dims, strides
