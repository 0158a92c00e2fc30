"""Coverage-guided fuzzing (atheris) of every parser that takes bytes from the network or
the disk. One harness per parser, each a module with `test_one_input(data: bytes)` that
returns normally or raises one of the parser's documented errors (caught inside the
harness): anything else escaping is a crash. `python -m fuzz.run NAME` runs one under
atheris; `make fuzz` runs them all for FUZZ_SECONDS each; the unit test
`tests/unit/test_fuzz_harnesses.py` replays every seed and every past crash without atheris.

| harness  | parser (trust boundary)                                            | documented errors |
|----------|--------------------------------------------------------------------|-------------------|
| fcpack   | `fleetcast.proto.fcpack.decode` (signed artifact, disk)            | PackageError |
| manifest | `fleetcast.agent.slots.parse_manifest` (slot manifest on disk)     | VerificationError |
| state    | `fleetcast.agent.flow.Record.from_json` (state.json on disk)       | ValueError |
| telemetry| `TelemetryBatch` bytes -> `server.telemetry.Batch` -> `check_batch` | DecodeError, InvalidRequest |
| mqtt     | topics, assignment notices, status payloads (`proto.topics`, server upstream) | TopicError, DecodeError, InvalidRequest |
| upload   | the upload's form fields (name, version, compress) and its golden .npz | InvalidRequest |
"""

HARNESSES = ("fcpack", "manifest", "state", "telemetry", "mqtt", "upload")
