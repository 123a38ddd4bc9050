"""The vendor references of the backward passes: "cudnn" (conv2d, pool2d, relu) and "cublas"
(linear), each pass registered under the forward's name, training composed from them.

CPU: the registry's passes, the refusals, the fp32 probes of the graph path, the fallbacks where
the optional packages are missing (the record says why), torch's linear path.  GPU: every pass in
every dtype and layout against float64 autograd, each way into the library alone, what was
chosen (printed: run with -rA -s) and the kernels that ran.
"""

from __future__ import annotations

import pytest
import torch
from reference_helpers import (check_keeping_built, fake_built, frontend_importable, launched_kernels,
                               no_module, nvmath_importable)

from kernels.reference import cublas as cublas_ref
from kernels.reference import cublaslt, cudnn_graph
from kernels.reference import cudnn as cudnn_ref
from kernels.reference.cudnn_api import ConvBwdDataAlgo, ConvBwdFilterAlgo
from layerbench import registry
from layerbench.builders import Built
from layerbench.dtypes import get_dtype, precision
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear, Pool2d, ReLU
from layerbench.layers.passes import at_direction, split_output
from layerbench.measure.provenance import libraries
from layerbench.testing import check_implementation, make_output, make_tensors

VENDOR = {"conv2d": "cudnn", "pool2d": "cudnn", "relu": "cudnn", "linear": "cublas"}
BACKWARD = ("backward_data", "backward_weight", "training")


def _directions(spec):
    return [d for d in BACKWARD if d != "backward_weight" or hasattr(spec, "weight_shape")]


# ---------------------------------------------------------------- CPU: the registry


@pytest.mark.parametrize("layer, directions", [
    ("conv2d", ("forward", "backward_data", "backward_weight", "training")),
    ("pool2d", ("forward", "backward_data", "training")),
    ("relu", ("forward", "backward_data", "training")),
    ("linear", ("forward", "backward_data", "backward_weight", "training")),
])
def test_vendor_references_run_every_pass(layer, directions):
    impl = registry.get(layer, VENDOR[layer])
    assert impl.directions == directions
    for d in directions:
        entry = impl.for_direction(d)
        assert entry.direction == d and entry.reference and entry.devices == ("cuda",)
        assert entry.backend == VENDOR[layer] and entry.description
    assert not {"cudnn", "cublas"} & set(registry.load_errors())


SPECS = [Conv2d(2, 3, 4, 7, 6, 3, 3, padding=1), Pool2d(1, 2, 6, 6, 2, 2), ReLU(1, 2, 3, 3), Linear(2, 4, 3)]
CPU_CASES = [(at_direction(s, d), VENDOR[s.layer]) for s in SPECS for d in _directions(s)]


@pytest.mark.parametrize("spec, name", CPU_CASES, ids=str)
def test_backward_passes_are_cuda_only(spec, name):
    impl = registry.get(spec.layer, name)
    assert impl.unsupported_reason(spec, "fp32", "NCHW", "cuda") is None
    why = impl.unsupported_reason(spec, "fp32", "NCHW", "cpu")
    assert why is not None and "cuda" in why and "cpu" in why


@pytest.mark.parametrize("spec, name", CPU_CASES, ids=str)
def test_backward_passes_refuse_cpu_tensors(spec, name):
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="CUDA"):
        registry.get(spec.layer, name).build(spec, get_dtype("fp32"), "NCHW", tensors, make_output(spec, tensors))


