"""Model registry: checked uploads, golden input/output pairs, versions and variants.

An upload arrives as a staged temp file in the blob store (`Blobs.stage_stream`,
bounded and hashed while streaming). `Registry.add_version` checks that it is ONNX
that onnxruntime can load, builds or checks the golden pair, and only then stores
the blobs, signs both artifacts into the image repository and records the version.
When any check fails, nothing is stored.

With `compress` levels the version is recorded at once with its `original` variant
and `compression.status` "running"; a background job (`builds.Builds`) runs the
pipeline and adds each built level as a variant: its own blob, signed into the image
repository (variant = level name, format "onnx" or "fcpack"), its measured figures in
`metrics`, and its own golden file (that variant's outputs on the version's golden
inputs, with tolerances suited to its precision). `compression` ends "done" (with
each level's error, if any, and the pipeline's notes) or "failed".
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
import secrets
import shutil
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from fleetcast.proto import formats
from fleetcast.server import inspection
from fleetcast.server.blobs import Blobs, StagedFile
from fleetcast.server.builds import BuildJob, Builds, BuildStopped, BuiltVariant
from fleetcast.server.compress.golden import first_sample as golden_first_sample
from fleetcast.server.errors import (
    FleetcastError,
    GoldenMismatch,
    InvalidRequest,
    ModelInvalid,
    ModelNotFound,
    VersionExists,
)
from fleetcast.server.samples import SampleLimits, unpack
from fleetcast.server.signing import ArtifactTarget, InvalidAssignmentError, Signer
from fleetcast.server.store import Artifact, Golden, ModelVersion, Store, Variant
from fleetcast.server.upload_check import CheckLimits, check_upload

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

# Golden tolerances per variant, (atol, rtol): a variant's golden is its own output, so
# these cover only kernel differences between the server and a device at that precision.
VARIANT_TOLERANCES: Final[Mapping[str, tuple[float, float]]] = {
    "fp16": (1e-3, 1e-2), "balanced": (2e-2, 5e-2), "fastest": (2e-2, 5e-2),
}
DEFAULT_SAMPLE_LIMITS: Final = SampleLimits(max_bytes=256 * 1024**2, max_samples=10_000, keep=10_000)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CompressionResult:
    built: Sequence[BuiltVariant]
    errors: Mapping[str, str]     # level -> why it was not built
    notes: Sequence[str]
    original_metrics: Mapping[str, Any] = field(default_factory=dict)   # the original, measured alike


# (the job, a progress callback that raises BuildStopped when the server stops) -> result
Compressor = Callable[[BuildJob, Progress], CompressionResult]


def _check(value: str, pattern: re.Pattern[str], what: str, rule: str) -> str:
    if not pattern.fullmatch(value):
        raise InvalidRequest(f"{what} {value[:80]!r} is not valid: use {rule}, starting with a letter or digit")
    return value


def check_model_name(name: str) -> str:
    return _check(name, MODEL_NAME, "model name", "1-64 lowercase letters, digits, '.', '_' or '-'")


def check_version_name(version: str) -> str:
    return _check(version, VERSION_NAME, "version", "1-32 letters, digits, '.', '_', '+' or '-'")


def _session(path: Path) -> Any:
    """Checks the file is ONNX the checker accepts and onnxruntime loads on the CPU.

    Runs inside the upload check's bounded child process (upload_check.py), never in the server."""
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
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelInvalid(f"the model cannot be loaded by onnxruntime because: {str(e)[:400]}") from e


