"""The references at their best: cuDNN's graph API beside its legacy search for conv2d,
cuBLASLt's algorithm search beside torch's call for linear.

CPU (CI): the choice between paths with fake builds and timers, the fallback where the optional
packages cannot be imported (the record says why), the plan search's counting, the strides, the
provenance of the graph engines' kernels.  GPU: each path alone and the chosen one correct on odd
shapes in every dtype and layout, fp32 never TF32, and what each chose (printed: run with -rA -s).
"""

from __future__ import annotations

import sys

import pytest
import torch
from reference_helpers import (check_keeping_built, fake_built, frontend_importable, launched_kernels,
                               no_module)

from kernels.reference import cublas as cublas_ref
from kernels.reference import cublaslt, cudnn_graph
from kernels.reference import cudnn as cudnn_ref
from layerbench import registry
from layerbench.builders import fastest_path
from layerbench.dtypes import get_dtype
from layerbench.errors import Unavailable, Unsupported
from layerbench.layers import Conv2d, Linear, ReLU
from layerbench.measure.provenance import libraries, library
from layerbench.testing import TOLERANCES, make_output, make_tensors

# ---------------------------------------------------------------- CPU: choosing a path




def _timer(times: dict[str, float], calls: list[str]):
    def time_ms(kernel):
        before = len(calls)
        kernel()
        return times[calls[before]]
    return time_ms


def test_fastest_path_keeps_the_faster_and_records_both():
    calls: list[str] = []
    built = fastest_path(("legacy", lambda: fake_built("legacy", calls)), [("graph", lambda: fake_built("graph", calls))],
                         _timer({"legacy": 2.0, "graph": 1.0}, calls))
    assert built.details == {"path": "graph", "legacy_ms": 2.0, "legacy": {"chose": "legacy"}, "graph_ms": 1.0,
                             "graph": {"chose": "graph"}}
    built()
    assert calls[-1] == "graph"
    tie = fastest_path(("legacy", lambda: fake_built("legacy", calls)), [("graph", lambda: fake_built("graph", calls))],
                       _timer({"legacy": 1.0, "graph": 1.0}, calls))
    assert tie.details["path"] == "legacy"  # a tie keeps the earlier path


def test_fastest_path_records_why_an_optional_path_is_missing():
    calls: list[str] = []
    checked: list[int] = []

    def broken():
        raise RuntimeError("CUDNN_STATUS_EXECUTION_FAILED in plan eng7")

    def missing():
        raise Unavailable("nvidia-cudnn-frontend is not importable")

    built = fastest_path(("legacy", lambda: fake_built("legacy", calls)), [("graph", broken), ("other", missing)],
                         _timer({"legacy": 5.0}, calls), after_failure=lambda: checked.append(1))
    assert built.details["path"] == "legacy"
    assert built.details["graph"] == "failed: RuntimeError: CUDNN_STATUS_EXECUTION_FAILED in plan eng7"
    assert built.details["other"] == "unavailable: nvidia-cudnn-frontend is not importable"
    assert checked == [1]  # the device is checked after a failure, not after a missing package


def test_fastest_path_raises_where_the_device_is_gone():
    def poisoned():
        raise RuntimeError("an illegal memory access was encountered")

    def device_check():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        fastest_path(("legacy", lambda: fake_built("legacy", [])), [("graph", poisoned)], lambda k: 1.0,
                     after_failure=device_check)


def test_fastest_path_primary_unsupported_and_errors():
    calls: list[str] = []

    def refuses():
        raise Unsupported("cuDNN found no forward algorithm")

    built = fastest_path(("legacy", refuses), [("graph", lambda: fake_built("graph", calls))],
                         _timer({"graph": 3.0}, calls))
    assert built.details["path"] == "graph"
    assert built.details["legacy"] == "unsupported: cuDNN found no forward algorithm"
    with pytest.raises(Unsupported, match="legacy: unsupported: cuDNN found no .*graph: unavailable: gone"):
        fastest_path(("legacy", refuses), [("graph", lambda: (_ for _ in ()).throw(Unavailable("gone")))],
                     lambda k: 1.0)

    def bug():
        raise TypeError("a bug in the primary path is not hidden")

    with pytest.raises(TypeError):
        fastest_path(("legacy", bug), [("graph", lambda: fake_built("graph", calls))], lambda k: 1.0)




