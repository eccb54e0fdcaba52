"""Backbone outputs: which stages ``out.feature_maps`` returns, and the maps themselves, as
transformers' Backbone classes give them.

transformers' ``ConvNextBackbone`` (``models/convnext/modeling_convnext.py``, with
``utils/backbone_utils.py``) names the five maps ``"stem"`` (the stem's output) and ``"stage1"``
to ``"stage4"``; ``out_features`` picks them by name and ``out_indices`` by position in that list,
in stage order. Each returned map goes through its own channels-first LayerNorm (eps 1e-6,
``hidden_states_norms.<stage>``): loaded from a Backbone checkpoint, else at the values
transformers initialises them to (weight 1, bias 0), which still normalise the map.
"""

from __future__ import annotations

import numpy as np

STAGE_NAMES = ("stem", "stage1", "stage2", "stage3", "stage4")  # transformers' Backbone names


def resolve_out_features(out_features=None, out_indices=None) -> list | None:
    """The stage names asked for, in stage order; None when neither argument is given.

    As transformers checks them: names must be stage names, indices positions in
    ``STAGE_NAMES`` (negative ones count from the end), both in stage order without repeats,
    and when both are given they must name the same stages.
    """
    if out_features is None and out_indices is None:
        return None
    by_index = None
    if out_indices is not None:
        if isinstance(out_indices, (str, bytes)) or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in out_indices):
            raise ValueError(f"out_indices must be a sequence of ints, got {out_indices!r}")
        n = len(STAGE_NAMES)
        bad = [i for i in out_indices if not -n <= i < n]
        if bad:
            raise ValueError(f"out_indices {list(out_indices)}: {bad[0]} is not a stage index "
                             f"(0..{n - 1} for {', '.join(STAGE_NAMES)})")
        by_index = [STAGE_NAMES[i] for i in out_indices]
    if out_features is not None:
        if isinstance(out_features, (str, bytes)) or not all(isinstance(f, str) for f in out_features):
            raise ValueError(f"out_features must be a list of stage names, got {out_features!r}")
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"out_features {list(out_features)}: {unknown[0]!r} is not a stage; "
                             f"choose from {', '.join(STAGE_NAMES)}")
        if by_index is not None and list(out_features) != by_index:
            raise ValueError(f"out_features {list(out_features)} and out_indices {list(out_indices)} "
                             f"name different stages ({by_index})")
    names = list(out_features) if out_features is not None else by_index
    order = [STAGE_NAMES.index(f) for f in names]
    if order != sorted(set(order)):
        raise ValueError(f"the stages asked for must be in stage order ({', '.join(STAGE_NAMES)}) "
                         f"without repeats, got {names}")
    return names or None


def norm_params(out_features, loaded: dict, hidden_sizes) -> dict:
    """stage -> {"w", "b"} for each stage asked for: the checkpoint's norm where it has one,
    else weight 1 and bias 0 (transformers' initial values for a norm the checkpoint lacks)."""
    widths = dict(zip(STAGE_NAMES, [hidden_sizes[0], *hidden_sizes]))
    return {name: loaded.get(name) or {"w": np.ones(widths[name], np.float32),
                                       "b": np.zeros(widths[name], np.float32)}
            for name in out_features}


def feature_maps(hidden, norms, out_features, *, pixels, ops):
    """The maps of transformers' Backbone classes, channels-last, one per name in ``out_features``.

    ``ConvNextBackbone`` passes each through its own channels-first LayerNorm, eps 1e-6
    (``hidden_states_norms.<stage>``; ``norms`` holds their parameters). ``DINOv3ConvNextBackbone``
    has no such norms (``norms`` is None) and its ``"stem"`` is the input itself."""
    if norms is None:
        maps = [pixels, *hidden[1:]]
        return [maps[STAGE_NAMES.index(name)] for name in out_features]
    return [ops.layer_norm(hidden[STAGE_NAMES.index(name)], norms[name]["w"], norms[name]["b"], 1e-6)
            for name in out_features]
