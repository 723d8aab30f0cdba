"""Video decoding/encoding: timing, rotation, audio, odd sizes, and hostile or broken files."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from nstd.config import LimitsConfig
from nstd.errors import InputError, OutputError, UsageError
from nstd.media import container as video
from nstd.media import files as fsutil
from nstd.testing.media import (
    frames_close,
    make_test_frames,
    truncate_file,
    write_test_audio,
    write_test_clip,
)

LIMITS = LimitsConfig()


def _times(path: Path) -> list[Fraction]:
    """Presentation times of every decoded video frame, exactly."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [frame.pts * frame.time_base for frame in container.decode(stream)]


def _audio_span(path: Path) -> list[tuple[str, float]]:
    """(codec, seconds from first packet start to last packet end) per audio stream."""
    spans = []
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            start = end = None
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                t0 = packet.pts * packet.time_base
                t1 = (packet.pts + packet.duration) * packet.time_base
                start = t0 if start is None else min(start, t0)
                end = t1 if end is None else max(end, t1)
            spans.append((stream.codec_context.name, float(end - start)))
    return spans


def _round_trip(src: Path, out: Path, **writer_kwargs) -> tuple[video.VideoInfo, list]:
    info = video.probe_video(src, LIMITS)
    frames = list(video.iter_frames(src, info))
    with video.VideoWriter(out, info, **writer_kwargs) as writer:
        for frame in frames:
            writer.write(frame.rgb, frame.pts)
    return info, frames


def test_fractional_rate_round_trip(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "in.mp4", frames=12, rate=Fraction(30000, 1001))
    info, frames = _round_trip(src, tmp_path / "out.mp4")
    assert info.rate == Fraction(30000, 1001) and info.frames == 12 and info.frames_exact
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].rgb.shape == (48, 64, 3) and frames[0].rgb.dtype == np.uint8
    expected = make_test_frames(frames=12, size=(64, 48))
    assert all(frames_close(f.rgb, e, 8) for f, e in zip(frames, expected, strict=True))
    out_info = video.probe_video(tmp_path / "out.mp4", LIMITS)
    assert out_info.frames == 12 and out_info.rate == Fraction(30000, 1001)
    assert out_info.codec == "h264" and out_info.pix_fmt == "yuv420p"
    assert _times(src) == _times(tmp_path / "out.mp4")
    assert abs(out_info.duration - info.duration) < info.frame_interval
    assert video.verify_video(tmp_path / "out.mp4", 12)
    assert video.count_frames(tmp_path / "out.mp4") == 12


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_variable_frame_rate_keeps_timestamps(tmp_path: Path, ext: str) -> None:
    src = write_test_clip(tmp_path / f"vfr{ext}", frames=14, vfr=True)
    gaps = np.diff([float(t) for t in _times(src)])
    assert gaps.max() > 1.5 * gaps.min()  # really irregular
    info, _ = _round_trip(src, tmp_path / "out.mp4")
    assert _times(tmp_path / "out.mp4") == _times(src)
    out_info = video.probe_video(tmp_path / "out.mp4", LIMITS)
    assert abs(out_info.duration - info.duration) <= 1.0 / float(info.rate)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm"])
def test_audio_is_copied(tmp_path: Path, ext: str) -> None:
    src = write_test_clip(tmp_path / f"a{ext}", frames=15, audio=True)
    info, _ = _round_trip(src, tmp_path / "out.mp4")
    assert info.audio
    source_audio, output_audio = _audio_span(src), _audio_span(tmp_path / "out.mp4")
    assert [c for c, _ in output_audio] == [c for c, _ in source_audio]  # same codec: copied
    assert abs(output_audio[0][1] - source_audio[0][1]) < info.frame_interval
    out_info = video.probe_video(tmp_path / "out.mp4", LIMITS)
    assert abs(out_info.duration - info.duration) < info.frame_interval


