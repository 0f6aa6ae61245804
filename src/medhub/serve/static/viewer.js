/* The result viewer: three orthogonal slices of the input with the label map over them.
 *
 * Data (see medhub/serve/viewer_data.py): meta JSON, image.bin (int16) and labels.bin (uint8), both
 * [x, y, z] with x fastest, axes pointing to patient Left, Posterior, Superior. So, as radiologists read:
 *   axial    (fixed z): columns = x (the patient's right on the left of the screen), rows = y (anterior up)
 *   coronal  (fixed y): columns = x, rows = z flipped (superior up)
 *   sagittal (fixed x): columns = y (anterior on the left), rows = z flipped
 * Each view is a square canvas. A slice is drawn at its true physical aspect ratio (voxel spacing),
 * fitted into the square, but its short side never below MIN_SHORT_SIDE of the square: a stack of a
 * few thick slices is enlarged and centred on the crosshair instead of shrinking to a strip (drag
 * with Shift or the middle button to pan). The overlay is filled (opacity) or outlined; colours are
 * the server's display colours (segdb/colors.py). Mouse: click or drag = crosshair, wheel = slices,
 * Ctrl+wheel = zoom at the cursor, Shift+drag or middle drag = pan, double click = reset the view.
 * Moving over a view shows the voxel, its value (HU for CT), its position in patient coordinates
 * and the segment there. */
"use strict";
class SliceViewer {
  constructor(root) {
    this.root = root;
    this.planes = ["axial", "coronal", "sagittal"];
    this.MIN_SHORT_SIDE = 0.4;  // of the view's side
    this.CROSSHAIR = "rgb(0, 200, 255)";
    this.opacity = 0.5;
    this.outline = false;
    this.crosshair = true;
    this.colors = new Uint8Array(256 * 3);
    this.visible = new Uint8Array(256);
    this.names = {};
    this.pos = {x: 0, y: 0, z: 0};
    this.view = {};
    this.meta = null;
    for (const plane of this.planes) {
      this.view[plane] = {zoom: 1, centreX: null, centreY: null};
      const canvas = root.querySelector(`#${plane}-canvas`);
      const slider = root.querySelector(`#${plane}-slider`);
      slider.addEventListener("input", () => { this.setSlice(plane, Number(slider.value)); });
      canvas.addEventListener("wheel", ev => this.wheel(plane, canvas, ev), {passive: false});
      canvas.addEventListener("mousedown", ev => this.press(plane, canvas, ev));
      canvas.addEventListener("mousemove", ev => this.hover(plane, canvas, ev));
      canvas.addEventListener("mouseleave", () => this.showReadout(null));
      canvas.addEventListener("dblclick", () => this.resetView(plane));
      canvas.addEventListener("contextmenu", ev => ev.preventDefault());
    }
    window.addEventListener("mousemove", ev => this.drag(ev));
    window.addEventListener("mouseup", () => { this.dragging = null; });
    window.addEventListener("resize", () => { if (this.meta) { this.sizeCanvases(); this.drawAll(); } });
    const control = id => root.querySelector(id);
    control("#opacity").addEventListener("input", ev => { this.opacity = Number(ev.target.value); this.drawAll(); });
    control("#window-select").addEventListener("change", ev => {
      this.window = this.meta.window_presets[ev.target.value] || this.meta.window;
      this.drawAll();
    });
    control("#outline").addEventListener("change", ev => { this.outline = ev.target.checked; this.drawAll(); });
    control("#crosshair").addEventListener("change", ev => { this.crosshair = ev.target.checked; this.drawAll(); });
    control("#reset-view").addEventListener("click", () => { for (const p of this.planes) this.resetView(p, false); this.drawAll(); });
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
    this.outline = this.root.querySelector("#outline").checked;
    this.crosshair = this.root.querySelector("#crosshair").checked;
    this.colors.fill(128);
    this.visible.fill(0);
    this.names = {};
    for (const s of meta.segments) {
      this.colors.set(s.color.slice(0, 3), 3 * s.label);
      this.visible[s.label] = 1;
      this.names[s.label] = s.name;
    }
    this.fillWindows();
    this.buildLegend();
    const start = meta.start || [X >> 1, Y >> 1, Z >> 1];
    this.pos = {x: start[0], y: start[1], z: start[2]};
    this.offscreen = {};
    for (const plane of this.planes) {
      const [w, h, n] = this.dims(plane);
      const image = document.createElement("canvas"), overlay = document.createElement("canvas");
      image.width = overlay.width = w;
      image.height = overlay.height = h;
      this.offscreen[plane] = {image, overlay};
      this.root.querySelector(`#${plane}-slider`).max = String(n - 1);
      this.view[plane] = {zoom: 1, centreX: null, centreY: null};
    }
    this.sizeCanvases();
    this.drawAll();
    return meta;
  }

