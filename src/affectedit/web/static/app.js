// The affectedit page: a photo, a valence/arousal disc, a live preview while dragging and the
// full-resolution edit on release. Plain JavaScript, no build step.
//
// Server API (affectedit/web/server.py): POST /api/photos (upload once: faces found, encoded),
// GET /api/photos/ID/original, /preview (small, fast: while dragging), /edit (full resolution).
// The body's data-state attribute (loading, ready, uploading, loaded, previewing, editing, done,
// error) tells tests and styles what the page is doing; window.affectedit exposes counters.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  file: null,          // the chosen File (kept to upload again if the server dropped the photo)
  photo: null,         // /api/photos answer: {id, width, height, faces, preview}
  valence: 0,
  arousal: 0,
  strength: 1,
  face: null,          // null = all faces, else the index (largest first)
  emotions: {},        // word -> [valence, arousal], from /api/info
  maxUpload: Infinity, // bytes
  example: null,
  dragging: false,
  edited: false,       // the point has been moved since the upload
  generation: 0,       // bumped by every new upload and full edit: late answers are dropped
  preview: { inFlight: false, dirty: false },
  full: null,          // AbortController of the full edit in flight
  urls: { before: null, after: null, download: null },
};
// For tests and the curious: how many previews were shown, and when.
const stats = { previews: 0, previewTimes: [], fullEdits: 0 };
window.affectedit = { state, stats };

function setState(name, message) {
  document.body.dataset.state = name;
  $("status").textContent = message || "";
}

function fmt(x) {
  return (x >= 0 ? "+" : "\u2212") + Math.abs(x).toFixed(2);
}

function dialQuery() {
  const face = state.face === null ? "" : `&face=${state.face}`;
  return `valence=${state.valence}&arousal=${state.arousal}&strength=${state.strength}${face}`;
}

// ---------------------------------------------------------------------------------------------
// The disc: valence on x (unpleasant left, pleasant right), arousal on y (calm bottom, excited
// top). Points are kept inside the unit circle, where AffectNet's labels lie.

const disc = $("disc");
const ctx = disc.getContext("2d");
const MARGIN = 0.17; // fraction of the canvas around the circle, room for the axis words
let labels = [];     // the placed emotion labels: {word, words, dot: [x, y], box}

function geometry() {
  const size = disc.width;
  return { cx: size / 2, cy: size / 2, r: size * (0.5 - MARGIN / 2 - 0.02), scale: size / 380 };
}

function toCanvas(v, a) {
  const g = geometry();
  return [g.cx + v * g.r, g.cy - a * g.r];
}

function fromEvent(event) {
  const rect = disc.getBoundingClientRect();
  const g = geometry();
  const x = ((event.clientX - rect.left) / rect.width) * disc.width;
  const y = ((event.clientY - rect.top) / rect.height) * disc.height;
  return clampToDisc((x - g.cx) / g.r, (g.cy - y) / g.r);
}

function clampToDisc(v, a) {
  const n = Math.hypot(v, a);
  return n > 1 ? [v / n, a / n] : [v, a];
}

function resizeDisc() {
  const cssSize = disc.getBoundingClientRect().width || 380;
  const size = Math.round(cssSize * (window.devicePixelRatio || 1));
  if (disc.width !== size) {
    disc.width = size;
    disc.height = size;
    labels = placeLabels();
  }
  drawDisc();
}

// Words labelled first when not all fit: the basic emotions, then the rest in this order.
const PRIORITY = ["neutral", "happy", "sad", "angry", "afraid", "surprised", "disgusted", "excited",
  "calm", "relaxed", "bored", "tired", "delighted", "content", "tense", "miserable", "sleepy",
  "depressed", "pleased", "frustrated", "serene", "alarmed", "gloomy", "glad", "distressed",
  "satisfied", "contemptuous", "at ease", "annoyed", "astonished"];

function rank(word) {
  const i = PRIORITY.indexOf(word);
  return i < 0 ? PRIORITY.length : i;
}

