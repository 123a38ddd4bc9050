"""Tensor maps (TMA descriptors) for the CuPy kernels, encoded by the CUDA driver.

A tensor map tells Hopper's TMA unit where a tensor lives (a 2-D matrix, or a strided view of up
to 5 dimensions), which box of it one copy moves and how the box lands in shared memory (here:
the 128-byte swizzle that wgmma's descriptors read).  ``cuTensorMapEncodeTiled`` is a host
function of the driver library (libcuda), which CuPy does not wrap; it is called through ctypes.
The 128 bytes go to a kernel by value, as a ``__grid_constant__`` parameter: ``support.Launch``
passes any ctypes object.
"""

from __future__ import annotations

import ctypes
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
    lib = _driver()
    # The driver writes a 64-byte aligned object; the kernel parameter is copied from it.
    raw = (ctypes.c_uint8 * (ctypes.sizeof(TensorMap) + 64))()
    at = -ctypes.addressof(raw) % 64
    u64, u32 = ctypes.c_uint64, ctypes.c_uint32
    status = lib.cuTensorMapEncodeTiled(
        ctypes.c_void_p(ctypes.addressof(raw) + at), DATA_TYPES[t.dtype], u32(rank), ctypes.c_void_p(t.data_ptr()),
        (u64 * rank)(*dims), (u64 * max(1, rank - 1))(*strides), (u32 * rank)(*box), (u32 * rank)(*([1] * rank)),
        INTERLEAVE_NONE, SWIZZLE_128B, L2_PROMOTION_256B, OOB_FILL_ZEROS)
    if status != 0:
        raise Unsupported(f"cuTensorMapEncodeTiled refused a {t.dtype} view of dims {tuple(dims)} with boxes "
                          f"{tuple(box)}: {_error_name(lib, status)}")
    return TensorMap.from_buffer_copy(raw, at)
