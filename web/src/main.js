// The explorer page: loads the bundle beside it (bundle/manifest.json and its graphs) and explorer.json (the pad's
// axes, written by `vaedeploy web`), decodes on onnxruntime-web, and exposes `window.explorer` for the browser tests.
import * as ort from "onnxruntime-web";
import { Model } from "./model.js";
import { parseNpy } from "./npy.js";
import * as philox from "./philox.js";

const $ = (id) => document.getElementById(id);
const LABEL_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                       "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

const state = { z: null, latentShape: null, codes: null, pad: null, image: null, backend: null, threads: 1,
                decodeMs: [], frames: 0 };
let model, explorerSpec;

function setStatus(text, kind) {
  $("status").textContent = text;
  document.body.dataset.state = kind;
}

// ---- choosing the backend: WebGPU where the browser has an adapter, wasm otherwise; ?backend= forces one ----------

async function webgpuMissing() {
  if (!navigator.gpu) return "this browser has no WebGPU";
  try {
    return (await navigator.gpu.requestAdapter()) ? null : "this browser offers no WebGPU adapter";
  } catch (error) {
    return `WebGPU adapter request failed (${error.message})`;
  }
}

async function loadModel() {
  // the .mjs/.wasm pair is served beside the page (ort/), never from a CDN
  ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
  // more than one thread needs SharedArrayBuffer, which only a cross-origin-isolated page has
  state.threads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
  ort.env.wasm.numThreads = state.threads;
  const wanted = new URLSearchParams(location.search).get("backend") ?? "auto";
  if (!["auto", "wasm", "webgpu"].includes(wanted)) {
    throw new Error(`?backend= expects auto, wasm or webgpu, got ${JSON.stringify(wanted)}`);
  }
  let note = "";
  if (wanted !== "wasm") {
    const missing = await webgpuMissing();
    if (!missing) {
      try {
        state.backend = "webgpu";
        return [await Model.load(ort, "bundle/", "webgpu", explorerSpec.operations), note];
      } catch (error) {
        if (wanted === "webgpu") throw error;
        note = `WebGPU failed (${error.message})`;
      }
    } else if (wanted === "webgpu") {
      throw new Error(`?backend=webgpu, but ${missing}`);
    } else {
      note = missing;
    }
  }
  state.backend = "wasm";
  return [await Model.load(ort, "bundle/", "wasm", explorerSpec.operations), note];
}

// ---- drawing -------------------------------------------------------------------------------------------------

/** The mean image as pixels: channels-first floats clamped to [0, 1], grey for one channel, RGB for three; at the
 * size of the decode that made it (a spatial bundle's images have the latent's size times its downsampling). */
function drawImage(image) {
  const [c, h, w] = model.imageDims;
  const canvas = $("image");
  canvas.width = w;
  canvas.height = h;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(w, h);
  const level = (v) => Math.round(Math.min(1, Math.max(0, v)) * 255);
  for (let p = 0; p < h * w; p++) {
    const rgb = c === 3 ? [0, 1, 2].map((k) => image[k * h * w + p]) : [image[p], image[p], image[p]];
    pixels.data.set([...rgb.map(level), 255], 4 * p);
  }
  context.putImageData(pixels, 0, 0);
}

function drawPad() {
  const canvas = $("pad");
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  const toX = (a) => ((a + 1) / 2) * width, toY = (b) => ((1 - b) / 2) * height;
  context.fillStyle = "#fbfbfb";
  context.fillRect(0, 0, width, height);
  context.strokeStyle = "#ddd";
  context.beginPath();
  context.moveTo(toX(0), 0); context.lineTo(toX(0), height);
  context.moveTo(0, toY(0)); context.lineTo(width, toY(0));
  context.stroke();
  for (const [a, b, label] of explorerSpec.pad.points) {
    context.fillStyle = label == null ? "#999" : LABEL_COLOURS[label % LABEL_COLOURS.length];
    context.fillRect(toX(a) - 1.5, toY(b) - 1.5, 3, 3);
  }
  if (state.pad) {
    const [a, b] = state.pad;
    context.strokeStyle = "#000";
    context.lineWidth = 2;
    context.beginPath();
    context.arc(toX(a), toY(b), 6, 0, 2 * Math.PI);
    context.stroke();
    context.lineWidth = 1;
  }
}

function drawCodes() {
  const [h, w] = model.grid;
  const grid = $("codes");
  grid.style.gridTemplateColumns = `repeat(${w}, 2.6em)`;
  grid.replaceChildren(...state.codes.map((code, p) => {
    const cell = document.createElement("button");
    cell.className = "code";
    cell.dataset.position = p;
    cell.textContent = code;
    cell.title = `position (${Math.floor(p / w)}, ${p % w}): code ${code} of ${model.latent.num_codes}`;
    return cell;
  }));
  grid.dataset.rows = h;
}

