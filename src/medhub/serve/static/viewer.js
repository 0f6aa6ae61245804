/* The result viewer: three orthogonal slices of the input with the label map blended over them.
 *
 * Data (see medhub/serve/viewer_data.py): meta JSON, image.bin (int16) and labels.bin (uint8), both
 * [x, y, z] with x fastest, axes pointing to patient Left, Posterior, Superior. So:
 *   axial    (fixed z): columns = x (patient right on the left of the screen), rows = y (anterior up)
 *   coronal  (fixed y): columns = x, rows = z flipped (superior up)
 *   sagittal (fixed x): columns = y (anterior on the left), rows = z flipped
 * Each canvas has one pixel per voxel; CSS sizes it to the physical aspect ratio (spacing). */
"use strict";
class SliceViewer {
  constructor(root) {
    this.root = root;
    this.planes = ["axial", "coronal", "sagittal"];
    this.opacity = 0.5;
    this.colors = new Uint8Array(256 * 3);
    this.visible = new Uint8Array(256);
    this.pos = {x: 0, y: 0, z: 0};
    this.meta = null;
    for (const plane of this.planes) {
      const canvas = root.querySelector(`#${plane}-canvas`);
      const slider = root.querySelector(`#${plane}-slider`);
      slider.addEventListener("input", () => { this.setSlice(plane, Number(slider.value)); });
      canvas.addEventListener("wheel", ev => {
        if (!this.meta) return;
        ev.preventDefault();
        this.setSlice(plane, this.slice(plane) + (ev.deltaY > 0 ? 1 : -1));
      }, {passive: false});
      canvas.addEventListener("click", ev => this.click(plane, canvas, ev));
    }
    root.querySelector("#opacity").addEventListener("input", ev => { this.opacity = Number(ev.target.value); this.drawAll(); });
    root.querySelector("#window-select").addEventListener("change", ev => {
      this.window = this.meta.window_presets[ev.target.value] || this.meta.window;
      this.drawAll();
    });
  }

  async load(base) {
    const [meta, image, labels] = await Promise.all([
      medhub.api(base + "/meta"), medhub.bytes(base + "/image.bin"), medhub.bytes(base + "/labels.bin")]);
    const [X, Y, Z] = meta.shape;
    if (image.byteLength !== 2 * X * Y * Z || labels.byteLength !== X * Y * Z) {
      throw new Error(`viewer data of ${image.byteLength} / ${labels.byteLength} bytes does not fit shape ${meta.shape}`);
    }
    this.meta = meta;
    this.image = new Int16Array(image);
    this.labels = new Uint8Array(labels);
    this.window = meta.window;
    this.opacity = Number(this.root.querySelector("#opacity").value);
    this.colors.fill(128);
    this.visible.fill(0);
    for (const s of meta.segments) {
      this.colors.set(s.color.slice(0, 3), 3 * s.label);
      this.visible[s.label] = 1;
    }
    this.fillWindows();
    this.buildLegend();
    this.startAtLabels();
    for (const plane of this.planes) {
      const [w, h, n] = this.dims(plane);
      const canvas = this.root.querySelector(`#${plane}-canvas`);
      canvas.width = w; canvas.height = h;
      const [pw, ph] = this.physical(plane);
      canvas.style.aspectRatio = `${pw} / ${ph}`;
      const slider = this.root.querySelector(`#${plane}-slider`);
      slider.max = String(n - 1);
    }
    this.drawAll();
    return meta;
  }

  dims(plane) {
    const [X, Y, Z] = this.meta.shape;
    return {axial: [X, Y, Z], coronal: [X, Z, Y], sagittal: [Y, Z, X]}[plane];
  }
  physical(plane) {
    const [X, Y, Z] = this.meta.shape;
    const [sx, sy, sz] = this.meta.spacing;
    return {axial: [X * sx, Y * sy], coronal: [X * sx, Z * sz], sagittal: [Y * sy, Z * sz]}[plane];
  }
  axis(plane) { return {axial: "z", coronal: "y", sagittal: "x"}[plane]; }
  slice(plane) { return this.pos[this.axis(plane)]; }

  setSlice(plane, value) {
    const n = this.dims(plane)[2];
    this.pos[this.axis(plane)] = Math.max(0, Math.min(n - 1, Math.round(value)));
    this.draw(plane);
  }

