"""A lean HTTP load generator for the serving benchmark: asyncio over raw keep-alive connections
with the requests built once as bytes, so the client costs tens of microseconds a request and the
server, not the client, is what is measured (a Python HTTP client library costs about 1 ms).

Open loop (``rate`` requests/s): request ``i`` is due at ``i / rate`` s whatever happened before
it, and its latency counts from when it was due, so queueing, in the client or in the server,
counts. Closed loop (``rate`` None): every connection sends its next request when the previous
answer arrives (the saturation throughput).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from queue import Empty

import numpy as np


def http_request(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    """A complete HTTP/1.1 POST with a JSON body, as bytes."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class LoadResult:
    """What one load run saw, one entry per request (latency in ms, -1 status: no answer)."""

    seconds: float
    latency_ms: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)  # the Server-Timing app;dur of each answer
    lag_ms: list[float] = field(default_factory=list)  # when it was written less when it was due: the
    # client's own delay (a client starved of CPU on a shared machine sends late)
    connection_errors: int = 0
    reconnects: int = 0

    def summary(self) -> dict:
        """Counts, throughput and latency percentiles, overall and for 200s and 503s apart."""
        lat, status = np.asarray(self.latency_ms), np.asarray(self.status)
        out = {
            "requests": len(lat),
            "throughput": float((status == 200).sum() / self.seconds) if self.seconds else 0.0,
            "answered_per_s": float((status > 0).sum() / self.seconds) if self.seconds else 0.0,
            "statuses": {str(s): int((status == s).sum()) for s in np.unique(status)},
            "connection_errors": self.connection_errors,
            "reconnects": self.reconnects,
            **_percentiles(lat),
        }
        lag = np.asarray(self.lag_ms) if self.lag_ms else np.zeros(len(lat))
        for code, name in ((200, "ok"), (503, "refused")):
            sel = status == code
            after_send = _percentiles(lat[sel] - lag[sel])
            out[name] = _percentiles(lat[sel]) | {"n": int(sel.sum()), "from_send_p99": after_send["p99"]}
        out["client_lag_p99"] = _percentiles(lag)["p99"]
        if self.server_ms:
            out["server_p50"] = float(np.percentile(self.server_ms, 50))
            out["server_p99"] = float(np.percentile(self.server_ms, 99))
        return out


def percentiles(ms: list[float]) -> dict:
    """p50, p95 and p99 of latencies in milliseconds (None for none)."""
    if not ms:
        return {"p50": None, "p95": None, "p99": None}
    a = np.asarray(ms)
    return {
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
    }


def _percentiles(ms: np.ndarray) -> dict:
    if not len(ms):
        return {"p50": None, "p99": None, "max": None}
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, float | None, bool]:
    """(status, Server-Timing ms or None, whether the server closes the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, server, close = 0, None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"server-timing":
            server = float(value.split(b"dur=")[1].split(b";")[0])
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    await reader.readexactly(length)
    return status, server, close


async def _drive(
    port: int, requests: list[bytes], rate: float | None, seconds: float, connections: int, timeout: float
) -> LoadResult:
    due_times: asyncio.Queue = asyncio.Queue()
    result = LoadResult(seconds)
    start = time.perf_counter() + 0.1
    end = start + seconds

    async def connection(worker: int) -> None:
        reader = writer = None
        i = worker
        while True:
            if rate is None:
                if time.perf_counter() >= end:
                    break
                due, i = time.perf_counter(), i + connections
            else:
                item = await due_times.get()
                if item is None:
                    break
                due, i = item
            sent = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                sent = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status, server, close = await asyncio.wait_for(_read_answer(reader), timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                result.connection_errors += 1
                status, server, close = -1, None, True
            result.latency_ms.append((time.perf_counter() - due) * 1000)
            result.lag_ms.append((sent - due) * 1000)
            result.status.append(status)
            if server is not None:
                result.server_ms.append(server)
            if close and writer is not None:
                writer.close()
                reader = writer = None
                result.reconnects += status > 0

    async def schedule() -> None:
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            due_times.put_nowait((start + i / rate, i))
        for _ in range(connections):
            due_times.put_nowait(None)

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    tasks = [asyncio.create_task(connection(w)) for w in range(connections)]
    if rate is not None:
        await schedule()
    await asyncio.gather(*tasks)
    result.seconds = max(time.perf_counter() - start, 1e-9) if rate is None else seconds
    return result


def _run_in_process(port, requests, rate, seconds, connections, timeout, queue) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(_drive(port, requests, rate, seconds, connections, timeout))
    queue.put(result)


def run_load(
    port: int,
    requests: list[bytes],
    rate: float | None,
    seconds: float,
    connections: int = 8,
    timeout: float = 30.0,
) -> LoadResult:
    """Drive the server on loopback ``port`` from a separate process with ``requests`` (raw HTTP,
    taken in turn): open loop at ``rate`` requests/s, or closed loop when ``rate`` is None."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_run_in_process, args=(port, requests, rate, seconds, connections, timeout, queue)
    )
    proc.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the load process failed (exit status {proc.exitcode})") from None
    proc.join()
    return result


