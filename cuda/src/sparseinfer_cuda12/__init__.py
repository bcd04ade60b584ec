"""sparseinfer's CUDA 12 backend: a plugin library that `sparseinfer` loads at run time.

Nothing here is meant to be imported: sparseinfer finds `libsparseinfer_cuda.so`
(`sparseinfer_cuda.dll` on Windows) in this package's directory, loads NVIDIA's CUDA runtime
from the `nvidia-cuda-runtime-cu12` wheel first, and reports what it found in
`sparseinfer.cuda_info()` and `python -m sparseinfer info --system`.
"""

CUDA_MAJOR = 12
