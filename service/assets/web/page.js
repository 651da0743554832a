// The prediction page: posts a clip to this server's /predict and shows the input beside the
// prediction. Plain browser APIs only (no build step, no library): the page must work on a host
// without internet access, from the files shipped in the Python package.
"use strict";

const NPY = "application/x-npy";
const FRAME_MS = 200; // the API's GIFs use 200 ms per frame; the animations here match them
const VIDEO_TYPES = { mp4: "video/mp4", webm: "video/webm", avi: "video/x-msvideo", mkv: "video/x-matroska", mov: "video/quicktime" };
const $ = (id) => document.getElementById(id);

const state = {
  models: [], // [{name, info}] info: the model's description (provider, shapes) when known
  byList: false, // the names came from GET /v1/models, so /predict is told which one
  requestTypes: [NPY, "application/json", "multipart/form-data"],
  answerTypes: [NPY, "application/json", "application/zip", "image/gif"],
  last: null, // {url, body, type, stem}: the request shown, re-sent for other download formats
  urls: [], // object URLs of the shown result, revoked when replaced
  timer: null,
  playing: !window.matchMedia("(prefers-reduced-motion: reduce)").matches,
  needsKey: false,
  examples: [], // [{name, shape, dtype, url}] from GET /v1/examples
  modelShape: null, // [T, C, H, W] of the chosen model, once known
};

// ---------------------------------------------------------------------------------------
// talking to the API
// ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, type) {
    super(message);
    this.status = status;
    this.type = type || ""; // the problem's type URI, e.g. urn:stlight:problem:wrong-size
  }
}

// The key lives only in the password field of this tab: never in storage, a cookie or the URL.
function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = $("api-key").value.trim();
  if (key) headers.set("Authorization", "Bearer " + key);
  return headers;
}

// An error answer as an ApiError of one line: the problem's detail (RFC 9457), the {"error"} of
// /v2 routes, or the text; with the problem's type when there is one.
async function apiError(response) {
  const contentType = response.headers.get("content-type") || "";
  let text = "";
  let problemType = "";
  try {
    if (contentType.includes("json")) {
      const body = await response.json();
      text = body.detail || body.error || body.title || JSON.stringify(body);
      if (typeof text !== "string") text = JSON.stringify(text);
      if (typeof body.type === "string") problemType = body.type;
    } else {
      text = (await response.text()).slice(0, 500);
    }
  } catch (err) {
    text = "";
  }
  const line = `${response.status} ${response.statusText || ""}`.trim() + (text ? `: ${text}` : "");
  return new ApiError(response.status, line, problemType);
}

