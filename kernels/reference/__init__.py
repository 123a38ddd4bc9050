"""Library references that custom kernels are compared with, and proof of which library ran.

==========  ===============  =================  ==================  =====================
layer       "torch"          "cudnn"            "cublas"            module
==========  ===============  =================  ==================  =====================
conv2d      cuDNN            cuDNN              -                   torch_ref / cudnn
pool2d      ATen (not cuDNN) cuDNN              -                   torch_ref / cudnn
relu        ATen (not cuDNN) cuDNN              -                   torch_ref / cudnn
linear      cuBLAS           - (no matmul)      cuBLAS              torch_ref / cublas
==========  ===============  =================  ==================  =====================

The library named is the one whose GPU kernels run on CUDA (checked with ``provenance``); "torch"
also runs on the CPU.  ``cudnn_api`` is the ctypes binding that "cudnn" calls cuDNN through.
Nothing is imported here, so importing one module never loads another's dependencies.
"""
