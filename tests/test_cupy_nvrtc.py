"""NVRTC compiles every CuPy kernel source without a GPU, run everywhere, CI included.

Through ``cuda.bindings.nvrtc``, for sm_80 and sm_90, with every template instantiation, using
the very sources, name expressions and options the launchers hand to ``cupy.RawModule``
(``kernels/cupy/sources.py``), plus the options CuPy itself appends.  Also: the register budget
of the implicit GEMM, and that every ``__global__`` template is instantiated.
"""

from __future__ import annotations

import functools
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cuda.bindings import nvrtc

from kernels.cupy import igemm_plan, linear_wgmma, sources

ARCHS = (80, 90)


def _check(result: object, what: str) -> None:
    err = result[0] if isinstance(result, tuple) else result
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"{what}: {err}"


def _log(prog: object) -> str:
    err, size = nvrtc.nvrtcGetProgramLogSize(prog)
    _check(err, "nvrtcGetProgramLogSize")
    log = b" " * size
    _check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
    return log.rstrip(b"\x00").decode(errors="replace")


def nvrtc_compile(source: str, arch: int, extra: tuple[str, ...] = ()) -> tuple[bool, str, dict[str, str]]:
    """(success, log, lowered name of each name expression) for ``source`` on sm_``arch``."""
    src = sources.SOURCES[source]
    err, prog = nvrtc.nvrtcCreateProgram(sources.source_text(source).encode(), src.file.encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        for ne in src.name_expressions:
            _check(nvrtc.nvrtcAddNameExpression(prog, ne.encode()), f"nvrtcAddNameExpression {ne}")
        options = (sources.compile_options() + src.options + sources.CUPY_ADDED_OPTIONS + (f"-arch=sm_{arch}",)
                   + extra)
        opts = [o.encode() for o in options]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        log = _log(prog)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return False, f"options: {' '.join(options)}\n{log}", {}
        lowered = {}
        for ne in src.name_expressions:
            err, name = nvrtc.nvrtcGetLoweredName(prog, ne.encode())
            _check(err, f"nvrtcGetLoweredName {ne}")
            lowered[ne] = name.decode()
        return True, log, lowered
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@functools.cache
def register_usage(source: str) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """(ptxas's log, (name expression, bytes of spill stores, registers) of every kernel) of
    ``source`` built for sm_90: compiled once for the tests that read it."""
    ok, log, lowered = nvrtc_compile(source, 90, ("-Xptxas=-v",))
    assert ok, log
    expression = {mangled: ne for ne, mangled in lowered.items()}
    usage = re.findall(r"Compiling entry function '(\w+)'.*?(\d+) bytes spill stores.*?Used (\d+) registers",
                       log, flags=re.S)
    assert len(usage) == len(sources.SOURCES[source].name_expressions), log
    return log, tuple((expression[name], int(spills), int(regs)) for name, spills, regs in usage)


def _archs(source: str) -> tuple[int, ...]:
    return sources.SOURCES[source].archs or ARCHS


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[str, int], tuple[bool, str, dict[str, str]]]:
    # NVRTC releases the GIL: compile everything at once (igemm.cu takes ~10 s per arch).
    jobs = [(s, a) for s in sources.SOURCES for a in _archs(s)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: nvrtc_compile(*job), jobs))
    return dict(zip(jobs, results))


def test_cuda_headers_found() -> None:
    inc = Path(sources.cuda_include_dir())
    for header in sources.REQUIRED_HEADERS:
        assert (inc / header).is_file()
    assert f"-I{inc}" in sources.compile_options()


@pytest.mark.parametrize(("source", "arch"), [(s, a) for s in sorted(sources.SOURCES) for a in _archs(s)])
def test_nvrtc_compiles(compiled: dict, source: str, arch: int) -> None:
    ok, log, lowered = compiled[(source, arch)]
    assert ok, f"NVRTC failed on {sources.SOURCES[source].file} for sm_{arch}:\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warnings in {sources.SOURCES[source].file}:\n{log}"
    assert set(lowered) == set(sources.SOURCES[source].name_expressions)
    assert all(name.startswith("_Z") for name in lowered.values()), lowered


