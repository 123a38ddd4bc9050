"""What the CuPy layer modules share: input checks, compiling the sources (``cupy.RawModule``)
and launching them on torch's current stream.

A ``Launch`` packs a kernel's arguments once, at build time, so that calling it does nothing
but ``cuLaunchKernel`` on ``torch.cuda.current_stream()``: tensors are passed by raw pointer
(zero copy) and the launch error, if any, surfaces as CuPy's ``CUDADriverError``.

CuPy is optional: without it this module still imports (so the kernels register and
``layerbench list impls`` shows them), and building a kernel raises ``Unavailable`` with the
reason and the install line.
"""

from __future__ import annotations

import ctypes
from typing import Callable, Sequence

import torch

from kernels.cupy import sources
from layerbench.builders import Built, attempting, avoided, choice_of, keep_choice, known_choice, selection_ms
from layerbench.check.correctness import ResultCheck
from layerbench.dtypes import DType
from layerbench.errors import Unavailable, Unsupported
from layerbench.layers import LayerSpec

try:  # optional dependency: without CuPy the kernels register, and building one says why not
    import cupy
except ImportError as _exc:
    cupy = None
    CUPY_MISSING: str | None = (
        "CuPy is not installed: pip install 'layerbench[cupy]' (or cupy-cuda12x / cupy-cuda13x "
        f"to match your CUDA) ({_exc})")
else:
    CUPY_MISSING = None

Arg = ctypes.c_void_p | ctypes.c_int32 | ctypes.c_int64 | ctypes.c_float

_modules: dict[str, cupy.RawModule] = {}

MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535


def require_cupy() -> None:
    """Raise ``Unavailable`` with the reason and the install line when CuPy is missing."""
    if CUPY_MISSING is not None:
        raise Unavailable(CUPY_MISSING)


def ctype_of(dtype: DType) -> str:
    return sources.CTYPES[dtype.name]


def device_index(t: torch.Tensor) -> int:
    """The CUDA device of ``t``; every builder passes here before it compiles or launches."""
    require_cupy()
    if t.device.type != "cuda":
        raise Unsupported(f"the CuPy kernels run on CUDA tensors, got a tensor on {t.device}")
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def check_tensors(dtype: DType, tensors: dict[str, torch.Tensor | None]) -> int:
    """Every tensor on one CUDA device in ``dtype``'s storage type; returns the device index."""
    index = device_index(tensors["x"])
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != tensors["x"].device:
            raise Unsupported(f"cupy: {name} is on {t.device}, x on {tensors['x'].device}")
        if t.dtype != dtype.torch_dtype:
            raise Unsupported(f"cupy: {name} is {t.dtype}, {dtype.name} needs {dtype.torch_dtype}")
    return index


def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def function(source: str, name: str, index: int) -> cupy.RawKernel:
    """Kernel ``name`` of ``source``, compiled and loaded on device ``index`` now.

    One RawModule per source compiles every template instantiation in one NVRTC call; CuPy
    caches the binary on disk, so later processes only load it.
    """
    require_cupy()
    module = _modules.get(source)
    if module is None:
        src = sources.SOURCES[source]
        module = cupy.RawModule(code=sources.source_text(source), options=sources.compile_options() + src.options,
                                name_expressions=src.name_expressions)
        _modules[source] = module
    with cupy.cuda.Device(index):
        fn = module.get_function(name)
        fn.kernel  # compile and load here, in build, not at the first launch  # noqa: B018
    return fn


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


def i32(v: int) -> ctypes.c_int32:
    if not -(2**31) <= v < 2**31:
        raise Unsupported(f"a kernel argument does not fit in int32: {v}")
    return ctypes.c_int32(v)


def i64(v: int) -> ctypes.c_int64:
    return ctypes.c_int64(v)


def f32(v: float) -> ctypes.c_float:
    return ctypes.c_float(v)


