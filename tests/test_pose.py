"""Pose input (dataset.input=pose): the readers on real files (.pose from pose-format's own writer and from the
pose-format project, numpy arrays, OpenPose JSON folders), every refusal the issue lists, the validation rules,
and the synthetic demo corpus. The end-to-end runs are in tests/test_pose_pipeline.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pose_format import Pose
from pose_format.utils.generic import fake_pose

from conftest import compose_config
from slt_hydra import validate
from slt_hydra.data import DataError, load_splits
from slt_hydra.machine import detect_machine
from slt_hydra.pose import _header, load_pose_corpus, pose_files_named, read_pose
from slt_hydra.pose_demo import VERSION, write_pose_demo, write_pose_file
from slt_hydra.pose_demo import _header as demo_header

SHARED_POSES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "poses"
OPENPOSE_POINTS = {"pose_keypoints_2d": 25, "face_keypoints_2d": 70, "hand_left_keypoints_2d": 21,
                   "hand_right_keypoints_2d": 21}


def pose_cfg(tmp_path: Path, folder: Path, *overrides: str, fmt: str = "pose"):
    """A composed config whose dataset is a pose corpus in ``folder`` (train/dev/test.csv: id,text)."""
    return compose_config(["dataset=local", "dataset.format=csv", f"dataset.path={folder}", "dataset.input=pose",
                           "dataset.source_field=id", "dataset.target_field=text", "dataset.pose_dir=poses",
                           f"dataset.pose_format={fmt}", "dataset.splits={train: train.csv, dev: dev.csv, "
                           "test: test.csv}", "dataset.on_leak=keep", *overrides], tmp_path / "run")


def write_csvs(folder: Path, ids_by_split: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "poses").mkdir(exist_ok=True)
    for split, ids in ids_by_split.items():
        (folder / f"{split}.csv").write_text("id,text\n" + "".join(f"{i},sentence {i}\n" for i in ids))
    return folder


def corpus_of(tmp_path: Path, folder: Path, *overrides: str, fmt: str = "pose"):
    cfg = pose_cfg(tmp_path, folder, *overrides, fmt=fmt)
    splits, _ = load_splits(cfg.dataset)
    return load_pose_corpus(cfg.dataset, cfg.pose, splits)


def holistic_pixels(frames: int, seed: int = 0, points: int = 75) -> np.ndarray:
    """A plausible body: shoulders apart, the rest scattered around them (pixels)."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(100, 400, size=(frames, points, 2))
    data[:, 11], data[:, 12] = (300, 200), (200, 200)  # LEFT_SHOULDER, RIGHT_SHOULDER: width 100
    return data


def simple_corpus(tmp_path: Path, frames=(12, 9, 7), write=None) -> Path:
    """Three examples (one per split) as .pose files with the demo's body + hands layout."""
    folder = write_csvs(tmp_path / "corpus", {"train": ["a"], "dev": ["b"], "test": ["c"]})
    for n, (pose_id, count) in enumerate(zip("abc", frames)):
        (write or write_pose_file)(folder / "poses" / f"{pose_id}.pose", holistic_pixels(count, n))
    return folder


# --------------------------------------------------------------------------- readers


def test_pose_files_written_by_pose_format_are_read_normalised_and_shaped(tmp_path):
    folder = simple_corpus(tmp_path)
    corpus = corpus_of(tmp_path, folder)
    assert (corpus.layout, corpus.points, corpus.feature_dim) == ("holistic", 75, 150)
    assert [corpus.frames(i) for i in "abc"] == [12, 9, 7]
    a = corpus.features["a"].reshape(12, 75, 2)
    # normalised by the shoulders: their midpoint at 0, their width 1 (pose-format's normalize)
    np.testing.assert_allclose((a[:, 11] + a[:, 12]) / 2, 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a[:, 11] - a[:, 12], axis=-1), 1, atol=1e-5)
    assert corpus.counts["pose_files"] == 3 and corpus.counts["pose_frames_total"] == 28
    raw = corpus_of(tmp_path, folder, "pose.normalize=none").features["a"].reshape(12, 75, 2)
    np.testing.assert_allclose(raw, holistic_pixels(12, 0), rtol=1e-5)


def test_parts_select_components_in_order(tmp_path):
    folder = simple_corpus(tmp_path)
    hands = corpus_of(tmp_path, folder, "pose.parts=[right_hand,left_hand]", "pose.normalize=none")
    assert hands.feature_dim == 84
    pixels = holistic_pixels(12, 0)
    np.testing.assert_allclose(hands.features["a"].reshape(12, 42, 2)[:, :21], pixels[:, 54:75], rtol=1e-5)


