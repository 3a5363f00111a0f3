"""Which frames of a clip are kept, and how large each may be: qwen-vl-utils' rules, written out exactly.

Source: ``qwen_vl_utils/vision_process.py`` (qwen-vl-utils 0.0.11, the preprocessing of the released
Qwen2.5-VL models): ``calculate_video_frame_range`` (the ``video_start``/``video_end`` window),
``smart_nframes`` (how many frames), ``torch.linspace(start, end, n).round()`` (which ones) and the
``total_pixels`` rule of ``fetch_video`` (how large); for Qwen3-VL, transformers 5.24's
``Qwen3VLVideoProcessor.sample_frames`` count (``frame_count(..., sampling="transformers")``). Times are exact
fractions of the stream's time base, so a 30000/1001 fps clip picks the same frames as the integer-index rule
would.
"""

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from fractions import Fraction

from qwenvl_data._constants import TEMPORAL_PATCH_SIZE


def frame_window(times: Sequence[Fraction], start: float | None, end: float | None, duration: Fraction) -> tuple[int, int]:
    """First and last frame (inclusive, indices into ``times``) shown within [``start``, ``end``] seconds.

    qwen-vl-utils: ``start_frame = ceil(start * fps)``, ``end_frame = min(floor(end * fps), total - 1)``,
    i.e. the first frame at or after ``start`` and the last one at or before ``end``; an ``end`` past the
    clip is clamped to it, as there. Departures: a window that holds no frame, starts at or after the end of
    the clip, or has ``end <= start`` is an error (qwen-vl-utils also refuses a window of exactly one frame;
    here that frame is kept and repeated to fill a temporal patch).

    Args:
        times: presentation time of every frame in seconds from the first frame, ascending.
        start, end: the window in seconds, None for the clip's start / end.
        duration: the clip's length in seconds (frames / average rate).

    Returns:
        (first, last) with ``0 <= first <= last < len(times)``.

    Raises:
        ValueError: the window is empty or lies outside the clip; the message gives the clip's length.
    """
    window = f"window [{start if start is not None else 0}, {end if end is not None else 'end'}] s"
    if start is not None and start >= duration:
        raise ValueError(f"{window} starts after the clip ends ({float(duration):.3f} s)")
    if end is not None and end <= (start or 0):
        raise ValueError(f"{window} is empty (video_end must be after video_start)")
    first = 0 if start is None else bisect_left(times, Fraction(start))
    last = len(times) - 1 if end is None else bisect_right(times, Fraction(end)) - 1
    if first > last:
        raise ValueError(f"{window} holds no frame of the clip ({len(times)} frames, {float(duration):.3f} s)")
    return first, last


def frame_count(
    window_frames: int,
    native_fps: float,
    *,
    fps: float,
    nframes: int | None,
    min_frames: int,
    max_frames: int,
    sampling: str = "qwen_vl_utils",
) -> int:
    """How many frames to keep from a window of ``window_frames`` frames, by the ``sampling`` rule.

    ``"qwen_vl_utils"`` (its ``smart_nframes``): with ``nframes``, that count rounded to the nearest multiple of
    2 (ties to even, Python ``round``). Otherwise ``window_frames / native_fps * fps`` (the window's seconds times
    the wanted rate), raised to ``min_frames`` (rounded up to a multiple of 2), then capped at ``max_frames`` and
    at the frames there are (each rounded down to a multiple of 2), and finally rounded down to a multiple of 2.
    Departure: a window of a single frame keeps it (count 1) instead of failing.

    ``"transformers"`` (5.24's ``Qwen3VLVideoProcessor.sample_frames``, Qwen3-VL): with ``nframes``, that count as
    given. Otherwise ``int(window_frames / native_fps * fps)``, raised to ``min_frames``, then capped at
    ``max_frames`` and at the frames there are (any count: an odd one repeats its last frame in the last patch).

    Raises:
        ValueError: ``nframes`` outside [2, window_frames] (qwen-vl-utils) or [1, window_frames] (transformers).
    """
    if sampling == "transformers":
        if nframes is not None and not 1 <= nframes <= window_frames:
            raise ValueError(f"nframes={nframes} must lie in [1, {window_frames}], the frames in the window")
        if nframes is not None:
            return nframes
        return min(max(int(window_frames / native_fps * fps), min_frames), max_frames, window_frames)
    factor = TEMPORAL_PATCH_SIZE
    if nframes is not None:
        count = round(nframes / factor) * factor
        if not factor <= count <= window_frames:
            raise ValueError(
                f"nframes={nframes} (rounded to {count}) must lie in [{factor}, {window_frames}], "
                f"the frames in the window"
            )
        return count
    wanted = window_frames / native_fps * fps
    lowest = math.ceil(min_frames / factor) * factor
    highest = math.floor(min(max_frames, window_frames) / factor) * factor
    count = math.floor(min(max(wanted, lowest), highest) / factor) * factor
    return max(count, 1)  # 0 only for a one-frame window (max_frames >= 2 is checked by VideoOptions)


def pick_frames(times: Sequence[Fraction], first: int, last: int, count: int) -> list[int]:
    """The ``count`` frames nearest to ``count`` instants spaced evenly from ``times[first]`` to ``times[last]``.

    On a constant frame rate this is qwen-vl-utils' ``torch.linspace(first, last, count).round()`` and
    transformers' ``np.linspace(0, total - 1, count).round()`` (ties to the even index), computed exactly; on a
    variable frame rate the instants stay evenly spaced in time.

    Returns:
        ascending frame indices (a frame repeats only when a variable rate leaves a gap wider than the step).
    """
    if count == 1:
        return [first]
    begin, span = times[first], times[last] - times[first]
    picks = []
    for i in range(count):
        instant = begin + span * Fraction(i, count - 1)
        after = min(max(bisect_left(times, instant, first, last + 1), first), last)
        before = max(after - 1, first)
        gap_before, gap_after = instant - times[before], times[after] - instant
        if gap_before < gap_after or (gap_before == gap_after and before % 2 == 0):
            picks.append(before)
        else:
            picks.append(after)
    return picks


def frame_max_pixels(num_frames: int, min_pixels: int, max_pixels: int, total_pixels: int | None) -> float:
    """The per-frame pixel maximum of a clip of ``num_frames`` frames under a ``total_pixels`` budget.

    qwen-vl-utils: ``max(min(VIDEO_MAX_PIXELS, total_pixels / nframes * 2), int(min_pixels * 1.05))``, then
    at most the given ``max_pixels``: the budget lowers the per-frame maximum so that the clip's pixels
    (counted per temporal patch of 2 frames) fit, but never below 1.05 x ``min_pixels``. Departure: a
    ``max_pixels`` above 768*28*28 is honoured rather than capped there. The result stays a float, as
    there, because ``smart_resize`` scales by ``sqrt(pixels / max_pixels)``.
    """
    if total_pixels is None:
        return max_pixels
    budget = max(total_pixels / num_frames * TEMPORAL_PATCH_SIZE, int(min_pixels * 1.05))
    return min(max_pixels, budget)
