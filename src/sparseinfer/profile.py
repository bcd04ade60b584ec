"""Neuron activation profiles: how often each FFN neuron fires, the input of the hot/cold
placement plan (sparseinfer.placement).

A profile counts, per layer and FFN neuron, the tokens for which the neuron's activation
was nonzero when the model ran densely (every neuron computed) over some text. Neurons
that fire often are "hot" and belong on the GPU (PowerInfer's placement; DESIGN.md, CUDA).

File format (``MODEL.profile.npz`` next to the model by default): a NumPy ``.npz`` archive,
read with ``allow_pickle=False``, holding

    format             str    "sparseinfer.neuron-profile"
    version            int    1 (files of a newer version are refused)
    source             str    "sparseinfer" (this module) or "powerinfer" (imported)
    model_name         str    the model file's name when profiled (informative)
    model_size         int    the model file's size in bytes, -1 when unknown
    model_fingerprint  str    SHA-256 of the size and the first and last MiB of the model
                              file ("" when unknown); size and fingerprint together decide
                              whether a profile belongs to a model file (staleness check)
    tokens             int    tokens counted (0 when unknown: PowerInfer's files)
    n_ctx              int    window length used when profiling (0 when unknown)
    n_layer            int
    counts_0 ... counts_{n_layer-1}
                       int64 (n_ff,) firing counts per layer (float64 for PowerInfer's
                              statistics, which need not be integers)

PowerInfer's published statistics are a folder ``activation/`` next to the model holding
one ``activation_{i}.pt`` per layer (PowerInfer's llama.cpp looks there, and its
powerinfer-py solver torch.load()s them: FACTS.md, GPU placement side file). They are
torch-saved 1-D tensors. :func:`load_powerinfer_activations` reads them **without torch**
and without running their pickles: a restricted unpickler accepts only the handful of
names a saved tensor uses (torch's tensor-rebuild function, storage types, OrderedDict)
and reads the raw storage bytes itself, so a hostile file can at worst be refused.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from . import _arguments as _args
from . import _core
from .errors import SparseInferError

PathLike = Union[str, "os.PathLike[str]"]

PROFILE_SUFFIX = ".profile.npz"
FORMAT = "sparseinfer.neuron-profile"
FORMAT_VERSION = 1
POWERINFER_ACTIVATION_DIR = "activation"

# Bounds that keep a hostile file from making us allocate much: the largest published
# models have ~80 layers x 28672 neurons, i.e. ~18 MB of int64 counts.
_MAX_ARCHIVE_BYTES = 1 << 30      # uncompressed bytes in one .npz or .pt archive
_MAX_PICKLE_BYTES = 1 << 20       # a saved tensor's data.pkl is a few hundred bytes
_MAX_LAYERS = 10_000
_FINGERPRINT_SPAN = 1 << 20


class ProfileError(SparseInferError, ValueError):
    """A profile file is missing, broken, hostile, of an unknown version, or does not
    fit the model."""


class StaleProfileError(ProfileError):
    """The profile was made for a different model file (size or content differs)."""


@dataclass(frozen=True)
class NeuronProfile:
    """Per-layer firing counts of FFN neurons. ``counts[l][j]``: tokens (of ``tokens``)
    for which neuron j of layer l had a nonzero activation."""

    counts: tuple[np.ndarray, ...]
    tokens: int = 0
    model_name: str = ""
    model_size: int = -1
    model_fingerprint: str = ""
    source: str = "sparseinfer"
    n_ctx: int = 0

    @property
    def n_layer(self) -> int:
        return len(self.counts)

    def frequencies(self) -> list[np.ndarray]:
        """Per layer, the fraction of tokens for which each neuron fired (counts over the
        largest count when the token count is unknown)."""
        scale = self.tokens if self.tokens > 0 else max((float(c.max(initial=0)) for c in self.counts), default=0.0)
        return [np.asarray(c, dtype=np.float64) / scale if scale > 0 else np.zeros(len(c)) for c in self.counts]

    def check_model(self, model_path: PathLike) -> None:
        """Raises StaleProfileError when the profile was made for another file than
        model_path. Profiles that do not record their model (PowerInfer's) pass."""
        if self.model_size < 0 and not self.model_fingerprint:
            return
        size, fingerprint = _model_identity(model_path)
        if size != self.model_size or (self.model_fingerprint and fingerprint != self.model_fingerprint):
            raise StaleProfileError(
                f"the neuron profile was made for {self.model_name or 'another file'!r} "
                f"({self.model_size} bytes), not for {os.fspath(model_path)!r} ({size} bytes, "
                f"{'same size but different content' if size == self.model_size else 'a different size'}); "
                f"profile the model again (python -m sparseinfer profile)")

    def check_shape(self, n_layer: int, n_ff: Union[int, Sequence[int]]) -> None:
        """Raises ProfileError unless there is one count per neuron of every layer."""
        sizes = [int(n_ff)] * n_layer if isinstance(n_ff, (int, np.integer)) else [int(n) for n in n_ff]
        if self.n_layer != n_layer or [len(c) for c in self.counts] != sizes:
            raise ProfileError(
                f"the neuron profile has {self.n_layer} layers of "
                f"{sorted(set(len(c) for c in self.counts))} neurons; the model has {n_layer} "
                f"layers of {sorted(set(sizes))}")

    def save(self, path: PathLike) -> Path:
        """Writes the profile as a .npz file (format in the module docstring); returns the path."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {
            "format": np.array(FORMAT), "version": np.array(FORMAT_VERSION, dtype=np.int64),
            "source": np.array(self.source), "model_name": np.array(self.model_name),
            "model_size": np.array(self.model_size, dtype=np.int64),
            "model_fingerprint": np.array(self.model_fingerprint),
            "tokens": np.array(self.tokens, dtype=np.int64), "n_ctx": np.array(self.n_ctx, dtype=np.int64),
            "n_layer": np.array(self.n_layer, dtype=np.int64),
        }
        for i, c in enumerate(self.counts):
            arrays[f"counts_{i}"] = np.ascontiguousarray(c)
        # Written under a temporary name and renamed, so that a reader never sees half a file.
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
        return path


def default_profile_path(model_path: PathLike) -> Path:
    """MODEL.profile.npz, next to the model file."""
    return Path(os.fspath(model_path) + PROFILE_SUFFIX)


# ---- profiling ------------------------------------------------------------------------------

def profile_model(model: Union[PathLike, "_core.Model", object], texts: Union[str, Iterable[str]], *,
                  n_ctx: int = 512, n_threads: Optional[int] = None,
                  output: Optional[PathLike] = None) -> NeuronProfile:
    """Counts how often each FFN neuron fires while the model reads `texts`.

    model: a path, a native ``sparseinfer._core.Model``, or anything with a ``path``
    attribute (a ``sparseinfer.Model`` is reopened from its file; weights are
    memory-mapped, so that costs little). It must be a ReLU PowerInfer file (magic PWRI):
    a dense SiLU model has no sparsity to profile (UnsupportedModelError).
    texts: one text or several. Each is tokenized (BOS first when the model's tokenizer
    adds one) and cut into windows of n_ctx tokens; each window is a fresh sequence, run
    densely (every neuron computed), and every token of it is counted.
    output: also write the profile there (e.g. ``default_profile_path(path)``).
    """
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, (int, np.integer)) or n_ctx < 1:
        raise ValueError(f"n_ctx must be a positive integer, got {n_ctx!r}")
    native = _native_model(model)
    path = native.path
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    threads = _args.thread_count(n_threads)
    session = _core.Session(native, int(n_ctx), threads, sparse=False)
    session.set_neuron_counting(True)  # raises for a dense SiLU model
    tokenizer = native.tokenizer
    for text in texts:
        ids = tokenizer.encode(text, add_bos=tokenizer.add_bos)
        for start in range(0, len(ids), n_ctx):
            session.reset()
            session.eval(ids[start:start + n_ctx])
    size, fingerprint = _model_identity(path)
    profile = NeuronProfile(
        counts=tuple(np.array(row, dtype=np.int64) for row in session.neuron_counts()),
        tokens=int(session.neuron_count_tokens), model_name=os.path.basename(path),
        model_size=size, model_fingerprint=fingerprint, source="sparseinfer", n_ctx=int(n_ctx))
    if profile.tokens == 0:
        raise ValueError("the texts hold no tokens to profile")
    if output is not None:
        profile.save(output)
    return profile


def _native_model(model: object) -> "_core.Model":
    # Profiles run densely: the predictors are not read, so they stay as stored.
    if isinstance(model, _core.Model):
        return model
    if isinstance(model, (str, os.PathLike)):
        return _core.Model(os.fspath(model), predictor_q8=False)
    path = getattr(model, "path", None)
    if isinstance(path, (str, os.PathLike)):
        return _core.Model(os.fspath(path), predictor_q8=False)
    raise TypeError(f"model must be a path or a model, not {type(model).__name__}")


def _model_identity(path: PathLike) -> tuple[int, str]:
    """(size, fingerprint): SHA-256 of the size and the first and last MiB of the file.
    Cheap for multi-GB files, and a GGUF file's header (metadata, tensor index) is in its
    first MiB while a re-quantised or re-converted file changes its size or its bytes."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        h = hashlib.sha256(str(size).encode())
        f.seek(0)
        h.update(f.read(_FINGERPRINT_SPAN))
        if size > _FINGERPRINT_SPAN:
            f.seek(max(_FINGERPRINT_SPAN, size - _FINGERPRINT_SPAN))
            h.update(f.read(_FINGERPRINT_SPAN))
    return size, h.hexdigest()


# ---- reading our own files ------------------------------------------------------------------

def load_profile(path: PathLike, *, model_path: Optional[PathLike] = None) -> NeuronProfile:
    """Reads a .npz profile (format in the module docstring). With model_path, also checks
    that it belongs to that file (StaleProfileError otherwise). Never unpickles."""
    where = os.fspath(path)
    try:
        _check_npz_members(where)
        with np.load(where, allow_pickle=False) as data:
            fields = {name: data[name] for name in data.files}
    except ProfileError:
        raise
    except FileNotFoundError:
        raise ProfileError(f"{where}: no such profile file") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        raise ProfileError(f"{where}: not a readable neuron profile ({error})") from None

    def scalar(name: str, kind: str):
        if name not in fields:
            raise ProfileError(f"{where}: not a sparseinfer neuron profile (no {name!r} entry)")
        a = fields[name]
        if a.ndim != 0 or a.dtype.kind not in kind:
            raise ProfileError(f"{where}: entry {name!r} has the wrong type ({a.dtype}, shape {a.shape})")
        return a.item()

    if scalar("format", "U") != FORMAT:
        raise ProfileError(f"{where}: not a sparseinfer neuron profile (format {fields['format'].item()!r})")
    version = scalar("version", "iu")
    if version < 1 or version > FORMAT_VERSION:
        raise ProfileError(f"{where}: profile format version {version} is not supported (this "
                           f"sparseinfer reads version {FORMAT_VERSION}; a newer one wrote it?)")
    n_layer = scalar("n_layer", "iu")
    tokens = scalar("tokens", "iu")
    if not 1 <= n_layer <= _MAX_LAYERS:
        raise ProfileError(f"{where}: n_layer {n_layer} is out of range")
    if tokens < 0:
        raise ProfileError(f"{where}: negative token count {tokens}")
    counts = []
    for i in range(n_layer):
        name = f"counts_{i}"
        if name not in fields:
            raise ProfileError(f"{where}: layer {i} has no counts ({name!r} missing)")
        counts.append(_checked_counts(fields[name], f"{where}: layer {i}", tokens))
    profile = NeuronProfile(
        counts=tuple(counts), tokens=int(tokens), model_name=str(scalar("model_name", "U")),
        model_size=int(scalar("model_size", "iu")), model_fingerprint=str(scalar("model_fingerprint", "U")),
        source=str(scalar("source", "U")), n_ctx=int(scalar("n_ctx", "iu")))
    if model_path is not None:
        profile.check_model(model_path)
    return profile


def _checked_counts(a: np.ndarray, what: str, tokens: int) -> np.ndarray:
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iuf":
        raise ProfileError(f"{what}: counts must be a non-empty 1-D numeric array, got {a.dtype} {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ProfileError(f"{what}: counts hold NaN or infinity")
        a = a.astype(np.float64)
    else:
        a = a.astype(np.int64)
    if a.min() < 0:
        raise ProfileError(f"{what}: negative counts")
    if tokens > 0 and a.max() > tokens:
        raise ProfileError(f"{what}: a neuron fired {a.max()} times in {tokens} tokens")
    return a


def _check_npz_members(path: str) -> None:
    """Refuses an archive whose members are not plain .npy arrays that fit their declared
    sizes, before NumPy allocates anything from a header's shape."""
    with zipfile.ZipFile(path) as zf:
        members = zf.infolist()
        if sum(m.file_size for m in members) > _MAX_ARCHIVE_BYTES:
            raise ProfileError(f"{path}: the archive is too large to be a neuron profile")
        for m in members:
            if not m.filename.endswith(".npy"):
                raise ProfileError(f"{path}: unexpected member {m.filename!r}")
            with zf.open(m) as f:
                try:
                    major, _ = np.lib.format.read_magic(f)
                    if major == 1:
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif major == 2:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise ValueError(f"unsupported .npy version {major}")
                except ValueError as error:
                    raise ProfileError(f"{path}: member {m.filename!r} is not a .npy array ({error})") from None
            if dtype.hasobject:
                raise ProfileError(f"{path}: member {m.filename!r} holds Python objects; refused")
            if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > m.file_size:
                raise ProfileError(f"{path}: member {m.filename!r} is shorter than its shape {shape}")


# ---- PowerInfer's activation statistics -----------------------------------------------------

def powerinfer_activation_dir(model_path: PathLike) -> Path:
    """Where PowerInfer looks for a model's statistics: ``activation/`` in its folder."""
    return Path(os.fspath(model_path)).resolve().parent / POWERINFER_ACTIVATION_DIR


def load_powerinfer_activations(folder: PathLike) -> NeuronProfile:
    """Reads PowerInfer's ``activation_{i}.pt`` files (one torch-saved 1-D tensor of counts
    per layer, layers numbered from 0 without gaps) into a profile with source
    "powerinfer" and an unknown token count. Needs no torch and runs no pickled code."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProfileError(f"{folder}: no PowerInfer activation folder")
    layers: dict[int, Path] = {}
    for entry in folder.iterdir():
        m = re.fullmatch(r"activation_(\d+)\.pt", entry.name)
        if m:
            layers[int(m.group(1))] = entry
    if not layers:
        raise ProfileError(f"{folder}: no activation_N.pt files")
    missing = sorted(set(range(max(layers) + 1)) - set(layers))
    if missing or len(layers) > _MAX_LAYERS:
        raise ProfileError(f"{folder}: activation files for layers {missing[:5]} are missing")
    counts = tuple(_checked_counts(read_torch_tensor(layers[i]).astype(np.float64, copy=False),
                                   f"{layers[i]}", 0) for i in range(len(layers)))
    return NeuronProfile(counts=counts, tokens=0, source="powerinfer")


# torch's storage classes, by the name a saved tensor pickles them under, and their dtypes.
_TORCH_STORAGES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "LongStorage": "i8",
    "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, np.dtype(_TORCH_STORAGES[name])


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch-saved tensor: only the names such a pickle uses resolve, and each
    resolves to our own reader, never to torch or to any other code."""

    def __init__(self, data: bytes, read_storage) -> None:
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage
        # Elements all rebuilt tensors may hold together: a pickle may rebuild many views
        # of one storage, and each is a copy.
        self._elements_left = _MAX_ARCHIVE_BYTES // 8

    def _rebuild(self, storage, offset, size, stride, *rest):
        tensor = _rebuild_tensor(storage, offset, size, stride)
        self._elements_left -= tensor.size
        if self._elements_left < 0:
            raise ProfileError("the pickle rebuilds more tensor data than the file holds")
        return tensor

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise ProfileError(f"refusing to load {module}.{name}: a saved tensor of counts does not need it")

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
                or not isinstance(pid[4], int)):
            raise ProfileError(f"unexpected storage reference {pid!r:.80}")
        return self._read_storage(pid[1].dtype, pid[2], pid[4])


def _rebuild_tensor(storage, offset, size, stride) -> np.ndarray:
    """A copy of the strided view (offset, size, stride in elements) of a storage, checked
    to lie inside it and to be no larger than it (a counts tensor never repeats elements)."""
    if not isinstance(storage, np.ndarray):
        raise ProfileError("a tensor without a storage")
    if (not isinstance(offset, int) or not isinstance(size, tuple) or not isinstance(stride, tuple)
            or len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in size + stride)
            or offset < 0):
        raise ProfileError("a tensor with a malformed shape")
    if any(s == 0 for s in size):
        return np.zeros(size, dtype=storage.dtype)
    if int(np.prod(size, dtype=np.float64)) > storage.size:
        raise ProfileError("a tensor larger than its storage")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ProfileError("a tensor reaches past the end of its storage")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)


