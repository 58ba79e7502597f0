"""The web server (affectedit.web: Starlette on uvicorn) with a tiny checkpoint: live editing, one-shot
edits, limits, timeouts, refusals, a small load test (the big one is benchmarks/web_load.py)."""
from __future__ import annotations

import http.client
import io
import json
import os
import socket
import statistics
import threading
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PORTRAITS = DATA / "london-portraits" / "images"


@pytest.fixture(scope="module")
def editor(tiny_checkpoint):
    from affectedit.editor import Editor

    return Editor.from_checkpoint(tiny_checkpoint)


def start(editor, **kwargs):
    """A server on a free loopback port, serving in a background thread."""
    from affectedit import web

    server = web.make_server(editor, "127.0.0.1", 0, quiet=True, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(editor):
    server = start(editor, max_upload_mb=2)
    yield server
    stop(server)


def request(server, method, path, body=None, headers=None, timeout=60):
    """(status, headers, body) of one request on a fresh connection; the path is sent verbatim."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()  # headers: case-insensitive
    finally:
        conn.close()


def portrait(kind: str = "neutral_front") -> Path:
    return sorted((PORTRAITS / kind).glob("*.jpg"))[0]


def multipart(fields: dict[str, str], filename: str, image: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body (the text ``fields``, then the file as "image") and its header,
    as curl -F sends them."""
    boundary = uuid.uuid4().hex
    kind = "image/png" if filename.endswith(".png") else "image/jpeg"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: {kind}\r\n\r\n".encode() + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


# ---------------------------------------------------------------------------------------------

def test_page_assets_and_info(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="disc"' in body and b"/static/app.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for name in ("app.js", "style.css", "index.html"):
        assert request(server, "GET", f"/static/{name}")[0] == 200
    status, _, body = request(server, "GET", "/api/info")
    info = json.loads(body)
    assert status == 200 and info["max_upload_bytes"] == 2 * 2**20
    assert info["emotions"]["neutral"] == [0.0, 0.0] and len(info["emotions"]) > 8
    assert all(-1 <= v <= 1 and -1 <= a <= 1 for v, a in info["emotions"].values())


def test_edit_real_portrait(server):
    path = portrait()
    size = Image.open(path).size
    status, headers, body = request(server, "POST", "/api/edit?valence=0.8&arousal=0.3", path.read_bytes(),
                                    {"Content-Type": "image/jpeg"})
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "image/jpeg" and headers["Cache-Control"] == "no-store"
    edited = Image.open(io.BytesIO(body))
    assert edited.format == "JPEG" and edited.size == size
    edited.load()


def test_png_in_png_out_and_multipart(server):
    photo = Image.open(portrait("smiling_front")).convert("RGB").resize((240, 240))
    status, headers, body = request(server, "POST", "/api/edit?valence=-0.5&arousal=-0.5", encoded(photo, "PNG"),
                                    {"Content-Type": "image/png"})
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(body)).size == (240, 240)

    # curl -F image=@photo.jpg -F valence=... -F arousal=...
    status, headers, body = request(server, "POST", "/api/edit",
                                    *multipart({"valence": "0.25", "arousal": "-0.75"}, "me.jpg", encoded(photo, "JPEG")))
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "image/jpeg" and headers["X-Arousal"] == "-0.750"
    assert Image.open(io.BytesIO(body)).size == (240, 240)


def test_oversize_upload_is_413(server):
    body = b"\xff\xd8\xff" + os.urandom(3 * 2**20)  # 3 MB against the 2 MB limit
    status, headers, answer = request(server, "POST", "/api/edit?valence=0&arousal=0", body,
                                      {"Content-Type": "image/jpeg"})
    assert status == 413 and headers["Content-Type"] == "application/json"
    assert "too large" in error_of(answer) and "2 MB" in error_of(answer)


def test_refuses_what_is_not_a_photo(server, tmp_path):
    good = portrait().read_bytes()
    cases = {
        "not an image": b"%PDF-1.4 definitely not a photo\n" * 50,
        "empty": b"",
        "damaged or truncated": good[: len(good) // 3],
        # 64 Mpx of 1-bit PNG is a few kB on disk: a decompression bomb, refused from the header.
        "too large": encoded(Image.new("1", (8000, 8000)), "PNG"),
    }
    for expected, body in cases.items():
        status, _, answer = request(server, "POST", "/api/edit?valence=0.5&arousal=0.5", body)
        assert status == 400, (expected, answer)
        assert expected in error_of(answer), error_of(answer)


def test_bad_dials_and_no_face(server):
    photo = portrait().read_bytes()
    for query, expected in [("valence=2&arousal=0", "valence must be in [-1, 1]"),
                            ("valence=0&arousal=nan", "arousal must be in [-1, 1]"),
                            ("valence=happy&arousal=0", "valence must be a number"),
                            ("valence=0.5", "missing arousal")]:
        status, _, answer = request(server, "POST", f"/api/edit?{query}", photo)
        assert status == 400 and expected in error_of(answer), answer
    blank = encoded(Image.new("RGB", (200, 200), (128, 128, 128)), "PNG")
    status, _, answer = request(server, "POST", "/api/edit?valence=0.5&arousal=0.5", blank)
    assert status == 422 and "no face" in error_of(answer)


def test_no_path_traversal(server):
    for path in ["/../../etc/passwd", "/static/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                 "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2f__init__.py",
                 "/static/%252e%252e/__init__.py", "//etc/passwd", "/static//etc/passwd",
                 "/static/..\\..\\__init__.py", "/__init__.py", "/static/", "/static/index.html/..",
                 "/etc/passwd", "/static/app.js%00.png"]:
        status, _, body = request(server, "GET", path)
        assert status == 404, path
        assert b"root:" not in body and b"import" not in body
    # The same through a raw socket, in case a client library ever normalises the path.
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404") and b"root:" not in answer


def test_foreign_host_header_refused(server):
    status, headers, body = request(server, "GET", "/api/info", headers={"Host": "evil.example:7860"})
    assert status == 403 and headers["X-Frame-Options"] == "DENY" and "localhost" in error_of(body)
    status, _, _ = request(server, "POST", "/api/photos", b"x" * 100, headers={"Host": "evil.example"})
    assert status == 403
    assert request(server, "GET", "/api/info", headers={"Host": "localhost:7860"})[0] == 200


class CountingEditor:
    """Wraps the editor to record how many edits ever ran at the same time."""

    def __init__(self, editor):
        self.editor, self.active, self.most, self.lock = editor, 0, 0, threading.Lock()

    def edit(self, image, valence, arousal, **options):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            return self.editor.edit(image, valence, arousal, **options)
        finally:
            with self.lock:
                self.active -= 1


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
def test_load_20_clients_x_10_edits(editor):
    clients, edits = 20, 10
    counting = CountingEditor(editor)
    server = start(counting, emotions={})
    try:
        small = Image.open(portrait()).convert("RGB").resize((128, 128), Image.LANCZOS)
        body = encoded(small, "JPEG", quality=90)
        for _ in range(3):  # warm up allocator, detector and model before the baseline
            assert request(server, "POST", "/api/edit?valence=0&arousal=0", body)[0] == 200
        rss_before = rss_mb()
        latencies, errors = [], []
        lock = threading.Lock()
        go = threading.Barrier(clients)

        def client(i):
            go.wait()
            for k in range(edits):
                v, a = ((i * 7 + k * 3) % 21 - 10) / 10, ((i * 3 + k * 5) % 21 - 10) / 10
                t0 = time.perf_counter()
                try:
                    status, headers, answer = request(server, "POST", f"/api/edit?valence={v}&arousal={a}", body,
                                                      {"Content-Type": "image/jpeg"}, timeout=120)
                    ok = status == 200 and Image.open(io.BytesIO(answer)).size == (128, 128)
                    problem = None if ok else f"{status} {answer[:200]!r}"
                except Exception as e:  # noqa: BLE001 - every failure is counted, not raised in a thread
                    problem = repr(e)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if problem:
                        errors.append(problem)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        growth = rss_mb() - rss_before
    finally:
        stop(server)
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"\nload: {clients} clients x {edits} edits = {len(latencies)} requests in {wall:.1f} s, "
          f"{len(errors)} errors, RSS {rss_before:.0f} MB -> +{growth:.1f} MB, "
          f"latency p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, at most {counting.most} edit(s) at once")
    assert not errors, errors[:5]
    assert len(latencies) == clients * edits
    assert counting.most == 1  # the model lock serialises inference
    assert growth < 300, f"RSS grew by {growth:.0f} MB over {clients * edits} edits"


def test_busy_server_answers_503(editor):
    """More waiting requests than max_pending: the extra ones are told to retry, none hang."""
    gate, entered = threading.Event(), threading.Event()

    class SlowEditor:
        def edit(self, image, valence, arousal, **options):
            entered.set()
            gate.wait(30)
            return image

    server = start(SlowEditor(), emotions={}, max_pending=1)
    try:
        body = encoded(Image.new("RGB", (32, 32)), "PNG")
        results = []
        first = threading.Thread(target=lambda: results.append(request(server, "POST", "/api/edit?valence=0&arousal=0", body)[0]))
        first.start()
        assert entered.wait(10)  # the first request holds the only slot
        status, _, answer = request(server, "POST", "/api/edit?valence=0&arousal=0", body)
        assert status == 503 and "busy" in error_of(answer)
        gate.set()
        first.join(30)
        assert results == [200]
    finally:
        gate.set()
        stop(server)


def test_cli_serve_parser_defaults():
    from affectedit.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.max_upload_mb, args.checkpoint) == ("127.0.0.1", 7860, 20.0, None)
    args = build_parser().parse_args(["serve", "--checkpoint", "x.pt", "--port", "0", "--max-upload-mb", "5"])
    assert (str(args.checkpoint), args.port, args.max_upload_mb) == ("x.pt", 0, 5.0)


