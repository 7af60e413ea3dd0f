// igpo view: the pages, drawn from the JSON API (app.py). Plain DOM, no framework, no build step.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const MAIN = document.getElementById("main");
const CHART_RESIZERS = [];

// ------------------------------------------------------------------------------------------ helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// A link inside the viewer, keeping the token.
function href(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
  if (TOKEN) url.searchParams.set("token", TOKEN);
  return url.pathname + url.search;
}

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
  const resp = await fetch(url, {headers: TOKEN ? {Authorization: `Bearer ${TOKEN}`} : {}});
  const body = await resp.json().catch(() => ({detail: `HTTP ${resp.status}`}));
  if (!resp.ok) {
    const detail = typeof body.detail === "string" ? body.detail
      : (body.detail || []).map(d => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    throw new Error(detail || `HTTP ${resp.status}`);
  }
  return body;
}

const fmt = (v, digits) => formatNumber(v, digits);
function signed(v) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  const s = a !== 0 && a < 1e-3 ? v.toExponential(2) : v.toFixed(4);
  return v > 0 ? `+${s}` : s;
}
// Shorter, for table cells: 3 decimals, or 2 significant digits for tiny values.
function short(v, sign) {
  if (v === null || v === undefined) return "–";
  const a = Math.abs(v);
  const s = a !== 0 && a < 0.01 ? v.toExponential(1) : v.toFixed(3);
  return sign && v > 0 ? `+${s}` : s;
}
// b_{t} written with a real subscript
const sub = (base, index) => h("span", {class: "sym"}, base, h("sub", {}, index));
function prob(logb) {
  if (logb === null || logb === undefined) return "–";
  const b = Math.exp(logb);
  return b < 1e-3 ? b.toExponential(2) : b.toFixed(4);
}
// A number shown with its exact value kept in data-value (what the tests read back).
function num(v, text, cls) {
  return h("span", {class: `num ${cls || ""}`, dataset: {value: v === null || v === undefined ? "" : String(v)}},
           text === undefined ? fmt(v) : text);
}
const OUTCOME_LABEL = {correct: "correct", partial: "partial", wrong: "wrong", no_answer: "no answer"};
const badge = outcome => h("span", {class: `badge ${outcome}`}, OUTCOME_LABEL[outcome] || outcome);
const partName = (info, part) => part === "eval" ? "eval" : part === "all" ? "all steps" : `step ${part}`;

function problemsBox(problems, title) {
  if (!problems || !problems.length) return null;
  const shown = problems.slice(0, 20);
  return h("div", {class: "problems", role: "alert"},
    h("strong", {}, title || `${problems.length} problem${problems.length > 1 ? "s" : ""} in the files`),
    h("ul", {}, shown.map(p => h("li", {}, h("code", {}, p.line ? `${p.file}:${p.line}` : p.file), " ", p.message))),
    problems.length > shown.length ? h("div", {}, `… and ${problems.length - shown.length} more`) : null);
}

function errorBox(err) {
  return h("div", {class: "problems", role: "alert"}, h("strong", {}, "Could not load this page"), h("div", {}, err.message));
}

function setNav(active) {
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === active);
    a.href = href(a.dataset.nav === "overview" ? "/" : "/trajectories");
  }
}

function chartCard(title, build, extra) {
  const body = h("div", {class: "chart-body"});
  const card = h("section", {class: "card chart-card"}, h("div", {class: "card-head"}, h("h3", {}, title), extra || null),
                 body);
  requestAnimationFrame(() => build(body));
  CHART_RESIZERS.push(() => build(body));
  card.redraw = () => build(body);
  return card;
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => CHART_RESIZERS.forEach(f => f()), 150);
});

// ------------------------------------------------------------------------------------------ overview
const DEFAULT_CHARTS = [
  {title: "Reward and F1 (training rollouts)", names: ["reward/outcome", "reward/f1", "reward/em"]},
  {title: "Held-out F1", match: n => n === "eval/f1" || /^eval\/.+\/f1$/.test(n)},
  {title: "Information gain: mean r_t", names: ["ig/mean"]},
  {title: "Share of IG rewards > 0", names: ["ig/positive_frac"]},
  {title: "KL to the reference", names: ["policy/kl"]},
  {title: "Policy entropy", names: ["policy/entropy"]},
  {title: "Turns and searches per trajectory", names: ["rollout/turns", "rollout/searches"]},
  {title: "Time per phase (s)", match: n => n.startsWith("time/")},
];
const HEADLINE = [["reward/f1", "train F1"], ["eval/f1", "held-out F1"], ["ig/mean", "IG mean"],
                  ["ig/positive_frac", "IG > 0"], ["policy/kl", "KL"], ["policy/entropy", "entropy"],
                  ["rollout/turns", "turns"], ["rollout/searches", "searches"]];

