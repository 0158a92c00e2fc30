"""The agent's main loop: serve the active model, listen for notices, run the flow.

On start: load the trust root (missing or corrupt: `TrustRootError`, the CLI exits
non-zero), serve the slot the start-up check chose (`agent/startup.py`: the slot's
files re-checked against the signed image metadata; on a mismatch the other slot or
nothing, reported once connected) on the local API, enroll if needed, start the notifier and the telemetry sender, then resume any
deployment saved in `state.json`. Each notice triggers `Verifier.check()`; an
assignment whose (deployment, sha256) differs from the one served, and that has not
already failed here, runs the update flow. A check that fails verification (bad
signature, expired metadata, ...) is reported and the current model keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Final

from fleetcast.agent import backends, slots as slot_files
from fleetcast.agent.config import AgentConfig
from fleetcast.agent.control import ControlClient, MqttListener, MqttUplink, Notifier
from fleetcast.agent.datadir import DataDir, write_atomic
from fleetcast.agent.direct_download import DirectTransport
from fleetcast.agent.download import DownloadConfig, Downloader, GrpcTransport, HttpTransport, Transport
from fleetcast.agent.errors import (
    ActivationError, ReenrollmentRefused, ServerUnavailableError, TransientError, VerificationError,
)
from fleetcast.agent.flow import Event, FlowConfig, Handler, Outcome, Record, Runner, State, StateStore
from fleetcast.agent.local_api import LocalApi, describe_serving
from fleetcast.agent.runtime import LoadedModel, Runtime, load_model, smoke_test
from fleetcast.agent.signed_targets import SignedTargets
from fleetcast.agent.slots import InstalledModel, Slots, check_file, manifest_digest, other
from fleetcast.agent.startup import Startup, Step as StartupStep
from fleetcast.agent.telemetry import Recorder, Sender, Spool, Uplink
from fleetcast.agent.trust import (
    BundleFetcher, TrustConfig, TrustRoot, Verifier, VerifiedAssignment, load_trust_root,
)
from fleetcast.proto.brokerauth import BrokerAuth
from fleetcast.proto.v1 import device_pb2, local_pb2

logger = logging.getLogger(__name__)

_TRIAL_TICK_S: Final = 0.5


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.data = DataDir(config.data_dir)
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.runtime = Runtime()
        self.recorder = Recorder(config.device_id)
        self.last_error = ""
        self._reported_check_error = ""
        self._last_notice = ""
        self.rng = random.Random()   # where in a notice's check window this device checks
        self._startup_problems: list[str] = []

    # ---- lifecycle -------------------------------------------------------------

    def run(self) -> int:
        """Runs until `stop` is set; raises FatalError for what the operator must fix."""
        trust_root = load_trust_root(self.config.trust_root)
        backends.configure(self.config.backends)
        if not self.data.device_json.exists():   # enrollment reports the probes: run them before serving
            backends.probes(self.config.hardware_class)
        self.data.create()
        self.slots = Slots(self.data)
        self.spool = Spool(self.data.telemetry_db, max_batches=self.config.max_spooled_batches)
        self.runner = Runner(store=StateStore(self.data.state_json), handlers=self._handlers(),
                             config=FlowConfig(max_state_entries=self.config.max_state_entries,
                                               retry_backoff_max_s=self.config.retry_backoff_max_s),
                             on_transition=self._on_transition, stop=self.stop)
        self._serve_active(trust_root)
        self.local_api = LocalApi(self.data.socket, self.runtime, self._status)
        self.local_api.start()
        write_atomic(self.data.agent_json, json.dumps(
            {"pid": os.getpid(), "socket": str(self.data.socket)}).encode(), mode=0o600)
        self.client = ControlClient(self.config, self.data)
        try:
            self._start_bridge()
            if not self._enroll():
                return 0
            self._start_control(trust_root)
            self._report_startup_problems()
            self.runner.resume()
            self.wake.set()
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _start_bridge(self) -> None:
        if not self.config.bridge_allow_origins:
            return
        from fleetcast.agent.bridge import Bridge, BridgeConfig
        from fleetcast.agent.bridge_policy import parse_origins

        self.bridge = Bridge(config=BridgeConfig(origins=parse_origins(self.config.bridge_allow_origins),
                                                 port=self.config.bridge_port),
                             runtime=self.runtime, status=self._status, data_dir=self.data.root,
                             hardware_class=self.config.hardware_class, recorder=self.recorder)
        self.bridge.start()

    def _enroll(self) -> bool:
        backoff_s = 1.0
        while not self.stop.is_set():
            try:
                self.client.ensure_enrolled()
                return True
            except ReenrollmentRefused as e:
                backoff_s = self.config.retry_backoff_max_s   # waits for the operator: no spinning
                logger.warning("enrollment: %s; trying again in %.0fs", e, backoff_s)
                self.stop.wait(backoff_s)
            except ServerUnavailableError as e:
                logger.warning("enrollment: %s; retrying in %.0fs", e, backoff_s)
                self.stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self.config.retry_backoff_max_s)
        return False

    def _start_control(self, trust_root) -> None:  # noqa: ANN001 (trust.TrustRoot)
        token = self.client.token
        grpc_transport = GrpcTransport(self.client.stub, token)
        transport: Transport = (
            HttpTransport(self.config.artifacts_url, token, chunk_bytes=self.config.download_chunk_bytes,
                          ca_file=self.config.server_ca_path)
            if self.config.artifacts_url else
            DirectTransport(grpc_transport, grpc_transport, chunk_bytes=self.config.download_chunk_bytes,
                            ca_file=self.config.server_ca_path))
        self.downloader = Downloader(self.data.downloads, transport,
                                     DownloadConfig(max_artifact_bytes=self.config.max_artifact_bytes,
                                                    rate_bps=self.config.download_rate_bps),
                                     stop=self.stop)
        self.verifier = Verifier(
            trust_root=trust_root, state_dir=self.data.trust,
            fetcher=BundleFetcher(self.client.stub, token, timeout_s=self.config.rpc_timeout_s,
                                        device_id=self.config.device_id),
            config=TrustConfig(device_id=self.config.device_id,
                               max_artifact_bytes=self.config.max_artifact_bytes))
        mqtt = MqttListener(self.config.mqtt_url, self.config.device_id, self._notice,
                            auth=self._broker_auth()) if self.config.mqtt_url else None
        uplink: Uplink = MqttUplink(mqtt, self.config.device_id, self.config.rpc_timeout_s) \
            if mqtt is not None and self.config.telemetry_via_mqtt else self.client
        self.sender = Sender(spool=self.spool, recorder=self.recorder, uplink=uplink,
                             interval_s=self.config.telemetry_interval_s, stop=self.stop)
        self.sender.start()
        self.notifier = Notifier(config=self.config, client=self.client, notify=self._notice,
                                 stop=self.stop, mqtt=mqtt)
        self.notifier.start()

    def _broker_auth(self) -> BrokerAuth:
        credentials = self.client.credentials
        return BrokerAuth(ca=self.config.mqtt_ca_path, cert=credentials.cert_path, key=credentials.key_path,
                          username=self.config.mqtt_username, password=self.config.mqtt_password)

    def _loop(self) -> None:
        while not self.stop.is_set():
            if not self.wake.wait(timeout=1.0):
                continue
            self.wake.clear()
            if not self.stop.is_set():
                self._check()

    def _shutdown(self) -> None:
        self.stop.set()
        for name in ("notifier",):
            if hasattr(self, name):
                getattr(self, name).close()
        if hasattr(self, "sender"):
            self.sender.join(5.0)   # its last window stays spooled for the next start
        if hasattr(self, "bridge"):
            self.bridge.stop()
        self.local_api.stop()
        self.data.agent_json.unlink(missing_ok=True)
        self.spool.close()
        self.client.close()
        logger.info("agent stopped")

    def _notice(self, deployment_id: str, within_s: float = 0.0) -> None:
        """Wakes the check loop: at once, or at a random moment within the window the
        notice gave (bounded by the notifier), so a fleet told at once does not check at once."""
        if deployment_id:
            self._last_notice = deployment_id
        if within_s <= 0:
            self.wake.set()
            return
        timer = threading.Timer(self.rng.uniform(0.0, within_s), self.wake.set)
        timer.daemon = True
        timer.start()

    # ---- checking for an assignment ---------------------------------------------

    def _check(self) -> None:
        try:
            assignment = self.verifier.check()
        except TransientError as e:
            logger.info("check postponed: %s", e)
            timer = threading.Timer(min(10.0, self.config.poll_interval_s), self.wake.set)
            timer.daemon = True
            timer.start()
            return
        except VerificationError as e:
            self._report_check_failure(str(e))     # keep serving what we serve
            return
        self._reported_check_error = ""
        if assignment is None or not self._is_new(assignment):
            return
        from_slot = self.slots.active()
        self.runner.start(deployment_id=assignment.deployment_id,
                          assignment=slot_files.assignment_doc(assignment),
                          digest=manifest_digest(assignment), from_slot=from_slot, to_slot=other(from_slot))
        self.wake.set()   # the assignment may have changed while the flow ran

    def _is_new(self, assignment: VerifiedAssignment) -> bool:
        current = self.runtime.current
        if current is not None:
            active = current.installed.assignment
            if (active.deployment_id, active.sha256) == (assignment.deployment_id, assignment.sha256):
                return False
        if self.runner.has_failed(assignment.deployment_id):
            logger.debug("deployment=%s already failed here: not retried", assignment.deployment_id)
            return False
        return True

    def _report_check_failure(self, reason: str) -> None:
        self.last_error = reason
        # Once per refusal and deployment: a check at start-up can refuse before the watch
        # stream named the deployment; the same refusal is reported again once it has.
        reported = f"{self._last_notice}\n{reason}"
        if reported == self._reported_check_error:
            return
        self._reported_check_error = reported
        # Sent before it is logged: the server just answered the check, so it is reachable.
        self.sender.report(device_pb2.StatusReport(
            deployment_id=self._last_notice, state=State.VERIFY.value, event=Event.FAILURE.value,
            reason=reason[:1000], timestamp_ms=int(time.time() * 1000), active_model=self._active_name()),
            now=True)
        logger.error("assignment check failed, still serving the current model: %s", reason)

    # ---- serving ------------------------------------------------------------------

    def _load(self, slot: str) -> LoadedModel:
        return self._load_installed(self.slots.load(slot))

    def _load_installed(self, installed: InstalledModel) -> LoadedModel:
        return load_model(installed, recorder=self.recorder,
                          threads=self.config.intra_op_threads, hardware_class=self.config.hardware_class,
                          max_model_bytes=self.config.max_artifact_bytes)

    def _serve_active(self, trust_root: TrustRoot) -> None:
        """Serves what the start-up table (agent/startup.py) chose; remembers why it refused."""
        startup: Startup[LoadedModel] = Startup(
            slots=self.slots, device_id=self.config.device_id, load=self._load_installed,
            signed=lambda: SignedTargets.load(trust_root, self.data.trust / "image",
                                              TrustConfig(device_id=self.config.device_id)),
            deploying=self.runner.record.state is not State.IDLE)
        outcome = startup.run()
        self._startup_problems = list(outcome.problems)
        if self.runner.store.load_error:
            self._startup_problems.insert(0, self.runner.store.load_error)
        for problem in self._startup_problems:
            logger.error("startup: %s", problem)
        if outcome.step is StartupStep.EMPTY:
            logger.info("no model installed yet: waiting for an assignment")
        elif outcome.step is StartupStep.REFUSE:
            logger.error("startup: no slot verifies against the signed metadata: serving nothing "
                         "until a new deployment installs a model")
        if self._startup_problems:
            self.last_error = "; ".join(self._startup_problems)
        if outcome.model is not None and outcome.slot is not None:
            if not outcome.pointer_ok or self.slots.active() != outcome.slot:
                try:
                    self.slots.flip(outcome.slot)
                except OSError as e:   # e.g. `active` is a directory: serve, and say so
                    self._startup_problems.append(f"active pointer cannot be rewritten: {e}")
                    logger.error("startup: active pointer cannot be rewritten: %s", e)
            self.runtime.swap(outcome.model)

    def _report_startup_problems(self) -> None:
        """Tells the server what start-up refused (device last_error); sent once connected."""
        if not self._startup_problems:
            return
        reason = "startup: " + "; ".join(self._startup_problems)
        self.sender.report(device_pb2.StatusReport(
            deployment_id="", state=self.runner.record.state.value, event=Event.FAILURE.value,
            reason=reason[:1000], timestamp_ms=int(time.time() * 1000), active_model=self._active_name()),
            now=True)

    def _active_name(self) -> str:
        current = self.runtime.current
        return f"{current.key.model}@{current.key.version}" if current else ""

    def _status(self) -> local_pb2.StatusResponse:
        record = self.runner.record
        response = local_pb2.StatusResponse(device_id=self.config.device_id, state=record.state.value,
                                            deployment_id=record.deployment_id, last_error=self.last_error[:2000])
        return describe_serving(response, self.runtime)

    # ---- the update flow's handlers -------------------------------------------------

    def _handlers(self) -> Mapping[State, Handler]:
        return {State.DOWNLOAD: self._download, State.VERIFY: self._verify, State.INSTALL: self._install,
                State.ACTIVATE: self._activate, State.TRIAL: self._trial, State.COMMIT: self._commit,
                State.ROLLBACK: self._rollback, State.REPORT: self._report}

    @staticmethod
    def _assignment(record: Record) -> VerifiedAssignment:
        assignment = VerifiedAssignment.from_saved(record.assignment or {})
        if manifest_digest(assignment) != record.manifest_digest:
            raise VerificationError("saved assignment does not match its digest in state.json")
        return assignment

    @staticmethod
    def _to_slot(record: Record) -> str:
        if record.to_slot is None or record.to_slot == record.from_slot:
            raise ActivationError("state.json names no usable target slot")
        return record.to_slot

    def _download(self, record: Record) -> Event:
        a = self._assignment(record)
        if a.golden is not None:
            self.downloader.fetch(a.golden.sha256, a.golden.length)
        self.downloader.fetch(a.sha256, a.length)
        return Event.SUCCESS

    def _verify(self, record: Record) -> Event:
        a = self._assignment(record)
        backends.choose(a.format, self.config.hardware_class)      # IncompatibleModelError
        slot_files.model_file_name(a.format)
        files = [(a.sha256, a.length, "model")]
        if a.golden is not None:
            files.append((a.golden.sha256, a.golden.length, "golden"))
        for sha256, length, what in files:
            try:
                check_file(self.downloader.path_of(sha256), sha256, length, f"downloaded {what}")
            except VerificationError as e:
                # Changed or lost at rest since the download checked it: fetch it again.
                logger.warning("deployment=%s %s", record.deployment_id, e)
                self.downloader.discard(sha256)
                return Event.RETRY
        return Event.SUCCESS

    def _install(self, record: Record) -> Event:
        a = self._assignment(record)
        golden = self.downloader.path_of(a.golden.sha256) if a.golden is not None else None
        self.slots.install(self._to_slot(record), a, model_file=self.downloader.path_of(a.sha256),
                           golden_file=golden)
        return Event.SUCCESS

    def _activate(self, record: Record) -> Event:
        self._assignment(record)
        slot = self._to_slot(record)
        model = self._load(slot)
        smoke_test(model)
        self.slots.flip(slot)          # from here a restart serves the new model
        self.runtime.swap(model)
        return Event.SUCCESS

    def _trial(self, record: Record) -> Event:
        slot = self._to_slot(record)
        current = self.runtime.current
        if current is None or current.installed.slot != slot or self.slots.active() != slot:
            raise ActivationError(f"trial: slot {slot} is not the one serving")
        start_n, start_err = current.counters.totals()
        deadline = time.monotonic() + self.config.trial_s
        while time.monotonic() < deadline and not self.stop.is_set():
            self.stop.wait(min(_TRIAL_TICK_S, max(0.0, deadline - time.monotonic())))
            n, err = current.counters.totals()
            self._check_error_ratio(n - start_n, err - start_err)
        smoke_test(current)   # still answers like its golden after serving for a while
        return Event.SUCCESS

    def _check_error_ratio(self, inferences: int, errors: int) -> None:
        if inferences and errors / inferences > self.config.trial_max_error_ratio:
            raise ActivationError(
                f"trial: {errors} of {inferences} inferences failed, more than "
                f"{self.config.trial_max_error_ratio:.0%}")

    def _commit(self, record: Record) -> Event:
        a = self._assignment(record)
        logger.info("deployment=%s committed model=%s version=%s slot=%s", record.deployment_id,
                    a.model, a.version, record.to_slot)
        return Event.SUCCESS

    def _rollback(self, record: Record) -> Event:
        previous = record.from_slot
        current = self.runtime.current
        if previous is None:
            self.slots.flip(None)
            self.runtime.swap(None)
            return Event.SUCCESS
        if not (current is not None and current.installed.slot == previous and self.slots.active() == previous):
            model = self._load(previous)
            self.slots.flip(previous)
            self.runtime.swap(model)
        return Event.SUCCESS

    def _report(self, record: Record) -> Event:
        if record.assignment:
            try:
                a = self._assignment(record)
            except VerificationError:
                return Event.SUCCESS
            self.downloader.discard(a.sha256)
            if a.golden is not None:
                self.downloader.discard(a.golden.sha256)
        return Event.SUCCESS

    def _on_transition(self, record: Record) -> None:
        doc = record.assignment or {}
        final = record.state is State.IDLE
        failed = record.event is not Event.SUCCESS and record.event is not Event.START
        if failed and record.reason:
            self.last_error = record.reason
        if not hasattr(self, "sender"):
            return
        self.sender.report(device_pb2.StatusReport(
            deployment_id=record.deployment_id, state=record.state.value,
            event=record.event.value if record.event else "",
            model=str(doc.get("model", "")), version=str(doc.get("version", "")),
            variant=str(doc.get("variant", "")), sha256=str(doc.get("sha256", "")),
            reason=record.reason if failed or (final and record.outcome is not Outcome.INSTALLED) else "",
            timestamp_ms=int(time.time() * 1000),
            active_model=self._active_name(), final=final,
            outcome=record.outcome.value if final else ""))
