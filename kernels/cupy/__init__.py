"""CuPy (CUDA C) kernels for conv2d, pool2d, relu and linear; importing registers them.

The CUDA sources are the .cu files here, compiled by NVRTC through ``cupy.RawModule``; the
Python modules only set up and launch them.  Importing needs CuPy but no GPU.
"""

try:
    import cupy  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "the CuPy kernels need CuPy (pip install 'layerbench[cupy]', or cupy-cuda12x / "
        f"cupy-cuda13x to match your CUDA): {exc}") from exc

from kernels.cupy import conv2d, linear, pool2d, relu  # noqa: E402,F401  (registration)