function metricSelect(names, placeholder, onpick) {
  const groups = {};
  for (const n of names) (groups[n.split("/")[0]] = groups[n.split("/")[0]] || []).push(n);
  const sel = h("select", {class: "metric-pick", "aria-label": placeholder,
                           onchange: () => { if (sel.value) onpick(sel.value); sel.value = ""; }},
    h("option", {value: ""}, placeholder),
    Object.entries(groups).map(([g, ns]) => h("optgroup", {label: g}, ns.map(n => h("option", {value: n}, n)))));
  return sel;
}

function metricChart(metrics, state, names, onremove) {
  const legend = h("div", {class: "legend"});
  const extra = h("div", {class: "chart-tools"}, metricSelect(names, "+ metric", n => {
    if (!state.names.includes(n)) state.names.push(n);
    redraw();
  }), onremove ? h("button", {class: "icon", title: "remove this chart", onclick: onremove}, "×") : null);
  let body = null;
  function redraw() {
    if (!body) return;
    legend.textContent = "";
    state.names.forEach((n, k) => {
      const hidden = state.hidden.has(n);
      legend.append(h("span", {class: `legend-item${hidden ? " off" : ""}`, title: "show / hide",
                               onclick: () => { hidden ? state.hidden.delete(n) : state.hidden.add(n); redraw(); }},
        h("span", {class: "swatch", style: `background:${PALETTE[k % PALETTE.length]}`}), n,
        h("button", {class: "icon small", title: `remove ${n}`, onclick: ev => {
          ev.stopPropagation(); state.names = state.names.filter(x => x !== n); redraw();
        }}, "×")));
    });
    const series = state.names.map((n, k) => ({name: n, color: PALETTE[k % PALETTE.length],
      points: metrics.steps.map((s, i) => [s, (metrics.series[n] || [])[i]]).filter(p => p[1] !== null && p[1] !== undefined)}))
      .filter(s => !state.hidden.has(s.name));
    lineChart(body.querySelector(".plot"), {series, xLabel: "step", label: state.title});
  }
  const card = chartCard(state.title, b => {
    body = b;
    if (!b.querySelector(".plot")) b.append(legend, h("div", {class: "plot"}));
    redraw();
  }, extra);
  card.dataset.chart = state.title;
  return card;
}

async function overviewPage(info) {
  setNav("overview");
  if (info.kind === "eval") return evalOverview(info);
  const metrics = await api("/api/metrics");
  const names = Object.keys(metrics.series).filter(n => metrics.series[n].some(v => v !== null)).sort();
  const last = metrics.steps.length - 1;
  const latest = n => {
    const values = metrics.series[n] || [];
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return [values[i], metrics.steps[i]];
    return null;
  };
  const s = info.settings;
  const head = h("section", {class: "card run-head"},
    h("h2", {}, info.name),
    h("div", {class: "chips"},
      h("span", {class: "chip"}, `estimator ${s.estimator}`), h("span", {class: "chip"}, `IG ${s.ig_kind}`),
      h("span", {class: "chip"}, `norm ${s.norm}`), h("span", {class: "chip"}, `γ ${s.gamma}`),
      h("span", {class: "chip"}, `outcome ${s.outcome_metric}`),
      h("span", {class: "chip"}, `${metrics.steps.length} steps logged`),
      h("span", {class: "chip"}, `${info.parts.length} rollouts files`),
      info.model_path ? h("span", {class: "chip muted"}, `model ${info.model_path}`) : null),
    h("div", {class: "headline"}, HEADLINE.filter(([n]) => latest(n)).map(([n, label]) => {
      const [v, step] = latest(n);
      return h("div", {class: "stat", title: `${n} at step ${step}`}, h("div", {class: "stat-value"}, fmt(v)),
               h("div", {class: "stat-label"}, `${label} · step ${step}`));
    })),
    last >= 0 ? h("a", {class: "button", href: href("/trajectories")}, "Browse trajectories →") : null);
  const grid = h("div", {class: "chart-grid", id: "charts"});
  const adder = h("div", {class: "add-chart"}, h("span", {}, "Add a chart of any logged metric: "),
    metricSelect(names, "pick a metric…", n => {
      const state = {title: n, names: [n], hidden: new Set()};
      const card = metricChart(metrics, state, names, () => card.remove());
      grid.append(card);
      card.scrollIntoView({behavior: "smooth", block: "nearest"});
    }));
  MAIN.replaceChildren(head, problemsBox(metrics.problems, "metrics.jsonl problems") || "", adder, grid);
  if (!metrics.steps.length) {
    grid.append(h("p", {class: "muted"}, "No step logged yet (metrics.jsonl is empty or missing)."));
  }
  for (const c of DEFAULT_CHARTS) {
    const chosen = c.names ? c.names.filter(n => names.includes(n)) : names.filter(c.match);
    if (!chosen.length) continue;
    const state = {title: c.title, names: chosen, hidden: new Set()};
    grid.append(metricChart(metrics, state, names));
  }
}

