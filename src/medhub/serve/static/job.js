/* The result page: the job's state (following progress while it runs), then per series the viewer,
 * the segment volumes, the model's reported values and the downloads. */
"use strict";
(() => {
  const jobId = JSON.parse(document.getElementById("job-data").textContent).id;
  const $ = id => document.getElementById(id);
  const el = medhub.el;
  const FINAL = ["succeeded", "failed", "cancelled"];
  const viewer = new SliceViewer($("viewer"));
  window.medhubViewer = viewer;  // for the browser test and for curious users in the console
  const jobPath = "/api/jobs/" + encodeURIComponent(jobId);
  let job = null;

  function showError(message) { $("job-error").textContent = message; $("job-error").hidden = !message; }
  function setState(status) {
    $("job-state").textContent = status;
    $("job-state").className = "state state-" + status;
    document.body.dataset.jobStatus = status;
  }
  function size(bytes) {
    if (bytes >= 1048576) return (bytes / 1048576).toFixed(1) + " MB";
    if (bytes >= 1024) return (bytes / 1024).toFixed(1) + " kB";
    return bytes + " B";
  }
  function resultUrl(path) {
    return medhub.withToken(jobPath + "/results/" + path.split("/").map(encodeURIComponent).join("/"));
  }
  const KIND = {seg: "DICOM SEG", rtstruct: "RTSTRUCT", nifti: "NIfTI", labels: "label names (JSON)", report: "report (JSON)",
                statistics: "statistics", preview: "preview (PNG)", values: "values", sr: "DICOM SR",
                embedding: "embedding"};
  const LABEL_MAP = /(\.seg\.dcm|\.nii|\.nii\.gz)$/;

  /** The series key as one path component, as medhub.files.safe_component makes it (the viewer's URLs use it). */
  function safeKey(key) {
    const text = String(key).replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+|[._]+$/g, "");
    return (text || "unknown").slice(0, 120);
  }

  function reportEntry(series) {
    const entries = (job.report && job.report.series) || [];
    return entries.find(e => e.key === series || safeKey(e.key) === series ||
                             (e.outputs || []).some(o => o.startsWith(series + "/")));
  }

  /** Series that have a label map to show: succeeded entries of the report with a SEG or NIfTI output. */
  function viewableSeries() {
    const entries = ((job.report && job.report.series) || []).filter(
      e => e.status === "succeeded" && (e.outputs || []).some(o => LABEL_MAP.test(o)));
    if (entries.length) return entries.map(e => safeKey(e.key));
    return [...new Set((job.results || []).filter(r => r.kind === "nifti" || r.kind === "seg").map(r => r.series))];
  }

  function renderDownloads() {
    const list = $("downloads");
    list.replaceChildren();
    for (const r of job.results || []) {
      list.append(el("li", {class: "download download-" + r.kind},
        el("a", {href: resultUrl(r.path), download: r.path.split("/").pop()}, KIND[r.kind] || r.kind),
        " ", el("code", {}, r.path), " ", el("small", {}, size(r.size))));
    }
    if ((job.results || []).length) {
      list.append(el("li", {class: "download download-zip"},
        el("a", {href: medhub.withToken(jobPath + "/results"), download: `medhub-${jobId}.zip`}, "Everything (zip)")));
    }
  }

  /** One volume per segment (labelled voxels x voxel volume), and the model's own values with what each one is.
   *  A model value equal to a segment's volume is not listed twice: the segment's row says the model agrees. */
  function renderTables(meta, series) {
    const entry = reportEntry(series);
    const reported = Object.entries((entry && entry.values) || {});
    const described = Object.fromEntries((meta.model_values || []).map(v => [v.name, v]));
    const same = {};  // segment id -> the model value that is the same volume
    for (const [name, value] of reported) {
      const unit = (described[name] || {}).unit || (name.endsWith("_ml") ? "ml" : "");
      if (unit !== "ml" || typeof value !== "number") continue;
      const match = meta.segments.find(s => !same[s.id] && Math.abs(s.volume_ml - value) <= Math.max(0.05, 0.001 * value));
      if (match) same[match.id] = name;
    }
    const ml = v => v.toLocaleString(undefined, {minimumFractionDigits: 1, maximumFractionDigits: 1});
    const body = $("volumes").querySelector("tbody");
    body.replaceChildren(...meta.segments.map(s => el("tr", {"data-segment": s.id},
      el("td", {}, el("span", {class: "swatch", style: `background: rgb(${s.color.join(",")})`})),
      el("td", {}, s.name, same[s.id] && s.voxels ? el("small", {class: "agrees"}, ` (the model reports the same: ${same[s.id]})`) : null),
      el("td", {}, String(s.label)),
      el("td", {class: "num"}, ml(s.volume_ml)))));
    const [sx, sy, sz] = meta.spacing;
    const voxel = meta.subsample > 1 ? "the image's own voxels" : `${sx.toFixed(2)} × ${sy.toFixed(2)} × ${sz.toFixed(2)} mm voxels`;
    $("volume-note").textContent = `Volume = the voxels labelled with the segment × the voxel volume, counted on ${voxel} ` +
      "(the grid of the series, not the model's internal one).";
    const listed = reported.filter(([name]) => !Object.values(same).includes(name));
    $("values-section").hidden = !listed.length;
    const values = $("values").querySelector("tbody");
    values.replaceChildren(...listed.map(([name, value]) => {
      const info = described[name] || {};
      const shown = typeof value === "number" ? value.toLocaleString() + (info.unit ? " " + info.unit : "") : JSON.stringify(value);
      return el("tr", {"data-value": name}, el("td", {}, el("code", {}, name)), el("td", {class: "num"}, shown),
                el("td", {class: "note-cell"}, info.description || ""));
    }));
    const notes = $("notes");
    notes.replaceChildren(...((entry && [...(entry.findings || []), ...(entry.notes || [])]) || []).map(n => el("p", {class: "note"}, n)));
    if (meta.subsample > 1) notes.append(el("p", {class: "note"}, `The viewer shows every ${meta.subsample}th voxel in-plane; volumes are computed at full resolution.`));
  }

  async function showSeries(series) {
    $("viewer-status").textContent = "loading the images…";
    document.body.dataset.viewer = "loading";
    try {
      const base = jobPath + "/viewer/" + encodeURIComponent(series);
      const meta = await viewer.load(base);
      renderTables(meta, series);
      const [X, Y, Z] = meta.shape;
      $("viewer-status").textContent = `${X} × ${Y} × ${Z} voxels of ${meta.spacing.map(v => v.toFixed(2)).join(" × ")} mm`;
      document.body.dataset.viewer = "ready";
    } catch (e) {
      $("viewer-status").textContent = "";
      showError("The viewer cannot show this series: " + e.message);
      document.body.dataset.viewer = "error";
    }
  }

  function renderResults() {
    const series = viewableSeries();
    renderDownloads();
    $("results").hidden = false;
    const select = $("series-select");
    select.replaceChildren(...series.map(s => {
      const entry = reportEntry(s);
      const label = entry && entry.description ? `${entry.description} (${s})` : s;
      return el("option", {value: s}, label);
    }));
    select.onchange = () => showSeries(select.value);
    if (series.length) showSeries(series[0]);
    else {
      $("viewer").hidden = true;
      $("viewer-status").textContent = "no label map to show";
    }
  }

  function renderSummary() {
    const parts = [`model ${job.model}`, `workflow ${job.workflow}`];
    if (job.report && job.report.summary) {
      const s = job.report.summary;
      parts.push(`${s.succeeded || 0} succeeded, ${s.implausible ? `${s.implausible} implausible, ` : ""}${s.failed || 0} failed, ${s.skipped || 0} skipped, ${s.rejected || 0} rejected`);
    }
    $("job-summary").textContent = parts.join(" · ");
    if (job.error) showError(job.error);
    const failed = ((job.report && job.report.series) || []).filter(e => e.status !== "succeeded" && e.reason);
    for (const e of failed) $("job-summary").append(el("br"), `${e.key}: ${e.status}: ${e.reason}`);
  }

  async function start() {
    try {
      job = await medhub.api(jobPath);
    } catch (e) {
      if (e.status === 401) { $("token-box").hidden = false; setState("needs a token"); return; }
      setState(e.status === 404 ? "not found" : "error");
      showError(e.message);
      return;
    }
    setState(job.status);
    renderSummary();
    if (!FINAL.includes(job.status)) {
      const bar = $("job-progress");
      bar.hidden = false;
      job = await medhub.follow(jobId, (p, status) => {
        if (p.series_total) bar.value = medhub.fraction(p);
        $("job-summary").textContent = medhub.describeProgress(p, status || "running");
        setState(status || "running");
      });
      bar.hidden = true;
      setState(job.status);
      renderSummary();
    }
    renderResults();
  }

  $("token-box").addEventListener("submit", ev => {
    ev.preventDefault();
    medhub.setToken($("token-input").value.trim());
    $("token-box").hidden = true;
    start();
  });
  start();
})();
