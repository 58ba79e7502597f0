"""Readers on small fixtures written in each data set's real file format."""
from __future__ import annotations

import math

import pytest

from affectedit.data.readers import (
    AffectNetReader,
    Sample,
    read_celeba,
    read_dataset,
    read_folder,
    read_lfw,
    read_london,
)
from affectedit.errors import UserError

HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
LM68 = ";".join(f"{10 + i}.5;{20 + i}.25" for i in range(68))


def _affectnet(tmp_path):
    lists = tmp_path / "Manually_Annotated_file_lists"
    lists.mkdir()
    (tmp_path / "Manually_Annotated_Images").mkdir()
    rows = [
        f'689/a.jpg,10,20,100,120,"{LM68}",1,0.8,0.3',       # happy: kept
        f"689/b.jpg,0,0,50,50,{LM68},0,-0.1,0.05",            # neutral: kept (unquoted)
        "689/c.jpg,0,0,50,50,,2,-0.5,-0.4",                   # sad, no landmarks: kept
        "689/d.jpg,0,0,50,50,,8,0.1,0.1",                     # none
        "689/e.jpg,0,0,50,50,,9,-2,-2",                       # uncertain (also -2)
        "689/f.jpg,0,0,50,50,,10,-2,-2",                      # non-face
        "689/g.jpg,0,0,50,50,,10,-2,-2",                      # non-face
        "689/h.jpg,0,0,50,50,,3,-2,0.5",                      # surprise but valence -2
    ]
    (lists / "training.csv").write_text(HEADER + "\n".join(rows) + "\n")
    # validation.csv without a header, as in some releases
    (lists / "validation.csv").write_text("1/v.png,1,2,30,40,,6,-0.6,0.7\n1/w.png,1,2,30,40,,9,0,0\n")
    return tmp_path


def test_affectnet_reader_parses_and_counts_skips(tmp_path):
    root = _affectnet(tmp_path)
    reader = AffectNetReader(root, "train")
    samples = list(reader)
    assert [s.path.name for s in samples] == ["a.jpg", "b.jpg", "c.jpg"]
    a = samples[0]
    assert isinstance(a, Sample)
    assert a.path == root / "Manually_Annotated_Images" / "689" / "a.jpg"
    assert (a.valence, a.arousal, a.emotion, a.split) == (0.8, 0.3, "happiness", "train")
    assert a.box == (10.0, 20.0, 110.0, 140.0)
    assert a.landmarks.shape == (68, 2) and a.landmarks[1].tolist() == [11.5, 21.25]
    assert samples[2].landmarks is None
    assert dict(reader.skipped) == {
        "expression 8 (none)": 1,
        "expression 9 (uncertain)": 1,
        "expression 10 (non-face)": 2,
        "valence/arousal -2 (uncertain)": 1,
    }
    assert sum(reader.skipped.values()) == 5


def test_affectnet_validation_without_header_and_all(tmp_path):
    root = _affectnet(tmp_path)
    val = AffectNetReader(root, "val")
    got = list(val)
    assert len(got) == 1 and got[0].emotion == "anger" and got[0].split == "val"
    assert val.skipped == {"expression 9 (uncertain)": 1}
    both = AffectNetReader(root, "all")
    assert len(list(both)) == 4 and sum(both.skipped.values()) == 6


def test_affectnet_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        AffectNetReader(tmp_path / "nope")
    (tmp_path / "training.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(UserError, match="lacks AffectNet columns"):
        list(AffectNetReader(tmp_path))


def test_celeba_reader(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "list_landmarks_align_celeba.txt").write_text(
        "2\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        "000001.jpg 69  109  106  113   77  142   73  152  108  154\n"
        "000002.jpg 69  110  107  112   81  135   70  151  108  153\n"
    )
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 2\n")
    s = list(read_celeba(tmp_path))
    assert [x.path.name for x in s] == ["000001.jpg", "000002.jpg"]
    assert math.isnan(s[0].valence) and math.isnan(s[0].arousal)
    assert s[0].landmarks.shape == (5, 2) and s[0].landmarks[0].tolist() == [69, 109]
    assert [x.split for x in s] == ["train", "test"]
    assert len(list(read_celeba(tmp_path, split="train"))) == 1


def test_folder_reader(tmp_path):
    (tmp_path / "labels.csv").write_text("image,valence,arousal,identity\nx.jpg,0.5,-0.25,bob\nsub/y.png,-1,1,\n")
    s = list(read_folder(tmp_path))
    assert [(x.path, x.valence, x.arousal, x.identity) for x in s] == [
        (tmp_path / "x.jpg", 0.5, -0.25, "bob"), (tmp_path / "sub/y.png", -1.0, 1.0, None)]
    (tmp_path / "bad.csv").write_text("image,valence,arousal\nx.jpg,1.5,0\n")
    with pytest.raises(UserError, match=r"outside \[-1, 1\]"):
        list(read_folder(tmp_path, labels=tmp_path / "bad.csv"))
    (tmp_path / "cols.csv").write_text("file,v,a\nx.jpg,0,0\n")
    with pytest.raises(UserError, match="needs columns"):
        list(read_folder(tmp_path, labels=tmp_path / "cols.csv"))


def test_lfw_and_london_readers(tmp_path):
    lfw = tmp_path / "lfw"
    lfw.mkdir()
    (lfw / "labels.csv").write_text(
        "image,identity,emotion,split\nA/A_0001.jpg,A,happiness,train\nB/B_0001.jpg,B,neutral,val\nC/C_0001.jpg,C,anger,train\n")
    va = tmp_path / "va.csv"
    va.write_text("image,emotion,split,valence,arousal\nA/A_0001.jpg,happiness,train,0.7,0.2\nB/B_0001.jpg,neutral,val,0.1,-0.1\n")
    s = list(read_lfw(lfw, va, split="all"))
    assert [(x.identity, x.valence, x.arousal, x.split) for x in s] == [("A", 0.7, 0.2, "train"), ("B", 0.1, -0.1, "val")]
    assert s[0].path == lfw / "images" / "A" / "A_0001.jpg"
    assert [x.identity for x in read_lfw(lfw, va, split="train")] == ["A"]
    # without a labels file: circumplex anchors
    anchors = {x.emotion: (x.valence, x.arousal) for x in read_dataset("lfw", lfw, None, "all")}
    assert anchors["neutral"] == (0.0, 0.0) and anchors["happiness"][0] > 0.5 and anchors["anger"][0] < 0

    lon = tmp_path / "london"
    lon.mkdir()
    (lon / "labels.csv").write_text("image,identity,emotion\nsmiling_front/001_08.jpg,london_001,happiness\n"
                                    "neutral_front/002_03.jpg,london_002,neutral\ncanada/003f.jpg,canada_003f,neutral\n")
    x, y, z = read_london(lon)
    assert x.emotion == "happiness" and x.valence > 0
    # split by identity: odd London numbers are validation, the rest and Canada are training
    assert (x.split, y.split, z.split) == ("val", "train", "train")
    assert [s.identity for s in read_london(lon, split="train")] == ["london_002", "canada_003f"]


def test_read_dataset_unknown_format(tmp_path):
    with pytest.raises(UserError, match="unknown dataset format"):
        read_dataset("imagenet", tmp_path)
