"""A thin, fault-tolerant wrapper around pynvml (nvidia-ml-py).

Every query returns a ``Reading``: a value, or the reason there is none (NVML missing, the
driver not loaded, the query not supported on this GPU, no permission, ...).  Nothing here
raises for an NVML fault, and nothing here ever changes a clock or a power limit: only
``nvmlDeviceGet*`` queries are called.

The pynvml module is injectable (``Nvml(module=fake)``) so tests can play every fault.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import torch

T = TypeVar("T")

# Clock-event (formerly "throttle") reason bits, identical in both pynvml spellings.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Reasons that mean the clocks were held below what the kernel asked for.
THROTTLE_MASK = 0x004 | 0x008 | 0x020 | 0x040 | 0x080

# NVML constants we need, fixed by the NVML ABI (so fakes need not define them).
_TEMPERATURE_GPU = 0
_CLOCK_SM = 1
_CLOCK_MEM = 2
_PERF_POLICY_POWER = 0
_PERF_POLICY_THERMAL = 1
_ERROR_NAMES = {
    1: "uninitialized", 2: "invalid argument", 3: "not supported", 4: "no permission",
    6: "not found", 9: "driver not loaded", 12: "NVML library not found",
    13: "function not found in this driver", 15: "GPU is lost", 999: "unknown error",
}
NOT_SUPPORTED = 3
NO_PERMISSION = 4


@dataclass(frozen=True)
class Reading(Generic[T]):
    """A query's value, or ``reason`` saying why there is none (``code``: the NVML error code)."""

    value: T | None
    reason: str | None = None
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def reason_names(mask: int) -> list[str]:
    return [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]


class Nvml:
    """An initialised NVML session (or the reason it could not start)."""

    def __init__(self, module: Any | None = None) -> None:
        self.reason: str | None = None
        self.module: Any | None = module
        if self.module is None:
            try:
                import pynvml  # lazy: a missing or broken nvidia-ml-py becomes the reason, not a crash
                self.module = pynvml
            except Exception as exc:  # ImportError, or a broken install
                self.reason = f"pynvml cannot be imported: {exc}"
                return
        try:
            self.module.nvmlInit()
        except Exception as exc:
            self.reason = f"nvmlInit failed: {_describe(exc)}"

    @property
    def ok(self) -> bool:
        return self.reason is None

    def call(self, name: str, *args: Any) -> Reading[Any]:
        """Call ``pynvml.<name>(*args)``; any failure becomes a reason naming the call."""
        if self.reason is not None:
            return Reading(None, self.reason)
        fn: Callable[..., Any] | None = getattr(self.module, name, None)
        if fn is None:
            return Reading(None, f"{name} is not in this pynvml", 13)
        try:
            return Reading(fn(*args))
        except Exception as exc:
            return Reading(None, f"{name}: {_describe(exc)}", getattr(exc, "value", None))

    def driver_version(self) -> Reading[str]:
        r = self.call("nvmlSystemGetDriverVersion")
        return Reading(_text(r.value)) if r.ok else r

    def open(self, device: object) -> Reading["NvmlDevice"]:
        """The NVML handle for a torch CUDA device, an NVML index, or a "GPU-..." UUID string.

        A torch device is matched by UUID (or PCI bus id), not by index: CUDA_VISIBLE_DEVICES
        renumbers CUDA devices, NVML does not.
        """
        if self.reason is not None:
            return Reading(None, self.reason)
        if isinstance(device, str) and device.startswith(("GPU-", "MIG-")):
            r = self.call("nvmlDeviceGetHandleByUUID", device)
        elif isinstance(device, int):
            r = self.call("nvmlDeviceGetHandleByIndex", device)
        else:
            r = self._handle_for_torch(device)
        if not r.ok:
            return Reading(None, r.reason, r.code)
        return Reading(NvmlDevice(self, r.value))

    def _handle_for_torch(self, device: object) -> Reading[Any]:
        dev = torch.device(device)  # type: ignore[arg-type]
        if dev.type != "cuda":
            return Reading(None, f"NVML measures NVIDIA GPUs, not {dev.type!r} devices")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        try:
            props = torch.cuda.get_device_properties(index)
        except Exception as exc:
            return Reading(None, f"torch cannot see CUDA device {index}: {exc}")
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            text = str(uuid)
            r = self.call("nvmlDeviceGetHandleByUUID", text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}")
            if r.ok:
                return r
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:
            pci = f"{getattr(props, 'pci_domain_id', 0):08x}:{bus:02x}:{getattr(props, 'pci_device_id', 0):02x}.0"
            r = self.call("nvmlDeviceGetHandleByPciBusId", pci)
            if r.ok:
                return r
        if not os.environ.get("CUDA_VISIBLE_DEVICES"):
            return self.call("nvmlDeviceGetHandleByIndex", index)
        return Reading(None, f"cannot match CUDA device {index} to an NVML device (no UUID or PCI id from torch)")


