"""CPU models of depthwise.cu's index math, transcribed from the kernels (models.py's style).

Each model runs a kernel's threads and blocks on the CPU in float64 as the plan launches them:
which thread computes which channels and pixels, which input and filter elements it reads (and
that every read stays inside its buffer and every vector is aligned), the NCHW kernel's staged
tile with its halo, the flat-run kernels' walk down their bands, and that every output element is
written exactly once.  The tests compare the results with torch in float64.  NumPy and torch
only: no CuPy, no GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kernels.cupy import depthwise_plan
from kernels.cupy.depthwise_plan import NHWC_THREADS, PIX, DepthwisePlan
from layerbench.layers import Conv2d


def _flat(t: torch.Tensor) -> np.ndarray:
    """The elements of a dense tensor in memory order, as float64."""
    return torch.as_strided(t, (t.numel(),), (1,), t.storage_offset()).double().numpy()


def _read(mem: np.ndarray, index: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """mem[index] where ok, else 0; every element read is inside mem."""
    index, ok = np.broadcast_arrays(index, ok)
    assert np.all((index[ok] >= 0) & (index[ok] < len(mem))), "a kernel load leaves its buffer"
    return np.where(ok, mem[np.where(ok, index, 0)], 0.0)


def _write(mem: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """mem[index] = values, each element inside mem and written for the first time."""
    assert np.all((index >= 0) & (index < len(mem))), "a kernel store leaves its buffer"
    assert len(np.unique(index)) == index.size and np.isnan(mem[index]).all(), "an element is written twice"
    mem[index] = values


def _vector(mem: np.ndarray, first: np.ndarray, vec: int, ok: np.ndarray) -> np.ndarray:
    """load_vec: [thread][lane] = mem[first + lane] where ok; first is vector-aligned."""
    assert np.all(first[ok] % vec == 0), "a vector load is not aligned"
    return _read(mem, first[:, None] + np.arange(vec), ok[:, None])


def model_depthwise_nhwc(spec: Conv2d, plan: DepthwisePlan, x: torch.Tensor, wt: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """depthwise_nhwc on the CPU: x dense NHWC, wt the fp32 [tap][channel] filter; returns the
    output as an (N, CO, OH, OW) view of an NHWC buffer."""
    s, vec, k = spec, plan.vec, plan.kernel
    C, H, W, CO, OH, OW = s.in_channels, s.height, s.width, s.out_channels, s.out_height, s.out_width
    mult = depthwise_plan.multiplier(s)
    assert vec == 1 or mult == 1, "channel vectors need multiplier 1"
    assert (plan.grid[0] - 1) * NHWC_THREADS < plan.items <= plan.grid[0] * NHWC_THREADS
    xs, ws = _flat(x), _flat(wt)
    bs = _flat(bias) if bias is not None else None
    item = np.arange(plan.items)
    vectors, groups = CO // vec, -(-OW // PIX)
    co = item % vectors * vec
    t = item // vectors
    ow0 = t % groups * PIX
    t //= groups
    oh, n = t % OH, t // OH
    assert np.all(n < s.batch)
    ih0, iw0 = oh * s.stride_h - s.padding_h, ow0 * s.stride_w - s.padding_w
    xn = n * H * W * C + co // mult
    everyone = np.ones(len(item), dtype=bool)
    acc = np.zeros((len(item), PIX, vec))
    if bs is not None:
        acc += _vector(bs, co, vec, everyone)[:, None, :]
    if k > 0:
        assert s.kernel_h == s.kernel_w == k and (s.dilation_h, s.dilation_w) == (1, 1)
        stride = s.stride_w  # the kernel's template argument S
        for kh in range(k):
            ih = ih0 + kh
            row = (ih >= 0) & (ih < H)
            w = [_vector(ws, (kh * k + kw) * CO + co, vec, row) for kw in range(k)]
            for j in range((PIX - 1) * stride + k):
                iw = iw0 + j
                ok = row & (iw >= 0) & (iw < W)
                v = _vector(xs, xn + ih * W * C + iw * C, vec, ok)
                for p in range(PIX):
                    if 0 <= j - p * stride < k:
                        acc[:, p] += w[j - p * stride] * v
    else:
        for kh in range(s.kernel_h):
            ih = ih0 + kh * s.dilation_h
            row = (ih >= 0) & (ih < H)
            for kw in range(s.kernel_w):
                w = _vector(ws, (kh * s.kernel_w + kw) * CO + co, vec, row)
                for p in range(PIX):
                    iw = iw0 + p * s.stride_w + kw * s.dilation_w
                    ok = row & (iw >= 0) & (iw < W)
                    acc[:, p] += w * _vector(xs, xn + ih * W * C + iw * C, vec, ok)
    out = np.full(s.batch * OH * OW * CO, np.nan)
    for p in range(PIX):
        live = ow0 + p < OW
        first = ((n * OH + oh) * OW * CO + co + (ow0 + p) * CO)[live]
        _write(out, (first[:, None] + np.arange(vec)).ravel(), acc[live, p].ravel())
    assert not np.isnan(out).any(), "an output element is never written"
    return torch.from_numpy(out).view(s.batch, OH, OW, CO).permute(0, 3, 1, 2)


def model_depthwise_nhwc_flat(spec: Conv2d, plan: DepthwisePlan, x: torch.Tensor, wt: torch.Tensor,
                              bias: torch.Tensor | None) -> torch.Tensor:
    """depthwise_nhwc_flat on the CPU, all threads at once, step by step down their bands: x dense
    NHWC, wt the fp32 [tap][channel] filter; returns the output as an (N, C, OH, OW) view of an
    NHWC buffer."""
    s, vec, stride = spec, plan.vec, spec.stride_h
    C, H, W, OH, OW = s.in_channels, s.height, s.width, s.out_height, s.out_width
    assert (s.kernel_h, s.kernel_w, s.stride_w, depthwise_plan.multiplier(s)) == (3, 3, stride, 1)
    assert C % vec == 0 and plan.threads == depthwise_plan.FLAT_THREADS
    run, threads = OW * C, plan.threads
    bands = -(-OH // plan.band)
    assert plan.grid == (s.batch * bands * plan.segments, 1, 1)
    assert (plan.segments - 1) * threads * vec < run <= plan.segments * threads * vec
    xs, ws = _flat(x), _flat(wt)
    bs = _flat(bias) if bias is not None else None
    tid, segment, p0, n = _flat_threads(plan, bands)
    e = (segment * threads + tid) * vec
    live = e < run  # the others return at once
    e, p0, n = e[live], p0[live], n[live]
    q = e // C
    c = e - q * C
    iw = q * stride - s.padding_w
    off = iw * C + c
    col = [(iw + j >= 0) & (iw + j < W) for j in range(3)]
    everyone = np.ones(len(e), dtype=bool)
    w = [[_vector(ws, (r * 3 + j) * C + c, vec, everyone) for j in range(3)] for r in range(3)]
    b = _vector(bs, c, vec, everyone) if bs is not None else np.zeros((len(e), vec))
    xn = n * H * W * C
    rows = np.minimum(plan.band, OH - p0)
    top = p0 * stride - s.padding_h
    out = np.full(s.batch * OH * run, np.nan)

    def taps(ih: np.ndarray, alive: np.ndarray) -> list[np.ndarray]:
        row = alive & (ih >= 0) & (ih < H)
        return [_vector(xs, xn + ih * W * C + off + j * C, vec, row & col[j]) for j in range(3)]

    def fma(acc: np.ndarray, v: list[np.ndarray], r: int, ih: np.ndarray) -> np.ndarray:
        row = (ih >= 0) & (ih < H)
        return acc + sum(np.where((row & col[j])[:, None], w[r][j] * v[j], 0.0) for j in range(3))

    def store(active: np.ndarray, p: int, values: np.ndarray) -> None:
        first = n * OH * run + (p0 + p) * run + e
        _write(out, (first[active, None] + np.arange(vec)).ravel(), (values + b)[active].ravel())

    _walk_bands(stride, rows, top, H, taps, fma, store, np.zeros((len(e), vec)))
    assert not np.isnan(out).any(), "an output element is never written"
    return torch.from_numpy(out).view(s.batch, OH, OW, C).permute(0, 3, 1, 2)


def _flat_threads(plan: DepthwisePlan, bands: int) -> tuple[np.ndarray, ...]:
    """Every thread of a flat-run launch: (thread in its block, segment of the row, first output
    row of the band, outer index: image or plane group), from the block index's order."""
    block, tid = np.divmod(np.arange(plan.grid[0] * plan.threads), plan.threads)
    segment, rest = block % plan.segments, block // plan.segments
    return tid, segment, rest % bands * plan.band, rest // bands


