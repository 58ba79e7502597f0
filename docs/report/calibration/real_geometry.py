"""Real vs edited landmark movement per expression on LFW *training* identities with a neutral and an
expressive photo (the first of each): dlib's 68 landmarks of the expressive photo and of the edit of
the neutral one, aligned by the neutral's eye centres, minus the neutral's, in eye distances, averaged
over the pairs (README.md here, "The edits' geometry against real faces").

    python docs/report/calibration/real_geometry.py happiness sadness anger surprise
    W=runs/x-weights CAP=100 python docs/report/calibration/real_geometry.py happiness   # other weights, at most 100 pairs
"""
import csv, collections, os, sys
import numpy as np
from PIL import Image
from affectedit.editor import Editor
from affectedit.faces import detect_faces
from affectedit import photo_metrics as pm
from affectedit.faces import similarity_transform
W = os.environ.get("W") or None
ed = Editor.from_pretrained(W)
root = os.environ.get("LFW", str(__import__("pathlib").Path(__file__).resolve().parents[4] / "shared" / "data" / "lfw-expressions"))
rows = list(csv.DictReader(open(f"{root}/labels.csv")))
by = collections.defaultdict(lambda: collections.defaultdict(list))
for r in rows:
    if r["split"] == "train":
        by[r["identity"]][r["emotion"]].append(r["image"])
EMO = {"happiness": "happy", "sadness": "sad", "anger": "angry", "surprise": "surprised"}
REG = {"inner brow 21/22 y": ([21, 22], 1), "outer brow 17/26 y": ([17, 26], 1), "brow x (21 vs 22 gap)": None,
       "upper lid 37/38/43/44 y": ([37, 38, 43, 44], 1), "lower lid 40/41/46/47 y": ([40, 41, 46, 47], 1),
       "mouth corners 48/54 y": ([48, 54], 1), "upper lip 51 y": ([51], 1), "lower lip 57 y": ([57], 1), "chin 8 y": ([8], 1),
       "inner opening 62-66": None, "mouth width": None}
def lm_aligned(img, ref=None):
    a = np.asarray(img.convert("RGB")); fs = detect_faces(Image.fromarray(a))
    if not fs: return None
    lm = pm.landmarks68(a, fs[0]); eyes = pm._eye_centres(lm)
    if ref is None: return lm, eyes, fs[0]
    m = similarity_transform(eyes, ref); return lm @ m[:, :2].T + m[:, 2]
def summary(d):  # d: 68x2 displacement in eye units
    out = {}
    for k, v in REG.items():
        if v is None: continue
        idx, c = v; out[k] = float(np.mean(d[idx, c]))
    out["brow gap (22x-21x)"] = float(d[22, 0] - d[21, 0])
    out["inner opening 62-66"] = float(d[66, 1] - d[62, 1])
    out["mouth width"] = float(d[54, 0] - d[48, 0])
    return out
for emo in sys.argv[1:] or ["sadness", "anger", "surprise"]:
    R, E = [], []
    for ident, d in list(by.items()):
        if len(R) >= int(os.environ.get("CAP", "1000")): break
        if not (d.get(emo) and d.get("neutral")): continue
        n = Image.open(f"{root}/images/{d['neutral'][0]}"); x = Image.open(f"{root}/images/{d[emo][0]}")
        got = lm_aligned(n)
        if got is None: continue
        lm, eyes, f = got; e = float(np.linalg.norm(eyes[1] - eyes[0]))
        lx = lm_aligned(x, eyes)
        if lx is None: continue
        out = ed.edit(n, emotion=EMO[emo], face=0)
        le = lm_aligned(out, eyes)
        if le is None: continue
        R.append((lx - lm) / e); E.append((le - lm) / e)
    R, E = np.mean(R, 0), np.mean(E, 0)
    sr, se = summary(R), summary(E)
    print(f"== {emo}: {len(by) and sum(1 for d in by.values() if d.get(emo) and d.get('neutral'))} pairs")
    for k in sr:
        print(f"  {k:28s} real {sr[k]:+.3f}  edit {se[k]:+.3f}")
