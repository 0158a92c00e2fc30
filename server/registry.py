"""Model registry: checked uploads, golden input/output pairs, versions and variants.

An upload arrives as a staged temp file in the blob store (`BlobStore.stage_stream`,
bounded and hashed while streaming). `Registry.add_version` checks that it is ONNX
that onnxruntime can load, builds or checks the golden pair, and only then stores
the blobs, signs both artifacts into the image repository and records the version.
When any check fails, nothing is stored.
"""

from __future__ import annotations

import io
import logging
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetcast.server.blobs import BlobStore, StagedFile
from fleetcast.server.errors import (
    GoldenMismatch,
    InvalidRequest,
    ModelInvalid,
    ModelNotFound,
    VersionExists,
)
from fleetcast.server.signing import ArtifactTarget, InvalidAssignmentError, Signer
from fleetcast.server.store import Artifact, Golden, ModelVersion, Store, Variant

logger = logging.getLogger(__name__)

MODEL_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
GOLDEN_ATOL: Final = 1e-4
GOLDEN_RTOL: Final = 1e-3
MAX_GOLDEN_KEYS: Final = 256

# onnxruntime type strings -> numpy dtypes Fleetcast can feed.
ORT_DTYPES: Final[Mapping[str, str]] = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64", "tensor(bool)": "bool",
}

# (model file, an empty work dir the registry removes afterwards, levels) -> built variants
Compressor = Callable[[Path, Path, Sequence[str]], list["BuiltVariant"]]


@dataclass(frozen=True)
class BuiltVariant:
    """One variant the compression pipeline built: a file to store and its measurements."""

    variant: str
    format: str
    path: Path
    metrics: Mapping[str, Any]


