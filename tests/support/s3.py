"""A real S3 server process on a free loopback port: moto's `moto_server`, for blob tests.

`S3Server.environ()` gives the standard AWS variables a `fleetcast server --blobs
s3://...` process reads; `client()` is a boto3 client for the test itself (to look at,
or tamper with, what the server stored). moto's request log (one line per request,
presigned query strings included) is kept in `log_path`, so a test can tell a device's
presigned GET from the server's own signed reads.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from tests.support.waiting import WaitHopeless, free_port, log_tail, port_accepts, wait_for

REGION = "us-east-1"
# moto accepts any credentials; these exist only in the test processes' environment.
ACCESS_KEY = "fleetcast-test-access"
SECRET_KEY = "fleetcast-test-secret"


class S3Server:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "moto.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))

        def up() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                raise WaitHopeless(f"moto_server exited before it served\n{self.log_tail()}")
            return port_accepts("127.0.0.1", self.port)

        wait_for(up, timeout_s=60, what="moto_server to accept connections", context=self.log_tail)
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._proc = None

    def environ(self) -> dict[str, str]:
        """The standard AWS variables for a process that should use this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                # nothing from the developer's own AWS setup leaks in
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def client(self) -> Any:
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def requests(self) -> list[str]:
        """moto's request log lines ("GET /bucket/key?... HTTP/1.1" 200 ...), oldest first."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))   # werkzeug's colours
        return [line for line in text.splitlines() if '"' in line]

    def log_tail(self) -> str:
        return log_tail(self.log_path, label="moto_server log")