class NvmlDevice:
    """Typed queries on one GPU.  Units: mJ, W, degrees C, MHz, seconds."""

    def __init__(self, nvml: Nvml, handle: Any) -> None:
        self.nvml = nvml
        self.handle = handle

    def _get(self, name: str, *args: Any) -> Reading[Any]:
        return self.nvml.call(name, self.handle, *args)

    def name(self) -> Reading[str]:
        r = self._get("nvmlDeviceGetName")
        return Reading(_text(r.value)) if r.ok else r

    def uuid(self) -> Reading[str]:
        r = self._get("nvmlDeviceGetUUID")
        return Reading(_text(r.value)) if r.ok else r

    def total_energy_mj(self) -> Reading[int]:
        """Energy since the driver loaded, in mJ (Volta and newer)."""
        r = self._get("nvmlDeviceGetTotalEnergyConsumption")
        return Reading(int(r.value)) if r.ok else r

    def power_w(self) -> Reading[float]:
        r = self._get("nvmlDeviceGetPowerUsage")
        return Reading(r.value / 1000.0) if r.ok else r

    def power_limit_w(self) -> Reading[float]:
        r = self._get("nvmlDeviceGetEnforcedPowerLimit")
        return Reading(r.value / 1000.0) if r.ok else r

    def temperature_c(self) -> Reading[float]:
        r = self._get("nvmlDeviceGetTemperature", _TEMPERATURE_GPU)
        return Reading(float(r.value)) if r.ok else r

    def sm_clock_mhz(self) -> Reading[int]:
        return self._get("nvmlDeviceGetClockInfo", _CLOCK_SM)

    def mem_clock_mhz(self) -> Reading[int]:
        return self._get("nvmlDeviceGetClockInfo", _CLOCK_MEM)

    def clock_event_reasons(self) -> Reading[int]:
        """Bitmask of active clock-event reasons; pynvml renamed "Throttle" to "Event" in 12.x."""
        r = self._get("nvmlDeviceGetCurrentClocksEventReasons")
        if r.ok or r.code not in (13, None):
            return r
        old = self._get("nvmlDeviceGetCurrentClocksThrottleReasons")
        return old if old.ok else Reading(None, f"{r.reason}; {old.reason}", old.code)

    def violation_s(self, policy: str) -> Reading[float]:
        """Cumulative time the clocks were held down by "power" or "thermal" policy, in seconds."""
        code = {"power": _PERF_POLICY_POWER, "thermal": _PERF_POLICY_THERMAL}[policy]
        r = self._get("nvmlDeviceGetViolationStatus", code)
        return Reading(r.value.violationTime * 1e-9) if r.ok else r

    def process_ids(self) -> Reading[list[int]]:
        """Process ids holding a context on this GPU (compute and graphics, deduplicated)."""
        pids: set[int] = set()
        reasons = []
        for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            r = self._get(name)
            if r.ok:
                pids.update(int(p.pid) for p in r.value)
            else:
                reasons.append(r.reason)
        if len(reasons) == 2:
            return Reading(None, "; ".join(str(x) for x in reasons))
        return Reading(sorted(pids))


def other_processes(pids: list[int], own_pid: int | None = None) -> list[int]:
    """The GPU's processes that are not this one.

    Inside a container NVML reports host pids, so our own pid may be absent; since this
    process holds a context while it measures, one unknown pid is then taken to be us.
    """
    own = os.getpid() if own_pid is None else own_pid
    if own in pids:
        return [p for p in pids if p != own]
    return list(pids) if len(pids) > 1 else []


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "value", None)
    if isinstance(code, int):
        return f"{_ERROR_NAMES.get(code, str(exc) or 'error')} (NVML error {code})"
    return f"{type(exc).__name__}: {exc}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

