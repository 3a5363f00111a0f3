"""Record formats -> the internal conversation form, media references and safe paths."""

import base64
import io
import os

import pytest
from support.datasets_records import llava_turns, write_photos
from PIL import Image

from qwenvl_data.conversation._layouts import detect_format, to_conversation
from qwenvl_data.vision._media_refs import resolve_media
from qwenvl_data.errors import (
    ImageLoadError,
    InvalidConversationError,
    PlaceholderMismatchError,
    UnsafePathError,
)


@pytest.fixture
def image_dir(tmp_path):
    write_photos(tmp_path / "images", ["a.jpg", "b.png", "sub/c.png"])
    return str(tmp_path / "images")


def test_llava_record_puts_each_image_where_its_placeholder_is(image_dir):
    record = {
        "id": "x",
        "image": "a.jpg",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "A photo."},
        ],
    }
    messages = to_conversation(record, None, image_dir)
    assert [(m.role, m.content) for m in messages] == [
        ("system", [{"type": "text", "content": "Be brief."}]),
        (
            "user",
            [
                {"type": "image", "content": os.path.join(os.path.realpath(image_dir), "a.jpg")},
                {"type": "text", "content": "\nWhat is shown?"},
            ],
        ),
        ("assistant", [{"type": "text", "content": "A photo."}]),
    ]


def test_llava_multi_image_keeps_order_and_text_between_placeholders(image_dir):
    record = {
        "image": ["b.png", "sub/c.png"],
        "conversations": llava_turns("Left <image> right <image> same?", "no"),
    }
    content = to_conversation(record, "llava", image_dir)[0].content
    assert [p["type"] for p in content] == ["text", "image", "text", "image", "text"]
    assert [os.path.basename(p["content"]) for p in content if p["type"] == "image"] == ["b.png", "c.png"]
    assert "".join(p["content"] for p in content if p["type"] == "text") == "Left  right  same?"


def test_sharegpt_messages_with_images_and_video_frames(tmp_path, image_dir):
    write_photos(tmp_path / "images" / "clip", ["f10.png", "f2.png", "f1.png"])
    record = {
        "messages": [{"role": "user", "content": "<video><image>Compare."}, {"role": "assistant", "content": "Same."}],
        "images": ["a.jpg"],
        "videos": ["clip"],
    }
    assert detect_format(record) == "sharegpt"
    video, image, text = to_conversation(record, None, image_dir)[0].content
    assert [os.path.basename(f) for f in video["content"]] == ["f1.png", "f2.png", "f10.png"]  # natural order
    assert "fps" not in video  # the model transform's video_fps (2.0) applies
    assert os.path.basename(image["content"]) == "a.jpg"
    assert text == {"type": "text", "content": "Compare."}


def test_openai_parts_accept_paths_bytes_data_urls_and_pil(image_dir):
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    pil = Image.new("RGB", (9, 9))
    record = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": "b.png"},
                    {"type": "image", "image": png.getvalue()},
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "image", "image": pil},
                    {"type": "text", "text": "Which differ?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "All."}]},
        ]
    }
    content = to_conversation(record, None, image_dir)[0].content
    assert content[0]["content"].endswith("b.png")
    assert content[1]["content"] == png.getvalue()
    assert content[2]["content"] == png.getvalue()
    assert content[3]["content"] is pil


def test_hf_layout_parts_without_payload_take_the_images_column_in_order(image_dir):
    first = Image.new("RGB", (10, 10))
    record = {  # what an Arrow table gives back: unified structs with None fields
        "messages": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "image", "text": None},
                                         {"type": "text", "text": "Describe."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Two squares."}]},
        ],
        "images": [first, {"bytes": b"\x89PNG", "path": None}],
    }
    content = to_conversation(record, None, image_dir)[0].content
    assert content[0]["content"] is first and content[1]["content"] == b"\x89PNG"


