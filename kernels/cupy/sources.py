"""What the CuPy kernels are compiled from and with: sources, name expressions, NVRTC options.

The launchers (at run time, through ``cupy.RawModule``) and ``tests/test_cupy_compile.py``
(through ``cuda.bindings.nvrtc``, without a GPU) both take sources, template instantiations and
options from here, so the compile check compiles exactly what runs.  This module imports
neither CuPy nor torch: the compile check loads it by path where CuPy is not installed.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
COMMON_HEADER = "layerbench_common.cuh"

# C++ storage type of each benchmark dtype ("tf32" stores fp32 and multiplies as TF32).
CTYPES = {"fp32": "float", "tf32": "float", "fp16": "__half", "bf16": "__nv_bfloat16"}
ITEMSIZE = {"float": 4, "__half": 2, "__nv_bfloat16": 2}
STORAGE_TYPES = ("float", "__half", "__nv_bfloat16")

# CuPy appends these to every NVRTC compile (cupy/cuda/compiler.py, CuPy 13 and 14), after the
# options we pass; the compile check adds them so that it compiles what CuPy compiles.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")

# Headers the kernels include, which NVRTC 13 does not carry built in.
REQUIRED_HEADERS = ("cuda_fp16.h", "cuda_fp16.hpp", "cuda_bf16.h", "cuda_bf16.hpp")

POOL_METHODS = {"max": 0, "avg": 1}  # template argument of the pooling kernels


def vector_width(ctype: str) -> int:
    """Elements of ``ctype`` in one 16-byte load."""
    return 16 // ITEMSIZE[ctype]


def _cpp_bool(v: bool) -> str:
    return "true" if v else "false"


def relu_name(ctype: str) -> str:
    return f"relu<{ctype}>"


POOL_UNROLLED = (2, 3)  # window sizes the pooling kernels unroll (the thesis's); others run k


def _pool_k(kernel: int) -> int:
    return kernel if kernel in POOL_UNROLLED else 0


def pool_nchw_name(ctype: str, method: str, kernel: int, padded: bool) -> str:
    return f"pool2d_nchw<{ctype}, {POOL_METHODS[method]}, {_pool_k(kernel)}, {_cpp_bool(padded)}>"


def pool_nchw_direct_name(ctype: str, method: str) -> str:
    return f"pool2d_nchw_direct<{ctype}, {POOL_METHODS[method]}>"


def pool_nhwc_name(ctype: str, method: str, vec: int, kernel: int) -> str:
    return f"pool2d_nhwc<{ctype}, {POOL_METHODS[method]}, {vec}, {_pool_k(kernel)}>"


def igemm_name(ctype: str, tensor_cores: bool, a_vec: bool, grouped: bool = False) -> str:
    """The GEMM kernel: FFMA for fp32, mma.sync for fp16/bf16 and for fp32 data as tf32;
    ``grouped``: the instantiation that runs one GEMM per group of a grouped convolution."""
    if not tensor_cores:
        if ctype != "float":
            raise ValueError(f"the FFMA kernel is fp32 only, got {ctype}")
        return f"igemm_simt<{_cpp_bool(a_vec)}, {_cpp_bool(grouped)}>"
    return f"igemm_mma<{ctype}, {_cpp_bool(a_vec)}, {_cpp_bool(grouped)}>"


def reduce_name(ctype: str) -> str:
    return f"splitk_reduce<{ctype}>"


def to_channels_last_name(ctype: str) -> str:
    return f"to_channels_last<{ctype}>"


SUBSAMPLE_NHWC = "subsample_nhwc"  # layout.cu: the pixels on a stride's grid (16-byte chunks, any dtype)


def im2col_name(itemsize: int) -> str:
    """layout.cu's im2col for elements of ``itemsize`` bytes (copied as their bit patterns)."""
    bits = {2: "unsigned short", 4: "unsigned int"}
    if itemsize not in bits:
        raise ValueError(f"im2col copies 2- or 4-byte elements, got {itemsize}")
    return f"im2col<{bits[itemsize]}>"


def relu_backward_name(ctype: str) -> str:
    return f"relu_backward<{ctype}>"


POOL_LAYOUTS = {"NCHW": False, "NHWC": True}  # the backward kernel's NHWC template argument


