"""The agent's checks: metadata the server's Signer signed, verified by Verifier."""

from __future__ import annotations

import base64
import datetime
import json
import tempfile
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securesystemslib.dsse import Envelope
from tuf.api.dsse import SimpleEnvelope
from tuf.api.metadata import TargetFile

from fleetcast.agent.errors import ServerUnavailableError, TrustRootError, VerificationError
from fleetcast.agent.trust import (
    BundleFetcher,
    GrpcMetadataFetcher,
    TrustConfig,
    TrustRoot,
    VerifiedAssignment,
    Verifier,
    _custom_fields,
    _fleetcast_custom,
    load_trust_root,
    parse_trust_root,
)
from fleetcast.agent.trust import DIRECTOR_DIR
from fleetcast.proto.v1 import device_pb2, device_pb2_grpc
from fleetcast.server.signing import (
    ArtifactTarget,
    DirectorAssignment,
    GoldenRef,
    MetadataNotFound,
    Signer,
    SigningConfig,
    device_bin,
)
from fleetcast.server.metadata_bundle import Trusted, make_bundle
from tests.support.metadata_store import MemoryMetadataStore
from tests.support.repository_simulator import RepositorySimulator

DEVICE = "dev-1"
MODEL_SHA = "a" * 64
GOLDEN_SHA = "b" * 64


@dataclass
class Fleet:
    signer: Signer
    trust_root: TrustRoot
    simulator: RepositorySimulator
    state_dir: Path

    def verifier(self, device_id: str = DEVICE) -> Verifier:
        """A new Verifier each time, as after an agent restart (same state dir)."""
        return Verifier(trust_root=self.trust_root, state_dir=self.state_dir,
                        fetcher=self.simulator, config=TrustConfig(device_id=device_id))


def make_fleet(root: Path, config: SigningConfig = SigningConfig(), clock=None) -> Fleet:
    signer = Signer.open(root / "keys", MemoryMetadataStore(), config, clock=clock)
    (root / "trust-root.json").write_bytes(signer.trust_root())
    signer.add_artifact(ArtifactTarget(MODEL_SHA, 100, {"kind": "model", "model": "digits"}))
    signer.add_artifact(ArtifactTarget(GOLDEN_SHA, 20, {"kind": "golden", "model": "digits"}))
    return Fleet(signer, load_trust_root(root / "trust-root.json"),
                 RepositorySimulator(signer, DEVICE), root / "state")


def assignment(*, sha256: str = MODEL_SHA, length: int = 100, golden_sha: str | None = GOLDEN_SHA,
               deployment_id: str = "dep-1") -> DirectorAssignment:
    golden = None if golden_sha is None else GoldenRef(
        path=f"artifacts/{golden_sha}", sha256=golden_sha, length=20, atol=1e-4, rtol=1e-3)
    return DirectorAssignment(
        deployment_id=deployment_id, model="digits", version="3", variant="int8", format="onnx",
        sha256=sha256, length=length, golden=golden,
        inputs={"input": {"dtype": "float32", "shape": ["batch", 64]}},
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)


def test_check_returns_the_assignment_both_repositories_agree_on(fleet: Fleet) -> None:
    version = fleet.signer.assign(DEVICE, assignment())

    verified = fleet.verifier().check()

    assert verified is not None
    assert (verified.deployment_id, verified.device_id, verified.model, verified.version) == (
        "dep-1", DEVICE, "digits", "3")
    assert (verified.variant, verified.format, verified.length) == ("int8", "onnx", 100)
    assert verified.target_path == f"artifacts/{MODEL_SHA}" and verified.sha256 == MODEL_SHA
    assert verified.golden is not None and verified.golden.sha256 == GOLDEN_SHA
    assert (verified.golden.length, verified.golden.atol, verified.golden.rtol) == (20, 1e-4, 1e-3)
    assert dict(verified.inputs["input"]) == {"dtype": "float32", "shape": ("batch", 64)}
    assert verified.director_version == version


