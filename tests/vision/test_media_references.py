"""One resolver for media references: paths, file:// URIs, data URLs, bytes and HF image dicts load the same image
in load_image, the model transform (image / image_url) and the datasets; unsafe, remote and non-regular
references are refused by name."""

import base64
import os
import urllib.parse

import datasets
import numpy as np
import pytest
import torch
from support.datasets_records import llava_turns, write_jsonl
from support.media import photo

from qwenvl_data.datasets import multimodal_chat_dataset
from qwenvl_data.conversation._media import resolve_image, resolve_video
from qwenvl_data.errors import ImageLoadError, SampleError, UnsafePathError
from qwenvl_data.image import load_image
from qwenvl_data.transform import Qwen2_5_VLTransform


@pytest.fixture(scope="module")
def transform(vocab_files):
    return Qwen2_5_VLTransform(*vocab_files)


@pytest.fixture
def images(tmp_path):
    """image_dir holding 'my cat.png' (a space in its name) and 'sub/dog 100%.png'; a secret file beside it."""
    image_dir = tmp_path / "images"
    (image_dir / "sub").mkdir(parents=True)
    photo(61, 47, seed=1).save(image_dir / "my cat.png")
    photo(50, 70, seed=2).save(image_dir / "sub" / "dog 100%.png")
    photo(30, 30, seed=3).save(tmp_path / "secret.png")
    return image_dir


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def file_uris(path) -> list[str]:
    """The spellings of a file URI met in the field: percent-encoded (pathlib's), raw, and with localhost."""
    return [path.as_uri(), "file://" + str(path), "file://localhost" + urllib.parse.quote(str(path))]


def data_urls(png: bytes) -> list[str]:
    return [
        "data:image/png;base64," + base64.b64encode(png).decode(),
        "data:image/png," + urllib.parse.quote_from_bytes(png),  # RFC 2397 percent-encoded form
    ]


def user_turn(*parts) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": "A photo."}]


def test_file_uris_with_spaces_and_percent_encoding_load_like_the_plain_path(images):
    for name in ("my cat.png", "sub/dog 100%.png"):
        path = images / name
        expected = pixels(load_image(str(path)))
        for uri in file_uris(path):
            assert np.array_equal(pixels(load_image(uri)), expected), uri
    assert "my%20cat.png" in (images / "my cat.png").as_uri() and "100%25" in (images / "sub/dog 100%.png").as_uri()


def test_data_urls_bytes_and_hf_dicts_load_like_the_file(images):
    path = images / "sub" / "dog 100%.png"
    png = path.read_bytes()
    expected = pixels(load_image(path))
    sources = [*data_urls(png), png, bytearray(png), memoryview(png), {"bytes": png, "path": None},
               {"bytes": png, "path": "elsewhere.png"}, {"bytes": None, "path": str(path)},
               {"path": path.as_uri()}, {"url": data_urls(png)[0]}]
    for source in sources:
        assert np.array_equal(pixels(load_image(source)), expected), type(source).__name__


def test_transform_image_and_image_url_keys_take_every_reference_form(transform, images):
    path = images / "my cat.png"
    png = path.read_bytes()
    expected = transform({"messages": user_turn({"type": "image", "image": str(path)})})
    forms = [{"type": "image", "image": uri} for uri in file_uris(path)]
    forms += [{"type": "image_url", "image_url": {"url": uri}} for uri in file_uris(path)]
    forms += [{"type": "image_url", "image_url": path.as_uri()}]
    forms += [{"type": "image", "image": url} for url in data_urls(png)]
    forms += [{"type": "image", "image": {"bytes": png, "path": None}}, {"type": "image", "image": png}]
    for part in forms:
        out = transform({"messages": user_turn(part)})
        assert out["tokens"] == expected["tokens"], part
        assert torch.equal(out["pixel_values"], expected["pixel_values"]), part