def pool_backward_name(ctype: str, method: str, layout: str, winners: bool = False) -> str:
    return (f"pool2d_backward<{ctype}, {POOL_METHODS[method]}, {_cpp_bool(POOL_LAYOUTS[layout])}, "
            f"{_cpp_bool(winners)}>")


def pool_winners_name(ctype: str, layout: str) -> str:
    return f"pool2d_winners<{ctype}, {_cpp_bool(POOL_LAYOUTS[layout])}>"


def column_sums_name(ctype: str) -> str:
    return f"column_sums<{ctype}>"


def conv_dgrad_name(ctype: str, tensor_cores: bool) -> str:
    """conv2d_backward.cu's data gradient: FFMA for fp32, mma.sync for fp16/bf16 and fp32 data as tf32."""
    return f"conv_dgrad<{_backward_args(ctype, tensor_cores)}>"


def conv_wgrad_name(ctype: str, tensor_cores: bool) -> str:
    """conv2d_backward.cu's weight gradient partial sums, FFMA or mma.sync as ``conv_dgrad_name``."""
    return f"conv_wgrad<{_backward_args(ctype, tensor_cores)}>"


def _backward_args(ctype: str, tensor_cores: bool) -> str:
    if not tensor_cores and ctype != "float":
        raise ValueError(f"the FFMA kernels are fp32 only, got {ctype}")
    return f"{ctype}, {_cpp_bool(tensor_cores)}"


def wgrad_reduce_name(ctype: str) -> str:
    return f"wgrad_reduce<{ctype}>"


# (storage type, tensor cores) of every backward GEMM instantiation.
BACKWARD_VARIANTS = (("float", False),) + tuple((t, True) for t in STORAGE_TYPES)

# Depthwise windows whose taps unroll (square, K x K), and the strides along w of the NHWC kernel's
# unrolled rows; any other window runs the kernels' loops (K = 0).
DEPTHWISE_UNROLLED = (3, 5, 7)
DEPTHWISE_NHWC_STRIDES = (1, 2)
DEPTHWISE_FLAT_STRIDES = (1, 2)  # the flat-run kernels' stride, the same both ways
DEPTHWISE_NCHW_FLAT_COLUMNS = (1, 2, 4)  # output columns a thread of the NCHW flat-run kernel
DEPTHWISE_ROWS_STRIDES = (1, 2)  # the NCHW rows kernel's unrolled windows' stride, the same both ways


def depthwise_nhwc_name(ctype: str, vec: int, kernel: int, stride_w: int) -> str:
    """depthwise.cu's NHWC kernel: ``vec`` channels per thread; ``kernel`` 0 (with ``stride_w`` 0)
    for the loops, else a window of kernel x kernel taps at stride ``stride_w`` along w."""
    return f"depthwise_nhwc<{ctype}, {vec}, {kernel}, {stride_w}>"


def depthwise_flat_name(ctype: str, vec: int, stride: int) -> str:
    """depthwise.cu's NHWC kernel on flat runs of output rows: 3x3, ``vec`` channels per thread,
    ``stride`` both ways."""
    return f"depthwise_nhwc_flat<{ctype}, {vec}, {stride}>"


def depthwise_nchw_flat_name(ctype: str, stride: int, columns: int) -> str:
    """depthwise.cu's NCHW kernel on flat runs of each plane's output rows: 3x3, ``stride`` both
    ways, ``columns`` output columns a thread."""
    return f"depthwise_nchw_flat<{ctype}, {stride}, {columns}>"


def depthwise_nchw_rows_name(ctype: str, kernel: int, stride: int) -> str:
    """depthwise.cu's NCHW kernel on staged whole-width rows: a ``kernel`` x ``kernel`` window at
    ``stride`` both ways unrolled, or 0 (with ``stride`` 0) for the loops."""
    return f"depthwise_nchw_rows<{ctype}, {kernel}, {stride}>"


def depthwise_nchw_name(ctype: str, kernel: int) -> str:
    """depthwise.cu's NCHW kernel: ``kernel`` x ``kernel`` taps unrolled, or 0 for the loops."""
    return f"depthwise_nchw<{ctype}, {kernel}>"