def _walk_bands(stride: int, rows: np.ndarray, top: np.ndarray, H: int, taps: Callable, fma: Callable,
                store: Callable, zeros: np.ndarray) -> None:
    """The flat-run kernels' walk down their bands, every thread at once (``top``: each thread's
    first input row, ``rows``: its band's output rows): ``taps(ih, alive)`` loads an input row under
    a thread's taps, ``fma(acc, taps, r, ih)`` adds them times filter row ``r``, and
    ``store(active, p, values)`` writes output row ``p`` of each band."""
    everyone = np.ones(len(top), dtype=bool)
    cur = taps(top, everyone)
    if stride == 1:
        acc1, acc2 = zeros, zeros
        for step in range(int(rows.max()) + 2):
            active = step < rows + 2
            nxt = taps(top + step + 1, active & (step + 1 < rows + 2))
            done = fma(acc1, cur, 2, top + step)
            acc1 = fma(acc2, cur, 1, top + step)
            acc2 = fma(zeros, cur, 0, top + step)
            if step >= 2:
                store(active, step - 2, done)
            cur = nxt
    else:
        odd = taps(top + 1, everyone)
        acc = zeros
        for r in range(int(rows.max()) + 1):
            active = r <= rows
            nxt = taps(top + 2 * r + 2, active & (r < rows))
            nxt_odd = taps(top + 2 * r + 3, active & (r + 1 < rows))
            done = fma(acc, cur, 2, top + 2 * r)
            acc = fma(fma(zeros, cur, 0, top + 2 * r), odd, 1, top + 2 * r + 1)
            if r >= 1:
                store(active, r - 1, done)
            cur, odd = nxt, nxt_odd