def _dataset_pixels(source, image_dir, **kwargs) -> list[torch.Tensor]:
    def image_only(sample):
        return {"pixel_values": [part["content"] for m in sample["messages"] for part in m.content
                                 if part["type"] == "image"]}

    dataset = multimodal_chat_dataset(image_only, source=source, image_dir=str(image_dir), **kwargs)
    return [[pixels(load_image(image)) for image in dataset[i]["pixel_values"]] for i in range(len(dataset))]


def test_dataset_records_with_file_uris_load_like_plain_paths(images, tmp_path):
    path = images / "my cat.png"
    records = [{"id": "plain", "image": "my cat.png", "conversations": llava_turns("<image>?", "x")}]
    records += [{"id": f"llava{i}", "image": uri, "conversations": llava_turns("<image>?", "x")}
                for i, uri in enumerate(file_uris(path))]
    records += [{"id": "sharegpt", "messages": [{"role": "user", "content": "<image>?"},
                                               {"role": "assistant", "content": "x"}], "images": [path.as_uri()]},
                {"id": "openai", "messages": user_turn({"type": "image_url", "image_url": {"url": path.as_uri()}})}]
    loaded = _dataset_pixels("jsonl", images, data_files=str(write_jsonl(tmp_path / "d.jsonl", records)))
    assert len(loaded) == len(records)
    for sample in loaded:
        assert len(sample) == 1 and np.array_equal(sample[0], loaded[0][0])


def test_dataset_hf_image_dicts_with_bytes_or_a_path_load_like_the_file(images):
    path = images / "sub" / "dog 100%.png"
    rows = [{"bytes": path.read_bytes(), "path": None}, {"bytes": None, "path": "sub/dog 100%.png"},
            {"bytes": None, "path": str(path)}]
    messages = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A photo."}]}]  # the hub's layout
    table = datasets.Dataset.from_list([{"messages": messages, "images": [row]} for row in rows])
    loaded = _dataset_pixels(table, images)
    expected = pixels(load_image(path))
    assert len(loaded) == 3 and all(np.array_equal(sample[0], expected) for sample in loaded)


def test_absolute_paths_inside_image_dir_are_accepted_in_every_form(images):
    path = images / "sub" / "dog 100%.png"
    real = os.path.realpath(path)
    for reference in (str(path), path, *file_uris(path), {"bytes": None, "path": str(path)}, {"url": path.as_uri()}):
        assert resolve_image(reference, str(images)) == real


def test_references_escaping_image_dir_are_refused_in_every_form(images, tmp_path):
    secret = tmp_path / "secret.png"
    os.symlink(secret, images / "link.png")
    references = ["../secret.png", str(secret), *file_uris(secret), "file:///etc/passwd", "file:../secret.png",
                  {"bytes": None, "path": str(secret)}, {"path": secret.as_uri()}, {"url": secret.as_uri()},
                  (images / "link.png").as_uri(), "file://" + str(images) + "/../secret.png"]
    for reference in references:
        with pytest.raises(UnsafePathError, match="outside image_dir"):
            resolve_image(reference, str(images))
    with pytest.raises(UnsafePathError, match="outside image_dir") as refused:
        resolve_video(secret.as_uri(), str(images))
    assert "dataset.image_dir=<directory>" in str(refused.value)  # the way to read it on purpose


def test_a_file_uri_escaping_image_dir_is_a_counted_skip(images, tmp_path):
    outside = (tmp_path / "secret.png").as_uri()
    records = [{"id": "ok", "image": "my cat.png", "conversations": llava_turns("<image>?", "x")},
               {"id": "out", "image": outside, "conversations": llava_turns("<image>?", "x")}]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    dataset = multimodal_chat_dataset(lambda s: s, source="jsonl", data_files=str(data), image_dir=str(images),
                                      on_error="skip")
    assert dataset[0] is not None and dataset[1] is None
    assert dataset.stats["unsafe_path"] == 1


