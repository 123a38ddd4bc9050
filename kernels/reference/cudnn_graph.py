"""conv2d (forward, data and weight gradients) through cuDNN's graph API, called through NVIDIA's
Python frontend.

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
dtype (fp32 and tf32: FLOAT, fp16: HALF, bf16: BFLOAT16), intermediate and compute FLOAT.  A grouped
convolution (depthwise included) is the same graph: cuDNN reads the groups from the weight's
channels (C / groups against the input's C), as torch's own graph calls do.  Every
tensor is described with the canonical strides of its layout, size-1 dimensions included (torch's
strides of a size-1 dimension are arbitrary, and a 1x1 filter in NHWC is otherwise ambiguous).
The plans: heuristics A, B and FALLBACK, then every engine of the graph at its default knobs
(``create_execution_plan(engine, {})``), deduplicated by plan name.  No knob sweep: on the H200 a
knob variation outside the heuristics' choices (eng49, knob 17 = 19) ran into an illegal memory
access, which kills the CUDA context.  Each plan is built (one that fails to build or run is
skipped and counted), screened, and the fastest few are timed again with the project's build
timer (``selection_ms``); the fastest is kept.

fp32 stays true fp32: the engines whose numerical notes say TENSOR_CORE or DOWN_CONVERT_INPUTS are
deselected for fp32 (tf32 allows them).  The frontend applies that filter to the engine configs it
holds when asked, and its notes for configs appended later are not to be trusted (read in the
frontend's source), so every fp32 finalist is also run once on a probe that TF32 cannot pass: an
input of 1 + 2^-11 + 2^-13 (exact in fp32, not in TF32's 10-bit mantissa) against a one-hot
filter must come back exact.  Every finalist, in any dtype, must then pass the harness's own
check on the real tensors (``ResultCheck``: float64, the dtype's tolerance): an engine that
computes a wrong result on some layer is not kept as the reference.  A finalist that fails either
check is rejected and counted, with the reason.

The backward passes run the same search on their own graphs: ``conv_dgrad`` (dy and the weight
in, dx out) and ``conv_wgrad`` (x and dy in, dweight out), the latter with a ``reduction`` node
(ADD, dy to [1, K, 1, 1]) for the bias gradient where the caller asks for it; cuDNN may have no
plan for that pair, which the caller learns as ``Unsupported``.  Their fp32 probes follow the same
idea: the operand that TF32 would round holds the probe value, the other is one-hot, so each result
is one product (or none) and must come back exact (``dgrad_probe``, ``wgrad_probe``).

Workspace: plans needing over half of the free device memory are deselected (the rule of
``layerbench.builders.check_workspace``).  The launch points the frontend's handle at torch's
current stream, then runs the kept plan.  No plan at all raises ``Unsupported`` with the reason.

ReLU: a one-node pointwise graph (``relu``), searched the same way and timed beside the legacy
``cudnnActivationForward`` (``cudnn.build_relu`` keeps the faster); out of place only.  Pooling is
not here: the frontend's Python graph (1.32) has no pooling node (its C++ ``resample`` node is not
bound in Python), so pooling runs the legacy ``cudnnPoolingForward`` alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from layerbench.build_cache import autotune_choices, choice_key
from layerbench.builders import Built, Kernel, Tensors, check_workspace, selection_mode, selection_ms
from layerbench.check.correctness import ResultCheck
from layerbench.dtypes import DType
from layerbench.errors import Unavailable, Unsupported
from layerbench.layers import Conv2d, ReLU
from layerbench.layers.passes import at_direction

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
    timed: int = 0  # screened
    rejected: int = 0  # finalists that failed ``accept`` (not true fp32, or a wrong result)
    reused: bool = False  # the plan an earlier search chose, kept without a search
    best: int | None = None
    best_ms: float = float("nan")
    failures: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.failures) < 3:
            self.failures.append(what[:300])

    def counts(self) -> dict[str, object]:
        if self.reused:
            return {"reused_choice": True}
        out: dict[str, object] = {"plans": self.plans, "built": self.plans - self.barred - self.failed,
                                  "barred": self.barred, "failed": self.failed, "timed": self.timed,
                                  "duplicates": self.duplicates}
        if self.rejected:
            out["rejected"] = self.rejected
        if self.failures:
            out["first_failures"] = " | ".join(self.failures)
        return out


def search_plans(names: list[str], build_plan: Callable[[int], None], make_launch: Callable[[int], Kernel],
                 screen_ms: Callable[[Kernel], float], final_ms: Callable[[Kernel], float],
                 accept: Callable[[int], str | None] | None = None,
                 after_failure: Callable[[], None] = lambda: None,
                 finalists: int = FINALISTS, known: str | None = None) -> PlanSearch:
    """Build, run and screen every plan once (by name), time the fastest ``finalists`` again.

    ``make_launch(i)`` allocates plan i's workspace and runs it once (synchronised); a launch is
    made again for a finalist so that the screen holds one workspace at a time.  ``accept(i)``,
    where given, must return None before a plan can be a finalist (else: why it is rejected).
    ``after_failure`` runs after a plan failed to run and raises where the device is no longer
    usable.  ``known``: the plan an earlier search of the same graph chose (the build cache); it
    is kept without a search where it still builds, runs and is accepted.
    """
    s = PlanSearch()
    if known is not None and known in names:
        i = names.index(known)
        try:
            build_plan(i)
            why = accept(i) if accept is not None else None
            if why is None:
                s.best_ms, s.best, s.reused = final_ms(make_launch(i)), i, True
                return s
        except Exception:  # noqa: BLE001 - the search below tries it again and counts the failure
            after_failure()
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
        why = accept(i) if accept is not None else None
        if why is not None:
            s.rejected += 1
            s.note(f"{names[i]}: {why}")
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


def _start(dtype: DType, x: torch.Tensor) -> tuple[Any, torch.device, Any]:
    """The frontend, the device and its handle (on torch's current stream), or why the graph path
    cannot take the point."""
    cudnn = load_frontend()
    if x.device.type != "cuda":
        raise Unsupported(f"cuDNN runs on CUDA tensors; x is on {x.device}")
    if dtype.name not in IO_TYPES:
        raise Unsupported(f"the cuDNN graph path runs {', '.join(IO_TYPES)}, not {dtype.name}")
    device = x.device
    handle = _handle(cudnn, device)
    cudnn.set_stream(handle, torch.cuda.current_stream(device).cuda_stream)
    return cudnn, device, handle


def _new_graph(cudnn: Any, dtype: DType, handle: Any) -> tuple[Any, Any, Any]:
    """An empty graph with I/O in the point's dtype and FLOAT intermediates and compute: (g, io, f32)."""
    io = getattr(cudnn.data_type, IO_TYPES[dtype.name])
    f32 = cudnn.data_type.FLOAT
    g = cudnn.pygraph(io_data_type=io, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    return g, io, f32


def _tensor(g: Any, name: str, dims: tuple[int, ...] | list[int], fmt: str, io: Any) -> Any:
    return g.tensor(name=name, dim=list(dims), stride=canonical_strides(dims, fmt), data_type=io)


def _output(t: Any, dims: tuple[int, ...] | list[int], fmt: str, io: Any) -> Any:
    return t.set_output(True).set_data_type(io).set_dim(list(dims)).set_stride(canonical_strides(dims, fmt))


@dataclass
class GraphPlans:
    """The execution plans of one operation graph: their names and how they were found."""

    names: list[str]
    heuristic_plans: int
    engines: int
    engines_appended: int
    heuristics_error: str | None


def _plans(cudnn: Any, g: Any, dtype: DType, device: torch.device, what: str) -> GraphPlans:
    """Heuristics A, B and FALLBACK, then every engine at its default knobs (see the module
    docstring); the workspace and (fp32) numerical-note deselection applied.  ``Unsupported``
    where cuDNN refuses the graph or finalises no plan."""
    try:
        g.build_operation_graph()
    except Exception as exc:  # noqa: BLE001 - cuDNN's refusal of this graph, with its message
        raise Unsupported(f"cuDNN's graph API does not take this {what}: {type(exc).__name__}: {exc}") from exc
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
        raise Unsupported(f"cuDNN's graph API offers no plan for this {what} (heuristics A, B, FALLBACK: "
                          f"{heuristics_error or 'none'}; {engines} engines at their defaults: none finalised)")
    names = []
    for i in range(count):
        try:
            names.append(str(g.get_plan_name_at_index(i)))
        except Exception:  # noqa: BLE001
            names.append(f"plan{i}")
    return GraphPlans(names, heuristic_plans, engines, appended, heuristics_error)


# A probe for the fp32 check: (the tensors to run a plan on, keyed as ``uids``; the float64 values
# that outputs among them must hold, broadcast against them).
Probe = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def _keep_fastest(cudnn: Any, g: Any, handle: Any, device: torch.device, plans: GraphPlans, uids: dict[str, Any],
                  real: dict[str, torch.Tensor], probe: Callable[[], Probe] | None, check: Callable[[], str | None],
                  fmt: str, what: str, identity: str,
                  probe_failure: str = "not true fp32 (the TF32 probe came back rounded)") -> Built:
    """Search ``plans`` on the real tensors (``search_plans``), each fp32 finalist checked on
    ``probe()`` and every finalist's result on the real tensors by ``check()`` (None: right, else
    why not), and return the fastest plan's launch with what the record says of the search.

    The plan chosen is kept in the build cache under the graph (``identity``: the layer and
    dtype; the tensors' shapes, strides and dtypes; cuDNN's versions; hot or cold timing): the same
    graph on the same GPU model is not searched again, in this process or the next.
    """
    names = plans.names
    versions = {"frontend": str(getattr(cudnn, "__version__", "?")), "backend": _backend_version(cudnn)}
    choices = autotune_choices()
    key = choice_key(f"cudnn graph {what}", [real[k] for k in sorted(real)],
                     {"identity": identity, "layout": fmt, "timed": selection_mode(), **versions}, "reference")
    known = choices.get(key)
    current_stream = torch.cuda.current_stream

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

    def accept(i: int) -> str | None:
        if probe is not None:
            tensors, expected = probe()
            launcher(i, tensors)
            if not all(_matches(tensors[k], e) for k, e in expected.items()):
                return probe_failure
        launcher(i, real)
        return check()

    def alive() -> None:
        torch.cuda.synchronize(device)  # raises where a plan left a sticky CUDA error

    search = search_plans(
        names, build_plan=g.build_plan_at_index, make_launch=lambda i: launcher(i, real),
        screen_ms=lambda k: selection_ms(k, device, **SCREEN), final_ms=lambda k: selection_ms(k, device, **FINAL),
        accept=accept, after_failure=alive, known=known.get("plan") if known else None)
    if search.best is None:
        raise Unsupported(f"no plan of cuDNN's graph API ran this {what} ({len(names)} plans: "
                          f"{search.counts()}; heuristics: {plans.heuristics_error or 'ok'})")
    best = search.best
    if not search.reused:
        choices.put(key, {"plan": names[best]}, {"kernel": f"cudnn graph {what}"})
    launch = launcher(best, real)
    try:
        engine, knobs = _knobs(g.get_engine_and_knobs_at_index(best))
    except Exception as exc:  # noqa: BLE001 - informative only
        engine, knobs = None, f"n/a ({type(exc).__name__})"
    details: dict[str, object] = {
        "path": "graph", "plan": names[best], "engine": engine, "knobs": knobs, "search_ms": search.best_ms,
        "workspace_bytes": int(g.get_workspace_size_plan_at_index(best)), "layout": fmt,
        "heuristic_plans": plans.heuristic_plans, "engines": plans.engines,
        "engines_appended": plans.engines_appended, **search.counts(),
        "frontend_version": versions["frontend"],
    }
    if versions["backend"] is not None:
        details["backend_version"] = versions["backend"]
    if plans.heuristics_error:
        details["heuristics_error"] = plans.heuristics_error[:300]
    return Built(launch, details)


def _matches(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """``got`` holds ``expected`` within the probe's tolerance, infinities and NaNs where it has them."""
    value = got.double()
    close = (value - expected).abs() <= FP32_PROBE_TOL
    return bool((close | (value == expected) | (value.isnan() & expected.isnan())).all())


def _backend_version(cudnn: Any) -> int | None:
    try:
        return int(cudnn.backend_version())
    except Exception:  # noqa: BLE001 - informative only
        return None


def _one_hot(like: torch.Tensor) -> torch.Tensor:
    """Zeros like ``like`` (same memory format) with a one at [0, 0, 0, 0]."""
    t = torch.zeros_like(like)
    t[0, 0, 0, 0] = 1.0
    return t


def _conv_args(spec: Conv2d) -> dict[str, list[int]]:
    return {"padding": [spec.padding_h, spec.padding_w], "stride": [spec.stride_h, spec.stride_w],
            "dilation": [spec.dilation_h, spec.dilation_w]}


def _torch_conv_args(spec: Conv2d) -> dict[str, object]:
    """``_conv_args`` for torch's gradient functions, which take the groups explicitly."""
    return {**_conv_args(spec), "groups": spec.groups}


def result_checker(spec: Conv2d, direction: str, bias: bool, dtype: DType, tensors: Tensors,
                   parts: dict[str, torch.Tensor]) -> Callable[[], str | None]:
    """``check`` for ``_keep_fastest`` and for the legacy path's search: the results (``parts``, by
    name) on the real tensors against float64; ``bias``: whether the call computes the bias term
    (or its gradient)."""
    judge = ResultCheck(dataclasses.replace(at_direction(spec, direction), bias=bias), dtype, tensors)

    def check() -> str | None:
        result = judge(parts)
        return None if result.ok else f"wrong on the real tensors: {result.message}"

    return check


def fprop_probe(spec: Conv2d, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor) -> Probe:
    """x of the probe value, a one-hot filter at tap (0, 0) of input channel 0 for every output
    channel: every output is the probe value or a zero of the padding, exactly, in fp32."""
    t = {"x": torch.full_like(x, FP32_PROBE), "weight": torch.zeros_like(w), "out": torch.empty_like(out)}
    t["weight"][:, 0, 0, 0] = 1.0
    if b is not None:
        t["bias"] = torch.zeros_like(b)
    ph, pw, sh, sw = spec.padding_h, spec.padding_w, spec.stride_h, spec.stride_w
    inside = F.pad(torch.ones(1, 1, spec.height, spec.width, dtype=torch.float64, device=x.device),
                   (pw, pw, ph, ph))
    return t, {"out": FP32_PROBE * inside[:, :, ::sh, ::sw][:, :, :spec.out_height, :spec.out_width]}


def dgrad_probe(spec: Conv2d, dy: torch.Tensor, w: torch.Tensor, dx: torch.Tensor) -> Probe:
    """dy of the probe value, a one-hot filter: each dx element is one product (or none)."""
    t = {"dy": torch.full_like(dy, FP32_PROBE), "weight": _one_hot(w), "out": torch.empty_like(dx)}
    expected = torch.nn.grad.conv2d_input(tuple(dx.shape), t["weight"].double(), t["dy"].double(),
                                          **_torch_conv_args(spec))
    return t, {"out": expected}


def wgrad_probe(spec: Conv2d, x: torch.Tensor, dy: torch.Tensor, dweight: torch.Tensor,
                dbias: torch.Tensor | None) -> Probe:
    """x of the probe value, a one-hot dy: each dweight element is one product (or none), the bias
    gradient a one and zeros."""
    t = {"x": torch.full_like(x, FP32_PROBE), "dy": _one_hot(dy), "dweight": torch.empty_like(dweight)}
    expected = {"dweight": torch.nn.grad.conv2d_weight(t["x"].double(), tuple(dweight.shape), t["dy"].double(),
                                                       **_torch_conv_args(spec))}
    if dbias is not None:
        t["dbias"] = torch.empty_like(dbias)
        expected["dbias"] = t["dy"].double().sum((0, 2, 3))
    return t, expected


def build_conv2d_graph(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """conv2d (+ fused bias) by the fastest plan of cuDNN's graph API (see the module docstring)."""
    x, w, b = tensors["x"], tensors["weight"], tensors.get("bias")
    cudnn, device, handle = _start(dtype, x)
    fmt = dense_layout(layout, x=x, out=out, weight=w)
    g, io, f32 = _new_graph(cudnn, dtype, handle)
    X, W = _tensor(g, "X", x.shape, fmt, io), _tensor(g, "W", w.shape, fmt, io)
    conv = g.conv_fprop(image=X, weight=W, name="conv", **_conv_args(spec))
    uids = {"x": X, "weight": W}
    if b is not None:
        conv.set_data_type(f32)
        B = _tensor(g, "B", (1, spec.out_channels, 1, 1), fmt, io)
        Y = g.add(a=conv, b=B, name="bias")
        uids["bias"] = B
    else:
        Y = conv
    uids["out"] = _output(Y, spec.output_shape, fmt, io)
    plans = _plans(cudnn, g, dtype, device, "convolution")

    real = {"x": x, "weight": w, "out": out, **({"bias": b} if b is not None else {})}
    probe = (lambda: fprop_probe(spec, x, w, b, out)) if dtype.name == "fp32" else None
    check = result_checker(spec, "forward", b is not None, dtype, tensors, {"y": out})
    return _keep_fastest(cudnn, g, handle, device, plans, uids, real, probe, check, fmt, "convolution",
                         f"{spec!r} {dtype.name}")


def build_conv2d_dgrad_graph(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors,
                             out: torch.Tensor) -> Built:
    """dx of conv2d (``out``) from dy and the weight, by the fastest plan of a ``conv_dgrad`` graph."""
    x, w, dy = tensors["x"], tensors["weight"], tensors["dy"]
    cudnn, device, handle = _start(dtype, x)
    fmt = dense_layout(layout, dy=dy, out=out, weight=w)
    g, io, _ = _new_graph(cudnn, dtype, handle)
    DY, W = _tensor(g, "DY", dy.shape, fmt, io), _tensor(g, "W", w.shape, fmt, io)
    DX = g.conv_dgrad(loss=DY, filter=W, name="dgrad", **_conv_args(spec))
    uids = {"dy": DY, "weight": W, "out": _output(DX, spec.input_shape, fmt, io)}
    plans = _plans(cudnn, g, dtype, device, "convolution's data gradient")

    probe = (lambda: dgrad_probe(spec, dy, w, out)) if dtype.name == "fp32" else None
    check = result_checker(spec, "backward_data", spec.bias, dtype, tensors, {"dx": out})
    return _keep_fastest(cudnn, g, handle, device, plans, uids, {"dy": dy, "weight": w, "out": out}, probe, check,
                         fmt, "convolution's data gradient", f"{spec!r} {dtype.name}")


def build_conv2d_wgrad_graph(spec: Conv2d, dtype: DType, layout: str, tensors: Tensors, dweight: torch.Tensor,
                             dbias: torch.Tensor | None = None) -> Built:
    """dweight of conv2d from x and dy by the fastest plan of a ``conv_wgrad`` graph; with ``dbias``,
    the same graph also sums dy over N, H, W into it (a ``reduction`` node, ADD)."""
    x, dy = tensors["x"], tensors["dy"]
    cudnn, device, handle = _start(dtype, x)
    fmt = dense_layout(layout, x=x, dy=dy, dweight=dweight)
    g, io, f32 = _new_graph(cudnn, dtype, handle)
    X, DY = _tensor(g, "X", x.shape, fmt, io), _tensor(g, "DY", dy.shape, fmt, io)
    DW = g.conv_wgrad(image=X, loss=DY, name="wgrad", **_conv_args(spec))
    uids = {"x": X, "dy": DY, "dweight": _output(DW, spec.weight_shape, fmt, io)}
    what = "convolution's weight gradient" + (" with its bias gradient" if dbias is not None else "")
    if dbias is not None:
        DB = g.reduction(input=DY, mode=cudnn.reduction_mode.ADD, compute_data_type=f32, name="dbias")
        # [1, K, 1, 1] with canonical strides puts element k at offset k: dbias, a vector of K.
        uids["dbias"] = _output(DB, (1, spec.out_channels, 1, 1), fmt, io)
    plans = _plans(cudnn, g, dtype, device, what)

    real = {"x": x, "dy": dy, "dweight": dweight, **({"dbias": dbias} if dbias is not None else {})}
    probe = (lambda: wgrad_probe(spec, x, dy, dweight, dbias)) if dtype.name == "fp32" else None
    check = result_checker(spec, "backward_weight", dbias is not None, dtype, tensors,
                           {"dweight": dweight, **({"dbias": dbias} if dbias is not None else {})})
    return _keep_fastest(cudnn, g, handle, device, plans, uids, real, probe, check, fmt, what,
                         f"{spec!r} {dtype.name}")


def build_relu_graph(spec: ReLU, dtype: DType, layout: str, tensors: Tensors, out: torch.Tensor) -> Built:
    """ReLU as a one-node pointwise graph, by its fastest plan (NaN propagates, as in torch).

    Out of place only: an in-place ReLU (out is x) runs on the legacy call."""
    x = tensors["x"]
    if out is x:
        raise Unsupported("the graph path writes a separate output; an in-place ReLU runs the legacy call")
    cudnn, device, handle = _start(dtype, x)
    fmt = dense_layout(layout, x=x, out=out)
    g, io, _ = _new_graph(cudnn, dtype, handle)
    X = _tensor(g, "X", x.shape, fmt, io)
    Y = _output(g.relu(input=X, name="relu"), spec.output_shape, fmt, io)
    plans = _plans(cudnn, g, dtype, device, "ReLU")
    judge = ResultCheck(spec, dtype, tensors)

    def probe() -> Probe:
        # NaN must stay NaN (a max(x, 0) instruction would return 0), infinities as in torch.
        special = torch.tensor([float("nan"), float("-inf"), float("inf"), -1.5, 2.5], dtype=x.dtype, device=x.device)
        values = x.clone()  # dense in x's layout: its memory is one run of numel elements
        memory = values.as_strided((values.numel(),), (1,))
        count = min(special.numel(), values.numel())
        memory[:count] = special[:count]
        return {"x": values, "out": torch.empty_like(out)}, {"out": torch.relu(values).double()}

    def check() -> str | None:
        result = judge(out)
        return None if result.ok else f"wrong on the real tensors: {result.message}"

    return _keep_fastest(cudnn, g, handle, device, plans, {"x": X, "out": Y}, {"x": x, "out": out}, probe, check,
                         fmt, "ReLU", f"{spec!r} {dtype.name}",
                         probe_failure="NaN or infinities not passed through as torch does")
