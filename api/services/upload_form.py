"""Receiving a dataset upload's multipart/form-data body in one pass, its file part straight into a file
under the data directory.

Starlette's form parser spools every file part to the system temp dir (up to 4 GiB of /tmp, RAM on a
tmpfs) before the route sees it, and the route then copied it again into the data directory. Here the
body is parsed as it arrives (python-multipart's streaming parser) and the file part is written once, into
the folder the caller names, hashed on the way. Text fields are small and kept in memory, with a bound.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, get_args

import anyio
from fastapi.concurrency import run_in_threadpool
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import InvalidRequest, PayloadTooLarge
from api.request_stream import write_body
from trainer.dataset_format import DatasetKind

FILE_FIELD = "file"
TEXT_FIELDS = ("name", "kind", "trigger_word")
MAX_NAME_CHARS = 200
# Bounds on what is held in memory: a text field, and one part's headers (a name, a file name).
MAX_TEXT_FIELD_BYTES = 64 * 1024
MAX_PART_HEADER_BYTES = 16 * 1024

MAX_TRIGGER_CHARS = 100

UPLOAD_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [FILE_FIELD],
    "properties": {
        FILE_FIELD: {
            "type": "string",
            "format": "binary",
            "description": "A .zip or .tar(.gz) with pairs.jsonl or pairs.csv and images, or a parquet. "
            "Without a manifest, an archive is read by its layout: for kind pairs, folders w/ (chosen) and "
            "l/ (rejected) with the same file names, captioned by captions.jsonl "
            '({"file_name": "x.png", "caption": "..."} per line) or else by x.txt beside the folders; '
            "for kind targets, images with same-name .txt captions (cat1.png + cat1.txt) in any folder; "
            "for any kind, nothing but parquet shards (data/train-00000-of-00004.parquet, ...: each with "
            "the columns of a parquet upload), read one by one in name order as one parquet of all their "
            "rows, each problem naming its shard. "
            "A manifest, where present, is always what is read. A manifest row may name a `mask` (an "
            "image of any size in the archive, white where the preference applies; the loss averages each "
            "image's error over it); a missing, undecodable or all-black mask is a 422 for that row. "
            "Likewise a parquet (or shard) may add a binary `mask` column (null: no mask for that row), "
            "and pair folders an m/ folder of masks under their pairs' names.",
        },
        "name": {
            "type": "string",
            "maxLength": MAX_NAME_CHARS,
            "description": f"Display name; defaults to the file name (its last {MAX_NAME_CHARS} characters).",
        },
        "kind": {
            "type": "string",
            "enum": list(get_args(DatasetKind)),
            "default": "pairs",
            "description": "pairs: rows of prompt, chosen, rejected (parquet: Pick-a-Pic columns). targets: "
            "rows of prompt, image (the image wanted) and an optional generation_prompt; at job start the "
            "base model draws each rejected image from generation_prompt, or from prompt if it is absent. "
            "avoid: rows of prompt, image (the image to steer away from) and a required generation_prompt, "
            "from which the base model draws the chosen image. In parquet, image holds the encoded bytes.",
        },
        "trigger_word": {
            "type": "string",
            "maxLength": MAX_TRIGGER_CHARS,
            "description": "For images with .txt captions (kind targets) only: put into each caption where "
            "it has [trigger], else in front unless the caption already holds it as a word (an image "
            "without a caption gets the trigger word alone, counted in captions_missing). The base model "
            "draws each rejected image from the caption without it, so `a photo of [trigger] dog` trains "
            "`a photo of sks dog` against what the base model draws for `a photo of dog`.",
            "examples": ["sks"],
        },
    },
}


@dataclass
class ReceivedForm:
    """The upload's file, already on disk (`path`, its size and sha256), its file name and text fields."""

    path: Path
    bytes: int
    sha256: str
    filename: str
    fields: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def receive_form(
    body: AsyncIterable[bytes], content_type: str, *, folder: Path, prefix: str, max_bytes: int
) -> AsyncIterator[ReceivedForm]:
    """Parse a multipart body as it arrives (read on the event loop, written from a worker thread: see
    api/request_stream.py); its `file` part goes to a new file in `folder` (removed on exit).
    InvalidRequest (422) for a body that is not a complete form with one file part, PayloadTooLarge (413)
    once the file passes `max_bytes`."""
    boundary = _boundary(content_type)
    form = await run_in_threadpool(_FormFile, boundary, folder=folder, prefix=prefix, max_bytes=max_bytes)
    try:
        await write_body(body, form.write)
        yield await run_in_threadpool(form.finish)
    finally:
        with anyio.CancelScope(shield=True):  # a client that hung up must not leave the file behind
            await run_in_threadpool(form.discard)


