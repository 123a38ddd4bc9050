"""CuPy (CUDA C) kernels for conv2d, pool2d, relu and linear; importing registers them.

Laid out as ``kernels/triton``: ``support`` holds what the layer modules share (input checks,
compile and launch), one module per layer registers its builder (``*_backward`` modules the
backward passes; ``conv2d`` hands depthwise convolutions to ``depthwise``), and the plans
(``igemm_plan``, ``fft_plan``, ``pool_plan``, ``conv_backward_plan``, ``depthwise_plan``) work
out tiles and sizes on the CPU.  CuPy-only: ``sources`` names the .cu files here, their template
instantiations and the NVRTC options, and ``models``, ``backward_models`` and
``depthwise_models`` run the kernels' index math on the CPU for the tests.

The CUDA sources are compiled by NVRTC through ``cupy.RawModule``.  Importing needs neither CuPy
nor a GPU: without CuPy, building a kernel raises ``layerbench.errors.Unavailable`` with the reason.
"""

from kernels.cupy import (conv2d, conv2d_backward, linear, linear_backward, pool2d, pool2d_backward, relu,
                         relu_backward)

__all__ = ["conv2d", "conv2d_backward", "linear", "linear_backward", "pool2d", "pool2d_backward", "relu",
           "relu_backward"]
