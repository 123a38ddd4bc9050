"""A small typed ctypes binding to the parts of cuDNN 9's legacy API that layerbench calls.

What it binds, and from which library of the ``nvidia-cudnn-cu12``/``-cu13`` wheel that torch
installs (``site-packages/nvidia/cudnn/lib``):

* ``libcudnn_graph.so.9``: handles (``cudnnCreate``, ``cudnnSetStream``), version, error strings;
* ``libcudnn_ops.so.9``: tensor/filter/pooling/activation descriptors, ``cudnnPoolingForward``
  and ``cudnnPoolingBackward``, ``cudnnActivationForward`` and ``cudnnActivationBackward``,
  ``cudnnAddTensor``;
* ``libcudnn_cnn.so.9``: the convolution descriptor and, for each of the forward, backward-data and
  backward-filter passes, ``cudnnFindConvolution...AlgorithmEx``, its workspace size and its run
  (``cudnnConvolutionForward``, ``cudnnConvolutionBackwardData``,
  ``cudnnConvolutionBackwardFilter``); ``cudnnConvolutionBackwardBias``.

The prototypes and enum values follow the cuDNN 9 headers (``cudnn_ops.h`` declares the algorithm
enums, ``cudnn_cnn.h`` the perf structs and the convolution calls; read in 9.6); the binding test
checks every prototype against the installed headers where they are present.

cuDNN 9 marks this API deprecated in favour of its graph API but still ships it (checked in the
9.28 headers and libraries); its Python frontend has no pooling node, so this is the way to run
cuDNN's own pooling from Python.  Every call's status is checked: a non-zero status raises
``CudnnError`` with ``cudnnGetErrorString``'s name and ``cudnnGetLastErrorString``'s detail, and a
status in the NOT_SUPPORTED category raises ``CudnnNotSupported``, which is also a
``layerbench.errors.Unsupported`` so a sweep records the point as unsupported.

Importing this module loads nothing; ``load()`` does, and raises ``Unavailable`` with the reason
when the libraries are missing.  Descriptor set-up runs on the host and needs no GPU.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import functools
import importlib.util
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from layerbench.errors import Unavailable, Unsupported

# The shim first, then each sub-library after the ones it links against.
LIBRARIES = ("libcudnn.so.9", "libcudnn_graph.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9")


class Status(enum.IntEnum):
    """cudnnStatus_t's categories; a specific code is category + a number below 1000."""

    SUCCESS = 0
    NOT_INITIALIZED = 1001
    BAD_PARAM = 2000
    NOT_SUPPORTED = 3000
    INTERNAL_ERROR = 4000
    EXECUTION_FAILED = 5000


def status_category(status: int) -> int:
    """The category of a status code (cuDNN's CUDNN_STATUS_CATEGORY macro)."""
    return status // 1000 * 1000


class DataType(enum.IntEnum):
    FLOAT = 0
    DOUBLE = 1
    HALF = 2
    BFLOAT16 = 9


class TensorFormat(enum.IntEnum):
    NCHW = 0
    NHWC = 1


class MathType(enum.IntEnum):
    DEFAULT = 0  # tensor cores allowed, TF32 for float data on Ampere and later
    TENSOR_OP = 1
    TENSOR_OP_ALLOW_CONVERSION = 2
    FMA = 3  # FMA kernels only: true fp32


class NanPropagation(enum.IntEnum):
    NOT_PROPAGATE = 0
    PROPAGATE = 1


class ActivationMode(enum.IntEnum):
    SIGMOID = 0
    RELU = 1
    TANH = 2
    CLIPPED_RELU = 3
    ELU = 4
    IDENTITY = 5


class PoolingMode(enum.IntEnum):
    MAX = 0
    AVERAGE_COUNT_INCLUDE_PADDING = 1
    AVERAGE_COUNT_EXCLUDE_PADDING = 2
    MAX_DETERMINISTIC = 3


class ConvolutionMode(enum.IntEnum):
    CONVOLUTION = 0
    CROSS_CORRELATION = 1  # what torch and every CNN framework compute


