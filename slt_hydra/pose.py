"""Pose keypoints as model input: find each example's pose file, read it, keep the configured body parts,
normalise, and check it against the configured layout, before any model is loaded.

A pose corpus (``dataset.input=pose``) is a CSV/TSV/JSONL whose ``dataset.source_field`` names each example's
pose: an id (``uid`` in iSign, ``SENTENCE_NAME`` in How2Sign) or a file name, looked up in ``dataset.pose_dir``
(relative to ``dataset.path``) with the suffix of ``dataset.pose_format``:

* ``pose``           a ``.pose`` file (the pose-format library's binary format; iSign's pose release, the
                     sign-language-processing tools). Its header names the components and points.
* ``npy`` / ``npz``  an array ``frames x keypoints x dims`` (or ``frames x people x keypoints x dims``; person 0
                     is kept); an ``.npz`` holds it under the key ``pose`` or as its only array. A point that is all
                     zeros counts as not detected. The keypoints follow ``pose.layout`` (holistic: MediaPipe
                     Holistic's 543 points, openpose: OpenPose's 137).
* ``openpose_json``  a folder of OpenPose JSON files, one per frame (``*_<frame>_keypoints.json``), as How2Sign
                     released its keypoints.

Each example becomes a float32 array ``frames x (points * dims)``: the ``pose.parts`` components in that order,
``pose.dims`` coordinates each (undetected points are 0), normalised by pose-format's ``Pose.normalize``
(``pose.normalize=shoulders``: centred on the mean shoulder midpoint and scaled to a mean shoulder width of 1,
over the sequence). Frames with NaN/inf are dropped or refused (``pose.on_nonfinite``), sequences longer than
``pose.max_frames`` truncated or refused (``pose.on_long``); both are counted for MLflow. Every problem is one
``DataError`` naming the row, the file and the setting to change. Only numpy and pose-format are imported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from slt_hydra.data import DataError, Example, _expand
from slt_hydra.schema import POSE_FORMATS

SUFFIX = {"pose": ".pose", "npy": ".npy", "npz": ".npz", "openpose_json": ""}

# The components of each known layout, in the order the full keypoint arrays hold them, and which body part each
# one is. Holistic's are MediaPipe's (iSign), OpenPose's are pose-format's OpenPose_Components (How2Sign).
COMPONENTS: Dict[str, Tuple[Tuple[str, str, int], ...]] = {
    "holistic": (("body", "POSE_LANDMARKS", 33), ("face", "FACE_LANDMARKS", 468),
                 ("left_hand", "LEFT_HAND_LANDMARKS", 21), ("right_hand", "RIGHT_HAND_LANDMARKS", 21)),
    "openpose": (("body", "pose_keypoints_2d", 25), ("face", "face_keypoints_2d", 70),
                 ("left_hand", "hand_left_keypoints_2d", 21), ("right_hand", "hand_right_keypoints_2d", 21)),
}
# MediaPipe Pose's 33 landmark names (mediapipe.solutions.pose.PoseLandmark), for arrays that carry no header:
# pose-format finds the shoulders by name when it normalises.
HOLISTIC_BODY_POINTS = (
    "NOSE", "LEFT_EYE_INNER", "LEFT_EYE", "LEFT_EYE_OUTER", "RIGHT_EYE_INNER", "RIGHT_EYE", "RIGHT_EYE_OUTER",
    "LEFT_EAR", "RIGHT_EAR", "MOUTH_LEFT", "MOUTH_RIGHT", "LEFT_SHOULDER", "RIGHT_SHOULDER", "LEFT_ELBOW",
    "RIGHT_ELBOW", "LEFT_WRIST", "RIGHT_WRIST", "LEFT_PINKY", "RIGHT_PINKY", "LEFT_INDEX", "RIGHT_INDEX",
    "LEFT_THUMB", "RIGHT_THUMB", "LEFT_HIP", "RIGHT_HIP", "LEFT_KNEE", "RIGHT_KNEE", "LEFT_ANKLE", "RIGHT_ANKLE",
    "LEFT_HEEL", "RIGHT_HEEL", "LEFT_FOOT_INDEX", "RIGHT_FOOT_INDEX")


@dataclass
class PoseCorpus:
    """Every example's pose as model input, keyed by its pose id (``Example.source``)."""

    features: Dict[str, np.ndarray]  # pose id -> float32 (frames, points * dims)
    feature_dim: int  # points * dims
    layout: str  # holistic | openpose
    points: int
    counts: Dict[str, int] = field(default_factory=dict)  # for MLflow (data_pose_*)

    def frames(self, pose_id: str) -> int:
        return int(self.features[pose_id].shape[0])


