"""Files that appear complete or not at all, and their checksums."""
import contextlib
import hashlib
import json
import os

__all__ = ["atomic_write", "atomic_write_json", "fsync_dir", "fsync_file", "replacing",
           "sha256_file"]


def fsync_dir(path):
    """Flushes a directory's entries (a rename in it) to disk, where the platform allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms; rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path):
    """Flushes a file's content to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(*paths):
    """Yields one temporary path per target in ``paths``; the body writes them.

    On normal exit every temporary file is flushed to disk and renamed onto its target, in the
    order given; until then each target keeps its previous content. On any exception
    (KeyboardInterrupt included) the temporary files are removed and the exception propagates.
    Temporary names sit next to their targets (same file system, so the rename is atomic).
    """
    temps = [os.path.join(os.path.dirname(os.path.abspath(path)),
                          f".{os.path.basename(path)}.tmp-{os.getpid()}") for path in paths]
    try:
        yield temps
        for temp in temps:
            fsync_file(temp)
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    finally:
        for temp in temps:
            if os.path.exists(temp):
                os.remove(temp)
    for directory in {os.path.dirname(os.path.abspath(path)) for path in paths}:
        fsync_dir(directory)


def atomic_write(path, write):
    """Calls ``write(temp_path)`` (which creates the file) and moves the result onto ``path``
    atomically; see :func:`replacing`."""
    with replacing(path) as (temp,):
        write(temp)


def atomic_write_json(path, obj):
    """Writes ``obj`` as indented JSON to ``path`` atomically."""
    def write(temp):
        with open(temp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    atomic_write(path, write)


def sha256_file(path, chunk_size=1 << 20):
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