function evalOverview(info) {
  const sc = info.scores || {sources: {}, avg: {}, setting: {}};
  const preferred = ["n", "em", "f1", "f1_igpo", "cover_em", "format_fail", "turns", "searches", "response_tokens"];
  const all = [sc.avg || {}, ...Object.values(sc.sources)];
  const present = new Set(all.flatMap(v => Object.keys(v).filter(k => typeof v[k] === "number")));
  const cols = [...preferred.filter(c => present.has(c)), ...[...present].filter(c => !preferred.includes(c)).sort()];
  const row = (name, v, cls) => h("tr", {class: cls || ""},
    h("td", {}, name === "avg" ? h("strong", {}, "average") : h("a", {href: href("/trajectories", {part: "eval", source: name})}, name)),
    cols.map(c => h("td", {class: "r"}, num(v[c], ["n", "rollouts", "samples"].includes(c) ? String(v[c] ?? "–") : fmt(v[c])))));
  const table = h("table", {class: "data", id: "scores"},
    h("thead", {}, h("tr", {}, h("th", {}, "source"), cols.map(c => h("th", {class: "r"}, c)))),
    h("tbody", {}, Object.entries(sc.sources).map(([k, v]) => row(k, v)),
      Object.keys(sc.avg || {}).length ? row("avg", sc.avg, "avg") : null));
  const sources = Object.entries(sc.sources);
  const f1Chart = chartCard("F1 by source", body => {
    body.textContent = "";
    const max = Math.max(1e-9, ...sources.map(([, v]) => v.f1 || 0));
    body.append(h("div", {class: "hbars"}, sources.map(([k, v]) => h("div", {class: "hbar"},
      h("span", {class: "hbar-label"}, k), h("span", {class: "hbar-track"},
        h("span", {class: "hbar-fill", style: `width:${(100 * (v.f1 || 0) / max).toFixed(1)}%`})),
      h("span", {class: "hbar-value"}, fmt(v.f1))))));
  });
  const flat = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj || {})) {
      if (v && typeof v === "object" && !Array.isArray(v)) walk(v, `${prefix}${k}.`);
      else flat.push([`${prefix}${k}`, Array.isArray(v) ? JSON.stringify(v) : String(v)]);
    }
  };
  walk(sc.setting, "");
  const curves = Object.entries(sc.beliefs || {}).filter(([, points]) => points.length);
  const beliefs = curves.length ? chartCard("Mean belief b_t in the gold answer, by turn", body => lineChart(body, {
    series: curves.map(([name, points], k) => ({name, color: PALETTE[k % PALETTE.length],
                                                points: points.map(p => [p.t, p.mean_b])})),
    xLabel: "t", axisLabel: false, markers: true, zeroLine: true, height: 220, label: "belief by turn",
    xFormat: t => (t === 0 ? "prompt" : `t=${t}`),
    tipFormat: (v, s) => `${fmt(v)} (n ${((sc.beliefs[s.name] || []).find(p => p.mean_b === v) || {}).n ?? "?"})`})) : null;
  if (beliefs) beliefs.id = "eval-beliefs";
  MAIN.replaceChildren(
    h("section", {class: "card run-head"}, h("h2", {}, info.name), h("div", {class: "chips"},
      h("span", {class: "chip"}, "eval directory"), h("span", {class: "chip"}, `${sources.length} sources`)),
      h("a", {class: "button", href: href("/trajectories", {part: "eval"})}, "Browse rollouts →")),
    h("section", {class: "card"}, h("h3", {}, "Scores per source"), table),
    sources.length ? f1Chart : "", beliefs || "",
    flat.length
      ? h("details", {class: "card"}, h("summary", {}, `Setting (${flat.length} fields: model, engine, protocol, search, data, ...)`),
          h("table", {class: "kv"}, h("tbody", {}, flat.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))))
      : h("section", {class: "card muted"}, "scores.json records no setting."),
    sc.table_md ? h("details", {class: "card"}, h("summary", {}, "table.md"), h("pre", {}, sc.table_md)) : "");
}

// -------------------------------------------------------------------------------- trajectory list
const LIST_KEYS = ["part", "q", "outcome", "finish", "turns", "searches", "source", "sort", "order", "page", "per_page"];
const SORTS = [["order", "file order"], ["reward", "reward"], ["f1", "F1"], ["ig", "IG (Σ r_t)"], ["turns", "turns"],
               ["searches", "searches"], ["tokens", "tokens"]];

