"""Checks an installed sparseinfer-cuda wheel (cibuildwheel's test step for cuda/).

Loads sparseinfer's own loader (src/sparseinfer/_cuda.py, standard library only) by path, so
the check needs neither the core nor a GPU: the plugin must be found in its package, load
(with NVIDIA's runtime from site-packages), speak the core's ABI, and then either report the
GPUs, run a kernel and copy a buffer there and back on each, or say cleanly that there is no
GPU or driver.
"""

import importlib.util
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "sparseinfer_cuda_loader", os.path.join(here, "..", "src", "sparseinfer", "_cuda.py"))
loader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loader)

info = loader.cuda_info()
print(json.dumps(info, indent=2))
if info["source"] is None or not info["source"].startswith("sparseinfer-cuda"):
    sys.exit(f"the plugin was not found in an installed sparseinfer-cuda package: {info['reason']}")
if info["status"] == loader.OK:
    for device in info["devices"]:
        loader.plugin().self_test(device["index"])
        # A context, and a buffer there and back through its stream.
        with loader.plugin().context(device["index"]) as ctx:
            data = bytes(range(256)) * 16
            address = ctx.to_device(data)
            back = bytearray(len(data))
            ctx.download(address, back)
            if bytes(back) != data:
                sys.exit(f"device {device['index']}: a buffer came back changed")
        print(f"device {device['index']} ({device['name']}): probe kernel ran, memory round trip ok")
elif info["status"] != loader.NO_DEVICE:
    sys.exit(f"the plugin did not load cleanly: {info['reason']}")
print("ok:", info["reason"])