def test_saved_assignment_reads_back_equal_and_checks_types(fleet: Fleet) -> None:
    fleet.signer.assign(DEVICE, assignment())
    verified = fleet.verifier().check()
    assert verified is not None
    saved = json.loads(json.dumps(verified.to_json()))

    assert VerifiedAssignment.from_saved(saved) == verified
    with pytest.raises(VerificationError, match="length"):
        VerifiedAssignment.from_saved({**saved, "length": "100"})
    with pytest.raises(VerificationError, match="target_path"):
        VerifiedAssignment.from_saved({**saved, "target_path": "../../etc/passwd"})


def test_a_verified_assignment_cannot_be_built_outside_the_check() -> None:
    with pytest.raises(TypeError, match="Verifier.check"):
        VerifiedAssignment(
            deployment_id="d", device_id=DEVICE, model="m", version="1", variant="v", format="onnx",
            target_path=f"artifacts/{MODEL_SHA}", sha256=MODEL_SHA, length=1, golden=None,
            inputs={}, director_version=1,
        )


def test_check_returns_none_when_nothing_is_assigned(fleet: Fleet) -> None:
    assert fleet.verifier().check() is None
    fleet.signer.assign(DEVICE, assignment())
    fleet.signer.assign(DEVICE, None)

    assert fleet.verifier().check() is None


def test_director_target_missing_from_the_image_repository_is_refused(fleet: Fleet) -> None:
    fleet.signer.assign(DEVICE, assignment(sha256="c" * 64))

    with pytest.raises(VerificationError, match="image repository does not list the model"):
        fleet.verifier().check()


def test_director_and_image_disagreeing_on_length_is_refused(fleet: Fleet) -> None:
    fleet.signer.assign(DEVICE, assignment(length=101))

    with pytest.raises(VerificationError, match="disagree on the model length"):
        fleet.verifier().check()


def test_golden_file_missing_from_the_image_repository_is_refused(fleet: Fleet) -> None:
    fleet.signer.assign(DEVICE, assignment(golden_sha="d" * 64))

    with pytest.raises(VerificationError, match="golden"):
        fleet.verifier().check()


def test_an_assignment_for_another_device_is_not_taken(fleet: Fleet) -> None:
    fleet.signer.assign(DEVICE, assignment())

    assert fleet.verifier(device_id="dev-2").check() is None
    fleet.signer.assign("dev-2", assignment(deployment_id="dep-2"))
    theirs, mine = fleet.verifier(device_id="dev-2").check(), fleet.verifier().check()
    assert theirs is not None and (theirs.device_id, theirs.deployment_id) == ("dev-2", "dep-2")
    assert mine is not None and (mine.device_id, mine.deployment_id) == (DEVICE, "dep-1")


def test_an_entry_for_this_device_naming_another_device_is_refused() -> None:
    target = TargetFile(100, {"sha256": MODEL_SHA}, "devices/dev-2", unrecognized_fields={
        "custom": {"fleetcast": {"device_id": DEVICE}}})

    with pytest.raises(VerificationError, match="not this device 'dev-2'"):
        _custom_fields(_fleetcast_custom(target), "dev-2")


def current_name(fleet: Fleet, role: str) -> str:
    """The director file a device reads now for `role`: timestamp, snapshot or its bin."""
    if role == "timestamp":
        return "timestamp.json"
    snapshot_version = _signed(fleet.signer.metadata("director", "timestamp.json")).snapshot_meta.version
    if role == "snapshot":
        return f"{snapshot_version}.snapshot.json"
    snapshot = _signed(fleet.signer.metadata("director", f"{snapshot_version}.snapshot.json"))
    return f"{snapshot.meta[device_bin(DEVICE) + '.json'].version}.{device_bin(DEVICE)}.json"


def _signed(data: bytes):
    return SimpleEnvelope.from_bytes(data).get_signed()


def test_a_tampered_timestamp_payload_fails_as_a_bad_signature(fleet: Fleet) -> None:
    fleet.signer.assign(DEVICE, assignment())
    repo = "director"
    fleet.simulator.serve(repo, "timestamp.json", rewrite_payload(
        fleet.signer.metadata(repo, "timestamp.json"), version=99))

    with pytest.raises(VerificationError, match="bad signature"):
        fleet.verifier().check()


