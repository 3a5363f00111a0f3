"""One resolver for every media reference a record or a sample can hold.

The datasets, the model transform's ``image`` / ``image_url`` / ``video`` content and ``load_image`` all read media
references through ``resolve_media``, so a reference means the same thing wherever it appears:

- a PIL image, raw bytes (``bytes``/``bytearray``/``memoryview``) or a uint8 tensor: used as given;
- a plain path, or a ``file://`` URI (RFC 8089, percent-encoded: ``file:///data/my%20cat.png``; host empty or
  ``localhost``), the form of Qwen's own message examples;
- a ``data:`` URL (RFC 2397), base64 or percent-encoded;
- an HF ``datasets.Image`` dict ``{"bytes": ..., "path": ...}`` (bytes win when both are set, as in ``datasets``)
  or an OpenAI ``{"url": ...}`` dict, each unwrapped and resolved like its content.

http(s) and every other remote scheme are refused: nothing is ever fetched. Paths (plain, ``file://``, inside a
dict) follow one rule. With an ``image_dir`` (the datasets: references come from data files, which must not make
us read arbitrary files) a relative path is taken under ``image_dir``, an absolute one is kept, and either is
refused unless its real path (symlinks followed) lies inside ``image_dir``. Without one (a sample built by the
caller's own code) paths are used as given, relative ones against the working directory.

Whatever is read must be a regular file: FIFOs, directories, devices and sockets are refused from ``os.stat``,
before anything opens them (opening a FIFO blocks until a writer appears, so a stray pipe would hang a run).
"""

import base64
import binascii
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from typing import Any, BinaryIO

import torch
from PIL import Image

from qwenvl_data.errors import ImageLoadError, UnsafePathError, VideoLoadError

ResolvedMedia = Image.Image | bytes | str | torch.Tensor

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def shown(reference: str, limit: int = 80) -> str:
    """``reference`` quoted for an error message, shortened (a data URL can be megabytes long)."""
    return repr(reference if len(reference) <= limit else reference[:limit] + "...")


def _load_error(what: str) -> type[ImageLoadError]:
    """The error for a medium called ``what``: a video's is ``VideoLoadError`` (its own skip cause, ``bad_video``)."""
    return VideoLoadError if what.startswith("video") else ImageLoadError


def resolve_media(value: Any, image_dir: str | os.PathLike | None = None, what: str = "image") -> ResolvedMedia:
    """What a media reference points at: a PIL image, encoded bytes, a uint8 tensor or a file's path.

    Args:
        value: any reference listed in the module docstring.
        image_dir: the directory every path must resolve inside (datasets), or None for no confinement.
        what: how error messages call the medium ("image", "video").

    Returns:
        PIL.Image.Image | bytes | torch.Tensor as given (dicts and data URLs unwrapped to bytes), or a path:
        with ``image_dir`` the real absolute path inside it, without one the path as given. A path is not
        checked here for being a regular file: readers do that just before opening it (``open_regular_file``,
        ``media_file``), so that a record's reference resolves without touching the file.

    Raises:
        ImageLoadError: a remote URL, a malformed data URL or ``file://`` URI, a dict without a payload, or a
            value of an unsupported type; the message names the reference.
        UnsafePathError: a path (of any form) that resolves outside ``image_dir``.
    """
    if isinstance(value, (Image.Image, torch.Tensor)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        return _resolve_dict(value, image_dir, what)
    if isinstance(value, os.PathLike):
        return _confine(os.fspath(value), image_dir)
    if isinstance(value, str):
        scheme = _URL_SCHEME.match(value)
        name = scheme.group(1).lower() if scheme else None
        if name == "data":
            return data_url_bytes(value, what)
        if name == "file":
            return _confine(_file_uri_path(value, what), image_dir)
        if scheme and value[scheme.end() : scheme.end() + 2] == "//":
            raise _load_error(what)(
                f"{what} {shown(value)} is a remote {name} URL: nothing is fetched (this library never "
                f"downloads); download the file and reference it by path"
            )
        return _confine(value, image_dir)
    raise _load_error(what)(
        f"{what} reference of type {type(value).__name__} is not supported (expected a path, file:// URI, "
        f"data URL, bytes, PIL image or {{'bytes', 'path'}} dict)"
    )


def _resolve_dict(value: Mapping, image_dir: str | os.PathLike | None, what: str) -> ResolvedMedia:
    """An HF ``{"bytes", "path"}`` dict or an OpenAI ``{"url"}`` dict, resolved like its content."""
    if value.get("bytes") is not None:
        return resolve_media(value["bytes"], image_dir, what)
    reference = value.get("path") if value.get("path") is not None else value.get("url")
    if reference is None:
        raise _load_error(what)(f"{what} dict with neither 'bytes', 'path' nor 'url' set (keys {sorted(value)})")
    if isinstance(reference, Mapping):
        raise _load_error(what)(f"{what} dict whose 'path'/'url' is itself a dict: {dict(value)!r}"[:200])
    return resolve_media(reference, image_dir, what)


def data_url_bytes(url: str, what: str = "image") -> bytes:
    """The bytes a ``data:[<type>][;base64],<data>`` URL holds (RFC 2397; the data is percent-decoded first)."""
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise _load_error(what)(f"{what} data URL {shown(url)} has no ',' before its data")
    data = urllib.parse.unquote_to_bytes(payload)
    if not header.lower().endswith(";base64"):
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise _load_error(what)(f"{what} data URL {shown(url)} is not valid base64: {error}") from error


def _file_uri_path(uri: str, what: str) -> str:
    """The local path of a ``file:`` URI, percent-decoded; a URI naming another host is refused."""
    rest = uri[len("file:") :]
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise _load_error(what)(
                f"{what} {shown(uri)} is a remote file URI (host {host!r}): nothing is fetched, "
                f"only local files are read"
            )
        rest = slash + path
    if not rest:
        raise _load_error(what)(f"{what} {shown(uri)}: file URI without a path")
    return urllib.parse.unquote(rest)


def _confine(path: str, image_dir: str | os.PathLike | None) -> str:
    """``path`` resolved under ``image_dir`` and refused if it leaves it; unchanged without ``image_dir``."""
    if "\0" in path:
        raise UnsafePathError(f"media path {shown(path)} contains a NUL byte")
    if image_dir is None:
        return path
    root = os.path.realpath(image_dir)
    # realpath follows symlinks, so a link inside image_dir pointing outside is caught too.
    resolved = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, resolved]) != root:
        raise UnsafePathError(
            f"media path {shown(path)} resolves to {resolved!r}, outside image_dir {root!r}: media are read only "
            f"under image_dir (a link out of it too); to read it, copy the file under image_dir, or set the "
            f"dataset's image_dir (dataset.image_dir=<directory> in a recipe config) to a directory holding all "
            f"its media, relative paths included"
        )
    return resolved


