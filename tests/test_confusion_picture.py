"""The confusion picture of many classes: the most frequent classes as a row-normalised matrix (with an
"other" column, so rows still sum to one), the largest confusions listed; small matrices shown whole."""
import numpy as np
import pytest

from crop_classifier.engine.evaluation import confusion_figure, confusion_view, plot_confusion_matrix

pytest.importorskip("matplotlib")


def _eighty_classes():
    rng = np.random.default_rng(0)
    names = [f"class{i:02d}" for i in range(80)]
    support = rng.permutation(np.arange(1, 81) * 3)  # every class a different count, in shuffled order
    cm = np.zeros((80, 80), int)
    for i, n in enumerate(support):
        cm[i, i] = n - n // 10
        cm[i, (i + 1) % 80] = n // 10  # at most 24
    rarest = int(np.argmin(support))
    cm[rarest, 5] += 60  # one big confusion from the rarest class (63 crops: not among the 20 shown)
    support[rarest] += 60
    return cm, names, support, names[rarest]


def test_view_shows_the_most_frequent_classes_and_the_largest_confusions():
    cm, names, support, rarest = _eighty_classes()
    v = confusion_view(cm, names, top=20)
    expected = [names[i] for i in np.argsort(-support, kind="stable")[:20]]
    assert v["classes"] == expected and v["support"] == sorted(support.tolist(), reverse=True)[:20]
    assert v["matrix"].shape == (20, 21) and v["columns"][-1] == "other"
    np.testing.assert_allclose(v["matrix"].sum(axis=1), 1.0)  # "other" keeps every row whole
    assert rarest not in v["classes"]
    assert v["confusions"][0][:3] == (rarest, "class05", 60)  # confusions come from all 80 classes
    small = confusion_view([[3, 1], [0, 4]], ["a", "b"])
    assert small["classes"] == ["a", "b"] and small["columns"] == ["a", "b"]  # all shown, class order
    np.testing.assert_allclose(small["matrix"], [[0.75, 0.25], [0.0, 1.0]])


def test_picture_labels_are_the_shown_classes_and_the_file_is_written(tmp_path):
    cm, names, support, _ = _eighty_classes()
    fig = confusion_figure(cm, names, "t")
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert len(rows) == 20 and rows[0] == f"{names[int(np.argmax(support))]} ({support.max()})"
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "other"
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 8  # readable, whatever the class count
    bars = [a for a in fig.axes if a.get_title().startswith("largest confusions")]
    assert len(bars) == 1 and len(bars[0].get_yticklabels()) == 15
    path = plot_confusion_matrix(cm, names, tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
