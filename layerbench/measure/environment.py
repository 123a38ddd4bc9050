"""What a result was measured on: GPU, driver, libraries, code version, host.

Every value is best effort: a missing library or a GPU-less host gives ``None`` for that entry,
never an exception, so a record can always be written.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from layerbench.measure.nvml import Nvml

_LIBRARIES = ("torch", "triton", "cupy", "numpy")
_CUPY_DISTS = ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x")


def collect_environment(device: torch.device) -> dict[str, object]:
    device = torch.device(device)
    env: dict[str, object] = {
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host_cpu": _host_cpu(),
        "layerbench_version": _version("layerbench"),
        "git_commit": _git_commit(),
        "cuda_runtime": torch.version.cuda,
        "cudnn": _cudnn_version(),
    }
    for lib in _LIBRARIES:
        env[f"{lib}_version"] = _module_version(lib)
    env.update(_gpu(device))
    return env


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _module_version(name: str) -> str | None:
    """Version from package metadata (no import: importing cupy or triton can be slow or fail)."""
    dists = _CUPY_DISTS if name == "cupy" else (name,)
    for dist in dists:
        v = _version(dist)
        if v is not None:
            return v
    if name in sys.modules:
        return getattr(sys.modules[name], "__version__", None)
    return None


def _cudnn_version() -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:
        return None


def _git_commit() -> str | None:
    """The commit of the layerbench checkout, if it is one (an installed wheel has none)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip() or None
    return f"{commit}+dirty" if commit and dirty.stdout.strip() else commit


def _host_cpu() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _gpu(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {"gpu_name": None, "gpu_uuid": None, "gpu_compute_capability": None,
                               "gpu_memory_bytes": None, "gpu_l2_bytes": None, "gpu_sm_count": None,
                               "driver_version": None, "gpu_power_limit_w": None}
    if device.type != "cuda" or not torch.cuda.is_available():
        return info
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None and not str(uuid).startswith(("GPU-", "MIG-")):
        uuid = f"GPU-{uuid}"
    info.update(gpu_name=props.name, gpu_uuid=str(uuid) if uuid is not None else None,
                gpu_compute_capability=f"{props.major}.{props.minor}", gpu_memory_bytes=props.total_memory,
                gpu_l2_bytes=getattr(props, "L2_cache_size", None), gpu_sm_count=props.multi_processor_count)
    nv = Nvml()
    driver = nv.driver_version()
    info["driver_version"] = driver.value if driver.ok else None
    dev = nv.open(device)
    if dev.ok and dev.value is not None:
        limit = dev.value.power_limit_w()
        info["gpu_power_limit_w"] = limit.value if limit.ok else None
        if info["gpu_uuid"] is None:
            u = dev.value.uuid()
            info["gpu_uuid"] = u.value if u.ok else None
    return info