function overlaps(p, q, pad = 0) {
  return p.x < q.x + q.w + pad && q.x < p.x + p.w + pad && p.y < q.y + q.h + pad && q.y < p.y + p.h + pad;
}

function axisBoxes(g, s) {
  const t = 14 * s;
  return [
    { x: g.cx - 28 * s, y: g.cy - g.r - 11 * s - t / 2, w: 56 * s, h: t },
    { x: g.cx - 20 * s, y: g.cy + g.r + 11 * s - t / 2, w: 40 * s, h: t },
    { x: g.cx - g.r - 11 * s - t / 2, y: g.cy - 36 * s, w: t, h: 72 * s },
    { x: g.cx + g.r + 11 * s - t / 2, y: g.cy - 30 * s, w: t, h: 60 * s },
  ];
}

// Label placement that never collides: words at the same point share one dot (the first word by
// priority names it); each label tries positions around its dot, nearest first, then further out
// with a leader line, and takes the first that overlaps no label, dot or axis word and lies inside
// the canvas. A word that finds no place is not drawn, and neither is its dot (the readout still
// names the nearest word of all).
function placeLabels() {
  const g = geometry();
  const s = g.scale;
  ctx.font = `${Math.round(12 * s)}px system-ui, sans-serif`;
  const h = 14 * s;
  const groups = [];
  for (const word of Object.keys(state.emotions).sort((p, q) => rank(p) - rank(q))) {
    const [v, a] = state.emotions[word];
    const same = groups.find((gr) => Math.hypot(gr.v - v, gr.a - a) < 0.02);
    if (same) same.words.push(word);
    else groups.push({ word, words: [word], v, a });
  }
  const dotBox = (gr) => {
    const [x, y] = toCanvas(gr.v, gr.a);
    return { x: x - 4 * s, y: y - 4 * s, w: 8 * s, h: 8 * s };
  };
  const blocked = axisBoxes(g, s).concat(groups.map(dotBox));
  const placed = [];
  for (const gr of groups) {
    const [x, y] = toCanvas(gr.v, gr.a);
    const w = ctx.measureText(gr.word).width + 2 * s;
    let spot = null;
    for (const d of [6, 12, 20, 30, 42, 56]) {
      for (let k = 0; k < 16 && !spot; k++) {
        const angle = (k * Math.PI) / 8 + (x < g.cx ? Math.PI : 0); // start on the outer side
        const ux = Math.cos(angle);
        const uy = Math.sin(angle);
        const ax = x + ux * d * s;
        const ay = y + uy * d * s;
        // Anchor the box so that it extends away from the dot.
        const bx = ux > 0.3 ? ax : ux < -0.3 ? ax - w : ax - w / 2;
        const by = uy > 0.3 ? ay : uy < -0.3 ? ay - h : ay - h / 2;
        const box = { x: bx, y: by, w, h };
        if (box.x < 1 || box.y < 1 || box.x + box.w > disc.width - 1 || box.y + box.h > disc.height - 1) continue;
        if (blocked.some((other) => overlaps(box, other, 1 * s))) continue;
        spot = box;
      }
      if (spot) {
        placed.push({ word: gr.word, words: gr.words, dot: [x, y], box: spot, leader: d >= 20 });
        blocked.push(spot);
        break;
      }
    }
  }
  return placed;
}