def test_cli_serve_refuses_missing_checkpoint(tmp_path, capsys):
    from affectedit.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "nope.pt"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_serve_runs_and_stops(tiny_checkpoint):
    """`affectedit serve` as a user runs it: announces its URL, answers, stops on Ctrl-C."""
    import signal
    import subprocess
    import sys

    # SIGINT back to its default in the child: a shell's background job (CI runners) ignores it,
    # and Python then never turns Ctrl-C into KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "affectedit", "serve", "--checkpoint", str(tiny_checkpoint),
                             "--port", "0"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()
        assert "serving on http://127.0.0.1:" in line, line
        url = line.split("serving on ", 1)[1].split()[0]
        host, port = url.split("//")[1].rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/api/info")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# --------------------------------------------------------------------------------------------- live editing


def two_faces() -> Image.Image:
    """Two London portraits side by side (PNG in, PNG out: pixels compare exactly)."""
    a = Image.open(portrait()).convert("RGB").resize((300, 300), Image.LANCZOS)
    b = Image.open(portrait("smiling_front")).convert("RGB").resize((260, 260), Image.LANCZOS)
    photo = Image.new("RGB", (600, 320), (200, 200, 200))
    photo.paste(a, (0, 10))
    photo.paste(b, (330, 30))
    return photo


