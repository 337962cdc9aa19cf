"""`python -m slt_hydra.extract VIDEO_DIR POSE_DIR`: turn videos into .pose files with MediaPipe Holistic.

Each video in VIDEO_DIR (sorted; suffixes from --suffixes) becomes POSE_DIR/<stem>.pose, written by pose-format's
``load_holistic`` from frames read with pose-format's own reader (``simple_video_utils``, on PyAV). The run resumes:
a .pose that exists and reads back with ``Pose.read`` is skipped (--overwrite redoes it), an unreadable or partial one
is rewritten, and each file is written to a hidden ``.<stem>.pose.part`` first and renamed, so a killed run leaves no
partial .pose. A bad video (unreadable, no frames) is named and the others go on; exit status 1 if any failed.
Point the dataset at the result with ``dataset.pose_dir``.

What works offline (checked on Python 3.11 x86_64, pip from PyPI, network unplugged with ``unshare -n``):

* mediapipe 0.10.14 is the one release with ``mediapipe.solutions.holistic`` that installs beside numpy 2 (2.4.6 here);
  its wheel ships the Holistic graphs and models (modules/holistic_landmark, pose_landmark_full, face_landmark,
  hand_landmark, palm/pose/face detection) and Holistic runs offline (a portrait: body and face found). It needs
  protobuf<5, which this project's mlflow stack refuses (opentelemetry-proto needs protobuf>=5), hence its own venv.
* mediapipe 0.10.15 to 0.10.21 also ship the models and run offline, but require numpy<2.
* mediapipe 0.10.30 and later (to 1.2.x) have no ``mediapipe.solutions`` and ship no models; pose-format refuses them.
* Only model_complexity=1 is in the wheel: 0 and 2 download pose_landmark_lite/heavy at start and fail offline,
  so this module uses 1.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import itertools
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Tuple

PROG = "python -m slt_hydra.extract"
SUFFIXES = ".mp4,.mov,.avi,.mkv,.webm,.flv,.wmv"  # pose-format's videos_to_poses list
MEDIAPIPE = "mediapipe==0.10.14"
HOLISTIC = "python/solutions/holistic.py"  # under mediapipe/, gone from 0.10.30 on
# The files Holistic at model_complexity=1 loads, under mediapipe/ (a wheel without them would try to download).
MODELS = (
    "modules/holistic_landmark/holistic_landmark_cpu.binarypb",
    "modules/holistic_landmark/hand_recrop.tflite",
    "modules/pose_detection/pose_detection.tflite",
    "modules/pose_landmark/pose_landmark_full.tflite",
    "modules/face_landmark/face_landmark.tflite",
    "modules/hand_landmark/hand_landmark_full.tflite",
    "modules/palm_detection/palm_detection_full.tflite",
)
INSTALL = (
    f'install {MEDIAPIPE} (the release with offline Holistic that allows numpy 2) in a separate environment, since '
    "it needs protobuf<5 and this project's mlflow needs protobuf>=5: python3.11 -m venv ~/.venv-pose && "
    f'~/.venv-pose/bin/pip install "{MEDIAPIPE}" pose-format==0.15.0 omegaconf, then run '
    "`~/.venv-pose/bin/python -m slt_hydra.extract VIDEO_DIR POSE_DIR` from the repository root; or extract the "
    "poses elsewhere with pose-format's own `video_to_pose -i VIDEO -o POSE --format mediapipe` (or "
    "`videos_to_poses -d DIR`) and point the dataset at the .pose files (dataset.pose_dir)"
)

Estimate = Callable[[Path], object]  # a video -> a pose_format.Pose


def holistic_problem() -> str | None:
    """What is missing for an offline Holistic run in this Python (None: nothing).

    Looks at the installed files first, so a refusal is fast; imports mediapipe only when they are all there.
    """
    readers = [name for name in ("av", "simple_video_utils") if importlib.util.find_spec(name) is None]
    if readers:
        return f"pose-format's video reader is not installed ({', '.join(readers)}: pip install simple-video-utils)"
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return f"mediapipe is not installed in {sys.executable}"
    root = Path(list(spec.submodule_search_locations)[0])
    try:
        version = importlib.metadata.version("mediapipe")
    except importlib.metadata.PackageNotFoundError:
        version = "(unknown version)"
    if not (root / HOLISTIC).is_file():
        return f"mediapipe {version} has no mediapipe.solutions.holistic (removed in 0.10.30)"
    absent = [name for name in MODELS if not (root / name).is_file()]
    if absent:
        return f"mediapipe {version} lacks the Holistic models {', '.join(absent)} (offline it cannot fetch them)"
    try:  # mediapipe itself (e.g. built for another numpy or protobuf): this would fail every video alike
        import pose_format.utils.holistic  # noqa: F401
    except Exception as exc:
        return f"importing mediapipe {version} fails ({type(exc).__name__}: {exc})"
    return None


def read_video(path: Path) -> Tuple[Iterator, object]:
    """The RGB frames (a lazy iterator) and metadata of a video; ValueError if it cannot be read or has no frames."""
    from simple_video_utils.frames import read_frames_exact
    from simple_video_utils.metadata import video_metadata

    try:
        meta = video_metadata(str(path))
        frames = iter(read_frames_exact(str(path)))
        first = next(frames, None)
    except (RuntimeError, OSError) as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ValueError(f"cannot read the video ({exc}{cause})") from exc
    if first is None:
        raise ValueError("the video has no frames")
    return itertools.chain([first], frames), meta


def holistic_pose(path: Path):
    """MediaPipe Holistic over one video, as pose-format's video_to_pose does (model_complexity=1: the shipped one)."""
    from pose_format.utils.holistic import load_holistic

    frames, meta = read_video(path)
    return load_holistic(frames, fps=meta.fps, width=meta.width, height=meta.height,
                         additional_holistic_config={"model_complexity": 1})


