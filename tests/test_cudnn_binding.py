"""The ctypes binding to cuDNN: constants, error mapping, library discovery, and (where cuDNN is
installed) descriptor calls, which run on the host, and handles, which need a GPU."""

import ctypes

import pytest
import torch

from kernels.reference import cudnn_api as api
from layerbench.errors import Unavailable, Unsupported


def _cudnn_or_skip() -> api.Cudnn:
    try:
        return api.load()
    except Unavailable as exc:
        pytest.skip(f"cuDNN is not installed here: {exc}")


# Values from cuDNN 9's cudnn_graph.h / cudnn_ops.h (unchanged from 9.0 to 9.28).
@pytest.mark.parametrize("member, value", [
    (api.Status.SUCCESS, 0), (api.Status.BAD_PARAM, 2000), (api.Status.NOT_SUPPORTED, 3000),
    (api.Status.INTERNAL_ERROR, 4000), (api.Status.EXECUTION_FAILED, 5000),
    (api.DataType.FLOAT, 0), (api.DataType.HALF, 2), (api.DataType.BFLOAT16, 9),
    (api.TensorFormat.NCHW, 0), (api.TensorFormat.NHWC, 1),
    (api.MathType.DEFAULT, 0), (api.MathType.TENSOR_OP, 1), (api.MathType.FMA, 3),
    (api.NanPropagation.PROPAGATE, 1), (api.ActivationMode.RELU, 1), (api.ActivationMode.IDENTITY, 5),
    (api.PoolingMode.MAX, 0), (api.PoolingMode.AVERAGE_COUNT_INCLUDE_PADDING, 1),
    (api.ConvolutionMode.CROSS_CORRELATION, 1),
    (api.ConvFwdAlgo.IMPLICIT_GEMM, 0), (api.ConvFwdAlgo.WINOGRAD_NONFUSED, 7),
    (api.ConvBwdDataAlgo.ALGO_0, 0), (api.ConvBwdDataAlgo.ALGO_1, 1), (api.ConvBwdDataAlgo.FFT, 2),
    (api.ConvBwdDataAlgo.FFT_TILING, 3), (api.ConvBwdDataAlgo.WINOGRAD, 4),
    (api.ConvBwdDataAlgo.WINOGRAD_NONFUSED, 5),
    (api.ConvBwdFilterAlgo.ALGO_0, 0), (api.ConvBwdFilterAlgo.ALGO_1, 1), (api.ConvBwdFilterAlgo.FFT, 2),
    (api.ConvBwdFilterAlgo.ALGO_3, 3), (api.ConvBwdFilterAlgo.WINOGRAD, 4),
    (api.ConvBwdFilterAlgo.WINOGRAD_NONFUSED, 5), (api.ConvBwdFilterAlgo.FFT_TILING, 6),
])
def test_enum_values_match_the_headers(member, value):
    assert int(member) == value


@pytest.mark.parametrize("perf", [api.ConvolutionFwdAlgoPerf, api.ConvolutionBwdDataAlgoPerf,
                                  api.ConvolutionBwdFilterAlgoPerf])
def test_algo_perf_struct_layout(perf):
    # int, int, float, (pad), size_t, int, int, int[3] (+ pad): the C layout on 64-bit Linux.
    assert perf.memory.offset == 16
    assert perf.mathType.offset == 28
    assert ctypes.sizeof(perf) == 48


# Argument counts from the cuDNN 9 headers (cudnn_ops.h, cudnn_cnn.h).
@pytest.mark.parametrize("name, library, count", [
    ("cudnnPoolingBackward", "ops", 12), ("cudnnActivationBackward", "ops", 12),
    ("cudnnGetConvolutionBackwardDataAlgorithmMaxCount", "cnn", 2),
    ("cudnnGetConvolutionBackwardDataWorkspaceSize", "cnn", 7),
    ("cudnnFindConvolutionBackwardDataAlgorithmEx", "cnn", 13), ("cudnnConvolutionBackwardData", "cnn", 13),
    ("cudnnGetConvolutionBackwardFilterAlgorithmMaxCount", "cnn", 2),
    ("cudnnGetConvolutionBackwardFilterWorkspaceSize", "cnn", 7),
    ("cudnnFindConvolutionBackwardFilterAlgorithmEx", "cnn", 13), ("cudnnConvolutionBackwardFilter", "cnn", 13),
    ("cudnnConvolutionBackwardBias", "cnn", 7),
])
def test_backward_prototypes(name, library, count):
    lib, argtypes = api.PROTOTYPES[name]
    assert (lib, len(argtypes)) == (library, count)


