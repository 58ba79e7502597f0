"""The one table of emotion words (affectedit.emotions), used by the CLI, the web page, the labels."""
from __future__ import annotations

import pytest

import affectedit
from affectedit.data.labels import CIRCUMPLEX
from affectedit.emotions import CATEGORY_WORDS, EMOTIONS, NOTES, check_label, emotion, emotion_table, parse_path, path_labels
from affectedit.errors import UserError


def test_vocabulary():
    for word in ("happy", "excited", "delighted", "calm", "relaxed", "content", "sad", "depressed", "bored",
                 "tired", "angry", "afraid", "tense", "surprised", "disgusted", "neutral", "at ease"):
        assert word in EMOTIONS
    for v, a in EMOTIONS.values():
        assert -1 <= v <= 1 and -1 <= a <= 1
    assert EMOTIONS["neutral"] == (0.0, 0.0)
    assert EMOTIONS["happy"][0] > 0.5 and EMOTIONS["sad"][0] < -0.5
    assert EMOTIONS["excited"][1] > 0.5 and EMOTIONS["tired"][1] < -0.5
    assert EMOTIONS["calm"][0] > 0 > EMOTIONS["calm"][1]
    assert set(NOTES) <= set(EMOTIONS)


def test_one_table_for_words_and_training_labels():
    """The data sets' category anchors are the words' positions (Russell's Fig. 4, digitised)."""
    assert EMOTIONS["happy"] == CIRCUMPLEX["happiness"] == (0.83, 0.53)
    assert set(CATEGORY_WORDS) == set(CIRCUMPLEX)
    for category, word in CATEGORY_WORDS.items():
        assert CIRCUMPLEX[category] == EMOTIONS[word] == emotion(category)


def test_emotion_lookup():
    assert affectedit.emotion("happy") == emotion("  Happy ") == (0.83, 0.53)
    assert emotion("at_ease") == EMOTIONS["at ease"]
    with pytest.raises(UserError, match="unknown emotion 'gleeful'.*happy.*sad"):
        emotion("gleeful")


def test_labels_and_paths():
    assert check_label("0.5", -1) == (0.5, -1.0)
    for bad in ((2, 0), (0, float("nan")), ("x", 0)):
        with pytest.raises(UserError):
            check_label(*bad)
    assert parse_path("0,0 0.8,0.5;-0.6,-0.4") == [(0.0, 0.0), (0.8, 0.5), (-0.6, -0.4)]
    assert parse_path("neutral happy") == [(0.0, 0.0), EMOTIONS["happy"]]
    for bad in ("0,0", "0,0 2,0", "0,0 1,2,3", "0,0 gleeful"):
        with pytest.raises(UserError):
            parse_path(bad)
    eased = path_labels([(0.0, 0.0), (1.0, -1.0)], 4)
    assert eased[0] == (0.0, 0.0) and eased[-1] == (1.0, -1.0) and len(eased) == 5
    assert eased[2] == pytest.approx((0.5, -0.5))  # smoothstep: half-way at half time


def test_emotion_table():
    lines = emotion_table().splitlines()
    assert lines[0].split() == ["emotion", "valence", "arousal"] and len(lines) == len(EMOTIONS) + 1
