"""Exceptions raised by sparseinfer. The native engine's errors are mapped onto these."""


class SparseInferError(Exception):
    """Base class of every error sparseinfer raises on purpose."""


class ModelFormatError(SparseInferError, ValueError):
    """The model file is not a valid GGUF file, or its contents are inconsistent."""


class UnsupportedModelError(SparseInferError, ValueError):
    """The file is valid but uses an architecture, type or feature not implemented."""


class ContextOverflowError(SparseInferError, ValueError):
    """More tokens than the context window (n_ctx) holds."""


class CancelledError(SparseInferError, RuntimeError):
    """The call was ended by cancel() from another thread before it had a result (a
    logits() call; generate() and chat() instead return the text produced so far)."""


class DeviceUnavailableError(SparseInferError, RuntimeError):
    """The requested device (e.g. "cuda") has no backend in this build or on this machine."""


class FetchError(SparseInferError, OSError):
    """A model file could not be found or downloaded: unknown repository, revision or file,
    no network and no cached copy, or a download that failed its checksum."""


class AmbiguousModelFileError(SparseInferError, ValueError):
    """More than one file of a repository matches the requested name or pattern; `choices`
    lists them so that the caller can name one."""

    def __init__(self, message: str, choices: "list[str]") -> None:
        super().__init__(message)
        self.choices = list(choices)


class TemplateError(SparseInferError, ValueError):
    """A chat template is unknown, fails to render, or tries to reach Python internals
    (templates inside GGUF files are untrusted and run in a sandbox)."""


class ContextLengthWarning(UserWarning):
    """n_ctx is longer than the context the model was trained for (its file's context_length):
    text past that length may lose coherence."""
