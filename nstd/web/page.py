"""The status page: HTML rendered here, refreshed by a few lines of inline JavaScript.

The page is whole on first load (it works without JavaScript, just not live); the script
polls ``/api/status.json`` every POLL_MS and swaps in each section's new HTML when it changed
(rendered here too, so there is one renderer). Every link and image carries a job id, never a
path.
"""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any

from nstd.progress import format_duration

POLL_MS = 1000
SECTIONS = ("summary", "running", "queue", "recent", "workers")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em;margin:.4em 0}
.pair{display:flex;gap:.6em;align-items:flex-start}.pair figure{margin:0}
.pair img{max-width:256px;max-height:256px;border:1px solid #ccc;background:#eee}
.job .pair img{width:192px;height:auto}
figcaption{font-size:12px;color:#666}progress{width:16em}
table{border-collapse:collapse}td,th{padding:.2em .6em;text-align:left;border-bottom:1px solid #eee}
.failed{color:#a00}.muted{color:#777}.paused{color:#a60;font-weight:bold}
.results{display:flex;flex-wrap:wrap;gap:.6em}.results .pair img{max-width:128px;max-height:128px}
svg.losses{display:block;margin:.3em 0}svg.losses polyline{fill:none;stroke:#36c;stroke-width:1.5}
"""

SCRIPT = """
const sections = %(sections)s;
let shown = {};
async function poll() {
  try {
    const r = await fetch('api/status.json', {cache: 'no-store', credentials: 'same-origin'});
    if (r.ok) {
      const data = await r.json();
      for (const name of sections) {
        const html = data.html[name];
        if (html !== shown[name]) {
          document.getElementById(name).innerHTML = html; shown[name] = html;
        }
      }
      document.body.dataset.updated = String(data.now);
    }
  } catch (e) { /* the daemon restarting: try again at the next tick */ }
  setTimeout(poll, %(poll)d);
}
for (const name of sections) shown[name] = document.getElementById(name).innerHTML;
setTimeout(poll, %(poll)d);
"""


def _hhmm(epoch: float | None) -> str:
    return time.strftime("%H:%M", time.localtime(epoch)) if epoch else "?"


def _percent(done: int | None, total: int | None) -> str:
    return f" ({100 * (done or 0) / total:.0f}%)" if total else ""


def summary(data: dict[str, Any]) -> str:
    c = data["counts"]
    line = ", ".join(f"{c.get(s, 0)} {s}" for s in ("running", "queued", "done", "failed"))
    sched = data.get("schedule") or {}
    paused = ""
    if sched.get("paused"):
        until = f" until {sched['until']}" if sched.get("until") else ""
        why = " (nstd pause)" if sched.get("reason") == "manual" else ""
        paused = f' <span class="paused">paused{until}{why}</span>'
    space = data.get("space") or {}
    if space.get("waiting"):
        paused += f' <span class="paused">{escape(str(space.get("text")))}</span>'
    by = data.get("all_done_by_hhmm")
    eta = (f"; all done by {by}" if by else
           "; all done by: not known yet (no finished job of that kind)") \
        if data["queue_length"] or data["running"] else ""
    return f"<p>{escape(line)}{escape(eta)}{paused}</p>"


def running(data: dict[str, Any], preview_version: Any) -> str:
    if not data["running"]:
        return '<p class="muted">nothing running</p>'
    out = []
    for job in data["running"]:
        jid = job["id"]
        stage, done, total = job.get("stage") or "starting", job.get("done"), job.get("total")
        where = (f"{stage} {done}/{total}{_percent(done, total)}, ETA "
                 f"{format_duration(job.get('eta_seconds'))}" if total else stage)
        bar = f'<progress value="{done or 0}" max="{total}"></progress> ' if total else ""
        src_v, prev_v = preview_version(jid, "source"), preview_version(jid, "preview")
        images = []
        if src_v is not None:
            images.append(f'<figure><img class="source" alt="source" '
                          f'src="source/{jid}.jpg?v={src_v}"><figcaption>source</figcaption>'
                          "</figure>")
        if prev_v is not None:
            images.append(f'<figure><img class="preview" alt="live preview" '
                          f'src="preview/{jid}.jpg?v={prev_v}"><figcaption>latest stylized '
                          "frame</figcaption></figure>")
        worker = escape(job.get("worker") or "")
        out.append(f'<div class="card job" data-job="{jid}"><b>{escape(job["source"])}</b> '
                   f'<span class="muted">({escape(job["style"])}, {worker}, '
                   f'attempt {job["attempts"]})</span><br>{bar}'
                   f'<span class="progress-text">{escape(where)}</span>'
                   f'{sparkline(job.get("frame_losses"))}'
                   f'<div class="pair">{"".join(images)}</div></div>')
    return "".join(out)


def sparkline(values: list[float] | None, width: int = 240, height: int = 40) -> str:
    """An inline SVG of a video's frame loss over the frames so far (each point the mean of
    an equal run of frames: `nstd.series.Series`), lowest and highest loss labelled; empty
    for fewer than two points."""
    if not values or len(values) < 2:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}"
                      for i, v in enumerate(values))
    return (f'<svg class="losses" width="{width}" height="{height}" role="img" '
            f'aria-label="frame loss over the video so far, {low:.4g} to {high:.4g}">'
            f'<title>frame loss: {low:.4g} to {high:.4g}</title>'
            f'<polyline points="{points}"/></svg>'
            f'<span class="muted">frame loss {low:.4g} … {high:.4g}</span>')


def queue(data: dict[str, Any]) -> str:
    if not data["queue"]:
        return '<p class="muted">empty</p>'
    rows = []
    for job in data["queue"]:
        est = job.get("estimate_seconds")
        wait = job["not_before"] - data["now"]
        retry = f" (retry in {format_duration(wait)})" if wait > 0 else ""
        rows.append(f"<tr><td>{escape(job['source'])}{escape(retry)}</td>"
                    f"<td>{escape(job['style'])}</td>"
                    f"<td>{escape(format_duration(est) if est is not None else '?')}</td></tr>")
    more = data["queue_length"] - len(data["queue"])
    tail = f'<p class="muted">... and {more} more</p>' if more > 0 else ""
    return ("<table><tr><th>file</th><th>style</th><th>expected time</th></tr>"
            + "".join(rows) + "</table>" + tail)


def recent(data: dict[str, Any]) -> str:
    done = [j for j in data["recent"] if j["state"] == "done"]
    failed = [j for j in data["recent"] if j["state"] == "failed"]
    parts = []
    if done:
        cards = []
        for job in done:
            jid = job["id"]
            cards.append(
                f'<div class="card"><a class="result" href="job/{jid}">'
                f'<div class="pair"><img alt="before" src="thumb/{jid}/before.jpg">'
                f'<img alt="after" src="thumb/{jid}/after.jpg"></div></a>'
                f'{escape(job["name"])} <span class="muted">{_hhmm(job["finished"])}</span> '
                f'<a href="file/{jid}">{escape(job["output_name"] or "")}</a></div>')
        parts.append('<div class="results">' + "".join(cards) + "</div>")
    if failed:
        parts.append("<h3>failed</h3><table>" + "".join(
            f'<tr class="failed"><td>{escape(j["source"])}</td><td>{escape(j["error"] or "")}'
            f"</td><td>{_hhmm(j['finished'])}</td></tr>" for j in failed) + "</table>")
    return "".join(parts) or '<p class="muted">nothing finished yet</p>'


def workers(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(w['name'])}</td><td class=\"state\">{escape(w['state'])}</td>"
        f"<td>{escape(w['source'] or '')}</td><td>{w['pid'] or ''}</td></tr>"
        for w in data["workers"])
    return f"<table><tr><th>worker</th><th>state</th><th>job</th><th>pid</th></tr>{rows}</table>"


def sections(data: dict[str, Any], work: Path) -> dict[str, str]:
    """Each section's HTML for ``data`` (a `nstd.web.model.snapshot`); ``work``: the daemon's
    work folder, where the previews are (their mtime versions the image URLs)."""

    def version(job_id: int, which: str) -> int | None:
        try:
            return (work / str(job_id) / f"{which}.jpg").stat().st_mtime_ns
        except OSError:
            return None

    return {"summary": summary(data), "running": running(data, version),
            "queue": queue(data), "recent": recent(data), "workers": workers(data)}


def page(html: dict[str, str]) -> str:
    """The whole page around the sections' HTML."""
    import json

    titles = {"running": "Running", "queue": "Queue", "recent": "Recent results",
              "workers": "Workers"}
    body = "".join((f"<h2>{titles[name]}</h2>" if name in titles else "")
                   + f'<section id="{name}">{html[name]}</section>' for name in SECTIONS)
    script = SCRIPT % {"sections": json.dumps(list(SECTIONS)), "poll": POLL_MS}
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>nstd</title>"
            f"<meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style>"
            f"</head><body><h1>nstd</h1>{body}<script>{script}</script></body></html>")


def job_page(job: dict[str, Any]) -> str:
    """A finished job: its before/after images and a link to the result file."""
    jid = job["id"]
    name = escape(job["name"])
    error = (f'<p class="failed">{escape(job["error"])}</p>' if job.get("error") else "")
    link = (f'<p><a id="file" href="../file/{jid}">{escape(job["output_name"])}</a></p>'
            if job.get("output_name") and job["state"] == "done" else "")
    return ("<!doctype html><html><head><meta charset=\"utf-8\">"
            f"<title>nstd: {name}</title><style>{STYLE}</style></head><body>"
            f'<p><a href="../">&larr; status</a></p><h1>{name}</h1>'
            f'<p>{escape(job["state"])}, style {escape(job["style"])}, finished '
            f'{_hhmm(job["finished"])}</p>{error}'
            f'<div class="pair"><figure><img class="before" alt="before" '
            f'src="../thumb/{jid}/before.jpg"><figcaption>before</figcaption></figure>'
            f'<figure><img class="after" alt="after" src="../thumb/{jid}/after.jpg">'
            f"<figcaption>after</figcaption></figure></div>{link}</body></html>")
