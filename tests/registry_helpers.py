"""A real OCI registry for the tests: Debian's ``docker-registry`` (the CNCF distribution registry) on
loopback, and pushing a tiny image manifest to it with plain HTTP calls (the distribution API)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


@dataclass(frozen=True)
class RunningRegistry:
    host: str  # 127.0.0.1:port
    auth: tuple[str, str] | None = None

    def push(self, name: str, tag: str) -> str:
        """Push a one-layer-less image manifest ``name:tag``; returns its digest."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                             "config": {}}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        base = f"http://{self.host}/v2/{name}"
        started = requests.post(f"{base}/blobs/uploads/", auth=self.auth, timeout=10)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        if location.startswith("/"):
            location = f"http://{self.host}{location}"
        separator = "&" if "?" in location else "?"
        put = requests.put(f"{location}{separator}digest={config_digest}", data=config, auth=self.auth, timeout=10,
                           headers={"Content-Type": "application/octet-stream"})
        assert put.status_code == 201, put.text
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config)},
            "layers": [],
        }).encode()
        stored = requests.put(f"{base}/manifests/{tag}", data=manifest, auth=self.auth, timeout=10,
                              headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        assert stored.status_code == 201, stored.text
        return "sha256:" + hashlib.sha256(manifest).hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def oci_registry(workdir: Path, *, user: tuple[str, str] | None = None) -> Iterator[RunningRegistry]:
    """Run ``docker-registry`` on a free loopback port (with htpasswd Basic auth when ``user`` is given)."""
    if not Path(BINARY).exists():
        pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry; .ci/run does)")
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    auth = ""
    if user is not None:
        import bcrypt

        hashed = bcrypt.hashpw(user[1].encode(), bcrypt.gensalt(rounds=4)).decode()
        (workdir / "htpasswd").write_text(f"{user[0]}:{hashed}\n")
        auth = f"auth:\n  htpasswd:\n    realm: devstack-tests\n    path: {workdir / 'htpasswd'}\n"
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    process = subprocess.Popen([BINARY, "serve", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401):
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {process.stderr.read() if process.stderr else ''}")
            time.sleep(0.05)
        yield RunningRegistry(host=f"127.0.0.1:{port}", auth=user)
    finally:
        process.terminate()
        process.wait(10)
