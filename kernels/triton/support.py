"""What the Triton kernels share: interpreter detection, input checks, autotuning and launch binding.

On a GPU every tiled kernel is autotuned once, in ``build``, over a few configs (``bind``: each
timed, the fastest kept in the build cache under the problem's shapes); the launcher it returns
calls the plain ``@triton.jit`` function with the chosen config, so ``kernel()`` pays no tuning
bookkeeping.  Under ``TRITON_INTERPRET=1`` (CPU tensors, correctness only) autotuning would run
every config through the Python interpreter, so one fixed config is used.
"""

from __future__ import annotations

import functools
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from layerbench.build_cache import autotune_choices, choice_key
from layerbench.dtypes import DType
from layerbench.errors import Unsupported
from layerbench.builders import Kernel, Tensors, attempting, avoided, remark, selection_times
from layerbench.layers import Conv2d, Linear

Grid = Callable[[dict[str, Any]], tuple[int, ...]]

# tl.dot's input_precision per benchmark dtype.  "ieee" keeps fp32 products exact (FMA units);
# "tf32" rounds fp32 inputs to TensorFloat-32 on the tensor cores.  For fp16/bf16 inputs the mode
# does not change the arithmetic (the tensor cores take them as they are), and "tf32" is
# Triton's default on NVIDIA GPUs, so those use it too.
# Launches timed per tuning decision (after the warm-up); the median of them decides.
QUICK_REPS = 20
DOT_PRECISION = {"fp32": "ieee", "tf32": "tf32", "fp16": "tf32", "bf16": "tf32"}

# Tile-config families per dtype: fp16/bf16 on the tensor cores, tf32 on them, fp32 on FMA units.
DOT_MODE = {"fp16": "mma16", "bf16": "mma16", "tf32": "tf32", "fp32": "fma32"}

INT32_MAX = 2**31 - 1
# The most programs a launch grid's axes 1 and 2 may have (axis 0 takes 2**31 - 1).
MAX_GRID_Y = 65535


def tile_config(block_m: int, block_n: int, block_k: int, warps: int, stages: int) -> triton.Config:
    """A GEMM tile config; GROUP_M = 8 row tiles share each column of B tiles in L2."""
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": 8},
                         num_warps=warps, num_stages=stages)


@triton.jit
def pixel_of(m, P, Q):
    """(image, row, column) of flat pixel index ``m`` = (n * P + p) * Q + q over P x Q planes."""
    return m // (P * Q), (m // Q) % P, m % Q


@triton.jit
def divmod_magic(n, d, m):
    """(n // d, n % d) for 0 <= n < 2**31 and d >= 1, where m = magic(d): the high word of n * m is
    the quotient or one less, so one multiply and a correction replace a division's ~20 instructions."""
    q = tl.umulhi(n.to(tl.uint32), m.to(tl.uint32)).to(tl.int32)
    r = n - q * d
    over = r >= d
    return tl.where(over, q + 1, q), tl.where(over, r - d, r)


@triton.jit
def funnel(lo, hi, shift):
    """The 32-bit words (lo, hi) as one 64-bit value shifted right by ``shift``: 16-bit values from
    value shift / 16 of lo on, value j at bits 16 j."""
    return ((hi.to(tl.uint64) << 32) | lo.to(tl.uint64)) >> shift


@triton.jit
def half_value(bits, j: tl.constexpr, dtype: tl.constexpr):
    """The 16-bit value j of ``bits`` (at bits 16 j), read as ``dtype``, in fp32."""
    return (bits >> (16 * j)).to(tl.uint16).to(dtype, bitcast=True).to(tl.float32)


