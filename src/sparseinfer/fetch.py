"""fetch_model: a GGUF file from Hugging Face (or ModelScope), downloaded once into the local
cache, as a local path.

Downloads go through `huggingface_hub`, so its cache layout and settings apply: HF_HOME /
HF_HUB_CACHE (where), HF_ENDPOINT (a mirror), HF_HUB_OFFLINE=1 (cache only), HF_TOKEN,
HF_HUB_DISABLE_PROGRESS_BARS. These are read when huggingface_hub is first imported.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import pathlib
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
from typing import Iterable, Optional, Union

from .errors import AmbiguousModelFileError, FetchError

PathLike = Union[str, "os.PathLike[str]"]

SOURCES = ("huggingface", "modelscope")


@dataclasses.dataclass(frozen=True)
class _Published:
    """Where a published sparse model lives (repository ids from PowerInfer's README and the
    MiniCPM-S model card). `filename` may be a glob; None takes the repository's one GGUF."""
    huggingface: str
    filename: Optional[str] = None
    modelscope: Optional[str] = None


# Short names for the published PowerInfer (sparse) models. Only MiniCPM-S-1B's file name and
# ModelScope repository are known here; the others are resolved from the repository listing.
SHORT_NAMES: dict[str, _Published] = {
    "minicpm-s-1b": _Published("openbmb/MiniCPM-S-1B-sft-gguf", "MiniCPM-S-1B-sft.gguf",
                               "OpenBMB/MiniCPM-S-1B-sft-gguf"),
    "relullama-7b": _Published("PowerInfer/ReluLLaMA-7B-PowerInfer-GGUF"),
    "relullama-13b": _Published("PowerInfer/ReluLLaMA-13B-PowerInfer-GGUF"),
    "relullama-70b": _Published("PowerInfer/ReluLLaMA-70B-PowerInfer-GGUF"),
    "relufalcon-40b": _Published("PowerInfer/ReluFalcon-40B-PowerInfer-GGUF"),
    "prosparse-llama-2-7b": _Published("PowerInfer/prosparse-llama-2-7b-gguf"),
    "prosparse-llama-2-13b": _Published("PowerInfer/prosparse-llama-2-13b-gguf"),
    "bamboo-base-v0.1": _Published("PowerInfer/Bamboo-base-v0.1-gguf"),
    "bamboo-dpo-v0.1": _Published("PowerInfer/Bamboo-DPO-v0.1-gguf"),
}

# "org/name": Hugging Face and ModelScope repository ids are two names of letters, digits, "-",
# "_" and "." joined by one slash.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
# How long the one connection that checks whether the hub can be reached may take.
_PROBE_SECONDS = 5.0


