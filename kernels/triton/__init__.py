"""Triton kernels for conv2d, pool2d, relu and linear (forward, and the backward passes of pool2d, relu
and linear); importing this package registers them.

Set ``TRITON_INTERPRET=1`` before the import to run them on CPU tensors (slow; for tests).
"""

from kernels.triton import (conv2d, conv2d_backward, linear, linear_backward, pool2d, pool2d_backward, relu,
                           relu_backward)

__all__ = ["conv2d", "conv2d_backward", "linear", "linear_backward", "pool2d", "pool2d_backward", "relu",
           "relu_backward"]