def test_cudnn_conv_falls_back_to_legacy_and_says_why(monkeypatch):
    no_module(monkeypatch, "cudnn")
    spec = Conv2d(3, 24, 40, 13, 17, 1, 1)
    tensors = make_tensors(spec, "bf16", "NHWC", "cpu")
    out = make_output(spec, tensors, "NHWC")
    calls: list[str] = []
    monkeypatch.setattr(cudnn_ref, "_setup", lambda t: (None, None, torch.device("cpu")))
    monkeypatch.setattr(cudnn_ref, "build_conv2d_legacy", lambda *a: fake_built("legacy", calls))
    monkeypatch.setattr(cudnn_ref, "selection_ms", lambda kernel, device, **kw: 1.0)
    built = registry.get("conv2d", "cudnn").build(spec, get_dtype("bf16"), "NHWC", tensors, out)
    assert built.details["path"] == "legacy" and built.details["legacy"] == {"chose": "legacy"}
    assert built.details["graph"].startswith("unavailable: nvidia-cudnn-frontend is not importable")
    assert "layerbench[cudnn]" in built.details["graph"]


def test_cublas_linear_falls_back_to_torch_and_says_why(monkeypatch):
    no_module(monkeypatch, "nvmath", "nvmath.linalg", "nvmath.linalg.advanced")
    spec = Linear(37, 200, 72)
    tensors = make_tensors(spec, "fp32", "NCHW", "cpu")
    out = make_output(spec, tensors)
    monkeypatch.setattr(cublas_ref, "_cuda_device", lambda t: torch.device("cpu"))
    monkeypatch.setattr(cublas_ref, "selection_ms", lambda kernel, device, **kw: 1.0)
    built = registry.get("linear", "cublas").build(spec, get_dtype("fp32"), "NCHW", tensors, out)
    assert built.details["path"] == "torch"
    assert built.details["cublaslt"].startswith("unavailable: nvmath-python is not importable")
    built()  # torch's call, on the CPU here
    assert torch.allclose(out, torch.addmm(tensors["bias"], tensors["x"], tensors["weight"].t()))


def test_missing_packages_are_unavailable(monkeypatch):
    no_module(monkeypatch, "cudnn", "nvmath", "nvmath.linalg", "nvmath.linalg.advanced")
    with pytest.raises(Unavailable, match="nvidia-cudnn-frontend"):
        cudnn_graph.load_frontend()
    with pytest.raises(Unavailable, match="nvmath-python"):
        cublaslt.load_nvmath()


def test_a_module_named_cudnn_that_is_not_the_frontend(monkeypatch):
    monkeypatch.setitem(sys.modules, "cudnn", type(sys)("cudnn"))
    with pytest.raises(Unavailable, match="no pygraph"):
        cudnn_graph.load_frontend()


# ---------------------------------------------------------------- CPU: the graph path's pieces


def test_canonical_strides_size_one_dims_included():
    assert cudnn_graph.canonical_strides((2, 3, 4, 5), "NCHW") == [60, 20, 5, 1]
    assert cudnn_graph.canonical_strides((2, 3, 4, 5), "NHWC") == [60, 1, 15, 3]
    # A 1x1 filter in NHWC: torch may give (C, 1, 1, 1) or (C, 1, C, C); cuDNN gets the formula's.
    assert cudnn_graph.canonical_strides((40, 24, 1, 1), "NHWC") == [24, 1, 24, 24]
    assert cudnn_graph.canonical_strides((1, 40, 1, 1), "NHWC") == [40, 1, 40, 40]
    assert cudnn_graph.canonical_strides((1, 40, 1, 1), "NCHW") == [40, 1, 1, 1]
    with pytest.raises(ValueError):
        cudnn_graph.canonical_strides((1, 2, 3, 4), "CHWN")


def test_dense_layout():
    last = torch.channels_last
    x, w, out = torch.empty(2, 1, 5, 5).contiguous(memory_format=last), torch.empty(4, 1, 3, 3), \
        torch.empty(2, 4, 3, 3)
    assert cudnn_graph.dense_layout("NHWC", x=x, out=out, weight=w) == "NCHW"
    assert cudnn_graph.dense_layout("NHWC", x=torch.empty(2, 3, 5, 5).contiguous(memory_format=last),
                                    weight=torch.empty(4, 3, 1, 1).contiguous(memory_format=last)) == "NHWC"
    with pytest.raises(ValueError, match="one layout"):
        cudnn_graph.dense_layout("NHWC", x=torch.empty(2, 3, 5, 5).contiguous(memory_format=last),
                                 out=torch.empty(2, 3, 4, 4))


