"""Hub names -> local snapshot directories: the Hugging Face cache first, else a download.

:func:`resolve` turns a hub repo id (``facebook/convnext-tiny-224``), a timm name
(``convnext_tiny.fb_in1k``, ``timm/convnext_tiny.fb_in1k``) or an alias from
:mod:`convnext_np.checkpoints` (``convnext-tiny-224``) into a directory that
:func:`convnext_np.loading.load_local` reads. Standard library only (``urllib``, ``hashlib``).

Why not ``huggingface_hub``: it would become a required dependency, with its own requirements
(an HTTP stack among them), of a package that otherwise needs none, and this client needs only a
few of its features:
its cache layout, its token, resuming and retrying. Those are implemented here and tested over
real HTTP against a server on 127.0.0.1 (``tests/test_hub.py``) that drops connections, answers
503, demands a token and serves byte ranges; the two share the cache, so a user who has
huggingface_hub loses nothing.

The cache is huggingface_hub's, so either tool reuses what the other downloaded. Its root is
``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub`` (default ``~/.cache/huggingface/hub``)::

    models--facebook--convnext-tiny-224/
        blobs/<etag or sha256>                    file contents, named by the hub's ETag
        blobs/<sha256>.incomplete                 a download that failed part-way (below)
        snapshots/<commit>/config.json         -> ../../blobs/<...>   (relative symlinks)
        snapshots/<commit>/model.safetensors   -> ../../blobs/<...>
        refs/main                                 the commit that ``main`` resolved to

Files come from ``{HF_ENDPOINT}/{repo}/resolve/{revision}/{file}`` (default endpoint
https://huggingface.co); any static server that mirrors that layout works. The hub's first
response carries ``X-Repo-Commit`` and ``X-Linked-Etag``/``ETag`` (the sha256 of an LFS file)
before redirecting to its CDN; a plain mirror sends neither, and then the revision names the
snapshot folder and the sha256 computed while downloading names the blob. A snapshot holds
``config.json``, the first weights that exist out of ``model.safetensors``, the sharded
``model.safetensors.index.json`` and its shards, ``pytorch_model.bin`` and its sharded
index, and ``preprocessor_config.json`` when the repo has one.

Guarantees:

- A complete cached snapshot (``refs/<revision>``, or a commit hash, pointing at a snapshot
  with a config and every weights file) is returned without touching the network.
  ``HF_HUB_OFFLINE=1`` never touches it; a cache miss is then an error.
- No snapshot link and no ref exists until every file of the snapshot has arrived and been
  verified: each is streamed to ``blobs/<name>.incomplete-<random>`` while being hashed, its
  size checked against ``Content-Length`` (``Content-Range`` when resumed), its sha256 against
  a sha256 ETag and against the sha256 that :mod:`convnext_np.checkpoints` pins for the default
  repo's ``model.safetensors`` at ``main``. Only then are the blobs renamed into place, the
  snapshot links made (each created under a temporary name and renamed over; a copy of the blob
  where symlinks fail) and the ref written (the same way). Concurrent downloads of the same
  repo are safe: each writes its own temporary files and the renames are atomic.
- Transient failures are retried, :data:`RETRIES` times after the first attempt: HTTP 429,
  500, 502, 503 and 504, a connection that breaks or closes early, an answer that does not come
  within :data:`TIMEOUT`. Before retry *n* it waits ``BACKOFF * 2**(n-1)`` seconds (1, 2, 4, 8,
  16), or what the server's ``Retry-After`` asks (seconds or a date); a wait over
  :data:`MAX_WAIT` is not waited, the download fails at once saying so. The last failure
  raises :class:`WeightsError` naming the URL, the number of attempts and each one's error.
  A host that cannot be connected to at all (no such name, connection refused, TLS refused,
  connect time-out) is not retried: the machine is offline or the endpoint wrong, and the error
  comes at once with a message saying how to use local weights instead. Other HTTP errors
  (401, 403, 404 ...) and hash mismatches are not retried either.
- Resuming: a retry asks only for the bytes still missing (``Range: bytes=<have>-``) and
  appends them when the server answers 206 from that offset; a server that answers 200 sends
  the whole file again, which replaces what was there. When a download fails for good (or is
  interrupted, Ctrl-C included), the part of an LFS file that arrived is kept as
  ``blobs/<sha256>.incomplete``, and so are the files of the snapshot already verified (as
  ``blobs/<sha256>``, which no snapshot links yet); the next download of that blob takes the
  partial file over (an atomic rename, so two processes never write one file) and resumes it.
  The sha256 is checked over the whole file as always. Everything else (a partial file not
  named by a sha256, a file that failed its hash check) is deleted.

HTTP requests send ``User-Agent: convnext_np/<version>`` and, where there is a token,
``Authorization: Bearer`` (only to the endpoint's own host, never to a CDN it redirects to).
The token is looked up as huggingface_hub's ``get_token`` does: ``$HF_TOKEN``, else
``$HUGGING_FACE_HUB_TOKEN`` (its older name), else the file ``huggingface-cli login`` writes:
``$HF_TOKEN_PATH``, else ``token`` in the HF home folder (``$HF_HOME``, else
``$XDG_CACHE_HOME/huggingface``, default ``~/.cache/huggingface``). Gated repos (DINOv3's, for
one) need both a token and the licence accepted on the repo's page; a 401 or 403 says so and
names where the refused token came from.
Progress goes to stderr: on a terminal a bar redrawn at most every 0.2 s (:mod:`.progress`)
(``model.safetensors 12.3/114.0 MB 45%``); elsewhere one line per file of 1 MB or more once it
has arrived; nothing when ``HF_HUB_DISABLE_PROGRESS_BARS=1``.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import re
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from . import checkpoints
from .errors import WeightsError
from .files import WEIGHT_FILES, atomic_write, find_weights, shard_names
from .progress import StatusLine
from .version import __version__

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT = 10.0  # seconds, for connecting and for each read
RETRIES = 5  # attempts after the first, for the transient failures of the module docstring
BACKOFF = 1.0  # seconds before the first retry, doubled before each next one
MAX_WAIT = 60.0  # seconds: the longest wait, backoff or Retry-After, before a retry
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
CHUNK = 1 << 20
MAX_REDIRECTS = 5


_TRUE = {"1", "true", "yes", "on"}
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_REPO_ID = re.compile(r"\w(?:[\w.-]*\w)?/\w(?:[\w.-]*\w)?", re.ASCII)
_TIMM_NAME = re.compile(r"convnext\w*\.\w[\w.-]*", re.ASCII)
_LOCAL_HINT = ("To use local weights instead, pass a local directory (config.json + weights) or a "
               "weights file to from_pretrained / --model; or set HF_ENDPOINT to a reachable "
               "mirror; or pre-populate the Hugging Face cache (HF_HUB_CACHE) and set "
               "HF_HUB_OFFLINE=1 to use only the cache.")


def resolve(name: str, *, revision: str = "main", cache_dir=None) -> Path:
    """A local snapshot directory holding the repo's files for `name`, downloading what is missing."""
    repo = repo_id(name)
    _check_relative_path(revision, f"{name}: revision")
    repo_dir = cache_root(cache_dir) / ("models--" + repo.replace("/", "--"))
    snapshot = cached_snapshot(repo_dir, revision)
    if snapshot is not None:
        return snapshot
    if _env_flag("HF_HUB_OFFLINE"):
        raise WeightsError(f"{name}: {repo} (revision {revision!r}) is not in the Hugging Face "
                           f"cache at {repo_dir.parent}, and HF_HUB_OFFLINE is on, so it cannot "
                           "be downloaded. Unset HF_HUB_OFFLINE, or pass a local directory or "
                           "weights file instead.")
    download = _Download(repo, repo_dir, revision)
    try:
        download.fetch_all(pinned_sha256=_pinned_sha256(repo, revision))
        return download.install()
    finally:
        download.keep_verified_blobs()


