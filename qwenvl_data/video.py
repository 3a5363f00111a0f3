"""Video input: a clip as a list of RGB frames of one size, padded to whole temporal patches."""

from collections.abc import Sequence

import torch
from PIL import Image

from qwenvl_data._image_io import ImageSource, load_image, to_rgb
from qwenvl_data.errors import ImageLoadError

VideoSource = Sequence[ImageSource] | torch.Tensor


def video_frames(video: VideoSource) -> list[Image.Image]:
    """The frames of ``video`` as RGB PIL images, all of one size.

    Args:
        video (Sequence[PIL.Image.Image | str | os.PathLike | bytes] | torch.Tensor): frames (images or their
            files, loaded with ``load_image``) or uint8 [T, C, H, W] with C in (1, 3, 4).

    Returns:
        list[PIL.Image.Image]: T frames in mode "RGB".

    Raises:
        ImageLoadError: no frames, frames of different sizes, or a frame file that cannot be loaded.
        ValueError: a tensor that is not uint8 [T, C, H, W].
    """
    if isinstance(video, torch.Tensor):
        if video.dim() != 4:
            raise ValueError(f"a video tensor must be uint8 [T, C, H, W], got shape {list(video.shape)}")
        frames = [to_rgb(frame) for frame in video]
    else:
        frames = [to_rgb(load_image(frame)) for frame in video]
    if not frames:
        raise ImageLoadError("a video needs at least one frame, got none")
    sizes = {frame.size for frame in frames}
    if len(sizes) > 1:
        raise ImageLoadError(f"all frames of a video must have one size, got (width, height) {sorted(sizes)}")
    return frames


def pad_to_temporal_patches(frames: list[Image.Image], temporal_patch_size: int) -> list[Image.Image]:
    """``frames`` with the last one repeated until their count is a multiple of ``temporal_patch_size``."""
    return frames + [frames[-1]] * (-len(frames) % temporal_patch_size)
