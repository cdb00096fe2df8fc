"""Where inputs live: resolve SRC arguments to URIs, and read bytes from local disk or object storage.

Local files are named ``file://`` + the percent-encoded bytes of the absolute path, so a
name that is not valid UTF-8 round-trips losslessly. Object storage goes through
``pyarrow.fs`` (``s3://bucket/key`` or ``gs://bucket/key``, keys as written; the S3 endpoint
comes from ``AWS_ENDPOINT_URL`` when set).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fnmatch
import functools
import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from urllib.parse import quote, unquote_to_bytes

import pyarrow.fs as pafs

AUDIO_EXTENSIONS = frozenset(
    {"mp3", "flac", "ogg", "oga", "opus", "wav", "wave", "m4a", "mp4", "aac", "aif", "aiff", "wma", "webm", "mka"}
)
LIST_SUFFIXES = (".txt", ".csv", ".parquet")


class SourceError(ValueError):
    """A SRC argument that cannot be resolved; the message names it."""


def path_to_uri(path: str | os.PathLike) -> str:
    raw = os.fsencode(os.path.abspath(os.fsdecode(path)))
    return "file://" + quote(raw, safe="/")


def uri_to_path(uri: str) -> str:
    """The local path (a str, surrogate-escaped where the bytes are not UTF-8) of a ``file://`` URI."""
    if not uri.startswith("file://"):
        raise ValueError(f"not a local file URI: {uri}")
    return os.fsdecode(unquote_to_bytes(uri[len("file://") :]))


def local_folder(value: str, name: str) -> Path:
    """The output folder ``value`` (named ``name`` in errors, e.g. ``--out``) as a resolved Path.
    Outputs are written to local or mounted file systems: a URI is refused here, where
    ``Path`` would have made ``s3://bucket/x`` a folder ``s3:/bucket/x`` under the working one."""
    if "://" in value:
        hint = (
            f"write {uri_to_path(value)}"
            if value.startswith("file://")
            else "mount the bucket, or write to a shared folder and copy"
        )
        raise ValueError(f"{name} {value}: outputs go to a folder on a local or mounted file system ({hint})")
    return Path(value).expanduser().resolve()


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def has_audio_extension(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in AUDIO_EXTENSIONS if "." in name else False


BUCKET_SCHEMES = ("s3", "gs", "gcs")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path within it)`` for a remote URI.

    ``s3://`` and ``gs://`` keys are taken as they are written, spaces and ``%`` included, as a
    bucket listing gives them (``FileSystem.from_uri`` refuses a space and decodes ``%20``, so a
    catalogue of ``Artist - Title.mp3`` keys could not be read). Their filesystem is built once
    per bucket: its connections are reused, and an S3 bucket's region is looked up once."""
    scheme, _, rest = uri.partition("://")
    if scheme in BUCKET_SCHEMES:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") if scheme == "s3" else None
        return bucket_filesystem(scheme, rest.split("/", 1)[0], endpoint), rest
    try:
        return pafs.FileSystem.from_uri(uri)
    except ValueError as err:  # pyarrow.ArrowInvalid: no filesystem for this scheme, or not a URI
        raise OSError(
            errno.EPROTONOSUPPORT, f"cannot be opened ({err}); use a local path, s3:// or gs://", uri
        ) from None


@functools.lru_cache(maxsize=256)
def bucket_filesystem(scheme: str, bucket: str, endpoint: str | None) -> pafs.FileSystem:
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem()
    if endpoint:
        kind, _, host = endpoint.partition("://")
        return pafs.S3FileSystem(endpoint_override=host or kind, scheme=kind if host else "https")
    try:
        return pafs.S3FileSystem(region=pafs.resolve_s3_region(bucket))
    except (OSError, ValueError):  # not allowed to ask: the default region (AWS_REGION, ...) then
        return pafs.S3FileSystem()


def _read_all(uri: str) -> bytes:
    """The content of an input already known to be a file (see :func:`input_size`)."""
    if uri.startswith("file://"):
        with open(uri_to_path(uri), "rb") as handle:
            return handle.read()
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


STREAM_ABOVE_BYTES = 256 * 1024**2  # larger inputs are decoded from the open file, not from memory


def input_size(uri: str) -> int:
    """Bytes in a ``file://`` or remote input (OSError when it is missing or a folder)."""
    return input_stat(uri)[0]


