"""Regenerates the Python code for the wire contract: `make proto`.

protoc names imports after the path a .proto file is given under, so the sources
are staged under `fleetcast/proto/` to make the generated modules import each other
as `fleetcast.proto.v1...`, the name they are installed under.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent


def generate(version: str = "v1") -> None:
    sources = sorted((HERE / version).glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "fleetcast" / "proto" / version
        staged.mkdir(parents=True)
        for source in sources:
            shutil.copy(source, staged / source.name)
        out = Path(tmp) / "out"
        out.mkdir()
        include = str(Path(protoc.__file__).parent / "_proto")
        names = [f"fleetcast/proto/{version}/{s.name}" for s in sources]
        rc = protoc.main(["protoc", f"-I{tmp}", f"-I{include}", f"--python_out={out}",
                          f"--pyi_out={out}", f"--grpc_python_out={out}", *names])
        if rc != 0:
            sys.exit(f"protoc failed with exit code {rc}")
        for generated in (out / "fleetcast" / "proto" / version).iterdir():
            shutil.copy(generated, HERE / version / generated.name)


if __name__ == "__main__":
    generate()
