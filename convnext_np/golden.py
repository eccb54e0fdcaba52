"""Golden bundles: every intermediate output of one model on a few images, for other ports.

A bundle is a directory with two files (docs/porting.md shows a port checking itself):

- ``tensors.safetensors``: ``pixel_values`` (N, 3, H, W); ``hidden_states.0`` .. ``hidden_states.4``
  (the stem's output, then each stage's, NCHW as transformers' ``hidden_states``); ``pooled``
  (N, C3) and ``logits`` (N, K). Little-endian; any safetensors reader opens it, in any language.
- ``manifest.json``: where the numbers came from (the model source and the sha256 of its
  files, the full preprocessing config, the images and their sha256, library versions) and,
  per tensor, its shape, dtype, min / max / mean / std, the sha256 of its raw bytes and the
  tolerance we recommend to a port comparing itself against it.

:func:`write_bundle` makes one; :func:`check_bundle` re-runs a model on the stored
``pixel_values`` and checks every tensor, hash and statistic against the manifest. With
``float64=True`` the whole network runs in float64 (:func:`forward_float64`), a reference
tighter than any float32 port, computed by the same code as the float32 path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import ops
from .classify import load_model
from .errors import ConvNextError
from .files import atomic_write, find_weights, shard_names
from .guards import read_json_file
from .loading import ConvNeXt
from .model import ConvNextOutput, check_pixel_values, run
from .safetensors_file import SafetensorsFile
from .testing import HIDDEN_RTOL, LOGITS_ATOL, PIXEL_ATOL, POOLED_ATOL
from .version import __version__

FORMAT = "convnext-np golden bundle"
FORMAT_VERSION = 1
TENSORS_FILE, MANIFEST_FILE = "tensors.safetensors", "manifest.json"

# The other tolerances are those the parity tests hold convnext_np to against transformers
# and timm (convnext_np.testing): what two correct float32 implementations reach.
TOLERANCE_RULES = {
    "pixel_values": "absolute 1e-6 (testing.PIXEL_ATOL): same uint8 pixels, a few ulp of rescale",
    "hidden_states": "1e-4 x max|tensor| (testing.HIDDEN_RTOL): float32 accumulation order",
    "pooled": "absolute 2e-4 (testing.POOLED_ATOL)",
    "logits": "absolute 2e-4 (testing.LOGITS_ATOL)",
}
DESCRIPTIONS = {
    "pixel_values": "the network's input: preprocessed, normalized pixels",
    "hidden_states.0": "stem: 4x4 conv stride 4, then LayerNorm over channels",
    "hidden_states.1": "stage 1 output (no downsampling before it)",
    "hidden_states.2": "stage 2 output (LayerNorm + 2x2 conv stride 2, then the blocks)",
    "hidden_states.3": "stage 3 output (LayerNorm + 2x2 conv stride 2, then the blocks)",
    "hidden_states.4": "stage 4 output = last_hidden_state",
    "pooled": "global average pool over H, W, then the final LayerNorm (pooler_output)",
    "logits": "the classifier: Linear on pooled",
}
LAYOUTS = {"pixel_values": "NCHW", "pooled": "NC", "logits": "NK"}


# --- float64 -----------------------------------------------------------------------------------
def exact_gelu(x):
    """0.5 x (1 + erf(x / sqrt 2)) with scipy's erf, exact to the precision of ``x``."""
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


class Float64Ops:
    """The ops of a float64 run: :mod:`convnext_np.ops` itself (each keeps float64 when given
    float64), with one replacement. ``ops.gelu`` evaluates erfc by Abramowitz & Stegun 7.1.26
    (|error| < 1.5e-7), which is all a float32 output needs; a float64 reference needs it exact."""

    gelu = staticmethod(exact_gelu)

    def __getattr__(self, name):
        return getattr(ops, name)


FLOAT64_OPS = Float64Ops()


def cast_params(params, dtype) -> dict:
    """A copy of a parameter tree (dicts, lists, None, arrays) with every array cast to ``dtype``."""
    if isinstance(params, dict):
        return {k: cast_params(v, dtype) for k, v in params.items()}
    if isinstance(params, list):
        return [cast_params(v, dtype) for v in params]
    return None if params is None else np.asarray(params, dtype=dtype)


