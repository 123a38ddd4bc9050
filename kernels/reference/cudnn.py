"""Implementation "cudnn": layers run by cuDNN itself, called through its C API (``cudnn_api``).

=========  ======================  =========================================================
layer      library that runs       how
=========  ======================  =========================================================
conv2d     cuDNN (libcudnn_cnn,    the faster, timed hot in build, of (1) the legacy API:
           and the graph API's     ``cudnnConvolutionForward`` with the algorithm that runs
           engines)                fastest hot among those ``cudnnFind...Ex`` timed fastest,
                                   then ``cudnnAddTensor`` (libcudnn_ops) for the bias, and (2)
                                   the graph API's fastest plan, bias fused (``cudnn_graph``,
                                   through the optional ``nvidia-cudnn-frontend``)
pool2d     cuDNN (libcudnn_ops)    ``cudnnPoolingForward``, MAX or AVERAGE_COUNT_INCLUDE_PADDING
relu       cuDNN (libcudnn_ops)    ``cudnnActivationForward`` RELU, in place when out is x
linear     not here                cuDNN's legacy API has no matmul: the linear reference is
                                   implementation "cublas" (``kernels.reference.cublas``)
=========  ======================  =========================================================

Why the legacy convolution API and not ``torch.ops.aten.cudnn_convolution``: cuDNN 9 still ships
it (``libcudnn_cnn.so.9`` exports ``cudnnFindConvolutionForwardAlgorithmEx`` and
``cudnnConvolutionForward``; checked in the 9.28 wheel), and calling it ourselves puts nothing of
torch's between the benchmark and cuDNN: we pick the math type (FMA-only kernels for fp32, so fp32
is never silently TF32), run the algorithm search once, own the workspace and can report which
algorithm ran.  The fused ``cudnnConvolutionBiasActivationForward`` is not used because with an
identity activation cuDNN allows only the IMPLICIT_PRECOMP_GEMM algorithm, which would rule out
the search's winner.

NaN propagation is on for max pooling and ReLU, as in torch.  Handles are per device and shared
by the process; descriptors, the algorithm and the workspace are made once in build, so
``kernel()`` only points the handle at torch's current stream and makes the cuDNN call(s).  Each
build returns ``Built`` with details (cuDNN version, and for conv2d the algorithm, math type,
workspace size, the search's time and the hot time of the winner) for the record.

Two ways into cuDNN for conv2d: the fast Hopper engines (NHWC, 1x1 convolutions, true
fp32 NHWC) are reached only through the graph API, while the legacy search still wins some fp32
NCHW points (Winograd, FFT).  Both are built and timed with the same timer (``hot_median_ms``);
the record's ``detail_path`` says which won (``legacy``, ``graph`` or ``graph_then_bias``),
``detail_<path>_ms`` their times, ``detail_<path>_*`` what each chose.  ``graph_then_bias`` is the
graph API's convolution alone followed by ``cudnnAddTensor``, as torch runs a biased convolution:
on an H200 some NCHW fp16/bf16 layers ran up to 1.19x faster that way than with any plan of the
fused graph.  Where
the frontend is missing or the graph path fails, the legacy path runs and ``detail_graph`` holds
the reason; a sticky CUDA error is raised, not hidden.

cudnnFind times each algorithm once, cold, so near-ties are decided by noise: on an H100 (L5 tf32
NCHW, batch 128) it timed WINOGRAD_NONFUSED and IMPLICIT_PRECOMP_GEMM alike at 0.49 ms and picked
either from one run to the next, while hot they run in 421 and 219 us.  The candidates within
RETIME_WITHIN of the search's fastest are therefore timed again, hot, and the fastest kept: the
reference is cuDNN at its best, not at the mercy of one cold sample.
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any, Callable

import torch

from kernels.reference import cudnn_api as api
from kernels.reference import cudnn_graph
from kernels.reference.cudnn_api import (ONE_PTR, ZERO_PTR, ConvFwdAlgo, Cudnn, CudnnError, DataType,
                                         Descriptor, Handle, MathType, TensorFormat)
from layerbench.builders import Built, Tensors, fastest_path, hot_median_ms, in_order
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.registry import register
from layerbench.layers import Conv2d, Pool2d, ReLU

# fp32 is true fp32 (FMA kernels only); tf32 lets cuDNN use TF32 tensor cores, as torch does when
# allow_tf32 is on; fp16/bf16 use tensor cores.  Products accumulate in fp32 in every case.
MATH_TYPES = {"fp32": MathType.FMA, "tf32": MathType.DEFAULT, "fp16": MathType.TENSOR_OP,
              "bf16": MathType.TENSOR_OP}


def _setup(tensors: Tensors) -> tuple[Cudnn, Handle, torch.device]:
    x = tensors["x"]
    if x.device.type != "cuda":
        raise Unsupported(f"cuDNN runs on CUDA tensors; x is on {x.device}")
    lib = api.load()
    return lib, lib.handle(x.device), x.device


def _common_format(layout: str, **named: torch.Tensor) -> TensorFormat:
    """The memory format that all the 4-D tensors are dense in, ``layout`` first.

    A tensor with one channel (or 1x1 spatial size) is dense in both formats, and the harness then
    allocates ``out`` in NCHW even for an NHWC point; describing every tensor in one format that
    they all really have keeps cuDNN's view identical to the memory.
    """
    return TensorFormat[cudnn_graph.dense_layout(layout, **named)]


def _describe(lib: Cudnn, t: torch.Tensor, fmt: TensorFormat) -> Descriptor:
    return lib.tensor_4d(fmt, api.data_type(t.dtype), *t.shape)


def _launcher(handle: Handle, device: torch.device, calls: list[tuple[Callable[..., Any], tuple]],
              keep: tuple, details: dict[str, object]) -> Built:
    """kernel(): point the handle at the current stream, then make the prepared cuDNN calls."""
    current_stream = torch.cuda.current_stream

    # ``_alive`` holds the descriptors, tensors and workspace the calls point into.
    def kernel(_alive: tuple = keep) -> None:
        handle.use_stream(current_stream(device).cuda_stream)
        for fn, args in calls:
            fn(*args)

    kernel()  # first launch (module loading) belongs to build, not to the timed steady state
    return Built(kernel, {"cudnn_version": handle.lib.version, **details})


@register("pool2d", "cudnn", backend="cudnn", reference=True,
          description="cuDNN cudnnPoolingForward (MAX / AVERAGE_COUNT_INCLUDE_PADDING)")
def build_pool2d(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                 out: torch.Tensor) -> Callable[[], None]:
    lib, handle, device = _setup(tensors)
    x = tensors["x"]
    fmt = _common_format(layout, x=x, out=out)
    x_d, y_d = _describe(lib, x, fmt), _describe(lib, out, fmt)
    mode = api.PoolingMode.MAX if spec.method == "max" else api.PoolingMode.AVERAGE_COUNT_INCLUDE_PADDING
    pool = lib.pooling_2d(mode, api.NanPropagation.PROPAGATE, (spec.kernel, spec.kernel),
                          (spec.padding, spec.padding), (spec.stride, spec.stride))
    if lib.pooling_output_dim(pool, x_d) != spec.output_shape:
        raise RuntimeError(f"cuDNN pools {spec} to {lib.pooling_output_dim(pool, x_d)}, "
                           f"the spec says {spec.output_shape}")
    call = (lib.cudnnPoolingForward,
            (handle.ptr, pool.ptr, ONE_PTR, x_d.ptr, x.data_ptr(), ZERO_PTR, y_d.ptr, out.data_ptr()))
    return _launcher(handle, device, [call], (pool, x_d, y_d, x, out),
                     {"mode": mode.name, "format": fmt.name})


@register("relu", "cudnn", backend="cudnn", reference=True,
          description="cuDNN cudnnActivationForward (RELU)")
def build_relu(spec: ReLU, dtype: DType, layout: str, tensors: Tensors,
               out: torch.Tensor) -> Callable[[], None]:
    lib, handle, device = _setup(tensors)
    x = tensors["x"]
    fmt = _common_format(layout, x=x, out=out)
    x_d = _describe(lib, x, fmt)
    y_d = x_d if out is x else _describe(lib, out, fmt)
    act = lib.activation(api.ActivationMode.RELU, api.NanPropagation.PROPAGATE)
    call = (lib.cudnnActivationForward,
            (handle.ptr, act.ptr, ONE_PTR, x_d.ptr, x.data_ptr(), ZERO_PTR, y_d.ptr, out.data_ptr()))
    return _launcher(handle, device, [call], (act, x_d, y_d, x, out), {"inplace": out is x})


# Candidates whose search time is within this factor of the fastest are timed again, hot.
RETIME_WITHIN = 2.0
RETIME_RUNS = 10


def _find_algorithms(lib: Cudnn, handle: Handle, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
                     x_d: Descriptor, w_d: Descriptor, conv: Descriptor, y_d: Descriptor,
                     fma_only: bool) -> list[api.ConvolutionFwdAlgoPerf]:
    """Time every applicable algorithm on the real buffers; those that succeeded, fastest first."""
    h = handle.ptr
    needs = []
    for algo in ConvFwdAlgo:
        size = ctypes.c_size_t()
        try:
            lib.cudnnGetConvolutionForwardWorkspaceSize(h, x_d.ptr, w_d.ptr, conv.ptr, y_d.ptr, algo,
                                                        ctypes.byref(size))
        except CudnnError:
            continue  # the algorithm does not apply to this configuration
        needs.append(size.value)
    # Algorithms that need more than half the free memory are reported as failed by the search.
    limit = min(max(needs, default=0), torch.cuda.mem_get_info(x.device)[0] // 2)
    search_ws = torch.empty(limit, dtype=torch.uint8, device=x.device)
    count, returned = ctypes.c_int(), ctypes.c_int()
    lib.cudnnGetConvolutionForwardAlgorithmMaxCount(h, ctypes.byref(count))
    perfs = (api.ConvolutionFwdAlgoPerf * count.value)()
    lib.cudnnFindConvolutionForwardAlgorithmEx(
        h, x_d.ptr, x.data_ptr(), w_d.ptr, w.data_ptr(), conv.ptr, y_d.ptr, out.data_ptr(), count.value,
        ctypes.byref(returned), perfs, search_ws.data_ptr() if limit else None, limit)
    del search_ws
    results = perfs[:returned.value]  # sorted fastest first
    found = [p for p in results
             if p.status == api.Status.SUCCESS and (p.mathType == MathType.FMA or not fma_only)]
    if not found:
        tried = ", ".join(f"{ConvFwdAlgo(p.algo).name}: {lib.error_name(p.status)} math {p.mathType}"
                          for p in results)
        raise Unsupported(f"cuDNN found no forward algorithm for this convolution (tried {tried or 'none'})")
    return found


@register("conv2d", "cudnn", backend="cudnn", reference=True,
          description="cuDNN: the faster of the legacy cudnnConvolutionForward (algorithm found by "
                      "cudnnFind...Ex, + cudnnAddTensor) and the graph API's fastest plan (bias fused)")
def build_conv2d(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The fastest of cuDNN's two ways in, timed hot by one timer (see the module docstring)."""
    _, _, device = _setup(tensors)
    others = [("graph", lambda: cudnn_graph.build_conv2d_graph(spec, dtype, layout, tensors, out))]
    if spec.bias:
        others.append(("graph_then_bias", lambda: build_conv2d_graph_then_bias(spec, dtype, layout, tensors, out)))
    return fastest_path(
        ("legacy", lambda: build_conv2d_legacy(spec, dtype, layout, tensors, out)),
        others,
        time_ms=lambda kernel: hot_median_ms(kernel, device, warmup=2, reps=RETIME_RUNS),
        after_failure=lambda: torch.cuda.synchronize(device))  # a sticky CUDA error is not a fallback