  // ------------------------------------------------------------------ geometry

  dims(plane) {
    const [X, Y, Z] = this.meta.shape;
    return {axial: [X, Y, Z], coronal: [X, Z, Y], sagittal: [Y, Z, X]}[plane];
  }
  /** (column, row) spacing in mm of a displayed slice. */
  spacing(plane) {
    const [sx, sy, sz] = this.meta.spacing;
    return {axial: [sx, sy], coronal: [sx, sz], sagittal: [sy, sz]}[plane];
  }
  axis(plane) { return {axial: "z", coronal: "y", sagittal: "x"}[plane]; }
  slice(plane) { return this.pos[this.axis(plane)]; }
  /** The crosshair in the plane's (column, row) voxel coordinates. */
  cross(plane) {
    const Z = this.meta.shape[2];
    return {axial: [this.pos.x, this.pos.y], coronal: [this.pos.x, Z - 1 - this.pos.z],
            sagittal: [this.pos.y, Z - 1 - this.pos.z]}[plane];
  }

  /** Square canvases of a whole number of CSS pixels, one backing pixel per device pixel: crisp lines. */
  sizeCanvases() {
    const ratio = window.devicePixelRatio || 1;
    for (const plane of this.planes) {
      const canvas = this.root.querySelector(`#${plane}-canvas`);
      const side = Math.max(64, Math.floor(canvas.parentElement.getBoundingClientRect().width));
      canvas.style.width = canvas.style.height = side + "px";
      canvas.width = canvas.height = Math.round(side * ratio);
    }
  }

  /** How a slice lands on its canvas: scale (canvas px per mm), the canvas position of voxel corner (0, 0),
   *  and the slice point (mm) at the canvas centre. */
  transform(plane) {
    const canvas = this.root.querySelector(`#${plane}-canvas`);
    const [w, h] = this.dims(plane);
    const [sc, sr] = this.spacing(plane);
    const wide = w * sc, tall = h * sr;
    const cw = canvas.width, ch = canvas.height;
    let scale = Math.min(cw / wide, ch / tall);
    scale = Math.max(scale, this.MIN_SHORT_SIDE * Math.min(cw, ch) / Math.min(wide, tall));  // never a strip
    const v = this.view[plane];
    scale *= v.zoom;
    // Until zoomed or panned: centred on the slice, or, where it overflows the view, on the crosshair.
    const [ci, cj] = this.cross(plane);
    const fit = (size, extent, at) => size * scale <= extent ? size / 2
      : Math.min(Math.max(at, extent / (2 * scale)), size - extent / (2 * scale));
    const cx = v.centreX ?? fit(wide, cw, (ci + 0.5) * sc);
    const cy = v.centreY ?? fit(tall, ch, (cj + 0.5) * sr);
    return {scale, sc, sr, left: cw / 2 - cx * scale, top: ch / 2 - cy * scale, cx, cy};
  }

  /** Canvas CSS pixel (relative to the canvas' top-left) of the centre of voxel (x, y, z) in a plane's view. */
  screenOf(plane, x, y, z) {
    const Z = this.meta.shape[2];
    const [i, j] = {axial: [x, y], coronal: [x, Z - 1 - z], sagittal: [y, Z - 1 - z]}[plane];
    const t = this.transform(plane);
    const canvas = this.root.querySelector(`#${plane}-canvas`);
    const css = canvas.clientWidth / canvas.width;
    return [(t.left + (i + 0.5) * t.sc * t.scale) * css, (t.top + (j + 0.5) * t.sr * t.scale) * css];
  }

  /** The voxel [x, y, z] under a mouse event, or null outside the slice. */
  voxelAt(plane, canvas, ev) {
    const rect = canvas.getBoundingClientRect();
    const px = (ev.clientX - rect.left) * canvas.width / rect.width;
    const py = (ev.clientY - rect.top) * canvas.height / rect.height;
    const t = this.transform(plane);
    const i = Math.floor((px - t.left) / (t.sc * t.scale));
    const j = Math.floor((py - t.top) / (t.sr * t.scale));
    const [w, h] = this.dims(plane);
    if (i < 0 || j < 0 || i >= w || j >= h) return null;
    const Z = this.meta.shape[2];
    const s = this.slice(plane);
    return {axial: [i, j, s], coronal: [i, s, Z - 1 - j], sagittal: [s, i, Z - 1 - j]}[plane];
  }

  // ------------------------------------------------------------------ interaction