def sequential(port: int, requests: list[bytes], n: int) -> tuple[list[float], list[float], list[bytes]]:
    """``n`` requests one after the other on one keep-alive connection, from this process with a
    blocking socket (the least client time there is): round-trip ms, Server-Timing ms, bodies."""
    import socket

    ms, server, bodies = [], [], []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        for i in range(n):
            t0 = time.perf_counter()
            sock.sendall(requests[i % len(requests)])
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length, timing = 0, None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"server-timing":
                    timing = float(value.split(b"dur=")[1])
            while len(buffer) < length:
                buffer += sock.recv(65536)
            body, buffer = buffer[:length], buffer[length:]
            ms.append((time.perf_counter() - t0) * 1000)
            if timing is not None:
                server.append(timing)
            bodies.append(body)
    return ms, server, bodies


# ---- the httpx load of the soak and label-update benchmarks (requests as dicts) ----------------
def _load(url: str, bodies: list[dict], rate: float | None, seconds: float, threads: int, queue) -> None:
    """Runs in its own process: an open loop at ``rate`` requests/s (None: closed loop, at full speed)."""
    import httpx

    latencies, sent, codes, errors, statuses = [], [], [], 0, {}
    lock = threading.Lock()
    start = time.perf_counter() + 0.2
    counter = iter(range(10**9))

    def worker() -> None:
        nonlocal errors
        with httpx.Client(timeout=10.0) as client:
            while True:
                with lock:
                    i = next(counter)
                due = start + (i / rate if rate else 0.0)
                if due - start > seconds or (rate is None and time.perf_counter() - start > seconds):
                    return
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t0 = time.perf_counter()
                try:
                    r = client.post(url, json=bodies[i % len(bodies)])
                    code = r.status_code
                except httpx.HTTPError:
                    code = -1
                # latency counted from when the request was due: queueing behind the server counts
                ms = (time.perf_counter() - (due if rate else t0)) * 1000
                with lock:
                    latencies.append(ms)
                    sent.append((due if rate else t0) - start)
                    codes.append(code)
                    statuses[code] = statuses.get(code, 0) + 1
                    if code != 200:
                        errors += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    queue.put(
        {
            "latencies": latencies,
            "sent": sent,  # seconds from the start at which each request was due
            "codes": codes,
            "errors": errors,
            "statuses": statuses,
            "seconds": time.perf_counter() - start,
        }
    )


def seconds_until(check, timeout: float = 30.0) -> float:
    """Seconds until ``check()`` is true (polling every 5 ms); inf after ``timeout``."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if check():
            return time.perf_counter() - start
        time.sleep(0.005)
    return float("inf")


def start_load(url: str, bodies: list[dict], rate: float | None, seconds: float, threads: int):
    """A load process driving ``url``; returns (process, queue): ``queue.get()`` gives its figures."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(url, bodies, rate, seconds, threads, queue))
    proc.start()
    return proc, queue


def summarise_load(got: dict) -> dict:
    """Percentiles, counts and statuses of one load run."""
    return {
        **percentiles(got["latencies"]),
        "requests": len(got["latencies"]),
        "throughput": len(got["latencies"]) / got["seconds"],
        "errors": got["errors"],
        "statuses": {str(k): v for k, v in got["statuses"].items()},
    }
