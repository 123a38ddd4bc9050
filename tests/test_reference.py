"""The reference implementations ("torch", "cudnn", "cublas"): correctness against float64, and
proof from the GPU kernels they launch that each runs the library it is named for."""

import math

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from kernels.reference import cudnn as cudnn_ref
from kernels.reference import cudnn_graph
from layerbench.builders import as_built
from layerbench.measure import provenance
from layerbench.measure.provenance import kernel_names, library, libraries
from layerbench import registry
from layerbench.dtypes import get_dtype, precision
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d, Linear, Pool2d, ReLU
from layerbench.testing import check_implementation, make_output, make_tensors, specs

REFERENCES = {("conv2d", "torch"), ("pool2d", "torch"), ("relu", "torch"), ("linear", "torch"),
              ("conv2d", "cudnn"), ("pool2d", "cudnn"), ("relu", "cudnn"), ("linear", "cublas")}


def _configs(spec):
    return [(d, lay) for d in spec.dtypes for lay in spec.layouts]


def _assert_ok(impl, spec, dtype, layout, device):
    result = check_implementation(impl, spec, dtype, layout, device)
    assert result.ok, f"{impl.layer}/{impl.name} {spec} {dtype} {layout}: {result.message}"


# ---------------------------------------------------------------- registry


def test_references_are_registered_honestly():
    found = {(i.layer, i.name): i for i in registry.all_implementations() if i.reference}
    assert REFERENCES <= set(found)
    for layer in ("conv2d", "pool2d", "relu", "linear"):
        impl = found[(layer, "torch")]
        assert (impl.backend, impl.devices) == ("torch", ("cuda", "cpu"))
    for layer in ("conv2d", "pool2d", "relu"):
        impl = found[(layer, "cudnn")]
        assert (impl.backend, impl.devices) == ("cudnn", ("cuda",))
    impl = found[("linear", "cublas")]
    assert (impl.backend, impl.devices) == ("cublas", ("cuda",))
    # cuDNN's legacy API has no matmul: a "cudnn" linear would really be cuBLAS.
    assert ("linear", "cudnn") not in found and "cudnn" not in registry.names("linear")
    assert not {"torch", "cudnn", "cublas"} & set(registry.load_errors())


@pytest.mark.parametrize("layer, name, spec", [
    ("conv2d", "cudnn", Conv2d(1, 2, 3, 5, 5, 3, 3)),
    ("pool2d", "cudnn", Pool2d(1, 2, 6, 6, 2, 2)),
    ("relu", "cudnn", ReLU(1, 2, 3, 3)),
    ("linear", "cublas", Linear(2, 4, 3)),
])
def test_library_references_refuse_cpu_tensors(layer, name, spec):
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    with pytest.raises(Unsupported, match="CUDA"):
        registry.get(layer, name).build(spec, get_dtype("fp32"), "NCHW", tensors,
                                        make_output(spec, tensors))


def test_cudnn_describes_every_tensor_in_the_format_its_memory_has():
    from kernels.reference.cudnn import _common_format
    from kernels.reference.cudnn_api import TensorFormat

    last = torch.channels_last
    # One input channel: x and weight are dense in both formats, the harness's out only in NCHW.
    x, w, out = torch.empty(2, 1, 5, 5).contiguous(memory_format=last), torch.empty(4, 1, 3, 3), \
        torch.empty(2, 4, 3, 3)
    assert _common_format("NHWC", x=x, out=out, weight=w) is TensorFormat.NCHW
    x, out = torch.empty(2, 3, 5, 5), torch.empty(2, 3, 2, 2)
    assert _common_format("NCHW", x=x, out=out) is TensorFormat.NCHW
    assert _common_format("NHWC", x=x.contiguous(memory_format=last),
                          out=out.contiguous(memory_format=last)) is TensorFormat.NHWC
    with pytest.raises(ValueError, match="one layout"):
        _common_format("NHWC", x=x.contiguous(memory_format=last), out=out)