function showStats() {
  const recent = state.decodeMs.slice(-30);
  const mean = recent.reduce((a, b) => a + b, 0) / Math.max(1, recent.length);
  $("decode-time").textContent = recent.length
    ? `${recent.at(-1).toFixed(2)} ms last (session.run ${model.lastRunMs.toFixed(2)} ms), ${mean.toFixed(2)} ms ` +
      `mean of the last ${recent.length} (${state.frames} frames)`
    : "–";
  // the pad's z only: a spatial latent has thousands of elements
  $("z").textContent = state.z && model.can.view === "pad" ? Array.from(state.z, (v) => v.toFixed(3)).join(", ") : "–";
}

// ---- one decode at a time: pointer moves faster than frames replace the waiting request --------------------------

let pending = null, running = null;

function schedule(job) {
  pending = job;
  if (!running) running = drain();
  return running;
}

async function drain() {
  try {
    while (pending) {
      const job = pending;
      pending = null;
      const started = performance.now();
      const image = await job();
      state.decodeMs.push(performance.now() - started);
      state.frames += 1;
      state.image = image;
      drawImage(image);
      showStats();
    }
  } catch (error) {
    fail(error);
  } finally {
    running = null;
  }
}

function fail(error) {
  setStatus(`error: ${error.message}`, "error");
  console.error(`vaedeploy explorer: ${error.message}`);
}

// ---- the controls --------------------------------------------------------------------------------------------

/** z at pad coordinates (a, b) in [-1, 1]²: center + a·span₀·axis₀ + b·span₁·axis₁ (explorer.json's pad). */
function padLatent(a, b) {
  const { center, axes, span } = explorerSpec.pad;
  const coords = [a, b];
  return Float32Array.from(center, (c, j) => axes.reduce((z, axis, k) => z + coords[k] * span[k] * axis[j], c));
}

/** The pad coordinates of z: its projection onto the pad's axes (the pad's marker after a sample). */
function padCoordinates(z) {
  const { center, axes, span } = explorerSpec.pad;
  return [0, 1].map((k) => (axes[k] ? axes[k].reduce((s, v, j) => s + v * (z[j] - center[j]), 0) / span[k] : 0));
}

function padTo(a, b) {
  state.pad = [a, b];
  state.z = padLatent(a, b);
  drawPad();
  const z = state.z;
  return schedule(() => model.decodeLatent(z));
}

function setCodes(codes) {
  state.codes = Array.from(codes, Number);
  drawCodes();
  const codesNow = state.codes.slice();
  return schedule(() => model.decodeCodes(codesNow));
}

function decodeLatent(z) {
  state.z = Float32Array.from(z);
  state.pad = padCoordinates(state.z);
  drawPad();
  const latent = state.z;
  return schedule(() => model.decodeLatent(latent));
}

/** Decode a spatial latent from a .npy file's bytes (dropped, chosen or --latents); a file that is not a latent
 * of this bundle gets one sentence in the latent note, and nothing is decoded. */
function loadLatents(buffer, name) {
  let shape, npy;
  try {
    npy = parseNpy(buffer, name);
    shape = model.checkLatent(npy, name);
  } catch (error) {
    $("latent-note").textContent = error.message;
    return Promise.resolve();
  }
  $("latent-note").textContent = `${name}: a ${shape.join("×")} latent, decoded to ` +
    `${shape[1] * model.downsample}×${shape[2] * model.downsample}`;
  state.z = npy.data;
  state.latentShape = shape;
  return schedule(() => model.decodeSpatial(npy.data, shape));
}

async function loadLatentFile(file) {
  return loadLatents(await file.arrayBuffer(), file.name);
}

/** Runtime.sample(1, seed, size=(H, W)) at the size in the H and W fields. */
function sampleSpatial(seed) {
  const size = [Number($("height").value), Number($("width").value)];
  model.latentShapeAt(size); // a size the bundle does not take throws its sentence, shown beside the button
  $("sample-note").textContent = `seed ${seed} at ${size.join("×")}: ${model.can.says.split("; ").at(-1)}`;
  return schedule(async () => {
    const result = await model.sampleSpatial(seed, size);
    state.z = result.z;
    state.latentShape = result.shape;
    return result.image;
  });
}

function sample() {
  const seed = philox.toUint63($("seed").value, "seed"); // a bad seed throws a sentence, shown beside the button
  if (model.can.view === "spatial") return sampleSpatial(seed);
  $("sample-note").textContent = `seed ${seed}: ${model.can.says.split("; ").at(-1)}`;
  return schedule(async () => {
    const result = await model.sample(seed);
    if (result.codes) {
      state.codes = result.codes;
      drawCodes();
    } else {
      // a hierarchical sample runs its own graph from every layer's noise: there is no single z to show
      state.z = result.z ?? null;
      state.pad = result.z ? padCoordinates(result.z) : null;
      drawPad();
    }
    return result.image;
  });
}