async function listPage(info) {
  setNav("trajectories");
  const params = new URLSearchParams(location.search);
  const state = {};
  for (const k of LIST_KEYS) state[k] = params.get(k) || "";
  if (!state.part) state.part = info.default_part || "";
  const bar = h("form", {class: "card filters", id: "filters", onsubmit: ev => ev.preventDefault()});
  const summary = h("div", {class: "list-summary", id: "list-summary"});
  const problems = h("div", {id: "list-problems"});
  const tableWrap = h("div", {class: "card table-card", id: "list-table"});
  const pager = h("div", {class: "pager", id: "pager"});
  MAIN.replaceChildren(bar, problems, summary, tableWrap, pager);
  if (!info.parts.length) {
    tableWrap.append(h("p", {class: "muted"}, "This directory has no rollouts files yet."));
    return;
  }
  let timer = null, seq = 0;
  async function load() {
    const mine = ++seq;
    const query = Object.fromEntries(Object.entries(state).filter(([, v]) => v !== ""));
    history.replaceState(null, "", href("/trajectories", query));
    summary.textContent = "Loading…";
    tableWrap.dataset.loading = "1";
    let data;
    try {
      data = await api("/api/trajectories", query);
    } catch (err) {
      if (mine === seq) {
        summary.textContent = "";
        tableWrap.replaceChildren(errorBox(err));
        delete tableWrap.dataset.loading;
      }
      return;
    }
    if (mine !== seq) return;
    drawFilters(data);
    drawTable(data);
    delete tableWrap.dataset.loading;
  }
  const later = () => { clearTimeout(timer); timer = setTimeout(load, 250); };
  const set = (k, v) => { state[k] = v; if (k !== "page") state.page = ""; load(); };

  // The filter bar is built once (the text box keeps its focus while typing); each reload refreshes the
  // menus' options with the counts of the listed rows.
  const FILTERS = [["part", info.kind === "run" ? "Step" : "Part"], ["outcome", "Outcome"], ["finish", "Finish"],
                   ["turns", "Turns"], ["searches", "Searches"], ["source", "Source"], ["sort", "Sort by"],
                   ["order", "Order"], ["per_page", "Per page"]];
  const menus = {};
  const text = h("input", {type: "search", name: "q", placeholder: "question contains…", value: state.q,
                           oninput: ev => { state.q = ev.target.value; state.page = ""; later(); }});
  for (const [key, label] of FILTERS) {
    menus[key] = h("label", {}, h("span", {}, label), h("select", {name: key, onchange: ev => set(key, ev.target.value)}));
    bar.append(menus[key]);
    if (key === "part") bar.append(h("label", {class: "grow"}, h("span", {}, "Question"), text));
  }
  function drawFilters(data) {
    const f = data.page.facets;
    const counted = (obj, name) => Object.entries(obj).map(([k, n]) => [k, `${name ? name(k) : k} (${n})`]);
    const parts = info.parts.map(p => [p.key, p.step !== null ? `step ${p.step}` : p.key]);
    if (info.kind === "run" && info.parts.length > 1) parts.push(["all", "all steps"]);
    const options = {
      part: [parts, data.part],
      outcome: [[["", "any"], ...counted(f.outcomes, k => OUTCOME_LABEL[k] || k)], state.outcome],
      finish: [[["", "any"], ...counted(f.finish_reasons)], state.finish],
      turns: [[["", "any"], ...counted(f.turns)], state.turns],
      searches: [[["", "any"], ...counted(f.searches)], state.searches],
      source: [[["", "any"], ...counted(f.sources)], state.source],
      sort: [SORTS, state.sort || "order"],
      order: [[["desc", "high → low"], ["asc", "low → high"]], state.order || "desc"],
      per_page: [[["25", "25"], ["50", "50"], ["100", "100"], ["200", "200"]], state.per_page || "50"],
    };
    for (const [key, [opts, current]] of Object.entries(options)) {
      const sel = menus[key].querySelector("select");
      if (current && !opts.some(([v]) => String(v) === String(current))) opts.push([current, `${current} (0)`]);
      sel.replaceChildren(...opts.map(([v, label]) => h("option", {value: v}, label)));
      sel.value = current || "";
    }
    menus.source.hidden = !Object.keys(f.sources).length;
  }
  function drawTable(data) {
    const p = data.page;
    const first = p.total ? (p.page - 1) * p.per_page + 1 : 0;
    summary.textContent = `${first}–${first + p.rows.length - (p.rows.length ? 1 : 0)} of ${p.total} trajectories` +
      (p.total !== p.unfiltered ? ` (filtered from ${p.unfiltered})` : "") + ` · ${partName(info, data.part)}`;
    summary.dataset.total = p.total;
    problems.replaceChildren(problemsBox(data.problems, `${data.problems.length} bad line${data.problems.length > 1 ? "s" : ""} in the rollouts file${data.part === "all" ? "s" : ""} (skipped)`) || "");
    const rows = p.rows.map(r => {
      const link = href(`/trajectory/${r.part}/${r.index}`);
      return h("tr", {dataset: {part: r.part, index: r.index}, onclick: ev => { if (!ev.target.closest("a")) location.href = link; }},
        h("td", {class: "r muted"}, r.step !== null ? `${r.step}` : "", h("span", {class: "sub"}, `#${r.index}`)),
        h("td", {class: "r"}, r.group !== null
          ? h("a", {href: href(`/group/${r.part}/${r.group}`), title: "group view: GRPO vs IGPO"}, `${r.group}·${r.sample_id ?? "?"}`) : "–"),
        h("td", {class: "question"}, h("a", {href: link, title: r.question}, r.question),
          r.source ? h("span", {class: "chip small"}, r.source) : null),
        h("td", {class: "gold", title: r.golds.join(" | ")}, r.golds[0] || ""),
        h("td", {class: "answer", title: r.answer || ""}, r.answer ?? h("span", {class: "muted"}, "—")),
        h("td", {}, badge(r.outcome)),
        h("td", {class: "r"}, num(r.f1, short(r.f1))),
        h("td", {class: "r"}, num(r.reward, short(r.reward, true))),
        h("td", {class: "r"}, num(r.ig, short(r.ig, true))),
        h("td", {class: "r"}, num(r.turns, String(r.turns))),
        h("td", {class: "r"}, num(r.searches, String(r.searches))),
        h("td", {}, r.finish_reason),
        h("td", {}, r.log_beliefs ? sparkline(r.log_beliefs.map(Math.exp)) : ""));
    });
    const heads = [["step", "r"], ["group", "r"], ["question"], ["gold"], ["answer"], ["outcome"], ["F1", "r"],
                   ["reward", "r"], ["IG Σ", "r"], ["turns", "r"], ["searches", "r"], ["finish"], ["belief b_t"]];
    tableWrap.replaceChildren(p.rows.length
      ? h("table", {class: "data clickable", id: "traj-table"},
          h("thead", {}, h("tr", {}, heads.map(([t, c]) => h("th", {class: c || ""}, t)))), h("tbody", {}, rows))
      : h("p", {class: "muted empty"}, "No trajectory matches these filters."));
    pager.replaceChildren(
      h("button", {disabled: p.page <= 1, onclick: () => { state.page = String(p.page - 1); load(); }}, "← previous"),
      h("span", {}, `page ${p.page} of ${p.pages}`),
      h("button", {disabled: p.page >= p.pages, onclick: () => { state.page = String(p.page + 1); load(); }}, "next →"));
  }
  await load();
}