def _settings(pose_cfg: Any) -> Dict[str, Any]:
    return {key: pose_cfg[key] if isinstance(pose_cfg, Mapping) else getattr(pose_cfg, key)
            for key in ("layout", "parts", "dims", "normalize", "max_frames", "on_long", "on_nonfinite", "fps")}


def planned_feature_dim(pose_cfg: Any) -> int:
    """Values per frame that pose.parts and pose.dims give, before a file is read (layout auto: the larger,
    holistic): for the memory planner."""
    layout = "holistic" if pose_cfg.layout == "auto" else pose_cfg.layout
    points = {part: count for part, _, count in COMPONENTS[layout]}
    return sum(points[part] for part in pose_cfg.parts) * int(pose_cfg.dims)


def pose_path(dataset_cfg: Any, pose_id: str) -> Path:
    """Where the pose of ``pose_id`` is: dataset.pose_dir (relative to dataset.path) / id + the format's suffix."""
    root = _expand(dataset_cfg.path)
    if dataset_cfg.get("pose_dir"):
        root = root / _expand(dataset_cfg.pose_dir)  # an absolute pose_dir wins
    suffix = SUFFIX[dataset_cfg.pose_format]
    name = pose_id if not suffix or pose_id.endswith(suffix) else pose_id + suffix
    return root / name


# --------------------------------------------------------------------------- reading one file


def _header(layout: str, dims: int):
    """A pose-format header for a headerless array in a known layout (point names where normalising needs them)."""
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions
    from pose_format.utils.openpose import OpenPose_Components

    point_format = "XYZC" if dims == 3 else "XYC"
    if layout == "openpose" and dims == 2:
        components = OpenPose_Components
    else:
        names = {"POSE_LANDMARKS": HOLISTIC_BODY_POINTS}
        if layout == "openpose":
            names = {c.name: c.points for c in OpenPose_Components}
        components = [PoseHeaderComponent(name, list(names.get(name, [str(i) for i in range(count)])), [], [],
                                          point_format) for _, name, count in COMPONENTS[layout]]
    return PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(width=1, height=1, depth=int(dims == 3)),
                      components=components)


def _array_pose(path: Path, fmt: str, layout: str, fps: float):
    """A .npy/.npz array as a pose-format Pose, in the configured (or point-count-detected) layout."""
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody

    try:
        if fmt == "npy":
            array = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                key = "pose" if "pose" in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise DataError(f"{path}: the .npz holds {keys} and none is named 'pose'; save the keypoints "
                                    "under the key 'pose' (np.savez(FILE, pose=ARRAY))")
                array = archive[key]
    except DataError:
        raise
    except Exception as exc:  # truncated, not numpy, pickled objects...
        raise DataError(f"{path}: cannot be read as a {fmt} array ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 4:
        array = array[:, 0]  # frames x people x points x dims: the first person
    if array.ndim != 3 or array.shape[-1] not in (2, 3) or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: array of shape {array.shape} ({array.dtype}); a pose array is numeric frames x "
                        "keypoints x dims with dims 2 (XY) or 3 (XYZ), or frames x people x keypoints x dims")
    points = array.shape[1]
    totals = {name: sum(c[2] for c in comps) for name, comps in COMPONENTS.items()}
    if layout == "auto":
        layout = next((name for name, total in totals.items() if total == points), "")
        if not layout:
            raise DataError(f"{path}: {points} keypoints per frame match no known layout (holistic: "
                            f"{totals['holistic']}, openpose: {totals['openpose']}); arrays carry no header, so "
                            "save the full layout's keypoints in its order and set pose.layout=holistic|openpose")
    elif points != totals[layout]:
        raise DataError(f"{path}: {points} keypoints per frame, but pose.layout={layout} has {totals[layout]}; "
                        "set pose.layout to the layout the arrays were saved in (holistic: 543, openpose: 137)")
    data = array.astype(np.float32)
    missing = np.all(data == 0, axis=-1, keepdims=True)  # an undetected point
    mask = np.broadcast_to(missing, data.shape)[:, None]
    body = NumPyPoseBody(fps=fps, data=np.ma.masked_array(data[:, None], mask=mask),
                         confidence=(~missing[..., 0]).astype(np.float32)[:, None])
    return Pose(_header(layout, data.shape[-1]), body)