def fetch_model(
    repo_id: str,
    filename: Optional[str] = None,
    *,
    revision: Optional[str] = None,
    source: str = "huggingface",
    cache_dir: Optional[PathLike] = None,
    token: Optional[str] = None,
) -> pathlib.Path:
    """Downloads a model file (unless it is cached already) and returns its local path.

    >>> path = fetch_model("minicpm-s-1b")   # openbmb/MiniCPM-S-1B-sft-gguf, MiniCPM-S-1B-sft.gguf
    >>> path = fetch_model("org/repo-gguf", "*Q4_0.gguf", revision="v1.0")

    Args:
        repo_id: "org/name" of the repository, or a short name of a published sparse model
            (see SHORT_NAMES: "minicpm-s-1b", "prosparse-llama-2-7b", ...).
        filename: the file in the repository, or a glob such as "*Q4_0.gguf". None: the
            repository's single .gguf file. When several files match, top-level files win
            over files in folders; a choice that is still open raises
            AmbiguousModelFileError listing the candidates.
        revision: branch, tag or commit; None is the default branch ("main").
        source: "huggingface" (through huggingface_hub) or "modelscope" (needs the
            `modelscope` package: pip install "sparseinfer[modelscope]").
        cache_dir: where the cache lives; None is the source's default (for Hugging Face:
            HF_HUB_CACHE, or HF_HOME/hub).
        token: access token for private or gated repositories; None uses the one the
            source's own login stored (HF_TOKEN, `hf auth login`).

    Downloads resume after a dropped connection; a file stored with an LFS sha256 is
    checked against it after downloading. With HF_HUB_OFFLINE=1, or when the hub cannot be
    reached, a cached copy is used and FetchError is raised when there is none.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a non-empty str, got {repo_id!r}")
    if filename is not None and (not isinstance(filename, str) or not filename):
        raise ValueError(f"filename must be None or a non-empty str, got {filename!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, got {source!r}")
    repo_id, filename = _resolve_short_name(repo_id, filename, source)
    if not _REPO_ID.fullmatch(repo_id):
        raise ValueError(f"repo_id must look like 'org/name' or be one of the short names "
                         f"{', '.join(sorted(SHORT_NAMES))}; got {repo_id!r}")
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    if source == "modelscope":
        return _fetch_modelscope(repo_id, filename, revision=revision, cache_dir=cache,
                                 token=token)
    return _fetch_huggingface(repo_id, filename, revision=revision, cache_dir=cache, token=token)


def resolve_path(path: str) -> str:
    """A model argument as a file: `path` itself when it exists or does not look like a
    model to fetch (is_model_reference), else the file fetch_model brings; FetchError naming
    both when that fails."""
    if os.path.exists(path) or not is_model_reference(path):
        return path
    try:
        return os.fspath(fetch_model(path))
    except FetchError as error:
        raise FetchError(f"{path}: no such file, and fetching it as a model repository failed: "
                         f"{error}") from error


def is_model_reference(text: str) -> bool:
    """Whether `text` names a model to fetch rather than a file: a short name, or an
    "org/name" repository id that is not spelled like a GGUF file name."""
    return (text.lower() in SHORT_NAMES
            or (bool(_REPO_ID.fullmatch(text)) and not text.lower().endswith(".gguf")))


# ---- choosing a file ------------------------------------------------------------------------

def _resolve_short_name(repo_id: str, filename: Optional[str],
                        source: str) -> tuple[str, Optional[str]]:
    published = SHORT_NAMES.get(repo_id.lower())
    if published is None:
        return repo_id, filename
    if source == "modelscope":
        if published.modelscope is None:
            raise ValueError(f"no ModelScope repository is known for {repo_id!r}; pass its "
                             f"repository id, or use source='huggingface' "
                             f"({published.huggingface})")
        return published.modelscope, filename or published.filename
    return published.huggingface, filename or published.filename


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _choose_file(files: Iterable[str], pattern: Optional[str], where: str) -> str:
    """The file of `files` that `pattern` (None: any .gguf file) names; see fetch_model."""
    files = sorted(set(files))
    if pattern is None:
        matches = [f for f in files if f.lower().endswith(".gguf")]
        wanted = "a .gguf file"
    else:
        matches = [f for f in files if fnmatch.fnmatchcase(f, pattern)]
        if not matches:  # a pattern for the name alone, or another letter case
            folded = pattern.lower()
            matches = [f for f in files
                       if fnmatch.fnmatchcase(f.rsplit("/", 1)[-1], pattern)
                       or fnmatch.fnmatchcase(f.lower(), folded)]
        wanted = f"a file matching {pattern!r}"
    if not matches:
        ggufs = [f for f in files if f.lower().endswith(".gguf")]
        listing = ", ".join(ggufs) if ggufs else "none"
        raise FetchError(f"{where} has no {wanted}; its .gguf files: {listing}")
    top_level = [f for f in matches if "/" not in f]
    if len(top_level) == 1 or (len(matches) == 1):
        return top_level[0] if top_level else matches[0]
    choices = top_level or matches
    raise AmbiguousModelFileError(
        f"{where} has {len(choices)} files that match {pattern or '*.gguf'!r}: "
        f"{', '.join(choices)}; pass one of them as filename", choices)


# ---- Hugging Face ---------------------------------------------------------------------------

def _fetch_huggingface(repo_id: str, filename: Optional[str], *, revision: Optional[str],
                       cache_dir: Optional[str], token: Optional[str]) -> pathlib.Path:
    import huggingface_hub
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import errors as hub_errors

    unreachable = _hub_unreachable()
    if filename is None or _is_glob(filename):
        files = _list_huggingface(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                  unreachable=unreachable)
        where = f"Hugging Face repository {repo_id}" + (f" at {revision}" if revision else "")
        # The download names the same revision (not the listed commit), so that
        # huggingface_hub records the branch in the cache and offline use finds the file.
        filename = _choose_file(files, filename, where)

    what = f"{repo_id}/{filename}" + (f" at revision {revision}" if revision else "")
    started = time.time()
    try:
        path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                               token=token, local_files_only=unreachable is not None)
    except hub_errors.RepositoryNotFoundError as error:
        raise FetchError(f"Hugging Face repository {repo_id} was not found (a private or gated "
                         f"one needs token=...): {_first_line(error)}") from error
    except hub_errors.RevisionNotFoundError as error:
        raise FetchError(f"{repo_id} has no revision {revision!r}") from error
    except hub_errors.LocalEntryNotFoundError as error:
        raise FetchError(
            f"{what} is not in the cache ({cache_dir or hub_constants.HF_HUB_CACHE}) "
            f"and cannot be downloaded: "
            + ("HF_HUB_OFFLINE is set" if hub_constants.HF_HUB_OFFLINE
               else f"the hub cannot be reached ({unreachable or _first_line(error)})")) from error
    except hub_errors.EntryNotFoundError as error:
        raise FetchError(f"Hugging Face repository {repo_id} has no file {filename!r}"
                         + (f" at revision {revision}" if revision else "")) from error
    except hub_errors.HfHubHTTPError as error:
        raise FetchError(f"downloading {what} failed: {_first_line(error)}") from error
    except OSError as error:
        raise FetchError(f"downloading {what} failed: {error}") from error
    _verify_new_blob(path, since=started, what=what)
    return pathlib.Path(path)


def _list_huggingface(repo_id: str, *, revision: Optional[str], cache_dir: Optional[str],
                      token: Optional[str], unreachable: Optional[str]) -> list[str]:
    """The repository's files: from the hub, or from the cache when it cannot answer."""
    import huggingface_hub
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import errors as hub_errors

    try:
        if unreachable is not None:
            raise ConnectionError(unreachable)
        info = huggingface_hub.HfApi().model_info(repo_id, revision=revision, token=token)
    except hub_errors.RepositoryNotFoundError as error:
        raise FetchError(f"Hugging Face repository {repo_id} was not found (a private or gated "
                         f"one needs token=...): {_first_line(error)}") from error
    except hub_errors.RevisionNotFoundError as error:
        raise FetchError(f"{repo_id} has no revision {revision!r}") from error
    except _network_errors() as error:
        cached = _cached_listing(repo_id, revision, cache_dir)
        if cached is None:
            reason = ("HF_HUB_OFFLINE is set" if hub_constants.HF_HUB_OFFLINE
                      else f"the hub cannot be reached ({_first_line(error)})")
            raise FetchError(f"cannot list the files of {repo_id}: {reason}, and the cache has "
                             f"no snapshot of revision {revision or 'main'}") from error
        return cached
    return [s.rfilename for s in info.siblings or []]


