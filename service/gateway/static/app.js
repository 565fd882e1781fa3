// unclip-serve playground: a small, dependency-free client of the service's native API.
//
// The API in four calls (this file uses each of them; read it top to bottom):
//   POST   /v1/jobs                   {"op": "generate" | "variation" | "interpolate" | "text_diff" |
//                                      "inpaint", ...fields}  → 202 and the job {id, status, ...}
//   GET    /v1/jobs/{id}/events       server-sent events: `progress` events carrying the job (status,
//                                      progress {stage, step, total}), then one `status` event with the
//                                      final job, after which the server closes the stream
//   GET    /v1/jobs/{id}/images/{i}   the i-th PNG (`?size=` downscales)
//   DELETE /v1/jobs/{id}              cancel: a queued job at once, a running one at its next step
// Errors are JSON: {"detail": "what to fix"} or, for a 422, {"detail": [{"loc": [...], "msg", "type"}]};
// a 429 carries Retry-After. With API keys on, every call sends `Authorization: Bearer <key>` — which is
// why the events are read with fetch() and not EventSource (it cannot send headers), and why images are
// fetched as blobs rather than put in <img src> directly.
//
// Sections: 1 settings · 2 API client · 3 server-sent events · 4 form · 5 image inputs · 6 mask brush ·
// 7 progress · 8 results and frame player · 9 gallery · 10 start-up.

// ---- 1. Settings ------------------------------------------------------------------------------------

const OPS = {
  generate: { action: "Generate", hint: "Text → pictures: CLIP, the prior, the decoder, the upsamplers." },
  variation: { action: "Make variations", hint: "Pictures that keep an image's content and style." },
  interpolate: { action: "Interpolate", hint: "Frames blending from one image into another." },
  text_diff: { action: "Run text diff", hint: "Frames moving an image from its caption toward a new one." },
  inpaint: { action: "Inpaint", hint: "Repaint the area you brush over, following the prompt." },
};
const FRAME_OPS = new Set(["interpolate", "text_diff"]); // they answer `frames` images, not `n`
const STAGES = {
  prior: "Prior",
  invert: "Inverting the image",
  decoder: "Decoder · 64 px",
  sr256: "Upsampling · 256 px",
  sr1024: "Upsampling · 1024 px",
};
const KEY_STORAGE = "unclip.apiKey"; // localStorage: the key outlives the visit
const GALLERY_STORAGE = "unclip.gallery"; // sessionStorage: the gallery is this visit's
const PREVIEW_SIDE = 256; // the gallery stores images up to this side as data URLs
const PLAYER_FPS = 6;

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

// ---- 2. API client ----------------------------------------------------------------------------------

/** An API answer that was not 2xx: its status, messages by field, and Retry-After when sent. */
class ApiError extends Error {
  constructor(status, message, fieldErrors = [], retryAfter = null) {
    super(message);
    this.status = status;
    this.fieldErrors = fieldErrors; // [{field, message}]; field is null when no form field matches
    this.retryAfter = retryAfter;
  }

  static async from(response) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.detail ?? body.error?.message ?? detail; // native shape, else OpenAI's
    } catch {
      // not JSON: keep the status text
    }
    const retryAfter = Number(response.headers.get("Retry-After")) || null;
    if (Array.isArray(detail)) {
      // 422: [{loc: ["body", ("generate",) "prompt"], msg}] — the field is the last part of loc we show.
      const fieldErrors = detail.map((error) => ({ field: fieldOf(error.loc ?? []), message: error.msg }));
      return new ApiError(response.status, fieldErrors.map((e) => e.message).join("; "), fieldErrors, retryAfter);
    }
    return new ApiError(response.status, String(detail), [], retryAfter);
  }
}

function fieldOf(loc) {
  const shown = loc.filter((part) => typeof part === "string" && $(`[data-error-for="${part}"]`));
  return shown.at(-1) ?? null;
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) ?? "";
}

/** fetch() on this origin with the API key; throws ApiError for a non-2xx answer. */
async function api(path, init = {}) {
  const headers = new Headers(init.headers);
  if (apiKey()) headers.set("Authorization", `Bearer ${apiKey()}`);
  const response = await fetch(path, { ...init, headers });
  if (!response.ok) throw await ApiError.from(response);
  return response;
}