def read_pose(path: Path, fmt: str, layout: str = "auto", fps: float = 24.0):
    """The pose at ``path`` as a pose-format Pose, or DataError saying why it cannot be read."""
    if fmt == "openpose_json":
        if not path.is_dir():
            raise DataError(f"{path} is not a folder of OpenPose JSON frames")
        from pose_format.utils.openpose import load_openpose_directory

        if not any(path.glob("*.json")):
            raise DataError(f"{path} holds no *.json frame: it has no frames (zero frames)")
        try:
            return load_openpose_directory(str(path), fps=fps)
        except Exception as exc:  # malformed JSON, a frame name without its number, missing keys
            raise DataError(f"{path}: cannot be read as OpenPose JSON frames ({type(exc).__name__}: {exc}); "
                            "each file must be <name>_<frame number>_keypoints.json as OpenPose writes it") from exc
    if fmt in ("npy", "npz"):
        return _array_pose(path, fmt, layout, fps)
    from pose_format import Pose

    try:
        return Pose.read(path.read_bytes())
    except Exception as exc:  # a truncated or foreign file fails inside pose-format's buffer reader
        raise DataError(f"{path}: cannot be read as a .pose file ({type(exc).__name__}: {exc}); re-export it with "
                        "pose-format (or set dataset.pose_format to the files' real format)") from exc


def layout_of(pose, path: Path) -> str:
    """holistic | openpose, from the header's component names."""
    names = [c.name for c in pose.header.components]
    for layout, components in COMPONENTS.items():
        if any(name in names for _, name, _ in components):
            return layout
    raise DataError(f"{path}: components {names} are neither MediaPipe Holistic's nor OpenPose's; slt_hydra reads "
                    "those two layouts (pose.layout=holistic|openpose)")