def media_file(
    value: Any, image_dir: str | os.PathLike | None = None, what: str = "video", allow_directory: bool = False
) -> str:
    """The path of a reference that must name a local file (a video file, a folder of frames), checked.

    Args:
        value: a path, ``file://`` URI or ``{"path"}`` dict (see ``resolve_media``).
        image_dir: as in ``resolve_media``.
        what: how error messages call the medium.
        allow_directory: accept a directory too.

    Returns:
        str: the path, a regular file (or directory) that exists.

    Raises:
        ImageLoadError: the reference is not a path (bytes, a PIL image...), or ``require_file`` refuses it.
        UnsafePathError: the path escapes ``image_dir``.
    """
    path = resolve_media(value, image_dir, what)
    if not isinstance(path, str):
        raise _load_error(what)(f"a {what} file must be given by its path or file:// URI, got {type(value).__name__}")
    require_file(path, what, allow_directory)
    return path


def require_file(path: str, what: str = "image", allow_directory: bool = False) -> None:
    """Check that ``path`` is a regular file (or, with ``allow_directory``, a directory) without opening it.

    Args:
        path: the file's path.
        what: how the error message calls the medium.
        allow_directory: accept a directory too (a video given as a folder of frames).

    Raises:
        ImageLoadError: the path does not exist, cannot be examined, or is a FIFO, socket, device or (unless
            allowed) directory; the message names the path and what it is.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError as error:
        raise _load_error(what)(f"{what} file {path} does not exist") from error
    except OSError as error:
        raise _load_error(what)(f"{what} file {path} cannot be examined: {error.strerror or error}") from error
    if stat.S_ISREG(status.st_mode) or (allow_directory and stat.S_ISDIR(status.st_mode)):
        return
    kind = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "not a regular file")
    raise _load_error(what)(f"{what} file {path} is {kind}, not a regular file; it is not opened")


def open_regular_file(path: str, what: str = "image") -> BinaryIO:
    """Open ``path`` for reading once ``require_file`` has found it to be a regular file.

    The file is opened non-blocking and checked again on the open descriptor, so a file swapped for a FIFO between
    the check and the open is refused too instead of hanging.

    Raises:
        ImageLoadError: as ``require_file``, or the file cannot be opened (permissions).
    """
    require_file(path, what)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise _load_error(what)(f"{what} file {path} cannot be read: {error.strerror or error}") from error
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise _load_error(what)(f"{what} file {path} stopped being a regular file while it was opened; it is not read")
    return os.fdopen(descriptor, "rb")