async function call(url, init) {
  let response;
  try {
    response = await fetch(url, { ...(init || {}), headers: authHeaders(init && init.headers) });
  } catch (err) {
    throw new ApiError(0, `could not reach the server (${err.message})`);
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

const getJSON = async (url) => (await call(url)).json();

function providerName(provider) {
  if (!provider) return "";
  const short = String(provider).replace(/ExecutionProvider$/, "");
  return short === "CUDA" || short === "CPU" ? short : String(provider);
}

// GET /v1/models lists every served model version ({"default", "models": [...]}); /predict?model=NAME
// uses a model's highest version, so the page lists names once. A server that serves one model
// and has no /v1/models answers /v1/model.
function modelsFrom(body) {
  const list = Array.isArray(body) ? body : body.models || [];
  const byName = new Map();
  for (const entry of list) {
    const model = typeof entry === "string" ? { name: entry, info: null } : { name: entry.name, info: entry };
    const seen = byName.get(model.name);
    if (model.name && (!seen || Number(model.info?.version) > Number(seen.info?.version))) byName.set(model.name, model);
  }
  return { models: [...byName.values()], chosen: body.default };
}

async function loadModels() {
  const select = $("model");
  const info = $("model-info");
  try {
    let models = [];
    let chosen;
    try {
      ({ models, chosen } = modelsFrom(await getJSON("/v1/models")));
      state.byList = models.length > 0;
    } catch (err) {
      if (err.status !== 404 && err.status !== 405) throw err;
    }
    if (!models.length) {
      const one = await getJSON("/v1/model");
      models = [{ name: one.name, info: one }];
      state.byList = false;
    }
    state.models = models;
    state.needsKey = false;
    select.replaceChildren(
      ...models.map((m) => {
        const notReady = m.info && m.info.state && m.info.state !== "ready" ? ` (${m.info.state})` : "";
        return new Option(m.name + notReady, m.name, false, m.name === chosen);
      }),
    );
    describeModel();
  } catch (err) {
    state.needsKey = err.status === 401 || err.status === 403;
    select.replaceChildren(new Option("(unknown)", ""));
    info.textContent = state.needsKey
      ? "This server needs an API key: enter it below (the list reloads when you leave the field)."
      : `Could not list the models: ${err.message}`;
  }
}

async function currentModelInfo() {
  const model = state.models.find((m) => m.name === $("model").value);
  if (model && model.info && model.info.provider) return model.info;
  if (model && state.byList) {
    // a list entry without details: ask for that model's own description
    try {
      model.info = { ...(model.info || {}), ...(await getJSON(`/v1/model?model=${encodeURIComponent(model.name)}`)) };
    } catch (err) {
      /* shown without the details */
    }
  }
  return (model && model.info) || {};
}

async function describeModel() {
  const m = await currentModelInfo();
  const parts = [];
  if (m.in_frames) parts.push(`${m.in_frames} → ${m.out_frames} frames of ${m.channels}×${m.height}×${m.width}`);
  if (m.provider) parts.push(`on ${providerName(m.provider)}`);
  $("model-info").textContent = parts.join(", ") || " ";
  state.modelShape = m.in_frames ? [m.in_frames, m.channels, m.height, m.width] : null;
  labelExamples();
}

// The shipped examples fit the default model; say so beside each when another model is chosen.
function labelExamples() {
  for (const option of $("example").options) {
    const example = state.examples.find((e) => e.name === option.value);
    if (!example) continue;
    const fits = !state.modelShape || example.shape.slice(-4).join() === state.modelShape.join();
    option.textContent = `${example.name} (${example.shape.join("×")})` + (fits ? "" : " — not this model's shape");
  }
}

// What /predict accepts and can answer, as its OpenAPI document says (video types appear there
// when the server decodes video); the defaults are what every version of the API takes.
async function loadApiTypes() {
  try {
    const doc = await getJSON("/openapi.json");
    const op = doc.paths["/predict"].post;
    const requests = Object.keys((op.requestBody && op.requestBody.content) || {});
    const answers = Object.keys((op.responses["200"] && op.responses["200"].content) || {});
    if (requests.length) state.requestTypes = requests;
    if (answers.length) state.answerTypes = answers;
    // options the server offers show up as query parameters of /predict
    const params = new Map((op.parameters || []).map((p) => [p.name, p]));
    $("horizon-field").hidden = !params.has("horizon");
    const resize = params.get("resize");
    const schema = (resize && resize.schema) || {};
    const choices = schema.enum || (schema.anyOf || []).flatMap((s) => s.enum || []);
    if (choices.length) {
      const label = { none: "refuse them", fit: "scale to fit", crop: "scale, crop the centre" };
      $("resize").replaceChildren(...choices.map((c) => new Option(label[c] || c, c)));
      $("resize-field").hidden = false;
    }
  } catch (err) {
    /* keep the defaults */
  }
}

async function loadExamples() {
  const select = $("example");
  try {
    const { examples } = await getJSON("/v1/examples");
    state.examples = examples;
    select.replaceChildren(...examples.map((e) => new Option(e.name, e.name)));
    labelExamples();
    if (!examples.length) throw new Error("none shipped");
    if (!$("file").files.length) $("source-example").checked = true;
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      select.replaceChildren(new Option("(enter the API key to list them)", ""));
    } else {
      select.replaceChildren(new Option(`(no examples: ${err.message})`, ""));
      $("source-file").checked = true;
    }
  }
}

// ---------------------------------------------------------------------------------------
// clips: .npy parsing and frames as ImageData
// ---------------------------------------------------------------------------------------

// float -> 0-255 exactly as the service makes it: the value as float32 (what the API decodes
// to), clipped, times 255 in float32, rounded half to even (numpy's to_uint8)
function toByte(value) {
  const v = Math.fround(value);
  if (!(v > 0)) return 0;
  if (v >= 1) return 255;
  const x = Math.fround(v * 255);
  let r = Math.round(x);
  if (r - x === 0.5 && r % 2 === 1) r -= 1;
  return r;
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

// A .npy file -> {shape, bytes}: pixels 0-255, C order. Enough for previews; the API does the checking.
function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) throw new Error("not an .npy file");
  const view = new DataView(buffer);
  const [headerLength, start] = bytes[6] === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + headerLength));
  const descr = (/'descr':\s*'([^']+)'/.exec(header) || [])[1];
  const shapeText = (/'shape':\s*\(([^)]*)\)/.exec(header) || [])[1];
  if (!descr || shapeText === undefined || /'fortran_order':\s*True/.test(header)) throw new Error("unsupported .npy header");
  const shape = shapeText.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const little = descr[0] !== ">";
  const kind = descr.slice(1);
  const size = { u1: 1, f2: 2, f4: 4, f8: 8 }[kind];
  const offset = start + headerLength;
  if (!size || offset + count * size > bytes.length) throw new Error(`cannot preview dtype ${descr}`);
  const out = new Uint8ClampedArray(count);
  if (kind === "u1") out.set(bytes.subarray(offset, offset + count));
  for (let i = 0; kind !== "u1" && i < count; i++) {
    const at = offset + i * size;
    const v = kind === "f4" ? view.getFloat32(at, little) : kind === "f8" ? view.getFloat64(at, little) : halfToFloat(view.getUint16(at, little));
    out[i] = toByte(v);
  }
  return { shape, bytes: out };
}