# ---------------------------------------------------------------- CPU: the graph path's fp32 probes


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10 mantissa bits (to nearest), as a tensor core reads it."""
    bits = t.float().contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _grad_args(spec):
    return {"stride": (spec.stride_h, spec.stride_w), "padding": (spec.padding_h, spec.padding_w),
            "dilation": (spec.dilation_h, spec.dilation_w)}


PROBE_SPECS = [Conv2d(2, 3, 4, 7, 6, 3, 2, stride=2, padding=1), Conv2d(1, 2, 5, 9, 9, 3, 3, padding=2, dilation=2),
               Conv2d(2, 3, 5, 4, 4, 1, 1)]


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("spec", PROBE_SPECS, ids=str)
def test_graph_probes_pass_fp32_and_catch_tf32(spec, fmt):
    """What each probe expects is what a true fp32 gradient gives (torch's on the CPU), and a
    gradient from TF32-rounded inputs misses it."""
    x, w, dy = (torch.randn(s).contiguous(memory_format=fmt) for s in (spec.input_shape, spec.weight_shape,
                                                                      spec.output_shape))
    tol, args = cudnn_graph.FP32_PROBE_TOL, _grad_args(spec)

    def off(got, expected):
        return float((got.double() - expected).abs().max())

    t, e = cudnn_graph.dgrad_probe(spec, dy, w, torch.empty_like(x))
    assert float(e["out"].abs().max()) == cudnn_graph.FP32_PROBE  # the probe value reaches dx
    assert off(torch.nn.grad.conv2d_input(x.shape, t["weight"], t["dy"], **args), e["out"]) <= tol
    assert off(torch.nn.grad.conv2d_input(x.shape, t["weight"], _tf32(t["dy"]), **args), e["out"]) > tol
    t, e = cudnn_graph.wgrad_probe(spec, x, dy, torch.empty_like(w), torch.empty(spec.out_channels))
    assert float(e["dweight"].abs().max()) == cudnn_graph.FP32_PROBE
    assert off(torch.nn.grad.conv2d_weight(t["x"], w.shape, t["dy"], **args), e["dweight"]) <= tol
    assert off(torch.nn.grad.conv2d_weight(_tf32(t["x"]), w.shape, t["dy"], **args), e["dweight"]) > tol
    assert off(t["dy"].sum((0, 2, 3)), e["dbias"]) == 0 and float(e["dbias"].sum()) == 1.0
    assert t["dweight"].stride() == w.stride() and t["dbias"].shape == (spec.out_channels,)


# ---------------------------------------------------------------- CPU: the fallbacks






@pytest.mark.parametrize("direction, legacy", [("backward_data", "build_conv2d_backward_data_legacy"),
                                               ("backward_weight", "build_conv2d_backward_weight_legacy")])
def test_cudnn_conv_backward_falls_back_to_legacy_and_says_why(monkeypatch, direction, legacy):
    no_module(monkeypatch, "cudnn")
    spec = Conv2d(3, 24, 40, 13, 17, 3, 3, padding=1, direction=direction)
    tensors = make_tensors(spec, "bf16", "NHWC", "cpu")
    out = make_output(spec, tensors, "NHWC")
    calls: list[str] = []
    monkeypatch.setattr(cudnn_ref, "_setup", lambda t: (None, None, torch.device("cpu")))
    monkeypatch.setattr(cudnn_ref, legacy, lambda *a: fake_built("legacy", calls))
    monkeypatch.setattr(cudnn_ref, "selection_ms", lambda kernel, device, **kw: 1.0)
    built = registry.get("conv2d", "cudnn").build(spec, get_dtype("bf16"), "NHWC", tensors, out)
    assert built.details["path"] == "legacy" and built.details["legacy"] == {"chose": "legacy"}
    assert built.details["graph"].startswith("unavailable: nvidia-cudnn-frontend is not importable")
    built()
    assert calls[-1] == "legacy"


def test_graph_wgrad_bias_falls_back_to_backward_bias(monkeypatch):
    """No graph plan with the reduction node: the graph's dweight, then cudnnConvolutionBackwardBias."""
    spec = Conv2d(2, 3, 4, 7, 6, 3, 3, padding=1, direction="backward_weight")
    tensors = make_tensors(spec, "fp32", "NHWC", "cpu")
    out = make_output(spec, tensors, "NHWC")
    asked, calls = [], []

    def graph(spec, dtype, layout, tensors, dweight, dbias=None):
        asked.append(dbias is not None)
        assert dweight.shape == spec.weight_shape and dweight.is_contiguous(memory_format=torch.channels_last)
        if dbias is not None:
            assert dbias.shape == (spec.out_channels,)
            raise Unsupported("cuDNN's graph API offers no plan for this convolution's weight gradient with ...")
        return Built(lambda: calls.append("wgrad"), {"path": "graph", "plan": "eng0"})

    monkeypatch.setattr(cudnn_graph, "build_conv2d_wgrad_graph", graph)
    monkeypatch.setattr(cudnn_ref, "_setup", lambda t: (None, None, torch.device("cpu")))
    monkeypatch.setattr(cudnn_ref, "_describe", lambda lib, t, fmt: None)
    monkeypatch.setattr(cudnn_ref, "_bias_gradient", lambda lib, handle, dy, dy_d, db: (
        (lambda: calls.append("BackwardBias"), ()), (), "cudnnConvolutionBackwardBias"))
    monkeypatch.setattr(cudnn_ref, "_launcher", lambda handle, device, calls_, keep, details: Built(
        lambda: [fn(*args) for fn, args in calls_], details))
    built = cudnn_ref.build_conv2d_backward_weight_graph(spec, get_dtype("fp32"), "NHWC", tensors, out)
    assert asked == [True, False]  # the fused graph first
    built()
    assert calls == ["wgrad", "BackwardBias"]
    assert built.details["plan"] == "eng0"
    assert built.details["dbias"].startswith("cudnnConvolutionBackwardBias (no graph plan with a reduction node")


def test_graph_wgrad_bias_fused_when_cudnn_has_a_plan(monkeypatch):
    spec = Conv2d(2, 3, 4, 7, 6, 3, 3, padding=1, direction="backward_weight")
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    out = make_output(spec, tensors, "NCHW")
    views = split_output(spec, out, "NCHW")

    def graph(spec, dtype, layout, tensors, dweight, dbias=None):
        assert dweight.data_ptr() == views["dweight"].data_ptr() and dbias.data_ptr() == views["dbias"].data_ptr()
        return Built(lambda: None, {"path": "graph"})

    monkeypatch.setattr(cudnn_graph, "build_conv2d_wgrad_graph", graph)
    built = cudnn_ref.build_conv2d_backward_weight_graph(spec, get_dtype("fp32"), "NCHW", tensors, out)
    assert built.details == {"path": "graph", "dbias": "reduction node in the graph"}


@pytest.fixture
def torch_linear_on_cpu(monkeypatch):
    """The "cublas" linear with nvmath missing and its device check and timer let through on the CPU."""
    no_module(monkeypatch, "nvmath", "nvmath.linalg", "nvmath.linalg.advanced")
    monkeypatch.setattr(cublas_ref, "_cuda_device", lambda t: torch.device("cpu"))
    monkeypatch.setattr(cublas_ref, "selection_ms", lambda kernel, device, **kw: 1.0)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("direction", BACKWARD)
@pytest.mark.parametrize("bias", [True, False])
def test_cublas_linear_backward_torch_path(torch_linear_on_cpu, direction, bias, dtype):
    spec = Linear(5, 7, 3, bias=bias, direction=direction)
    impl = registry.get("linear", "cublas")
    result = check_implementation(impl, spec, dtype, "NCHW", "cpu")
    assert result.ok, result.message
    tensors = make_tensors(spec, dtype, "NCHW", "cpu")
    built = impl.build(spec, get_dtype(dtype), "NCHW", tensors, make_output(spec, tensors))
    # training's details are its single passes', each under the pass's name
    for key in (["forward_", "backward_data_", "backward_weight_"] if direction == "training" else [""]):
        assert built.details[f"{key}path"] == "torch"
        assert built.details[f"{key}cublaslt"].startswith("unavailable: nvmath-python is not importable")


def test_cublas_linear_backward_weight_writes_into_outs_views(torch_linear_on_cpu):
    spec = Linear(5, 7, 3, direction="backward_weight")
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    out = make_output(spec, tensors).fill_(float("nan"))
    built = registry.get("linear", "cublas").build(spec, get_dtype("fp32"), "NCHW", tensors, out)
    out.fill_(float("nan"))
    assert built() is None  # torch's path writes out, returns nothing
    views = split_output(spec, out, "NCHW")
    x, dy = tensors["x"], tensors["dy"]
    assert torch.allclose(views["dweight"], dy.t() @ x) and torch.allclose(views["dbias"], dy.sum(0))


# ---------------------------------------------------------------- GPU

CONV_SPECS = [
    Conv2d(3, 24, 40, 13, 17, 3, 3, stride=2, padding=1),
    Conv2d(3, 24, 40, 13, 17, 1, 1, bias=False),
    Conv2d(2, 8, 12, 11, 9, 3, 3, padding=2, dilation=2),
]
GROUPED = Conv2d(2, 8, 12, 9, 9, 3, 3, padding=1, groups=4)
POOL_SPECS = [
    Pool2d(2, 5, 13, 11, 3, 2, padding=1, method="max"),  # overlapping windows, padding
    Pool2d(2, 5, 13, 11, 3, 2, padding=1, method="avg"),
    Pool2d(4, 16, 12, 12, 2, 2, method="max"),  # disjoint windows: dx bit-exact
]
RELU_SPECS = [ReLU(3, 5, 7, 9)]
LINEAR_SPECS = [Linear(37, 200, 72), Linear(37, 200, 72, bias=False), Linear(1, 64, 32)]
GPU_CASES = [(at_direction(s, d), VENDOR[s.layer]) for s in CONV_SPECS + POOL_SPECS + RELU_SPECS + LINEAR_SPECS
             for d in _directions(s)]


def _configs(spec):
    return [(d, lay) for d in spec.dtypes for lay in spec.layouts]










def _conv_path(spec, dtype, details):
    """The details of a cuDNN conv2d backward pass name the faster of its two paths and what each chose."""
    legacy = details["legacy"]
    assert isinstance(legacy, dict) and details["legacy_ms"] > 0, legacy
    algos = ConvBwdDataAlgo if spec.direction == "backward_data" else ConvBwdFilterAlgo
    assert legacy["algorithm"] in algos.__members__ and legacy["retimed_ms"] > 0
    assert legacy["math_type"] == "FMA" if dtype == "fp32" else legacy["math_type"] in ("DEFAULT", "TENSOR_OP")
    if frontend_importable():
        graph = details["graph"]
        assert isinstance(graph, dict), f"graph path missing: {graph}"
        assert details["graph_ms"] > 0 and graph["plan"]
        if spec.direction == "backward_weight" and spec.bias:
            assert graph["dbias"]  # which way the graph path computed the bias gradient
        faster = min(("legacy", "graph"), key=lambda p: details[f"{p}_ms"])
        assert details["path"] == faster or details["legacy_ms"] == details["graph_ms"]
    else:
        assert details["path"] == "legacy" and details["graph"].startswith("unavailable")


def _expect_conv2d(spec, dtype, details, names):
    if spec.direction == "training":
        paths = {details[f"{p}_path"] for p in ("forward", "backward_data", "backward_weight")}
        assert paths <= {"legacy", "graph", "graph_then_bias"}, paths
    else:
        _conv_path(spec, dtype, details)
    # The graph API's engines may launch cuBLASLt's GEMM kernels (nvjet, xmma_gemm) from cuDNN;
    # where cuDNN has no bias-gradient kernel, torch's sum runs and the details say so.
    assert_cudnn_kernels(names, details)


def assert_cudnn_kernels(names, details):
    libs = set(libraries(names, "cudnn"))
    assert libs == {"cudnn"} or (libs == {"cudnn", "aten"} and "torch.sum" in str(details)), names


def _expect_pool2d_or_relu(spec, dtype, details, names):
    assert any("cudnn" in n.lower() for n in names), names
    assert "aten" not in libraries(names, "cudnn"), names  # nothing of torch's ran
    d = {k.removeprefix("backward_data_"): v for k, v in details.items()}
    if spec.layer == "pool2d":
        assert d["forward_in_kernel"] == (spec.method == "max")
        assert d["mode"] == ("MAX" if spec.method == "max" else "AVERAGE_COUNT_INCLUDE_PADDING")
    else:
        assert d["y"] == "x"


def _expect_linear(spec, dtype, details, names):
    libs = libraries(names, "cublas")
    assert "cublas" in libs and "cudnn" not in libs, names
    if spec.direction == "training":
        assert {details[f"{p}_path"] for p in ("forward", "backward_data", "backward_weight")} <= {"torch", "cublaslt"}
        return
    assert details["path"] in ("torch", "cublaslt") and details["torch_ms"] > 0
    if details["path"] == "cublaslt" or not (spec.direction == "backward_weight" and spec.bias):
        assert set(libs) == {"cublas"}, names  # torch's path adds ATen's reduction only for dbias
    if nvmath_importable():
        assert isinstance(details["cublaslt"], dict), f"cuBLASLt path missing: {details['cublaslt']}"
    else:
        assert details["cublaslt"].startswith("unavailable")


EXPECT = {"conv2d": _expect_conv2d, "pool2d": _expect_pool2d_or_relu, "relu": _expect_pool2d_or_relu,
          "linear": _expect_linear}


@pytest.mark.gpu
@pytest.mark.parametrize("spec, name", GPU_CASES, ids=str)
def test_backward_reference_on_gpu(spec, name):
    """Every dtype and layout against float64 autograd; the details say which path won; the
    kernels that ran are the library's."""
    impl = registry.get(spec.layer, name)
    for dtype, layout in _configs(spec):
        result, details, launch = check_keeping_built(impl.build, spec, dtype, layout)
        names = launched_kernels(launch, dtype)
        print(f"\n{spec} {dtype} {layout}: {details}; kernels {names}")
        assert result.ok, f"{spec} {dtype} {layout}: {result.message} ({details})"
        EXPECT[spec.layer](spec, dtype, details, names)


@pytest.mark.gpu
@pytest.mark.parametrize("direction", ["backward_data", "backward_weight"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cudnn_grouped_conv_backward_keeps_the_faster_path(direction, dtype):
    """Grouped gradients reach cuDNN both ways (the graph reads the groups from the weight's
    channels); both are timed and the faster kept, or the legacy call alone with the graph's reason."""
    spec = at_direction(GROUPED, direction)
    result, details, _ = check_keeping_built(registry.get("conv2d", "cudnn").build, spec, dtype, "NCHW")
    assert result.ok, result.message
    if isinstance(details["graph"], str):  # the frontend is missing or refused: the reason is kept
        assert details["path"] == "legacy" and details["graph"]
    else:
        times = {path: details[f"{path}_ms"] for path in ("legacy", "graph")}
        assert details["path"] == min(times, key=times.get), details


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, layout", [("fp32", "NCHW"), ("fp32", "NHWC"), ("bf16", "NHWC")])
@pytest.mark.parametrize("path", ["legacy", "graph"])
@pytest.mark.parametrize("direction", ["backward_data", "backward_weight"])
@pytest.mark.parametrize("spec", CONV_SPECS, ids=str)
def test_cudnn_conv_backward_each_path_alone_is_correct(spec, direction, path, dtype, layout):
    """Only the faster path is kept; the other must be right too."""
    builds = {("legacy", "backward_data"): cudnn_ref.build_conv2d_backward_data_legacy,
              ("legacy", "backward_weight"): cudnn_ref.build_conv2d_backward_weight_legacy,
              ("graph", "backward_data"): cudnn_graph.build_conv2d_dgrad_graph,
              ("graph", "backward_weight"): cudnn_ref.build_conv2d_backward_weight_graph}
    if path == "graph" and not frontend_importable():
        pytest.skip("nvidia-cudnn-frontend is not importable")
    spec = at_direction(spec, direction)
    result, details, launch = check_keeping_built(builds[path, direction], spec, dtype, layout)
    print(f"\n{spec} {dtype} {layout} {path}: {details}")
    assert result.ok, f"{path}: {result.message} ({details})"
    if dtype == "fp32":  # TF32 would leave ~1e-4 over these sums; true fp32 stays near 1e-7
        assert result.rel_norm < 1e-5, f"rel_norm {result.rel_norm:.3g}: reduced precision ran in fp32"
    assert_cudnn_kernels(launched_kernels(launch, dtype), details)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [at_direction(CONV_SPECS[0], "backward_weight"),
                                  at_direction(POOL_SPECS[0], "backward_data"),
                                  at_direction(LINEAR_SPECS[0], "backward_weight")], ids=str)
def test_backward_kernel_is_reusable_on_any_stream(spec):
    tensors = make_tensors(spec, "fp32", "NCHW", "cuda")
    out = make_output(spec, tensors, "NCHW")
    with precision(get_dtype("fp32")):
        kernel = registry.get(spec.layer, VENDOR[spec.layer]).build(spec, get_dtype("fp32"), "NCHW", tensors, out)
        runs = []
        for stream in (torch.cuda.current_stream(), torch.cuda.Stream(), torch.cuda.current_stream()):
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # the handles must follow torch's current stream
                out.fill_(float("nan"))
                returned = kernel()
                result = out.clone()
                if isinstance(returned, dict):  # cuBLASLt's bias gradient, allocated by nvmath
                    result[split_output(spec, result, "NCHW")["dbias"].storage_offset():] = returned["dbias"]
            torch.cuda.synchronize()
            runs.append(result)
    assert torch.isfinite(runs[0]).all()
    # cuDNN's weight gradients may sum in another order each launch (atomics): equal within rounding.
    torch.testing.assert_close(runs[1], runs[0], msg=lambda m: f"side stream: {m}")
    torch.testing.assert_close(runs[2], runs[0], msg=lambda m: f"back on the first stream: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("direction", ["backward_data", "backward_weight"])
@pytest.mark.parametrize("spec", LINEAR_SPECS, ids=str)
def test_cublaslt_linear_backward_alone_is_correct(spec, direction, dtype):
    if not nvmath_importable():
        pytest.skip("nvmath-python is not importable")
    spec = at_direction(spec, direction)
    build = (cublaslt.build_linear_backward_data_cublaslt if direction == "backward_data"
             else cublaslt.build_linear_backward_weight_cublaslt)
    result, details, launch = check_keeping_built(build, spec, dtype, "NCHW")
    print(f"\n{spec} {dtype}: {details}; kernels {launched_kernels(launch, dtype)}")
    assert result.ok, f"cuBLASLt algorithm {details.get('algorithm_id')}: {result.message}"
    assert details["path"] == "cublaslt" and details["timed"] >= 1 and details["search_ms"] > 0
    assert details["epilog"] == ("BGRADB" if direction == "backward_weight" and spec.bias else "none")
    if dtype == "fp32":
        assert result.rel_norm < 1e-5, f"rel_norm {result.rel_norm:.3g}: TF32 ran in fp32"