async function submitJob(body) {
  const response = await api("/v1/jobs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return response.json();
}

async function getJob(id) {
  return (await api(`/v1/jobs/${id}`)).json();
}

async function cancelJob(id) {
  return (await api(`/v1/jobs/${id}`, { method: "DELETE" })).json();
}

/** One result image as a Blob. Paths are built here, not taken from the job's absolute URLs, so that
 * the page talks to its own origin even behind a proxy with another UNCLIP_PUBLIC_URL. */
async function fetchImage(jobId, index, size = null) {
  const query = size ? `?size=${size}` : "";
  return (await api(`/v1/jobs/${jobId}/images/${index}${query}`)).blob();
}

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/** Follows a job until it ends, calling onUpdate(job) on every change; resolves to the final job.
 * A dropped stream (network, proxy timeout) is resumed after a look at the job's current state. */
async function followJob(job, onUpdate) {
  for (;;) {
    try {
      const response = await api(`/v1/jobs/${job.id}/events`, { headers: { Accept: "text/event-stream" } });
      for await (const event of readServerSentEvents(response.body)) {
        job = JSON.parse(event.data);
        onUpdate(job);
        if (event.type === "status") return job;
      }
    } catch (error) {
      if (error instanceof ApiError) throw error;
      // a network error: fall through, look at the job, reconnect
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
    job = await getJob(job.id);
    onUpdate(job);
    if (TERMINAL.has(job.status)) return job;
  }
}

// ---- 3. Server-sent events over fetch ---------------------------------------------------------------

/** Yields {type, data, id} per event of a text/event-stream body (the WHATWG format: `field: value`
 * lines, events separated by a blank line; `data` lines are joined with "\n"). */
async function* readServerSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { type: "message", data: [], id: null };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // a comment (keep-alive)
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = text;
      }
      if (event.data.length) yield { ...event, data: event.data.join("\n") };
    }
  }
}

// ---- 4. The form: operation, body, errors -----------------------------------------------------------

const form = $("#job-form");
const submitButton = $("#submit");

function currentOp() {
  return form.elements.op.value;
}

/** Shows the controls of `op`, hides and disables the others (disabled ones are neither sent nor
 * validated by the browser). */
function selectOp(op) {
  form.elements.op.value = op;
  for (const element of $$("[data-ops]")) {
    const shown = element.dataset.ops.split(" ").includes(op);
    element.hidden = !shown;
    if (element instanceof HTMLFieldSetElement) element.disabled = !shown;
  }
  $("#op-hint").textContent = OPS[op].hint;
  submitButton.textContent = OPS[op].action;
  clearErrors();
}

/** The JSON body of a job: `op`, every enabled named control that is not empty, and the images. */
function readBody(op) {
  const body = { op };
  for (const control of form.elements) {
    if (!control.name || control.name === "op" || control.matches(":disabled")) continue;
    if (control.type === "radio" && !control.checked) continue;
    if (control.type === "checkbox") { // a list field (webhook_events): the ticked values
      if (control.checked) (body[control.name] ??= []).push(control.value);
      continue;
    }
    const value = control.value.trim();
    if (value === "") continue; // unset: the server's default
    if (control.name === "seed") body.seed = exactInteger(value);
    else if (control.type === "number" || control.name === "size") body[control.name] = Number(value);
    else body[control.name] = value;
  }
  for (const slot of visibleSlots()) body[slot.field] = slot.dataUrl; // data: URLs are accepted as is
  if (op === "inpaint") body.mask = painter.toDataUrl();
  return body;
}

/** Seeds go up to 2^63 − 1, past what a JS number holds exactly; JSON.rawJSON writes the digits as
 * they are (browsers without it send a rounded number, which the server still accepts). */
function exactInteger(text) {
  const plain = /^\d+$/.test(text) && typeof JSON.rawJSON === "function";
  return plain ? JSON.rawJSON(BigInt(text).toString()) : Number(text); // BigInt drops leading zeros
}