FFT_LOG_SIZES = range(4, 8)  # transforms of 16 x 16 .. 128 x 128 (shared memory caps the size)
FFT_CGEMM_NAME = "fft_cgemm"


# The wgmma GEMM's (block columns, pipeline stages): 128 x 128 tiles in six 32 KiB stages,
# 128 x 256 tiles in four 48 KiB stages (192 KiB of shared memory either way).
WGMMA_CONFIGS = ((128, 6), (256, 4))
WGMMA_CTYPES = ("__half", "__nv_bfloat16")


def igemm_wgmma_name(ctype: str, a_vec: bool, grouped: bool = False) -> str:
    return f"igemm_wgmma<{ctype}, {_cpp_bool(a_vec)}, {_cpp_bool(grouped)}>"


def linear_wgmma_name(ctype: str, block_n: int, stages: int) -> str:
    return f"linear_wgmma<{ctype}, {block_n}, {stages}>"


# The TMA GEMM's (block columns, pipeline stages, blocks an SM): beside the ring, each tile's
# outputs are staged in shared memory for the TMA stores (16, 32 or 64 KiB), so one block an SM
# fits 8, 6 and 3 stages (209, 224 and 208 KiB).  64 columns: twice the tiles of 128 where a
# narrow output leaves SMs idle (classifiers).  Two blocks an SM (3 and 2 stages, 89 and 97 KiB
# each, at most 112 registers a thread): while one block stores a tile, the other multiplies,
# which a single block cannot overlap; it pays where a tile has few k tiles (short K, 64 channels).
TMA_CONFIGS = ((64, 8, 1), (128, 6, 1), (256, 3, 1), (64, 3, 2), (128, 2, 2))


def linear_tma_name(ctype: str, block_n: int, stages: int, blocks: int) -> str:
    return f"linear_tma<{ctype}, {block_n}, {stages}, {blocks}>"


def conv_tma_name(ctype: str, block_n: int, stages: int, blocks: int) -> str:
    """conv_tma.cu: the TMA GEMM's pipeline with its input boxes cut from the image (TMA_CONFIGS)."""
    return f"conv_tma<{ctype}, {block_n}, {stages}, {blocks}>"


POINTWISE_GEMM_CTYPES = ("__half", "__nv_bfloat16")  # mma.sync m16n8k16
POINTWISE_GEMM_BLOCKS_M = (128, 64, 32)  # rows of output a block
POINTWISE_GEMM_CHUNKS = (8, 4)  # values a copy of the second operand moves: 16 or 8 bytes


def pointwise_gemm_name(ctype: str, block_m: int, chunk: int) -> str:
    """pointwise_gemm.cu: a 1x1 convolution as GEMMs on its tensors (per image in NCHW, one in
    NHWC), ``block_m`` rows of output a block, the second operand moved ``chunk`` values at a time."""
    return f"pointwise_gemm<{ctype}, {block_m}, {chunk}>"


def fft_forward_name(log_n: int) -> str:
    return f"fft_forward<{log_n}>"


def fft_inverse_name(log_n: int) -> str:
    return f"fft_inverse<{log_n}>"


def fft_weight_name(log_n: int) -> str:
    return f"fft_weight<{log_n}>"


@dataclass(frozen=True)
class Source:
    """A .cu file and the template instantiations compiled from it.  ``archs``: the compute
    capabilities (major * 10 + minor) it is compiled for (None: sm_80 and newer);
    ``options``: NVRTC options of this file alone (an arch-specific target such as sm_90a,
    which NVRTC takes over the plain -arch=sm_90 that CuPy appends)."""

    file: str
    name_expressions: tuple[str, ...]
    archs: tuple[int, ...] | None = None
    options: tuple[str, ...] = ()