class ConvFwdAlgo(enum.IntEnum):
    IMPLICIT_GEMM = 0
    IMPLICIT_PRECOMP_GEMM = 1
    GEMM = 2
    DIRECT = 3
    FFT = 4
    FFT_TILING = 5
    WINOGRAD = 6
    WINOGRAD_NONFUSED = 7


class ConvBwdDataAlgo(enum.IntEnum):
    ALGO_0 = 0
    ALGO_1 = 1
    FFT = 2
    FFT_TILING = 3
    WINOGRAD = 4
    WINOGRAD_NONFUSED = 5


class ConvBwdFilterAlgo(enum.IntEnum):
    ALGO_0 = 0
    ALGO_1 = 1
    FFT = 2
    ALGO_3 = 3
    WINOGRAD = 4  # declared, "not implemented" says the header
    WINOGRAD_NONFUSED = 5
    FFT_TILING = 6


# The three perf structs (cudnnConvolutionFwdAlgoPerf_t, ...BwdDataAlgoPerf_t, ...BwdFilterAlgoPerf_t)
# have one layout; each is its own type so that a prototype names the one its function takes.
_PERF_FIELDS = [("algo", ctypes.c_int), ("status", ctypes.c_int), ("time", ctypes.c_float),
                ("memory", ctypes.c_size_t), ("determinism", ctypes.c_int),
                ("mathType", ctypes.c_int), ("reserved", ctypes.c_int * 3)]


class ConvolutionFwdAlgoPerf(ctypes.Structure):
    """cudnnConvolutionFwdAlgoPerf_t."""

    _fields_ = _PERF_FIELDS


class ConvolutionBwdDataAlgoPerf(ctypes.Structure):
    """cudnnConvolutionBwdDataAlgoPerf_t."""

    _fields_ = _PERF_FIELDS


class ConvolutionBwdFilterAlgoPerf(ctypes.Structure):
    """cudnnConvolutionBwdFilterAlgoPerf_t."""

    _fields_ = _PERF_FIELDS


TORCH_DATA_TYPES = {torch.float32: DataType.FLOAT, torch.float16: DataType.HALF,
                    torch.bfloat16: DataType.BFLOAT16}


def data_type(dtype: torch.dtype) -> DataType:
    try:
        return TORCH_DATA_TYPES[dtype]
    except KeyError:
        raise Unsupported(f"the cuDNN binding handles float32, float16 and bfloat16, not {dtype}") from None


class CudnnError(RuntimeError):
    def __init__(self, function: str, status: int, name: str, detail: str = "") -> None:
        self.function, self.status, self.name, self.detail = function, status, name, detail
        super().__init__(f"{function} failed with {name} ({status})" + (f": {detail}" if detail else ""))


class CudnnNotSupported(CudnnError, Unsupported):
    """cuDNN has no kernel for this configuration (a NOT_SUPPORTED status)."""


def error_for(function: str, status: int, name: str, detail: str = "") -> CudnnError:
    """The exception for a non-zero status returned by ``function``."""
    if status == Status.SUCCESS:
        raise ValueError("status 0 is CUDNN_STATUS_SUCCESS, not an error")
    cls = CudnnNotSupported if status_category(status) == Status.NOT_SUPPORTED else CudnnError
    return cls(function, status, name, detail)


def find_library_dir(search_dirs: Iterable[Path | str] | None = None) -> Path:
    """The folder holding cuDNN 9's libraries: ``nvidia/cudnn/lib`` of the wheel torch uses.

    ``search_dirs`` replaces the package lookup (the ``nvidia.cudnn`` namespace package's folders).
    """
    if search_dirs is None:
        try:
            spec = importlib.util.find_spec("nvidia.cudnn")
        except ImportError:  # no "nvidia" package at all
            spec = None
        search_dirs = list(spec.submodule_search_locations or []) if spec else []
    tried = []
    for folder in search_dirs:
        lib = Path(folder) / "lib"
        if all((lib / name).is_file() for name in LIBRARIES):
            return lib
        tried.append(str(lib))
    where = ", ".join(tried) if tried else "no nvidia/cudnn package is installed"
    raise Unavailable(f"cuDNN 9 not found: need {', '.join(LIBRARIES)} in nvidia/cudnn/lib of the "
                      f"nvidia-cudnn wheel that torch installs (looked in: {where})")


