"""Inputs of tools/infer.py: every file of a folder or pattern is processed or listed as bad, folders and
'**' patterns are recursive in a sorted order, and every input gets its own picture name in vis/."""
import os
from pathlib import Path

import pytest
from PIL import Image

from crop_classifier.inference.inputs import INPUT_HELP, expand_inputs, iter_records
from crop_classifier.inference.visualize import vis_file_name, vis_names
from robustness_helpers import encode, pil_bytes, smooth_rgb


@pytest.fixture
def tree(write):
    """A folder as users have them: nested folders, a GIF, an image without extension, a text file, hidden
    entries and a video."""
    jpg = encode(smooth_rgb(24, 32), ".jpg")
    paths = {
        "top.jpg": jpg,
        "anim.gif": pil_bytes(Image.fromarray(smooth_rgb(24, 32)).convert("P"), "GIF"),
        "sub/deeper/x.png": encode(smooth_rgb(24, 32, seed=1), ".png"),
        "sub/y.jpg": jpg,
        "sub/photo_without_extension": encode(smooth_rgb(24, 32, seed=2), ".png"),
        "sub-b/z.jpg": jpg,
        "notes.txt": b"not pixels\n",
        "sub/labels.json": b"{}",
        ".hidden.jpg": jpg,
        ".cache/w.jpg": jpg,
    }
    for name, data in paths.items():
        write(name, data)
    root = Path(write("top.jpg", jpg)).parent
    return root


def _rel(root, paths):
    return [os.path.relpath(p, root) for p in paths]


def test_folders_are_recursive_sorted_and_every_file_accounted_for(tree):
    files, bad = expand_inputs([str(tree)])
    # component-wise order: a folder's files stay together ("sub/..." before "sub-b/...")
    assert _rel(tree, files) == ["anim.gif", "sub/deeper/x.png", "sub/photo_without_extension", "sub/y.jpg",
                                 "sub-b/z.jpg", "top.jpg"]
    reasons = {os.path.relpath(b.path, tree): b.reason for b in bad}
    assert set(reasons) == {"notes.txt", "sub/labels.json"}
    assert all("not an image or video" in r for r in reasons.values())
    assert "'.txt'" in reasons["notes.txt"]
    everything = {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()}
    hidden = {p for p in everything if any(part.startswith(".") for part in Path(p).parts)}
    assert set(_rel(tree, files)) | set(reasons) == everything - hidden
    assert expand_inputs([str(tree)]) == (files, bad)  # deterministic
    # files named on the command line are taken as they are (the reader reports them), hidden or not
    files, bad = expand_inputs([str(tree / "notes.txt"), str(tree / ".hidden.jpg")])
    assert _rel(tree, files) == ["notes.txt", ".hidden.jpg"] and bad == []


def test_a_gif_in_a_folder_is_read_like_one_given_by_name(tree):
    files, bad = expand_inputs([str(tree)])
    records = {os.path.relpath(r.file_name, tree): r for r in iter_records(files, bad)}
    assert "anim.gif" in records and records["anim.gif"].image.shape == (24, 32, 3)
    assert "sub/photo_without_extension" in records
    assert len(records) == len(files)


def test_double_star_patterns_are_recursive(tree):
    files, bad = expand_inputs([str(tree / "**" / "*.jpg")])
    assert _rel(tree, files) == ["sub/y.jpg", "sub-b/z.jpg", "top.jpg"] and bad == []
    files, bad = expand_inputs([str(tree / "sub" / "**")])  # everything under sub/, the non-image listed
    assert _rel(tree, files) == ["sub/deeper/x.png", "sub/photo_without_extension", "sub/y.jpg"]
    assert _rel(tree, [b.path for b in bad]) == ["sub/labels.json"]


def test_empty_folder_and_link_loops(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_hidden").mkdir()
    (tmp_path / "only_hidden" / ".x.jpg").write_bytes(b"x")
    loop = tmp_path / "loop"
    (loop / "a").mkdir(parents=True)
    (loop / "a" / "i.jpg").write_bytes(encode(smooth_rgb(8, 8), ".jpg"))
    os.symlink(loop, loop / "a" / "back")  # a link back up the tree: walked once, no endless recursion
    files, bad = expand_inputs([str(tmp_path / "empty"), str(tmp_path / "only_hidden"), str(loop)])
    assert [os.path.relpath(f, loop) for f in files] == ["a/i.jpg"]
    assert [(Path(b.path).name, "holds no files" in b.reason) for b in bad] == [("empty", True), ("only_hidden", True)]


def test_help_text_says_what_folders_and_patterns_do():
    for words in ("recursively", "sorted", "hidden", "**", "bad input"):
        assert words in INPUT_HELP


# ------------------------------------------------------------------------------------------------ vis names
def test_vis_names_are_unique_and_keep_folder_and_extension():
    files = ["in/a/x.jpg", "in/a/x.png", "in/b/x.jpg"]
    names = vis_names(files)
    pictures = [vis_file_name(names, f) for f in files]
    assert pictures == ["a_x.jpg", "a_x.png.jpg", "b_x.jpg"]


def test_vis_names_of_one_folder_are_the_file_names():
    assert [vis_file_name(vis_names(["d/p.jpg", "d/q.png"]), f) for f in ("d/p.jpg", "d/q.png")] == [
        "p.jpg", "q.png.jpg"]


def test_vis_names_resolve_every_clash_stably():
    files = ["a/x.jpg", "a/X.JPG", "a_x.jpg", "b/x", "b/x.jpg", "a/x#1.jpg", "a/x_1.jpg", "c/v.mp4", "c/V.mp4"]
    names = vis_names(files)
    pictures = [vis_file_name(names, f) for f in files]
    assert len({p.lower() for p in pictures}) == len(files), pictures  # unique, even case-insensitively
    assert all("#" not in p for p in pictures)  # '#' is kept for video frames
    # clashes are settled in input order: the first keeps the plain name
    assert pictures[0] == "a_x.jpg" and pictures[1].endswith(".JPG") and pictures[3:5] == ["b_x.jpg", "b_x_2.jpg"]
    assert vis_names(files) == names  # the same inputs give the same names (resume, shards)
    assert vis_names(files + ["later/new.jpg"])["later/new.jpg"] not in names.values()


def test_video_frames_keep_their_number():
    names = vis_names(["clips/v.mp4", "clips/v.avi", "clips/w.jpg"])
    assert vis_file_name(names, "clips/v.mp4#000012") == "v.mp4#000012.jpg"
    assert vis_file_name(names, "clips/v.avi#000012") == "v.avi#000012.jpg"
    assert vis_file_name(names, "clips/w.jpg") == "w.jpg"
    frames = {vis_file_name(names, f"clips/v.mp4#{i:06d}") for i in range(3)}
    assert len(frames) == 3
    with pytest.raises(KeyError, match="other.jpg"):
        vis_file_name(names, "clips/other.jpg")


def test_vis_names_for_absolute_and_relative_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = vis_names([str(tmp_path / "a" / "x.jpg"), "b/x.jpg", "../" + tmp_path.name + "/a/x.png"])
    assert sorted(names.values()) == ["a_x.jpg", "a_x.png", "b_x.jpg"]
