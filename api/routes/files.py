"""The HTTP shape of a file download, shared by the routes that serve stored files."""

from __future__ import annotations

from typing import Any

from fastapi.responses import RedirectResponse, Response, StreamingResponse

from api.services.downloads import FileDownload

# OpenAPI entry of the redirect every file route may answer with object storage and presigning on.
REDIRECT_RESPONSE: dict[int | str, dict[str, Any]] = {
    307: {
        "description": "With object storage and MAPO_STORAGE_PRESIGN_DOWNLOADS=true: a time-limited "
        "presigned URL of the object store in `Location`; follow it to get the file."
    }
}


def file_response(download: FileDownload, *, attachment: bool = True) -> Response:
    """Stream the file with its length (and sha256 as `X-Checksum-Sha256` and `ETag` when known), or
    redirect to its presigned URL."""
    if download.redirect_url is not None:
        return RedirectResponse(download.redirect_url, status_code=307)
    headers = {"Content-Length": str(download.size)}
    if attachment:
        headers["Content-Disposition"] = f'attachment; filename="{download.filename}"'
    if download.sha256:
        headers |= {"X-Checksum-Sha256": download.sha256, "ETag": f'"{download.sha256}"'}
    return StreamingResponse(download.chunks, media_type=download.media_type, headers=headers)
