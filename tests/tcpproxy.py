"""A TCP proxy the tests control, for real fault injection in front of PostgreSQL, S3 or the registry
server: forward, throttle, stall, cut every connection, or stop listening.

    with TcpProxy("127.0.0.1", 5432) as proxy:     # listens on 127.0.0.1:proxy.port
        proxy.rate = 2 * 1024**2                   # bytes/s per direction and connection (None: unlimited)
        proxy.stall()                              # keep connections open, forward nothing
        proxy.resume()
        proxy.cut()                                # reset every open connection now
        proxy.stop(); proxy.start()                # refuse, then accept again on the same port
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, port: int = 0):
        self.target = (target_host, target_port)
        self.port = port
        self.rate: float | None = None
        self._stalled = threading.Event()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.bytes_forwarded = 0

    # -- control ------------------------------------------------------------------------------------
    def start(self) -> "TcpProxy":
        self._stop.clear()
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(128)
        self.port = lst.getsockname()[1]
        self._listener = lst
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop listening (new connections are refused) and reset the open ones."""
        self._stop.set()
        if self._listener:
            self._listener.close()
            self._listener = None
        self.cut()

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def cut(self) -> None:
        """Reset every open connection (RST, as a crashed peer or a dropped network path)."""
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            except OSError:
                pass

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- forwarding ---------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        lst = self._listener
        while not self._stop.is_set() and lst is not None:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                if self._stalled.is_set():
                    time.sleep(0.05)
                    continue
                try:
                    ready, _, _ = select.select([a, b], [], [], 0.1)
                except (OSError, ValueError):
                    return
                for s in ready:
                    if self._stalled.is_set():
                        break
                    chunk = s.recv(16384 if self.rate else 65536)
                    if not chunk:
                        return
                    peers[s].sendall(chunk)
                    self.bytes_forwarded += len(chunk)
                    if self.rate:
                        time.sleep(len(chunk) / self.rate)
        except OSError:
            return
        finally:
            for s in (a, b):
                with self._lock:
                    self._conns.discard(s)
                try:
                    s.close()
                except OSError:
                    pass

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
