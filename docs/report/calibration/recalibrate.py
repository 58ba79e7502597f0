"""Recalibrate the bundled model's strength (and step) on faces disjoint by person from both reports.

``python -m affectedit.photo_report --calibration`` takes the LFW validation neutral faces that the
photo report's 60 leave out; some of those people are among the faces of the Table IV report
(docs/report). This script runs the same calibration on the people of selection part 3
(``affectedit.evaluate.identity_part``, the calibration part; the Table IV report takes part 0) that
the photo report does not use either, with the unchanged rule of MODEL_CARD.md. It replaces
``photo_report.lfw_val_neutral`` for this run only and changes nothing else.

    OMP_NUM_THREADS=1 .venv/bin/python docs/report/calibration/recalibrate.py CHECKPOINT TAG STRENGTH...
"""
import sys

import numpy as np

import affectedit.photo_report as pr
from affectedit.evaluate import CALIBRATION_PART, identity_part

_original = pr.lfw_val_neutral


def _person(face: dict) -> str:
    return face["id"].rsplit("_", 1)[0]


def calibration_faces(root, n: int = 40, calibration: bool = True) -> list[dict]:
    report_people = {_person(f) for f in _original(root, 60)}  # the photo report's LFW faces
    pool = [f for f in _original(root, 10**6) if identity_part(_person(f)) == CALIBRATION_PART and _person(f) not in report_people]
    pick = np.unique(np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int))
    return [pool[i] for i in pick]


if __name__ == "__main__":
    checkpoint, tag, *strengths = sys.argv[1:]
    pr.lfw_val_neutral = calibration_faces
    for s in strengths:
        pr.main(["--checkpoint", checkpoint, "--strength", s, "--calibration", "--lfw-faces", "40", "--cell", "200",
                 "-o", f"/work/runs/recalib-{tag}-{s}", "--title", f"recalibration (part 3) {tag} strength {s}"])