def repo_id(name: str) -> str:
    """The hub repo for a repo id, a timm name (``timm/`` optional) or a checkpoint alias."""
    row = checkpoints.find_checkpoint(name)
    if row is not None:
        if name == row.alias:
            return default_repo(row)
        return name if name == row.hf_id else f"timm/{row.timm}"
    if "/" in name:
        if not _REPO_ID.fullmatch(name) or "--" in name or ".." in name:
            raise WeightsError(f"{name!r} is neither an existing local path nor a hub repo id "
                               "of the form 'org/name'")
        return name
    if _TIMM_NAME.fullmatch(name):
        return f"timm/{name}"
    aliases = [row.alias for row in checkpoints.CHECKPOINTS]
    close = difflib.get_close_matches(name, aliases, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise WeightsError(f"{name!r} is not a local path, a hub repo id (org/name), a timm name "
                       f"(convnext_tiny.fb_in1k) or a known alias; {hint}known aliases include "
                       f"{', '.join(aliases[:4])} (see convnext_np.CHECKPOINTS)")


def default_repo(row: checkpoints.Checkpoint) -> str:
    """Where a checkpoint alias downloads from: its ``facebook/`` repo, else ``timm/<name>``."""
    return row.hf_id or f"timm/{row.timm}"


def hub_token() -> str | None:
    """The token huggingface_hub would send (module docstring); None when there is none."""
    return _token()[0]


def _token() -> tuple[str | None, str]:
    """(token, where it came from), looked up in huggingface_hub's order."""
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(variable, "").strip():
            return os.environ[variable].strip(), variable
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(_hf_home(), "token")
    path = Path(os.path.expandvars(path)).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, ""
    return (token, f"the token file {path}") if token else (None, "")


def _hf_home() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")


def cache_root(cache_dir=None) -> Path:
    """The Hugging Face hub cache folder, chosen as huggingface_hub chooses it."""
    if cache_dir is not None:
        return Path(os.fspath(cache_dir)).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    return Path(os.path.expandvars(_hf_home())).expanduser() / "hub"


def cached_snapshot(repo_dir: Path, revision: str) -> Path | None:
    """The cached snapshot for `revision` if it is complete (config + all weights), else None."""
    try:
        commit = (repo_dir / "refs" / revision).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        commit = revision if _COMMIT.fullmatch(revision) else ""
    if not commit or "/" in commit or commit.startswith("."):
        return None
    snapshot = repo_dir / "snapshots" / commit
    if not (snapshot / "config.json").is_file():
        return None
    weights = find_weights(snapshot)
    if weights is None:
        return None
    if not weights.name.endswith(".index.json"):
        return snapshot
    try:
        shards = shard_names(weights)
    except WeightsError:
        return None
    return snapshot if all((snapshot / s).is_file() for s in shards) else None


@dataclass
class _Staged:
    """One file of the snapshot: verified on disk at `tmp`, or already in blobs/ (`tmp` None)."""

    filename: str
    blob: str
    tmp: Path | None


class _Transient(Exception):
    """A failure worth another attempt (module docstring); `retry_after` from the server."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Partial:
    """The bytes of one file received so far, in ``blobs/<name>.incomplete-<random>``, and their
    running sha256. `lfs_sha256` is the whole file's, once the hub has named it (its ETag)."""

    def __init__(self, blobs: Path, name: str):
        self.path = blobs / f"{name}.incomplete-{secrets.token_hex(8)}"
        self.size, self.digest, self.lfs_sha256 = 0, hashlib.sha256(), None
        self.file = None

    def resume_from(self, etag: str | None) -> int:
        """How many bytes are here; the first time the hub names an LFS file, takes over a
        ``blobs/<sha256>.incomplete`` that an earlier download kept."""
        sha256 = _lfs_sha256(etag)
        if sha256 is not None and self.lfs_sha256 is None:
            self.lfs_sha256 = sha256
            if self.file is None:
                self._take_over(self.path.parent / f"{sha256}.incomplete")
        return self.size

    def _take_over(self, kept: Path) -> None:
        try:
            os.replace(kept, self.path)  # atomic: of two processes, one gets it
        except FileNotFoundError:
            return
        self.file = open(self.path, "r+b")
        while chunk := self.file.read(CHUNK):
            self.digest.update(chunk)
            self.size += len(chunk)

    def restart(self) -> None:
        """Drop what is here: the server is sending the file from its first byte."""
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "xb")
        self.file.seek(0)
        self.file.truncate()
        self.size, self.digest = 0, hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def keep_or_delete(self) -> None:
        """After a failure: keep an LFS file's bytes for the next download, else delete them."""
        self.close()
        if self.lfs_sha256 is not None and self.size and self.path.is_file():
            os.replace(self.path, self.path.parent / f"{self.lfs_sha256}.incomplete")
        else:
            self.path.unlink(missing_ok=True)