@pytest.mark.parametrize("cp, perf, algos", [
    (api.CONV_FORWARD, api.ConvolutionFwdAlgoPerf, api.ConvFwdAlgo),
    (api.CONV_BACKWARD_DATA, api.ConvolutionBwdDataAlgoPerf, api.ConvBwdDataAlgo),
    (api.CONV_BACKWARD_FILTER, api.ConvolutionBwdFilterAlgoPerf, api.ConvBwdFilterAlgo),
])
def test_each_convolution_pass_names_its_own_calls(cp, perf, algos):
    assert (cp.perf, cp.algos) == (perf, algos)
    names = (cp.max_count, cp.workspace_size, cp.find, cp.run)
    assert all(n in api.PROTOTYPES for n in names) and len(set(names)) == 4
    word = {"forward": "Forward", "backward data": "BackwardData", "backward filter": "BackwardFilter"}[cp.name]
    assert all(word in n for n in names)
    # The one operand order the builders rely on: two inputs, the convolution, the output.
    find_args = api.PROTOTYPES[cp.find][1]
    assert find_args[10] is ctypes.POINTER(perf)  # the perf array is this pass's struct
    assert len(api.PROTOTYPES[cp.workspace_size][1]) == 7 and len(api.PROTOTYPES[cp.run][1]) == 13


def test_dtype_mapping():
    assert api.data_type(torch.float32) is api.DataType.FLOAT
    assert api.data_type(torch.float16) is api.DataType.HALF
    assert api.data_type(torch.bfloat16) is api.DataType.BFLOAT16
    with pytest.raises(Unsupported, match="float64"):
        api.data_type(torch.float64)


@pytest.mark.parametrize("status, category", [(3002, 3000), (3000, 3000), (2000, 2000), (1001, 1000),
                                              (4003, 4000)])
def test_status_category(status, category):
    assert api.status_category(status) == category


def test_not_supported_statuses_are_unsupported():
    err = api.error_for("cudnnPoolingForward", 3003, "CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE", "no fp8")
    assert isinstance(err, api.CudnnNotSupported) and isinstance(err, Unsupported)
    assert str(err) == ("cudnnPoolingForward failed with CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE (3003): "
                        "no fp8")
    assert (err.function, err.status, err.detail) == ("cudnnPoolingForward", 3003, "no fp8")


@pytest.mark.parametrize("status", [2000, 1001, 4000, 5000])
def test_other_statuses_are_errors_not_unsupported(status):
    err = api.error_for("cudnnCreate", status, "NAME")
    assert type(err) is api.CudnnError and not isinstance(err, Unsupported)
    assert str(err) == f"cudnnCreate failed with NAME ({status})"


def test_success_is_not_an_error():
    with pytest.raises(ValueError, match="SUCCESS"):
        api.error_for("cudnnCreate", 0, "CUDNN_STATUS_SUCCESS")


def _fake_wheel(root, names=api.LIBRARIES):
    lib = root / "lib"
    lib.mkdir()
    for name in names:
        (lib / name).write_bytes(b"not an ELF file")
    return lib


def test_library_dir_found(tmp_path):
    lib = _fake_wheel(tmp_path)
    assert api.find_library_dir([tmp_path / "elsewhere", tmp_path]) == lib


def test_library_dir_missing_a_library_is_unavailable(tmp_path):
    _fake_wheel(tmp_path, api.LIBRARIES[:-1])
    with pytest.raises(Unavailable, match=r"libcudnn_cnn\.so\.9.*nvidia/cudnn/lib.*looked in: .*lib"):
        api.find_library_dir([tmp_path])


def test_no_cudnn_package_is_unavailable():
    with pytest.raises(Unavailable, match="no nvidia/cudnn package is installed"):
        api.find_library_dir([])


