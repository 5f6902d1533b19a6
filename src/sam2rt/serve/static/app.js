// The sam2rt live app: pick a source, click objects (or type a phrase: SAM 3), watch their masks follow them.
// Protocol: serve/protocol.py.
"use strict";

const HEADER_BYTES = 16, MAGIC = [0x53, 0x32, 0x52, 0x54];  // "S2RT"
const FORMAT_JPEG = 1;
const IN_FLIGHT = 2;  // webcam frames sent and not answered yet; more are skipped (and counted)
const KEEP_FRAMES = 48;  // frames kept to draw their masks over, and to click on
const DRAG_PIXELS = 6;  // a press that moves further is a box

const $ = (id) => document.getElementById(id);
const view = $("view"), ctx = view.getContext("2d");
const overlay = document.createElement("canvas"), overlayCtx = overlay.getContext("2d");

const state = {
  ws: null, session: null, source: "none", paused: false,
  frames: new Map(),  // frame id -> Promise<ImageBitmap>
  nextId: 0, lastAnswered: -1, sentAt: new Map(), skipped: 0, rtt: 0,
  shown: null,  // {id, bitmap, objects, centres}: what the view draws
  objects: new Map(),  // id -> {score, label}
  phrase: null,  // the phrase tracked (SAM 3) instead of clicked objects, as the server confirmed it
  text: false,  // whether the server has SAM 3
  selected: null, maxId: 0,
  press: null,  // {x, y, frame, shift, button} while the mouse is down: the view stays on that frame
  chain: Promise.resolve(),  // results are drawn in the order they came
  results: 0,
};
window.sam2rt = state;  // for tests and the curious

function status(text) { $("status").textContent = text || ""; }

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => (typeof event.data === "string" ? onText(JSON.parse(event.data)) : onImage(event.data));
  ws.onclose = (event) => { status(`disconnected (${event.code}${event.reason ? ": " + event.reason : ""})`); };
  state.ws = ws;
  setInterval(() => send({ type: "ping" }), 30000);
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function onText(message) {
  if (message.type === "session") {
    state.session = message.id;
    state.text = Boolean(message.text);
    if (!state.text) $("text-input").placeholder = "needs sam2rt serve --sam3";
    for (const [id, kind] of [["export-coco", "coco.json"], ["export-png", "masks.zip"], ["export-mp4", "overlay.mp4"]]) {
      $(id).href = `/api/export/${message.id}/${kind}`;
    }
  } else if (message.type === "result") {
    state.chain = state.chain.then(() => onResult(message)).catch((error) => status(String(error)));
  } else if (message.type === "error") {
    status(message.message);
  } else if (message.type === "source") {
    status(message.kind === "webcam" ? "" : `playing ${message.width} x ${message.height}`);
  } else if (message.type === "text") {
    showPhrase(message.phrase);
  } else if (message.type === "ended") {
    status(`source ended: ${message.reason}; click the last frame to go on`);
  }
}

function onImage(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < HEADER_BYTES || MAGIC.some((b, i) => bytes[i] !== b)) return;
  const id = new DataView(buffer).getUint32(8, true);
  keepFrame(id, createImageBitmap(new Blob([bytes.subarray(HEADER_BYTES)], { type: "image/jpeg" })));
}

function keepFrame(id, bitmap) {
  state.frames.set(id, bitmap);
  while (state.frames.size > KEEP_FRAMES) {
    const oldest = state.frames.keys().next().value;
    state.frames.get(oldest).then((b) => { if (!state.shown || state.shown.bitmap !== b) b.close(); }).catch(() => {});
    state.frames.delete(oldest);
  }
}

async function onResult(message) {
  state.results += 1;
  if (message.frame > state.lastAnswered) state.lastAnswered = message.frame;
  const sent = state.sentAt.get(message.frame);
  if (sent !== undefined) { state.rtt = performance.now() - sent; state.sentAt.delete(message.frame); }
  const pending = state.frames.get(message.frame);
  if (!pending) return;  // a frame too old to draw
  const bitmap = await pending;
  const objects = message.objects.map((o) => ({ id: o.id, score: o.score, label: o.label, mask: decodeRle(o.rle) }));
  for (const o of message.objects) state.maxId = Math.max(state.maxId, o.id);
  state.objects = new Map(message.objects.map((o) => [o.id, { score: o.score, label: o.label }]));
  if (!state.press) {  // while the mouse is down the view stays on the frame pressed on
    state.shown = { id: message.frame, bitmap, objects };
    draw();
  }
  showObjects();
  showStats(message.stats);
}

