"""The checks `nstd run` makes before it starts, shared with `nstd check-config`, and the
clean-up after a crash the supervisor makes when it starts (`recover`).

The systemd steps use `nstd check-config` as the check before `systemctl start`, so it must
refuse exactly what `nstd run` refuses: folders that overlap, nest or cannot be written, a
missing styles folder or default style, a `model.weights` file that is not there. Neither
loads the network (no torch here: the supervisor never imports it); a weights file that exists
but is broken is found by the workers, or by `nstd weights`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from nstd.config import Config
from nstd.daemon import outcome
from nstd.daemon.hooks import check_hooks
from nstd.daemon.intake import resolve_style
from nstd.daemon.jobspec import INPUT_FOLDER
from nstd.daemon.ledger import Ledger
from nstd.errors import ConfigError, InputError
from nstd.text import plural

log = logging.getLogger("nstd.daemon.supervisor")

FOLDER_KEYS = ("inbox", "outbox", "work", "failed", "done", "state", "styles")
WRITABLE_KEYS = ("inbox", "outbox", "work", "failed", "done", "state")


def startup_checks(config: Config, source: str | None = None) -> None:
    """Raise `ConfigError` (exit 2) naming every key `nstd run` would refuse to start with.

    Creates missing daemon folders (except styles), as `nstd run` does: a folder that cannot
    be created is one of the problems reported.
    """
    check_folders(config, source=source)
    hook_problems = check_hooks(config)  # on_event found, Apprise installed (hooks.py)
    if config.cluster.backend == "ray" and importlib.util.find_spec("ray") is None:
        hook_problems.append("cluster.backend: ray needs the ray package; install it with "
                             "pip install 'nstd[ray]' (or set cluster.backend: local)")
    if hook_problems:
        raise ConfigError(hook_problems, source=source)
    weights = config.model.weights
    if weights is not None and not Path(weights).is_file():
        what = "does not exist" if not os.path.lexists(weights) else "is not a file"
        raise ConfigError([f"model.weights: weights file {weights} {what}; fix model.weights "
                           "(--weights), or set it to null to download the torchvision "
                           "weights"], source=source)


def check_folders(config: Config, source: str | None = None) -> None:
    """Refuse to start on folders that overlap, cannot be written, or a missing default style.

    Missing folders (except styles) are created. Raises `ConfigError` naming the keys.
    """
    d = config.daemon
    paths = {key: Path(getattr(d, key)).resolve() for key in FOLDER_KEYS}
    problems: list[str] = []
    keys = list(FOLDER_KEYS)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            pa, pb = paths[a], paths[b]
            if pa == pb:
                problems.append(f"daemon.{a} and daemon.{b} are the same folder ({pa}); "
                                "give each its own folder")
            elif pa in pb.parents or pb in pa.parents:
                inner, outer = (a, b) if pb in pa.parents else (b, a)
                problems.append(f"daemon.{inner} ({paths[inner]}) is inside daemon.{outer} "
                                f"({paths[outer]}); use folders that do not nest, or files "
                                "would loop through the daemon")
    if problems:
        raise ConfigError(problems, source=source)
    for key in WRITABLE_KEYS:
        problem = _writable(paths[key])
        if problem:
            problems.append(f"daemon.{key}: {problem}")
    if not paths["styles"].is_dir():
        problems.append(f"daemon.styles: {paths['styles']} is not a folder; create it and put "
                        "style images in it")
    else:
        try:
            resolve_style(paths["styles"], d.default_style)
        except InputError as exc:
            problems.append(f"daemon.default_style: {exc}")
    if problems:
        raise ConfigError(problems, source=source)


def _writable(folder: Path) -> str | None:
    """None when ``folder`` exists (created if missing) and a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {folder}: {exc.strerror or exc}"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    probe = folder / f".nstd-write-test.{os.getpid()}"
    try:
        with open(probe, "xb"):
            pass
    except OSError as exc:
        return f"cannot write in {folder}: {exc.strerror or exc}; fix its permissions"
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def weights_note(config: Config) -> str:
    """One line for `nstd check-config`: where the workers will take the weights from."""
    if config.model.weights is not None:
        return f"weights: {config.model.weights} (present; `nstd weights` verifies it)"
    return ("weights: torchvision's VGG-19, downloaded into $TORCH_HOME at the first start "
            "unless cached (`nstd weights` shows where)")


def recover(config: Config, ledger: Ledger, now: float) -> None:
    """Put interrupted jobs back, rebuild an empty ledger from done/ and failed/, and remove
    what a crash left: temp files of ours, work folders of finished jobs. The caller holds
    the `DaemonLock` (so `recover` cannot steal a live daemon's jobs)."""
    d = config.daemon
    for job in ledger.active():  # links of interrupted jobs: taken again at claim
        if job.state == "running":
            shutil.rmtree(Path(d.work) / str(job.id) / INPUT_FOLDER, ignore_errors=True)
    ledger.recover(now, d.max_attempts)
    for job in ledger.interrupted_failures:
        log.error("%s failed: %s", job.source, job.error)
    if not any(ledger.counts().values()):
        rebuilt = outcome.rebuild_ledger(ledger, config, now)
        if any(rebuilt):
            log.warning("the job ledger was empty: rebuilt %d done and %s "
                        "from %s and %s", rebuilt[0], plural(rebuilt[1], "failed job"),
                        d.done, d.failed)
    for key in ("outbox", "done", "failed"):
        removed = outcome.clean_temp_files(Path(getattr(d, key)))
        if removed:
            log.info("removed %s from %s", plural(removed, "unfinished temporary file"),
                     getattr(d, key))
    clean_work_dirs(Path(d.work), ledger)


def clean_work_dirs(work: Path, ledger: Ledger) -> None:
    """Remove work folders of jobs that are no longer queued or running."""
    if not work.is_dir():
        return
    live = {str(j.id) for j in ledger.active()}
    for entry in work.iterdir():
        if entry.is_dir() and not entry.is_symlink() and entry.name.isdigit() \
                and entry.name not in live:
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed the work folder of finished job %s", entry.name)