# ---------------------------------------------------------------- torch reference on the CPU

CPU_SPECS = [
    Conv2d(2, 3, 5, 9, 8, 3, 2, stride=2, padding=1),
    Conv2d(1, 4, 3, 6, 6, 1, 1, bias=False),
    Pool2d(2, 3, 9, 7, 3, 2, padding=1, method="max"),
    Pool2d(2, 3, 9, 7, 3, 2, padding=1, method="avg"),
    Pool2d(1, 2, 8, 8, 2, 2, method="avg"),
    ReLU(2, 3, 5, 4), ReLU(2, 3, 5, 4, inplace=True),
    Linear(3, 17, 5), Linear(1, 8, 2, bias=False),
]


@pytest.mark.parametrize("spec", CPU_SPECS, ids=str)
def test_torch_reference_on_cpu(spec):
    impl = registry.get(spec.layer, "torch")
    for dtype, layout in _configs(spec):
        _assert_ok(impl, spec, dtype, layout, "cpu")


@given(data=st.data(), layer=st.sampled_from(["conv2d", "pool2d", "relu", "linear"]))
def test_torch_reference_on_cpu_random_specs(data, layer):
    spec = data.draw(specs(layer))
    dtype = data.draw(st.sampled_from(spec.dtypes))
    layout = data.draw(st.sampled_from(spec.layouts))
    _assert_ok(registry.get(layer, "torch"), spec, dtype, layout, "cpu")


# ---------------------------------------------------------------- provenance (no GPU)


@pytest.mark.parametrize("name, lib", [
    ("void cudnn::pooling_fw_4d_kernel<float, float, cudnn::maxpooling_func<float>, 0, false>(...)", "cudnn"),
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_cudnn", "cudnn"),
    ("void implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, false, false, true>(...)", "cudnn"),
    ("sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x128x8_execute_kernel__5x_cublas", "cublas"),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNN", "cublas"),
    ("ampere_sgemm_128x64_tn", "cublas"),
    ("void gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, 4, 4, false, false>(...)", "cublas"),
    ("void at::native::(anonymous namespace)::max_pool_forward_nchw<float, float>(...)", "aten"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::"
     "launch_clamp_scalar(...)>(...)", "aten"),
    ("triton_poi_fused_relu_0", "triton"),
])
def test_library_of_known_kernel_names(name, lib):
    assert library(name) == lib
    assert library(name, own_backend="cupy") == lib  # a library's name wins over the owner


def test_unknown_names_belong_to_their_owner():
    assert library("_relu_kernel") == "unknown"
    assert library("_relu_kernel", own_backend="triton") == "triton"
    assert libraries(["relu_nchw", "void at::native::fill(...)"], "cupy") == {
        "cupy": ["relu_nchw"], "aten": ["void at::native::fill(...)"]}


def test_kernel_names_on_cpu_are_empty():
    calls = []
    assert kernel_names(lambda: calls.append(1), "cpu") == []
    assert calls == []


# ---------------------------------------------------------------- GPU: correctness

# The thesis's layers (docs/thesis-experiments.md) at a small batch, plus odd shapes.
GPU_SPECS = [
    Conv2d(2, 3, 96, 128, 128, 11, 11),  # A4 L1
    Conv2d(2, 384, 384, 13, 13, 3, 3, padding=1),  # A4 L5, padded
    Conv2d(2, 3, 64, 224, 224, 11, 11, stride=4, padding=2),  # AlexNet conv1
    Conv2d(3, 5, 7, 9, 10, 3, 2, stride=2, padding=1, bias=False),
    Pool2d(4, 64, 55, 55, 3, 2, method="max"),  # A6 AlexNet pool1
    Pool2d(4, 64, 55, 55, 3, 2, method="avg"),
    Pool2d(4, 192, 27, 27, 2, 2, method="max"),
    Pool2d(2, 5, 13, 11, 3, 1, padding=1, method="avg"),  # padding counted in the divisor
    Pool2d(2, 5, 13, 11, 3, 1, padding=1, method="max"),
    ReLU(4, 96, 55, 55), ReLU(4, 96, 55, 55, inplace=True), ReLU(3, 5, 7, 1),
    Linear(8, 9216, 4096),  # A5 "Large"
    Linear(1, 4096, 1000),  # A5 "Small" at batch 1: a GEMV
    Linear(5, 37, 3, bias=False),
]
GPU_CASES = [(spec, name) for spec in GPU_SPECS for (layer, name) in sorted(REFERENCES)
             if layer == spec.layer]


