"""The run folder: what sassl writes in it, the marker that makes a folder a run, and the lock a
stage holds on it.

* A folder is a run folder only if it holds :data:`MARKER`, which sassl writes first of all when
  it starts a run there. ``--overwrite`` replaces only a run folder, and removes only sassl's own
  entries of it (:func:`owned`); anything else is left where it is.
* A run folder whose stages finished nothing (:meth:`RunDir.has_results` is false, e.g. after a
  crash) is started afresh without ``--overwrite``.
* While a stage runs, its process holds an exclusive ``flock`` on :data:`LOCK`: a second process
  on the same folder is refused, naming the first one's pid. The kernel drops the lock however
  the process ends (crash and SIGKILL included).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sassl_core import __version__
from sassl_core.config import RunConfig, read_yaml, validate
from sassl_core.errors import UserError
from sassl_core.files import atomic_write_text

MARKER = ".sassl-run.json"
LOCK = ".sassl-run.lock"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
HEATMAPS = "heatmaps"  # ``sassl heatmap``'s default output folder
ENCODER_FILE = "encoder.safetensors"
INFERENCE_FILE = "inference.json"  # what inference needs (sassl_core.train.inference_meta)
TRAINING_STAGES = ("pretrain", "finetune")
#: Stages that record their settings as ``config_<stage>.yaml`` (the others as ``config.yaml``).
CONFIG_STAGES = ("finetune", "evaluate", "probe")
#: The folders sassl writes into: real folders inside the run folder, never links out of it.
SUBFOLDERS = (CHECKPOINTS, TENSORBOARD, HEATMAPS)
#: Every top-level entry sassl writes in a run folder, and only those.
OWNED = frozenset(
    {
        MARKER,
        LOCK,
        *SUBFOLDERS,
        ENCODER_FILE,
        INFERENCE_FILE,
        "config.yaml",
        "run.log",
        *(f"config_{stage}.yaml" for stage in CONFIG_STAGES),
        *(f"history_{stage}.csv" for stage in TRAINING_STAGES),
        *(f"{stage}_curves.png" for stage in TRAINING_STAGES),
        "confusion_matrix.png",
        "scatter.png",
        "overlays.png",
        "metrics.json",
        "predictions.csv",
        "predictions_slides.csv",
        "metrics_in_domain.json",
        "report.md",
        "skipped_slides.json",
        "centre_probe.json",
        "bench_result.json",
    }
)
_TEMPORARY = re.compile(r"\.(.+)\.tmp\d+")  # an atomic write of an entry cut short


def owned(name: str) -> bool:
    """Whether ``name`` is a top-level entry sassl writes in a run folder (or its temporary file)."""
    temporary = _TEMPORARY.fullmatch(name)
    return name in OWNED or (temporary is not None and temporary.group(1) in OWNED)


def config_name(stage: str) -> str:
    """The file holding the settings a stage ran with."""
    return f"config_{stage}.yaml" if stage in CONFIG_STAGES else "config.yaml"


#: Settings ``--resume`` may change without ``--resume-with-changes``: step counts (train longer),
#: how the run reports (``output.*``) and settings that change how fast, not what, it trains;
#: each is a prefix of the dotted field names it covers.
RESUMABLE = (
    "pretrain.steps",
    "finetune.steps",
    "output.",
    "data.cache_dir",
    "data.num_workers",
    "trainer.log_every",
    "trainer.checkpoint_every",
)


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """A nested mapping as ``{"dotted.name": value}``."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def changed_settings(config_file: Path, cfg: RunConfig) -> list[str]:
    """The settings of ``cfg`` that differ from those the run recorded in ``config_file``
    (``field (recorded → now)``), but for :data:`RESUMABLE` ones."""
    recorded = flatten(validate(read_yaml(config_file)).model_dump(mode="json"))
    now = flatten(cfg.model_dump(mode="json"))
    return [
        f"{key} ({recorded.get(key)!r} → {now.get(key)!r})"
        for key in sorted(recorded.keys() | now.keys())
        if recorded.get(key) != now.get(key) and not key.startswith(RESUMABLE)
    ]


def _refuse(path: Path, what: str) -> UserError:
    return UserError(f"output.dir: '{path}' is {what}; expected a folder of the run's own")