// (T, C, H, W) or (B, T, C, H, W) -> one ImageData per frame of the first clip (grey for C = 1,
// RGB for C = 3, the first channel otherwise)
function framesOf(array) {
  const shape = array.shape.length === 5 ? array.shape.slice(1) : array.shape;
  if (shape.length !== 4) throw new Error(`shape (${array.shape.join(", ")}) is not (T, C, H, W)`);
  const [T, C, H, W] = shape;
  const plane = H * W;
  const frames = [];
  for (let t = 0; t < T; t++) {
    const image = new ImageData(W, H);
    const base = t * C * plane;
    for (let i = 0; i < plane; i++) {
      const r = array.bytes[base + i];
      const g = C >= 3 ? array.bytes[base + plane + i] : r;
      const b = C >= 3 ? array.bytes[base + 2 * plane + i] : r;
      image.data.set([r, g, b, 255], i * 4);
    }
    frames.push(image);
  }
  return frames;
}

function imageDataOf(source, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0);
  return ctx.getImageData(0, 0, width, height);
}

// An animated GIF's frames, each repeated by its display time (the service reads GIFs the same
// way: encoders merge identical consecutive frames into one shown longer).
async function gifFrames(file) {
  if (!("ImageDecoder" in window)) throw new Error("this browser cannot decode GIF frames (no ImageDecoder)");
  const decoder = new ImageDecoder({ data: await file.arrayBuffer(), type: "image/gif" });
  await decoder.tracks.ready;
  const count = decoder.tracks.selectedTrack.frameCount;
  const decoded = [];
  for (let i = 0; i < count; i++) {
    const { image } = await decoder.decode({ frameIndex: i });
    decoded.push({ data: imageDataOf(image, image.displayWidth, image.displayHeight), duration: image.duration || 0 });
    image.close();
  }
  decoder.close();
  const unit = Math.min(...decoded.map((f) => f.duration).filter((d) => d > 0)) || 1;
  return decoded.flatMap((f) => Array(Math.max(1, Math.round((f.duration || unit) / unit))).fill(f.data));
}

const frameBlob = (image) =>
  new Promise((resolve) => {
    const canvas = document.createElement("canvas");
    canvas.width = image.width;
    canvas.height = image.height;
    canvas.getContext("2d").putImageData(image, 0, 0);
    canvas.toBlob(resolve, "image/png");
  });