function wireControls() {
  const pad = $("pad");
  const toPad = (event) => {
    const rect = pad.getBoundingClientRect();
    const a = Math.min(1, Math.max(-1, ((event.clientX - rect.left) / rect.width) * 2 - 1));
    const b = Math.min(1, Math.max(-1, 1 - ((event.clientY - rect.top) / rect.height) * 2));
    padTo(a, b);
  };
  pad.addEventListener("pointermove", toPad);
  pad.addEventListener("pointerdown", toPad);
  $("codes").addEventListener("click", (event) => {
    const cell = event.target.closest(".code");
    if (!cell) return;
    const codes = state.codes.slice();
    const k = model.latent.num_codes;
    codes[cell.dataset.position] = (codes[cell.dataset.position] + (event.shiftKey ? k - 1 : 1)) % k;
    setCodes(codes);
  });
  $("sample").addEventListener("click", () => {
    try {
      sample();
    } catch (error) {
      $("sample-note").textContent = error.message;
    }
  });
  $("seed").addEventListener("keydown", (event) => event.key === "Enter" && $("sample").click());
  $("latent-file").addEventListener("change", (event) => event.target.files[0] &&
    loadLatentFile(event.target.files[0]));
  // a .npy dropped anywhere on the page: the browser would otherwise open the file in place of the page
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file && model.can.view === "spatial") loadLatentFile(file);
  });
}

/** The spatial view's first frame: the --latents file when `vaedeploy web` wrote one, else a sample at the reference
 * size (zeros for a latent without a prior). */
async function startSpatial() {
  const [h, w] = model.sizes.reference;
  for (const [id, value] of [["height", h], ["width", w]]) {
    Object.assign($(id), { value, min: model.sizes.low[id === "height" ? 0 : 1],
                           max: model.sizes.high[id === "height" ? 0 : 1], step: model.sizes.multiple });
  }
  $("size-note").textContent = `sizes: ${model.sizes.text}`;
  if (explorerSpec.latents) {
    const response = await fetch(explorerSpec.latents);
    if (!response.ok) {
      throw new Error(`${explorerSpec.latents}: HTTP ${response.status}; expected the --latents of vaedeploy web`);
    }
    return loadLatents(await response.arrayBuffer(), explorerSpec.latents);
  }
  if (model.can.sample) return sample();
  const shape = model.latentShapeAt([h, w]);
  state.latentShape = shape;
  return schedule(() => model.decodeSpatial(new Float32Array(shape[0] * shape[1] * shape[2]), shape));
}

async function main() {
  const response = await fetch("explorer.json");
  if (!response.ok) throw new Error(`explorer.json: HTTP ${response.status}; expected the --out of vaedeploy web`);
  explorerSpec = await response.json();
  let note;
  [model, note] = await loadModel();
  const { manifest, can } = model;
  const latentText = model.can.view === "spatial" ? `${model.latentShape.join("×")} (at the reference size)`
    : `of ${model.dim} dimensions`;
  $("model").textContent = `${manifest.kind} bundle: ${manifest.latent.type} latent ${latentText}, ` +
    `${manifest.likelihood.kind} decoder, input ${manifest.input.shape.join("×")}`;
  $("backend").textContent = `${state.backend} (onnxruntime-web ${ort.env.versions.web})` + (note ? `: ${note}` : "");
  $("threads").textContent = self.crossOriginIsolated
    ? `${state.threads} (the page is cross-origin isolated)`
    : "1: the page is not cross-origin isolated (serve it with `vaedeploy web --serve` for threads)";
  $("supports").textContent = can.says;
  $("sample").disabled = !can.sample;
  if (!can.sample) $("sample-note").textContent = can.says.split("; ").at(-1);
  $("pad-section").hidden = can.view !== "pad";
  $("codes-section").hidden = can.view !== "codes";
  $("spatial-section").hidden = can.view !== "spatial";
  for (const element of document.querySelectorAll(".pad-only")) element.hidden = can.view !== "pad";
  for (const element of document.querySelectorAll(".spatial-only")) element.hidden = can.view !== "spatial";
  wireControls();
  if (can.view === "pad") {
    const { points, source } = explorerSpec.pad;
    $("pad-note").textContent = `The pad spans ${source}.` +
      (points.length ? ` Dots: ${points.length} encoded training images, coloured by label.` : "");
    await padTo(0, 0);
  } else if (can.view === "spatial") {
    await startSpatial();
  } else {
    await setCodes(explorerSpec.codes);
  }
  setStatus("ready", "ready");
}

const ready = main().catch((error) => fail(error));

window.explorer = {
  ready, state, philox, padTo, decodeLatent, setCodes, sample, loadLatents,
  idle: async () => { while (running) await running; },
  get model() { return model; },
  get spec() { return explorerSpec; },
};
