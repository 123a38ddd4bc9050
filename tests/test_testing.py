"""The checkers themselves: they pass correct kernels and catch wrong ones."""

import math

import pytest
import torch
import torch.nn.functional as F

from layerbench.layers import Conv2d, Linear, Pool2d, ReLU
from layerbench.check.correctness import ResultCheck, compare_output
from layerbench.check.inputs import magnitude
from layerbench.testing import check_implementation, make_tensors, reference


def conv_build(spec, dtype, layout, tensors, out):
    def kernel():
        out.copy_(F.conv2d(tensors["x"], tensors["weight"], tensors.get("bias"), spec.stride, spec.padding))
    return kernel


def test_correct_kernel_passes() -> None:
    spec = Conv2d(2, 3, 5, 9, 7, 3, 2, stride=2, padding=1)
    for layout in ("NCHW", "NHWC"):
        r = check_implementation(conv_build, spec, "fp32", layout, "cpu", seed=1)
        assert r.ok, r.message


def test_unwritten_element_is_caught() -> None:
    spec = Linear(3, 7, 5)

    def build(spec, dtype, layout, tensors, out):
        def kernel():
            full = F.linear(tensors["x"], tensors["weight"], tensors["bias"])
            out.view(-1)[:-1] = full.view(-1)[:-1]  # forgets the last element
        return kernel

    r = check_implementation(build, spec, "fp32", "NCHW", "cpu", seed=2)
    assert not r.ok and r.nonfinite == 1


def test_small_error_beyond_fp32_tolerance_is_caught() -> None:
    spec = Conv2d(1, 4, 4, 6, 6, 3, 3)

    def build(spec, dtype, layout, tensors, out):
        inner = conv_build(spec, dtype, layout, tensors, out)
        def kernel():
            inner()
            out.mul_(1 + 1e-4)
        return kernel

    assert not check_implementation(build, spec, "fp32", "NCHW", "cpu", seed=3).ok
    # The same error is within bf16's tolerance: tolerances are by dtype.
    assert check_implementation(build, spec, "bf16", "NCHW", "cpu", seed=3).ok


def test_exact_layers_demand_exact_results() -> None:
    spec = Pool2d(1, 2, 8, 8, 2, 2, method="max")

    def build(spec, dtype, layout, tensors, out):
        def kernel():
            out.copy_(F.max_pool2d(tensors["x"], 2, 2) * (1 + 1e-6))
        return kernel

    assert not check_implementation(build, spec, "fp32", "NCHW", "cpu", seed=4).ok


def test_inplace_relu_restores_input_each_run() -> None:
    spec = ReLU(2, 3, 4, 5, inplace=True)

    def build(spec, dtype, layout, tensors, out):
        assert out is tensors["x"]
        return lambda: out.clamp_(min=0)

    r = check_implementation(build, spec, "fp16", "NCHW", "cpu", seed=5)
    assert r.ok, r.message


def test_inputs_are_fresh_and_not_zero() -> None:
    spec = Conv2d(1, 2, 2, 4, 4, 3, 3)
    a, b = make_tensors(spec, "fp32", "NCHW", "cpu"), make_tensors(spec, "fp32", "NCHW", "cpu")
    assert not torch.equal(a["x"], b["x"])
    assert float(a["x"].abs().min()) >= 0 and float(a["x"].abs().sum()) > 0
    nhwc = make_tensors(spec, "fp16", "NHWC", "cpu")["x"]
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and nhwc.dtype == torch.float16


def test_layout_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="layout for linear must be one of NCHW"):
        make_tensors(Linear(1, 2, 3), "fp32", "NHWC", "cpu")


def test_reference_is_float64() -> None:
    spec = Pool2d(1, 1, 4, 4, 3, 1, padding=1, method="avg")
    ts = make_tensors(spec, "fp16", "NCHW", "cpu")
    ref = reference(spec, ts)
    assert ref.dtype == torch.float64
    # count_include_pad: the corner window sums 4 real values and divides by 9.
    x = ts["x"].double()[0, 0]
    assert math.isclose(float(ref[0, 0, 0, 0]), float(x[:2, :2].sum()) / 9, rel_tol=1e-12)


def test_weight_gradient_that_cancels_is_judged_against_its_size() -> None:
    """A one-element weight gradient that sums to nearly zero: an error of one rounding of each
    product passes, the same error without the cancellation's excuse does not."""
    spec = Linear(1000, 1, 1, bias=False, direction="backward_weight")
    x = torch.ones(1000, 1, dtype=torch.float64)
    dy = torch.ones(1000, 1, dtype=torch.float64)
    dy[1::2] = -1  # products +1, -1, ...: the sum is 0.5 after the nudge below, the |sum| 1000
    dy[0] = 1.5
    tensors = {"x": x, "weight": torch.ones(1, 1, dtype=torch.float64), "dy": dy}
    ref = reference(spec, tensors)
    scale = magnitude(spec, tensors)
    off = ref + 1000 * 2.0**-11 / math.sqrt(1000)  # a tf32 rounding per product, as a random walk
    assert not compare_output(off, ref, spec, "tf32").ok  # 0.015 on a value of 0.5
    assert compare_output(off, ref, spec, "tf32", scale).ok
    assert not compare_output(ref * 1.01 + 1.0, ref, spec, "tf32", scale).ok  # a real error is still one


def test_result_check_judges_parts_against_float64() -> None:
    """What a builder uses to vet its candidates: the harness's judgement on fixed tensors."""
    spec = Conv2d(2, 3, 5, 9, 7, 3, 3, padding=1, direction="backward_weight")
    tensors = make_tensors(spec, "fp32", "NHWC", "cpu", torch.Generator().manual_seed(4))
    x, w, dy = (tensors[k].double().requires_grad_(k != "dy") for k in ("x", "weight", "dy"))
    y = F.conv2d(x, w, tensors["bias"].double().requires_grad_(True), padding=1)
    dw, db = torch.autograd.grad(y, w, dy)[0], dy.sum((0, 2, 3))
    judge = ResultCheck(spec, "fp32", tensors)
    assert judge({"dweight": dw.float(), "dbias": db.float()}).ok
    wrong = judge({"dweight": dw.float(), "dbias": db.float() * 1.01})
    assert not wrong.ok and "dbias" in wrong.message
