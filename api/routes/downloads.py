"""The HTTP shape of a file download, shared by the routes that serve stored files."""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse, Response, StreamingResponse

from api.services.downloads import FileDownload

# OpenAPI entry of the redirect every file route may answer with object storage and presigning on.
REDIRECT_RESPONSE: dict[int | str, dict[str, Any]] = {
    307: {
        "description": "With object storage and MAPO_STORAGE_PRESIGN_DOWNLOADS=true: a time-limited "
        "presigned URL of the object store in `Location`; follow it to get the file. `X-Checksum-Sha256`, "
        "when the file has one, is on this redirect."
    }
}


def file_response(download: FileDownload, *, attachment: bool = True) -> Response:
    """Stream the file with its length (and sha256 as `X-Checksum-Sha256` and `ETag` when known), or
    redirect to its presigned URL (with `X-Checksum-Sha256` when known)."""
    checksum = {"X-Checksum-Sha256": download.sha256} if download.sha256 else {}
    if download.redirect_url is not None:
        # The store's answer carries no checksum of ours: the client reads it from this redirect.
        return RedirectResponse(download.redirect_url, status_code=307, headers=checksum)
    headers = {"Content-Length": str(download.size)} | checksum
    if attachment:
        headers["Content-Disposition"] = f'attachment; filename="{download.filename}"'
    if download.sha256:
        headers["ETag"] = f'"{download.sha256}"'
    return StreamingResponse(download.chunks, media_type=download.media_type, headers=headers)
