"""kernels.cupy without CuPy: the package imports, the kernels register (so ``layerbench list
impls`` shows them), and building one raises ``Unavailable`` with the reason and the install line.

CuPy's absence is simulated in a fresh interpreter (``sys.modules["cupy"] = None`` makes every
``import cupy`` fail), so the check runs whether or not CuPy is installed here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["cupy"] = None  # any `import cupy` now raises ImportError

    import torch

    import kernels.cupy
    from kernels.cupy import igemm_plan, models, pool_plan, fft_plan, sources  # plans and models load too
    from layerbench import registry
    from layerbench.dtypes import get_dtype
    from layerbench.errors import Unavailable
    from layerbench.layers import ReLU

    impls = {(i.layer, i.name) for i in registry.all_implementations() if i.backend == "cupy"}
    assert impls == {("conv2d", "cupy"), ("linear", "cupy"), ("pool2d", "cupy"), ("relu", "cupy")}, impls
    assert "cupy" not in registry.load_errors(), registry.load_errors()
    spec = ReLU(1, 2, 3, 4)
    x = torch.randn(spec.input_shape)
    try:
        registry.get("relu", "cupy").build(spec, get_dtype("fp32"), "NCHW", {"x": x}, torch.empty_like(x))
    except Unavailable as exc:
        print("UNAVAILABLE:", exc)
    else:
        raise SystemExit("building a CuPy kernel without CuPy did not raise Unavailable")
""")


def test_cupy_kernels_register_and_refuse_without_cupy() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "UNAVAILABLE: CuPy is not installed: pip install 'layerbench[cupy]'" in r.stdout, r.stdout
