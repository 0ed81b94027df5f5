"""Reading a fetched body in upload-sized parts while hashing it (worker.archiver's source side)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from worker.fetch import FetchedBody
from worker.media import IMAGE, SNIFF_BYTES, accepted_type

READ_BYTES = 1024 * 1024  # one read from the source (hashed while still in the CPU cache)


class PartReader:
    """Reads the fetched body in parts (fresh buffers), updating the SHA-256 of the whole body as
    bytes arrive (while they are still in the CPU cache), and calling `heartbeat` after each read."""

    def __init__(
        self,
        body: FetchedBody,
        part_size: int,
        url: str,
        heartbeat: Callable[[], None],
        output_type: str = IMAGE,
    ) -> None:
        self._body = body
        self._beat = heartbeat
        self._part_size = part_size
        self._url = url
        self._output_type = output_type
        self._hash = hashlib.sha256()
        self.bytes_read = 0
        self.content_type = ""

    def read_head(self) -> bytes:
        """The first 16 bytes (fewer if the body is shorter), which tell the content type;
        NotAnImage / NotAVideo if they are not the output's kind. Small, as `read_part` copies
        them into the first part."""
        buf = bytearray(SNIFF_BYTES)
        got = 0
        with memoryview(buf) as view:
            while got < SNIFF_BYTES:
                n = self._body.readinto(view[got:])
                if not n:
                    break
                got += n
        head = bytes(buf[:got])
        self.bytes_read += got
        self.content_type = accepted_type(self._output_type, head, self._url)
        return head

    def read_part(self, head: bytes = b"", size: int | None = None) -> bytearray:
        """The next `size` (default: part size) bytes, fewer only at the end of the body."""
        size = self._part_size if size is None else size
        buf = bytearray(max(size, len(head)))
        got = len(head)
        with memoryview(buf) as view:
            view[:got] = head
            self._hash.update(head)
            while got < size:
                n = self._body.readinto(view[got : got + READ_BYTES])
                if not n:
                    break
                chunk = view[got : got + n]
                self._hash.update(chunk)
                chunk.release()
                got += n
                self._beat()
        if got < len(buf):
            del buf[got:]
        self.bytes_read += got - len(head)  # read_head counted the head
        return buf

    def parts(self, head: bytes) -> Iterator[bytearray]:
        """Every part of the body, the first holding `head`."""
        part = self.read_part(head)
        while part:
            yield part
            part = self.read_part()

    def drain(self, head: bytes = b"") -> None:
        """Hash `head` (from `read_head`, when no part holds it) and the rest of the body, read
        into one reused buffer: nothing is kept."""
        self._hash.update(head)
        buf = bytearray(READ_BYTES)
        with memoryview(buf) as view:
            while n := self._body.readinto(view):
                chunk = view[:n]
                self._hash.update(chunk)
                chunk.release()
                self.bytes_read += n
                self._beat()

    def at_end(self) -> bool:
        """Whether the body has no byte left (reads one if it has)."""
        return not self._body.readinto(bytearray(1))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def content_length(body: FetchedBody) -> int | None:
    """The size of the body as read, from the source's Content-Length; None when it sends none,
    or when it is not the size of the bytes we read (a compressed or chunked response)."""
    headers = body.headers
    if headers.get("Transfer-Encoding") or headers.get("Content-Encoding", "identity") != "identity":
        return None
    raw = headers.get("Content-Length")
    return int(raw) if raw is not None and raw.isdigit() else None