def test_live_upload_preview_and_full_edit(server):
    path = portrait()
    size = Image.open(path).size
    status, headers, body = request(server, "POST", "/api/photos", path.read_bytes(), {"Content-Type": "image/jpeg"})
    assert status == 200, body[:300]
    photo = json.loads(body)
    assert (photo["width"], photo["height"]) == size and len(photo["faces"]) == 1
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    pid = photo["id"]
    # The unedited photo at preview size (what the page shows after an upload).
    status, headers, body = request(server, "GET", f"/api/photos/{pid}/original")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == tuple(photo["preview"])
    # Previews while the dial moves: small JPEGs, fast.
    times = []
    for v in (-0.8, -0.2, 0.4, 0.9):
        t0 = time.perf_counter()
        status, headers, body = request(server, "GET", f"/api/photos/{pid}/preview?valence={v}&arousal=0.3&strength=1.5")
        times.append(time.perf_counter() - t0)
        assert status == 200 and headers["Content-Type"] == "image/jpeg", body[:200]
        assert Image.open(io.BytesIO(body)).size == tuple(photo["preview"])
    assert max(photo["preview"]) <= 640
    assert statistics.median(times) < 0.5, times
    # The full edit on release: the input's size and format.
    status, headers, body = request(server, "GET", f"/api/photos/{pid}/edit?valence=0.9&arousal=0.3")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(body)).size == size
    # Refusals.
    assert request(server, "GET", f"/api/photos/{pid}/edit?valence=0.9&arousal=0.3&face=3")[0] == 400
    assert request(server, "GET", f"/api/photos/{pid}/preview?valence=0.9&arousal=0.3&strength=9")[0] == 400
    status, _, body = request(server, "GET", "/api/photos/nope/preview?valence=0&arousal=0")
    assert status == 404 and "upload it again" in error_of(body)
    # Uploads without a face, or that are no image, are refused with a message for the page.
    blank = encoded(Image.new("RGB", (200, 200), (128, 128, 128)), "PNG")
    status, _, body = request(server, "POST", "/api/photos", blank, {"Content-Type": "image/png"})
    assert status == 422 and "no face" in error_of(body)
    status, _, body = request(server, "POST", "/api/photos", b"GIF89a not really", {"Content-Type": "image/gif"})
    assert status == 400 and "not an image" in error_of(body)