  setSlice(plane, value) {
    const n = this.dims(plane)[2];
    this.pos[this.axis(plane)] = Math.max(0, Math.min(n - 1, Math.round(value)));
    this.drawAll();
  }

  wheel(plane, canvas, ev) {
    if (!this.meta) return;
    ev.preventDefault();
    if (ev.ctrlKey || ev.metaKey) { this.zoomAt(plane, canvas, ev, ev.deltaY < 0 ? 1.25 : 0.8); return; }
    this.setSlice(plane, this.slice(plane) + (ev.deltaY > 0 ? 1 : -1));
  }

  /** Zoom by ``factor`` keeping the point under the cursor where it is. */
  zoomAt(plane, canvas, ev, factor) {
    const rect = canvas.getBoundingClientRect();
    const px = (ev.clientX - rect.left) * canvas.width / rect.width;
    const py = (ev.clientY - rect.top) * canvas.height / rect.height;
    const before = this.transform(plane);
    const mmX = (px - before.left) / before.scale, mmY = (py - before.top) / before.scale;
    const v = this.view[plane];
    const zoom = Math.max(0.5, Math.min(16, v.zoom * factor));
    const after = before.scale * zoom / v.zoom;
    v.zoom = zoom;
    v.centreX = mmX + (canvas.width / 2 - px) / after;
    v.centreY = mmY + (canvas.height / 2 - py) / after;
    this.draw(plane);
  }

  resetView(plane, redraw = true) {
    this.view[plane] = {zoom: 1, centreX: null, centreY: null};
    if (redraw) this.draw(plane);
  }

  press(plane, canvas, ev) {
    if (!this.meta) return;
    ev.preventDefault();
    if (ev.button === 1 || ev.button === 2 || ev.shiftKey) {
      this.dragging = {mode: "pan", plane, canvas, x: ev.clientX, y: ev.clientY};
      return;
    }
    this.dragging = {mode: "cross", plane, canvas};
    this.moveCross(plane, canvas, ev);
  }

  drag(ev) {
    const d = this.dragging;
    if (!d) return;
    if (d.mode === "cross") { this.moveCross(d.plane, d.canvas, ev); return; }
    const ratio = d.canvas.width / d.canvas.getBoundingClientRect().width;
    const t = this.transform(d.plane);
    const v = this.view[d.plane];
    v.centreX = t.cx - (ev.clientX - d.x) * ratio / t.scale;
    v.centreY = t.cy - (ev.clientY - d.y) * ratio / t.scale;
    d.x = ev.clientX; d.y = ev.clientY;
    this.draw(d.plane);
  }

  moveCross(plane, canvas, ev) {
    const voxel = this.voxelAt(plane, canvas, ev);
    if (!voxel) return;
    const v = this.view[plane];
    if (v.centreX === null) {  // the view being clicked stays put (an enlarged one would follow the crosshair)
      const t = this.transform(plane);
      v.centreX = t.cx; v.centreY = t.cy;
    }
    [this.pos.x, this.pos.y, this.pos.z] = voxel;
    this.drawAll();
    this.showReadout(voxel);
  }

  hover(plane, canvas, ev) {
    if (!this.meta || (this.dragging && this.dragging.mode === "pan")) return;
    this.showReadout(this.voxelAt(plane, canvas, ev));
  }

  /** The value (HU for CT), voxel, patient position (R/L, A/P, S/I in mm) and segment at a voxel. */
  describe(voxel) {
    const [X, Y] = this.meta.shape;
    const [x, y, z] = voxel;
    const index = x + X * y + X * Y * z;
    const [slope, intercept] = this.meta.value_scale;
    const value = this.image[index] * slope + intercept;
    const a = this.meta.affine_lps;
    const world = [0, 1, 2].map(r => a[r][0] * x + a[r][1] * y + a[r][2] * z + a[r][3]);
    const label = this.labels[index];
    return {x, y, z, value, world, label, segment: label ? (this.names[label] || `label ${label}`) : ""};
  }

  showReadout(voxel) {
    const out = this.root.querySelector("#readout");
    if (!out) return;
    if (!voxel || !this.meta) { out.textContent = "\u00a0"; delete out.dataset.value; return; }
    const d = this.describe(voxel);
    const unit = this.meta.unit ? " " + this.meta.unit : "";
    const digits = Number.isInteger(d.value) ? 0 : 2;
    const side = (v, neg, pos) => `${v < 0 ? neg : pos} ${Math.abs(v).toFixed(1)}`;
    const where = [side(d.world[0], "R", "L"), side(d.world[1], "A", "P"), side(d.world[2], "I", "S")].join(" ");
    out.textContent = `${d.value.toFixed(digits)}${unit} · voxel ${d.x}, ${d.y}, ${d.z} · ${where} mm` +
      (d.segment ? ` · ${d.segment}` : "");
    Object.assign(out.dataset, {value: String(d.value), x: d.x, y: d.y, z: d.z, segment: d.segment,
                                world: d.world.map(v => v.toFixed(2)).join(",")});
  }

