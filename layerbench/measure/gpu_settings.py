"""GPU settings as sweep axes: locked SM / memory clocks and the power limit, through NVML.

This is the one module of layerbench that changes a GPU's settings, and only for a run started with
``layerbench run --allow-gpu-settings`` (``GpuSettings`` refuses to exist without that flag).  Never
use it on a GPU that others share: a locked clock or a lower power limit slows their work too.

The life of the settings in one run:

1. ``GpuSettings.apply`` saves the card's original settings to ``RUN/gpu_settings_saved.json``
   (and a pointer to it under the state directory, ``$LAYERBENCH_STATE_DIR`` or
   ``~/.local/state/layerbench``) *before* the first change, then sets the point's values;
2. ``restore`` after every point group puts the original settings back (locked clocks reset, the
   saved power limit set again); ``close`` at the end, on Ctrl-C and on SIGTERM (the CLI turns it
   into KeyboardInterrupt) restores and deletes the saved file;
3. a crash leaves the saved file behind: ``restore_leftovers``, called at the start of every
   ``layerbench`` command, restores the settings it describes (unless the process that wrote it
   is still running) and deletes it.

NVML cannot read whether a clock was already locked before the run; restoring resets the locks
(the driver's default), and sets the saved power limit back.  Missing permission (setting clocks
and power limits needs root on most systems) is an error that names the NVML call.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from layerbench.measure.nvml import NO_PERMISSION, Nvml, NvmlDevice, Reading
from layerbench.sweep import SETTINGS_AXES

SAVED_FILE = "gpu_settings_saved.json"
STATE_ENV = "LAYERBENCH_STATE_DIR"
# A pynvml look-alike for the tests (tests/fake_nvml.py); None: the real pynvml.
NVML_MODULE: Any = None

Say = Callable[[str], None]


class GpuSettingsError(ValueError):
    """A setting that cannot be applied or restored (unsupported, no permission, no NVML)."""


def _print(msg: str) -> None:
    print(msg, flush=True)


def pending_dir() -> Path:
    """Where the pointers to saved-settings files of running (or crashed) runs live."""
    root = os.environ.get(STATE_ENV) or str(Path.home() / ".local" / "state" / "layerbench")
    return Path(root) / "gpu-settings-pending"


def _open_device(device: str | int, module: Any = None) -> NvmlDevice:
    nvml = Nvml(module if module is not None else NVML_MODULE)
    if not nvml.ok:
        raise GpuSettingsError(f"GPU settings need NVML: {nvml.reason}")
    # A CPU run (the tests' smoke runs) addresses NVML's first GPU.
    target: Any = 0 if device in ("cpu", 0) else device
    if isinstance(target, str) and not target.startswith(("GPU-", "MIG-")):
        target = torch.device(target)
    try:
        r = nvml.open(target)
    except Exception as exc:  # noqa: BLE001 - torch without CUDA: no GPU to map, say so
        raise GpuSettingsError(f"GPU settings: cannot find the GPU: {type(exc).__name__}: {exc}") from None
    if not r.ok or r.value is None:
        raise GpuSettingsError(f"GPU settings: cannot open the GPU in NVML: {r.reason}")
    return r.value


def _need(r: Reading[Any], call: str) -> Any:
    if not r.ok:
        if r.code == NO_PERMISSION:
            raise GpuSettingsError(f"{call}: no permission (NVML error {NO_PERMISSION}); changing clocks and "
                                   "power limits needs root (or the driver's permission to the GPU)")
        raise GpuSettingsError(f"{call} failed: {r.reason}")
    return r.value


# ------------------------------------------------------------------------------ what the card allows


def allowed_settings(dev: NvmlDevice) -> dict[str, Any]:
    """The card's supported memory clocks, SM clocks (over all memory clocks) and power-limit range
    (W); raises GpuSettingsError naming the query that failed."""
    mem = sorted(int(c) for c in _need(dev._get("nvmlDeviceGetSupportedMemoryClocks"),
                                       "nvmlDeviceGetSupportedMemoryClocks"))
    sm: set[int] = set()
    for m in mem:
        sm.update(int(c) for c in _need(dev._get("nvmlDeviceGetSupportedGraphicsClocks", m),
                                        "nvmlDeviceGetSupportedGraphicsClocks"))
    lo, hi = _need(dev._get("nvmlDeviceGetPowerManagementLimitConstraints"),
                   "nvmlDeviceGetPowerManagementLimitConstraints")
    return {"sm_clock_mhz": sorted(sm), "memory_clock_mhz": mem, "power_limit_w": (lo / 1000.0, hi / 1000.0)}


def check_values(values: Mapping[str, Iterable[float]], allowed: Mapping[str, Any]) -> list[str]:
    """One message per value the card does not support, with what it allows."""
    errors = []
    for axis, vals in values.items():
        ok = allowed[axis]
        for v in vals:
            if axis == "power_limit_w":
                lo, hi = ok
                if not lo <= v <= hi:
                    errors.append(f"axes.{axis}: {v:g} W is outside the card's power-limit range "
                                  f"{lo:g}..{hi:g} W (nvmlDeviceGetPowerManagementLimitConstraints)")
            elif v not in ok:
                shown = ", ".join(map(str, ok)) if len(ok) <= 12 else \
                    f"{min(ok)}..{max(ok)} MHz in {len(ok)} steps (e.g. {', '.join(map(str, ok[:6]))}, ...)"
                errors.append(f"axes.{axis}: {v} MHz is not a supported clock of this card; supported: {shown}")
    return errors


def plan_check(values: Mapping[str, Iterable[float]], device: str | int, module: Any = None) -> str | None:
    """For ``plan``: None when every value is supported; raises GpuSettingsError listing the values
    that are not; returns a note when the values cannot be checked here (no NVML, no GPU)."""
    if not values:
        return None
    try:
        dev = _open_device(device, module)
        allowed = allowed_settings(dev)
    except GpuSettingsError as exc:
        return f"cannot check the GPU settings on this machine: {exc}"
    errors = check_values(values, allowed)
    if errors:
        raise GpuSettingsError("; ".join(errors))
    return None


# ------------------------------------------------------------------------------ applying and restoring


def _restore_from(dev: NvmlDevice, saved: Mapping[str, Any]) -> None:
    touched = set(saved.get("touched", SETTINGS_AXES))
    if "sm_clock_mhz" in touched:
        _need(dev._get("nvmlDeviceResetGpuLockedClocks"), "nvmlDeviceResetGpuLockedClocks")
    if "memory_clock_mhz" in touched:
        _need(dev._get("nvmlDeviceResetMemoryLockedClocks"), "nvmlDeviceResetMemoryLockedClocks")
    if "power_limit_w" in touched and saved.get("power_limit_mw") is not None:
        _need(dev._get("nvmlDeviceSetPowerManagementLimit", int(saved["power_limit_mw"])),
              "nvmlDeviceSetPowerManagementLimit")


class GpuSettings:
    """Applies a point's settings and puts the original ones back; see the module docstring."""

    def __init__(self, run_dir: str | Path, device: str | int, allow: bool, say: Say = _print,
                 module: Any = None) -> None:
        if not allow:
            raise GpuSettingsError("GPU settings are changed only with --allow-gpu-settings")
        self.run_dir = Path(run_dir)
        self.say = say
        self.dev = _open_device(device, module)
        self.saved: dict[str, Any] | None = None
        self.changed = False
        self.in_effect: dict[str, Any] = {}

    @property
    def saved_path(self) -> Path:
        return self.run_dir / SAVED_FILE

    def _pointer(self) -> Path:
        key = hashlib.sha256(str(self.saved_path.resolve()).encode()).hexdigest()[:12]
        return pending_dir() / f"{key}-{os.getpid()}.json"

    def _write_saved(self) -> None:
        assert self.saved is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.saved_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.saved, indent=2))
        os.replace(tmp, self.saved_path)
        pointer = self._pointer()
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(json.dumps({"saved": str(self.saved_path.resolve()), "pid": os.getpid()}))

    def save(self) -> None:
        """The original settings, to the run directory, before anything changes."""
        limit = _need(self.dev._get("nvmlDeviceGetPowerManagementLimit"), "nvmlDeviceGetPowerManagementLimit")
        uuid = self.dev.uuid()
        self.saved = {"uuid": uuid.value, "power_limit_mw": int(limit), "touched": [], "pid": os.getpid(),
                      "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "note": "written by layerbench before changing GPU settings; the next layerbench "
                              "command restores them if this file is left behind"}
        self._write_saved()

    def apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Set the point's values; return the record columns of the settings in effect."""
        if not settings:
            self.in_effect = {}
            return {}
        if self.saved is None:
            self.save()
        assert self.saved is not None
        new = [a for a in settings if a not in self.saved["touched"]]
        if new:  # the saved file says what to undo before it is done
            self.saved["touched"] += new
            self._write_saved()
        self.changed = True
        for axis, value in settings.items():
            if axis == "sm_clock_mhz":
                _need(self.dev._get("nvmlDeviceSetGpuLockedClocks", int(value), int(value)),
                      "nvmlDeviceSetGpuLockedClocks")
            elif axis == "memory_clock_mhz":
                _need(self.dev._get("nvmlDeviceSetMemoryLockedClocks", int(value), int(value)),
                      "nvmlDeviceSetMemoryLockedClocks")
            elif axis == "power_limit_w":
                _need(self.dev._get("nvmlDeviceSetPowerManagementLimit", round(float(value) * 1000)),
                      "nvmlDeviceSetPowerManagementLimit")
            else:
                raise GpuSettingsError(f"unknown GPU setting {axis!r}; settings are {', '.join(SETTINGS_AXES)}")
        self.in_effect = self.read(settings)
        return self.in_effect

    def read(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Columns for the record: what was asked for, and what NVML reads back after setting it."""
        out: dict[str, Any] = {f"setting_{k}": v for k, v in settings.items()}
        sm, mem, limit = self.dev.sm_clock_mhz(), self.dev.mem_clock_mhz(), self.dev.power_limit_w()
        out["setting_read_sm_clock_mhz"] = sm.value
        out["setting_read_memory_clock_mhz"] = mem.value
        out["setting_read_power_limit_w"] = limit.value
        return out

    def restore(self) -> None:
        """Put the original settings back (after each point group); the saved file stays."""
        if self.changed and self.saved is not None:
            _restore_from(self.dev, self.saved)
            self.changed = False
        self.in_effect = {}

    def close(self) -> None:
        """Restore and delete the saved file: the end of the run, Ctrl-C, SIGTERM."""
        if self.saved is None:
            return
        self.changed = True  # restore even if an apply failed half-way
        self.restore()
        self.saved_path.unlink(missing_ok=True)
        self._pointer().unlink(missing_ok=True)
        self.say(f"GPU settings restored (power limit {self.saved['power_limit_mw'] / 1000:g} W, "
                 "locked clocks reset)")
        self.saved = None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def restore_leftovers(say: Say = _print, module: Any = None) -> list[Path]:
    """Restore the settings that a crashed run left saved; return the saved files restored.

    Cheap when nothing is pending (one directory listing, no NVML)."""
    root = pending_dir()
    if not root.is_dir():
        return []
    done = []
    for pointer in sorted(root.glob("*.json")):
        try:
            info = json.loads(pointer.read_text())
        except (OSError, ValueError):
            pointer.unlink(missing_ok=True)
            continue
        if _alive(int(info.get("pid", -1))):
            continue  # that run is still going: its settings are its own to restore
        saved_path = Path(info.get("saved", ""))
        if not saved_path.is_file():
            pointer.unlink(missing_ok=True)
            continue
        saved = json.loads(saved_path.read_text())
        device = saved.get("uuid") or 0
        try:
            _restore_from(_open_device(device, module), saved)
        except GpuSettingsError as exc:
            say(f"layerbench: a crashed run left changed GPU settings ({saved_path}) and they could "
                f"not be restored: {exc}")
            continue
        saved_path.unlink(missing_ok=True)
        pointer.unlink(missing_ok=True)
        say(f"layerbench: restored the GPU settings a crashed run left changed ({saved_path}: power limit "
            f"{saved.get('power_limit_mw', 0) / 1000:g} W, locked clocks reset)")
        done.append(saved_path)
    return done
