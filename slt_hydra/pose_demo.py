"""The embedded pose corpus (``dataset=demo_pose``): the demo corpus's sentences, each "signed" as SYNTHETIC
MediaPipe-Holistic-style keypoints, written as real ``.pose`` files with pose-format's own writer on first use.

Each gloss of resources/demo is a sign of its own, described as sign phonology describes one: a handshape
(which fingers are curled), a location in the signing space, a movement from it, one hand or two; no two
glosses share all four, and a gloss looks the same in every sentence. The dominant hand travels from the last
sign to the next (co-articulation). Each sentence gets its own signer: body size, place in the frame and
tracking noise, so the encoder must learn the signs, not the pixels. The targets are the demo's English
sentences. It shows that the pose pipeline learns; it is not sign language.

The corpus is written once per version into ``dataset.path`` (``${cache_dir}/pose_demo``): train/dev/test.csv
(``id,text``) and poses/<id>.pose (33 body + 21 + 21 hand points, XY + confidence, 24 fps, 12 frames a gloss);
800 files, about a second.
"""
from __future__ import annotations

import csv
import functools
import itertools
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from slt_hydra.errors import SetupError
from slt_hydra.pose import HOLISTIC_BODY_POINTS

VERSION = "3"  # bump when the rendering changes: a cached corpus of another version is written anew
MARKER = "VERSION"
DEMO = Path(__file__).resolve().parent / "resources" / "demo"
SPLITS = ("train", "dev", "test")
FPS = 24.0
# Frames per gloss: the hand travels to the sign (co-articulation), then signs it. 12 frames = 0.5 s at 24 fps,
# a whole number of soft tokens at pose.downsample 1, 2, 3, 4, 6 or 12, so a gloss is the same soft tokens in
# every sentence (real signing has no such grid: this is what makes the toy learnable in minutes).
TRAVEL_FRAMES, SIGN_FRAMES = 4, 8
HAND_POINTS = ("WRIST", "THUMB_CMC", "THUMB_MCP", "THUMB_IP", "THUMB_TIP", "INDEX_FINGER_MCP", "INDEX_FINGER_PIP",
               "INDEX_FINGER_DIP", "INDEX_FINGER_TIP", "MIDDLE_FINGER_MCP", "MIDDLE_FINGER_PIP", "MIDDLE_FINGER_DIP",
               "MIDDLE_FINGER_TIP", "RING_FINGER_MCP", "RING_FINGER_PIP", "RING_FINGER_DIP", "RING_FINGER_TIP",
               "PINKY_MCP", "PINKY_PIP", "PINKY_DIP", "PINKY_TIP")

# A resting body in shoulder-width units (x right, y down, shoulders' midpoint at 0): the 33 MediaPipe Pose
# points, elbows and wrists are overwritten by the arms' motion.
_BODY = {"NOSE": (0, -0.9), "LEFT_EYE_INNER": (0.05, -1.0), "LEFT_EYE": (0.09, -1.0), "LEFT_EYE_OUTER": (0.13, -1.0),
         "RIGHT_EYE_INNER": (-0.05, -1.0), "RIGHT_EYE": (-0.09, -1.0), "RIGHT_EYE_OUTER": (-0.13, -1.0),
         "LEFT_EAR": (0.2, -0.95), "RIGHT_EAR": (-0.2, -0.95), "MOUTH_LEFT": (0.06, -0.78),
         "MOUTH_RIGHT": (-0.06, -0.78), "LEFT_SHOULDER": (0.5, 0), "RIGHT_SHOULDER": (-0.5, 0),
         "LEFT_HIP": (0.3, 1.5), "RIGHT_HIP": (-0.3, 1.5), "LEFT_KNEE": (0.3, 2.4), "RIGHT_KNEE": (-0.3, 2.4),
         "LEFT_ANKLE": (0.3, 3.2), "RIGHT_ANKLE": (-0.3, 3.2), "LEFT_HEEL": (0.32, 3.3), "RIGHT_HEEL": (-0.32, 3.3),
         "LEFT_FOOT_INDEX": (0.35, 3.4), "RIGHT_FOOT_INDEX": (-0.35, 3.4)}
_REST = {"right": np.array([-0.45, 1.3]), "left": np.array([0.45, 1.3])}  # hands down by the hips
# An open hand (wrist at 0, fingers up), one row per HAND_POINTS entry, in shoulder widths.
_OPEN_HAND = np.array([(0, 0), (-0.06, -0.04), (-0.1, -0.08), (-0.13, -0.12), (-0.15, -0.16),
                       (-0.05, -0.17), (-0.06, -0.24), (-0.065, -0.28), (-0.07, -0.32),
                       (0, -0.18), (0, -0.26), (0, -0.31), (0, -0.35),
                       (0.045, -0.17), (0.05, -0.24), (0.055, -0.28), (0.06, -0.31),
                       (0.085, -0.15), (0.1, -0.2), (0.11, -0.23), (0.12, -0.26)])