def input_stat(uri: str) -> tuple[int, int | None]:
    """``(bytes, modification time in ns or None)`` of a ``file://`` or remote input; OSError when
    it is missing or a folder. Together they tell a file replaced under the same name, as rsync's
    quick check does, without reading it."""
    if uri.startswith("file://"):
        path = uri_to_path(uri)
        if os.path.isdir(path):
            raise IsADirectoryError(21, "is a directory, not a file", path)
        stat = os.stat(path)
        if not S_ISREG(stat.st_mode):  # reading a pipe waits for a writer, a device may never end
            from mvssl_dist.audio.decode import special_kind  # (decode's imports are not needed before)

            raise OSError(errno.EINVAL, f"not a regular file but {special_kind(stat.st_mode)}", path)
        return stat.st_size, stat.st_mtime_ns
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(2, "no such file", uri)
    if info.type == pafs.FileType.Directory:
        raise IsADirectoryError(21, "is a directory, not a file", uri)
    return info.size or 0, info.mtime_ns


def open_input(uri: str):
    """A seekable binary file of a ``file://`` or remote input (the caller closes it)."""
    if uri.startswith("file://"):
        return open(uri_to_path(uri), "rb")
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


@contextlib.contextmanager
def decoding_input(uri: str, stream_above: int | None = None) -> Iterator[tuple]:
    """``with decoding_input(uri) as (source, sha256_hex, size, mtime_ns):`` an input, to hash and
    decode; its size and modification time are taken before it is read (see :func:`input_stat`).

    Up to ``stream_above`` bytes (default :data:`STREAM_ABOVE_BYTES`) the source is the file's
    bytes, read once. A larger input is hashed in a streamed pass and the source is the open
    file (closed on leaving the block), so a multi-GB master needs no more of a worker's memory
    than its decoded 16 kHz audio (from memory the decoder also copies the bytes once).
    OSError when the input cannot be read."""
    limit = STREAM_ABOVE_BYTES if stream_above is None else stream_above
    size, mtime_ns = input_stat(uri)  # also refuses a folder or a missing file
    if size <= limit:
        data = _read_all(uri)
        yield data, hashlib.sha256(data).hexdigest(), len(data), mtime_ns
        return
    digest = hashlib.sha256()
    with open_input(uri) as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    with open_input(uri) as handle:
        yield handle, digest.hexdigest(), size, mtime_ns


@dataclass
class Sources:
    """What SRC arguments name: the inputs, and the files a folder walk passed over because their
    names have no audio extension (``cover.jpg``, but also audio stored under hash names)."""

    uris: list[str] = field(default_factory=list)
    other_files: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes, where a bucket listing gave them
    mtimes: dict[str, int] = field(default_factory=dict)  # modification times (ns), from the same listing
    walked: list[tuple[str, str | None]] = field(default_factory=list)  # (bucket prefix, pattern) listed whole

    def listed_gone(self, uri: str) -> bool:
        """A key under a bucket prefix this walk listed whole (matching its pattern), yet not listed:
        it is gone. Keys elsewhere, or named in a list file, are not known either way."""
        return uri not in self.sizes and any(
            uri.startswith(root) and (pattern is None or fnmatch.fnmatch(uri.split("://", 1)[1], pattern))
            for root, pattern in self.walked
        )


def _walk_local(root: str, found: Sources, skip: frozenset = frozenset()) -> None:
    """Audio files under ``root``; directories whose names look like audio are inputs too
    (they will be rejected as unreadable rather than silently walked into).

    Symbolic links to folders are followed (catalogues on shared disks are often assembled that
    way), each folder once: a link back up the tree, or a second link to one folder, adds nothing.
    Folders are walked in name order, so a re-run lists the same paths. A folder that cannot be
    listed stops the walk with one line: its files would otherwise be left out in silence.
    ``skip``: folders (as ``(st_dev, st_ino)``) not to walk, such as the run's own output folder."""
    inputs, others, seen = [], [], set(skip)

    def unlisted(err: OSError) -> None:
        raise SourceError(f"{err.filename}: cannot list this folder ({err.strerror or err}); its files would be missed")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted, followlinks=True):
        try:
            folder = os.stat(dirpath)
        except OSError as err:
            unlisted(err)
        if (folder.st_dev, folder.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((folder.st_dev, folder.st_ino))
        for name in dirnames:
            if has_audio_extension(name):
                inputs.append(os.path.join(dirpath, name))
        dirnames[:] = sorted(d for d in dirnames if not has_audio_extension(d))
        for name in filenames:
            (inputs if has_audio_extension(name) else others).append(os.path.join(dirpath, name))
    found.uris += [path_to_uri(p) for p in sorted(inputs)]
    found.other_files += [path_to_uri(p) for p in sorted(others)]


def _walk_remote(uri: str, found: Sources, pattern: str | None = None) -> None:
    fs, path = filesystem(uri)
    scheme = uri.split("://", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=False))
    found.walked.append((f"{scheme}://{path.rstrip('/')}/", pattern))
    inputs, others = [], []
    for info in infos:
        if info.type != pafs.FileType.File or (pattern and not fnmatch.fnmatch(info.path, pattern)):
            continue
        if has_audio_extension(info.base_name):
            inputs.append(f"{scheme}://{info.path}")
            found.sizes[inputs[-1]] = info.size
            if info.mtime_ns is not None:
                found.mtimes[inputs[-1]] = info.mtime_ns
        else:
            others.append(f"{scheme}://{info.path}")
    found.uris += sorted(inputs)
    found.other_files += sorted(others)


