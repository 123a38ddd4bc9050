"""The conv2d backward GEMMs (conv2d_backward.cu), modelled on the CPU (kernels/cupy/models.py):
tables, loaders, tiles, mma.sync fragments, splits and the reduce, against float64 autograd."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from host_cuda_build import assert_constants_match
from kernels.cupy import conv_backward_plan, sources
from kernels.cupy.models import backward_acc_positions, model_backward_multiply, model_dgrad, model_wgrad, ptx_fragments
from layerbench.layers import Conv2d, passes
from layerbench.testing import conv2d_specs, make_output, reference

# (tensor cores, storage dtype): FFMA fp32, tf32, fp16 (bf16 moves the same 16-bit words as fp16).
VARIANTS = {"ffma": (False, torch.float32), "tf32": (True, torch.float32), "fp16": (True, torch.float16)}


def _case(spec: Conv2d, layout: str, dtype: torch.dtype, seed: int) -> tuple[dict, dict]:
    """Inputs in ``dtype`` and ``layout``, and the float64 gradients by autograd."""
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format

    def randn(shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.randn(shape, generator=gen).to(dtype)
        return t.contiguous(memory_format=fmt) if len(shape) == 4 else t

    tensors = {"x": randn(spec.input_shape), "weight": randn(spec.weight_shape), "dy": randn(spec.output_shape)}
    if spec.bias:
        tensors["bias"] = randn((spec.out_channels,))
    full = dataclasses.replace(spec, direction="training")
    ref = passes.reference_parts(full, {k: v.double() for k, v in tensors.items()})
    return tensors, ref


def _check_dgrad(spec: Conv2d, layout: str, variant: str, seed: int) -> None:
    mma, dtype = VARIANTS[variant]
    tensors, ref = _case(spec, layout, dtype, seed)
    dx = torch.empty_like(tensors["x"], dtype=torch.float64)
    model_dgrad(spec, tensors["dy"], tensors["weight"], dx, tensors["x"].element_size(), mma)
    torch.testing.assert_close(dx, ref["dx"], rtol=1e-9, atol=1e-9)


def _check_wgrad(spec: Conv2d, layout: str, variant: str, seed: int, slots: int) -> conv_backward_plan.WgradPlan:
    """The model writes the harness's output buffer (make_output: dweight alone, or the flat
    buffer of dweight and dbias) through ``split_output``'s views, as the launcher does."""
    mma, dtype = VARIANTS[variant]
    tensors, ref = _case(spec, layout, dtype, seed)
    single = dataclasses.replace(spec, direction="backward_weight")
    out = make_output(single, {"x": tensors["x"].double()}, layout).fill_(float("nan"))
    views = passes.split_output(single, out, layout)
    p = model_wgrad(spec, tensors["x"], tensors["dy"], views["dweight"], views.get("dbias"),
                    tensors["x"].element_size(), mma, slots)
    torch.testing.assert_close(views["dweight"], ref["dweight"], rtol=1e-9, atol=1e-9)
    if spec.bias:
        torch.testing.assert_close(views["dbias"], ref["dbias"], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out, reference(single, tensors), rtol=1e-9, atol=1e-9)
    return p


CASES = {
    # name: Conv2d fields; odd sizes, per-axis stride / padding / dilation, groups, depthwise, 1x1
    "3x3-pad1": dict(batch=2, in_channels=5, out_channels=7, height=9, width=7, kernel_h=3, kernel_w=3, padding=1),
    "stride2-odd": dict(batch=2, in_channels=3, out_channels=4, height=9, width=11, kernel_h=3, kernel_w=3,
                        stride=2, padding=1),
    "dilation2": dict(batch=1, in_channels=4, out_channels=3, height=10, width=9, kernel_h=3, kernel_w=3,
                      dilation=2, padding=2),
    "per-axis": dict(batch=2, in_channels=3, out_channels=5, height=8, width=11, kernel_h=2, kernel_w=3,
                     stride_h=2, stride_w=3, padding_h=1, padding_w=0, dilation_h=1, dilation_w=2, bias=False),
    "groups3": dict(batch=2, in_channels=6, out_channels=9, height=7, width=6, kernel_h=3, kernel_w=3,
                    groups=3, padding=1, stride=2),
    "depthwise": dict(batch=2, in_channels=5, out_channels=5, height=7, width=8, kernel_h=3, kernel_w=3,
                      groups=5, padding=1),
    "1x1-stride2": dict(batch=3, in_channels=4, out_channels=6, height=7, width=5, kernel_h=1, kernel_w=1,
                        stride=2),
    "kernel-past-stride": dict(batch=1, in_channels=2, out_channels=3, height=12, width=12, kernel_h=2, kernel_w=2,
                               stride=4, padding=1),
    # several M tiles (dgrad: 2 * 9 * 8 = 144 pixels) and two column tiles (wgrad: 8 * 3 * 3 + 1 > 64)
    "two-tiles": dict(batch=2, in_channels=8, out_channels=5, height=9, width=8, kernel_h=3, kernel_w=3, padding=1),
    # dgrad: 70 > 64 input channels per group, k = 2 * 2 * 2 * 3 = 24 spans a 16-value fp32 tile
    "wide-groups": dict(batch=1, in_channels=140, out_channels=4, height=3, width=4, kernel_h=2, kernel_w=3,
                        groups=2, padding=1),
}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_model_dgrad_cases(case: str, variant: str, layout: str) -> None:
    _check_dgrad(Conv2d(**CASES[case]), layout, variant, seed=1)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_model_wgrad_cases(case: str, variant: str, layout: str) -> None:
    _check_wgrad(Conv2d(**CASES[case]), layout, variant, seed=2, slots=264)