SOURCES: dict[str, Source] = {
    "relu": Source("relu.cu", tuple(relu_name(t) for t in STORAGE_TYPES)),
    "pool2d": Source("pool2d.cu", tuple(
        [pool_nchw_name(t, m, k, padded) for t in STORAGE_TYPES for m in POOL_METHODS for k in (0, *POOL_UNROLLED)
         for padded in (False, True)]
        + [pool_nchw_direct_name(t, m) for t in STORAGE_TYPES for m in POOL_METHODS]
        + [pool_nhwc_name(t, m, v, k) for t in STORAGE_TYPES for m in POOL_METHODS
           for v in (1, vector_width(t)) for k in (0, *POOL_UNROLLED)])),
    "igemm": Source("igemm.cu", tuple(
        [igemm_name("float", False, a, gr) for a in (True, False) for gr in (False, True)]
        + [igemm_name(t, True, a, gr) for t in STORAGE_TYPES for a in (True, False) for gr in (False, True)]
        + [reduce_name(t) for t in STORAGE_TYPES])),
    "layout": Source("layout.cu", (*(to_channels_last_name(t) for t in STORAGE_TYPES), SUBSAMPLE_NHWC,
                                   im2col_name(2), im2col_name(4))),
    "relu_backward": Source("relu_backward.cu", tuple(relu_backward_name(t) for t in STORAGE_TYPES)),
    "pool2d_backward": Source("pool2d_backward.cu", tuple(
        [pool_backward_name(t, m, lt) for t in STORAGE_TYPES for m in POOL_METHODS for lt in POOL_LAYOUTS]
        + [pool_backward_name(t, "max", lt, winners=True) for t in STORAGE_TYPES for lt in POOL_LAYOUTS]
        + [pool_winners_name(t, lt) for t in STORAGE_TYPES for lt in POOL_LAYOUTS])),
    "linear_backward": Source("linear_backward.cu", tuple(column_sums_name(t) for t in STORAGE_TYPES)),
    "fft_conv": Source("fft_conv.cu", tuple(
        [fft_forward_name(n) for n in FFT_LOG_SIZES] + [fft_inverse_name(n) for n in FFT_LOG_SIZES]
        + [fft_weight_name(n) for n in FFT_LOG_SIZES] + [FFT_CGEMM_NAME])),
    # The unrolled NHWC windows need 16-byte vectors (multiplier 1, aligned channels); one
    # channel per thread runs the loops.
    "depthwise": Source("depthwise.cu", tuple(
        [depthwise_nhwc_name(t, vector_width(t), k, s) for t in STORAGE_TYPES for k in DEPTHWISE_UNROLLED
         for s in DEPTHWISE_NHWC_STRIDES]
        + [depthwise_nhwc_name(t, v, 0, 0) for t in STORAGE_TYPES for v in (1, vector_width(t))]
        + [depthwise_flat_name(t, vector_width(t), s) for t in STORAGE_TYPES for s in DEPTHWISE_FLAT_STRIDES]
        + [depthwise_nchw_flat_name(t, s, c) for t in STORAGE_TYPES for s in DEPTHWISE_FLAT_STRIDES
           for c in DEPTHWISE_NCHW_FLAT_COLUMNS]
        + [depthwise_nchw_name(t, k) for t in STORAGE_TYPES for k in (0, *DEPTHWISE_UNROLLED)]
        + [depthwise_nchw_rows_name(t, k, s) for t in STORAGE_TYPES for k in DEPTHWISE_UNROLLED
           for s in DEPTHWISE_ROWS_STRIDES]
        + [depthwise_nchw_rows_name(t, 0, 0) for t in STORAGE_TYPES])),
    "pointwise_gemm": Source("pointwise_gemm.cu", tuple(
        pointwise_gemm_name(t, bm, v) for t in POINTWISE_GEMM_CTYPES for bm in POINTWISE_GEMM_BLOCKS_M
        for v in POINTWISE_GEMM_CHUNKS)),
    "conv2d_backward": Source("conv2d_backward.cu", tuple(
        [conv_dgrad_name(t, tc) for t, tc in BACKWARD_VARIANTS]
        + [conv_wgrad_name(t, tc) for t, tc in BACKWARD_VARIANTS]
        + [wgrad_reduce_name(t) for t in STORAGE_TYPES])),
    "igemm_wgmma": Source("igemm_wgmma.cu", tuple(
        igemm_wgmma_name(t, a, gr) for t in WGMMA_CTYPES for a in (True, False) for gr in (False, True)),
        archs=(90,), options=("-arch=sm_90a",)),
    "linear_wgmma": Source("linear_wgmma.cu", tuple(
        linear_wgmma_name(t, n, s) for t in WGMMA_CTYPES for n, s in WGMMA_CONFIGS),
        archs=(90,), options=("-arch=sm_90a",)),
    "linear_tma": Source("linear_tma.cu", tuple(
        linear_tma_name(t, n, s, b) for t in WGMMA_CTYPES for n, s, b in TMA_CONFIGS),
        archs=(90,), options=("-arch=sm_90a",)),
    "conv_tma": Source("conv_tma.cu", tuple(
        conv_tma_name(t, n, s, b) for t in WGMMA_CTYPES for n, s, b in TMA_CONFIGS),
        archs=(90,), options=("-arch=sm_90a",)),
}


