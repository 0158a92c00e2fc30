"""The compression error tree.

```
CompressError                  anything the pipeline raises on purpose
  + InputError                 the run cannot start; nothing is written (exit 2)
  |   ModelFormatError         not an ONNX file, or an ONNX file that does not check
  |   UnsupportedModelError    an operator onnxruntime cannot run
  |   SampleError              calibration or evaluation data missing or mismatched
  |   OutputDirError           --out exists and is not empty, or is a file
  |   MetricError              --metric cannot be loaded, or the function fails
  |   NothingToBuildError      no requested level can be built from what was given
  + LevelError                 one level could not be built; the others go on
  |   NormalizationError       a transform changed the model's outputs
  + AllLevelsFailedError       every requested level failed to build; nothing is written (exit 1)
PackageError (ValueError)      fcpack bytes that do not decode: the wire format's own
                               error, defined in fleetcast.proto.fcpack, re-exported here
```
Every message names the problem and what to do about it.
"""

from __future__ import annotations

from typing import Any

from fleetcast.proto.fcpack import PackageError

__all__ = ["CompressError", "InputError", "ModelFormatError", "UnsupportedModelError", "SampleError",
           "OutputDirError", "MetricError", "NothingToBuildError", "LevelError", "NormalizationError",
           "AllLevelsFailedError", "PackageError"]


class CompressError(Exception):
    """Base of every error the compression pipeline raises on purpose."""


class InputError(CompressError):
    """The user's input is unusable; the run stops before writing anything."""


class ModelFormatError(InputError):
    """The file is not an ONNX model, or does not pass the ONNX checker."""


class UnsupportedModelError(InputError):
    """The model uses an operator (or opset) onnxruntime cannot run."""


class SampleError(InputError):
    """Calibration or evaluation samples are missing, empty or do not fit the model."""


class OutputDirError(InputError):
    """The output directory cannot be used."""


class MetricError(InputError):
    """The user's task metric cannot be loaded, raises, or returns no number."""


class NothingToBuildError(InputError):
    """None of the requested levels can be built from the input given."""


class LevelError(CompressError):
    """One level could not be built; the report says why and the others go on."""


class NormalizationError(LevelError):
    """A graph transform changed the model's outputs beyond tolerance."""


class AllLevelsFailedError(CompressError):
    """Every requested level failed to build, so the run wrote nothing. `report` is the
    run's `pipeline.CompressionReport`: each level's `error` says why it failed."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report
