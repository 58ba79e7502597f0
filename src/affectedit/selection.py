"""Which faces a report uses: every identity belongs to one of ``SELECTION_PARTS`` parts, a fixed
function of its name (``identity_part``), and ``select_faces`` takes a report's faces from one
part, so faces chosen for different purposes never show the same person. Used by
``evaluate`` (Table IV) and ``photo_report``; importable from ``affectedit.evaluate`` as well.
"""
from __future__ import annotations

import zlib

import numpy as np

from affectedit.errors import UserError

__all__ = ["CALIBRATION_PART", "REPORT_PART", "SELECTION_PARTS", "identity_part", "select_faces"]

# Every identity belongs to one of SELECTION_PARTS parts, a fixed function of its name: part 0 is
# the report's, the others are for choosing settings (calibration: 3). Faces chosen from different
# parts never show the same person, whatever their counts and whichever list they come from.
SELECTION_PARTS = 4
REPORT_PART, CALIBRATION_PART = 0, 3


def identity_part(identity) -> int:
    """The part (0 .. SELECTION_PARTS - 1) of an identity: CRC-32 of its name modulo the number of
    parts, the same in every tool, cache and list (``photo_report`` can use it too)."""
    return zlib.crc32(str(identity).encode("utf-8")) % SELECTION_PARTS


def select_faces(identities, n: int, offset: int = REPORT_PART) -> np.ndarray:
    """Sorted indices of ``n`` images whose people all lie in part ``offset`` (see
    ``identity_part``): one image per person, the people spread evenly over their order in the list
    (caches are sorted by file, so by name); when ``n`` exceeds the people of the part, second
    images, then third, ... (all of the part's images when ``n`` exceeds them). ``identities``:
    one identity per image (a cache's ``identities``; an image without one counts as its own
    person), or an int N for N images of N different people. Two calls with different ``offset``
    never share a person, for any counts."""
    if isinstance(identities, (int, np.integer)):
        identities = [f"#{i}" for i in range(int(identities))]
    identities = [f"#{i}" if ident in (None, "") else str(ident) for i, ident in enumerate(identities)]
    if not identities:
        raise UserError("the evaluation cache holds no images")
    offset = int(offset)
    if not 0 <= offset < SELECTION_PARTS:
        raise UserError(f"--offset picks a part of the identities: 0 .. {SELECTION_PARTS - 1} (0: the report, "
                        f"{CALIBRATION_PART}: calibration), got {offset}")
    people: dict[str, list[int]] = {}
    for i, ident in enumerate(identities):
        if identity_part(ident) == offset:
            people.setdefault(ident, []).append(i)
    groups = list(people.values())
    n = max(0, min(int(n), sum(len(g) for g in groups)))
    chosen: list[int] = []
    rank = 0
    while len(chosen) < n:
        have = [g[rank] for g in groups if len(g) > rank]  # the (rank+1)-th image of every person with one
        take = n - len(chosen)
        if take < len(have):
            have = [have[j] for j in np.floor(np.linspace(0, len(have) - 1, take) + 0.5).astype(int)]  # distinct: spacing >= 1
        chosen += have
        rank += 1
    return np.array(sorted(chosen), dtype=np.int64)
