"""Safe resolution of media paths found in data files.

Data files come from outside the project; a record must not make us read arbitrary files, so every
relative or absolute path is resolved (symlinks included) and refused unless it lands inside ``image_dir``.
"""

import os

from qwenvl_data.errors import UnsafePathError


def resolve_media_path(path: str | os.PathLike, image_dir: str | os.PathLike) -> str:
    """Resolve ``path`` against ``image_dir`` and refuse it if it escapes the directory.

    Args:
        path: a path from a record, relative to ``image_dir`` or absolute (then it must lie inside it).
        image_dir: the directory every media file must live in.

    Returns:
        the real (symlink-free) absolute path, guaranteed to be inside ``image_dir``.

    Raises:
        UnsafePathError: when the resolved path (``..``, an absolute path, a symlink) leaves ``image_dir``.
    """
    root = os.path.realpath(image_dir)
    try:
        # realpath follows symlinks, so a link inside image_dir pointing outside is caught too.
        resolved = os.path.realpath(os.path.join(root, os.fspath(path)))
    except ValueError as err:  # e.g. an embedded NUL byte
        raise UnsafePathError(f"media path {path!r} is not a valid path: {err}") from err
    if os.path.commonpath([root, resolved]) != root:
        raise UnsafePathError(f"media path {path!r} resolves to {resolved!r}, outside image_dir {root!r}")
    return resolved
