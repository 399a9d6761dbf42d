// genlab's browser page: the HTTP API's /models, /generate, /interpolate, /reconstruct and /anomaly-score, called
// from the browser with the key the user typed (sessionStorage, sent as "Authorization: Bearer"; never in a URL).
// Every element the page fills is marked data-state="ready" once its images are decoded, so that tests and
// benchmarks can wait for what a person would see.

const $ = (id) => document.getElementById(id);
const KEY = "genlab-api-key";
const UPLOAD_BATCH = 16; // images per /anomaly-score and /reconstruct request
const MAX_PX = 8; // the most CSS pixels per image pixel
const CARD_PX = 96; // the width an anomaly card enlarges a small image to

const state = { models: [], model: null, files: [], urls: { gallery: [], interp: [], anomaly: [] } };

class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

// -- the API ---------------------------------------------------------------------------------------------------

async function api(path, body) {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (!(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body ?? {});
  }
  let response;
  try {
    response = await fetch(path, { method: "POST", headers, body });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`, null);
  }
  if (!response.ok) {
    let payload = {};
    try {
      payload = await response.json();
    } catch {
      payload = { error: response.statusText };
    }
    throw new ApiError(response.status, payload.error ?? `HTTP ${response.status}`, payload.field ?? null);
  }
  return response.json();
}

// the API's answer to one call, or null with the error shown and the element it was for marked "error"
async function answered(element, errorId, path, body) {
  try {
    const answer = await api(path, body);
    showError(errorId, null);
    return answer;
  } catch (err) {
    element.dataset.state = "error";
    showError(errorId, err);
    return null;
  }
}

function showError(id, err) {
  const box = $(id);
  box.replaceChildren();
  if (!err) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  if (err.status === 401) {
    const typed = Boolean(sessionStorage.getItem(KEY));
    box.append(
      typed
        ? "Key wrong: the server refused the API key you entered. Check it and press “Use key” again."
        : "Key needed: this server asks for an API key. Type it in the API key field at the top and press “Use key”.",
    );
    $("api-key").focus();
    return;
  }
  const field = err.field ? [" (field ", code(err.field), ")"] : [];
  box.append(err.status ? `Error ${err.status}: ` : "Error: ", err.message, ...field);
}

function code(text) {
  const el = document.createElement("code");
  el.textContent = text;
  return el;
}

// -- images ----------------------------------------------------------------------------------------------------

function pngBlobUrl(base64, bucket) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  state.urls[bucket].push(url);
  return url;
}

function releaseUrls(bucket) {
  state.urls[bucket].forEach((url) => URL.revokeObjectURL(url));
  state.urls[bucket] = [];
}

function imageSize() {
  const [, h, w] = state.model.image_shape;
  return { w, h };
}

// whole CSS pixels per image pixel, so that columns of images fit the element's width
function pixelScale(element, columns, extra = 0) {
  const { w } = imageSize();
  const room = Math.max(element.clientWidth || element.parentElement.clientWidth, 200) - extra;
  return Math.max(1, Math.min(MAX_PX, Math.floor(room / (columns * (w + 2)))));
}

function pixelImage(url, alt, scale) {
  const { w, h } = imageSize();
  const img = new Image(w * scale, h * scale);
  img.src = url;
  img.alt = alt;
  img.draggable = false;
  return img;
}

async function settle(container, images) {
  await Promise.all(images.map((img) => img.decode().catch(() => undefined)));
  container.dataset.state = "ready";
  performance.mark(`${container.id}-ready`); // when the images are on screen (benchmarks/page_load.py reads it)
}

function downloadLink(img, name) {
  const a = document.createElement("a");
  a.href = img.src;
  a.download = name;
  a.title = `download ${name}`;
  a.append(img);
  return a;
}

// -- the model picker ------------------------------------------------------------------------------------------

async function loadModels() {
  const picker = $("model");
  try {
    state.models = await api("/models");
  } catch (err) {
    picker.replaceChildren(new Option("no models", ""));
    showError("models-error", err);
    return false;
  }
  showError("models-error", null);
  const previous = picker.value;
  picker.replaceChildren(...state.models.map((m) => new Option(`${m.name}${m.default ? " (default)" : ""}`, m.name)));
  picker.value = state.models.some((m) => m.name === previous) ? previous : state.models[0].name;
  picker.disabled = state.models.length < 2;
  selectModel();
  return true;
}

function selectModel() {
  const m = state.models.find((x) => x.name === $("model").value);
  state.model = m;
  const providers = [...new Set(Object.values(m.providers))].map((p) => p.replace("ExecutionProvider", ""));
  const facts = [
    ["family", m.family],
    ["dataset", [m.manifest?.dataset?.dataset ?? "?", m.manifest?.dataset?.dataset_hash].filter(Boolean).join(", ")],
    ["image", `${m.image_shape[0]}×${m.image_shape[1]}×${m.image_shape[2]}`],
    ["latent", m.latent_dim],
    ["classes", m.conditional ? m.classes.join(", ") : "unconditional"],
    ["runs on", providers.join(", ")],
  ];
  $("model-info").replaceChildren(
    ...facts.map(([term, value]) => {
      const row = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = term;
      dd.textContent = value;
      row.append(dt, dd);
      return row;
    }),
  );
  document.querySelectorAll(".conditional").forEach((el) => (el.hidden = !m.conditional));
  $("i-steps").max = String(m.max_images);
  for (const field of [$("g-n"), $("i-steps")]) {
    if (Number(field.value) > m.max_images) field.value = String(m.max_images);
  }
  const classOptions = () => m.classes.map((name, k) => new Option(`${k}: ${name}`, String(k)));
  $("g-label").replaceChildren(new Option("every class, balanced", ""), new Option("one row per class", "rows"), ...classOptions());
  $("i-label").replaceChildren(...classOptions());
  $("i-source-images").disabled = !m.has_encoder;
  if (!m.has_encoder) document.querySelector('input[name="i-source"][value="seeds"]').checked = true;
  interpolationSource();
  $("anomaly-note").textContent = m.has_encoder
    ? ""
    : `${m.name} is a ${m.family} and has no encoder: images get scores, but no reconstruction or map.`;
  generate();
  if (state.files.length) score();
}

// -- gallery ---------------------------------------------------------------------------------------------------

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

function galleryMode() {
  const m = state.model;
  const rows = m.conditional && $("g-label").value === "rows";
  $("g-n-label").textContent = rows ? "Images per class" : "Images";
  $("g-n").max = String(rows ? Math.max(1, Math.floor(m.max_images / m.classes.length)) : m.max_images);
  return rows;
}

async function generate() {
  const m = state.model;
  const grid = $("gallery-grid");
  const form = $("gallery-form");
  if (!m) return;
  const rows = galleryMode(); // sets the count's limit, which the form's validity checks
  if (!form.reportValidity()) return;
  grid.dataset.state = "loading";
  const count = Number($("g-n").value);
  const body = {
    seed: Number($("g-seed").value),
    temperature: Number($("g-temperature").value),
    format: "png_list",
    model: m.name,
  };
  let columns = Math.ceil(Math.sqrt(count));
  if (rows) {
    body.label = m.classes.flatMap((_, k) => Array(count).fill(k));
    body.n = body.label.length;
    columns = count;
  } else {
    body.n = count;
    if (m.conditional && $("g-label").value !== "") body.label = Number($("g-label").value);
  }
  const answer = await answered(grid, "gallery-error", "/generate", body);
  if (!answer) return;
  releaseUrls("gallery");
  const scale = pixelScale(grid, columns, rows ? 90 : 0);
  const images = answer.images.map((b64, i) => {
    const what = answer.label_names ? ` (${answer.label_names[i]})` : "";
    return pixelImage(pngBlobUrl(b64, "gallery"), `sample ${i + 1}${what}`, scale);
  });
  const cells = images.map((img, i) => downloadLink(img, `${m.name}-seed${answer.seed}-${i + 1}.png`));
  if (rows) {
    grid.style.setProperty("grid-template-columns", `auto repeat(${columns}, auto)`);
    const out = [];
    m.classes.forEach((name, k) => {
      const head = document.createElement("span");
      head.className = "row-head";
      head.textContent = name;
      out.push(head, ...cells.slice(k * columns, (k + 1) * columns));
    });
    grid.replaceChildren(...out);
  } else {
    grid.style.setProperty("grid-template-columns", `repeat(${columns}, auto)`);
    grid.replaceChildren(...cells);
  }
  const labels = answer.label_names ? `; classes drawn ${rows ? "one row each" : "as asked"}` : "";
  $("gallery-note").textContent = `${answer.images.length} samples of ${m.name}, seed ${answer.seed}${labels}.`;
  grid.dataset.seed = String(answer.seed);
  await settle(grid, images);
}

// -- interpolation ---------------------------------------------------------------------------------------------

function interpolationSource() {
  const fromImages = document.querySelector('input[name="i-source"]:checked').value === "images";
  document.querySelector(".source-seeds").hidden = fromImages;
  document.querySelector(".source-images").hidden = !fromImages;
  $("i-seed-a").required = $("i-seed-b").required = !fromImages;
  return fromImages;
}

async function interpolate() {
  const m = state.model;
  const strip = $("interp-strip");
  if (!m || !$("interp-form").reportValidity()) return;
  const fromImages = interpolationSource();
  const fields = {
    steps: Number($("i-steps").value),
    method: $("i-method").value,
    format: "png_list",
    model: m.name,
  };
  if (m.conditional) fields.label = Number($("i-label").value);
  let body;
  if (fromImages) {
    const ends = [$("i-image-a").files[0], $("i-image-b").files[0]];
    if (!ends[0] || !ends[1]) {
      showError("interp-error", new ApiError(0, "choose two images, A and B", "images"));
      return;
    }
    body = new FormData();
    ends.forEach((file) => body.append("images", file, file.name));
    Object.entries(fields).forEach(([k, v]) => body.append(k, String(v)));
  } else {
    body = { ...fields, seeds: [Number($("i-seed-a").value), Number($("i-seed-b").value)] };
    body.temperature = Number($("i-temperature").value);
  }
  strip.dataset.state = "loading";
  const answer = await answered(strip, "interp-error", "/interpolate", body);
  if (!answer) return;
  releaseUrls("interp");
  const scale = pixelScale(strip, answer.images.length);
  const images = answer.images.map((b64, i) => pixelImage(pngBlobUrl(b64, "interp"), `step ${i + 1}, t = ${answer.t[i]}`, scale));
  strip.replaceChildren(
    ...images.map((img, i) => {
      const figure = document.createElement("figure");
      const last = i === images.length - 1;
      const caption = document.createElement("figcaption");
      caption.textContent = i === 0 ? "A" : last ? "B" : answer.t[i].toFixed(2);
      if (i === 0 || last) figure.className = "end";
      figure.append(downloadLink(img, `${m.name}-path-${i + 1}.png`), caption);
      return figure;
    }),
  );
  await settle(strip, images);
}

// -- anomaly inspection ----------------------------------------------------------------------------------------

const HEAT = [
  [0, 0, 4],
  [87, 16, 110],
  [188, 55, 84],
  [249, 142, 9],
  [252, 255, 164],
]; // an inferno-like ramp, dark to bright

function heat(value) {
  const x = Math.min(1, value) * (HEAT.length - 1);
  const i = Math.min(HEAT.length - 2, Math.floor(x));
  const f = x - i;
  return HEAT[i].map((c, j) => Math.round(c + f * (HEAT[i + 1][j] - c)));
}

// the anomaly map PNG (uint8 |image - reconstruction|) as a heat map: colour and opacity grow with the error
async function heatCanvas(mapUrl) {
  const { w, h } = imageSize();
  const source = new Image();
  source.src = mapUrl;
  await source.decode();
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, w, h);
  const pixels = ctx.getImageData(0, 0, w, h);
  const d = pixels.data;
  for (let p = 0; p < d.length; p += 4) {
    const v = Math.max(d[p], d[p + 1], d[p + 2]) / 255;
    const [r, g, b] = heat(Math.sqrt(v));
    d[p] = r;
    d[p + 1] = g;
    d[p + 2] = b;
    d[p + 3] = Math.round(255 * Math.min(1, 2.5 * v));
  }
  ctx.putImageData(pixels, 0, 0);
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", "anomaly map");
  return canvas;
}

function figure(caption, ...content) {
  const f = document.createElement("figure");
  const c = document.createElement("figcaption");
  c.textContent = caption;
  f.append(...content, c);
  return f;
}

function fmt(x, digits = 4) {
  return x === null || x === undefined ? "n/a" : Number(x).toPrecision(digits);
}

// whole CSS pixels per image pixel on a card: small images (digits) enlarged to about CARD_PX, larger ones at their
// real size
function cardScale() {
  const { w } = imageSize();
  return Math.max(1, Math.min(MAX_PX, Math.floor(CARD_PX / w)));
}

async function scoreCard(file, result, recon, threshold) {
  const scale = cardScale();
  const card = document.createElement("article");
  card.className = `card${result.is_anomaly ? " anomalous" : ""}`;
  const title = document.createElement("h3");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = file.name;
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = result.is_anomaly ? "anomaly" : "normal";
  title.append(name, badge);

  const fileUrl = URL.createObjectURL(file);
  state.urls.anomaly.push(fileUrl);
  const shown = () => {
    const img = pixelImage(fileUrl, `uploaded ${file.name}`, scale);
    img.className = "crop"; // the server centre-crops to a square, as this shows
    return img;
  };
  const views = document.createElement("div");
  views.className = "views";
  const images = [];
  const original = shown();
  images.push(original);
  views.append(figure("image", original));
  if (recon) {
    const r = pixelImage(pngBlobUrl(recon, "anomaly"), `reconstruction of ${file.name}`, scale);
    images.push(r);
    views.append(figure("reconstruction", r));
  }
  if (result.anomaly_map) {
    const stack = document.createElement("div");
    stack.className = "overlay";
    const under = shown();
    images.push(under);
    const overlay = await heatCanvas(pngBlobUrl(result.anomaly_map, "anomaly"));
    overlay.className = "heat";
    overlay.style.setProperty("opacity", $("a-opacity").value);
    stack.append(under, overlay);
    views.append(figure("map over image", stack));
  }

  const norm = result.normalized_score;
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "meter");
  bar.setAttribute("aria-label", "normalised score, threshold at 0.5");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "1");
  bar.setAttribute("aria-valuenow", String(norm ?? 0));
  const fill = document.createElement("div");
  fill.className = "fill";
  fill.style.setProperty("width", `${Math.round(100 * (norm ?? 0))}%`);
  const cut = document.createElement("div");
  cut.className = "cut";
  bar.append(fill, cut);

  const facts = [
    ["normalised score", `${fmt(norm, 3)} (threshold 0.5)`],
    ["score", `${fmt(result.score)} (threshold ${fmt(threshold)})`],
    ["percentile", result.percentile === null ? "n/a" : `${result.percentile.toFixed(1)} of normal images`],
    ["is_anomaly", String(result.is_anomaly)],
  ];
  if (result.label_name !== undefined) facts.push(["scored as", `${result.label_name} (${result.label_source})`]);
  const list = document.createElement("dl");
  list.className = "figures";
  for (const [term, value] of facts) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = value;
    list.append(dt, dd);
  }
  card.append(title, views, bar, list);
  card.dataset.score = String(result.score);
  card.dataset.anomaly = String(result.is_anomaly);
  return { card, images };
}

async function score() {
  const m = state.model;
  const out = $("anomaly-results");
  if (!m || !state.files.length || !$("anomaly-form").reportValidity()) return;
  out.dataset.state = "loading";
  const mode = $("a-mode").value;
  const cut = Number($("a-cut").value);
  const cards = [];
  const images = [];
  releaseUrls("anomaly"); // the cards on show keep their decoded pixels
  try {
    for (let start = 0; start < state.files.length; start += UPLOAD_BATCH) {
      const files = state.files.slice(start, start + UPLOAD_BATCH);
      const form = () => {
        const f = new FormData();
        files.forEach((file) => f.append("images", file, file.name));
        f.append("model", m.name);
        return f;
      };
      const scoring = form();
      scoring.append(mode, String(cut));
      scoring.append("maps", String(m.has_encoder));
      const [scores, recon] = await Promise.all([
        api("/anomaly-score", scoring),
        m.has_encoder ? api("/reconstruct", form()) : null,
      ]);
      for (const [i, file] of files.entries()) {
        const made = await scoreCard(file, scores.results[i], recon?.images[i], scores.threshold);
        cards.push(made.card);
        images.push(...made.images);
      }
      if (start === 0) {
        const by = scores.threshold_percentile === null ? "a raw threshold" : `percentile ${scores.threshold_percentile}`;
        const meaning = scores.meaning.replace(/\.?$/, ".");
        $("anomaly-meaning").textContent = `${scores.score_name}: ${meaning} Threshold ${fmt(scores.threshold)} (${by}).`;
      }
    }
  } catch (err) {
    out.dataset.state = "error";
    showError("anomaly-error", err);
    return;
  }
  showError("anomaly-error", null);
  out.replaceChildren(...cards);
  await settle(out, images);
}

function addFiles(list) {
  const files = [...list].filter((f) => f.type.startsWith("image/") || /\.(png|jpe?g|gif|bmp|webp)$/i.test(f.name));
  if (!files.length) {
    showError("anomaly-error", new ApiError(0, "drop image files (PNG, JPEG, ...)", "images"));
    return;
  }
  state.files = files;
  score();
}

// -- wiring ----------------------------------------------------------------------------------------------------

function wire() {
  $("g-seed").value = String(randomSeed());
  $("i-seed-a").value = String(randomSeed());
  $("i-seed-b").value = String(randomSeed());
  const key = sessionStorage.getItem(KEY);
  if (key) $("api-key").value = key;

  $("model").addEventListener("change", selectModel);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("api-key").value.trim();
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
    loadModels();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("api-key").value = "";
  });

  $("gallery-form").addEventListener("submit", (e) => {
    e.preventDefault();
    generate();
  });
  $("g-new-seed").addEventListener("click", () => {
    $("g-seed").value = String(randomSeed());
    generate();
  });
  $("g-label").addEventListener("change", () => {
    const count = $("g-n");
    if (galleryMode() && Number(count.value) > Number(count.max)) count.value = String(Math.min(8, count.max));
    generate();
  });

  $("interp-form").addEventListener("submit", (e) => {
    e.preventDefault();
    interpolate();
  });
  document.querySelectorAll('input[name="i-source"]').forEach((r) => r.addEventListener("change", interpolationSource));
  $("i-new-seeds").addEventListener("click", () => {
    $("i-seed-a").value = String(randomSeed());
    $("i-seed-b").value = String(randomSeed());
    interpolate();
  });

  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
  $("a-files").addEventListener("change", (e) => addFiles(e.target.files));
  $("anomaly-form").addEventListener("submit", (e) => {
    e.preventDefault();
    score();
  });
  $("a-mode").addEventListener("change", () => {
    const byPercentile = $("a-mode").value === "percentile";
    $("a-cut-label").textContent = byPercentile ? "Percentile" : "Threshold";
    $("a-cut").max = byPercentile ? "100" : "";
    $("a-cut").min = byPercentile ? "0" : "";
  });
  $("a-opacity").addEventListener("input", (e) => {
    document.querySelectorAll("canvas.heat").forEach((c) => c.style.setProperty("opacity", e.target.value));
  });
}

wire();
loadModels();
