"""Bad requests to the soft-label server (a real one on 127.0.0.1): each gets a 4xx status and a
one-line plain-text reply `<what>: <why>; <what to do>` naming what was wrong, and the server
keeps serving; stalled and slow clients time out and free their slot, and the requests in
flight (and so the threads) stay bounded."""

from __future__ import annotations

import dataclasses
import io
import re
import socket
import threading
import time
import zipfile

import numpy as np
import pytest

from edgekt.transfer import soft_labels

REPLY_LINE = re.compile(r"^(?P<what>.+?): (?P<why>.+); (?P<todo>.+)$")
CLIENT_TIMEOUT = 30  # seconds; no test waits on the server longer than this


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def start_server(model, class_names, **limits):
    server = soft_labels.make_server(model, class_names, host="127.0.0.1", port=0, **limits)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def stop_server(server):
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def served(device_export, cifar):
    """(port, two real test images) of a server with short timeouts."""
    server = start_server(device_export[1], cifar.class_names, read_timeout=1.0, request_timeout=3.0,
                          max_in_flight=4)
    yield server.server_address[1], cifar["test"].images[:2]
    stop_server(server)


def http_request(method: str = "POST", path: str = "/soft_labels", body: bytes | None = None, headers=(),
                 length: bool = True) -> bytes:
    """The bytes of an HTTP/1.1 request; a Content-Length for `body` unless `length` is false."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None and length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def read_reply(sock: socket.socket) -> Reply:
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return Reply(int(status_line.split()[1]), headers, body)


def exchange(port: int, data: bytes, half_close: bool = False) -> Reply:
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_reply(sock)


def npz(compressed: bool = False, **arrays) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def npy(shape, descr: str = "|u1", data: bytes = b"") -> bytes:
    """An .npy file whose header says `shape` and `descr`, followed by `data`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue() + data