class _FormFile:
    """A multipart body being parsed into a file under `folder`, chunk by chunk (`write`), then checked
    for completeness (`finish`); `discard` removes the file."""

    def __init__(self, boundary: bytes, *, folder: Path, prefix: str, max_bytes: int) -> None:
        fd, name = tempfile.mkstemp(dir=folder, prefix=prefix)
        self.path = Path(name)
        self._out = os.fdopen(fd, "wb")
        self._receiver = _FormReceiver(self._out, max_bytes)
        self._parser = MultipartParser(boundary, self._receiver.callbacks())

    def write(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise _not_a_form(exc) from exc

    def finish(self) -> ReceivedForm:
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise _not_a_form(exc) from exc
        self._out.close()
        return self._receiver.finish(self.path)

    def discard(self) -> None:
        self._out.close()
        self.path.unlink(missing_ok=True)


def _not_a_form(exc: FormParserError) -> InvalidRequest:
    return InvalidRequest(f"not a valid multipart/form-data body: {exc}", param=FILE_FIELD)


def _boundary(content_type: str) -> bytes:
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "the upload must be a multipart/form-data body with a `file` part", param=FILE_FIELD
        )
    return boundary


class _FormReceiver:
    """python-multipart's callbacks: the file part is written as it arrives, text fields are kept."""

    def __init__(self, out: BinaryIO, max_bytes: int) -> None:
        self._out, self._max_bytes = out, max_bytes
        self._digest, self._size = hashlib.sha256(), 0
        self._filename: str | None = None
        self._fields: dict[str, bytearray] = {}
        self._header_name, self._headers, self._disposition = bytearray(), bytearray(), b""
        self._part: str | None = None  # FILE_FIELD, a text field's name, or None for a part ignored
        self._ended = False

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._header_name.clear()
        self._headers.clear()
        self._disposition = b""

    def _header(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]
        self._check_header()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        if len(self._headers) + len(self._header_name) > MAX_PART_HEADER_BYTES:
            raise InvalidRequest(f"a part's headers are over {MAX_PART_HEADER_BYTES} bytes", param=FILE_FIELD)

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._headers)
        self._headers.clear()
        self._header_name.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        part = options.get(b"name", b"").decode("utf-8", "replace")
        if part == FILE_FIELD:
            if self._filename is not None:
                raise InvalidRequest("the form has more than one `file` part", param=FILE_FIELD)
            self._filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self._part = FILE_FIELD
        elif part in TEXT_FIELDS:
            self._fields[part] = bytearray()
            self._part = part
        else:
            self._part = None  # a field this route does not take is ignored, as FastAPI's forms do

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == FILE_FIELD:
            self._write(data[start:end])
        elif self._part is not None:
            value = self._fields[self._part]
            value += data[start:end]
            if len(value) > MAX_TEXT_FIELD_BYTES:
                raise InvalidRequest(f"{self._part} is over {MAX_TEXT_FIELD_BYTES} bytes", param=self._part)

    def _write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max_bytes:
            raise PayloadTooLarge(f"upload exceeds {self._max_bytes} bytes", param=FILE_FIELD)
        self._digest.update(chunk)
        self._out.write(chunk)

    def _end(self) -> None:
        self._ended = True

    def finish(self, path: Path) -> ReceivedForm:
        if not self._ended:
            raise InvalidRequest("the multipart body ends before its closing boundary", param=FILE_FIELD)
        if self._filename is None:
            raise InvalidRequest("the form has no `file` part", param=FILE_FIELD)
        fields = {name: value.decode("utf-8", "replace") for name, value in self._fields.items()}
        return ReceivedForm(path, self._size, self._digest.hexdigest(), self._filename, fields)