def model_depthwise_nchw_flat(spec: Conv2d, plan: DepthwisePlan, x: torch.Tensor, wt: torch.Tensor,
                              bias: torch.Tensor | None) -> torch.Tensor:
    """depthwise_nchw_flat on the CPU, all threads at once, step by step down their bands: x dense
    NCHW, wt the fp32 [channel][tap] filter; returns the (N, C, OH, OW) output."""
    s, stride, cols, row_threads = spec, spec.stride_h, plan.vec, plan.row_threads
    C, H, W, OH, OW = s.in_channels, s.height, s.width, s.out_height, s.out_width
    assert (s.kernel_h, s.kernel_w, s.stride_w, depthwise_plan.multiplier(s)) == (3, 3, stride, 1)
    threads, planes, span = plan.threads, s.batch * C, (cols - 1) * stride + 3
    assert threads == depthwise_plan.FLAT_THREADS and row_threads & (row_threads - 1) == 0 and row_threads <= threads
    bands = -(-OH // plan.band)
    groups = -(-planes // (threads // row_threads))
    assert plan.grid == (groups * bands * plan.segments, 1, 1)
    assert (plan.segments - 1) * row_threads * cols < OW <= plan.segments * row_threads * cols
    xs, ws = _flat(x), _flat(wt)
    bs = _flat(bias) if bias is not None else None
    tid, segment, p0, group = _flat_threads(plan, bands)
    plane = group * (threads // row_threads) + tid // row_threads
    q0 = (segment * row_threads + tid % row_threads) * cols
    live = (plane < planes) & (q0 < OW)  # the others return at once
    plane, q0, p0 = plane[live], q0[live], p0[live]
    iw = q0 * stride - s.padding_w
    col = [(iw + i >= 0) & (iw + i < W) for i in range(span)]
    c = plane % C
    # w[k][r][j]: output k's tap (r, j), zero on a column off the image.
    w = [[[_read(ws, c * 9 + r * 3 + j, col[k * stride + j]) for j in range(3)] for r in range(3)]
         for k in range(cols)]
    b = _read(bs, c, np.ones(len(c), dtype=bool)) if bs is not None else np.zeros(len(c))
    rows = np.minimum(plan.band, OH - p0)
    top = p0 * stride - s.padding_h
    out = np.full(planes * OH * OW, np.nan)

    def taps(ih: np.ndarray, alive: np.ndarray) -> list[np.ndarray]:
        row = alive & (ih >= 0) & (ih < H)
        return [_read(xs, plane * H * W + ih * W + iw + i, row & col[i]) for i in range(span)]

    def fma(acc: np.ndarray, v: list[np.ndarray], r: int, ih: np.ndarray) -> np.ndarray:
        sums = np.stack([sum(w[k][r][j] * v[k * stride + j] for j in range(3)) for k in range(cols)], axis=1)
        return np.where(((ih >= 0) & (ih < H))[:, None], acc + sums, acc)

    def store(active: np.ndarray, p: int, values: np.ndarray) -> None:
        for k in range(cols):
            ok = active & (q0 + k < OW)
            _write(out, (plane * OH * OW + (p0 + p) * OW + q0 + k)[ok], (values[:, k] + b)[ok])

    _walk_bands(stride, rows, top, H, taps, fma, store, np.zeros((len(plane), cols)))
    assert not np.isnan(out).any(), "an output element is never written"
    return torch.from_numpy(out).view(s.batch, C, OH, OW)


def model_depthwise_nchw(spec: Conv2d, plan: DepthwisePlan, x: torch.Tensor, wt: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """depthwise_nchw on the CPU, block by block: x dense NCHW, wt the fp32 [channel][tap]
    filter; returns the (N, CO, OH, OW) output."""
    s = spec
    C, H, W, CO, OH, OW = s.in_channels, s.height, s.width, s.out_channels, s.out_height, s.out_width
    th, tw, ih_, iw_ = plan.tile
    threads = plan.threads
    assert threads % 32 == 0 and threads % tw == 0 and threads <= depthwise_plan.NCHW_MAX_THREADS
    assert plan.shared_bytes == 4 * ih_ * iw_ <= depthwise_plan.SHARED_LIMIT
    assert plan.kernel in (0, s.kernel_h) and (plan.kernel == 0 or s.kernel_h == s.kernel_w)
    mult = depthwise_plan.multiplier(s)
    xs, ws = _flat(x), _flat(wt)
    bs = _flat(bias) if bias is not None else None
    out = np.full(s.batch * CO * OH * OW, np.nan)
    tid = np.arange(threads)
    tx, rows = tid % tw, threads // tw
    for plane, by, bz in np.ndindex(*plan.grid):
        n, co = divmod(plane, CO)
        oh0, ow0 = by * th, bz * tw
        ih0, iw0 = oh0 * s.stride_h - s.padding_h, ow0 * s.stride_w - s.padding_w
        base = (n * C + co // mult) * H * W
        tile = np.full(ih_ * iw_, np.nan)
        for e0 in range(0, ih_ * iw_, threads):  # the staging loop, thread tid on e0 + tid
            e = e0 + tid[e0 + tid < ih_ * iw_]
            r, c = np.divmod(e, iw_)
            ih, iw = ih0 + r, iw0 + c
            ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            _write(tile, e, _read(xs, base + ih * W + iw, ok))
        ow = ow0 + tx
        for ty in range(0, th, rows):  # thread tid on row tid / TW + the rows before
            ty = ty + tid // tw
            oh = oh0 + ty
            live = (ty < th) & (oh < OH) & (ow < OW)
            src = ty * s.stride_h * iw_ + tx * s.stride_w
            acc = np.full(threads, bs[co] if bs is not None else 0.0)
            for kh in range(s.kernel_h):
                for kw in range(s.kernel_w):
                    r, c = ty * s.stride_h + kh * s.dilation_h, tx * s.stride_w + kw * s.dilation_w
                    assert np.all(((r < ih_) & (c < iw_))[live]), "a tap outside the staged tile"
                    f = _read(ws, np.array([co * s.kernel_h * s.kernel_w + kh * s.kernel_w + kw]), np.array([True]))
                    acc += f * _read(tile, src + kh * s.dilation_h * iw_ + kw * s.dilation_w, live)
            _write(out, (plane * OH * OW + oh * OW + ow)[live], acc[live])
    assert not np.isnan(out).any(), "an output element is never written"
    return torch.from_numpy(out).view(s.batch, CO, OH, OW)


def model_depthwise_nchw_rows(spec: Conv2d, plan: DepthwisePlan, x: torch.Tensor, wt: torch.Tensor,
                              bias: torch.Tensor | None, x_offset: int = 0) -> torch.Tensor:
    """depthwise_nchw_rows on the CPU, block by block and chunk by chunk: each chunk's run of input
    rows staged in its buffer (the plan's buffers in turn; the 16-byte granules aligned there and
    in x, the run's ends one element a thread, every element inside the chunk's buffer, each tap
    read only once staged there), then every thread's items (a strip of rows of ``rows_columns`` neighbouring columns);
    x dense NCHW at ``x_offset`` bytes past a 16-byte boundary, wt the fp32 [channel][tap]
    filter; returns (N, CO, OH, OW)."""
    s, k, strip, group, band = spec, plan.kernel, plan.vec, plan.group, plan.band
    C, H, W, CO, OH, OW = s.in_channels, s.height, s.width, s.out_channels, s.out_height, s.out_width
    mult, planes = depthwise_plan.multiplier(s), s.batch * C
    size = x.element_size()
    ve = 16 // size
    bands = -(-OH // band)
    cols = depthwise_plan.rows_columns(k)
    groups = -(-OW // cols)
    assert plan.threads == depthwise_plan.ROWS_THREADS and band % strip == 0 and x_offset % size == 0
    assert plan.chunks == -(-planes // group) * bands and (group == 1 or bands == 1)
    assert plan.grid[1:] == (1, 1) and 1 <= plan.grid[0] <= plan.chunks
    assert strip == (depthwise_plan.ROWS_STRIPS[s.stride_h] if k else 1)
    assert 2 <= plan.stages <= depthwise_plan.ROWS_MAX_STAGES
    assert plan.buffer % ve == 0 and plan.shared_bytes == plan.stages * plan.buffer * size
    xs, ws = _flat(x), _flat(wt)
    bs = _flat(bias) if bias is not None else None
    out = np.full(s.batch * CO * OH * OW, np.nan)
    shared = np.full(plan.stages * plan.buffer, np.nan)
    for block in range(plan.grid[0]):
        for step, c in enumerate(range(block, plan.chunks, plan.grid[0])):
            b, p0 = c % bands, c // bands * group
            np_ = min(group, planes - p0)
            lo, hi = 0, H
            if group == 1:
                lo = max(0, b * band * s.stride_h - s.padding_h)
                hi = max(lo, min(H, ((b + 1) * band - 1) * s.stride_h - s.padding_h
                                 + (s.kernel_h - 1) * s.dilation_h + 1))
            start = p0 * H * W + lo * W
            count = (np_ - 1) * H * W + (hi - lo) * W
            lead = (x_offset + start * size) % 16 // size
            base = (step % plan.stages) * plan.buffer  # this chunk's buffer
            shared[base:base + plan.buffer] = np.nan  # what an earlier chunk left there is not this one's
            head = min(count, (ve - lead) % ve)
            granules = (count - head) // ve
            tail = head + granules * ve
            assert head < ve and count - tail < ve  # the ends: one element a thread of the first 2 * VE
            assert np.all((lead + head + np.arange(granules) * ve) % ve == 0), "a cp.async granule is not aligned"
            index = np.arange(count)
            assert lead + count <= plan.buffer, "a chunk's run overflows its buffer"
            _write(shared, base + lead + index, _read(xs, start + index, np.ones(count, bool)))
            items = np.arange(np_ * mult * (band // strip) * groups)
            ow0, t = items % groups * cols, items // groups
            po, oh0 = t // (band // strip), b * band + (t % (band // strip)) * strip
            plane = p0 * mult + po
            co = plane % CO
            first = base + lead + (po // mult) * H * W

            def tap(f: np.ndarray, ih: np.ndarray, iw: np.ndarray) -> np.ndarray:
                """f times input (ih, iw) of each item's plane; 0 off the image (not even 0 * inf)."""
                ok = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                assert np.all(((ih >= lo) & (ih < hi))[ok]), "a tap outside the staged rows"
                got = _read(shared, first + (ih - lo) * W + iw, ok)
                assert not np.isnan(got[ok]).any(), "a tap reads shared memory this chunk did not stage"
                return np.where(ok, f * got, 0.0)

            bv = bs[co] if bs is not None else np.zeros(len(items))
            for q in range(cols):  # the item's columns side by side; one past the plane is not stored
                ow = ow0 + q
                acc = np.zeros((len(items), strip))
                if k:  # the strip: input row i multiplied into each output row whose window holds it
                    ih0, iw0 = oh0 * s.stride_h - s.padding_h, ow * s.stride_w - s.padding_w
                    for i in range((strip - 1) * s.stride_h + k):
                        for o in range(strip):
                            r = i - o * s.stride_h
                            if 0 <= r < k:
                                for j in range(k):
                                    acc[:, o] += tap(ws[co * k * k + r * k + j], ih0 + i, iw0 + j)
                else:
                    for kh in range(s.kernel_h):
                        for kw in range(s.kernel_w):
                            acc[:, 0] += tap(ws[co * s.kernel_h * s.kernel_w + kh * s.kernel_w + kw],
                                             oh0 * s.stride_h - s.padding_h + kh * s.dilation_h,
                                             ow * s.stride_w - s.padding_w + kw * s.dilation_w)
                for o in range(strip):
                    live = (oh0 + o < OH) & (ow < OW)
                    _write(out, (plane * OH * OW + (oh0 + o) * OW + ow)[live], (acc[:, o] + bv)[live])
    assert not np.isnan(out).any(), "an output element is never written"
    return torch.from_numpy(out).view(s.batch, CO, OH, OW)
