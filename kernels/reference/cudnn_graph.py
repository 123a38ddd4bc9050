"""conv2d forward through cuDNN's graph API, called through NVIDIA's Python frontend.

The frontend is the optional package ``nvidia-cudnn-frontend`` (module ``cudnn``; extra
``layerbench[cudnn]``, GPU only).  It is imported on first use, so this module imports on any
machine; where the frontend is missing, ``build_conv2d_graph`` raises ``Unavailable`` with the
reason and implementation "cudnn" keeps its legacy path and says so in the record.

Why a second way into cuDNN: on an H200 (cuDNN 9.19) the fast Hopper engines for NHWC
and for the 1x1 convolutions are reached only through the graph API; the legacy
``cudnnFindConvolutionForwardAlgorithmEx`` was up to 5.5x slower than torch's ``F.conv2d`` (which
goes through the graph API) in bf16 NHWC, and 2.5x slower in true fp32 NHWC on a VGG-16 layer.

How: one ``conv_fprop`` graph, the bias add fused into it (``add(conv, B)`` with B of dims
[1, K, 1, 1]) where the spec has a bias, since our own kernels fuse it too.  I/O in the point's
dtype (fp32 and tf32: FLOAT, fp16: HALF, bf16: BFLOAT16), intermediate and compute FLOAT.  Every
tensor is described with the canonical strides of its layout, size-1 dimensions included (torch's
strides of a size-1 dimension are arbitrary, and a 1x1 filter in NHWC is otherwise ambiguous).
The plans: heuristics A, B and FALLBACK, then every engine of the graph at its default knobs
(``create_execution_plan(engine, {})``), deduplicated by plan name.  No knob sweep: on the H200 a
knob variation outside the heuristics' choices (eng49, knob 17 = 19) ran into an illegal memory
access, which kills the CUDA context.  Each plan is built (one that fails to build or run is
skipped and counted), screened hot, and the fastest few are timed again with the project's build
timer (``hot_median_ms``); the fastest is kept.

fp32 stays true fp32: the engines whose numerical notes say TENSOR_CORE or DOWN_CONVERT_INPUTS are
deselected for fp32 (tf32 allows them).  The frontend applies that filter to the engine configs it
holds when asked, and its notes for configs appended later are not to be trusted (read in the
frontend's source), so every fp32 finalist is also run once on a probe that TF32 cannot pass: an
input of 1 + 2^-11 + 2^-13 (exact in fp32, not in TF32's 10-bit mantissa) against a one-hot
filter must come back exact.  A finalist that fails is rejected and counted.

Workspace: plans needing over half of the free device memory are deselected (the rule of
``layerbench.builders.check_workspace``).  The launch points the frontend's handle at torch's
current stream, then runs the kept plan.  No plan at all raises ``Unsupported`` with the reason.

Pooling and ReLU are not here: the frontend's Python graph has no pooling (resample) node, and a
standalone ReLU graph is a pointwise op that torch's ATen kernel already runs at copy speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from layerbench.builders import Built, Kernel, Tensors, check_workspace, hot_median_ms
from layerbench.dtypes import DType
from layerbench.errors import Unavailable, Unsupported
from layerbench.layers import Conv2d

FRONTEND = "nvidia-cudnn-frontend"
IO_TYPES = {"fp32": "FLOAT", "tf32": "FLOAT", "fp16": "HALF", "bf16": "BFLOAT16"}
FINALISTS = 4  # the fastest plans of the screen, timed again
SCREEN = {"warmup": 0, "reps": 3}  # make_launch has just run the plan once
FINAL = {"warmup": 2, "reps": 10}
# The fp32 probe: exact in fp32 (needs 13 mantissa bits), off by >= 3.6e-4 after TF32 rounding.
FP32_PROBE = 1.0 + 2.0 ** -11 + 2.0 ** -13
FP32_PROBE_TOL = 2.0 ** -14  # 6e-5: room for FFT / Winograd rounding, 6x below TF32's
_BARRED = ("Deselect", "deselect", "workspace violation", "shared memory violation")

_handles: dict[int, Any] = {}


def load_frontend() -> Any:
    """The frontend's module ``cudnn``, or ``Unavailable`` saying why it cannot be used."""
    try:
        import cudnn  # lazy: optional dependency (nvidia-cudnn-frontend)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a library the module failed to load
        raise Unavailable(f"{FRONTEND} is not importable ({type(exc).__name__}: {exc}); "
                          "it comes with `pip install 'layerbench[cudnn]'`") from exc
    if not hasattr(cudnn, "pygraph"):
        raise Unavailable(f"the module 'cudnn' at {getattr(cudnn, '__file__', '?')} is not {FRONTEND} "
                          "(it has no pygraph)")
    return cudnn


