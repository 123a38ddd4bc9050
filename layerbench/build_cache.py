"""Compiled kernels and autotuning choices kept across runs and processes, keyed so a change
invalidates them.

The cache lives in ``$LAYERBENCH_CACHE`` (default ``~/.cache/layerbench``; ``off`` turns it off),
one directory per (layerbench version, GPU model and compute capability, library versions: torch,
its CUDA, Triton, CuPy).  Change GPU model or upgrade Triton and a new directory is used.  In it:

* ``triton/``: Triton's own compile cache (``TRITON_CACHE_DIR``), ``cupy/``: CuPy's
  (``CUPY_CACHE_DIR``): both set by ``use_build_cache`` in a worker before its first compile.
  Both key each binary by its own source, so an edited kernel compiles anew;
* ``autotune/``: the config the autotuner chose, one small JSON file per (kernel, argument shapes
  and dtypes, meta-parameters, and the code of the backend that chose it) (``AutotuneChoices``),
  read before tuning: a kernel tuned once on a GPU model is not tuned again, in this process or
  the next.  The cuDNN reference keeps the plan its graph search chose there the same way (keyed by
  cuDNN's versions as well).  The code is each backend's own (``backend_version``: the sources
  under ``kernels/<backend>/``, the modules all backends share and the build-time timer): editing
  a Triton kernel retunes Triton, and leaves the cuDNN searches, which take seconds a point, as they were.

Several workers (``--gpus``) share the directory of their GPU model: each entry is written
atomically (a temporary file, then a rename), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

CACHE_ENV = "LAYERBENCH_CACHE"
CACHE_DIR_ENV = "LAYERBENCH_CACHE_DIR"  # the keyed directory, once use_build_cache chose it
OFF = ("off", "0", "none", "")
KERNEL_ROOT = Path(__file__).resolve().parents[1] / "kernels"
SOURCE_SUFFIXES = (".py", ".cu", ".cuh")
LIBRARIES = ("torch", "triton", "cupy-cuda13x", "cupy-cuda12x", "cupy")


def cache_base(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where caches live, or None when ``LAYERBENCH_CACHE=off``."""
    environ = os.environ if environ is None else environ
    value = environ.get(CACHE_ENV)
    if value is None:
        return Path.home() / ".cache" / "layerbench"
    if value.strip().lower() in OFF:
        return None
    return Path(value).expanduser()


