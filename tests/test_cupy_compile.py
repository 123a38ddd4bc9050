"""GPU-less checks of the CuPy kernels (kernels/cupy/), run everywhere, CI included.

1. NVRTC (cuda.bindings) compiles every .cu for sm_80 and sm_90 with every template
   instantiation, using the very sources, name expressions and options the launchers hand to
   cupy.RawModule (kernels/cupy/_build.py), plus the options CuPy itself appends.
2. CPU models of the kernels' index math, transcribed from the .cu files: the bit tricks of
   ReLU and max pooling, the ldmatrix/mma.sync fragment layouts (against the PTX ISA's
   definitions), the implicit GEMM's loaders, tiles, split-K and epilogue, the pooling
   loops and the FFT convolution's transforms, each compared with torch or numpy in float64.

The kernels/cupy modules used here are loaded by path: the package itself needs CuPy.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cuda.bindings import nvrtc
from hypothesis import given
from hypothesis import strategies as st

from layerbench.layers import Conv2d, Pool2d
from layerbench.testing import conv2d_specs, linear_specs, pool2d_specs

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels" / "cupy"
ARCHS = (80, 90)


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"layerbench_cupy_{name}", KERNEL_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


build = _load("_build")
plan_mod = _load("_igemm_plan")
pool_plan = _load("_pool_plan")
fft_plan_mod = _load("_fft_plan")


# ---------------------------------------------------------------- 1. NVRTC compile check


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
    src = build.SOURCES[source]
    err, prog = nvrtc.nvrtcCreateProgram(build.source_text(source).encode(), src.file.encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        for ne in src.name_expressions:
            _check(nvrtc.nvrtcAddNameExpression(prog, ne.encode()), f"nvrtcAddNameExpression {ne}")
        options = build.compile_options() + build.CUPY_ADDED_OPTIONS + (f"-arch=sm_{arch}",) + extra
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


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[str, int], tuple[bool, str, dict[str, str]]]:
    # NVRTC releases the GIL: compile everything at once (igemm.cu takes ~10 s per arch).
    jobs = [(s, a) for s in build.SOURCES for a in ARCHS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda job: nvrtc_compile(*job), jobs))
    return dict(zip(jobs, results))


def test_cuda_headers_found() -> None:
    inc = Path(build.cuda_include_dir())
    for header in build.REQUIRED_HEADERS:
        assert (inc / header).is_file()
    assert f"-I{inc}" in build.compile_options()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(build.SOURCES))
def test_nvrtc_compiles(compiled: dict, source: str, arch: int) -> None:
    ok, log, lowered = compiled[(source, arch)]
    assert ok, f"NVRTC failed on {build.SOURCES[source].file} for sm_{arch}:\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warnings in {build.SOURCES[source].file}:\n{log}"
    assert set(lowered) == set(build.SOURCES[source].name_expressions)
    assert all(name.startswith("_Z") for name in lowered.values()), lowered


def test_nvrtc_reports_errors() -> None:
    """The check can fail: a broken source yields a failure with the log."""
    src = build.SOURCES["relu"]
    bad = build.source_text("relu") + "\n__global__ void broken() { undeclared_symbol = 1; }\n"
    err, prog = nvrtc.nvrtcCreateProgram(bad.encode(), src.file.encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    opts = [o.encode() for o in build.compile_options() + ("-arch=sm_90",)]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    log = _log(prog)
    nvrtc.nvrtcDestroyProgram(prog)
    assert err != nvrtc.nvrtcResult.NVRTC_SUCCESS and "undeclared_symbol" in log


def test_igemm_registers_without_spills() -> None:
    """Two blocks per SM (65,536 registers): <= 128 registers for igemm_simt's 256 threads, <= 255
    (the most a thread can have) for igemm_mma's 128; spills would cost local memory."""
    ok, log, _ = nvrtc_compile("igemm", 90, ("-Xptxas=-v",))
    assert ok, log
    usage = re.findall(r"Compiling entry function '(\w+)'.*?(\d+) bytes spill stores.*?Used (\d+) registers",
                       log, flags=re.S)
    assert len(usage) == len(build.SOURCES["igemm"].name_expressions), log
    for name, spills, regs in usage:
        threads = plan_mod.MMA_THREADS if "igemm_mma" in name else plan_mod.SIMT_THREADS
        assert int(spills) == 0, f"{name} spills {spills} bytes"
        assert 2 * threads * int(regs) <= 65536, f"{name} uses {regs} registers"


def test_every_kernel_is_instantiated() -> None:
    """Every __global__ template in the sources has at least one name expression."""
    for source in build.SOURCES.values():
        text = (KERNEL_DIR / source.file).read_text()
        kernels = set(re.findall(r"__global__ void(?: __launch_bounds__\([^)]*\))? (\w+)\(", text))
        named = {ne.split("<")[0] for ne in source.name_expressions}
        assert kernels == named, (source.file, kernels, named)


# ---------------------------------------------------------------- 2a. ReLU bit tricks

# (sign bit, +inf bit pattern, torch dtype, integer view) per storage type, as in layerbench_common.cuh
BITS = {
    "fp32": (0x80000000, 0x7F800000, torch.float32, torch.int32, 32),
    "fp16": (0x8000, 0x7C00, torch.float16, torch.int16, 16),
    "bf16": (0x8000, 0x7F80, torch.bfloat16, torch.int16, 16),
}


def _patterns(name: str) -> tuple[np.ndarray, torch.Tensor]:
    """Bit patterns (unsigned, int64) and their values: all of them for 16-bit types; for fp32
    random ones plus the special values."""
    sign, inf, tdt, idt, bits = BITS[name]
    if bits == 16:
        u = np.arange(1 << 16, dtype=np.int64)
    else:
        rng = np.random.default_rng(0)
        special = [0, sign, inf, inf | sign, inf + 1, 0x7FFFFFFF, 1, sign | 1, 0x00800000, 0x3F800000, 0xBF800000]
        u = np.unique(np.concatenate([rng.integers(0, 1 << 32, 200_000, dtype=np.int64),
                                      np.array(special, dtype=np.int64)]))
    signed = np.where(u >= (1 << (bits - 1)), u - (1 << bits), u)
    values = torch.from_numpy(signed).to(idt).view(tdt)
    return u, values


