"""kiban served by uvicorn in a subprocess on a real port, for tests of several processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


class Server:
    """``uvicorn kiban.app:create_app`` in a subprocess, on a socket bound here (port 0)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        fd = sock.fileno()
        os.set_inheritable(fd, True)
        command = [sys.executable, "-m", "uvicorn", "kiban.app:create_app", "--factory"]
        command += ["--fd", str(fd), "--log-level", "warning", "--no-access-log"]
        self.process = subprocess.Popen(command, env=env, cwd=cwd, pass_fds=(fd,))
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the server exited during start-up"
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.url} did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # graceful: the ledger is flushed
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush (what an OOM kill or a pulled plug does)."""
        self.process.kill()
        self.process.wait()
