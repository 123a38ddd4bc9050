"""Correctness tools for any implementation, exported for users' own tests.

* ``make_tensors`` / ``make_output``: fresh random inputs (never zeros) and the output buffer.
* ``reference``: the float64 torch result of a spec on given inputs.
* ``check_kernel`` / ``check_implementation``: poison the output with NaN, run, compare with the
  float64 reference by relative norm and normalised max error, with tolerances by dtype.
* ``ResultCheck``: the same judgement of results already computed on fixed inputs, for a builder
  that vets its candidates (engines, algorithms) before it keeps one.
* Hypothesis strategies (``conv2d_specs``, ``pool2d_specs``, ``relu_specs``, ``linear_specs``,
  ``specs``) that draw valid specs within size bounds.

A user validates a kernel with::

    from layerbench.testing import check_implementation
    result = check_implementation(my_build, spec, "fp16", "NHWC", "cuda")
    assert result.ok, result.message
"""

from layerbench.check.correctness import (TOLERANCES, CheckResult, ResultCheck, Tolerance, check_implementation,
                                          check_kernel, compare_output)
from layerbench.check.inputs import make_output, make_tensors, memory_format, reference
from layerbench.check.strategies import conv2d_specs, linear_specs, pool2d_specs, relu_specs, specs
from layerbench.layers import is_exact

__all__ = ["TOLERANCES", "CheckResult", "ResultCheck", "Tolerance", "check_implementation", "check_kernel",
           "compare_output", "conv2d_specs", "is_exact", "linear_specs", "make_output", "make_tensors", "memory_format",
           "pool2d_specs", "reference", "relu_specs", "specs"]