def magic(divisor: int) -> int:
    """The multiplier ``divmod_magic`` divides by ``divisor`` with: 2**32 // divisor, within 32 bits."""
    return min(2**32 // divisor, 2**32 - 1)


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program ``pid`` over an M x N output, in grouped order: GROUP_M
    row tiles run down each column of tiles in turn, so they share its B tiles while in L2."""
    tiles_n = tl.cdiv(N, BLOCK_N)
    return tl.swizzle2d(pid // tiles_n, pid % tiles_n, tl.cdiv(M, BLOCK_M), tiles_n, GROUP_M)


@triton.jit
def dot_slice(a_ptrs, b_ptrs, k_lo, k_hi, stride_ak, stride_bk, m_ok, n_ok, EDGE: tl.constexpr,
              EVEN_K: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """The fp32 sum over k in [k_lo, k_hi) of A tile @ B tile, from the tiles' pointers at k_lo (A's
    and B's k strides ``stride_ak``, ``stride_bk``); ``EVEN_K``: the range is whole BLOCK_Ks;
    ``EDGE``: rows of A past ``m_ok`` and columns of B past ``n_ok`` load as zeros; ``STAGES``: the
    loop's pipeline depth (None: the config's)."""
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        if EVEN_K:
            if EDGE:
                a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
                b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
            else:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
        else:
            k_ok = k0 + rk < k_hi
            if EDGE:
                a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            else:
                a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc


@triton.jit
def split_sum(acc, ws_ptr, sem_ptr, tile_id, part, parts, offs, mask, part_stride):
    """A tile's sum over ``parts`` programs that each computed one part of it (split-K), in part
    order: every program stores its part into the fp32 workspace ``ws_ptr`` (parts, part_stride);
    the last to arrive at the tile's semaphore adds them all and resets it to zero for the next
    launch.  Returns (the sum, valid in the last program; whether this program is the last).

    The barrier orders every warp's stores before the semaphore's acq_rel add, which publishes
    this program's part and, in the last one, makes every other part visible (.cg: read from L2,
    not L1).
    """
    tl.store(ws_ptr + part.to(tl.int64) * part_stride + offs, acc, mask=mask)
    tl.debug_barrier()
    arrived = tl.atomic_add(sem_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
    last = arrived == parts - 1
    if last:
        acc = tl.zeros_like(acc)
        for s in range(parts):
            acc += tl.load(ws_ptr + s * part_stride + offs, mask=mask, other=0.0, cache_modifier=".cg")
        tl.atomic_xchg(sem_ptr + tile_id, 0)
    return acc, last


def interpreting(fn: object) -> bool:
    """True when ``fn`` was decorated while ``TRITON_INTERPRET=1`` (it then runs on the CPU)."""
    return isinstance(fn, InterpretedFunction)


def check_inputs(fn: object, dtype: DType, allowed: Iterable[str], tensors: Tensors,
                 out: torch.Tensor, uses_dot: bool = False) -> None:
    """Raise Unsupported unless ``fn`` can run ``dtype`` on the devices these tensors live on."""
    if dtype.name not in allowed:
        raise Unsupported(f"dtype {dtype.name} is not supported (supported: {', '.join(allowed)})")
    devices = {t.device for t in (*tensors.values(), out)}
    if len(devices) != 1:
        raise Unsupported(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if not interpreting(fn) and device.type != "cuda":
        raise Unsupported(f"Triton kernels need CUDA tensors, got {device}; to run them on the CPU "
                          f"set TRITON_INTERPRET=1 before importing kernels.triton")
    for name, t in (*tensors.items(), ("out", out)):
        if t.dtype != dtype.torch_dtype:
            raise Unsupported(f"tensor {name} is {t.dtype}, expected {dtype.torch_dtype} for {dtype.name}")
    if uses_dot and interpreting(fn) and dtype.name == "bf16":
        # Measured with Triton 3.9: the interpreter's tl.dot on bf16 operands returns values off by
        # ~1e10 (and bf16 comparisons compare bit patterns); compiled kernels are unaffected.
        raise Unsupported("bf16 tl.dot gives wrong results under the Triton interpreter "
                          "(TRITON_INTERPRET=1); run bf16 on a GPU")


def _check_bias_and_shapes(spec: Linear | Conv2d, tensors: Tensors, out: torch.Tensor) -> None:
    """Raise Unsupported unless the tensors hold a bias exactly where the spec has one, and x,
    weight and out have the spec's shapes."""
    x, w, bias = tensors["x"], tensors["weight"], tensors.get("bias")
    if spec.bias != (bias is not None):
        raise Unsupported(f"spec.bias is {spec.bias} but tensors {'lack' if bias is None else 'have'} a bias")
    if (tuple(x.shape), tuple(w.shape), tuple(out.shape)) != (spec.input_shape, spec.weight_shape,
                                                              spec.output_shape):
        raise Unsupported(f"tensor shapes do not match {spec}")


