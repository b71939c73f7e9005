"""A local S3-compatible server (moto) on 127.0.0.1, so the S3 steps of the lab run without AWS.

The checkpoint code in `checkpoints.py` is unchanged: it only sees AWS_ENDPOINT_URL_S3 and
dummy credentials in the environment, exactly as it would for any S3-compatible service.
"""

from __future__ import annotations

import atexit
import http.client
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import LabError

HOST = "127.0.0.1"  # fixed on purpose: this server must never listen on or talk to anything else


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    """True once an HTTP request to the server gets any answer (any status code)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=1)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


class LocalS3:
    """moto's S3 server on 127.0.0.1, in a thread of this process or in a subprocess."""

    def __init__(
        self,
        mode: str = "thread",
        port: int | None = None,
        log_path: str | os.PathLike | None = None,
        extra_env: dict[str, str] | None = None,
    ):
        if mode not in ("thread", "subprocess"):
            raise LabError(
                f"Unknown LocalS3 mode {mode!r}.",
                "Use mode='thread' or mode='subprocess'.",
            )
        if extra_env and mode != "subprocess":
            raise LabError(
                "extra_env only applies to a LocalS3 in mode='subprocess'.",
                "Use LocalS3(mode='subprocess', extra_env={...}).",
            )
        self.mode = mode
        # Extra environment for the server process, e.g. {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} to make
        # moto check credentials (by default it accepts any).
        self.extra_env = dict(extra_env or {})
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.endpoint_url: str | None = None
        self._server = None  # ThreadedMotoServer in thread mode
        self.process: subprocess.Popen | None = None  # in subprocess mode
        self._log = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> LocalS3:
        """Start the server and wait until it answers HTTP requests."""
        if self.endpoint_url:
            return self
        if self.mode == "thread":
            from moto.server import ThreadedMotoServer

            # werkzeug would print one line per request into the notebook; keep only real problems.
            wlog = logging.getLogger("werkzeug")
            if wlog.level == logging.NOTSET:
                wlog.setLevel(logging.ERROR)
            # Port 0: the OS picks a free port atomically (no race with other servers).
            self._server = ThreadedMotoServer(ip_address=HOST, port=self.port or 0, verbose=False)
            self._server.start()
            self.port = self._server.get_host_and_port()[1]
        else:
            self._start_subprocess(timeout)
        self.endpoint_url = f"http://{HOST}:{self.port}"
        return self

    def _start_subprocess(self, timeout: float) -> None:
        self.port = self.port or _free_port()
        if self.log_path is None:
            self.log_path = Path(tempfile.mkdtemp(prefix="local-s3-")) / "moto.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the server's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.extra_env},
        )
        atexit.register(self.stop)  # a forgotten server must not outlive the kernel / test run
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._cleanup_process()
                raise LabError(
                    f"The local S3 server exited at start (code {self.process.returncode}).",
                    f"Read its log {self.log_path}; the port {self.port} may be in use - try again.",
                )
            if _answers(self.port):
                return
            time.sleep(0.2)
        self.stop()
        raise LabError(
            f"The local S3 server did not answer on {HOST}:{self.port} within {timeout:.0f} s.",
            f"Read its log {self.log_path}; the machine may be overloaded - try again.",
        )

    def stop(self) -> None:
        """Stop the server (idempotent); its data is lost."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._cleanup_process()
        self.endpoint_url = None

    def kill(self) -> None:
        """Kill the subprocess server abruptly (SIGKILL), for fault tests; thread mode just stops."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stop()

    def _cleanup_process(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        """Whether the server is started (and, for a subprocess, still alive)."""
        if self.process is not None:
            return self.process.poll() is None
        return self._server is not None

    def __enter__(self) -> LocalS3:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- client configuration --------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables a standard boto3 client needs to use this server."""
        if not self.endpoint_url:
            raise LabError(
                "The local S3 server is not started.",
                "Call .start() first (or use start_local_s3()).",
            )
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            # moto accepts any credentials; these are placeholders, not secrets.
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def __repr__(self) -> str:
        return f"LocalS3(mode={self.mode!r}, endpoint_url={self.endpoint_url!r})"


def _bypass_proxy_for_localhost() -> None:
    """If an HTTP(S) proxy is configured, make sure requests to 127.0.0.1 do not go through it."""
    if not any(os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")):
        return
    for var in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in os.environ.get(var, "").split(",") if h]
        for h in (HOST, "localhost"):
            if h not in hosts:
                hosts.append(h)
        os.environ[var] = ",".join(hosts)


def start_local_s3(mode: str = "thread") -> LocalS3:
    """Start a local S3 server and point this process's boto3 configuration at it."""
    server = LocalS3(mode=mode).start()
    for name, value in server.env().items():
        # The endpoint must be ours; credentials/region only fill gaps so a learner's real
        # settings are not clobbered (moto accepts any credentials anyway).
        if name == "AWS_ENDPOINT_URL_S3" or not os.environ.get(name):
            os.environ[name] = value
    _bypass_proxy_for_localhost()
    print(f"Local S3 server ({mode}) listening on {server.endpoint_url} (AWS_ENDPOINT_URL_S3 is set)")
    return server


_LOCAL_S3 = None  # the offline profile's local S3 server, one per process


def local_s3_for(settings):
    """Offline profile: the local S3 server of this process (started on first use), unless one is configured
    (`AWS_ENDPOINT_URL_S3`, e.g. a server started with `python -m lab_utils.backstage.local_s3`)."""
    global _LOCAL_S3

    if not settings.offline or (_LOCAL_S3 is None and os.environ.get("AWS_ENDPOINT_URL_S3")):
        return None
    if _LOCAL_S3 is None:
        _LOCAL_S3 = start_local_s3()
    return _LOCAL_S3


def main() -> None:
    """`python -m lab_utils.backstage.local_s3`: a local S3 server that stays up (Ctrl-C ends it), for commands run
    in other terminals: it prints the variables that point them at it."""
    with LocalS3() as server:
        print("Local S3 server on 127.0.0.1; in the other terminals:")
        for name, value in server.env().items():
            print(f"  export {name}={value}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped")


if __name__ == "__main__":
    main()
