"""A real HTTP file server on 127.0.0.1 for download tests, with switchable faults; and tarball builders.

with FileServer(folder) as server:          # serves folder's files at server.url + NAME
    server.faults.cut_after = 1000          # next response closes the connection after 1000 body bytes
    server.faults.errors = 2                # the next 2 requests get HTTP 500
    server.faults.ignore_range = True       # answer 200 with the whole file to Range requests
    server.faults.delay = 0.01              # sleep between chunks (slow transfers for concurrency tests)
    server.faults.flip_bits = [(100, 3)]    # serve the files with bit 3 of byte 100 flipped (on every request)
    server.faults.drop_tail = 8             # serve the files without their last 8 bytes (a cut gzip trailer)
    server.faults.stall_after = 1000        # next response sends 1000 body bytes, then nothing for `stall_for` s
    server.faults.hide_length = True        # no Content-Length: the body ends when the connection closes
    server.requests                         # every request seen: (path, Range header or None, time it came)
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mobilenet_zoo.zoo.variants import MEMBER_SUFFIXES

CHUNK_SIZE = 16 * 1024


@dataclass
class Faults:
    """Misbehaviour to inject; `cut_after` and `errors` are consumed as they fire."""

    cut_after: int | None = None
    errors: int = 0
    ignore_range: bool = False
    delay: float = 0.0
    flip_bits: list[tuple[int, int]] = field(default_factory=list)  # (byte offset in the file, bit 0..7)
    drop_tail: int = 0
    stall_after: int | None = None
    stall_for: float = 30.0
    hide_length: bool = False


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    time: float = 0.0  # time.monotonic() when the request came


class FileServer:
    """Serves the files of `folder` over HTTP/1.1 with Range support, in a background thread."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.faults = Faults()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def reset(self) -> None:
        """Clear the faults and the request log."""
        with self._lock:
            self.faults = Faults()
            self.requests.clear()

    def _log(self, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append(Request(path, range_header, time.monotonic()))

    def _take_error(self) -> bool:
        with self._lock:
            if self.faults.errors > 0:
                self.faults.errors -= 1
                return True
            return False

    def _take_cut(self) -> int | None:
        with self._lock:
            cut, self.faults.cut_after = self.faults.cut_after, None
            return cut

    def _take_stall(self) -> int | None:
        with self._lock:
            stall, self.faults.stall_after = self.faults.stall_after, None
            return stall

    def content(self, path: Path) -> bytes:
        """The bytes served for `path`: the file, with the bit flips and tail drop of the current faults."""
        data = bytearray(path.read_bytes())
        for offset, bit in self.faults.flip_bits:
            data[offset] ^= 1 << bit
        return bytes(data[: len(data) - self.faults.drop_tail])


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            range_header = None if server.faults.ignore_range else self.headers.get("Range")
            server._log(self.path, self.headers.get("Range"))
            path = server.folder / self.path.lstrip("/")
            if server._take_error():
                self._send_empty(500)
            elif not path.is_file():
                self._send_empty(404)
            else:
                self._send_file(path, range_header)

        def _send_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": "0", **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()

        def _send_file(self, path: Path, range_header: str | None) -> None:
            content = server.content(path)
            size = len(content)
            start = _range_start(range_header)
            if start is not None and start >= size:
                self._send_empty(416, {"Content-Range": f"bytes */{size}"})
                return
            self.send_response(200 if start is None else 206)
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            if server.faults.hide_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(size - (start or 0)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self._send_body(content[start or 0 :], server._take_cut(), server._take_stall())

        def _send_body(self, body: bytes, cut_after: int | None, stall_after: int | None) -> None:
            for sent in range(0, len(body), CHUNK_SIZE):
                chunk = body[sent : sent + CHUNK_SIZE]
                if cut_after is not None and sent + len(chunk) >= cut_after:
                    self.wfile.write(chunk[: cut_after - sent])
                    self.close_connection = True
                    return
                if stall_after is not None and sent + len(chunk) >= stall_after:
                    self.wfile.write(chunk[: stall_after - sent])
                    self.wfile.flush()
                    time.sleep(server.faults.stall_for)  # the connection stays open, silent
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                time.sleep(server.faults.delay)

        def log_message(self, format: str, *args) -> None:  # keep test output quiet
            pass

    return Handler


def _range_start(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes=(\d+)-", (header or "").strip())
    return int(match[1]) if match else None


def write_tarball(path: Path, files: dict[str, bytes], *, special: list[tarfile.TarInfo] = ()) -> Path:
    """A gzip'd tar at `path`: a `./` entry, then each file under its member name, then the `special` entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(_info("./", tarfile.DIRTYPE))
        for name, data in files.items():
            archive.addfile(_info(name, tarfile.REGTYPE, len(data)), io.BytesIO(data))
        for info in special:
            archive.addfile(info)
    return path


def official_files(name: str, size: int = 2048) -> dict[str, bytes]:
    """Random contents under the official member names (`./NAME...`) of tarball NAME."""
    return {f"./{name}{suffix}": os.urandom(size) for suffix in MEMBER_SUFFIXES}


def _info(name: str, kind: bytes, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, size, 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info
