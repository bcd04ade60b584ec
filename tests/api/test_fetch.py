"""fetch_model against a stand-in Hugging Face hub: an HTTP server on 127.0.0.1, started by
the test, that answers the requests huggingface_hub makes (read from its file_download.py
and hf_api.py):

- GET  /api/models/{repo}[/revision/{rev}]       -> JSON {id, sha, siblings: [{rfilename}]}
- HEAD /{repo}/resolve/{rev}/{file}               -> X-Repo-Commit, ETag (git blob sha1) or
                                                     X-Linked-Etag / X-Linked-Size (LFS sha256)
- GET  /{repo}/resolve/{rev}/{file}, with Range   -> 200, or 206 with Content-Range
- errors as 404 with X-Error-Code: RepoNotFound / RevisionNotFound / EntryNotFound

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every
fetch runs in a fresh interpreter with those set. Oracles: the bytes the server holds (by
sha256), the server's request log, and the paths of huggingface_hub's documented cache layout.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse

import pytest

import ggufgen

REPO = "org/model-gguf"

RUNNER = r"""
import hashlib, json, sys
import sparseinfer as si
from sparseinfer.fetch import fetch_model

results = []
for call in json.loads(sys.argv[1]):
    try:
        if call["op"] == "fetch":
            path = fetch_model(*call["args"], **call["kwargs"])
            text = None
        else:  # "model": Model(reference) or Model.from_pretrained(...), then a greedy text
            if call["op"] == "model":
                model = si.Model(*call["args"], **call["kwargs"])
            else:
                model = si.Model.from_pretrained(*call["args"], **call["kwargs"])
            with model:
                path = model.path
                text = model.generate("the model", max_tokens=6, temperature=0, ignore_eos=True)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        results.append({"path": str(path), "sha256": digest, "text": text})
    except Exception as error:
        results.append({"error": type(error).__name__,
                        "bases": [c.__name__ for c in type(error).__mro__],
                        "message": str(error), "choices": getattr(error, "choices", None)})
print(json.dumps(results))
"""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class StandInHub:
    """Repositories of commits of files, served over HTTP like the Hugging Face hub."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.log: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self.cut_first_get: set[str] = set()  # files whose first full GET stops half-way
        self.wrong_sha256: set[str] = set()  # files announced with a wrong LFS sha256
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_HEAD(self):
                hub.answer(self, head=True)

            def do_GET(self):
                hub.answer(self, head=False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], *, refs=("main",)) -> str:
        """Adds a commit holding `files`, points the refs at it, returns its hash."""
        commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        repo["commits"][commit] = dict(files)
        for ref in refs:
            repo["refs"][ref] = commit
        return commit

    def gets(self, name: str) -> list[str]:
        """Range headers of the GETs of file `name` (one entry per GET; "" without Range)."""
        return [r for m, p, r in self.log if m == "GET" and p.endswith("/" + name)]

    # ---- request handling -----------------------------------------------------------------

    def answer(self, h: http.server.BaseHTTPRequestHandler, *, head: bool) -> None:
        path = urllib.parse.urlsplit(h.path).path
        self.log.append(("HEAD" if head else "GET", path, h.headers.get("Range", "")))
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            rev = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
            repo, commit = self.lookup(h, repo_id, rev)
            if repo is not None:
                files = repo["commits"][commit]
                self.send(h, 200, {"Content-Type": "application/json"}, json.dumps(
                    {"id": repo_id, "sha": commit,
                     "siblings": [{"rfilename": name} for name in sorted(files)]}).encode(), head)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo, commit = self.lookup(h, repo_id, rev)
            if repo is None:
                return
            data = repo["commits"][commit].get(name)
            if data is None:
                self.send(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit},
                          b"Entry not found", head)
                return
            self.send_file(h, name, data, commit, head)
            return
        self.send(h, 404, {}, b"not found", head)

    def lookup(self, h, repo_id: str, rev: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            self.send(h, 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found", False)
            return None, None
        commit = repo["refs"].get(rev, rev if rev in repo["commits"] else None)
        if commit is None:
            self.send(h, 404, {"X-Error-Code": "RevisionNotFound"}, b"Invalid rev id", False)
            return None, None
        return repo, commit

    def send_file(self, h, name: str, data: bytes, commit: str, head: bool) -> None:
        lfs = name.endswith(".gguf")  # model files are Git LFS files on the hub
        sha = "0" * 64 if name in self.wrong_sha256 else sha256(data)
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes",
                   "ETag": f'"{sha if lfs else git_blob_sha1(data)}"'}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
        if head:
            self.send(h, 200, headers, data, head=True)
            return
        start = 0
        range_header = h.headers.get("Range", "")
        if range_header.startswith("bytes="):
            start = int(range_header[len("bytes="):].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self.send(h, 206, headers, data[start:], head=False)
            return
        if name in self.cut_first_get:
            self.cut_first_get.discard(name)
            # Announce the whole file, send half of it, and drop the connection.
            h.send_response(200)
            for key, value in headers.items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self.send(h, 200, headers, data, head=False)

    @staticmethod
    def send(h, status: int, headers: dict, body: bytes, head: bool) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)


@pytest.fixture
def hub():
    server = StandInHub()
    yield server
    server.close()


@pytest.fixture
def hf_env(hub, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and k.lower() not in (
               "http_proxy", "https_proxy", "all_proxy")}
    env.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    return env


def run(env: dict, *calls: dict, offline: bool = False) -> list[dict]:
    """Runs the calls in a fresh interpreter (so huggingface_hub reads `env`)."""
    env = dict(env, HF_HUB_OFFLINE="1" if offline else "0")
    result = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(list(calls))],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def fetch(*args, **kwargs) -> dict:
    return {"op": "fetch", "args": list(args), "kwargs": kwargs}


