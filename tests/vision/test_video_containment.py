"""FFmpeg opens only the video file that passed the media checks: a playlist or concat list that refers to
other files (even one named .mp4) is refused naming the file, instead of being followed."""

import pytest
from support.media import write_video

from qwenvl_data.errors import ImageLoadError
from qwenvl_data.video import VideoOptions
from qwenvl_data.vision._video_file import read_video_file


@pytest.fixture
def referenced_clip(tmp_path):
    """A real clip outside the media directory, that the reference files below point at."""
    secret = tmp_path / "elsewhere" / "secret.mp4"
    secret.parent.mkdir()
    return write_video(secret, 8, 32, 32, rate=4)


REFERENCES = {
    "playlist.m3u8": "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{clip}\n#EXT-X-ENDLIST\n",
    "disguised_playlist.mp4": "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nfile:{clip}\n#EXT-X-ENDLIST\n",
    "list.ffconcat": "ffconcat version 1.0\nfile 'elsewhere/secret.mp4'\n",  # relative: concat's "safe" allows it
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_a_file_that_refers_to_other_files_is_refused_not_followed(tmp_path, referenced_clip, name):
    reference = tmp_path / name
    reference.write_text(REFERENCES[name].format(clip=referenced_clip))
    with pytest.raises(ImageLoadError, match=rf"video file {reference} is not a video FFmpeg can read \(only the "
                                             r"container formats mov,mp4.* are opened\)"):  # fmt: skip
        read_video_file(reference, VideoOptions(nframes=2))


def test_the_referenced_clip_itself_reads(referenced_clip):
    frames, _, _ = read_video_file(referenced_clip, VideoOptions(nframes=2))
    assert len(frames) == 2