_H = ctypes.c_void_p  # cudnnHandle_t and every descriptor type: opaque pointers
_P = ctypes.c_void_p  # device or host data pointer
_I = ctypes.c_int
_PI = ctypes.POINTER(ctypes.c_int)
_OUT_H = ctypes.POINTER(ctypes.c_void_p)

# name -> (library, argument types); every one returns cudnnStatus_t.
PROTOTYPES: dict[str, tuple[str, list[Any]]] = {
    "cudnnCreate": ("graph", [_OUT_H]),
    "cudnnSetStream": ("graph", [_H, _P]),
    "cudnnCreateTensorDescriptor": ("ops", [_OUT_H]),
    "cudnnSetTensor4dDescriptor": ("ops", [_H, _I, _I, _I, _I, _I, _I]),  # desc, format, dtype, n, c, h, w
    "cudnnDestroyTensorDescriptor": ("ops", [_H]),
    "cudnnCreateFilterDescriptor": ("ops", [_OUT_H]),
    "cudnnSetFilter4dDescriptor": ("ops", [_H, _I, _I, _I, _I, _I, _I]),  # desc, dtype, format, k, c, h, w
    "cudnnDestroyFilterDescriptor": ("ops", [_H]),
    "cudnnCreatePoolingDescriptor": ("ops", [_OUT_H]),
    # desc, mode, nan, window h, w, padding h, w, stride h, w
    "cudnnSetPooling2dDescriptor": ("ops", [_H, _I, _I, _I, _I, _I, _I, _I, _I]),
    "cudnnGetPooling2dForwardOutputDim": ("ops", [_H, _H, _PI, _PI, _PI, _PI]),
    "cudnnDestroyPoolingDescriptor": ("ops", [_H]),
    "cudnnPoolingForward": ("ops", [_H, _H, _P, _H, _P, _P, _H, _P]),
    "cudnnCreateActivationDescriptor": ("ops", [_OUT_H]),
    "cudnnSetActivationDescriptor": ("ops", [_H, _I, _I, ctypes.c_double]),
    "cudnnDestroyActivationDescriptor": ("ops", [_H]),
    "cudnnActivationForward": ("ops", [_H, _H, _P, _H, _P, _P, _H, _P]),
    # handle, pooling / activation desc, alpha, yDesc, y, dyDesc, dy, xDesc, x, beta, dxDesc, dx
    "cudnnPoolingBackward": ("ops", [_H, _H, _P, _H, _P, _H, _P, _H, _P, _P, _H, _P]),
    "cudnnActivationBackward": ("ops", [_H, _H, _P, _H, _P, _H, _P, _H, _P, _P, _H, _P]),
    "cudnnAddTensor": ("ops", [_H, _P, _H, _P, _P, _H, _P]),
    "cudnnCreateConvolutionDescriptor": ("cnn", [_OUT_H]),
    # desc, pad h, w, stride h, w, dilation h, w, mode, compute type
    "cudnnSetConvolution2dDescriptor": ("cnn", [_H, _I, _I, _I, _I, _I, _I, _I, _I]),
    "cudnnSetConvolutionMathType": ("cnn", [_H, _I]),
    "cudnnSetConvolutionGroupCount": ("cnn", [_H, _I]),
    "cudnnGetConvolution2dForwardOutputDim": ("cnn", [_H, _H, _H, _PI, _PI, _PI, _PI]),
    "cudnnDestroyConvolutionDescriptor": ("cnn", [_H]),
    "cudnnGetConvolutionForwardAlgorithmMaxCount": ("cnn", [_H, _PI]),
    "cudnnGetConvolutionForwardWorkspaceSize": ("cnn", [_H, _H, _H, _H, _H, _I,
                                                        ctypes.POINTER(ctypes.c_size_t)]),
    "cudnnFindConvolutionForwardAlgorithmEx": ("cnn", [_H, _H, _P, _H, _P, _H, _H, _P, _I, _PI,
                                                       ctypes.POINTER(ConvolutionFwdAlgoPerf), _P,
                                                       ctypes.c_size_t]),
    "cudnnConvolutionForward": ("cnn", [_H, _P, _H, _P, _H, _P, _H, _I, _P, ctypes.c_size_t, _P, _H,
                                        _P]),
    # Backward data: the filter and dy in, dx out; backward filter: x and dy in, dw out.  Each takes
    # its arguments in the forward's order (two inputs, the convolution, the output).
    "cudnnGetConvolutionBackwardDataAlgorithmMaxCount": ("cnn", [_H, _PI]),
    "cudnnGetConvolutionBackwardDataWorkspaceSize": ("cnn", [_H, _H, _H, _H, _H, _I,
                                                             ctypes.POINTER(ctypes.c_size_t)]),
    "cudnnFindConvolutionBackwardDataAlgorithmEx": ("cnn", [_H, _H, _P, _H, _P, _H, _H, _P, _I, _PI,
                                                            ctypes.POINTER(ConvolutionBwdDataAlgoPerf), _P,
                                                            ctypes.c_size_t]),
    "cudnnConvolutionBackwardData": ("cnn", [_H, _P, _H, _P, _H, _P, _H, _I, _P, ctypes.c_size_t, _P, _H,
                                             _P]),
    "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount": ("cnn", [_H, _PI]),
    "cudnnGetConvolutionBackwardFilterWorkspaceSize": ("cnn", [_H, _H, _H, _H, _H, _I,
                                                               ctypes.POINTER(ctypes.c_size_t)]),
    "cudnnFindConvolutionBackwardFilterAlgorithmEx": ("cnn", [_H, _H, _P, _H, _P, _H, _H, _P, _I, _PI,
                                                              ctypes.POINTER(ConvolutionBwdFilterAlgoPerf), _P,
                                                              ctypes.c_size_t]),
    "cudnnConvolutionBackwardFilter": ("cnn", [_H, _P, _H, _P, _H, _P, _H, _I, _P, ctypes.c_size_t, _P, _H,
                                               _P]),
    # handle, alpha, dyDesc, dy, beta, dbDesc, db
    "cudnnConvolutionBackwardBias": ("cnn", [_H, _P, _H, _P, _P, _H, _P]),
}


