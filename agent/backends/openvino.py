"""The OpenVINO back end: IR artifacts (`fleetcast.proto.ovir`) on the `CPU` device, and
on a Movidius stick on `MYRIAD`, which only OpenVINO 2022.3 LTS ships (no Python 3.11
wheel has it). Where a movidius device has no MYRIAD plugin the probe says so and the
back end is reported unavailable: it never quietly runs on the CPU instead.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetcast.agent.backends import Probe, TensorSpec
from fleetcast.agent.errors import ActivationError, IncompatibleModelError

logger = logging.getLogger(__name__)

DEVICES: Final = {"movidius": "MYRIAD"}     # hardware class -> OpenVINO device; others: CPU


def _version(ov: Any) -> str:
    return str(ov.__version__).split("-")[0]


def device_for(hardware_class: str) -> str:
    return DEVICES.get(hardware_class, "CPU")


def _import() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise IncompatibleModelError(f"OpenVINO is not installed (pip install openvino): {e}") from e
    return openvino


def _spec(port: Any) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = tuple(d.get_length() if d.is_static else None for d in shape) if shape.rank.is_static else ()
    return TensorSpec(port.get_any_name(), np.dtype(port.get_element_type().to_dtype()).name, dims)


class OpenVinoSession:
    backend = "openvino"

    def __init__(self, compiled: Any, device: str) -> None:
        self._compiled = compiled
        self.accelerator = device.lower()
        self.inputs = tuple(_spec(p) for p in compiled.inputs)
        self.outputs = tuple(_spec(p) for p in compiled.outputs)
        self.output_names = tuple(s.name for s in self.outputs)
        self._ports = tuple(compiled.outputs)
        self._local = threading.local()

    def run_values(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # One infer request per thread: CompiledModel is thread-safe, a request is not.
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        results = request.infer(dict(inputs))
        return [np.array(results[p]) for p in self._ports]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.run_values(inputs)))


class OpenVinoBackend:
    name = "openvino"
    formats = frozenset({"openvino", "onnx", "tflite"})

    def probe(self, hardware_class: str) -> Probe:
        try:
            ov = _import()
        except IncompatibleModelError as e:
            return Probe(self.name, False, detail=str(e))
        device = device_for(hardware_class)
        present = ov.Core().available_devices
        if not any(d.split(".")[0] == device for d in present):
            return Probe(self.name, False, _version(ov), device.lower(),
                         f"OpenVINO has no {device} device here (devices: {', '.join(present) or 'none'}); "
                         f"{'MYRIAD needs OpenVINO 2022.3 LTS and a Movidius stick' if device == 'MYRIAD' else ''}")
        from openvino import opset13 as ops

        x = ops.parameter([1, 4], np.float32, name="x")
        model = ov.Model([ops.relu(x)], [x], "probe")
        compiled = ov.Core().compile_model(model, device)
        session = OpenVinoSession(compiled, device)
        got = session.run_values({"x": np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)})[0]
        if not np.array_equal(got, [[0.0, 0.0, 1.0, 2.0]]):
            return Probe(self.name, False, _version(ov), detail=f"probe model gave {got.tolist()}")
        return Probe(self.name, True, _version(ov), device.lower())

    def load(self, model: Path | bytes, *, threads: int, hardware_class: str) -> OpenVinoSession:
        from fleetcast.proto import ovir

        ov = _import()
        device = device_for(hardware_class)
        try:
            core = ov.Core()
            data = model if isinstance(model, bytes) else model.read_bytes()
            if data.startswith(ovir.MAGIC):
                xml, weights = ovir.split(data)
                read = core.read_model(model=xml.decode(), weights=ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
            else:   # ONNX or TFLite, which OpenVINO reads directly
                read = ov.convert_model(io.BytesIO(data)) if isinstance(model, bytes) else core.read_model(str(model))
            # f32 on the CPU: OpenVINO would otherwise run bf16 where the CPU has it, and
            # outputs would no longer match the golden file within float tolerance.
            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"} if device == "CPU" else {}
            compiled = core.compile_model(read, device, config)
        except Exception as e:  # ovir.IrError, OpenVINO's RuntimeError
            raise ActivationError(f"OpenVINO could not load the model on {device}: {str(e)[:400]}") from e
        logger.info("loaded model with openvino %s device=%s threads=%d", _version(ov), device, threads)
        return OpenVinoSession(compiled, device)