function drawDisc() {
  const g = geometry();
  const s = g.scale;
  ctx.clearRect(0, 0, disc.width, disc.height);

  // Background: warm where pleasant, cool where unpleasant.
  const fill = ctx.createLinearGradient(g.cx - g.r, 0, g.cx + g.r, 0);
  fill.addColorStop(0, "#d7e3f4");
  fill.addColorStop(0.5, "#ffffff");
  fill.addColorStop(1, "#fbe3cf");
  ctx.beginPath();
  ctx.arc(g.cx, g.cy, g.r, 0, 2 * Math.PI);
  ctx.fillStyle = fill;
  ctx.fill();
  ctx.lineWidth = 1.5 * s;
  ctx.strokeStyle = "#9aa1ad";
  ctx.stroke();

  ctx.beginPath();
  ctx.moveTo(g.cx - g.r, g.cy);
  ctx.lineTo(g.cx + g.r, g.cy);
  ctx.moveTo(g.cx, g.cy - g.r);
  ctx.lineTo(g.cx, g.cy + g.r);
  ctx.strokeStyle = "#c4c8cf";
  ctx.lineWidth = 1 * s;
  ctx.stroke();

  ctx.fillStyle = "#5b6475";
  ctx.font = `italic ${Math.round(12 * s)}px system-ui, sans-serif`;
  ctx.textBaseline = "middle";
  ctx.textAlign = "center";
  ctx.fillText("excited", g.cx, g.cy - g.r - 11 * s);
  ctx.fillText("calm", g.cx, g.cy + g.r + 11 * s);
  ctx.save();
  ctx.translate(g.cx - g.r - 11 * s, g.cy);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("unpleasant", 0, 0);
  ctx.restore();
  ctx.save();
  ctx.translate(g.cx + g.r + 11 * s, g.cy);
  ctx.rotate(Math.PI / 2);
  ctx.fillText("pleasant", 0, 0);
  ctx.restore();

  // Emotion words (placed once per size by placeLabels).
  ctx.font = `${Math.round(12 * s)}px system-ui, sans-serif`;
  ctx.textAlign = "left";
  for (const label of labels) {
    const [x, y] = label.dot;
    const b = label.box;
    if (label.leader) {
      const tx = Math.min(Math.max(x, b.x), b.x + b.w);
      const ty = Math.min(Math.max(y, b.y), b.y + b.h);
      ctx.beginPath();
      ctx.moveTo(x, y);
      ctx.lineTo(tx, ty);
      ctx.strokeStyle = "#9aa1ad";
      ctx.lineWidth = 1 * s;
      ctx.stroke();
    }
    ctx.beginPath();
    ctx.arc(x, y, 3 * s, 0, 2 * Math.PI);
    ctx.fillStyle = "#1d2330";
    ctx.fill();
    ctx.fillText(label.word, b.x + 1 * s, b.y + b.h / 2);
  }

  // The chosen point.
  const [px, py] = toCanvas(state.valence, state.arousal);
  ctx.beginPath();
  ctx.arc(px, py, 9 * s, 0, 2 * Math.PI);
  ctx.fillStyle = "rgba(210, 84, 58, 0.85)";
  ctx.fill();
  ctx.lineWidth = 2 * s;
  ctx.strokeStyle = "#fff";
  ctx.stroke();
}

function nearestEmotion(v, a) {
  let best = null;
  let bestDistance = Infinity;
  for (const [word, [ev, ea]] of Object.entries(state.emotions)) {
    const d = Math.hypot(v - ev, a - ea);
    if (d < bestDistance) [best, bestDistance] = [word, d];
  }
  return [best, bestDistance];
}

function setPoint(v, a) {
  [v, a] = clampToDisc(v, a);
  state.valence = Math.round(v * 100) / 100;
  state.arousal = Math.round(a * 100) / 100;
  const [word, d] = nearestEmotion(state.valence, state.arousal);
  const near = word && d < 0.35 ? ` (near "${word}")` : "";
  const text = `valence ${fmt(state.valence)} \u00b7 arousal ${fmt(state.arousal)}${near}`;
  $("readout").textContent = text;
  disc.setAttribute("aria-valuetext", text);
  drawDisc();
}

// Snap to an emotion word's dot when released close to it.
function snap(v, a) {
  const g = geometry();
  for (const label of labels) {
    const [ev, ea] = state.emotions[label.word];
    if (Math.hypot(v - ev, a - ea) * g.r < 10 * g.scale) return [ev, ea];
  }
  return [v, a];
}

disc.addEventListener("pointerdown", (event) => {
  state.dragging = true;
  disc.setPointerCapture(event.pointerId);
  setPoint(...fromEvent(event));
  requestPreview();
  event.preventDefault();
});
disc.addEventListener("pointermove", (event) => {
  if (!state.dragging) return;
  setPoint(...fromEvent(event));
  requestPreview();
});
disc.addEventListener("pointerup", (event) => {
  if (!state.dragging) return;
  state.dragging = false;
  setPoint(...snap(...fromEvent(event)));
  requestFull();
});
disc.addEventListener("pointercancel", () => { state.dragging = false; });

