"""Which depthwise convolutions the row-streaming kernels take, for both backends.

Triton's row kernels (2-D tiles and flat runs) and CuPy's flat-run kernels stream a band's input
rows through registers against a 3x3 filter held in registers, one output channel per input
channel: the 2-D tiles in NHWC, the flat runs in NHWC and NCHW, at strides (1, 1) and (2, 2).
The direct kernels run every other depthwise layer.  Each refusal names the kernel and what it
needs.
"""

from __future__ import annotations

from layerbench.layers import Conv2d

FLAT_STRIDES = (1, 2)  # a flat-run kernel's stride, the same both ways (CuPy compiles these)
FLAT_LAYOUTS = ("NHWC", "NCHW")


def streaming_refusal(spec: Conv2d, layout: str, kernel: str, layouts: tuple[str, ...] = ("NHWC",)) -> str | None:
    """Why ``kernel`` (named so in the reason), which runs ``layouts``, does not run ``spec`` in
    ``layout`` whatever its strides, or None."""
    if layout not in layouts:
        return f"{kernel} runs {' and '.join(layouts)} only, got {layout}"
    if not spec.depthwise or spec.out_channels != spec.in_channels:
        return f"{kernel} runs one output channel per input channel"
    if (spec.kernel_h, spec.kernel_w) != (3, 3) or (spec.dilation_h, spec.dilation_w) != (1, 1):
        return (f"{kernel} runs 3x3 filters without dilation, got {spec.kernel_h}x{spec.kernel_w} with dilation "
                f"({spec.dilation_h}, {spec.dilation_w})")
    return None


def flat_refusal(spec: Conv2d, layout: str, kernel: str) -> str | None:
    """Why the flat-run ``kernel`` does not run ``spec`` in ``layout``, or None."""
    reason = streaming_refusal(spec, layout, kernel, FLAT_LAYOUTS)
    if reason is None and not (spec.stride_h == spec.stride_w and spec.stride_h in FLAT_STRIDES):
        reason = f"{kernel} runs strides (1, 1) and (2, 2), got ({spec.stride_h}, {spec.stride_w})"
    return reason
