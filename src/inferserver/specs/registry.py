"""The model directory kept in step with MODEL_PATH while the server runs.

Every couple of seconds the files' (inode, size, mtime) are compared with the last look; only changed
files are read again. A file that no longer loads keeps its last good spec serving, so a half-saved or
mistyped edit never takes a model away. Sessions hold their own spec object, so nothing here reaches
a session that already exists.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from .directory import LoadedModel, ModelDirectory, SpecCheck, SpecLoadError, assemble, load_spec_file, spec_files
from .errors import SpecError

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0

Stamp = tuple[int, int, int]


class ModelRegistry:
    """Owns `directory` (the object the api and the session manager read) and updates it in place."""

    def __init__(self, path: Path, check: SpecCheck | None = None) -> None:
        self.path = path
        self.check = check  # see load_spec_file
        self.directory = ModelDirectory()
        self._stamps: dict[Path, Stamp] = {}
        self._good: dict[Path, LoadedModel] = {}  # the last version of each file that loaded
        self._bad: dict[Path, SpecLoadError] = {}
        self._reported: set[str] = set()
        self._scanned = False
        self._scan()

    async def watch(self, interval: float = POLL_SECONDS) -> None:
        """Apply changes to the model directory until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self._scan)
            except Exception:  # a surprise must not end the watching
                logger.exception("model directory %s: rescan failed", self.path)

    def _scan(self) -> None:
        stamps = _stamps(self.path)
        if self._scanned and stamps == self._stamps:
            return
        self._scanned = True
        changed = [file for file, stamp in stamps.items() if self._stamps.get(file) != stamp]
        for file in self._stamps.keys() - stamps.keys():
            self._good.pop(file, None)
            self._bad.pop(file, None)
        for file in changed:
            try:
                self._good[file] = LoadedModel(load_spec_file(file, self.check), file)
                self._bad.pop(file, None)
            except SpecError as exc:
                self._bad[file] = SpecLoadError(file, str(exc))
        self._stamps = stamps
        errors = list(self._bad.values())
        if not self.path.is_dir():
            errors.append(SpecLoadError(self.path, "model directory does not exist or is not a directory"))
        fresh = assemble(list(self._good.values()), errors)
        self._report(fresh)
        # In place: the api and the session manager hold this very object.
        self.directory.models = fresh.models
        self.directory.errors = fresh.errors

    def _report(self, fresh: ModelDirectory) -> None:
        reported = {str(error) for error in fresh.errors}
        for error in fresh.errors:
            if str(error) in reported - self._reported:
                kept = self._good.get(error.path)
                note = ""
                if kept is not None and error.path in self._bad:
                    note = f"; still serving its previous version {kept.spec.version}"
                logger.error("model spec not served: %s%s", error, note)
        self._reported = reported
        before, after = self.directory.models, fresh.models
        for model_id in after.keys() - before.keys():
            logger.info("model %s %s served from %s", model_id, after[model_id].spec.version, after[model_id].path)
        for model_id in before.keys() - after.keys():
            logger.info("model %s is no longer served", model_id)
        for model_id in before.keys() & after.keys():
            if before[model_id].spec is not after[model_id].spec and before[model_id].spec != after[model_id].spec:
                new = after[model_id]
                logger.info("model %s updated to version %s from %s", model_id, new.spec.version, new.path)


def _stamps(path: Path) -> dict[Path, Stamp]:
    stamps: dict[Path, Stamp] = {}
    if not path.is_dir():
        return stamps
    for file in spec_files(path):
        try:
            st = file.stat()
        except OSError:  # removed between listing and stat
            continue
        stamps[file] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stamps