def check_model_in_child(model_path: Path, golden_path: Path | None, out_path: Path, *, sha256: str,
                         max_output_bytes: int, calibration_path: Path | None = None,
                         calibration_limits: SampleLimits | None = None) -> dict[str, Any]:
    """The upload check, run by upload_check in its bounded child process: the model loads
    (by its format: `inspection.open_upload`), runs on the golden inputs (given; for a model
    with free dimensions the first sample of `calibration_path`; else generated from its sha256),
    matches the given golden outputs; the golden pair is written to `out_path`. Returns the
    input/output specs."""
    session = inspection.open_upload(model_path, onnx=_session)
    inputs = _specs(session.get_inputs(), "input")
    outputs = _specs(session.get_outputs(), "output")
    given_outputs: dict[str, np.ndarray] = {}
    if golden_path is not None:
        feeds, given_outputs = _read_golden(golden_path, max_unpacked_bytes=max_output_bytes)
        _check_golden_inputs(feeds, inputs)
    else:
        # a free-shape model: the first real sample (compress/golden.py), not 1x1 dimensions
        feeds = (None if calibration_path is None or calibration_limits is None
                 else golden_first_sample(inputs, calibration_path, calibration_limits)) \
            or make_inputs(inputs, sha256)
    try:
        results = session.run(None, feeds)
    except Exception as e:
        if "Failed to allocate" in str(e) or "bad_alloc" in str(e):
            raise MemoryError() from e   # the check's memory limit: upload_check says so
        raise ModelInvalid(f"the model fails to run on its golden inputs: {str(e)[:400]}") from e
    computed = {spec.name: np.asarray(r) for spec, r in zip(session.get_outputs(), results)}
    produced = sum(a.nbytes for a in computed.values()) + sum(a.nbytes for a in feeds.values())
    if produced > max_output_bytes:
        raise ModelInvalid(f"the model's golden inputs and outputs take {produced} bytes, more than the limit of "
                           f"{max_output_bytes}: make the outputs smaller or give golden inputs that are")
    _compare_outputs(computed, given_outputs)
    with open(out_path, "xb") as f:
        np.savez(f, **golden_arrays(feeds, computed))  # type: ignore[arg-type]
    return {"inputs": inputs, "outputs": outputs}


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


