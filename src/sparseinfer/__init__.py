"""sparseinfer: PowerInfer-style sparse LLM inference for GGUF models.

>>> import sparseinfer as si
>>> model = si.Model("model.gguf")
>>> model.generate("Once upon a time", max_tokens=32)
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    ContextOverflowError,
    DeviceUnavailableError,
    ModelFormatError,
    SparseInferError,
    UnsupportedModelError,
)
from .model import Model

try:
    __version__ = version("sparseinfer")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ContextOverflowError",
    "DeviceUnavailableError",
    "Model",
    "ModelFormatError",
    "SparseInferError",
    "UnsupportedModelError",
    "__version__",
]