def _hub_unreachable() -> Optional[str]:
    """Why the hub's host cannot be reached, found with one direct connection of at most
    _PROBE_SECONDS, or None: it answered, or a proxy stands in the way (which the direct
    connection says nothing about), or HF_HUB_OFFLINE is set. Without it a machine with no
    network waited ~24 s: huggingface_hub retries a failed connection five times, with a
    warning each time, before its error."""
    from huggingface_hub import constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE:
        return None
    endpoint = urllib.parse.urlsplit(hub_constants.ENDPOINT)
    host = endpoint.hostname or ""
    proxies = urllib.request.getproxies()
    if (proxies.get(endpoint.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
        return None
    outcome: list[Optional[str]] = []

    def connect() -> None:
        try:
            port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
            socket.create_connection((host, port), timeout=_PROBE_SECONDS).close()
            outcome.append(None)
        except (OSError, ValueError) as error:
            outcome.append(f"{hub_constants.ENDPOINT}: {getattr(error, 'strerror', None) or error}")

    # In a thread, so that a name lookup (which has no timeout of its own) and several
    # addresses tried one after another stay within one deadline.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(_PROBE_SECONDS)
    return outcome[0] if outcome else f"{hub_constants.ENDPOINT}: no answer within {_PROBE_SECONDS:g} s"


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "no answer from the hub" (offline mode, no connection, a 5xx): the
    cache may still have the answer."""
    from huggingface_hub import errors as hub_errors

    errors: list[type[BaseException]] = [hub_errors.OfflineModeIsEnabled,
                                         hub_errors.HfHubHTTPError,
                                         ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _cached_listing(repo_id: str, revision: Optional[str],
                    cache_dir: Optional[str]) -> Optional[list[str]]:
    """Files of a cached snapshot, read from huggingface_hub's documented cache layout:
    models--{org}--{name}/refs/{branch} holds a commit, snapshots/{commit}/ the files."""
    from huggingface_hub import constants as hub_constants

    root = pathlib.Path(cache_dir or hub_constants.HF_HUB_CACHE)
    storage = root / ("models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    commit = revision
    if not _COMMIT.fullmatch(revision):
        try:
            commit = (storage / "refs" / revision).read_text().strip()
        except OSError:
            return None
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    return [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()]


def _verify_new_blob(path: str, *, since: float, what: str) -> None:
    """Checks a file downloaded just now against the sha256 that the hub gave as its ETag.

    huggingface_hub names each cached blob after its ETag, which is the sha256 of the content
    for files stored with Git LFS (model files are), and checks only the size. A blob written
    before `since` was verified when it was downloaded.
    """
    blob = os.path.realpath(path)
    name = os.path.basename(blob)
    if not _SHA256.fullmatch(name) or os.stat(blob).st_mtime < since - 2:
        return
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != name:
        for p in (path, blob):
            try:
                os.remove(p)
            except OSError:
                pass
        raise FetchError(f"{what}: the downloaded file's sha256 is {digest.hexdigest()}, "
                         f"the hub says {name}; the corrupt copy was removed, try again")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---- ModelScope -----------------------------------------------------------------------------

def _fetch_modelscope(repo_id: str, filename: Optional[str], *, revision: Optional[str],
                      cache_dir: Optional[str], token: Optional[str]) -> pathlib.Path:
    try:
        from modelscope.hub.api import HubApi
        from modelscope.hub.file_download import model_file_download
    except ImportError as error:
        raise ImportError("source='modelscope' needs the modelscope package: "
                          "pip install 'sparseinfer[modelscope]'") from error
    where = f"ModelScope repository {repo_id}" + (f" at {revision}" if revision else "")
    # Arguments left out where not given: older modelscope releases take no None for them.
    # modelscope's own exceptions differ from release to release: any failure of a call into it
    # is reported as a FetchError that names the repository and keeps the original as cause.
    pinned = {"revision": revision} if revision is not None else {}
    if filename is None or _is_glob(filename):
        try:
            entries = HubApi().get_model_files(repo_id, recursive=True, **pinned)
        except Exception as error:  # noqa: BLE001 (see above)
            raise FetchError(f"cannot list the files of {where}: {error}") from error
        files = [e["Path"] for e in entries if e.get("Type", "blob") != "tree"]
        filename = _choose_file(files, filename, where)
    kwargs = dict(pinned)
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    if token is not None:
        kwargs["token"] = token
    try:
        path = model_file_download(repo_id, filename, **kwargs)
    except Exception as error:  # noqa: BLE001 (see above)
        raise FetchError(f"downloading {filename!r} from {where} failed: {error}") from error
    return pathlib.Path(path)