/** What the server would say anyway, said before the upload: missing images, an empty mask. */
function missingInputs(op) {
  const errors = [];
  for (const slot of visibleSlots()) {
    if (!slot.dataUrl) errors.push({ field: slot.field, message: "Choose an image (or use one from the gallery)." });
  }
  if (op === "inpaint" && slots.image.dataUrl && painter.isEmpty()) {
    errors.push({ field: "mask", message: "Paint over the area to repaint." });
  }
  return errors;
}

function clearErrors() {
  for (const element of $$("[data-error-for]")) element.textContent = "";
  for (const element of $$("[aria-invalid]")) element.removeAttribute("aria-invalid");
}

/** Puts each message next to its field (the form's own error line when none matches) and moves the
 * focus to the first field concerned. */
function showErrors(errors) {
  let first = null;
  for (const { field, message } of errors) {
    const target = (field && $(`[data-error-for="${field}"]`)) || $("#form-error");
    target.textContent = target.textContent ? `${target.textContent} ${message}` : message;
    const control = field && document.getElementById(field === "api_key" ? "api-key" : field);
    if (control) control.setAttribute("aria-invalid", "true");
    first ??= control || target;
  }
  if (!first) return;
  const advanced = first.closest("details");
  if (advanced) advanced.open = true;
  if (first.matches("input, textarea, select, button")) first.focus();
  first.scrollIntoView({ block: "nearest" });
}

/** An API error shown where it belongs: 401 at the key, 429 as a countdown, 422 per field. */
function showApiError(error) {
  if (!(error instanceof ApiError)) {
    showErrors([{ field: null, message: `The server cannot be reached (${error.message}).` }]);
    return;
  }
  if (error.status === 401) {
    showErrors([{ field: "api_key", message: `${error.message}. Enter this server's API key.` }]);
  } else if (error.status === 429) {
    holdSubmit(error.retryAfter ?? 5, error.message);
  } else if (error.fieldErrors.length) {
    showErrors(error.fieldErrors);
  } else {
    showErrors([{ field: null, message: error.message }]);
  }
}

let heldUntil = 0; // after a 429, no submission before this time (ms)

/** After a 429: the submit button waits out Retry-After, counting down. */
function holdSubmit(seconds, message) {
  const line = $("#form-error");
  heldUntil = Date.now() + seconds * 1000;
  submitButton.disabled = true;
  const tick = () => {
    line.textContent = `${message} — ready in ${seconds} s.`;
    if (seconds-- > 0) return setTimeout(tick, 1000);
    line.textContent = "";
    submitButton.disabled = false;
  };
  tick();
}

function describeBody(body) {
  // The body as sent, with base64 images shortened so that it reads as an example.
  const short = (value) =>
    typeof value === "string" && value.startsWith("data:")
      ? `<${value.slice(5, value.indexOf(";"))}, ${Math.round((value.length * 3) / 4 / 1024)} KiB, base64>`
      : value;
  return `POST /v1/jobs\n${JSON.stringify(body, (key, value) => short(value), 2)}`;
}

let busy = false; // one job at a time: from the submission until its pictures are shown
let running = null; // the newest snapshot of the job being followed, once queued

async function onSubmit(event) {
  event.preventDefault();
  if (busy) return; // e.g. Enter pressed again in the prompt
  clearErrors();
  const op = currentOp();
  const missing = missingInputs(op);
  if (missing.length) return showErrors(missing);

  const body = readBody(op);
  $("#request-body").textContent = describeBody(body);
  busy = true;
  submitButton.disabled = true;
  try {
    showQueued();
    const job = await submitJob(body);
    running = job;
    const final = await followJob(job, (update) => showProgress((running = update)));
    await showFinal(final);
  } catch (error) {
    hideProgress();
    if (!running) stateBadge.hidden = true; // nothing was queued
    showApiError(error);
  } finally {
    busy = false;
    running = null;
    submitButton.disabled = Date.now() < heldUntil;
  }
}

// ---- 5. Image inputs: drop, choose, or take from the gallery ----------------------------------------