def test_fake_pose_openpose_layout(tmp_path):
    folder = write_csvs(tmp_path / "op", {"train": ["a"], "dev": ["b"], "test": ["c"]})
    for pose_id in "abc":
        pose = fake_pose(15, fps=25.0)  # pose-format's own: OpenPose's 137 points, XY + confidence
        with open(folder / "poses" / f"{pose_id}.pose", "wb") as handle:
            pose.write(handle)
    corpus = corpus_of(tmp_path, folder, "pose.normalize=none")
    assert (corpus.layout, corpus.points, corpus.features["a"].shape) == ("openpose", 67, (15, 134))


@pytest.fixture
def shared_poses():
    if not SHARED_POSES.is_dir():
        pytest.skip(f"../shared/data/poses is not present ({SHARED_POSES} is missing): a fresh clone has no ../shared")
    return SHARED_POSES


@pytest.mark.parametrize("name,layout,frames,width", [("mediapipe", "holistic", 170, 2 * (8 + 21 + 21)),
                                                     ("openpose", "openpose", 93, 2 * (25 + 21 + 21))])
def test_the_pose_format_projects_real_files(shared_poses, tmp_path, name, layout, frames, width):
    folder = write_csvs(tmp_path / name, {"train": [name], "dev": [name], "test": [name]})
    (folder / "poses" / f"{name}.pose").symlink_to(shared_poses / f"{name}.pose")
    corpus = corpus_of(tmp_path, folder)
    assert (corpus.layout, corpus.features[name].shape) == (layout, (frames, width))
    assert np.isfinite(corpus.features[name]).all()
    with_face = corpus_of(tmp_path, folder, "pose.parts=[body,face,left_hand,right_hand]")
    assert with_face.feature_dim > width


@pytest.mark.parametrize("layout,points", [("holistic", 543), ("openpose", 137)])
@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_numpy_arrays_in_either_layout(tmp_path, fmt, layout, points):
    folder = write_csvs(tmp_path / "np", {"train": ["a"], "dev": ["b"], "test": ["c"]})
    for n, pose_id in enumerate("abc"):
        array = holistic_pixels(10 + n, n, points) if layout == "holistic" else np.random.default_rng(n).uniform(
            1, 500, size=(10 + n, points, 2))
        if fmt == "npy":
            np.save(folder / "poses" / f"{pose_id}.npy", array[:, None] if n == 2 else array)  # people axis too
        else:
            np.savez(folder / "poses" / f"{pose_id}.npz", pose=array)
    corpus = corpus_of(tmp_path, folder, "pose.normalize=none", fmt=fmt)
    body = 33 if layout == "holistic" else 25
    assert corpus.layout == layout and corpus.feature_dim == 2 * (body + 42)
    assert [corpus.frames(i) for i in "abc"] == [10, 11, 12]


