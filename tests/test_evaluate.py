"""affectedit.evaluate (Table IV, Fig. 2 heatmaps, identity/background, report) and `affectedit evaluate`."""
import json

import numpy as np
import pytest
import torch

from affectedit.errors import UserError
from affectedit.evaluate import (
    CALIBRATION_PART,
    SELECTION_PARTS,
    difference_map,
    evaluate,
    extreme_mask,
    grid_edits,
    heatmap_sums,
    identity_part,
    label_grid,
    neutral_index,
    normalise_heatmaps,
    parse_mode,
    resolve_regressors,
    score_labels,
    select_faces,
)

# ---------------------------------------------------------------------------------------------
# Pure pieces, hand-checkable.


def test_difference_map_is_max_channel_difference():
    a = torch.zeros(3, 2, 2)
    b = torch.zeros(3, 2, 2)
    b[:, 0, 0] = torch.tensor([0.2, -0.6, 0.4])  # max |.| = 0.6 (the green channel, negative)
    b[:, 1, 1] = torch.tensor([1.0, 0.0, 0.0])
    expected = torch.tensor([[0.6, 0.0], [0.0, 1.0]])
    assert torch.allclose(difference_map(a, b), expected)
    assert torch.allclose(difference_map(b, a), expected)  # symmetric


def test_heatmap_sums_compare_against_the_neutral_edit_and_sum_over_faces():
    # 2 faces x 3 labels x 3 x 1 x 2, label 1 is neutral.
    edits = torch.zeros(2, 3, 3, 1, 2)
    edits[0, :] = 0.5                     # face 0: every edit 0.5 except where set below
    edits[0, 0, :, 0, 0] = torch.tensor([0.5, 0.5, 1.0])  # differs from neutral by 0.5 (blue), pixel (0, 0)
    edits[0, 2, 0, 0, 1] = -0.5           # red differs by 1.0 at pixel (0, 1)
    edits[1, 1] = -1.0                    # face 1: neutral -1, label 0 also -1 except one pixel
    edits[1, 0] = -1.0
    edits[1, 0, 1, 0, 0] = -0.75          # green differs by 0.25 at pixel (0, 0)
    edits[1, 2] = -1.0
    sums = heatmap_sums(edits, neutral=1)
    assert sums.shape == (3, 1, 2)
    assert torch.allclose(sums[0], torch.tensor([[0.5 + 0.25, 0.0]]))
    assert torch.allclose(sums[1], torch.zeros(1, 2))          # neutral against itself
    assert torch.allclose(sums[2], torch.tensor([[0.0, 1.0]]))  # not against the input: face 1 stays 0
    normalised, peak = normalise_heatmaps(sums)
    assert peak == pytest.approx(1.0)
    assert torch.allclose(normalised[0], torch.tensor([[0.75, 0.0]]))  # common maximum, not per map
    zeros, peak0 = normalise_heatmaps(torch.zeros(2, 1, 1))
    assert peak0 == 0 and not zeros.any()


def test_label_grid_layout_and_extreme_labels():
    g = label_grid(7)
    assert g.shape == (49, 2)
    assert tuple(g[0]) == (1.0, 1.0)          # top left: valence high, arousal high
    assert tuple(g[6]) == (1.0, -1.0)         # arousal high -> low along the row
    assert tuple(g[42]) == (-1.0, 1.0)        # valence high -> low down the columns
    assert neutral_index(g) == 24 and tuple(g[24]) == (0.0, 0.0)
    ext = extreme_mask(g)
    assert ext.sum() == 4 and set(np.flatnonzero(ext)) == {0, 6, 42, 48}  # the corners: 4 of 49
    # The paper: 18,000 of 220,500 images = 4,500 faces x 4 of 49 labels.
    assert 220500 // 49 * ext.sum() == 18000
    assert not extreme_mask([[1.0, 0.0], [0.0, -1.0], [0.99, 1.0]]).any()
    assert extreme_mask([[-1.0, 1.0]]).all()
    with pytest.raises(UserError):
        label_grid(6)  # no (0, 0)


def test_score_labels_and_face_selection():
    t = np.array([1.0, -1.0, 0.0, 0.5])
    p = np.array([0.5, -0.5, 0.2, 0.5])
    s = score_labels(t, p)
    assert s["rmse"] == pytest.approx(np.sqrt((0.25 + 0.25 + 0.04) / 4))
    assert s["sagr"] == pytest.approx(0.75)        # the 0 target never agrees
    assert s["sagr_nonzero"] == pytest.approx(1.0)


def _people(n_people: int, seed: int = 0) -> list[str]:
    """An LFW-like list: people sorted by name, 1-12 images each (most with one or two)."""
    rng = np.random.default_rng(seed)
    return [f"person_{p:04d}" for p in range(n_people) for _ in range(int(min(12, rng.geometric(0.55))))]


