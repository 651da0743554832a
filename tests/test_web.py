"""The pages a person uses, in a real browser: headless Chromium (Selenium) against a real
``stlight serve`` on loopback, with every other host unreachable.

- ``/docs`` and ``/redoc`` render every operation from files the server ships, asking no other host;
- ``/`` predicts an example clip, an uploaded ``.npy``, frame images and a GIF, and the pixels it
  draws are the API's own answer for that clip; a bad file shows the API's problem detail;
- screenshots at desktop and 360 px widths go to ``test-artifacts/web/`` (gitignored);
  ``STLIGHT_WRITE_DOCS_IMG=1`` also rewrites ``docs/img/page.png``, the README's picture.

The routes behind the page (examples by name, favicon, CSP) are checked without a browser too.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from browser import chromium, foreign, full_page_png, requested_urls, resize, unavailable
from PIL import Image
from serving import REPO, Server, npy_bytes, running

from service.core.frames import to_uint8

try:
    from selenium.webdriver.common.keys import Keys
except ImportError:  # the browser tests skip, saying so
    Keys = None

NPY, PROBLEM = "application/x-npy", "application/problem+json"
EXAMPLES = REPO / "service" / "assets" / "examples"
ARTIFACTS = REPO / "test-artifacts" / "web"
NO_BROWSER = unavailable()
needs_browser = pytest.mark.skipif(NO_BROWSER is not None, reason=f"no headless Chromium: {NO_BROWSER}")


# ---------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shipped default model, served as a user would start it."""
    with running(tmp_path_factory.mktemp("web") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if NO_BROWSER:
        pytest.skip(f"no headless Chromium: {NO_BROWSER}")
    with chromium() as driver:
        yield driver


def api_prediction(server: Server, body: bytes, content_type: str = NPY, query: str = "") -> np.ndarray:
    headers = {"Content-Type": content_type, "Accept": NPY}
    answer = httpx.post(server.url + "/predict" + query, content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return np.load(io.BytesIO(answer.content), allow_pickle=False)


def request_types(server: Server) -> list[str]:
    """The bodies ``POST /predict`` takes, as the server's OpenAPI document says."""
    spec = httpx.get(server.url + "/openapi.json").json()
    return list(spec["paths"]["/predict"]["post"]["requestBody"]["content"])


def wait_for(driver: Any, script: str, timeout: float = 30.0, what: str = "") -> Any:
    """Poll a JS expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script("return " + script)
        if value:
            return value
        time.sleep(0.05)
    logs = driver.get_log("browser")
    raise AssertionError(f"timed out waiting for {what or script}; console: {logs}")


def open_page(driver: Any, server: Server) -> None:
    driver.get_log("performance")  # the logs of earlier pages: the checks that follow cover this one only
    driver.get_log("browser")
    driver.get(server.url + "/")
    wait_for(driver, "document.body.dataset.ready === 'true'", what="the page to load its lists")


def predict_and_wait(driver: Any) -> str:
    """Press Predict; 'ok' once the result shows, or the error text."""
    driver.execute_script("document.getElementById('status').textContent = ''")
    driver.find_element("id", "predict").click()
    shown = "!document.getElementById('result').hidden && document.getElementById('status').textContent.startsWith('Predicted')"
    failed = "!document.getElementById('error').hidden && document.getElementById('error').textContent"
    return wait_for(driver, f"({shown} && 'ok') || ({failed})", what="a prediction or an error")


def canvas_pixels(driver: Any, selector: str) -> np.ndarray:
    """The RGB pixels of every canvas matching ``selector``, read back from the page: (N, H, W, 3)."""
    count, height, width, data = driver.execute_script(
        """
        const canvases = [...document.querySelectorAll(arguments[0])];
        let s = '';
        for (const c of canvases) {
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          for (let i = 0; i < d.length; i += 4) s += String.fromCharCode(d[i], d[i + 1], d[i + 2]);
        }
        return [canvases.length, canvases.length ? canvases[0].height : 0, canvases.length ? canvases[0].width : 0, btoa(s)];
        """,
        selector,
    )
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(count, height, width, 3)


def grey_rgb(frames: np.ndarray) -> np.ndarray:
    """(T, 1, H, W) uint8 -> (T, H, W, 3), how the page draws one-channel frames."""
    return np.repeat(frames[:, 0, :, :, None], 3, axis=3)


def assert_shows(driver: Any, inputs: np.ndarray | None, prediction: np.ndarray) -> None:
    """The page's input and predicted frame strips hold exactly these pixels."""
    if inputs is not None:
        np.testing.assert_array_equal(canvas_pixels(driver, "#input-strip canvas"), grey_rgb(inputs))
    np.testing.assert_array_equal(canvas_pixels(driver, "#pred-strip canvas"), grey_rgb(to_uint8(prediction)))
    # the looping animation shows frames of the same prediction
    shown = canvas_pixels(driver, "#pred-anim")[0]
    assert any(np.array_equal(shown, frame) for frame in grey_rgb(to_uint8(prediction)))


def choose_files(driver: Any, *paths: Path) -> None:
    picker = driver.find_element("id", "file")
    picker.clear()  # a multiple-file picker adds to its earlier choice otherwise
    picker.send_keys("\n".join(str(p) for p in paths))


def downloaded(driver: Any, name: str, timeout: float = 20.0) -> bytes:
    path = driver.download_dir / name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and not any(driver.download_dir.glob("*.crdownload")):
            return path.read_bytes()
        time.sleep(0.05)
    raise AssertionError(f"{name} was not downloaded; {sorted(p.name for p in driver.download_dir.iterdir())}")


def save_artifact(name: str, png: bytes) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(png)
    return path


def assert_no_script_errors(driver: Any) -> None:
    """Nothing went wrong in the page's script (answers with an error status are logged too: those are the API's)."""
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert [m for m in errors if "Failed to load resource" not in m] == []


def assert_offline(driver: Any, server: Server, stopped: tuple[str, ...] = ()) -> None:
    """No request went to another host; ``stopped``: those the page's CSP may refuse in the browser."""
    urls, blocked = requested_urls(driver)
    assert urls, "the performance log recorded no request at all"
    assert foreign(urls, server.url) == [], "the page asked another host"
    assert set(blocked) <= set(stopped), blocked


# ---------------------------------------------------------------------------------------
# routes behind the pages (no browser needed)
# ---------------------------------------------------------------------------------------


def test_examples_listed_and_served_by_name(server: Server) -> None:
    listing = httpx.get(server.url + "/v1/examples").json()["examples"]
    assert [e["name"] for e in listing] == sorted(p.stem for p in EXAMPLES.glob("*.npy"))
    for entry in listing:
        on_disk = np.load(EXAMPLES / f"{entry['name']}.npy")
        assert entry["shape"] == list(on_disk.shape) and entry["dtype"] == str(on_disk.dtype)
        for url in (entry["url"], entry["url"] + ".npy"):
            answer = httpx.get(server.url + url)
            assert answer.status_code == 200 and answer.headers["content-type"] == NPY
            assert answer.content == (EXAMPLES / f"{entry['name']}.npy").read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        "nope",
        "..%2Fdefault.onnx",
        "..%2F..%2Fassets%2Fdefault.md",
        "%2E%2E%2Fexamples-with-targets%2Fmoving-mnist.npy",
        "%2Fetc%2Fpasswd",
        "clip0%00.npy",
        "..",
        "clip0.npy.npy",
    ],
)
def test_example_names_never_leave_the_folder(server: Server, name: str) -> None:
    answer = httpx.get(f"{server.url}/v1/examples/{name}")
    assert answer.status_code == 404, (name, answer.status_code, answer.content[:100])
    assert answer.headers["content-type"].startswith(PROBLEM)
    assert not answer.content.startswith(b"\x93NUMPY")


