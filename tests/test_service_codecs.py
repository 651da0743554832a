"""service.codecs.arrays in-process: content negotiation, RGB and 2-channel models (the served tiny
model is grey; these cover the shapes it cannot), round trips of every encoding."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from serving import npy_bytes

from service.codecs import arrays, media, negotiation
from service.core import frames
from service.core.card import ClipSpec
from service.core.errors import ServeError
from service.server.problems import status_of

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
        (None, negotiation.NPY, negotiation.NPY),
        ("", negotiation.JSON, negotiation.JSON),
        ("*/*", negotiation.MULTIPART, negotiation.ZIP),
        ("image/*", negotiation.NPY, negotiation.GIF),
        ("application/*", negotiation.MULTIPART, negotiation.ZIP),
        ("application/*", negotiation.JSON, negotiation.JSON),
        ("text/html, application/json;q=0.5, application/x-npy;q=0.9", negotiation.JSON, negotiation.NPY),
        ("image/gif;q=0, application/zip", negotiation.NPY, negotiation.ZIP),
        ("Application/JSON", negotiation.NPY, negotiation.JSON),
    ],
)
def test_accept_negotiation(accept: str | None, request_type: str, answer: str) -> None:
    assert negotiation.choose_answer_type(accept, request_type) == answer


def test_accept_without_a_match_is_406() -> None:
    with pytest.raises(ServeError) as caught:
        negotiation.choose_answer_type("text/html, image/gif;q=0", negotiation.NPY)
    assert status_of(caught.value) == 406 and "image/gif" in caught.value.detail


def test_rgb_images_in_zip_and_gif_out(rgb_clip: np.ndarray) -> None:
    files = []
    for t, frame in enumerate(rgb_clip):
        buffer = io.BytesIO()
        Image.fromarray(frame.transpose(1, 2, 0), "RGB").save(buffer, format="PNG")
        files.append((f"{t}.png", buffer.getvalue()))
    clips = media.decode_images(files, RGB)
    assert clips.frames.shape == (1, 4, 3, 28, 28) and not clips.batched
    np.testing.assert_array_equal(frames.to_uint8(clips.frames[0]), rgb_clip)

    prediction = clips.frames[:, :3] * 0.5  # (1, T'=3, 3, 28, 28): any float frames
    with zipfile.ZipFile(io.BytesIO(media.encode(negotiation.ZIP, clips, prediction))) as archive:
        assert archive.namelist() == ["frame_000.png", "frame_001.png", "frame_002.png"]
        for t, name in enumerate(archive.namelist()):
            image = Image.open(io.BytesIO(archive.read(name)))
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image).transpose(2, 0, 1), frames.to_uint8(prediction[0, t]))
    gif = Image.open(io.BytesIO(media.encode(negotiation.GIF, clips, prediction)))
    assert gif.n_frames == 4 + 3 and gif.info["loop"] == 0


def test_grey_images_for_an_rgb_model_are_converted(rgb_clip: np.ndarray) -> None:
    files = []
    for frame in rgb_clip[:, 0]:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="PNG")
        files.append(("", buffer.getvalue()))
    frames = media.decode_images(files, RGB).frames  # (1, T, 3, H, W): grey copied to R, G and B
    np.testing.assert_array_equal(frames[0, :, 0], frames[0, :, 2])


def test_two_channel_models_take_arrays_not_images() -> None:
    clip = np.random.default_rng(0).random((4, 2, 28, 28), dtype=np.float32)
    decoded = arrays.decode_json(json.dumps({"frames": clip.tolist()}).encode(), TWO)
    np.testing.assert_array_equal(decoded.frames[0], clip)
    with pytest.raises(ServeError) as caught:
        media.decode_images([("a.png", b"")] * 4, TWO)
    assert status_of(caught.value) == 415 and "2-channel" in caught.value.detail
    for answer in (negotiation.ZIP, negotiation.GIF):
        with pytest.raises(ServeError) as caught:
            negotiation.check_answerable(answer, 2, 1, False)
        assert status_of(caught.value) == 406 and "application/x-npy" in caught.value.detail


def test_npy_and_json_answers_round_trip_exactly() -> None:
    prediction = np.random.default_rng(1).random((2, 3, 1, 8, 8), dtype=np.float32)
    batched = arrays.Clips(prediction, batched=True)
    np.testing.assert_array_equal(np.load(io.BytesIO(media.encode(negotiation.NPY, batched, prediction))), prediction)
    document = json.loads(media.encode(negotiation.JSON, arrays.Clips(prediction[:1], batched=False), prediction[:1]))
    assert document["shape"] == [3, 1, 8, 8]
    np.testing.assert_array_equal(np.array(document["frames"], np.float32), prediction[0])


# ---------------------------------------------------------------------------------------
# hostile inputs: each must be a 4xx that names the problem, never a 500 or a silently wrong answer
# ---------------------------------------------------------------------------------------

SPEC = ClipSpec(in_frames=4, out_frames=4, channels=1, height=28, width=28)


def _problem(call, *args) -> ServeError:
    with pytest.raises(ServeError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(
    ("shape", "needle"),
    [
        (f"({2**70},)", "header says"),  # np.prod(..., int64) raised OverflowError: a 500
        (
            "(9223372036854775807, 9223372036854775807)",
            "85,070,591,730,234,615,847,396,907,784,232,501,249 bytes",
        ),  # wrapped to "1 bytes"
        ("(0, 99999999999999999999)", "header says"),
        ("(-4, 1, 28, 28)", "negative dimension"),
    ],
)
def test_forged_npy_shapes_are_400_with_exact_sizes(shape: str, needle: str) -> None:
    body = npy_bytes(np.zeros((4, 1, 28, 28), np.uint8)).replace(b"(4, 1, 28, 28)", shape.encode(), 1)
    problem = _problem(arrays.decode_npy, body, SPEC)
    assert status_of(problem) == 400 and needle in problem.detail, problem.detail


def _npy_with_header(header: str, data: bytes = b"") -> bytes:
    """A version 1.0 .npy whose header dict is ``header`` verbatim (padded as numpy.save pads)."""
    text = header.encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': __import__('os')}", "not the dict numpy.save writes"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2**62, 2**62), }", "not the dict numpy.save writes"),
        ("[1, 2, 3]", "got list"),
        ("{'descr': '<f4', 'shape': (2,), }", "got keys ['descr', 'shape']"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,), }", "shape must be a tuple of integers, got (2.5,)"),
        ("{'descr': '<f4', 'fortran_order': 'no', 'shape': (2,), }", "fortran_order must be True or False"),
        ("{'descr': 'zz', 'fortran_order': False, 'shape': (2,), }", "descr 'zz' is not a numpy dtype"),
        ("{'descr': '|V0', 'fortran_order': False, 'shape': (2,), }", "items of 0 bytes"),
        ("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", "Python objects"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }" + " " * 10_000, "over the 10,000"),
    ],
)
def test_malformed_npy_headers_are_400_in_the_formats_words(header: str, needle: str) -> None:
    """Each way a header can be wrong is named as the .npy format's fields; none of numpy's or
    Python's parser internals ("malformed node or string ... <ast.Call object at 0x...>",
    "Header does not contain the correct keys", "itemsize cannot be zero") reach the caller."""
    problem = _problem(arrays.decode_npy, _npy_with_header(header, b"\0" * 8), SPEC)
    assert status_of(problem) == 400 and problem.kind == "undecodable-npy", problem.detail
    assert needle in problem.detail, problem.detail
    for internal in ("ast.", " at 0x", "node or string", "Header does not", "itemsize", "ValueError", "SyntaxError"):
        assert internal not in problem.detail, problem.detail
    cut = _npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }")[:30]
    assert "cut short" in _problem(arrays.decode_npy, cut, SPEC).detail


def test_unreadable_images_are_named_in_the_senders_words(rgb_clip: np.ndarray) -> None:
    """Pillow's messages name its exception types and the in-memory file ("cannot identify image
    file <_io.BytesIO object at 0x...>"): the answer says what came instead."""
    png = io.BytesIO()
    Image.fromarray(rgb_clip[0].transpose(1, 2, 0)).save(png, format="PNG")
    good = png.getvalue()
    for bad, needle in ((b"GIF89a but not really", "it starts with b'GIF89a but n'"), (good[:60], "truncated")):
        problem = _problem(media.decode_images, [("a.png", good)] * 3 + [("d.png", bad)], RGB)
        assert status_of(problem) == 400 and "frame 3 ('d.png'): not a readable image" in problem.detail, problem.detail
        assert needle in problem.detail, problem.detail
        assert " at 0x" not in problem.detail and "Error" not in problem.detail, problem.detail


