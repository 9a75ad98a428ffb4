"""The cloud side of unseen-category learning: soft labels of the cloud model for unlabelled
device images, as a file (`write_soft_labels`) or over HTTP (`make_server`), in the .npz format
the device app's `learn-unseen` reads.

The server answers `POST /soft_labels[?temperature=T]` with an .npz body holding `images` (other
arrays are ignored, as the device app ignores them) and `GET`/`HEAD /health`. It runs the device
app's image checks, so it accepts exactly the images the app accepts. Every bad request gets a
4xx status and a one-line plain-text reply `<what>: <why>; <what to do>`; the size of a request,
of its images once decompressed, the time a client may take to send it and the number of
requests in flight are all bounded, so no client can exhaust the server's memory or threads.
"""

from __future__ import annotations

import http.server
import io
import math
import re
import socket
import threading
import time
import zipfile
import zlib
from urllib.parse import parse_qsl, urlsplit

import keras
import numpy as np
from absl import logging

from edgekt import atomic
from edgekt.errors import UserError, describe, printable
from edgekt.evaluation import predict_logits
from tflite_runtime_app import data as app_data
from tflite_runtime_app import npz
from tflite_runtime_app.image_folder import DataError

MIN_TEMPERATURE, MAX_TEMPERATURE = app_data.TEMPERATURE_RANGE


def check_temperature(temperature, what: str = "temperature") -> float:
    """`temperature` as a float, or a UserError naming `what` unless it is a finite number in
    [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    shown = repr(temperature[:40]) if isinstance(temperature, str) else temperature
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise UserError(f"{what}={shown}: not a number; pass a number such as 4") from None
    if not (math.isfinite(value) and MIN_TEMPERATURE <= value <= MAX_TEMPERATURE):
        raise UserError(f"{what}={shown}: must be a finite number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]; "
                        "pass a temperature such as 4")
    return value


def check_model(model: keras.Model, class_names=None) -> list[str] | None:
    """The class names as strings, or a UserError unless the model maps images [N, H, W, C] to
    logits [N, K], one per class name (when `class_names` is given)."""
    try:
        input_shape, output_shape = tuple(model.input_shape), tuple(model.output_shape)
    except (AttributeError, TypeError, ValueError):  # a model that was never built
        input_shape = output_shape = ()
    if len(input_shape) != 4 or len(output_shape) != 2 or not all(isinstance(d, int) for d in input_shape[1:]):
        raise UserError(f"model: maps {input_shape} to {output_shape}, not images [N, H, W, C] to logits [N, K]; "
                        "pass an image classifier such as pipelines.train_cloud's model.keras")
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    if len(names) != int(output_shape[-1]):
        raise UserError(f"class names: {len(names)} names for a model with {output_shape[-1]} outputs; "
                        "pass one name per output, in the model's order")
    return names


def check_images(images, model: keras.Model, source: str = "images") -> np.ndarray:
    """The device app's checks of unlabelled images (shape, dtype, NaN/inf, pixel range) for
    `model`'s input, and at least one image; a UserError naming `source` otherwise."""
    images = np.asarray(images)
    shape = tuple(model.input_shape[1:])
    if images.ndim == 4 and images.shape[-1] == shape[-1] and tuple(images.shape[1:3]) != shape[:2]:
        raise UserError(f"{source}: images are {images.shape[1]}x{images.shape[2]}, the model takes "
                        f"{shape[0]}x{shape[1]}; resize them to {shape[0]}x{shape[1]} first")
    try:
        images = app_data.check_images(images, source, shape, resize=False)
    except UserError as e:
        raise with_advice(e, f"use images [N, {', '.join(map(str, shape))}] of pixels 0..255 "
                              "(uint8, or float without NaN or inf)") from e
    if len(images) == 0:
        raise UserError(f"{source}: no images (shape {images.shape}); add at least one image")
    return images


def with_advice(error: UserError, advice: str) -> UserError:
    """`error` itself when its message already says what to do, else a copy that does."""
    text = describe(error)
    return error if "; " in text else type(error)(f"{text}; {advice}")


class ModelOutputError(UserError):
    """The cloud model's outputs overflow to NaN or inf: the model's fault, not the images'."""


def check_outputs(logits: np.ndarray) -> np.ndarray:
    """`logits`, or ModelOutputError when any row is NaN or inf (soft labels would be NaN)."""
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise ModelOutputError(f"the cloud model: its outputs are NaN or inf for {int(bad.sum())} of {len(logits)} "
                               "images (its weights overflow); use a model that was trained and saved without error")
    return logits


