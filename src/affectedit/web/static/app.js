// The affectedit page: a photo, a valence/arousal disc, and POST /api/edit.
// Plain JavaScript, no build step. The body's data-state attribute (loading, ready, busy, done,
// error) tells tests and styles what the page is doing.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  file: null,          // the chosen File
  valence: 0,
  arousal: 0,
  emotions: {},        // word -> [valence, arousal], from /api/info
  maxUpload: Infinity, // bytes
  request: null,       // AbortController of the edit in flight
  resultUrl: null,     // blob: URL of the shown edit
  originalUrl: null,
  dragging: false,
};

function setState(name, message, isError) {
  document.body.dataset.state = name;
  const status = $("status");
  status.textContent = message || "";
  status.classList.toggle("error", Boolean(isError));
}

// ---------------------------------------------------------------------------------------------
// The disc: valence on x (unpleasant left, pleasant right), arousal on y (calm bottom, excited
// top). Points are kept inside the unit circle, where AffectNet's labels lie.

const disc = $("disc");
const ctx = disc.getContext("2d");
const MARGIN = 0.17; // fraction of the canvas around the circle, room for the axis words

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
  }
  drawDisc();
}

function drawDisc() {
  const g = geometry();
  const s = g.scale;
  ctx.clearRect(0, 0, disc.width, disc.height);

  // Background: warm where pleasant, cool where unpleasant, stronger toward the rim.
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

  // Axes.
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

  // Emotion words at their (valence, arousal). Several words share almost the same point
  // (glad, pleased, happy), so a word is written only where it overlaps nothing already written;
  // every point keeps its dot, and the readout names the nearest word.
  ctx.font = `${Math.round(12 * s)}px system-ui, sans-serif`;
  ctx.textAlign = "left";
  const h = 13 * s;
  const dots = Object.values(state.emotions).map(([v, a]) => {
    const [x, y] = toCanvas(v, a);
    return { x: x - 3 * s, y: y - 3 * s, w: 6 * s, h: 6 * s };
  });
  const placed = axisBox(g, s).concat(dots);
  ctx.fillStyle = "#1d2330";
  for (const dot of dots) {
    ctx.beginPath();
    ctx.arc(dot.x + dot.w / 2, dot.y + dot.h / 2, 3 * s, 0, 2 * Math.PI);
    ctx.fill();
  }
  const words = Object.keys(state.emotions);
  const rank = (word) => (PRIORITY.includes(word) ? PRIORITY.indexOf(word) : PRIORITY.length);
  words.sort((p, q) => rank(p) - rank(q));
  for (const word of words) {
    const [x, y] = toCanvas(...state.emotions[word]);
    const w = ctx.measureText(word).width;
    const candidates = [
      [x + 6 * s, y - h / 2], [x - 6 * s - w, y - h / 2],
      [x - w / 2, y - 5 * s - h], [x - w / 2, y + 5 * s],
      [x + 4 * s, y - 4 * s - h], [x - 4 * s - w, y - 4 * s - h],
      [x + 4 * s, y + 4 * s], [x - 4 * s - w, y + 4 * s],
    ];
    const spot = candidates
      .map(([bx, by]) => ({ x: bx, y: by, w, h }))
      .find((box) => box.x >= 0 && box.y >= 0 && box.x + box.w <= disc.width && box.y + box.h <= disc.height
        && !placed.some((other) => overlaps(box, other)));
    if (spot) {
      placed.push(spot);
      ctx.fillText(word, spot.x, spot.y + h / 2);
    }
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

// Words labelled first when labels would collide: the basic emotions, then the rest in order.
const PRIORITY = ["neutral", "happy", "sad", "angry", "afraid", "surprised", "disgusted", "excited",
  "calm", "relaxed", "bored", "tired", "delighted", "content", "distressed", "miserable", "depressed"];

// Boxes of the four axis words, so emotion words do not cover them.
function axisBox(g, s) {
  const t = 12 * s;
  return [
    { x: g.cx - 25 * s, y: g.cy - g.r - 11 * s - t / 2, w: 50 * s, h: t },
    { x: g.cx - 18 * s, y: g.cy + g.r + 11 * s - t / 2, w: 36 * s, h: t },
    { x: g.cx - g.r - 11 * s - t / 2, y: g.cy - 32 * s, w: t, h: 64 * s },
    { x: g.cx + g.r + 11 * s - t / 2, y: g.cy - 28 * s, w: t, h: 56 * s },
  ];
}

function overlaps(p, q) {
  return p.x < q.x + q.w && q.x < p.x + p.w && p.y < q.y + q.h && q.y < p.y + p.h;
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

function fmt(x) {
  return (x >= 0 ? "+" : "\u2212") + Math.abs(x).toFixed(2);
}

// Snap to an emotion word's dot when released close to it.
function snap(v, a) {
  const [word, d] = nearestEmotion(v, a);
  const g = geometry();
  return word && d * g.r < 10 * g.scale ? state.emotions[word] : [v, a];
}

disc.addEventListener("pointerdown", (event) => {
  state.dragging = true;
  disc.setPointerCapture(event.pointerId);
  setPoint(...fromEvent(event));
  event.preventDefault();
});
disc.addEventListener("pointermove", (event) => {
  if (state.dragging) setPoint(...fromEvent(event));
});
disc.addEventListener("pointerup", (event) => {
  if (!state.dragging) return;
  state.dragging = false;
  setPoint(...snap(...fromEvent(event)));
  requestEdit();
});
disc.addEventListener("pointercancel", () => { state.dragging = false; });

let keyTimer = null;
disc.addEventListener("keydown", (event) => {
  const step = event.shiftKey ? 0.2 : 0.05;
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
  if (event.key in moves) {
    const [dv, da] = moves[event.key];
    setPoint(state.valence + dv, state.arousal + da);
  } else if (event.key !== "Enter") {
    return;
  }
  event.preventDefault();
  clearTimeout(keyTimer); // edit once the keys rest, not on every step
  keyTimer = setTimeout(requestEdit, event.key === "Enter" ? 0 : 400);
});

$("reset").addEventListener("click", () => {
  setPoint(0, 0);
  requestEdit();
});

// ---------------------------------------------------------------------------------------------
// The photo.

function chooseFile(file) {
  if (!file) return;
  if (file.size > state.maxUpload) {
    setState("error", `This photo is too large (${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ` +
      `${(state.maxUpload / 2 ** 20).toFixed(0)} MB). Choose a smaller photo.`, true);
    return;
  }
  state.file = file;
  if (state.originalUrl) URL.revokeObjectURL(state.originalUrl);
  state.originalUrl = URL.createObjectURL(file);
  const original = $("original");
  original.src = state.originalUrl;
  original.hidden = false;
  requestEdit();
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

// ---------------------------------------------------------------------------------------------
// The edit.

async function requestEdit() {
  if (!state.file) {
    setState("ready", "Choose a photo to edit.");
    return;
  }
  if (state.request) state.request.abort(); // only the latest point matters
  const controller = new AbortController();
  state.request = controller;
  const v = state.valence;
  const a = state.arousal;
  setState("busy", `Editing: valence ${fmt(v)}, arousal ${fmt(a)}\u2026`);
  try {
    const response = await fetch(`/api/edit?valence=${v}&arousal=${a}`, {
      method: "POST",
      body: state.file,
      headers: { "Content-Type": state.file.type || "application/octet-stream" },
      signal: controller.signal,
    });
    if (!response.ok) {
      let message = `The server answered ${response.status}.`;
      try {
        message = (await response.json()).error || message;
      } catch (_) { /* not JSON: keep the status line */ }
      throw new Error(message);
    }
    const blob = await response.blob();
    if (controller !== state.request) return;
    showResult(blob, v, a);
  } catch (error) {
    if (error.name === "AbortError") return;
    if (controller !== state.request) return;
    setState("error", error.message || String(error), true);
  }
}

function showResult(blob, v, a) {
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const result = $("result");
  result.onload = () => setState("done", `Done: valence ${fmt(v)}, arousal ${fmt(a)}.`);
  result.onerror = () => setState("error", "The edited image could not be shown.", true);
  result.src = state.resultUrl;
  result.hidden = false;
  const ext = blob.type === "image/jpeg" ? "jpg" : "png";
  const stem = state.file.name.replace(/\.[^.]*$/, "") || "photo";
  const link = $("download");
  link.href = state.resultUrl;
  link.download = `${stem}-valence${fmt(v)}-arousal${fmt(a)}.${ext}`.replace(/\u2212/g, "-");
  link.hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Start.

async function start() {
  window.addEventListener("resize", resizeDisc);
  resizeDisc();
  setPoint(0, 0);
  try {
    const info = await (await fetch("/api/info")).json();
    state.emotions = info.emotions || {};
    state.maxUpload = info.max_upload_bytes || Infinity;
  } catch (error) {
    setState("error", "Could not reach the server; is `affectedit serve` still running?", true);
    return;
  }
  setPoint(0, 0);
  setState("ready", "Choose a photo to edit.");
}

start();