@pytest.fixture(scope="module")
def bundled_server():
    """The bundled model (the tiny one's changes can round to nothing)."""
    from affectedit.editor import Editor

    server = start(Editor.from_pretrained())
    yield server
    stop(server)


def test_live_face_picker_edits_only_that_face(bundled_server):
    server = bundled_server
    photo = two_faces()
    status, _, body = request(server, "POST", "/api/photos", encoded(photo, "PNG"), {"Content-Type": "image/png"})
    assert status == 200, body[:300]
    info = json.loads(body)
    assert len(info["faces"]) == 2
    boxes = info["faces"]
    right = 1 if boxes[1]["box"][0] > boxes[0]["box"][0] else 0
    status, headers, body = request(server, "GET", f"/api/photos/{info['id']}/edit?valence=-0.9&arousal=0.8&strength=4&face={right}")
    assert status == 200 and headers["Content-Type"] == "image/png"
    import numpy as np

    before, after = np.asarray(photo), np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert (before[:, :310] == after[:, :310]).all(), "the face not picked changed"
    assert (before[:, 330:] != after[:, 330:]).any(), "the picked face did not change"


def test_one_shot_edit_with_emotion_word_and_strength(server):
    photo = Image.open(portrait()).convert("RGB").resize((200, 200))
    status, headers, body = request(server, "POST", "/api/edit",
                                    *multipart({"emotion": "happy", "strength": "0.5"}, "me.png", encoded(photo, "PNG")))
    assert status == 200, body[:300]
    assert headers["X-Valence"] == "0.830" and headers["Content-Type"] == "image/png"
    status, _, body = request(server, "POST", "/api/edit?emotion=smug", encoded(photo, "PNG"))
    assert status == 400 and "unknown emotion" in error_of(body)