def test_audio_reencoded_when_container_refuses_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_test_clip(tmp_path / "pcm.mkv", frames=12, audio=True, audio_codec="pcm_s16le")
    with caplog.at_level(logging.WARNING, logger="nstd.media"):
        info, _ = _round_trip(src, tmp_path / "out.mp4")
    assert "re-encoding it to AAC" in caplog.text
    (codec, seconds), = _audio_span(tmp_path / "out.mp4")
    assert codec == "aac"
    assert abs(seconds - info.audio[0].duration) < info.frame_interval


def test_no_audio_option(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "a.mp4", frames=6, audio=True)
    _round_trip(src, tmp_path / "out.mp4", audio=False)
    assert _audio_span(tmp_path / "out.mp4") == []


@pytest.mark.parametrize("rotation", [90, 270, 180])
def test_rotated_clip_comes_out_upright(tmp_path: Path, rotation: int) -> None:
    src = write_test_clip(tmp_path / "phone.mp4", frames=4, size=(64, 48), rotation=rotation)
    info, frames = _round_trip(src, tmp_path / "out.mp4")
    assert info.rotation == rotation and (info.coded_width, info.coded_height) == (64, 48)
    display = (48, 64) if rotation in (90, 270) else (64, 48)
    assert (info.width, info.height) == display
    expected = make_test_frames(frames=4, size=display)
    for frame, upright in zip(frames, expected, strict=True):
        assert frame.rgb.shape == upright.shape
        assert frames_close(frame.rgb, upright, 8)
    out_info = video.probe_video(tmp_path / "out.mp4", LIMITS)
    # Written upright without a rotation tag: same displayed orientation and size.
    assert out_info.rotation == 0 and (out_info.width, out_info.height) == display
    out_frames = list(video.iter_frames(tmp_path / "out.mp4", out_info))
    assert frames_close(out_frames[0].rgb, expected[0], 10)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(float) @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("rotation", [0, 90])