// -------------------------------------------------------------------------------- one trajectory
function checkBadge(check) {
  const icon = {match: "✓", mismatch: "✗", not_checked: "·"}[check.status] || "";
  return h("div", {class: `check ${check.status}`, id: "credit-check"}, `${icon} ${check.message}`);
}

// Beliefs are often tiny (1e-6 -> 1e-4 is a large gain in log b, invisible in b): a toggle between b and log b.
const BELIEF_SCALE = {log: false};
function scaleToggle(redraw) {
  return h("label", {class: "scale-toggle"}, h("input", {type: "checkbox", checked: BELIEF_SCALE.log,
    onchange: ev => { BELIEF_SCALE.log = ev.target.checked; redraw(); }}), " log b");
}
function beliefOptions(series, label, height) {
  const log = BELIEF_SCALE.log;
  return {series: series.map(s => ({...s, points: s.logb.map((v, t) => [t, log ? v : Math.exp(v)])})),
    xLabel: "t", axisLabel: false, height, label, markers: true, zeroLine: !log,
    xFormat: t => (t === 0 ? "prompt" : `t=${t}`),
    tipFormat: v => (log ? `log b ${fmt(v, 3)} (b ${prob(v)})` : `${prob(Math.log(v))} (log b ${fmt(Math.log(v), 3)})`)};
}
function beliefChart(body, logb, label) {
  lineChart(body, beliefOptions([{name: "b_t", logb}], label, 170));
}

