from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Repository(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPOSITORY_UNSPECIFIED: _ClassVar[Repository]
    REPOSITORY_IMAGE: _ClassVar[Repository]
    REPOSITORY_DIRECTOR: _ClassVar[Repository]
REPOSITORY_UNSPECIFIED: Repository
REPOSITORY_IMAGE: Repository
REPOSITORY_DIRECTOR: Repository

class EnrollRequest(_message.Message):
    __slots__ = ("device_id", "hardware_class", "backends", "enroll_token", "agent_version", "group", "labels", "csr", "proof", "proof_time", "backend_info")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    ENROLL_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    PROOF_TIME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_INFO_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hardware_class: str
    backends: _containers.RepeatedScalarFieldContainer[str]
    enroll_token: str
    agent_version: str
    group: str
    labels: _containers.ScalarMap[str, str]
    csr: bytes
    proof: bytes
    proof_time: int
    backend_info: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    def __init__(self, device_id: _Optional[str] = ..., hardware_class: _Optional[str] = ..., backends: _Optional[_Iterable[str]] = ..., enroll_token: _Optional[str] = ..., agent_version: _Optional[str] = ..., group: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., csr: _Optional[bytes] = ..., proof: _Optional[bytes] = ..., proof_time: _Optional[int] = ..., backend_info: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ...) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "version", "accelerator", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    accelerator: str
    detail: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., accelerator: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_token", "certificate")
    DEVICE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    device_token: str
    certificate: bytes
    def __init__(self, device_token: _Optional[str] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class AssignmentNotice(_message.Message):
    __slots__ = ("director_version", "deployment_id", "check_within_ms")
    DIRECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHECK_WITHIN_MS_FIELD_NUMBER: _ClassVar[int]
    director_version: int
    deployment_id: str
    check_within_ms: int
    def __init__(self, director_version: _Optional[int] = ..., deployment_id: _Optional[str] = ..., check_within_ms: _Optional[int] = ...) -> None: ...

class MetadataRequest(_message.Message):
    __slots__ = ("repository", "name")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    repository: Repository
    name: str
    def __init__(self, repository: _Optional[_Union[Repository, str]] = ..., name: _Optional[str] = ...) -> None: ...

class MetadataResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class TrustedVersions(_message.Message):
    __slots__ = ("repository", "root", "timestamp", "snapshot", "targets", "bin")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    BIN_FIELD_NUMBER: _ClassVar[int]
    repository: Repository
    root: int
    timestamp: int
    snapshot: int
    targets: int
    bin: int
    def __init__(self, repository: _Optional[_Union[Repository, str]] = ..., root: _Optional[int] = ..., timestamp: _Optional[int] = ..., snapshot: _Optional[int] = ..., targets: _Optional[int] = ..., bin: _Optional[int] = ...) -> None: ...

class BundleRequest(_message.Message):
    __slots__ = ("trusted",)
    TRUSTED_FIELD_NUMBER: _ClassVar[int]
    trusted: _containers.RepeatedCompositeFieldContainer[TrustedVersions]
    def __init__(self, trusted: _Optional[_Iterable[_Union[TrustedVersions, _Mapping]]] = ...) -> None: ...

class MetadataFile(_message.Message):
    __slots__ = ("repository", "name", "data")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    repository: Repository
    name: str
    data: bytes
    def __init__(self, repository: _Optional[_Union[Repository, str]] = ..., name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class RepositoryState(_message.Message):
    __slots__ = ("repository", "root")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    repository: Repository
    root: int
    def __init__(self, repository: _Optional[_Union[Repository, str]] = ..., root: _Optional[int] = ...) -> None: ...

class MetadataBundle(_message.Message):
    __slots__ = ("files", "states")
    FILES_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[MetadataFile]
    states: _containers.RepeatedCompositeFieldContainer[RepositoryState]
    def __init__(self, files: _Optional[_Iterable[_Union[MetadataFile, _Mapping]]] = ..., states: _Optional[_Iterable[_Union[RepositoryState, _Mapping]]] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("deployment_id", "state", "event", "model", "version", "variant", "sha256", "reason", "timestamp_ms", "active_model", "final", "outcome", "device_id")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_MODEL_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    state: str
    event: str
    model: str
    version: str
    variant: str
    sha256: str
    reason: str
    timestamp_ms: int
    active_model: str
    final: bool
    outcome: str
    device_id: str
    def __init__(self, deployment_id: _Optional[str] = ..., state: _Optional[str] = ..., event: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., sha256: _Optional[str] = ..., reason: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., active_model: _Optional[str] = ..., final: _Optional[bool] = ..., outcome: _Optional[str] = ..., device_id: _Optional[str] = ...) -> None: ...

class StatusReports(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[StatusReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[StatusReport, _Mapping]]] = ...) -> None: ...

class StatusAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LatencyHistogram(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, counts: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("model", "version", "variant", "backend", "inferences", "errors", "latency", "latency_sum_ms", "caller")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    INFERENCES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SUM_MS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    variant: str
    backend: str
    inferences: int
    errors: int
    latency: LatencyHistogram
    latency_sum_ms: float
    caller: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., backend: _Optional[str] = ..., inferences: _Optional[int] = ..., errors: _Optional[int] = ..., latency: _Optional[_Union[LatencyHistogram, _Mapping]] = ..., latency_sum_ms: _Optional[float] = ..., caller: _Optional[str] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("batch_id", "device_id", "window_start_ms", "window_end_ms", "stats")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_MS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    device_id: str
    window_start_ms: int
    window_end_ms: int
    stats: _containers.RepeatedCompositeFieldContainer[ModelStats]
    def __init__(self, batch_id: _Optional[str] = ..., device_id: _Optional[str] = ..., window_start_ms: _Optional[int] = ..., window_end_ms: _Optional[int] = ..., stats: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("batch_id", "duplicate")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    duplicate: bool
    def __init__(self, batch_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("sha256", "offset", "length")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    length: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class LocateRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ArtifactLocation(_message.Message):
    __slots__ = ("url", "expires_unix_s")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_unix_s: int
    def __init__(self, url: _Optional[str] = ..., expires_unix_s: _Optional[int] = ...) -> None: ...
