"""Crash-safe checkpoints: a checkpoint is either completely there or not there at all.

Layout of a checkpoint directory::

    latest.json             the commit record: epoch, sub-directory, SHA-256 of each file
    epoch-0003/net.params   network parameters (``save_parameters``, BN statistics included)
    epoch-0003/trainer.states   optimizer state, update counts and lr schedule
    epoch-0003/meta.json    epoch, schedule position, metrics history, the run's settings (what
                            ``fit`` compares on resume), anything the caller adds

A checkpoint is written into a temporary sub-directory, each file flushed to disk, the directory
renamed into place, and only then is ``latest.json`` replaced (temp file + ``os.replace``) — the
commit. A crash, ``SIGKILL`` or Ctrl-C at any point leaves the previous commit untouched, and
:meth:`CheckpointManager.load` checks the hashes before it changes anything.
"""
import json
import os
import re
import shutil

from ..utils.files import atomic_write_json, fsync_dir, fsync_file, sha256_file

__all__ = ["CheckpointError", "CheckpointManager"]

_NAME = re.compile(r"^epoch-(\d{4,})$")
_FILES = ("net.params", "trainer.states", "meta.json")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupt, or does not fit the network."""


class CheckpointManager:
    """Saves and restores network, trainer and metadata in ``directory``.

    Parameters
    ----------
    directory : str
        Created when missing.
    keep : int
        Committed checkpoints to keep; older ones are deleted after each commit (at least 1).
    """

    def __init__(self, directory, keep=2):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory, self.keep = directory, keep
        self.pointer = os.path.join(directory, "latest.json")

    def latest(self):
        """The commit record (``{"epoch", "dir", "files"}``) or None when nothing is saved."""
        if not os.path.exists(self.pointer):
            return None
        try:
            with open(self.pointer) as f:
                record = json.load(f)
            record["epoch"], record["dir"], record["files"]  # noqa: B018 (shape check)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{self.pointer} is unreadable ({err}); it is only ever "
                                  "replaced atomically, so the file was changed by hand") from err
        return record

    def save(self, epoch, net, trainer, meta):
        """Commits a checkpoint of ``net``, ``trainer`` (a gluon.Trainer) and the JSON-able dict
        ``meta`` (``epoch`` is added to it) as epoch ``epoch``; returns its directory."""
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{epoch:04d}"
        final = os.path.join(self.directory, name)
        temp = os.path.join(self.directory, f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(temp, ignore_errors=True)
        try:
            os.makedirs(temp)
            net.save_parameters(os.path.join(temp, "net.params"))
            trainer.save_states(os.path.join(temp, "trainer.states"))
            with open(os.path.join(temp, "meta.json"), "w") as f:
                # key order kept: the history's rows keep their columns' order across resumes
                json.dump(dict(meta, epoch=epoch), f, indent=1)
            for file in _FILES:
                fsync_file(os.path.join(temp, file))
            hashes = {file: sha256_file(os.path.join(temp, file)) for file in _FILES}
            record = self.latest()
            if os.path.exists(final):
                if record is not None and record["dir"] == name:
                    raise CheckpointError(f"epoch {epoch} is already committed in {final}")
                shutil.rmtree(final)  # left over by a run that died before committing it
            os.rename(temp, final)
            fsync_dir(self.directory)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        atomic_write_json(self.pointer, {"epoch": epoch, "dir": name, "files": hashes})
        self._prune(keep_name=name)
        return final

    def _prune(self, keep_name):
        done = sorted(entry for entry in os.listdir(self.directory) if _NAME.match(entry))
        for entry in done[:-self.keep]:
            if entry != keep_name:
                shutil.rmtree(os.path.join(self.directory, entry), ignore_errors=True)

    def _verified_folder(self):
        record = self.latest()
        if record is None:
            raise CheckpointError(f"no checkpoint in {self.directory} (no latest.json)")
        folder = os.path.join(self.directory, record["dir"])
        for file, digest in record["files"].items():
            path = os.path.join(folder, file)
            if not os.path.exists(path) or sha256_file(path) != digest:
                raise CheckpointError(f"checkpoint file {path} is missing or does not match the "
                                      "hash recorded at commit time")
        return folder

    def read_meta(self):
        """The meta dict of the latest commit, without touching a network (e.g. to compare a
        run's settings before loading); same errors as :meth:`load`."""
        with open(os.path.join(self._verified_folder(), "meta.json")) as f:
            return json.load(f)

    def load(self, net, trainer=None, ctx=None):
        """Restores the latest commit into ``net`` (and ``trainer``); returns its meta dict.

        Raises :class:`CheckpointError` when there is no checkpoint, a file's hash differs from
        the commit record, or the parameters do not fit ``net``.
        """
        folder = self._verified_folder()
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
        try:
            net.load_parameters(os.path.join(folder, "net.params"), ctx=ctx)
        except (AssertionError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"the parameters in {folder} do not fit this network: "
                                  f"{err}") from err
        if trainer is not None:
            trainer.load_states(os.path.join(folder, "trainer.states"))
        return meta

