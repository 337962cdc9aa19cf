"""`python -m slt_hydra.extract`: the CLI's refusals, and the resumable loop writing real .pose files.

Without mediapipe the loop runs with an estimator that reads the video for real (pose-format's PyAV reader, through
``extract.read_video``) and writes a real pose with one frame per video frame (``fake_pose``): skip, resume, failure
counting and the temp-file rename are exercised on real files. The MediaPipe run itself needs mediapipe==0.10.14
(a separate venv: see the module docstring) and is skipped where it is not importable.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from pose_format import Pose
from pose_format.utils.generic import fake_pose

from slt_hydra import extract

ROOT = Path(__file__).resolve().parents[1]
HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None


def cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slt_hydra.extract", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def write_video(path: Path, frames: int, image: np.ndarray | None = None) -> Path:
    """A real MPEG-4 video of ``frames`` frames (noise, or ``image``); 0 frames gives a container with no frames."""
    h, w = (64, 48) if image is None else ((image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        out.start_encoding()  # writes the header even when no frame follows
        for _ in range(frames):
            rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if image is None else image[:h, :w]
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        out.mux(stream.encode())
    return path


def read_and_fake(video: Path) -> Pose:
    """Reads the video for real; a real pose with as many frames, in place of MediaPipe's landmarks."""
    frames, meta = extract.read_video(video)
    return fake_pose(num_frames=sum(1 for _ in frames), fps=meta.fps)


def frames_in(pose_path: Path) -> int:
    return Pose.read(pose_path.read_bytes()).body.data.shape[0]


@pytest.fixture
def videos(tmp_path) -> Path:
    d = tmp_path / "videos"
    d.mkdir()
    write_video(d / "a.mp4", 5)
    write_video(d / "b.mov", 3)
    write_video(d / "empty.mp4", 0)
    (d / "garbage.mp4").write_bytes(b"not a video" * 20)
    (d / "notes.txt").write_text("not a video suffix: ignored")
    return d


def test_help():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    for word in ("VIDEO_DIR", "POSE_DIR", "--suffixes", "--overwrite", "mediapipe==0.10.14", "Exit status"):
        assert word in result.stdout


@pytest.mark.skipif(HAS_MEDIAPIPE, reason="mediapipe is installed here: the refusal does not apply")
def test_refuses_fast_without_mediapipe(videos, tmp_path):
    start = time.monotonic()
    result = cli(str(videos), str(tmp_path / "poses"))
    assert time.monotonic() - start < 5
    assert result.returncode == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    for part in ("mediapipe is not installed", 'pip install "mediapipe==0.10.14"', "separate environment",
                 "video_to_pose", "dataset.pose_dir"):
        assert part in message
    assert not (tmp_path / "poses").exists()


def stand_in_mediapipe(root: Path, version: str, solutions: bool) -> dict:
    """A `mediapipe` package laid out like a wheel without the models (solutions=False: like 0.10.30 and later)."""
    pkg = root / "mediapipe"
    (pkg / "python" / "solutions").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the stand-in must not be imported')\n")
    if solutions:
        (pkg / "python" / "solutions" / "holistic.py").write_text("")
    info = root / f"mediapipe-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mediapipe\nVersion: {version}\n")
    return {"PYTHONPATH": str(root)}


@pytest.mark.parametrize("solutions, expected", [
    (False, "mediapipe 1.2.2 has no mediapipe.solutions.holistic"),
    (True, "mediapipe 1.2.2 lacks the Holistic models modules/holistic_landmark/holistic_landmark_cpu.binarypb"),
])
def test_refuses_mediapipe_without_offline_holistic(videos, tmp_path, solutions, expected):
    env = stand_in_mediapipe(tmp_path / "site", "1.2.2", solutions)
    result = cli(str(videos), str(tmp_path / "poses"), env=env)
    assert result.returncode == 2
    assert expected in result.stderr and "mediapipe==0.10.14" in result.stderr
    assert "must not be imported" not in result.stderr


def test_missing_video_dir(tmp_path):
    result = cli(str(tmp_path / "nowhere"), str(tmp_path / "poses"))
    assert result.returncode == 2
    assert f"VIDEO_DIR {tmp_path / 'nowhere'} is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_videos_with_those_suffixes(videos, tmp_path):
    result = cli(str(videos), str(tmp_path / "poses"), "--suffixes", ".avi")
    assert result.returncode == 2
    assert "no videos (.avi)" in result.stderr


def test_read_video_names_the_problem(videos):
    frames, meta = extract.read_video(videos / "a.mp4")
    assert sum(1 for _ in frames) == 5 and (meta.width, meta.height) == (48, 64)
    for name in ("empty.mp4", "garbage.mp4"):
        with pytest.raises(ValueError, match="cannot read the video"):
            extract.read_video(videos / name)


