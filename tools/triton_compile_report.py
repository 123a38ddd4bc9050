"""Compile the conv backward kernels, the linear GEMMs (tiled, TMA, batch-1 GEMV), the TMA convolution,
the 1x1 NCHW convolution's per-image GEMM and the strided 1x1 one's gathering GEMM for a GPU target
without a GPU (and the lowered convolution's im2col copy), and report per tile config what
the compiler made of them: registers, stack frame, local-memory instructions (register spills),
shared memory, whether the main loop got Hopper's warpgroup MMA and async-copy or TMA pipelining,
and whether the MMA reads its operands from shared memory or from registers.

    python tools/triton_compile_report.py [--arch 90] [--dtype bf16] [dgrad|wgrad|depthwise|linear|conv_tma|lowered|pointwise|all]

It catches what only a GPU run would show otherwise: register spills, loads that do not vectorise
(no async copies, one stage of shared memory), an operand copied into registers every k step, a
config that fails to compile (``tests/test_triton_sm90_compile.py`` runs it on the TMA
convolution).  Pointers are declared 16-byte aligned and the channel counts divisible by 16, as
Triton specialises them for the usual layers (the linear GEMMs: K, N and the row strides; strides
of 1 as constants, as Triton specialises them); it times nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler.compiler import make_backend  # noqa: E402

from kernels.triton import conv2d_backward as cb, depthwise_backward as dw, depthwise_rows as dr  # noqa: E402
from kernels.triton import depthwise_pairs as dp  # noqa: E402
from kernels.triton import conv_tma as ct, gemv, linear as lin, linear_backward as lb, linear_tma as lt  # noqa: E402
from kernels import lowering  # noqa: E402
from kernels.triton import lowered_conv, pointwise_conv  # noqa: E402
from kernels.triton.support import DOT_MODE, DOT_PRECISION  # noqa: E402
from layerbench.dtypes import get_dtype  # noqa: E402
from layerbench.layers import Conv2d  # noqa: E402

ELEMENT = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "tf32": "fp32"}
DIVISIBLE = {"C", "K", "CPG", "KPG"}
PATCH_PLANES = (224, 56, 28, 14, 13, 7)  # output sides whose TMA convolution patches the report compiles
REPORT_SMS = 132  # the persistent configs' programs are compiled in: an H100's or H200's SM count
LINEAR_DIVISIBLE = {"K", "N", "k_per_split", "stride_am", "stride_ak", "stride_bk", "stride_bn"}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_report(fn, target: GPUTarget, pointers: dict[str, str], constexprs: dict, warps: int,
                   stages: int = 3, divisible: set[str] = DIVISIBLE, descriptors: dict[str, str] | None = None) -> str:
    """One line: registers, stack frame, local-memory loads and stores (spills), global loads by
    width, shared memory, warpgroup MMAs, async copies, TMA loads and where the first MMA takes its
    operands from."""
    backend = make_backend(target)
    types = {**pointers, **(descriptors or {})}
    signature = {name: types.get(name, "constexpr" if name in constexprs else "i32") for name in fn.arg_names}
    attrs = {(fn.arg_names.index(name),): backend.parse_attr("D") for name in fn.arg_names
             if name in pointers or (name in divisible and name not in constexprs)}
    kernel = triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs), target=target,
                            options={"num_warps": warps, "num_stages": stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    regs, stack = found.groups() if found else ("?", "?")
    # Register spills are local-memory stores and loads; a stack frame alone can be a helper's.
    local = len(re.findall(r"\b(?:STL|LDL)(?:\.\w+)*\s", sass))
    # Global loads in the SASS by width (not LDGSTS, the async copies): a memory-bound kernel wants
    # them as wide as its tile allows.
    loads = re.findall(r"\bLDG(?![A-Z])(?:\.\w+)*", sass)
    widths = {"16B": sum(".128" in ld for ld in loads), "8B": sum(".64" in ld for ld in loads)}
    widths["<=4B"] = len(loads) - widths["16B"] - widths["8B"]
    ldg = ",".join(f"{width}:{count}" for width, count in widths.items())
    ir = kernel.asm["ttgir"]
    return (f"regs={regs} spill_stack={stack} local_mem_ops={local} ldg={ldg} smem={kernel.metadata.shared} "
            f"wgmma={ir.count('warp_group_dot ')} async_copies={ir.count('async_copy_global_to_local')} "
            f"tma_loads={ir.count('async_tma_copy_global_to_local')} mma_operands={_mma_operands(ir)}")


def _mma_operands(ttgir: str) -> str:
    """Where the first warpgroup MMA takes its A and B tiles from: shared memory, or registers
    (loaded from shared memory every step)."""
    dot = next((line for line in ttgir.splitlines() if "warp_group_dot " in line), None)
    if dot is None:
        return "-"
    a, b = dot.rsplit(" : ", 1)[1].split(" -> ")[0].split(" * ")
    return "+".join("smem" if "memdesc" in operand else "registers" for operand in (a, b))


def _tile(cfg: triton.Config) -> str:
    return " ".join(f"{k}={v}" for k, v in cfg.kwargs.items() if k != "GROUP_M") + f" warps={cfg.num_warps}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all",
                        choices=["dgrad", "wgrad", "depthwise", "linear", "conv_tma", "lowered", "pointwise", "all"])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", default="bf16", choices=sorted(ELEMENT))
    args = parser.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    el = "*" + ELEMENT[args.dtype]
    mode, precision = DOT_MODE[args.dtype], DOT_PRECISION[args.dtype]
    common = {"PRECISION": precision, "UPCAST": False}
    if args.which in ("dgrad", "all"):
        for cfg in cb._DGRAD_CONFIGS[mode]:
            for blocked in (True, False):
                for dx_nhwc in (True, False):
                    meta = dict(common, DX_NHWC=dx_nhwc, CHANNEL_BLOCK=blocked, PIX_RUN=1 if dx_nhwc else 8,
                                **cfg.kwargs)
                    line = compile_report(cb._dgrad_kernel, target, {"dy_ptr": el, "w_ptr": el, "dx_ptr": el}, meta,
                                          cfg.num_warps, cfg.num_stages)
                    print(f"dgrad {_tile(cfg)} {'blocked' if blocked else 'flat'} dx {'NHWC' if dx_nhwc else 'NCHW'}: {line}")
    if args.which in ("wgrad", "all"):
        for cfg in cb._WGRAD_CONFIGS[mode]:
            for tap_block in (True, False):
                for partial in (True, False):
                    meta = dict(common, WEIGHT_RSC=True, TAP_BLOCK=tap_block, PARTIAL=partial, **cfg.kwargs)
                    out = "*fp32" if partial else el
                    line = compile_report(cb._wgrad_kernel, target, {"x_ptr": el, "dy_ptr": el, "dw_ptr": out}, meta,
                                          cfg.num_warps, cfg.num_stages)
                    print(f"wgrad {_tile(cfg)} {'tap' if tap_block else 'flat'}{' partial' if partial else ''}: {line}")
    if args.which in ("depthwise", "all"):
        # The forward row-streaming kernels on MobileNetV2's 144 channels at 56 x 56 (NHWC; NCHW planes;
        # in 16 bits, NCHW word pairs).
        itemsize = 2 if args.dtype in ("bf16", "fp16") else 4
        pointers = {"x_ptr": el, "w_ptr": el, "b_ptr": el, "y_ptr": el}
        nhwc = {"NCHW": False, "BLOCK_Q": 0}
        for label, kernel, configs, meta in (
                ("rows", dr._depthwise_rows_kernel, dr._configs(144, 56, itemsize, True), {}),
                ("flat rows", dr._depthwise_flat_rows_kernel, dr._flat_configs(56 * 144, True), dict(nhwc, STRIDE=1)),
                ("flat rows stride 2", dr._depthwise_flat_rows_kernel, dr._flat_configs(28 * 144, True),
                 dict(nhwc, STRIDE=2)),
                ("flat planes NCHW", dr._depthwise_flat_rows_kernel, dr._plane_configs(56),
                 {"NCHW": True, "STRIDE": 1}),
                *([(f"word pairs NCHW stride {stride}", dp._depthwise_nchw_pairs_kernel, dp._configs(),
                    {"STRIDE": stride, "PACKED": True}) for stride in (1, 2)] if itemsize == 2 else [])):
            for cfg in configs:
                line = compile_report(kernel, target, pointers, dict(HAS_BIAS=True, **meta, **cfg.kwargs),
                                      cfg.num_warps)
                print(f"depthwise forward {label} {_tile(cfg)}{'' if 'NCHW' in label else ' NHWC'}: {line}")
        for cfg in dw._DGRAD_CONFIGS:
            for nhwc in (True, False):
                meta = dict(DY_NHWC=nhwc, DX_NHWC=nhwc, KPG=1, **cfg.kwargs)
                line = compile_report(dw._dw_dgrad_kernel, target, {"dy_ptr": el, "w_ptr": el, "dx_ptr": el}, meta,
                                      cfg.num_warps)
                print(f"depthwise dgrad {_tile(cfg)} {'NHWC' if nhwc else 'NCHW'}: {line}")
        for cfg in dw._wgrad_configs(16):
            for nhwc in (True, False):
                meta = dict(X_NHWC=nhwc, DY_NHWC=nhwc, PARTIAL=True, TAPS=16, KPG=1, **cfg.kwargs)
                line = compile_report(dw._dw_wgrad_kernel, target, {"x_ptr": el, "dy_ptr": el, "out_ptr": "*fp32"},
                                      meta, cfg.num_warps)
                print(f"depthwise wgrad 3x3 {_tile(cfg)} {'NHWC' if nhwc else 'NCHW'}: {line}")
    if args.which in ("linear", "all"):
        linear_report(target, el, mode, precision)
    if args.which in ("conv_tma", "all"):
        conv_tma_report(target, args.dtype, el, mode, precision)
    if args.which in ("lowered", "all"):
        lowered_report(target, args.dtype, el)
    if args.which in ("pointwise", "all"):
        # The 1x1 NCHW convolution's per-image GEMM on ResNet-50's conv2_a (256 -> 64 at 56 x 56): the
        # forward (the weight along its rows) and the data gradient (the weight read transposed).
        pointers = {"a_ptr": el, "x_ptr": el, "b_ptr": el, "y_ptr": el}
        for label, rows, reduction, bias, unit in (("forward", 64, 256, True, {"stride_ar": 1}),
                                                    ("data gradient", 256, 64, False, {"stride_am": 1})):
            for cfg in pointwise_conv._cut_tiles(pointwise_conv._NCHW_TILES[mode], rows, reduction, 64 * 56 * 56):
                meta = dict(RUN=16, HAS_BIAS=bias, PRECISION=precision, **unit, **cfg.kwargs)
                line = compile_report(pointwise_conv._nchw_pointwise_kernel, target, pointers, meta, cfg.num_warps,
                                      cfg.num_stages, {"R", "M", "HW", "COLUMNS", "stride_am", "stride_ar"})
                print(f"pointwise NCHW per-image GEMM {label} {_tile(cfg)} stages={cfg.num_stages}: {line}")
        # The weight gradient: dy[n] @ x[n]^T summed over a slice of images, into fp32 partials.
        for cfg in pointwise_conv._cut_tiles(pointwise_conv._NCHW_TILES[mode], 64, 56 * 56, 256):
            meta = dict(PARTIAL=True, PRECISION=precision, **cfg.kwargs)
            line = compile_report(pointwise_conv._nchw_pointwise_wgrad_kernel, target,
                                  {"dy_ptr": el, "x_ptr": el, "out_ptr": "*fp32"}, meta, cfg.num_warps, cfg.num_stages,
                                  {"K", "C", "HW"})
            print(f"pointwise NCHW per-image GEMM weight gradient {_tile(cfg)} stages={cfg.num_stages}: {line}")
        # The strided NHWC one gathering its pixels, on ResNet-50's conv4_proj (512 -> 1024, stride 2).
        for cfg in pointwise_conv._cut_tiles(pointwise_conv._GATHER_TILES[mode], 64 * 14 * 14, 512, 1024):
            meta = dict(HAS_BIAS=False, PRECISION=precision, EVEN_C=True, GROUP_M=8, **cfg.kwargs)
            line = compile_report(pointwise_conv._strided_pointwise_kernel, target,
                                  {"x_ptr": el, "w_ptr": el, "b_ptr": el, "y_ptr": el}, meta, cfg.num_warps,
                                  cfg.num_stages, {"K", "C"})
            print(f"pointwise NHWC strided gather GEMM {_tile(cfg)} stages={cfg.num_stages}: {line}")


def conv_tma_report(target: GPUTarget, dtype: str, el: str, mode: str, precision: str) -> None:
    """The TMA-fed convolution (3x3, padding 1, with bias) for each config and patch shape, at
    stride 1 and 2 with NHWC and NCHW outputs, and on an RGB input padded to 16-byte pixel rows (the
    least channel block), with the padding copy."""
    element = el[1:]
    padded = ct.padded_channels(Conv2d(1, 3, 64, 8, 8, 3, 3), get_dtype(dtype))
    line = compile_report(ct._pad_channels_kernel, target, {"src_ptr": el, "dst_ptr": el},
                          {"C": 3, "P": padded, "P_POW2": padded, "BLOCK": ct.PAD_PIXELS}, 4, divisible=set())
    print(f"conv TMA input padding 3 -> {padded} channels: {line}")
    for stride, narrow, out in ((1, False, "NHWC"), (2, False, "NHWC"), (1, True, "NHWC"), (1, False, "NCHW"),
                                (2, False, "NCHW")):
        for c in ct.CONFIGS.get(mode, []):
            # The patches of the usual planes at batch 64 (one image of wide patches on 224 x 224,
            # stacked images down to one-pixel patches on 13 x 13)
            shapes = dict.fromkeys(ct.patch_shape(Conv2d(64, 64, 64, side, side, 3, 3, padding=1), c["BLOCK_M"], out)
                                   for side in PATCH_PLANES)
            for bi, bh, bw in shapes:
                bn, bk = c["BLOCK_N"], ct.MIN_BLOCK_K if narrow else c["BLOCK_K"]
                descs = {"x_desc": f"tensordesc<{element}[{bi}, {bh}, 1, {bw}, {bk}]>",
                         "w_desc": f"tensordesc<{element}[1, 1, {bn}, {bk}]>"}
                pointers = {"b_ptr": el}
                if out == "NHWC":
                    descs["y"] = f"tensordesc<{element}[{bi}, {bh}, {bw}, {bn}]>"
                else:  # written through pointers; P and Q as ResNet's 56 x 56 (not a multiple of 16)
                    pointers["y"] = el
                meta = {"R": 3, "S": 3, "SH": stride, "SW": stride, "HAS_BIAS": True, "Y_NCHW": out == "NCHW",
                        "PRECISION": precision, "BI": bi, "BH": bh, "BW": bw, "BLOCK_N": bn, "BLOCK_K": bk,
                        "PROGRAMS": c["PER_SM"] * REPORT_SMS}
                line = compile_report(ct._conv_tma_kernel, target, pointers, meta, c["num_warps"],
                                      c["num_stages"], {"K", "C"}, descs)
                patch = f"{bi}x{bh}x{bw}" if bi > 1 else f"{bh}x{bw}"
                print(f"conv TMA stride {stride}{' RGB padded' if narrow else ''} {out} out patch {patch} "
                      f"BLOCK_N={bn} BLOCK_K={bk} warps={c['num_warps']} stages={c['num_stages']} "
                      f"programs an SM={c['PER_SM'] or 'one tile each'}: {line}")


def lowered_report(target: GPUTarget, dtype_name: str, el: str) -> None:
    """The lowered convolutions' im2col copies for the first layers of VGG-16, ResNet-50 and
    AlexNet: the column matrix (its GEMM is the linear layer's, reported under ``linear``) and the
    width unfold (its R x 1 convolution is the TMA convolution's, under ``conv_tma``)."""
    dtype = get_dtype(dtype_name)
    for name, spec in (("VGG-16 conv1_1", Conv2d(1, 3, 64, 224, 224, 3, 3, padding=1)),
                       ("ResNet-50 conv1", Conv2d(1, 3, 64, 224, 224, 7, 7, stride=2, padding=3)),
                       ("AlexNet conv1", Conv2d(1, 3, 96, 227, 227, 11, 11, stride=4))):
        unfold, rows = lowering.unfolded_specs(spec, dtype)
        for what, copied, columns in (("im2col", spec, lowering.column_count(spec)),
                                      ("width unfold", unfold, rows.in_channels)):
            line = compile_report(lowered_conv._im2col_kernel, target, {"x_ptr": el, "col_ptr": el},
                                  lowered_conv.im2col_meta(copied, columns), 4, divisible=set())
            print(f"lowered {what} {name} ({columns} columns): {line}")


def linear_report(target: GPUTarget, el: str, mode: str, precision: str) -> None:
    """The forward GEMM (x and W along K) and the backward's strided GEMM: dx = dy W (B along N)
    and dW = dy^T x (A along M, B along N), without split-K."""
    work = {"ws_ptr": "*fp32", "sem_ptr": "*i32"}
    for cfg in lin._CONFIGS[mode]:
        meta = dict(HAS_BIAS=True, PARTIAL=False, EVEN_K=True, PRECISION=precision, **cfg.kwargs)
        pointers = {"x_ptr": el, "w_ptr": el, "b_ptr": el, "y_ptr": el, **work}
        line = compile_report(lin._linear_kernel, target, pointers, meta, cfg.num_warps, cfg.num_stages,
                              LINEAR_DIVISIBLE)
        print(f"linear forward {_tile(cfg)} stages={cfg.num_stages}: {line}")
    for cfg in gemv._CONFIGS:
        for partial in (False, True):
            meta = dict(HAS_BIAS=True, PARTIAL=partial, EVEN_K=True, **cfg.kwargs)
            pointers = {"x_ptr": el, "w_ptr": el, "b_ptr": el, "y_ptr": el, **work}
            line = compile_report(gemv._gemv_kernel, target, pointers, meta, cfg.num_warps, cfg.num_stages,
                                  {"N", "K", "k_per_split"})
            print(f"linear batch-1 GEMV {_tile(cfg)} stages={cfg.num_stages}{' split' if partial else ''}: {line}")
    for c in lt.CONFIGS.get(mode, []):
        bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
        element = el[1:]
        store_n = bn // 2 if c["SUBTILE"] else bn
        descs = {"x_desc": f"tensordesc<{element}[{bm}, {bk}]>", "w_desc": f"tensordesc<{element}[{bn}, {bk}]>",
                 "y_desc": f"tensordesc<{element}[{bm}, {store_n}]>"}
        meta = {k: v for k, v in c.items() if not k.startswith("num_")}
        meta.update(HAS_BIAS=True, PRECISION=precision, PROGRAMS=132)
        line = compile_report(lt._linear_tma_kernel, target, {"b_ptr": el, "ws_ptr": "*fp32", "sem_ptr": "*i32"},
                              meta, c["num_warps"], c["num_stages"], {"N", "K"}, descs)
        sub = (" subtiled store" if c["SUBTILE"] else "") + (" stream-K" if c["STREAM_K"] else "")
        print(f"linear forward TMA {bm}x{bn}x{bk}{sub} warps={c['num_warps']} stages={c['num_stages']}: {line}")
    for cfg in lb._CONFIGS[mode]:
        for name, unit in (("dx", {"stride_ak": 1, "stride_bn": 1}), ("dW", {"stride_am": 1, "stride_bn": 1})):
            meta = dict(PARTIAL=False, EVEN_K=True, PRECISION=precision, **unit, **cfg.kwargs)
            line = compile_report(lb._strided_gemm_kernel, target, {"a_ptr": el, "b_ptr": el, "c_ptr": el, **work},
                                  meta, cfg.num_warps, cfg.num_stages, LINEAR_DIVISIBLE)
            print(f"linear {name} {_tile(cfg)} stages={cfg.num_stages}: {line}")


if __name__ == "__main__":
    main()