def zip_of(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def assert_refused(reply: Reply, status: int, *names: str) -> str:
    """`status`, plain text, and one line `<what>: <why>; <what to do>` naming every one of `names`."""
    text = reply.body.decode("utf-8")
    assert reply.status == status, (reply.status, text)
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert text.endswith("\n") and "\n" not in text[:-1], repr(text)
    line = text[:-1]
    assert REPLY_LINE.match(line), f"not `<what>: <why>; <what to do>`: {line}"
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    return line


def assert_serves(port: int, images: np.ndarray) -> None:
    reply = exchange(port, http_request(path="/soft_labels?temperature=2", body=npz(images=images)))
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["content-type"] == "application/octet-stream"
    with np.load(io.BytesIO(reply.body), allow_pickle=False) as z:
        assert z["soft_targets"].shape == (len(images), 10) and float(z["temperature"]) == 2.0
        np.testing.assert_allclose(z["soft_targets"].sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(z["images"], images)


def good_npz(images):
    return npz(images=images)


def float_images(images, value, index=(0, 0, 0, 0)):
    out = images.astype(np.float32)
    out[index] = value
    return out


# (id, request bytes from the two good images, status, names the reply must contain, half-close after sending)
BAD_REQUESTS = [
    ("empty request line", lambda im: b"\r\n\r\n", 400, ["request line", "POST /soft_labels"]),
    # paths and methods
    ("wrong path", lambda im: http_request(path="/labels", body=good_npz(im)), 404, ["'/labels'", "/soft_labels"]),
    ("GET soft_labels", lambda im: http_request("GET"), 405, ["GET /soft_labels", "POST"]),
    ("PUT soft_labels", lambda im: http_request("PUT", body=good_npz(im)), 405, ["PUT /soft_labels", "POST"]),
    ("unknown method", lambda im: http_request("BREW", body=b"x"), 405, ["BREW", "POST"]),
    ("POST health", lambda im: http_request(path="/health", body=b"x"), 405, ["POST /health", "GET"]),
    # the request line and headers
    ("request line garbage", lambda im: b"GARBAGE\r\n\r\n", 400, ["request line", "GARBAGE"]),
    ("bad HTTP version", lambda im: b"POST /soft_labels HTTP/x.y\r\n\r\n", 400, ["request line", "HTTP/x.y"]),
    ("request line too long", lambda im: b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414, ["request line"]),
    ("too many headers", lambda im: http_request(headers=[(f"X-{i}", "1") for i in range(120)], body=b"x"), 431,
     ["request headers"]),
    # query parameters
    ("temperature nan", lambda im: http_request(path="/soft_labels?temperature=nan", body=good_npz(im)), 400,
     ["temperature='nan'", "finite"]),
    ("temperature inf", lambda im: http_request(path="/soft_labels?temperature=inf", body=good_npz(im)), 400,
     ["temperature='inf'"]),
    ("temperature 0", lambda im: http_request(path="/soft_labels?temperature=0", body=good_npz(im)), 400,
     ["temperature='0'"]),
    ("temperature negative", lambda im: http_request(path="/soft_labels?temperature=-2", body=good_npz(im)), 400,
     ["temperature='-2'"]),
    ("temperature huge", lambda im: http_request(path="/soft_labels?temperature=1e9", body=good_npz(im)), 400,
     ["temperature='1e9'"]),
    ("temperature tiny", lambda im: http_request(path="/soft_labels?temperature=1e-320", body=good_npz(im)), 400,
     ["temperature='1e-320'"]),
    ("temperature word", lambda im: http_request(path="/soft_labels?temperature=warm", body=good_npz(im)), 400,
     ["temperature='warm'", "not a number"]),
    ("temperature empty", lambda im: http_request(path="/soft_labels?temperature=", body=good_npz(im)), 400,
     ["temperature=''"]),
    ("unknown parameter", lambda im: http_request(path="/soft_labels?temp=2&t=1", body=good_npz(im)), 400,
     ["'temp'", "'t'", "unknown"]),
    ("repeated parameter", lambda im: http_request(path="/soft_labels?temperature=2&temperature=3",
                                                   body=good_npz(im)), 400, ["'temperature'", "2 times"]),
    # Content-Length and Transfer-Encoding
    ("Content-Length abc", lambda im: http_request(headers=[("Content-Length", "abc")], body=good_npz(im),
                                                   length=False), 400, ["Content-Length", "'abc'"]),
    ("Content-Length missing", lambda im: http_request(body=good_npz(im), length=False), 411, ["Content-Length"]),
    ("Content-Length negative", lambda im: http_request(headers=[("Content-Length", "-5")], body=b"", length=False),
     400, ["Content-Length", "'-5'", "negative"]),
    ("Content-Length fraction", lambda im: http_request(headers=[("Content-Length", "1.5")], body=b"x",
                                                        length=False), 400, ["Content-Length", "'1.5'"]),
    ("Content-Length twice", lambda im: http_request(headers=[("Content-Length", "3")], body=b"abc"), 400,
     ["Content-Length", "2 times"]),
    ("Content-Length zero", lambda im: http_request(body=b""), 400, ["request body", "empty"]),
    ("Content-Length too large", lambda im: http_request(headers=[("Content-Length", str(10 ** 12))], body=b"PK",
                                                         length=False), 413, ["request body", str(10 ** 12)]),
    ("chunked", lambda im: http_request(headers=[("Transfer-Encoding", "chunked")], body=b"5\r\nhello\r\n0\r\n\r\n",
                                        length=False), 411, ["Transfer-Encoding", "Content-Length"]),
    ("body shorter than Content-Length", lambda im: http_request(headers=[("Content-Length", "1000")], body=b"PK",
                                                                 length=False), 400, ["request body", "2 of 1000"],
     True),
    # the body
    ("not an npz", lambda im: http_request(body=b"hello, world"), 400, ["request body", ".npz"]),
    ("a png", lambda im: http_request(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 64), 400, ["request body", ".npz"]),
    ("truncated npz", lambda im: http_request(body=good_npz(im)[:3000]), 400, ["request body", ".npz"]),
    ("no images array", lambda im: http_request(body=npz(pixels=im)), 400, ["'images'", "pixels"]),
    ("object array", lambda im: http_request(body=npz(images=np.array([{"a": 1}, None], dtype=object))), 400,
     ["images", "object array"]),
    ("string array", lambda im: http_request(body=npz(images=np.array(["a", "b"]))), 400, ["images", "dtype"]),
    ("header claims a huge shape", lambda im: http_request(body=zip_of({"images.npy": npy((10 ** 9, 32, 32, 3),
                                                                                          data=b"0" * 10)})),
     413, ["images", "(1000000000, 32, 32, 3)", "limit"]),
    ("array data truncated", lambda im: http_request(body=zip_of({"images.npy": npy((2, 32, 32, 3),
                                                                                    data=b"0" * 100)})),
     400, ["images", "not a readable"]),
    ("not an npy", lambda im: http_request(body=zip_of({"images.npy": b"just some bytes"})), 400,
     ["images", "not a readable"]),
    ("bzip2 member", lambda im: http_request(body=zip_of({"images.npy": npy((0,))}, zipfile.ZIP_BZIP2)), 400,
     ["images", "method 12"]),
    ("many members", lambda im: http_request(body=zip_of({f"a{i}.npy": b"" for i in range(100)})), 400,
     ["request body", "100 members"]),
    # the images: the device app's checks
    ("zero images", lambda im: http_request(body=npz(images=im[:0])), 400, ["images", "no images"]),
    ("images 3-D", lambda im: http_request(body=npz(images=im[0])), 400, ["images", "(32, 32, 3)"]),
    ("one channel", lambda im: http_request(body=npz(images=im[..., :1])), 400, ["images", "(2, 32, 32, 1)"]),
    ("wrong size", lambda im: http_request(body=npz(images=im[:, :8, :8])), 400, ["images", "8x8", "32x32"]),
    ("NaN pixel", lambda im: http_request(body=npz(images=float_images(im, np.nan))), 400, ["images", "NaN"]),
    ("inf pixel", lambda im: http_request(body=npz(images=float_images(im, np.inf, (1, 2, 3, 0)))), 400,
     ["images", "inf"]),
    ("pixel above 255", lambda im: http_request(body=npz(images=float_images(im, 300.0))), 400,
     ["images", "255", "300"]),
    ("negative pixel", lambda im: http_request(body=npz(images=float_images(im, -1.0))), 400, ["images", "-1"]),
    ("bool pixels", lambda im: http_request(body=npz(images=im > 0)), 400, ["images", "bool"]),
    ("one image scaled among raw ones", lambda im: http_request(body=npz(images=np.stack(
        [im[0].astype(np.float32), im[1].astype(np.float32) / 255]))), 400, ["images", "1 of 2 images", "index 1"]),
    ("HTTP/2.0", lambda im: b"POST /soft_labels HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 400,
     ["HTTP/2.0", "HTTP version not supported", "HTTP/1.1"]),
]


@pytest.mark.parametrize("index", range(len(BAD_REQUESTS)), ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_one_line_4xx_and_the_server_keeps_serving(served, index):
    port, images = served
    _, make, status, names, *half_close = BAD_REQUESTS[index]
    reply = exchange(port, make(images), half_close=bool(half_close))
    assert_refused(reply, status, *names)
    if status == 405:
        assert names[-1] in reply.headers["allow"]
    assert_serves(port, images)


def test_decompression_bomb_is_refused_before_decompressing(served, monkeypatch):
    """A 164 MB array of zeros compresses to about 160 KB: refused from the zip's and the .npy
    header's sizes, without being decompressed (no array is read)."""
    port, images = served
    bomb = npz(compressed=True, images=np.zeros((53_400, 32, 32, 3), np.uint8))
    assert len(bomb) < 1 << 20
    read = []
    real_read_array = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: read.append(1) or real_read_array(*a, **k))
    assert_refused(exchange(port, http_request(body=bomb)), 413, "images", "once decompressed",
                   "limit of 134217728 bytes")
    assert read == []
    assert_serves(port, images)
    assert read  # the good request was read through the patched function: the check above could fail


def test_health_and_head(served):
    port, images = served
    for path in ("/health", "/"):
        reply = exchange(port, http_request("GET", path))
        assert (reply.status, reply.body) == (200, b"ok\n")
        reply = exchange(port, http_request("HEAD", path))
        assert (reply.status, reply.body, reply.headers["content-length"]) == (200, b"", "3")
    reply = exchange(port, http_request("HEAD"))
    assert (reply.status, reply.body, reply.headers["allow"]) == (405, b"", "POST")
    assert_serves(port, images)


def test_arrays_other_than_images_are_ignored(served):
    """As in the device app's .npz of unlabelled images: only `images` is read."""
    port, images = served
    body = npz(images=images, files=np.array(["a.png", "b.png"]), labels=np.array([1, 2]))
    reply = exchange(port, http_request(body=body))
    assert reply.status == 200, reply.body[:300]
    with np.load(io.BytesIO(reply.body), allow_pickle=False) as z:
        assert sorted(z.files) == ["class_names", "images", "soft_targets", "temperature"]


def stalled(port: int, declared: int = 50_000_000, sent: bytes = b"PK\x03\x04012345") -> socket.socket:
    """A client that declares a large body, sends a few bytes of it and then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    sock.sendall(http_request(headers=[("Content-Length", str(declared))], body=sent, length=False))
    return sock


def stalled_or_none(port: int) -> socket.socket | None:
    """`stalled(port)`, or None when the server closed the connection before it was sent."""
    try:
        return stalled(port)
    except (ConnectionResetError, BrokenPipeError):
        return None


def reply_or_closed(sock: socket.socket | None) -> Reply | None:
    """The reply on `sock`, or None when the server closed it without one."""
    if sock is None:
        return None
    try:
        with sock:
            return read_reply(sock)
    except (ConnectionResetError, IndexError, ValueError):
        return None


def wait_for_threads(at_most: int, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    while threading.active_count() > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.active_count()


def test_stalled_clients_time_out_and_requests_in_flight_stay_bounded(device_export, cifar):
    images = cifar["test"].images[:2]
    limit = 2
    server = start_server(device_export[1], cifar.class_names, read_timeout=1.0, request_timeout=30.0,
                          max_in_flight=limit)
    port = server.server_address[1]
    try:
        base = threading.active_count()
        holders = [stalled(port), socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)]
        # The server accepts in order: both slots are taken before this request arrives.
        busy = assert_refused(exchange(port, http_request(body=npz(images=images))), 503, "busy", "again")
        assert "2 requests" in busy
        # Forty more stalled clients: refused or closed at once; threads stay bounded.
        crowd = [stalled_or_none(port) for _ in range(40)]
        # At most `limit` serving, `limit` answering 503 and `2 * limit` draining a closed
        # connection (and a thread that has just freed its slot may not have exited yet).
        assert threading.active_count() <= base + 4 * limit + 2
        started = time.monotonic()
        body_timeout = reply_or_closed(holders[0])
        assert_refused(body_timeout, 408, "request body", "10 of 50000000")
        assert_refused(reply_or_closed(holders[1]), 408, "request", "timed out")
        assert time.monotonic() - started < 5
        for reply in map(reply_or_closed, crowd):
            assert reply is None or assert_refused(reply, 503, "busy")
        assert wait_for_threads(base) <= base
        assert_serves(port, images)
    finally:
        stop_server(server)


def trickle(sock: socket.socket, piece, every: float) -> tuple[threading.Event, threading.Thread]:
    """Sends `piece(n)` for n = 1, 2, ... every `every` seconds until the event is set or the
    server closes the connection: a client never idle for the read timeout."""
    stop = threading.Event()

    def send():
        n = 0
        while not stop.wait(every):
            n += 1
            try:
                sock.send(piece(n))
            except OSError:
                return

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return stop, thread


@pytest.mark.parametrize("opening,piece,request_timeout,names", [
    # A body sent a byte now and then: cut once the request took longer than the request time limit.
    (http_request(headers=[("Content-Length", "1000")], body=b"PK", length=False), lambda n: b"0", 2.0,
     ["request body", "of 1000 bytes"]),
    # Header lines sent now and then: cut at twice the read timeout, not at the request time limit.
    (b"POST /soft_labels HTTP/1.1\r\n", lambda n: f"X-Header-{n}: {n}\r\n".encode(), 60.0,
     ["request", "headers took over 2 s"]),
], ids=["body dripped", "headers trickled"])
def test_slow_clients_never_idle_are_cut_in_time(device_export, cifar, opening, piece, request_timeout, names):
    """A client never idle for the read timeout still cannot hold a slot for long."""
    images = cifar["test"].images[:2]
    server = start_server(device_export[1], cifar.class_names, read_timeout=1.0, request_timeout=request_timeout,
                          max_in_flight=2)
    port = server.server_address[1]
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    sock.sendall(opening)
    stop, sender = trickle(sock, piece, every=0.3)
    try:
        reply = reply_or_closed(sock)
        assert 2 <= time.monotonic() - started < 6
        assert_refused(reply, 408, *names)
        assert_serves(port, images)
    finally:
        stop.set()
        sender.join()
        stop_server(server)