def _is_nan_bits(u: np.ndarray, sign: int, inf: int) -> np.ndarray:
    return (u & ~sign & (sign | (sign - 1))) > inf


@pytest.mark.parametrize("name", sorted(BITS))
def test_relu_bits_match_torch(name: str) -> None:
    sign, inf, tdt, idt, bits = BITS[name]
    u, values = _patterns(name)
    # relu.cu: ((u & SIGN) && !is_nan(u)) ? 0 : u
    out = np.where(((u & sign) != 0) & ~_is_nan_bits(u, sign, inf), 0, u)
    signed = np.where(out >= (1 << (bits - 1)), out - (1 << bits), out)
    got = torch.from_numpy(signed).to(idt).view(tdt).double()
    want = torch.relu(values).double()
    both_nan = torch.isnan(got) & torch.isnan(want)
    assert bool(((got == want) | both_nan).all())
    assert torch.equal(torch.isnan(got), torch.isnan(want))


# ---------------------------------------------------------------- 2b. ldmatrix / mma.sync fragments

BM, BN, ROW_BYTES = plan_mod.BM, plan_mod.BN, plan_mod.ROW_BYTES
smem_at = plan_mod.smem_at
assert plan_mod.TILE_BYTES == ROW_BYTES == 64


def _ldmatrix_x4(lane_addr: np.ndarray) -> np.ndarray:
    """PTX ldmatrix .x4 .b16: register q of lane L holds 4 bytes from row L // 4 of matrix q,
    whose row address comes from lane 8 q + L // 4, at byte 4 (L % 4).  Returns byte addresses
    [lane][q]."""
    lanes = np.arange(32)
    return np.stack([lane_addr[8 * q + lanes // 4] + 4 * (lanes % 4) for q in range(4)], axis=1)


def _element(byte_addr: np.ndarray, es: int, part: int) -> tuple[np.ndarray, np.ndarray]:
    """(tile row, k index) of element ``part`` of a 4-byte register read at ``byte_addr``: the
    inverse of smem_at."""
    row, col = np.divmod(byte_addr + part * es, ROW_BYTES)
    col = col ^ (((row >> 1) & 3) << 4)
    assert np.array_equal(smem_at(row, col), byte_addr + part * es)
    return row, col // es


@pytest.mark.parametrize("es", [2, 4], ids=["fp16-bf16", "tf32"])
def test_mma_fragments_match_ptx_layout(es: int) -> None:
    """The kernel's ldmatrix addresses give each lane the A, B fragments that PTX mma.sync
    m16n8k16 (16-bit) / m16n8k8 (tf32) expects, and the epilogue's (row, column) of each
    accumulator is the PTX D layout.  Transcribed from igemm.cu (igemm_mma)."""
    ks_len = 32 // es  # k per mma step: 16 or 8
    lanes = np.arange(32)
    g, t = lanes // 4, lanes % 4
    for warp in range(plan_mod.MMA_THREADS // 32):
        wm, wn = warp >> 1, warp & 1
        a_row, a_chunk = wm * 64 + (lanes & 15), lanes >> 4
        b_row, b_chunk = wn * 64 + ((lanes >> 4) << 3) + (lanes & 7), (lanes >> 3) & 1
        for ks in range(2):
            a_off = smem_at(a_row, 32 * ks + a_chunk * 16)
            b_off = smem_at(b_row, 32 * ks + b_chunk * 16)
            # A: for each (r, c) of the 16 x ks_len fragment, where PTX puts it.
            for i in range(4):
                regs = _ldmatrix_x4(a_off + i * 16 * ROW_BYTES)
                for r in range(16):
                    for c in range(ks_len):
                        if es == 2:  # a_i: row g (+8 for regs 1, 3), cols 2t, 2t+1 (+8 for regs 2, 3)
                            lane, q, part = (r % 8) * 4 + (c % 8) // 2, r // 8 + 2 * (c // 8), c % 2
                        else:  # tf32: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
                            lane, q, part = (r % 8) * 4 + c % 4, r // 8 + 2 * (c // 4), 0
                        row, k = _element(regs[lane, q], es, part)
                        assert (row, k) == (wm * 64 + i * 16 + r, ks * ks_len + c)
            # B: ldmatrix pair pr feeds n-tiles 2 pr (regs 0, 1) and 2 pr + 1 (regs 2, 3).
            for pr in range(4):
                regs = _ldmatrix_x4(b_off + pr * 16 * ROW_BYTES)
                for half in range(2):
                    j = 2 * pr + half
                    for k in range(ks_len):
                        for n in range(8):
                            if es == 2:  # b0: k 2t, 2t+1; b1: k 2t+8, 2t+9; column n = g
                                lane, q, part = n * 4 + (k % 8) // 2, k // 8, k % 2
                            else:  # tf32: b0 (k t, n g), b1 (k t+4, n g)
                                lane, q, part = n * 4 + k % 4, k // 4, 0
                            row, kk = _element(regs[lane, 2 * half + q], es, part)
                            assert (row, kk) == (wn * 64 + j * 8 + n, ks * ks_len + k)
    # D: PTX c0, c1 at (g, 2t), (g, 2t+1); c2, c3 at (g+8, ...).  The epilogue writes
    # acc[..][2 * half + e] to row g + 8 half, column 2 t + e.
    for reg in range(4):
        half, e = reg // 2, reg % 2
        ptx_row, ptx_col = g + 8 * (reg // 2), 2 * t + (reg % 2)
        assert np.array_equal(g + 8 * half, ptx_row) and np.array_equal(2 * t + e, ptx_col)


def test_igemm_constants_match_the_kernel() -> None:
    """The launcher sizes blocks and dynamic shared memory from _igemm_plan; igemm.cu must agree."""
    text = (build.KERNEL_DIR / "igemm.cu").read_text()
    for name in ("BM", "BN", "SIMT_THREADS", "MMA_THREADS", "TILE_BYTES", "ROW_BYTES", "STAGES"):
        assert re.search(rf"constexpr int {name} = {getattr(plan_mod, name)};", text), name
    assert "return row * ROW_BYTES + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15);" in text, \
        "smem_at changed: change plan_mod.smem_at with it"
    row, byte = np.meshgrid(np.arange(BM), np.arange(ROW_BYTES))
    kernel_form = row * ROW_BYTES + ((byte & ~15) ^ (((row >> 1) & 3) << 4)) + (byte & 15)
    assert np.array_equal(smem_at(row, byte), kernel_form)


def _slots(byte_addr: np.ndarray) -> int:
    """Distinct 16-byte bank groups that one phase of 16-byte shared accesses touches."""
    return len(np.unique((np.asarray(byte_addr) % 128) // 16))


def test_shared_accesses_are_conflict_free() -> None:
    """Every phase of 16-byte shared accesses (8 lanes) hits 8 distinct 16-byte bank groups:
    ldmatrix (8 rows of one chunk), the FFMA kernel's A and B reads, and the loaders' cp.async
    writes (threads 8 q .. 8 q + 7 fill two whole rows)."""
    assert smem_at(3, 4) == 3 * ROW_BYTES + 20  # row 3's chunk 0 sits in slot 1
    for first in range(0, BM, 8):
        for chunk in range(4):
            assert _slots(smem_at(first + np.arange(8), 16 * chunk)) == 8
    tx = np.arange(8)  # igemm_simt: lanes 0-7 read B rows tx + 16 j; A rows ty + 16 i are broadcasts
    for j in range(8):
        for chunk in range(4):
            assert _slots(smem_at(tx + 16 * j, 16 * chunk)) == 8
    for threads in (plan_mod.MMA_THREADS, plan_mod.SIMT_THREADS):
        tid = np.arange(threads)
        chunks = plan_mod.TILE_BYTES // 16
        vrows = threads // chunks
        for j in range(BM // vrows):
            addr = smem_at(tid // chunks + vrows * j, 16 * (tid % chunks))
            assert all(_slots(addr[q:q + 8]) == 8 for q in range(0, threads, 8))


# ---------------------------------------------------------------- 2c. the implicit GEMM, modelled


def _memory(t: torch.Tensor) -> np.ndarray:
    """The elements of a dense tensor in memory order, as float64."""
    flat = torch.as_strided(t, (t.numel(),), (1,), t.storage_offset())
    return flat.double().numpy()


def _pixel_origin(g: object, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """igemm.cu pixel_origin: (base offset, ih0, iw0) of output pixel m; FAR when m >= M."""
    img, r = np.divmod(m, g.out_h * g.out_w)
    oh, ow = np.divmod(r, g.out_w)
    ih0 = oh * g.stride - g.padding
    iw0 = ow * g.stride - g.padding
    sn, _, sh, sw = g.x_strides
    base = img * sn + ih0 * sh + iw0 * sw
    valid = m < g.M
    far = plan_mod.FAR
    return np.where(valid, base, 0), np.where(valid, ih0, far), np.where(valid, iw0, far)


def _in_image(g: object, ih: np.ndarray, iw: np.ndarray) -> np.ndarray:
    return (ih >= 0) & (ih < g.height) & (iw >= 0) & (iw < g.width)


def _gather(mem: np.ndarray, index: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """mem[index] where ok, else 0 (a zero-filled cp.async); every address read is in bounds."""
    read = index[ok]
    assert np.all((read >= 0) & (read < len(mem))), "a kernel load leaves its tensor"
    return np.where(ok, mem[np.where(ok, index, 0)], 0.0)


def _in_bounds(index: np.ndarray, mem: np.ndarray) -> np.ndarray:
    assert np.all((index >= 0) & (index < len(mem))), "a kernel store leaves its tensor"
    return index


def _fill_stage(p: object, xs: np.ndarray, ws_: np.ndarray, m0: int, n0: int, k0: int,
                itemsize: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """One k tile of A and B in shared memory ([row][k]), as TileLoader writes it with
    ``threads`` threads; NaN where no thread writes (which would then reach the output)."""
    g, table = p.geometry, p.table.numpy().astype(np.int64)
    kt, vec = p.ktile, 16 // itemsize
    tid = np.arange(threads)
    chunks = plan_mod.TILE_BYTES // 16
    vrows = threads // chunks  # rows one 16-byte pass covers
    sa = np.full((BM, kt), np.nan)
    sb = np.full((BN, kt), np.nan)
    if p.a_vec:  # BM / vrows rows per thread, chunk tid % chunks, cp.async 16 bytes or zeros
        chunk = tid % chunks
        e = table[k0 + chunk * vec]
        assert k0 + kt + (chunks - 1) * vec < len(table), "the next tile's table read leaves the table"
        for j in range(BM // vrows):
            row = tid // chunks + vrows * j
            base, ih0, iw0 = _pixel_origin(g, m0 + row)
            ok = _in_image(g, ih0 + e[:, 1], iw0 + e[:, 2])
            for v in range(vec):
                sa[row, chunk * vec + v] = _gather(xs, base + e[:, 0] + v, ok)
    else:  # row tid % BM, k pairs 2 (tid / BM) + 2 lanes j
        row = tid & (BM - 1)
        lanes = threads // BM
        base, ih0, iw0 = _pixel_origin(g, m0 + row)
        for j in range(kt // 2 // lanes):
            for h in range(2):
                kk = 2 * lanes * j + 2 * (tid // BM) + h
                e = table[k0 + kk]
                ok = _in_image(g, ih0 + e[:, 1], iw0 + e[:, 2])
                sa[row, kk] = _gather(xs, base + e[:, 0], ok)
    if p.b_vec:
        chunk = tid % chunks
        k = k0 + chunk * vec
        for j in range(BN // vrows):
            row = tid // chunks + vrows * j
            n = n0 + row
            ok = (n < g.out_channels) & (k < g.K)
            for v in range(vec):
                sb[row, chunk * vec + v] = _gather(ws_, n * g.K + k + v, ok)
    else:
        pairs = kt // 2
        per_pass = threads // pairs
        k = k0 + 2 * (tid % pairs)
        for j in range(BN // per_pass):
            row = tid // pairs + per_pass * j
            n = n0 + row
            for h in range(2):
                ok = (n < g.out_channels) & (k + h < g.K)
                sb[row, k - k0 + h] = _gather(ws_, n * g.K + k + h, ok)
    return sa, sb


def _threads(tensor_cores: bool) -> int:
    return plan_mod.MMA_THREADS if tensor_cores else plan_mod.SIMT_THREADS


@functools.lru_cache(maxsize=None)
def _epilogue_map(tensor_cores: bool) -> tuple[np.ndarray, np.ndarray]:
    """(tile row, tile column) of every accumulator the epilogue writes, over all threads."""
    rows, cols = [], []
    for tid in range(_threads(tensor_cores)):
        if tensor_cores:  # igemm_mma
            lane, warp = tid & 31, tid >> 5
            wm, wn, g, c = warp >> 1, warp & 1, lane >> 2, lane & 3
            for i in range(4):
                for half in range(2):
                    for j in range(8):
                        for e in range(2):
                            rows.append(wm * 64 + i * 16 + g + half * 8)
                            cols.append(wn * 64 + j * 8 + 2 * c + e)
        else:  # igemm_simt
            tx, ty = tid & 15, tid >> 4
            for i in range(8):
                for j in range(8):
                    rows.append(ty + 16 * i)
                    cols.append(tx + 16 * j)
    return np.array(rows), np.array(cols)


@pytest.mark.parametrize("tensor_cores", [False, True], ids=["simt", "mma"])
def test_epilogue_covers_tile_once(tensor_cores: bool) -> None:
    rows, cols = _epilogue_map(tensor_cores)
    assert len(rows) == BM * BN
    assert len(np.unique(rows * BN + cols)) == BM * BN


def model_igemm(g: object, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                out: torch.Tensor, itemsize: int, tensor_cores: bool, slots: int) -> object:
    """Run igemm.cu's algorithm on the CPU (float64 arithmetic); writes ``out`` through its
    strides and returns the plan."""
    p = plan_mod.make_plan(g, itemsize, x.data_ptr(), weight.data_ptr(), lambda a_vec: slots)
    if p.copy_weight:
        weight = weight.contiguous()
    g = p.geometry
    xs, ws_ = _memory(x), _memory(weight)
    b = bias.double().numpy() if bias is not None else None
    M, N, K = g.M, g.out_channels, g.K
    er, ec = _epilogue_map(tensor_cores)
    part = np.zeros((p.splits, M, N)) if p.splits > 1 else None
    o_flat = np.full(out.untyped_storage().nbytes() // out.element_size(), np.nan)
    on, oc, oh, ow = g.out_strides

    def out_base(m: np.ndarray) -> np.ndarray:
        img, r = np.divmod(m, g.out_h * g.out_w)
        y, x_ = np.divmod(r, g.out_w)
        return img * on + y * oh + x_ * ow

    for z in range(p.splits):
        kbeg = z * p.k_split
        kend = min(K, kbeg + p.k_split)
        ntiles = -(-(kend - kbeg) // p.ktile)
        for bx in range(p.m_tiles):
            for by in range(p.n_tiles):
                m0, n0 = bx * BM, by * BN
                acc = np.zeros((BM, BN))
                for t in range(max(ntiles, 0)):
                    sa, sb = _fill_stage(p, xs, ws_, m0, n0, kbeg + t * p.ktile, itemsize,
                                         _threads(tensor_cores))
                    acc += sa @ sb.T
                m, n = m0 + er, n0 + ec
                keep = (m < M) & (n < N)
                m, n, v = m[keep], n[keep], acc[er[keep], ec[keep]]
                if part is not None:
                    part[z, m, n] = v
                else:
                    o_flat[_in_bounds(out_base(m) + n * oc, o_flat)] = v + (b[n] if b is not None else 0.0)
    if part is not None:  # splitk_reduce: sum in split order, bias, store through the strides
        i = np.arange(M * N)
        m, n = (np.divmod(i, N) if oc == 1 else np.divmod(i, M)[::-1])
        s = np.zeros(M * N)
        for z in range(p.splits):
            s += part[z, m, n]
        o_flat[_in_bounds(out_base(m) + n * oc, o_flat)] = s + (b[n] if b is not None else 0.0)
    out.copy_(torch.as_strided(torch.from_numpy(o_flat), out.shape, out.stride()).to(out.dtype))
    return p


def _conv_case(spec: object, layout: str, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    x = torch.randn(spec.input_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(spec.weight_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    b = torch.randn(spec.out_channels, generator=gen).to(dtype) if spec.bias else None
    out = torch.empty(spec.output_shape, dtype=torch.float64).contiguous(memory_format=fmt)
    g = plan_mod.Geometry(
        batch=spec.batch, channels=spec.in_channels, height=spec.height, width=spec.width,
        out_channels=spec.out_channels, out_h=spec.out_height, out_w=spec.out_width,
        kernel_h=spec.kernel_h, kernel_w=spec.kernel_w, stride=spec.stride, padding=spec.padding,
        x_strides=tuple(x.stride()), w_strides=tuple(w.stride()), out_strides=tuple(out.stride()))
    ref = F.conv2d(x.double(), w.double(), b.double() if b is not None else None,
                   stride=spec.stride, padding=spec.padding)
    return g, x, w, b, out, ref


def _assert_model_matches(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert not torch.isnan(out).any(), "an output element was never written"
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


@given(spec=conv2d_specs(max_channels=20, max_hw=10), layout=st.sampled_from(["NCHW", "NHWC"]),
       dtype=st.sampled_from([torch.float32, torch.float16]), tensor_cores=st.booleans(),
       slots=st.sampled_from([1, 6, 264]), seed=st.integers(0, 2**31 - 1))
def test_model_conv2d_matches_torch(spec, layout, dtype, tensor_cores, slots, seed) -> None:
    g, x, w, b, out, ref = _conv_case(spec, layout, dtype, seed)
    model_igemm(g, x, w, b, out, x.element_size(), tensor_cores or dtype != torch.float32, slots)
    _assert_model_matches(out, ref)


CONV_CASES = {
    # name: (spec kwargs, layout, dtype, slots); vector paths, odd channels, several tiles, splits
    "nhwc-vec-fp32-split": (dict(batch=2, in_channels=8, out_channels=20, height=9, width=7, kernel_h=3,
                                 kernel_w=3, stride=1, padding=1), "NHWC", torch.float32, 264),
    "nhwc-vec-fp16-2tiles": (dict(batch=3, in_channels=16, out_channels=130, height=8, width=7, kernel_h=2,
                                  kernel_w=3, stride=2, padding=1), "NHWC", torch.float16, 4),
    "nchw-odd-stride4": (dict(batch=2, in_channels=3, out_channels=5, height=19, width=23, kernel_h=11,
                              kernel_w=11, stride=4, padding=2), "NCHW", torch.float32, 264),
    "nhwc-odd-channels": (dict(batch=2, in_channels=3, out_channels=7, height=12, width=11, kernel_h=5,
                               kernel_w=5, stride=1, padding=2), "NHWC", torch.float16, 1),
    "many-m-tiles": (dict(batch=4, in_channels=4, out_channels=9, height=12, width=12, kernel_h=3,
                          kernel_w=3, stride=1, padding=0, bias=False), "NHWC", torch.float32, 1),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_model_conv2d_cases(case: str) -> None:
    kwargs, layout, dtype, slots = CONV_CASES[case]
    spec = Conv2d(**kwargs)
    g, x, w, b, out, ref = _conv_case(spec, layout, dtype, seed=1)
    for tensor_cores in ([False, True] if dtype == torch.float32 else [True]):
        p = model_igemm(g, x, w, b, out, x.element_size(), tensor_cores, slots)
        _assert_model_matches(out, ref)
    if layout == "NHWC" and kwargs["in_channels"] % (16 // x.element_size()) == 0:
        assert p.a_vec and p.b_vec, "NHWC with whole 16-byte channel groups must take the vector path"
    if layout == "NCHW" or kwargs["in_channels"] % (16 // x.element_size()):
        assert not p.a_vec


@given(spec=linear_specs(max_batch=140, max_features=80), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       transposed_weight=st.booleans(), slots=st.sampled_from([1, 264]), seed=st.integers(0, 2**31 - 1))
def test_model_linear_matches_torch(spec, dtype, transposed_weight, slots, seed) -> None:
    """kernels/cupy/linear.py's geometry: a batch of 1x1 images; a transposed weight view is
    copied at setup."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen).to(dtype)
    w = torch.randn(spec.weight_shape, generator=gen).to(dtype)
    if transposed_weight:
        w = w.t().contiguous().t()
    b = torch.randn(spec.out_features, generator=gen).to(dtype) if spec.bias else None
    out = torch.empty(spec.output_shape, dtype=torch.float64)
    g = plan_mod.Geometry(
        batch=spec.batch, channels=spec.in_features, height=1, width=1, out_channels=spec.out_features,
        out_h=1, out_w=1, kernel_h=1, kernel_w=1, stride=1, padding=0,
        x_strides=(x.stride(0), x.stride(1), 0, 0), w_strides=(w.stride(0), w.stride(1), 0, 0),
        out_strides=(out.stride(0), out.stride(1), 0, 0))
    p = model_igemm(g, x, w, b, out, x.element_size(), dtype != torch.float32, slots)
    ref = F.linear(x.double(), w.double(), b.double() if b is not None else None)
    _assert_model_matches(out, ref)
    assert p.copy_weight == (transposed_weight and spec.in_features > 1 and spec.out_features > 1)


def test_split_choice() -> None:
    # FC 9216 -> 4096 at batch 128 on 132 SMs x 2 blocks: 32 tiles, 8 splits of 72 fp32 tiles.
    assert plan_mod.choose_split(32, 9216 // 16, 264) == (8, 72)
    # Enough tiles: no split.  Short K: no split below MIN_KTILES_PER_SPLIT tiles each.
    assert plan_mod.choose_split(871, 23, 264) == (1, 23)
    assert plan_mod.choose_split(1, 7, 264) == (1, 7)
    # Every split gets work: splits * per covers ktiles, (splits - 1) * per does not.
    for tiles in (1, 3, 32, 100):
        for ktiles in (4, 9, 37, 576):
            splits, per = plan_mod.choose_split(tiles, ktiles, 264)
            assert (splits - 1) * per < ktiles <= splits * per


# ---------------------------------------------------------------- 2d. pooling loops, modelled


def _window_reduce(spec: object, vals: np.ndarray) -> np.ndarray:
    return vals.max(axis=1) if spec.method == "max" else vals.sum(axis=1) / (spec.kernel * spec.kernel)


def model_pool_nhwc(spec: object, x: torch.Tensor) -> torch.Tensor:
    """pool2d.cu's NHWC loops (one thread per output pixel and channel, VEC = 1) on the CPU."""
    s = spec
    xs = _memory(x)
    idx = np.arange(s.batch * s.out_height * s.out_width * s.channels)
    t, c = np.divmod(idx, s.channels)
    t, ow = np.divmod(t, s.out_width)
    n, oh = np.divmod(t, s.out_height)
    base = n * s.height * s.width * s.channels + c
    h0, w0 = oh * s.stride - s.padding, ow * s.stride - s.padding
    fill = -np.inf if s.method == "max" else 0.0  # padding: never the max, zero in the sum
    vals = np.full((len(idx), s.kernel * s.kernel), fill)
    for dh in range(s.kernel):
        for dw in range(s.kernel):
            h, w = h0 + dh, w0 + dw
            ok = (h >= 0) & (h < s.height) & (w >= 0) & (w < s.width)
            off = base + (h * s.width + w) * s.channels
            vals[:, dh * s.kernel + dw] = np.where(ok, xs[np.where(ok, off, 0)], fill)
    out = torch.from_numpy(_window_reduce(s, vals))
    return out.view(s.batch, s.out_height, s.out_width, s.channels).permute(0, 3, 1, 2)


def model_pool_nchw_band(spec: object, x: torch.Tensor, itemsize: int, mis: int, band_rows: int,
                         threads: int) -> torch.Tensor:
    """pool2d.cu's NCHW band kernel on the CPU: per block, the aligned copy of its input range
    into the band (x starting `mis` elements past a 16-byte boundary; elements outside x read as
    NaN, so a window that touched them would show), then every thread's stepped (row, column)
    walk over the band's outputs, windows read from the band.  The launcher uses 256 threads;
    fewer make the small test maps take several steps."""
    s = spec
    ve = 16 // itemsize
    xs = _memory(x)
    # Memory around x: the vectors may reach ve - 1 elements before and after it.
    pad = np.full(ve, np.nan)
    mem, origin = np.concatenate([pad, xs, pad]), ve
    rows = s.batch * s.channels * s.out_height
    out = np.full(rows * s.out_width, np.nan)
    los, his = pool_plan.band_ranges(s, band_rows)
    tid = np.arange(threads)
    step_rows, step_cols = divmod(threads, s.out_width)
    fill = -np.inf if s.method == "max" else 0.0
    for blk, (lo, hi) in enumerate(zip(los.tolist(), his.tolist())):
        r0 = blk * band_rows
        r1 = min(r0 + band_rows, rows)
        plane0, oh0 = divmod(r0, s.out_height)
        base = ((lo + mis) & ~(ve - 1)) - mis
        vectors = -(-(hi - base) // ve)
        assert vectors * ve * itemsize <= pool_plan.BAND_BYTES, "the band overflows shared memory"
        assert -ve < base and base + vectors * ve <= x.numel() + ve, "a vector leaves x's granules"
        band = mem[origin + base: origin + base + vectors * ve]
        count = (r1 - r0) * s.out_width
        ow = tid % s.out_width
        oh, plane = oh0 + tid // s.out_width, np.full(len(tid), plane0)
        plane, oh = plane + oh // s.out_height, oh % s.out_height
        for i in range(0, count, threads):
            live = tid + i < count
            h0, w0 = oh * s.stride - s.padding, ow * s.stride - s.padding
            win = (plane * s.height + h0) * s.width + w0 - base
            vals = np.full((len(tid), s.kernel * s.kernel), fill)
            for a in range(s.kernel):
                for b in range(s.kernel):
                    ok = live & (h0 + a >= 0) & (h0 + a < s.height) & (w0 + b >= 0) & (w0 + b < s.width)
                    at = np.where(ok, win + a * s.width + b, 0)
                    assert np.all((at >= 0) & (at < len(band))), "a tap outside the band"
                    vals[:, a * s.kernel + b] = np.where(ok, band[at], fill)
            res = _window_reduce(s, vals)
            out[r0 * s.out_width + (tid + i)[live]] = res[live]
            ow, oh = ow + step_cols, oh + step_rows
            oh, ow = oh + (ow >= s.out_width), np.where(ow >= s.out_width, ow - s.out_width, ow)
            plane, oh = plane + oh // s.out_height, oh % s.out_height
    return torch.from_numpy(out).view(s.output_shape)


def _torch_pool(spec: object, x: torch.Tensor) -> torch.Tensor:
    if spec.method == "max":
        return F.max_pool2d(x, spec.kernel, spec.stride, spec.padding)
    return F.avg_pool2d(x, spec.kernel, spec.stride, spec.padding, count_include_pad=True)


@given(spec=pool2d_specs(max_channels=6, max_hw=12), seed=st.integers(0, 2**31 - 1))
def test_model_pool_nhwc_matches_torch(spec, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model_pool_nhwc(spec, x), _torch_pool(spec, x), rtol=1e-12, atol=1e-12)


@given(spec=pool2d_specs(max_channels=6, max_hw=12), itemsize=st.sampled_from([2, 4]), data=st.data(),
       seed=st.integers(0, 2**31 - 1))
def test_model_pool_nchw_band_matches_torch(spec, itemsize, data, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape, generator=gen, dtype=torch.float64)
    mis = data.draw(st.integers(0, 16 // itemsize - 1), label="mis")
    rows = spec.batch * spec.channels * spec.out_height
    band_rows = data.draw(st.integers(1, rows), label="band_rows")
    threads = data.draw(st.sampled_from([1, 5, 32, pool_plan.THREADS]), label="threads")
    got = model_pool_nchw_band(spec, x, itemsize, mis, band_rows, threads)
    torch.testing.assert_close(got, _torch_pool(spec, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shape", "kernel", "itemsize"), [
    ((128, 64, 55, 55), 3, 2), ((128, 64, 55, 55), 3, 4), ((128, 256, 13, 13), 2, 2), ((2, 3, 224, 224), 3, 4),
    ((1, 1, 3, 20000), 3, 4)])
def test_pool_band_plan(shape: tuple[int, int, int, int], kernel: int, itemsize: int) -> None:
    """Bands fill the H100 twice over where the map allows, and always fit the shared band."""
    spec = Pool2d(*shape, kernel, 2)
    rows = pool_plan.band_rows(spec, itemsize, sm_count=132)
    if shape[3] * kernel * itemsize > pool_plan.BAND_BYTES:
        assert rows is None  # one row's windows do not fit: the direct kernel
        return
    assert rows is not None and pool_plan.fits(spec, itemsize, rows)
    total = spec.batch * spec.channels * spec.out_height
    want = -(-total // (132 * pool_plan.RESIDENT_BLOCKS * pool_plan.WAVES))
    assert rows == want or (rows < want and not pool_plan.fits(spec, itemsize, rows + 1))


def test_band_bytes_match_the_kernel() -> None:
    text = (build.KERNEL_DIR / "pool2d.cu").read_text()
    assert f"constexpr int BAND_BYTES = {pool_plan.BAND_BYTES};" in text


# ---------------------------------------------------------------- 2e. FFT convolution, modelled


def _bitrev(v: np.ndarray, log_n: int) -> np.ndarray:
    out = np.zeros_like(v)
    for b in range(log_n):
        out |= ((v >> b) & 1) << (log_n - 1 - b)
    return out


def _twiddles(log_n: int, sign: float) -> np.ndarray:
    n = 1 << log_n
    return np.exp(sign * 2j * np.pi * np.arange(n) / n)


def _fft_registers(v: np.ndarray, log_r: int, log_n: int, tw: np.ndarray) -> np.ndarray:
    """fft_registers along the last axis: loaded in bit-reversed order, radix-2 stages."""
    w = v[..., _bitrev(np.arange(1 << log_r), log_r)].copy()
    for s in range(log_r):
        half = 1 << s
        j = np.arange(1 << (log_r - 1))
        pos = j & (half - 1)
        i0 = ((j - pos) << 1) + pos
        t = w[..., i0 + half] * tw[pos << (log_n - 1 - s)]
        w[..., i0 + half], w[..., i0] = w[..., i0] - t, w[..., i0] + t
    return w


def _log_r1(log_n: int) -> int:
    return min(log_n, 4)


def _at(k: np.ndarray, log_n: int) -> np.ndarray:
    """Fft::at: where X[k] lands, (k % R1) * R2 + k / R1."""
    log_r1 = _log_r1(log_n)
    return (k & ((1 << log_r1) - 1)) * (1 << (log_n - log_r1)) + (k >> log_r1)


def _fft_run(x: np.ndarray, log_n: int, tw: np.ndarray) -> np.ndarray:
    """Fft::run along the last axis: R1-point FFTs over elements R2 apart, twiddles W_N^(n2 k1),
    R2-point FFTs over runs of R2; X[k] left at position at(k)."""
    log_r1 = _log_r1(log_n)
    r1, r2 = 1 << log_r1, 1 << (log_n - log_r1)
    d = x.reshape(x.shape[:-1] + (r1, r2))  # [n1][n2]
    y = _fft_registers(np.swapaxes(d, -1, -2), log_r1, log_n, tw)  # [n2][k1]
    y = np.swapaxes(y * tw[np.arange(r2)[:, None] * np.arange(r1)[None, :]], -1, -2)  # [k1][n2]
    if r2 > 1:
        y = _fft_registers(y, log_n - log_r1, log_n, tw)  # [k1][k2]
    return y.reshape(x.shape)


def model_fft_forward(x: np.ndarray, pad: int, log_n: int) -> np.ndarray:
    """fft_forward on one real plane: its half spectrum [N][N/2+1] on the N x N grid."""
    n, p = 1 << log_n, (1 << log_n) // 2 + 1
    tw = _twiddles(log_n, -1.0)
    r, c = np.meshgrid(np.arange(n // 2), np.arange(n), indexing="ij")
    h, w = 2 * r - pad, c - pad

    def at(hh: np.ndarray) -> np.ndarray:
        ok = (hh >= 0) & (hh < x.shape[0]) & (w >= 0) & (w < x.shape[1])
        return np.where(ok, x[np.clip(hh, 0, x.shape[0] - 1), np.clip(w, 0, x.shape[1] - 1)], 0.0)

    rows = _fft_run(at(h) + 1j * at(h + 1), log_n, tw)
    v = np.arange(p)
    z, zc = rows[:, _at(v, log_n)], np.conj(rows[:, _at((n - v) & (n - 1), log_n)])
    d = z - zc
    spec = np.zeros((n, p), complex)
    spec[0::2], spec[1::2] = 0.5 * (z + zc), 0.5 * d.imag - 0.5j * d.real
    cols = _fft_run(spec.T.copy(), log_n, tw)
    return cols.T[_at(np.arange(n), log_n)]  # the write-out puts row u back in place


def model_fft_inverse(spec: np.ndarray, rows: int, cols: int, log_n: int) -> np.ndarray:
    """fft_inverse on one half spectrum: output rows x cols, scaled, before the bias."""
    n = 1 << log_n
    tw = _twiddles(log_n, 1.0)
    s = _fft_run(spec.T.copy(), log_n, tw).T  # row u at at(u)
    pairs = (rows + 1) // 2
    r2 = np.arange(pairs)
    c = np.arange(n)
    mirrored = c > n // 2
    v = np.where(mirrored, n - c, c)
    a, b = s[_at(2 * r2, log_n)][:, v], s[_at(2 * r2 + 1, log_n)][:, v]
    a, b = np.where(mirrored, np.conj(a), a), np.where(mirrored, np.conj(b), b)
    edge = (v == 0) | (v == n // 2)
    a, b = np.where(edge, a.real, a), np.where(edge, b.real, b)
    z = _fft_run((a.real - b.imag) + 1j * (a.imag + b.real), log_n, tw)[:, _at(c, log_n)]
    out = np.stack([z.real, z.imag], axis=1).reshape(2 * pairs, n)
    return out[:rows, :cols] / (n * n)


@pytest.mark.parametrize("log_n", list(fft_plan_mod.LOG_SIZES))
def test_model_fft_transforms_match_numpy(log_n: int) -> None:
    n = 1 << log_n
    rng = np.random.default_rng(log_n)
    x = rng.standard_normal((n - 5, n - 3))
    spec = model_fft_forward(x, 1, log_n)
    grid = np.zeros((n, n))
    grid[1:1 + x.shape[0], 1:1 + x.shape[1]] = x
    np.testing.assert_allclose(spec, np.fft.rfft2(grid), atol=1e-9 * n * n)
    back = model_fft_inverse(spec, n - 1, n - 2, log_n)
    np.testing.assert_allclose(back, grid[:n - 1, :n - 2], atol=1e-12 * n * n)


@pytest.mark.parametrize("spec", [Conv2d(2, 3, 4, 13, 9, 3, 5, padding=2), Conv2d(1, 2, 3, 16, 16, 16, 16),
                                  Conv2d(2, 2, 2, 5, 7, 2, 3), Conv2d(1, 1, 2, 30, 30, 7, 7, padding=1)])
def test_model_fft_conv_matches_torch(spec: Conv2d) -> None:
    """Spectra of x and w, the per-frequency product with conj(w), the cropped inverse: the
    convolution, with padding, at every transform size fft_plan picks."""
    plan = fft_plan_mod.fft_plan(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape)
    w = rng.standard_normal(spec.weight_shape)
    xs = np.array([[model_fft_forward(x[b, c], spec.padding, plan.log_n) for c in range(spec.in_channels)]
                   for b in range(spec.batch)])
    ws = np.array([[model_fft_forward(w[k, c], 0, plan.log_n) for c in range(spec.in_channels)]
                   for k in range(spec.out_channels)])
    ys = np.einsum("bcuv,kcuv->bkuv", xs, np.conj(ws))
    out = np.array([[model_fft_inverse(ys[b, k], spec.out_height, spec.out_width, plan.log_n)
                     for k in range(spec.out_channels)] for b in range(spec.batch)])
    want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=spec.padding).numpy()
    np.testing.assert_allclose(out, want, atol=1e-10)


def test_fft_plan_sizes_and_limits() -> None:
    plan = fft_plan_mod.fft_plan
    assert [plan(Conv2d(128, 3, 96, h, h, k, k)).n for h, k in ((128, 11), (64, 9), (32, 9), (16, 7), (13, 3), (27, 5))] \
        == [128, 64, 32, 16, 16, 32]
    assert plan(Conv2d(1, 1, 1, 30, 28, 3, 3, padding=1)).n == 32  # padding counts
    assert plan(Conv2d(1, 1, 1, 31, 28, 3, 3, padding=1)).n == 64
    assert plan(Conv2d(1, 1, 1, 3, 3, 3, 3)).n == 16  # the smallest size instantiated
    with pytest.raises(Exception, match="up to 128 x 128"):
        plan(Conv2d(1, 1, 1, 224, 224, 3, 3))
    with pytest.raises(Exception, match="stride 1"):
        plan(Conv2d(1, 1, 1, 32, 32, 3, 3, stride=2))
    for log_n in fft_plan_mod.LOG_SIZES:
        p = plan(Conv2d(1, 1, 1, 1 << log_n, 1 << log_n, 1, 1))
        assert p.freqs % fft_plan_mod.FT == 0  # fft_cgemm's 16-byte halves never straddle a tile
    for log_n in fft_plan_mod.LOG_SIZES:  # fits an A100's opt-in maximum
        assert fft_plan_mod.transform_shared_bytes(1 << log_n) <= 163 * 1024
    assert list(fft_plan_mod.LOG_SIZES) == list(build.FFT_LOG_SIZES)


def test_fft_first_guess() -> None:
    """The thesis's layers at batch 128 are worth timing both ways; a 1x1 convolution is not."""
    for h, c, k, ks in ((128, 3, 96, 11), (64, 64, 128, 9), (32, 128, 128, 9), (16, 128, 128, 7),
                        (13, 384, 384, 3), (27, 192, 192, 5)):
        assert fft_plan_mod.fft_plan(Conv2d(128, c, k, h, h, ks, ks)).worth_timing()
    assert not fft_plan_mod.fft_plan(Conv2d(128, 64, 64, 32, 32, 1, 1)).worth_timing()


def test_fft_constants_match_the_kernel() -> None:
    text = (build.KERNEL_DIR / "fft_conv.cu").read_text()
    for name in ("GEMM_THREADS", "FT", "BT", "KT", "CT", "GEMM_STAGES"):
        assert re.search(rf"constexpr int {name} = {getattr(fft_plan_mod, name)};", text), name
    # Transform's threads and planes per block, written as in the kernel, against the plan's.
    assert "THREADS = LOGN >= 7 ? 512 : 256;" in text
    assert "PLANES = LOGN <= 5 ? 512 >> LOGN : (LOGN == 6 ? 4 : 1);" in text
    for log_n in fft_plan_mod.LOG_SIZES:
        n = 1 << log_n
        assert fft_plan_mod.transform_threads(n) == (512 if log_n >= 7 else 256)
        assert fft_plan_mod.planes_per_block(n) == (512 >> log_n if log_n <= 5 else (4 if log_n == 6 else 1))