def test_unloadable_library_is_unavailable(tmp_path):
    _fake_wheel(tmp_path)
    with pytest.raises(Unavailable, match="could not be loaded"):
        api.load([tmp_path])


def test_default_discovery_agrees_with_the_installed_packages():
    try:
        lib_dir = api.find_library_dir()
    except Unavailable as exc:
        assert "nvidia/cudnn/lib" in str(exc)
    else:
        assert lib_dir.name == "lib" and lib_dir.parent.name == "cudnn"


# ---------------------------------------------------------------- with cuDNN installed (no GPU needed)


def test_descriptors_and_output_dims():
    lib = _cudnn_or_skip()
    assert lib.version >= 90000
    x = lib.tensor_4d(api.TensorFormat.NHWC, api.DataType.HALF, 2, 64, 55, 55)
    pool = lib.pooling_2d(api.PoolingMode.MAX, api.NanPropagation.PROPAGATE, (3, 3), (1, 1), (2, 2))
    assert lib.pooling_output_dim(pool, x) == (2, 64, 28, 28)
    w = lib.filter_4d(api.DataType.HALF, api.TensorFormat.NHWC, 96, 64, 11, 7)
    conv = lib.convolution_2d((2, 2), (4, 4), api.DataType.FLOAT, api.MathType.TENSOR_OP)
    assert lib.convolution_output_dim(conv, x, w) == (2, 96, 13, 14)
    lib.activation(api.ActivationMode.RELU, api.NanPropagation.PROPAGATE)


def test_bad_call_raises_with_cudnns_own_text():
    lib = _cudnn_or_skip()
    with pytest.raises(api.CudnnError) as info:
        lib.tensor_4d(api.TensorFormat.NCHW, api.DataType.FLOAT, 0, 3, 4, 4)
    assert info.value.function == "cudnnSetTensor4dDescriptor"
    assert info.value.status == 2000 and info.value.name == "CUDNN_STATUS_BAD_PARAM"
    assert "CUDNN_STATUS_BAD_PARAM" in str(info.value)
    assert not isinstance(info.value, Unsupported)


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_handle_is_cached_per_device_and_is_torchs_cudnn():
    lib = api.load()
    assert lib is api.load()
    h = lib.handle(torch.device("cuda", 0))
    assert h is lib.handle(0) and h.ptr.value
    # The same library torch runs, not a second copy of another version.
    assert lib.version == torch.backends.cudnn.version()
    h.use_stream(torch.cuda.current_stream().cuda_stream)


def _c_kind(param: str) -> str:
    """How a C parameter is passed: 'ptr', 'double', 'size_t' or 'int' (ints and enums)."""
    p = " ".join(param.replace("const ", "").split())
    first = p.split()[0]
    if "*" in p or "[" in p or first in ("cudnnHandle_t", "cudaStream_t") or first.endswith("Descriptor_t"):
        return "ptr"
    return {"double": "double", "size_t": "size_t"}.get(first, "int")


def _py_kind(argtype) -> str:
    if argtype is ctypes.c_void_p or issubclass(argtype, ctypes._Pointer):
        return "ptr"
    return {ctypes.c_double: "double", ctypes.c_size_t: "size_t", ctypes.c_int: "int"}[argtype]


def test_prototypes_match_the_installed_headers():
    """Each bound function's argument list against the declaration in cuDNN's own headers."""
    import re

    lib_dir = _cudnn_or_skip().lib_dir
    headers = sorted((lib_dir.parent / "include").glob("cudnn_*.h"))
    if not headers:
        pytest.skip(f"no cuDNN headers beside {lib_dir}")
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", "\n".join(h.read_text() for h in headers), flags=re.S)
    for name, (_, argtypes) in api.PROTOTYPES.items():
        found = re.search(rf"cudnnStatus_t\s+CUDNNWINAPI\s+{name}\s*\(([^;]*?)\)\s*;", text)
        assert found, f"{name} is not declared in {', '.join(h.name for h in headers)}"
        params = [p for p in found.group(1).split(",") if p.strip() and p.strip() != "void"]
        assert [_c_kind(p) for p in params] == [_py_kind(a) for a in argtypes], (name, params)
