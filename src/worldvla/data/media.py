"""Camera frames out of their stored media: image bytes and mp4 video -> uint8 arrays.

A dataset keeps its frames either as encoded images (PNG/JPEG bytes, or a file named next
to them) or as video files; both decoders return uint8 ``(T, H, W, 3)`` RGB and turn any
problem with the input into a :class:`~worldvla.errors.DataError` naming where it is.
The readers of a dataset format (:mod:`worldvla.data.lerobot_reader`) find the bytes and
the timestamps; these functions only decode them.

Needs Pillow for images and PyAV for video, imported when first used.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from worldvla.errors import DataError

FRAME_TOLERANCE = 0.4  # of a frame period: nearest frame, never a neighbour


def decode_images(column: Any, root: Path, where: str) -> np.ndarray:
    """An ``image`` column (struct ``{bytes, path}`` or binary) -> uint8 ``(T, H, W, 3)``."""
    import pyarrow as pa
    from PIL import Image

    col = column.combine_chunks()
    if pa.types.is_struct(col.type):
        names = [col.type.field(i).name for i in range(col.type.num_fields)]
        blobs = col.field("bytes").to_pylist() if "bytes" in names else [None] * len(col)
        paths = col.field("path").to_pylist() if "path" in names else [None] * len(col)
    elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        blobs, paths = col.to_pylist(), [None] * len(col)
    else:
        raise DataError(f"{where}: expected image structs {{bytes, path}}, got {col.type}")
    frames = []
    for t, (blob, path) in enumerate(zip(blobs, paths)):
        if blob is None and path:  # not embedded: a file relative to the dataset root
            try:
                blob = (root / path).read_bytes()
            except OSError as e:
                raise DataError(
                    f"{where}: frame {t}: image not embedded and {path!r} unreadable: {e}"
                ) from None
        if blob is None:
            raise DataError(f"{where}: frame {t} holds no image")
        try:
            with Image.open(io.BytesIO(blob)) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except (OSError, ValueError) as e:
            raise DataError(f"{where}: frame {t} is not a readable image: {e}") from None
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise DataError(f"{where}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames)  # (T, H, W, 3)


def decode_video(path: Path, timestamps: np.ndarray, fps: float, what: str = "") -> np.ndarray:
    """uint8 ``(T, H, W, 3)``: for each timestamp (seconds into the file), the frame shown then.

    Seeks to the first timestamp and decodes up to the last, so an episode inside a long
    v3.0 file costs only its own frames. A timestamp farther than 0.4 frame periods from
    every decoded frame (fewer frames than rows, wrong timestamps) is an error.
    """
    import av

    label = f"{path}" + (f" ({what})" if what else "")
    if not path.is_file():
        raise DataError(f"{label}: video file missing")
    tol = FRAME_TOLERANCE / fps
    first, last = float(timestamps.min()), float(timestamps.max())
    times, frames = [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{label}: no video stream")
            stream = container.streams.video[0]
            if first > tol:  # lands on the key frame at or before the first frame we need
                container.seek(int((first - tol) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * (frame.time_base or stream.time_base))
                if t < first - tol:
                    continue
                if t > last + tol:
                    break
                times.append(t)
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, OSError) as e:
        raise DataError(f"{label}: cannot decode the video (truncated or corrupt?): {e}") from None
    if not frames:
        raise DataError(f"{label}: no frame between {first:.3f} s and {last:.3f} s")
    order = np.argsort(times)
    times_arr = np.asarray(times)[order]
    j = np.clip(np.searchsorted(times_arr, timestamps), 1, max(len(times_arr) - 1, 1))
    left = np.clip(j - 1, 0, len(times_arr) - 1)
    right = np.clip(j, 0, len(times_arr) - 1)
    nearest = np.where(
        np.abs(times_arr[left] - timestamps) <= np.abs(times_arr[right] - timestamps), left, right
    )
    off = np.abs(times_arr[nearest] - timestamps)
    if (off > tol).any():
        t = int(np.argmax(off > tol))
        raise DataError(
            f"{label}: no frame at {timestamps[t]:.3f} s (row {t} of {len(timestamps)}); the video has "
            f"{len(times_arr)} frames between {times_arr[0]:.3f} and {times_arr[-1]:.3f} s there "
            "(fewer frames than rows, or timestamps that do not match the video)"
        )
    return np.stack([frames[order[i]] for i in nearest])  # (T, H, W, 3)
