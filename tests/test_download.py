"""The shared download helper (weights, MTD archive): atomic, hashed, one error type for the network."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from subspace_jax._download import DownloadError, download_file


@pytest.fixture
def short_body_server():
    """Announces 100 bytes and sends 10, then closes: a connection cut mid-download."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/file"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_returns_the_file_and_hands_its_hash_to_verify(http_server, tmp_path):
    root, base = http_server
    data = bytes(range(256)) * 50
    (root / "blob").write_bytes(data)
    seen = []
    path = download_file(
        base + "blob",
        tmp_path / "out" / "blob",
        desc="blob",
        progress=False,
        verify=lambda _, h: seen.append(h),
    )
    assert path.read_bytes() == data and seen == [hashlib.sha256(data).hexdigest()]
    assert sorted(p.name for p in path.parent.iterdir()) == ["blob"]


def test_rejected_download_leaves_nothing(http_server, tmp_path):
    root, base = http_server
    (root / "blob").write_bytes(b"payload")

    def reject(path, digest):
        raise ValueError("not what was expected")

    with pytest.raises(ValueError, match="not what was expected"):
        download_file(base + "blob", tmp_path / "out" / "blob", desc="blob", progress=False, verify=reject)
    assert list((tmp_path / "out").iterdir()) == []


def test_body_shorter_than_announced_is_an_error(short_body_server, tmp_path):
    with pytest.raises(DownloadError, match="received 10 of 100 bytes") as caught:
        download_file(short_body_server, tmp_path / "file", desc="file", progress=False)
    assert caught.value.url == short_body_server
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path, reason", [("missing", "HTTP 404"), (None, "Connection refused")])
def test_network_failures_are_one_error_type_naming_the_url(http_server, tmp_path, path, reason):
    url = http_server[1] + path if path else "http://127.0.0.1:9/file"  # port 9: nothing listens
    with pytest.raises(DownloadError, match=reason) as caught:
        download_file(url, tmp_path / "out" / "file", desc="file", progress=False)
    assert url in str(caught.value) and "\n" not in str(caught.value)
    assert list((tmp_path / "out").iterdir()) == []
