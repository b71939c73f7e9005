"""A tiny TCP proxy on 127.0.0.1 that injects network faults between boto3 and a local S3 server.

It forwards bytes both ways and counts the bytes sent from the server to the client. Faults:
- `budget`: after this many server->client bytes in total, cut the connection (and then, if
  `refuse_after_budget`, close every new connection at once; `on_budget` runs once, e.g. to kill
  the server process);
- `stall_after_budget`: when the budget is spent, stop sending but keep that connection open;
- `per_conn`: cut every connection after this many server->client bytes (a body shorter than its
  Content-Length, on every request).
Every socket has a timeout and every thread is a daemon: nothing here can hang a test run.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

HOST = "127.0.0.1"
TIMEOUT_S = 10.0


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.bytes_down = 0  # server -> client bytes forwarded
        self.budget: int | None = None
        self.per_conn: int | None = None
        self.refuse_after_budget = True
        self.stall_after_budget = False  # hold the cut connection open, sending nothing (a read timeout)
        self.on_budget: Callable[[], None] | None = None
        self.refusing = False
        self.cuts = 0  # connections cut by a fault
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def heal(self, upstream_port: int | None = None) -> None:
        """No more faults (optionally towards a new server); resets the byte counter."""
        with self._lock:
            if upstream_port is not None:
                self.upstream_port = upstream_port
            self.budget = self.per_conn = None
            self.on_budget = None
            self.refusing = False
            self.bytes_down = 0

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.refusing:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(TIMEOUT_S)
        try:
            upstream = socket.create_connection((HOST, self.upstream_port), timeout=TIMEOUT_S)
        except OSError:  # the server is gone: the client sees its connection closed
            client.close()
            return
        closed = threading.Event()

        def close_both() -> None:
            closed.set()
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

        def pump_up() -> None:  # client -> server, unchanged
            try:
                while not closed.is_set():
                    data = client.recv(65536)
                    if not data:
                        break
                    upstream.sendall(data)
            except OSError:
                pass
            close_both()

        threading.Thread(target=pump_up, daemon=True).start()
        sent = 0
        callback = None
        try:
            while not closed.is_set():
                data = upstream.recv(65536)
                if not data:
                    break
                with self._lock:
                    allowed = len(data)
                    if self.per_conn is not None:
                        allowed = min(allowed, self.per_conn - sent)
                    budget_hit = False
                    if self.budget is not None:
                        allowed = min(allowed, self.budget)
                        self.budget -= allowed
                        budget_hit = self.budget == 0
                    self.bytes_down += allowed
                    cut = (
                        allowed < len(data)
                        or budget_hit
                        or (self.per_conn is not None and sent + allowed >= self.per_conn)
                    )
                    if budget_hit:
                        self.budget = None
                        self.refusing = self.refuse_after_budget
                        callback, self.on_budget = self.on_budget, None
                    if cut:
                        self.cuts += 1
                client.sendall(data[:allowed])
                sent += allowed
                if cut:
                    if budget_hit and self.stall_after_budget:
                        closed.wait(TIMEOUT_S)  # until the client gives up (its read timeout)
                    break
        except OSError:
            pass
        close_both()
        if callback is not None:
            callback()