/** One image field (`image`, `image_a`, `image_b`): a drop zone with a file input and a preview. */
class ImageSlot {
  constructor(element, onChange = () => {}) {
    this.element = element;
    this.field = element.dataset.slot;
    this.input = $("input[type=file]", element);
    this.img = $(".preview img", element);
    this.onChange = onChange;
    this.dataUrl = null;

    this.input.addEventListener("change", () => this.input.files[0] && this.setFile(this.input.files[0]));
    element.addEventListener("dragover", (event) => {
      event.preventDefault();
      element.classList.add("over");
    });
    element.addEventListener("dragleave", () => element.classList.remove("over"));
    element.addEventListener("drop", (event) => {
      event.preventDefault();
      element.classList.remove("over");
      const galleryId = event.dataTransfer.getData("application/x-unclip-gallery");
      if (galleryId) return useAsInput(galleryId, this);
      if (event.dataTransfer.files[0]) this.setFile(event.dataTransfer.files[0]);
    });
  }

  async setFile(file) {
    if (!["image/png", "image/jpeg"].includes(file.type)) {
      showErrors([{ field: this.field, message: `${file.name} is not a PNG or JPEG.` }]);
      return;
    }
    await this.set(await blobToDataUrl(file));
  }

  async set(dataUrl) {
    $(`[data-error-for="${this.field}"]`).textContent = "";
    this.dataUrl = dataUrl;
    this.img.src = dataUrl;
    await this.img.decode();
    $(".preview", this.element).hidden = false;
    this.element.classList.add("filled");
    this.onChange(this);
  }
}

function blobToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

const slots = Object.fromEntries(
  $$("[data-slot]").map((element) => {
    const slot = new ImageSlot(element, (changed) => changed.field === "image" && painter.reset(changed.img));
    return [slot.field, slot];
  }),
);

function visibleSlots() {
  return Object.values(slots).filter((slot) => !slot.element.closest("[data-ops]").hidden);
}

// ---- 6. The mask brush (inpaint) --------------------------------------------------------------------

/** A canvas over the input image, at the image's own resolution, on which the pointer paints the
 * area to repaint. Sent as a black PNG with white where painted (white = repaint). */
class MaskPainter {
  constructor(canvas, brushInput) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d", { willReadFrequently: true });
    this.brushInput = brushInput;
    this.last = null; // the previous pointer position while a stroke goes on
    canvas.addEventListener("pointerdown", (event) => this.start(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    for (const type of ["pointerup", "pointercancel"]) canvas.addEventListener(type, () => (this.last = null));
  }

  reset(img) {
    this.canvas.width = img.naturalWidth;
    this.canvas.height = img.naturalHeight;
  }

  /** The brush diameter in image pixels: the slider is a percentage of the image's width. */
  get brushWidth() {
    return Math.max(1, (Number(this.brushInput.value) / 100) * this.canvas.width);
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * this.canvas.width,
      y: ((event.clientY - box.top) / box.height) * this.canvas.height,
    };
  }

  start(event) {
    this.canvas.setPointerCapture(event.pointerId);
    this.last = this.point(event);
    const ctx = this.context;
    ctx.fillStyle = maskColor();
    ctx.beginPath();
    ctx.arc(this.last.x, this.last.y, this.brushWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
    $('[data-error-for="mask"]').textContent = "";
  }

  move(event) {
    if (!this.last) return;
    const next = this.point(event);
    const ctx = this.context;
    ctx.strokeStyle = maskColor();
    ctx.lineWidth = this.brushWidth;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(this.last.x, this.last.y);
    ctx.lineTo(next.x, next.y);
    ctx.stroke();
    this.last = next;
  }

  clear() {
    this.context.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  /** Painted becomes unpainted and the other way round ("repaint everything but this"). */
  invert() {
    const painted = document.createElement("canvas");
    painted.width = this.canvas.width;
    painted.height = this.canvas.height;
    painted.getContext("2d").drawImage(this.canvas, 0, 0);
    const ctx = this.context;
    ctx.globalCompositeOperation = "copy";
    ctx.fillStyle = maskColor();
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.globalCompositeOperation = "destination-out";
    ctx.drawImage(painted, 0, 0);
    ctx.globalCompositeOperation = "source-over";
  }

  isEmpty() {
    const { data } = this.context.getImageData(0, 0, this.canvas.width, this.canvas.height);
    for (let alpha = 3; alpha < data.length; alpha += 4) if (data[alpha]) return false;
    return true;
  }

  toDataUrl() {
    const mask = document.createElement("canvas");
    mask.width = this.canvas.width;
    mask.height = this.canvas.height;
    const ctx = mask.getContext("2d");
    ctx.drawImage(this.canvas, 0, 0);
    ctx.globalCompositeOperation = "source-in"; // every painted pixel turns white...
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, mask.width, mask.height);
    ctx.globalCompositeOperation = "destination-over"; // ...over a black ground
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, mask.width, mask.height);
    return mask.toDataURL("image/png");
  }
}