@pytest.mark.parametrize(
    "record",
    [
        {"image": ["a.jpg", "b.png"], "conversations": llava_turns("<image> hi", "x")},
        {"conversations": llava_turns("<image> hi", "x")},
        {"messages": [{"role": "user", "content": "<video> hi"}], "images": ["a.jpg"]},
        {"messages": [{"role": "user", "content": [{"type": "image"}]}], "images": []},
    ],
    ids=["llava_extra_image", "llava_missing_image", "sharegpt_video_without_videos", "hf_part_without_column"],
)
def test_placeholder_count_must_match_the_media(record, image_dir):
    with pytest.raises(PlaceholderMismatchError):
        to_conversation(record, None, image_dir)


def test_a_media_list_no_part_uses_is_named_when_the_parts_carry_their_own_payloads(image_dir):
    record = {
        "id": "u2",
        "images": ["b.png"],
        "messages": [{"role": "user", "content": [{"type": "image", "image": "a.jpg"}, {"type": "text", "text": "Q"}]},
                     {"role": "assistant", "content": "A"}],
    }  # fmt: skip
    with pytest.raises(PlaceholderMismatchError) as caught:
        to_conversation(record, None, image_dir)
    assert "field 'images' (1 images) is not used by any part: the 1 image part(s) carry their own payloads" in str(
        caught.value
    )


@pytest.mark.parametrize(
    "record",
    [
        {"conversations": []},
        {"messages": []},
        {"conversations": [{"from": "robot", "value": "hi"}]},
        {"messages": [{"role": "narrator", "content": "hi"}]},  # ("tool" is a role now: tool results)
        {"messages": [{"role": "user", "content": ""}]},
        {"messages": "hello"},
        {"text": "no conversation at all"},
    ],
    ids=["empty_llava", "empty_messages", "bad_from", "bad_role", "empty_content", "not_a_list", "no_conversation"],
)
def test_bad_conversations_are_refused(record, image_dir):
    with pytest.raises(InvalidConversationError):
        to_conversation(record, None, image_dir)


def test_remote_urls_and_bad_data_urls_are_image_errors(image_dir):
    for url in ("https://example.com/cat.jpg", "data:image/png;base64,@@@"):
        record = {"messages": [{"role": "user", "content": [{"type": "image", "image": url}]}]}
        with pytest.raises(ImageLoadError):
            to_conversation(record, None, image_dir)


def test_paths_inside_image_dir_resolve(image_dir):
    inside = os.path.join(os.path.realpath(image_dir), "sub", "c.png")
    assert resolve_media("sub/c.png", image_dir) == inside
    assert resolve_media("sub/../sub/c.png", image_dir) == inside
    assert resolve_media(inside, image_dir) == inside


def test_paths_escaping_image_dir_are_refused(tmp_path, image_dir):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"x")
    os.symlink(secret, os.path.join(image_dir, "link.png"))
    sibling = tmp_path / "images_other"  # shares a string prefix with image_dir, is not inside it
    sibling.mkdir()
    for path in ("../secret.png", str(secret), "link.png", "/etc/passwd", "../images_other/x.png", "a\x00.png"):
        with pytest.raises(UnsafePathError):
            resolve_media(path, image_dir)


def test_unsafe_path_in_a_record_is_refused_before_any_read(image_dir):
    record = {"image": "../../etc/passwd", "conversations": llava_turns("<image>", "x")}
    with pytest.raises(UnsafePathError, match="outside image_dir"):
        to_conversation(record, None, image_dir)


def test_video_file_is_located_not_decoded_and_takes_dataset_and_part_options(tmp_path):
    from support.media import write_video

    write_video(tmp_path / "clip.mp4", 20, 64, 48, rate=10)
    record = {"messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4", "max_frames": 8}]}]}
    video = to_conversation(record, "openai", str(tmp_path), {"fps": 1.0, "max_frames": 64})[0].content[0]
    # decoding is left to the model transform (lazily, only the kept frames); the part's own key wins
    assert video == {"type": "video", "content": str(tmp_path / "clip.mp4"), "fps": 1.0, "max_frames": 8}