/* "Try it": pick a model and workflow, give a DICOM folder / zip / NIfTI, upload with a progress
 * bar (XMLHttpRequest: fetch cannot report upload progress), then follow the job and open its page. */
"use strict";
(() => {
  const models = JSON.parse(document.getElementById("models-data").textContent);
  const form = document.getElementById("try-form");
  const modelSelect = document.getElementById("model");
  const workflowSelect = document.getElementById("workflow");
  const folderInput = document.getElementById("folder-input");
  const filesInput = document.getElementById("files-input");
  const chosenText = document.getElementById("chosen-files");
  const tokenInput = document.getElementById("token");
  const errorBox = document.getElementById("try-error");
  const panel = document.getElementById("progress-panel");
  const bar = document.getElementById("job-progress");
  const statusText = document.getElementById("job-status");
  const uploadText = document.getElementById("upload-status");
  const jobLink = document.getElementById("job-link");
  let files = [];

  tokenInput.value = medhub.token();

  function fillWorkflows() {
    const model = models.find(m => m.id === modelSelect.value);
    workflowSelect.replaceChildren(...(model ? model.workflows : ["default"]).map(w => medhub.el("option", {value: w}, w)));
    fitOptions();
  }
  /** RTSTRUCT is offered once: not as a checkbox when the chosen workflow writes one, not at all without segments. */
  function fitOptions() {
    const model = models.find(m => m.id === modelSelect.value) || {segments: true, writes_rtstruct: []};
    const byWorkflow = model.writes_rtstruct.includes(workflowSelect.value);
    const box = document.getElementById("opt-rtstruct");
    document.getElementById("opt-rtstruct-label").hidden = byWorkflow || !model.segments;
    document.getElementById("opt-rtstruct-note").hidden = !byWorkflow;
    document.getElementById("opt-labelmap-label").hidden = !model.segments;
    if (byWorkflow || !model.segments) box.checked = false;
    if (!model.segments) document.getElementById("opt-labelmap").checked = false;
  }
  modelSelect.addEventListener("change", fillWorkflows);
  workflowSelect.addEventListener("change", fitOptions);
  fillWorkflows();

  function describe(list) {
    const total = list.reduce((n, f) => n + f.size, 0);
    const mb = (total / 1048576).toFixed(1);
    return list.length === 1 ? `${list[0].name} (${mb} MB)` : `${list.length} files (${mb} MB)`;
  }
  folderInput.addEventListener("change", () => {
    files = Array.from(folderInput.files);
    filesInput.value = "";
    chosenText.textContent = files.length ? "Folder: " + describe(files) : "No input chosen yet.";
  });
  filesInput.addEventListener("change", () => {
    files = Array.from(filesInput.files);
    folderInput.value = "";
    chosenText.textContent = files.length ? "Files: " + describe(files) : "No input chosen yet.";
  });

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function upload(data) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/jobs");
      const headers = medhub.headers();
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = ev => {
        if (ev.lengthComputable) {
          bar.max = 1; bar.value = ev.loaded / ev.total;
          uploadText.textContent = `Uploading: ${Math.round(100 * ev.loaded / ev.total)} %`;
        }
      };
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status === 201 || xhr.status === 200) resolve(body);
        else reject(new Error((body && body.detail) ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
                                                    : `${xhr.status} ${xhr.statusText}`));
      };
      xhr.onerror = () => reject(new Error("the upload failed (network error or the server closed the connection)"));
      xhr.send(data);
    });
  }

  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    showError("");
    if (!files.length) { showError("Choose a DICOM folder, a zip or a NIfTI file first."); return; }
    medhub.setToken(tokenInput.value.trim());
    const data = new FormData();
    data.append("model", modelSelect.value);
    data.append("workflow", workflowSelect.value || "default");
    data.append("options", JSON.stringify({
      rtstruct: document.getElementById("opt-rtstruct").checked,
      labelmap: document.getElementById("opt-labelmap").checked,
    }));
    // The folder's relative paths keep files of different subfolders apart.
    for (const f of files) data.append("files", f, f.webkitRelativePath || f.name);
    const start = document.getElementById("start");
    start.disabled = true;
    panel.hidden = false;
    statusText.textContent = "";
    try {
      const job = await upload(data);
      uploadText.textContent = `Uploaded ${describe(files)}.`;
      jobLink.textContent = job.id;
      jobLink.href = "/jobs/" + encodeURIComponent(job.id);
      bar.value = 0;
      statusText.textContent = medhub.describeProgress(job.progress || {}, job.status);
      const final = await medhub.follow(job.id, (p, status) => {
        if (p.series_total) bar.value = medhub.fraction(p);
        statusText.textContent = medhub.describeProgress(p, status || "running");
      });
      bar.value = 1;
      statusText.textContent = final.status + (final.error ? ": " + final.error : "");
      window.location.href = "/jobs/" + encodeURIComponent(job.id);
    } catch (e) {
      showError(e.message);
      uploadText.textContent = "";
    } finally {
      start.disabled = false;
    }
  });
})();