function turnCard(d, turn) {
  const T = d.turns.length, t = turn.t;
  const kind = h("span", {class: `kind ${turn.kind}`}, turn.kind);
  const content = h("div", {class: "turn-content"});
  if (turn.reasoning) content.append(h("div", {class: "field"}, h("div", {class: "label"}, "Reasoning"),
                                         h("div", {class: "reasoning"}, turn.reasoning)));
  if (turn.queries.length) content.append(h("div", {class: "field"}, h("div", {class: "label"}, "Query"),
    turn.queries.map(q => h("div", {class: "query"}, q))));
  if (turn.observation !== null) {
    const docs = turn.documents;
    const inner = docs.length
      ? h("ol", {class: "docs"}, docs.map(doc => h("li", {}, doc.title ? h("strong", {}, doc.title) : null,
                                                 doc.title ? " " : null, doc.text)))
      : h("pre", {class: "obs"}, turn.observation);
    content.append(h("details", {class: "field documents"},
      h("summary", {}, docs.length ? `Retrieved documents (${docs.length})` : "Observation",
        h("span", {class: "muted"}, ` · ${turn.observation_tokens} tokens`)),
      inner, docs.length ? h("details", {class: "raw"}, h("summary", {}, "raw text"), h("pre", {class: "obs"}, turn.observation)) : null));
  }
  if (turn.answer !== null && turn.answer !== undefined) content.append(h("div", {class: "field"},
    h("div", {class: "label"}, "Answer"), h("div", {class: "answer-text"}, turn.answer)));
  if (turn.error) content.append(h("div", {class: "field error"}, h("div", {class: "label"}, "Error"), turn.error));
  if (turn.text !== null) content.append(h("details", {class: "field raw"},
    h("summary", {}, `Generated text (${turn.tokens} tokens)`), h("pre", {}, turn.text)));

  const last = t === T;
  const rows = [];
  if (turn.log_b_before !== null) {
    rows.push(h("tr", {class: "belief"}, h("th", {}, last ? sub("b", "t−1") : [sub("b", "t−1"), " → ", sub("b", "t")]),
      h("td", {}, num(turn.log_b_before, prob(turn.log_b_before), "log-b-before"),
        last ? "" : " → ", last ? "" : num(turn.log_b_after, prob(turn.log_b_after), "log-b-after"))));
  }
  rows.push(h("tr", {class: "reward"}, h("th", {}, last ? [sub("r", "T"), " outcome"] : [sub("r", "t"), " information gain"]),
    h("td", {}, num(turn.reward, signed(turn.reward)),
      turn.reward_stored !== null && turn.reward !== null && Math.abs(turn.reward_stored - turn.reward) > 1e-6
        ? h("span", {class: "warn"}, ` stored ${signed(turn.reward_stored)}`) : null)));
  rows.push(h("tr", {class: "normalized"}, h("th", {}, sub("r̃", "t"), " normalised"), h("td", {}, num(turn.normalized, signed(turn.normalized)))));
  if (d.kind === "run") rows.push(h("tr", {class: "advantage"}, h("th", {}, sub("Â", "t"), " trained on"),
                                    h("td", {}, num(turn.advantage, signed(turn.advantage)))));
  rows.push(h("tr", {class: "advantage-igpo"}, h("th", {}, sub("Â", "t"), " IGPO, recomputed"), h("td", {}, num(turn.advantage_igpo, signed(turn.advantage_igpo)))));
  rows.push(h("tr", {class: "advantage-grpo"}, h("th", {}, "Â GRPO, same rollouts"), h("td", {}, num(turn.advantage_grpo, signed(turn.advantage_grpo)))));
  const spark = d.log_beliefs ? beliefSpark(d.log_beliefs, t) : null;
  return h("section", {class: "card turn", dataset: {t}, id: `turn-${t}`},
    h("div", {class: "turn-head"}, h("span", {class: "turn-no"}, `Turn ${t}`), kind,
      h("span", {class: "muted"}, `${turn.tokens} generated tokens`)),
    h("div", {class: "turn-body"}, content,
      h("aside", {class: "credit"}, spark, h("table", {class: "credit-table"}, h("tbody", {}, rows)))));
}

// The belief over the turns with turn t's step (b_{t-1} -> b_t) highlighted.
function beliefSpark(logb, t) {
  const w = 200, hgt = 46;
  const values = logb.map(Math.exp);
  const lo = Math.min(...values, 0), hi = Math.max(...values);
  const X = i => values.length === 1 ? w / 2 : 6 + i / (values.length - 1) * (w - 12);
  const Y = v => hi === lo ? hgt / 2 : hgt - 5 - (v - lo) / (hi - lo) * (hgt - 10);
  const root = svg("svg", {width: w, height: hgt, class: "belief-spark", "aria-label": "belief over turns"});
  svg("polyline", {points: values.map((v, i) => `${X(i)},${Y(v)}`).join(" "), fill: "none", stroke: "#b8c2cc",
                   "stroke-width": 1.5}, root);
  if (t < values.length) svg("line", {x1: X(t - 1), y1: Y(values[t - 1]), x2: X(t), y2: Y(values[t]),
                                      stroke: PALETTE[0], "stroke-width": 3}, root);
  values.forEach((v, i) => svg("circle", {cx: X(i), cy: Y(v), r: i === t - 1 || i === t ? 3.5 : 2.2,
                                          fill: i === t - 1 || i === t ? PALETTE[0] : "#b8c2cc"}, root));
  return root;
}