class RunDir:
    """One run folder (``output.dir``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def check_location(self) -> None:
        """Refuse the current folder (an empty ``--out`` too), an ancestor of it, the home folder
        and the root: folders that hold far more than one run."""
        real = self.path.resolve()
        cwd = Path.cwd().resolve()
        try:
            home: Path | None = Path.home().resolve()
        except RuntimeError:  # no home folder known
            home = None
        if real == cwd:
            raise _refuse(self.path, "the current folder (as is an empty --out)")
        if real == Path(real.anchor):
            raise _refuse(self.path, "the root folder")
        if real == home:
            raise _refuse(self.path, "the home folder")
        if real in cwd.parents:
            raise _refuse(self.path, "an ancestor of the current folder")

    def entries(self) -> list[Path]:
        return sorted(self.path.iterdir()) if self.path.is_dir() else []

    def is_empty(self) -> bool:
        """No entry but, at most, a lock file."""
        return all(p.name == LOCK for p in self.entries())

    def is_run(self) -> bool:
        """Whether sassl's marker is here (a regular file holding a run id)."""
        marker = self.path / MARKER
        if marker.is_symlink() or not marker.is_file():
            return False
        try:
            content = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(content, dict) and "run_id" in content

    def has_results(self) -> bool:
        """Whether a stage finished something here: a checkpoint, metrics or an encoder."""
        return any((self.path / CHECKPOINTS).glob("*.pt")) or any(
            (self.path / name).exists() for name in ("metrics.json", ENCODER_FILE)
        )

    def checkpoint_stamps(self) -> dict[str, int]:
        """Each checkpoint's modification time (ns), by name: whether a stage wrote one since."""
        return {p.name: p.stat().st_mtime_ns for p in (self.path / CHECKPOINTS).glob("*.pt")}

    def foreign(self) -> list[str]:
        """Names of the entries sassl did not write."""
        return [p.name for p in self.entries() if not owned(p.name)]

    def start(self, stage: str) -> list[str]:
        """Make this a new run folder: remove sassl's entries of an earlier run (links are removed,
        never followed), write a new marker; returns the names of the entries left in place."""
        for entry in self.entries():
            if owned(entry.name) and entry.name != LOCK:
                _remove(entry)
        marker = {
            "run_id": uuid.uuid4().hex,
            "sassl_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stage": stage,
        }
        atomic_write_text(self.path / MARKER, json.dumps(marker, indent=2) + "\n")
        return self.foreign()

    def produced_nothing(self, stage: str) -> bool:
        """Whether sassl's entries are at most those a stage writes before it starts working."""
        start = {MARKER, LOCK, config_name(stage), "skipped_slides.json", "run.log"}
        return {p.name for p in self.entries() if owned(p.name)} <= start

    def discard(self, created: bool) -> None:
        """Remove sassl's entries, and the folder itself if this stage created it and it is empty."""
        for entry in self.entries():
            if owned(entry.name):
                _remove(entry)
        if created and not self.entries():
            self.path.rmdir()

    def subfolder(self, name: str) -> Path:
        """``name`` inside the run folder, refused when it is a link (it may lead out of the folder)."""
        path = self.path / name
        if path.is_symlink():
            raise UserError(
                f"output.dir: {path} is a link to {os.readlink(path)}; sassl writes only inside the run folder, "
                "expected a real folder"
            )
        return path

    def check_subfolders(self) -> None:
        for name in SUBFOLDERS:
            self.subfolder(name)

    def remove_temporaries(self) -> None:
        """Delete the temporary files of writes cut short (SIGKILL); call it holding the lock, when
        no write can be under way."""
        checkpoints = self.path / CHECKPOINTS
        inside = list(checkpoints.iterdir()) if checkpoints.is_dir() and not checkpoints.is_symlink() else []
        for entry in self.entries() + inside:
            temporary = _TEMPORARY.fullmatch(entry.name) and (entry.parent == checkpoints or owned(entry.name))
            if temporary and not entry.is_dir():
                entry.unlink()

    def check_free(self) -> None:
        """Refuse a folder another process holds (:meth:`locked`), without waiting or taking it."""
        if (self.path / LOCK).exists():
            fd = self._open_lock(create=False)
            try:
                self._take(fd)
            finally:
                os.close(fd)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run folder's lock (creating the folder) for the ``with`` block; refused, naming
        the holder's pid, while another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = self._open_lock(create=True)
        try:
            self._take(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def _open_lock(self, create: bool) -> int:
        path = self.path / LOCK
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            return os.open(path, flags, 0o644)
        except OSError as err:
            raise UserError(f"output.dir: cannot open the lock file {path} ({err.strerror})") from None

    def _take(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(f"output.dir: {self.path} is in use by another sassl process (pid {holder})") from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