def _check_params(func: int, args: Sequence[Arg], name: str) -> None:
    """Compare the argument sizes with the kernel's parameter layout, where the driver tells it.

    A wrong size would not fail: the kernel would read garbage.  cuFuncGetParamInfo needs
    cuda-bindings and a CUDA 12.4+ driver; without them the check is skipped.
    """
    try:  # optional dependency (cuda-bindings): without it the check is skipped
        from cuda.bindings import driver
    except ImportError:
        return
    get_info = getattr(driver, "cuFuncGetParamInfo", None)
    if get_info is None:
        return
    f = driver.CUfunction(func)
    err, _, _ = get_info(f, 0)
    if err != driver.CUresult.CUDA_SUCCESS:
        return
    for i, a in enumerate(args):
        err, _, size = get_info(f, i)
        if err != driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"{name}: takes {i} parameters, the launcher passes {len(args)}")
        if size != ctypes.sizeof(a):
            raise RuntimeError(f"{name}: parameter {i} has {size} bytes, the launcher passes "
                               f"{ctypes.sizeof(a)} ({type(a).__name__})")
    err, _, _ = get_info(f, len(args))
    if err == driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"{name}: takes more than the {len(args)} parameters passed")


class Launch:
    """One kernel launch with fixed grid, block and arguments."""

    def __init__(self, fn: cupy.RawKernel, grid: tuple[int, int, int], block: tuple[int, int, int],
                 args: Sequence[Arg], index: int, keep: Sequence[object] = (), shared_bytes: int = 0) -> None:
        """``keep``: the tensors behind the pointer arguments, held for the launch's lifetime;
        ``shared_bytes``: dynamic shared memory per block (see ``allow_shared``)."""
        if not (1 <= grid[0] <= MAX_GRID_X and 1 <= grid[1] <= MAX_GRID_YZ and 1 <= grid[2] <= MAX_GRID_YZ):
            raise Unsupported(f"{fn.name}: grid {grid} exceeds the CUDA limits")
        with cupy.cuda.Device(index):
            self._func = fn.kernel.ptr
        self.name = fn.name
        self.grid = grid
        self.block = block
        self._index = index
        self._shared_bytes = shared_bytes
        self._keep = tuple(keep)
        self._args = tuple(args)  # the storage the pointer array below points into
        self._ptrs = (ctypes.c_void_p * len(self._args))(*[ctypes.addressof(a) for a in self._args])
        self._params = ctypes.addressof(self._ptrs)
        _check_params(self._func, self._args, fn.name)

    def __call__(self) -> None:
        if torch.cuda.current_device() != self._index:
            with torch.cuda.device(self._index):
                self._launch()
        else:
            self._launch()

    def _launch(self) -> None:
        stream = torch.cuda.current_stream(self._index).cuda_stream
        cupy.cuda.driver.launchKernel(self._func, *self.grid, *self.block, self._shared_bytes, stream,
                                      self._params, 0)


def allow_shared(fn: cupy.RawKernel, shared_bytes: int, index: int, blocks: int = 1) -> None:
    """Let ``fn`` take ``shared_bytes`` of dynamic shared memory: above 48 KiB a kernel must opt in.
    ``blocks`` > 1: the kernel is launched for that many blocks an SM, so it asks for the largest
    shared-memory share of each SM's on-chip memory (the rest is L1)."""
    with cupy.cuda.Device(index):
        limit = cupy.cuda.runtime.getDeviceProperties(index)["sharedMemPerBlockOptin"]
        if shared_bytes > limit:
            raise Unsupported(f"{fn.name} needs {shared_bytes} bytes of shared memory per block; "
                              f"this GPU allows {limit}")
        fn.max_dynamic_shared_size_bytes = shared_bytes
        if blocks > 1:
            fn.preferred_shared_memory_carveout = 100  # percent of the most the SM can give


def occupancy(fn: cupy.RawKernel, threads: int, index: int, shared_bytes: int = 0) -> int:
    """Resident blocks of ``fn`` per SM at ``threads`` threads and ``shared_bytes`` of dynamic
    shared memory per block."""
    with cupy.cuda.Device(index):
        return cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, threads,
                                                                          shared_bytes)


def check_dtype(layer: str, dtype: DType, allowed: Sequence[str]) -> None:
    if dtype.name not in allowed:
        raise Unsupported(f"cupy {layer} supports {', '.join(allowed)}, not {dtype.name}")


