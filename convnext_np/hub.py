"""Hub names -> local snapshot directories: the Hugging Face cache first, else a download.

:func:`resolve` turns a hub repo id (``facebook/convnext-tiny-224``), a timm name
(``convnext_tiny.fb_in1k``, ``timm/convnext_tiny.fb_in1k``) or an alias from
:mod:`convnext_np.checkpoints` (``convnext-tiny-224``) into a directory that
:func:`convnext_np.loading.load_local` reads. Standard library only (``urllib``, ``hashlib``).

The cache is huggingface_hub's, so either tool reuses what the other downloaded. Its root is
``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``$XDG_CACHE_HOME/huggingface/hub`` (default ``~/.cache/huggingface/hub``)::

    models--facebook--convnext-tiny-224/
        blobs/<etag or sha256>                    file contents, named by the hub's ETag
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
- Nothing is cached until every file of the snapshot has arrived and been verified: each is
  streamed to ``blobs/<name>.incomplete-<random>`` while being hashed, checked against a
  sha256 ETag and against the sha256 that :mod:`convnext_np.checkpoints` pins for the
  default repo's ``model.safetensors`` at ``main``. Only then are the blobs renamed into place,
  the snapshot links made (each created under a temporary name and renamed over; a copy of
  the blob where symlinks fail) and the ref written (the same way). Any failure (HTTP error,
  dropped connection, short body, hash mismatch, even Ctrl-C) deletes the temporary files,
  and all but Ctrl-C raise :class:`WeightsError` naming the URL, so an interrupted download
  never leaves a file that a later load could mistake for a good one.
  Concurrent downloads of the same repo are safe: each writes its own temporary files and
  the renames are atomic.
- An unreachable hub fails within one connect timeout (:data:`TIMEOUT`, no retries) with a
  message saying how to use local weights instead.

HTTP requests send ``User-Agent: convnext_np/<version>`` and, where there is a token,
``Authorization: Bearer`` (only to the endpoint's own host, never to a CDN it redirects to). The
token is ``$HF_TOKEN``, else the file huggingface_hub's login writes (``$HF_TOKEN_PATH``, else
``token`` in the HF home folder). Gated repos (DINOv3's, for one) need both a token and the
licence accepted on the repo's page; a 401 or 403 says so.
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
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

from . import checkpoints
from .errors import WeightsError
from .files import WEIGHT_FILES, atomic_write, find_weights, shard_names
from .progress import StatusLine
from .version import __version__

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT = 10.0  # seconds, for connecting and for each read; there are no retries
CHUNK = 1 << 20
MAX_REDIRECTS = 5


_TRUE = {"1", "true", "yes", "on"}
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
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
        download.discard_temporaries()


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
    """``$HF_TOKEN``, else the token file (``$HF_TOKEN_PATH``, else ``<HF home>/token``), as
    huggingface_hub reads them; None when there is neither."""
    if os.environ.get("HF_TOKEN", "").strip():
        return os.environ["HF_TOKEN"].strip()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(home, "token")
    try:
        token = Path(os.path.expandvars(path)).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def cache_root(cache_dir=None) -> Path:
    """The Hugging Face hub cache folder, chosen as huggingface_hub chooses it."""
    if cache_dir is not None:
        return Path(os.fspath(cache_dir)).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


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
        """Stage one file; None if `optional` and the server answers 404."""
        # All files after config.json come from the commit it resolved to, so that a push
        # between two requests cannot mix two versions of the repo.
        revision = self.commit or self.revision
        url = f"{self.endpoint}/{self.repo}/resolve/{quote(revision, safe='')}/{quote(filename)}"
        try:
            response, commit, etag = _open(
                url, cached=lambda etag: self._have_verified_blob(etag, pinned_sha256))
        except urllib.error.HTTPError as e:
            if e.code == 404 and optional:
                return None
            raise _http_error(e, url, self.repo, self.revision, filename) from None
        if filename == "config.json" and commit is not None:
            self.commit = commit
        if response is None:
            staged = _Staged(filename, etag, None)
        else:
            with response:
                staged = self._stream(response, url, filename, etag, pinned_sha256)
        self.staged.append(staged)
        return staged

    def _have_verified_blob(self, etag: str, pinned_sha256: str | None) -> bool:
        """Whether blobs/ has this content already: a blob named by a sha256 was checked."""
        sha256 = _lfs_sha256(etag)
        return sha256 is not None and pinned_sha256 in (None, sha256) \
            and (self.blobs / sha256).is_file()

    def _stream(self, response, url: str, filename: str, etag: str | None,
                pinned_sha256: str | None) -> _Staged:
        """Copy the body to blobs/<name>.incomplete-<random>, hashing it; verify; stage it."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        tmp = self.blobs / f"{etag or Path(filename).name}.incomplete-{secrets.token_hex(8)}"
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        digest, done = hashlib.sha256(), 0
        progress = _Progress(filename, total)
        try:
            with open(tmp, "xb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    progress.update(done)
            if total is not None and done != total:
                raise WeightsError(f"{url}: download failed: the connection closed after {done} "
                                   f"of {total} bytes")
            sha256 = digest.hexdigest()
            for expected, source in ((_lfs_sha256(etag), "the server's ETag"),
                                     (pinned_sha256, "convnext_np.checkpoints")):
                if expected is not None and sha256 != expected:
                    raise WeightsError(f"{url}: download failed: its sha256 is {sha256}, but "
                                       f"{source} says {expected}; nothing was cached")
        except (OSError, http.client.HTTPException) as e:
            tmp.unlink(missing_ok=True)
            raise WeightsError(f"{url}: download failed after {done} bytes: {e!r}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            progress.close()
        return _Staged(filename, etag or sha256, tmp)

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

    def discard_temporaries(self) -> None:
        for staged in self.staged:
            if staged.tmp is not None:
                staged.tmp.unlink(missing_ok=True)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turn redirects into HTTPErrors, so that each hop's headers can be read (see _open)."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _open(url: str, *, cached):
    """GET `url`, following redirects by hand: (response, commit, etag).

    ``commit`` and ``etag`` come from the first hop that carries ``X-Repo-Commit`` (the hub's
    own answer, not its CDN's), both None for a plain mirror. Where ``cached(etag)`` says the
    content is already at hand, stops there with response None, before the CDN is asked.
    Raises HTTPError for an HTTP error status, WeightsError when a server cannot be reached.
    """
    origin = urlsplit(url).netloc
    commit = etag = None
    for _ in range(MAX_REDIRECTS + 1):
        headers = {"User-Agent": _user_agent()}
        token = hub_token()
        if token and urlsplit(url).netloc == origin:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = _OPENER.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            hop = e.headers
            if commit is None:
                commit, etag = _hub_metadata(hop)
            if e.code in (301, 302, 303, 307, 308) and hop.get("Location"):
                e.close()
                if etag and cached(etag):
                    return None, commit, etag
                url = urljoin(url, hop["Location"])
                continue
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise WeightsError(f"{url}: cannot reach {urlsplit(url).netloc} ({reason}). "
                               f"{_LOCAL_HINT}") from None
        if commit is None:
            commit, etag = _hub_metadata(response.headers)
        if etag and cached(etag):
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
        token = ("HF_TOKEN is set but was refused" if os.environ.get("HF_TOKEN", "").strip()
                 else "the token in the token file was refused" if hub_token()
                 else "set HF_TOKEN (or log in with huggingface_hub, which writes the token file) "
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
