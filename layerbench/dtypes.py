"""Benchmark dtypes: storage type plus the arithmetic mode the matrix units use."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class DType:
    name: str
    torch_dtype: torch.dtype
    # True only for "tf32": fp32 storage, TensorFloat-32 products on the tensor cores.
    tf32: bool

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()


DTYPES: dict[str, DType] = {
    "fp32": DType("fp32", torch.float32, tf32=False),
    "tf32": DType("tf32", torch.float32, tf32=True),
    "fp16": DType("fp16", torch.float16, tf32=False),
    "bf16": DType("bf16", torch.bfloat16, tf32=False),
}


def get_dtype(name: str) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


@contextlib.contextmanager
def precision(dtype: DType) -> Iterator[None]:
    """Switch torch's cuBLAS/cuDNN TF32 use to match ``dtype`` (true fp32 unless "tf32"), then restore."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = dtype.tf32
    torch.backends.cudnn.allow_tf32 = dtype.tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