def test_big_endian_floats_are_the_same_numbers(rgb_clip: np.ndarray) -> None:
    clip = (rgb_clip[:, :1] / 255.0).astype(np.float32)  # (4, 1, 28, 28) real digits
    for dtype in (">f2", ">f4", ">f8"):
        decoded = arrays.decode_npy(npy_bytes(clip.astype(dtype)), SPEC).frames
        np.testing.assert_array_equal(decoded[0], clip.astype(dtype).astype(np.float32), err_msg=dtype)


def test_json_giant_integers_and_non_numbers_say_what_came() -> None:
    giant = _problem(arrays.decode_json, b'{"frames": [' + b"9" * 5000 + b"]}", SPEC)  # json's ValueError must become a 400
    assert status_of(giant) == 400 and "4300 digits" in giant.detail
    for values, got in (([[1, 2**70]], "beyond 64 bits"), ([None], "null"), (["a", 1], "strings"), ([True], "true/false")):
        problem = _problem(arrays.decode_json, json.dumps({"frames": values}).encode(), SPEC)
        assert status_of(problem) == 422 and got in problem.detail and "numbers" in problem.detail, problem.detail


def _encoded(images: list[Image.Image], fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=len(images) > 1, append_images=images[1:], **options)
    return buffer.getvalue()