const byName = (a, b) => a.name.localeCompare(b.name, undefined, { numeric: true });
const extension = (name) => (name.split(".").pop() || "").toLowerCase();

// The chosen clip -> what to POST, and what to show as the input.
// {body, type, stem, frames: ImageData[] | null, video: File | null}
async function buildRequest() {
  if ($("source-example").checked) {
    const name = $("example").value;
    if (!name && state.needsKey) throw new ApiError(401, "this server needs an API key: enter it in the API key field");
    if (!name) throw new Error("no example clip to send; choose your own file");
    const body = await (await call(`/v1/examples/${encodeURIComponent(name)}`)).arrayBuffer();
    return { body, type: NPY, stem: name, frames: framesOf(parseNpy(body)), video: null };
  }
  const files = [...$("file").files].sort(byName);
  if (!files.length) throw new Error("choose a file first: a .npy, a GIF, a video or the frame images");
  const first = files[0];
  const stem = first.name.replace(/\.[^.]+$/, "") || "clip";
  const ext = extension(first.name);
  if (files.length === 1 && (ext === "npy" || first.type === NPY)) {
    const body = await first.arrayBuffer();
    let frames = null;
    try {
      frames = framesOf(parseNpy(body));
    } catch (err) {
      frames = null; // not previewable: the API's answer says what is wrong with it
    }
    return { body, type: NPY, stem, frames, video: null };
  }
  if (files.length === 1 && (first.type.startsWith("video/") || ext in VIDEO_TYPES)) {
    return { body: first, type: first.type || VIDEO_TYPES[ext], stem, frames: null, video: first };
  }
  if (files.length === 1 && (first.type === "image/gif" || ext === "gif")) {
    let frames = null;
    try {
      frames = await gifFrames(first);
    } catch (err) {
      if (!state.requestTypes.includes("image/gif")) throw err;
    }
    if (state.requestTypes.includes("image/gif") || !frames) return { body: first, type: "image/gif", stem, frames, video: null };
    // a server that takes no GIF bodies takes its frames as images
    const form = new FormData();
    const blobs = await Promise.all(frames.map(frameBlob));
    blobs.forEach((blob, i) => form.append("frames", blob, `frame_${String(i).padStart(3, "0")}.png`));
    return { body: form, type: null, stem, frames, video: null };
  }
  const form = new FormData();
  const frames = [];
  for (const file of files) {
    form.append("frames", file, file.name);
    try {
      const bitmap = await createImageBitmap(file);
      frames.push(imageDataOf(bitmap, bitmap.width, bitmap.height));
      bitmap.close();
    } catch (err) {
      /* not an image the browser reads: the API will say so */
    }
  }
  return { body: form, type: null, stem, frames: frames.length === files.length ? frames : null, video: null };
}

function predictUrl() {
  const query = new URLSearchParams();
  const model = $("model").value;
  if (state.byList && model) query.set("model", model);
  const horizon = $("horizon").value.trim();
  if (!$("horizon-field").hidden && horizon) query.set("horizon", horizon);
  const resize = $("resize").value;
  if (!$("resize-field").hidden && resize && resize !== "none") query.set("resize", resize);
  return "/predict" + (query.size ? `?${query}` : "");
}

async function post(request, accept) {
  const headers = { Accept: accept };
  if (request.type) headers["Content-Type"] = request.type; // FormData sets its own boundary
  return call(request.url, { method: "POST", body: request.body, headers });
}

// ---------------------------------------------------------------------------------------
// showing the result
// ---------------------------------------------------------------------------------------

function paint(canvas, image) {
  if (canvas.width !== image.width || canvas.height !== image.height) {
    canvas.width = image.width;
    canvas.height = image.height;
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
}

function fillStrip(strip, frames, label) {
  strip.replaceChildren(
    ...frames.map((image, t) => {
      const figure = document.createElement("figure");
      figure.setAttribute("role", "listitem");
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `${label} frame ${t + 1} of ${frames.length}`);
      canvas.dataset.frame = String(t);
      paint(canvas, image);
      const caption = document.createElement("figcaption");
      caption.textContent = String(t + 1);
      figure.append(canvas, caption);
      return figure;
    }),
  );
}

