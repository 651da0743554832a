"""Attacks on the inputs that come from others (docs/security.md): request bodies, files given
to ``stlight predict`` and ``stlight train``, checkpoints, model files. Each test plants what
the attacker wants (a file to read, a file a command would create) and asserts both the
refusal and that nothing leaked or ran.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image
from serving import Server, running

from service.codecs import negotiation
from service.core import video

T = 10  # the tiny preset: 10 frames of 1 x 64 x 64 in
PROBLEM = "application/problem+json"
SECRET = ((np.arange(64)[:, None] * 7 + np.arange(64)[None, :] * 13) % 251).astype(np.uint8)  # 64 x 64: no codec invents it


def concat_script(name: str, times: int = T) -> bytes:
    """An FFmpeg concat script: a demuxer left to probe the bytes decodes the files it names."""
    return b"ffconcat version 1.0\n" + f"file '{name}'\n".encode() * times


def hls_playlist(name: str) -> bytes:
    return f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{name}\n#EXT-X-ENDLIST\n".encode()


# what an attacker sends instead of a video: scripts and playlists naming the planted files
SCRIPTS = {
    "concat, cwd": concat_script("secret.png"),
    "concat, sub-folder": concat_script("sub/secret.png"),
    "concat, a video": concat_script("secret.mp4", 1),
    "hls, cwd": hls_playlist("secret.mp4"),
    "hls, sub-folder": hls_playlist("sub/secret.mp4"),
}
LEAKING = ("concat, cwd", "concat, sub-folder", "concat, a video")  # with format probing, on today's FFmpeg


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding what an attacker would like to read: an image and a video, beside and below."""
    folder = tmp_path_factory.mktemp("planted")
    secret_video = video.encode_video(np.repeat(SECRET[None, None], T + 2, axis=0), container="mp4")
    for where in (folder, folder / "sub"):
        where.mkdir(exist_ok=True)
        Image.fromarray(SECRET).save(where / "secret.png")
        (where / "secret.mp4").write_bytes(secret_video)
    return folder


