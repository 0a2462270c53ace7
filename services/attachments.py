"""Campaign attachments: one PDF, PNG or JPEG file, recognised by its content, never its name.

The decision: the detected type is what counts. A PDF named `scan.png` is accepted as a PDF
and stored as `scan.pdf`; a `notes.pdf` that is really text is rejected. Besides the magic
bytes, each type's basic structure is checked (PDF `%%EOF` near the end, PNG `IHDR` chunk,
JPEG end-of-image marker), so that truncated or disguised files are caught here and not by
a patient's mail client.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

ACCEPTED = "PDF, PNG or JPEG"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PDF_EOF_WINDOW = 1024  # %%EOF must be within the last KB (trailing whitespace is common)
_UNSAFE_NAME_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]+')
# Beyond ASCII (whose controls become `_` below): format characters (bidi overrides and
# isolates, zero-width characters, BOM), C1 controls, line and paragraph separators,
# surrogates, private-use and unassigned code points.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Zl", "Zp", "Cs", "Co", "Cn"})


@dataclass(frozen=True)
class FileType:
    label: str
    content_type: str
    extension: str


PDF = FileType("PDF", "application/pdf", ".pdf")
PNG = FileType("PNG", "image/png", ".png")
JPEG = FileType("JPEG", "image/jpeg", ".jpg")
_EXTENSIONS = {".pdf": PDF, ".png": PNG, ".jpg": JPEG, ".jpeg": JPEG, ".jpe": JPEG}


@dataclass(frozen=True)
class AttachmentInput:
    """A file as the user gave it: its name and bytes."""

    filename: str
    content: bytes


@dataclass(frozen=True)
class CheckedAttachment:
    """A file that passed the checks, with its name's extension matching its real type."""

    filename: str
    content_type: str
    size: int
    sha256: str
    content: bytes


class AttachmentRejected(ValueError):
    """The reason a file cannot be attached (the `attachment` field's error)."""


def limit_text(max_bytes: int) -> str:
    """`PDF, PNG or JPEG, at most 5 MB`."""
    return f"{ACCEPTED}, at most {max_bytes / (1024 * 1024):g} MB"


def too_large_text(size: int, max_bytes: int) -> str:
    """The `attachment` error for a file of `size` bytes over the limit."""
    return f"the file is {size / (1024 * 1024):.1f} MB, too large; attach a {limit_text(max_bytes)}"


def detect(content: bytes) -> FileType | None:
    """The file's type by its magic bytes, or None."""
    if content.startswith(b"%PDF-"):
        return PDF
    if content.startswith(_PNG_SIGNATURE):
        return PNG
    if content.startswith(b"\xff\xd8\xff"):
        return JPEG
    return None


def _structure_problem(kind: FileType, content: bytes) -> str | None:
    if kind is PDF:
        if b"%%EOF" not in content[-_PDF_EOF_WINDOW:]:
            return "the PDF is incomplete or damaged (it has no end-of-file marker)"
        return None
    if kind is PNG:
        # The first chunk must be IHDR with a 13-byte body and a non-zero width and height.
        header = content[8:24]
        if len(header) < 16 or header[:8] != b"\x00\x00\x00\x0dIHDR":
            return "the PNG is damaged (it has no IHDR header)"
        width, height = int.from_bytes(header[8:12]), int.from_bytes(header[12:16])
        if not width or not height:
            return "the PNG is damaged (its width or height is zero)"
        return None
    # JPEG: the end-of-image marker closes the file (some cameras pad with zero bytes).
    if len(content) < 4 or not content.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "the JPEG is incomplete or damaged (it has no end-of-image marker)"
    return None


def clean_filename(filename: str, kind: FileType) -> str:
    """The base name only, without control, bidi or path characters, ending in `kind`'s
    extension (SPEC §7)."""
    base = unicodedata.normalize("NFC", filename or "")
    # Invisible characters go before anything else: a right-to-left override makes
    # `invoice\u202efdp.exe` read as `invoiceexe.pdf`, and a zero-width or bidi mark can hide
    # a path separator or an extension from a reader.
    base = "".join(c for c in base
                   if c.isascii() or unicodedata.category(c) not in _INVISIBLE_CATEGORIES)
    base = PureWindowsPath(PurePosixPath(base).name).name
    base = _UNSAFE_NAME_CHARS.sub("_", base).strip(" .")
    stem, dot, extension = base.rpartition(".")
    named = _EXTENSIONS.get(f".{extension.lower()}") if dot else None
    if named is kind:
        extension = f".{extension.lower()}"
    elif named is not None:
        extension = kind.extension  # `scan.png` that is a PDF becomes `scan.pdf`
    else:
        stem, extension = base, kind.extension  # `report.v2` becomes `report.v2.pdf`
    stem = stem.strip(" .")[:200] or "attachment"
    return f"{stem}{extension}"


def check(attachment: AttachmentInput, max_bytes: int) -> CheckedAttachment:
    """The attachment ready to store, or AttachmentRejected with a reason a user can act on."""
    content = attachment.content
    what = f"attach a {limit_text(max_bytes)}"
    if not content:
        raise AttachmentRejected(f"the file is empty; {what}")
    if len(content) > max_bytes:
        raise AttachmentRejected(too_large_text(len(content), max_bytes))
    kind = detect(content)
    if kind is None:
        named = _EXTENSIONS.get(PurePosixPath(attachment.filename or "").suffix.lower())
        claim = f"it is named like a {named.label} but " if named else ""
        raise AttachmentRejected(
            f"{claim}its content is not a {ACCEPTED} file (the content is checked, not the "
            f"name); {what}"
        )
    problem = _structure_problem(kind, content)
    if problem:
        raise AttachmentRejected(f"{problem}; {what}")
    return CheckedAttachment(
        filename=clean_filename(attachment.filename, kind),
        content_type=kind.content_type,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content=content,
    )