def test_search_plans_counts_and_keeps_the_fastest():
    names = ["eng1_k2=0", "eng1_k2=1", "eng1_k2=0", "eng5", "eng6", "eng7", "eng8"]
    speed = {0: 3.0, 1: 2.0, 4: 1.0, 6: 0.5}
    runs: list[int] = []

    def build(i):
        if names[i] == "eng5":
            raise RuntimeError("[cudnn_frontend] Error: Deselecting execution plan")
        if names[i] == "eng7":
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")

    def make_launch(i):
        runs.append(i)
        return lambda: i

    after: list[int] = []
    s = cudnn_graph.search_plans(names, build, make_launch, screen_ms=lambda k: speed[k()],
                                 final_ms=lambda k: speed[k()],
                                 accept=lambda i: "not true fp32" if names[i] == "eng8" else None,
                                 after_failure=lambda: after.append(1), finalists=2)
    assert (s.plans, s.duplicates, s.barred, s.failed, s.timed) == (6, 1, 1, 1, 4)
    assert s.rejected == 1 and s.best == 4 and s.best_ms == 1.0  # eng8 (0.5 ms) failed the fp32 probe
    counts = s.counts()
    assert counts["built"] == 4 and counts["rejected"] == 1 and "eng7" in counts["first_failures"]
    assert "eng8: not true fp32" in counts["first_failures"]  # the reason travels with the count

    def run_fails(i):
        raise RuntimeError("CUDNN_STATUS_EXECUTION_FAILED")

    s = cudnn_graph.search_plans(["a", "b"], lambda i: None, run_fails, lambda k: 1.0, lambda k: 1.0,
                                 after_failure=lambda: after.append(2))
    assert s.best is None and s.failed == 2 and after.count(2) == 2


def test_search_plans_reuses_a_known_plan_that_still_passes():
    """The build cache's plan is built and checked alone; a known plan that now fails its check
    (or is gone) costs nothing but the full search."""
    names = ["eng1", "eng2", "eng3"]
    speed = {0: 3.0, 1: 1.0, 2: 2.0}
    built: list[int] = []

    def search(known, accept=None):
        built.clear()
        return cudnn_graph.search_plans(names, built.append, lambda i: (lambda: i), lambda k: speed[k()],
                                        lambda k: speed[k()], accept=accept, known=known)

    s = search("eng3")
    assert (s.best, s.reused, built) == (2, True, [2]) and s.counts() == {"reused_choice": True}
    s = search("eng3", accept=lambda i: "wrong on the real tensors" if i == 2 else None)
    assert (s.best, s.reused) == (1, False) and built == [2, 0, 1, 2]
    s = search("eng9")  # a plan this cuDNN no longer offers
    assert (s.best, s.reused, s.plans) == (1, False, 3)


def test_cublaslt_describe_leaves_out_what_it_cannot_read():
    class Algo:
        algorithm_id, tile, stages = 21, "TILE_128x128", 4

        @property
        def split_k(self):
            raise RuntimeError("not set")

    assert cublaslt.describe(Algo()) == {"algorithm_id": 21, "tile": "TILE_128x128", "stages": 4}


@pytest.mark.parametrize("name, owner, lib", [
    ("nvjet_sm90_tst_128x192_64x5_2x1_v_bz_coopB_bias_TNN", "cudnn", "cudnn"),
    ("nvjet_sm90_tst_128x192_64x5_2x1_v_bz_coopB_bias_TNN", "cublas", "cublas"),
    ("nvjet_sm90_tst_128x192_64x5_2x1_v_bz_coopB_TNN", "torch", "cublas"),
    ("nvjet_sm90_hsh_128x192_64x5_2x1_v_bz_coopB_TNN", None, "cublas"),
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x256x32_warpgroupsize2x1x1_execute_segment_k_off_"
     "kernel__5x_", "cudnn", "cudnn"),
    ("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x256x32_warpgroupsize2x1x1_execute_segment_k_off_"
     "kernel__5x_", "triton", "cublas"),
    ("sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize128x128x32_warpgroupsize1x1x1_g1_"
     "execut", "torch", "cudnn"),
    ("sm80_xmma_fprop_implicit_gemm_f32f32_f32f32_f32_nchwkcrs_nchw_tilesize256x64x8_stage3_warpsize2x2x1_g1_"
     "ffma_al", None, "cudnn"),
    ("void precomputed_convolve_sgemm<float, 128, 6, 7, 3, 3, 5, 1, false>(int, int, int, float const*, int, "
     "float*,", "cupy", "cudnn"),
    ("void cudnn::cnn::kern_precompute_indices<false>(int*, int, int, int, int, int)", "torch", "cudnn"),
    ("cutlass3x_sm90_tensorop_s64x128x16gemm_f16_f16_f32_void_f16_128x128x64_1x1x1_0_tnn_align8", "cudnn",
     "cudnn"),
    ("cutlass3x_sm90_tensorop_s64x128x16gemm_f16_f16_f32_void_f16_128x128x64_1x1x1_0_tnn_align8", "cupy",
     "cublas"),
])
def test_graph_engine_kernels_belong_to_cudnn(name, owner, lib):
    assert library(name, owner) == lib


