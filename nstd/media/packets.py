"""Counting a video stream's packets without decoding them.

Demuxing only is I/O bound and cheap next to stylization, and a packet is a frame: the probe
counts the frames of a source (and finds a cut copy), `count_frames` and `verify_video`
count those of an output. All three walk the packets with `scan_packets`.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import av

from nstd.media.source import PacketProgress, why


class PacketScan:
    """Counts a stream's real packets and tracks the time span they cover."""

    def __init__(self, stream) -> None:
        self.time_base = stream.time_base or Fraction(1, 90000)
        self.count = 0
        self.first_pts: int | None = None
        self.start: int | None = None
        self.end: int | None = None

    def add(self, packet) -> None:
        """Count one demuxed packet (the flush packet and discarded ones are no frames)."""
        # The demuxer ends with an empty flush packet; discard-flagged packets (before an
        # edit list's start) are never shown: neither counts as a frame.
        if packet.size == 0 or packet.is_discard:
            return
        self.count += 1
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            return
        if self.first_pts is None:
            self.first_pts = ts
        self.start = ts if self.start is None else min(self.start, ts)
        end = ts + max(int(packet.duration or 0), 0)
        self.end = end if self.end is None else max(self.end, end)

    def seconds(self) -> float:
        """Seconds from the earliest packet's start to the latest packet's end."""
        if self.start is None or self.end is None:
            return 0.0
        return float((self.end - self.start) * self.time_base)


#: Builds the error for a scan that FFmpeg could not finish: (the scan so far, its reason).
ScanFailure = Callable[[PacketScan, str], Exception]


def scan_packets(
    container: av.container.InputContainer,
    stream,
    fail: ScanFailure,
    *,
    scan: PacketScan | None = None,
    progress: PacketProgress | None = None,
) -> PacketScan:
    """Demux the rest of `stream` into `scan` (a new one by default) and return it.

    progress: called with the packets counted so far, per packet; it may raise to stop the
    scan (the probe's frame limit). A demuxing error raises ``fail(scan, reason)``: each
    caller words a broken file in its own terms (a bad source, a bad output).
    """
    scan = PacketScan(stream) if scan is None else scan
    try:
        for packet in container.demux(stream):
            scan.add(packet)
            if progress is not None:
                progress(scan.count)
    except av.FFmpegError as exc:
        raise fail(scan, why(exc)) from None
    return scan