function animate(inputFrames, predFrames) {
  clearInterval(state.timer);
  let tick = 0;
  const step = () => {
    if (inputFrames && inputFrames.length) paint($("input-anim"), inputFrames[tick % inputFrames.length]);
    paint($("pred-anim"), predFrames[tick % predFrames.length]);
    tick += 1;
  };
  step();
  state.timer = setInterval(() => state.playing && step(), FRAME_MS);
}

function setPlaying(playing) {
  state.playing = playing;
  $("play").textContent = playing ? "Pause" : "Play";
  $("play").setAttribute("aria-pressed", String(playing));
  const video = $("input-stage").querySelector("video");
  if (video) (playing ? video.play() : video.pause())?.catch?.(() => {});
}

function showInput(request) {
  const stage = $("input-stage");
  stage.querySelector("video")?.remove();
  $("input-anim").hidden = Boolean(request.video);
  if (request.video) {
    const video = document.createElement("video");
    video.src = keepUrl(URL.createObjectURL(request.video));
    Object.assign(video, { muted: true, loop: true, autoplay: state.playing, playsInline: true, controls: true });
    video.setAttribute("aria-label", "Input video");
    stage.append(video);
  }
  const frames = request.frames || [];
  fillStrip($("input-strip"), frames, "input");
  $("input-caption").textContent = request.video ? "Input (video, decoded by the server)" : `Input · ${frames.length} frames`;
  if (!frames.length && !request.video) $("input-caption").textContent = "Input (no preview for this file)";
}

function keepUrl(url) {
  state.urls.push(url);
  return url;
}

function clearResult() {
  clearInterval(state.timer);
  state.urls.forEach((url) => URL.revokeObjectURL(url));
  state.urls = [];
}

function downloadButtons(request) {
  const list = $("downloads");
  list.querySelectorAll("li.other").forEach((li) => li.remove());
  const formats = [
    ["image/gif", "gif", "GIF"],
    ["video/mp4", "mp4", "MP4"],
    ["video/webm", "webm", "WebM"],
  ].filter(([type]) => state.answerTypes.includes(type));
  if (!formats.length) return;
  const li = document.createElement("li");
  li.className = "other";
  li.append("Input, then prediction: ");
  for (const [type, ext, name] of formats) {
    // made on request: each is another inference and encoding on the server
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = `Make ${name}`;
    button.setAttribute("aria-label", `Make ${name}: the input, then the prediction`);
    button.addEventListener("click", async () => {
      button.disabled = true;
      setStatus(`Asking the server for ${name}…`);
      try {
        const blob = await (await post(request, type)).blob();
        const link = document.createElement("a");
        link.href = keepUrl(URL.createObjectURL(blob));
        link.download = `${request.stem}-prediction.${ext}`;
        link.textContent = link.download;
        button.replaceWith(link);
        link.click();
        setStatus(`${link.download} is ready.`);
      } catch (err) {
        button.disabled = false;
        showError(err.message);
        setStatus("");
      }
    });
    li.append(button);
  }
  list.append(li);
}

// ---------------------------------------------------------------------------------------
// the form
// ---------------------------------------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