def check_linear_tensors(spec: Linear, tensors: Tensors, out: torch.Tensor) -> None:
    """Raise Unsupported unless x, weight, out (and the bias, where the spec has one) have the
    shapes of linear ``spec`` and are contiguous (row-major)."""
    _check_bias_and_shapes(spec, tensors, out)
    parts = (tensors["x"], tensors["weight"], out, tensors.get("bias"))
    if not all(t.is_contiguous() for t in parts if t is not None):
        raise Unsupported("linear needs x, weight, bias and out contiguous (row-major)")


def check_conv_tensors(spec: Conv2d, tensors: Tensors, out: torch.Tensor) -> None:
    """Raise Unsupported unless x, weight, out (and the bias, contiguous, where the spec has one)
    have the shapes of conv2d ``spec``."""
    _check_bias_and_shapes(spec, tensors, out)
    bias = tensors.get("bias")
    if bias is not None and (tuple(bias.shape) != (spec.out_channels,) or not bias.is_contiguous()):
        raise Unsupported(f"bias must be contiguous, of {spec.out_channels} elements")


def quick_bench(fn: Callable[[], object]) -> float:
    """GPU time of ``fn`` in ms for tuning decisions (the median of the samples): the build-time
    timer of every backend, in the point's timing mode, the stream held while the host enqueues
    each launch.  Not triton.testing.do_bench: where the host enqueues a launch slower than the
    GPU runs it, the host's time lands inside its events, and on kernels of ~10 us that can
    outweigh the differences between configs.

    The 25 ms warm-up brings an idle GPU to its clocks first: with 5 ms, the autotuner on a GPU
    fresh from idle could pass over the best config, timed at ramping clocks (notes/perf.md).
    """
    times = selection_times(fn, torch.device("cuda", torch.cuda.current_device()), reps=QUICK_REPS,
                            warmup_s=0.025)
    return statistics.median(times)


def fastest_split(splits: Iterable[int], plan: Callable[[int], Kernel]) -> tuple[Kernel, int]:
    """The launcher ``plan(s)`` that ``quick_bench`` times fastest over the split counts ``splits``
    (the first of equals), and its count; each plan is built and timed in turn."""
    best, best_ms, best_splits = None, float("inf"), 0
    for count in splits:
        kernel = plan(count)
        ms = quick_bench(kernel)
        if ms < best_ms:
            best, best_ms, best_splits = kernel, ms, count
    assert best is not None
    return best, best_splits


def config_label(config: dict[str, Any]) -> str:
    """``BLOCK_M=128,BLOCK_N=64,num_warps=4,num_ctas=1,num_stages=3``: a tuned config in a word."""
    return ",".join(f"{k}={v}" for k, v in config.items() if v is not None)


def fastest_config(name: str, configs: Sequence[dict[str, Any]],
                   launcher: Callable[[dict[str, Any]], Kernel]) -> tuple[dict[str, Any], float, list[str]]:
    """The config whose launch (``launcher(config)``) ``quick_bench`` times fastest, the first of
    equals, its time in ms and the configs passed over with why.  Each config is one of the build's
    candidates (``layerbench.builders.attempting``, as ``<kernel>[<config>]``, the kernel the last
    word of ``name``): announced while it runs, left out where it took a worker down earlier in the
    run.  A config that fails to compile or run (out of shared memory, say) is passed over, as
    triton.autotune does, unless the failure left the device unusable; the record says so
    (``remark``).  Unsupported where every config was left out, an error naming the failures where
    none ran.  A single config is taken untimed (its time: NaN)."""
    if len(configs) == 1:  # nothing to choose (and to leave out): no timing, as triton.autotune
        return configs[0], float("nan"), []
    best, best_ms, failed, skipped = None, float("inf"), [], []
    kernel = name.rsplit(".", 1)[-1]
    for config in configs:
        label = f"{kernel}[{config_label(config)}]"
        why = avoided(label)
        if why:
            skipped.append(f"{label}: {why}")
            continue
        try:
            with attempting(label):
                ms = quick_bench(launcher(config))
        except Exception as exc:  # noqa: BLE001 - that config is passed over, and the record says so
            torch.cuda.synchronize()  # a sticky error is no fallback: it raises here
            failed.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            remark(f"passed over {failed[-1]}")
            continue
        if ms < best_ms:
            best, best_ms = config, ms
    if best is not None:
        return best, best_ms, failed
    if not failed:
        raise Unsupported(f"every config of {name} was left out: {'; '.join(skipped)}")
    raise RuntimeError(f"no config of {name} compiled and ran: {'; '.join(failed[:3])}")


