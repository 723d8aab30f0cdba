"""The media package's public video API: re-exports only, no code of its own.

Video goes through PyAV (its wheel bundles FFmpeg; there is no ffmpeg binary). The work is
split by job, and each module gives the reasons for its decisions:

- `nstd.media.source`: what a source is (a path or bytes in memory), refusing what is not a
  regular file, opening it with the demuxer its magic bytes name, the decoders' pixel caps;
- `nstd.media.packets`: the one packet scan (counting frames without decoding);
- `nstd.media.probe`: `probe_video` (limits, truncation, rotation) and the output checks
  `count_frames` and `verify_video`;
- `nstd.media.decode`: `iter_frames` (upright RGB frames, streaming) and `first_frame`;
- `nstd.media.encode`: `VideoWriter` (H.264, the source's timing and audio, atomic output).

Callers import from here (``from nstd.media import container as video``), so the split
stays an inner detail of the media package.
"""

from __future__ import annotations

from nstd.media.decode import Frame, first_frame, iter_frames
from nstd.media.encode import VideoWriter, even_size
from nstd.media.kinds import VIDEO_EXTENSIONS
from nstd.media.probe import AudioInfo, VideoInfo, count_frames, probe_video, verify_video
from nstd.media.source import InMemory, PacketProgress, Source

__all__ = [
    "VIDEO_EXTENSIONS",
    "AudioInfo",
    "Frame",
    "InMemory",
    "PacketProgress",
    "Source",
    "VideoInfo",
    "VideoWriter",
    "count_frames",
    "even_size",
    "first_frame",
    "iter_frames",
    "probe_video",
    "verify_video",
]