@pytest.mark.gpu
@pytest.mark.parametrize("spec, name", GPU_CASES, ids=lambda v: str(v))
def test_reference_on_gpu(spec, name):
    impl = registry.get(spec.layer, name)
    for dtype, layout in _configs(spec):
        _assert_ok(impl, spec, dtype, layout, "cuda")


@pytest.mark.gpu
@given(data=st.data(), layer=st.sampled_from(["conv2d", "pool2d", "relu"]))
def test_cudnn_on_random_specs(data, layer):
    """Odd shapes: cuDNN may refuse one (a sweep records it as unsupported); what it runs is right.
    The thesis shapes above must all run."""
    spec = data.draw(specs(layer))
    dtype = data.draw(st.sampled_from(spec.dtypes))
    layout = data.draw(st.sampled_from(spec.layouts))
    try:
        result = check_implementation(registry.get(layer, "cudnn"), spec, dtype, layout, "cuda")
    except Unsupported as exc:
        event(f"cuDNN refused: {str(exc)[:80]}")
        return
    assert result.ok, f"{spec} {dtype} {layout}: {result.message}"


def _build(layer, name, spec, dtype, layout):
    tensors = make_tensors(spec, dtype, layout, "cuda")
    out = make_output(spec, tensors)
    with precision(get_dtype(dtype)):
        kernel = registry.get(layer, name).build(spec, get_dtype(dtype), layout, tensors, out)
    return kernel, out


def _run(kernel, out, busy: bool = False, settle: bool = False):
    if busy:  # the stream is still busy when the poison is queued: work launched elsewhere runs first
        torch.cuda._sleep(20_000_000)
    out.fill_(math.nan)
    if settle:  # the poison has landed before the launch: a stream race cannot leave NaN
        torch.cuda.synchronize()
    returned = kernel()
    torch.cuda.synchronize()
    return (returned if isinstance(returned, torch.Tensor) else out).clone()


