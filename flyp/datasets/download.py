"""Fetching and unpacking the archives of the real benchmarks.

A benchmark lists its archives as ``Download`` records (name, URL, size, checksums). The download
rules (``workflow/rules/download.smk``) run ``flyp download`` once per archive:

- ``fetch`` copies a URL (http, https, file) or a local file to a destination with a progress bar,
  resuming a partial download (``<dest>.part``, HTTP ``Range``), and renames it into place only once
  its size and checksums match. A mismatch is a one-line ``UserError`` and leaves no file behind.
- ``extract_archive`` unpacks a tar (plain or compressed) or zip (a lone ``.gz`` file is
  decompressed, a ``.mat`` file copied) into a fresh folder beside the target and renames it into
  place only on success. Members are written by this code, never by
  ``tarfile.extractall``: absolute names, ``..`` components, links and device files are refused, so
  no archive can write outside its folder.

Where each archive comes from is ``presets.<benchmark>.data.<name>`` in params.yaml
(``source_key``): null takes the official URL; otherwise a local archive (read where it is), a
folder it was already extracted to (linked, not copied) or a mirror URL (``https://``, or
``file://`` for a file on this machine; fetched like the official one). Archives without a URL
(the ImageNet archives need an image-net.org account, ObjectNet a password) must be set there.
Any of these is checked against the size and checksums pinned for the real archive. A mapping
``{source: ..., size: ..., md5: ..., sha256: ...}`` states the sums of another file instead (a
fixture, a repacked copy): they replace the pinned ones, and at least one checksum must be stated,
so that no file is ever taken unchecked.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from flyp.datasets import Benchmark, Download
from flyp.io import UserError
from flyp.progress import progress_bar

CHUNK = 1 << 20
USER_AGENT = "flyp-download/0.1 (python urllib)"
LINKED_SOURCE = "source"  # name of the link a folder source gets inside its raw folder
PLAIN_SUFFIXES = (".mat",)  # downloads that are data files, not archives: "extracted" as they are


# ----------------------------------------------------------------------------------------------
# Sources


def source_key(bench: Benchmark, download: Download) -> str:
    """The params key that overrides where ``download`` comes from."""
    return f"presets.{bench.name}.data.{download.name}"


def get_download(bench: Benchmark, name: str) -> Download:
    for d in bench.downloads:
        if d.name == name:
            return d
    raise UserError(
        f"benchmark {bench.name!r} has no archive {name!r}; "
        f"expected one of {[d.name for d in bench.downloads]}"
    )


def is_remote(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme in ("http", "https")


def local_source(source: str | None) -> Path | None:
    """The local path ``source`` names (a plain path or a file:// URL); None for a remote URL."""
    if not source:
        return None
    parts = urllib.parse.urlsplit(source)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme and len(parts.scheme) > 1:  # (one letter: a Windows drive)
        raise UserError(f"{source}: unsupported URL scheme {parts.scheme!r} (http, https, file)")
    return Path(source)


HEX_DIGITS = {"md5": 32, "sha256": 64}


def resolve_source(
    download: Download, value: str | Mapping | None, what: str = "source"
) -> tuple[str | None, dict]:
    """(where the archive comes from, the size and checksums it must match) for ``value``, what
    params.yaml says about it (``what`` names the key in errors): null (the official URL), a
    string (a path or URL) or a mapping ``{source, size, md5, sha256}``. A string is checked
    against the real archive's pinned sums; a mapping's stated sums replace them (a sum it leaves
    out is not checked), and it must state a checksum: a size alone cannot tell two files apart."""
    pinned = dict(size=download.size, md5=download.md5, sha256=download.sha256)
    if value is None or isinstance(value, str):
        return value or None, pinned
    if not isinstance(value, Mapping):
        raise UserError(
            f"{what}: expected a path, a URL or a mapping {{source, size, md5, "
            f"sha256}}; got {value!r}"
        )
    unknown = sorted(set(value) - {"source", *pinned})
    if unknown:
        raise UserError(f"{what}: unknown keys {unknown}; expected source, size, md5, sha256")
    location = value.get("source")
    if not isinstance(location, str) or not location:
        raise UserError(f"{what}.source: expected the path or URL of the archive")
    if not (value.get("md5") or value.get("sha256")):
        raise UserError(
            f"{what}: a source with its own sums must state md5 or sha256 "
            f"(the pinned checksums of {download.name} do not apply to it)"
        )
    for kind, digits in HEX_DIGITS.items():
        digest = value.get(kind)
        if digest is not None and not re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", str(digest)):
            raise UserError(f"{what}.{kind}: expected {digits} hexadecimal digits; got {digest!r}")
    size = value.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise UserError(f"{what}.size: expected a number of bytes; got {size!r}")
    return location, {k: value.get(k) for k in pinned}


def read_in_place(source: str | None) -> Path | None:
    """The local archive or folder a source names, when it is read where it is (a plain path, or
    a folder given as a file:// URL); None when it is fetched (an http(s):// URL, or a file://
    URL to a file, which is a mirror like any other)."""
    local = local_source(source)
    if local is None or (
        urllib.parse.urlsplit(str(source)).scheme == "file" and not local.is_dir()
    ):
        return None
    return local


def archive_filename(download: Download, source: str | None = None) -> str:
    """File name of the archive once fetched: the last part of its URL (keeps the extension that
    says its format), or the download's name when there is no URL."""
    url = source or download.url
    if url:
        name = PurePosixPath(urllib.parse.urlsplit(url).path).name
        if name and name not in (".", "..") and "." in name:  # (codalab URLs end in ".../blob/")
            return name
    return download.name


def not_downloadable(bench: Benchmark, download: Download) -> UserError:
    get = f"get {download.manual}, then " if download.manual else ""
    return UserError(
        f"{download.name} cannot be downloaded automatically: {get}set "
        f"{source_key(bench, download)} in params.yaml to the path of the archive "
        f"(or of the folder it was extracted to)"
    )


# ----------------------------------------------------------------------------------------------
# Verification


def _human(n: int) -> str:
    return f"{n:,} bytes"


def verify(
    path: str | Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    what: str | None = None,
    progress: bool = True,
) -> None:
    """Raise a UserError naming ``what`` (default: the file) unless size and checksums match."""
    path = Path(path)
    what = what or str(path)
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise UserError(
            f"{what}: size {_human(actual)}, expected {_human(size)} (incomplete or wrong file)"
        )
    hashes = {k: hashlib.new(k) for k, v in (("md5", md5), ("sha256", sha256)) if v}
    if not hashes:
        return
    with (
        open(path, "rb") as f,
        progress_bar(
            total=actual,
            unit="B",
            unit_scale=True,
            disable=not progress,
            desc=f"checking {path.name}",
            leave=False,
        ) as bar,
    ):
        while block := f.read(CHUNK):
            for h in hashes.values():
                h.update(block)
            bar.update(len(block))
    for kind, expected in (("md5", md5), ("sha256", sha256)):
        if kind in hashes and hashes[kind].hexdigest() != expected.lower():
            raise UserError(
                f"{what}: {kind} {hashes[kind].hexdigest()}, expected {expected} "
                f"(corrupted or tampered file)"
            )


# ----------------------------------------------------------------------------------------------
# Fetching


def _open_remote(url: str, offset: int, timeout: float):
    """(response, offset it starts at, total size or None). A server that ignores Range answers
    200 with the whole file: the caller then starts over."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left after offset: the .part is complete (or longer)
            return None, offset, None
        raise
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            response.close()
            raise UserError(
                f"{url}: server resumed at the wrong offset "
                f"({response.headers.get('Content-Range')!r}, asked {offset})"
            )
        total = None if match.group(2) == "*" else int(match.group(2))
        return response, offset, total
    return response, 0, int(length) if length else None


def _open_local(path: Path, offset: int):
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    f = open(path, "rb")
    total = path.stat().st_size
    offset = min(offset, total)
    f.seek(offset)
    return f, offset, total


def fetch(
    source: str | Path,
    dest: str | Path,
    *,
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60,
    retries: int = 3,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Copy ``source`` (http(s):// or file:// URL, or a local path) to ``dest``, verified.

    Bytes go to ``<dest>.part`` first; a rerun (or a retry after a dropped connection) resumes from
    its end. ``dest`` appears only once size and checksums match; on a mismatch both files are
    removed (a corrupt ``.part`` must not be resumed) and a UserError names the source.
    """
    dest = Path(dest)
    source = str(source)
    if dest.exists():
        try:
            verify(dest, size=size, md5=md5, sha256=sha256, what=str(dest), progress=progress)
            log(f"{dest}: already there, verified")
            return dest
        except UserError as e:
            log(f"{e}; fetching it again")
            dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _download(source, part, dest.name, timeout=timeout, retries=retries, progress=progress, log=log)
    if not part.exists():
        part.touch()
    try:
        verify(
            part,
            size=size,
            md5=md5,
            sha256=sha256,
            what=f"{dest} (from {source})",
            progress=progress,
        )
    except UserError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _download(
    source: str,
    part: Path,
    name: str,
    *,
    timeout: float,
    retries: int,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """The bytes of ``source`` into ``part``, from its end on; after a dropped connection up to
    ``retries`` more tries (none after an HTTP error, nor from a local file), which wait 1, 2, 4
    ... (at most 30) seconds."""
    local = local_source(source)
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            _copy_from(source, local, part, name, offset, timeout, progress, log)
            return
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            if isinstance(e, urllib.error.HTTPError) or attempt == retries or local is not None:
                reason = (
                    f"HTTP {e.code} {e.reason}"
                    if isinstance(e, urllib.error.HTTPError)
                    else getattr(e, "reason", None) or e
                )
                keep = " (the partial download is kept; rerun to resume)" if part.exists() else ""
                raise UserError(f"{source}: download failed: {reason}{keep}") from None
            log(f"{source}: {e}; retrying ({attempt + 1}/{retries})")
            time.sleep(min(2**attempt, 30))


def _copy_from(
    source: str,
    local: Path | None,
    part: Path,
    name: str,
    offset: int,
    timeout: float,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """One try: ``source`` (the file ``local``, or a URL) from byte ``offset`` into ``part``,
    which the server may make start over (it cannot resume). A connection closed before the
    announced size is a ConnectionError."""
    if local is not None:
        stream, start, total = _open_local(local, offset)
    else:
        stream, start, total = _open_remote(source, offset, timeout)
    if stream is None:  # nothing left after offset
        return
    if offset and start == 0:
        log(f"{source}: the server cannot resume; starting over")
    if offset and start:
        log(f"{name}: resuming at {_human(start)}")
    with (
        stream,
        open(part, "r+b" if start else "wb") as out,
        progress_bar(
            total=total,
            initial=start,
            unit="B",
            unit_scale=True,
            disable=not progress,
            desc=name,
        ) as bar,
    ):
        out.seek(start)
        out.truncate()
        while block := stream.read(CHUNK):
            out.write(block)
            bar.update(len(block))
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(
            f"connection closed at {_human(part.stat().st_size)} of {_human(total)}"
        )


# ----------------------------------------------------------------------------------------------
# Safe extraction


def safe_member_path(name: str, archive: str | Path) -> PurePosixPath | None:
    """The relative path a member may be written to; None for the archive's root ("./").
    Absolute names, drive letters and ``..`` components are refused."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        raise UserError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in normalized.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UserError(
            f"{archive}: member {name!r} points outside the archive's folder; refusing to extract"
        )
    return PurePosixPath(*parts) if parts else None


class _Counting:
    """A read-only file wrapper that reports bytes read (progress of a streamed archive)."""

    def __init__(self, f, bar):
        self.f, self.bar = f, bar

    def read(self, n=-1):
        data = self.f.read(n)
        self.bar.update(len(data))
        return data


def _write_member(root: Path, rel: PurePosixPath, stream) -> None:
    out = root.joinpath(*rel.parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        shutil.copyfileobj(stream, f, CHUNK)


def _extract_tar_stream(tar: tarfile.TarFile, root: Path, archive: str, inner_tars: bool) -> int:
    """Write the members of a streamed tar under ``root``; returns the number of files."""
    files = 0
    for member in tar:
        rel = safe_member_path(member.name, archive)
        if member.issym() or member.islnk():
            raise UserError(
                f"{archive}: member {member.name!r} is a link (to "
                f"{member.linkname!r}); links are refused"
            )
        if not (member.isfile() or member.isdir()):
            raise UserError(
                f"{archive}: member {member.name!r} is not a regular file or folder; "
                f"refusing to extract"
            )
        if rel is None:
            continue
        if member.isdir():
            root.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
            continue
        stream = tar.extractfile(member)
        if inner_tars and rel.suffix == ".tar":
            # ImageNet train: one tar per class, unpacked into a folder named after it.
            with tarfile.open(fileobj=stream, mode="r|*") as inner:
                files += _extract_tar_stream(
                    inner, root / rel.with_suffix(""), f"{archive}:{rel}", False
                )
            continue
        _write_member(root, rel, stream)
        files += 1
    return files


def _extract_zip(path: Path, root: Path, bar) -> int:
    files = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            rel = safe_member_path(info.filename, path)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UserError(f"{path}: member {info.filename!r} is a link; links are refused")
            if info.flag_bits & 0x1:
                raise UserError(
                    f"{path}: the archive is password-protected; unzip it yourself "
                    f"and give the extracted folder as the source"
                )
            if rel is None:
                continue
            if info.is_dir():
                root.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
            else:
                with zf.open(info) as stream:
                    _write_member(root, rel, stream)
                files += 1
            bar.update(info.compress_size)
    return files


def archive_format(path: Path) -> str:
    """ "zip" or "tar", from the name when it says, else from the content."""
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if re.search(r"\.(tar|tgz|tar\.gz|tar\.bz2|tbz2|tar\.xz|txz)$", name):
        return "tar"
    if tarfile.is_tarfile(path):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if name.endswith(".gz"):
        return "gzip"  # one compressed file (PatchCamelyon's .h5.gz)
    if name.endswith(PLAIN_SUFFIXES):
        return "file"  # a data file, not an archive (Flowers102's .mat labels)
    raise UserError(f"{path}: not a tar or zip archive")


def _extract_single(path: Path, root: Path, kind: str, bar) -> int:
    """Write a lone (gzip-compressed or plain) file into ``root``; returns 1."""
    name = path.name[:-3] if kind == "gzip" else path.name
    with (gzip.open if kind == "gzip" else open)(path, "rb") as stream:
        _write_member(root, safe_member_path(name, path), stream)
    bar.update(path.stat().st_size)
    return 1


def extract_archive(
    archive: str | Path,
    target: str | Path,
    *,
    inner_tars: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Unpack ``archive`` into the folder ``target`` (created; must not exist yet).

    Members are written into a temporary folder beside ``target``, renamed to ``target`` only when
    every member was read: a failure (corrupt archive, refused member, full disk) leaves nothing.
    ``inner_tars``: members that are themselves ``.tar`` files are unpacked into a folder of their
    stem instead of being written (ImageNet train: one tar per class).
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise UserError(f"{archive}: archive not found")
    if target.exists():
        raise UserError(f"{target}: already exists; remove it to extract again")
    target.parent.mkdir(parents=True, exist_ok=True)
    kind = archive_format(archive)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
    try:
        with progress_bar(
            total=archive.stat().st_size,
            unit="B",
            unit_scale=True,
            disable=not progress,
            desc=f"extracting {archive.name}",
        ) as bar:
            if kind == "zip":
                files = _extract_zip(archive, tmp, bar)
            elif kind in ("gzip", "file"):
                files = _extract_single(archive, tmp, kind, bar)
            else:
                with (
                    open(archive, "rb") as raw,
                    tarfile.open(fileobj=_Counting(raw, bar), mode="r|*") as tar,
                ):
                    files = _extract_tar_stream(tar, tmp, str(archive), inner_tars)
        os.replace(tmp, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"extracted {files} files from {archive} into {target}")
    return target


def link_folder(source: str | Path, target: str | Path, log: Callable[[str], None] = print) -> Path:
    """Make ``target`` a folder holding one link, ``source``, to an already extracted folder (the
    data stays where it is; tools that write into ``target`` never touch the user's copy)."""
    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise UserError(f"{source}: folder not found")
    if target.exists():
        raise UserError(f"{target}: already exists; remove it to link again")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".linking", dir=target.parent))
    try:
        (tmp / LINKED_SOURCE).symlink_to(source.absolute(), target_is_directory=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"linked {target / LINKED_SOURCE} -> {source.absolute()}")
    return target


# ----------------------------------------------------------------------------------------------
# One archive of a benchmark (what `flyp download` runs)


def obtain(
    bench: Benchmark,
    name: str,
    *,
    source: str | Mapping | None = None,
    archive: str | Path | None = None,
    extract_to: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> None:
    """Fetch archive ``name`` of ``bench`` into ``archive`` and/or unpack it into ``extract_to``.

    ``source`` overrides the official URL: a path or URL, or a mapping that also states the sums
    (see the module docstring and ``resolve_source``). Unpacking reads ``archive`` when given,
    else a local ``source``; a folder source is linked, not copied. Size and checksums are checked
    before anything is unpacked.
    """
    download = get_download(bench, name)
    if archive is None and extract_to is None:
        raise UserError("nothing to do: give --archive (fetch) and/or --extract (unpack)")
    stated = isinstance(source, Mapping)
    source, sums = resolve_source(download, source, source_key(bench, download))
    origin = source or download.url
    if archive is not None:
        if origin is None:
            raise not_downloadable(bench, download)
        local = local_source(origin)
        if local is not None and local.is_dir():
            raise UserError(
                f"{local}: a folder cannot be fetched as an archive; it is linked by --extract"
            )
        archive = fetch(origin, archive, **sums, progress=progress, log=log)
    if extract_to is None:
        return
    if archive is None:
        local = local_source(origin)
        if origin is None:
            raise not_downloadable(bench, download)
        if local is None:
            raise UserError(f"{origin}: a remote source must be fetched first (--archive)")
        if local.is_dir():
            if stated:  # (its sums could never be checked)
                raise UserError(
                    f"{local}: a folder has no checksum; give it as a plain path, "
                    f"not with stated sums ({source_key(bench, download)})"
                )
            link_folder(local, extract_to, log=log)
            return
        if not local.is_file():
            raise UserError(f"{local}: archive not found (set by {source_key(bench, download)})")
        verify(local, **sums, what=str(local), progress=progress)
        archive = local
    # (a fetched archive was verified by fetch)
    extract_archive(archive, extract_to, inner_tars=download.inner_tars, progress=progress, log=log)