def _read_golden(path: Path, *, max_unpacked_bytes: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The golden pair in an .npz; its entries' sizes are checked before anything is unpacked."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            if len(entries) > MAX_GOLDEN_KEYS:
                raise InvalidRequest(f"golden file has {len(entries)} arrays, more than {MAX_GOLDEN_KEYS}")
            unpacked = sum(e.file_size for e in entries)
            if unpacked > max_unpacked_bytes:
                raise InvalidRequest(f"golden file unpacks to {unpacked} bytes, more than the limit of "
                                     f"{max_unpacked_bytes}: give fewer or smaller golden inputs")
        # zipfile reads no more than each entry's declared size, so the check above bounds memory
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


def golden_arrays(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"input:{k}": v for k, v in inputs.items()} | {f"output:{k}": v for k, v in outputs.items()}


def golden_bytes(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **golden_arrays(inputs, outputs))  # type: ignore[arg-type]
    return buffer.getvalue()


class Registry:
    def __init__(self, *, store: Store, blobs: Blobs, signer: Signer, compressor: Compressor | None = None,
                 calibration_limits: SampleLimits = DEFAULT_SAMPLE_LIMITS,
                 eval_limits: SampleLimits = DEFAULT_SAMPLE_LIMITS,
                 check_limits: CheckLimits = CheckLimits(), upload_workers: int = 2) -> None:
        self.store = store
        self.check_limits = check_limits
        # Uploads run here, not in the event loop's default pool, so checks waiting their
        # turn never starve device calls of threads.
        self.uploads = ThreadPoolExecutor(max_workers=upload_workers, thread_name_prefix="upload")
        self.blobs = blobs
        self.signer = signer
        self.compressor = compressor
        self.calibration_limits = calibration_limits
        self.eval_limits = eval_limits
        self.builds = Builds(self.build_variants)

    def add_version(
        self,
        model: str,
        staged: StagedFile,
        *,
        golden: StagedFile | None = None,
        version: str | None = None,
        compress: Sequence[str] = (),
        calibration: StagedFile | None = None,
        evaluation: StagedFile | None = None,
        targets: Sequence[str] = (),
    ) -> ModelVersion:
        """Checks and records one uploaded model; consumes (stores or discards) the staged files.

        With `compress`, the levels are built in the background (see the module docstring).
        """
        out = self.blobs.tmp_dir / f"{secrets.token_hex(12)}.golden.part"
        try:
            check_model_name(model)
            if version:
                check_version_name(version)
                if self.store.version(model, version) is not None:
                    raise VersionExists(f"{model}@{version} already exists: versions are immutable, upload a new version")
            staged.finish()
            fmt = inspection.detect(staged.path)
            _check_builds(fmt, compress, targets)
            if golden is not None:
                golden.finish()
            # The golden input of a free-shape model: the first calibration (else evaluation) sample.
            samples, sample_limits = (calibration, self.calibration_limits) if calibration is not None \
                else (evaluation, self.eval_limits)
            if samples is not None:
                samples.finish()
            checked = check_upload(staged.path, format=fmt, golden=None if golden is None else golden.path,
                                   out=out, sha256=staged.sha256, limits=self.check_limits,
                                   calibration=None if samples is None else samples.path,
                                   calibration_limits=sample_limits)
            reserved = self.store.reserve_version(model, version or None, at=time.time())
            if reserved is None:
                raise VersionExists(f"{model}@{version} already exists: versions are immutable, upload a new version")
            job = None
            try:
                job = self._prepare(model, reserved, staged, checked.inputs, tuple(compress), calibration, evaluation,
                                    targets=tuple(targets), fmt=fmt)
                compression = None if job is None else {
                    "status": "running", "levels": [{"level": x, "error": None} for x in (*job.levels, *job.targets)],
                    "notes": []}
                record = self._record(model, reserved, staged, dict(checked.inputs), dict(checked.outputs),
                                      checked.golden_path, compression, fmt=fmt)
            except BaseException:
                self.store.release_version(model, reserved)
                if job is not None:
                    shutil.rmtree(job.work, ignore_errors=True)
                raise
            if job is not None:
                self.builds.submit(job)
            return record
        finally:
            out.unlink(missing_ok=True)
            for f in (staged, golden, calibration, evaluation):
                if f is not None:
                    f.discard()

    def _prepare(self, model: str, version: str, staged: StagedFile, inputs: Mapping[str, Any],
                 levels: tuple[str, ...], calibration: StagedFile | None,
                 evaluation: StagedFile | None, *, targets: tuple[str, ...] = (),
                 fmt: str = "onnx") -> BuildJob | None:
        """The background job's work dir: a copy of the model and the unpacked samples."""
        if not levels and targets:
            work = Path(tempfile.mkdtemp(prefix="convert-", dir=self.blobs.tmp_dir))
            source = work / formats.get(fmt).file_name
            shutil.copyfile(staged.path, source)
            return BuildJob(model=model, version=version, work=work, model_path=source, levels=(),
                            calibration_dir=None, eval_dir=None, targets=targets, source_format=fmt)
        if not levels:
            if calibration is not None or evaluation is not None:
                raise InvalidRequest("'calibration' and 'eval' are used only with 'compress'; name the levels too")
            return None
        if self.compressor is None:
            raise InvalidRequest("this server has no compression pipeline; upload without 'compress'")
        work = Path(tempfile.mkdtemp(prefix="compress-", dir=self.blobs.tmp_dir))
        try:
            shutil.copyfile(staged.path, work / "model.onnx")
            dirs: dict[str, Path | None] = {"calibration": None, "eval": None}
            for role, upload, limits in (("calibration", calibration, self.calibration_limits),
                                         ("eval", evaluation, self.eval_limits)):
                if upload is not None:
                    upload.finish()
                    unpack(upload.path, inputs, work / role, role=role, limits=limits, labels_allowed=role == "eval")
                    dirs[role] = work / role
            return BuildJob(model=model, version=version, work=work, model_path=work / "model.onnx", levels=levels,
                            calibration_dir=dirs["calibration"], eval_dir=dirs["eval"], targets=targets)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _record(
        self, model: str, version: str, staged: StagedFile, inputs: dict[str, Any], outputs: dict[str, Any],
        golden_file: Path, compression: Mapping[str, Any] | None, *, fmt: str = "onnx",
    ) -> ModelVersion:
        """Stores the blobs, signs them and records the version (its name already reserved)."""
        sha256, length = self.blobs.commit(staged)
        golden_sha, golden_len = self.blobs.put_file(golden_file)
        variants = [Variant(variant="original", format=fmt, sha256=sha256, length=length)]
        self._sign([Artifact(golden_sha, golden_len, "golden", model, version, "original", "npz"),
                    Artifact(sha256, length, "model", model, version, "original", fmt)])
        record = ModelVersion(
            model=model, version=version, created_at=time.time(), inputs=inputs, outputs=outputs,
            golden=Golden(sha256=golden_sha, length=golden_len, atol=GOLDEN_ATOL, rtol=GOLDEN_RTOL),
            variants=tuple(variants), compression=compression,
        )
        self.store.add_version(record)
        logger.info("model version added model=%s version=%s sha256=%s variants=%d", model, version, sha256, len(variants))
        return record

    def _sign(self, artifacts: Sequence[Artifact]) -> None:
        """Signs each artifact into the image repository, then records it; one already known is kept as is."""
        for a in artifacts:
            if self.store.artifact(a.sha256) is not None:
                continue   # the same bytes as an artifact signed before (a level equal to another, say)
            custom = {"fleetcast": {"kind": a.kind, "model": a.model, "version": a.version, "variant": a.variant,
                                    "format": a.format}}
            try:
                self.signer.add_artifact(ArtifactTarget(sha256=a.sha256, length=a.length, custom=custom))
            except InvalidAssignmentError as e:
                raise InvalidRequest(str(e)) from e
            self.store.add_artifact(a)

    # -- background compression (runs in a worker thread, see builds.py) ----------------

    def build_variants(self, job: BuildJob, stopping: Callable[[], bool]) -> None:
        """Runs the compressor for `job` and records each built level; always ends the job's status."""
        def progress(text: str) -> None:
            if stopping():
                raise BuildStopped()
            logger.debug("compressing model=%s version=%s %s", job.model, job.version, text)

        errors: dict[str, str] = {}
        notes: list[str] = []
        status = "failed"
        try:
            assert self.compressor is not None or not job.levels
            result = self.compressor(job, progress) if job.levels and self.compressor else \
                CompressionResult(built=(), errors={}, notes=())
            if job.targets:
                result = self._convert(job, progress, result)
            errors.update(result.errors)
            notes.extend(result.notes)
            if result.original_metrics:
                original = self.version(job.model, job.version).variant("original")
                if original is not None:
                    self.store.add_variant(job.model, job.version,
                                           dataclasses.replace(original, metrics=dict(result.original_metrics)))
            for built in result.built:
                progress(f"storing {built.variant}")
                try:
                    self._add_variant(job, built)
                except (FleetcastError, OSError, ValueError, RuntimeError) as e:
                    logger.error("variant not stored model=%s version=%s variant=%s: %s",
                                 job.model, job.version, built.variant, e)
                    errors[built.variant] = f"built but not stored: {e}"
            status = "done"
        except BuildStopped:
            notes.append("the server stopped before compression finished; push the model again to build the levels")
            raise
        except Exception as e:  # the pipeline's InputError, or anything unexpected: the operator sees it
            logger.exception("compression failed model=%s version=%s", job.model, job.version)
            notes.append(f"compression failed: {str(e)[:400]}")
        finally:
            shutil.rmtree(job.work, ignore_errors=True)
            self.store.set_compression(job.model, job.version, {
                "status": status, "notes": notes,
                "levels": [{"level": x, "error": errors.get(x) if status == "done" else "not built"}
                           for x in (*job.levels, *job.targets)],
            })
            logger.info("compression %s model=%s version=%s errors=%d", status, job.model, job.version, len(errors))

    def _convert(self, job: BuildJob, progress: Progress, result: CompressionResult) -> CompressionResult:
        """Adds the job's per-target builds (fleetcast.server.convert) to the compressor's result."""
        from fleetcast.server.convert.build import build_targets

        record = self.version(job.model, job.version)
        feeds, _ = self._golden_of(record) if record.golden else ({}, {})
        built, errors = build_targets(job.model_path, job.source_format, job.targets, feeds, job.work, progress)
        return CompressionResult(
            built=[*result.built, *built],
            errors={**result.errors, **errors}, notes=result.notes, original_metrics=result.original_metrics)

    def _add_variant(self, job: BuildJob, built: BuiltVariant) -> None:
        record = self.version(job.model, job.version)
        golden = self._variant_golden(record, built)
        sha256, length = self.blobs.put_file(built.path)
        artifacts = [Artifact(sha256, length, "model", job.model, job.version, built.variant, built.format)]
        if golden is not None:
            artifacts.append(Artifact(golden.sha256, golden.length, "golden", job.model, job.version,
                                      built.variant, "npz"))
        self._sign(artifacts)
        self.store.add_variant(job.model, job.version, Variant(
            variant=built.variant, format=built.format, sha256=sha256, length=length, metrics=built.metrics,
            golden=golden))

    def _golden_of(self, record: ModelVersion) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        assert record.golden is not None
        with self.blobs.local_file(record.golden.sha256) as path:
            return _read_golden(path, max_unpacked_bytes=self.check_limits.max_output_bytes)

    def _variant_golden(self, record: ModelVersion, built: BuiltVariant) -> Golden | None:
        """This variant's outputs on the version's golden inputs, stored as its own golden file."""
        if record.golden is None:
            return None
        import onnxruntime as ort

        from fleetcast.proto import fcpack

        feeds, _ = self._golden_of(record)
        if built.golden_outputs is not None:   # a per-target build, run by its own runtime
            sha256, length = self.blobs.put_bytes(golden_bytes(feeds, built.golden_outputs))
            atol, rtol = built.golden_tolerance or (GOLDEN_ATOL, GOLDEN_RTOL)
            return Golden(sha256=sha256, length=length, atol=atol, rtol=rtol)
        data = built.path.read_bytes()
        runnable = fcpack.decode(data) if built.format == "fcpack" else data
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(runnable, options, providers=["CPUExecutionProvider"])
        results = session.run(None, feeds)
        outputs = {spec.name: np.asarray(r) for spec, r in zip(session.get_outputs(), results)}
        sha256, length = self.blobs.put_bytes(golden_bytes(feeds, outputs))
        atol, rtol = VARIANT_TOLERANCES.get(built.variant, (GOLDEN_ATOL, GOLDEN_RTOL))
        return Golden(sha256=sha256, length=length, atol=atol, rtol=rtol)

    def fail_interrupted(self) -> int:
        """At start: a job the last process was running will never finish; say so. Returns how many."""
        count = 0
        for name, _, _ in self.store.models():
            for v in self.store.versions(name):
                if v.compression and v.compression.get("status") == "running":
                    self.store.set_compression(name, v.version, {
                        **v.compression, "status": "failed",
                        "levels": [{**x, "error": x.get("error") or "not built"} for x in v.compression["levels"]],
                        "notes": [*v.compression.get("notes", []),
                                  "the server restarted before compression finished; push the model again"]})
                    count += 1
        return count

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


def _check_builds(fmt: str, compress: Sequence[str], targets: Sequence[str]) -> None:
    if compress and fmt != "onnx":
        raise InvalidRequest(f"compression levels build from ONNX models; this upload is {fmt}: "
                             "upload without 'compress' (per-target builds go in 'targets')")
    from fleetcast.server.convert import check_targets

    try:
        check_targets(targets, fmt)
    except ValueError as e:
        raise InvalidRequest(str(e)) from e


def parse_targets(text: str) -> tuple[str, ...]:
    """The `targets` form field: comma-separated build targets (fleetcast.server.convert)."""
    from fleetcast.server.convert import parse_targets as parse

    try:
        return parse(text)
    except ValueError as e:
        raise InvalidRequest(str(e)) from e


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


def level_metrics(level: Any) -> dict[str, Any]:
    """A pipeline LevelResult's scalar figures, JSON-safe, as a variant's `metrics`."""
    fields = dataclasses.asdict(level) if dataclasses.is_dataclass(level) else dict(vars(level))
    return {
        k: _metric(v) for k, v in fields.items()
        if k not in {"path", "level", "format", "error"} and (v is None or isinstance(v, (str, int, float, bool)))
    }


def pipeline_compressor(*, calibration_samples: int = 128, eval_samples: int = 2000, budget_pp: float = 1.0,
                        latency_s: float = 1.0) -> Compressor:
    """The `compress` hook: runs fleetcast.server.compress.pipeline, imported only when used."""

    def run(job: BuildJob, progress: Progress) -> CompressionResult:
        from fleetcast.server.compress.errors import AllLevelsFailedError
        from fleetcast.server.compress.measure import LatencyConfig
        from fleetcast.server.compress.pipeline import CompressConfig, compress

        config = CompressConfig(
            levels=job.levels, budget_pp=budget_pp, calibration_dir=job.calibration_dir, eval_dir=job.eval_dir,
            max_calibration_samples=calibration_samples, max_eval_samples=eval_samples,
            latency=dataclasses.replace(LatencyConfig(), min_duration_s=latency_s),
        )
        try:
            report = compress(job.model_path, job.work / "out", config, progress)
        except AllLevelsFailedError as e:  # normal here: each level's error is recorded below
            report = e.report
        built: list[BuiltVariant] = []
        errors: dict[str, str] = {}
        for level in report.levels:
            if getattr(level, "error", None) or not getattr(level, "path", None):
                logger.warning("compression level failed level=%s error=%s", level.level, getattr(level, "error", ""))
                errors[level.level] = str(getattr(level, "error", None) or "not built")
                continue
            built.append(BuiltVariant(variant=level.level, format=level.format, path=Path(level.path),
                                      metrics=level_metrics(level)))
        notes = [f"quality measured on {report.quality_data}", *report.notes]
        return CompressionResult(built=built, errors=errors, notes=notes,
                                 original_metrics=level_metrics(report.original))

    return run