@pytest.mark.gpu
@pytest.mark.parametrize("layer, name, spec, dtype, layout", [
    ("conv2d", "cudnn", GPU_SPECS[1], "fp32", "NHWC"),
    ("conv2d", "cudnn", GPU_SPECS[0], "fp16", "NCHW"),
    ("pool2d", "cudnn", GPU_SPECS[4], "bf16", "NHWC"),
    ("pool2d", "cudnn", GPU_SPECS[5], "fp32", "NCHW"),
    ("relu", "cudnn", GPU_SPECS[9], "fp16", "NCHW"),
    ("linear", "cublas", GPU_SPECS[12], "tf32", "NCHW"),
    ("conv2d", "torch", GPU_SPECS[1], "fp32", "NCHW"),
])
def test_built_kernel_is_reusable_on_any_stream(layer, name, spec, dtype, layout):
    kernel, out = _build(layer, name, spec, dtype, layout)
    with precision(get_dtype(dtype)):
        first = _run(kernel, out)
        caller = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(caller)
        with torch.cuda.stream(side):  # the handle must follow torch's current stream
            capturing = torch.cuda.is_current_stream_capturing()
            second = _run(kernel, out)
            again = _run(kernel, out)
            settled = _run(kernel, out, settle=True)
            current = torch.cuda.current_stream()
        third = _run(kernel, out)
    assert torch.isfinite(first).all()
    # Library engines may sum in a different order from one launch to the next (split-K,
    # atomics): equal within rounding; a launch that raced its stream leaves the NaN poison.
    streams = (f"caller stream {caller.cuda_stream:#x}, side {side.cuda_stream:#x} (capturing: {capturing}), "
               f"current after the side runs {current.cuda_stream:#x}; NaN in a second side-stream run: "
               f"{int(again.isnan().sum())}, in one with the poison synchronised first: "
               f"{int(settled.isnan().sum())} of {settled.numel()}")
    details = getattr(kernel, "details", None)
    torch.testing.assert_close(second, first, msg=lambda m: f"side stream: {m} ({streams}; {details})")
    torch.testing.assert_close(again, first, msg=lambda m: f"side stream, again: {m} ({streams})")
    torch.testing.assert_close(third, first, msg=lambda m: f"back on the first stream: {m} ({details})")


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["legacy", "graph", "graph_then_bias"])
@pytest.mark.parametrize("dtype, layout", [("fp32", "NHWC"), ("fp32", "NCHW"), ("fp16", "NHWC")])
def test_each_cudnn_conv_path_follows_the_current_stream(path, dtype, layout):
    spec = GPU_SPECS[1]
    dt = get_dtype(dtype)
    tensors = make_tensors(spec, dt, layout, "cuda")
    out = make_output(spec, tensors, layout)
    build = {"legacy": cudnn_ref.build_conv2d_legacy, "graph": cudnn_graph.build_conv2d_graph,
             "graph_then_bias": cudnn_ref.build_conv2d_graph_then_bias}[path]
    with precision(dt):
        kernel = as_built(build(spec, dt, layout, tensors, out))
        first = _run(kernel, out)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            second = _run(kernel, out, busy=True)
    assert torch.isfinite(first).all(), kernel.details
    torch.testing.assert_close(second, first, msg=lambda m: f"{m} ({kernel.details})")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, math_types", [("fp32", {"FMA"}), ("tf32", {"DEFAULT", "TENSOR_OP"}),
                                               ("fp16", {"DEFAULT", "TENSOR_OP"})])
def test_cudnn_conv_math_type_follows_dtype(dtype, math_types):
    kernel, _ = _build("conv2d", "cudnn", GPU_SPECS[1], dtype, "NHWC")
    legacy = kernel.details["legacy"]  # the legacy path's choice, whichever path won
    assert legacy["math_type"] in math_types
    assert legacy["algorithm"] and legacy["cudnn_version"] >= 90000
    # The kept algorithm was timed again as well as by the search (or kept from an earlier search
    # of the same call in this process: the build cache's choice).
    assert legacy["retimed_ms"] > 0 and (legacy.get("reused_choice") or legacy["search_ms"] > 0)


@pytest.mark.gpu
def test_cudnn_legacy_search_keeps_only_right_algorithms():
    """cuDNN's search ranked a WINOGRAD_NONFUSED kernel first for AlexNet's conv2 at batch 16 in
    fp32, off by ~1e-3: the legacy path judges each candidate and keeps a right one."""
    spec = Conv2d(batch=16, in_channels=64, out_channels=192, height=27, width=27, kernel_h=5, kernel_w=5,
                  padding=2)
    dt = get_dtype("fp32")
    tensors = make_tensors(spec, dt, "NCHW", "cuda")
    out = make_output(spec, tensors, "NCHW")
    with precision(dt):
        kernel = as_built(cudnn_ref.build_conv2d_legacy(spec, dt, "NCHW", tensors, out))
        got = _run(kernel, out)
    expected = torch.nn.functional.conv2d(tensors["x"].double(), tensors["weight"].double(),
                                          tensors["bias"].double(), padding=2)
    rel = float((got.double() - expected).norm() / expected.norm())
    assert rel < 1e-5, f"legacy path kept a wrong algorithm: rel_norm {rel:.2e} ({kernel.details})"
    assert kernel.details["algorithm"] and "rejected" in kernel.details


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cudnn_legacy_choice_is_reused_on_fresh_tensors(dtype):
    """A second legacy build of the same convolution (new tensors, same shapes) runs the algorithm
    the first one's search kept, without a search, and is right on its own tensors."""
    spec = Conv2d(batch=4, in_channels=48, out_channels=40, height=19, width=17, kernel_h=3, kernel_w=3,
                  padding=1)
    dt = get_dtype(dtype)
    chosen = []
    for _ in range(2):
        tensors = make_tensors(spec, dt, "NCHW", "cuda")
        out = make_output(spec, tensors, "NCHW")
        with precision(dt):
            kernel = as_built(cudnn_ref.build_conv2d_legacy(spec, dt, "NCHW", tensors, out))
            got = _run(kernel, out)
        chosen.append(kernel.details)
        expected = torch.nn.functional.conv2d(tensors["x"].double(), tensors["weight"].double(),
                                              tensors["bias"].double(), padding=1)
        rel = float((got.double() - expected).norm() / expected.norm())
        assert rel < (1e-5 if dtype == "fp32" else 2e-3), f"rel_norm {rel:.2e} ({kernel.details})"
    first, second = chosen
    assert second["reused_choice"] is True and "search_ms" not in second, second
    assert (second["algorithm"], second["math_type"]) == (first["algorithm"], first["math_type"])