let keyTimer = null;
disc.addEventListener("keydown", (event) => {
  const step = event.shiftKey ? 0.2 : 0.05;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
  if (event.key in moves) {
    const [dv, da] = moves[event.key];
    setPoint(state.valence + dv, state.arousal + da);
    requestPreview();
  } else if (event.key !== "Enter") {
    return;
  }
  event.preventDefault();
  clearTimeout(keyTimer); // the full edit once the keys rest
  keyTimer = setTimeout(requestFull, event.key === "Enter" ? 0 : 400);
});

$("reset").addEventListener("click", () => {
  setPoint(0, 0);
  requestFull();
});

const strength = $("strength");
strength.addEventListener("input", () => {
  state.strength = Number(strength.value);
  $("strength-value").textContent = state.strength.toFixed(2);
  requestPreview();
});
strength.addEventListener("change", () => requestFull());

// ---------------------------------------------------------------------------------------------
// The viewer: before (the upload, unedited), after (preview or full edit) over it, compare.

function setUrl(key, url) {
  if (state.urls[key] && state.urls[key] !== url) URL.revokeObjectURL(state.urls[key]);
  state.urls[key] = url;
}

function clearResult() {
  const after = $("after");
  after.hidden = true;
  after.removeAttribute("src");
  setUrl("after", null);
  const link = $("download");
  link.hidden = true;
  link.removeAttribute("href");
  setUrl("download", null);
  $("compare-row").hidden = true;
  $("divider").hidden = true;
}

function clearPhoto() {
  clearResult();
  state.photo = null;
  $("stage").hidden = true;
  $("placeholder").hidden = false;
  $("before").removeAttribute("src");
  setUrl("before", null);
  $("boxes").replaceChildren();
  $("face-picker").hidden = true;
}

function showUploadError(message) {
  const box = $("upload-error");
  box.textContent = message;
  box.hidden = false;
}

function clearUploadError() {
  $("upload-error").hidden = true;
  $("upload-error").textContent = "";
}

function applyCompare() {
  const p = Number($("compare").value);
  $("after").style.clipPath = p > 0 ? `inset(0 0 0 ${p}%)` : "";
  const divider = $("divider");
  divider.hidden = p <= 0 || $("after").hidden;
  divider.style.left = `${p}%`;
}
$("compare").addEventListener("input", applyCompare);

const hold = $("hold");
const showBefore = (on) => {
  $("after").style.visibility = on ? "hidden" : "";
  hold.setAttribute("aria-pressed", on ? "true" : "false");
};
hold.addEventListener("pointerdown", (event) => { showBefore(true); hold.setPointerCapture(event.pointerId); });
for (const name of ["pointerup", "pointercancel", "lostpointercapture"]) hold.addEventListener(name, () => showBefore(false));
hold.addEventListener("keydown", (event) => { if (event.key === " " || event.key === "Enter") { event.preventDefault(); showBefore(true); } });
hold.addEventListener("keyup", () => showBefore(false));
hold.addEventListener("contextmenu", (event) => event.preventDefault()); // a long press on a phone

function showAfter(blob, kind) {
  const url = URL.createObjectURL(blob);
  const after = $("after");
  const previous = state.urls.after;
  state.urls.after = url;
  return new Promise((resolve) => {
    after.onload = () => {
      if (previous && previous !== state.urls.download) URL.revokeObjectURL(previous);
      after.hidden = false;
      $("compare-row").hidden = false;
      applyCompare();
      if (kind === "preview") {
        stats.previews += 1;
        stats.previewTimes.push(performance.now());
      }
      resolve(true);
    };
    after.onerror = () => resolve(false);
    after.src = url;
  });
}