function draw() {
  const shown = state.shown;
  if (!shown) return;
  const { width, height } = shown.bitmap;
  if (view.width !== width || view.height !== height) { view.width = width; view.height = height; }
  ctx.drawImage(shown.bitmap, 0, 0);
  overlay.width = width; overlay.height = height;
  const image = overlayCtx.createImageData(width, height);
  const centres = paintMasks(image, shown.objects);
  overlayCtx.putImageData(image, 0, 0);
  ctx.drawImage(overlay, 0, 0);
  ctx.font = `bold ${Math.max(12, Math.round(height / 30))}px system-ui, sans-serif`;
  ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.lineWidth = 3; ctx.strokeStyle = "#000";
  ctx.fillStyle = "#fff";
  for (const c of centres) {
    const label = objectLabel(shown.objects, c.id);
    ctx.strokeText(label, c.x, c.y); ctx.fillText(label, c.x, c.y);
  }
  if (state.press && state.press.box) {
    const { x0, y0, x1, y1 } = state.press.box;
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2; ctx.setLineDash([6, 4]);
    ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    ctx.setLineDash([]);
  }
}

// An object's name on the view: its id, after its phrase's when a phrase found it.
function objectLabel(objects, id) {
  const found = objects.find((o) => o.id === id);
  return found && found.label ? `${found.label} ${id}` : String(id);
}

