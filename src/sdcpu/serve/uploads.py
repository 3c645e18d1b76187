"""Uploads (/v1/images/edits' form, /sdapi/v1/img2img's base64 images): admitted before a byte of them is read, then
read, parsed and decoded without stalling the event loop.

An upload costs memory while it is read and decoded (a 138 MiB img2img body: its bytes, its base64 text, the image's
bytes and its pixels, about 0.45 GiB), so at most `most` (serve --max-uploads) are read at once; one more is answered
503 with Retry-After, unread, as is an upload the queue has no room for or the model is not ready to take (what it
would be answered once read). Once decoded, an upload is a job's images (at most tasks.MAX_INPUT_PIXELS each) held
in the queue, which --max-queue bounds. The event loop only gathers the body's chunks: the JSON is parsed by
pydantic's parser and the base64 decoded in slices (both off the loop, neither holding the GIL for long), so /health
and the other routes answer while an upload is decoded.
"""

import base64
import binascii
import contextlib
import re

from starlette.concurrency import run_in_threadpool

BASE64_SLICE = 2**22  # characters decoded at once: about 20 ms holding the GIL
SPACE = re.compile(r"\s")


class UploadsFull(Exception):
    """More uploads are being read and decoded than the server reads at once: answered 503 with Retry-After."""


class Uploads:
    """The uploads being read: at most MOST at once. Used on the event loop only (no lock)."""

    def __init__(self, most: int):
        self.most, self.reading = most, 0

    @contextlib.asynccontextmanager
    async def admitted(self, worker, limits):
        """Admit one upload, or raise what it would be answered once read: NotReady (via LIMITS(), the request
        bounds, made once the model is loaded), QueueFull (WORKER's queue has no room), UploadsFull."""
        limits()
        worker.check_room()
        if self.reading >= self.most:
            raise UploadsFull(f"{self.reading} uploads are being read (--max-uploads {self.most})")
        self.reading += 1
        try:
            yield
        finally:
            self.reading -= 1


async def body(request) -> bytearray:
    """REQUEST's body, read into one buffer (serve/guard.py bounds its size)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
    return data


async def parsed(request, parse):
    """PARSE(REQUEST's body) run off the event loop; the body's bytes are let go once parsed."""
    return await run_in_threadpool(parse, await body(request))


def decode_base64(text: str, begin: int = 0) -> bytearray:
    """TEXT's base64 from index BEGIN (line breaks and other whitespace ignored, as A1111 and MIME write it),
    decoded a slice at a time; binascii.Error when it is not base64."""
    decoded, rest = bytearray(), ""
    for start in range(begin, len(text), BASE64_SLICE):
        piece = text[start:start + BASE64_SLICE]
        if SPACE.search(piece):
            piece = "".join(piece.split())
        piece = rest + piece
        whole = len(piece) - len(piece) % 4  # base64 decodes 4 characters at a time
        decoded += base64.b64decode(piece[:whole], validate=True)
        rest = piece[whole:]
    if rest:
        raise binascii.Error("incomplete base64: its length is not a multiple of 4")
    return decoded
