"""Compression: one model in, measured variants out (`fleetcast compress`).

Public entry points: `pipeline.compress` with `pipeline.CompressConfig`, the level
names and device preferences in `levels`, and the transport format in `package`
(whose decoder needs only numpy, onnx and zstandard, so the agent can import it).
Nothing is imported here, so importing one module never pulls in the others.
"""
