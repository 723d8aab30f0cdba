"""`nstd run`, `nstd status [--json]`, `nstd retry NAME|--all`: the daemon's sub-commands.

`nstd.cli.main` registers them (`register`) and maps errors to exit codes: refusing to start
(overlapping or unwritable folders, missing default style, weights that cannot be resolved, a
second daemon on the same state folder) is a `ConfigError` / `UsageError`, exit 2, which the
systemd unit does not restart (`RestartPreventExitStatus=2`). Weights that cannot be
downloaded right now (no network) are exit 1, which it restarts.

Heavy modules (torch) are imported inside `cmd_run` only, so `status` and `retry` are quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

from nstd.daemon.ledger import DaemonLock, Job, Ledger, ledger_path
from nstd.errors import ConfigError, NstdError, UsageError, WeightsUnavailableError
from nstd.logs import keep_one_line, one_line
from nstd.progress import format_duration
from nstd.signals import StopFlag
from nstd.text import plural

log = logging.getLogger("nstd.daemon")

EXIT_OK, EXIT_ABORTED = 0, 1
EXIT_NOTHING_DONE = 1  # `nstd retry` that put nothing back
RECENT = 10


def register(subparsers: Any, common_parent: argparse.ArgumentParser) -> None:
    """Add `run`, `status` and `retry` to the `nstd` parser."""
    p = subparsers.add_parser(
        "run", parents=[common_parent],
        help="watch the inbox and stylize whatever lands there (foreground; Ctrl-C stops)")
    p.add_argument("--weights", metavar="PATH", help="local VGG-19 state dict (model.weights)")
    p.set_defaults(handler=cmd_run)

    p = subparsers.add_parser("status", parents=[common_parent],
                              help="queued, running, recent done and failed jobs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_status)

    p = subparsers.add_parser("retry", parents=[common_parent],
                              help="move failed files back into the inbox and queue them again")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("name", nargs="?", help="file name (or path inside the inbox)")
    which.add_argument("--all", action="store_true", help="every failed job")
    p.set_defaults(handler=cmd_retry)


def _source(args: argparse.Namespace) -> str | None:
    return str(args.config) if getattr(args, "config", None) else None


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    """The supervisor. Imports no torch: the workers (`nstd.daemon.worker`) load the network,
    so the weights are only checked for existence here; a worker that cannot load them stops
    the service with exit 2, or 1 when they could not be downloaded for want of network."""
    from nstd.cli.common import config_from_args
    from nstd.daemon.notify import SystemdNotifier
    from nstd.daemon.startup import startup_checks
    from nstd.daemon.supervisor import Supervisor

    config = config_from_args(args)
    keep_one_line()
    startup_checks(config, source=_source(args))  # the same as `nstd check-config`
    lock = DaemonLock(ledger_path(config.daemon.state))
    try:
        lock.acquire()
    except NstdError as exc:
        raise UsageError(str(exc)) from None
    try:
        with Ledger.open(ledger_path(config.daemon.state)) as ledger:
            backend = None
            if config.cluster.backend == "ray":  # ray is imported only when asked for
                from nstd.cluster.backend import RayBackend

                backend = RayBackend(config)
            supervisor = Supervisor(config, ledger, SystemdNotifier.from_env(),
                                    backend=backend)

            def abort() -> None:
                logging.shutdown()
                os._exit(EXIT_ABORTED)  # no clean-up: the ledger and stored frames are crash-safe

            stop = StopFlag(on_stop=supervisor.request_stop, abort=abort,
                            what="stopping after the current frames").install()
            from nstd.web.server import StatusServer  # daemon.http: the status page

            web = StatusServer.start(config, supervisor)
            try:
                code = supervisor.run()
            finally:
                stop.restore()
                if web is not None:
                    web.close()
    finally:
        lock.release()
    if code == 2:
        raise ConfigError(["a worker could not load the network (see the log above)"],
                          source=_source(args))
    if code == 1:
        raise WeightsUnavailableError(
            "a worker could not fetch the VGG-19 weights right now (see the log above); "
            "the systemd unit starts nstd again, or pass --weights PATH (model.weights) "
            "with a local copy")
    return code


# --------------------------------------------------------------------------- status


def job_dict(job: Job, now: float) -> dict[str, Any]:
    """A job as plain JSON data (times in epoch seconds)."""
    data: dict[str, Any] = {
        "id": job.id, "source": job.source, "style": job.style, "state": job.state,
        "attempts": job.attempts, "settings": job.settings, "created": job.created,
        "started": job.started, "finished": job.finished, "output": job.output,
        "error": job.error,
    }
    if job.state == "running":
        data["progress"] = {"done": job.progress_done, "total": job.progress_total}
        data["eta_seconds"] = job.eta_seconds
        data["lease_alive"] = job.lease_until is not None and job.lease_until >= now
    if job.state == "queued":
        data["not_before"] = job.not_before
    return data


def daemon_pid(state: str | os.PathLike[str]) -> int | None:
    """The pid of the daemon using this state folder, if one is running (from its lock file)."""
    try:
        text = Path(f"{ledger_path(state)}.lock").read_text(encoding="ascii").strip()
        pid = int(text)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's (the service)
    return pid


def status_data(ledger: Ledger, state: str, now: float, recent: int = RECENT, *,
                inbox: str | None = None) -> dict[str, Any]:
    """Everything `nstd status` shows, as JSON-able data; with ``inbox``, also the files there
    that no job holds yet (settling, or waiting for the daemon to start)."""
    active = ledger.active()
    pid = daemon_pid(state)
    settling: list[dict[str, Any]] = []
    if inbox is not None:
        from nstd.daemon.arrivals import inbox_arrivals

        settling = [{"source": a.source, "size": a.size, "mtime": a.mtime}
                    for a in inbox_arrivals(Path(inbox), ledger)]
    return {
        "settling": settling,
        "ledger": str(ledger.path),
        "daemon": {"running": pid is not None, "pid": pid},
        "counts": ledger.counts(),
        "running": [job_dict(j, now) for j in active if j.state == "running"],
        "queued": [job_dict(j, now) for j in active if j.state == "queued"],
        "recent": [job_dict(j, now) for j in ledger.recent(recent)],
    }


def format_status(data: dict[str, Any], now: float) -> str:
    """The human-readable `nstd status`."""
    daemon = data["daemon"]
    counts = data["counts"]
    running = f"running (pid {daemon['pid']})" if daemon["running"] else "not running"
    lines = [
        f"daemon: {running}" + "".join(f", {held}" for held in (_paused(data), _space(data))
                                       if held),
        "jobs: " + ", ".join(f"{counts[s]} {s}" for s in ("queued", "running", "done", "failed")),
    ]
    if data["running"]:
        lines.append("running:")
        for job in data["running"]:
            p = job["progress"]
            where = (f"{p['done']}/{p['total']} ({100 * p['done'] / p['total']:.0f}%), "
                     f"ETA {format_duration(job['eta_seconds'])}"
                     if p["done"] is not None and p["total"] else "starting")
            stale = ("" if job["lease_alive"] and daemon["running"] else
                     " [interrupted: resumes when the daemon starts]")
            lines.append(f"  {job['source']} ({job['style']}): {where}, "
                         f"attempt {job['attempts']}{stale}")
    if data["queued"]:
        lines.append("queued:")
        for job in data["queued"][:20]:
            wait = job["not_before"] - now
            retry = f" [retry in {format_duration(wait)}: {job['error']}]" if wait > 0 else ""
            lines.append(f"  {job['source']} ({job['style']}){retry}")
        if len(data["queued"]) > 20:
            lines.append(f"  ... and {len(data['queued']) - 20} more")
    if data.get("settling"):
        settle = data.get("settle_seconds")
        rule = f" (taken once unchanged for {settle:g} s)" if settle is not None else ""
        lines.append(f"settling{rule}:" if daemon["running"] else
                     "in the inbox, taken when the daemon starts:")
        for item in data["settling"][:20]:
            lines.append(f"  {item['source']} ({item['size']:,} bytes, changed "
                         f"{format_duration(max(0.0, now - item['mtime']))} ago)")
        if len(data["settling"]) > 20:
            lines.append(f"  ... and {len(data['settling']) - 20} more")
    if data["recent"]:
        lines.append("recent:")
        for job in data["recent"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["finished"] or 0))
            if job["state"] == "done":
                took = (job["finished"] or 0) - (job["started"] or 0)
                lines.append(f"  done   {when} {job['source']} -> {job['output']} "
                             f"({format_duration(took)})")
            else:
                lines.append(f"  failed {when} {job['source']}: {job['error']}")
    return "\n".join(one_line(line) for line in lines)  # names may hold newlines


def _paused(data: dict[str, Any]) -> str | None:
    """"paused until 22:00" / "paused (nstd pause); ..." from the schedule state, if any."""
    from nstd.daemon.schedule import describe

    return describe(data["schedule"]) if data.get("schedule") else None


def _space(data: dict[str, Any]) -> str | None:
    """"waiting for N MB free on <path>" while the daemon waits for disk space."""
    space = data.get("space") or {}
    return str(space["text"]) if space.get("waiting") and space.get("text") else None


def cmd_status(args: argparse.Namespace) -> int:
    from nstd.cli.common import config_from_args
    from nstd.daemon.schedule import WorkGate  # active_hours and `nstd pause`

    config = config_from_args(args)
    now = time.time()
    with Ledger.open(ledger_path(config.daemon.state), readonly=True) as ledger:
        data = status_data(ledger, config.daemon.state, now, inbox=config.daemon.inbox)
    data["settle_seconds"] = config.daemon.settle_seconds
    data["schedule"] = WorkGate(config.daemon.active_hours, config.daemon.state).state(now)
    from nstd.cluster.status import format_actors, read_actors  # cluster.backend: ray

    actors = read_actors(config.daemon.state, now) if data["daemon"]["running"] else None
    if actors is not None:
        data["actors"] = actors
    from nstd.web.address import read_url  # daemon.http: where the status page listens

    data["status_page"] = read_url(config.daemon.state) if data["daemon"]["running"] else None
    from nstd.daemon.space import read_status  # waiting for disk space

    data["space"] = (read_status(config.daemon.state) if data["daemon"]["running"] else None) \
        or {"waiting": False}
    if args.json:
        print(json.dumps(data, sort_keys=True))
    else:
        print(format_status(data, now))
        if actors:
            print("\n".join(format_actors(actors)))
        if data["status_page"]:
            print(f"status page: {data['status_page']}")
    return EXIT_OK


# --------------------------------------------------------------------------- retry


def cmd_retry(args: argparse.Namespace) -> int:
    from nstd.cli.common import config_from_args
    from nstd.daemon.intake import SIDECAR_SUFFIXES, decide
    from nstd.daemon.outcome import ERROR_SUFFIX, find_failed_file, move_file

    config = config_from_args(args)
    d = config.daemon
    path = ledger_path(d.state)
    if not path.is_file():
        raise NstdError(f"there is no job ledger at {path}; start `nstd run` first")
    inbox, failed = Path(d.inbox), Path(d.failed)
    with Ledger.open(path) as ledger:
        jobs = [j for j in ledger.recent(1_000_000) if j.state == "failed"
                and (args.all or args.name in (j.source, j.name))]
        if not jobs:
            what = "failed jobs" if args.all else f"failed job named {args.name!r}"
            raise UsageError(f"there are no {what}; see `nstd status`")
        requeued = 0
        for job in jobs:
            found = find_failed_file(job, failed)
            if found is None:
                print(f"{job.source}: its file is no longer in {failed}; skipped")
                continue
            target = inbox.joinpath(*PurePosixPath(job.source).parts)
            if os.path.lexists(target):
                print(f"{job.source}: another file of that name is in the inbox; skipped")
                continue
            # Read the sidecar again: it may have been fixed in failed/ since.
            intake = decide(job.source, found, config)
            if intake.error is not None:
                print(f"{job.source}: still not usable ({intake.error}); fix it in {failed} "
                      "and retry; skipped")
                continue
            ledger.set_settings(job.id, intake.settings, style=intake.style, masks=intake.masks)
            # The file goes back first: if the daemon notices it before the ledger changes,
            # it queues it as a new job and `Ledger.retry` then leaves the old row alone.
            for suffix in SIDECAR_SUFFIXES:
                sidecar = found.with_name(found.name + suffix)
                if sidecar.is_file():
                    move_file(sidecar, target.parent, target.name + suffix)
            move_file(found, target.parent, target.name)
            report = found.with_name(found.name + ERROR_SUFFIX)
            try:
                report.unlink()
            except FileNotFoundError:
                pass
            requeued += ledger.retry(job.source)
            print(f"{job.source}: back in the inbox")
            remove_empty_folders(found.parent, failed)
    print(f"requeued {plural(requeued, 'job')}")
    return EXIT_OK if requeued else EXIT_NOTHING_DONE  # say so to scripts too


def remove_empty_folders(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``top`` while they are empty:
    `failed/<sub>/` folders left behind by a retry."""
    folder, top = folder.absolute(), top.absolute()
    while folder != top and top in folder.parents:
        try:
            folder.rmdir()  # only ever succeeds on an empty folder
        except OSError:
            return
        folder = folder.parent

