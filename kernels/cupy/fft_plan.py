"""The plan of an FFT convolution (fft_conv.cu), worked out on the CPU before any launch.

Needs neither CuPy nor a GPU, so that tests can check sizes and the choice on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernels.cupy.sources import FFT_LOG_SIZES as LOG_SIZES  # the transform sizes instantiated
from layerbench.errors import Unsupported
from layerbench.layers import Conv2d

# Must match fft_conv.cu.
GEMM_THREADS = 256
FT, BT, KT, CT = 4, 64, 32, 8  # fft_cgemm's block: frequencies, images, output channels, c per stage
GEMM_STAGES = 3
COMPLEX_BYTES = 8
GEMM_SHARED_BYTES = GEMM_STAGES * CT * (BT + KT) * FT * COMPLEX_BYTES
WEIGHT_THREADS = 256
# Windows up to this many taps a side take fft_weight (kh x P + N x P x kh complex products a
# plane); larger ones the N x N transform, whose cost does not grow with the window.
PRUNED_TAPS = 16

# Work of a byte moved, in flops, for the first guess between FFT and implicit GEMM: an H100's
# fp32 FMA peak over its copy bandwidth (52 TFLOP/s / 2.9 TB/s).  Only a filter: when the guess
# says FFT may win, the launcher times both and keeps the faster.
FLOPS_PER_BYTE = 18


def transform_threads(n: int) -> int:
    """Threads of a transform block (Transform::THREADS)."""
    return 512 if n >= 128 else 256


def planes_per_block(n: int) -> int:
    """Planes of a transform block: about 256 rows of pairs, in <= 70 KB (Transform::PLANES)."""
    return 512 // n if n <= 32 else (4 if n == 64 else 1)


def transform_shared_bytes(n: int) -> int:
    """fft_forward's and fft_inverse's dynamic shared memory: twiddles [N], the planes' offsets
    (8 bytes each, an even count), and a half spectrum [N][N/2+1] per plane (its pairs of rows
    share the space), complex."""
    planes = planes_per_block(n)
    return COMPLEX_BYTES * n + 8 * (planes + planes % 2) + COMPLEX_BYTES * planes * n * (n // 2 + 1)


def weight_planes_per_block(n: int) -> int:
    """fft_weight's planes a block: about 4,096 spectrum values (16 a thread)."""
    return max(1, 4096 // (n * (n // 2 + 1)))


def weight_shared_bytes(n: int, kh: int) -> int:
    """fft_weight's dynamic shared memory: twiddles [N] and the inner sums [planes][kh][N/2 + 1]."""
    return COMPLEX_BYTES * (n + weight_planes_per_block(n) * kh * (n // 2 + 1))


@dataclass(frozen=True)
class FftPlan:
    """``n`` x ``n`` transforms; a plane larger than the largest transform is cut into overlap-save
    tiles: tile (ty, tx) of ``tiles_h`` x ``tiles_w`` reads the padded input from (ty * step,
    tx * step) and makes the step x step outputs there (step = n - kernel + 1, the outputs whose
    window stays inside the tile).  Untiled: one tile, step n."""

    spec: Conv2d
    n: int  # transform size: N x N
    tiles_h: int
    tiles_w: int
    step: int

    @property
    def tiles(self) -> int:
        return self.tiles_h * self.tiles_w

    @property
    def images(self) -> int:
        """Planes of one channel that are transformed: every tile of every image."""
        return self.spec.batch * self.tiles

    @property
    def pruned_weight(self) -> bool:
        """Does fft_weight transform the weight (a window of at most PRUNED_TAPS a side)?"""
        return max(self.spec.kernel_h, self.spec.kernel_w) <= PRUNED_TAPS

    @property
    def log_n(self) -> int:
        return self.n.bit_length() - 1

    @property
    def freqs(self) -> int:
        """Complex values of a plane's half spectrum (a multiple of FT)."""
        return self.n * (self.n // 2 + 1)

    def spectra_bytes(self) -> tuple[int, int, int]:
        """Bytes of the input's, the weight's and the output's spectra (the workspace)."""
        s, per_plane = self.spec, self.freqs * COMPLEX_BYTES
        return (self.images * s.in_channels * per_plane, s.out_channels * s.in_channels * per_plane,
                self.images * s.out_channels * per_plane)

    @property
    def workspace_bytes(self) -> int:
        return sum(self.spectra_bytes())

    @property
    def flops(self) -> int:
        """The frequency-domain product: 4 FMAs per complex multiply-add."""
        s = self.spec
        return 8 * self.freqs * self.images * s.in_channels * s.out_channels

    @property
    def bytes_moved(self) -> int:
        """DRAM traffic: every spectrum written once and read once, the tensors once each."""
        s = self.spec
        tensors = 4 * (s.batch * s.in_channels * s.height * s.width + s.parameters
                       + s.batch * s.out_channels * s.out_height * s.out_width)
        return tensors + 2 * self.workspace_bytes

    def worth_timing(self) -> bool:
        """Does the first guess give the FFT a chance against the direct product?"""
        return self.flops + FLOPS_PER_BYTE * self.bytes_moved < self.spec.flops


def fft_plan(spec: Conv2d, largest: int = 1 << (LOG_SIZES.stop - 1)) -> FftPlan:
    """The transform size for ``spec``, and its tiles where the padded plane is larger than
    ``largest``; Unsupported, with the reason, where the FFT kernels cannot run it."""
    beyond = spec.beyond_plain()
    if beyond:
        raise Unsupported(f"the FFT convolution runs one stride and one padding for both axes, dilation 1 "
                          f"and groups 1 only; this point has {beyond}")
    if spec.stride != 1:
        raise Unsupported(f"the FFT convolution needs stride 1, got stride {spec.stride}")
    side = max(spec.height, spec.width) + 2 * spec.padding
    n = max(1 << LOG_SIZES.start, 1 << (side - 1).bit_length())
    if n <= largest:
        return FftPlan(spec, n, 1, 1, n)
    kernel = max(spec.kernel_h, spec.kernel_w)
    step = largest - kernel + 1
    if step < kernel:  # most of each tile would be halo
        raise Unsupported(f"the FFT convolution tiles planes larger than {largest} x {largest} only for "
                          f"windows up to {(largest + 1) // 2}, got {spec.kernel_h} x {spec.kernel_w}")
    return FftPlan(spec, largest, -(-spec.out_height // step), -(-spec.out_width // step), step)
