/* Shared by every page: the API token and JSON calls to the medhub API.
 * The token comes from the page's ?token= parameter (then it is kept in localStorage and removed
 * from the address bar, so it does not end up in bookmarks) or from localStorage. */
"use strict";
const medhub = (() => {
  const KEY = "medhubToken";
  const params = new URLSearchParams(window.location.search);
  if (params.has("token")) {
    try { localStorage.setItem(KEY, params.get("token")); } catch (e) { /* storage disabled */ }
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : "") + window.location.hash);
  }
  let memory = null;  // when localStorage is unavailable

  function token() {
    try { return localStorage.getItem(KEY) || memory || ""; } catch (e) { return memory || ""; }
  }
  function setToken(value) {
    memory = value;
    try { if (value) localStorage.setItem(KEY, value); else localStorage.removeItem(KEY); } catch (e) { /* ignore */ }
  }
  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const t = token();
    if (t) h["Authorization"] = "Bearer " + t;
    return h;
  }
  /** A URL with ?token= added, for links and EventSource (they cannot send headers). */
  function withToken(url) {
    const t = token();
    if (!t) return url;
    return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(t);
  }
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  async function errorOf(response) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { /* not JSON */ }
    return new ApiError(response.status, message);
  }
  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    const response = await fetch(path, opts);
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    return response.json();
  }
  async function bytes(path) {
    const response = await fetch(path, {headers: headers()});
    if (!response.ok) throw await errorOf(response);
    return response.arrayBuffer();
  }
  /** Follow a job: server-sent events, falling back to polling GET /api/jobs/{id} when SSE fails.
   *  onProgress(progressPart) on every change; returns a promise of the final job JSON. */
  function follow(jobId, onProgress) {
    const FINAL = ["succeeded", "failed", "cancelled"];
    return new Promise((resolve, reject) => {
      let finished = false;
      let source = null;
      const finish = async () => {
        if (finished) return;
        finished = true;
        if (source) source.close();
        try { resolve(await api("/api/jobs/" + encodeURIComponent(jobId))); } catch (e) { reject(e); }
      };
      const poll = async () => {
        while (!finished) {
          try {
            const job = await api("/api/jobs/" + encodeURIComponent(jobId));
            onProgress(job.progress || {}, job.status);
            if (FINAL.includes(job.status)) { finish(); return; }
          } catch (e) {
            if (e.status && e.status < 500) { finished = true; reject(e); return; }
          }
          await new Promise(r => setTimeout(r, 1500));
        }
      };
      if (!window.EventSource) { poll(); return; }
      source = new EventSource(withToken("/api/jobs/" + encodeURIComponent(jobId) + "/events"));
      source.addEventListener("progress", ev => {
        try { onProgress(JSON.parse(ev.data), null); } catch (e) { /* ignore a malformed event */ }
      });
      source.addEventListener("done", () => finish());
      source.onerror = () => {
        if (finished) return;
        source.close();
        source = null;
        poll();  // the fallback: the stream broke (proxy, server restart) or is not supported
      };
    });
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "style") node.style.cssText = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  /** 0..1 done: finished series plus the finished steps of the running one (older servers: series only). */
  function fraction(p) {
    if (typeof p.fraction === "number") return p.fraction;
    return p.series_total ? (p.series_done || 0) / p.series_total : 0;
  }
  function describeProgress(p, status) {
    const parts = [];
    if (status) parts.push(status);
    if (p.series_total) parts.push(`series ${p.series_done || 0} of ${p.series_total}`);
    if (p.steps_total) parts.push(`step ${Math.min(p.steps_done + 1, p.steps_total)} of ${p.steps_total}`);
    if (p.step) parts.push(`step: ${p.step}`);
    if (p.series) parts.push(String(p.series));
    return parts.join(" · ");
  }
  return {token, setToken, headers, withToken, api, bytes, follow, el, describeProgress, fraction, ApiError};
})();
