"""Labels files: one name a line, a JSON list, or a JSON object index -> name; anything else refused in one line."""

import json

import pytest

from effexport.errors import UsageError
from effexport.exporter.labels import check_count, imagenet_labels, read_labels


@pytest.mark.parametrize("text", [
    "cat\ndog\nbird\n\n",
    json.dumps(["cat", "dog", "bird"]),
    json.dumps({"2": "bird", "0": "cat", "1": "dog"}),
    json.dumps({"0": ["n1", "cat"], "1": ["n2", "dog"], "2": ["n3", "bird"]}),  # ImageNet's class index files
])
def test_three_forms_read_to_the_same_names(tmp_path, text):
    path = tmp_path / "labels"
    path.write_text(text)
    labels = read_labels(path)
    assert labels.names == ("cat", "dog", "bird") and labels.text() == "cat\ndog\nbird\n"


@pytest.mark.parametrize("text, match", [
    ("", "holds no labels"),
    ("[]", "holds no labels"),
    ("cat\n\ndog\n", "line 2 is blank"),
    ('{"0": "cat", "2": "bird"}', "1 is missing"),
    ('{"0": "cat", "00": "dog"}', "appears twice"),
    ('{"a": "cat"}', "not a class index"),
    ('["cat", 3]', "not a non-empty name"),
    ('["two\\nlines"]', "spans lines"),
    ("[1, 2", "does not parse"),
    ('{"0": ""}', "not a non-empty name"),
])
def test_bad_labels_are_refused_in_one_line(tmp_path, text, match):
    path = tmp_path / "labels"
    path.write_text(text)
    with pytest.raises(UsageError, match=match):
        read_labels(path)


def test_a_missing_file_and_a_count_mismatch_are_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        read_labels(tmp_path / "none.txt")
    (tmp_path / "l.txt").write_text("a\nb\n")
    with pytest.raises(UsageError, match="names 2 classes but the model has 3"):
        check_count(read_labels(tmp_path / "l.txt"), 3, "the model")


def test_imagenet_labels_are_timms_thousand():
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels.names[0].startswith("tench") and labels.source == "imagenet"