def test_model_wgrad_splits() -> None:
    """A long reduction split over several blocks, ending mid-tile, sums to the whole."""
    spec = Conv2d(batch=3, in_channels=3, out_channels=4, height=11, width=13, kernel_h=3, kernel_w=3, padding=1,
                  stride_h=1, stride_w=2)
    for variant, layout in (("ffma", "NCHW"), ("fp16", "NHWC")):
        p = _check_wgrad(spec, layout, variant, seed=3, slots=264)
        assert p.splits > 1 and p.R % p.r_split, p
        assert _check_wgrad(spec, layout, variant, seed=3, slots=1).splits == 1


@given(spec=conv2d_specs(max_batch=2, max_channels=6, max_hw=9, max_kernel=3, max_stride=3, max_padding=2,
                         max_dilation=2, max_groups=3, per_axis=True),
       layout=st.sampled_from(["NCHW", "NHWC"]), variant=st.sampled_from(sorted(VARIANTS)),
       slots=st.sampled_from([1, 8, 264]), seed=st.integers(0, 2**31 - 1))
def test_model_backward_drawn(spec: Conv2d, layout: str, variant: str, slots: int, seed: int) -> None:
    _check_dgrad(spec, layout, variant, seed)
    _check_wgrad(spec, layout, variant, seed, slots)


@pytest.mark.parametrize("variant", ["ffma", "tf32", "fp16"])
def test_multiply_is_the_tile_product(variant: str) -> None:
    """multiply() through the PTX fragment layouts, with each accumulator placed by acc_position,
    is the 64 x 64 product of the staged tiles: every element exactly once."""
    mma, dtype = VARIANTS[variant]
    es = torch.empty((), dtype=dtype).element_size()
    kt = conv_backward_plan.k_per_tile(es)
    rng = np.random.default_rng(0)
    sa, sb = rng.standard_normal((64, kt)), rng.standard_normal((64, kt))
    acc = model_backward_multiply(sa, sb, es, mma)
    rows, cols = backward_acc_positions(mma)
    flat = rows * conv_backward_plan.BN + cols
    assert np.array_equal(np.sort(flat.ravel()), np.arange(conv_backward_plan.BM * conv_backward_plan.BN))
    c = np.zeros((conv_backward_plan.BM, conv_backward_plan.BN))
    c[rows, cols] = acc
    np.testing.assert_allclose(c, sa @ sb.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("es", [2, 4])
def test_ptx_fragments_agree_with_the_igemm_transcription(es: int) -> None:
    """ptx_fragments and tests/test_cupy_mma_fragments.py write the PTX layouts down apart: they
    must agree on every A and B element."""
    frag = ptx_fragments(es)
    ks_len, epw = 32 // es, 4 // es
    for r in range(16):
        for c in range(ks_len):
            if es == 2:
                lane, q, part = (r % 8) * 4 + (c % 8) // 2, r // 8 + 2 * (c // 8), c % 2
            else:
                lane, q, part = (r % 8) * 4 + c % 4, r // 8 + 2 * (c // 4), 0
            i = q * epw + part
            assert (frag["a"][0][lane, i], frag["a"][1][lane, i]) == (r, c)
    for k in range(ks_len):
        for n in range(8):
            if es == 2:
                lane, q, part = n * 4 + (k % 8) // 2, k // 8, k % 2
            else:
                lane, q, part = n * 4 + k % 4, k // 4, 0
            i = q * epw + part
            assert (frag["b"][0][lane, i], frag["b"][1][lane, i]) == (k, n)


def _banks(words: np.ndarray) -> int:
    return len(np.unique(np.asarray(words) % 32))


def test_fragment_and_ffma_reads_are_conflict_free() -> None:
    """The shared tiles' pitches: 20 words for mma.sync fragment reads (rows g, words c of a warp),
    17 for the FFMA loop's B reads (rows tx of 16 lanes; its A reads are broadcasts)."""
    text = (sources.KERNEL_DIR / "conv2d_backward.cu").read_text()
    mma_pitch, ffma_pitch = map(int, re.search(r"PITCH = MMA \? (\d+) : (\d+);", text).groups())
    lane = np.arange(32)
    g, c = lane >> 2, lane & 3
    for word in (0, 4, 8, 12):
        assert _banks(g * mma_pitch + word + c) == 32
    for q in range(conv_backward_plan.KWORDS):
        assert _banks(np.arange(16) * ffma_pitch + q) == 16


def test_backward_constants_match_the_kernel() -> None:
    text = (sources.KERNEL_DIR / "conv2d_backward.cu").read_text()
    assert_constants_match("conv2d_backward.cu", {name: getattr(conv_backward_plan, name)
                                                  for name in ("BM", "BN", "THREADS", "KWORDS")})
    ones = {"float": torch.float32, "__half": torch.float16, "__nv_bfloat16": torch.bfloat16}
    for ctype, dtype in ones.items():
        bits = re.search(rf"one_bits<{ctype}>\(\) {{ return (0x[0-9a-f]+)u; }}", text).group(1)
        one = torch.ones((), dtype=dtype)
        assert int(bits, 16) == one.view(torch.int32 if dtype == torch.float32 else torch.int16).item() & 0xFFFFFFFF


def test_plan_limits() -> None:
    spec = Conv2d(batch=1, in_channels=4, out_channels=4, height=4, width=4, kernel_h=1, kernel_w=1)
    p = conv_backward_plan.plan_wgrad(spec, (64, 16, 4, 1), (64, 16, 4, 1), 4, 10**6)
    assert p.splits * spec.groups <= conv_backward_plan.MAX_GRID_Z
    assert (p.splits - 1) * p.r_split < p.R <= p.splits * p.r_split
    assert p.workspace_floats == p.splits * spec.out_channels * (4 + 1)