def soft_labels(model: keras.Model, images: np.ndarray, temperature: float = 4.0, batch_size: int = 256) -> np.ndarray:
    """softmax(logits / T) of the cloud model for raw-pixel images [N, H, W, C].

    Raises:
      UserError: no images, a bad temperature; ModelOutputError: the model's outputs are not
        finite.
    """
    temperature = check_temperature(temperature)
    if len(images) == 0:
        raise UserError("images: none given; pass at least one image")
    z = check_outputs(predict_logits(model, images, batch_size)).astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _npz_bytes(model: keras.Model, images: np.ndarray, class_names: list[str], temperature: float,
               files=None) -> bytes:
    arrays = {"images": images, "soft_targets": soft_labels(model, images, temperature),
              "temperature": np.float32(temperature), "class_names": np.asarray(class_names)}
    if files is not None:
        arrays["files"] = np.asarray(list(files))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def soft_label_npz(model: keras.Model, images: np.ndarray, class_names, temperature: float = 4.0,
                   files=None) -> bytes:
    """The .npz bytes for the device: images, soft_targets, temperature, class_names (, files).

    Raises:
      UserError: class names that do not match the model's outputs, images the device app
        would refuse, a temperature outside [MIN_TEMPERATURE, MAX_TEMPERATURE], or file names
        that are not one per image.
    """
    class_names = check_model(model, class_names)
    temperature = check_temperature(temperature)
    images = check_images(images, model)
    files = None if files is None else list(files)
    if files is not None and len(files) != len(images):
        raise UserError(f"files: {len(files)} file names for {len(images)} images; pass one name per image")
    return _npz_bytes(model, images, class_names, temperature, files)


def write_soft_labels(model: keras.Model, images: np.ndarray, class_names, out_path: str, temperature: float = 4.0,
                      files=None) -> str:
    """Writes the soft-label .npz atomically."""
    atomic.write_bytes(out_path, soft_label_npz(model, images, class_names, temperature, files))
    return out_path


# --- The HTTP server -------------------------------------------------------------------------

_ROUTES = {"/soft_labels": ("POST",), "/health": ("GET", "HEAD"), "/": ("GET", "HEAD")}
_MAX_ARCHIVE_MEMBERS = 64  # an .npz of images needs a few
_USAGE = "POST an .npz with an 'images' array to /soft_labels (GET /health checks the server)"