function maskColor() {
  return getComputedStyle(document.documentElement).getPropertyValue("--mask").trim();
}

const painter = new MaskPainter($(".mask-canvas"), $("#brush"));

// ---- 7. Progress --------------------------------------------------------------------------------------

const progressBox = $("#job-progress");
const progressBar = $("#progress-bar");
const stateBadge = $("#job-state");

function showState(status) {
  stateBadge.hidden = false;
  stateBadge.textContent = status;
  stateBadge.className = `badge ${status}`;
}

function showQueued() {
  showState("submitting");
  progressBox.hidden = false;
  $("#job-stage").textContent = "Submitting";
  $("#job-steps").textContent = "";
  progressBar.removeAttribute("value"); // indeterminate until the first step
  $("#cancel").disabled = true;
}

/** One job snapshot from the event stream → the badge, the stage, the bar. */
function showProgress(job) {
  showState(job.status);
  if (TERMINAL.has(job.status)) return hideProgress();
  progressBox.hidden = false;
  $("#cancel").disabled = job.cancel_requested;
  const { progress } = job;
  if (job.cancel_requested) {
    $("#job-stage").textContent = "Cancelling…";
  } else if (progress) {
    $("#job-stage").textContent = STAGES[progress.stage] ?? progress.stage;
    $("#job-steps").textContent = `${progress.step} / ${progress.total}`;
    progressBar.max = progress.total;
    progressBar.value = progress.step;
  } else {
    $("#job-stage").textContent = job.status === "queued" ? "Queued" : "Starting";
  }
}

function hideProgress() {
  progressBox.hidden = true;
}

async function onCancel() {
  if (!running) return;
  const id = running.id;
  $("#cancel").disabled = true;
  try {
    const answer = await cancelJob(id);
    // the event stream may have shown the job's end while the DELETE was answered: keep the newer state
    if (running?.id === id && !TERMINAL.has(running.status)) showProgress(answer);
  } catch (error) {
    showApiError(error);
  }
}

// ---- 8. Results and the frame player ----------------------------------------------------------------

/** A finished job: its images fetched once, shown, and added to the gallery. */
async function showFinal(job) {
  showState(job.status);
  if (job.status === "failed") {
    showErrors([{ field: null, message: `The job failed: ${job.error}` }]);
    return;
  }
  if (job.status === "cancelled") return;
  const items = [];
  for (let index = 0; index < job.image_count; index++) {
    items.push(await galleryItem(job, index));
  }
  showResult(job, items);
  addToGallery(items);
}

let player = null; // the interval timer while the loop plays

function showResult(job, items) {
  stopPlayer();
  $("#result-empty").hidden = true;
  const seconds = (job.finished_at - job.created_at).toFixed(1);
  const meta = $("#result-meta");
  meta.textContent = `${job.op.replace("_", " ")} · ${job.params.size} px · seed ${job.params.seed} · ${seconds} s`;
  meta.hidden = false;
  // the model may have drawn a rewrite of the prompt (the job's revised_prompt): say so, as text
  const revised = $("#result-revised");
  revised.textContent = job.revised_prompt ? `Drawn as: ${job.revised_prompt}` : "";
  revised.hidden = !job.revised_prompt;
  const grid = $("#result-grid");
  const strip = $("#strip");
  grid.replaceChildren();
  strip.replaceChildren();
  $("#player").hidden = !FRAME_OPS.has(job.op);
  if (FRAME_OPS.has(job.op)) {
    items.forEach((item, frame) => {
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-label", `Frame ${frame + 1}`);
      button.append(Object.assign(document.createElement("img"), { src: imageSource(item), alt: "" }));
      button.addEventListener("click", () => showFrame(frame));
      strip.append(document.createElement("li"));
      strip.lastChild.append(button);
    });
    showFrame(0);
    return;
  }
  for (const item of items) {
    const figure = document.createElement("figure");
    const img = Object.assign(document.createElement("img"), { src: imageSource(item), alt: item.title });
    const caption = document.createElement("figcaption");
    const download = downloadLink(item, "Download");
    caption.append(`seed ${item.seed}`, download);
    figure.append(img, caption);
    grid.append(figure);
  }
}