def test_face_selection_disjoint_by_identity_for_any_counts_and_offsets():
    identities = _people(545)  # the LFW validation split's people, about 1160 images
    picks = {(n, part): select_faces(identities, n, part)
             for n in (1, 2, 7, 40, 60, 100, 136, 200, 500, 1160, 5000) for part in range(SELECTION_PARTS)}
    for (n1, p1), a in picks.items():
        assert len(a) == len(set(a.tolist())) and list(a) == sorted(a)
        in_part = sum(identity_part(i) == p1 for i in identities)
        assert len(a) == min(n1, in_part)
        assert all(identity_part(identities[i]) == p1 for i in a)
        people = {identities[i] for i in a}
        if n1 <= len({i for i in identities if identity_part(i) == p1}):
            assert len(people) == len(a)  # one image per person while the part has enough people
        for (n2, p2), b in picks.items():
            if p1 != p2:
                assert not people & {identities[i] for i in b}, (n1, p1, n2, p2)
    # the case: report select_faces(.., 200, 0) and calibration (.., 100, 3) shared 17 images
    report, calibration = select_faces(identities, 200), select_faces(identities, 100, CALIBRATION_PART)
    assert len(report) == 200 and len(calibration) == 100
    assert not {identities[i] for i in report} & {identities[i] for i in calibration}
    # an int: that many images of different people
    assert len(select_faces(1160, 100)) == 100 and not set(select_faces(1160, 100)) & set(select_faces(1160, 100, 3))
    # parts are a function of the name: another list with the same people puts them in the same parts
    other = sorted(set(identities))[::-1]
    assert {other[i] for i in select_faces(other, 10**6, 3)} == {i for i in identities if identity_part(i) == 3}
    with pytest.raises(UserError, match="part"):
        select_faces(identities, 10, SELECTION_PARTS)
    with pytest.raises(UserError):
        select_faces([], 10)


# ---------------------------------------------------------------------------------------------
# A tiny real run.


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_cache, tiny_checkpoint):
    """The session's 2-step editor (run/checkpoint.pt) and 2-step tiny regressors on the 16-face 32x32 cache."""
    from affectedit.regressor import train_regressor

    root = tmp_path_factory.mktemp("evaluate")
    (root / "run").mkdir()
    (root / "run" / "checkpoint.pt").symlink_to(tiny_checkpoint)
    for d in ("valence", "arousal"):
        train_regressor(tiny_cache, None, d, 2, 4, 0.05, root / f"reg-{d}.pt", progress=False, device="cpu")
    return root


