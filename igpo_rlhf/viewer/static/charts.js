// Small SVG charts for igpo view: line charts with hover read-out, sparklines. No dependencies.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f6fd0", "#e07b22", "#2e9e5b", "#c8414b", "#7b5cc4", "#8c6a4f", "#d45fa6", "#6b7480",
                 "#a8a81e", "#1ea5b8"];

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

// Round numbers for an axis from lo to hi: about `count` ticks at 1, 2 or 5 times a power of ten.
function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { const d = Math.abs(lo) || 1; lo -= d * 0.5; hi += d * 0.5; }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
  const start = Math.floor(lo / step) * step, stop = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let v = start; v <= stop + step * 1e-9; v += step) ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return ticks;
}

function formatNumber(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  const d = digits !== undefined ? digits : (a >= 100 ? 1 : a >= 10 ? 2 : 3);
  return v.toFixed(d);
}

// lineChart(container, {series: [{name, points: [[x, y], ...], color?}], xLabel, height, yFormat, xFormat,
// markers, zeroLine, axisLabel: false hides the x label but keeps it in the read-out}). Draws into `container` (emptied) at its current width; hover shows every series'
// value at the nearest x. Returns the <svg>.
function lineChart(container, opts) {
  container.textContent = "";
  container.classList.add("chart");
  const series = opts.series.filter(s => s.points.length);
  const width = Math.max(240, container.clientWidth || 480);
  const height = opts.height || 220;
  const m = {left: 52, right: 14, top: 10, bottom: 30};
  const root = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, class: "chart-svg",
                           role: "img", "aria-label": opts.label || "chart"}, container);
  if (!series.length) {
    const t = svg("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty"}, root);
    t.textContent = "no values";
    return root;
  }
  const xs = [...new Set(series.flatMap(s => s.points.map(p => p[0])))].sort((a, b) => a - b);
  const ys = series.flatMap(s => s.points.map(p => p[1]));
  let x0 = xs[0], x1 = xs[xs.length - 1];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (opts.zeroLine && y0 > 0) y0 = 0;
  const yt = niceTicks(y0, y1, Math.max(2, Math.floor((height - m.top - m.bottom) / 40)));
  y0 = yt[0]; y1 = yt[yt.length - 1];
  const X = x => m.left + (x - x0) / (x1 - x0) * (width - m.left - m.right);
  const Y = y => height - m.bottom - (y - y0) / (y1 - y0) * (height - m.top - m.bottom);
  const yFormat = opts.yFormat || (v => formatNumber(v));
  // tick labels with as many decimals as the tick spacing needs (0.5, 1.0, 1.5 -> 0.5 1.0 1.5; 25, 30 -> 25 30)
  const spacing = yt.length > 1 ? yt[1] - yt[0] : 1;
  const tickDigits = Math.min(6, Math.max(0, Math.ceil(-Math.log10(spacing) - 1e-9)));
  const tickFormat = opts.yFormat || (v => {
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5 || tickDigits > 4) ? v.toExponential(1) : v.toFixed(tickDigits);
  });
  const xFormat = opts.xFormat || (v => String(v));

  const grid = svg("g", {class: "chart-gridlines"}, root);
  for (const v of yt) {
    svg("line", {x1: m.left, x2: width - m.right, y1: Y(v), y2: Y(v), class: v === 0 ? "zero" : ""}, grid);
    const label = svg("text", {x: m.left - 6, y: Y(v) + 4, "text-anchor": "end", class: "chart-tick"}, root);
    label.textContent = tickFormat(v);
  }
  const xt = opts.xTicks || (Number.isInteger(x0) && Number.isInteger(x1) && x1 - x0 <= 12
    ? xs : niceTicks(x0, x1, Math.max(2, Math.floor(width / 90))).filter(v => v >= x0 && v <= x1));
  for (const v of xt) {
    const label = svg("text", {x: X(v), y: height - m.bottom + 16, "text-anchor": "middle", class: "chart-tick"},
                      root);
    label.textContent = xFormat(v);
  }
  if (opts.xLabel && opts.axisLabel !== false) {
    const t = svg("text", {x: m.left - 6, y: height - m.bottom + 16, "text-anchor": "end", class: "chart-axis-label"},
                  root);
    t.textContent = opts.xLabel;
  }
  series.forEach((s, k) => {
    const color = s.color || PALETTE[k % PALETTE.length];
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    svg("path", {d, fill: "none", stroke: color, "stroke-width": s.width || 1.8, class: "chart-line",
                 "data-series": s.name}, root);
    if (opts.markers || s.points.length <= 24 || s.points.length * 6 < xs.length) {
      for (const p of s.points) svg("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.6, fill: color}, root);
    }
  });

  // hover: a vertical rule at the nearest x and a read-out of every series there
  const rule = svg("line", {y1: m.top, y2: height - m.bottom, class: "chart-rule", visibility: "hidden"}, root);
  const dots = series.map((s, k) => svg("circle", {r: 4, fill: s.color || PALETTE[k % PALETTE.length],
                                                   stroke: "#fff", "stroke-width": 1.5, visibility: "hidden"},
                                        root));
  const tip = document.createElement("div");
  tip.className = "chart-tip";
  tip.hidden = true;
  container.appendChild(tip);
  const overlay = svg("rect", {x: m.left, y: m.top, width: width - m.left - m.right,
                               height: height - m.top - m.bottom, fill: "transparent"}, root);
  overlay.addEventListener("mousemove", ev => {
    const box = root.getBoundingClientRect();
    const px = (ev.clientX - box.left) * (width / box.width);
    let best = xs[0];
    for (const x of xs) if (Math.abs(X(x) - px) < Math.abs(X(best) - px)) best = x;
    rule.setAttribute("x1", X(best)); rule.setAttribute("x2", X(best));
    rule.setAttribute("visibility", "visible");
    tip.textContent = "";
    const head = document.createElement("div");
    head.className = "chart-tip-head";
    head.textContent = `${opts.xLabel || "x"} ${xFormat(best)}`;
    tip.appendChild(head);
    series.forEach((s, k) => {
      const p = s.points.find(q => q[0] === best);
      dots[k].setAttribute("visibility", p ? "visible" : "hidden");
      if (!p) return;
      dots[k].setAttribute("cx", X(p[0])); dots[k].setAttribute("cy", Y(p[1]));
      const line = document.createElement("div");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = s.color || PALETTE[k % PALETTE.length];
      line.appendChild(sw);
      line.appendChild(document.createTextNode(`${s.name}: ${opts.tipFormat ? opts.tipFormat(p[1], s) : yFormat(p[1])}`));
      tip.appendChild(line);
    });
    tip.hidden = false;
    const left = X(best) / width * box.width;
    tip.style.left = `${Math.min(left + 12, box.width - tip.offsetWidth - 4)}px`;
    tip.style.top = `${m.top}px`;
  });
  overlay.addEventListener("mouseleave", () => {
    rule.setAttribute("visibility", "hidden");
    dots.forEach(d => d.setAttribute("visibility", "hidden"));
    tip.hidden = true;
  });
  return root;
}

// A tiny line of values (no axes), e.g. a trajectory's beliefs b_0..b_{T-1} in the list.
function sparkline(values, opts) {
  const w = (opts && opts.width) || 64, h = (opts && opts.height) || 18;
  const root = svg("svg", {width: w, height: h, class: "sparkline"});
  if (!values || values.length === 0) return root;
  const lo = Math.min(...values), hi = Math.max(...values);
  const X = i => values.length === 1 ? w / 2 : 2 + i / (values.length - 1) * (w - 4);
  const Y = v => hi === lo ? h / 2 : h - 2 - (v - lo) / (hi - lo) * (h - 4);
  svg("polyline", {points: values.map((v, i) => `${X(i)},${Y(v)}`).join(" "), fill: "none",
                   stroke: (opts && opts.color) || PALETTE[0], "stroke-width": 1.5}, root);
  values.forEach((v, i) => svg("circle", {cx: X(i), cy: Y(v), r: 1.8, fill: (opts && opts.color) || PALETTE[0]},
                               root));
  return root;
}