class _Refusal(Exception):
    """A bad request: the status and the one-line reply `<what>: <why>; <what to do>`."""

    def __init__(self, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(text)
        self.status, self.text, self.headers = status, text, headers


def make_server(model: keras.Model, class_names, host: str = "127.0.0.1", port: int = 8765,
                temperature: float = 4.0, max_bytes: int = 64 << 20, max_images_bytes: int | None = None,
                max_in_flight: int = 8, read_timeout: float = 10.0, request_timeout: float = 120.0,
                ) -> http.server.ThreadingHTTPServer:
    """An HTTP server: POST /soft_labels with an .npz holding `images` -> the soft-label .npz.

    Bound to localhost by default; call `serve_forever()` to serve. `?temperature=T` overrides
    the temperature.

    Args:
      max_bytes: the largest request body accepted (413 beyond).
      max_images_bytes: the largest `images` array accepted once decompressed (413 beyond,
        refused before decompressing); default twice `max_bytes`.
      max_in_flight: requests served at once; more get 503 at once (and beyond twice as many
        the connection is closed), so threads stay bounded.
      read_timeout: seconds a client may send nothing while the server waits for its request
        (408 beyond); also the limit for each piece of a reply to be sent.
      request_timeout: seconds a client may take to send its request body (408 beyond); the
        request line and headers must come within twice `read_timeout`.

    Raises:
      UserError: class names that do not match the model, a bad temperature.
      OSError: the address cannot be bound (e.g. the port is in use).
    """
    class_names = check_model(model, class_names)
    temperature = check_temperature(temperature)
    # A model whose outputs overflow would answer every request with an error: refused at start.
    probe = np.random.default_rng(0).integers(0, 256, (2, *model.input_shape[1:]), dtype=np.uint8)
    check_outputs(predict_logits(model, probe, 2))
    for name, value in (("max_bytes", max_bytes), ("max_in_flight", max_in_flight),
                        ("read_timeout", read_timeout), ("request_timeout", request_timeout)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0. Received: {value}")
    server = _SoftLabelServer((host, port), _Handler, max_in_flight=max_in_flight, read_timeout=float(read_timeout))
    server.model, server.class_names, server.temperature = model, class_names, temperature
    server.max_bytes = int(max_bytes)
    server.max_images_bytes = int(max_images_bytes if max_images_bytes is not None else 2 * max_bytes)
    server.request_timeout = float(request_timeout)
    server.header_timeout = 2 * float(read_timeout)
    server.model_lock = threading.Lock()  # one model call at a time
    return server


class _SoftLabelServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server with at most `max_in_flight` requests served at once, as many
    more answered 503 at once, and the rest closed; each connection is closed only after its
    reply was sent and what the client still sends was drained for a moment (up to 2 x
    `max_in_flight` connections at once, the request slot already free), so the client reads
    the reply instead of a reset. Threads: at most 4 x `max_in_flight` (serving, answering
    503, draining)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64  # connections waiting to be accepted: answered 503 or closed at once

    def __init__(self, address, handler, *, max_in_flight: int, read_timeout: float):
        self.max_in_flight = int(max_in_flight)
        self.read_timeout = read_timeout
        self._serving = threading.BoundedSemaphore(self.max_in_flight)
        self._refusing = threading.BoundedSemaphore(self.max_in_flight)
        self._lingering = threading.BoundedSemaphore(2 * self.max_in_flight)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if self._serving.acquire(blocking=False):
            slots, work = self._serving, self.finish_request
        elif self._refusing.acquire(blocking=False):
            slots, work = self._refusing, self._busy
        else:
            logging.log_every_n_seconds(logging.WARNING, "soft-label server: connections refused, %d requests in "
                                        "flight and as many refusals under way", 10, self.max_in_flight)
            self.close_request(request)
            return
        try:
            threading.Thread(target=self._run, args=(slots, work, request, client_address), daemon=True).start()
        except RuntimeError:  # no thread to be had
            slots.release()
            self.close_request(request)

    def _run(self, slots, work, request, client_address):
        try:
            work(request, client_address)
        except OSError as e:  # the client went away
            logging.info("soft-label server: %s: connection lost (%s)", client_address[0], e)
        except Exception:  # a bug: logged with its traceback, the server keeps serving
            logging.exception("soft-label server: error while serving %s", client_address[0])
        finally:
            # The slot is free once the reply is sent: the next request of the same client must not
            # find it taken while this connection drains what its client still sends.
            slots.release()
            if self._lingering.acquire(blocking=False):
                try:
                    self._close_lingering(request)
                finally:
                    self._lingering.release()
            else:  # too many connections draining at once: close this one now
                self.close_request(request)

    def _busy(self, request, client_address):
        text = (f"soft-label server: busy with {self.max_in_flight} requests; "
                "send the request again in a few seconds\n").encode()
        request.settimeout(self.read_timeout)
        request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(text), text))
        logging.info("soft-label server: %s answered 503 (busy)", client_address[0])

    def _close_lingering(self, request):
        try:
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + min(self.read_timeout, 2.0)
            while (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                if not request.recv(1 << 16):
                    break
        except OSError:
            pass
        finally:
            self.close_request(request)

    def handle_error(self, request, client_address):
        logging.exception("soft-label server: error while serving %s", client_address[0])


class _DeadlineReader(io.RawIOBase):
    """Reads a socket with a timeout per read and an overall deadline (TimeoutError beyond)."""

    def __init__(self, sock: socket.socket, read_timeout: float):
        self._sock, self._read_timeout, self.deadline = sock, read_timeout, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        timeout = self._read_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request took too long")
            timeout = min(timeout, left)
        self._sock.settimeout(timeout)
        return self._sock.recv_into(buffer)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "edgekt-soft-labels"
    wbufsize = 0

    def setup(self):
        super().setup()
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection, self.server.read_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self):
        # The request line and headers must arrive within the header deadline, the body within
        # the request deadline: a client that trickles headers cannot hold a slot for long.
        self._reader.deadline = time.monotonic() + min(self.server.request_timeout, self.server.header_timeout)
        self.close_connection, self._replying = True, False
        self.command, self.request_version, self.requestline = None, "HTTP/1.0", ""
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                return
            if len(self.raw_requestline) > 65536:
                return self.send_error(414)
            if not self.raw_requestline.strip():  # http.server would close without a word
                return self._reply_line(400, "request line: empty; send METHOD PATH HTTP/1.x, e.g. "
                                             "POST /soft_labels HTTP/1.1")
            if not self.parse_request():
                return
            self._reader.deadline = time.monotonic() + self.server.request_timeout
            self._dispatch()
        except TimeoutError:
            if self._replying:  # the client stopped reading the reply: nothing more can be said
                return
            self._reply_line(408, "request: not complete before the server timed out (nothing arrived for "
                                  f"{self.server.read_timeout:g} s, the headers took over {self.server.header_timeout:g} s, "
                                  f"or the body over {self.server.request_timeout:g} s); send the whole request "
                                  "promptly")

    def _dispatch(self):
        try:
            path = urlsplit(self.path).path
            path = path.rstrip("/") or "/"
            if path not in _ROUTES:
                raise _Refusal(404, f"path {self.path[:200]!r}: not found; {_USAGE}")
            allowed = _ROUTES[path]
            if self.command not in allowed:
                raise _Refusal(405, f"{self.command[:20]} {path}: method not allowed; use {' or '.join(allowed)}",
                               (("Allow", ", ".join(allowed)),))
            if path == "/soft_labels":
                self._soft_labels(urlsplit(self.path).query)
            else:
                self._reply(200, b"ok\n")
        except _Refusal as e:
            self._reply_line(e.status, e.text, e.headers)
        except ModelOutputError as e:  # the server's model, not the request, is at fault
            logging.error("soft-label server: %s", describe(e))
            self._reply_line(500, describe(e))
        except UserError as e:
            self._reply_line(400, describe(e))
        except (TimeoutError, ConnectionError):  # the client went away: the server's loop logs one line
            raise
        except Exception as e:  # a bug: logged with its traceback, one line for the client
            logging.exception("soft-label server: error on %s %s", self.command, self.path[:200])
            self._reply_line(500, f"soft-label server: internal error ({type(e).__name__}); "
                                  "see the server's log")

    def _soft_labels(self, query: str):
        server = self.server
        temperature = _query_temperature(query, server.temperature)
        body = self._read_body(self._content_length())
        images = check_images(_images_from_npz(body, server.max_images_bytes), server.model)
        del body
        with server.model_lock:
            reply = _npz_bytes(server.model, images, server.class_names, temperature)
        self._reply(200, reply, "application/octet-stream")

    def _content_length(self) -> int:
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if encodings:
            raise _Refusal(400 if lengths else 411,
                           f"Transfer-Encoding header ({', '.join(encodings)[:50]!r}): not accepted; "
                           "send the body with a Content-Length header instead")
        if not lengths:
            raise _Refusal(411, "Content-Length header: missing; send the .npz body with a Content-Length header")
        if len(lengths) > 1:
            raise _Refusal(400, f"Content-Length header: given {len(lengths)} times; send it once")
        raw = lengths[0].strip()
        if re.fullmatch(r"-[0-9]+", raw):
            raise _Refusal(400, f"Content-Length header ({raw[:30]!r}): negative; send the body's size in bytes")
        if not re.fullmatch(r"[0-9]{1,20}", raw):
            raise _Refusal(400, f"Content-Length header ({raw[:30]!r}): not a whole number of bytes; "
                                "send the body's size in bytes")
        length = int(raw)
        if length == 0:
            raise _Refusal(400, "request body: empty (Content-Length: 0); send an .npz with an 'images' array")
        if length > self.server.max_bytes:
            raise _Refusal(413, f"request body: {length} bytes, over the server's limit of {self.server.max_bytes} "
                                "bytes; send fewer images per request")
        return length

    def _read_body(self, length: int) -> bytes:
        chunks, received = [], 0
        try:
            while received < length:
                chunk = self.rfile.read1(min(length - received, 1 << 20))
                if not chunk:
                    raise _Refusal(400, f"request body: the connection ended after {received} of {length} bytes; "
                                        "send as many bytes as the Content-Length header says")
                chunks.append(chunk)
                received += len(chunk)
        except TimeoutError:
            raise _Refusal(408, f"request body: {received} of {length} bytes arrived before the server timed out "
                                f"(nothing arrived for {self.server.read_timeout:g} s, or over "
                                f"{self.server.request_timeout:g} s in all); send the whole body promptly, with a "
                                "Content-Length header that matches it") from None
        return b"".join(chunks)

    def send_error(self, code, message=None, explain=None):
        """The standard library's errors (a bad request line or headers), in one line."""
        message = (message or self.responses.get(code, ("error",))[0]).rstrip(".")
        message = message[:1].lower() + message[1:]
        if code == 505:  # a version parse_request does not serve: the client's request is at fault
            self._reply_line(400, f"request line: {self.requestline[:100]!r}: HTTP version not supported; send "
                                  "HTTP/1.0 or HTTP/1.1")
        elif code == 414:
            self._reply_line(code, "request line: longer than 65536 bytes; send a shorter URL")
        elif code == 431:
            self._reply_line(code, f"request headers: {message}; send fewer and shorter headers")
        else:
            self._reply_line(code, f"request line {self.requestline[:200]!r}: {message}; send "
                                   "'POST /soft_labels HTTP/1.1' with an .npz body, or 'GET /health HTTP/1.1'")

    def _reply_line(self, status: int, text: str, headers=()):
        self._reply(status, (" ".join(text.split()) + "\n").encode("utf-8", "replace"), headers=headers)

    def _reply(self, status: int, body: bytes, kind: str = "text/plain; charset=utf-8", headers=()):
        self.close_connection, self._replying = True, True
        self.request_version = "HTTP/1.0"  # a status line and headers even for a malformed request line
        self.connection.settimeout(self.server.read_timeout)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            view = memoryview(body)
            for start in range(0, len(view), 1 << 16):  # the timeout bounds each piece, not the whole reply
                self.connection.settimeout(self.server.read_timeout)
                self.wfile.write(view[start:start + (1 << 16)])

    def log_message(self, fmt, *args):
        logging.info("soft-label server: %s %s", self.address_string(), printable(fmt % args))


