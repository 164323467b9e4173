"""Fixtures: Python stubs generated from the repo's proto, and a running
`meshroot dev` on ephemeral loopback ports."""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The wire contract, compiled by meshroot-core's build script too.
PROTO = REPO / "crates/core/proto"
TOKENS = {
    "pilot": "interop-pilot-agent-token",
    "ztunnel": "interop-ztunnel-token",
}


@pytest.fixture(scope="session")
def pb():
    """grpcio-tools compiles ca.proto independently of the Rust build."""
    out = Path(tempfile.mkdtemp(prefix="meshroot-stubs-"))
    import importlib.resources

    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{PROTO}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO / "istio/v1/auth/ca.proto"),
        ]
    )
    assert rc == 0, "grpc_tools.protoc failed"
    sys.path.insert(0, str(out))
    from istio.v1.auth import ca_pb2, ca_pb2_grpc  # noqa: E402

    return ca_pb2, ca_pb2_grpc


class Ca:
    def __init__(self, proc, state, port, ops_port):
        self.proc = proc
        self.state = state
        self.port = port
        self.ops_port = ops_port
        self.root_pem = (state / ".meshroot" / "root-cert.pem").read_bytes()
        self.bundle_path = state / ".meshroot" / "root-cert.pem"


def start_dev(*extra_args):
    """`meshroot dev` on ephemeral ports, with the interop tokens; returns (Ca, stop)."""
    binary = (REPO / os.environ.get("MESHROOT_BIN", "target/debug/meshroot")).resolve()
    assert binary.exists(), f"{binary} not built; run cargo build first"
    state = Path(tempfile.mkdtemp(prefix="meshroot-interop-"))
    tokens = state / "tokens"
    tokens.write_text(
        f"{TOKENS['pilot']} bookinfo reviews\n{TOKENS['ztunnel']} istio-system ztunnel\n"
    )
    proc = subprocess.Popen(
        [str(binary), "dev", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--token-file", str(tokens), *extra_args],
        cwd=state,
        stdout=subprocess.PIPE,
        stderr=open(state / "dev.log", "wb"),
        text=True,
    )
    port = ops = None
    deadline = time.time() + 60
    while time.time() < deadline and (port is None or ops is None):
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r"Istio CA API on 127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if m := re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line):
            ops = int(m.group(1))
    assert port and ops, "meshroot dev did not start"

    def stop():
        proc.terminate()
        assert proc.wait(timeout=30) == 0, "meshroot dev did not shut down cleanly on SIGTERM"

    return Ca(proc, state, port, ops), stop


@pytest.fixture(scope="session")
def ca():
    server, stop = start_dev()
    yield server
    stop()


@pytest.fixture(scope="session")
def limited_ca():
    """A CA that allows each identity a burst of 2, then 1 per second."""
    server, stop = start_dev("--identity-rate-limit", "1/s,burst=2")
    yield server
    stop()