class _Download:
    """The files of one snapshot, fetched to temporary files, then installed all together."""

    def __init__(self, repo: str, repo_dir: Path, revision: str):
        self.repo, self.repo_dir, self.revision = repo, repo_dir, revision
        self.blobs = repo_dir / "blobs"
        self.endpoint = _endpoint()
        self.commit = None  # from X-Repo-Commit on config.json; None for a plain mirror
        self.staged: list[_Staged] = []

    def fetch_all(self, *, pinned_sha256: str | None) -> None:
        """config.json, the preferred weights (with shards) and preprocessor_config.json."""
        self.fetch("config.json")
        for weights in WEIGHT_FILES:
            pinned = pinned_sha256 if weights == "model.safetensors" else None
            staged = self.fetch(weights, optional=True, pinned_sha256=pinned)
            if staged is not None:
                break
        else:
            raise WeightsError(f"{self.repo} (revision {self.revision!r}) on {self.endpoint} has "
                               f"no weights: none of {', '.join(WEIGHT_FILES)} exists")
        if weights.endswith(".index.json"):
            for shard in shard_names(self._staged_path(staged), f"{self.repo}/{weights}"):
                self.fetch(shard)
        self.fetch("preprocessor_config.json", optional=True)

    def fetch(self, filename: str, *, optional: bool = False,
              pinned_sha256: str | None = None) -> _Staged | None:
        """Stage one file, retrying transient failures; None if `optional` and the server
        answers 404."""
        # All files after config.json come from the commit it resolved to, so that a push
        # between two requests cannot mix two versions of the repo.
        revision = self.commit or self.revision
        url = f"{self.endpoint}/{self.repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"
        partial = _Partial(self.blobs, Path(filename).name)
        errors = []
        try:
            while True:
                try:
                    staged = self._attempt(url, filename, partial, pinned_sha256)
                    break
                except _Transient as e:
                    errors.append(f"{e}")
                    _wait_before_retry(url, errors, e.retry_after)
        except urllib.error.HTTPError as e:
            partial.keep_or_delete()
            if e.code == 404 and optional:
                return None
            raise _http_error(e, url, self.repo, self.revision, filename) from None
        except OSError as e:  # the network's are _Transient or WeightsError by now: the disk's
            partial.keep_or_delete()
            raise WeightsError(f"{url}: cannot write to the cache at {self.blobs}: {e!r}") from None
        except BaseException:
            partial.keep_or_delete()
            raise
        partial.close()
        self.staged.append(staged)
        return staged

    def _attempt(self, url: str, filename: str, partial: _Partial,
                 pinned_sha256: str | None) -> _Staged:
        """One request (redirects followed) and its body; raises _Transient to be retried."""
        def offset(etag):  # None: the blob is here already, verified
            if self._have_verified_blob(etag, pinned_sha256):
                return None
            return partial.resume_from(etag)

        try:
            response, commit, etag = _open(url, offset=offset)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not partial.size:
                raise
            e.close()  # the range asked for is past the end: not our file after all
            partial.restart()
            response, commit, etag = _open(url, offset=offset)
        if filename == "config.json" and commit is not None:
            self.commit = commit
        if response is None:
            return _Staged(filename, etag, None)
        with response:
            self._stream(response, url, filename, partial)
        sha256 = partial.digest.hexdigest()
        for expected, source in ((_lfs_sha256(etag), "the server's ETag"),
                                 (pinned_sha256, "convnext_np.checkpoints")):
            if expected is not None and sha256 != expected:
                partial.lfs_sha256 = None  # not worth keeping for a resume
                raise WeightsError(f"{url}: download failed: its sha256 is {sha256}, but "
                                   f"{source} says {expected}; nothing was cached")
        return _Staged(filename, etag or sha256, partial.path)

    def _have_verified_blob(self, etag: str | None, pinned_sha256: str | None) -> bool:
        """Whether blobs/ has this content already: a blob named by a sha256 was checked."""
        sha256 = _lfs_sha256(etag)
        return sha256 is not None and pinned_sha256 in (None, sha256) \
            and (self.blobs / sha256).is_file()

    def _stream(self, response, url: str, filename: str, partial: _Partial) -> None:
        """Append the body to `partial` (from its first byte for a 200), checking its size."""
        start, total = _body_span(response, partial.size, url)
        if start == 0:
            partial.restart()
        progress = _Progress(filename, total)
        try:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Transient(f"the connection broke after {partial.size} bytes "
                                     f"({e!r})") from None
                if not chunk:
                    break
                partial.write(chunk)
                progress.update(partial.size)
        finally:
            progress.close()
        if total is not None and partial.size != total:
            raise _Transient(f"the connection closed after {partial.size} of {total} bytes")

    def _staged_path(self, staged: _Staged) -> Path:
        return staged.tmp if staged.tmp is not None else self.blobs / staged.blob

    def install(self) -> Path:
        """Rename the blobs into place, link the snapshot, write the ref; the snapshot dir."""
        commit = self.commit or quote(self.revision, safe="")
        snapshot = self.repo_dir / "snapshots" / commit
        for staged in self.staged:
            blob = self.blobs / staged.blob
            if staged.tmp is not None:
                os.replace(staged.tmp, blob)
                staged.tmp = None
            _link(blob, snapshot / staged.filename)
        if self.revision != commit or not _COMMIT.fullmatch(commit):
            ref = self.repo_dir / "refs" / self.revision
            if not ref.is_file() or ref.read_text(encoding="utf-8") != commit:
                atomic_write(ref, lambda p: Path(p).write_text(commit, encoding="utf-8"))
        return snapshot

    def keep_verified_blobs(self) -> None:
        """After a failure, the files named by their sha256 (the hub's, checked, or a mirror's
        file's own) become blobs: no snapshot links them yet, and a later download whose ETag
        names one skips it. The others (git files named by their sha1) are deleted."""
        for staged in self.staged:
            if staged.tmp is not None:
                if _SHA256.fullmatch(staged.blob):
                    os.replace(staged.tmp, self.blobs / staged.blob)
                else:
                    staged.tmp.unlink(missing_ok=True)
                staged.tmp = None


