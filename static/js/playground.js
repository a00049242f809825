// The playground of a model (templates/inference/playground.html). It sends the form's inputs
// to POST /api/v1/predictions with the dashboard session (CSRF header) and `Prefer: wait`,
// polls if the wait runs out, and shows what the API answered: the output, a classifier's
// top classes (softmax of its logits), the latency, the cost, or the error's `detail`.
//
// An image input can be filled from a picture: the browser draws it onto a canvas of the
// input's height and width, reads the pixels (grayscale for one channel), scales them to 0..1
// (0..255 for UINT8) and writes the nested list into the input's JSON. The small canvas shows
// the input's first row as a picture whenever the JSON changes.
(() => {
  "use strict";
  if (window.mmPlayground) {
    window.mmPlayground.scan(document); // loaded again by an htmx-boosted navigation
    return;
  }

  const config = { pollMs: 1000, pollLimitMs: 120000, topClasses: 5, outputChars: 20000 };

  function csrfToken(form) {
    const cookie = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
    if (cookie) return decodeURIComponent(cookie.slice("csrftoken=".length));
    const input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function formatNumber(value) {
    if (typeof value === "number" && !Number.isInteger(value)) {
      return String(Number(value.toPrecision(4)));
    }
    return JSON.stringify(value);
  }

  // Nested-list JSON with each innermost row on a line of its own, as the server renders it.
  function formatTensor(value, depth = 0) {
    if (!Array.isArray(value)) return formatNumber(value);
    if (!value.length || !Array.isArray(value[0])) {
      return "[" + value.map(formatNumber).join(", ") + "]";
    }
    const separator = ",\n" + " ".repeat(depth + 1);
    return "[" + value.map((v) => formatTensor(v, depth + 1)).join(separator) + "]";
  }

  function softmax(logits) {
    const max = Math.max(...logits);
    const exps = logits.map((v) => Math.exp(v - max));
    const sum = exps.reduce((a, b) => a + b, 0);
    return exps.map((v) => v / sum);
  }

  // As the server's money_text: exact, without trailing zeros, and at least the currency's
  // minor unit: "0.000500" USD -> "0.0005", "0.000000" USD -> "0.00", "12.000000" JPY -> "12".
  function money(amount, currency) {
    let digits = 2;
    try {
      digits = new Intl.NumberFormat("en", { style: "currency", currency })
        .resolvedOptions().maximumFractionDigits;
    } catch (error) {
      // not a currency the browser knows: two places
    }
    const [whole, fraction = ""] = amount.split(".");
    const kept = fraction.replace(/0+$/, "").padEnd(digits, "0");
    return kept ? `${whole}.${kept}` : whole;
  }

  // --- pictures <-> tensors -----------------------------------------------------------------

  function imageSpec(box) {
    return {
      channels: Number(box.dataset.channels),
      height: Number(box.dataset.height),
      width: Number(box.dataset.width),
      scale: box.dataset.datatype === "UINT8" ? 255 : 1,
    };
  }

  async function pictureToTensor(file, spec, invert) {
    const url = URL.createObjectURL(file);
    try {
      const image = new Image();
      image.src = url;
      await image.decode();
      const canvas = document.createElement("canvas");
      canvas.width = spec.width;
      canvas.height = spec.height;
      const context = canvas.getContext("2d", { willReadFrequently: true });
      // Transparent parts become the background: dark, or light before an inversion.
      context.fillStyle = invert ? "#fff" : "#000";
      context.fillRect(0, 0, spec.width, spec.height);
      context.imageSmoothingQuality = "high";
      context.drawImage(image, 0, 0, spec.width, spec.height);
      const pixels = context.getImageData(0, 0, spec.width, spec.height).data;
      const value = (v) => {
        const unit = invert ? 1 - v : v;
        return spec.scale === 255 ? Math.round(unit * 255) : Math.round(unit * 1000) / 1000;
      };
      const planes = [];
      for (let c = 0; c < spec.channels; c++) {
        const rows = [];
        for (let y = 0; y < spec.height; y++) {
          const row = [];
          for (let x = 0; x < spec.width; x++) {
            const i = (y * spec.width + x) * 4;
            const [r, g, b] = [pixels[i], pixels[i + 1], pixels[i + 2]];
            const v = spec.channels === 1 ? (0.299 * r + 0.587 * g + 0.114 * b) / 255 : pixels[i + c] / 255;
            row.push(value(v));
          }
          rows.push(row);
        }
        planes.push(rows);
      }
      return [planes];
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  function drawPreview(canvas, tensor, spec) {
    const first = tensor && tensor[0];
    if (!Array.isArray(first) || first.length !== spec.channels) return;
    const context = canvas.getContext("2d");
    const picture = context.createImageData(spec.width, spec.height);
    const byte = (v) => Math.max(0, Math.min(255, Math.round((Number(v) * 255) / spec.scale)));
    for (let y = 0; y < spec.height; y++) {
      for (let x = 0; x < spec.width; x++) {
        const i = (y * spec.width + x) * 4;
        const at = (c) => byte(first[c] && first[c][y] ? first[c][y][x] : 0);
        const rgb = spec.channels === 1 ? [at(0), at(0), at(0)] : [at(0), at(1), at(2)];
        picture.data.set([...rgb, 255], i);
      }
    }
    context.putImageData(picture, 0, 0);
  }

  // --- the widget ---------------------------------------------------------------------------

  class ApiError extends Error {}

  class Playground {
    constructor(form) {
      this.form = form;
      this.result = document.querySelector(form.dataset.result);
      this.button = form.querySelector("[data-role=run]");
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.run();
      });
      for (const box of form.querySelectorAll("[data-image]")) this.bindImage(box);
    }

    bindImage(box) {
      const spec = imageSpec(box);
      const area = box.closest("fieldset").querySelector("textarea[data-input]");
      const canvas = box.querySelector("[data-role=preview]");
      const redraw = () => {
        try {
          drawPreview(canvas, JSON.parse(area.value), spec);
        } catch {
          // Half-typed JSON: keep the last picture.
        }
      };
      let timer = null;
      area.addEventListener("input", () => {
        clearTimeout(timer);
        timer = setTimeout(redraw, 250);
      });
      box.querySelector("[data-role=image]").addEventListener("change", async (event) => {
        const file = event.target.files[0];
        if (!file) return;
        const invert = box.querySelector("[data-role=invert]").checked;
        try {
          area.value = formatTensor(await pictureToTensor(file, spec, invert));
          redraw();
          this.status(`${file.name} turned into ${spec.channels}×${spec.height}×${spec.width}.`);
        } catch {
          this.status(`${file.name} is not a picture this browser can read.`);
        }
      });
      box.querySelector("[data-role=invert]").addEventListener("change", () => {
        if (box.querySelector("[data-role=image]").files[0]) {
          box.querySelector("[data-role=image]").dispatchEvent(new Event("change"));
        }
      });
      redraw();
    }

    status(text) {
      this.form.querySelector("[data-role=status]").textContent = text;
    }

    part(role) {
      return this.result.querySelector(`[data-role=${role}]`);
    }

    inputs() {
      const input = {};
      for (const area of this.form.querySelectorAll("textarea[data-input]")) {
        try {
          input[area.dataset.input] = JSON.parse(area.value);
        } catch (err) {
          throw new ApiError(`Input '${area.dataset.input}' is not valid JSON: ${err.message}`);
        }
      }
      return input;
    }

    async request(url, options = {}) {
      let response;
      try {
        response = await fetch(url, {
          credentials: "same-origin",
          ...options,
          headers: {
            Accept: "application/json",
            "X-CSRFToken": csrfToken(this.form),
            ...(options.headers || {}),
          },
        });
      } catch {
        throw new ApiError("The server could not be reached; check your connection and run again.");
      }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        throw new ApiError(body.detail || `The API answered ${response.status} ${response.statusText}.`);
      }
      return body;
    }

    async run() {
      // Disabling the focused button drops keyboard focus to the page: it comes back after.
      const hadFocus = document.activeElement === this.button;
      this.button.disabled = true;
      this.status("Running…");
      try {
        const body = { model: this.form.dataset.model, input: this.inputs() };
        if (this.form.dataset.version) body.version = this.form.dataset.version;
        let prediction = await this.request(this.form.dataset.apiUrl, {
          method: "POST",
          headers: { "Content-Type": "application/json", Prefer: "wait" },
          body: JSON.stringify(body),
        });
        const started = Date.now();
        while (prediction.status === "queued" || prediction.status === "running") {
          if (Date.now() - started > config.pollLimitMs) {
            throw new ApiError(`Prediction ${prediction.id} is still ${prediction.status}; the list below shows when it ends.`);
          }
          this.status(`Still ${prediction.status}…`);
          await sleep(config.pollMs);
          prediction = await this.request(prediction.urls.get);
        }
        this.show(prediction);
        this.status("");
      } catch (err) {
        this.showError(err instanceof ApiError ? err.message : String(err));
        this.status("");
      } finally {
        this.button.disabled = false;
        if (hadFocus && (!document.activeElement || document.activeElement === document.body)) {
          this.button.focus();
        }
        document.body.dispatchEvent(new CustomEvent("predictions-refresh"));
      }
    }

    showError(message) {
      this.part("empty").hidden = true;
      this.part("facts").hidden = true;
      this.part("classes").hidden = true;
      this.part("output-box").hidden = true;
      const error = this.part("error");
      error.textContent = message;
      error.hidden = false;
    }

    show(prediction) {
      this.part("empty").hidden = true;
      const error = this.part("error");
      error.hidden = !prediction.error;
      error.textContent = prediction.error || "";
      const fact = (name) => this.result.querySelector(`[data-fact=${name}]`);
      fact("status").textContent = prediction.status;
      fact("status").className = `status ${prediction.status}`;
      const metrics = prediction.metrics || {};
      fact("latency").textContent =
        metrics.latency_ms == null ? "—" : `${Math.round(metrics.latency_ms)} ms`;
      fact("compute").textContent =
        metrics.compute_ms == null
          ? "—"
          : `${metrics.compute_ms.toFixed(2)} ms` +
            (metrics.batched_with > 1 ? ` (batched with ${metrics.batched_with - 1} other)` : "");
      const cost = prediction.cost;
      fact("cost").textContent = cost
        ? `${money(cost.amount, cost.currency)} ${cost.currency.toUpperCase()}${cost.free ? " (free call)" : ""}`
        : "not billed";
      fact("id").textContent = prediction.id;
      this.part("facts").hidden = false;
      this.showClasses(prediction.output);
      const box = this.part("output-box");
      if (prediction.output) {
        let text = Object.entries(prediction.output)
          .map(([name, value]) => `${name}: ${formatTensor(value)}`)
          .join("\n\n");
        if (text.length > config.outputChars) text = text.slice(0, config.outputChars) + "\n…";
        this.part("output").textContent = text;
      }
      box.hidden = !prediction.output;
    }

    showClasses(output) {
      const box = this.part("classes");
      const rows = output && output[this.form.dataset.classifierOutput];
      box.hidden = !Array.isArray(rows) || !Array.isArray(rows[0]);
      if (box.hidden) return;
      const scores = softmax(rows[0].map(Number));
      const top = scores
        .map((score, index) => ({ score, index }))
        .sort((a, b) => b.score - a.score)
        .slice(0, config.topClasses);
      const body = box.querySelector("tbody");
      body.replaceChildren(
        ...top.map(({ score, index }) => {
          const row = document.createElement("tr");
          const percent = (score * 100).toFixed(1);
          row.innerHTML =
            `<td>class <strong></strong></td>` +
            `<td class="score"><div class="bar"><span></span></div></td><td class="pct"></td>`;
          row.querySelector("strong").textContent = index;
          row.querySelector(".bar span").style.width = `${(score * 100).toFixed(1)}%`;
          row.querySelector(".pct").textContent = `${percent}%`;
          return row;
        })
      );
      const caption = box.querySelector("h3");
      caption.textContent = rows.length > 1 ? "Top classes (first row)" : "Top classes";
    }
  }

  function scan(root) {
    const forms = root.matches && root.matches("form[data-playground]") ? [root] : [];
    forms.push(...root.querySelectorAll("form[data-playground]"));
    for (const form of forms) {
      if (!form.mmPlayground) form.mmPlayground = new Playground(form);
    }
  }

  window.mmPlayground = { config, scan, formatTensor, softmax, pictureToTensor };
  document.addEventListener("htmx:load", (event) => scan(event.detail.elt));
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", () => scan(document));
  } else {
    scan(document);
  }
})();