@dataclasses.dataclass(frozen=True)
class ConvPass:
    """One pass of the legacy convolution API: its algorithms, perf struct and the names of its four
    calls.  Each call takes its operands in one order: the two inputs (a, b), the convolution
    descriptor, then the output (o): forward x, w -> y; backward data w, dy -> dx; backward filter
    x, dy -> dw."""

    name: str
    algos: type[enum.IntEnum]
    perf: type[ctypes.Structure]
    max_count: str  # (handle, int *count)
    workspace_size: str  # (handle, aDesc, bDesc, convDesc, oDesc, algo, size_t *size)
    find: str  # (handle, aDesc, a, bDesc, b, convDesc, oDesc, o, requested, *returned, perfs, ws, ws size)
    run: str  # (handle, alpha, aDesc, a, bDesc, b, convDesc, algo, ws, ws size, beta, oDesc, o)


CONV_FORWARD = ConvPass("forward", ConvFwdAlgo, ConvolutionFwdAlgoPerf,
                        "cudnnGetConvolutionForwardAlgorithmMaxCount", "cudnnGetConvolutionForwardWorkspaceSize",
                        "cudnnFindConvolutionForwardAlgorithmEx", "cudnnConvolutionForward")
CONV_BACKWARD_DATA = ConvPass("backward data", ConvBwdDataAlgo, ConvolutionBwdDataAlgoPerf,
                              "cudnnGetConvolutionBackwardDataAlgorithmMaxCount",
                              "cudnnGetConvolutionBackwardDataWorkspaceSize",
                              "cudnnFindConvolutionBackwardDataAlgorithmEx", "cudnnConvolutionBackwardData")