# ---------------------------------------------------------------- GPU

# Odd shapes in no bench: batch 3, 24 -> 40 channels, 13x17 input, 1x1 and 3x3, stride 2, padding 1.
CONV_SPECS = [
    Conv2d(3, 24, 40, 13, 17, 1, 1),
    Conv2d(3, 24, 40, 13, 17, 3, 3, stride=2, padding=1),
    Conv2d(3, 24, 40, 13, 17, 3, 3, padding=1, bias=False),
    Conv2d(3, 24, 40, 13, 17, 1, 1, stride=2, bias=False),
    # Groups: cuDNN reads them from the weight's channels; depthwise with multiplier 2 and dilation.
    Conv2d(3, 24, 40, 13, 17, 3, 3, padding=1, groups=4),
    Conv2d(3, 24, 48, 13, 17, 3, 3, padding=2, dilation=2, groups=24, bias=False),
    Conv2d(3, 24, 24, 13, 17, 3, 3, stride=2, padding=1, groups=24),
]
CONFIGS = [(d, lay) for d in ("fp32", "tf32", "fp16", "bf16") for lay in ("NCHW", "NHWC")]
LINEAR_SPECS = [Linear(37, 200, 72), Linear(37, 200, 72, bias=False)]


def _frontend_or_skip():
    try:
        cudnn_graph.load_frontend()
    except Unavailable as exc:
        pytest.skip(str(exc))


def _nvmath_or_skip():
    try:
        cublaslt.load_nvmath()
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, layout", CONFIGS)
@pytest.mark.parametrize("spec", CONV_SPECS, ids=str)
def test_cudnn_conv_is_the_faster_path_and_correct(spec, dtype, layout):
    impl = registry.get("conv2d", "cudnn")
    result, details, launch = check_keeping_built(impl.build, spec, dtype, layout)
    names = launched_kernels(launch, dtype)
    print(f"\n{spec} {dtype} {layout}: path {details['path']} legacy {details.get('legacy_ms')} ms, "
          f"graph {details.get('graph_ms')} ms; graph: {details.get('graph')}; kernels {names}")
    assert result.ok, f"{spec} {dtype} {layout} path {details['path']}: {result.message}"
    paths = ("legacy", "graph", "graph_then_bias") if spec.bias else ("legacy", "graph")
    assert details["path"] in paths
    assert isinstance(details["legacy"], dict) and details["legacy_ms"] > 0
    if frontend_importable():
        # The frontend is here: the graph path must have run, or say precisely why not.
        assert isinstance(details["graph"], dict), f"graph path missing: {details['graph']}"
        assert details["graph_ms"] > 0 and details["graph"]["plan"]
        timed = [p for p in paths if f"{p}_ms" in details]
        faster = min(timed, key=lambda p: details[f"{p}_ms"])
        assert details[f"{details['path']}_ms"] == details[f"{faster}_ms"]
    else:
        assert details["path"] == "legacy" and details["graph"].startswith("unavailable")
    assert set(libraries(names, "cudnn")) == {"cudnn"}, names


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, layout", CONFIGS)
@pytest.mark.parametrize("spec", CONV_SPECS, ids=str)
def test_cudnn_graph_path_alone_is_correct(spec, dtype, layout):
    _frontend_or_skip()
    result, details, launch = check_keeping_built(cudnn_graph.build_conv2d_graph, spec, dtype, layout)
    names = launched_kernels(launch, dtype)
    print(f"\n{spec} {dtype} {layout}: {details}; kernels {names}")
    assert result.ok, f"graph plan {details.get('plan')}: {result.message}"
    assert details["path"] == "graph" and details["plan"] and details["search_ms"] > 0
    # A plan this process chose before for the same graph is kept without a search (build cache).
    assert details.get("reused_choice") or details["timed"] >= 1 and details["built"] >= details["timed"]
    assert details["layout"] in ("NCHW", "NHWC") and details["frontend_version"]
    assert set(libraries(names, "cudnn")) == {"cudnn"}, names


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("spec", [Conv2d(3, 64, 40, 13, 17, 3, 3, padding=1), Conv2d(3, 256, 64, 13, 17, 1, 1)],
                         ids=str)