def snapshot_path(env: dict, repo_id: str, commit: str, name: str) -> str:
    """Where huggingface_hub's cache layout puts a file: HF_HOME/hub/models--org--name/
    snapshots/{commit}/{file}."""
    return os.path.join(env["HF_HOME"], "hub", "models--" + repo_id.replace("/", "--"),
                        "snapshots", commit, name)


MODEL_BYTES = bytes(range(256)) * 64  # 16 KiB
README = b"# a model\n"


def test_first_download_lands_in_the_hub_cache(hub, hf_env):
    commit = hub.add(REPO, {"model.gguf": MODEL_BYTES, "README.md": README})
    (result,) = run(hf_env, fetch(REPO, "model.gguf"))
    assert result["path"] == snapshot_path(hf_env, REPO, commit, "model.gguf")
    assert result["sha256"] == sha256(MODEL_BYTES)
    assert hub.gets("model.gguf") == [""]


def test_a_cached_file_is_not_downloaded_again(hub, hf_env):
    hub.add(REPO, {"model.gguf": MODEL_BYTES})
    (first,) = run(hf_env, fetch(REPO, "model.gguf"))
    (second,) = run(hf_env, fetch(REPO, "model.gguf"))
    (listed,) = run(hf_env, fetch(REPO))  # found through the listing this time
    assert first["path"] == second["path"] == listed["path"]
    assert second["sha256"] == sha256(MODEL_BYTES)
    assert len(hub.gets("model.gguf")) == 1


def test_revision_pins_a_branch_tag_or_commit(hub, hf_env):
    old = hub.add(REPO, {"model.gguf": b"version one" * 100}, refs=("main", "v1"))
    new = hub.add(REPO, {"model.gguf": b"version two" * 100})  # main moves on; v1 stays
    results = run(hf_env, fetch(REPO, "model.gguf"), fetch(REPO, "model.gguf", revision="v1"),
                  fetch(REPO, "model.gguf", revision=old), fetch(REPO, revision="v1"))
    assert results[0]["path"] == snapshot_path(hf_env, REPO, new, "model.gguf")
    assert results[0]["sha256"] == sha256(b"version two" * 100)
    for pinned in results[1:]:
        assert pinned["path"] == snapshot_path(hf_env, REPO, old, "model.gguf")
        assert pinned["sha256"] == sha256(b"version one" * 100)
    (missing,) = run(hf_env, fetch(REPO, "model.gguf", revision="v9"))
    assert missing["error"] == "FetchError" and "v9" in missing["message"]