def source_hash(files: Iterable[Path], root: Path) -> str:
    """A hash of the files' names (relative to ``root``) and contents, in a stable order."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: str(p.relative_to(root))):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def layerbench_version() -> str:
    try:
        return metadata.version("layerbench")
    except metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=None)
def backend_version(backend: str, root: Path = KERNEL_ROOT) -> str:
    """The code a backend's tuning choices depend on, as one hash: its sources under
    ``root/backend/``, the modules directly under ``root`` (shared by all backends) and the
    build-time timer (``layerbench/builders.py``), with the layerbench version."""
    own = root / backend
    files = [p for p in own.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()] if own.is_dir() else []
    files += [p for p in root.glob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()]
    timer = Path(__file__).resolve().with_name("builders.py")
    return f"{layerbench_version()}-{source_hash(files, root)}-{source_hash([timer], timer.parent)}"


def library_versions() -> dict[str, str]:
    out = {}
    for dist in LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def cache_key(code: str, gpu: Mapping[str, Any], versions: Mapping[str, Any]) -> str:
    """The directory name for one (layerbench version, GPU model, library versions): any change, a new name."""
    blob = json.dumps({"code": code, "gpu": dict(gpu), "versions": dict(versions)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_env(directory: Path) -> dict[str, str]:
    """The environment that points Triton's and CuPy's caches into ``directory``."""
    return {"TRITON_CACHE_DIR": str(directory / "triton"), "CUPY_CACHE_DIR": str(directory / "cupy"),
            CACHE_DIR_ENV: str(directory)}


def use_build_cache(gpu: Mapping[str, Any], environ: Any = None) -> Path | None:
    """Choose this process's cache directory for ``gpu`` (``{"name", "capability"}``) and point
    Triton's and CuPy's caches there (before anything compiles); None when caching is off."""
    environ = os.environ if environ is None else environ
    base = cache_base(environ)
    if base is None:
        return None
    directory = base / cache_key(layerbench_version(), gpu, library_versions())
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a cache that cannot be written costs compile time, not the run
    for name, value in cache_env(directory).items():
        if name == CACHE_DIR_ENV or name not in environ:  # a cache dir the user set stays theirs
            environ[name] = value
    if environ is os.environ:
        _repoint_cupy(environ["CUPY_CACHE_DIR"])
    return directory


def _repoint_cupy(directory: str) -> None:
    """CuPy reads CUPY_CACHE_DIR once, when its compiler module loads (Triton reads its variable at
    each compile): where CuPy is loaded already (an in-process run), point its disk cache there."""
    compiler = sys.modules.get("cupy.cuda.compiler")
    if compiler is None:
        return
    try:
        backend = compiler._DiskKernelCacheBackend(directory)
        compiler._set_kernel_cache_backend(backend)
    except Exception:  # noqa: BLE001 - another CuPy version: its default cache dir stays
        pass


# ----------------------------------------------------------------------- autotuning choices


def describe_args(args: Iterable[Any]) -> list[Any]:
    """What an autotuning choice depends on in a kernel's arguments: tensors by shape, strides
    and dtype (not by address), other values as they are."""
    out: list[Any] = []
    for a in args:
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            stride = list(a.stride()) if callable(getattr(a, "stride", None)) else None
            out.append({"shape": list(a.shape), "stride": stride, "dtype": str(a.dtype)})
        elif isinstance(a, (int, float, bool, str)) or a is None:
            out.append(a)
        else:
            out.append(repr(a))
    return out


def choice_key(kernel: str, args: Iterable[Any], meta: Mapping[str, Any], backend: str) -> str:
    """The key of one tuning choice: the kernel, its arguments' shapes, strides and dtypes, its
    meta-parameters, and the code of ``backend`` (a directory under ``kernels/``) that chose it."""
    blob = json.dumps({"kernel": kernel, "args": describe_args(args),
                       "meta": {k: describe_args([v])[0] for k, v in sorted(meta.items())},
                       "code": backend_version(backend)},
                      sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class AutotuneChoices:
    """The autotuner's choices in this process (a dict) and on disk (``directory/autotune``)."""

    def __init__(self, directory: Path | None):
        self.directory = directory / "autotune" if directory is not None else None
        self.memory: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self.memory:
            return dict(self.memory[key])
        if self.directory is None:
            return None
        path = self.directory / f"{key}.json"
        try:
            config = json.loads(path.read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.memory[key] = config
        return dict(config)

    def put(self, key: str, config: Mapping[str, Any], note: Mapping[str, Any] | None = None) -> None:
        self.memory[key] = dict(config)
        try:
            plain = json.loads(json.dumps(dict(config))) == dict(config)
        except (TypeError, ValueError):
            plain = False
        if self.directory is None or not plain:  # what JSON cannot hold stays in this process
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self.directory / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"config": dict(config), **dict(note or {})}, default=repr))
            os.replace(tmp, self.directory / f"{key}.json")
        except OSError:
            pass  # a read-only cache costs a retune next time, not the run


_CHOICES: dict[str, AutotuneChoices] = {}


def autotune_choices() -> AutotuneChoices:
    """This process's choices, in the directory ``use_build_cache`` chose (memory only without)."""
    where = os.environ.get(CACHE_DIR_ENV, "")
    if where not in _CHOICES:
        _CHOICES[where] = AutotuneChoices(Path(where) if where else None)
    return _CHOICES[where]
