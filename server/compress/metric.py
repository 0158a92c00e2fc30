"""A user's task metric: `--metric module:function` (or `path/to/file.py:function`).

The function receives the model's outputs on the evaluation samples and their labels,
and returns one number, higher is better, on a scale where the budget's points mean
something (accuracy in percent, mAP x 100, 100 - CER):

    def score(outputs: list[dict[str, numpy.ndarray]], labels: numpy.ndarray | None) -> float

`outputs` holds one dict per sample file, in file-name order (output name -> array as
the model returned it, batch axis included); `labels` is the evaluation directory's
`labels.npy` (its first axis follows the samples) or None. It is called once on the
original and once per build the searches try, on the same samples each time.
Like Intel Neural Compressor's `eval_func`, it is the user's own code: it runs in this
process, so pass only code you trust.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleetcast.server.compress.errors import MetricError

MetricFunction = Callable[[list[dict[str, np.ndarray]], "np.ndarray | None"], float]


@dataclass(frozen=True)
class TaskMetric:
    name: str                        # as given: "module:function"
    function: MetricFunction

    def measure(self, outputs: Sequence[dict[str, np.ndarray]], labels: np.ndarray | None) -> float:
        try:
            value = self.function(list(outputs), labels)
        except Exception as error:  # the user's code may raise anything: one clear message
            raise MetricError(f"the metric {self.name} raised {type(error).__name__}: {str(error)[:300]}; "
                              "fix the function (it receives a list of output dicts and the labels)") from error
        try:
            number = float(value)
        except (TypeError, ValueError) as error:
            raise MetricError(f"the metric {self.name} returned {type(value).__name__}, not a number; "
                              "return one float, higher is better") from error
        if not math.isfinite(number):
            raise MetricError(f"the metric {self.name} returned {number}; return a finite number")
        return number


def load_metric(spec: str) -> TaskMetric:
    """`module:function` importable from the current directory, or `file.py:function`."""
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name.isidentifier():
        raise MetricError(f"--metric {spec!r} is not module:function (or path/to/file.py:function); "
                          "name the function that scores the outputs, e.g. --metric mytask:accuracy")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise MetricError(f"--metric: file {path} does not exist; pass path/to/file.py:function")
            module_spec = importlib.util.spec_from_file_location(f"fleetcast_user_metric_{path.stem}", path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except MetricError:
        raise
    except Exception as error:  # ImportError, SyntaxError, whatever the module raises on import
        raise MetricError(f"--metric: module {module_name} cannot be imported ({type(error).__name__}: "
                          f"{str(error)[:200]}); run from the directory that holds it or pass file.py:function") \
            from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise MetricError(f"--metric: {module_name} has no function {function_name!r}")
    return TaskMetric(spec, function)