def forward_float64(model: ConvNeXt, pixel_values) -> ConvNextOutput:
    """``model(pixel_values, output_hidden_states=True)``, but float64 end to end.

    The same :func:`convnext_np.model.run` runs on float64 copies of the parameters and of
    the (float32) input, through the NumPy reference ops (:data:`FLOAT64_OPS`): no line of the
    float32 path changes. Every output is float64.
    """
    x = check_pixel_values(pixel_values, model.config.num_channels).astype(np.float64)  # exact
    out = run(cast_params(model.params, np.float64), model.config, x, ops=FLOAT64_OPS)
    assert all(a.dtype == np.float64 for a in [*out.hidden_states, out.pooled, out.logits] if a is not None)
    return out


def run_all(model: ConvNeXt, pixel_values, float64: bool = False) -> dict:
    """name -> array for every bundle tensor, pixel_values first (as stored: float32)."""
    out = forward_float64(model, pixel_values) if float64 else model(pixel_values, output_hidden_states=True)
    tensors = {"pixel_values": np.asarray(pixel_values, dtype=np.float32)}
    tensors.update({f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
    if out.pooled is not None:  # a Backbone has no final norm
        tensors["pooled"] = out.pooled
    if out.logits is not None:
        tensors["logits"] = out.logits
    return tensors


# --- what the manifest records -----------------------------------------------------------------
def tensor_sha256(x: np.ndarray) -> str:
    """sha256 of the raw little-endian bytes, C order: the bytes safetensors stores."""
    x = np.ascontiguousarray(x)
    return hashlib.sha256(x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def tensor_stats(x: np.ndarray) -> dict:
    """min, max, mean and std (population, ddof 0), computed in float64."""
    x = np.asarray(x, dtype=np.float64)
    return {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()), "std": float(x.std())}


def recommended_tolerance(name: str, x: np.ndarray) -> dict:
    """For a float32 port: it agrees when ``|port - bundle| <= atol + rtol * |bundle|`` everywhere."""
    if name == "pixel_values":
        atol, rule = PIXEL_ATOL, TOLERANCE_RULES["pixel_values"]
    elif name.startswith("hidden_states."):
        atol, rule = HIDDEN_RTOL * float(np.abs(x).max()), TOLERANCE_RULES["hidden_states"]
    elif name == "pooled":
        atol, rule = POOLED_ATOL, TOLERANCE_RULES["pooled"]
    else:
        atol, rule = LOGITS_ATOL, TOLERANCE_RULES["logits"]
    return {"atol": atol, "rtol": 0.0, "rule": rule}


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_files(source) -> list:
    """The files a model was loaded from (configs and weights, shards included), in load order.

    Empty for a model built in memory (``source`` None) or a source that no longer exists.
    """
    if source is None or not Path(source).exists():
        return []
    path = Path(source)
    if path.is_file():
        return [path]
    files = [path / n for n in ("config.json", "preprocessor_config.json") if (path / n).is_file()]
    weights = find_weights(path)
    if weights is not None:
        files.append(weights)
        if weights.name.endswith(".index.json"):
            files += [path / s for s in shard_names(weights)]
    return files


def describe_files(source) -> list:
    root = Path(source) if source is not None and Path(source).is_dir() else None
    return [{"name": str(f.relative_to(root)) if root else f.name, "bytes": f.stat().st_size,
             "sha256": file_sha256(f)} for f in model_files(source)]


def _image_entry(index, image) -> dict:
    if isinstance(image, (str, os.PathLike)):
        return {"index": index, "name": Path(image).name, "sha256": file_sha256(image)}
    return {"index": index, "name": f"<{type(image).__name__} {index}>", "sha256": None}


def _versions() -> dict:
    import scipy

    return {"convnext_np": __version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "python": platform.python_version()}


# --- writing -----------------------------------------------------------------------------------
def write_bundle(images, model, out_dir, float64: bool = False, *, name: str | None = None) -> dict:
    """Run ``model`` on ``images`` and write ``out_dir/tensors.safetensors`` and
    ``out_dir/manifest.json``; return the manifest.

    ``images``: paths (or PIL images, uint8 arrays), preprocessed by ``model.preprocessor``
    into one batch. ``model``: a loaded :class:`ConvNeXt` or anything ``from_pretrained``
    takes. ``name``: what the manifest calls the model (default: how it was given). Raises
    :class:`~convnext_np.ImageError` for an image that cannot be read; nothing is written then.
    """
    if name is None:
        name = model.source if isinstance(model, ConvNeXt) else str(model)
    model = load_model(model, backend="numpy")
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    pixel_values = model.preprocessor(images)
    tensors = run_all(model, pixel_values, float64)
    config = model.config
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "name": name,
            "source": model.source,
            "files": describe_files(model.source),
            "model_type": config.model_type,
            "variant": config.variant(),
            "depths": config.depths,
            "hidden_sizes": config.hidden_sizes,
            "num_labels": config.num_labels,
            "norm_eps": config.norm_eps,
            "layer_norm_eps": config.layer_norm_eps,
        },
        "compute": {"dtype": "float64" if float64 else "float32",
                    "backend": "numpy" if float64 else model.backend},
        "versions": _versions(),
        "images": [_image_entry(i, image) for i, image in enumerate(images)],
        "preprocessing": dataclasses.asdict(model.preprocessor),
        "tolerance": "a port agrees with a tensor when |port - bundle| <= atol + rtol * |bundle| "
                     "elementwise; the tolerances are for a float32 port",
        "tensors": {
            key: {"shape": list(x.shape), "dtype": str(x.dtype),
                  "layout": LAYOUTS.get(key, "NCHW"), "description": DESCRIPTIONS[key],
                  **tensor_stats(x), "sha256": tensor_sha256(x),
                  "tolerance": recommended_tolerance(key, x)}
            for key, x in tensors.items()},
    }
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "manifest": MANIFEST_FILE}
    atomic_write(out / TENSORS_FILE, lambda p: save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}, p, metadata=metadata))
    atomic_write(out / MANIFEST_FILE, lambda p: Path(p).write_text(
        json.dumps(manifest, indent=2) + "\n", encoding="utf-8"))
    return manifest


