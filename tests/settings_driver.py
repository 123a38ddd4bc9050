"""Runs the ``layerbench`` command with the fake NVML of tests/fake_nvml.py for GPU settings.

The fake's settings live in the JSON file named by FAKE_NVML_SETTINGS, so that a run killed by a
signal and the next command see one GPU.  ``FAKE_SLOW_S`` makes every point group sleep first
(a run long enough to be sent SIGTERM in the middle)."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_nvml import FakeClock, FakeGPU, FakePynvml  # noqa: E402

from layerbench.measure import gpu_settings  # noqa: E402

gpu_settings.NVML_MODULE = FakePynvml(FakeGPU(FakeClock()), settings_file=os.environ["FAKE_NVML_SETTINGS"])

if os.environ.get("FAKE_SLOW_S"):
    from layerbench.run import sweep_runner  # noqa: E402

    run = sweep_runner.GroupWriter.run

    def slow(self, executor, impls):  # type: ignore[no-untyped-def]
        print("group started", file=sys.stderr, flush=True)
        time.sleep(float(os.environ["FAKE_SLOW_S"]))
        return run(self, executor, impls)

    sweep_runner.GroupWriter.run = slow  # type: ignore[method-assign]

from layerbench.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