def test_grid_edits_are_the_editors_edits(tiny_run, tiny_cache):
    from affectedit.data.cache import FaceCache
    from affectedit.editor import Editor

    editor = Editor.from_checkpoint(tiny_run / "run" / "checkpoint.pt", device="cpu", precision="fp32")
    crops = np.ascontiguousarray(FaceCache(tiny_cache).images[:2])
    labels = label_grid(3)
    modes = ("residual", "paper", "residual@2", "residual+colour=change@2", "paper@0.5")
    edits = grid_edits(editor, crops, labels, modes)
    for mode, options in (("residual", {}), ("paper", {"mode": "paper"}), ("residual@2", {"strength": 2.0}),
                          ("residual+colour=change@2", {"strength": 2.0, "colour": "change"}),
                          ("paper@0.5", {"mode": "paper", "strength": 0.5})):
        assert edits[mode].shape == (2, 9, 3, 32, 32)
        direct = editor.edit_crops(np.repeat(crops, 9, axis=0), np.tile(labels, (2, 1)), **options)
        assert torch.allclose(edits[mode].reshape(18, 3, 32, 32), direct, atol=1e-5), mode
    x = torch.from_numpy(crops.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
    d = edits["residual@2"] - x[:, None]  # colour "keep" (the editor's default): the same change in R, G and B
    free = edits["residual@2"].abs().amax(2) < 0.999
    assert torch.allclose(d[:, :, 0][free], d[:, :, 1][free], atol=1e-5) and torch.allclose(d[:, :, 0][free], d[:, :, 2][free], atol=1e-5)
    # "+mask": inside the ellipse core the edit itself, outside it the input exactly, between a blend
    from affectedit.faces import face_mask

    masked = grid_edits(editor, crops, labels, ("paper+mask",))["paper+mask"]
    alpha = torch.tensor(face_mask(32))
    assert torch.allclose(masked[..., alpha == 0], x[:, None].expand_as(masked)[..., alpha == 0], atol=1e-6)
    assert torch.allclose(masked[..., alpha == 1], edits["paper"][..., alpha == 1], atol=1e-6)
    assert (masked - edits["paper"]).abs().amax() > 0
    assert parse_mode("residual@0.5") == ({"mode": "residual", "strength": 0.5, "colour": None}, False)
    assert parse_mode("paper") == ({"mode": "paper", "strength": None, "colour": None}, False)
    assert parse_mode("paper+mask@0") == ({"mode": "paper", "strength": 0.0, "colour": None}, True)
    assert parse_mode("residual+mask+colour=keep@2") == parse_mode("residual+colour=keep+mask@2") \
        == ({"mode": "residual", "strength": 2.0, "colour": "keep"}, True)
    for bad in ("residual+blur", "residual+luma", "residual+mask+mask", "residual+colour=red", "residual@x",
                "residual@9", "residual@", "magic", "residual+colour=keep+colour=change"):
        with pytest.raises(UserError):
            parse_mode(bad)


@pytest.mark.slow
def test_evaluate_writes_report(tiny_run, tiny_cache, tmp_path):
    out = tmp_path / "report"
    result = evaluate(tiny_run / "run" / "checkpoint.pt", tiny_cache, tiny_run / "reg", out, faces=2,
                      examples=1, batch_faces=2, device="cpu", progress=False, train_labels=tiny_cache,
                      notes=["A note for the end."])
    readme = (out / "README.md").read_text()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["modes"] == ["residual", "paper"] == result["modes"]
    assert saved["table_iv"]["edits"] == 2 * 49 and saved["table_iv"]["extreme_edits"] == 2 * 4
    for mode in ("residual", "paper"):
        t4 = saved["table_iv"]["modes"][mode]
        assert t4["all"]["valence"]["count"] == 98 and t4["extreme"]["arousal"]["count"] == 8
        assert 0 <= saved["identity"]["modes"][mode]["all"]["same_person_share"] <= 1
        assert saved["background"]["modes"][mode]["background"]["mean"] >= 0
        assert np.asarray(saved["heatmaps"]["modes"][mode]["mean_difference"]).shape == (7, 7)
        assert (out / f"fig2-heatmaps-{mode}.png").stat().st_size > 1000
        assert (out / f"fig3-examples-{mode}.png").stat().st_size > 1000
        assert f"fig2-heatmaps-{mode}.png" in readme and f"mode `{mode}`" in readme
    assert "Table IV" in readme and "0.528" in readme  # the paper's figures beside ours
    # what is comparable is said in the tables; the targets inside the training labels' span apart
    assert readme.count("comparable to the paper?") >= 4 and "| no: " in readme
    span = saved["labels"]["train_range"]
    inside = np.asarray(saved["labels"]["in_range"])
    assert len(inside) and all(span[d][0] <= v <= span[d][1] for row in inside for d, v in zip(("valence", "arousal"), row))
    assert saved["table_iv"]["in_range_edits"] == 2 * len(inside)
    assert saved["table_iv"]["modes"]["paper"]["in_range"]["valence"]["count"] == 2 * len(inside)
    assert "Targets inside the training label range" in readme and "A note for the end." in readme
    stats = saved["data"]["label_stats"]["arousal"]
    assert 0 <= stats["positive_share"] <= 1 and stats["min"] <= stats["max"]
    # the tiny model was trained without an identity loss: the measure is independent of its training
    assert saved["identity"]["trained_against"] is False and "not trained against dlib" in readme
    assert saved["data"]["people"] == 2 and "part 0" in saved["data"]["selection"]
    assert set(saved["table_iii"]["ours"]) == {"valence", "arousal"}
    assert "_maps" not in json.dumps(saved)
    assert not list(out.glob(".*.tmp*"))  # atomic writes leave no temporaries


def test_cli_evaluate_and_errors(tiny_run, tiny_cache, tmp_path, capsys):
    from affectedit.cli import main

    ck = str(tiny_run / "run" / "checkpoint.pt")
    regs = [str(tiny_run / "reg-arousal.pt"), str(tiny_run / "reg-valence.pt")]  # any order
    out = tmp_path / "r"
    rc = main(["evaluate", "--checkpoint", ck, "--data", str(tiny_cache), "--regressors", *regs, "--faces", "1",
               "--modes", "paper", "--grid", "3", "--examples", "0", "--no-identity", "--device", "cpu", "-o", str(out)])
    assert rc == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["modes"] == ["paper"] and saved["identity"] is None and saved["table_iv"]["edits"] == 9
    assert "Table IV" in capsys.readouterr().out

    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    base = ["evaluate", "--data", str(tiny_cache), "-o", str(tmp_path / "x")]
    assert "affectedit train" in error(base + ["--checkpoint", str(tmp_path / "nope.pt"), "--regressors", *regs])
    assert "affectedit regressor train" in error(base + ["--checkpoint", ck, "--regressors", str(tmp_path / "none")])
    assert "affectedit prepare" in error(["evaluate", "--checkpoint", ck, "--regressors", *regs,
                                          "--data", str(tmp_path / "nocache"), "-o", str(tmp_path / "x")])
    assert "unknown edit mode" in error(base + ["--checkpoint", ck, "--regressors", *regs, "--modes", "magic"])
    with pytest.raises(UserError, match="both valence"):
        resolve_regressors([regs[1], regs[1]])