def test_writes_skips_resumes_and_counts_failures(videos, tmp_path):
    poses = tmp_path / "poses"
    found = extract.list_videos(videos, extract.SUFFIXES.split(","))
    assert [p.name for p in found] == ["a.mp4", "b.mov", "empty.mp4", "garbage.mp4"]

    assert extract.extract_all(found, poses, read_and_fake, progress=False) == (2, 0, ["empty.mp4", "garbage.mp4"])
    assert sorted(p.name for p in poses.iterdir()) == ["a.pose", "b.pose"]  # no .part left, nothing for bad videos
    assert (frames_in(poses / "a.pose"), frames_in(poses / "b.pose")) == (5, 3)

    assert extract.extract_all(found, poses, read_and_fake, progress=False) == (0, 2, ["empty.mp4", "garbage.mp4"])

    a = poses / "a.pose"  # a truncated a.pose (written by some other tool) and a killed run's temp file: redone
    a.write_bytes(a.read_bytes()[: a.stat().st_size // 2])
    (poses / ".a.pose.part").write_bytes(b"stale temp file of a killed run")
    assert extract.extract_all(found[:2], poses, read_and_fake, progress=False) == (1, 1, [])
    assert frames_in(a) == 5
    assert sorted(p.name for p in poses.iterdir()) == ["a.pose", "b.pose"]
    assert extract.extract_all(found[:2], poses, read_and_fake, overwrite=True, progress=False) == (2, 0, [])
    assert sorted(p.name for p in poses.iterdir()) == ["a.pose", "b.pose"]


def test_interrupted_write_leaves_old_file_and_no_partial(videos, tmp_path):
    poses = tmp_path / "poses"
    extract.extract_all([videos / "a.mp4"], poses, read_and_fake, progress=False)
    before = (poses / "a.pose").read_bytes()

    class HalfWritten:
        def write(self, f):
            f.write(before[:100])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract.extract_all([videos / "a.mp4"], poses, lambda video: HalfWritten(), overwrite=True, progress=False)
    assert sorted(p.name for p in poses.iterdir()) == ["a.pose"]
    assert (poses / "a.pose").read_bytes() == before


def test_same_stem_is_a_failure_not_an_overwrite(tmp_path):
    d = tmp_path / "videos"
    d.mkdir()
    write_video(d / "x.mp4", 2)
    write_video(d / "x.MOV", 4)
    written, skipped, failed = extract.extract_all(extract.list_videos(d, [".mp4", ".mov"]), tmp_path / "p",
                                                   read_and_fake, progress=False)
    assert (written, skipped, failed) == (1, 0, ["x.mp4"])  # sorted: x.MOV first
    assert frames_in(tmp_path / "p" / "x.pose") == 4


def test_summary_and_exit_status(videos, tmp_path, capsys):
    poses = str(tmp_path / "poses")
    assert extract.main([str(videos), poses], estimate=read_and_fake) == 1
    out, err = capsys.readouterr()
    assert out.strip().splitlines()[-1] == "2 written, 0 skipped (already done), 2 failed: empty.mp4, garbage.mp4"
    assert "garbage.mp4: failed: cannot read the video" in err + out
    assert extract.main([str(videos), poses, "--suffixes", "mov,.MP4"], estimate=read_and_fake) == 1
    assert extract.main([str(videos), poses, "--suffixes", ".mov"], estimate=read_and_fake) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "0 written, 1 skipped (already done), 0 failed"


@pytest.mark.skipif(not HAS_MEDIAPIPE, reason="needs mediapipe==0.10.14 (or <0.10.30 with numpy<2), not installed")
def test_real_holistic_on_a_portrait(tmp_path):
    from matplotlib import cbook
    from matplotlib.image import imread

    portrait = imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))[:, :, :3].astype(np.uint8)
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "hopper.mp4", 6, portrait)
    write_video(videos / "noise.mp4", 4)
    result = cli(str(videos), str(tmp_path / "poses"), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "2 written, 0 skipped (already done), 0 failed"
    pose = Pose.read((tmp_path / "poses" / "hopper.pose").read_bytes())
    names = [c.name for c in pose.header.components]
    assert names == ["POSE_LANDMARKS", "FACE_LANDMARKS", "LEFT_HAND_LANDMARKS", "RIGHT_HAND_LANDMARKS",
                     "POSE_WORLD_LANDMARKS"]
    assert pose.body.data.shape == (6, 1, 576, 3) and pose.body.fps == 25
    assert (pose.body.confidence[:, 0, :33 + 468] > 0).mean() > 0.9  # her body and face are found
    assert (Pose.read((tmp_path / "poses" / "noise.pose").read_bytes()).body.confidence == 0).all()