def test_offline_mode_uses_the_cache_and_says_so_without_it(hub, hf_env):
    commit = hub.add(REPO, {"model.gguf": MODEL_BYTES})
    (cold,) = run(hf_env, fetch(REPO, "model.gguf"), offline=True)
    assert cold["error"] == "FetchError" and "OSError" in cold["bases"]
    assert "HF_HUB_OFFLINE" in cold["message"] and "model.gguf" in cold["message"]
    (cold_listing,) = run(hf_env, fetch(REPO), offline=True)
    assert cold_listing["error"] == "FetchError" and "HF_HUB_OFFLINE" in cold_listing["message"]
    assert hub.log == []  # offline means no request at all

    run(hf_env, fetch(REPO, "model.gguf"))
    n_requests = len(hub.log)
    warm = run(hf_env, fetch(REPO, "model.gguf"), fetch(REPO), fetch(REPO, "*.gguf"),
               offline=True)
    expected = snapshot_path(hf_env, REPO, commit, "model.gguf")
    assert [r.get("path") for r in warm] == [expected] * 3
    assert len(hub.log) == n_requests


def closed_port_url() -> str:
    """An http URL on this machine where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_hub_is_said_at_once_and_the_cache_still_serves(hub, hf_env):
    """No network: one refused connection, and the error names the endpoint, where
    huggingface_hub alone retried for ~24 s with a warning each time; a cached file and a
    cached listing are still found."""
    commit = hub.add(REPO, {"model.gguf": MODEL_BYTES})
    away = dict(hf_env, HF_ENDPOINT=closed_port_url())
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps([fetch(REPO, "model.gguf"), fetch(REPO)])],
                          env=dict(away, HF_HUB_OFFLINE="0"), capture_output=True, text=True, timeout=120)
    cold_file, cold_listing = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Retrying" not in done.stderr, done.stderr
    for cold in (cold_file, cold_listing):
        assert cold["error"] == "FetchError", cold
        assert f"the hub cannot be reached ({away['HF_ENDPOINT']}: Connection refused)" in cold["message"]
    assert hub.log == []

    run(hf_env, fetch(REPO, "model.gguf"))  # into the cache from the stand-in hub
    warm = run(away, fetch(REPO, "model.gguf"), fetch(REPO))
    assert [r.get("path") for r in warm] == [snapshot_path(hf_env, REPO, commit, "model.gguf")] * 2


def test_a_missing_file_or_repository_is_a_clear_error(hub, hf_env):
    hub.add(REPO, {"model.gguf": MODEL_BYTES, "README.md": README})
    no_file, no_glob, no_repo = run(hf_env, fetch(REPO, "other.gguf"), fetch(REPO, "*Q8_0.gguf"),
                                    fetch("org/nothing-here"))
    assert no_file["error"] == "FetchError"
    assert REPO in no_file["message"] and "'other.gguf'" in no_file["message"]
    assert no_glob["error"] == "FetchError" and "model.gguf" in no_glob["message"]
    assert no_repo["error"] == "FetchError" and "org/nothing-here" in no_repo["message"]
    (not_a_repo,) = run(hf_env, fetch("no slash here"))
    assert not_a_repo["error"] == "ValueError" and "org/name" in not_a_repo["message"]


def test_an_ambiguous_repository_lists_its_files(hub, hf_env):
    files = {"m.Q4_0.gguf": b"q4" * 50, "m.Q8_0.gguf": b"q8" * 50, "sub/m.F16.gguf": b"f16" * 50,
             "README.md": README}
    commit = hub.add(REPO, files)
    ambiguous, ambiguous_glob, chosen, by_name, in_folder = run(
        hf_env, fetch(REPO), fetch(REPO, "m.Q*.gguf"), fetch(REPO, "*Q8_0.gguf"),
        fetch(REPO, "*.q4_0.GGUF"), fetch(REPO, "*F16*"))
    assert ambiguous["error"] == "AmbiguousModelFileError" and "ValueError" in ambiguous["bases"]
    assert ambiguous["choices"] == ["m.Q4_0.gguf", "m.Q8_0.gguf"]  # top-level files win
    assert "m.Q4_0.gguf" in ambiguous["message"] and "m.Q8_0.gguf" in ambiguous["message"]
    assert ambiguous_glob["choices"] == ["m.Q4_0.gguf", "m.Q8_0.gguf"]
    assert chosen["path"] == snapshot_path(hf_env, REPO, commit, "m.Q8_0.gguf")
    assert chosen["sha256"] == sha256(files["m.Q8_0.gguf"])
    assert by_name["sha256"] == sha256(files["m.Q4_0.gguf"])  # a glob of another letter case
    assert in_folder["path"] == snapshot_path(hf_env, REPO, commit, "sub/m.F16.gguf")


def test_a_download_cut_off_half_way_resumes(hub, hf_env):
    # huggingface_hub writes what it received in chunks of 10 MiB: the cut must come after one
    big = bytes(range(256)) * (96 * 1024)  # 24 MiB
    hub.add(REPO, {"model.gguf": big})
    hub.cut_first_get.add("model.gguf")
    (result,) = run(hf_env, fetch(REPO, "model.gguf"))
    assert result["sha256"] == sha256(big)
    # the second request asked only for the rest, from no later than where the first stopped
    first, second = hub.gets("model.gguf")
    assert first == "" and second.startswith("bytes=") and second.endswith("-")
    assert 0 < int(second[len("bytes="):-1]) <= len(big) // 2


def test_a_download_that_fails_its_sha256_is_removed(hub, hf_env):
    commit = hub.add(REPO, {"model.gguf": MODEL_BYTES})
    hub.wrong_sha256.add("model.gguf")
    (result,) = run(hf_env, fetch(REPO, "model.gguf"))
    assert result["error"] == "FetchError" and "sha256" in result["message"]
    assert not os.path.lexists(snapshot_path(hf_env, REPO, commit, "model.gguf"))
    blobs = os.path.join(hf_env["HF_HOME"], "hub", "models--org--model-gguf", "blobs")
    assert not os.path.exists(os.path.join(blobs, "0" * 64))


def test_short_names_resolve_to_the_published_repositories(hub, hf_env):
    data = b"MiniCPM-S stand-in" * 10
    commit = hub.add("openbmb/MiniCPM-S-1B-sft-gguf",
                     {"MiniCPM-S-1B-sft.gguf": data, "other.gguf": b"x"})
    (result,) = run(hf_env, fetch("minicpm-s-1b"))
    assert result["path"] == snapshot_path(hf_env, "openbmb/MiniCPM-S-1B-sft-gguf", commit,
                                           "MiniCPM-S-1B-sft.gguf")
    assert result["sha256"] == sha256(data)


def test_model_loads_a_repository_id(hub, hf_env, tmp_path):
    import sparseinfer as si

    local = ggufgen.write_llama_model(tmp_path / "tiny.gguf", n_vocab=300, n_embd=32, n_layer=2,
                                      n_head=4, n_head_kv=2, n_ff=48, n_ctx=256, seed=3).path
    with open(local, "rb") as f:
        data = f.read()
    commit = hub.add("org/tiny-gguf", {"tiny.gguf": data, "README.md": README})
    with si.Model(local, n_ctx=64) as model:
        expected = model.generate("the model", max_tokens=6, temperature=0, ignore_eos=True)
    by_id, pretrained = run(
        hf_env, {"op": "model", "args": ["org/tiny-gguf"], "kwargs": {"n_ctx": 64}},
        {"op": "from_pretrained", "args": ["org/tiny-gguf", "*.gguf"], "kwargs": {"n_ctx": 64}})
    for result in (by_id, pretrained):
        assert result["path"] == snapshot_path(hf_env, "org/tiny-gguf", commit, "tiny.gguf")
        assert result["sha256"] == sha256(data)
        assert result["text"] == expected
    assert len(hub.gets("tiny.gguf")) == 1

    cli = subprocess.run([sys.executable, "-m", "sparseinfer", "fetch", "org/tiny-gguf",
                          "tiny.gguf"], env=dict(hf_env, HF_HUB_OFFLINE="1"),
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == snapshot_path(hf_env, "org/tiny-gguf", commit, "tiny.gguf") + "\n"
    generate = subprocess.run([sys.executable, "-m", "sparseinfer", "generate", "-m",
                               "org/tiny-gguf", "-p", "the model", "-n", "6", "--temp", "0",
                               "--ignore-eos", "-c", "64"], env=dict(hf_env, HF_HUB_OFFLINE="1"),
                              capture_output=True, text=True, timeout=60)
    assert generate.returncode == 0, generate.stderr
    assert generate.stdout == expected + "\n"


def test_modelscope_goes_through_the_modelscope_package(monkeypatch, tmp_path):
    """The oracle is a stand-in `modelscope` module that records the calls it gets."""
    import types

    from sparseinfer.fetch import fetch_model

    calls = []

    class HubApi:
        def get_model_files(self, model_id, revision=None, recursive=False):
            calls.append(("list", model_id, revision))
            return [{"Path": "MiniCPM-S-1B-sft.gguf", "Type": "blob"},
                    {"Path": "configs", "Type": "tree"}, {"Path": "README.md", "Type": "blob"}]

    def model_file_download(model_id, file_path, revision=None, cache_dir=None):
        calls.append(("download", model_id, file_path, revision, cache_dir))
        return str(tmp_path / file_path)

    modules = {"modelscope": types.ModuleType("modelscope"),
               "modelscope.hub": types.ModuleType("modelscope.hub"),
               "modelscope.hub.api": types.ModuleType("modelscope.hub.api"),
               "modelscope.hub.file_download": types.ModuleType("modelscope.hub.file_download")}
    modules["modelscope.hub.api"].HubApi = HubApi
    modules["modelscope.hub.file_download"].model_file_download = model_file_download
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    path = fetch_model("minicpm-s-1b", source="modelscope", cache_dir=tmp_path)
    assert path == tmp_path / "MiniCPM-S-1B-sft.gguf"
    assert calls == [("download", "OpenBMB/MiniCPM-S-1B-sft-gguf", "MiniCPM-S-1B-sft.gguf",
                      None, str(tmp_path))]
    calls.clear()
    fetch_model("OpenBMB/MiniCPM-S-1B-sft-gguf", source="modelscope", revision="master")
    assert calls == [("list", "OpenBMB/MiniCPM-S-1B-sft-gguf", "master"),
                     ("download", "OpenBMB/MiniCPM-S-1B-sft-gguf", "MiniCPM-S-1B-sft.gguf",
                      "master", None)]
    with pytest.raises(ValueError, match="ModelScope"):
        fetch_model("bamboo-base-v0.1", source="modelscope")

    monkeypatch.setitem(sys.modules, "modelscope", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "modelscope.hub")
    monkeypatch.delitem(sys.modules, "modelscope.hub.api")
    monkeypatch.delitem(sys.modules, "modelscope.hub.file_download")
    with pytest.raises(ImportError, match=r"sparseinfer\[modelscope\]"):
        fetch_model("minicpm-s-1b", source="modelscope")