def canonical_strides(dims: tuple[int, ...] | list[int], layout: str) -> list[int]:
    """Packed strides of an N,C,H,W-ordered 4-D shape in ``layout``, size-1 dimensions included."""
    n, c, h, w = dims
    if layout == "NCHW":
        return [c * h * w, h * w, w, 1]
    if layout == "NHWC":
        return [h * w * c, 1, w * c, c]
    raise ValueError(f"layout must be NCHW or NHWC, got {layout!r}")


def dense_layout(layout: str, **named: torch.Tensor) -> str:
    """The layout that all the 4-D tensors are dense in, ``layout`` first.

    A tensor with one channel (or 1x1 spatial size) is dense in both, and the harness then
    allocates ``out`` in NCHW even for an NHWC point; describing every tensor in one layout that
    they all really have keeps cuDNN's view identical to the memory.
    """
    for candidate in (layout, "NHWC" if layout == "NCHW" else "NCHW"):
        memory = torch.channels_last if candidate == "NHWC" else torch.contiguous_format
        if all(t.dim() == 4 and t.is_contiguous(memory_format=memory) for t in named.values()):
            return candidate
    shapes = ", ".join(f"{n} {tuple(t.shape)} strides {t.stride()}" for n, t in named.items())
    raise ValueError(f"x, out (and weight) must be dense 4-D tensors in one layout ({layout}); got {shapes}")


@dataclass
class PlanSearch:
    """What a plan search did (counts for the record) and the plan it kept."""

    plans: int = 0  # distinct plans (by name)
    duplicates: int = 0
    barred: int = 0  # refused by the deselection (numerical notes, workspace)
    failed: int = 0  # failed to build or to run
    timed: int = 0  # screened hot
    rejected: int = 0  # fp32 finalists that did not compute in fp32
    best: int | None = None
    best_ms: float = float("nan")
    failures: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.failures) < 3:
            self.failures.append(what[:300])

    def counts(self) -> dict[str, object]:
        out: dict[str, object] = {"plans": self.plans, "built": self.plans - self.barred - self.failed,
                                  "barred": self.barred, "failed": self.failed, "timed": self.timed,
                                  "duplicates": self.duplicates}
        if self.rejected:
            out["rejected_not_fp32"] = self.rejected
        if self.failures:
            out["first_failures"] = " | ".join(self.failures)
        return out