@contextlib.contextmanager
def cwd(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def test_the_scripts_are_real_attacks_on_a_probing_demuxer(planted: Path) -> None:
    """The control: FFmpeg left to probe (as the video module did before the guard) decodes the planted files from
    these very bytes, so a refusal below is the guard's doing, not a broken script's."""
    with cwd(planted):
        for name in LEAKING:
            with av.open(io.BytesIO(SCRIPTS[name])) as container:
                first = next(container.decode(video=0)).to_ndarray(format="gray")
            assert np.abs(first.astype(int) - SECRET).mean() < 2, name  # the planted image (nearly: H.264)


@pytest.mark.parametrize(("demuxer", "name"), [("concat", "concat, cwd"), ("concat", "concat, a video"), ("hls", "hls, cwd")])
def test_even_a_demuxer_that_opens_files_opens_none_under_the_locked_down_options(planted: Path, demuxer: str, name: str) -> None:
    """The second wall, should a demuxer that reads other files ever be chosen: with no protocol
    allowed, the concat and HLS demuxers (forced here; never chosen by service/core/video.py) read nothing."""
    with cwd(planted):
        with av.open(io.BytesIO(SCRIPTS[name]), format=demuxer) as container:  # unguarded: the attack works
            assert next(container.decode(video=0)).width == 64
        locked = io.BytesIO(SCRIPTS[name])
        with pytest.raises(av.error.FFmpegError), av.open(locked, format=demuxer, container_options=video.LOCKED_DOWN) as c:
            next(c.decode(video=0))


# ---------------------------------------------------------------------------------------
# request bodies: a real server whose working directory holds the planted files
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, planted: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("security-server") / "server.log"
    with running(log, "--model", str(tiny_onnx), "--device", "cpu", cwd=planted) as srv:
        yield srv


def assert_refused(response: httpx.Response, what: str) -> None:
    """A 4xx problem document and nothing else: no frame of any planted file comes back."""
    assert response.status_code in (400, 415), f"{what}: {response.status_code} {response.text[:200]}"
    assert response.headers["content-type"] == PROBLEM, what
    detail = response.json()["detail"]
    assert "expected" in detail, f"{what}: {detail}"  # says what would have been accepted


def test_scripts_and_playlists_as_video_bodies_are_refused_for_every_type_and_accept(server: Server) -> None:
    for name, script in SCRIPTS.items():
        for media_type in negotiation.VIDEO_TYPES:
            for accept in negotiation.RESPONSE_TYPES:
                response = httpx.post(
                    server.url + "/predict",
                    content=script,
                    headers={"Content-Type": media_type, "Accept": accept},
                    timeout=60,
                )
                assert_refused(response, f"{name} as {media_type}, Accept {accept}")
            # video/quicktime has no suffix of its own: .mov files are read as video/mp4
            suffix = next((s for s, t in video.SUFFIX_TYPES.items() if t == media_type), ".mov")
            response = httpx.post(
                server.url + "/predict",
                files={"video": (f"clip{suffix}", script, media_type)},
                headers={"Accept": negotiation.NPY},
                timeout=60,
            )
            assert_refused(response, f"{name} as a multipart {media_type} part")


# ---------------------------------------------------------------------------------------
# files: stlight predict and stlight train on a folder that holds a script named like a video
# ---------------------------------------------------------------------------------------


def plant_scripts(folder: Path, script: bytes) -> list[Path]:
    """The script under every video suffix, beside a planted image and a sub-folder holding one."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for where in (folder, folder / "sub"):
        Image.fromarray(SECRET).save(where / "secret.png")
    paths = [folder / f"clip{suffix}" for suffix in video.SUFFIX_TYPES]
    for path in paths:
        path.write_bytes(script)
    return paths


@pytest.mark.parametrize("name", ["concat, cwd", "concat, sub-folder"])
def test_stlight_predict_refuses_a_script_named_like_a_video(
    name: str, tiny_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli.stlight import main

    paths = plant_scripts(tmp_path / "in", SCRIPTS[name])
    out = tmp_path / "out"
    # --resize fit sends GIFs through FFmpeg too (else Pillow reads them)
    argv = ["predict", *map(str, paths), "--out", str(out), "--model", str(tiny_onnx), "--resize", "fit", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for path in paths:
        assert f"{path.name}: " in err and "expected" in err, err
        assert not (out / f"{path.stem}.npy").exists()
    assert not list(out.rglob("*.npy")), "a prediction was written from a script"


def test_stlight_train_refuses_a_folder_of_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli.stlight import main

    plant_scripts(tmp_path / "videos", SCRIPTS["concat, cwd"])
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--dataset", "videos", "--data-dir", str(tmp_path / "videos")]
    argv += ["--in-frames", "4", "--out-frames", "1", "--max-steps", "1", "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "clip" in err and "expected" in err, err
    assert not list(out.glob("*.pt")), "a model was trained on a script's files"


# ---------------------------------------------------------------------------------------
# checkpoints: a pickle whose loading runs a command
# ---------------------------------------------------------------------------------------


class RunsACommand:
    """Pickled as a call of ``os.system``: unpickling the checkpoint runs ``command``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def train_argv(mnist_dir: Path, out: Path) -> list[str]:
    """Two steps of a tiny model on real digits."""
    argv = ["train", "--preset", "tiny", "--dim", "32", "--depth", "2", "--in-frames", "4", "--out-frames", "1"]
    argv += ["--data-dir", str(mnist_dir), "--max-steps", "2", "--val-clips", "8", "--threads", "1", "--no-progress"]
    return [*argv, "--out", str(out)]


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A real training run's folder: last.pt and best.pt."""
    from service.cli.stlight import main

    out = tmp_path_factory.mktemp("run")
    assert main(train_argv(mnist_dir, out)) == 0
    return out


def booby_trapped(learned: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of a real checkpoint that also holds a pickled ``touch MARK``; (checkpoint, MARK)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    mark = folder / "the-command-ran"
    payload = torch.load(learned / "last.pt", weights_only=False)  # the test's own file
    payload["metrics"] = {"mse": 1.0, "note": RunsACommand(f"touch '{mark}'")}
    torch.save(payload, folder / "last.pt")
    return folder / "last.pt", mark


def test_training_checkpoints_load_with_weights_only_and_nothing_allowed_besides(learned: Path) -> None:
    import torch

    for name in ("last.pt", "best.pt"):
        payload = torch.load(learned / name, weights_only=True)  # torch's own allow-list, nothing added
        assert payload["format_version"] == 2 and payload["rng"]["numpy"]["key"].dtype == torch.int64


def test_a_checkpoint_that_runs_a_command_is_refused_by_every_command_that_reads_one(
    learned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mnist_dir: Path
) -> None:
    from service.cli.stlight import main

    evil, mark = booby_trapped(learned, tmp_path / "run")
    for argv in (
        ["export", str(evil), "--out", str(tmp_path / "model.onnx")],
        ["eval", str(evil), "--data-dir", str(mnist_dir), "--val-clips", "4"],
        ["train", "--out", str(evil.parent), "--resume", "--no-progress"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert not mark.exists(), f"stlight {argv[0]} ran the checkpoint's command"
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "posix.system" in err and "--trust-checkpoint" in err, err  # what it held, and the way out
    assert not (tmp_path / "model.onnx").exists()


def test_trust_checkpoint_unpickles_with_a_warning(
    learned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mnist_dir: Path
) -> None:
    """The control: the booby trap is live (trusted, it runs), and trusting says so first."""
    from service.cli.stlight import main

    evil, mark = booby_trapped(learned, tmp_path / "run")
    code = main(["eval", str(evil), "--trust-checkpoint", "--data-dir", str(mnist_dir), "--val-clips", "4", "--json"])
    err = capsys.readouterr().err
    assert code == 0 and "--trust-checkpoint" in err and "runs any code" in err, err
    assert mark.exists()


def test_a_0_2_0_checkpoint_loads_without_trust_and_resumes_exactly(learned: Path, tmp_path: Path, mnist_dir: Path) -> None:
    """0.2.0 kept numpy's RNG state as numpy's tuple (an array inside): such a last.pt still
    resumes, without --trust-checkpoint, to the weights of the run that never stopped."""
    import numpy as np
    import torch

    from service.cli.stlight import main

    out = tmp_path / "split"
    assert main([*train_argv(mnist_dir, out), "--stop-after", "1"]) == 0
    payload = torch.load(out / "last.pt", weights_only=True)
    state = payload["rng"]["numpy"]
    payload["rng"]["numpy"] = (
        state["kind"],
        state["key"].numpy().astype(np.uint32),
        state["pos"],
        state["has_gauss"],
        state["gauss"],
    )
    payload["format_version"] = 1
    torch.save(payload, out / "last.pt")  # as 0.2.0 wrote it
    with pytest.raises(Exception, match="numpy"):
        torch.load(out / "last.pt", weights_only=True)  # torch alone refuses it: the array is what is being tested
    assert main(["train", "--out", str(out), "--resume", "--threads", "1", "--no-progress"]) == 0
    resumed, whole = (torch.load(run / "last.pt", weights_only=True) for run in (out, learned))
    assert resumed["step"] == whole["step"] == 2 and resumed["format_version"] == 2
    for name, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_saving_refuses_what_loading_would_refuse(tmp_path: Path) -> None:
    """A numpy number in the metrics would make the next load refuse the run's own checkpoint:
    saving says so at once, naming where it is."""
    from model import STLight, preset, save_checkpoint

    config = preset("tiny")
    with pytest.raises(TypeError, match=r"checkpoint\['metrics'\]\['mse'\] is a numpy.float64"):
        save_checkpoint(tmp_path / "x.pt", STLight(config), config, metrics={"mse": np.float64(1.0)})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------
# model files: external data outside the model's folder
# ---------------------------------------------------------------------------------------


def test_the_external_data_walk_knows_every_field_that_can_hold_a_tensor() -> None:
    """service/inference/external_data.py reads protobuf without the onnx package: its field numbers must
    be onnx.proto's, and it must descend into every field of a message type that can hold a tensor."""
    import onnx

    from service.inference.external_data import SCHEMA

    for kind, holds in SCHEMA.items():
        descriptor = getattr(onnx, kind).DESCRIPTOR
        for number, target in holds.items():
            assert descriptor.fields_by_number[number].message_type.name == target, (kind, number)
        missed = [f.name for f in descriptor.fields if f.message_type and f.message_type.name in SCHEMA and f.number not in holds]
        assert not missed, f"{kind}: {missed} can hold tensors but are not walked"
    tensor, entry = onnx.TensorProto.DESCRIPTOR, onnx.StringStringEntryProto.DESCRIPTOR
    assert (tensor.fields_by_name["name"].number, tensor.fields_by_name["external_data"].number) == (8, 13)
    assert (entry.fields_by_name["key"].number, entry.fields_by_name["value"].number) == (1, 2)


def with_external_weight(source: Path, model_path: Path, location: str, data_at: Path | None = None) -> None:
    """``source`` with its largest initializer's bytes moved to ``location`` (written to
    ``data_at``, default the folder's ``location``): a model that works wherever its data is read."""
    import onnx

    model = onnx.load(source)
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        tensor.external_data.add(key=key, value=value)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    target = data_at or model_path.parent / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    model_path.write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def escaping_repository(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository beside a planted folder: each model keeps a weight in the planted folder
    (its bytes exactly right, so that a model that read it would load and answer), reached by an
    absolute path, by '..', through a symlinked file and through a symlinked folder. ``inside``
    keeps it in its own folder (allowed), ``good`` keeps none."""
    root = tmp_path_factory.mktemp("escapes")
    planted, repo = root / "planted", root / "repo"
    secret = planted / "weights.bin"
    with_external_weight(tiny_onnx, repo / "absolute" / "1" / "model.onnx", str(secret), data_at=secret)
    with_external_weight(tiny_onnx, repo / "dotdot" / "1" / "model.onnx", "../../../planted/weights.bin", data_at=secret)
    with_external_weight(tiny_onnx, repo / "link" / "1" / "model.onnx", "weights.bin", data_at=secret)
    (repo / "link" / "1" / "weights.bin").symlink_to(secret)
    with_external_weight(tiny_onnx, repo / "linkdir" / "1" / "model.onnx", "data/weights.bin", data_at=secret)
    (repo / "linkdir" / "1" / "data").symlink_to(planted, target_is_directory=True)
    with_external_weight(tiny_onnx, repo / "inside" / "1" / "model.onnx", "data/weights.bin")
    (repo / "good.onnx").write_bytes(tiny_onnx.read_bytes())
    return repo


ESCAPES = {"absolute": "an absolute path", "dotdot": "'..'", "link": "symbolic link", "linkdir": "symbolic link"}


def test_a_repository_model_whose_external_data_escapes_is_refused_and_the_others_serve(
    escaping_repository: Path, reference, tmp_path: Path
) -> None:
    clip = np.random.default_rng(3).random((T, 1, 64, 64), dtype=np.float32)
    want = reference(clip[None])[0]
    explicit = ("--model-control", "explicit")  # the test loads models
    with running(tmp_path / "server.log", "--model-repository", str(escaping_repository), "--device", "cpu", *explicit) as srv:
        index = {row["name"]: row for row in httpx.post(srv.url + "/v2/repository/index", json={}).json()}
        for name in ("good", "inside"):  # the control: a model with its data in its own folder is served, exactly
            assert index[name]["state"] == "READY", index[name]
            response = httpx.post(
                srv.url + "/predict", params={"model": name}, content=npy(clip), headers={"Content-Type": negotiation.NPY}
            )
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(np.load(io.BytesIO(response.content)), want, atol=1e-5)
        for name, why in ESCAPES.items():
            row = index[name]
            # refused by service/inference/external_data.py, before ONNX Runtime opened anything
            assert row["state"] == "UNAVAILABLE" and "keeps its data in" in row["reason"] and why in row["reason"], row
            response = httpx.post(
                srv.url + "/predict", params={"model": name}, content=npy(clip), headers={"Content-Type": negotiation.NPY}
            )
            assert response.status_code >= 400 and response.headers["content-type"] == PROBLEM, response.text
            load = httpx.post(srv.url + f"/v2/repository/models/{name}/load", json={})
            assert load.status_code == 400 and "keeps its data in" in load.json()["error"], load.text


def test_stlight_predict_refuses_a_model_whose_external_data_escapes(
    escaping_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli.stlight import main

    np.save(tmp_path / "clip.npy", np.zeros((T, 1, 64, 64), np.float32))
    for name in ESCAPES:
        model = escaping_repository / name / "1" / "model.onnx"
        assert main(["predict", str(tmp_path / "clip.npy"), "--out", str(tmp_path / "out"), "--model", str(model)]) == 2
        err = capsys.readouterr().err
        assert "keeps its data in" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "clip.npy").exists()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------
# images: only the formats the docs name, never one that hands the bytes to a program
# ---------------------------------------------------------------------------------------

# Pillow reads EPS by running Ghostscript (`gs`) on it: PostScript is a programming language
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\nshowpage\n%%EOF\n"


@pytest.fixture
def fake_gs(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A `gs` first on PATH that leaves a mark when run: (environment, mark)."""
    folder, mark = tmp_path / "bin", tmp_path / "gs-ran"
    folder.mkdir()
    (folder / "gs").write_text(f"#!/bin/sh\ntouch '{mark}'\nexit 1\n")
    (folder / "gs").chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}, mark


def test_an_eps_frame_never_reaches_ghostscript(tiny_onnx: Path, fake_gs: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    env, mark = fake_gs
    png = io.BytesIO()
    Image.fromarray(SECRET).save(png, format="PNG")
    frames = [("frames", ("f0.png", EPS, "image/png"))]
    frames += [("frames", (f"f{i}.png", png.getvalue(), "image/png")) for i in range(1, T)]
    with running(tmp_path / "server.log", "--model", str(tiny_onnx), "--device", "cpu", env=env) as srv:
        response = httpx.post(srv.url + "/predict", files=frames, headers={"Accept": negotiation.NPY}, timeout=60)
    assert response.status_code == 400 and response.headers["content-type"] == PROBLEM, response.text
    assert "PNG" in response.json()["detail"], response.text  # names the formats it reads
    assert not mark.exists(), "the server ran gs on an uploaded frame"


def test_stlight_predict_and_train_never_hand_a_frame_to_ghostscript(
    tiny_onnx: Path, fake_gs: tuple[dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli.stlight import main

    env, mark = fake_gs
    monkeypatch.setenv("PATH", env["PATH"])
    clip = tmp_path / "frames" / "clip"
    clip.mkdir(parents=True)
    for i in range(T):
        (clip / f"f{i:02d}.png").write_bytes(EPS)
    (tmp_path / "anim.gif").write_bytes(EPS)
    out = tmp_path / "out"
    assert main(["predict", str(clip), str(tmp_path / "anim.gif"), "--out", str(out), "--model", str(tiny_onnx)]) == 1
    argv = ["train", "--preset", "tiny", "--dataset", "frames", "--data-dir", str(tmp_path / "frames"), "--in-frames", "4"]
    assert main([*argv, "--out-frames", "1", "--max-steps", "1", "--no-progress", "--out", str(tmp_path / "run")]) == 2
    assert not mark.exists(), "gs ran on a frame"