def features(pose, path: Path, settings: Dict[str, Any], counts: Dict[str, int]) -> np.ndarray:
    """The model input of one pose: float32 (frames, points * dims), as the module docstring says."""
    layout = layout_of(pose, path)
    if settings["layout"] not in ("auto", layout):
        raise DataError(f"{path} is in the {layout} layout, but pose.layout={settings['layout']}; set "
                        f"pose.layout={layout} (or auto)")
    have = pose.body.data.shape[-1]
    if have < settings["dims"]:
        raise DataError(f"{path} has {have} coordinates per point, but pose.dims={settings['dims']}; set "
                        f"pose.dims={have}")
    names = {part: name for part, name, _ in COMPONENTS[layout]}
    in_file = [c.name for c in pose.header.components]
    missing = [part for part in settings["parts"] if names[part] not in in_file]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)} keypoints (its components: {in_file}); remove "
                        f"{', '.join(missing)} from pose.parts")
    frames = pose.body.data.shape[0]
    if frames == 0:
        raise DataError(f"{path} has zero frames; remove the example or re-extract its pose")
    raw = np.ma.getdata(pose.body.data)[:, 0]
    finite = np.isfinite(raw).all(axis=(1, 2))
    if not finite.all():
        bad = int((~finite).sum())
        if settings["on_nonfinite"] == "error":
            raise DataError(f"{path}: {bad} of {frames} frames hold NaN or inf; fix the file or set "
                            "pose.on_nonfinite=drop to drop such frames (counted in MLflow)")
        counts["pose_nonfinite_frames_dropped"] += bad
        pose.body = pose.body.select_frames(np.flatnonzero(finite).tolist())
        if not finite.any():
            raise DataError(f"{path}: every one of its {frames} frames holds NaN or inf: nothing is left")
        frames = int(finite.sum())
    if settings["normalize"] == "shoulders":
        try:
            pose.normalize()  # pose-format: the mean shoulder midpoint -> 0, the mean shoulder width -> 1
        except Exception as exc:
            raise DataError(f"{path}: cannot be normalised by the shoulders ({type(exc).__name__}: {exc}); "
                            "set pose.normalize=none") from exc
    pose = pose.get_components([names[part] for part in settings["parts"]])
    if frames > settings["max_frames"]:
        if settings["on_long"] == "error":
            raise DataError(f"{path} has {frames} frames, more than pose.max_frames={settings['max_frames']}; "
                            "raise pose.max_frames or set pose.on_long=truncate (counted in MLflow)")
        counts["pose_truncated"] += 1
        frames = settings["max_frames"]
    data = np.ma.filled(pose.body.data[:frames, 0, :, :settings["dims"]].astype(np.float32), 0.0)
    data[~np.isfinite(data)] = 0.0  # a degenerate normalisation (zero shoulder width) leaves NaN
    return data.reshape(frames, -1)


# --------------------------------------------------------------------------- a whole corpus