def test_cudnn_graph_fp32_is_never_tf32(spec, layout):
    """TF32 (10-bit mantissa) would leave a relative error near 1e-4 over these reductions; true
    fp32 stays near 1e-7, far below the fp32 tolerance."""
    _frontend_or_skip()
    result, details, _ = check_keeping_built(cudnn_graph.build_conv2d_graph, spec, "fp32", layout)
    print(f"\n{spec} fp32 {layout}: rel_norm {result.rel_norm:.3g}; {details}")
    assert result.ok and result.rel_norm <= TOLERANCES["fp32"].rel_norm, result.message
    assert result.rel_norm < 1e-5, f"rel_norm {result.rel_norm:.3g}: reduced precision ran in fp32"


RELU_SPECS = [ReLU(3, 17, 13, 11), ReLU(64, 96, 55, 55), ReLU(2, 3, 4, 5, inplace=True)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ReLU.dtypes)
@pytest.mark.parametrize("spec", RELU_SPECS, ids=str)
def test_cudnn_relu_is_the_faster_path_and_correct(spec, dtype):
    """The legacy call always runs; the graph path runs too, or says why cuDNN (not our code) refused."""
    result, details, launch = check_keeping_built(registry.get("relu", "cudnn").build, spec, dtype, "NCHW")
    names = launched_kernels(launch, dtype)
    print(f"\n{spec} {dtype}: path {details['path']} legacy {details.get('legacy_ms')} ms, graph "
          f"{details.get('graph_ms')} ms; graph: {details.get('graph')}; kernels {names}")
    assert result.ok, f"{spec} {dtype} path {details['path']}: {result.message}"
    assert details["path"] in ("legacy", "graph") and details["legacy_ms"] > 0
    graph = details["graph"]
    if spec.inplace:
        assert details["path"] == "legacy" and "in-place" in graph, graph
    elif frontend_importable():
        assert isinstance(graph, dict) or graph.startswith("unsupported: "), graph
    assert set(libraries(names, "cudnn")) == {"cudnn"}, names


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ReLU.dtypes)
def test_cudnn_relu_graph_passes_nan_and_infinities(dtype):
    _frontend_or_skip()
    spec = ReLU(2, 8, 9, 10)
    tensors = make_tensors(spec, dtype, "NCHW", "cuda")
    x, out = tensors["x"], make_output(spec, tensors)
    try:
        built = cudnn_graph.build_relu_graph(spec, get_dtype(dtype), "NCHW", tensors, out)
    except Unsupported as why:
        pytest.skip(f"cuDNN has no plan for a ReLU graph here: {why}")
    x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")], device=x.device)
    built()
    torch.cuda.synchronize()
    assert out.view(-1)[0].isnan() and out.view(-1)[1] == float("inf") and out.view(-1)[2] == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("spec", LINEAR_SPECS, ids=str)
def test_cublaslt_linear_alone_is_correct(spec, dtype):
    _nvmath_or_skip()
    result, details, launch = check_keeping_built(cublaslt.build_linear_cublaslt, spec, dtype, "NCHW")
    names = launched_kernels(launch, dtype)
    print(f"\n{spec} {dtype}: {details}; kernels {names}")
    assert result.ok, f"cuBLASLt algorithm {details.get('algorithm_id')}: {result.message}"
    assert details["path"] == "cublaslt" and details["timed"] >= 1 and details["search_ms"] > 0
    assert details["epilog"] == ("BIAS" if spec.bias else "none")
    if dtype == "fp32":
        assert result.rel_norm < 1e-5, f"rel_norm {result.rel_norm:.3g}: TF32 ran in fp32"
    assert "cublas" in libraries(names, "cublas"), names


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("spec", LINEAR_SPECS, ids=str)
def test_cublas_linear_is_the_faster_path_and_correct(spec, dtype):
    result, details, _ = check_keeping_built(registry.get("linear", "cublas").build, spec, dtype, "NCHW")
    print(f"\n{spec} {dtype}: path {details['path']} torch {details.get('torch_ms')} ms, cublaslt "
          f"{details.get('cublaslt_ms')} ms; cublaslt: {details.get('cublaslt')}")
    assert result.ok, f"path {details['path']}: {result.message}"
    assert details["path"] in ("torch", "cublaslt") and details["torch_ms"] > 0
    try:
        cublaslt.load_nvmath()
    except Unavailable:
        assert details["cublaslt"].startswith("unavailable")
    else:
        assert isinstance(details["cublaslt"], dict), f"cuBLASLt path missing: {details['cublaslt']}"
