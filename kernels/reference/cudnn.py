"""Implementation "cudnn": layers run by cuDNN itself, called through its C API (``cudnn_api``).

=========  ======================  =========================================================
layer      library that runs       how
=========  ======================  =========================================================
conv2d     cuDNN (libcudnn_cnn,    the faster, timed in build, of (1) the legacy API:
           and the graph API's     ``cudnnConvolutionForward`` with the algorithm that runs
           engines)                fastest, timed again, of those ``cudnnFind...Ex`` timed
                                   fastest, then ``cudnnAddTensor`` (libcudnn_ops) for the bias,
                                   and (2) the graph API's fastest plan, bias fused (``cudnn_graph``,
                                   through the optional ``nvidia-cudnn-frontend``)
pool2d     cuDNN (libcudnn_ops)    ``cudnnPoolingForward``, MAX or AVERAGE_COUNT_INCLUDE_PADDING
relu       cuDNN (libcudnn_ops,    the faster, timed in build, of ``cudnnActivationForward`` RELU
           and the graph API's     (in place when out is x) and the graph API's fastest plan of
           engines)                a one-node ReLU graph (out of place; ``cudnn_graph``)
linear     not here                cuDNN's legacy API has no matmul: the linear reference is
                                   implementation "cublas" (``kernels.reference.cublas``)
=========  ======================  =========================================================

The backward passes, registered under the same name:

===============  ==========================================================================
pass             how
===============  ==========================================================================
conv2d dx        the faster of the legacy ``cudnnConvolutionBackwardData`` (reads the weight
                 and dy; its algorithm chosen as the forward's is) and the graph API's fastest
                 ``conv_dgrad`` plan
conv2d dweight   the faster of the legacy ``cudnnConvolutionBackwardFilter`` (reads x and dy)
(+ dbias)        + ``cudnnConvolutionBackwardBias`` (reads dy) and the graph API's fastest
                 ``conv_wgrad`` plan, dbias by a reduction node in that graph where cuDNN has a
                 plan for it, else by ``cudnnConvolutionBackwardBias`` after it (torch's sum
                 where cuDNN has no bias-gradient kernel: bf16 on cuDNN 9.19; ``detail_dbias`` says)
pool2d dx        ``cudnnPoolingBackward`` (reads y, dy and x); max pooling runs
                 ``cudnnPoolingForward`` for y in the kernel first (see its builder)
relu dx          ``cudnnActivationBackward`` RELU (reads y, dy and x), x in y's place
===============  ==========================================================================

The training pass is the three (conv2d) or two (pool2d, relu) single passes in a row.

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
workspace size, the search's time and the winner's time when timed again) for the record.

Two ways into cuDNN for conv2d (each pass): the fast Hopper engines (NHWC, 1x1 convolutions, true
fp32 NHWC) are reached only through the graph API, while the legacy search still wins some fp32
NCHW points (Winograd, FFT).  Both are built and timed with the same timer (``selection_ms``);
the record's ``detail_path`` says which won (``legacy``, ``graph`` or ``graph_then_bias``),
``detail_<path>_ms`` their times, ``detail_<path>_*`` what each chose.  ``graph_then_bias`` is the
graph API's convolution alone followed by ``cudnnAddTensor``, as torch runs a biased convolution:
on an H200 torch ran some NCHW fp16/bf16 layers up to 1.19x faster than the best plan of the fused
graph, and this path wins there (the thesis layer L2: 64 -> 128 channels, 9x9, 64x64, batch 128,
bf16 NCHW: 1.11 ms against torch's 1.39).  Where
the frontend is missing or the graph path fails, the legacy path runs and ``detail_graph`` holds
the reason; a sticky CUDA error is raised, not hidden.

cudnnFind times each algorithm once, cold, so near-ties are decided by noise: on an H100 (L5 tf32
NCHW, batch 128) it timed WINOGRAD_NONFUSED and IMPLICIT_PRECOMP_GEMM alike at 0.49 ms and picked
either from one run to the next, while hot they run in 421 and 219 us.  The candidates within
RETIME_WITHIN of the search's fastest are therefore timed again (``selection_ms``, in the point's
timing mode: hot, or cold with the L2 flushed before each launch), and the fastest kept: the
reference is cuDNN at its best, not at the mercy of one sample.  Each candidate also runs once on
the real buffers and its result is judged against float64 as every kernel's is: the search ranks by
speed alone, and on an H200 it ranked first, for AlexNet's conv2 (5x5) at batch 16 in fp32, a
WINOGRAD_NONFUSED kernel off by rel_norm 8.6e-4 (fp32 allows 1e-5).  A wrong algorithm is skipped
and counted (``detail_legacy_rejected``, ``detail_legacy_first_rejection``).  The algorithm kept is
stored in the build cache like the graph path's plan: the same call on the same GPU model, in this
process or a later one, runs it without a search (``detail_legacy_reused_choice``), judged and
timed again as a candidate is; where it no longer applies or is wrong, the search runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any, Callable

import torch

from kernels.reference import cudnn_api as api
from kernels.reference import cudnn_graph
from kernels.reference.cudnn_api import (ONE_PTR, ZERO_PTR, Cudnn, CudnnError, DataType, Descriptor, Handle,
                                         MathType, TensorFormat)
from layerbench.build_cache import autotune_choices, choice_key
from layerbench.builders import Built, Tensors, check_workspace, fastest_path, in_order, selection_mode, selection_ms
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.registry import register
from layerbench.layers import Conv2d, Pool2d, ReLU
from layerbench.layers.passes import split_output

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


def _pooling(lib: Cudnn, spec: Pool2d, x_d: Descriptor) -> tuple[api.PoolingMode, Descriptor]:
    """The pooling mode and descriptor of the spec, checked against its output shape."""
    mode = api.PoolingMode.MAX if spec.method == "max" else api.PoolingMode.AVERAGE_COUNT_INCLUDE_PADDING
    pool = lib.pooling_2d(mode, api.NanPropagation.PROPAGATE, (spec.kernel, spec.kernel),
                          (spec.padding, spec.padding), (spec.stride, spec.stride))
    if lib.pooling_output_dim(pool, x_d) != spec.output_shape:
        raise RuntimeError(f"cuDNN pools {spec} to {lib.pooling_output_dim(pool, x_d)}, "
                           f"the spec says {spec.output_shape}")
    return mode, pool


@register("pool2d", "cudnn", backend="cudnn", reference=True,
          description="cuDNN cudnnPoolingForward (MAX / AVERAGE_COUNT_INCLUDE_PADDING)")
def build_pool2d(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                 out: torch.Tensor) -> Callable[[], None]:
    lib, handle, device = _setup(tensors)
    x = tensors["x"]
    fmt = _common_format(layout, x=x, out=out)
    x_d, y_d = _describe(lib, x, fmt), _describe(lib, out, fmt)
    mode, pool = _pooling(lib, spec, x_d)
    call = (lib.cudnnPoolingForward,
            (handle.ptr, pool.ptr, ONE_PTR, x_d.ptr, x.data_ptr(), ZERO_PTR, y_d.ptr, out.data_ptr()))
    return _launcher(handle, device, [call], (pool, x_d, y_d, x, out),
                     {"mode": mode.name, "format": fmt.name})


@register("relu", "cudnn", backend="cudnn", reference=True,
          description="cuDNN: the faster of cudnnActivationForward (RELU) and the graph API's fastest "
                      "pointwise ReLU plan (out of place)")
def build_relu(spec: ReLU, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The faster of the legacy activation call and the graph API's ReLU, timed by one timer."""

    def legacy() -> Built:
        lib, handle, device = _setup(tensors)
        x = tensors["x"]
        fmt = _common_format(layout, x=x, out=out)
        x_d = _describe(lib, x, fmt)
        y_d = x_d if out is x else _describe(lib, out, fmt)
        act = lib.activation(api.ActivationMode.RELU, api.NanPropagation.PROPAGATE)
        call = (lib.cudnnActivationForward,
                (handle.ptr, act.ptr, ONE_PTR, x_d.ptr, x.data_ptr(), ZERO_PTR, y_d.ptr, out.data_ptr()))
        return _launcher(handle, device, [call], (act, x_d, y_d, x, out), {"inplace": out is x})

    return _fastest_cudnn_path(tensors["x"].device, legacy,
                               [("graph", lambda: cudnn_graph.build_relu_graph(spec, dtype, layout, tensors, out))])


