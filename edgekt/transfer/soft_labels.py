"""The cloud side of unseen-category learning: soft labels of the cloud model for unlabelled
device images, as a file (`write_soft_labels`) or over HTTP (`serve`), in the .npz format
the device app's `learn-unseen` reads."""

from __future__ import annotations

import http.server
import io
import threading

import keras
import numpy as np
from absl import logging

from edgekt import atomic
from edgekt.evaluation import predict_logits


def soft_labels(model: keras.Model, images: np.ndarray, temperature: float = 4.0, batch_size: int = 256) -> np.ndarray:
    """softmax(logits / T) of the cloud model for raw-pixel images [N, H, W, C]."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0. Received: {temperature}")
    z = predict_logits(model, images, batch_size) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def soft_label_npz(model: keras.Model, images: np.ndarray, class_names, temperature: float = 4.0,
                   files=None) -> bytes:
    """The .npz bytes for the device: images, soft_targets, temperature, class_names (, files)."""
    if len(class_names) != int(model.output_shape[-1]):
        raise ValueError(f"{len(class_names)} class names for a model with {model.output_shape[-1]} outputs")
    arrays = {"images": np.asarray(images, np.uint8) if np.asarray(images).dtype == np.uint8 else np.asarray(images),
              "soft_targets": soft_labels(model, images, temperature), "temperature": np.float32(temperature),
              "class_names": np.asarray(list(class_names))}
    if files is not None:
        arrays["files"] = np.asarray(list(files))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_soft_labels(model: keras.Model, images: np.ndarray, class_names, out_path: str, temperature: float = 4.0,
                      files=None) -> str:
    """Writes the soft-label .npz atomically."""
    atomic.write_bytes(out_path, soft_label_npz(model, images, class_names, temperature, files))
    return out_path


def make_server(model: keras.Model, class_names, host: str = "127.0.0.1", port: int = 8765,
                temperature: float = 4.0, max_bytes: int = 256 << 20) -> http.server.ThreadingHTTPServer:
    """An HTTP server: POST /soft_labels with an .npz holding `images` -> the soft-label .npz.

    Bound to localhost by default. `?temperature=T` overrides the temperature.
    """
    lock = threading.Lock()  # one model call at a time

    class Handler(http.server.BaseHTTPRequestHandler):
        def _reply(self, code: int, body: bytes, kind: str = "text/plain; charset=utf-8"):
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server naming)
            if self.path.rstrip("/") in ("", "/health"):
                self._reply(200, b"ok\n")
            else:
                self._reply(404, b"POST /soft_labels with an .npz holding 'images'\n")

        def do_POST(self):  # noqa: N802
            from urllib.parse import parse_qs, urlparse

            url = urlparse(self.path)
            if url.path != "/soft_labels":
                return self._reply(404, b"unknown path; POST /soft_labels\n")
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > max_bytes:
                return self._reply(413 if length > max_bytes else 411, f"body must be 1..{max_bytes} bytes\n".encode())
            try:
                with np.load(io.BytesIO(self.rfile.read(length)), allow_pickle=False) as z:
                    images = z["images"]
                t = float(parse_qs(url.query).get("temperature", [temperature])[0])
                if images.ndim != 4 or tuple(images.shape[1:]) != tuple(model.input_shape[1:]):
                    raise ValueError(f"images must be [N, {', '.join(str(d) for d in model.input_shape[1:])}]. "
                                     f"Received: {images.shape}")
                if images.dtype.kind == "f" and not np.isfinite(images).all():
                    raise ValueError("images contain NaN or inf")
                with lock:
                    body = soft_label_npz(model, images, class_names, t)
            except (ValueError, KeyError, OSError) as e:
                return self._reply(400, f"bad request: {e}\n".encode())
            self._reply(200, body, "application/octet-stream")

        def log_message(self, fmt, *args):
            logging.info("soft-label server: " + fmt, *args)

    return http.server.ThreadingHTTPServer((host, port), Handler)