  /** Start where the segmentation is: on each axis the slice holding the most labelled voxels. */
  startAtLabels() {
    const [X, Y, Z] = this.meta.shape;
    const cx = new Float64Array(X), cy = new Float64Array(Y), cz = new Float64Array(Z);
    const L = this.labels;
    let i = 0;
    for (let z = 0; z < Z; z++) for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++, i++) {
      if (L[i]) { cx[x]++; cy[y]++; cz[z]++; }
    }
    const best = (c, n) => { let k = Math.floor(n / 2); for (let j = 0; j < n; j++) if (c[j] > c[k]) k = j; return k; };
    this.pos = {x: best(cx, X), y: best(cy, Y), z: best(cz, Z)};
  }

  fillWindows() {
    const select = this.root.querySelector("#window-select");
    const presets = this.meta.window_presets || {auto: this.meta.window};
    let chosen = "auto";
    for (const [name, w] of Object.entries(presets)) if (w[0] === this.meta.window[0] && w[1] === this.meta.window[1]) chosen = name;
    select.replaceChildren(...Object.keys(presets).map(name => medhub.el("option", {value: name}, name)));
    select.value = chosen;
  }

  buildLegend() {
    const legend = this.root.querySelector("#legend");
    legend.replaceChildren();
    for (const s of this.meta.segments) {
      const box = medhub.el("input", {type: "checkbox", "data-label": String(s.label), id: `segment-${s.label}`});
      box.checked = true;
      box.addEventListener("change", () => { this.visible[s.label] = box.checked ? 1 : 0; this.drawAll(); });
      legend.append(medhub.el("li", {class: s.voxels ? "" : "empty"},
        medhub.el("label", {}, box,
          medhub.el("span", {class: "swatch", style: `background: rgb(${s.color.join(",")})`}),
          " " + s.name + (s.voxels ? "" : " (empty)"))));
    }
  }

  /** Show or hide one label (or all with label = null); used by the legend and by tests. */
  setVisible(label, on) {
    for (const s of this.meta.segments) {
      if (label !== null && s.label !== label) continue;
      this.visible[s.label] = on ? 1 : 0;
      const box = this.root.querySelector(`#segment-${s.label}`);
      if (box) box.checked = !!on;
    }
    this.drawAll();
  }

  click(plane, canvas, ev) {
    if (!this.meta) return;
    const rect = canvas.getBoundingClientRect();
    const [w, h] = this.dims(plane);
    const i = Math.floor((ev.clientX - rect.left) / rect.width * w);
    const j = Math.floor((ev.clientY - rect.top) / rect.height * h);
    const Z = this.meta.shape[2];
    if (plane === "axial") { this.pos.x = i; this.pos.y = j; }
    if (plane === "coronal") { this.pos.x = i; this.pos.z = Z - 1 - j; }
    if (plane === "sagittal") { this.pos.y = i; this.pos.z = Z - 1 - j; }
    this.drawAll();
  }

  drawAll() { if (this.meta) for (const plane of this.planes) this.draw(plane); }

  draw(plane) {
    const [X, Y, Z] = this.meta.shape;
    const [w, h, n] = this.dims(plane);
    const s = this.slice(plane);
    const canvas = this.root.querySelector(`#${plane}-canvas`);
    const ctx = canvas.getContext("2d");
    const out = ctx.createImageData(w, h);
    const px = out.data;
    const [lo, hi] = this.window;
    const scale = 255 / Math.max(1e-6, hi - lo);
    const img = this.image, lab = this.labels, colors = this.colors, visible = this.visible;
    const a = this.opacity;
    // index = x + X*y + X*Y*z; per plane: start of a row and the step along it.
    for (let j = 0; j < h; j++) {
      let idx, step;
      if (plane === "axial") { idx = X * j + X * Y * s; step = 1; }
      else if (plane === "coronal") { idx = X * s + X * Y * (Z - 1 - j); step = 1; }
      else { idx = s + X * Y * (Z - 1 - j); step = X; }
      let o = 4 * w * j;
      for (let i = 0; i < w; i++, idx += step, o += 4) {
        let g = (img[idx] - lo) * scale;
        g = g < 0 ? 0 : (g > 255 ? 255 : g);
        const l = lab[idx];
        if (l && visible[l] && a > 0) {
          px[o] = g + (colors[3 * l] - g) * a;
          px[o + 1] = g + (colors[3 * l + 1] - g) * a;
          px[o + 2] = g + (colors[3 * l + 2] - g) * a;
        } else {
          px[o] = px[o + 1] = px[o + 2] = g;
        }
        px[o + 3] = 255;
      }
    }
    ctx.putImageData(out, 0, 0);
    this.root.querySelector(`#${plane}-slider`).value = String(s);
    this.root.querySelector(`#${plane}-no`).textContent = `${s + 1} / ${n}`;
  }
}
window.SliceViewer = SliceViewer;