function drawFaceBoxes() {
  const boxes = $("boxes");
  boxes.replaceChildren();
  const buttons = $("face-buttons");
  buttons.replaceChildren();
  const faces = state.photo ? state.photo.faces : [];
  $("face-picker").hidden = faces.length < 2;
  if (faces.length < 2) return;
  const { width, height } = state.photo;
  const pick = (face) => {
    state.face = face;
    drawFaceBoxes();
    if (state.edited) requestFull();
  };
  const all = document.createElement("button");
  all.type = "button";
  all.className = "button";
  all.textContent = "All faces";
  all.dataset.face = "all";
  all.setAttribute("aria-pressed", state.face === null ? "true" : "false");
  all.addEventListener("click", () => pick(null));
  buttons.append(all);
  faces.forEach((face, i) => {
    const [x0, y0, x1, y1] = face.box;
    const box = document.createElement("button");
    box.type = "button";
    box.className = "face-box" + (state.face === i ? " selected" : "");
    box.style.left = `${(100 * Math.max(0, x0)) / width}%`;
    box.style.top = `${(100 * Math.max(0, y0)) / height}%`;
    box.style.width = `${(100 * (Math.min(width, x1) - Math.max(0, x0))) / width}%`;
    box.style.height = `${(100 * (Math.min(height, y1) - Math.max(0, y0))) / height}%`;
    box.setAttribute("aria-label", `Edit face ${i + 1} only`);
    const tag = document.createElement("span");
    tag.textContent = String(i + 1);
    box.append(tag);
    box.addEventListener("click", () => pick(i));
    boxes.append(box);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button";
    button.textContent = `Face ${i + 1}`;
    button.dataset.face = String(i);
    button.setAttribute("aria-pressed", state.face === i ? "true" : "false");
    button.addEventListener("click", () => pick(i));
    buttons.append(button);
  });
}

// ---------------------------------------------------------------------------------------------
// Upload.

async function errorOf(response) {
  try {
    return (await response.json()).error || `The server answered ${response.status}.`;
  } catch (_) {
    return `The server answered ${response.status}.`;
  }
}

async function chooseFile(file) {
  if (!file) return;
  state.generation += 1;
  const generation = state.generation;
  if (state.full) state.full.abort();
  clearUploadError();
  clearPhoto();
  state.file = null;
  if (file.size > state.maxUpload) {
    showUploadError(`This photo is too large (${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ` +
      `${(state.maxUpload / 2 ** 20).toFixed(0)} MB). Choose a smaller photo.`);
    setState("error", "");
    return;
  }
  state.file = file;
  state.face = null;
  state.edited = false;
  setState("uploading", "Finding the face\u2026");
  try {
    await upload(file, generation);
    if (generation !== state.generation) return;
    setState("loaded", "Drag the point on the disc to change the expression.");
  } catch (error) {
    if (generation !== state.generation) return;
    state.file = null;
    clearPhoto();
    showUploadError(error.message || String(error));
    setState("error", "");
  }
}

async function upload(file, generation) {
  const response = await fetch("/api/photos", {
    method: "POST",
    body: file,
    headers: { "Content-Type": file.type || "application/octet-stream" },
  });
  if (!response.ok) throw new Error(await errorOf(response));
  const photo = await response.json();
  if (generation !== state.generation) return;
  const original = await fetch(`/api/photos/${photo.id}/original`);
  if (!original.ok) throw new Error(await errorOf(original));
  const blob = await original.blob();
  if (generation !== state.generation) return;
  state.photo = photo;
  const url = URL.createObjectURL(blob);
  setUrl("before", url);
  const stage = $("stage");
  stage.style.setProperty("--ar", String(photo.width / photo.height));
  await new Promise((resolve) => {
    $("before").onload = resolve;
    $("before").onerror = resolve;
    $("before").src = url;
  });
  $("placeholder").hidden = true;
  stage.hidden = false;
  drawFaceBoxes();
}

// The server forgot the photo (restart, or many other uploads since): upload it again, once.
async function reupload() {
  if (!state.file) return false;
  try {
    await upload(state.file, state.generation);
    return true;
  } catch (_) {
    return false;
  }
}