def check_model_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name):
        raise InvalidRequest(
            f"model name {name[:80]!r} is not valid: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_version_name(version: str) -> str:
    if not VERSION_NAME.fullmatch(version):
        raise InvalidRequest(
            f"version {version[:80]!r} is not valid: use 1-32 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit"
        )
    return version


def _session(path: Path) -> Any:
    """Checks the file is ONNX the checker accepts and onnxruntime loads on the CPU."""
    import onnx
    import onnxruntime as ort

    if path.stat().st_size == 0:
        raise ModelInvalid("the model file is empty: upload an .onnx file")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelInvalid(f"the file is not an ONNX model ({type(e).__name__}): export it with torch.onnx or tf2onnx") from e
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise ModelInvalid(f"the ONNX model does not pass onnx.checker: {str(e)[:400]}") from e
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelInvalid(f"the model cannot be loaded by onnxruntime because: {str(e)[:400]}") from e


def _specs(args: Sequence[Any], what: str) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for arg in args:
        dtype = ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise ModelInvalid(f"{what} {arg.name!r} has type {arg.type}: Fleetcast serves tensor inputs and outputs only")
        shape = [d if isinstance(d, int) and d > 0 else None for d in (arg.shape or [])]
        specs[arg.name] = {"dtype": dtype, "shape": shape}
    return specs


def make_inputs(specs: Mapping[str, Mapping[str, Any]], sha256: str) -> dict[str, np.ndarray]:
    """Deterministic inputs: seeded from the model's sha256, dynamic dims 1, ints small."""
    rng = np.random.default_rng(int(sha256[:16], 16))
    feeds: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        shape = tuple(d if d else 1 for d in spec["shape"])
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def _read_golden(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if len(npz.files) > MAX_GOLDEN_KEYS:
                raise InvalidRequest(f"golden file has {len(npz.files)} arrays, more than {MAX_GOLDEN_KEYS}")
            arrays = {key: npz[key] for key in npz.files}
    except InvalidRequest:
        raise
    except Exception as e:
        raise InvalidRequest(
            f"golden file is not a readable .npz ({type(e).__name__}): write it with numpy.savez "
            "using keys 'input:<name>' and optionally 'output:<name>'"
        ) from e
    inputs, outputs = {}, {}
    for key, value in arrays.items():
        kind, sep, name = key.partition(":")
        if not sep or kind not in {"input", "output"} or not name:
            raise InvalidRequest(f"golden key {key[:80]!r} is not 'input:<name>' or 'output:<name>'")
        (inputs if kind == "input" else outputs)[name] = value
    return inputs, outputs


def _check_golden_inputs(given: Mapping[str, np.ndarray], specs: Mapping[str, Mapping[str, Any]]) -> None:
    missing = sorted(set(specs) - set(given))
    unknown = sorted(set(given) - set(specs))
    if missing or unknown:
        raise InvalidRequest(
            f"golden inputs do not match the model: missing {missing or 'none'}, unknown {unknown or 'none'}; "
            f"the model takes {sorted(specs)}"
        )
    for name, array in given.items():
        if array.dtype != np.dtype(specs[name]["dtype"]):
            raise InvalidRequest(f"golden input {name!r} is {array.dtype}, the model takes {specs[name]['dtype']}")


def _compare_outputs(computed: Mapping[str, np.ndarray], given: Mapping[str, np.ndarray]) -> None:
    unknown = sorted(set(given) - set(computed))
    if unknown:
        raise InvalidRequest(f"golden outputs {unknown} are not outputs of the model; it has {sorted(computed)}")
    for name, expected in given.items():
        actual = computed[name]
        if actual.shape != expected.shape or not np.allclose(actual, expected, atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL):
            raise GoldenMismatch(
                f"the model's output {name!r} on the golden inputs differs from the golden output beyond "
                f"atol={GOLDEN_ATOL}, rtol={GOLDEN_RTOL}: check that the golden file belongs to this model"
            )


def golden_bytes(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    arrays = {f"input:{k}": v for k, v in inputs.items()} | {f"output:{k}": v for k, v in outputs.items()}
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


class Registry:
    def __init__(self, *, store: Store, blobs: BlobStore, signer: Signer, compressor: Compressor | None = None) -> None:
        self.store = store
        self.blobs = blobs
        self.signer = signer
        self.compressor = compressor

    def next_version(self, model: str) -> str:
        numbers = [int(v.version) for v in self.store.versions(model) if v.version.isdigit()]
        return str(max(numbers, default=0) + 1)

    def add_version(
        self,
        model: str,
        staged: StagedFile,
        *,
        golden: StagedFile | None = None,
        version: str | None = None,
        compress: Sequence[str] = (),
    ) -> ModelVersion:
        """Checks and records one uploaded model; consumes (stores or discards) the staged files."""
        try:
            check_model_name(model)
            version = check_version_name(version) if version else self.next_version(model)
            if self.store.version(model, version) is not None:
                raise VersionExists(f"{model}@{version} already exists: versions are immutable, upload a new version")
            staged.finish()
            session = _session(staged.path)
            inputs = _specs(session.get_inputs(), "input")
            outputs = _specs(session.get_outputs(), "output")
            given_outputs: dict[str, np.ndarray] = {}
            if golden is not None:
                golden.finish()
                feeds, given_outputs = _read_golden(golden.path)
                _check_golden_inputs(feeds, inputs)
            else:
                feeds = make_inputs(inputs, staged.sha256)
            try:
                results = session.run(None, feeds)
            except Exception as e:
                raise ModelInvalid(f"the model fails to run on its golden inputs: {str(e)[:400]}") from e
            computed = {spec.name: np.asarray(r) for spec, r in zip(session.get_outputs(), results)}
            _compare_outputs(computed, given_outputs)
            work = Path(tempfile.mkdtemp(prefix="compress-", dir=self.blobs.tmp_dir))
            try:
                built = self._compress(staged.path, work, compress)
                return self._record(model, version, staged, inputs, outputs, golden_bytes(feeds, computed), built)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            staged.discard()
            if golden is not None:
                golden.discard()

    def _compress(self, model_path: Path, work: Path, levels: Sequence[str]) -> list[BuiltVariant]:
        if not levels:
            return []
        if self.compressor is None:
            raise InvalidRequest("this server has no compression pipeline; upload without 'compress'")
        try:
            return self.compressor(model_path, work, levels)
        except Exception as e:
            from fleetcast.server.compress.errors import InputError

            if isinstance(e, InputError):
                raise ModelInvalid(f"compression cannot start: {e}") from e
            raise

    def _record(
        self, model: str, version: str, staged: StagedFile, inputs: dict[str, Any], outputs: dict[str, Any],
        golden_data: bytes, built: Sequence[BuiltVariant],
    ) -> ModelVersion:
        sha256, length = self.blobs.commit(staged)
        golden_sha, golden_len = self.blobs.put_bytes(golden_data)
        variants = [Variant(variant="original", format="onnx", sha256=sha256, length=length)]
        for b in built:
            b_sha, b_len = self.blobs.put_file(b.path)
            variants.append(Variant(variant=b.variant, format=b.format, sha256=b_sha, length=b_len, metrics=b.metrics))
        artifacts = [Artifact(golden_sha, golden_len, "golden", model, version, "original", "npz")]
        artifacts += [Artifact(v.sha256, v.length, "model", model, version, v.variant, v.format) for v in variants]
        for a in artifacts:
            custom = {"fleetcast": {"kind": a.kind, "model": model, "version": version, "variant": a.variant,
                                    "format": a.format}}
            try:
                self.signer.add_artifact(ArtifactTarget(sha256=a.sha256, length=a.length, custom=custom))
            except InvalidAssignmentError as e:
                raise InvalidRequest(str(e)) from e
        for a in artifacts:
            self.store.add_artifact(a)
        record = ModelVersion(
            model=model, version=version, created_at=time.time(), inputs=inputs, outputs=outputs,
            golden=Golden(sha256=golden_sha, length=golden_len, atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL),
            variants=tuple(variants),
        )
        self.store.add_version(record)
        logger.info("model version added model=%s version=%s sha256=%s variants=%d", model, version, sha256, len(variants))
        return record

    def version(self, model: str, version: str | None = None) -> ModelVersion:
        check_model_name(model)
        found = self.store.latest_version(model) if version is None else self.store.version(model, version)
        if found is None:
            what = f"{model}@{version}" if version else f"model {model!r}"
            raise ModelNotFound(f"{what} is not in the registry: upload it with POST /v1/models/{model}")
        return found

    def versions(self, model: str) -> list[ModelVersion]:
        check_model_name(model)
        found = self.store.versions(model)
        if not found:
            raise ModelNotFound(f"model {model!r} is not in the registry: upload it with POST /v1/models/{model}")
        return found


def version_document(v: ModelVersion) -> dict[str, Any]:
    return {
        "name": v.model,
        "version": v.version,
        "created_at": v.created_at,
        "variants": [
            {"variant": x.variant, "format": x.format, "sha256": x.sha256, "length": x.length, "metrics": dict(x.metrics)}
            for x in v.variants
        ],
        "inputs": v.inputs,
        "outputs": v.outputs,
        "golden": None if v.golden is None else {"sha256": v.golden.sha256, "length": v.golden.length,
                                                  "atol": v.golden.atol, "rtol": v.golden.rtol},
    }


def parse_levels(text: str) -> tuple[str, ...]:
    """The `compress` form field: comma-separated level names, checked against the pipeline's list."""
    if not text.strip():
        return ()
    try:
        from fleetcast.server.compress import levels
    except ImportError as e:
        raise InvalidRequest("this server was built without the compression pipeline; upload without 'compress'") from e
    try:
        return levels.parse_levels(text[:256])
    except ValueError as e:
        raise InvalidRequest(str(e)) from e


def _metric(value: Any) -> Any:
    """A JSON-safe metric value: non-finite floats (an exact copy's SNR) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pipeline_compressor() -> Compressor:
    """The `compress` hook: runs fleetcast.server.compress.pipeline, imported only when used."""

    def run(model_path: Path, work: Path, levels: Sequence[str]) -> list[BuiltVariant]:
        import dataclasses

        from fleetcast.server.compress.pipeline import CompressConfig, compress

        out_dir = work / "out"
        report = compress(model_path, out_dir, CompressConfig(levels=tuple(levels)))
        built: list[BuiltVariant] = []
        for level in report.levels:
            if getattr(level, "error", None) or not getattr(level, "path", None):
                logger.warning("compression level failed level=%s error=%s", level.level, getattr(level, "error", ""))
                continue
            fields = dataclasses.asdict(level) if dataclasses.is_dataclass(level) else vars(level)
            metrics = {
                k: _metric(v) for k, v in fields.items()
                if k not in {"path", "level", "format", "error"} and (v is None or isinstance(v, (str, int, float, bool)))
            }
            built.append(BuiltVariant(variant=level.level, format=level.format, path=Path(level.path), metrics=metrics))
        return built

    return run