def _body_span(response, have: int, url: str) -> tuple[int, int | None]:
    """(first byte, whole size or None) of a 200 or of a 206 that continues at `have`."""
    if response.status != 206:
        length = response.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
    span = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if span is None or int(span[1]) != have:
        raise WeightsError(f"{url}: asked for the bytes from {have} on, the server sent "
                           f"Content-Range {response.headers.get('Content-Range')!r}")
    return have, None if span[3] == "*" else int(span[3])


def _wait_before_retry(url: str, errors: list[str], retry_after: float | None) -> None:
    """Sleep before retry ``len(errors)``, or raise WeightsError when there is none left."""
    retry = len(errors)
    wait = BACKOFF * 2 ** (retry - 1) if retry_after is None else retry_after
    tried = "; ".join(f"{n}: {error}" for n, error in enumerate(errors, 1))
    if retry > RETRIES:
        raise WeightsError(f"{url}: download failed after {len(errors)} attempts ({tried}). "
                           f"{_LOCAL_HINT}")
    if wait > MAX_WAIT:
        raise WeightsError(f"{url}: the server asks to retry after {wait:.0f} s, more than "
                           f"convnext_np.hub.MAX_WAIT ({MAX_WAIT:.0f} s); try again later "
                           f"({tried})")
    time.sleep(wait)