// The API's wrong-size answer for a video says how to scale it through the API (?resize=) and the
// CLI (--resize); on this page that choice is the resize control, so the message points there.
function onThisPage(err) {
  const field = $("resize-field");
  const [said] = err.message.split(" Scale them");
  if (!err.type.endsWith(":wrong-size") || field.hidden || !said.includes("video frames are")) return err.message;
  const choices = [...$("resize").options].filter((o) => o.value !== "none").map((o) => `“${o.text}”`);
  const label = field.querySelector("label").textContent.trim();
  $("resize").focus();
  return `${said} Choose ${choices.join(" or ")} in “${label}” above, then predict again.`;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function predict(event) {
  event.preventDefault();
  const button = $("predict");
  button.disabled = true;
  showError("");
  setStatus("Predicting…");
  try {
    const request = await buildRequest();
    request.url = predictUrl();
    const began = performance.now();
    const response = await post(request, NPY);
    const answer = await response.arrayBuffer();
    const latency = performance.now() - began;
    const predicted = framesOf(parseNpy(answer));
    const info = await currentModelInfo();

    clearResult();
    state.last = request;
    showInput(request);
    fillStrip($("pred-strip"), predicted, "predicted");
    $("pred-caption").textContent = `Predicted · ${predicted.length} frames`;
    animate(request.frames, predicted);
    const serverTiming = response.headers.get("server-timing");
    const provider = response.headers.get("x-provider") || info.provider;
    $("meta").textContent =
      [`${$("model").value || info.name || "model"}`, provider && `on ${providerName(provider)}`, `${Math.round(latency)} ms round trip`]
        .filter(Boolean)
        .join(" · ") + (serverTiming ? ` (server: ${serverTiming})` : "");
    const npy = $("download-npy");
    npy.href = keepUrl(URL.createObjectURL(new Blob([answer], { type: NPY })));
    npy.download = npy.textContent = `${request.stem}-prediction.npy`;
    downloadButtons(request);
    $("result").hidden = false;
    setStatus(`Predicted ${predicted.length} frames in ${Math.round(latency)} ms.`);
    showOnline(); // the answer is kept now; its grade shows once a client posts the truth
  } catch (err) {
    clearResult();
    $("result").hidden = true; // a previous clip's result beside this error would read as this clip's
    showError(err instanceof ApiError ? onThisPage(err) : err.message);
    setStatus("The server did not predict this clip.");
    if (err.status === 401 || err.status === 403) $("api-key").focus();
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// online accuracy of the chosen model: its "online" figures from /v1/model, read again when the
// model changes, after each prediction, on Refresh and every 15 s while the tab is visible
// ---------------------------------------------------------------------------------------

const ONLINE_REFRESH_MS = 15000;

function modelUrl() {
  const name = $("model").value;
  return state.byList && name ? `/v1/model?model=${encodeURIComponent(name)}` : "/v1/model";
}

function number(value, digits) {
  // null: an exact frame was graded (PSNR is infinite, which JSON cannot carry)
  return value === null || value === undefined ? "∞" : Number(value).toFixed(digits);
}

async function showOnline() {
  const summary = $("online-summary");
  const table = $("online-table");
  let online;
  try {
    online = (await getJSON(modelUrl())).online;
  } catch (err) {
    summary.textContent = `Could not read the figures: ${err.message}`;
    table.hidden = true;
    return;
  }
  if (!online) {
    summary.textContent = "This server keeps no answers for grading.";
    table.hidden = true;
    return;
  }
  const steps = online.steps || [];
  summary.textContent =
    `${online.graded} answer(s) graded, ${online.expired} dropped before their truth came.` +
    (steps.length ? "" : " Nothing graded yet for this model.");
  $("online-rows").replaceChildren(
    ...steps.map((s) => {
      const row = document.createElement("tr");
      for (const text of [s.step, s.frames, number(s.mse, 3), number(s.mae, 3), number(s.psnr, 2), number(s.ssim, 4)]) {
        const cell = document.createElement("td");
        cell.textContent = String(text);
        row.append(cell);
      }
      return row;
    }),
  );
  table.hidden = !steps.length;
  table.setAttribute("data-graded", String(online.graded));
}

function init() {
  $("predict-form").addEventListener("submit", predict);
  $("example").addEventListener("change", () => ($("source-example").checked = true));
  $("file").addEventListener("change", () => ($("source-file").checked = true));
  $("model").addEventListener("change", () => Promise.all([describeModel(), showOnline()]));
  $("online-refresh").addEventListener("click", showOnline);
  setInterval(() => {
    if (!document.hidden) showOnline();
  }, ONLINE_REFRESH_MS);
  $("play").addEventListener("click", () => setPlaying(!state.playing));
  $("api-key").addEventListener("change", () => {
    if (state.needsKey) Promise.all([loadModels().then(showOnline), loadExamples(), loadApiTypes()]);
  });
  setPlaying(state.playing);
  Promise.all([loadModels().then(showOnline), loadExamples(), loadApiTypes()]).then(() =>
    document.body.setAttribute("data-ready", "true"),
  );
}

init();
