"""Video loading: our loader (decode only the kept frames) vs decoding every frame (the old way), same frames.

Generates H.264 clips (30 fps, simple moving content, x264 ultrafast) once under a cache directory, then for
each clip runs, each in a fresh subprocess so that peak memory (VmHWM) is the case's own: our
``read_video_file`` (as the image transform calls it: kept frames resized as they are decoded) at the default
2 fps (or ``--nframes``), and a decode-all reader that converts every frame to an RGB image, keeps them, and
picks and resizes the same frames; the kept pixels must agree. Prints time and peak RSS per case and ratios.
Peak RSS includes the interpreter with torch imported (about 460 MiB).

    python bench/video.py                       # 640x360 at 10, 60, 600 s
    python bench/video.py --nframes 64          # the same kept count at every length
    python bench/video.py --sizes 640x360 1920x1080 --seconds 10 60 600
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CACHE = os.path.join(tempfile.gettempdir(), "qwenvl_bench_video")


def make_clip(width: int, height: int, seconds: int) -> str:
    """A cached 30 fps H.264 clip: a gradient background with a square moving across it."""
    import av
    import numpy as np

    path = os.path.join(CACHE, f"{width}x{height}_{seconds}s.mp4")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    partial = path + ".partial.mp4"
    background = np.tile(np.linspace(0, 255, width, dtype=np.uint8)[None, :, None], (height, 1, 3))
    with av.open(partial, "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "60"}
        side = height // 4
        for i in range(seconds * 30):
            frame = background.copy()
            x = (i * 7) % (width - side)
            frame[side : 2 * side, x : x + side] = (255, 32, 32)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(partial, path)
    return path


def options(nframes: int | None):
    from qwenvl_data.video import VideoOptions

    return VideoOptions(nframes=nframes)


def frame_size(nframes: int | None):
    """The image transform's rule for the size of each frame of the clip (pixel budgets included)."""
    from qwenvl_data.image import Qwen2_5_VLImageTransform

    transform = Qwen2_5_VLImageTransform()
    return lambda count, height, width: transform._video_frame_size(count, height, width, options(nframes), "bench")


def decode_all(path: str, nframes: int | None, keep_all: bool = True) -> tuple[list, float]:
    """The old reader: decode every frame to a full-size RGB image and keep them all, then pick the same
    frames (qwen-vl-utils' rule) and resize them for the model.

    ``keep_all=False`` converts every frame too but keeps only the picked ones: the same time, without the
    memory (for clips whose every frame would not fit in this machine's memory)."""
    import av

    from qwenvl_data.vision._resize import resize_rgb
    from qwenvl_data.vision._video_sampling import frame_count, pick_frames

    chosen = options(nframes)
    with av.open(path) as container:
        stream = container.streams.video[0]
        total, rate = stream.frames, float(stream.average_rate)
        count = frame_count(total, rate, fps=chosen.fps, nframes=nframes, min_frames=4, max_frames=768)
        picks = pick_frames(list(range(total)), 0, total - 1, count)
        wanted = set(picks)
        frames = [image for i, frame in enumerate(container.decode(stream))
                  if (image := frame.to_image()) and (keep_all or i in wanted)]
    kept = [frames[i] for i in picks] if keep_all else frames
    height, width = frame_size(nframes)(count, kept[0].height, kept[0].width)
    return [resize_rgb(image, height, width) for image in kept], count / total * rate


def ours(path: str, nframes: int | None) -> tuple[list, float]:
    from qwenvl_data.vision._video_file import read_video_file

    frames, fps, _ = read_video_file(path, options(nframes), frame_size(nframes))
    return frames, fps


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_case(which: str, path: str, nframes: int | None) -> None:
    """In the subprocess: load once, print JSON with seconds, peak RSS and a checksum of the kept frames."""
    import numpy as np

    import qwenvl_data.vision._video_file  # noqa: F401  (imports, torch included, are not what is timed)
    import qwenvl_data.image  # noqa: F401

    start = time.perf_counter()
    frames, fps = ours(path, nframes) if which == "ours" else decode_all(path, nframes, keep_all=which == "all")
    seconds = time.perf_counter() - start
    checksum = int(sum(int(np.asarray(frame, dtype=np.int64).sum()) for frame in frames))
    print(json.dumps({"seconds": seconds, "peak_mib": peak_rss_mib(), "frames": len(frames), "fps": fps,
                      "checksum": checksum}))


def measure(which: str, path: str, nframes: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    command = [sys.executable, __file__, "--case", which, path] + (["--nframes", str(nframes)] if nframes else [])
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["640x360"], help="WIDTHxHEIGHT, e.g. 640x360 1920x1080")
    parser.add_argument("--seconds", nargs="+", type=int, default=[10, 60, 600])
    parser.add_argument(
        "--all-max-seconds", type=int, default=60,
        help="longer clips: the decode-all reader converts every frame but keeps only the kept ones (its peak "
        "memory is then not the old reader's, marked *); the old reader needs ~frames x W x H x 3 bytes",
    )
    parser.add_argument("--nframes", type=int, help="keep this many frames (default: 2 fps, up to 768)")
    parser.add_argument("--case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(*args.case, args.nframes)
        return
    print(f"clips cached in {CACHE}")
    print(f"{'clip':>18} {'kept':>5} {'ours s':>8} {'all s':>8} {'speed-up':>9} {'ours MiB':>9} {'all MiB':>9} {'mem ratio':>9}")
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        peaks = {}
        for seconds in args.seconds:
            start = time.perf_counter()
            path = make_clip(width, height, seconds)
            made = time.perf_counter() - start
            capped = seconds > args.all_max_seconds
            mine = measure("ours", path, args.nframes)
            theirs = measure("all_no_keep" if capped else "all", path, args.nframes)
            if (mine["frames"], mine["checksum"]) != (theirs["frames"], theirs["checksum"]):
                raise SystemExit(f"{path}: the two readers kept different frames")
            peaks[seconds] = mine["peak_mib"]
            print(
                f"{size + f' {seconds}s':>18} {mine['frames']:>5} {mine['seconds']:>8.2f} {theirs['seconds']:>8.2f} "
                f"{theirs['seconds'] / mine['seconds']:>8.1f}x {mine['peak_mib']:>9.0f} {theirs['peak_mib']:>9.0f} "
                f"{theirs['peak_mib'] / mine['peak_mib']:>8.1f}x" + ("*" if capped else "")
                + (f"   (clip made in {made:.0f} s)" if made > 1 else "")
            )
        shortest, longest = min(peaks), max(peaks)
        print(f"{size}: our peak RSS at {longest} s / at {shortest} s = {peaks[longest] / peaks[shortest]:.2f}x")


if __name__ == "__main__":
    main()