def test_16_bit_images_are_scaled_not_clipped(rgb_clip: np.ndarray) -> None:
    digits = rgb_clip[:, 0].astype(np.uint16) * 257  # (4, 28, 28): 0-255 -> 0-65535
    files = [("", _encoded([Image.fromarray(frame)])) for frame in digits]
    assert Image.open(io.BytesIO(files[0][1])).mode.startswith("I;16")
    frames = media.decode_images(files, SPEC).frames  # Pillow's convert("L") would clip all of 1-65535 to 255
    np.testing.assert_allclose(frames[0, :, 0], rgb_clip[:, 0] / 255.0, atol=1e-6)
    rgb = media.decode_images(files, RGB).frames  # (1, 4, 3, 28, 28): grey copied to R, G and B
    np.testing.assert_array_equal(rgb[0, :, 2], frames[0, :, 0])


def test_animated_and_32_bit_frames_are_422(rgb_clip: np.ndarray) -> None:
    still = _encoded([Image.fromarray(rgb_clip[0, 0])])
    stills = [Image.fromarray(frame) for frame in rgb_clip[:, 0]]
    for fmt in ("GIF", "PNG"):  # an animated GIF / APNG in one part: only its first frame would be used
        problem = _problem(media.decode_images, [("", still)] * 3 + [("anim", _encoded(stills, fmt))], SPEC)
        assert (
            status_of(problem) == 422 and "frame 3" in problem.detail and "an animation (more than one frame)" in problem.detail
        ), (
            fmt,
            problem.detail,
        )
    for mode in ("I", "F"):  # no fixed pixel range
        image = Image.fromarray(rgb_clip[0, 0]).convert(mode)
        problem = _problem(media.decode_images, [("", _encoded([image], "TIFF"))] * 4, SPEC)
        assert status_of(problem) == 422 and f"mode {mode}" in problem.detail and "8- or 16-bit" in problem.detail, problem.detail


@pytest.mark.parametrize("accept", ["application/json;q=abc", "application/json;q=nan", "application/json;q=2", "*/*;q=-1"])
def test_accept_with_an_invalid_q_is_400_naming_it(accept: str) -> None:
    problem = _problem(negotiation.choose_answer_type, accept, negotiation.NPY)
    assert status_of(problem) == 400 and accept.split(";")[1] in problem.detail and "0 to 1" in problem.detail