def load_pose_corpus(dataset_cfg: Any, pose_cfg: Any, splits: Mapping[str, Sequence[Example]]) -> PoseCorpus:
    """Read and check the pose of every example in ``splits`` (each Example.source is its pose id)."""
    settings = _settings(pose_cfg)
    fmt = dataset_cfg.pose_format
    counts = {"pose_files": 0, "pose_frames_total": 0, "pose_frames_max": 0, "pose_nonfinite_frames_dropped": 0,
              "pose_truncated": 0}
    out: Dict[str, np.ndarray] = {}
    expected: Tuple[str, int, str] | None = None  # (layout, feature width, first file): every file must agree
    for split, examples in splits.items():
        missing: List[Example] = []
        for example in examples:
            if example.source in out:
                continue
            path = pose_path(dataset_cfg, example.source)
            if not path.exists():
                missing.append(example)
                continue
            try:
                pose = read_pose(path, fmt, settings["layout"], settings["fps"])
                array = features(pose, path, settings, counts)
            except DataError as exc:
                raise DataError(f"{example.origin} ({dataset_cfg.source_field}={example.source!r}): {exc}") from None
            if expected is None:
                expected = (layout_of(pose, path), array.shape[1], str(path))
            elif array.shape[1] != expected[1]:
                raise DataError(f"{example.origin}: {path} gives {array.shape[1]} values per frame, but {expected[2]} "
                                f"gave {expected[1]}: the files differ in keypoints or dims; re-extract them with "
                                "one layout (pose.parts and pose.dims select the same points from each)")
            out[example.source] = array
            counts["pose_files"] += 1
            counts["pose_frames_total"] += array.shape[0]
            counts["pose_frames_max"] = max(counts["pose_frames_max"], array.shape[0])
        if missing:
            raise DataError(_missing_message(dataset_cfg, split, missing, len(examples)))
    assert expected is not None  # load_splits refuses empty splits
    return PoseCorpus(out, expected[1], expected[0], expected[1] // settings["dims"], counts)


# --------------------------------------------------------------------------- pose files named on a command line


def pose_inputs(paths: Sequence[Path]) -> List[Tuple[str, Path, str]]:
    """(id, path, format) of each pose named: a .pose/.npy/.npz file, an OpenPose JSON folder (one file per frame),
    or a folder of those (sorted by name). The id is the file's stem or the folder's name."""
    found: List[Tuple[str, Path, str]] = []

    def one(path: Path) -> Tuple[str, Path, str] | None:
        fmt = {suffix: fmt for fmt, suffix in SUFFIX.items() if suffix}.get(path.suffix)
        if path.is_file() and fmt:
            return path.stem, path, fmt
        if path.is_dir() and any(path.glob("*.json")):
            return path.name, path, "openpose_json"
        return None

    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        item = one(path)
        if item is None and path.is_dir():
            inside = [item for child in sorted(path.iterdir()) if (item := one(child))]
            if not inside:
                raise DataError(f"{path} holds no pose: no .pose, .npy or .npz file and no folder of OpenPose "
                                "*.json frames")
            found.extend(inside)
        elif item is None:
            raise DataError(f"{path} is not a pose: give a .pose, .npy or .npz file, a folder of OpenPose *.json "
                            "frames, or a folder of those")
        else:
            found.append(item)
    ids = [name for name, _, _ in found]
    twice = sorted({name for name in ids if ids.count(name) > 1})
    if twice:
        raise DataError(f"two poses share the name {twice[0]!r} (e.g. {twice[0]}.pose and {twice[0]}.npy): the "
                        "translations are keyed by name; translate them separately")
    return found


def read_pose_inputs(items: Sequence[Tuple[str, Path, str]], pose_settings: Mapping[str, Any]) -> PoseCorpus:
    """Read and check the poses that ``pose_inputs`` found, as a run with these pose settings reads its corpus
    (an adapter's pose_encoder.json and the run's pose group: parts, dims, normalize, max_frames, ...)."""
    settings = _settings(pose_settings)
    counts = {"pose_files": 0, "pose_frames_total": 0, "pose_frames_max": 0, "pose_nonfinite_frames_dropped": 0,
              "pose_truncated": 0}
    out: Dict[str, np.ndarray] = {}
    layout = ""
    for name, path, fmt in items:
        pose = read_pose(path, fmt, settings["layout"], settings["fps"])
        out[name] = features(pose, path, settings, counts)
        layout = layout or layout_of(pose, path)
        counts["pose_files"] += 1
    widths = {array.shape[1] for array in out.values()}
    if len(widths) > 1:
        raise DataError(f"the poses give {sorted(widths)} values per frame: they differ in keypoints or dims")
    (width,) = widths
    return PoseCorpus(out, width, layout, width // settings["dims"], counts)


def pose_files_named(dataset_cfg: Any, examples: Sequence[Example], sample: int = 5) -> str | None:
    """The first pose file that the first ``sample`` sources all name (a pose corpus read as gloss text), or None."""
    if not examples or not dataset_cfg.get("path") or str(dataset_cfg.path) == "???":
        return None
    try:
        paths = [pose_path(dataset_cfg, e.source) for e in examples[:sample]]
        return str(paths[0]) if all(p.exists() for p in paths) else None
    except (OSError, ValueError):  # gloss text that is no file name at all (too long, a NUL byte)
        return None


def _missing_message(dataset_cfg: Any, split: str, missing: List[Example], total: int) -> str:
    first = missing[0]
    where = pose_path(dataset_cfg, first.source)
    text = (f"{first.origin}: {dataset_cfg.source_field}={first.source!r} has no pose file: {where} does not exist "
            f"({len(missing)} of {total} {split} examples have none")
    text += ", e.g. " + ", ".join(repr(e.source) for e in missing[1:4]) + ")" if len(missing) > 1 else ")"
    if len(missing) == total and sum(" " in e.source for e in missing) > total / 2:
        return (text + f"; the {dataset_cfg.source_field!r} column looks like gloss text, not pose ids: for a gloss "
                "corpus set dataset.input=gloss")
    return (text + "; set dataset.pose_dir (the folder of pose files, relative to dataset.path) and "
            f"dataset.pose_format={'|'.join(POSE_FORMATS)}, or remove the rows without a pose")


def describe(corpus: PoseCorpus) -> str:
    return json.dumps({"layout": corpus.layout, "points": corpus.points, "feature_dim": corpus.feature_dim,
                       **corpus.counts})