async function trajectoryPage(info, part, index) {
  setNav("trajectories");
  const d = await api(`/api/trajectory/${part}/${index}`);
  const sib = d.siblings, k = sib.findIndex(s => s.index === d.index);
  const nav = h("div", {class: "crumbs"},
    h("a", {href: href("/trajectories", {part})}, `← ${partName(info, part)}`),
    d.group !== null ? h("a", {href: href(`/group/${part}/${d.group}`), id: "group-link"},
                         `group ${d.group} (${sib.length} rollouts, GRPO vs IGPO)`) : null,
    k > 0 ? h("a", {href: href(`/trajectory/${part}/${sib[k - 1].index}`)}, `← sample ${sib[k - 1].sample_id}`) : null,
    k >= 0 && k < sib.length - 1 ? h("a", {href: href(`/trajectory/${part}/${sib[k + 1].index}`)}, `sample ${sib[k + 1].sample_id} →`) : null);
  const facts = [
    ["gold", d.golds.join(" | ")], ["answer", d.answer ?? "— (no well-formed answer)"],
    ["F1", fmt(d.f1)], ["EM", fmt(d.em)], ["outcome reward r_T", signed(d.outcome_reward)],
    ["finish", d.finish_reason], ["turns", String(d.turns.length)], ["tokens", String(d.n_tokens)],
    ["step · group · sample", `${d.step ?? "–"} · ${d.group ?? "–"} · ${d.sample_id ?? "–"}`],
    ...(d.source ? [["source", d.source]] : []),
    ...Object.entries(d.extra).filter(([key]) => !["f1", "em"].includes(key))
      .map(([key, v]) => [key, typeof v === "number" && !Number.isInteger(v) ? fmt(v) : String(v)]),
  ];
  const head = h("section", {class: "card traj-head", id: "traj-head"},
    h("div", {class: "title-row"}, h("h2", {class: "question"}, d.question), badge(d.outcome)),
    h("dl", {class: "facts"}, facts.map(([k2, v]) => h("div", {}, h("dt", {}, k2), h("dd", {}, v)))),
    checkBadge(d.check),
    d.credit_note ? h("div", {class: "note"}, d.credit_note) : null);
  const beliefTools = h("span", {class: "chart-tools muted"},
    "b_t = exp(mean log-prob of the gold answer after turn t)", scaleToggle(() => beliefCard.redraw()));
  const beliefCard = d.log_beliefs && d.log_beliefs.length
    ? chartCard("Belief in the gold answer b_t", body => beliefChart(body, d.log_beliefs, "belief over turns"), beliefTools)
    : h("section", {class: "card muted"}, `No beliefs stored for this trajectory${d.kind === "run" ? ` (estimator ${d.estimator})` : ""}.`);
  beliefCard.id = "belief-card";
  const prompt = h("details", {class: "card prompt"}, h("summary", {}, "Prompt"), h("pre", {}, d.prompt ?? "(prompt text not stored)"));
  const turns = h("div", {id: "turns"}, d.turns.map(t => turnCard(d, t)));
  const tokens = h("section", {class: "card tokens-card", id: "tokens"}, h("div", {class: "card-head"}, h("h3", {}, "Tokens"),
    h("span", {class: "muted", id: "tokens-note"}, "loading…")));
  MAIN.replaceChildren(nav, head, beliefCard, prompt, turns, tokens);
  loadTokens(tokens, part, index, d);
}

async function loadTokens(card, part, index, d) {
  let tv;
  try {
    tv = await api(`/api/trajectory/${part}/${index}/tokens`);
  } catch (err) {
    card.append(errorBox(err));
    return;
  }
  const advantageOf = t => (d.turns[t - 1] || {}).advantage;
  const shade = h("input", {type: "checkbox", id: "shade-adv"});
  const legend = h("div", {class: "token-legend"},
    h("span", {class: "tok p"}, `prompt ${tv.counts.p}`), h("span", {class: "tok a"}, `trained (action mask) ${tv.counts.a}`),
    h("span", {class: "tok o"}, `observation ${tv.counts.o}`),
    tv.counts.x ? h("span", {class: "tok x"}, `outside every span ${tv.counts.x}`) : null,
    h("label", {class: "shade"}, shade, " shade trained tokens by Â_t"));
  const box = h("div", {class: `token-box ${tv.source}`, id: "token-box"});
  const frag = document.createDocumentFragment();
  tv.pieces.forEach((text, i) => {
    const kind = tv.kinds[i], t = tv.turns[i];
    const title = kind === "a" ? `turn ${t} · trained · Â ${signed(advantageOf(t))}` : kind === "o" ? `observation ${t}` : kind === "p" ? "prompt" : "outside every span";
    const span = document.createElement("span");
    span.className = `tok ${kind}`;
    span.textContent = text;
    span.title = tv.ids ? `${title} · id ${tv.ids[i]}` : title;
    span.dataset.turn = t;
    frag.appendChild(span);
  });
  box.appendChild(frag);
  shade.addEventListener("change", () => {
    const advs = d.turns.map(t => Math.abs(t.advantage ?? 0));
    const scale = Math.max(1e-9, ...advs);
    for (const span of box.querySelectorAll(".tok.a")) {
      const a = advantageOf(Number(span.dataset.turn));
      span.style.background = shade.checked && a !== null && a !== undefined
        ? (a >= 0 ? `rgba(46,158,91,${0.12 + 0.6 * Math.abs(a) / scale})` : `rgba(200,65,75,${0.12 + 0.6 * Math.abs(a) / scale})`) : "";
    }
  });
  card.querySelector("#tokens-note").textContent = tv.note;
  card.append(legend, box);
}

// -------------------------------------------------------------------------------------- group view
function advBar(v, scale, cls) {
  if (v === null || v === undefined) return h("div", {class: "bar-row muted"}, "–");
  const width = Math.min(50, 50 * Math.abs(v) / scale);
  const fill = h("span", {class: `bar-fill ${v >= 0 ? "pos" : "neg"}`,
                          style: v >= 0 ? `left:50%;width:${width}%` : `left:${50 - width}%;width:${width}%`});
  return h("div", {class: `bar-row ${cls}`}, h("span", {class: "bar-name"}, cls === "igpo" ? "IGPO" : "GRPO"),
           h("span", {class: "bar-track"}, fill, h("span", {class: "bar-mid"})), num(v, signed(v), "bar-value"));
}

