#!/usr/bin/env bash
# One-off look at the GPU machine: versions, library paths and meters layerbench relies on.
set -u
nvidia-smi --query-gpu=name,uuid,driver_version,power.limit,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
python3 - <<'PY'
import importlib, os, glob, sys, time
import torch, triton, numpy
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "numpy", numpy.__version__)
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
p = torch.cuda.get_device_properties(0)
print("props", p.name, p.multi_processor_count, "L2", getattr(p, "L2_cache_size", None), "mem", p.total_memory)
for m in ["cupy", "cuda.bindings", "pynvml", "cudnn", "nvidia.cudnn", "nvidia.cuda_nvrtc", "nvidia.cuda_runtime", "hypothesis", "pandas", "pyarrow", "matplotlib", "rich"]:
    try:
        mod = importlib.import_module(m); print("import", m, getattr(mod, "__version__", ""), getattr(mod, "__path__", [getattr(mod, "__file__", "")]))
    except Exception as e:
        print("import", m, "FAILED", e)
for pat in ["/usr/local/lib/python3*/dist-packages/nvidia/*", "/opt/torch/.venv/lib/python3*/site-packages/nvidia/*"]:
    for d in sorted(glob.glob(pat)): print("nvidia pkg", d)
import nvidia.cudnn
for d in nvidia.cudnn.__path__:
    print("cudnn lib", sorted(os.listdir(os.path.join(d, "lib"))))
for hdr in ["cuda_fp16.h", "cuda_bf16.h", "mma.h"]:
    print("hdr", hdr, glob.glob(f"/opt/torch/.venv/lib/python3*/site-packages/nvidia/**/{hdr}", recursive=True)[:3], glob.glob(f"/usr/local/cuda*/include/{hdr}")[:2])
import cupy
print("cupy", cupy.__version__, cupy.cuda.runtime.runtimeGetVersion(), "nvrtc", cupy.cuda.nvrtc.getVersion())
k = cupy.RawModule(code='#include <cuda_fp16.h>\n#include <cuda_bf16.h>\nextern "C" __global__ void f(__half* a){a[0]=__float2half(1.f);}', options=("-std=c++17",))
try:
    k.get_function("f"); print("cupy fp16 header compile OK")
except Exception as e: print("cupy fp16 compile FAILED", e)
import pynvml as n
n.nvmlInit(); h = n.nvmlDeviceGetHandleByIndex(0)
t0 = time.perf_counter(); e0 = n.nvmlDeviceGetTotalEnergyConsumption(h); t1 = time.perf_counter()
print("nvml energy mJ", e0, "query s", t1 - t0)
# counter cadence over 1.5 s at 5 ms polls
last = e0; changes = []; t_start = time.perf_counter()
while time.perf_counter() - t_start < 1.5:
    e = n.nvmlDeviceGetTotalEnergyConsumption(h)
    if e != last: changes.append(round(time.perf_counter() - t_start, 4)); last = e
    time.sleep(0.005)
print("counter updates at", changes)
print("power mW", n.nvmlDeviceGetPowerUsage(h), "limit", n.nvmlDeviceGetEnforcedPowerLimit(h), "temp", n.nvmlDeviceGetTemperature(h, 0))
for fn in ["nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"]:
    print(fn, hasattr(n, fn))
print("rapl", glob.glob("/sys/class/powercap/intel-rapl:*")[:4])
PY
which nvcc; nvcc --version | tail -2