def test_a_tampered_bin_payload_fails_its_signed_hash(fleet: Fleet) -> None:
    version = fleet.signer.assign(DEVICE, assignment())
    repo, name = "director", f"{version}.{device_bin(DEVICE)}.json"
    assert name == current_name(fleet, "bin")
    fleet.simulator.serve(repo, name, flip_payload_byte(fleet.signer.metadata(repo, name), index=40, mask=1))

    with pytest.raises(VerificationError, match="signed hash"):
        fleet.verifier().check()


def rewrite_payload(data: bytes, **fields: object) -> bytes:
    """The same envelope and signatures around a payload with some fields changed."""
    envelope = Envelope.from_dict(json.loads(data))
    payload = json.dumps({**json.loads(envelope.payload), **fields}).encode()
    return json.dumps(Envelope(payload, envelope.payload_type, envelope.signatures).to_dict()).encode()


def flip_payload_byte(data: bytes, *, index: int, mask: int) -> bytes:
    """The same envelope and signatures around a payload with one byte changed."""
    envelope = Envelope.from_dict(json.loads(data))
    payload = bytearray(envelope.payload)
    payload[index % len(payload)] ^= mask
    return json.dumps(Envelope(bytes(payload), envelope.payload_type, envelope.signatures).to_dict()).encode()