function showFrame(frame) {
  const buttons = $$("#strip button");
  buttons.forEach((button, index) => button.setAttribute("aria-current", String(index === frame)));
  $("#player-frame").src = $("img", buttons[frame]).src;
  $("#player-frame").alt = `Frame ${frame + 1} of ${buttons.length}`;
  $("#player-caption").textContent = `frame ${frame + 1} / ${buttons.length}`;
  $("#player").dataset.frame = frame;
}

function togglePlayer() {
  if (player) return stopPlayer();
  const count = $$("#strip button").length;
  player = setInterval(() => showFrame((Number($("#player").dataset.frame) + 1) % count), 1000 / PLAYER_FPS);
  $("#player-toggle").textContent = "Pause";
}

function stopPlayer() {
  clearInterval(player);
  player = null;
  $("#player-toggle").textContent = "Play loop";
}

// ---- 9. The gallery -----------------------------------------------------------------------------------

// Items are kept in sessionStorage with a data-URL preview of at most PREVIEW_SIDE pixels (the whole
// image at 64 and 256 px); full-size blobs live in memory for this page's life and are fetched again
// from the server (within the result TTL) when a reload has dropped them.

let gallery = loadGallery(); // newest first
const fullImages = new Map(); // item id → {blob, url}

function loadGallery() {
  try {
    return JSON.parse(sessionStorage.getItem(GALLERY_STORAGE) ?? "[]");
  } catch {
    return [];
  }
}

/** Stores what fits: the newest items first, dropping the oldest when the storage is full. */
function saveGallery() {
  for (let kept = gallery.length; kept >= 0; kept--) {
    try {
      sessionStorage.setItem(GALLERY_STORAGE, JSON.stringify(gallery.slice(0, kept)));
      return;
    } catch {
      // QuotaExceededError: try with one item fewer
    }
  }
}

async function galleryItem(job, index) {
  const blob = await fetchImage(job.id, index);
  const size = job.params.size ?? 1024;
  const preview = size <= PREVIEW_SIDE ? blob : await fetchImage(job.id, index, PREVIEW_SIDE);
  const id = `${job.id}-${index}`;
  fullImages.set(id, { blob, url: URL.createObjectURL(blob) });
  const seed = job.params.seed;
  const frames = FRAME_OPS.has(job.op);
  return {
    id,
    jobId: job.id,
    index,
    op: job.op,
    params: job.params,
    // Item i of an n-image job used seed + i; the frames of a sequence share one seed.
    seed: frames || !Number.isSafeInteger(seed + index) ? seed : seed + index,
    title: job.params.prompt ?? (frames ? `frame ${index + 1} of ${job.image_count}` : "variation"),
    size,
    preview: await blobToDataUrl(preview),
    full: size <= PREVIEW_SIDE,
  };
}

function imageSource(item) {
  return fullImages.get(item.id)?.url ?? item.preview;
}

/** The full image, from memory or fetched again; the preview if the server has let it expire. */
async function fullImage(item) {
  if (!fullImages.has(item.id) && !item.full) {
    try {
      const blob = await fetchImage(item.jobId, item.index);
      fullImages.set(item.id, { blob, url: URL.createObjectURL(blob) });
    } catch {
      return item.preview;
    }
  }
  return fullImages.get(item.id)?.url ?? item.preview;
}

function downloadLink(item, text) {
  const link = document.createElement("a");
  link.className = "button small download";
  link.textContent = text;
  link.download = `unclip-${item.op}-${item.seed}-${item.index}.png`;
  link.href = imageSource(item);
  link.setAttribute("aria-label", `Download ${item.title}, seed ${item.seed}`);
  link.addEventListener("click", async (event) => {
    if (fullImages.has(item.id) || item.full) return;
    event.preventDefault(); // a reload dropped the full image: fetch it, then download
    link.href = await fullImage(item);
    if (fullImages.has(item.id)) link.click(); // now a blob: this click downloads it
  });
  return link;
}