def check_layout(layer: str, layout: str, allowed: Sequence[str]) -> None:
    if layout not in allowed:
        raise Unsupported(f"cupy {layer} supports layouts {', '.join(allowed)}, not {layout}")


class WrongResult(RuntimeError):
    """A kernel's output failed its check against float64 at build (the build records why)."""


def check_result(kernel: Callable[[], object], spec: LayerSpec, dtype: DType, tensors: dict[str, torch.Tensor],
                 out: torch.Tensor, what: str) -> None:
    """Run ``kernel`` once on the layer's own tensors, ``out`` poisoned first, and raise WrongResult
    unless it matches the float64 reference within the dtype's tolerance: a path that has not yet
    run on a GPU like this one may compete for a point only with a right answer."""
    out.fill_(float("nan"))  # a part the kernel skips cannot pass for a result
    kernel()
    result = ResultCheck(spec, dtype, tensors)(out)
    if not result.ok:
        raise WrongResult(f"{what}: {result.message}")


def fastest_right(found: dict[str, Callable[[], object]], times: dict[str, float], spec: LayerSpec, dtype: DType,
                  tensors: dict[str, torch.Tensor], out: torch.Tensor, what: str) -> Built:
    """Of the variants ``found``, the fastest by ``times`` (ms) whose output passes ``check_result``:
    details its name (``variant``), each variant's ``<name>_ms`` and why the faster ones were passed
    over (``wrong``); WrongResult where none passes."""
    wrong: list[str] = []
    for name in sorted(times, key=times.__getitem__):
        try:
            check_result(found[name], spec, dtype, tensors, out, f"{what} ({name})")
        except WrongResult as e:
            wrong.append(str(e))
            continue
        return Built(found[name], {"variant": name, **{f"{n}_ms": t for n, t in times.items()},
                                   **({"wrong": "; ".join(wrong)} if wrong else {})})
    raise WrongResult("; ".join(wrong))


def fastest_right_variant(found: dict[str, Callable[[], object]], spec: LayerSpec, dtype: DType, layout: str,
                          tensors: dict[str, torch.Tensor], out: torch.Tensor, what: str) -> Built:
    """``fastest_right`` of ``found`` timed by ``selection_ms``, the choice kept in the build cache
    as a path's is (``choice_of``): a later run of the point checks the variant chosen then against
    float64 and keeps it without timing the others (details: ``reused_choice``), or chooses anew
    where it is gone or wrong.  A variant that crashed a worker earlier in the run is left out
    (details: ``skipped``)."""
    remember = choice_of(f"cupy {what}", spec, dtype.name, layout, tensors, out, "cupy")
    known = known_choice(remember)
    if known in found and not avoided(known):
        try:
            with attempting(known):
                check_result(found[known], spec, dtype, tensors, out, f"{what} ({known})")
            return Built(found[known], {"variant": known, "reused_choice": True})
        except WrongResult:
            pass
    skipped = {name: why for name in found if (why := avoided(name))}
    said = "; ".join(f"{name}: {why}" for name, why in skipped.items())
    if len(skipped) == len(found):
        raise Unsupported(f"every variant of {what} was left out: {said}")
    times: dict[str, float] = {}
    for name, kernel in found.items():
        if name not in skipped:
            with attempting(name):
                times[name] = selection_ms(kernel, out.device)
    built = fastest_right(found, times, spec, dtype, tensors, out, what)
    keep_choice(remember, str(built.details["variant"]), f"cupy {what}")
    return Built(built.launch, {**built.details, "skipped": said}) if skipped else built


def capability(index: int) -> tuple[int, int]:
    """The compute capability (major, minor) of device ``index``."""
    major, minor = torch.cuda.get_device_capability(index)
    return major, minor


def check_cc(index: int, major: int, why: str) -> None:
    cc = capability(index)
    if cc[0] < major:
        raise Unsupported(f"{why} needs compute capability {major}.0 or newer; this GPU has "
                          f"{cc[0]}.{cc[1]}")