def write_openpose_folder(folder: Path, frames: int, seed: int = 0) -> None:
    """One OpenPose JSON file per frame, as OpenPose (and How2Sign's release) writes them."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for frame in range(frames):
        person = {key: [round(float(v), 3) for v in np.column_stack(
            [rng.uniform(1, 1280, (n, 2)), rng.uniform(0.2, 1, n)]).ravel()] for key, n in OPENPOSE_POINTS.items()}
        (folder / f"{folder.name}_{frame:012d}_keypoints.json").write_text(
            json.dumps({"version": 1.3, "people": [{"person_id": [-1], **person}]}))


def test_openpose_json_folders(tmp_path):
    folder = write_csvs(tmp_path / "h2s", {"train": ["s1"], "dev": ["s2"], "test": ["s3"]})
    for n, name in enumerate(["s1", "s2", "s3"]):
        write_openpose_folder(folder / "poses" / name, 5 + n, n)
    corpus = corpus_of(tmp_path, folder, fmt="openpose_json")
    assert corpus.layout == "openpose" and [corpus.frames(s) for s in ("s1", "s2", "s3")] == [5, 6, 7]
    assert corpus.feature_dim == 2 * (25 + 21 + 21)


def test_isign_and_how2sign_configs_read_their_poses(tmp_path):
    isign = tmp_path / "isign"
    (isign / "poses").mkdir(parents=True)
    for split, uid in (("train", "u1"), ("dev", "u2"), ("test", "u3")):
        (isign / f"{split}.csv").write_text(f'uid,text\n{uid},"Hello, friend."\n')
        write_pose_file(isign / "poses" / f"{uid}.pose", holistic_pixels(6))
    cfg = compose_config(["dataset=isign", f"dataset.path={isign}"], tmp_path / "run")
    splits, _ = load_splits(cfg.dataset)
    assert load_pose_corpus(cfg.dataset, cfg.pose, splits).frames("u1") == 6

    h2s = tmp_path / "h2s"
    h2s.mkdir()
    header = "VIDEO_ID\tVIDEO_NAME\tSENTENCE_ID\tSENTENCE_NAME\tSTART_REALIGNED\tEND_REALIGNED\tSENTENCE\n"
    for n, file in enumerate(("train", "val", "test")):
        name = f"-fZc293MpJk_{n}-1-rgb_front"
        (h2s / f"how2sign_realigned_{file}.csv").write_text(header + f"v\tv-1\tv_{n}\t{name}\t0\t3\tHi there.\n")
        write_openpose_folder(h2s / "openpose_output" / "json" / name, 4, n)
    cfg = compose_config(["dataset=how2sign", f"dataset.path={h2s}"], tmp_path / "run2")
    splits, _ = load_splits(cfg.dataset)
    assert load_pose_corpus(cfg.dataset, cfg.pose, splits).frames("-fZc293MpJk_0-1-rgb_front") == 4


# --------------------------------------------------------------------------- bad input: one message each


def refusal(tmp_path, folder, *overrides, fmt="pose") -> str:
    with pytest.raises(DataError) as error:
        corpus_of(tmp_path, folder, *overrides, fmt=fmt)
    return str(error.value)


def test_an_id_without_a_pose_file(tmp_path):
    folder = simple_corpus(tmp_path)
    (folder / "poses" / "b.pose").unlink()
    message = refusal(tmp_path, folder)
    assert "dev.csv:2" in message and "id='b' has no pose file" in message
    assert str(folder / "poses" / "b.pose") in message and "dataset.pose_dir" in message


def test_a_gloss_corpus_read_as_poses_says_so(tmp_path):
    folder = tmp_path / "gloss"
    write_csvs(folder, {"train": ["IX-1 LIKE BOOK", "YOU GO HOME"], "dev": ["HELLO FRIEND"], "test": ["THANK YOU"]})
    assert "looks like gloss text" in refusal(tmp_path, folder) and "dataset.input=gloss" in refusal(tmp_path, folder)


def test_a_pose_corpus_read_as_gloss_text_is_refused_before_loading(tmp_path):
    folder = simple_corpus(tmp_path)
    cfg = pose_cfg(tmp_path, folder, "dataset.input=gloss")
    splits, _ = load_splits(cfg.dataset)
    assert pose_files_named(cfg.dataset, splits["train"]) == str(folder / "poses" / "a.pose")
    problems = validate.data_problems(cfg, splits)
    assert any("names pose files" in p and "dataset.input=pose" in p for p in problems), problems


def test_an_unreadable_pose_file(tmp_path):
    folder = simple_corpus(tmp_path)
    (folder / "poses" / "c.pose").write_bytes(b"not a pose file at all")
    message = refusal(tmp_path, folder)
    assert "test.csv:2" in message and "cannot be read as a .pose file" in message and "c.pose" in message


def test_wrong_keypoint_count_for_the_layout(tmp_path):
    folder = write_csvs(tmp_path / "np", {"train": ["a"], "dev": ["a"], "test": ["a"]})
    np.save(folder / "poses" / "a.npy", np.ones((5, 100, 2)))
    assert "100 keypoints per frame match no known layout" in refusal(tmp_path, folder, fmt="npy")
    np.save(folder / "poses" / "a.npy", np.ones((5, 137, 2)))
    message = refusal(tmp_path, folder, "pose.layout=holistic", fmt="npy")
    assert "137 keypoints per frame, but pose.layout=holistic has 543" in message


def test_wrong_dims(tmp_path):
    folder = simple_corpus(tmp_path)  # XY files
    assert "has 2 coordinates per point, but pose.dims=3; set pose.dims=2" in refusal(tmp_path, folder, "pose.dims=3")
    np.save(folder / "poses" / "x.npy", np.ones((5, 543, 4)))
    with pytest.raises(DataError, match=r"shape \(5, 543, 4\)"):
        read_pose(folder / "poses" / "x.npy", "npy")


def test_zero_frames(tmp_path):
    folder = simple_corpus(tmp_path)
    write_pose_file(folder / "poses" / "b.pose", np.zeros((0, 75, 2)), demo_header())
    assert "zero frames" in refusal(tmp_path, folder)
    empty = write_csvs(tmp_path / "h2s", {"train": ["s"], "dev": ["s"], "test": ["s"]})
    (empty / "poses" / "s").mkdir()
    assert "no *.json frame" in refusal(tmp_path, empty, fmt="openpose_json")


def test_nonfinite_frames_dropped_and_counted_or_refused(tmp_path):
    pixels = holistic_pixels(12)
    pixels[3, 40] = np.nan
    pixels[7, 2] = np.inf
    folder = simple_corpus(tmp_path, write=lambda path, data: write_pose_file(path, pixels if "a.pose" in str(path)
                                                                               else data))
    corpus = corpus_of(tmp_path, folder)
    assert corpus.frames("a") == 10 and corpus.counts["pose_nonfinite_frames_dropped"] == 2
    assert np.isfinite(corpus.features["a"]).all()
    message = refusal(tmp_path, folder, "pose.on_nonfinite=error")
    assert "2 of 12 frames hold NaN or inf" in message and "pose.on_nonfinite=drop" in message


def test_too_long_truncated_and_counted_or_refused(tmp_path):
    folder = simple_corpus(tmp_path, frames=(30, 9, 7))
    corpus = corpus_of(tmp_path, folder, "pose.max_frames=20")
    assert corpus.frames("a") == 20 and corpus.counts["pose_truncated"] == 1
    message = refusal(tmp_path, folder, "pose.max_frames=20", "pose.on_long=error")
    assert "30 frames, more than pose.max_frames=20" in message and "pose.on_long=truncate" in message


def test_files_that_disagree_in_width(tmp_path):
    folder = simple_corpus(tmp_path)
    pose = fake_pose(8)  # OpenPose among holistic files
    with open(folder / "poses" / "c.pose", "wb") as handle:
        pose.write(handle)
    assert "values per frame, but" in refusal(tmp_path, folder, "pose.normalize=none")


def test_a_part_the_file_lacks(tmp_path):
    folder = simple_corpus(tmp_path)  # body and hands only
    assert "has no face keypoints" in refusal(tmp_path, folder, "pose.parts=[body,face]")


# --------------------------------------------------------------------------- rules checked before loading


@pytest.mark.parametrize("overrides,needle", [
    (["lora=none"], "keep an adapter"),
    (["eval.shots=2"], "k-shot turns are text"),
    (["pose.hidden=100", "pose.heads=3"], "not a multiple of pose.heads"),
    (["dataset.direction=text2gloss"], "use dataset.direction=gloss2text"),
    (["pose.max_frames=4096", "pose.downsample=1", "train.max_length=1024"], "no room for the translation"),
    (["dataset.prompt=Translate"], "has no {source}"),
    (["pose.parts=[body,body]"], "names a part twice"),
    (["hardware=4xa100_80gb", "hardware.strategy=fsdp"], "train it with hardware.strategy=ddp"),
])
def test_validation_refuses_what_the_pose_path_cannot_do(tmp_path, overrides, needle):
    cfg = compose_config(["dataset=demo_pose", *overrides], tmp_path / "run")
    problems = validate.check(cfg, detect_machine())
    assert any(needle in p for p in problems), problems


def test_a_pose_run_may_train_in_several_ddp_processes(tmp_path):
    cfg = compose_config(["+experiment=pose_quick", "hardware=cpu_ddp2"], tmp_path / "run")
    assert validate.check(cfg, detect_machine()) == []


def test_the_demo_pose_config_passes_validation(tmp_path):
    cfg = compose_config(["+experiment=pose_quick"], tmp_path / "run")
    assert cfg.dataset.input == "pose" and validate.check(cfg, detect_machine()) == []


# --------------------------------------------------------------------------- the synthetic demo corpus


def test_demo_corpus_is_deterministic_complete_and_reused(tmp_path):
    first, second = write_pose_demo(tmp_path / "a"), write_pose_demo(tmp_path / "b")
    names = sorted(p.name for p in (first / "poses").iterdir())
    assert len(names) == 800 and (first / "VERSION").read_text().strip() == VERSION
    for name in ("train_0000.pose", "test_0099.pose"):
        assert (first / "poses" / name).read_bytes() == (second / "poses" / name).read_bytes()
    assert (first / "train.csv").read_text().splitlines()[1] == "train_0000,Next week you will not read a letter."
    stamp = (first / "poses" / "dev_0000.pose").stat().st_mtime_ns
    write_pose_demo(first)  # the version is there: nothing is written again
    assert (first / "poses" / "dev_0000.pose").stat().st_mtime_ns == stamp
    (first / "VERSION").write_text("0\n")  # an older version is replaced
    write_pose_demo(first)
    assert (first / "VERSION").read_text().strip() == VERSION


def test_demo_signers_differ_but_a_gloss_keeps_its_motion(tmp_path):
    """Two sentences with the same glosses, two signers: the raw pixels differ (size, place, speed), the
    normalised dominant-hand path starts in the same place (the gloss's own start)."""
    from slt_hydra.pose_demo import _signer, render

    glosses = ["IX-1", "LIKE", "BOOK"]
    one = _signer(render(glosses, np.random.default_rng(1)), np.random.default_rng(1))
    two = _signer(render(glosses, np.random.default_rng(2)), np.random.default_rng(2))
    assert one.shape[0] != two.shape[0] or not np.allclose(one, two)
    folder = write_csvs(tmp_path / "d", {"train": ["x"], "dev": ["y"], "test": ["y"]})
    write_pose_file(folder / "poses" / "x.pose", one)
    write_pose_file(folder / "poses" / "y.pose", two)
    corpus = corpus_of(tmp_path, folder)
    wrist = 33 + 21  # the right hand's wrist, after body (33) and left hand (21)
    ends = [corpus.features[i].reshape(-1, 75, 2)[:, wrist] for i in ("x", "y")]
    assert np.linalg.norm(ends[0][-1] - ends[1][-1]) < 0.25  # both end at BOOK's end point
    other = write_csvs(tmp_path / "e", {"train": ["z"], "dev": ["z"], "test": ["z"]})
    write_pose_file(other / "poses" / "z.pose", _signer(render(["IX-1", "LIKE", "HOUSE"], np.random.default_rng(1)),
                                                        np.random.default_rng(1)))
    house = corpus_of(tmp_path, other).features["z"].reshape(-1, 75, 2)[:, wrist]
    assert np.linalg.norm(house[-1] - ends[0][-1]) > 0.25  # another last gloss ends elsewhere


def test_headerless_arrays_get_named_shoulders(tmp_path):
    header = _header("holistic", 2)
    assert header.components[0].points[11:13] == ["LEFT_SHOULDER", "RIGHT_SHOULDER"]
    assert sum(len(c.points) for c in header.components) == 543
    assert isinstance(read_pose(simple_corpus(tmp_path) / "poses" / "a.pose", "pose"), Pose)


def test_demo_corpus_never_replaces_someone_elses_folder(tmp_path):
    from slt_hydra.errors import SetupError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SetupError, match="not slt_hydra's synthetic pose corpus"):
        write_pose_demo(mine)
    assert (mine / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------- poses named on translate's command line


def test_pose_inputs_finds_files_openpose_folders_and_folders_of_them(tmp_path):
    from slt_hydra.pose import pose_inputs, read_pose_inputs

    folder = tmp_path / "mixed"
    folder.mkdir()
    write_pose_file(folder / "b.pose", holistic_pixels(9))
    np.save(folder / "a.npy", holistic_pixels(6, 1, points=543))
    write_openpose_folder(folder / "c", 5)
    (folder / "notes.txt").write_text("not a pose")
    write_pose_file(tmp_path / "z.pose", holistic_pixels(4))
    items = pose_inputs([tmp_path / "z.pose", folder])
    assert [(name, fmt) for name, _, fmt in items] == [("z", "pose"), ("a", "npy"), ("b", "pose"),
                                                       ("c", "openpose_json")]
    cfg = compose_config([], tmp_path / "run")
    corpus = read_pose_inputs(items[:3], {**cfg.pose, "parts": ["body"]})  # body only: the layouts differ in hands
    assert [corpus.frames(n) for n in ("z", "a", "b")] == [4, 6, 9] and corpus.feature_dim == 66
    with pytest.raises(DataError, match="differ in keypoints"):  # OpenPose's 25 body points against Holistic's 33
        read_pose_inputs(items, {**cfg.pose, "parts": ["body"]})


def test_pose_inputs_refusals(tmp_path):
    from slt_hydra.pose import pose_inputs

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no pose"):
        pose_inputs([tmp_path / "empty"])
    write_pose_file(tmp_path / "x.pose", holistic_pixels(4))
    np.save(tmp_path / "x.npy", holistic_pixels(4, points=543))
    with pytest.raises(DataError, match="share the name 'x'"):
        pose_inputs([tmp_path / "x.pose", tmp_path / "x.npy"])
