"""Per-target builds: one uploaded model converted for the back ends devices run.

| target | from | to | converter |
|---|---|---|---|
| `mnn` | onnx, tflite | mnn | MNN's converter (the `MNN` wheel's `_tools.mnnconvert`), in a subprocess |
| `openvino` | onnx, tflite | openvino (IR in one file) | `openvino.convert_model`, in a subprocess |
| `rknn-<platform>` | onnx | rknn | `rknn-toolkit2` in its own Python environment (`FLEETCAST_RKNN_PYTHON`) |

Each build becomes a variant as a compression level does (`builds.BuiltVariant`):
its own signed blob, its own golden file (its outputs on the version's golden inputs,
computed with the back end devices use) and figures measured here: latency against
onnxruntime on the original in the same run, and how far its outputs are from the
original's. Converters run out of process with a time limit, so a converter that
hangs or crashes fails that target only.

Errors: `ConversionError` (a target could not be built; the message says why).
"""

from __future__ import annotations

from fleetcast.server.convert.targets import TARGETS, ConversionError, Target, check_targets, parse_targets

__all__ = ["TARGETS", "ConversionError", "Target", "check_targets", "parse_targets"]