def _read_list_file(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))

    def to_uri(entry: str) -> str:
        entry = entry.strip()
        if "://" in entry:
            return entry
        return path_to_uri(entry if os.path.isabs(entry) else os.path.join(base, entry))

    if path.endswith(".txt"):
        with open(path, encoding="utf-8-sig", errors="surrogateescape") as handle:  # -sig: a BOM is not a name
            return [to_uri(line) for line in handle if line.strip() and not line.startswith("#")]
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.DictReader(handle)
            reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
            if "uri" not in reader.fieldnames:
                raise SourceError(f"{path}: a list file needs a 'uri' column (found {reader.fieldnames})")
            return [to_uri(row["uri"]) for row in reader if (row["uri"] or "").strip()]  # None: a short row
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "uri" not in table.column_names:
        raise SourceError(f"{path}: a list file needs a 'uri' column (found {table.column_names})")
    return [to_uri(u) for u in table.column("uri").to_pylist() if u]


def find_sources(sources: list[str], output: str | os.PathLike | None = None) -> Sources:
    """Directories (recursive), glob patterns, list files and single files -> ordered unique URIs.

    A file named directly (argument, list file, glob match) is an input whatever its name; a
    folder walk takes the names with an audio extension and lists the others in ``other_files``.
    A walk passes over ``output``, the run's own folder (``mvssl ingest . --out dataset``): its
    index, shards and lock are not inputs.
    """
    found = Sources()
    skip = frozenset()
    if output is not None and os.path.isdir(output):
        folder = os.stat(output)
        skip = frozenset({(folder.st_dev, folder.st_ino)})
    for src in sources:
        if is_remote(src):
            _add_remote(src, found)
        elif os.path.isdir(src) and not has_audio_extension(os.path.basename(os.path.normpath(src))):
            _walk_local(src, found, skip)
        elif src.endswith(LIST_SUFFIXES) and os.path.isfile(src):
            found.uris += _read_list_file(src)
        elif os.path.lexists(src):
            found.uris.append(path_to_uri(src))
        elif any(c in src for c in "*?["):
            matches = sorted(glob.glob(src, recursive=True))
            if not matches:
                raise SourceError(f"{src}: the pattern matches nothing")
            for match in matches:
                if os.path.isdir(match):
                    _walk_local(match, found, skip)
                else:
                    found.uris.append(path_to_uri(match))
        else:
            raise SourceError(f"{src}: no such file, directory or pattern")
    found.uris = list(dict.fromkeys(found.uris))
    taken = set(found.uris)
    found.other_files = [u for u in dict.fromkeys(found.other_files) if u not in taken]
    return found


def _add_remote(src: str, found: Sources) -> None:
    if any(c in src for c in "*?["):
        prefix = src.split("://", 1)[1]
        root = prefix[: min(prefix.find(c) for c in "*?[" if c in prefix)].rsplit("/", 1)[0]
        _walk_remote(f"{src.split('://', 1)[0]}://{root}", found, prefix)
        return
    try:
        fs, path = filesystem(src)
    except OSError as err:
        raise SourceError(f"{src}: {err.strerror}") from None
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"{src}: no such file or prefix")
    if info.type == pafs.FileType.Directory:
        _walk_remote(src, found)
    else:
        found.uris.append(src)


def display_uri(uri: str) -> str:
    """A readable form of a URI for messages (local paths decoded, odd bytes escaped)."""
    if uri.startswith("file://"):
        return os.fsencode(uri_to_path(uri)).decode("utf-8", "backslashreplace")
    return uri


def not_read_message(uris: list[str], most: int = 3) -> str:
    """``2 files in the folders were not read (no audio extension): a.jpg, b``, for one-line reports."""
    names = ", ".join(display_uri(u).rsplit("/", 1)[-1] for u in uris[:most]) + (", ..." if len(uris) > most else "")
    files = "1 file in the folders was" if len(uris) == 1 else f"{len(uris)} files in the folders were"
    return f"{files} not read (no audio extension): {names}"


def local_dir(path: str | os.PathLike) -> Path:
    return Path(os.fsdecode(path)).expanduser().resolve()
