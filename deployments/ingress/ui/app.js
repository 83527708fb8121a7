// The demo page: draw or drop a digit, see what the server predicts.
// Plain browser JavaScript, no build step. Every URL is relative to this page
// (…/ui/), so the page works under any route_prefix the app is deployed at.
"use strict";

const TOP_K = 5;
const DEBOUNCE_MS = 250;  // after a stroke ends, wait this long for the next one
const MARGIN = 0.1;       // room around the ink in the image sent, as a share of its size

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const context = pad.getContext("2d");
const picker = $("model");
const result = $("result");

let inked = null;      // the drawing's bounding box {x0, y0, x1, y1}, null when blank
let last = null;       // the previous point of the stroke being drawn
let shownFile = null;  // the dropped or chosen file the pad shows
let debounce = 0;
let pending = null;    // the AbortController of the request in flight

function clearPad() {
  context.fillStyle = "#000";  // white ink on black, as the digits model was trained
  context.fillRect(0, 0, pad.width, pad.height);
  inked = null;
  shownFile = null;
}

function padPoint(event) {  // CSS pixels → canvas pixels (the canvas may be scaled)
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width,
          (event.clientY - box.top) * pad.height / box.height];
}

function strokeTo([x, y]) {
  context.strokeStyle = "#fff";
  context.lineWidth = pad.width / 9;  // thick, as the strokes of the digits it learnt
  context.lineCap = context.lineJoin = "round";
  context.beginPath();
  context.moveTo(...last);
  context.lineTo(x, y);
  context.stroke();
  last = [x, y];
  const r = context.lineWidth / 2;
  inked = {
    x0: Math.max(0, Math.min(inked?.x0 ?? x, x - r)),
    y0: Math.max(0, Math.min(inked?.y0 ?? y, y - r)),
    x1: Math.min(pad.width, Math.max(inked?.x1 ?? x, x + r)),
    y1: Math.min(pad.height, Math.max(inked?.y1 ?? y, y + r)),
  };
}

// The model learnt digits that fill their frame (scikit-learn's 8×8 digits),
// so the PNG sent is the ink's bounding box centred in a square.
function framedDrawing() {
  const width = inked.x1 - inked.x0;
  const height = inked.y1 - inked.y0;
  const side = Math.ceil(Math.max(width, height) * (1 + 2 * MARGIN));
  const frame = document.createElement("canvas");
  frame.width = frame.height = side;
  const frameContext = frame.getContext("2d");
  frameContext.fillStyle = "#000";
  frameContext.fillRect(0, 0, side, side);
  frameContext.drawImage(pad, inked.x0, inked.y0, width, height,
                         (side - width) / 2, (side - height) / 2, width, height);
  return new Promise((resolve) => frame.toBlob(resolve, "image/png"));
}

async function showFile(file) {  // a preview only: the server decodes the file itself
  clearPad();
  shownFile = file;
  try {
    const image = await createImageBitmap(file);
    if (shownFile !== file) return;  // another file or a drawing came first
    const scale = Math.min(pad.width / image.width, pad.height / image.height);
    const [w, h] = [image.width * scale, image.height * scale];
    context.drawImage(image, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch {
    // Not an image the browser can show; the server's answer will say why.
  }
}

async function answerOf(response) {  // errors are JSON {"error": ...}; a proxy's may not be
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { error: text || response.statusText };
  }
}

// Send one image; a newer request aborts the one in flight, so an old answer
// never replaces a newer one.
async function predict(body, type) {
  if (!picker.value) return;  // no model listed: the page already says why
  pending?.abort();
  const request = pending = new AbortController();
  result.setAttribute("aria-busy", "true");
  const url = new URL(`../models/${encodeURIComponent(picker.value)}/predict?top_k=${TOP_K}`,
                      document.baseURI);
  const started = performance.now();
  try {
    const response = await fetch(url, {
      method: "POST", body, headers: { "Content-Type": type }, signal: request.signal,
    });
    const answer = await answerOf(response);
    if (!response.ok) {
      showError(`The server answered ${response.status}: ${answer.error}`);
    } else {
      showPrediction(answer, performance.now() - started);
    }
  } catch (error) {
    if (error.name !== "AbortError") showError(`No answer from the server: ${error.message}`);
  } finally {
    if (pending === request) {
      pending = null;
      result.setAttribute("aria-busy", "false");
    }
  }
}

function showPrediction(answer, ms) {
  $("error").hidden = true;
  $("meta").textContent =
    `${answer.model} v${answer.version} answered in ${Math.round(ms)} ms (round trip)`;
  $("classes").replaceChildren(...answer.predictions[0].top_k.map(({ label, probability }) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    bar.style.setProperty("--share", probability);
    const share = document.createElement("span");
    share.className = "share";
    share.textContent = `${(probability * 100).toFixed(1)}%`;
    item.append(name, bar, share);
    return item;
  }));
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("meta").textContent = "No prediction.";
  $("classes").replaceChildren();
}

async function loadModels() {
  const response = await fetch(new URL("../models", document.baseURI));
  const listing = await answerOf(response);
  if (!response.ok) throw new Error(`${response.status}: ${listing.error}`);
  const images = listing.models.filter((model) => model.input === "image");
  if (images.length === 0) throw new Error("the server has no image model");
  picker.replaceChildren(...images.map((model) => new Option(model.name, model.name)));
  picker.value = images.some((m) => m.name === listing.default) ? listing.default : images[0].name;
  $("model-row").hidden = images.length < 2;
  $("meta").textContent = "Draw a digit to see what the model says.";
}

pad.addEventListener("pointerdown", (event) => {
  if (shownFile) clearPad();
  clearTimeout(debounce);
  pad.setPointerCapture(event.pointerId);
  last = padPoint(event);
  strokeTo(last);  // a dot, until the pointer moves
});
pad.addEventListener("pointermove", (event) => {
  if (last) strokeTo(padPoint(event));
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (!last) return;
    last = null;
    debounce = setTimeout(async () => predict(await framedDrawing(), "image/png"), DEBOUNCE_MS);
  });
}

$("clear").addEventListener("click", () => {
  clearTimeout(debounce);
  clearPad();
});

function takeFile(file) {
  if (!file) return;
  clearTimeout(debounce);
  showFile(file);
  predict(file, file.type || "application/octet-stream");
}
$("file").addEventListener("change", (event) => {
  takeFile(event.target.files[0]);
  event.target.value = "";  // choosing the same file again is a change too
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  takeFile(event.dataTransfer.files[0]);
});

clearPad();
loadModels().catch((error) => showError(`Cannot list the models: ${error.message}`));