function showObjects() {
  const list = $("objects");
  list.replaceChildren();
  for (const [id, info] of [...state.objects].sort((a, b) => a[0] - b[0])) {
    const item = document.createElement("li");
    item.dataset.id = id;
    item.className = (state.selected === id ? "selected " : "") + (info.score < 0.5 ? "absent" : "");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${objectColor(id).join(",")})`;
    const name = document.createElement("span");
    name.className = "name"; name.textContent = `${info.label || "object"} ${id}`;
    const score = document.createElement("span");
    score.className = "score"; score.textContent = info.score < 0.5 ? "absent" : `${Math.round(info.score * 100)}%`;
    const remove = document.createElement("button");
    remove.textContent = "×"; remove.className = "remove";
    remove.title = info.label ? `Hide ${info.label} ${id} (still tracked)` : `Remove object ${id}`;
    remove.onclick = (event) => {
      event.stopPropagation();
      send({ type: "remove", obj_id: id });
      if (state.selected === id) state.selected = null;
    };
    item.onclick = () => { state.selected = id; showObjects(); };
    item.append(swatch, name, score, remove);
    list.append(item);
  }
}

function showStats(stats) {
  const webcam = state.source === "webcam";
  $("stat-fps").textContent = `${stats.fps.toFixed(1)} frames/s (${stats.processed})`;
  $("stat-latency").textContent = webcam ? `${Math.round(state.rtt)} ms round trip` : `${stats.latency_ms} ms`;
  $("stat-dropped").textContent = String(stats.dropped + state.skipped);
  $("stat-recorded").textContent = `${stats.recorded} frames`;
}

// Sources

function startSource(message, kind) {
  stopWebcam();
  state.source = kind;
  state.frames.clear(); state.sentAt.clear(); state.objects = new Map(); state.shown = null;
  state.nextId = 0; state.lastAnswered = -1; state.skipped = 0; state.selected = null; state.maxId = 0;
  setPaused(false, false);
  showObjects();
  send(message);
}

let camera = null;
async function startWebcam() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: false });
    startSource({ type: "source", kind: "webcam" }, "webcam");
    const video = document.createElement("video");
    video.muted = true; video.playsInline = true; video.srcObject = stream;
    await video.play();
    camera = { stream, video, canvas: document.createElement("canvas"), timer: null };
    if (video.requestVideoFrameCallback) {  // once per new camera frame, so that none is sent twice
      const onFrame = () => { if (camera && camera.video === video) { captureFrame(); video.requestVideoFrameCallback(onFrame); } };
      video.requestVideoFrameCallback(onFrame);
    } else {
      camera.timer = setInterval(captureFrame, 1000 / 30);
    }
  } catch (error) {
    status(`webcam: ${error.message || error}`);
  }
}

function stopWebcam() {
  if (!camera) return;
  clearInterval(camera.timer);
  camera.stream.getTracks().forEach((track) => track.stop());
  camera = null;
}

let capturing = false;
function captureFrame() {
  const cam = camera;
  if (!cam || state.paused || capturing || !cam.video.videoWidth) return;
  if (state.nextId - 1 - state.lastAnswered >= IN_FLIGHT) { state.skipped += 1; return; }
  const { videoWidth: width, videoHeight: height } = cam.video;
  cam.canvas.width = width; cam.canvas.height = height;
  cam.canvas.getContext("2d").drawImage(cam.video, 0, 0);
  const id = state.nextId++;
  capturing = true;
  keepFrame(id, createImageBitmap(cam.canvas));
  cam.canvas.toBlob(async (blob) => {
    capturing = false;
    if (!blob || camera !== cam) return;
    const header = new ArrayBuffer(HEADER_BYTES), fields = new DataView(header);
    MAGIC.forEach((b, i) => fields.setUint8(i, b));
    fields.setUint8(4, FORMAT_JPEG);
    fields.setUint32(8, id, true); fields.setUint16(12, width, true); fields.setUint16(14, height, true);
    state.sentAt.set(id, performance.now());
    if (state.ws.readyState === WebSocket.OPEN) state.ws.send(await new Blob([header, blob]).arrayBuffer());
  }, "image/jpeg", 0.85);
}

async function upload(file) {
  if (!file || !state.session) return;
  status(`uploading ${file.name} ...`);
  const name = encodeURIComponent(file.name);
  const response = await fetch(`/api/upload?session=${state.session}&name=${name}`, { method: "POST", body: file });
  const reply = await response.json();
  if (!response.ok) { status(`upload refused: ${reply.error}`); return; }
  status("");
  startSource({ type: "source", kind: "upload", upload: reply.upload }, "upload");
}

async function listMedia() {
  const reply = await (await fetch("/api/media")).json();
  if (!reply.files.length) return;
  const select = $("media-select");
  for (const file of reply.files) select.append(new Option(file, file));
  $("media-box").hidden = false;
}

// Prompts

function framePoint(event) {
  const rect = view.getBoundingClientRect();
  return { x: ((event.clientX - rect.left) * view.width) / rect.width, y: ((event.clientY - rect.top) * view.height) / rect.height };
}

view.addEventListener("contextmenu", (event) => event.preventDefault());
view.addEventListener("mousedown", (event) => {
  if (!state.shown) return;
  if (state.phrase !== null) { status(`tracking "${state.phrase}": clear the phrase to click objects`); return; }
  const p = framePoint(event);
  state.press = { x: p.x, y: p.y, frame: state.shown.id, negative: event.shiftKey || event.button === 2, box: null };
});
view.addEventListener("mousemove", (event) => {
  const press = state.press;
  if (!press) return;
  const p = framePoint(event);
  const scale = view.width / view.getBoundingClientRect().width;
  if (press.box || Math.hypot(p.x - press.x, p.y - press.y) > DRAG_PIXELS * scale) {
    press.box = { x0: press.x, y0: press.y, x1: p.x, y1: p.y };
    draw();
  }
});
window.addEventListener("mouseup", (event) => {
  const press = state.press;
  if (!press) return;
  state.press = null;
  const objId = state.selected ?? state.maxId + 1;
  state.maxId = Math.max(state.maxId, objId);
  const round = (v) => Math.round(v * 10) / 10;
  const message = { type: "prompt", frame: press.frame, obj_id: objId };
  if (press.box) {
    const { x0, y0, x1, y1 } = press.box;
    if (Math.abs(x1 - x0) < 2 || Math.abs(y1 - y0) < 2) return;
    message.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)].map(round);
  } else {
    message.points = [[round(press.x), round(press.y)]];
    message.labels = [press.negative ? 0 : 1];
  }
  state.selected = objId;
  send(message);
});

// Text (SAM 3): every instance of a phrase, instead of clicked objects

function showPhrase(phrase) {
  state.phrase = phrase;
  state.objects = new Map(); state.selected = null;
  status("");
  $("text-shown").textContent = phrase === null ? "" : `tracking every "${phrase}"`;
  $("text-btn").classList.toggle("active", phrase !== null);
  $("view").style.cursor = phrase === null ? "" : "default";
  showObjects();
}

$("text-form").onsubmit = (event) => {
  event.preventDefault();
  const phrase = $("text-input").value.trim();
  send({ type: "text", phrase: phrase || null });
  status(phrase ? `finding "${phrase}" ...` : "");
};
$("text-clear").onclick = () => { $("text-input").value = ""; send({ type: "text", phrase: null }); status(""); };

// Controls

function setPaused(paused, tell = true) {
  state.paused = paused;
  $("pause").textContent = paused ? "Resume" : "Pause";
  $("pause").classList.toggle("active", paused);
  if (tell) send({ type: paused ? "pause" : "resume" });
}

$("webcam-btn").onclick = startWebcam;
$("upload-input").onchange = (event) => upload(event.target.files[0]);
$("media-btn").onclick = () => startSource({ type: "source", kind: "media", path: $("media-select").value }, "media");
$("url-btn").onclick = () => startSource({ type: "source", kind: "url", url: $("url-input").value.trim() }, "url");
$("new-object").onclick = () => { state.selected = null; showObjects(); };
$("pause").onclick = () => setPaused(!state.paused);
$("reset").onclick = () => {
  send({ type: "reset" });
  state.objects = new Map(); state.selected = null;
  if (state.shown) { state.shown.objects = []; draw(); }
  showObjects();
};

connect();
listMedia().catch(() => {});