# ---------------------------------------------------------------- GPU: provenance

PROVENANCE_SPECS = {"conv2d": GPU_SPECS[1], "pool2d max": GPU_SPECS[4], "pool2d avg": GPU_SPECS[5],
                    "relu": GPU_SPECS[9], "linear": GPU_SPECS[12]}


def _names(key, name, dtype, layout):
    spec = PROVENANCE_SPECS[key]
    kernel, _ = _build(spec.layer, name, spec, dtype, layout)
    with precision(get_dtype(dtype)):
        names = kernel_names(kernel, "cuda")
    assert names, f"{key}/{name} launched no GPU kernel"
    return names, libraries(names, registry.get(spec.layer, name).backend)


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["conv2d", "pool2d max", "pool2d avg", "relu"])
@pytest.mark.parametrize("dtype, layout", [("fp32", "NCHW"), ("fp16", "NHWC")])
def test_cudnn_launches_cudnn_kernels(key, dtype, layout):
    if key == "relu" and layout == "NHWC":
        layout = "NCHW"  # ReLU has one layout
    names, libs = _names(key, "cudnn", dtype, layout)
    if key == "conv2d":
        # The graph API's engines may launch cuBLASLt's GEMM kernels (nvjet, xmma_gemm) from cuDNN.
        assert set(libs) == {"cudnn"}, names
    else:
        assert any("cudnn" in n.lower() for n in names), names
    assert "aten" not in libs, libs  # nothing of torch's ran


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["pool2d max", "pool2d avg", "relu"])
@pytest.mark.parametrize("dtype, layout", [("fp32", "NCHW"), ("fp16", "NHWC")])
def test_torch_pooling_and_relu_are_aten_not_cudnn(key, dtype, layout):
    if key == "relu" and layout == "NHWC":
        layout = "NCHW"
    names, libs = _names(key, "torch", dtype, layout)
    assert not any("cudnn" in n.lower() for n in names), names
    assert set(libs) == {"aten"}, libs


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, layout", [("fp32", "NCHW"), ("bf16", "NHWC")])
def test_torch_conv_is_cudnn(dtype, layout):
    names, libs = _names("conv2d", "torch", dtype, layout)
    assert any("cudnn" in n.lower() for n in names), names


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cublas", "torch"])
@pytest.mark.parametrize("dtype", ["fp32", "tf32", "fp16", "bf16"])
def test_linear_references_launch_cublas_gemms(name, dtype):
    names, libs = _names("linear", name, dtype, "NCHW")
    assert "cublas" in libs, names
    assert "cudnn" not in libs, libs


def test_provenance_rules_are_documented():
    doc = provenance.__doc__
    for lib, needles in provenance.LIBRARY_RULES:
        assert f"``{lib}``" in doc
        for needle in needles:
            assert f'"{needle}"' in doc
