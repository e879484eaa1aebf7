"""Streamed HTTP downloads with a progress bar, shared by the weight files and the MTD archive.

Callers decide what makes a download good (a hash prefix, an archive's contents); this module only
moves the bytes, hashes them on the way, and turns the many ways a network fetch fails into one
:class:`DownloadError` whose message fits on one line.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from ._io import atomic_file, remove_tree, siblings

__all__ = ["DownloadError", "NETWORK_ERRORS", "download_file", "stream_to_file"]

_CHUNK = 1 << 20
# What urlopen and the read loop raise when the network or the server fails: URLError for refused
# connections, unknown hosts and HTTP error statuses, HTTPException for broken responses, ConnectionError
# and TimeoutError for resets and stalls mid-body, SSLError for TLS failures. Other OSErrors (a full disk,
# an unwritable folder) are local and propagate as they are.
NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
)


class DownloadError(OSError):
    """A download failed: no connection, an HTTP error status, or a body shorter than announced.

    ``url`` and ``reason`` (one line, e.g. ``[Errno 111] Connection refused``) are kept for callers that
    word their own message.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"download of {url} failed: {reason}")
        self.url = url
        self.reason = reason


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def stream_to_file(
    url: str,
    path: str | os.PathLike,
    *,
    desc: str,
    progress: bool = True,
    timeout: float = 60,
    max_bytes: int = 1 << 32,
) -> str:
    """Write the body of ``url`` to ``path`` (created or truncated) and return its sha256 hex digest.

    Raises :class:`DownloadError` naming the URL on any network failure, including a body shorter than
    its ``Content-Length``, and for a body longer than ``max_bytes`` (announced or received: an endless
    body stops there); ``path`` may then hold a partial body, which the caller removes. Local file
    errors (``OSError``) propagate unchanged.
    """
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            total = response.headers.get("Content-Length")
            if total and total.isdigit() and int(total) > max_bytes:
                raise DownloadError(url, f"{int(total)} bytes announced, more than the limit of {max_bytes}")
            with tqdm(
                total=int(total) if total else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
            ) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    if received + len(chunk) > max_bytes:
                        raise DownloadError(url, f"the body exceeds the limit of {max_bytes} bytes")
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
        # http.client ends a body cut short by the server without an error; compare with the header.
        if total and total.isdigit() and received != int(total):
            raise DownloadError(url, f"received {received} of {int(total)} bytes")
    except NETWORK_ERRORS as error:
        raise DownloadError(url, _reason(error)) from error
    return digest.hexdigest()


def download_file(
    url: str,
    destination: str | os.PathLike,
    *,
    desc: str,
    progress: bool = True,
    verify: Callable[[Path, str], None] | None = None,
    max_bytes: int = 1 << 32,
) -> Path:
    """Download ``url`` to ``destination`` atomically.

    The body goes to a temporary sibling; ``verify(temporary_path, sha256_hex)`` may raise to reject it.
    Only a complete, accepted download is renamed to ``destination``; on any failure nothing is left,
    and partial files that killed downloads left beside ``destination`` are removed first.
    """
    destination = Path(destination)
    for stale in siblings(destination, stale_only=True):
        remove_tree(stale)
    with atomic_file(destination) as tmp:
        digest = stream_to_file(url, tmp, desc=desc, progress=progress, max_bytes=max_bytes)
        if verify is not None:
            verify(tmp, digest)
    return destination
