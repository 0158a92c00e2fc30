"""The golden input of a pushed model: a real sample when the model's shape is free.

A model with free dimensions ([N, 1, H, W], [N, 1, 32, W]) given no golden file used
to get random inputs with every free dimension set to 1 (1x1 images), which a
device's smoke test runs in microseconds without exercising the model. When the
push carries calibration (or evaluation) samples, the first one is the golden input
instead: a real input of a size the operator uses. An operator who wants another one
uploads it as the golden file, which always wins (`registry.Registry.add_version`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fleetcast.server.errors import InvalidRequest
from fleetcast.server.samples import ONLY_INPUT, SampleLimits, _arrays, _check_input

logger = logging.getLogger(__name__)


def has_free_dimension(specs: Mapping[str, Mapping[str, Any]]) -> bool:
    return any(dim is None for spec in specs.values() for dim in spec["shape"])


def first_sample(specs: Mapping[str, Mapping[str, Any]], upload: Path | None,
                 limits: SampleLimits) -> dict[str, np.ndarray] | None:
    """The first sample of a calibration/evaluation upload (server/samples.py's format)
    as a batch-1 feed, or None when the model has no free dimension, no upload was
    given, or the upload does not fit the model (its own check then says why)."""
    if upload is None or not has_free_dimension(specs):
        return None
    try:
        arrays = _arrays(Path(upload), "golden", limits)
        if ONLY_INPUT in arrays and len(specs) == 1:
            arrays[next(iter(specs))] = arrays.pop(ONLY_INPUT)
        feed = {}
        for name, spec in specs.items():
            array = arrays[name]
            batched, _ = _check_input(name, array, spec, "golden")
            if len(array) == 0:
                return None
            feed[name] = np.ascontiguousarray((array[0] if batched else array[:1]).astype(spec["dtype"]))
    except (InvalidRequest, KeyError, ValueError, TypeError) as error:
        logger.info("golden input not taken from the samples: %s", error)
        return None
    logger.info("golden input taken from the first sample: %s",
                {name: list(array.shape) for name, array in feed.items()})
    return feed