def test_frames_are_converted_straight_to_a_smaller_size_as_an_area_resize_would(
        tmp_path: Path, rotation: int) -> None:
    """A 4K source is never a full-size RGB array: FFmpeg scales each picture down itself."""
    import cv2

    src = write_test_clip(tmp_path / "big.mp4", frames=3, size=(128, 96), rotation=rotation)
    info = video.probe_video(src, LIMITS)
    small = (info.width // 4, info.height // 4)
    reduced = list(video.iter_frames(src, info, size=small))
    full = list(video.iter_frames(src, info))
    assert [f.rgb.shape for f in reduced] == [(small[1], small[0], 3)] * 3
    for r, f in zip(reduced, full, strict=True):
        area = cv2.resize(f.rgb, small, interpolation=cv2.INTER_AREA)
        # This clip's texture changes every pixel and colour; FFmpeg scales the half-size
        # chroma itself, so colours differ a little more than on footage (~1 level there).
        assert np.abs(r.rgb.astype(int) - area.astype(int)).mean() < 8.0
        assert np.abs(_luma(r.rgb) - _luma(area)).mean() < 2.0
    # Never enlarged: a size above the source's gives the source's own frames.
    same = next(video.iter_frames(src, info, size=(info.width * 2, info.height * 2)))
    assert same.rgb.shape == full[0].rgb.shape


def test_odd_dimensions_become_even(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "odd.mkv", frames=5, size=(63, 47))
    info, frames = _round_trip(src, tmp_path / "out.mp4")
    assert (info.width, info.height) == (63, 47) and frames[0].rgb.shape == (47, 63, 3)
    out_info = video.probe_video(tmp_path / "out.mp4", LIMITS)
    assert (out_info.width, out_info.height) == (62, 46)
    assert video.even_size(63, 47) == (62, 46) and video.even_size(1, 1) == (2, 2)


def test_writer_resizes_to_requested_size(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "in.mp4", frames=3)
    info = video.probe_video(src, LIMITS)
    with video.VideoWriter(tmp_path / "out.mp4", info, size=(33, 25)) as writer:
        for frame in video.iter_frames(src, info):
            writer.write(frame.rgb, frame.pts)
    out_info = video.probe_video(tmp_path / "out.mp4", LIMITS)
    assert (out_info.width, out_info.height) == (32, 24) and out_info.frames == 3


def test_writer_into_a_temp_path_as_the_pipeline_does(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "in.mp4", frames=4, audio=True)
    info = video.probe_video(src, LIMITS)
    final = tmp_path / "out.mp4"
    tmp = fsutil.temp_path_for(final)  # ends in .tmp: the format comes from the final name
    writer = video.VideoWriter(tmp, info)
    for frame in video.iter_frames(src, info):
        writer.write(frame.rgb)  # pts omitted: nominal rate from the first frame
    writer.close()
    assert video.verify_video(tmp, 4)
    fsutil.publish(tmp, final)
    assert _times(final) == _times(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]


def test_writer_from_another_thread(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "in.mp4", frames=6)
    info = video.probe_video(src, LIMITS)
    frames = list(video.iter_frames(src, info))
    writer = video.VideoWriter(tmp_path / "out.mp4", info)
    worker = threading.Thread(target=lambda: [writer.write(f.rgb, f.pts) for f in frames])
    worker.start()
    worker.join()
    writer.close()
    assert video.count_frames(tmp_path / "out.mp4") == 6


def test_writer_failure_leaves_nothing(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "in.mp4", frames=4, audio=True)
    info = video.probe_video(src, LIMITS)
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with video.VideoWriter(out, info) as writer:
            writer.write(np.zeros((48, 64, 3), np.uint8), 0)
            raise RuntimeError("stylizer crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
    writer = video.VideoWriter(out, info)
    writer.write(np.zeros((48, 64, 3), np.uint8), 0)
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_writer_refuses_existing_and_unknown_extension(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "in.mp4", frames=2)
    info = video.probe_video(src, LIMITS)
    with pytest.raises(OutputError, match="already exists"):
        video.VideoWriter(src, info)
    with pytest.raises(UsageError, match=r"\.mp4"):
        video.VideoWriter(tmp_path / "out.avi", info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_verify_video_catches_a_short_output(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "in.mp4", frames=5)
    with pytest.raises(OutputError, match="has 5 frames, expected 6"):
        video.verify_video(src, 6)
    assert video.verify_video(src, 5)


# ------------------------------------------------------------------ broken and hostile input


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("cut.mkv", {}), ("cut.webm", {}), ("cut.avi", {}), ("cutfast.mp4", {"faststart": True})],
)
def test_truncated_file_is_refused_with_what_was_decodable(
    tmp_path: Path, name: str, kwargs: dict
) -> None:
    src = truncate_file(write_test_clip(tmp_path / name, frames=60, **kwargs), 0.5)
    with pytest.raises(InputError, match=r"truncated or corrupt: only \d+ of 60 frames"):
        video.probe_video(src, LIMITS)
    # Even trusting the header (no packet scan), decoding notices the missing tail.
    info = video.probe_video(src, LIMITS, scan=False)
    with pytest.raises(InputError, match=r"only \d+ of \d+ frames .* could be decoded"):
        for _ in video.iter_frames(src, info):
            pass


def test_truncated_mp4_without_index(tmp_path: Path) -> None:
    src = truncate_file(write_test_clip(tmp_path / "cut.mp4", frames=30), 0.5)
    with pytest.raises(InputError, match="truncated or corrupt and no frames are decodable"):
        video.probe_video(src, LIMITS)


def test_audio_only_file_is_refused(tmp_path: Path) -> None:
    src = write_test_audio(tmp_path / "song.mp4", seconds=0.3)
    with pytest.raises(InputError, match=r"song.mp4 has no video stream \(it contains: audio\)"):
        video.probe_video(src, LIMITS)


def test_zero_bytes_and_text_named_mp4(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp4 is empty"):
        video.probe_video(empty, LIMITS)
    text = tmp_path / "list.mp4"
    text.write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n")  # an HLS playlist: never opened
    with pytest.raises(InputError, match="not a video in a supported container"):
        video.probe_video(text, LIMITS)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        video.probe_video(fifo, LIMITS)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        video.probe_video(tmp_path / "gone.mp4", LIMITS)


def test_limits_are_enforced(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "in.mp4", frames=30)  # 64x48, ~1 s
    cases = {
        "max_pixels": (dataclasses.replace(LIMITS, max_pixels=1000), "limits.max_pixels"),
        "max_file_bytes": (dataclasses.replace(LIMITS, max_file_bytes=100), "max_file_bytes"),
        "max_video_seconds": (
            dataclasses.replace(LIMITS, max_video_seconds=0.5),
            "limits.max_video_seconds",
        ),
        "max_video_frames": (
            dataclasses.replace(LIMITS, max_video_frames=10),
            "limits.max_video_frames",
        ),
    }
    for limits, message in cases.values():
        with pytest.raises(InputError, match=message):
            video.probe_video(src, limits)
    info = video.probe_video(src, LIMITS)
    assert info.frames == 30 and info.duration == pytest.approx(30 * 1001 / 30000)


def test_scene_cut_and_patterns_are_distinct() -> None:
    moving = make_test_frames(frames=6, size=(32, 24))
    assert not np.array_equal(moving[0], moving[1])
    static = make_test_frames(frames=3, size=(32, 24), pattern="static")
    assert np.array_equal(static[0], static[2])
    cut = make_test_frames(frames=6, size=(32, 24), cut_at=3)
    assert np.array_equal(cut[1], moving[1])
    step = np.abs(cut[3].astype(int) - cut[2].astype(int)).mean()
    motion = np.abs(cut[2].astype(int) - cut[1].astype(int)).mean()
    assert step > 2 * motion
    shuffled = make_test_frames(frames=6, size=(32, 24), pattern="shuffled")
    assert sorted(f.tobytes() for f in shuffled) == sorted(f.tobytes() for f in moving)


@pytest.mark.parametrize("ext", [".avi", ".mov", ".m4v"])
def test_other_containers_round_trip(tmp_path: Path, ext: str) -> None:
    src = write_test_clip(tmp_path / f"in{ext}", frames=8, audio=True)
    info, frames = _round_trip(src, tmp_path / "out.mp4")
    assert len(frames) == info.frames == 8
    assert _times(tmp_path / "out.mp4") == _times(src)
    assert video.verify_video(tmp_path / "out.mp4", 8)


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_stream_with_no_decodable_frame(tmp_path: Path, ext: str) -> None:
    src = write_test_clip(tmp_path / f"zero{ext}", frames=6)
    with av.open(str(src)) as container:
        spans = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    data = bytearray(src.read_bytes())
    for pos, size in spans:  # keep the container intact, wipe every compressed frame
        data[pos : pos + size] = bytes(size)
    src.write_bytes(bytes(data))
    with pytest.raises(InputError, match="decodable"):
        video.probe_video(src, LIMITS)


def test_disk_full_while_encoding_is_transient_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nstd.errors import TransientError

    src = write_test_clip(tmp_path / "in.mp4", frames=4)
    info = video.probe_video(src, LIMITS)

    def full(self, *args):
        raise av.error.OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(video.VideoWriter, "_encode", full)
    out = tmp_path / "out.mp4"
    with pytest.raises(TransientError, match="no space left"):
        with video.VideoWriter(out, info) as writer:
            for frame in video.iter_frames(src, info):
                writer.write(frame.rgb, frame.pts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_anamorphic_source_becomes_square_pixels(tmp_path: Path) -> None:
    src = write_test_clip(tmp_path / "dv.mp4", frames=3, sample_aspect_ratio=Fraction(2))
    info, frames = _round_trip(src, tmp_path / "out.mp4")
    assert info.sample_aspect_ratio == 2 and (info.coded_width, info.coded_height) == (64, 48)
    assert (info.width, info.height) == (128, 48) and frames[0].rgb.shape == (48, 128, 3)
    out_info = video.probe_video(tmp_path / "out.mp4", LIMITS)
    assert (out_info.width, out_info.height, out_info.sample_aspect_ratio) == (128, 48, 1)
