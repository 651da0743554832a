"""service.codecs in-process: content negotiation, RGB and 2-channel models (the served tiny
model is grey; these cover the shapes it cannot), round trips of every encoding."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from service import codecs
from service.engine import ClipSpec
from service.problems import Problem

RGB = ClipSpec(in_frames=4, out_frames=3, channels=3, height=28, width=28)
TWO = ClipSpec(in_frames=4, out_frames=4, channels=2, height=28, width=28)


@pytest.fixture(scope="module")
def rgb_clip(mnist_dir) -> np.ndarray:
    """(4, 3, 28, 28) uint8: four real MNIST digits, each a different colour mix."""
    from model.data import read_idx_images

    digits = read_idx_images(next(mnist_dir.glob("*-images-idx3-ubyte*")))[:4]  # (4, 28, 28)
    weights = np.array([[1.0, 0.2, 0.6], [0.3, 1.0, 0.1], [0.5, 0.5, 1.0], [1.0, 1.0, 0.0]])  # (T, 3)
    return np.round(digits[:, None] * weights[:, :, None, None]).astype(np.uint8)


@pytest.mark.parametrize(
    ("accept", "request_type", "answer"),
    [
        (None, codecs.NPY, codecs.NPY),
        ("", codecs.JSON, codecs.JSON),
        ("*/*", codecs.MULTIPART, codecs.ZIP),
        ("image/*", codecs.NPY, codecs.GIF),
        ("application/*", codecs.MULTIPART, codecs.ZIP),
        ("application/*", codecs.JSON, codecs.JSON),
        ("text/html, application/json;q=0.5, application/x-npy;q=0.9", codecs.JSON, codecs.NPY),
        ("image/gif;q=0, application/zip", codecs.NPY, codecs.ZIP),
        ("Application/JSON", codecs.NPY, codecs.JSON),
    ],
)
def test_accept_negotiation(accept: str | None, request_type: str, answer: str) -> None:
    assert codecs.choose_answer_type(accept, request_type) == answer


def test_accept_without_a_match_is_406() -> None:
    with pytest.raises(Problem) as caught:
        codecs.choose_answer_type("text/html, image/gif;q=0", codecs.NPY)
    assert caught.value.status == 406 and "image/gif" in caught.value.detail


def test_rgb_images_in_zip_and_gif_out(rgb_clip: np.ndarray) -> None:
    files = []
    for t, frame in enumerate(rgb_clip):
        buffer = io.BytesIO()
        Image.fromarray(frame.transpose(1, 2, 0), "RGB").save(buffer, format="PNG")
        files.append((f"{t}.png", buffer.getvalue()))
    clips = codecs.decode_images(files, RGB)
    assert clips.frames.shape == (1, 4, 3, 28, 28) and not clips.batched
    np.testing.assert_array_equal(codecs.to_uint8(clips.frames[0]), rgb_clip)

    prediction = clips.frames[:, :3] * 0.5  # (1, T'=3, 3, 28, 28): any float frames
    with zipfile.ZipFile(io.BytesIO(codecs.encode(codecs.ZIP, clips, prediction))) as archive:
        assert archive.namelist() == ["frame_000.png", "frame_001.png", "frame_002.png"]
        for t, name in enumerate(archive.namelist()):
            image = Image.open(io.BytesIO(archive.read(name)))
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image).transpose(2, 0, 1), codecs.to_uint8(prediction[0, t]))
    gif = Image.open(io.BytesIO(codecs.encode(codecs.GIF, clips, prediction)))
    assert gif.n_frames == 4 + 3 and gif.info["loop"] == 0


def test_grey_images_for_an_rgb_model_are_converted(rgb_clip: np.ndarray) -> None:
    files = []
    for frame in rgb_clip[:, 0]:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        files.append(("", buffer.getvalue()))
    frames = codecs.decode_images(files, RGB).frames  # (1, T, 3, H, W): grey copied to R, G and B
    np.testing.assert_array_equal(frames[0, :, 0], frames[0, :, 2])


def test_two_channel_models_take_arrays_not_images() -> None:
    clip = np.random.default_rng(0).random((4, 2, 28, 28), dtype=np.float32)
    decoded = codecs.decode_json(json.dumps({"frames": clip.tolist()}).encode(), TWO)
    np.testing.assert_array_equal(decoded.frames[0], clip)
    with pytest.raises(Problem) as caught:
        codecs.decode_images([("a.png", b"")] * 4, TWO)
    assert caught.value.status == 415 and "2-channel" in caught.value.detail
    for answer in (codecs.ZIP, codecs.GIF):
        with pytest.raises(Problem) as caught:
            codecs.check_answerable(answer, 2, 1, False)
        assert caught.value.status == 406 and "application/x-npy" in caught.value.detail


def test_npy_and_json_answers_round_trip_exactly() -> None:
    prediction = np.random.default_rng(1).random((2, 3, 1, 8, 8), dtype=np.float32)
    batched = codecs.Clips(prediction, batched=True)
    np.testing.assert_array_equal(np.load(io.BytesIO(codecs.encode(codecs.NPY, batched, prediction))), prediction)
    document = json.loads(codecs.encode(codecs.JSON, codecs.Clips(prediction[:1], batched=False), prediction[:1]))
    assert document["shape"] == [3, 1, 8, 8]
    np.testing.assert_array_equal(np.array(document["frames"], np.float32), prediction[0])
