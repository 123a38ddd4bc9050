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
also runs on the CPU.  ``cudnn_api`` is the ctypes binding that "cudnn" calls cuDNN's legacy API
through; ``cudnn_graph`` runs conv2d through cuDNN's graph API (optional ``nvidia-cudnn-frontend``)
and ``cublaslt`` searches cuBLASLt's algorithms (optional ``nvmath-python``): "cudnn" and "cublas"
keep the fastest of their paths, timed in build in the point's timing mode, and record which.
Nothing is imported here, so importing one module never loads another's dependencies.
"""