@pytest.mark.timeout(20)  # opening a FIFO for reading blocks until a writer comes: a hang fails here
def test_a_fifo_is_refused_at_once_everywhere(transform, images, tmp_path):
    fifo = images / "pipe.png"
    os.mkfifo(fifo)
    video_fifo = images / "pipe.mp4"
    os.mkfifo(video_fifo)
    for reference in (fifo, str(fifo), fifo.as_uri(), {"bytes": None, "path": str(fifo)}):
        with pytest.raises(ImageLoadError, match=r"pipe\.png is a named pipe \(FIFO\), not a regular file"):
            load_image(reference)
    with pytest.raises(ImageLoadError, match=r"sample \(f\): .*FIFO"):
        transform({"id": "f", "messages": user_turn({"type": "image_url", "image_url": {"url": fifo.as_uri()}})})
    with pytest.raises(ImageLoadError, match="FIFO"):
        resolve_video("pipe.mp4", str(images))
    with pytest.raises(ImageLoadError, match="FIFO"):
        transform({"messages": user_turn({"type": "video", "video": [str(fifo), str(fifo)]})})
    records = [{"id": "p", "image": "pipe.png", "conversations": llava_turns("<image>?", "x")}]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    dataset = multimodal_chat_dataset(transform, source="jsonl", data_files=str(data), image_dir=str(images),
                                      on_error="skip")
    assert dataset[0] is None and dataset.stats["bad_image"] == 1


def test_a_directory_is_refused_as_an_image(images):
    for reference in (images / "sub", (images / "sub").as_uri()):
        with pytest.raises(ImageLoadError, match=r"sub is a directory, not a regular file"):
            load_image(reference)


def test_a_device_is_refused_before_it_is_read():
    with pytest.raises(ImageLoadError, match="/dev/zero is a character device"):
        load_image("/dev/zero")  # reading it would never end


@pytest.mark.parametrize(
    "url",
    ["https://example.com/cat.png", "http://example.com/cat.png", "HTTPS://EXAMPLE.COM/CAT.PNG",
     "s3://bucket/cat.png", "ftp://example.com/cat.png", "file://fileserver/share/cat.png"],
)
def test_remote_urls_are_refused_saying_nothing_is_fetched(transform, images, url):
    with pytest.raises(ImageLoadError, match="not fetched|nothing is fetched"):
        load_image(url)
    with pytest.raises(ImageLoadError, match="not fetched|nothing is fetched"):
        resolve_image({"url": url}, str(images))
    with pytest.raises(ImageLoadError, match=r"sample \(w\): .*(not fetched|nothing is fetched)"):
        transform({"id": "w", "messages": user_turn({"type": "image_url", "image_url": {"url": url}})})


@pytest.mark.parametrize(
    "reference,cause",
    [("data:image/png;base64,@@@", "not valid base64"), ("data:image/png;base64", "no ','"),
     ({"bytes": None, "path": None}, "neither 'bytes', 'path' nor 'url'"), (42, "type int is not supported"),
     ("file://", "without a path")],
)
def test_malformed_references_are_image_load_errors_saying_why(images, reference, cause):
    for resolve in (load_image, lambda r: resolve_image(r, str(images))):
        with pytest.raises(ImageLoadError, match=cause) as raised:
            resolve(reference)
        assert isinstance(raised.value, SampleError) and raised.value.cause == "bad_image"


def test_a_long_data_url_is_shortened_in_the_error(images):
    url = "data:image/png;base64," + "A" * 10_001  # invalid length, 10 kB long
    with pytest.raises(ImageLoadError) as raised:
        load_image(url)
    assert len(str(raised.value)) < 300


def test_in_memory_images_and_tensors_pass_through_unchanged(transform, images):
    image = photo(28, 28, seed=4)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    assert resolve_image(image, str(images)) is image and resolve_image(tensor, str(images)) is tensor
    from_tensor = transform({"messages": user_turn({"type": "image", "image": tensor})})
    from_image = transform({"messages": user_turn({"type": "image", "image": image})})
    assert torch.equal(from_tensor["pixel_values"], from_image["pixel_values"])
    with pytest.raises(ImageLoadError, match="tensor is not a file"):
        load_image(tensor)