async function groupPage(info, part, groupId) {
  setNav("trajectories");
  const g = await api(`/api/group/${part}/${groupId}`);
  const maxT = Math.max(...g.rollouts.map(r => r.kinds.length));
  const scale = Math.max(1e-9, ...g.rollouts.flatMap(r => [...(r.igpo || []), ...r.grpo].map(Math.abs)));
  const head = h("section", {class: "card traj-head"},
    h("div", {class: "title-row"}, h("h2", {class: "question"}, g.question)),
    h("dl", {class: "facts"}, [["gold", g.golds.join(" | ")], ["step", g.step ?? "–"], ["group", String(g.group)],
      ["rollouts", String(g.rollouts.length)], ...(info.kind === "run" ? [["run estimator", g.estimator]] : []),
      ["IGPO settings", `${g.settings.ig_kind} · norm ${g.settings.norm} · γ ${g.settings.gamma}`]]
      .map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
    h("p", {class: "explain"}, "GRPO gives every turn of a rollout the same advantage: its outcome, normalised in the group. ",
      "IGPO rewards each non-final turn by the information gain r_t = b_t − b_{t−1} and normalises all turn rewards of ",
      "the group together, so a good search in a failed rollout can still get credit, and a useless one in a lucky rollout loses it."),
    checkBadge(g.check), g.credit_note ? h("div", {class: "note"}, g.credit_note) : null);
  const withBeliefs = g.rollouts.filter(r => r.log_beliefs && r.log_beliefs.length);
  const chart = withBeliefs.length ? chartCard("Belief b_t of each rollout", body => lineChart(body, beliefOptions(
    withBeliefs.map((r, k) => ({name: `sample ${r.sample_id}`, color: PALETTE[k % PALETTE.length], logb: r.log_beliefs})),
    "beliefs of the group", 200)),
    h("div", {class: "chart-tools"}, h("div", {class: "legend"}, withBeliefs.map((r, k) => h("span", {class: "legend-item"},
      h("span", {class: "swatch", style: `background:${PALETTE[k % PALETTE.length]}`}), `sample ${r.sample_id}`))),
      scaleToggle(() => chart.redraw()))) : null;
  const heads = [h("th", {}, "sample"), h("th", {}, "outcome"), h("th", {class: "r"}, "r_T"),
                 ...Array.from({length: maxT}, (_, t) => h("th", {}, `turn ${t + 1}`))];
  const rows = g.rollouts.map(r => h("tr", {dataset: {index: r.index, sample: r.sample_id}},
    h("td", {}, h("a", {href: href(`/trajectory/${part}/${r.index}`)}, `sample ${r.sample_id}`)),
    h("td", {}, badge(r.outcome), h("div", {class: "answer-small", title: r.answer || ""}, r.answer ?? "no answer")),
    h("td", {class: "r"}, num(r.outcome_reward, signed(r.outcome_reward))),
    ...Array.from({length: maxT}, (_, t) => t < r.kinds.length
      ? h("td", {class: "turn-cell", dataset: {t: t + 1}},
          h("div", {class: `what ${r.kinds[t]}`, title: r.queries[t].join(" | ") || r.answer || r.kinds[t]},
            h("span", {class: `kind ${r.kinds[t]}`}, r.kinds[t]), " ",
            r.kinds[t] === "search" ? r.queries[t].join(" | ") : r.kinds[t] === "answer" ? (r.answer ?? "") : ""),
          advBar(r.igpo ? r.igpo[t] : null, scale, "igpo"), advBar(r.grpo[t], scale, "grpo"))
      : h("td", {class: "turn-cell empty"}))));
  MAIN.replaceChildren(
    h("div", {class: "crumbs"}, h("a", {href: href("/trajectories", {part})}, `← ${partName(info, part)}`)),
    head, chart || "",
    h("section", {class: "card table-card"}, h("table", {class: "data group", id: "group-table"},
      h("thead", {}, h("tr", {}, heads)), h("tbody", {}, rows))));
}

// -------------------------------------------------------------------------------------------- route
async function main() {
  let info;
  try {
    info = await api("/api/info");
  } catch (err) {
    MAIN.replaceChildren(errorBox(err));
    return;
  }
  document.getElementById("run-name").textContent = `${info.name} · ${info.kind}`;
  document.title = `${info.name} · igpo view`;
  const top = problemsBox(info.problems, "Problems in the directory");
  const box = document.getElementById("problems");
  if (top) { box.replaceChildren(top); box.hidden = false; }
  const path = location.pathname.replace(/\/+$/, "") || "/";
  let m;
  try {
    if (path === "/") await overviewPage(info);
    else if (path === "/trajectories") await listPage(info);
    else if ((m = path.match(/^\/trajectory\/([^/]+)\/(\d+)$/))) await trajectoryPage(info, m[1], Number(m[2]));
    else if ((m = path.match(/^\/group\/([^/]+)\/([^/]+)$/))) await groupPage(info, m[1], decodeURIComponent(m[2]));
    else MAIN.replaceChildren(errorBox(new Error(`no page at ${path}`)));
  } catch (err) {
    MAIN.replaceChildren(errorBox(err));
  }
  document.body.dataset.ready = "1";
}

main();