# Candidates whose search time is within this factor of the fastest are timed again.
RETIME_WITHIN = 2.0
RETIME_RUNS = 10

# An operand of a legacy convolution call: its descriptor and its tensor.
Operand = tuple[Descriptor, torch.Tensor]


def _find_algorithms(lib: Cudnn, handle: Handle, cp: api.ConvPass, a: Operand, b: Operand, conv: Descriptor,
                     o: Operand, fma_only: bool) -> list[Any]:
    """Time every applicable algorithm of pass ``cp`` on the real buffers (cudnnFind...Ex); those
    that succeeded, fastest first."""
    h = handle.ptr
    (a_d, a_t), (b_d, b_t), (o_d, o_t) = a, b, o
    needs = []
    for algo in cp.algos:
        size = ctypes.c_size_t()
        try:
            getattr(lib, cp.workspace_size)(h, a_d.ptr, b_d.ptr, conv.ptr, o_d.ptr, algo, ctypes.byref(size))
        except CudnnError:
            continue  # the algorithm does not apply to this configuration
        needs.append(size.value)
    # Algorithms that need more than half the free memory are reported as failed by the search.
    limit = min(max(needs, default=0), torch.cuda.mem_get_info(o_t.device)[0] // 2)
    search_ws = torch.empty(limit, dtype=torch.uint8, device=o_t.device)
    count, returned = ctypes.c_int(), ctypes.c_int()
    getattr(lib, cp.max_count)(h, ctypes.byref(count))
    perfs = (cp.perf * count.value)()
    getattr(lib, cp.find)(h, a_d.ptr, a_t.data_ptr(), b_d.ptr, b_t.data_ptr(), conv.ptr, o_d.ptr, o_t.data_ptr(),
                          count.value, ctypes.byref(returned), perfs,
                          search_ws.data_ptr() if limit else None, limit)
    del search_ws
    results = perfs[:returned.value]  # sorted fastest first
    found = [p for p in results
             if p.status == api.Status.SUCCESS and (p.mathType == MathType.FMA or not fma_only)]
    if not found:
        tried = ", ".join(f"{cp.algos(p.algo).name}: {lib.error_name(p.status)} math {p.mathType}"
                          for p in results)
        raise Unsupported(f"cuDNN found no {cp.name} algorithm for this convolution (tried {tried or 'none'})")
    return found


def _timed_algorithm(lib: Cudnn, handle: Handle, device: torch.device, cp: api.ConvPass, a: Operand,
                     b: Operand, conv: Descriptor, o: Operand, algo: int, math: int, memory: int,
                     check: Callable[[], str | None]) -> tuple[float, str | None, tuple, torch.Tensor]:
    """Run ``algo`` with ``math`` once on the real buffers, judge what it wrote, and time it again
    where it is right: (ms, None or why it is wrong, its call's arguments, its workspace)."""
    (a_d, a_t), (b_d, b_t), (o_d, o_t) = a, b, o
    run = getattr(lib, cp.run)
    # cuDNN picks the kernel from algorithm and math type together (the search may report
    # tensor-op math where the descriptor said default), so the descriptor takes each one's.
    lib.cudnnSetConvolutionMathType(conv.ptr, math)
    workspace = torch.empty(memory, dtype=torch.uint8, device=device)
    args = (handle.ptr, ONE_PTR, a_d.ptr, a_t.data_ptr(), b_d.ptr, b_t.data_ptr(), conv.ptr, algo,
            workspace.data_ptr() if memory else None, memory, ZERO_PTR, o_d.ptr, o_t.data_ptr())
    run(*args)
    torch.cuda.synchronize(device)
    wrong = check()
    if wrong is not None:
        return float("nan"), wrong, args, workspace
    return selection_ms(lambda: run(*args), device, warmup=2, reps=RETIME_RUNS), None, args, workspace


def _known_algorithm(lib: Cudnn, handle: Handle, device: torch.device, cp: api.ConvPass, a: Operand,
                     b: Operand, conv: Descriptor, o: Operand, known: dict[str, Any],
                     check: Callable[[], str | None]) -> tuple[Built, torch.Tensor] | None:
    """The algorithm an earlier search chose for this very call (the build cache), run without a
    search; None where it no longer applies, needs too much workspace or computes a wrong result
    (the search then runs)."""
    (a_d, _), (b_d, _), (o_d, o_t) = a, b, o
    algo, math = int(known["algo"]), int(known["math"])
    lib.cudnnSetConvolutionMathType(conv.ptr, math)  # the workspace it needs depends on it
    size = ctypes.c_size_t()
    try:
        getattr(lib, cp.workspace_size)(handle.ptr, a_d.ptr, b_d.ptr, conv.ptr, o_d.ptr, algo, ctypes.byref(size))
        check_workspace(size.value, o_t.device, f"cuDNN's {cp.algos(algo).name}")
    except (CudnnError, Unsupported):
        return None
    ms, wrong, args, workspace = _timed_algorithm(lib, handle, device, cp, a, b, conv, o, algo, math, size.value,
                                                  check)
    if wrong is not None:
        return None
    run = getattr(lib, cp.run)
    details: dict[str, object] = {"algorithm": cp.algos(algo).name, "math_type": MathType(math).name,
                                  "workspace_bytes": int(size.value), "retimed_ms": ms, "reused_choice": True}
    return Built(lambda: run(*args), details), workspace


def _fastest_algorithm(lib: Cudnn, handle: Handle, device: torch.device, cp: api.ConvPass, a: Operand,
                       b: Operand, conv: Descriptor, o: Operand, dtype: DType,
                       check: Callable[[], str | None], identity: str) -> tuple[Built, torch.Tensor]:
    """The search's candidates within RETIME_WITHIN of its fastest right one, timed again: the
    fastest one's call with what it chose, and the workspace that call uses.

    Each candidate runs once on the real buffers and ``check()`` judges what it wrote (None: right,
    else why not), as the graph path judges its plans: cuDNN's search ranks by speed alone, and
    some of its fp32 algorithms (WINOGRAD_NONFUSED's 9x9 tiles for a 5x5 filter) are off by ~1e-3,
    beyond what fp32 allows every kernel here.  A wrong one is skipped and counted.

    The algorithm chosen is kept in the build cache under the call (``identity``: the layer and
    dtype; the operands' shapes, strides and dtypes; cuDNN's version; hot or cold timing): the
    same call on the same GPU model runs it again without a search, checked and timed as here."""
    handle.use_stream(torch.cuda.current_stream(device).cuda_stream)
    choices = autotune_choices()
    key = choice_key(f"cudnn legacy {cp.name}", [a[1], b[1], o[1]],
                     {"identity": identity, "timed": selection_mode(), "cudnn": lib.version}, "reference")
    known = choices.get(key)
    if known is not None:
        reused = _known_algorithm(lib, handle, device, cp, a, b, conv, o, known, check)
        if reused is not None:
            return reused
    found = _find_algorithms(lib, handle, cp, a, b, conv, o, fma_only=dtype.name == "fp32")
    run = getattr(lib, cp.run)
    best: tuple[float, Any, torch.Tensor, tuple] | None = None
    rejected: list[str] = []
    fastest_right = None
    for perf in found:
        if fastest_right is not None and perf.time > RETIME_WITHIN * fastest_right:
            break
        ms, wrong, args, workspace = _timed_algorithm(lib, handle, device, cp, a, b, conv, o, perf.algo,
                                                      perf.mathType, perf.memory, check)
        if wrong is not None:
            rejected.append(f"{cp.algos(perf.algo).name}: {wrong}")
            continue
        fastest_right = perf.time if fastest_right is None else fastest_right
        if best is None or ms < best[0]:
            best = (ms, perf, workspace, args)
        del workspace
    if best is None:
        raise Unsupported(f"every {cp.name} algorithm cuDNN found computed a wrong result: {'; '.join(rejected)}")
    retimed_ms, perf, workspace, args = best
    lib.cudnnSetConvolutionMathType(conv.ptr, perf.mathType)
    choices.put(key, {"algo": int(perf.algo), "math": int(perf.mathType)}, {"kernel": f"cudnn legacy {cp.name}"})
    details: dict[str, object] = {
        "algorithm": cp.algos(perf.algo).name, "math_type": MathType(perf.mathType).name,
        "workspace_bytes": int(perf.memory), "search_ms": float(perf.time), "retimed_ms": retimed_ms,
        "rejected": len(rejected)}
    if rejected:
        details["first_rejection"] = rejected[0][:300]
    return Built(lambda: run(*args), details), workspace


def _convolution(lib: Cudnn, spec: Conv2d, dtype: DType, fmt: TensorFormat, w: torch.Tensor,
                 x_d: Descriptor) -> tuple[Descriptor, Descriptor]:
    """The filter descriptor of ``w`` (the weight or its gradient) and the convolution descriptor,
    checked against the spec's output shape."""
    w_d = lib.filter_4d(api.data_type(w.dtype), fmt, *w.shape)
    conv = lib.convolution_2d((spec.padding_h, spec.padding_w), (spec.stride_h, spec.stride_w),
                              DataType.FLOAT, MATH_TYPES[dtype.name],
                              dilation=(spec.dilation_h, spec.dilation_w), groups=spec.groups)
    if lib.convolution_output_dim(conv, x_d, w_d) != spec.output_shape:
        raise RuntimeError(f"cuDNN convolves {spec} to {lib.convolution_output_dim(conv, x_d, w_d)}, "
                           f"the spec says {spec.output_shape}")
    return w_d, conv


def _identity(spec: Conv2d, dtype: DType, fmt: TensorFormat) -> str:
    """What a legacy call's cached algorithm is kept under beside its operands: the convolution
    (padding, stride, dilation, groups are in no operand's shape), the dtype and the format."""
    return f"{spec!r} {dtype.name} {fmt.name}"


def _fastest_cudnn_path(device: torch.device, legacy: Callable[[], Built],
                        others: list[tuple[str, Callable[[], Built]]]) -> Built:
    """The fastest of the ways into cuDNN, timed by one timer (see the module docstring)."""
    return fastest_path(
        ("legacy", legacy), others,
        time_ms=lambda kernel: selection_ms(kernel, device, warmup=2, reps=RETIME_RUNS),
        after_failure=lambda: torch.cuda.synchronize(device))  # a sticky CUDA error is not a fallback


@register("conv2d", "cudnn", backend="cudnn", reference=True,
          description="cuDNN: the fastest of the legacy cudnnConvolutionForward (algorithm found by "
                      "cudnnFind...Ex, + cudnnAddTensor), the graph API's fastest plan (bias fused) and "
                      "that of the convolution alone + cudnnAddTensor")
def build_conv2d(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """The fastest of cuDNN's two ways in, timed by one timer (see the module docstring)."""
    _, _, device = _setup(tensors)
    others = [("graph", lambda: cudnn_graph.build_conv2d_graph(spec, dtype, layout, tensors, out))]
    if spec.bias:
        others.append(("graph_then_bias", lambda: build_conv2d_graph_then_bias(spec, dtype, layout, tensors, out)))
    return _fastest_cudnn_path(device, lambda: build_conv2d_legacy(spec, dtype, layout, tensors, out), others)


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
    """The legacy API: cudnnFind...Ex, the near-ties timed again, then cudnnAddTensor for the bias."""
    lib, handle, device = _setup(tensors)
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    # Canonical strides: the descriptors are made from a format and the dims (never from torch's
    # strides, which are arbitrary for size-1 dimensions: a 1x1 filter in NHWC), and the format is
    # one that every tensor is dense in.
    fmt = _common_format(layout, x=x, out=out, weight=w)
    x_d, y_d = _describe(lib, x, fmt), _describe(lib, out, fmt)
    w_d, conv = _convolution(lib, spec, dtype, fmt, w, x_d)
    # The algorithm computes the convolution alone (the bias is added after it): judged without it.
    check = cudnn_graph.result_checker(spec, "forward", False, dtype,
                                       {k: v for k, v in tensors.items() if k != "bias"}, {"y": out})
    chosen, workspace = _fastest_algorithm(lib, handle, device, api.CONV_FORWARD, (x_d, x), (w_d, w), conv,
                                           (y_d, out), dtype, check, _identity(spec, dtype, fmt))
    calls: list[tuple[Callable[..., Any], tuple]] = [(chosen.launch, ())]
    keep: tuple = (x_d, y_d, w_d, conv, workspace, x, w, out)
    if b is not None:
        b_d = lib.tensor_4d(TensorFormat.NCHW, api.data_type(b.dtype), 1, b.shape[0], 1, 1)
        calls.append((lib.cudnnAddTensor, (handle.ptr, ONE_PTR, b_d.ptr, b.data_ptr(), ONE_PTR, y_d.ptr,
                                           out.data_ptr())))
        keep += (b_d, b)
    return _launcher(handle, device, calls, keep, {"format": fmt.name, **chosen.details})


# ---------------------------------------------------------------- backward passes


@register("conv2d", "cudnn", backend="cudnn", reference=True, direction="backward_data",
          description="cuDNN: the faster of the legacy cudnnConvolutionBackwardData (algorithm found by "
                      "cudnnFind...Ex) and the graph API's fastest conv_dgrad plan")
def build_conv2d_backward_data(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Built:
    """dx from dy and the weight, by the faster of cuDNN's two ways in."""
    _, _, device = _setup(tensors)
    return _fastest_cudnn_path(
        device, lambda: build_conv2d_backward_data_legacy(spec, dtype, layout, tensors, out),
        [("graph", lambda: cudnn_graph.build_conv2d_dgrad_graph(spec, dtype, layout, tensors, out))])


def build_conv2d_backward_data_legacy(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                                      out: torch.Tensor) -> Built:
    """cudnnConvolutionBackwardData (reads the weight and dy, writes dx) with the algorithm that runs
    fastest when timed again among those cudnnFind...Ex timed fastest, as the forward chooses."""
    lib, handle, device = _setup(tensors)
    w, dy = tensors["weight"], tensors["dy"]
    fmt = _common_format(layout, dy=dy, out=out, weight=w)
    dx_d, dy_d = _describe(lib, out, fmt), _describe(lib, dy, fmt)
    w_d, conv = _convolution(lib, spec, dtype, fmt, w, dx_d)
    check = cudnn_graph.result_checker(spec, "backward_data", spec.bias, dtype, tensors, {"dx": out})
    chosen, workspace = _fastest_algorithm(lib, handle, device, api.CONV_BACKWARD_DATA, (w_d, w), (dy_d, dy), conv,
                                           (dx_d, out), dtype, check, _identity(spec, dtype, fmt))
    return _launcher(handle, device, [(chosen.launch, ())], (dx_d, dy_d, w_d, conv, workspace, w, dy, out),
                     {"format": fmt.name, **chosen.details})


@register("conv2d", "cudnn", backend="cudnn", reference=True, direction="backward_weight",
          description="cuDNN: the faster of the legacy cudnnConvolutionBackwardFilter (algorithm found by "
                      "cudnnFind...Ex, + cudnnConvolutionBackwardBias) and the graph API's fastest conv_wgrad "
                      "plan")
def build_conv2d_backward_weight(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                                 out: torch.Tensor) -> Built:
    """dweight (and dbias) from x and dy, by the faster of cuDNN's two ways in."""
    _, _, device = _setup(tensors)
    return _fastest_cudnn_path(
        device, lambda: build_conv2d_backward_weight_legacy(spec, dtype, layout, tensors, out),
        [("graph", lambda: build_conv2d_backward_weight_graph(spec, dtype, layout, tensors, out))])


def _bias_gradient(lib: Cudnn, handle: Handle, dy: torch.Tensor, dy_d: Descriptor,
                   db: torch.Tensor) -> tuple[tuple[Callable[..., Any], tuple], tuple, str]:
    """db = the sum of dy over N, H and W by cudnnConvolutionBackwardBias; (the call, what it keeps
    alive, which call it is).  cuDNN has no such kernel for some inputs (bf16 on cuDNN 9.19):
    there torch's sum runs, and the description says so."""
    db_d = lib.tensor_4d(TensorFormat.NCHW, api.data_type(db.dtype), 1, db.shape[0], 1, 1)
    call = (lib.cudnnConvolutionBackwardBias, (handle.ptr, ONE_PTR, dy_d.ptr, dy.data_ptr(), ZERO_PTR, db_d.ptr,
                                               db.data_ptr()))
    handle.use_stream(torch.cuda.current_stream(dy.device).cuda_stream)
    try:
        call[0](*call[1])
    except api.CudnnNotSupported as why:
        def torch_sum() -> None:
            db.copy_(dy.sum(dim=(0, 2, 3), dtype=torch.float32))

        return (torch_sum, ()), (dy, db), f"torch.sum over N, H, W ({why})"
    return call, (db_d, dy_d, dy, db), "cudnnConvolutionBackwardBias"


def build_conv2d_backward_weight_legacy(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                                        out: torch.Tensor) -> Built:
    """cudnnConvolutionBackwardFilter (reads x and dy, writes dweight) with the algorithm chosen as the
    forward's is, then cudnnConvolutionBackwardBias (reads dy, writes dbias) where the spec has a bias."""
    lib, handle, device = _setup(tensors)
    x, dy = tensors["x"], tensors["dy"]
    views = split_output(spec, out, layout)
    dw, db = views["dweight"], views.get("dbias")
    fmt = _common_format(layout, x=x, dy=dy, dweight=dw)
    x_d, dy_d = _describe(lib, x, fmt), _describe(lib, dy, fmt)
    dw_d, conv = _convolution(lib, spec, dtype, fmt, dw, x_d)
    check = cudnn_graph.result_checker(spec, "backward_weight", False, dtype, tensors, {"dweight": dw})
    chosen, workspace = _fastest_algorithm(lib, handle, device, api.CONV_BACKWARD_FILTER, (x_d, x), (dy_d, dy),
                                           conv, (dw_d, dw), dtype, check, _identity(spec, dtype, fmt))
    calls: list[tuple[Callable[..., Any], tuple]] = [(chosen.launch, ())]
    keep: tuple = (x_d, dy_d, dw_d, conv, workspace, x, dy, out)
    details: dict[str, object] = {"format": fmt.name, **chosen.details}
    if db is not None:
        call, alive, details["dbias"] = _bias_gradient(lib, handle, dy, dy_d, db)
        calls.append(call)
        keep += alive
    return _launcher(handle, device, calls, keep, details)


def build_conv2d_backward_weight_graph(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                                       out: torch.Tensor) -> Built:
    """The graph API's conv_wgrad; dbias by a reduction node in the same graph where cuDNN has a plan
    for that, else by cudnnConvolutionBackwardBias after the graph (``detail_dbias`` says which)."""
    views = split_output(spec, out, layout)
    dw, db = views["dweight"], views.get("dbias")
    if db is None:
        return cudnn_graph.build_conv2d_wgrad_graph(spec, dtype, layout, tensors, dw)
    try:
        fused = cudnn_graph.build_conv2d_wgrad_graph(spec, dtype, layout, tensors, dw, db)
    except Unsupported as why:
        unfused = str(why)
    else:
        return Built(fused.launch, {**fused.details, "dbias": "reduction node in the graph"})
    graph = cudnn_graph.build_conv2d_wgrad_graph(spec, dtype, layout, tensors, dw)
    lib, handle, device = _setup(tensors)
    dy = tensors["dy"]
    fmt = _common_format(layout, dy=dy)
    call, alive, by = _bias_gradient(lib, handle, dy, _describe(lib, dy, fmt), db)
    bias = _launcher(handle, device, [call], alive, {})
    return Built(in_order(graph.launch, bias.launch),
                 {**graph.details, "dbias": f"{by} (no graph plan with a reduction node: {unfused[:200]})"})


@register("pool2d", "cudnn", backend="cudnn", reference=True, direction="backward_data",
          description="cuDNN cudnnPoolingBackward (max pooling: after cudnnPoolingForward of the current x)")
def build_pool2d_backward_data(spec: Pool2d, dtype: DType, layout: str, tensors: Tensors,
                               out: torch.Tensor) -> Built:
    """dx by cudnnPoolingBackward, which reads y (the forward's output), dy and x.

    y comes from cudnnPoolingForward into a buffer kept here.  For max pooling the kernel runs that
    forward before the backward call, every launch: cuDNN finds each window's maximum by comparing
    x with y, and x changes between launches (the harness's checks write new values into it), so a
    y computed once would send the gradients to stale positions; torch's max-pool backward runs its
    forward too, for the argmax.  The gradient of average pooling does not depend on x or y, so y
    is computed once here and the kernel is the backward call alone.
    """
    lib, handle, device = _setup(tensors)
    x, dy = tensors["x"], tensors["dy"]
    y = torch.empty_like(dy)
    fmt = _common_format(layout, x=x, dy=dy, y=y, out=out)
    x_d, y_d, dx_d = _describe(lib, x, fmt), _describe(lib, dy, fmt), _describe(lib, out, fmt)  # dy is like y
    mode, pool = _pooling(lib, spec, x_d)
    forward = (lib.cudnnPoolingForward,
               (handle.ptr, pool.ptr, ONE_PTR, x_d.ptr, x.data_ptr(), ZERO_PTR, y_d.ptr, y.data_ptr()))
    backward = (lib.cudnnPoolingBackward,
                (handle.ptr, pool.ptr, ONE_PTR, y_d.ptr, y.data_ptr(), y_d.ptr, dy.data_ptr(), x_d.ptr, x.data_ptr(),
                 ZERO_PTR, dx_d.ptr, out.data_ptr()))
    in_kernel = spec.method == "max"
    if not in_kernel:
        handle.use_stream(torch.cuda.current_stream(device).cuda_stream)
        forward[0](*forward[1])
    calls = [forward, backward] if in_kernel else [backward]
    return _launcher(handle, device, calls, (pool, x_d, y_d, dx_d, x, y, dy, out),
                     {"mode": mode.name, "format": fmt.name, "forward_in_kernel": in_kernel})


@register("relu", "cudnn", backend="cudnn", reference=True, direction="backward_data",
          description="cuDNN cudnnActivationBackward (RELU), x in the place of y")
def build_relu_backward_data(spec: ReLU, dtype: DType, layout: str, tensors: Tensors,
                             out: torch.Tensor) -> Built:
    """dx = dy where x > 0, else 0, by cudnnActivationBackward, which reads y (the forward's output),
    dy and x.

    x is passed in y's place as well: y = relu(x) is positive exactly where x is, so x selects the
    same elements whichever of the two cuDNN tests.  A y computed once at build would go stale when
    the harness writes new values into x between launches, and a forward in the kernel would time
    two passes, so neither is used.
    """
    lib, handle, device = _setup(tensors)
    x, dy = tensors["x"], tensors["dy"]
    fmt = _common_format(layout, x=x, dy=dy, out=out)
    d = _describe(lib, x, fmt)  # x, y, dy and dx: one shape, one format
    act = lib.activation(api.ActivationMode.RELU, api.NanPropagation.PROPAGATE)
    call = (lib.cudnnActivationBackward,
            (handle.ptr, act.ptr, ONE_PTR, d.ptr, x.data_ptr(), d.ptr, dy.data_ptr(), d.ptr, x.data_ptr(), ZERO_PTR,
             d.ptr, out.data_ptr()))
    return _launcher(handle, device, [call], (act, d, x, dy, out), {"y": "x"})