def read_torch_tensor(path: PathLike) -> np.ndarray:
    """The numeric array of a torch.save()d tensor (torch's zip format, torch >= 1.6),
    read by a restricted unpickler (see the module docstring). ProfileError for anything
    else, a hostile pickle included."""
    where = os.fspath(path)
    try:
        if not zipfile.is_zipfile(where):
            raise ProfileError(f"{where}: not a torch zip file (files saved by torch < 1.6 "
                               f"and other pickles are not read)")
        with zipfile.ZipFile(where) as zf:
            members = {m.filename: m for m in zf.infolist()}
            if sum(m.file_size for m in members.values()) > _MAX_ARCHIVE_BYTES:
                raise ProfileError(f"{where}: the archive is too large")
            pickles = [name for name in members if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise ProfileError(f"{where}: not a torch-saved tensor (no single <name>/data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            if members[pickles[0]].file_size > _MAX_PICKLE_BYTES:
                raise ProfileError(f"{where}: data.pkl is too large for a saved tensor")
            order = "<"
            if prefix + "byteorder" in members:
                text = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
                if text not in ("little", "big"):
                    raise ProfileError(f"{where}: unknown byte order {text!r:.20}")
                order = "<" if text == "little" else ">"
            storages: dict[str, np.ndarray] = {}

            def read_storage(dtype: np.dtype, key: str, numel: int) -> np.ndarray:
                name = prefix + "data/" + key
                if name not in members:
                    raise ProfileError(f"{where}: storage {key!r:.40} is missing")
                if key not in storages:
                    if numel < 0 or numel * dtype.itemsize != members[name].file_size:
                        raise ProfileError(f"{where}: storage {key!r:.40} does not hold {numel} elements")
                    raw = zf.read(name)
                    storages[key] = np.frombuffer(raw, dtype=dtype.newbyteorder(order)).astype(dtype.newbyteorder("="))
                return storages[key]

            result = _RestrictedUnpickler(zf.read(pickles[0]), read_storage).load()
    except ProfileError:
        raise
    except FileNotFoundError:
        raise ProfileError(f"{where}: no such file") from None
    except Exception as error:  # a broken or hostile pickle: whatever it raises, refuse it
        raise ProfileError(f"{where}: not a readable torch tensor ({type(error).__name__}: {error})") from None
    if not isinstance(result, np.ndarray):
        raise ProfileError(f"{where}: holds a {type(result).__name__}, not a tensor")
    if result.ndim != 1:
        raise ProfileError(f"{where}: expected a 1-D tensor of counts, got shape {result.shape}")
    return result


# ---- finding a model's profile --------------------------------------------------------------

def find_profile(model_path: PathLike) -> Optional[NeuronProfile]:
    """The model's own profile (MODEL.profile.npz, checked against the file: a stale one
    raises StaleProfileError), else PowerInfer's ``activation/`` folder next to it, else
    None."""
    own = default_profile_path(model_path)
    if own.exists():
        return load_profile(own, model_path=model_path)
    folder = powerinfer_activation_dir(model_path)
    if folder.is_dir():
        return load_powerinfer_activations(folder)
    return None
