"""The plan of the Triton FFT convolution (fft_conv.py): sizes, buffer layouts and DFT matrices.

Pure Python and NumPy, so that tests can check it on any machine.

Every transform is a matrix product with a DFT matrix, so the tensor cores do all the arithmetic
and the transform size N can be any integer: N = the padded input side, the smallest size at
which a circular correlation holds the whole valid output (stride 1).  A real plane's spectrum is
kept for V = N // 2 + 1 columns (Hermitian symmetry); f = v * N + u numbers the N * V
frequencies.

Layouts (fp32, "ri" is 0 for the real and 1 for the imaginary part; bc = b * C + c):

* rows of the input transformed: T[2v + ri][h][bc], (H * B * C) x (2V) values;
* input spectrum X[f][ri][bc], weight spectrum W[f][ri][kc] (kc = k * C + c), conjugated:
  the weight is transformed with e^{+i}, so the product is a plain complex product;
* product Y[f][ri][bk] (bk = b * K + k), summed over c;
* columns transformed back, output rows only: Z[v][ri][oh][bk];
* output y, any strides: Z's last transform adds the columns, crops, scales by 1/N^2 and adds
  the bias.

Matrices are rounded to TensorFloat-32 (nearest) here, and every intermediate where it is
stored, because the tensor cores truncate fp32 inputs to tf32: five truncating products in a row
drifted 4e-3 off in a NumPy model, rounding kept the error at 1.2e-3, against 0.8e-3 for a direct
tf32 convolution (the tf32 tolerance is 3e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

INT32_LIMIT = 2**31  # Triton indexes in int32: every buffer's element count must stay below
BYTES = 4


def round_tf32(a: np.ndarray) -> np.ndarray:
    """``a`` as float32 rounded to the nearest TensorFloat-32 value (10 mantissa bits), ties away."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


@dataclass(frozen=True)
class FftPlan:
    spec: Conv2d
    n: int  # transform size, N x N

    @property
    def v(self) -> int:
        """Columns of a half spectrum."""
        return self.n // 2 + 1

    @property
    def freqs(self) -> int:
        return self.n * self.v

    def buffer_sizes(self) -> dict[str, int]:
        """Elements of each intermediate buffer (float32)."""
        s, v = self.spec, self.v
        bc, kc, bk = s.batch * s.in_channels, s.out_channels * s.in_channels, s.batch * s.out_channels
        return {"x_rows": 2 * v * s.height * bc, "x_spectrum": 2 * self.freqs * bc,
                "w_rows": 2 * v * s.kernel_h * kc, "w_spectrum": 2 * self.freqs * kc,
                "product": 2 * self.freqs * bk, "y_columns": 2 * v * s.out_height * bk}

    @property
    def workspace_bytes(self) -> int:
        return BYTES * sum(self.buffer_sizes().values())

    # ------------------------------------------------------------------ DFT matrices
    def _angles(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return 2 * np.pi * np.outer(a, b) / self.n

    def rows_forward(self, width: int, offset: int, sign: int) -> np.ndarray:
        """[2V, width]: row 2v + ri maps a row (placed at ``offset``) to frequency v's part ri.

        sign -1 is the forward transform e^{-i theta}; +1 gives its conjugate (the weight's).
        """
        t = self._angles(np.arange(self.v), np.arange(width) + offset)
        m = np.empty((2 * self.v, width))
        m[0::2], m[1::2] = np.cos(t), sign * np.sin(t)
        return round_tf32(m)

    def columns_forward(self, height: int, offset: int, sign: int) -> np.ndarray:
        """[2N, 2 * height]: a column of row spectra (ri * height + h) to its N frequencies (2u + ri).

        (Tr + i Ti)(cos + i sign sin) = Tr cos - sign Ti sin + i (Ti cos + sign Tr sin).
        """
        t = self._angles(np.arange(self.n), np.arange(height) + offset)
        c, s = np.cos(t), sign * np.sin(t)
        m = np.empty((2 * self.n, 2 * height))
        m[0::2, :height], m[0::2, height:] = c, -s
        m[1::2, :height], m[1::2, height:] = s, c
        return round_tf32(m)

    def columns_inverse(self) -> np.ndarray:
        """[2 OH, 2N]: a column of the product's spectrum (2u + ri) to output rows (ri * OH + oh), e^{+i}."""
        oh = self.spec.out_height
        t = self._angles(np.arange(oh), np.arange(self.n))
        c, s = np.cos(t), np.sin(t)
        m = np.empty((2 * oh, 2 * self.n))
        m[:oh, 0::2], m[:oh, 1::2] = c, -s
        m[oh:, 0::2], m[oh:, 1::2] = s, c
        return round_tf32(m)

    def rows_inverse(self) -> np.ndarray:
        """[OW, 2V]: row ow maps a row's half spectrum (2v + ri) to output column ow, scaled by 1/N^2.

        Hermitian symmetry: every column but 0 (and N/2 for even N) stands for two.
        """
        weight = np.full(self.v, 2.0)
        weight[0] = 1.0
        if self.n % 2 == 0:
            weight[-1] = 1.0
        t = self._angles(np.arange(self.spec.out_width), np.arange(self.v))
        m = np.empty((self.spec.out_width, 2 * self.v))
        m[:, 0::2], m[:, 1::2] = weight * np.cos(t), -weight * np.sin(t)
        return round_tf32(m / self.n**2)


def fft_plan(spec: Conv2d) -> FftPlan:
    """The plan for ``spec``; Unsupported, with the reason, where the FFT path cannot run it."""
    if spec.stride != 1:
        raise Unsupported(f"the FFT convolution needs stride 1, got stride {spec.stride}")
    plan = FftPlan(spec, max(spec.height, spec.width) + 2 * spec.padding)
    largest = max(plan.buffer_sizes().items(), key=lambda item: item[1])
    if largest[1] >= INT32_LIMIT:
        raise Unsupported(f"the FFT convolution's {largest[0]} buffer would hold {largest[1]} "
                          f"elements, over the int32 indexing limit {INT32_LIMIT}")
    return plan