def _query_temperature(query: str, default: float) -> float:
    """The temperature of `?temperature=T` (the only parameter), or `default`."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=8)
    except ValueError as e:
        raise _Refusal(400, f"query {query[:100]!r}: {e}; the only parameter is temperature, e.g. ?temperature=4")
    names = [name for name, _ in pairs]
    unknown = sorted({name for name in names if name != "temperature"})
    if unknown:
        shown = ", ".join(repr(name[:50]) for name in unknown)
        raise _Refusal(400, f"query parameter{'s' if len(unknown) > 1 else ''} {shown}: unknown; the only parameter "
                            "is temperature, e.g. ?temperature=4")
    if len(names) > 1:
        raise _Refusal(400, f"query parameter 'temperature': given {len(names)} times; give it once")
    return check_temperature(pairs[0][1]) if pairs else default


def _images_from_npz(body: bytes, max_images_bytes: int) -> np.ndarray:
    """The `images` array of an .npz body, refused before decompressing when it would be larger
    than `max_images_bytes` (the zip member's size and the .npy header's shape x itemsize)."""
    if not body.startswith(b"PK"):
        raise _Refusal(400, f"request body: not an .npz archive (it starts with {body[:8]!r}); send the bytes "
                            "np.savez or np.savez_compressed writes, with an 'images' array")
    try:
        npz.check(body, "request body", limit=max_images_bytes, max_members=_MAX_ARCHIVE_MEMBERS)
    except npz.NpzTooLarge as e:
        raise _Refusal(413, f"{describe(e).rsplit('; ', 1)[0]}; send fewer images per request") from None
    except DataError as e:
        raise _Refusal(400, describe(e)) from None
    archive = zipfile.ZipFile(io.BytesIO(body))
    names = archive.namelist()
    member = next((n for n in ("images.npy", "images") if n in names), None)
    if member is None:
        shown = sorted(n[:-4] if n.endswith(".npy") else n for n in names)[:10]
        raise _Refusal(400, f"request body: no 'images' array (the .npz has {shown}); send an .npz with an "
                            "'images' array")
    info = archive.getinfo(member)
    try:
        with archive.open(info) as f:
            images = np.lib.format.read_array(f, allow_pickle=False)
        if images.dtype.kind not in "biufc":
            raise _Refusal(400, f"images: dtype {images.dtype}; send uint8 pixels 0..255 (or floats)")
        return images
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
        raise _Refusal(400, f"images: not a readable .npy array ({describe(e)[:200]}); send the bytes np.savez "
                            "writes") from None
