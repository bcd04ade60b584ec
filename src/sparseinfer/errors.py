"""Exceptions raised by sparseinfer. The native engine's errors are mapped onto these."""


class SparseInferError(Exception):
    """Base class of every error sparseinfer raises on purpose."""


class ModelFormatError(SparseInferError, ValueError):
    """The model file is not a valid GGUF file, or its contents are inconsistent."""


class UnsupportedModelError(SparseInferError, ValueError):
    """The file is valid but uses an architecture, type or feature not implemented."""


class ContextOverflowError(SparseInferError, ValueError):
    """More tokens than the context window (n_ctx) holds."""


class DeviceUnavailableError(SparseInferError, RuntimeError):
    """The requested device (e.g. "cuda") has no backend in this build or on this machine."""