def _retry_after(headers) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (RFC 9110, 10.2.3); None when
    absent or malformed."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn redirects into HTTPErrors, so that each hop's headers can be read (see _open)."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _open(url: str, *, offset):
    """GET `url`, following redirects by hand: (response, commit, etag).

    ``commit`` and ``etag`` come from the first hop that carries ``X-Repo-Commit`` (the hub's
    own answer, not its CDN's), both None for a plain mirror. ``offset(etag)`` is asked before
    each request and of the final answer: the bytes already at hand, asked for from there on
    (``Range``) when above 0; None when the whole content is, and then it stops there with
    response None, before the CDN is asked.
    Raises HTTPError for an HTTP error status, _Transient for a failure worth retrying,
    WeightsError when a server cannot be connected to.
    """
    origin = urlsplit(url).netloc
    commit = etag = None
    for _ in range(MAX_REDIRECTS + 1):
        start = offset(etag)
        if start is None:
            return None, commit, etag
        headers = {"User-Agent": _user_agent()}
        token = hub_token()
        if token and urlsplit(url).netloc == origin:
            headers["Authorization"] = f"Bearer {token}"
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            response = _OPENER.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            hop = e.headers
            if commit is None:
                commit, etag = _hub_metadata(hop)
            if e.code in (301, 302, 303, 307, 308) and hop.get("Location"):
                e.close()
                url = urljoin(url, hop["Location"])
                continue
            if e.code in RETRY_STATUS:
                e.close()
                raise _Transient(f"HTTP {e.code} {e.reason}", _retry_after(hop)) from None
            raise
        except urllib.error.URLError as e:  # urllib's wrapper of a failure to connect
            raise WeightsError(f"{url}: cannot reach {urlsplit(url).netloc} ({e.reason}). "
                               f"{_LOCAL_HINT}") from None
        except (OSError, http.client.HTTPException) as e:  # connected, then no answer
            raise _Transient(f"no answer from {urlsplit(url).netloc} ({e!r})") from None
        if commit is None:
            commit, etag = _hub_metadata(response.headers)
        if offset(etag) is None:
            response.close()
            return None, commit, etag
        return response, commit, etag
    raise WeightsError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _hub_metadata(headers) -> tuple[str | None, str | None]:
    """(commit, etag) from a hub response; (None, None) unless it has a well-formed commit."""
    commit = headers.get("X-Repo-Commit")
    if not commit or not _COMMIT.fullmatch(commit):
        return None, None
    etag = headers.get("X-Linked-Etag") or headers.get("ETag") or ""
    etag = etag.removeprefix("W/").strip('"')
    return commit, etag if _COMMIT.fullmatch(etag) or _SHA256.fullmatch(etag) else None


