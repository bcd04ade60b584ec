"""The native module: thin bindings over the C++ engine. Private; use sparseinfer.Model."""

from typing import Optional, Sequence, Union

import numpy as np

def system_info() -> dict[str, object]:
    """{'isa': level in use, 'available_isas': [...], 'hardware_threads': int}."""

def memory_read_bandwidth(bytes: int = 1 << 30, n_threads: int = 1, repeats: int = 3) -> float:
    """Bytes per second that n_threads threads stream from a buffer of `bytes` (best of
    `repeats` passes): the ceiling of decoding, which the benchmarks report against."""

def read_gguf_info(path: str) -> dict[str, object]:
    """Header summary without loading weights: {'version', 'powerinfer', 'metadata': dict,
    'tensors': [(name, type_name, shape tuple), ...]}."""

class Tokenizer:
    def __init__(self, path: str) -> None: ...  # vocabulary of a GGUF file, no weights
    n_vocab: int
    bos_id: int  # -1 when absent
    eos_id: int
    add_bos: bool
    def encode(self, text: Union[str, bytes], add_bos: bool = True, parse_special: bool = False) -> list[int]: ...
    def token_to_bytes(self, token: int, render_special: bool = False) -> bytes: ...
    def decode(self, tokens: Sequence[int], render_special: bool = False) -> bytes: ...
    def is_end_of_generation(self, token: int) -> bool: ...

class StreamDecoder:
    def __init__(self, tokenizer: Tokenizer) -> None: ...
    def feed(self, token: int) -> str: ...
    def flush(self) -> str: ...

class Model:
    """Immutable after load; shared by sessions. The GIL is released while loading."""
    # sparse_threshold None: the file's; prepare_weights=False: bound as stored, only to be
    # priced (device_costs), never run
    def __init__(self, path: str, predictor_q8: Union[bool, str] = "auto",
                 sparse_threshold: Optional[float] = None, prepare_weights: bool = True) -> None: ...
    predictor_q8_layers: list[bool]  # per layer: its predictor runs as an 8-bit copy
    path: str
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ctx_train: int
    is_powerinfer: bool
    sparse_threshold: float
    tokenizer: Tokenizer
    def metadata(self) -> dict[str, object]: ...

def device_costs(model: Model, n_ctx: int) -> dict[str, object]:
    """What each part of the model takes on a GPU, as DeviceModel uploads and GpuForward
    allocates it: {'n_neurons', 'neuron_bytes', 'fixed_bytes' (lists per layer),
    'shared_bytes', 'batch_bytes'} (placement.model_costs)."""

class DeviceModel:
    """A model's weights on a GPU for one placement, shared by the sessions that name it."""
    def __init__(self, model: Model, cuda_plugin: str, cuda_device: int = 0, n_gpu_layers: int = -1,
                 hot_neurons: Optional[Sequence[np.ndarray]] = None) -> None:
        """cuda_plugin: the plugin library's path (sparseinfer._cuda finds it); the last
        n_gpu_layers layers (-1: all); per layer the ascending hot neuron ids of a PowerInfer
        file (None: every neuron). A plugin of another ABI, or scaled RoPE (linear, YaRN,
        frequency factors) on GPU layers, raises UnsupportedModelError, a failing device call
        SparseInferError (MemoryError when the GPU is out of memory)."""
    weight_bytes: int
    first_gpu_layer: int
    def hot_counts(self) -> list[int]: ...

class Session:
    """KV cache, scratch buffers and a thread pool for one sequence."""
    def __init__(self, model: Model, n_ctx: int, n_threads: int, sparse: bool = False,
                 device: Optional["DeviceModel"] = None) -> None:
        """device: the model's weights on a GPU (a DeviceModel of this model): its GPU layers
        run there; None runs on the CPU. A dense session of a PowerInfer file needs every
        neuron of the GPU layers hot (ValueError otherwise)."""
    on_gpu: bool
    n_ctx: int
    n_past: int  # tokens in the KV cache
    sparse: bool
    cancel_requested: bool
    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> None:
        """Appends tokens to the sequence (GIL released). Raises ContextOverflowError when
        n_past + len(tokens) > n_ctx, ValueError for an id outside the vocabulary, and
        CancelledError (n_past unchanged) once request_cancel() was called."""
    def request_cancel(self) -> None: ...  # from any thread; evals fail until clear_cancel()
    def clear_cancel(self) -> None: ...
    def active_fractions(self) -> list[float]: ...
    def reset_stats(self) -> None: ...
    # Neuron firing counts (sparseinfer.profile): PowerInfer files only, off by default.
    neuron_counting: bool
    neuron_count_tokens: int  # tokens counted since the last reset_neuron_counts()
    def set_neuron_counting(self, on: bool) -> None:
        """Raises UnsupportedModelError for a dense SiLU model (no sparsity to count)."""
    def neuron_counts(self) -> np.ndarray:
        """int64 (n_layer, n_ff): per neuron, the tokens for which its activation was nonzero
        (on the sparse path: predicted active and nonzero)."""
    def reset_neuron_counts(self) -> None: ...
    # The predictor against the neurons that fire (quality reports): PowerInfer files, dense
    # sessions, off by default.
    predictor_auditing: bool
    def set_predictor_audit(self, on: bool) -> None:
        """Raises UnsupportedModelError for a file without predictors, ValueError for a sparse
        session (which never computes the neurons it leaves out)."""
    def predictor_audit(self) -> np.ndarray:
        """int64 (n_layer, 3): per layer, the neurons predicted active, those that fired
        (activation nonzero) and both, summed over the tokens since the last reset."""
    def reset_predictor_audit(self) -> None: ...
    def logits(self) -> np.ndarray:
        """float32 copy of the last eval's logits: (len(tokens), n_vocab) if all_logits else (1, n_vocab)."""
    def sample(self, sampler: "Sampler") -> int:
        """Samples from the last row of the last eval's logits."""
    def reset(self) -> None: ...
    def truncate(self, n_past: int) -> None: ...

class Sampler:
    def __init__(self, temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repeat_penalty: float = 1.0, repeat_last_n: int = 64,
                 seed: int = 0) -> None: ...
    def sample(self, logits: np.ndarray) -> int: ...  # 1-D float32 logits
    def accept(self, token: int) -> None: ...
    def reset(self) -> None: ...


class testing:  # a submodule: hooks for sparseinfer's tests, not an API
    @staticmethod
    def kernel_row_dot(isa: str, ggml_type: int, weight: bytes, x: np.ndarray) -> np.ndarray:
        """One raw weight row dotted with one activation (n,) or four (4, n), at ISA level `isa`."""
    @staticmethod
    def kernel_row_axpy(isa: str, ggml_type: int, weight: bytes, a: float, y: np.ndarray) -> np.ndarray:
        """y + a * row, at ISA level `isa`."""
    @staticmethod
    def dequantize_row(ggml_type: int, data: bytes, n: int) -> np.ndarray:
        """The reference dequantisation of one raw row of n elements."""
    @staticmethod
    def core_share_stats() -> dict[str, int]:
        """How the process's sessions share its cores: {'capacity', 'in_use', 'shares', 'narrowed'}."""
