"""The CuPy conv2d backward passes (conv2d_backward.cu) on a GPU, against float64 autograd
(check_implementation): dx, dweight and dbias, and the training pass they make with the forward,
in every dtype and layout, on small odd shapes and on ResNet / MobileNet layers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from layerbench import registry
from layerbench.builders import as_built
from layerbench.dtypes import get_dtype, precision
from layerbench.layers import Conv2d
from layerbench.testing import check_implementation, conv2d_specs, make_output, make_tensors

pytest.importorskip("cupy", reason="the CuPy kernels need CuPy")

gpu = pytest.mark.gpu
DEVICE = "cuda"
BACKWARD = ("backward_data", "backward_weight")


def impl() -> registry.Implementation:
    errors = registry.load_errors()
    assert "cupy" not in errors, errors["cupy"]
    return registry.get("conv2d", "cupy")


def assert_ok(spec: Conv2d, dtype: str, layout: str, direction: str) -> None:
    spec = dataclasses.replace(spec, direction=direction)
    assert impl().unsupported_reason(spec, dtype, layout, DEVICE) is None
    result = check_implementation(impl(), spec, dtype, layout, DEVICE)
    assert result.ok, f"{spec} {dtype} {layout}: {result.message}"


def test_registered_passes() -> None:
    """Both backward passes are registered, so training runs wherever the forward does."""
    i = impl()
    assert i.directions == ("forward", "backward_data", "backward_weight", "training")
    grouped = Conv2d(batch=1, in_channels=4, out_channels=4, height=5, width=5, kernel_h=3, kernel_w=3, groups=2)
    for direction in BACKWARD:
        assert i.unsupported_reason(dataclasses.replace(grouped, direction=direction), "fp16", "NHWC", DEVICE) is None
    assert i.unsupported_reason(dataclasses.replace(grouped, direction="training"), "fp16", "NHWC", DEVICE) is None
    # Training needs every pass: a dilated window whose NCHW depthwise tile outgrows shared memory is
    # refused by the forward only.
    huge = Conv2d(1, 2, 2, 130, 130, 5, 5, dilation=30, groups=2)
    why = i.unsupported_reason(dataclasses.replace(huge, direction="training"), "fp16", "NCHW", DEVICE)
    assert why is not None and why.startswith("forward:")


# Odd sizes, per-axis stride / padding / dilation, groups, depthwise, 1x1, with and without bias.
SMALL = {
    "3x3-pad1": Conv2d(batch=2, in_channels=5, out_channels=7, height=9, width=7, kernel_h=3, kernel_w=3, padding=1),
    "stride2": Conv2d(batch=3, in_channels=6, out_channels=10, height=11, width=9, kernel_h=3, kernel_w=3,
                      stride=2, padding=1, bias=False),
    "dilation2": Conv2d(batch=2, in_channels=4, out_channels=3, height=10, width=13, kernel_h=3, kernel_w=3,
                        dilation=2, padding=2),
    "per-axis": Conv2d(batch=2, in_channels=3, out_channels=5, height=8, width=11, kernel_h=2, kernel_w=3,
                       stride_h=2, stride_w=3, padding_h=1, padding_w=0, dilation_h=1, dilation_w=2),
    "groups3": Conv2d(batch=2, in_channels=12, out_channels=9, height=7, width=6, kernel_h=3, kernel_w=3,
                      groups=3, padding=1, stride=2),
    "depthwise": Conv2d(batch=2, in_channels=17, out_channels=17, height=7, width=8, kernel_h=3, kernel_w=3,
                        groups=17, padding=1),
    "1x1": Conv2d(batch=3, in_channels=70, out_channels=66, height=5, width=7, kernel_h=1, kernel_w=1, bias=False),
    "5x5-odd": Conv2d(batch=1, in_channels=3, out_channels=130, height=13, width=15, kernel_h=5, kernel_w=5,
                      padding=2),
}
PLAIN_SMALL = [name for name, spec in SMALL.items() if spec.beyond_plain() is None]

# Layers of ResNet-50 (3x3, 1x1, the strided 1x1 downsample, the 7x7 stem), VGG-16 and MobileNetV2
# (depthwise), at batch 8 to 32.
REALISTIC = {
    "resnet-3x3-64": Conv2d(batch=32, in_channels=64, out_channels=64, height=56, width=56, kernel_h=3,
                            kernel_w=3, padding=1, bias=False),
    "resnet-1x1-256-64": Conv2d(batch=16, in_channels=256, out_channels=64, height=56, width=56, kernel_h=1,
                                kernel_w=1, bias=False),
    "resnet-1x1-s2-512": Conv2d(batch=8, in_channels=256, out_channels=512, height=56, width=56, kernel_h=1,
                                kernel_w=1, stride=2, bias=False),
    "resnet-3x3-s2-128": Conv2d(batch=8, in_channels=128, out_channels=128, height=56, width=56, kernel_h=3,
                                kernel_w=3, stride=2, padding=1, bias=False),
    "resnet-3x3-512": Conv2d(batch=16, in_channels=512, out_channels=512, height=7, width=7, kernel_h=3,
                             kernel_w=3, padding=1, bias=False),
    "resnet-stem-7x7": Conv2d(batch=8, in_channels=3, out_channels=64, height=224, width=224, kernel_h=7,
                              kernel_w=7, stride=2, padding=3, bias=False),
    "vgg-3x3-bias": Conv2d(batch=8, in_channels=128, out_channels=128, height=112, width=112, kernel_h=3,
                           kernel_w=3, padding=1),
    "mobilenet-depthwise-s2": Conv2d(batch=16, in_channels=144, out_channels=144, height=56, width=56,
                                     kernel_h=3, kernel_w=3, stride=2, padding=1, groups=144, bias=False),
}
PLAIN_REALISTIC = [name for name, spec in REALISTIC.items() if spec.beyond_plain() is None]


@gpu
@pytest.mark.parametrize("direction", BACKWARD)
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("case", sorted(SMALL))
def test_backward_small(case: str, dtype: str, layout: str, direction: str) -> None:
    assert_ok(SMALL[case], dtype, layout, direction)


@gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("case", PLAIN_SMALL)
def test_training_small(case: str, dtype: str, layout: str) -> None:
    assert_ok(SMALL[case], dtype, layout, "training")


@gpu
@pytest.mark.parametrize("direction", BACKWARD)
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("case", sorted(REALISTIC))
def test_backward_realistic(case: str, dtype: str, layout: str, direction: str) -> None:
    assert_ok(REALISTIC[case], dtype, layout, direction)


@gpu
@pytest.mark.parametrize("layout", Conv2d.layouts)
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
@pytest.mark.parametrize("case", PLAIN_REALISTIC)
def test_training_realistic(case: str, dtype: str, layout: str) -> None:
    assert_ok(REALISTIC[case], dtype, layout, "training")


@gpu
@given(spec=conv2d_specs(max_batch=3, max_channels=24, max_hw=14, max_kernel=5, max_dilation=2, max_groups=4,
                         per_axis=True),
       dtype=st.sampled_from(Conv2d.dtypes), layout=st.sampled_from(Conv2d.layouts),
       direction=st.sampled_from(BACKWARD))
def test_backward_drawn(spec: Conv2d, dtype: str, layout: str, direction: str) -> None:
    assert_ok(spec, dtype, layout, direction)


@gpu
@pytest.mark.parametrize("dtype", Conv2d.dtypes)
def test_weight_gradient_splits_and_is_deterministic(dtype: str) -> None:
    """A long reduction is split over blocks (details say how many), and two launches on the same
    inputs give the same bits (the partials are added in a fixed order)."""
    spec = dataclasses.replace(REALISTIC["vgg-3x3-bias"], batch=2, direction="backward_weight")
    tensors = make_tensors(spec, dtype, "NHWC", DEVICE, torch.Generator().manual_seed(0))
    out = make_output(spec, tensors, "NHWC")
    with precision(get_dtype(dtype)):
        built = as_built(impl().build(spec, get_dtype(dtype), "NHWC", tensors, out))
        assert built.details["splits"] > 1
        built.launch()
        first = out.clone()
        out.fill_(float("nan"))
        built.launch()
    torch.cuda.synchronize()
    bits = torch.int16 if out.element_size() == 2 else torch.int32
    assert torch.equal(out.view(bits), first.view(bits))
