// The upload widget of a model page (templates/models/detail.html): a resumable, chunked
// upload through the REST API, authenticated by the dashboard session (CSRF header).
//
//   1. hash the file (SHA-256) in the browser;
//   2. POST {create-url} for an upload session (chunk size, upload URL);
//   3. PUT each missing chunk with Content-Range, a few at once, each retried with backoff;
//   4. POST {upload-url}/complete: the server checks the hash and creates the version.
//
// The session is remembered in localStorage (id, file name, size, lastModified), so after a
// reload or a dropped connection the page offers to resume: the user selects the same file
// again and only the chunks the server lacks are sent. The form fires "upload:progress"
// ({bytes, size}) and "upload:done" ({version}) events.
(() => {
  "use strict";
  if (window.mmUpload) {
    window.mmUpload.scan(document); // loaded again by an htmx-boosted navigation
    return;
  }

  const config = {
    // Up to this size crypto.subtle hashes the file in one piece (it reads the whole file into
    // memory); larger files, or pages without crypto.subtle (plain http), are hashed a slice
    // at a time in JavaScript: bounded memory, but several times slower (50-250 MB/s).
    subtleMaxBytes: 256 * 1024 * 1024,
    hashSliceBytes: 4 * 1024 * 1024,
    // Chunks sent at once (mm push sends 4): the server seals and stores them side by side and
    // hashes them in order as they arrive; one at a time leaves a round trip and a chunk's
    // storing between every two.
    parallelChunks: 3,
    retries: 5,
    retryBaseMs: 1000,
    retryMaxMs: 30000,
  };
  const STORAGE_PREFIX = "mm-upload:";
  const RETRY_STATUSES = new Set([0, 408, 429, 500, 502, 503, 504]);

  // --- SHA-256, incremental (FIPS 180-4) -----------------------------------------------------

  // Int32Array, not Uint32Array: values stay in V8's small-integer range, several times faster.
  const K = new Int32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);

  class Sha256 {
    constructor() {
      this.h = new Int32Array([
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
      ]);
      this.w = new Int32Array(64);
      this.tail = new Uint8Array(64);
      this.tailLength = 0;
      this.length = 0; // bytes hashed so far
    }

    update(bytes) {
      this.length += bytes.length;
      let offset = 0;
      if (this.tailLength) {
        const take = Math.min(64 - this.tailLength, bytes.length);
        this.tail.set(bytes.subarray(0, take), this.tailLength);
        this.tailLength += take;
        offset = take;
        if (this.tailLength < 64) return this;
        this.block(this.tail, 0);
        this.tailLength = 0;
      }
      for (; offset + 64 <= bytes.length; offset += 64) this.block(bytes, offset);
      if (offset < bytes.length) {
        this.tail.set(bytes.subarray(offset));
        this.tailLength = bytes.length - offset;
      }
      return this;
    }

    block(bytes, offset) {
      const w = this.w;
      for (let i = 0, j = offset; i < 16; i++, j += 4) {
        w[i] = (bytes[j] << 24) | (bytes[j + 1] << 16) | (bytes[j + 2] << 8) | bytes[j + 3];
      }
      for (let i = 16; i < 64; i++) {
        const x = w[i - 15];
        const y = w[i - 2];
        const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
        const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      const h = this.h;
      let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
      for (let i = 0; i < 64; i++) {
        const s1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (k + s1 + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
        const s0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        k = g;
        g = f;
        f = e;
        e = (d + t1) | 0;
        d = c;
        c = b;
        b = a;
        a = (t1 + t2) | 0;
      }
      h[0] = (h[0] + a) | 0;
      h[1] = (h[1] + b) | 0;
      h[2] = (h[2] + c) | 0;
      h[3] = (h[3] + d) | 0;
      h[4] = (h[4] + e) | 0;
      h[5] = (h[5] + f) | 0;
      h[6] = (h[6] + g) | 0;
      h[7] = (h[7] + k) | 0;
    }

    hex() {
      const bits = this.length * 8;
      const padding = new Uint8Array((this.tailLength < 56 ? 64 : 128) - this.tailLength);
      padding[0] = 0x80;
      const view = new DataView(padding.buffer);
      view.setUint32(padding.length - 8, Math.floor(bits / 2 ** 32));
      view.setUint32(padding.length - 4, bits >>> 0);
      this.update(padding);
      return Array.from(this.h, (x) => (x >>> 0).toString(16).padStart(8, "0")).join("");
    }
  }

  async function hashFile(file, onProgress) {
    if (file.size <= config.subtleMaxBytes && window.crypto && crypto.subtle) {
      const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
      return Array.from(new Uint8Array(digest), (x) => x.toString(16).padStart(2, "0")).join("");
    }
    const sha = new Sha256();
    for (let start = 0; start < file.size; start += config.hashSliceBytes) {
      const end = Math.min(start + config.hashSliceBytes, file.size);
      sha.update(new Uint8Array(await file.slice(start, end).arrayBuffer()));
      onProgress(end);
    }
    return sha.hex();
  }

  // --- talking to the API --------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.detail) || `The server answered ${status}.`);
      this.status = status;
      this.body = body || {};
    }
  }

  class NetworkError extends Error {
    constructor() {
      super("The connection to the server failed.");
    }
  }

  function abortError() {
    return new DOMException("The upload was cancelled.", "AbortError");
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  function csrfToken(form) {
    const cookie = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
    if (cookie) return decodeURIComponent(cookie.slice("csrftoken=".length));
    const input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  async function api(form, method, url, body, signal) {
    const headers = { Accept: "application/json", "X-CSRFToken": csrfToken(form) };
    const init = { method, headers, credentials: "same-origin", signal };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw err.name === "AbortError" ? err : new NetworkError();
    }
    const data = parseJson(await response.text().catch(() => ""));
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  // A PUT with XMLHttpRequest rather than fetch: it reports upload progress within a chunk.
  function putChunk(form, url, file, start, end, onProgress, signal) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", url);
      xhr.setRequestHeader("Content-Range", `bytes ${start}-${end}/${file.size}`);
      xhr.setRequestHeader("X-CSRFToken", csrfToken(form));
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (event) => onProgress(event.loaded);
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) resolve();
        else reject(new ApiError(xhr.status, parseJson(xhr.responseText)));
      };
      xhr.onerror = () => reject(new NetworkError());
      xhr.onabort = () => reject(abortError());
      signal.addEventListener("abort", () => xhr.abort(), { once: true });
      xhr.send(file.slice(start, end + 1, "application/octet-stream"));
    });
  }

  function retryable(err) {
    if (err instanceof ApiError && err.status === 409 && err.body.completing) {
      return true; // another request of ours is completing it: ask again once it is done
    }
    return err instanceof NetworkError || (err instanceof ApiError && RETRY_STATUSES.has(err.status));
  }

  // "bytes 0-1023" ranges (merged, inclusive) into the chunk-sized [start, end] pieces to PUT.
  function chunksOf(ranges, chunkSize) {
    const chunks = [];
    for (const range of ranges) {
      const [first, last] = range.replace("bytes ", "").split("-").map(Number);
      for (let start = first; start <= last; start += chunkSize) {
        chunks.push([start, Math.min(start + chunkSize - 1, last)]);
      }
    }
    return chunks;
  }

  // As Django's filesizeformat, so the widget and the versions table agree.
  function formatBytes(bytes) {
    const KB = 1024;
    const MB = 1024 * KB;
    if (bytes >= 1024 * MB) return `${(bytes / (1024 * MB)).toFixed(1)} GB`;
    if (bytes >= MB) return `${(bytes / MB).toFixed(1)} MB`;
    return `${(bytes / KB).toFixed(1)} KB`;
  }

  function percent(part, whole) {
    return whole ? Math.floor((part / whole) * 100) : 100;
  }

  function formatFor(filename) {
    const name = filename.toLowerCase();
    if (name.endsWith(".pt2")) return "pt2";
    if (name.endsWith(".safetensors")) return "safetensors";
    if (name.endsWith(".pt") || name.endsWith(".pth")) return "torchscript";
    return null;
  }

  function sameFile(file, record) {
    return (
      file.name === record.name &&
      file.size === record.size &&
      file.lastModified === record.lastModified
    );
  }

  // --- the widget ------------------------------------------------------------------------------

  class Uploader {
    constructor(form) {
      this.form = form;
      this.fileInput = form.elements.file;
      this.storageKey = STORAGE_PREFIX + form.dataset.model;
      this.pending = null; // an interrupted upload of this model: {record, state}
      this.busy = false;
      this.controller = null;
      this.wakeUps = new Set(); // chunks waiting to retry: "Retry now" or the network wakes them
      this.buttonWaits = 0; // of which this many wait for the connection, with the button shown
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        this.start();
      });
      this.fileInput.addEventListener("change", () => this.fileChosen());
      form.elements.format.addEventListener("change", () => this.showArchitecture());
      this.role("discard").addEventListener("click", () => this.discard());
      this.role("cancel").addEventListener("click", () => this.controller && this.controller.abort());
      this.role("resume-now").addEventListener("click", () => this.wake());
      window.addEventListener("online", () => this.wake());
      // A page restored from htmx's history cache may carry a snapshot of a busy widget.
      this.setBusy(false);
      this.role("progress-box").hidden = true;
      this.status("");
      this.error("");
      this.showArchitecture();
      this.offerResume();
    }

    role(name) {
      return this.form.querySelector(`[data-role="${name}"]`);
    }

    // localStorage may be unavailable (private modes, quotas): resuming then needs the same tab.
    saved() {
      try {
        return JSON.parse(localStorage.getItem(this.storageKey));
      } catch {
        return null;
      }
    }

    remember(record) {
      try {
        localStorage.setItem(this.storageKey, JSON.stringify(record));
      } catch {
        /* resumable in this tab only */
      }
    }

    forget() {
      try {
        localStorage.removeItem(this.storageKey);
      } catch {
        /* nothing stored */
      }
    }

    // --- what the user sees

    status(text, className = "") {
      const status = this.role("status");
      status.textContent = text;
      status.className = className;
    }

    // The API's messages quote code in `backticks` (the export guidance): shown as <code>.
    error(text) {
      const box = this.role("error");
      box.replaceChildren();
      text.split("`").forEach((part, i) => {
        if (i % 2) box.appendChild(document.createElement("code")).textContent = part;
        else box.appendChild(document.createTextNode(part));
      });
    }

    progress(bytes, size) {
      const bar = this.role("progress");
      this.role("progress-box").hidden = false;
      bar.max = size || 1;
      bar.value = Math.min(bytes, size);
      const text = `${formatBytes(bytes)} of ${formatBytes(size)} (${percent(bytes, size)}%)`;
      this.role("progress-text").textContent = text;
      bar.setAttribute("aria-valuetext", text);
      this.form.dispatchEvent(new CustomEvent("upload:progress", { detail: { bytes, size } }));
    }

    setBusy(busy) {
      // The button that had keyboard focus is hidden here: focus goes to the one shown in its
      // place (it fell to the page), and back to Upload when the upload ends.
      const focused = document.activeElement;
      const lost = !focused || focused === document.body;
      const moveFocus = focused === this.role("start") || focused === this.role("cancel");
      this.busy = busy;
      for (const field of this.form.querySelectorAll("input, select, textarea")) {
        field.disabled = busy;
      }
      this.role("start").hidden = busy;
      this.role("cancel").hidden = !busy;
      this.role("discard").disabled = busy;
      if (!busy) this.role("resume-now").hidden = true;
      if (busy && moveFocus) this.role("cancel").focus();
      if (!busy && (moveFocus || (lost && this.form.dataset.keyboard))) this.role("start").focus();
      if (busy && moveFocus) this.form.dataset.keyboard = "1";
      if (!busy) delete this.form.dataset.keyboard;
    }

    showArchitecture() {
      this.role("architecture").hidden = this.form.elements.format.value !== "safetensors";
    }

    showPending() {
      const { record, state } = this.pending;
      this.role("resume").hidden = false;
      this.role("resume-name").textContent = record.name;
      this.role("resume-at").textContent =
        `${formatBytes(state.received_bytes)} of ${formatBytes(state.size)}`;
      this.role("start").textContent = "Resume upload";
      this.form.elements.format.value = record.format;
      this.showArchitecture();
      this.progress(state.received_bytes, state.size);
    }

    clearPending() {
      this.pending = null;
      this.role("resume").hidden = true;
      this.role("start").textContent = "Upload";
    }

    // --- flows

    async offerResume() {
      const record = this.saved();
      if (!record) return;
      let state;
      try {
        state = await api(this.form, "GET", record.url);
      } catch (err) {
        // Gone, expired or not ours any more: forget it. A network failure: try next visit.
        if (err instanceof ApiError && !RETRY_STATUSES.has(err.status)) this.forget();
        return;
      }
      if (state.status !== "open") {
        this.forget();
        return;
      }
      this.pending = { record, state };
      this.showPending();
    }

    fileChosen() {
      const file = this.fileInput.files[0];
      this.error("");
      if (!file) return;
      if (this.pending && sameFile(file, this.pending.record)) {
        this.role("start").textContent = "Resume upload";
        this.status(`Ready to resume ${file.name}.`);
        return;
      }
      const format = formatFor(file.name);
      if (format) this.form.elements.format.value = format;
      this.showArchitecture();
      if (this.pending) {
        this.role("start").textContent = "Upload";
        this.status(
          `${file.name} is not the interrupted file (${this.pending.record.name}); ` +
            "uploading it discards the interrupted upload."
        );
      } else {
        this.status("");
      }
    }

    async start() {
      if (this.busy) return;
      const file = this.fileInput.files[0];
      this.error("");
      if (!file) {
        this.error("Choose the model file first.");
        return;
      }
      this.controller = new AbortController();
      const resuming = this.pending && sameFile(file, this.pending.record);
      let record = resuming ? this.pending.record : null;
      let details;
      try {
        details = record ? null : this.sessionDetails(file);
      } catch (err) {
        this.error(err.message);
        return;
      }
      this.setBusy(true);
      try {
        if (this.pending && !resuming) await this.abandon(this.pending.record);
        this.clearPending();
        if (record) {
          this.status(`Resuming the upload of ${file.name}…`);
        } else {
          record = await this.createSession(file, details);
        }
        this.current = record;
        await this.sendMissing(file, record);
        const version = await this.complete(file, record);
        this.forget();
        this.finished(version);
      } catch (err) {
        if (err.name === "PauseError") {
          // The page is gone; the saved session lets the next visit resume.
        } else if (err.name === "AbortError") {
          const made = record ? await this.abandon(record) : null;
          if (made) {
            // Completed on the server before the cancel reached it: the version exists.
            this.finished({ number: made, status: "validating" });
          } else {
            this.status("Upload cancelled.");
            this.role("progress-box").hidden = true;
          }
        } else {
          this.status("");
          this.error(this.explain(err));
          this.role("progress-box").hidden = true;
          if (this.saved()) this.offerResume(); // e.g. signed out: resumable once signed in
        }
      } finally {
        this.current = null;
        this.setBusy(false);
      }
    }

    sessionDetails(file) {
      const format = this.form.elements.format.value;
      const details = {
        filename: file.name,
        format,
        size: file.size,
        label: this.form.elements.label.value.trim(),
        architecture: "",
        architecture_config: {},
      };
      if (format === "safetensors") {
        details.architecture = this.form.elements.architecture.value.trim();
        const text = this.form.elements.architecture_config.value.trim();
        if (text) {
          const parsed = parseJson(text);
          if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
            throw new Error('The architecture config must be a JSON object, e.g. {"hidden": [8]}.');
          }
          details.architecture_config = parsed;
        }
      }
      return details;
    }

    async createSession(file, details) {
      const hashing = `Computing the SHA-256 of ${file.name}…`;
      this.status(hashing);
      const sha256 = await hashFile(file, (done) => {
        this.status(`${hashing} ${percent(done, file.size)}%`);
        if (this.controller.signal.aborted) throw abortError();
      });
      this.status(`Uploading ${file.name}…`);
      const session = await this.retrying(() =>
        api(this.form, "POST", this.form.dataset.createUrl, { ...details, sha256 }, this.signal())
      );
      const record = {
        id: session.id,
        url: session.upload_url,
        name: file.name,
        size: file.size,
        lastModified: file.lastModified,
        format: details.format,
        createdAt: Date.now(),
      };
      this.remember(record);
      return record;
    }

    signal() {
      return this.controller.signal;
    }

    async sendMissing(file, record) {
      const state = await this.retrying(() =>
        api(this.form, "GET", record.url, undefined, this.signal())
      );
      if (state.status !== "open") {
        this.forget();
        throw new Error(`This upload is ${state.status}; start a new one.`);
      }
      let confirmed = state.received_bytes;
      const sending = new Map(); // chunk start -> its bytes sent so far
      const report = () => {
        let bytes = confirmed;
        for (const sent of sending.values()) bytes += sent;
        this.progress(bytes, file.size);
      };
      report();
      const queue = chunksOf(state.missing_ranges, state.chunk_size);
      let failure = null;
      const worker = async () => {
        while (queue.length && !failure) {
          // Navigated away (htmx swaps the page without unloading it): stop, resumable later.
          if (!this.form.isConnected) throw new DOMException("Left the page.", "PauseError");
          const [start, end] = queue.shift();
          const onProgress = (loaded) => {
            sending.set(start, loaded);
            report();
          };
          try {
            await this.retrying(() => {
              sending.set(start, 0); // a retry sends the chunk again from its start
              return putChunk(this.form, record.url, file, start, end, onProgress, this.signal());
            });
          } catch (err) {
            if (err instanceof ApiError && err.status === 409) this.forget(); // expired or closed
            throw err;
          } finally {
            sending.delete(start);
          }
          confirmed += end - start + 1;
          report();
        }
      };
      const workers = Math.max(1, Math.min(config.parallelChunks, queue.length));
      // The first failure stops the others from taking more chunks; the one they are sending
      // finishes (it is kept, and counts when the upload is resumed).
      await Promise.all(
        Array.from({ length: workers }, () =>
          worker().catch((err) => {
            failure = failure || err;
          })
        )
      );
      if (failure) throw failure;
    }

    async complete(file, record) {
      // Past this point the server makes the version: a cancel could only lie about it.
      this.role("cancel").hidden = true;
      this.status("Assembling and checking the upload…");
      const url = `${record.url}/complete`;
      try {
        return await this.retrying(() => api(this.form, "POST", url, undefined, this.signal()));
      } catch (err) {
        if (!(err instanceof ApiError) || RETRY_STATUSES.has(err.status)) throw err;
        if (err.status === 409 && err.body.missing_ranges) {
          await this.sendMissing(file, record); // a chunk went missing: send it, then again
          return await this.retrying(() => api(this.form, "POST", url, undefined, this.signal()));
        }
        // A completion that worked but whose reply was lost reads as a 409 on the retry.
        const state = await api(this.form, "GET", record.url).catch(() => null);
        if (state && state.status === "completed" && state.version) {
          return { number: state.version, status: "validating" };
        }
        // The file cannot become a version (checksum, format): drop its chunks.
        await this.abandon(record);
        throw err;
      }
    }

    // Retries what failed for a passing reason with exponential backoff; when the retries run
    // out, or the browser is offline, waits for the connection (or the "Retry now" button).
    async retrying(attempt) {
      for (let failures = 0; ; failures++) {
        try {
          return await attempt();
        } catch (err) {
          if (!retryable(err)) throw err;
          if (!navigator.onLine || failures >= config.retries) {
            this.status(
              "The connection to the server is lost. The upload is saved: it continues when " +
                "the connection is back (or press Retry now), and you can also reload the " +
                "page later and resume it."
            );
            await this.waitForWake(true);
            failures = -1;
            continue;
          }
          const delay =
            Math.min(config.retryMaxMs, config.retryBaseMs * 2 ** failures) *
            (0.75 + Math.random() * 0.5);
          this.status(
            `${err.message} Retrying in ${Math.max(1, Math.round(delay / 1000))} s ` +
              `(attempt ${failures + 2} of ${config.retries + 1})…`
          );
          await this.waitForWake(false, delay);
        }
      }
    }

    waitForWake(showButton, ms) {
      if (showButton) {
        this.buttonWaits += 1;
        this.role("resume-now").hidden = false;
      }
      const signal = this.signal();
      return new Promise((resolve, reject) => {
        const timer = ms === undefined ? null : setTimeout(() => done(), ms);
        const onAbort = () => done(abortError());
        const wake = () => done();
        const done = (err) => {
          clearTimeout(timer);
          signal.removeEventListener("abort", onAbort);
          if (!this.wakeUps.delete(wake)) return; // woken already
          if (showButton && --this.buttonWaits === 0) this.role("resume-now").hidden = true;
          if (err) reject(err);
          else {
            if (showButton) this.status(`Uploading ${this.current ? this.current.name : ""}…`);
            resolve();
          }
        };
        this.wakeUps.add(wake);
        if (signal.aborted) return done(abortError());
        signal.addEventListener("abort", onAbort);
      });
    }

    wake() {
      for (const wake of [...this.wakeUps]) wake();
    }

    // Drops the upload's chunks on the server; the version number when the upload turned out
    // to be completed already (a 409 naming it), else null.
    async abandon(record) {
      let made = null;
      try {
        await api(this.form, "DELETE", record.url);
      } catch (err) {
        if (err instanceof ApiError && err.status === 409 && err.body.version) made = err.body.version;
      }
      this.forget();
      return made;
    }

    async discard() {
      if (!this.pending) return;
      await this.abandon(this.pending.record);
      this.clearPending();
      this.role("progress-box").hidden = true;
      this.status("The interrupted upload was discarded.");
      this.form.elements.file.focus(); // the button pressed is gone with its box
    }

    explain(err) {
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        return `${err.message} If you were signed out, sign in again and come back to resume.`;
      }
      return err.message;
    }

    finished(version) {
      this.role("progress").value = this.role("progress").max;
      this.status(
        `Version ${version.number} uploaded: ${version.status}. ` +
          "The model host checks it next; the versions table shows the result.",
        "done"
      );
      this.form.reset();
      this.showArchitecture();
      this.form.dispatchEvent(new CustomEvent("upload:done", { detail: { version } }));
      this.refreshVersions();
    }

    refreshVersions() {
      const url = this.form.dataset.versionsUrl;
      if (window.htmx) {
        window.htmx.ajax("GET", url, { target: "#versions", swap: "outerHTML" });
        return;
      }
      fetch(url, { credentials: "same-origin" })
        .then((response) => response.text())
        .then((html) => {
          const table = document.getElementById("versions");
          if (table) table.outerHTML = html;
        })
        .catch(() => null);
    }
  }

  function scan(root) {
    const forms = root.matches && root.matches("form[data-upload]") ? [root] : [];
    forms.push(...root.querySelectorAll("form[data-upload]"));
    for (const form of forms) {
      if (!form.mmUploader) form.mmUploader = new Uploader(form);
    }
  }

  window.mmUpload = { config, scan, Sha256, hashFile, chunksOf };
  document.addEventListener("htmx:load", (event) => scan(event.detail.elt));
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", () => scan(document));
  } else {
    scan(document);
  }
})();