def build_conv2d_graph_then_bias(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                                 out: torch.Tensor) -> Built:
    """The graph API's fastest plan of the convolution alone, then ``cudnnAddTensor`` for the bias."""
    lib, handle, device = _setup(tensors)
    x, b = tensors["x"], tensors["bias"]
    conv = cudnn_graph.build_conv2d_graph(dataclasses.replace(spec, bias=False), dtype, layout,
                                          {k: v for k, v in tensors.items() if k != "bias"}, out)
    fmt = _common_format(layout, x=x, out=out)
    y_d = _describe(lib, out, fmt)
    b_d = lib.tensor_4d(TensorFormat.NCHW, api.data_type(b.dtype), 1, b.shape[0], 1, 1)
    add = (lib.cudnnAddTensor, (handle.ptr, ONE_PTR, b_d.ptr, b.data_ptr(), ONE_PTR, y_d.ptr, out.data_ptr()))
    bias = _launcher(handle, device, [add], (y_d, b_d, b, out), {})
    return Built(in_order(conv.launch, bias.launch), dict(conv.details))


def build_conv2d_legacy(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The legacy API: cudnnFind...Ex, the near-ties re-timed hot, then cudnnAddTensor for the bias."""
    lib, handle, device = _setup(tensors)
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    # Canonical strides: the descriptors are made from a format and the dims (never from torch's
    # strides, which are arbitrary for size-1 dimensions: a 1x1 filter in NHWC), and the format is
    # one that every tensor is dense in.
    fmt = _common_format(layout, x=x, out=out, weight=w)
    x_d, y_d = _describe(lib, x, fmt), _describe(lib, out, fmt)
    w_d = lib.filter_4d(api.data_type(w.dtype), fmt, *w.shape)
    conv = lib.convolution_2d((spec.padding_h, spec.padding_w), (spec.stride_h, spec.stride_w),
                              DataType.FLOAT, MATH_TYPES[dtype.name],
                              dilation=(spec.dilation_h, spec.dilation_w), groups=spec.groups)
    if lib.convolution_output_dim(conv, x_d, w_d) != spec.output_shape:
        raise RuntimeError(f"cuDNN convolves {spec} to {lib.convolution_output_dim(conv, x_d, w_d)}, "
                           f"the spec says {spec.output_shape}")
    handle.use_stream(torch.cuda.current_stream(device).cuda_stream)
    found = _find_algorithms(lib, handle, x, w, out, x_d, w_d, conv, y_d, fma_only=dtype.name == "fp32")
    best: tuple[float, api.ConvolutionFwdAlgoPerf, torch.Tensor, tuple] | None = None
    for perf in [p for p in found if p.time <= RETIME_WITHIN * found[0].time]:
        # cuDNN picks the kernel from algorithm and math type together (the search may report
        # tensor-op math where the descriptor said default), so the descriptor takes each one's.
        lib.cudnnSetConvolutionMathType(conv.ptr, perf.mathType)
        workspace = torch.empty(perf.memory, dtype=torch.uint8, device=device)
        args = (handle.ptr, ONE_PTR, x_d.ptr, x.data_ptr(), w_d.ptr, w.data_ptr(), conv.ptr, perf.algo,
                workspace.data_ptr() if perf.memory else None, perf.memory, ZERO_PTR, y_d.ptr,
                out.data_ptr())
        ms = hot_median_ms(lambda: lib.cudnnConvolutionForward(*args), device, warmup=2,
                           reps=RETIME_RUNS)
        if best is None or ms < best[0]:
            best = (ms, perf, workspace, args)
        del workspace
    assert best is not None  # found[0] is always within the factor
    hot_ms, perf, workspace, args = best
    lib.cudnnSetConvolutionMathType(conv.ptr, perf.mathType)
    calls = [(lib.cudnnConvolutionForward, args)]
    keep: tuple = (x_d, y_d, w_d, conv, workspace, x, w, out)
    if b is not None:
        b_d = lib.tensor_4d(TensorFormat.NCHW, api.data_type(b.dtype), 1, b.shape[0], 1, 1)
        calls.append((lib.cudnnAddTensor, (handle.ptr, ONE_PTR, b_d.ptr, b.data_ptr(), ONE_PTR, y_d.ptr,
                                           out.data_ptr())))
        keep += (b_d, b)
    details = {"format": fmt.name, "algorithm": ConvFwdAlgo(perf.algo).name,
               "math_type": MathType(perf.mathType).name, "workspace_bytes": int(perf.memory),
               "search_ms": float(perf.time), "hot_ms": hot_ms}
    return _launcher(handle, device, calls, keep, details)
