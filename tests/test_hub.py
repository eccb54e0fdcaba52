"""Hub names resolve from the Hugging Face cache, else download into it, all or nothing.

Every download here is real HTTP against ``FakeHub``, a ThreadingHTTPServer on 127.0.0.1 that
serves ``/{repo}/resolve/{revision}/{file}`` either like the hub (``X-Repo-Commit``, ETags, and
for weights a 302 to ``/cdn/`` on another host name, ``localhost``, as the hub redirects to its
CDN) or like a plain static mirror (no headers, no redirects), honours ``Range: bytes=N-``
(unless told not to), can demand a bearer token, and can fail on purpose: an HTTP status (with
``Retry-After``), a connection dropped mid-body, a lying ``X-Linked-Etag``; each fault either
every time or once each from a list. The retries' backoff is shrunk to milliseconds
(``hub.BACKOFF``), or their waits recorded instead of slept, so that nothing here sleeps seconds.
"""

import dataclasses
import email.utils
import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

import convnext_np as cnp
from conftest import FIXTURES
from convnext_np import checkpoints, hub


def read_files(fixture, *names):
    return {name: (FIXTURES / fixture / name).read_bytes() for name in names}


SAFETENSORS = read_files("hf-safetensors", "config.json", "model.safetensors")
BIN = read_files("hf-bin", "pytorch_model.bin")
SHARDED = read_files("hf-sharded", "config.json",
                     *(p.name for p in (FIXTURES / "hf-sharded").glob("model*")))
SHA_ST = hashlib.sha256(SAFETENSORS["model.safetensors"]).hexdigest()
PREPROCESSOR = b'{"crop_pct": 0.875, "size": {"shortest_edge": 224}}'


def git_sha1(content):
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """Repos in memory, served over HTTP on 127.0.0.1 in a background thread."""

    def __init__(self):
        self.repos = {}      # (repo, revision or commit) -> (commit, {filename: bytes})
        self.static = False  # True: a plain mirror, no hub headers, no redirects
        self.ranges = True   # False: Range is ignored, every answer is the whole file
        self.token = None    # a bearer token that /resolve/ requests must carry
        self.retry_after = None  # Retry-After sent with an HTTP status fault
        # filename -> "drop" | "bad-etag" | an HTTP status, every time; or a list of "drop" and
        # statuses, each used once, in order
        self.faults = {}
        self.requests = []   # (path, headers) of every request, in order
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.hub = self
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def add(self, repo, files, revision="main"):
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        self.repos[repo, revision] = self.repos[repo, commit] = (commit, dict(files))
        return commit

    def paths(self):
        return [path for path, _ in self.requests]

    def take_fault(self, filename, kind):
        """The fault of this kind (int: a status, str: "drop") for this request, if any."""
        fault = self.faults.get(filename)
        if isinstance(fault, list):
            return fault.pop(0) if fault and isinstance(fault[0], kind) else None
        return fault if isinstance(fault, kind) and fault != "bad-etag" else None

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        fake_ = self.server.hub
        fake_.requests.append((self.path, dict(self.headers)))
        path = unquote(urlsplit(self.path).path)
        if m := re.fullmatch(r"/cdn/([^/]+/[^/]+)/([^/]+)/(.+)", path):
            _, files = fake_.repos[m[1], m[2]]
            return self.send_body(files[m[3]], m[3])
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m is None:
            return self.send_error(404)
        if fake_.token and self.headers.get("Authorization") != f"Bearer {fake_.token}":
            return self.send_error(401)
        commit, files = fake_.repos.get((m[1], m[2]), (None, {}))
        if status := fake_.take_fault(m[3], int):
            self.send_response(status)
            if fake_.retry_after is not None:
                self.send_header("Retry-After", fake_.retry_after)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if m[3] not in files:
            return self.send_error(404)
        content = files[m[3]]
        if fake_.static:
            return self.send_body(content, m[3])
        if not m[3].endswith((".safetensors", ".bin")):  # a git file: its git sha1 as ETag
            return self.send_body(content, m[3], {"X-Repo-Commit": commit,
                                                  "ETag": f'"{git_sha1(content)}"'})
        bad = fake_.faults.get(m[3]) == "bad-etag"
        sha = "0" * 64 if bad else hashlib.sha256(content).hexdigest()
        self.send_response(302)
        self.send_header("Location", f"http://localhost:{fake_.port}/cdn/{m[1]}/{commit}/{m[3]}")
        self.send_header("X-Repo-Commit", commit)
        self.send_header("X-Linked-Etag", f'W/"{sha}"' if m[3].endswith(".bin") else f'"{sha}"')
        self.send_header("X-Linked-Size", str(len(content)))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_body(self, content, filename, headers=()):
        fake_ = self.server.hub
        start = 0
        if fake_.ranges and (r := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))):
            start = int(r[1])
            if start >= len(content):
                return self.send_error(416)
        self.send_response(206 if start else 200)
        for key, value in dict(headers).items():
            self.send_header(key, value)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        self.send_header("Content-Length", str(len(content) - start))
        self.end_headers()
        body = content[start:]
        if fake_.take_fault(filename, str) == "drop":
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
        else:
            self.wfile.write(body)


TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME",
                   "XDG_CACHE_HOME")


@pytest.fixture(autouse=True)
def fake_env(monkeypatch, tmp_path):
    for name in (*TOKEN_VARIABLES, "HF_HUB_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS",
                 "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real token file is ever read
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "BACKOFF", 0.001)  # retries wait 1, 2, 4 ... ms


@pytest.fixture
def waits(monkeypatch):
    """The retries' waits, recorded instead of slept."""
    slept = []
    monkeypatch.setattr(hub, "time", types.SimpleNamespace(sleep=slept.append,
                                                           time=time.time,
                                                           monotonic=time.monotonic))
    return slept


@pytest.fixture
def fake(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint + "/")  # the trailing / is stripped
    yield server
    server.close()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def assert_nothing_installed(cache, *, partial=False):
    """No snapshot and no ref; in blobs/ only files named by their own sha256, and a partial
    download (``<sha256>.incomplete``) where `partial`, nothing else."""
    kept = {"partial": 0}
    for path in cache.rglob("*"):
        if path.is_dir():
            continue
        assert path.parent.name == "blobs", path
        if path.name.endswith(".incomplete"):
            kept["partial"] += 1
            assert _SHA256_NAME.fullmatch(path.name.removesuffix(".incomplete")), path
        else:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
    assert kept["partial"] == int(partial)


_SHA256_NAME = re.compile(r"[0-9a-f]{64}")


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- names --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, repo", [
    ("convnext-tiny-224", "facebook/convnext-tiny-224"),
    ("facebook/convnext-tiny-224", "facebook/convnext-tiny-224"),
    ("convnext-tiny-224-22k", "timm/convnext_tiny.fb_in22k"),  # no facebook/ repo
    ("convnext-atto", "timm/convnext_atto.d2_in1k"),
    ("convnext_tiny.fb_in1k", "timm/convnext_tiny.fb_in1k"),
    ("timm/convnext_tiny.fb_in1k", "timm/convnext_tiny.fb_in1k"),
    ("convnext_small.in12k_ft_in1k", "timm/convnext_small.in12k_ft_in1k"),  # not in the table
    ("someone/my-convnext.v2", "someone/my-convnext.v2"),
])
def test_names_map_to_repo_ids(name, repo):
    assert hub.repo_id(name) == repo


@pytest.mark.parametrize("name, message", [
    ("convnext-tiny", "did you mean convnext-tiny-224"),
    ("resnet50", "known aliases include convnext-tiny-224"),
    ("../etc/passwd", "nor a hub repo id"),
    ("org--x/name", "nor a hub repo id"),
    ("a/b/c", "nor a hub repo id"),
])
def test_bad_names_are_refused_before_any_request(name, message):
    with pytest.raises(cnp.WeightsError, match=message):
        hub.resolve(name)


