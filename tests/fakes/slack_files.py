"""The files half of the Slack stand-in: shared files behind the bot token, and uploads.

`add_file` stands for a file a user shared (e.g. through a file_input); its
`url_private_download` needs the bot token, and without it Slack answers its HTML sign-in
page (not an error status), as here. A download arrives as Slack's does: chunked transfer
encoding, in small pieces with pauses between them (`download_chunk` bytes every
`download_pause` seconds), so a client that takes one read for the whole file gets a piece
of it. Uploads follow `files_upload_v2`: files.getUploadURLExternal, a POST of the bytes,
files.completeUploadExternal.
"""

from __future__ import annotations

import asyncio
import mimetypes
import secrets
import time
from typing import Any

from aiohttp import web

from tests.fakes.slack_views import BOT_USER_ID, DEFAULT_USER, TEAM_ID


class SlackError(Exception):
    """An `{"ok": false, "error": ...}` answer."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.body: dict[str, Any] = {"ok": False, "error": error, **extra}


class FilesMixin:
    """files.info, downloads and uploads; FakeSlack provides the state and channel checks."""

    token: str
    scopes: set[str]
    root: str
    download_chunk: int
    download_pause: float
    files: dict[str, dict[str, Any]]
    uploads: list[dict[str, Any]]
    downloads: list[tuple[str, bool]]
    _contents: dict[str, bytes]
    _pending_uploads: dict[str, dict[str, Any]]

    def _require_member(self, channel: str) -> str:
        raise NotImplementedError

    def _post(self, channel: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
        raise NotImplementedError

    def add_file(self, file_id: str, name: str, content: bytes, mimetype: str,
                 *, user: str = DEFAULT_USER) -> dict[str, Any]:
        """A file a user shared (e.g. through a file_input); downloadable with the bot token."""
        self._contents[file_id] = content
        url = f"{self.root}files-pri/{TEAM_ID}-{file_id}/download/{name}"
        self.files[file_id] = {
            "id": file_id, "name": name, "title": name, "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1].lower() if "." in name else "binary",
            "size": len(content), "user": user, "created": int(time.time()),
            "url_private": url, "url_private_download": url,
        }
        return self.files[file_id]


    def _m_files_info(self, params: dict[str, Any]) -> dict[str, Any]:
        found = self.files.get(str(params.get("file")))
        if found is None:
            raise SlackError("file_not_found")
        return {"file": found}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["team_file"].removeprefix(f"{TEAM_ID}-")
        header = request.headers.get("Authorization", "")
        authorised = header == f"Bearer {self.token}" and "files:read" in self.scopes
        self.downloads.append((file_id, authorised))
        if not authorised:  # Slack answers with its sign-in page, not a 401
            raise web.HTTPFound(f"{self.root}login")
        if file_id not in self._contents:
            return web.Response(status=404, text="file not found")
        content = self._contents[file_id]
        response = web.StreamResponse(headers={"Content-Type": self.files[file_id]["mimetype"]})
        response.enable_chunked_encoding()  # no Content-Length: read until the end
        await response.prepare(request)
        try:
            for start in range(0, len(content), self.download_chunk):
                if start:
                    await asyncio.sleep(self.download_pause)
                await response.write(content[start:start + self.download_chunk])
            await response.write_eof()
        except ConnectionResetError:  # the client stopped reading (too large, too slow)
            pass
        return response

    async def _login(self, request: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><html><body>Sign in to Slack</body></html>",
                            content_type="text/html")

    def _m_files_getUploadURLExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        filename, length = params.get("filename"), params.get("length")
        if not filename or not str(length or "").isdigit():
            raise SlackError("invalid_arguments")
        file_id = "F" + secrets.token_hex(5).upper()
        upload_id = secrets.token_hex(8)
        self._pending_uploads[upload_id] = {"file_id": file_id, "filename": filename,
                                            "length": int(str(length))}
        return {"upload_url": f"{self.root}upload/{upload_id}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        pending = self._pending_uploads.get(request.match_info["upload_id"])
        if pending is None:
            return web.Response(status=404, text="upload url not found")
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            part = await reader.next()
            data = await part.read() if part is not None else b""  # type: ignore[union-attr]
        else:
            data = await request.read()
        pending["content"] = data
        return web.Response(text=f"OK - {len(data)}")

    def _m_files_completeUploadExternal(self, params: dict[str, Any]) -> dict[str, Any]:
        by_file = {p["file_id"]: p for p in self._pending_uploads.values() if "content" in p}
        wanted = params.get("files")
        if not isinstance(wanted, list) or not wanted:
            raise SlackError("invalid_arguments")
        if any(item.get("id") not in by_file for item in wanted):
            raise SlackError("file_not_found")
        channel = params.get("channel_id") or (params.get("channels") or "").split(",")[0]
        channel = self._require_member(str(channel)) if channel else None
        files = []
        for item in wanted:
            pending = by_file[item["id"]]
            mimetype = mimetypes.guess_type(pending["filename"])[0] or "application/octet-stream"
            found = self.add_file(item["id"], pending["filename"], pending["content"],
                                  mimetype, user=BOT_USER_ID)
            found["title"] = item.get("title") or pending["filename"]
            files.append(found)
            self.uploads.append({
                "file_id": item["id"], "filename": pending["filename"],
                "title": found["title"], "content": pending["content"], "channel": channel,
                "thread_ts": params.get("thread_ts"),
                "initial_comment": params.get("initial_comment"),
            })
        if channel:
            extra = {"thread_ts": params["thread_ts"]} if params.get("thread_ts") else {}
            self._post(channel, {"text": params.get("initial_comment") or "", "files": files},
                       **extra)
        return {"files": [{"id": f["id"], "title": f["title"]} for f in files]}