def _lfs_sha256(etag: str | None) -> str | None:
    """The sha256 an LFS file's ETag is; None for a git file's sha1 ETag or none at all."""
    return etag if etag is not None and _SHA256.fullmatch(etag) else None


def _http_error(e: urllib.error.HTTPError, url: str, repo: str, revision: str,
                filename: str) -> WeightsError:
    code = e.headers.get("X-Error-Code")
    status = f"HTTP {e.code}" + (f" ({code})" if code else "")
    e.close()
    if e.code in (401, 403):
        token, source = _token()
        token = (f"the token from {source} was refused" if token else
                 "set HF_TOKEN (or run `huggingface-cli login`, which writes the token file) "
                 "to an access token that can read it")
        row = checkpoints.find_checkpoint(repo)
        licence = (f"{repo} is gated behind the {row.license} licence: accept it at "
                   f"https://huggingface.co/{repo}, signed in as the account whose token you use"
                   if row is not None and row.gated else
                   "a gated repo also needs its licence accepted on its hub page")
        return WeightsError(f"{url}: {status}: {repo} does not exist, or it is private or "
                            f"gated; {token}; {licence}")
    if e.code == 404:
        return WeightsError(f"{url}: {status}: {repo} has no {filename} at revision "
                            f"{revision!r}; check the name and the revision, or pass a local "
                            "directory or weights file")
    return WeightsError(f"{url}: {status} {e.reason}")


class _Progress:
    """``\\r{file} 12.3/114.0 MB 45%`` on a terminal; a final line elsewhere (module docstring)."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.done = label, total, 0
        self.enabled = not _env_flag("HF_HUB_DISABLE_PROGRESS_BARS")
        self.line = StatusLine(self.enabled and sys.stderr.isatty(), sys.stderr)

    def update(self, done: int) -> None:
        self.done = done
        self.line.draw(self._text())

    def close(self) -> None:
        if self.line.drawn is not None:
            self.line.draw(self._text(), final=True)
        elif self.enabled and not self.line.enabled and self.done >= 1 << 20:
            sys.stderr.write(f"{self._text()}\n")

    def _text(self) -> str:
        if not self.total:
            return f"{self.label} {self.done / 1e6:.1f} MB"
        return (f"{self.label} {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
                f"{100 * self.done // self.total}%")


def _check_relative_path(value: str, what: str) -> None:
    """Refuse a revision or file name that could point outside its folder."""
    if not isinstance(value, str) or "\\" in value \
            or any(part in ("", ".", "..") for part in value.split("/")):
        raise WeightsError(f"{what} {value!r} is not a valid relative name")


def _link(blob: Path, path: Path) -> None:
    """Make `path` a relative symlink to `blob` (a copy where symlinks fail), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        try:
            os.symlink(os.path.relpath(blob, path.parent), tmp)
        except OSError:
            shutil.copyfile(blob, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _pinned_sha256(repo: str, revision: str) -> str | None:
    """The table's sha256 of model.safetensors, for an alias's default repo at ``main``."""
    row = checkpoints.find_checkpoint(repo)
    if row is None or revision != "main" or default_repo(row) != repo:
        return None
    return row.sha256


def _endpoint() -> str:
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if urlsplit(endpoint).scheme not in ("http", "https"):
        raise WeightsError(f"HF_ENDPOINT={endpoint!r} is not an http(s) URL")
    return endpoint


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _user_agent() -> str:
    return f"convnext_np/{__version__}"
