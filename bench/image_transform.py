"""Speed of Qwen2_5_VLImageTransform against transformers' PIL-backend processor, and against PIL's resize alone.

Both transforms read the ``--family``'s released preprocessor_config.json (default Qwen2.5-VL's; Qwen2-VL's has the
same numbers: max_pixels = 12845056): ours through ``checkpoint_transform``, the reference with ``from_pretrained``.
They get the same generated photo-like RGB images on one thread; outputs are checked bit-identical before timing. The resize alone (PIL
bicubic to the target size, which both transforms must do) is the floor for any exact PIL-based transform.

Run: python bench/image_transform.py [--family qwen2_vl] [--repeats 5] [--sizes 640x480 1280x720]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _family import add_family_option, family_under_test, processor_checkpoint  # noqa: E402
from support.media import photo  # noqa: E402

from qwenvl_data.image import smart_resize  # noqa: E402
from qwenvl_data.training import checkpoint_transform  # noqa: E402

SIZES = ["640x480", "1280x720", "1920x1080", "3000x2000", "4000x3000", "6000x4000"]


def cpu_seconds(repeats: int, run) -> float:
    """Fastest CPU time of ``repeats`` back-to-back calls of ``run``, as a data loader calls a transform.

    CPU time of this process (one thread), not wall time: the machine is shared, and waiting for a core is not
    the code's cost.
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=SIZES, help="photo sizes WIDTHxHEIGHT")
    add_family_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with processor_checkpoint(family_under_test(args.family)) as root:
        reference = Qwen2VLImageProcessorPil.from_pretrained(root)
        ours = checkpoint_transform(root).image_transform
    factor = ours.patch_size * ours.merge_size
    print(f"{args.family}: min_pixels {ours.min_pixels}, max_pixels {ours.max_pixels}")
    header = ("image", "resized", "reference", "ours", "resize", "ref/ours", "ours/resize")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, (11, 11, 10, 8, 8, 9, 12))))
    totals = {"reference": 0.0, "ours": 0.0, "resize": 0.0}
    for seed, (width, height) in enumerate(tuple(int(n) for n in size.split("x")) for size in args.sizes):
        image = photo(width, height, seed)
        expected = reference(images=image, return_tensors="pt")["pixel_values"]
        assert torch.equal(ours({"image": image})["pixel_values"], expected), f"not bit-exact at {width}x{height}"
        del expected
        resized_height, resized_width = smart_resize(height, width, factor, ours.min_pixels, ours.max_pixels)
        timings = {
            "reference": cpu_seconds(args.repeats, lambda: reference(images=image, return_tensors="pt")),
            "ours": cpu_seconds(args.repeats, lambda: ours({"image": image})),
            "resize": cpu_seconds(args.repeats, lambda: image.resize((resized_width, resized_height), Image.BICUBIC)),
        }
        for key, seconds in timings.items():
            totals[key] += seconds
        print(
            f"{width:>5}x{height:<5} {resized_width:>5}x{resized_height:<5} {timings['reference'] * 1e3:>8.1f}ms"
            f" {timings['ours'] * 1e3:>6.1f}ms {timings['resize'] * 1e3:>6.1f}ms"
            f" {timings['reference'] / timings['ours']:>8.2f}x {timings['ours'] / timings['resize']:>11.2f}x"
        )
    print(
        f"total: reference {totals['reference']:.3f}s, ours {totals['ours']:.3f}s, resize alone "
        f"{totals['resize']:.3f}s -> ours is {totals['reference'] / totals['ours']:.2f}x faster than the reference "
        f"and {totals['ours'] / totals['resize']:.2f}x the resize floor (bit-exact on every image)"
    )


if __name__ == "__main__":
    main()