def source_text(name: str) -> str:
    """The source of ``name`` with each ``#include`` of a file of this folder (the common header,
    the wgmma header, a kernel file that another builds on) pasted in place, once.

    Pasting (instead of ``-I`` on this folder) puts the included text into the text that CuPy
    hashes for its on-disk kernel cache, so an edited header never serves a stale binary.
    """
    if name not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {name!r}")
    text = (KERNEL_DIR / SOURCES[name].file).read_text()
    if f'#include "{COMMON_HEADER}"' not in text:
        raise RuntimeError(f"{SOURCES[name].file} must include {COMMON_HEADER}")
    return _paste_includes(text, set())


def _paste_includes(text: str, pasted: set[str]) -> str:
    def paste(match: re.Match[str]) -> str:
        included = match.group(1)
        if not (KERNEL_DIR / included).is_file():
            return match.group(0)  # a CUDA header: NVRTC finds it on its include path
        if included in pasted:
            return f"// ---- {included} (pasted above)"
        pasted.add(included)
        body = _paste_includes((KERNEL_DIR / included).read_text(), pasted)
        return f"// ---- {included}\n{body}\n// ---- end {included}"

    return re.sub(r'^#include "([^"]+)"$', paste, text, flags=re.M)


def _has_headers(directory: str | os.PathLike[str] | None) -> bool:
    return bool(directory) and all(os.path.isfile(os.path.join(directory, h)) for h in REQUIRED_HEADERS)


def _candidate_include_dirs() -> list[str]:
    dirs: list[str] = []
    if os.environ.get("LAYERBENCH_CUDA_INCLUDE"):
        dirs.append(os.environ["LAYERBENCH_CUDA_INCLUDE"])
    # cuda-pathfinder (a CuPy 14 dependency) looks in pip wheels, conda, CUDA_PATH/CUDA_HOME.
    try:
        from cuda import pathfinder

        found = pathfinder.find_nvidia_header_directory("cudart")
        if found:
            dirs.append(str(found))
    except Exception:  # noqa: BLE001 - older or missing pathfinder: the searches below remain
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], "include"))
    # pip wheels: nvidia/cu13/include (CUDA 13), nvidia/cuda_runtime/include (CUDA 12).
    try:
        import nvidia

        for base in nvidia.__path__:
            dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")), reverse=True)
            dirs.append(os.path.join(base, "cuda_runtime", "include"))
    except ImportError:
        pass
    dirs.append("/usr/local/cuda/include")
    dirs += sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    return dirs


@lru_cache(maxsize=None)
def cuda_include_dir() -> str:
    """A directory holding cuda_fp16.h and cuda_bf16.h for NVRTC.

    Order: $LAYERBENCH_CUDA_INCLUDE, cuda-pathfinder's cudart headers (wheels first, which match
    the NVRTC wheel), $CUDA_PATH / $CUDA_HOME, nvidia wheels on sys.path, /usr/local/cuda*.
    """
    tried = _candidate_include_dirs()
    for d in tried:
        if _has_headers(d):
            return os.path.abspath(d)
    raise FileNotFoundError(
        "no CUDA include directory with " + ", ".join(REQUIRED_HEADERS) + " found; looked in "
        + ", ".join(dict.fromkeys(tried)) + ". Install the nvidia-cuda-runtime wheel or a CUDA "
        "toolkit, or set LAYERBENCH_CUDA_INCLUDE.")


def compile_options() -> tuple[str, ...]:
    """NVRTC options of every layerbench kernel (CuPy then adds CUPY_ADDED_OPTIONS and -arch)."""
    return ("-std=c++17", f"-I{cuda_include_dir()}")