def test_errors_carry_security_headers(server):
    for method, path in [("GET", "/nope"), ("POST", "/api/info"), ("GET", "/api/photos/x/edit?valence=0&arousal=0")]:
        status, headers, body = request(server, method, path)
        assert status in (404, 405) and headers["X-Content-Type-Options"] == "nosniff", (path, status)
        assert "error" in json.loads(body)


def recv_all(sock) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_stalled_upload_is_408_and_does_not_block_others(editor):
    server = start(editor, idle_timeout=1.5, body_timeout=4)
    try:
        host, port = server.server_address[:2]
        stalled = socket.create_connection((host, port), timeout=10)
        stalled.sendall(b"POST /api/photos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: 100000\r\n\r\n\xff\xd8")
        # While it stalls, others are served at once.
        t0 = time.perf_counter()
        assert request(server, "GET", "/api/info")[0] == 200
        assert time.perf_counter() - t0 < 1.0
        answer = recv_all(stalled)
        assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer, answer[:200]
        stalled.close()
        # A trickle that never stalls long is cut at the total body deadline.
        trickle = socket.create_connection((host, port), timeout=10)
        trickle.sendall(b"POST /api/edit?valence=0&arousal=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
        t0 = time.perf_counter()
        trickle.settimeout(0.5)
        answer = b""
        while time.perf_counter() - t0 < 10 and not answer:
            try:
                trickle.sendall(b"x")
                answer = trickle.recv(65536)
                trickle.settimeout(5)
                answer += recv_all(trickle)
            except TimeoutError:
                continue
            except OSError:
                break
        assert answer.startswith(b"HTTP/1.1 408") and b"longer than" in answer, answer[:200]
        assert 3.5 < time.perf_counter() - t0 < 8
        trickle.close()
    finally:
        stop(server)


def test_header_timeout_closes_silent_connections(editor):
    server = start(editor, header_timeout=1.0)
    try:
        host, port = server.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"GET /api/in")  # never finishes the request line
            t0 = time.perf_counter()
            assert sock.recv(100) == b""  # closed by the server
            assert time.perf_counter() - t0 < 5
    finally:
        stop(server)


def test_chunked_upload_over_the_limit_is_413(server):
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /api/edit?valence=0&arousal=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = os.urandom(2**20)
        answer = b""
        try:
            for _ in range(4):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass
        sock.settimeout(10)
        with __import__("contextlib").suppress(OSError):
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_cli_serve_refuses_absurd_values(capsys):
    from affectedit.cli import main

    for value in ("inf", "nan", "0", "-5", "1e9"):
        assert main(["serve", "--max-upload-mb", value, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert "--max-upload-mb must be a number of megabytes" in err and err.count("\n") == 1, err
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_odd_photos_edit_or_get_a_clear_4xx(server, tmp_path):
    """The files of issue 16 on the page's API: a 16-bit grey PNG and a JPEG whose EXIF breaks
    Pillow's exif_transpose are edited like on the command line; a fuzzed TIFF is a 400, never a 500."""
    import numpy as np

    from test_reliability import _broken_exif_jpeg, _fuzzed_tiff

    photo = Image.open(portrait()).convert("RGB").resize((240, 240))
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257).save(grey16)
    exif = tmp_path / "exif.jpg"
    _broken_exif_jpeg(exif, photo)
    for path in (grey16, exif):
        status, _, body = request(server, "POST", "/api/edit?valence=0.5&arousal=0.5", path.read_bytes())
        assert status == 200, (path.name, body[:300])
        edited = Image.open(io.BytesIO(body))
        assert edited.size == (240, 240)
        assert np.asarray(edited.convert("L")).mean() < 250  # not clipped to white
    tiff = tmp_path / "fuzzed.tif"
    _fuzzed_tiff(tiff)
    status, _, answer = request(server, "POST", "/api/edit?valence=0.5&arousal=0.5", tiff.read_bytes())
    assert 400 <= status < 500, answer
    assert error_of(answer)