  // ------------------------------------------------------------------ controls

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

  // ------------------------------------------------------------------ drawing

  drawAll() { if (this.meta) for (const plane of this.planes) this.draw(plane); }

  /** Fill the offscreen image (grey) and overlay (colour, filled or outlined) canvases of a slice. */
  render(plane) {
    const [X, Y, Z] = this.meta.shape;
    const [w, h] = this.dims(plane);
    const s = this.slice(plane);
    const {image, overlay} = this.offscreen[plane];
    const grey = image.getContext("2d").createImageData(w, h);
    const paint = overlay.getContext("2d").createImageData(w, h);
    const g8 = grey.data, p8 = paint.data;
    const [lo, hi] = this.window;
    const scale = 255 / Math.max(1e-6, hi - lo);
    const img = this.image, lab = this.labels, colors = this.colors, visible = this.visible;
    const fill = Math.round(255 * this.opacity), outline = this.outline;
    const shown = new Uint8Array(w * h);  // visible label per pixel of this slice
    for (let j = 0; j < h; j++) {
      let idx, step;
      if (plane === "axial") { idx = X * j + X * Y * s; step = 1; }
      else if (plane === "coronal") { idx = X * s + X * Y * (Z - 1 - j); step = 1; }
      else { idx = s + X * Y * (Z - 1 - j); step = X; }
      let o = 4 * w * j;
      for (let i = 0; i < w; i++, idx += step, o += 4) {
        let g = (img[idx] - lo) * scale;
        g = g < 0 ? 0 : (g > 255 ? 255 : g);
        g8[o] = g8[o + 1] = g8[o + 2] = g; g8[o + 3] = 255;
        const l = lab[idx];
        if (l && visible[l]) shown[j * w + i] = l;
      }
    }
    if (fill > 0 || outline) {
      for (let j = 0, k = 0; j < h; j++) {
        for (let i = 0; i < w; i++, k++) {
          const l = shown[k];
          if (!l) continue;
          const edge = i === 0 || j === 0 || i === w - 1 || j === h - 1 || shown[k - 1] !== l || shown[k + 1] !== l ||
                       shown[k - w] !== l || shown[k + w] !== l;
          const alpha = outline ? (edge ? 255 : 0) : fill;
          if (!alpha) continue;
          const o = 4 * k;
          p8[o] = colors[3 * l]; p8[o + 1] = colors[3 * l + 1]; p8[o + 2] = colors[3 * l + 2]; p8[o + 3] = alpha;
        }
      }
    }
    image.getContext("2d").putImageData(grey, 0, 0);
    overlay.getContext("2d").putImageData(paint, 0, 0);
  }

  draw(plane) {
    const [w, h, n] = this.dims(plane);
    const canvas = this.root.querySelector(`#${plane}-canvas`);
    const ctx = canvas.getContext("2d");
    this.render(plane);
    const t = this.transform(plane);
    const width = w * t.sc * t.scale, height = h * t.sr * t.scale;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;  // the image interpolated, as on a reading station
    ctx.drawImage(this.offscreen[plane].image, t.left, t.top, width, height);
    ctx.imageSmoothingEnabled = false;  // the labels voxel by voxel
    ctx.drawImage(this.offscreen[plane].overlay, t.left, t.top, width, height);
    if (this.crosshair) {
      const [ci, cj] = this.cross(plane);
      const x = Math.round(t.left + (ci + 0.5) * t.sc * t.scale) + 0.5;
      const y = Math.round(t.top + (cj + 0.5) * t.sr * t.scale) + 0.5;
      ctx.strokeStyle = this.CROSSHAIR;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(x, t.top); ctx.lineTo(x, t.top + height);
      ctx.moveTo(t.left, y); ctx.lineTo(t.left + width, y);
      ctx.stroke();
    }
    const s = this.slice(plane);
    this.root.querySelector(`#${plane}-slider`).value = String(s);
    this.root.querySelector(`#${plane}-no`).textContent = `${s + 1} / ${n}`;
    const zoom = this.root.querySelector(`#${plane}-zoom`);
    if (zoom) zoom.textContent = this.view[plane].zoom === 1 ? "" : `zoom ${this.view[plane].zoom.toFixed(2)}×`;
  }
}
window.SliceViewer = SliceViewer;