def test_nvrtc_reports_errors() -> None:
    """The check can fail: a broken source yields a failure with the log."""
    src = sources.SOURCES["relu"]
    bad = sources.source_text("relu") + "\n__global__ void broken() { undeclared_symbol = 1; }\n"
    err, prog = nvrtc.nvrtcCreateProgram(bad.encode(), src.file.encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    opts = [o.encode() for o in sources.compile_options() + ("-arch=sm_90",)]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    log = _log(prog)
    nvrtc.nvrtcDestroyProgram(prog)
    assert err != nvrtc.nvrtcResult.NVRTC_SUCCESS and "undeclared_symbol" in log


# Spill stores (bytes) that one NVRTC release leaves in one kernel at its register cap, as
# measured with -Xptxas=-v for sm_90.  NVRTC 13.0 (13.0.88, which the CUDA 13.0 builds of torch
# pin) spills 24 bytes in igemm_simt<true, false> (16-byte A loads, capped at 128 registers by
# __launch_bounds__(256, 2)); NVRTC 13.5 spills nothing there.  Any other spill, or a larger
# one, fails: a new entry needs a new measurement.
KNOWN_SPILLS = {((13, 0), "igemm_simt<true, false>"): 24}


def nvrtc_version() -> tuple[int, int]:
    err, major, minor = nvrtc.nvrtcVersion()
    _check(err, "nvrtcVersion")
    return major, minor


def test_igemm_registers_without_spills() -> None:
    """Two blocks per SM (65,536 registers): <= 128 registers for igemm_simt's 256 threads, <= 255
    (the most a thread can have) for igemm_mma's 128; spills would cost local memory traffic,
    so none are allowed beyond the measured KNOWN_SPILLS of this NVRTC."""
    version = nvrtc_version()
    for kernel, spills, regs in register_usage("igemm")[1]:
        threads = igemm_plan.MMA_THREADS if "igemm_mma" in kernel else igemm_plan.SIMT_THREADS
        allowed = KNOWN_SPILLS.get((version, kernel), 0)
        assert spills <= allowed, \
            f"{kernel} spills {spills} bytes with NVRTC {version[0]}.{version[1]} (allowed: {allowed})"
        assert 2 * threads * regs <= 65536, f"{kernel} uses {regs} registers"


def test_depthwise_rows_registers_without_spills() -> None:
    """The NCHW rows kernel's 256-thread blocks: three an SM (<= 80 registers) for windows up to 5 x
    5 and the loops, two (<= 128) for 7 x 7, with no spills: its chunks in flight scale with the
    blocks an SM."""
    rows = [usage for usage in register_usage("depthwise")[1] if usage[0].startswith("depthwise_nchw_rows<")]
    named = sources.SOURCES["depthwise"].name_expressions
    assert len(rows) == sum(ne.startswith("depthwise_nchw_rows<") for ne in named)
    for kernel, spills, regs in rows:
        window = int(kernel.split(",")[1])
        blocks = 2 if window == 7 else 3
        assert spills == 0, f"{kernel} spills {spills} bytes"
        assert regs <= 65536 // (blocks * 256) // 8 * 8, f"{kernel}: {regs} registers, fewer than {blocks} blocks an SM"


def test_spill_allowance_is_narrow() -> None:
    """The allowance names one kernel of the igemm source, and only for its FFMA variant."""
    for (_, kernel), limit in KNOWN_SPILLS.items():
        assert kernel in sources.SOURCES["igemm"].name_expressions and kernel.startswith("igemm_simt")
        assert 0 < limit <= 32


def test_every_kernel_is_instantiated() -> None:
    """Every __global__ template in the sources has at least one name expression."""
    for source in sources.SOURCES.values():
        text = (sources.KERNEL_DIR / source.file).read_text()
        bounds = r"__launch_bounds__\((?:[^()]|\([^()]*\))*\)"  # its arguments may call a function
        kernels = set(re.findall(rf"__global__ void(?: {bounds})? (\w+)\(", text))
        named = {ne.split("<")[0] for ne in source.name_expressions}
        assert kernels == named, (source.file, kernels, named)


def _register_limit(source: str, expression: str) -> int:
    """The registers a thread may use: linear_wgmma one 256-thread block an SM (192 KiB of shared
    memory), igemm_wgmma two 128-thread blocks; the TMA kernels BLOCKS (their last template
    argument) 288-thread blocks, so 224 registers for one and 112 for two (whole multiples of 8)."""
    if source in ("linear_tma", "conv_tma"):
        blocks = int(expression.rstrip(">").split(",")[-1])
        return 65536 // (blocks * linear_wgmma.TMA_THREADS) // 8 * 8
    return 255


@pytest.mark.parametrize("source", ["linear_wgmma", "linear_tma", "conv_tma", "igemm_wgmma"])
def test_wgmma_gemms_registers_without_spills(source: str) -> None:
    """Within each kernel's register limit the accumulator tile fits with no spills; built for
    sm_90a, the wgmma instructions not serialized."""
    log, usage = register_usage(source)
    for kernel, spills, regs in usage:
        limit = _register_limit(source, kernel)
        assert spills == 0 and regs <= limit, f"{kernel}: {spills} bytes spilled, {regs} registers (at most {limit})"
    assert "sm_90a" in log and "serialized" not in log, log


def test_depthwise_registers_without_spills() -> None:
    """The depthwise kernels hold their unrolled rows, filter taps and accumulators in registers:
    no spills, and at most 128 registers (two 256-thread blocks an SM), 168 for the flat-run
    kernel (three 128-thread blocks an SM)."""
    for kernel, spills, regs in register_usage("depthwise")[1]:
        limit = 168 if kernel.startswith("depthwise_nhwc_flat<") else 128
        assert spills == 0 and regs <= limit, f"{kernel}: {spills} bytes spilled, {regs} registers (at most {limit})"


def test_pointwise_gemm_registers_without_spills() -> None:
    """The per-image GEMM holds its warp tile of accumulators (64 x 64 at 128 output channels a
    block) in registers: no spills, and at most 255 registers (the most a thread can have), two
    128-thread blocks an SM, in every block shape and pixel chunk."""
    for kernel, spills, regs in register_usage("pointwise_gemm")[1]:
        assert spills == 0 and regs <= 255, f"{kernel}: {spills} bytes spilled, {regs} registers"