$("file").addEventListener("change", (event) => chooseFile(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  chooseFile(event.dataTransfer.files[0]);
});
$("example").addEventListener("click", async () => {
  if (!state.example) return;
  const response = await fetch(state.example);
  const blob = await response.blob();
  chooseFile(new File([blob], "example-portrait.jpg", { type: "image/jpeg" }));
});

// ---------------------------------------------------------------------------------------------
// Edits: previews while the dial moves (one in flight; when it lands, the latest point goes next),
// the full-resolution edit on release.

async function requestPreview() {
  if (!state.photo) return;
  state.edited = true;
  if (state.preview.inFlight) {
    state.preview.dirty = true;
    return;
  }
  state.preview.inFlight = true;
  state.preview.dirty = false;
  const generation = state.generation;
  if (!state.full) setState("previewing", `Preview: valence ${fmt(state.valence)}, arousal ${fmt(state.arousal)}`);
  try {
    let response = await fetch(`/api/photos/${state.photo.id}/preview?${dialQuery()}`);
    if (response.status === 404 && (await reupload())) {
      response = await fetch(`/api/photos/${state.photo.id}/preview?${dialQuery()}`);
    }
    if (response.ok) {
      const blob = await response.blob();
      if (generation === state.generation) await showAfter(blob, "preview");
    }
  } catch (_) {
    // a preview that fails is replaced by the next one or by the full edit
  } finally {
    state.preview.inFlight = false;
  }
  if (state.preview.dirty && generation === state.generation) requestPreview();
}

async function requestFull() {
  if (!state.photo) {
    if (!state.file) setState("ready", "Choose a photo, or try the example portrait.");
    return;
  }
  state.edited = true;
  if (state.full) state.full.abort();
  state.generation += 1; // previews still on their way are now stale
  const generation = state.generation;
  const controller = new AbortController();
  state.full = controller;
  const v = state.valence;
  const a = state.arousal;
  setState("editing", `Editing at full resolution: valence ${fmt(v)}, arousal ${fmt(a)}\u2026`);
  try {
    let response = await fetch(`/api/photos/${state.photo.id}/edit?${dialQuery()}`, { signal: controller.signal });
    if (response.status === 404 && (await reupload())) {
      response = await fetch(`/api/photos/${state.photo.id}/edit?${dialQuery()}`, { signal: controller.signal });
    }
    if (!response.ok) throw new Error(await errorOf(response));
    const blob = await response.blob();
    if (generation !== state.generation) return;
    await showAfter(blob, "full");
    stats.fullEdits += 1;
    const link = $("download");
    setUrl("download", state.urls.after);
    link.href = state.urls.after;
    const ext = blob.type === "image/jpeg" ? "jpg" : "png";
    const stem = (state.file && state.file.name.replace(/\.[^.]*$/, "")) || "photo";
    link.download = `${stem}-valence${fmt(v)}-arousal${fmt(a)}.${ext}`.replace(/\u2212/g, "-");
    link.hidden = false;
    const who = state.face === null ? "" : ` (face ${state.face + 1})`;
    setState("done", `Done: valence ${fmt(v)}, arousal ${fmt(a)}, strength ${state.strength.toFixed(2)}${who}.`);
  } catch (error) {
    if (error.name === "AbortError" || generation !== state.generation) return;
    clearResult();
    setState("error", error.message || String(error));
  } finally {
    if (state.full === controller) state.full = null;
  }
}

// ---------------------------------------------------------------------------------------------
// Start.

async function start() {
  window.addEventListener("resize", resizeDisc);
  try {
    const info = await (await fetch("/api/info")).json();
    state.emotions = info.emotions || {};
    state.maxUpload = info.max_upload_bytes || Infinity;
    state.example = info.example || null;
    state.strength = info.strength || 1;
    strength.value = String(state.strength);
    $("strength-value").textContent = state.strength.toFixed(2);
    $("example").hidden = !state.example;
  } catch (error) {
    setState("error", "Could not reach the server; is `affectedit serve` still running?");
    return;
  }
  labels = placeLabels();
  resizeDisc();
  setPoint(0, 0);
  setState("ready", "Choose a photo, or try the example portrait.");
}

start();