CONV_BACKWARD_FILTER = ConvPass("backward filter", ConvBwdFilterAlgo, ConvolutionBwdFilterAlgoPerf,
                                "cudnnGetConvolutionBackwardFilterAlgorithmMaxCount",
                                "cudnnGetConvolutionBackwardFilterWorkspaceSize",
                                "cudnnFindConvolutionBackwardFilterAlgorithmEx", "cudnnConvolutionBackwardFilter")


class Cudnn:
    """The loaded libraries, with each bound function as an attribute (``lib.cudnnPoolingForward``)."""

    def __init__(self, lib_dir: Path) -> None:
        self.lib_dir = lib_dir
        try:
            # RTLD_GLOBAL so that the sub-libraries cuDNN opens by name resolve to these copies.
            loaded = {name: ctypes.CDLL(str(lib_dir / name), mode=ctypes.RTLD_GLOBAL) for name in LIBRARIES}
        except OSError as exc:
            raise Unavailable(f"cuDNN 9 in {lib_dir} could not be loaded: {exc}") from exc
        libs = {"graph": loaded["libcudnn_graph.so.9"], "ops": loaded["libcudnn_ops.so.9"],
                "cnn": loaded["libcudnn_cnn.so.9"]}
        graph = libs["graph"]
        self._version = graph.cudnnGetVersion
        self._version.restype, self._version.argtypes = ctypes.c_size_t, []
        self._error_string = graph.cudnnGetErrorString
        self._error_string.restype, self._error_string.argtypes = ctypes.c_char_p, [ctypes.c_int]
        self._last_error = graph.cudnnGetLastErrorString
        self._last_error.restype, self._last_error.argtypes = None, [ctypes.c_char_p, ctypes.c_size_t]
        for name, (lib, argtypes) in PROTOTYPES.items():
            try:
                fn = getattr(libs[lib], name)
            except AttributeError as exc:
                raise Unavailable(f"cuDNN in {lib_dir} lacks {name}: {exc}") from exc
            fn.restype, fn.argtypes, fn.errcheck = ctypes.c_int, argtypes, self._errcheck
            setattr(self, name, fn)
        self._handles: dict[int, Handle] = {}
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        """cudnnGetVersion(): major * 10000 + minor * 100 + patch (9.19.0 -> 91900)."""
        return int(self._version())

    def error_name(self, status: int) -> str:
        return (self._error_string(status) or b"").decode(errors="replace")

    def last_error(self) -> str:
        buf = ctypes.create_string_buffer(1024)
        self._last_error(buf, len(buf))
        return buf.value.decode(errors="replace")

    def _errcheck(self, status: int, fn: Any, args: tuple) -> tuple:
        if status != Status.SUCCESS:
            raise error_for(fn.__name__, status, self.error_name(status), self.last_error())
        return args

    def handle(self, device: torch.device | int) -> Handle:
        """The process-wide handle of a CUDA device, created on first use."""
        index = device if isinstance(device, int) else device.index
        if index is None:
            index = torch.cuda.current_device()
        with self._lock:
            if index not in self._handles:
                ptr = ctypes.c_void_p()
                try:
                    with torch.cuda.device(index):
                        self.cudnnCreate(ctypes.byref(ptr))
                except CudnnError as exc:  # e.g. a driver too old for this cuDNN
                    raise Unavailable(f"cuDNN cannot start on cuda:{index}: {exc}") from exc
                self._handles[index] = Handle(self, ptr, index)
            return self._handles[index]

    # Descriptors: each destroys its cuDNN object when garbage-collected.

    def tensor_4d(self, fmt: TensorFormat, dtype: DataType, n: int, c: int, h: int, w: int) -> Descriptor:
        desc = Descriptor(self, "TensorDescriptor")
        self.cudnnSetTensor4dDescriptor(desc.ptr, fmt, dtype, n, c, h, w)
        return desc

    def filter_4d(self, dtype: DataType, fmt: TensorFormat, k: int, c: int, h: int, w: int) -> Descriptor:
        desc = Descriptor(self, "FilterDescriptor")
        self.cudnnSetFilter4dDescriptor(desc.ptr, dtype, fmt, k, c, h, w)
        return desc

    def pooling_2d(self, mode: PoolingMode, nan: NanPropagation, window: tuple[int, int],
                   padding: tuple[int, int], stride: tuple[int, int]) -> Descriptor:
        desc = Descriptor(self, "PoolingDescriptor")
        self.cudnnSetPooling2dDescriptor(desc.ptr, mode, nan, *window, *padding, *stride)
        return desc

    def activation(self, mode: ActivationMode, nan: NanPropagation, coef: float = 0.0) -> Descriptor:
        desc = Descriptor(self, "ActivationDescriptor")
        self.cudnnSetActivationDescriptor(desc.ptr, mode, nan, coef)
        return desc

    def convolution_2d(self, padding: tuple[int, int], stride: tuple[int, int], compute: DataType,
                       math: MathType, dilation: tuple[int, int] = (1, 1), groups: int = 1) -> Descriptor:
        desc = Descriptor(self, "ConvolutionDescriptor")
        self.cudnnSetConvolution2dDescriptor(desc.ptr, *padding, *stride, *dilation,
                                             ConvolutionMode.CROSS_CORRELATION, compute)
        self.cudnnSetConvolutionMathType(desc.ptr, math)
        if groups != 1:
            self.cudnnSetConvolutionGroupCount(desc.ptr, groups)
        return desc

    def pooling_output_dim(self, pool: Descriptor, x: Descriptor) -> tuple[int, int, int, int]:
        dims = [ctypes.c_int() for _ in range(4)]
        self.cudnnGetPooling2dForwardOutputDim(pool.ptr, x.ptr, *map(ctypes.byref, dims))
        return tuple(d.value for d in dims)  # type: ignore[return-value]

    def convolution_output_dim(self, conv: Descriptor, x: Descriptor,
                               w: Descriptor) -> tuple[int, int, int, int]:
        dims = [ctypes.c_int() for _ in range(4)]
        self.cudnnGetConvolution2dForwardOutputDim(conv.ptr, x.ptr, w.ptr, *map(ctypes.byref, dims))
        return tuple(d.value for d in dims)  # type: ignore[return-value]