def test_page_docs_and_favicon_are_served_from_the_package(server: Server) -> None:
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset in ("/static/web/page.js", "/static/web/page.css"):
        assert httpx.get(server.url + asset).status_code == 200
    icon = httpx.get(server.url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/png" and icon.content.startswith(b"\x89PNG")
    for docs in ("/docs", "/redoc"):
        html = httpx.get(server.url + docs).text
        assert "/static/docs/" in html and "cdn." not in html and "fonts.googleapis" not in html
    assert httpx.get(server.url + "/static/docs/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(server.url + "/static/web/%2E%2E/web.py").status_code == 404


# ---------------------------------------------------------------------------------------
# /docs and /redoc in the browser, with no other host reachable
# ---------------------------------------------------------------------------------------


@needs_browser
def test_docs_render_every_operation_offline(server: Server, browser: Any) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert ("POST", "/predict") in operations and ("GET", "/v1/examples") in operations

    browser.get_log("performance")
    browser.get(server.url + "/docs")
    wait_for(browser, f"document.querySelectorAll('.opblock').length >= {len(operations)}", what="Swagger UI's operations")
    shown = browser.execute_script(
        "return [...document.querySelectorAll('.opblock')].map(o => [o.querySelector('.opblock-summary-method').textContent,"
        " o.querySelector('.opblock-summary-path').dataset.path])"
    )
    assert {(m, p) for m, p in shown} == operations
    icon = browser.execute_script("return document.querySelector('link[rel~=icon]').href")
    assert icon.startswith(server.url + "/static/docs/")
    save_artifact("docs.png", full_page_png(browser, 1100))
    assert_offline(browser, server)

    browser.get(server.url + "/redoc")
    wait_for(
        browser,
        f"document.querySelectorAll('[data-section-id^=\"operation/\"]').length >= {len(operations)}",
        what="ReDoc's operations",
    )
    assert_offline(browser, server, stopped=("https://cdn.redoc.ly/redoc/logo-mini.svg",))


# ---------------------------------------------------------------------------------------
# the prediction page
# ---------------------------------------------------------------------------------------


@needs_browser
def test_npy_previews_every_accepted_dtype(server: Server, browser: Any) -> None:
    """The page's own .npy reader (previews) against numpy: every dtype the API takes, both byte
    orders, batches, RGB, and values outside [0, 1] and on rounding ties."""
    rng = np.random.default_rng(0)
    ties = (np.arange(16, dtype=np.float32) + 0.5) / 255  # x.5 after scaling: round half to even
    floats = np.concatenate([ties, [-1.0, 0.0, 1.0, 2.0, 1e-9, 0.999]]).astype(np.float32)
    floats = np.resize(np.concatenate([floats, rng.random(400, dtype=np.float32)]), (2, 1, 8, 16))
    cases = {
        "uint8 rgb": rng.integers(0, 256, (3, 3, 8, 16), dtype=np.uint8),
        "float32": floats,
        "float32 big-endian": floats.astype(">f4"),
        "float64": floats.astype(np.float64) + 1e-12,
        "float16": floats.astype(np.float16),
        "float16 big-endian": floats.astype(">f2"),
        "batch": rng.integers(0, 256, (1, 2, 1, 8, 16), dtype=np.uint8),
    }
    open_page(browser, server)
    for name, array in cases.items():
        data = browser.execute_script(
            """
            const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
            const frames = framesOf(parseNpy(bytes.buffer));
            let s = '';
            for (const f of frames) {
              for (let i = 0; i < f.data.length; i += 4) s += String.fromCharCode(f.data[i], f.data[i + 1], f.data[i + 2]);
            }
            return btoa(s);
            """,
            base64.b64encode(npy_bytes(array)).decode(),
        )
        clip = array[0] if array.ndim == 5 else array  # (T, C, H, W)
        pixels = clip if clip.dtype == np.uint8 else to_uint8(clip.astype(np.float32))
        rgb = pixels.transpose(0, 2, 3, 1) if pixels.shape[1] == 3 else grey_rgb(pixels)
        shown = np.frombuffer(base64.b64decode(data), np.uint8).reshape(rgb.shape)
        np.testing.assert_array_equal(shown, rgb, err_msg=name)


@needs_browser
def test_example_clip_prediction_is_the_apis_answer(server: Server, browser: Any) -> None:
    open_page(browser, server)
    assert "CPU" in browser.find_element("id", "model-info").text
    browser.find_element("css selector", "#example option[value='clip1']").click()
    assert predict_and_wait(browser) == "ok"

    clip = np.load(EXAMPLES / "clip1.npy")
    expected = api_prediction(server, (EXAMPLES / "clip1.npy").read_bytes())
    assert_shows(browser, clip, expected)
    meta = browser.find_element("id", "meta").text
    name = httpx.get(server.url + "/v1/model").json()["name"]  # the served name ("default" for the shipped model)
    assert name in meta and "on CPU" in meta and " ms round trip" in meta
    assert_offline(browser, server)
    assert_no_script_errors(browser)

    # the .npy download is the API's answer, byte for byte
    link = browser.find_element("id", "download-npy")
    assert link.get_attribute("download") == "clip1-prediction.npy"
    link.click()
    got = np.load(io.BytesIO(downloaded(browser, "clip1-prediction.npy")), allow_pickle=False)
    np.testing.assert_array_equal(got, expected)


@needs_browser
def test_uploaded_npy_prediction_and_gif_download(server: Server, browser: Any) -> None:
    open_page(browser, server)
    path = EXAMPLES / "clip2.npy"
    choose_files(browser, path)
    assert browser.find_element("id", "source-file").is_selected()
    assert predict_and_wait(browser) == "ok"
    assert_shows(browser, np.load(path), api_prediction(server, path.read_bytes()))

    browser.find_element("xpath", "//button[starts-with(normalize-space(), 'Make GIF')]").click()
    gif = downloaded(browser, "clip2-prediction.gif")
    api_gif = httpx.post(
        server.url + "/predict", content=path.read_bytes(), headers={"Content-Type": NPY, "Accept": "image/gif"}
    ).content
    assert gif == api_gif


@needs_browser
def test_frame_images_sent_in_name_order(server: Server, browser: Any, tmp_path: Path) -> None:
    clip = np.load(EXAMPLES / "clip0.npy")  # (10, 1, 64, 64) uint8
    paths = []
    for t, frame in enumerate(clip):
        path = tmp_path / f"frame_{t + 1}.png"  # frame_10 must come after frame_9, not after frame_1
        Image.fromarray(frame[0]).save(path)
        paths.append(path)
    open_page(browser, server)
    choose_files(browser, *reversed(paths))
    assert predict_and_wait(browser) == "ok"
    assert_shows(browser, clip, api_prediction(server, npy_bytes(clip)))


@needs_browser
def test_gif_upload(server: Server, browser: Any, tmp_path: Path) -> None:
    clip = np.load(EXAMPLES / "clip0.npy")
    path = tmp_path / "digits.gif"
    frames = [Image.fromarray(f[0]) for f in clip]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as gif:  # the file holds the clip exactly (a grey palette is lossless)
        assert gif.n_frames == len(clip)
        for t in range(gif.n_frames):
            gif.seek(t)
            np.testing.assert_array_equal(np.asarray(gif.convert("L")), clip[t, 0])
    open_page(browser, server)
    choose_files(browser, path)
    assert predict_and_wait(browser) == "ok"
    if "image/gif" in request_types(server):  # the page sends the GIF itself: the server decodes it
        expected = api_prediction(server, path.read_bytes(), "image/gif")
    else:  # the page sends the frames it decoded, as PNGs
        expected = api_prediction(server, npy_bytes(clip))
    assert_shows(browser, clip, expected)


@needs_browser
def test_video_upload_resize_and_mp4_download(server: Server, browser: Any, tmp_path: Path) -> None:
    if "video/mp4" not in request_types(server):
        pytest.skip("this server takes no video bodies")
    import av

    from service.core.video import encode_video

    clip = np.load(EXAMPLES / "clip0.npy")  # (10, 1, 64, 64)
    path = tmp_path / "digits.mp4"
    path.write_bytes(encode_video(clip, container="mp4"))
    open_page(browser, server)
    choose_files(browser, path)
    assert predict_and_wait(browser) == "ok"
    assert_shows(browser, None, api_prediction(server, path.read_bytes(), "video/mp4"))
    assert browser.find_element("css selector", "#input-stage video").get_attribute("src").startswith("blob:")

    browser.find_element("xpath", "//button[starts-with(normalize-space(), 'Make MP4')]").click()
    with av.open(io.BytesIO(downloaded(browser, "digits-prediction.mp4"))) as video:
        frames = [f.to_ndarray(format="gray") for f in video.decode(video=0)]
    assert len(frames) == 20 and frames[0].shape == (64, 64)  # the input, then the prediction

    # a video of another size: refused as it is, predicted once the page asks the API to fit it
    big = np.repeat(np.repeat(clip, 2, axis=2), 2, axis=3)  # (10, 1, 128, 128)
    path = tmp_path / "big.mp4"
    path.write_bytes(encode_video(big, container="mp4"))
    choose_files(browser, path)
    shown = predict_and_wait(browser)
    assert shown.startswith("422") and "128x128" in shown and "64x64" in shown, shown
    # the way out named as this page offers it (the API's ?resize= and the CLI's --resize are for elsewhere)
    assert "Choose “scale to fit” or “scale, crop the centre” in “Videos and GIFs of another size” above" in shown, shown
    assert "?resize=" not in shown and "--resize" not in shown
    assert browser.switch_to.active_element.get_attribute("id") == "resize"
    browser.find_element("css selector", "#resize option[value='fit']").click()
    assert predict_and_wait(browser) == "ok"
    assert_shows(browser, None, api_prediction(server, path.read_bytes(), "video/mp4", "?resize=fit"))


@needs_browser
def test_longer_horizon(server: Server, browser: Any) -> None:
    open_page(browser, server)
    if not browser.find_element("id", "horizon").is_displayed():
        pytest.skip("this server has no ?horizon=")
    browser.find_element("id", "horizon").send_keys("15")
    assert predict_and_wait(browser) == "ok"
    expected = api_prediction(server, (EXAMPLES / "clip0.npy").read_bytes(), query="?horizon=15")
    assert expected.shape[0] == 15
    assert_shows(browser, np.load(EXAMPLES / "clip0.npy"), expected)
    browser.find_element("id", "horizon").clear()


@needs_browser
@pytest.mark.parametrize(
    "name, make",
    [
        ("notes.npy", lambda: b"hello, this is not an array"),
        ("twenty.npy", lambda: (REPO / "service/assets/examples-with-targets/moving-mnist.npy").read_bytes()),
        ("float.npy", lambda: npy_bytes(np.full((10, 1, 64, 64), 2.0, np.float32))),
    ],
)
def test_bad_file_shows_the_apis_detail(
    server: Server, browser: Any, tmp_path: Path, name: str, make: Callable[[], bytes]
) -> None:
    body = make()
    path = tmp_path / name
    path.write_bytes(body)
    problem = httpx.post(server.url + "/predict", content=body, headers={"Content-Type": NPY})
    assert 400 <= problem.status_code < 500 and problem.headers["content-type"].startswith(PROBLEM)

    open_page(browser, server)
    choose_files(browser, path)
    shown = predict_and_wait(browser)
    assert shown != "ok"
    assert problem.json()["detail"] in shown and shown.startswith(str(problem.status_code))
    assert browser.find_element("id", "error").get_attribute("role") == "alert"
    assert not browser.find_element("id", "result").is_displayed()


@needs_browser
def test_model_choice_when_several_are_served(browser: Any, tmp_path: Path) -> None:
    default = REPO / "service" / "assets" / "default.onnx"
    multi = Server(tmp_path / "server.log", "--model", f"first={default}", "--model", f"second={default}")
    try:
        multi.wait_listening()
        multi.wait_ready()
        if httpx.get(multi.url + "/v1/models").status_code == 404:
            pytest.skip("this server lists no models (GET /v1/models)")
        open_page(browser, multi)
        options = browser.execute_script("return [...document.querySelectorAll('#model option')].map(o => o.value)")
        assert options == ["first", "second"]
        assert browser.find_element("id", "model").get_attribute("value") == httpx.get(multi.url + "/v1/models").json()["default"]
        browser.find_element("css selector", "#model option[value='second']").click()
        assert predict_and_wait(browser) == "ok"
        urls, _ = requested_urls(browser)
        assert any(url.endswith("/predict?model=second") for url in urls), urls
        assert browser.find_element("id", "meta").text.startswith("second · on CPU")
        expected = api_prediction(multi, (EXAMPLES / "clip0.npy").read_bytes(), query="?model=second")
        assert_shows(browser, np.load(EXAMPLES / "clip0.npy"), expected)
    finally:
        multi.stop()


@needs_browser
def test_api_keys_typed_into_the_page(browser: Any, tmp_path: Path) -> None:
    key = "page-test-key-0123456789abcdef"
    keyed = Server(tmp_path / "server.log", env={"STLIGHT_API_KEYS": key})
    try:
        keyed.wait_listening()
        keyed.wait_ready()
        open_page(browser, keyed)  # the page and its files load without a key
        assert "needs an API key" in browser.find_element("id", "model-info").text
        field = browser.find_element("id", "api-key")
        assert "needs an API key" in predict_and_wait(browser) and browser.switch_to.active_element == field

        # the API's own 401, without a key and with a wrong one
        body = (EXAMPLES / "clip0.npy").read_bytes()
        refused = httpx.post(keyed.url + "/predict", content=body, headers={"Content-Type": NPY}).json()["detail"]
        choose_files(browser, EXAMPLES / "clip0.npy")
        assert predict_and_wait(browser) == f"401 Unauthorized: {refused}"
        field.send_keys("wrong-key-wrong-key-wrong")
        shown = predict_and_wait(browser)
        assert shown.startswith("401 Unauthorized: ") and browser.switch_to.active_element == field
        browser.find_element("id", "source-example").click()
        field.clear()
        field.send_keys(key)
        field.send_keys(Keys.TAB)  # leaving the field reloads the lists with the key
        wait_for(browser, "document.getElementById('model-info').textContent.includes('on CPU')", what="the model list")
        wait_for(browser, "document.getElementById('example').value === 'clip0'", what="the example list")
        assert predict_and_wait(browser) == "ok"
        answer = httpx.post(keyed.url + "/predict", content=body, headers={"Content-Type": NPY, "X-API-Key": key})
        assert_shows(browser, np.load(EXAMPLES / "clip0.npy"), np.load(io.BytesIO(answer.content)))
        # the key stays in the tab's memory: not in storage, cookies or any URL asked for
        kept = browser.execute_script("return [localStorage.length, sessionStorage.length, document.cookie, location.href]")
        assert kept[:3] == [0, 0, ""] and key not in kept[3]
        urls, _ = requested_urls(browser)
        assert urls and not any(key in url for url in urls)

        # the docs load without a key too, and offer to send one with "Try it out"
        browser.get(keyed.url + "/docs")
        wait_for(browser, "document.querySelector('.opblock') && document.querySelector('button.authorize')", what="Authorize")
    finally:
        keyed.stop()


def online_rows(driver: Any) -> list[list[str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#online-rows tr')].map(r => [...r.cells].map(c => c.textContent))"
    )


@needs_browser
def test_online_figures_of_the_chosen_model(server: Server, browser: Any) -> None:
    """Answers graded by their truth (here by the API) show on the page as the server's figures,
    per step; Refresh reads them again after another grading."""
    clips = np.load(REPO / "service" / "assets" / "examples-with-targets" / "moving-mnist.npy")  # (4, 20, 1, 64, 64)

    def predict_and_grade(index: int) -> None:
        headers = {"Content-Type": NPY, "Accept": NPY, "X-Request-ID": f"web-online-{index}"}
        answer = httpx.post(server.url + "/predict", content=npy_bytes(clips[index, :10]), headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        graded = httpx.post(
            server.url + f"/v1/feedback/web-online-{index}", content=npy_bytes(clips[index, 10:]), headers=headers
        )
        assert graded.status_code == 200, graded.text

    def expected() -> tuple[int, list[list[str]]]:
        online = httpx.get(server.url + "/v1/model").json()["online"]
        rows = [
            [str(s["step"]), str(s["frames"]), f"{s['mse']:.3f}", f"{s['mae']:.3f}", f"{s['psnr']:.2f}", f"{s['ssim']:.4f}"]
            for s in online["steps"]
        ]
        return online["graded"], rows

    predict_and_grade(0)
    open_page(browser, server)
    graded, rows = expected()
    wait_for(browser, f"document.getElementById('online-table').dataset.graded === '{graded}'", what="the figures")
    assert online_rows(browser) == rows and len(rows) == 10
    assert f"{graded} answer(s) graded" in browser.find_element("id", "online-summary").text

    predict_and_grade(1)
    browser.find_element("id", "online-refresh").click()
    graded, rows = expected()
    wait_for(browser, f"document.getElementById('online-table').dataset.graded === '{graded}'", what="the new figures")
    assert online_rows(browser) == rows
    assert_no_script_errors(browser)


@needs_browser
def test_keyboard_labels_and_narrow_screens(server: Server, browser: Any) -> None:
    open_page(browser, server)
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('input, select, button')]"
        ".filter(e => e.tagName !== 'BUTTON' ? !e.labels.length : !e.textContent.trim()).map(e => e.id)"
    )
    assert unlabelled == []
    # the shipped examples fit the default model; with another model's shape the list says so
    labels = browser.execute_script(
        "const fit = [...document.querySelectorAll('#example option')].map(o => o.textContent);"
        "state.modelShape = [4, 3, 32, 48]; labelExamples();"
        "const other = [...document.querySelectorAll('#example option')].map(o => o.textContent);"
        "state.modelShape = null; labelExamples(); return [fit, other];"
    )
    assert labels[0] == [f"{p.stem} (10×1×64×64)" for p in sorted(EXAMPLES.glob("*.npy"))]
    assert all(label.endswith("— not this model's shape") for label in labels[1])
    # the frame strips scroll sideways on a phone: the keyboard must reach them to scroll them
    assert browser.execute_script("return [...document.querySelectorAll('.strip')].every(s => s.tabIndex === 0)")
    # keyboard only: Enter in a field submits the form; Space toggles the animation
    browser.find_element("id", "api-key").send_keys(Keys.ENTER)
    wait_for(browser, "!document.getElementById('result').hidden", what="a prediction after Enter")
    play = browser.find_element("id", "play")
    assert play.get_attribute("aria-pressed") == "true"
    play.send_keys(Keys.SPACE)
    assert play.get_attribute("aria-pressed") == "false" and play.text == "Play"
    play.send_keys(Keys.SPACE)

    desktop = full_page_png(browser, 1100)
    save_artifact("page-desktop.png", desktop)
    narrow = full_page_png(browser, 360)
    save_artifact("page-360.png", narrow)
    overflow = browser.execute_script("return document.documentElement.scrollWidth")
    assert overflow <= 360, f"the page is {overflow} px wide at a 360 px viewport"
    assert_no_script_errors(browser)
    resize(browser, 1100, 900)
    if os.environ.get("STLIGHT_WRITE_DOCS_IMG") == "1":
        write_readme_picture(browser)


def write_readme_picture(browser: Any) -> None:
    """``docs/img/page.png``: the result part of the page at 900 px, in a small palette PNG."""
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    shot = Image.open(io.BytesIO(full_page_png(browser, 900))).convert("RGB")
    box = "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
    box += " return [r.top + scrollY, r.bottom + scrollY, r.right]"
    top = int(browser.execute_script(box, "#result")[0])
    bottom = int(browser.execute_script(box, "#pred-strip")[1])
    right = max(int(browser.execute_script(box, css)[2]) for css in ("#pred-strip figure:last-child", "#pred-anim"))
    picture = shot.crop((0, max(0, top - 12), min(shot.width, right + 16), bottom + 12)).quantize(colors=64)
    target = REPO / "docs" / "img" / "page.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.save(target, optimize=True)
    resize(browser, 1100, 900)