def _launcher(fn: Any, grid: Grid, args: tuple, meta: dict[str, Any], config: dict[str, Any]) -> Kernel:
    launch = fn[grid(config)]

    def kernel() -> None:
        launch(*args, **meta, **config)

    return kernel


def bind(fn: Any, configs: Sequence[triton.Config], grid: Grid, args: tuple, meta: dict[str, Any],
         fixed: dict[str, Any]) -> Kernel:
    """Choose one of ``configs`` (timed on the GPU, ``fixed`` under the interpreter) and return a
    launcher of the ``@triton.jit`` function ``fn`` with ``args``, ``meta`` and that config."""
    if interpreting(fn):
        return _launcher(fn, grid, args, meta, dict(fixed))
    # A choice made before for these shapes on this GPU model with this code (build_cache) is
    # taken as it is: no kernel is tuned twice, in a run or across runs.
    choices = autotune_choices()
    candidates = [c.all_kwargs() for c in configs]
    py = getattr(fn, "fn", fn)
    name = f"{getattr(py, '__module__', '')}.{getattr(py, '__qualname__', repr(fn))}"
    key = choice_key(name, args, {**meta, "candidates": repr(candidates)}, "triton")
    config = choices.get(key)
    if config is None:
        _precompile(fn, candidates, grid, args, meta)
        config, ms, passed_over = fastest_config(name, candidates, lambda c: _launcher(fn, grid, args, meta, c))
        choices.put(key, config, {"kernel": name, "ms": ms, "passed_over": passed_over})
    return _launcher(fn, grid, args, meta, config)


def _precompile(fn: Any, configs: list[dict[str, Any]], grid: Grid, args: tuple,
                meta: dict[str, Any]) -> None:
    """Compile every config at once (``compile_all``) before the autotuner times them.

    An error here is dropped on purpose: the autotuner compiles the same config again and reports
    or skips it.
    """
    device = next(a.device for a in args if isinstance(a, torch.Tensor))

    def compile_one(config: dict[str, Any]) -> None:
        with torch.cuda.device(device):
            try:
                fn.warmup(*args, grid=grid(config), **meta, **config)
            except Exception:  # noqa: BLE001 - see the docstring
                pass

    compile_all([functools.partial(compile_one, c) for c in configs])


def compile_all(compiles: Sequence[Callable[[], None]]) -> None:
    """Run compile steps at once on a thread pool (Triton releases the GIL while compiling); the
    autotuner would compile them one after another, several seconds each.  The first runs alone:
    it sets up Triton's per-device caches and driver lazily."""
    if not compiles:
        return
    compiles[0]()
    workers = max(1, min(len(compiles) - 1, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda step: step(), compiles[1:]))


def dense_layout(t: torch.Tensor, preferred: str) -> bool | None:
    """Whether 4-D ``t`` is dense NHWC (True) or NCHW (False); None if neither.

    A tensor that is both (C == 1, or H == W == 1) has the same element order either way; it is
    read as ``preferred`` then.
    """
    nchw = t.is_contiguous()
    nhwc = t.is_contiguous(memory_format=torch.channels_last)
    if nchw and nhwc:
        return preferred == "NHWC"
    if nchw or nhwc:
        return nhwc
    return None


def pixel_run(pixels: int, element_size: int) -> int:
    """PIX_RUN for an NCHW store of a GEMM tile whose rows are an image's ``pixels`` in order:
    the largest power of two, up to 16 bytes of elements, that divides ``pixels`` (1: none).

    Aligned runs of that many tile rows then lie inside one image, contiguous in memory and
    starting on a multiple of the run, which the kernels tell the compiler: without it the
    compiler may lay the store's threads along the channels, P*Q elements apart, and write each
    32-byte sector in sixteen pieces (what Triton 3.6 does; 3.9 happens to pick the pixels).
    """
    run = 1
    while run * 2 * element_size <= 16 and pixels % (run * 2) == 0:
        run *= 2
    return run


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(n)
