"""sparseinfer: PowerInfer-style sparse LLM inference for GGUF models.

>>> import sparseinfer as si
>>> model = si.Model("model.gguf")
>>> model.generate("Once upon a time", max_tokens=32)
"""

from importlib.metadata import PackageNotFoundError, version

from .errors import (
    AmbiguousModelFileError,
    CancelledError,
    ContextLengthWarning,
    ContextOverflowError,
    DeviceUnavailableError,
    FetchError,
    ModelFormatError,
    SparseInferError,
    TemplateError,
    UnsupportedModelError,
)
from .fetch import fetch_model
from ._cuda import cuda_info
from .model import Model, Session
from .prompt import format_prompt
# Their types (NeuronProfile, PlacementPlan) and PowerInfer's activation files reader stay
# in sparseinfer.profile and sparseinfer.placement.
from .profile import ProfileError, StaleProfileError, load_profile, profile_model
from .placement import model_costs, plan_device, plan_placement

try:
    __version__ = version("sparseinfer")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AmbiguousModelFileError",
    "CancelledError",
    "ContextLengthWarning",
    "ContextOverflowError",
    "DeviceUnavailableError",
    "FetchError",
    "Model",
    "ModelFormatError",
    "ProfileError",
    "Session",
    "SparseInferError",
    "StaleProfileError",
    "TemplateError",
    "UnsupportedModelError",
    "__version__",
    "cuda_info",
    "fetch_model",
    "format_prompt",
    "load_profile",
    "model_costs",
    "plan_device",
    "plan_placement",
    "profile_model",
]