def is_done(pose_path: Path) -> bool:
    """Whether ``pose_path`` is a complete .pose file (it reads back)."""
    from pose_format import Pose

    try:
        Pose.read(pose_path.read_bytes())
        return True
    except Exception:  # missing, truncated, garbage: all mean "do it again"
        return False


def list_videos(video_dir: Path, suffixes: Iterable[str]) -> List[Path]:
    wanted = {s.lower() for s in suffixes}
    return sorted(p for p in video_dir.iterdir() if p.is_file() and p.suffix.lower() in wanted)


def extract_all(videos: List[Path], pose_dir: Path, estimate: Estimate, overwrite: bool = False,
                progress: bool = True) -> Tuple[int, int, List[str]]:
    """Write pose_dir/<stem>.pose for each video with ``estimate``; returns (written, skipped, failed names)."""
    from tqdm import tqdm

    pose_dir.mkdir(parents=True, exist_ok=True)
    written, skipped, failed, seen = 0, 0, [], {}
    for video in tqdm(videos, desc="videos", unit="video", disable=not progress):
        target = pose_dir / f"{video.stem}.pose"
        if video.stem in seen:
            tqdm.write(f"{video.name}: failed: same name as {seen[video.stem]}, both would be {target.name}")
            failed.append(video.name)
            continue
        seen[video.stem] = video.name
        if not overwrite and is_done(target):
            skipped += 1
            continue
        part = pose_dir / f".{target.name}.part"
        try:
            pose = estimate(video)
            with open(part, "wb") as f:
                pose.write(f)
            os.replace(part, target)
            written += 1
        except Exception as exc:  # one bad video must not stop the others
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            tqdm.write(f"{video.name}: failed: {reason}")
            failed.append(video.name)
        finally:  # after a failure or Ctrl-C: no partial file left behind (after the rename there is none)
            part.unlink(missing_ok=True)
    return written, skipped, failed


def main(argv: List[str] | None = None, estimate: Estimate | None = None) -> int:
    """The CLI; ``estimate`` replaces MediaPipe Holistic (and its check) for tests that write real .pose files."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Turn each video in VIDEO_DIR into POSE_DIR/<stem>.pose with MediaPipe Holistic (pose-format), "
                    "skipping videos whose .pose is already complete. Needs mediapipe with its Holistic models "
                    f"({MEDIAPIPE}); without it, it says how to get it and exits 2.",
        epilog="Exit status: 0 all done, 1 some videos failed (named in the summary), 2 cannot start.")
    parser.add_argument("video_dir", metavar="VIDEO_DIR", type=Path, help="folder of videos (not searched recursively)")
    parser.add_argument("pose_dir", metavar="POSE_DIR", type=Path, help="folder for the .pose files (created)")
    parser.add_argument("--suffixes", default=SUFFIXES, help=f"comma-separated video suffixes (default: {SUFFIXES})")
    parser.add_argument("--overwrite", action="store_true", help="redo videos whose .pose file already exists")
    args = parser.parse_args(argv)

    suffixes = [s if s.startswith(".") else f".{s}" for s in (x.strip() for x in args.suffixes.split(",")) if s]
    if not args.video_dir.is_dir():
        print(f"{PROG}: VIDEO_DIR {args.video_dir} is not a folder", file=sys.stderr)
        return 2
    videos = list_videos(args.video_dir, suffixes)
    if not videos:
        print(f"{PROG}: no videos ({','.join(suffixes)}) in {args.video_dir}; see --suffixes", file=sys.stderr)
        return 2
    problem = None if estimate else holistic_problem()
    if problem:
        print(f"{PROG}: cannot run MediaPipe Holistic offline here: {problem}. To extract poses, {INSTALL}.",
              file=sys.stderr)
        return 2

    written, skipped, failed = extract_all(videos, args.pose_dir, estimate or holistic_pose, overwrite=args.overwrite)
    print(f"{written} written, {skipped} skipped (already done), {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