# A gloss is drawn as sign phonology is described: a handshape (which fingers are curled), a location in the
# signing space and a movement from it, one or two hands. Each demo gloss gets its own combination.
_HANDSHAPES = ((0, 0, 0, 0, 0), (1, 1, 1, 1, 1), (1, 0, 1, 1, 1), (1, 0, 0, 1, 1), (0, 1, 1, 1, 1),
               (1, 1, 1, 1, 0), (0, 0, 1, 1, 0), (1, 0, 0, 0, 1), (0, 0, 0, 0, 1), (1, 1, 0, 0, 0))
_LOCATIONS = tuple((x, y) for y in (-0.9, -0.3, 0.4) for x in (-0.9, -0.45, 0.0, 0.45))  # head, chest, waist
_MOVES = tuple((0.4 * np.cos(a), 0.4 * np.sin(a)) for a in np.arange(8) * np.pi / 4)


@functools.cache
def _combinations() -> dict:
    """gloss -> (handshape, location, movement, two-handed): distinct for every gloss of the demo corpus."""
    lines = [line for split in SPLITS for line in (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    glosses = sorted({g for line in lines if line.strip() for g in json.loads(line)["source"].split()})
    combos = list(itertools.product(range(len(_HANDSHAPES)), range(len(_LOCATIONS)), range(len(_MOVES))))
    order = np.random.default_rng(2014).permutation(len(combos))
    return {g: (*combos[order[i]], i % 3 == 0) for i, g in enumerate(glosses)}


def _gloss_sign(gloss: str) -> dict:
    """The motion of one gloss, the same wherever it occurs. A gloss outside the demo corpus gets a combination
    drawn from its own name."""
    known = _combinations().get(gloss)
    if known is None:
        rng = np.random.default_rng(zlib.crc32(gloss.encode("utf-8")))
        known = (rng.integers(len(_HANDSHAPES)), rng.integers(len(_LOCATIONS)), rng.integers(len(_MOVES)),
                 bool(rng.uniform() < 1 / 3))
    handshape, location, move, two_handed = known
    shape = _OPEN_HAND.copy()
    for finger, (first, last) in enumerate(((1, 5), (5, 9), (9, 13), (13, 17), (17, 21))):
        curl = _HANDSHAPES[handshape][finger]
        shape[first + 1:last] = shape[first] + (shape[first + 1:last] - shape[first]) * (1 - 0.8 * curl)
    start = np.array(_LOCATIONS[location])
    return {"start": start, "end": start + np.array(_MOVES[move]), "arc": 0.1, "shape": shape, "turn": 0.3,
            "two_handed": bool(two_handed)}


def render(glosses: list[str], rng: np.random.Generator) -> np.ndarray:
    """(frames, 75, 2) coordinates of one signer signing ``glosses``, in shoulder widths around the shoulders'
    midpoint: body 33, left hand 21, right hand 21 (the demo signer is right-handed)."""
    right, left, shape, turn = [], [], [], []
    previous = _REST["right"]
    for gloss in glosses:
        sign = _gloss_sign(gloss)
        # the hand travels from wherever it was to the sign's start (co-articulation), then performs the sign
        travel, frames = TRAVEL_FRAMES, SIGN_FRAMES
        t = np.linspace(0, 1, travel, endpoint=False)[:, None]
        right.append(previous + (sign["start"] - previous) * t)
        t = np.linspace(0, 1, frames)[:, None]
        path = sign["start"] + (sign["end"] - sign["start"]) * t
        path[:, 1] += sign["arc"] * np.sin(np.pi * t[:, 0])
        right.append(path)
        rest = _REST["left"][None]
        left += [np.repeat(rest, travel, 0), path * np.array([-1.0, 1.0]) if sign["two_handed"]
                 else np.repeat(rest, frames, 0)]
        shape += [np.repeat(sign["shape"][None], travel + frames, axis=0)]
        turn += [np.zeros(travel), sign["turn"] * t[:, 0]]
        previous = sign["end"]
    right_wrist, left_wrist = np.concatenate(right), np.concatenate(left)
    shapes, angles = np.concatenate(shape), np.concatenate(turn)
    frames = len(right_wrist)
    body = np.zeros((frames, 33, 2))
    for i, name in enumerate(HOLISTIC_BODY_POINTS):
        body[:, i] = _BODY.get(name, (0.0, 0.0))
    index = {name: i for i, name in enumerate(HOLISTIC_BODY_POINTS)}
    for side, wrist in (("RIGHT", right_wrist), ("LEFT", left_wrist)):
        shoulder = body[:, index[f"{side}_SHOULDER"]]
        body[:, index[f"{side}_ELBOW"]] = (shoulder + wrist) / 2 + np.array([0.0, 0.25])  # the elbow hangs
        body[:, index[f"{side}_WRIST"]] = wrist
        for finger, point in (("PINKY", 17), ("INDEX", 5), ("THUMB", 2)):
            body[:, index[f"{side}_{finger}"]] = wrist + 0.6 * shapes[:, point] * (1 if side == "RIGHT" else -1)
    right_hand = _hand(right_wrist, shapes, angles, mirror=False)
    left_hand = _hand(left_wrist, shapes, -angles, mirror=True)
    return np.concatenate([body, left_hand, right_hand], axis=1)


def _hand(wrist: np.ndarray, shapes: np.ndarray, angle: np.ndarray, mirror: bool) -> np.ndarray:
    """(frames, 21, 2): each frame's hand shape turned by its angle and placed at its wrist."""
    if mirror:
        shapes = shapes * np.array([-1.0, 1.0])
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x, y = shapes[..., 0], shapes[..., 1]
    return wrist[:, None, :] + np.stack([cos * x - sin * y, sin * x + cos * y], axis=-1)


def _signer(coords: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shoulder-width units -> pixels of a 512x512 frame, for a signer of their own size and place, with noise."""
    width = rng.uniform(90, 150)  # shoulder width in pixels
    centre = np.array([256.0, 180.0]) + rng.uniform(-40, 40, size=2)
    noise = rng.normal(0, 0.01, size=coords.shape)  # tracking jitter, in shoulder widths
    return (coords + noise) * width + centre


def _header():
    from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions

    components = [PoseHeaderComponent("POSE_LANDMARKS", list(HOLISTIC_BODY_POINTS), [], [], "XYC"),
                  PoseHeaderComponent("LEFT_HAND_LANDMARKS", list(HAND_POINTS), [], [], "XYC"),
                  PoseHeaderComponent("RIGHT_HAND_LANDMARKS", list(HAND_POINTS), [], [], "XYC")]
    return PoseHeader(version=0.2, dimensions=PoseHeaderDimensions(width=512, height=512, depth=0),
                      components=components)


def write_pose_file(path: Path, pixels: np.ndarray, header=None) -> None:
    """One (frames, points, 2) array as a .pose file (every point detected), with pose-format's writer."""
    from pose_format import Pose
    from pose_format.numpy import NumPyPoseBody

    data = pixels.astype(np.float32)[:, None]
    body = NumPyPoseBody(fps=FPS, data=np.ma.masked_array(data, mask=np.zeros_like(data, dtype=bool)),
                         confidence=np.ones(data.shape[:3], dtype=np.float32))
    with open(path, "wb") as handle:
        Pose(header or _header(), body).write(handle)


def write_pose_demo(folder: Path) -> Path:
    """Write the corpus into ``folder`` unless this version is there already; returns ``folder``."""
    folder = Path(folder).expanduser()
    marker = folder / MARKER
    if marker.is_file() and marker.read_text().strip() == VERSION:
        return folder
    if folder.exists() and not marker.is_file() and any(folder.iterdir()):  # never replace someone's files
        raise SetupError(f"dataset.path={folder} holds files that are not slt_hydra's synthetic pose corpus (no "
                         f"{MARKER} file); point dataset=demo_pose at an empty or new folder, or use dataset=local "
                         "for your own pose corpus")
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")  # never a half-written corpus in place
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "poses").mkdir(parents=True)
    header = _header()
    for n, split in enumerate(SPLITS):
        rows = [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()]
        with open(partial / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "text"])
            for i, row in enumerate(rows):
                pose_id = f"{split}_{i:04d}"
                rng = np.random.default_rng([7, n, i])  # the signer of this sentence
                write_pose_file(partial / "poses" / f"{pose_id}.pose", _signer(render(row["source"].split(), rng), rng),
                                header)
                writer.writerow([pose_id, row["target"]])
    (partial / MARKER).write_text(VERSION + "\n")
    shutil.rmtree(folder, ignore_errors=True)  # an older version
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(partial, folder)
    except OSError:  # another job wrote it meanwhile (a parallel sweep): keep theirs if it is this version
        shutil.rmtree(partial, ignore_errors=True)
        if not (marker.is_file() and marker.read_text().strip() == VERSION):
            raise
    return folder
