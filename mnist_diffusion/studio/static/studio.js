// mnistdiff studio: the page's side. Everything it shows comes from this page's own server.
"use strict";

const SIDE = 28, PAD = 1;
const page_id = Math.random().toString(36).slice(2, 12);
const $ = (id) => document.getElementById(id);
const studio = { run: null, info: null, drawing: new Float32Array(SIDE * SIDE), mask: new Uint8Array(SIDE * SIDE),
                 frames: [], results: {}, ends: { a: null, b: null } };
window.studio = studio;  // for a look from the browser's console

function status(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", error);
}

function bytes(b64) {
  const s = atob(b64), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// n digits (n * 784 bytes) as a grid of `cols` columns on `canvas`, one canvas pixel per image pixel.
function drawGrid(canvas, data, n, cols) {
  cols = Math.max(1, Math.min(cols, n));
  const rows = Math.ceil(n / cols);
  canvas.width = cols * (SIDE + PAD) + PAD;
  canvas.height = rows * (SIDE + PAD) + PAD;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#223";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const img = ctx.createImageData(SIDE, SIDE);
  for (let k = 0; k < n; k++) {
    for (let i = 0; i < SIDE * SIDE; i++) {
      const v = data[k * SIDE * SIDE + i];
      img.data.set([v, v, v, 255], 4 * i);
    }
    ctx.putImageData(img, PAD + (k % cols) * (SIDE + PAD), PAD + Math.floor(k / cols) * (SIDE + PAD));
  }
}

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ page_id, run: studio.run, ...body }),
  });
  if (!response.ok) {
    const detail = await response.json().then((j) => j.detail, () => response.statusText);
    throw new Error(detail);
  }
  return response;
}

function number(el) {
  const v = el.value.trim();
  return v === "" ? null : Number(v);
}

function busy(buttons, on) {
  for (const b of buttons) b.disabled = on;
}

// ---------------------------------------------------------------- runs

async function loadRuns() {
  const { runs, default: chosen } = await (await api("/api/runs")).json();
  const select = $("run");
  select.replaceChildren(...runs.map((r) => new Option(r, r, r === chosen, r === chosen)));
  if (!runs.length) return status("no trained runs in the artifacts folder", true);
  await pickRun(chosen);
}

async function pickRun(name) {
  studio.run = name;
  const info = await (await api(`/api/info?run=${encodeURIComponent(name)}`)).json();
  studio.info = info;
  $("run-info").textContent = `${info.schedule} schedule, T = ${info.timesteps}, ${info.prediction}-prediction`;
  for (const kind of ["auto", "labels", "clusters"]) {
    for (const el of document.querySelectorAll(`.kind-${kind}`)) el.classList.toggle("hidden", !info.guidance[kind]);
  }
  $("fwd-t").max = info.timesteps - 1;
  $("fwd-t").value = Math.round(0.3 * (info.timesteps - 1));
  if (!info.test_digits) { $("fwd-drawing").checked = true; $("fwd-digit").disabled = true; }
  $("edit-match").disabled = !info.match_clusters;
  status("ready");
  showForward();
}

// ---------------------------------------------------------------- 1. sample

let sampling = null;

function showFrame(i) {
  const f = studio.frames[i];
  if (!f) return;
  const n = studio.sampleN, cols = Math.ceil(Math.sqrt(n));
  drawGrid($("sample-xt"), bytes(f.x_t), n, cols);
  drawGrid($("sample-x0"), bytes(f.x0), n, cols);
  drawGrid($("sample-eps"), bytes(f.eps), n, cols);
  $("sample-step-text").textContent = `step ${f.step + 1} of ${f.steps}, t = ${f.t}`;
}

function guidance(form, body) {
  for (const [name, kind] of [["autoguidance", "auto"], ["label_guidance", "labels"], ["cluster_guidance", "clusters"]]) {
    if (studio.info.guidance[kind]) body[name] = number(form.elements[name]);
  }
  return body;
}

