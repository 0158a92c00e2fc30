"""A fleet simulator that speaks the real device wire contract, thousands of devices per process.

Each simulated device enrolls, watches its assignments (gRPC server streaming), fetches
and verifies both TUF repositories (signatures over the exact DSSE payload bytes,
versions, expiry, lengths and hashes), downloads the assigned artifact in chunks and
checks its sha256, reports each step, and sends telemetry batches drawn from its
cohort's latency distribution and error rate. Operators use it as `fleetcast simulate`
to rehearse a rollout against a staging server; `benchmarks/swarm.py` uses it to
measure the server.

Modules: `cohort` (what a group of devices looks like), `verify` (the metadata checks),
`device` (one device), `swarm` (many devices, the run's results), `cli`.

Errors:
```
SimulatorError          a device could not finish a step (named in the message)
  + VerificationError   metadata or artifact bytes failed a check
```
"""
