"""The file extensions nstd takes as images and as videos.

Their own module, without cv2, PIL or PyAV, because the job ledger needs them too: its
counters (`nstd.daemon.tally`) count frames and iterations of done jobs per kind, and
``nstd status`` opens the ledger without loading any codec. `nstd.media.images` and
`nstd.media.container` re-export them.
"""

from __future__ import annotations

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
)
VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