@settings(max_examples=25, deadline=None)
@given(
    role=st.sampled_from(["timestamp", "snapshot", "bin"]),
    index=st.integers(min_value=0, max_value=10_000),
    mask=st.integers(min_value=1, max_value=255),
)
def test_any_changed_payload_byte_never_verifies(role: str, index: int, mask: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fleet = make_fleet(Path(tmp))
        fleet.signer.assign(DEVICE, assignment())
        repo, name = "director", current_name(fleet, role)
        fleet.simulator.serve(repo, name, flip_payload_byte(
            fleet.signer.metadata(repo, name), index=index, mask=mask))

        with pytest.raises(VerificationError):
            fleet.verifier().check()


def test_expired_timestamp_is_refused_until_the_server_refreshes_it(tmp_path: Path) -> None:
    two_days_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    clock = Clock(two_days_ago)
    fleet = make_fleet(tmp_path, SigningConfig(timestamp_expiry_s=86400.0), clock=clock)
    fleet.signer.assign(DEVICE, assignment())

    with pytest.raises(VerificationError, match="expired"):
        fleet.verifier().check()

    clock.now = datetime.datetime.now(datetime.timezone.utc)
    assert fleet.signer.refresh_timestamps() == 2
    assert fleet.verifier().check() is not None


class Clock:
    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


def test_older_director_metadata_is_refused_after_a_restart(fleet: Fleet) -> None:
    repo = "director"
    fleet.signer.assign(DEVICE, assignment(deployment_id="dep-old"))
    old_timestamp = fleet.signer.metadata(repo, "timestamp.json")
    fleet.signer.assign(DEVICE, assignment(deployment_id="dep-new"))
    verified = fleet.verifier().check()
    assert verified is not None and verified.deployment_id == "dep-new"

    fleet.simulator.serve(repo, "timestamp.json", old_timestamp)

    with pytest.raises(VerificationError, match="rollback"):
        fleet.verifier().check()


def test_unreachable_server_is_a_transient_error(fleet: Fleet) -> None:
    fleet.simulator.offline = True

    with pytest.raises(ServerUnavailableError):
        fleet.verifier().check()


def write_trust_root(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_trust_root_problems_each_name_what_is_wrong(fleet: Fleet, tmp_path: Path) -> None:
    good = json.loads((tmp_path / "trust-root.json").read_bytes())
    timestamp = fleet.signer.metadata("image", "timestamp.json")
    root_bytes = base64.b64decode(good["image_root"])
    forged = rewrite_payload(root_bytes, consistent_snapshot=False)
    cases = {
        "does not exist": tmp_path / "absent.json",
        "is not JSON": tmp_path / "bad.json",
        "not a Fleetcast trust root": write_trust_root(tmp_path / "v2.json", {**good, "fleetcast_trust_root": 2}),
        "no director_root": write_trust_root(tmp_path / "half.json", {**good, "director_root": None}),
        "not valid base64": write_trust_root(tmp_path / "b64.json", {**good, "image_root": "%%%"}),
        "not a root": write_trust_root(tmp_path / "ts.json", {
            **good, "image_root": base64.b64encode(timestamp).decode()}),
        "not signed by its own root keys": write_trust_root(tmp_path / "forged.json", {
            **good, "image_root": base64.b64encode(forged).decode()}),
        "not a TUF root envelope": write_trust_root(tmp_path / "junk.json", {
            **good, "director_root": base64.b64encode(b"{}").decode()}),
    }
    (tmp_path / "bad.json").write_text("{not json")

    for message, path in cases.items():
        with pytest.raises(TrustRootError, match=message):
            load_trust_root(path)
    assert parse_trust_root(json.dumps(good).encode()) == fleet.trust_root


class MetadataServicer(device_pb2_grpc.DeviceServiceServicer):
    """FetchMetadata and FetchMetadataBundle (the server's own make_bundle), answered from
    a Signer, for the device holding TOKEN. `tamper` rewrites bundle files by name;
    `bundles=False` plays a server from before the bundle (UNIMPLEMENTED)."""

    TOKEN = "device-token"

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.calls: list[str] = []
        self.tamper: dict[str, Callable[[bytes], bytes]] = {}
        self.bundles = True

    def FetchMetadataBundle(self, request: device_pb2.BundleRequest, context: grpc.ServicerContext
                            ) -> device_pb2.MetadataBundle:
        if not self.bundles:
            return device_pb2_grpc.DeviceServiceServicer.FetchMetadataBundle(self, request, context)
        self._authenticate(context)
        self.calls.append("bundle")
        names = {device_pb2.REPOSITORY_IMAGE: "image", device_pb2.REPOSITORY_DIRECTOR: "director"}
        trusted = {names[t.repository]: Trusted(root=t.root, timestamp=t.timestamp, snapshot=t.snapshot,
                                                targets=t.targets, bin=t.bin) for t in request.trusted}
        bundle = make_bundle(self.signer, device_id=DEVICE, trusted=trusted)
        enums = {v: k for k, v in names.items()}
        return device_pb2.MetadataBundle(
            files=[device_pb2.MetadataFile(repository=enums[f.repository], name=f.name,
                                           data=self.tamper.get(f.name, lambda d: d)(f.data)) for f in bundle.files],
            states=[device_pb2.RepositoryState(repository=enums[r], root=v) for r, v in bundle.roots.items()])

    def _authenticate(self, context: grpc.ServicerContext) -> None:
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad device token")

    def FetchMetadata(self, request: device_pb2.MetadataRequest, context: grpc.ServicerContext
                      ) -> device_pb2.MetadataResponse:
        self._authenticate(context)
        self.calls.append(request.name)
        repo = "image" if request.repository == device_pb2.REPOSITORY_IMAGE else "director"
        try:
            return device_pb2.MetadataResponse(data=self.signer.metadata(repo, request.name))
        except MetadataNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            raise


@pytest.fixture
def servicer(fleet: Fleet) -> MetadataServicer:
    return MetadataServicer(fleet.signer)


@pytest.fixture
def metadata_server(servicer: MetadataServicer) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    device_pb2_grpc.add_DeviceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _bundle_verifier(fleet: Fleet, channel: grpc.Channel) -> tuple[Verifier, BundleFetcher]:
    fetcher = BundleFetcher(device_pb2_grpc.DeviceServiceStub(channel), MetadataServicer.TOKEN, device_id=DEVICE)
    return Verifier(trust_root=fleet.trust_root, state_dir=fleet.state_dir, fetcher=fetcher,
                    device_id=DEVICE), fetcher


def test_a_check_reads_every_file_of_both_repositories_from_one_bundle(
        fleet: Fleet, servicer: MetadataServicer, metadata_server: str) -> None:
    fleet.signer.assign(DEVICE, assignment())
    with grpc.insecure_channel(metadata_server) as channel:
        verifier, fetcher = _bundle_verifier(fleet, channel)
        first = verifier.check()
        calls_first = list(servicer.calls)
        fleet.signer.assign(DEVICE, assignment(deployment_id="dep-2"))   # a new bin, snapshot, timestamp
        servicer.calls.clear()
        second = verifier.check()

    assert first is not None and first.deployment_id == "dep-1"
    assert calls_first == ["bundle"]                 # no FetchMetadata at all, root probes included
    assert second is not None and second.deployment_id == "dep-2"
    assert servicer.calls == ["bundle"] and fetcher.bundles == 2


def test_a_tampered_bin_in_a_bundle_is_refused_as_from_fetch_metadata(
        fleet: Fleet, servicer: MetadataServicer, metadata_server: str) -> None:
    version = fleet.signer.assign(DEVICE, assignment())
    servicer.tamper[f"{version}.{device_bin(DEVICE)}.json"] = lambda d: flip_payload_byte(d, index=40, mask=1)
    with grpc.insecure_channel(metadata_server) as channel:
        verifier, _ = _bundle_verifier(fleet, channel)
        with pytest.raises(VerificationError, match="signed hash"):
            verifier.check()


def test_a_tampered_timestamp_in_a_bundle_fails_as_a_bad_signature(
        fleet: Fleet, servicer: MetadataServicer, metadata_server: str) -> None:
    fleet.signer.assign(DEVICE, assignment())
    servicer.tamper["timestamp.json"] = lambda d: rewrite_payload(d, version=99)
    with grpc.insecure_channel(metadata_server) as channel:
        verifier, _ = _bundle_verifier(fleet, channel)
        with pytest.raises(VerificationError, match="bad signature"):
            verifier.check()


def test_a_server_without_bundles_is_read_one_file_at_a_time(
        fleet: Fleet, servicer: MetadataServicer, metadata_server: str) -> None:
    servicer.bundles = False
    fleet.signer.assign(DEVICE, assignment())
    with grpc.insecure_channel(metadata_server) as channel:
        verifier, fetcher = _bundle_verifier(fleet, channel)
        verified = verifier.check()

    assert verified is not None and verified.sha256 == MODEL_SHA
    assert fetcher.bundles == 0 and "timestamp.json" in servicer.calls and "bundle" not in servicer.calls


def test_grpc_fetcher_verifies_over_a_real_server(fleet: Fleet, metadata_server: str) -> None:
    fleet.signer.assign(DEVICE, assignment())
    with grpc.insecure_channel(metadata_server) as channel:
        stub = device_pb2_grpc.DeviceServiceStub(channel)
        verifier = Verifier(trust_root=fleet.trust_root, state_dir=fleet.state_dir,
                            fetcher=GrpcMetadataFetcher(stub, MetadataServicer.TOKEN), device_id=DEVICE)
        verified = verifier.check()
        intruder = Verifier(trust_root=fleet.trust_root, state_dir=fleet.state_dir / "x",
                            fetcher=GrpcMetadataFetcher(stub, "stolen", timeout_s=5.0), device_id=DEVICE)
        with pytest.raises(ServerUnavailableError, match="UNAUTHENTICATED"):
            intruder.check()

    assert verified is not None and verified.sha256 == MODEL_SHA


def test_a_renewed_root_is_followed_from_the_configured_one(tmp_path: Path) -> None:
    clock = Clock(datetime.datetime.now(datetime.timezone.utc))
    fleet = make_fleet(tmp_path, clock=clock)
    fleet.signer.assign(DEVICE, assignment())
    clock.now += datetime.timedelta(days=200)

    fleet.signer.refresh_timestamps()
    verified = fleet.verifier().check()

    assert verified is not None
    assert (fleet.state_dir / DIRECTOR_DIR / "root_history" / "2.root.json").read_bytes() == \
        fleet.signer.metadata("director", "2.root.json")
    assert (fleet.state_dir / "image" / "root_history" / "2.root.json").exists()