function addToGallery(items) {
  gallery = [...items, ...gallery];
  saveGallery();
  renderGallery();
}

function renderGallery() {
  const list = $("#gallery");
  const template = $("#gallery-item");
  $("#gallery-empty").hidden = gallery.length > 0;
  list.replaceChildren(
    ...gallery.map((item, position) => {
      const card = template.content.firstElementChild.cloneNode(true);
      const img = $(".card-image", card);
      img.src = imageSource(item);
      img.alt = `${item.op}: ${item.title}`;
      img.draggable = true;
      img.addEventListener("dragstart", (event) =>
        event.dataTransfer.setData("application/x-unclip-gallery", item.id),
      );
      $(".op", card).textContent = item.op.replace("_", " ");
      $(".card-prompt", card).textContent = item.params.prompt ?? "";
      const frame = FRAME_OPS.has(item.op) ? ` · frame ${item.index + 1}` : "";
      $(".card-meta", card).textContent = `seed ${item.seed} · ${item.size} px${frame}`;
      const set = Object.entries(item.params).filter(([, value]) => value !== null);
      $(".card-params pre", card).textContent = JSON.stringify(Object.fromEntries(set), null, 1);
      $(".download", card).replaceWith(downloadLink(item, "Download"));
      const use = $(".use", card);
      use.setAttribute("aria-label", `Use image ${gallery.length - position} as input`);
      use.addEventListener("click", () => useAsInput(item.id));
      return card;
    }),
  );
}

/** A gallery image into an image field: the one given, else the current operation's (from generate,
 * the page switches to variation; for interpolate, the first free of the two, else the second). */
async function useAsInput(id, slot = null) {
  const item = gallery.find((candidate) => candidate.id === id);
  if (!item) return;
  if (!slot) {
    if (currentOp() === "generate") selectOp("variation");
    slot =
      currentOp() === "interpolate" ? (slots.image_a.dataUrl ? slots.image_b : slots.image_a) : slots.image;
  }
  const url = await fullImage(item);
  const blob = url.startsWith("data:") ? null : fullImages.get(item.id).blob;
  await slot.set(blob ? await blobToDataUrl(blob) : url);
  slot.element.scrollIntoView({ block: "nearest" });
  slot.input.focus({ preventScroll: true });
}

function clearGallery() {
  for (const { url } of fullImages.values()) URL.revokeObjectURL(url);
  fullImages.clear();
  gallery = [];
  saveGallery();
  renderGallery();
}

// ---- 10. Start-up -------------------------------------------------------------------------------------

function start() {
  const keyInput = $("#api-key");
  keyInput.value = apiKey();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // the key is saved as it is typed; Enter moves on to the form
    ($("#prompt:enabled") ?? $('input[name="op"]:checked')).focus();
  });
  const saveKey = () => {
    localStorage.setItem(KEY_STORAGE, keyInput.value.trim());
    $('[data-error-for="api_key"]').textContent = "";
    keyInput.removeAttribute("aria-invalid");
  };
  keyInput.addEventListener("input", saveKey);
  keyInput.addEventListener("change", saveKey); // autofill, and anything else that skips "input"

  for (const radio of $$('input[name="op"]')) radio.addEventListener("change", () => selectOp(radio.value));
  form.addEventListener("submit", onSubmit);
  // Enter submits from the prompt too (Shift+Enter for a new line), as it does from every other field.
  $("#prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  // A field's error goes away once it is edited.
  form.addEventListener("input", (event) => {
    const field = event.target.name || event.target.id;
    const error = field && $(`[data-error-for="${field}"]`);
    if (error) error.textContent = "";
    event.target.removeAttribute("aria-invalid");
  });

  $("#seed-random").addEventListener("click", () => {
    $("#seed").value = crypto.getRandomValues(new Uint32Array(1))[0];
  });
  $("#mask-clear").addEventListener("click", () => painter.clear());
  $("#mask-invert").addEventListener("click", () => painter.invert());
  $("#cancel").addEventListener("click", onCancel);
  $("#player-toggle").addEventListener("click", togglePlayer);
  $("#gallery-clear").addEventListener("click", clearGallery);

  selectOp(currentOp());
  renderGallery();
}

start();