# --- checking ----------------------------------------------------------------------------------
@dataclass
class TensorCheck:
    """One tensor of a bundle, checked: its bytes against the manifest, and a re-run against it."""

    name: str
    shape: tuple
    dtype: str
    atol: float
    hash_ok: bool
    stats_ok: bool
    max_abs_diff: float | None = None  # the re-run's max |ours - stored|; None for pixel_values
    within: bool = True  # every element within atol + rtol * |stored|

    @property
    def ok(self) -> bool:
        return self.hash_ok and self.stats_ok and self.within


@dataclass
class BundleReport:
    """What :func:`check_bundle` found. ``ok`` is the verdict; ``str(report)`` a table."""

    bundle: str
    compute_dtype: str
    checks: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.checks)

    def __str__(self):
        lines = [f"bundle {self.bundle} (re-run in {self.compute_dtype})",
                 f"  {'tensor':16s} {'shape':>18s} {'dtype':8s} {'max|diff|':>10s} {'atol':>10s}  "
                 f"{'sha256':6s} {'stats':5s} verdict"]
        for c in self.checks:
            diff = "input" if c.max_abs_diff is None else f"{c.max_abs_diff:.3e}"
            lines.append(f"  {c.name:16s} {str(c.shape):>18s} {c.dtype:8s} {diff:>10s} {c.atol:10.3e}  "
                         f"{'ok' if c.hash_ok else 'BAD':6s} {'ok' if c.stats_ok else 'BAD':5s} "
                         f"{'ok' if c.ok else 'FAIL'}")
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def read_bundle(bundle_dir) -> tuple:
    """(manifest, name -> array) of a bundle; arrays as stored (read-only, memory-mapped)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_json_file(bundle_dir / MANIFEST_FILE, "the manifest", ConvNextError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("format_version") != FORMAT_VERSION:
        raise ConvNextError(f"{bundle_dir / MANIFEST_FILE}: not a {FORMAT} version {FORMAT_VERSION}")
    _check_manifest(manifest, bundle_dir / MANIFEST_FILE)
    f = SafetensorsFile(bundle_dir / TENSORS_FILE)
    return manifest, {k: f.tensor(k) for k in f.keys()}


def _check_manifest(manifest: dict, where) -> None:
    """Every field :func:`check_bundle` reads is there, with its type."""
    def need(cond, what):
        if not cond:
            raise ConvNextError(f"{where}: the manifest lacks {what}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    compute, model, tensors = (manifest.get(k) for k in ("compute", "model", "tensors"))
    need(isinstance(compute, dict) and compute.get("dtype") in ("float32", "float64"),
         'compute.dtype ("float32" or "float64")')
    need(isinstance(model, dict) and isinstance(model.get("name"), str)
         and isinstance(model.get("source"), (str, type(None))), "model.name and model.source")
    files = model.get("files")
    need(isinstance(files, list) and all(isinstance(f, dict) and isinstance(f.get("name"), str)
                                         and isinstance(f.get("sha256"), str) for f in files),
         "model.files (a list of {name, sha256})")
    need(isinstance(tensors, dict), "tensors")
    for key, e in tensors.items():
        need(isinstance(e, dict) and isinstance(e.get("shape"), list) and isinstance(e.get("dtype"), str)
             and isinstance(e.get("sha256"), str) and all(number(e.get(k)) for k in ("min", "max", "mean", "std"))
             and isinstance(e.get("tolerance"), dict)
             and all(number(e["tolerance"].get(k)) for k in ("atol", "rtol")),
             f"a complete entry for tensor {key!r} (shape, dtype, sha256, min, max, mean, std, "
             "tolerance.atol, tolerance.rtol)")


def _stats_match(x, recorded) -> bool:
    return all(np.isclose(v, recorded[k], rtol=1e-9, atol=0) for k, v in tensor_stats(x).items())


def check_bundle(bundle_dir, model=None, *, float64: bool | None = None) -> BundleReport:
    """Check a bundle: every tensor's shape, dtype, sha256 and statistics against the manifest,
    then a re-run of ``model`` on the stored ``pixel_values`` against every output, within the
    manifest's tolerances.

    ``model``: a loaded :class:`ConvNeXt`, anything ``from_pretrained`` takes, or None for the
    manifest's own source (else its name). Its files are checked against the manifest's sha256
    where both are known. ``float64``: re-run in float64 (default: as the bundle was made).
    """
    manifest, stored = read_bundle(bundle_dir)
    float64 = manifest["compute"]["dtype"] == "float64" if float64 is None else float64
    report = BundleReport(str(bundle_dir), "float64" if float64 else "float32")
    entries = manifest["tensors"]
    for key in sorted(set(stored) - set(entries)):
        report.problems.append(f"tensor {key!r} is in {TENSORS_FILE} but not in the manifest")
    for key in [k for k in entries if k not in stored]:
        report.problems.append(f"tensor {key!r} is in the manifest but not in {TENSORS_FILE}")

    if model is None:
        recorded = manifest["model"]["source"]
        model = recorded if recorded and Path(recorded).exists() else manifest["model"]["name"]
    model = load_model(model, backend="numpy")
    ours = {f["name"]: f["sha256"] for f in describe_files(model.source)}
    for f in manifest["model"]["files"]:
        if f["name"] in ours and ours[f["name"]] != f["sha256"]:
            report.problems.append(f"model file {f['name']!r} of {model.source} is not the one the "
                                   f"bundle was made with (sha256 {ours[f['name']][:12]}..., "
                                   f"manifest {f['sha256'][:12]}...)")
    rerun = run_all(model, np.asarray(stored["pixel_values"]), float64) if "pixel_values" in stored else {}

    for key, entry in entries.items():
        if key not in stored:
            continue
        x = np.asarray(stored[key])
        tol = entry["tolerance"]
        check = TensorCheck(key, tuple(x.shape), str(x.dtype), tol["atol"],
                            hash_ok=tensor_sha256(x) == entry["sha256"],
                            stats_ok=_stats_match(x, entry))
        if list(x.shape) != entry["shape"] or str(x.dtype) != entry["dtype"]:
            report.problems.append(f"tensor {key!r} is {x.dtype} {list(x.shape)}, the manifest "
                                   f"says {entry['dtype']} {entry['shape']}")
        if key != "pixel_values":
            if key not in rerun or rerun[key].shape != x.shape:
                report.problems.append(f"tensor {key!r}: the model gives "
                                       f"{'nothing' if key not in rerun else rerun[key].shape}")
            else:
                want = x.astype(np.float64)
                diff = np.abs(rerun[key].astype(np.float64) - want)
                check.max_abs_diff = float(diff.max())
                check.within = bool((diff <= tol["atol"] + tol["rtol"] * np.abs(want)).all())
        report.checks.append(check)
    return report