def test_cache_root_follows_huggingface_hub(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.cache_root() == tmp_path / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_root() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", "~/hf")
    assert hub.cache_root() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.cache_root() == tmp_path / "c"
    assert hub.cache_root(tmp_path / "arg") == tmp_path / "arg"


# -- downloads and the cache layout -----------------------------------------------------

def test_download_writes_the_huggingface_cache_layout(fake, cache):
    commit = fake.add("org/tiny", SAFETENSORS | BIN)
    snapshot = hub.resolve("org/tiny")

    repo_dir = cache / "models--org--tiny"
    assert snapshot == repo_dir / "snapshots" / commit
    assert (repo_dir / "refs" / "main").read_text() == commit
    links = {p.name: os.readlink(p) for p in snapshot.iterdir()}
    assert links == {  # safetensors preferred: the .bin is never fetched
        "config.json": f"../../blobs/{git_sha1(SAFETENSORS['config.json'])}",
        "model.safetensors": f"../../blobs/{SHA_ST}",
    }
    assert (repo_dir / "blobs" / SHA_ST).read_bytes() == SAFETENSORS["model.safetensors"]
    assert not any(".incomplete" in p for p in files_in(repo_dir))
    assert fake.paths() == [  # files after config.json come from the commit it resolved to
        "/org/tiny/resolve/main/config.json",
        f"/org/tiny/resolve/{commit}/model.safetensors",
        f"/cdn/org/tiny/{commit}/model.safetensors",
        f"/org/tiny/resolve/{commit}/preprocessor_config.json",  # 404: optional
    ]
    assert all(h["User-Agent"] == f"convnext_np/{cnp.__version__}" and "Authorization" not in h
               for _, h in fake.requests)
    expected = cnp.from_pretrained(FIXTURES / "hf-safetensors").config
    assert cnp.from_pretrained(snapshot).config.to_dict() == expected.to_dict()


def test_huggingface_fake_finds_what_we_cached(fake, cache):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    fake.add("org/tiny", SAFETENSORS)
    snapshot = hub.resolve("org/tiny")
    found = huggingface_hub.try_to_load_from_cache("org/tiny", "model.safetensors", cache_dir=cache)
    assert found == str(snapshot / "model.safetensors")


def test_a_static_mirror_names_the_snapshot_by_revision_and_blobs_by_sha256(fake, cache):
    fake.static = True
    fake.add("org/tiny", SAFETENSORS)
    snapshot = hub.resolve("org/tiny")
    repo_dir = cache / "models--org--tiny"
    assert snapshot == repo_dir / "snapshots" / "main"
    assert (repo_dir / "refs" / "main").read_text() == "main"
    config_sha = hashlib.sha256(SAFETENSORS["config.json"]).hexdigest()
    assert sorted(os.listdir(repo_dir / "blobs")) == sorted([SHA_ST, config_sha])
    assert [p for p, _ in fake.requests if "/cdn/" in p] == []
    cnp.from_pretrained(snapshot)


def test_the_second_resolve_uses_the_cache_without_a_request(fake, monkeypatch):
    fake.add("org/tiny", SAFETENSORS)
    first = hub.resolve("org/tiny")
    count = len(fake.requests)
    assert hub.resolve("org/tiny") == first
    assert len(fake.requests) == count
    fake.close()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert hub.resolve("org/tiny") == first
    cnp.from_pretrained(first)


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_mode_uses_the_cache_and_refuses_a_miss(fake, monkeypatch, value):
    fake.add("org/tiny", SAFETENSORS)
    fake.add("org/other", SAFETENSORS)
    snapshot = hub.resolve("org/tiny")
    count = len(fake.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub.resolve("org/tiny") == snapshot
    with pytest.raises(cnp.WeightsError, match="org/other .*not in the Hugging Face cache.*"
                                               "HF_HUB_OFFLINE is on"):
        hub.resolve("org/other")
    with pytest.raises(cnp.WeightsError, match="HF_HUB_OFFLINE"):
        hub.resolve("org/tiny", revision="v2")
    assert len(fake.requests) == count


@pytest.mark.parametrize("static", [False, True])
def test_bin_is_the_fallback_when_there_is_no_safetensors(fake, static):
    fake.static = static
    fake.add("org/tiny", {"config.json": SAFETENSORS["config.json"]} | BIN)
    snapshot = hub.resolve("org/tiny")
    assert sorted(os.listdir(snapshot)) == ["config.json", "pytorch_model.bin"]
    tried = [p.rsplit("/", 1)[1] for p in fake.paths() if "/resolve/" in p]
    assert tried == ["config.json", "model.safetensors", "model.safetensors.index.json",
                     "pytorch_model.bin", "preprocessor_config.json"]
    cnp.from_pretrained(snapshot)


def test_a_sharded_checkpoint_brings_every_shard(fake):
    fake.add("org/sharded", SHARDED)
    snapshot = hub.resolve("org/sharded")
    assert sorted(os.listdir(snapshot)) == sorted(SHARDED)
    assert len(SHARDED) == 13  # config, index, 11 shards
    cnp.from_pretrained(snapshot)
    count = len(fake.requests)
    assert hub.resolve("org/sharded") == snapshot and len(fake.requests) == count


def test_a_missing_shard_makes_the_cached_snapshot_incomplete(fake):
    fake.add("org/sharded", SHARDED)
    snapshot = hub.resolve("org/sharded")
    (snapshot / "model-00004-of-00011.safetensors").unlink()
    assert hub.resolve("org/sharded") == snapshot  # downloaded again
    assert (snapshot / "model-00004-of-00011.safetensors").is_file()


def test_preprocessor_config_is_fetched_when_present(fake):
    fake.add("org/tiny", SAFETENSORS | {"preprocessor_config.json": PREPROCESSOR})
    snapshot = hub.resolve("org/tiny")
    assert (snapshot / "preprocessor_config.json").read_bytes() == PREPROCESSOR


def test_other_revisions_get_their_own_ref_and_snapshot(fake, cache):
    main = fake.add("org/tiny", SAFETENSORS)
    v1 = fake.add("org/tiny", SAFETENSORS | {"preprocessor_config.json": PREPROCESSOR}, "v1.0")
    assert hub.resolve("org/tiny", revision="v1.0").name == v1
    assert hub.resolve("org/tiny").name == main
    refs = cache / "models--org--tiny" / "refs"
    assert (refs / "v1.0").read_text() == v1 and (refs / "main").read_text() == main
    count = len(fake.requests)
    by_commit = hub.resolve("org/tiny", revision=v1)  # a commit hash needs no ref
    assert by_commit.name == v1 and (by_commit / "preprocessor_config.json").is_file()
    assert len(fake.requests) == count
    assert not (refs / v1).exists()


def test_a_blob_already_cached_under_its_sha256_is_not_downloaded_again(fake):
    fake.add("org/tiny", SAFETENSORS)
    fake.add("org/tiny", SAFETENSORS, "v2")
    hub.resolve("org/tiny")
    hub.resolve("org/tiny", revision="v2")
    assert len([p for p in fake.paths() if p.startswith("/cdn/")]) == 1


def test_symlinks_that_fail_become_copies(fake, monkeypatch):
    fake.add("org/tiny", SAFETENSORS)

    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks are not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    snapshot = hub.resolve("org/tiny")
    assert not (snapshot / "model.safetensors").is_symlink()
    assert (snapshot / "model.safetensors").read_bytes() == SAFETENSORS["model.safetensors"]
    cnp.from_pretrained(snapshot)


# -- failures leave nothing behind -------------------------------------------------------

def ranges_asked(fake, filename):
    """The Range header of each request for `filename` that carried one (None for the rest)."""
    return [h.get("Range") for path, h in fake.requests if path.endswith("/" + filename)]


@pytest.mark.parametrize("static", [False, True])
def test_a_dropped_connection_is_resumed_with_a_range_request(fake, cache, static):
    fake.static = static
    fake.add("org/tiny", SAFETENSORS)
    fake.faults["model.safetensors"] = ["drop"]  # once: half the file, then the connection closes
    snapshot = hub.resolve("org/tiny")
    assert (snapshot / "model.safetensors").read_bytes() == SAFETENSORS["model.safetensors"]
    half = len(SAFETENSORS["model.safetensors"]) // 2
    ranges = ranges_asked(fake, "model.safetensors")  # the hub's hop and its CDN's, or the mirror's
    assert ranges == [None] * (1 + (not static)) + [f"bytes={half}-"] * (1 + (not static))
    assert not any(".incomplete" in p for p in files_in(cache))
    cnp.from_pretrained(snapshot)


def test_a_server_that_ignores_range_sends_the_whole_file_again(fake, cache):
    fake.ranges = False
    fake.add("org/tiny", SAFETENSORS)
    fake.faults["model.safetensors"] = ["drop", "drop"]
    snapshot = hub.resolve("org/tiny")
    assert (snapshot / "model.safetensors").read_bytes() == SAFETENSORS["model.safetensors"]
    assert len([p for p in fake.paths() if p.startswith("/cdn/")]) == 3  # asked 3 times in all
    assert not any(".incomplete" in p for p in files_in(cache))


@pytest.mark.parametrize("static", [False, True])
def test_a_connection_that_keeps_dropping_fails_after_the_retries(fake, cache, static):
    fake.static = static
    fake.add("org/tiny", SAFETENSORS)
    fake.faults["model.safetensors"] = "drop"  # every time: each attempt gets half of the rest
    attempts = hub.RETRIES + 1
    with pytest.raises(cnp.WeightsError, match=rf"model.safetensors: download failed after "
                                               rf"{attempts} attempts \(1: the connection "
                                               rf"closed after 154660 of 309320 bytes; 2: .*"
                                               rf"{attempts}: .*\). To use local weights"):
        hub.resolve("org/tiny")
    assert_nothing_installed(cache, partial=not static)  # a mirror gives no sha256 to resume by
    del fake.faults["model.safetensors"]
    fake.requests.clear()
    snapshot = hub.resolve("org/tiny")
    assert (snapshot / "model.safetensors").read_bytes() == SAFETENSORS["model.safetensors"]
    first_range = ranges_asked(fake, "model.safetensors")[-1]
    assert (first_range is None) == static  # the hub's file resumes where the last run stopped
    assert not any(".incomplete" in p for p in files_in(cache))


def test_an_interrupted_download_resumes_in_the_next_run(fake, cache, monkeypatch):
    fake.add("org/tiny", SAFETENSORS)
    monkeypatch.setattr(hub, "CHUNK", 100_000)

    def interrupt(self, done):
        if done == 200_000:  # two chunks of model.safetensors have arrived
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(hub._Progress, "update", interrupt)
        with pytest.raises(KeyboardInterrupt):
            hub.resolve("org/tiny")
    assert_nothing_installed(cache, partial=True)
    assert files_in(cache) == [f"models--org--tiny/blobs/{SHA_ST}.incomplete"]
    assert (cache / files_in(cache)[0]).stat().st_size == 200_000
    fake.requests.clear()
    snapshot = hub.resolve("org/tiny")
    # the hub's answer names the blob (its sha256 ETag); the CDN is asked for the rest only
    assert ranges_asked(fake, "model.safetensors") == [None, "bytes=200000-"]
    assert (snapshot / "model.safetensors").read_bytes() == SAFETENSORS["model.safetensors"]
    cnp.from_pretrained(snapshot)


def test_a_resumed_file_is_verified_whole(fake, cache):
    fake.add("org/tiny", SAFETENSORS)
    blobs = cache / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{SHA_ST}.incomplete").write_bytes(b"not the first bytes of the file")
    with pytest.raises(cnp.WeightsError, match=f"its sha256 is [0-9a-f]{{64}}, but the server's "
                                               f"ETag says {SHA_ST}; nothing was cached"):
        hub.resolve("org/tiny")
    assert files_in(cache) == []  # the bad partial file is gone: the next run starts afresh
    assert (hub.resolve("org/tiny") / "model.safetensors").read_bytes() == \
        SAFETENSORS["model.safetensors"]


def test_a_kept_file_that_is_already_whole_is_fetched_again(fake, cache):
    """Range from its end is refused (416): start over rather than fail."""
    fake.add("org/tiny", SAFETENSORS)
    blobs = cache / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{SHA_ST}.incomplete").write_bytes(SAFETENSORS["model.safetensors"])
    snapshot = hub.resolve("org/tiny")
    assert ranges_asked(fake, "model.safetensors") == [None, "bytes=309320-", None, None]
    assert (snapshot / "model.safetensors").read_bytes() == SAFETENSORS["model.safetensors"]
    assert not any(".incomplete" in p for p in files_in(cache))


def test_a_dropped_shard_keeps_the_verified_shards_for_the_next_run(fake, cache):
    fake.add("org/sharded", SHARDED)
    fake.faults["model-00007-of-00011.safetensors"] = "drop"
    with pytest.raises(cnp.WeightsError, match="model-00007-of-00011.safetensors: download "
                                               "failed after"):
        hub.resolve("org/sharded")
    assert_nothing_installed(cache, partial=True)
    del fake.faults["model-00007-of-00011.safetensors"]
    fake.requests.clear()
    snapshot = hub.resolve("org/sharded")
    assert sorted(os.listdir(snapshot)) == sorted(SHARDED)
    cdn = [p.rsplit("-of-", 1)[0].rsplit("/", 1)[1] for p in fake.paths() if p.startswith("/cdn/")]
    assert cdn == [f"model-{i:05d}" for i in range(7, 12)]  # shards 1 to 6 were kept
    assert ranges_asked(fake, "model-00007-of-00011.safetensors")[-1].startswith("bytes=")
    cnp.from_pretrained(snapshot)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_a_transient_status_is_retried_with_exponential_backoff(fake, waits, status):
    fake.add("org/tiny", SAFETENSORS)
    fake.faults["config.json"] = [status, status, status]
    snapshot = hub.resolve("org/tiny")
    assert waits == [0.001, 0.002, 0.004]
    assert (snapshot / "config.json").read_bytes() == SAFETENSORS["config.json"]


def test_503_then_200_really_waits_and_succeeds(fake):
    fake.add("org/tiny", SAFETENSORS)
    fake.faults["model.safetensors"] = [503]
    fake.faults["config.json"] = [503, 502]
    cnp.from_pretrained(hub.resolve("org/tiny"))
    assert [p.rsplit("/", 1)[1] for p in fake.paths()].count("config.json") == 3


def test_retry_after_is_respected(fake, waits):
    fake.add("org/tiny", SAFETENSORS)
    fake.retry_after = "7"
    fake.faults["config.json"] = [429, 503]
    hub.resolve("org/tiny")
    assert waits == [7.0, 7.0]


def test_retry_after_past_max_wait_fails_at_once(fake, waits):
    fake.add("org/tiny", SAFETENSORS)
    fake.retry_after = "3600"
    fake.faults["config.json"] = [429]
    with pytest.raises(cnp.WeightsError, match=r"asks to retry after 3600 s, more than "
                                               r"convnext_np.hub.MAX_WAIT \(60 s\); try again "
                                               r"later \(1: HTTP 429 Too Many Requests\)"):
        hub.resolve("org/tiny")
    assert waits == []


def test_retry_after_may_be_an_http_date():
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= hub._retry_after({"Retry-After": soon}) <= 30
    assert hub._retry_after({"Retry-After": "12"}) == 12
    assert hub._retry_after({"Retry-After": "soon"}) is None
    assert hub._retry_after({}) is None


def test_a_status_that_stays_fails_after_the_retries(fake, waits, cache):
    fake.add("org/tiny", SAFETENSORS)
    fake.faults["model.safetensors"] = 503
    attempts = hub.RETRIES + 1
    with pytest.raises(cnp.WeightsError, match=rf"model.safetensors: download failed after "
                                               rf"{attempts} attempts \(1: HTTP 503 Service "
                                               rf"Unavailable; .*; {attempts}: HTTP 503"):
        hub.resolve("org/tiny")
    assert waits == [0.001 * 2 ** n for n in range(hub.RETRIES)]
    assert files_in(cache) == []


@pytest.mark.parametrize("status", [400, 404, 410])
def test_other_statuses_are_not_retried(fake, waits, status):
    fake.add("org/tiny", SAFETENSORS)
    fake.faults["config.json"] = status
    with pytest.raises(cnp.WeightsError, match=f"HTTP {status}"):
        hub.resolve("org/tiny")
    assert waits == [] and len(fake.requests) == 1


def test_a_wrong_etag_hash_leaves_nothing_and_a_retry_works(fake, cache):
    fake.add("org/tiny", SAFETENSORS)
    fake.faults["model.safetensors"] = "bad-etag"
    with pytest.raises(cnp.WeightsError, match=f"its sha256 is {SHA_ST}, but the server's "
                                               f"ETag says {'0' * 64}; nothing was cached"):
        hub.resolve("org/tiny")
    assert files_in(cache) == []
    del fake.faults["model.safetensors"]
    hub.resolve("org/tiny")


@pytest.mark.parametrize("static", [False, True])
def test_the_table_pins_the_default_repos_safetensors(fake, cache, monkeypatch, static):
    fake.static = static
    fake.add("facebook/convnext-tiny-224", SAFETENSORS)
    fake.add("timm/convnext_tiny.fb_in1k", SAFETENSORS)

    def pin(sha256):
        rows = tuple(dataclasses.replace(r, sha256=sha256) if r.alias == "convnext-tiny-224"
                     else r for r in checkpoints.CHECKPOINTS)
        monkeypatch.setattr(checkpoints, "CHECKPOINTS", rows)

    pin("f" * 64)
    with pytest.raises(cnp.WeightsError, match="convnext_np.checkpoints says f{64}"):
        hub.resolve("convnext-tiny-224")
    assert_nothing_installed(cache)
    hub.resolve("timm/convnext_tiny.fb_in1k")  # the pin is for facebook/'s file only
    pin(SHA_ST)
    cnp.from_pretrained(hub.resolve("convnext-tiny-224"))


def test_a_shard_index_cannot_point_outside_the_snapshot(fake, cache):
    index = b'{"weight_map": {"classifier.weight": "../../../evil.safetensors"}}'
    fake.add("org/evil", {"config.json": SAFETENSORS["config.json"],
                          "model.safetensors.index.json": index})
    with pytest.raises(cnp.WeightsError, match="shard '../../../evil.safetensors' is not a valid"):
        hub.resolve("org/evil")
    assert files_in(cache) == []


def test_a_repo_without_weights_or_config_is_named(fake):
    fake.add("org/empty", {"config.json": SAFETENSORS["config.json"]})
    with pytest.raises(cnp.WeightsError, match=r"org/empty \(revision 'main'\) on .* has no "
                                               "weights: none of model.safetensors"):
        hub.resolve("org/empty")
    with pytest.raises(cnp.WeightsError, match="org/missing has no config.json at revision "
                                               "'main'.*pass a local directory"):
        hub.resolve("org/missing")
    with pytest.raises(cnp.WeightsError, match=r"revision '\.\./x' is not a valid"):
        hub.resolve("org/empty", revision="../x")


def test_401_asks_for_hf_token_which_goes_only_to_the_hub(fake, monkeypatch):
    fake.add("org/gated", SAFETENSORS)
    fake.faults["config.json"] = 401
    with pytest.raises(cnp.WeightsError, match="HTTP 401: org/gated does not exist, or it is "
                                               "private or gated; set HF_TOKEN"):
        hub.resolve("org/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with pytest.raises(cnp.WeightsError, match="the token from HF_TOKEN was refused"):
        hub.resolve("org/gated")
    del fake.faults["config.json"]
    fake.requests.clear()
    hub.resolve("org/gated")
    auth = {(path.split("/")[1], h.get("Authorization")) for path, h in fake.requests}
    assert auth == {("org", "Bearer hf_secret"), ("cdn", None)}


def test_an_unreachable_fake_fails_fast_saying_how_to_use_local_weights(monkeypatch, waits):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(cnp.WeightsError, match="cannot reach 127.0.0.1.*To use local weights "
                                               "instead, pass a local directory.*HF_ENDPOINT"
                                               ".*HF_HUB_OFFLINE=1"):
        hub.resolve("facebook/convnext-tiny-224")
    assert time.monotonic() - start < 15
    assert waits == []  # connection refused: not retried


def test_a_fake_that_never_answers_times_out_on_each_attempt(monkeypatch):
    monkeypatch.setattr(hub, "TIMEOUT", 0.3)
    with socket.socket() as silent:  # accepts connections (backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(cnp.WeightsError, match=f"after {hub.RETRIES + 1} attempts .*timed "
                                                   "out.*To use local weights"):
            hub.resolve("org/tiny")
        assert time.monotonic() - start < 5


def test_a_non_http_endpoint_is_refused(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "file:///etc")
    with pytest.raises(cnp.WeightsError, match="HF_ENDPOINT='file:///etc' is not an http"):
        hub.resolve("org/tiny")


# -- progress ---------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_drawn_on_a_terminal_and_can_be_disabled(fake, monkeypatch, tmp_path):
    fake.add("org/tiny", SAFETENSORS)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    hub.resolve("org/tiny")
    assert "\rmodel.safetensors 0.3/0.3 MB 100%\n" in terminal.getvalue()

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hub.resolve("org/tiny", cache_dir=tmp_path / "other")
    assert terminal.getvalue() == ""


def test_progress_off_a_terminal_is_one_line_for_large_files(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    small = hub._Progress("config.json", 1000)
    small.update(1000)
    small.close()
    large = hub._Progress("model.safetensors", 114_000_000)
    for done in range(0, 114_000_001, 1_000_000):
        large.update(done)
    large.close()
    assert log.getvalue() == "model.safetensors 114.0/114.0 MB 100%\n"


def test_a_gated_dinov3_repo_says_to_accept_the_licence_and_reads_the_token_file(fake, monkeypatch, tmp_path):
    repo = "facebook/dinov3-convnext-tiny-pretrain-lvd1689m"
    fake.add(repo, SAFETENSORS)
    fake.faults["config.json"] = 403
    with pytest.raises(cnp.WeightsError, match=r"HTTP 403: .*set HF_TOKEN.*gated behind the dinov3-license "
                                               r"licence: accept it at https://huggingface.co/" + repo):
        hub.resolve("dinov3-convnext-tiny")
    (tmp_path / "token").write_text("hf_from_file\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(cnp.WeightsError, match=f"the token from the token file "
                                               f"{tmp_path / 'token'} was refused"):
        hub.resolve(repo)
    del fake.faults["config.json"]
    fake.requests.clear()
    hub.resolve(repo)
    assert ("facebook", "Bearer hf_from_file") in {(p.split("/")[1], h.get("Authorization"))
                                                   for p, h in fake.requests}


# -- the token ---------------------------------------------------------------------------

def test_a_repo_that_needs_a_bearer_token_gets_the_login_token(fake, monkeypatch, tmp_path):
    fake.add("org/private", SAFETENSORS)
    fake.token = "hf_login"
    with pytest.raises(cnp.WeightsError, match="HTTP 401: .*set HF_TOKEN"):
        hub.resolve("org/private")
    login = tmp_path / "home" / ".cache" / "huggingface" / "token"  # where the CLI's login writes
    login.parent.mkdir(parents=True)
    login.write_text("hf_login\n")
    snapshot = hub.resolve("org/private")
    assert {h.get("Authorization") for p, h in fake.requests if "/resolve/" in p} >= {"Bearer hf_login"}
    cnp.from_pretrained(snapshot)


@pytest.mark.parametrize("env, files, expected", [
    ({}, {}, None),
    ({}, {"home/.cache/huggingface/token": "hf_default"}, "hf_default"),
    ({"XDG_CACHE_HOME": "xdg"}, {"xdg/huggingface/token": "hf_xdg"}, "hf_xdg"),
    ({"HF_HOME": "hf"}, {"hf/token": "hf_home\n"}, "hf_home"),
    ({"HF_HOME": "hf", "HF_TOKEN_PATH": "elsewhere/t"}, {"hf/token": "hf_home",
                                                        "elsewhere/t": "hf_path"}, "hf_path"),
    ({"HUGGING_FACE_HUB_TOKEN": "hf_old"}, {"home/.cache/huggingface/token": "hf_file"}, "hf_old"),
    ({"HF_TOKEN": "hf_env", "HUGGING_FACE_HUB_TOKEN": "hf_old"}, {}, "hf_env"),
    ({"HF_TOKEN": " "}, {"home/.cache/huggingface/token": "hf_file"}, "hf_file"),
    ({}, {"home/.cache/huggingface/token": " \n"}, None),
])
def test_the_token_is_found_where_huggingface_hub_finds_it(monkeypatch, tmp_path, env, files, expected):
    env = {k: v if k.endswith("TOKEN") else str(tmp_path / v) for k, v in env.items()}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert hub.hub_token() == expected


def test_the_token_lookup_agrees_with_huggingface_hub(tmp_path):
    """huggingface_hub's own get_token, in a fresh process (it reads its paths on import)."""
    pytest.importorskip("huggingface_hub")
    cases = [({"HF_HOME": "hf"}, "hf/token"), ({"HF_TOKEN_PATH": "p/t", "HF_HOME": "hf"}, "p/t"),
             ({"XDG_CACHE_HOME": "xdg"}, "xdg/huggingface/token"), ({}, "home/.cache/huggingface/token")]
    code = "import huggingface_hub, convnext_np.hub as h; print(huggingface_hub.get_token(), h.hub_token())"
    for n, (paths, token_file) in enumerate(cases):
        root = tmp_path / str(n)
        (root / token_file).parent.mkdir(parents=True)
        (root / token_file).write_text(f"hf_case{n}\n")
        (root / "hf").mkdir(exist_ok=True)
        (root / "hf" / "token").touch()  # an empty file where the path variable points elsewhere
        env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARIABLES}
        env |= {k: str(root / v) for k, v in paths.items()} | {"HOME": str(root / "home")}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out == [f"hf_case{n}"] * 2, (paths, out)