async function sample(event) {
  event.preventDefault();
  if (sampling) sampling.abort();
  const controller = sampling = new AbortController();
  const form = $("sample-form"), slider = $("sample-step");
  const body = guidance(form, { n: number(form.n), sampler: form.sampler.value, steps: number(form.steps), seed: number(form.seed) });
  if (studio.info.conditional && number(form.digit) !== null) body.digit = number(form.digit);
  studio.frames = [];
  studio.sampleN = body.n;
  slider.disabled = true;
  const began = performance.now();
  let first = null;
  status("sampling...");
  try {
    const response = await fetch("/api/sample", {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: controller.signal,
      body: JSON.stringify({ page_id, run: studio.run, ...body }),
    });
    if (!response.ok) throw new Error(await response.json().then((j) => j.detail, () => response.statusText));
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const message = JSON.parse(line.slice(6));
        if (message.event === "step") {
          if (first === null) first = performance.now() - began;
          studio.frames.push(message);
          slider.max = studio.frames.length - 1;
          slider.value = studio.frames.length - 1;
          showFrame(studio.frames.length - 1);
        } else if (message.event === "done") {
          studio.results.sample = message;
          slider.disabled = false;
          status(`${body.n} digits: first step after ${(first / 1000).toFixed(2)} s, all after ${((performance.now() - began) / 1000).toFixed(2)} s`);
        } else if (message.event === "error") {
          throw new Error(message.detail);
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") status(e.message, true);
  } finally {
    if (sampling === controller) sampling = null;
  }
}

// ---------------------------------------------------------------- 2. draw

const pad = $("pad");
let stroke = null;

function renderPad() {
  const ctx = pad.getContext("2d"), img = ctx.createImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i++) {
    const v = Math.round(studio.drawing[i] * 255);
    img.data.set(studio.mask[i] ? [Math.max(v, 150), v * 0.6, v * 0.6, 255] : [v, v, v, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}

// A soft round brush at (x, y) in pixel units: full ink within 0.9 px, none past 1.9.
function paint(x, y) {
  const tool = document.querySelector("input[name=tool]:checked").value;
  for (let r = Math.floor(y - 2); r <= Math.ceil(y + 2); r++) {
    for (let c = Math.floor(x - 2); c <= Math.ceil(x + 2); c++) {
      if (r < 0 || c < 0 || r >= SIDE || c >= SIDE) continue;
      const d = Math.hypot(c + 0.5 - x, r + 0.5 - y), i = r * SIDE + c;
      const ink = Math.min(1, Math.max(0, 1.9 - d));
      if (ink <= 0) continue;
      if (tool === "pen") studio.drawing[i] = Math.max(studio.drawing[i], Math.round(ink * 255) / 255);
      else if (tool === "eraser") { studio.drawing[i] = 0; studio.mask[i] = 0; }
      else studio.mask[i] = 1;
    }
  }
  renderPad();
}

function padPoint(e) {
  const box = pad.getBoundingClientRect();
  return [(e.clientX - box.left) / box.width * SIDE, (e.clientY - box.top) / box.height * SIDE];
}

pad.addEventListener("pointerdown", (e) => { stroke = padPoint(e); paint(...stroke); pad.setPointerCapture(e.pointerId); });
pad.addEventListener("pointermove", (e) => {
  if (!stroke) return;
  const [x, y] = padPoint(e), [x0, y0] = stroke, k = Math.max(1, Math.ceil(Math.hypot(x - x0, y - y0) * 3));
  for (let j = 1; j <= k; j++) paint(x0 + (x - x0) * j / k, y0 + (y - y0) * j / k);
  stroke = [x, y];
});
for (const name of ["pointerup", "pointercancel"]) pad.addEventListener(name, () => { stroke = null; });
$("clear").addEventListener("click", () => { studio.drawing.fill(0); studio.mask.fill(0); renderPad(); });
$("strength").addEventListener("input", () => { $("strength-text").textContent = $("strength").value; });

async function edit(kind) {
  const buttons = [$("fill"), $("cleanup")];
  const body = { drawing: Array.from(studio.drawing), n: number($("edits")), steps: number($("edit-steps")), seed: number($("edit-seed")) };
  if (kind === "complete" && studio.mask.some((m) => m)) body.mask = Array.from(studio.mask, (m) => m === 1);
  if (kind === "complete" && studio.info.match_clusters && $("edit-match").checked) body.match_clusters = true;
  if (kind === "cleanup") body.strength = Number($("strength").value);
  if (!studio.drawing.some((v) => v > 0) && !body.mask) return status("draw something first", true);
  busy(buttons, true);
  status(kind === "complete" ? "filling the rest..." : "cleaning up...");
  const began = performance.now();
  try {
    const result = await (await api(`/api/${kind}`, body)).json();
    studio.results[kind] = result;
    drawGrid($("edits-out"), bytes(result.digits), result.n, 8);
    status(`${result.n} ${kind === "complete" ? "completions" : "clean-ups"} in ${((performance.now() - began) / 1000).toFixed(2)} s`);
  } catch (e) {
    status(e.message, true);
  } finally {
    busy(buttons, false);
  }
}
$("fill").addEventListener("click", () => edit("complete"));
$("cleanup").addEventListener("click", () => edit("cleanup"));

// ---------------------------------------------------------------- 3. forward process

let forwardTimer = null;

function plotCurves(t) {
  const canvas = $("fwd-plot"), ctx = canvas.getContext("2d"), info = studio.info;
  const W = canvas.width, H = canvas.height, T = info.timesteps, m = 28;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#ccc";
  ctx.strokeRect(m, 8, W - m - 8, H - m - 8);
  const x = (tt) => m + (tt / Math.max(1, T - 1)) * (W - m - 8), y = (v) => 8 + (1 - v) * (H - m - 8);
  const lo = Math.max(-8, Math.min(...info.log10_snr)), hi = Math.min(8, Math.max(...info.log10_snr));
  for (const [values, colour, scale] of [[info.alpha_bar, "#2457c5", (v) => v], [info.log10_snr, "#e07b00", (v) => (Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo || 1)]]) {
    ctx.strokeStyle = colour;
    ctx.beginPath();
    info.curve_t.forEach((tt, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(tt), y(scale(values[i]))));
    ctx.stroke();
  }
  ctx.strokeStyle = "#000";
  ctx.beginPath(); ctx.moveTo(x(t), 8); ctx.lineTo(x(t), H - m); ctx.stroke();
  ctx.fillStyle = "#333";
  ctx.font = "13px sans-serif";
  ctx.fillText("t = 0", m, H - m + 16);
  ctx.fillText(`t = ${T - 1}`, W - 70, H - m + 16);
  ctx.fillText(`alpha_bar 1..0, SNR 1e${hi.toFixed(0)}..1e${lo.toFixed(0)} (top to bottom)`, m + 6, H - m - 8);
}

function showForward() {
  clearTimeout(forwardTimer);
  forwardTimer = setTimeout(async () => {
    const t = Number($("fwd-t").value), body = { t };
    if ($("fwd-drawing").checked) body.drawing = Array.from(studio.drawing);
    else body.test_digit = number($("fwd-digit")) || 0;
    try {
      const r = await (await api("/api/forward", body)).json();
      drawGrid($("fwd-x0"), bytes(r.x0), 1, 1);
      drawGrid($("fwd-xt"), bytes(r.x_t), 1, 1);
      const snr = r.alpha_bar / (1 - r.alpha_bar);
      $("fwd-t-text").textContent = `t = ${t}: alpha_bar = ${r.alpha_bar.toFixed(4)}, SNR = ${snr.toPrecision(3)}`;
      plotCurves(t);
    } catch (e) {
      status(e.message, true);
    }
  }, 30);
}
for (const id of ["fwd-t", "fwd-digit", "fwd-drawing"]) $(id).addEventListener("input", showForward);

// ---------------------------------------------------------------- 4. walk

function describeEnds() {
  const end = (k, id) => (studio.ends[k] ? "a drawing" : `seed ${$(id).value}`);
  $("walk-ends").textContent = `${end("a", "walk-a")} to ${end("b", "walk-b")}`;
}
for (const [k, id] of [["a", "walk-a"], ["b", "walk-b"]]) {
  $(`${id}-draw`).addEventListener("click", () => { studio.ends[k] = Array.from(studio.drawing); describeEnds(); });
  $(id).addEventListener("input", () => { studio.ends[k] = null; describeEnds(); });
}

async function walk() {
  const body = { frames: number($("walk-frames")), a: studio.ends.a || number($("walk-a")), b: studio.ends.b || number($("walk-b")), sampler: "ddim", steps: 20 };
  busy([$("walk-go")], true);
  status("walking...");
  try {
    const result = await (await api("/api/walk", body)).json();
    studio.results.walk = result;
    drawGrid($("walk-out"), bytes(result.digits), result.n, result.n);
    status(`a walk of ${result.n} pictures`);
  } catch (e) {
    status(e.message, true);
  } finally {
    busy([$("walk-go")], false);
  }
}
$("walk-go").addEventListener("click", walk);

// ---------------------------------------------------------------- start

$("sample-form").addEventListener("submit", sample);
$("sample-step").addEventListener("input", () => showFrame(Number($("sample-step").value)));
$("run").addEventListener("change", () => pickRun($("run").value).catch((e) => status(e.message, true)));
renderPad();
loadRuns().catch((e) => status(e.message, true));