def search_plans(names: list[str], build_plan: Callable[[int], None], make_launch: Callable[[int], Kernel],
                 screen_ms: Callable[[Kernel], float], final_ms: Callable[[Kernel], float],
                 accept: Callable[[int], bool] | None = None, after_failure: Callable[[], None] = lambda: None,
                 finalists: int = FINALISTS) -> PlanSearch:
    """Build, run and screen every plan once (by name), time the fastest ``finalists`` again.

    ``make_launch(i)`` allocates plan i's workspace and runs it once (synchronised); a launch is
    made again for a finalist so that the screen holds one workspace at a time.  ``accept(i)``,
    where given, must pass before a plan can be a finalist.  ``after_failure`` runs after a plan
    failed to run and raises where the device is no longer usable.
    """
    s = PlanSearch()
    seen: set[str] = set()
    screened: list[tuple[float, int]] = []
    for i, name in enumerate(names):
        if name in seen:
            s.duplicates += 1
            continue
        seen.add(name)
        s.plans += 1
        try:
            build_plan(i)
        except Exception as exc:  # noqa: BLE001 - one plan's failure is counted, the search goes on
            if any(m in str(exc) for m in _BARRED):
                s.barred += 1
            else:
                s.failed += 1
                s.note(f"build {name}: {type(exc).__name__}: {exc}")
            continue
        try:
            launch = make_launch(i)
            ms = screen_ms(launch)
        except Unsupported as exc:  # its workspace does not fit any more
            s.barred += 1
            s.note(f"{name}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001
            s.failed += 1
            s.note(f"run {name}: {type(exc).__name__}: {exc}")
            after_failure()
            continue
        del launch
        screened.append((ms, i))
    s.timed = len(screened)
    finals: list[tuple[float, int]] = []
    for _, i in sorted(screened):
        if len(finals) >= finalists:
            break
        if accept is not None and not accept(i):
            s.rejected += 1
            s.note(f"{names[i]}: not true fp32 (the TF32 probe came back rounded)")
            continue
        finals.append((final_ms(make_launch(i)), i))
    if finals:
        s.best_ms, s.best = min(finals)
    return s


def _handle(cudnn: Any, device: torch.device) -> Any:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _handles:
        with torch.cuda.device(index):
            _handles[index] = cudnn.create_handle()
    return _handles[index]


def _knobs(engine_and_knobs: Any) -> tuple[int | None, str]:
    try:
        engine, knobs = engine_and_knobs
        text = ",".join(f"{str(k).split('.')[-1]}={v}" for k, v in sorted(knobs.items(), key=lambda kv: str(kv[0])))
        return int(engine), text
    except Exception:  # noqa: BLE001 - informative only
        return None, str(engine_and_knobs)


def build_conv2d_graph(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """conv2d (+ fused bias) by the fastest plan of cuDNN's graph API (see the module docstring)."""
    cudnn = load_frontend()
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    if x.device.type != "cuda":
        raise Unsupported(f"cuDNN runs on CUDA tensors; x is on {x.device}")
    if dtype.name not in IO_TYPES:
        raise Unsupported(f"the cuDNN graph path runs {', '.join(IO_TYPES)}, not {dtype.name}")
    if spec.groups != 1:
        # Untested here without a GPU: grouped convolutions run on the legacy path.
        raise Unsupported(f"the cuDNN graph path here takes groups 1 only, not groups {spec.groups} "
                          "(the legacy API runs grouped convolutions)")
    device = x.device
    fmt = dense_layout(layout, x=x, out=out, weight=w)
    handle = _handle(cudnn, device)
    current_stream = torch.cuda.current_stream
    cudnn.set_stream(handle, current_stream(device).cuda_stream)
    io = getattr(cudnn.data_type, IO_TYPES[dtype.name])
    f32 = cudnn.data_type.FLOAT

    g = cudnn.pygraph(io_data_type=io, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    X = g.tensor(name="X", dim=list(x.shape), stride=canonical_strides(x.shape, fmt), data_type=io)
    W = g.tensor(name="W", dim=list(w.shape), stride=canonical_strides(w.shape, fmt), data_type=io)
    conv = g.conv_fprop(image=X, weight=W, padding=[spec.padding_h, spec.padding_w],
                        stride=[spec.stride_h, spec.stride_w],
                        dilation=[spec.dilation_h, spec.dilation_w], name="conv")
    uids = {"x": X, "weight": W}
    if b is not None:
        conv.set_data_type(f32)
        bias_dims = (1, spec.out_channels, 1, 1)
        B = g.tensor(name="B", dim=list(bias_dims), stride=canonical_strides(bias_dims, fmt), data_type=io)
        Y = g.add(a=conv, b=B, name="bias")
        uids["bias"] = B
    else:
        Y = conv
    Y.set_output(True).set_data_type(io)
    Y.set_dim(list(spec.output_shape)).set_stride(canonical_strides(spec.output_shape, fmt))
    uids["out"] = Y
    try:
        g.build_operation_graph()
    except Exception as exc:  # noqa: BLE001 - cuDNN's refusal of this graph, with its message
        raise Unsupported(f"cuDNN's graph API does not take this convolution: {type(exc).__name__}: {exc}") from exc

    heuristics_error = None
    try:
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.B, cudnn.heur_mode.FALLBACK])
    except Exception as exc:  # noqa: BLE001 - the engines below may still run it
        heuristics_error = f"{type(exc).__name__}: {exc}"
    heuristic_plans = int(g.get_execution_plan_count())
    # check_workspace's rule: at most half of the free memory.
    g.deselect_workspace_greater_than(int(torch.cuda.mem_get_info(device)[0] // 2))
    if dtype.name == "fp32":
        g.deselect_numeric_notes([cudnn.numerical_note.TENSOR_CORE, cudnn.numerical_note.DOWN_CONVERT_INPUTS])
    engines = appended = 0
    try:
        engine_count = int(g.get_engine_count())
    except Exception:  # noqa: BLE001 - the heuristics' plans are still there
        engine_count = 0
    for engine in range(engine_count):
        try:
            g.get_knobs_for_engine(engine)
        except Exception:  # noqa: BLE001 - the engine does not take this graph
            continue
        engines += 1
        try:
            g.create_execution_plan(engine, {})  # default knobs only: see the module docstring
            appended += 1
        except Exception:  # noqa: BLE001 - NOT_SUPPORTED at finalisation: counted below as plans missing
            pass
    count = int(g.get_execution_plan_count())
    if count == 0:
        raise Unsupported(f"cuDNN's graph API offers no plan for this convolution (heuristics A, B, FALLBACK: "
                          f"{heuristics_error or 'none'}; {engines} engines at their defaults: none finalised)")

    names = []
    for i in range(count):
        try:
            names.append(str(g.get_plan_name_at_index(i)))
        except Exception:  # noqa: BLE001
            names.append(f"plan{i}")

    def launcher(i: int, pack_tensors: dict[str, torch.Tensor]) -> Kernel:
        nbytes = int(g.get_workspace_size_plan_at_index(i))
        check_workspace(nbytes, device, f"cuDNN graph plan {names[i]}")
        workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
        pack = {uids[k]: t for k, t in pack_tensors.items()}

        # ``_alive`` holds the graph, the handle, the workspace and the tensors the plan points into.
        def launch(_alive: tuple = (g, workspace, pack_tensors)) -> None:
            cudnn.set_stream(handle, current_stream(device).cuda_stream)
            g.execute_plan_at_index(pack, workspace, index=i, handle=handle)

        launch()
        torch.cuda.synchronize(device)
        return launch

    real = {"x": x, "weight": w, "out": out, **({"bias": b} if b is not None else {})}

    def true_fp32(i: int) -> bool:
        # One-hot filter at tap (0, 0) of input channel 0: every output is the probe value or a
        # zero of the padding, exactly, when the plan computes in fp32.
        probe = {"x": torch.full_like(x, FP32_PROBE), "weight": torch.zeros_like(w), "out": torch.empty_like(out)}
        probe["weight"][:, 0, 0, 0] = 1.0
        if b is not None:
            probe["bias"] = torch.zeros_like(b)
        launcher(i, probe)
        ph, pw, sh, sw = spec.padding_h, spec.padding_w, spec.stride_h, spec.stride_w
        inside = F.pad(torch.ones(1, 1, spec.height, spec.width, dtype=torch.float64, device=device),
                       (pw, pw, ph, ph))
        expected = FP32_PROBE * inside[:, :, ::sh, ::sw][:, :, :spec.out_height, :spec.out_width]
        return bool((probe["out"].double() - expected).abs().max() <= FP32_PROBE_TOL)

    def alive() -> None:
        torch.cuda.synchronize(device)  # raises where a plan left a sticky CUDA error

    search = search_plans(
        names, build_plan=g.build_plan_at_index, make_launch=lambda i: launcher(i, real),
        screen_ms=lambda k: hot_median_ms(k, device, **SCREEN), final_ms=lambda k: hot_median_ms(k, device, **FINAL),
        accept=true_fp32 if dtype.name == "fp32" else None, after_failure=alive)
    if search.best is None:
        raise Unsupported(f"no plan of cuDNN's graph API ran this convolution ({count} plans: "
                          f"{search.counts()}; heuristics: {heuristics_error or 'ok'})")
    best = search.best
    launch = launcher(best, real)
    try:
        engine, knobs = _knobs(g.get_engine_and_knobs_at_index(best))
    except Exception as exc:  # noqa: BLE001 - informative only
        engine, knobs = None, f"n/a ({type(exc).__name__})"
    details: dict[str, object] = {
        "path": "graph", "plan": names[best], "engine": engine, "knobs": knobs, "ms": search.best_ms,
        "workspace_bytes": int(g.get_workspace_size_plan_at_index(best)), "layout": fmt,
        "heuristic_plans": heuristic_plans, "engines": engines, "engines_appended": appended, **search.counts(),
        "frontend_version": str(getattr(cudnn, "__version__", "?")),
    }
    try:
        details["backend_version"] = int(cudnn.backend_version())
    except Exception:  # noqa: BLE001 - informative only
        pass
    if heuristics_error:
        details["heuristics_error"] = heuristics_error[:300]
    return Built(launch, details)