class Descriptor:
    """An owned cuDNN descriptor of ``kind`` ("TensorDescriptor", "PoolingDescriptor", ...)."""

    def __init__(self, lib: Cudnn, kind: str) -> None:
        self.kind = kind
        self.ptr = ctypes.c_void_p()
        getattr(lib, f"cudnnCreate{kind}")(ctypes.byref(self.ptr))
        weakref.finalize(self, getattr(lib, f"cudnnDestroy{kind}"), self.ptr.value)


class Handle:
    """A cuDNN handle bound to one device; ``use_stream`` points it at a stream when that changes."""

    def __init__(self, lib: Cudnn, ptr: ctypes.c_void_p, device: int) -> None:
        self.lib, self.ptr, self.device = lib, ptr, device
        self._stream: int | None = None

    def use_stream(self, stream: int) -> None:
        if stream != self._stream:
            self.lib.cudnnSetStream(self.ptr, stream)
            self._stream = stream


_load_lock = threading.Lock()


@functools.cache
def _load(lib_dir: Path) -> Cudnn:
    return Cudnn(lib_dir)


def load(search_dirs: Iterable[Path | str] | None = None) -> Cudnn:
    """cuDNN 9 from the torch-installed wheel, loaded once per process; ``Unavailable`` if absent."""
    with _load_lock:
        return _load(find_library_dir(search_dirs))


# alpha = 1, beta = 0 / 1 for float, half and bfloat16 data: cuDNN reads host floats for all three.
ONE = ctypes.c_float(1.0)
ZERO = ctypes.c_float(0.0)
ONE_PTR: int = ctypes.addressof(ONE)
ZERO_PTR: int = ctypes.addressof(ZERO)
