"""Fetching archives (resume, checksums, local sources) and unpacking them safely.

Downloads are served by a local HTTP server in a thread (no network); archives are built here.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from flyp.cli import main
from flyp.datasets import BENCHMARKS, Benchmark, Download, EvalSet
from flyp.datasets.download import extract_archive, fetch, link_folder, obtain, verify
from flyp.io import UserError

PAYLOAD = os.urandom(300_000)  # bigger than one read chunk of the server's replies below


# ----------------------------------------------------------------------------------------------
# A tiny HTTP server: serves FILES, honours Range unless told not to, can drop a connection, and
# records every request (path, Range header, bytes sent).


class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.drop_after: int | None = None  # first reply stops after this many bytes
        self.requests: list[dict] = []


def _handler(server: Server):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            record = {"path": self.path, "range": self.headers.get("Range"), "sent": 0}
            server.requests.append(record)
            data = server.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if server.ranges and record["range"]:
                start = int(record["range"].removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if server.drop_after is not None:
                body, server.drop_after = body[: server.drop_after], None
            # recorded before writing: the client may have read it all (and the test checked)
            # before this thread returns from the write
            record["sent"] = len(body)
            self.wfile.write(body)

    return Handler


@pytest.fixture
def http():
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def quiet(msg):
    pass


# ----------------------------------------------------------------------------------------------
# Fetching


def test_download_resumes_a_partial_file_with_a_range_request(http, tmp_path):
    http.files["/a.tar"] = PAYLOAD
    dest = tmp_path / "a.tar"
    (tmp_path / "a.tar.part").write_bytes(PAYLOAD[:100_000])
    fetch(
        f"{http.url}/a.tar",
        dest,
        size=len(PAYLOAD),
        sha256=sha256(PAYLOAD),
        progress=False,
        log=quiet,
    )
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.tar.part").exists()
    # only the missing bytes were asked for and sent
    assert [(r["range"], r["sent"]) for r in http.requests] == [("bytes=100000-", 200_000)]


def test_download_starts_over_when_the_server_ignores_range(http, tmp_path):
    http.files["/a.tar"] = PAYLOAD
    http.ranges = False
    (tmp_path / "a.tar.part").write_bytes(b"x" * 1000)  # not a prefix of the file
    fetch(f"{http.url}/a.tar", tmp_path / "a.tar", md5=md5(PAYLOAD), progress=False, log=quiet)
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD


def test_a_dropped_connection_is_resumed(http, tmp_path, monkeypatch):
    monkeypatch.setattr("flyp.datasets.download.time.sleep", lambda s: None)
    http.files["/a.tar"] = PAYLOAD
    http.drop_after = 50_000
    fetch(
        f"{http.url}/a.tar", tmp_path / "a.tar", sha256=sha256(PAYLOAD), progress=False, log=quiet
    )
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD
    assert [r["range"] for r in http.requests] == [None, "bytes=50000-"]


def test_a_complete_part_file_is_not_downloaded_again(http, tmp_path):
    http.files["/a.tar"] = PAYLOAD
    (tmp_path / "a.tar.part").write_bytes(PAYLOAD)
    fetch(
        f"{http.url}/a.tar", tmp_path / "a.tar", sha256=sha256(PAYLOAD), progress=False, log=quiet
    )
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD
    assert [r["sent"] for r in http.requests] == [0]  # answered 416: nothing left to send


@pytest.mark.parametrize(
    "check",
    [
        {"sha256": sha256(b"another file")},
        {"md5": md5(b"another file")},
        {"size": len(PAYLOAD) + 1},
    ],
)
def test_a_mismatching_download_is_refused_and_leaves_no_file(http, tmp_path, check):
    http.files["/a.tar"] = PAYLOAD
    dest = tmp_path / "a.tar"
    with pytest.raises(UserError, match=r"a\.tar.*(sha256|md5|size)") as err:
        fetch(f"{http.url}/a.tar", dest, **check, progress=False, log=quiet)
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []  # neither the file nor a .part to resume from


def test_a_tampered_download_is_refused(http, tmp_path):
    tampered = bytearray(PAYLOAD)
    tampered[123_456] ^= 0xFF
    http.files["/a.tar"] = bytes(tampered)
    with pytest.raises(UserError, match="md5"):
        fetch(
            f"{http.url}/a.tar",
            tmp_path / "a.tar",
            size=len(PAYLOAD),
            md5=md5(PAYLOAD),
            progress=False,
            log=quiet,
        )
    assert not (tmp_path / "a.tar").exists()


def test_http_errors_are_one_line_user_errors(http, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        fetch(f"{http.url}/missing.tar", tmp_path / "m.tar", progress=False, log=quiet)
    assert not (tmp_path / "m.tar").exists()


@pytest.mark.parametrize("as_url", [False, True])
def test_local_paths_and_file_urls_are_sources_too(tmp_path, as_url):
    src = tmp_path / "placed" / "archive.tar"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    source = src.as_uri() if as_url else str(src)
    dest = fetch(source, tmp_path / "out.tar", sha256=sha256(PAYLOAD), progress=False, log=quiet)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(UserError, match="sha256"):
        fetch(source, tmp_path / "bad.tar", sha256=sha256(b"x"), progress=False, log=quiet)
    assert not (tmp_path / "bad.tar").exists()
    assert src.read_bytes() == PAYLOAD  # the source is never touched


def test_verify_names_the_file_and_what_differs(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    verify(f, size=3, md5=md5(b"abc"), sha256=sha256(b"abc"), progress=False)
    with pytest.raises(UserError, match=r"f\.bin: size 3 bytes, expected 4 bytes"):
        verify(f, size=4, progress=False)


# ----------------------------------------------------------------------------------------------
# Extraction


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            add_file(tar, name, data)
    return path


def test_tar_gz_and_zip_are_unpacked_atomically(tmp_path):
    members = {"root/a/x.JPEG": b"x", "root/b/y.JPEG": b"yy", "./root/c.txt": b"c"}
    make_tar(tmp_path / "t.tar.gz", members)
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name.removeprefix("./"), data)
    for archive in ("t.tar.gz", "z.zip"):
        out = extract_archive(
            tmp_path / archive, tmp_path / f"out-{archive}", progress=False, log=quiet
        )
        found = {
            p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
        }
        assert found == {"root/a/x.JPEG": b"x", "root/b/y.JPEG": b"yy", "root/c.txt": b"c"}
    # no temporary folders left beside the targets
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out-t.tar.gz",
        "out-z.zip",
        "t.tar.gz",
        "z.zip",
    ]


def _symlink(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


MALICIOUS_TARS = {
    "dot-dot": lambda tar: add_file(tar, "../escape.txt", b"owned"),
    "nested dot-dot": lambda tar: add_file(tar, "ok/../../escape.txt", b"owned"),
    "absolute": lambda tar: add_file(tar, str(Path("/tmp/flyp-test-escape.txt")), b"owned"),
    "symlink to /etc": lambda tar: tar.addfile(_symlink("etc", "/etc")),
    "hardlink to /etc/passwd": lambda tar: tar.addfile(_symlink("passwd", "/etc/passwd", True)),
    "file through a symlink": lambda tar: (
        tar.addfile(_symlink("up", "..")),
        add_file(tar, "up/escape.txt", b"owned"),
    ),
}


@pytest.mark.parametrize("attack", MALICIOUS_TARS)
def test_a_malicious_tar_member_cannot_escape(tmp_path, attack):
    work = tmp_path / "work"
    work.mkdir()
    with tarfile.open(work / "evil.tar", "w") as tar:
        add_file(tar, "good.txt", b"fine")  # written first, then the attack aborts everything
        MALICIOUS_TARS[attack](tar)
    with pytest.raises(UserError, match="evil.tar: member .* refus"):
        extract_archive(work / "evil.tar", work / "out", progress=False, log=quiet)
    assert sorted(os.listdir(work)) == ["evil.tar"]  # no target, no half-extracted temp folder
    assert not (tmp_path / "escape.txt").exists()
    assert not Path("/tmp/flyp-test-escape.txt").exists()


def test_a_malicious_zip_member_cannot_escape(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with zipfile.ZipFile(work / "evil.zip", "w") as zf:
        zf.writestr("../escape.txt", b"owned")
    with pytest.raises(UserError, match="outside"):
        extract_archive(work / "evil.zip", work / "out", progress=False, log=quiet)
    link = zipfile.ZipInfo("etc")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(work / "link.zip", "w") as zf:
        zf.writestr(link, "/etc")
    with pytest.raises(UserError, match="link"):
        extract_archive(work / "link.zip", work / "out", progress=False, log=quiet)
    assert sorted(os.listdir(work)) == ["evil.zip", "link.zip"]
    assert not (tmp_path / "escape.txt").exists()


def test_a_password_protected_zip_says_to_unzip_it_by_hand(tmp_path):
    with zipfile.ZipFile(tmp_path / "objectnet.zip", "w") as zf:
        zf.writestr("objectnet-1.0/README", b"x")
    data = bytearray((tmp_path / "objectnet.zip").read_bytes())
    central = data.index(b"PK\x01\x02")  # set the "encrypted" flag of the central directory entry
    data[central + 8] |= 0x1
    (tmp_path / "objectnet.zip").write_bytes(bytes(data))
    with pytest.raises(UserError, match="password-protected.*extracted folder"):
        extract_archive(tmp_path / "objectnet.zip", tmp_path / "out", progress=False, log=quiet)
    assert sorted(os.listdir(tmp_path)) == ["objectnet.zip"]


def test_a_corrupt_archive_leaves_no_folder(tmp_path):
    make_tar(tmp_path / "t.tar.gz", {f"f{i}": os.urandom(20_000) for i in range(5)})
    data = (tmp_path / "t.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.tar.gz: cannot extract"):
        extract_archive(tmp_path / "cut.tar.gz", tmp_path / "out", progress=False, log=quiet)
    assert sorted(os.listdir(tmp_path)) == ["cut.tar.gz", "t.tar.gz"]


def test_inner_tars_unpack_into_a_folder_each_and_are_checked_too(tmp_path):
    def inner(members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in members.items():
                add_file(tar, name, data)
        return buf.getvalue()

    with tarfile.open(tmp_path / "train.tar", "w") as tar:
        add_file(tar, "n01440764.tar", inner({"n01440764_1.JPEG": b"a", "n01440764_2.JPEG": b"b"}))
        add_file(tar, "n01443537.tar", inner({"n01443537_1.JPEG": b"c"}))
    out = extract_archive(
        tmp_path / "train.tar", tmp_path / "train", inner_tars=True, progress=False, log=quiet
    )
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.JPEG")) == [
        "n01440764/n01440764_1.JPEG",
        "n01440764/n01440764_2.JPEG",
        "n01443537/n01443537_1.JPEG",
    ]
    assert not list(out.glob("*.tar"))

    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        add_file(tar, "n0.tar", inner({"../../escape.txt": b"owned"}))
    with pytest.raises(UserError, match="outside"):
        extract_archive(
            tmp_path / "evil.tar", tmp_path / "evil", inner_tars=True, progress=False, log=quiet
        )
    assert not (tmp_path / "evil").exists() and not (tmp_path / "escape.txt").exists()


def test_an_extracted_folder_is_linked_not_copied(tmp_path):
    placed = tmp_path / "placed"
    (placed / "n01440764").mkdir(parents=True)
    (placed / "n01440764" / "x.JPEG").write_bytes(b"x")
    out = link_folder(placed, tmp_path / "raw" / "imagenet_train", log=quiet)
    assert (out / "source").is_symlink()
    assert (out / "source" / "n01440764" / "x.JPEG").read_bytes() == b"x"


# ----------------------------------------------------------------------------------------------
# One archive of a benchmark: `flyp download`

ARCHIVE = {"toy/a/1.JPEG": b"1", "toy/b/2.JPEG": b"22"}


@pytest.fixture
def toy_benchmark(tmp_path, http, monkeypatch):
    """A registered benchmark with one downloadable archive, one manual one (checksums known)."""
    data = make_tar(tmp_path / "toy.tar.gz", ARCHIVE).read_bytes()
    http.files["/toy.tar.gz"] = data
    downloads = [
        Download("toy", f"{http.url}/toy.tar.gz", size=len(data), sha256=sha256(data)),
        Download("licensed", None, md5=md5(data), manual="licensed.tar.gz from example.org"),
    ]
    bench = Benchmark(
        "toy", ["a", "b"], ["{}"], [EvalSet("test", ood=False)], prepare=None, downloads=downloads
    )
    monkeypatch.setitem(BENCHMARKS, "toy", lambda: bench)
    return bench, data


def test_cli_fetches_and_unpacks_an_archive(toy_benchmark, tmp_path):
    raw = tmp_path / "raw"
    done = CliRunner().invoke(
        main,
        [
            "download",
            "--benchmark",
            "toy",
            "--name",
            "toy",
            "--archive",
            str(raw / "downloads" / "toy.tar.gz"),
        ],
    )
    assert done.exit_code == 0, done.output
    done = CliRunner().invoke(
        main,
        [
            "download",
            "--benchmark",
            "toy",
            "--name",
            "toy",
            "--source",
            str(raw / "downloads" / "toy.tar.gz"),
            "--extract",
            str(raw / "toy"),
        ],
    )
    assert done.exit_code == 0, done.output
    assert (raw / "toy" / "toy" / "b" / "2.JPEG").read_bytes() == b"22"


def test_an_archive_without_url_says_where_to_get_it_and_which_key_to_set(toy_benchmark, tmp_path):
    done = CliRunner().invoke(
        main,
        [
            "download",
            "--benchmark",
            "toy",
            "--name",
            "licensed",
            "--archive",
            str(tmp_path / "x.tar.gz"),
        ],
    )
    assert done.exit_code == 2
    message = done.output.strip().splitlines()[-1]
    assert "licensed.tar.gz from example.org" in message
    assert "presets.toy.data.licensed" in message
    assert "Traceback" not in done.output


def test_a_manually_placed_archive_is_verified_before_unpacking(toy_benchmark, tmp_path):
    bench, data = toy_benchmark
    placed = tmp_path / "placed.tar.gz"
    placed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit
    with pytest.raises(UserError, match="placed.tar.gz: md5"):
        obtain(
            bench,
            "licensed",
            source=str(placed),
            extract_to=tmp_path / "raw" / "licensed",
            progress=False,
            log=quiet,
        )
    assert not (tmp_path / "raw" / "licensed").exists()
    placed.write_bytes(data)
    obtain(
        bench,
        "licensed",
        source=placed.as_uri(),
        extract_to=tmp_path / "raw" / "licensed",
        progress=False,
        log=quiet,
    )
    assert (tmp_path / "raw" / "licensed" / "toy" / "a" / "1.JPEG").read_bytes() == b"1"


def test_a_mirror_url_replaces_the_official_one(toy_benchmark, http, tmp_path):
    bench, data = toy_benchmark
    http.files["/mirror/toy.tar.gz"] = data
    obtain(
        bench,
        "toy",
        source=f"{http.url}/mirror/toy.tar.gz",
        archive=tmp_path / "raw" / "toy.tar.gz",
        extract_to=tmp_path / "toy",
        progress=False,
        log=quiet,
    )
    assert [r["path"] for r in http.requests] == ["/mirror/toy.tar.gz"]
    assert (tmp_path / "toy" / "toy" / "a" / "1.JPEG").exists()


# ----------------------------------------------------------------------------------------------
# A source that states its own size and checksums (a fixture; the mapping form of params.yaml)


def fixture_archive(tmp_path: Path) -> tuple[Path, bytes]:
    (tmp_path / "fixture").mkdir()
    path = make_tar(tmp_path / "fixture" / "toy.tar.gz", {"toy/c/3.JPEG": b"333"})
    return path, path.read_bytes()


def test_a_source_with_stated_sums_is_fetched_and_unpacked(toy_benchmark, tmp_path):
    bench, real = toy_benchmark
    path, data = fixture_archive(tmp_path)
    assert data != real  # the pinned sums would refuse it
    raw = tmp_path / "raw"
    obtain(
        bench,
        "toy",
        source={"source": path.as_uri(), "size": len(data), "sha256": sha256(data)},
        archive=raw / "downloads" / "toy.tar.gz",
        extract_to=raw / "toy",
        progress=False,
        log=quiet,
    )
    assert (raw / "downloads" / "toy.tar.gz").read_bytes() == data
    assert (raw / "toy" / "toy" / "c" / "3.JPEG").read_bytes() == b"333"

    # the same through the CLI (what the download and extract rules run), an md5 alone will do
    done = CliRunner().invoke(
        main,
        [
            "download",
            "--benchmark",
            "toy",
            "--name",
            "licensed",
            "--source",
            str(path),
            "--md5",
            md5(data),
            "--extract",
            str(raw / "licensed"),
        ],
    )
    assert done.exit_code == 0, done.output
    assert (raw / "licensed" / "toy" / "c" / "3.JPEG").read_bytes() == b"333"


@pytest.mark.parametrize("wrong", ["sha256", "md5", "size"])
def test_a_wrong_stated_sum_is_refused_and_leaves_nothing_behind(toy_benchmark, tmp_path, wrong):
    bench, _ = toy_benchmark
    path, data = fixture_archive(tmp_path)
    stated = {"source": path.as_uri(), "size": len(data), "md5": md5(data), "sha256": sha256(data)}
    stated[wrong] = len(data) + 1 if wrong == "size" else "0" * len(stated[wrong])
    raw = tmp_path / "raw"
    with pytest.raises(UserError, match=f"toy.tar.gz .*: {wrong}"):
        obtain(
            bench,
            "toy",
            source=stated,
            archive=raw / "downloads" / "toy.tar.gz",
            extract_to=raw / "toy",
            progress=False,
            log=quiet,
        )
    with pytest.raises(UserError, match=f"toy.tar.gz: {wrong}"):
        obtain(
            bench,
            "toy",
            source={**stated, "source": str(path)},
            extract_to=raw / "toy",
            progress=False,
            log=quiet,
        )
    assert not [p for p in raw.rglob("*") if not p.is_dir()]  # no archive, .part or member
    assert not (raw / "toy").exists()


@pytest.mark.parametrize(
    "stated, message",
    [
        ({"source": "x.tar.gz", "size": 3}, "must state md5 or sha256"),
        ({"source": "x.tar.gz"}, "must state md5 or sha256"),
        ({"size": 3, "md5": "0" * 32}, "presets.toy.data.toy.source: expected the path"),
        ({"source": "x.tar.gz", "md5": "abc"}, "md5: expected 32 hexadecimal digits"),
        ({"source": "x.tar.gz", "sha1": "0" * 40}, "unknown keys"),
    ],
)
def test_a_stated_source_without_a_valid_checksum_is_refused(
    toy_benchmark, tmp_path, stated, message
):
    bench, _ = toy_benchmark
    with pytest.raises(UserError, match=message) as error:
        obtain(
            bench, "toy", source=stated, archive=tmp_path / "got.tar.gz", progress=False, log=quiet
        )
    assert "presets.toy.data.toy" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "got.tar.gz").exists()


def test_a_stated_folder_is_refused_as_it_has_no_checksum(toy_benchmark, tmp_path):
    bench, _ = toy_benchmark
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="a folder has no checksum"):
        obtain(
            bench,
            "toy",
            source={"source": str(tmp_path / "folder"), "md5": "0" * 32},
            extract_to=tmp_path / "raw" / "toy",
            progress=False,
            log=quiet,
        )


def test_params_schema_refuses_a_stated_source_without_a_checksum():
    from flyp.workflow.config import read_yaml, validate
    from tests.conftest import ROOT

    schema = read_yaml(ROOT / "workflow/schemas/params.schema.yaml")
    params = read_yaml(ROOT / "params.yaml")
    data = params["presets"]["imagenet"]["data"]
    data["imagenet_val"] = {"source": "/a/ILSVRC2012_img_val.tar", "size": 3, "sha256": "0" * 64}
    validate(params, schema)
    data["imagenet_val"] = {"source": "/a/ILSVRC2012_img_val.tar", "size": 3}
    with pytest.raises(UserError, match="presets.imagenet.data.imagenet_val"):
        validate(params, schema)
