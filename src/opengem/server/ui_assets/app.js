/* opengem web page: compose a query, run it through the job API, look at the result.
 * Plain JS, no dependencies. It uses the same routes as pysynthbio (vocab, example-query,
 * predict, status) plus /ui/api/* (config, counts upload, result summary, downloads). */
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#1f77b4", "#e66100", "#2ca02c", "#9467bd", "#d62728", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  const GROUP_TITLES = { biological: "Biological", perturbation: "Perturbation", technical: "Technical" };
  const TASK_HELP = {
    "baseline": "Generate expression from metadata: one condition per set of samples.",
    "reference-conditioning": "Re-generate a reference sample under perturbations: choose the reference, then one condition per perturbation.",
    "predict-metadata": "Predict tissue, cell type, disease, sex… from counts: each sample of the file is one input.",
    "condition-on-sample-ids": "Re-generate stored training samples (by sample id) under perturbations.",
  };
  const FORMAT_NAMES = { "csv": "Counts CSV", "metadata.csv": "Metadata CSV", "parquet": "Parquet", "h5ad": "h5ad" };

  const S = {
    config: null, model: null, vocab: null, example: null, prefilled: false,
    reference: null, upload: null, running: false, lastQuery: null, lastNames: null,
    summary: null, fcHighlight: null, seq: 0,
  };
  const color = (i) => PALETTE[i % PALETTE.length];
  const uid = (p) => `${p}-${++S.seq}`;
  const fmt = (n) => Number(n).toLocaleString("en-US");

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ------------------------------------------------------------------ HTTP
  const apiKey = () => $("#api-key").value.trim();
  async function api(method, path, body, raw = false) {
    const headers = { Accept: "application/json" };
    if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
    let payload;
    if (body !== undefined) {
      headers["Content-Type"] = raw ? "application/octet-stream" : "application/json";
      payload = raw ? body : JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: payload });
    } catch (e) {
      return { ok: false, status: 0, body: { detail: `the server cannot be reached (${e.message})` } };
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text.slice(0, 500) }; }
    return { ok: resp.ok, status: resp.status, body: data };
  }
  const detail = (r) => {
    const d = r.body && r.body.detail;
    return typeof d === "string" ? d : `HTTP ${r.status}: ${JSON.stringify(d || r.body)}`;
  };

  // ------------------------------------------------------------------ problems
  function clearProblems() {
    $$("[data-problem-for]").forEach((n) => { n.textContent = ""; });
    $$("[aria-invalid=true]").forEach((n) => n.removeAttribute("aria-invalid"));
  }
  function slotFor(location) {
    const find = (loc) => $(`[data-problem-for="${CSS.escape(loc)}"]`);
    if (/^inputs\[\d+\]\.counts/.test(location) && find("reference")) return find("reference");
    let loc = location || "";
    while (loc) {
      const hit = find(loc);
      if (hit) return hit;
      const cut = Math.max(loc.lastIndexOf("."), loc.lastIndexOf("["));
      loc = cut > 0 ? loc.slice(0, cut) : "";
    }
    return $("#p-general");
  }
  function showProblems(problems) {
    let first = null;
    for (const p of problems) {
      const slot = slotFor(p.location || "");
      let text = p.message || p.reason || String(p);
      if (p.location && text.startsWith(`${p.location}: `) && slot.id !== "p-general") {
        text = text.slice(p.location.length + 2);
      }
      slot.append(el("div", { text }));
      const field = slot.closest(".field, .card");
      const control = field && (slot.id === "p-general" ? null
        : $("input:not([type=radio]):not([type=checkbox]), select", field) || $("input", field));
      if (control) {
        control.setAttribute("aria-invalid", "true");
        const group = control.closest("details");
        if (group) group.open = true;
        first = first || control;
      }
    }
    if (first) first.focus({ preventScroll: false });
  }

  // ------------------------------------------------------------------ widgets
  function vocabEntries(name) {
    const v = S.vocab && S.vocab[name];
    return v ? Object.entries(v) : [];
  }

  function combobox(spec, id) {
    const input = el("input", {
      type: "text", id, role: "combobox", "aria-autocomplete": "list", "aria-expanded": "false",
      "aria-controls": `${id}-list`, autocomplete: "off", spellcheck: "false",
      placeholder: spec.example ? `label or id, e.g. ${spec.example}` : "label or id",
    });
    const list = el("ul", { role: "listbox", id: `${id}-list`, hidden: true, "aria-label": spec.name });
    const wrap = el("div", { class: "combo" }, input, list);
    let items = [];
    let active = -1;
    const term = () => input.value.split("|").pop().trim().toLowerCase();
    function filter() {
      const q = term();
      const all = vocabEntries(spec.name);
      const hits = q ? all.filter(([v, l]) => v.toLowerCase().includes(q) || (l || "").toLowerCase().includes(q)) : all;
      const starts = (pair) => (pair[0].toLowerCase().startsWith(q) || (pair[1] || "").toLowerCase().startsWith(q) ? 0 : 1);
      items = hits.sort((a, b) => starts(a) - starts(b) || (a[1] || a[0]).localeCompare(b[1] || b[0])).slice(0, 60);
      render();
    }
    function render() {
      list.replaceChildren(...items.map(([value, label], i) => el("li", {
        role: "option", id: `${id}-o${i}`, "aria-selected": i === active ? "true" : "false",
        onmousedown: (e) => e.preventDefault(), onclick: () => choose(i),
      }, el("span", { class: "label", text: label || value }), el("span", { class: "id", text: value }))));
      if (active >= 0) {
        input.setAttribute("aria-activedescendant", `${id}-o${active}`);
        const node = $(`#${id}-o${active}`);
        if (node) node.scrollIntoView({ block: "nearest" });
      } else input.removeAttribute("aria-activedescendant");
      const open = items.length > 0 && document.activeElement === input;
      list.hidden = !open;
      input.setAttribute("aria-expanded", open ? "true" : "false");
    }
    function close() { items = []; active = -1; render(); }
    function choose(i) {
      const parts = input.value.split("|");
      parts[parts.length - 1] = items[i][0];
      input.value = parts.join("|");
      close();
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }
    input.addEventListener("input", () => { active = -1; filter(); });
    input.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        if (!items.length) filter();
        const n = items.length;
        if (!n) return;
        active = e.key === "ArrowDown" ? (active + 1) % n : (active <= 0 ? n - 1 : active - 1);
        render();
      } else if (e.key === "Enter" && items.length && active >= 0) {
        e.preventDefault();
        choose(active);
      } else if (e.key === "Escape" && items.length) {
        e.preventDefault();
        e.stopPropagation();
        close();
      } else if (e.key === "Tab") close();
    });
    input.addEventListener("blur", () => setTimeout(close, 150));
    return { root: wrap, control: input, get: () => input.value.trim(), set: (v) => { input.value = v; } };
  }

  function quantity(spec, id) {
    const num = el("input", { type: "number", id, step: "any", min: "0", placeholder: spec.example ? spec.example.split(" ")[0] : "" });
    if (spec.unit_kind === "age") {
      return { root: num, control: num, get: () => num.value.trim(), set: (v) => { num.value = String(v).trim(); } };
    }
    const units = S.config.units[spec.unit_kind] || [];
    const unit = el("select", { "aria-label": `${spec.name} unit` }, ...units.map((u) => el("option", { value: u, text: u })));
    const preferred = spec.unit_kind === "time" ? "hours" : "uM";
    if (units.includes(preferred)) unit.value = preferred;
    return {
      root: el("div", { class: "qty" }, num, unit),
      control: num,
      get: () => (num.value.trim() === "" ? "" : `${num.value.trim()} ${unit.value}`),
      set: (v) => {
        const m = String(v).match(/^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*?)\s*$/);
        if (!m) { num.value = ""; return; }
        num.value = m[1];
        const found = units.find((u) => u.toLowerCase() === m[2].toLowerCase());
        if (found) unit.value = found;
        else if (m[2]) { unit.append(el("option", { value: m[2], text: m[2] })); unit.value = m[2]; }
      },
    };
  }

  function menu(spec, id) {
    const known = vocabEntries(spec.name).map(([v]) => v);
    const values = known.length ? known : spec.values;
    const select = el("select", { id }, el("option", { value: "", text: "— not set —" }),
      ...values.map((v) => el("option", { value: v, text: v })));
    return {
      root: select, control: select, get: () => select.value,
      set: (v) => {
        if (v && !values.includes(v)) select.append(el("option", { value: v, text: v }));
        select.value = v;
      },
    };
  }

  function text(spec, id) {
    const listId = `${id}-values`;
    const input = el("input", { type: "text", id, list: listId, autocomplete: "off", placeholder: spec.example || "" });
    const datalist = el("datalist", { id: listId }, ...vocabEntries(spec.name).map(([v, l]) => el("option", { value: v, label: l || v })));
    return { root: el("div", {}, input, datalist), control: input, get: () => input.value.trim(), set: (v) => { input.value = v; } };
  }

  function fieldWidget(spec) {
    const id = uid(`f-${spec.name}`);
    const make = { ontology: combobox, enum: menu, quantity, text }[spec.kind] || text;
    const w = make(spec, id);
    const problem = el("div", { class: "problem", role: "alert", id: `${id}-problem` });
    const hint = el("div", { class: "hint" });
    w.control.setAttribute("aria-describedby", `${id}-problem ${id}-hint`);
    hint.id = `${id}-hint`;
    const pretty = spec.name.replace(/_ontology_id$/, "").replace(/_/g, " ");
    const root = el("div", { class: "field", "data-field": spec.name },
      el("label", { for: id, title: spec.description, text: pretty }), w.root, hint, problem);
    const updateHint = () => {
      const v = w.get();
      hint.className = "hint";
      if (spec.kind !== "ontology" || !v) { hint.textContent = ""; return; }
      const labels = S.vocab && S.vocab[spec.name];
      const shown = v.split("|").map((p) => (labels && labels[p.trim()]) || null);
      if (shown.every((x) => x)) hint.textContent = shown.join(" + ");
      else if (labels) { hint.textContent = "not in this model's vocabulary (the server checks it)"; hint.className = "hint warn"; }
      else hint.textContent = "";
    };
    root.addEventListener("input", updateHint);
    root.addEventListener("change", updateHint);
    updateHint();
    return { name: spec.name, root, problem, get: w.get, set: (v) => { w.set(v); updateHint(); } };
  }

  // ------------------------------------------------------------------ form
  const task = () => S.model.task;
  // fields the model's vocabulary lists with no value at all are ones it never saw: hidden
  const unseen = (f) => Boolean(S.vocab && S.vocab[f.name] && !Object.keys(S.vocab[f.name]).length);
  const conditionFields = () => S.config.fields.filter((f) => (task() === "baseline" || f.perturbation) && !unseen(f));

  function addCondition(metadata = {}, numSamples = 3, sampleIds = null) {
    const titleId = uid("cond");
    const card = el("fieldset", { class: "card condition", "aria-labelledby": titleId });
    const title = el("h3", { id: titleId });
    const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
    const remove = el("button", { type: "button", class: "small", text: "Remove" });
    remove.addEventListener("click", () => {
      const next = card.nextElementSibling || card.previousElementSibling;
      card.remove();
      if (!$$(".condition").length) addCondition();
      renumber();
      refreshJson();
      (next && $("input, select", next) || $("#add-condition")).focus();
    });
    const head = el("div", { class: "cond-head" }, swatch, title, remove);
    const cardProblem = el("div", { class: "problem", role: "alert" });
    card.append(head, cardProblem);
    const top = el("div", { class: "grid2" });
    card._num = null;
    card._ids = null;
    if (task() !== "predict-metadata") {
      const id = uid("num");
      const input = el("input", { type: "number", id, min: "1", step: "1", value: String(numSamples) });
      const problem = el("div", { class: "problem", role: "alert" });
      input.setAttribute("aria-describedby", `${id}-p`);
      problem.id = `${id}-p`;
      top.append(el("div", { class: "field", "data-field": "num_samples" },
        el("label", { for: id, text: "samples (num_samples)" }), input, problem));
      card._num = { input, problem };
    }
    if (task() === "condition-on-sample-ids") {
      const id = uid("ids");
      const input = el("input", { type: "text", id, placeholder: "SRR1039508, …", value: (sampleIds || []).join(", ") });
      const problem = el("div", { class: "problem", role: "alert" });
      top.append(el("div", { class: "field", "data-field": "sample_ids" },
        el("label", { for: id, text: "sample ids (comma-separated)" }), input, problem));
      card._ids = { input, problem };
    }
    card.append(top);
    card._widgets = [];
    const groups = task() === "baseline" ? ["biological", "perturbation", "technical"] : ["perturbation"];
    for (const group of groups) {
      const grid = el("div", { class: "grid2" });
      const specs = conditionFields().filter((f) => f.group === group);
      let filled = false;
      for (const spec of specs) {
        const w = fieldWidget(spec);
        let value = metadata[spec.name];
        if (Array.isArray(value)) value = value.join("|");
        if (value !== undefined && value !== null && value !== "") { w.set(String(value)); filled = true; }
        card._widgets.push(w);
        grid.append(w.root);
      }
      const open = group !== "technical" || filled;
      const note = group === "perturbation"
        ? el("p", { class: "hint-line", text: "Several perturbations at once: separate ids (and types) with |, e.g. ENSG…|ENSG…" })
        : null;
      card.append(el("details", { class: "group", open }, el("summary", { text: GROUP_TITLES[group] }), grid, note));
    }
    card._problem = cardProblem;
    $("#conditions").append(card);
    renumber();
    return card;
  }

  function renumber() {
    $$(".condition").forEach((card, i) => {
      $("h3", card).textContent = `Condition ${i + 1}`;
      $(".swatch", card).style.background = color(i);
      $(".cond-head button", card).setAttribute("aria-label", `Remove condition ${i + 1}`);
      card.dataset.loc = `inputs[${i}]`;
      card._problem.dataset.problemFor = `inputs[${i}]`;
      if (card._num) card._num.problem.dataset.problemFor = `inputs[${i}].num_samples`;
      if (card._ids) card._ids.problem.dataset.problemFor = `inputs[${i}].sample_ids`;
      for (const w of card._widgets) {
        w.root.dataset.loc = `inputs[${i}].metadata.${w.name}`;
        w.problem.dataset.problemFor = `inputs[${i}].metadata.${w.name}`;
      }
    });
  }

  const numberOrText = (v) => {
    const t = String(v).trim();
    return t !== "" && Number.isFinite(Number(t)) ? Number(t) : t;
  };

  function chosenReferences() {
    const ref = S.reference;
    if (!ref) return [];
    if (task() === "predict-metadata") {
      const pick = $("#ref-sample").value;
      const idx = pick === "all" || pick === "" ? ref.counts.map((_, i) => i) : [Number(pick)];
      return idx.map((i) => ({ name: ref.samples[i].name, counts: ref.counts[i] }));
    }
    const i = Number($("#ref-sample").value || 0);
    return ref.counts[i] ? [{ name: ref.samples[i].name, counts: ref.counts[i] }] : [];
  }

  function buildQuery() {
    const query = {};
    const cards = $$(".condition");
    const meta = (card) => {
      const m = {};
      for (const w of card._widgets) { const v = w.get(); if (v !== "") m[w.name] = v; }
      return m;
    };
    const num = (card) => numberOrText(card._num.input.value);
    const refs = chosenReferences();
    if (task() === "baseline") {
      query.inputs = cards.map((c) => ({ metadata: meta(c), num_samples: num(c) }));
    } else if (task() === "reference-conditioning") {
      const counts = refs.length ? refs[0].counts : [];
      query.inputs = cards.map((c) => ({ counts, metadata: meta(c), num_samples: num(c) }));
    } else if (task() === "condition-on-sample-ids") {
      query.inputs = cards.map((c) => ({
        sample_ids: c._ids.input.value.split(/[\s,]+/).filter(Boolean), metadata: meta(c), num_samples: num(c),
      }));
    } else {
      query.inputs = refs.map((r) => ({ counts: r.counts }));
    }
    if (task() !== "predict-metadata") {
      query.sampling_strategy = $("#opt-strategy").value;
      const total = $("#opt-total").value.trim();
      if (total !== "") query.total_count = numberOrText(total);
      query.deterministic_latents = $("#opt-deterministic").checked;
    }
    if (task() === "reference-conditioning" || task() === "condition-on-sample-ids") {
      query.conditioning = $$("#opt-conditioning input:checked").map((c) => c.value);
      if ($("#opt-fixed-total").checked) query.fixed_total_count = true;
    }
    const seed = $("#opt-seed").value.trim();
    if (seed !== "") query.seed = numberOrText(seed);
    return query;
  }

  function shortJson(query) {
    return JSON.stringify(query, (k, v) => {
      if (Array.isArray(v) && v.length > 8 && v.every((x) => typeof x === "number")) {
        const total = v.reduce((a, b) => a + b, 0);
        return `«${fmt(v.length)} counts: ${v.slice(0, 4).join(", ")}, … library ${fmt(total)}»`;
      }
      return v;
    }, 2);
  }

  let jsonTimer = null;
  function refreshJson() {
    clearTimeout(jsonTimer);
    jsonTimer = setTimeout(() => {
      if (!S.model) return;
      const q = buildQuery();
      $("#query-json").textContent = shortJson(q);
      const auth = S.config.auth ? " -H \"Authorization: Bearer $SYNTHESIZE_API_KEY\"" : "";
      $("#curl-hint").textContent = `Count vectors are shortened on screen; Copy and Download give the full query. `
        + `curl -X POST ${location.origin}/api/models/${S.model.model_id}/predict -H "Content-Type: application/json"${auth} -d @query.json`
        + `  ·  pysynthbio.predict_query(query, model_id="${S.model.model_id}")`;
    }, 120);
  }

  function setOptions(q) {
    const modality = S.model.modality;
    const strat = $("#opt-strategy");
    strat.replaceChildren(...S.config.strategies.filter((s) => s.modalities.includes(modality))
      .map((s) => el("option", { value: s.name, text: s.name, title: s.description })));
    if (q.sampling_strategy) strat.value = q.sampling_strategy;
    $("#opt-total").value = q.total_count ?? "";
    $("#opt-total").placeholder = `default ${fmt(S.config.default_total_count[modality])}`;
    $("#opt-seed").value = q.seed ?? "";
    $("#opt-deterministic").checked = Boolean(q.deterministic_latents);
    const cond = q.conditioning || S.config.default_conditioning;
    $("#opt-conditioning").replaceChildren(...S.config.groups.map((g) => el("label", {},
      el("input", { type: "checkbox", value: g, checked: cond.includes(g) }), ` ${g}`)));
    $("#opt-fixed-total").checked = Boolean(q.fixed_total_count);
  }

  function setReference(ref) {
    S.reference = ref;
    const select = $("#ref-sample");
    const several = ref && ref.samples.length > 1;
    const opts = [];
    if (ref && task() === "predict-metadata" && several) opts.push(el("option", { value: "all", text: `all ${ref.samples.length} samples` }));
    if (ref) ref.samples.forEach((s, i) => opts.push(el("option", { value: String(i), text: `${s.name} (library ${fmt(s.library)})` })));
    select.replaceChildren(...opts);
    $("#ref-sample-row").hidden = !several;
    if (!ref) $("#ref-status").textContent = "";
    else if (ref.source === "example") $("#ref-status").textContent = `the shipped example reference (library ${fmt(ref.samples[0].library)})`;
    else $("#ref-status").textContent = `${ref.filename}: ${ref.samples.length} sample(s); ${fmt(ref.mapped)} of ${fmt(ref.gene_names)} gene names mapped onto the model's ${fmt(ref.n_genes)} genes${ref.rounded ? "; values rounded to whole counts" : ""}`;
    refreshJson();
  }

  function exampleReference() {
    const counts = S.example && S.example.inputs && S.example.inputs[0] && S.example.inputs[0].counts;
    if (!Array.isArray(counts)) return null;
    return { source: "example", samples: [{ name: "example reference", library: counts.reduce((a, b) => a + b, 0) }], counts: [counts] };
  }

  function applyQuery(q) {
    $("#conditions").replaceChildren();
    setOptions(q);
    const inputs = q.inputs || [];
    if (task() === "reference-conditioning" || task() === "predict-metadata") {
      $("input[name=ref-source][value=example]").checked = true;
      $("#upload-row").hidden = true;
      setReference(exampleReference());
    }
    if (task() !== "predict-metadata") {
      for (const item of inputs) addCondition(item.metadata || {}, item.num_samples || 1, item.sample_ids || null);
      if (!inputs.length) addCondition();
    }
    refreshJson();
  }

  function buildForm() {
    const t = task();
    const usesRef = t === "reference-conditioning" || t === "predict-metadata";
    $("#task-help").textContent = TASK_HELP[t] || "";
    $("#reference-box").hidden = !usesRef;
    $("#reference-legend").textContent = t === "predict-metadata" ? "Counts to predict from" : "Reference sample";
    $("#add-condition").hidden = t === "predict-metadata";
    $("#start-empty").hidden = t === "predict-metadata";
    $("#conditions").hidden = t === "predict-metadata";
    for (const id of ["#f-sampling_strategy", "#f-total_count", "#f-deterministic_latents"]) $(id).hidden = t === "predict-metadata";
    $("#conditioning-row").hidden = !(t === "reference-conditioning" || t === "condition-on-sample-ids");
    $("#conditions").replaceChildren();
    setReference(null);
  }

  async function loadModelData(prefill) {
    const id = S.model.model_id;
    clearProblems();
    const [vocab, example] = await Promise.all([
      api("GET", `/api/models/${encodeURIComponent(id)}/vocab`),
      api("GET", `/api/models/${encodeURIComponent(id)}/example-query`),
    ]);
    if (S.model.model_id !== id) return;  // the model changed meanwhile
    if (vocab.status === 401 || example.status === 401) {
      showProblems([{ location: "api_key", message: `${detail(vocab.status === 401 ? vocab : example)} — enter an API key to load the model's vocabulary and example` }]);
    } else if (!vocab.ok) {
      showProblems([{ location: "", message: detail(vocab) }]);
    }
    S.vocab = vocab.ok ? vocab.body.fields : null;
    S.example = example.ok ? example.body.example_query : null;
    if (prefill || !$$(".condition").length) {
      if (S.example) { applyQuery(S.example); S.prefilled = true; } else { applyQuery({}); }
    }
    document.body.dataset.loaded = S.vocab ? id : "";  // the form is built on the vocabulary
  }

  async function selectModel(id) {
    S.model = S.config.models.find((m) => m.model_id === id) || S.config.models[0];
    $("#model").value = S.model.model_id;
    history.replaceState(null, "", `?model=${encodeURIComponent(S.model.model_id)}`);  // bookmarkable
    $("#model-desc").textContent = S.model.description;
    $("#model-desc").title = S.model.description;
    S.vocab = null; S.example = null; S.prefilled = false;
    buildForm();
    await loadModelData(true);
  }

  // ------------------------------------------------------------------ upload
  async function uploadFile(file) {
    clearProblems();
    $("#ref-status").textContent = `reading ${file.name}…`;
    const body = await file.arrayBuffer();
    const r = await api("POST", `/ui/api/counts?filename=${encodeURIComponent(file.name)}`, body, true);
    if (!r.ok) {
      $("#ref-status").textContent = "";
      if (r.status === 401) showProblems([{ location: "api_key", message: detail(r) }]);
      else showProblems(r.body && r.body.problems ? r.body.problems : [{ location: "reference", message: detail(r) }]);
      return;
    }
    setReference({ source: "upload", ...r.body });
  }

  // ------------------------------------------------------------------ run
  let ticker = null;
  function setStatus(textValue, cls = "") {
    const node = $("#run-status");
    node.textContent = textValue;
    node.className = cls;
  }

  async function runQuery(ev) {
    ev.preventDefault();
    if (S.running) return;
    clearProblems();
    if ((task() === "reference-conditioning" || task() === "predict-metadata") && !chosenReferences().length) {
      showProblems([{ location: "reference", message: "choose a reference: the example, or upload a counts file" }]);
      return;
    }
    const query = buildQuery();
    S.lastQuery = query;
    S.lastNames = task() === "predict-metadata" ? chosenReferences().map((r) => r.name) : null;
    refreshJson();
    const id = S.model.model_id;
    S.running = true;
    $("#run").disabled = true;
    const t0 = performance.now();
    let phase = "submitting";
    const elapsed = () => ((performance.now() - t0) / 1000).toFixed(1);
    clearInterval(ticker);
    ticker = setInterval(() => setStatus(`${phase} · ${elapsed()} s`, "busy"), 100);
    const finish = (textValue, cls) => {
      clearInterval(ticker);
      setStatus(textValue, cls);
      S.running = false;
      $("#run").disabled = false;
    };
    const r = await api("POST", `/api/models/${encodeURIComponent(id)}/predict`, query);
    if (!r.ok) {
      if (r.status === 422 && r.body && Array.isArray(r.body.problems)) {
        showProblems(r.body.problems);
        finish(`not run: the query has ${r.body.problems.length} problem(s)`, "failed");
      } else if (r.status === 401) {
        showProblems([{ location: "api_key", message: detail(r) }]);
        finish("not run: API key needed", "failed");
      } else {
        showProblems([{ location: "", message: detail(r) }]);
        finish(`not run (HTTP ${r.status})`, "failed");
      }
      return;
    }
    const queryId = r.body.modelQueryId;
    phase = "queued";
    for (;;) {
      await new Promise((res) => setTimeout(res, 300));
      const st = await api("GET", `/api/model-queries/${encodeURIComponent(queryId)}/status`);
      if (!st.ok) { showProblems([{ location: "", message: detail(st) }]); finish("status unavailable", "failed"); return; }
      phase = st.body.status;
      if (phase === "failed") {
        showProblems([{ location: "", message: `the query failed: ${st.body.message || "no message"}` }]);
        finish(`failed after ${elapsed()} s`, "failed");
        return;
      }
      if (phase === "ready") {
        phase = "loading the result";
        const ok = await loadResult(queryId, st.body.downloadUrl);
        if (ok) finish(`ready in ${elapsed()} s · ${fmt(st.body.samples)} sample(s)`, "ready");
        else finish("the result could not be loaded", "failed");
        return;
      }
    }
  }

  async function loadResult(queryId, downloadUrl) {
    const signed = new URL(downloadUrl, location.href).search;
    const base = `/ui/api/model-queries/${encodeURIComponent(queryId)}`;
    const r = await api("GET", `${base}/summary${signed}`);
    if (!r.ok) { showProblems([{ location: "", message: detail(r) }]); return false; }
    S.summary = r.body;
    renderDownloads(base, signed, queryId);
    renderResult();
    return true;
  }

  function renderDownloads(base, signed, queryId) {
    const nav = $("#downloads");
    const links = Object.keys(S.config.export_formats).map((f) => el("a", {
      href: `${base}/download/${f}${signed}`, title: S.config.export_formats[f], download: "",
      "data-format": f, text: FORMAT_NAMES[f] || f,
    }));
    const blob = new Blob([JSON.stringify(S.lastQuery, null, 2)], { type: "application/json" });
    links.push(el("a", { href: URL.createObjectURL(blob), download: `query-${queryId.slice(0, 8)}.json`, "data-format": "query", text: "Query JSON" }));
    nav.replaceChildren(...links);
    nav.hidden = false;
  }

  // ------------------------------------------------------------------ results
  function renderResult() {
    const s = S.summary;
    $("#results-empty").hidden = true;
    $("#results-body").hidden = false;
    $("#result-meta").textContent = `${s.model_id} · ${fmt(s.n_samples)} sample(s) × ${fmt(s.n_genes)} genes · model ${s.model_version} · query ${s.query_id}`;
    const tabs = [];
    if (s.predictions) tabs.push(["probs", "Predicted metadata"]);
    if (s.fold_change && s.fold_change.inputs.length) tabs.push(["fc", "Fold change"]);
    tabs.push(["pca", "PCA"], ["preview", "Preview"]);
    const list = $("#tabs");
    list.replaceChildren(...tabs.map(([key, label]) => el("button", {
      type: "button", role: "tab", id: `tab-${key}`, "aria-controls": `panel-${key}`, "data-tab": key, text: label,
    })));
    $$(".tabpanel").forEach((p) => { p.hidden = true; });
    S.tabs = tabs.map(([k]) => k);
    S.drawn = {};
    selectTab(tabs[0][0], false);
  }

  function selectTab(key, focus = true) {
    for (const btn of $$("[role=tab]")) {
      const on = btn.dataset.tab === key;
      btn.setAttribute("aria-selected", on ? "true" : "false");
      btn.tabIndex = on ? 0 : -1;
      $(`#panel-${btn.dataset.tab}`).hidden = !on;
      if (on && focus) btn.focus();
    }
    if (!S.drawn[key]) {
      S.drawn[key] = true;
      ({ pca: drawPca, preview: drawPreview, fc: setupFoldChange, probs: drawProbs })[key]();
    }
  }

  function niceTicks(lo, hi, n = 5) {
    const span = hi - lo || 1;
    const step0 = span / n;
    const mag = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || mag * 10;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.abs(v) < 1e-12 ? 0 : v);
    return out;
  }
  const tickText = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(0) : String(+v.toFixed(2)));

  function extent(values) {
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (!Number.isFinite(lo)) { lo = -1; hi = 1; }
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.06;
    return [lo - pad, hi + pad];
  }

  function drawPca() {
    const s = S.summary;
    const box = $("#pca-plot");
    const W = Math.max(box.clientWidth || 700, 320);
    const H = Math.round(Math.min(420, W * 0.6));
    const m = { l: 58, r: 16, t: 12, b: 44 };
    const pts = s.pca.points;
    const [x0, x1] = extent(pts.map((p) => p.x));
    const [y0, y1] = extent(pts.map((p) => p.y));
    const sx = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (v) => H - m.b - ((v - y0) / (y1 - y0)) * (H - m.t - m.b);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `PCA of ${pts.length} samples`, "data-points": String(pts.length) });
    const axis = svg("g", { class: "axis", fill: "#5a6470", "font-size": "11" });
    for (const t of niceTicks(x0, x1)) {
      axis.append(svg("line", { x1: sx(t), x2: sx(t), y1: m.t, y2: H - m.b, stroke: "#eceff2" }));
      axis.append(svg("text", { x: sx(t), y: H - m.b + 14, "text-anchor": "middle" }, tickText(t)));
    }
    for (const t of niceTicks(y0, y1)) {
      axis.append(svg("line", { x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t), stroke: "#eceff2" }));
      axis.append(svg("text", { x: m.l - 6, y: sy(t) + 4, "text-anchor": "end" }, tickText(t)));
    }
    axis.append(svg("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "none", stroke: "#aeb6bf" }));
    const pct = (v) => `${(v * 100).toFixed(1)}%`;
    axis.append(svg("text", { x: (m.l + W - m.r) / 2, y: H - 8, "text-anchor": "middle", fill: "#1b1f24" }, `PC1 (${pct(s.pca.explained[0])})`));
    axis.append(svg("text", { x: 14, y: (m.t + H - m.b) / 2, "text-anchor": "middle", fill: "#1b1f24", transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})` }, `PC2 (${pct(s.pca.explained[1])})`));
    root.append(axis);
    const layer = svg("g");
    for (const p of pts) {
      const label = s.inputs[p.input] || `input ${p.input + 1}`;
      let node;
      if (p.kind === "reference") {
        const x = sx(p.x); const y = sy(p.y); const r = 8;
        node = svg("path", { d: `M${x} ${y - r}L${x + r} ${y}L${x} ${y + r}L${x - r} ${y}Z`, fill: "#fff", stroke: "#1b1f24", "stroke-width": "2.5", class: "ref" });
      } else {
        node = svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 5, fill: color(p.input), "fill-opacity": "0.85", stroke: "#fff", "stroke-width": "1", class: "pt", "data-input": String(p.input) });
      }
      node.append(svg("title", {}, `${p.name} · ${label}`));
      layer.append(node);
    }
    root.append(layer);
    box.replaceChildren(root);
    const used = [...new Set(pts.filter((p) => p.kind === "generated").map((p) => p.input))].sort((a, b) => a - b);
    const legend = used.map((i) => el("li", {}, el("span", { class: "swatch", style: `background:${color(i)}` }), ` ${s.inputs[i] || `input ${i + 1}`}`));
    if (pts.some((p) => p.kind === "reference")) legend.push(el("li", {}, el("span", { class: "swatch", style: "background:#fff;border:2px solid #1b1f24;transform:rotate(45deg)" }), " reference"));
    $("#pca-legend").replaceChildren(...legend);
  }

  function drawPreview() {
    const s = S.summary;
    const p = s.preview;
    const head = el("tr", {}, el("th", { text: "sample" }), el("th", { class: "left", text: "condition" }), el("th", { text: "library" }),
      ...p.genes.map((g) => el("th", { title: g.id, text: g.symbol || g.id })));
    const names = S.lastNames;
    const rows = p.rows.map((row, i) => {
      const sample = s.samples[i];
      return el("tr", {}, el("td", { text: names && names[i] ? names[i] : sample.name }),
        el("td", { class: "left", title: s.inputs[sample.input] || "" }, el("span", { class: "swatch", style: `background:${color(sample.input)}` }), ` ${sample.input + 1}`),
        el("td", { text: fmt(sample.library) }), ...row.map((v) => el("td", { text: fmt(v) })));
    });
    $("#preview-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
    $("#preview-note").textContent = `${p.shown < s.n_samples ? `first ${p.shown} of ${fmt(s.n_samples)} samples; ` : ""}the ${p.genes.length} genes with the highest mean CPM; counts as generated. Download for every gene.`;
  }

  // fold change: MA-style plot (canvas) and a searchable gene table
  function setupFoldChange() {
    const s = S.summary;
    const fc = s.fold_change;
    const select = $("#fc-input");
    select.replaceChildren(...fc.inputs.map((x, k) => el("option", { value: String(k), text: s.inputs[x.input] || `input ${x.input + 1}` })));
    $("#fc-input-row").hidden = fc.inputs.length < 2;
    select.onchange = () => { S.fcHighlight = null; drawFc(); fillGeneTable(); };
    $("#gene-search").oninput = () => fillGeneTable();
    S.fcHighlight = null;
    drawFc();
    fillGeneTable();
  }
  const fcCurrent = () => S.summary.fold_change.inputs[Number($("#fc-input").value || 0)];

  function drawFc() {
    const fc = S.summary.fold_change;
    const cur = fcCurrent();
    const canvas = $("#fc-plot");
    const W = Math.max(canvas.parentElement.clientWidth - 24, 320);
    const H = Math.round(Math.min(340, W * 0.48));
    const dpr = window.devicePixelRatio || 1;
    canvas.width = W * dpr; canvas.height = H * dpr;
    canvas.style.width = `${W}px`; canvas.style.height = `${H}px`;
    canvas.dataset.genes = String(fc.genes.length);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const m = { l: 52, r: 14, t: 10, b: 36 };
    const [x0, x1] = extent(cur.mean);
    const lim = Math.max(1, ...cur.log2fc.map(Math.abs)) * 1.08;
    const sx = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (v) => H - m.b - ((v + lim) / (2 * lim)) * (H - m.t - m.b);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#5a6470"; ctx.strokeStyle = "#eceff2"; ctx.lineWidth = 1;
    ctx.textAlign = "center";
    for (const t of niceTicks(x0, x1)) { ctx.beginPath(); ctx.moveTo(sx(t), m.t); ctx.lineTo(sx(t), H - m.b); ctx.stroke(); ctx.fillText(tickText(t), sx(t), H - m.b + 14); }
    ctx.textAlign = "right";
    for (const t of niceTicks(-lim, lim)) { ctx.beginPath(); ctx.moveTo(m.l, sy(t)); ctx.lineTo(W - m.r, sy(t)); ctx.stroke(); ctx.fillText(tickText(t), m.l - 6, sy(t) + 4); }
    ctx.strokeStyle = "#8d98a3"; ctx.beginPath(); ctx.moveTo(m.l, sy(0)); ctx.lineTo(W - m.r, sy(0)); ctx.stroke();
    ctx.strokeRect(m.l, m.t, W - m.l - m.r, H - m.t - m.b);
    ctx.fillStyle = "#1b1f24"; ctx.textAlign = "center";
    ctx.fillText("log2 mean expression (CPM + 1)", (m.l + W - m.r) / 2, H - 6);
    ctx.save(); ctx.translate(13, (m.t + H - m.b) / 2); ctx.rotate(-Math.PI / 2); ctx.fillText("log2 fold change", 0, 0); ctx.restore();
    ctx.fillStyle = "rgba(90,100,112,0.35)";
    for (let i = 0; i < cur.mean.length; i++) ctx.fillRect(sx(cur.mean[i]) - 1.2, sy(cur.log2fc[i]) - 1.2, 2.4, 2.4);
    const placed = [];  // label boxes drawn so far: a label that would overlap one moves or is left out
    const label = (i, colour, always = false) => {
      const x = sx(cur.mean[i]); const y = sy(cur.log2fc[i]);
      ctx.fillStyle = colour; ctx.beginPath(); ctx.arc(x, y, 3.2, 0, 2 * Math.PI); ctx.fill();
      const name = fc.symbols[i] || fc.genes[i];
      const w = ctx.measureText(name).width; const right = x > W - 90;
      const left = right ? x - 5 - w : x + 5;
      for (const dy of [-4, 12, -15, 23]) {
        const box = [left - 1, y + dy - 10, left + w + 1, y + dy + 2];
        const clash = placed.some((b) => box[0] < b[2] && b[0] < box[2] && box[1] < b[3] && b[1] < box[3]);
        if (!clash || (always && dy === 23)) {
          placed.push(box);
          ctx.fillStyle = "#1b1f24"; ctx.textAlign = "left";
          ctx.fillText(name, left, y + dy);
          return;
        }
      }
    };
    const marked = S.fcHighlight;
    if (marked !== null) label(marked, "#f0a500", true);  // first: the other labels make room
    cur.top.filter((i) => i !== marked).forEach((i) => label(i, "#d62728"));
    if (marked !== null) {
      ctx.strokeStyle = "#f0a500"; ctx.lineWidth = 2.5; ctx.beginPath();
      ctx.arc(sx(cur.mean[marked]), sy(cur.log2fc[marked]), 7, 0, 2 * Math.PI); ctx.stroke();
    }
  }

  function fillGeneTable() {
    const fc = S.summary.fold_change;
    const cur = fcCurrent();
    const q = $("#gene-search").value.trim().toLowerCase();
    let idx = fc.genes.map((_, i) => i);
    if (q) idx = idx.filter((i) => fc.genes[i].toLowerCase().includes(q) || (fc.symbols[i] || "").toLowerCase().includes(q));
    idx.sort((a, b) => Math.abs(cur.log2fc[b]) - Math.abs(cur.log2fc[a]));
    const shown = idx.slice(0, 200);
    const pick = (i) => { S.fcHighlight = i; drawFc(); $$("#fc-table tr.hit").forEach((r) => r.classList.remove("hit")); const row = $(`#fc-table tr[data-gene="${i}"]`); if (row) row.classList.add("hit"); };
    const rows = shown.map((i) => el("tr", {
      tabindex: "0", "data-gene": String(i), class: S.fcHighlight === i ? "hit" : "",
      onclick: () => pick(i), onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(i); } },
    }, el("td", { text: fc.symbols[i] || "—" }), el("td", { class: "left", text: fc.genes[i] }),
      el("td", { text: cur.log2fc[i].toFixed(2) }), el("td", { text: cur.mean[i].toFixed(2) })));
    $("#fc-table").replaceChildren(
      el("thead", {}, el("tr", {}, el("th", { text: "gene" }), el("th", { class: "left", text: "Ensembl id" }), el("th", { text: "log2 FC" }), el("th", { text: "log2 mean" }))),
      el("tbody", {}, ...rows));
    $("#gene-count").textContent = `${fmt(idx.length)} gene(s)${idx.length > shown.length ? `, the ${shown.length} largest changes shown` : ""}; Enter on a row marks it in the plot`;
  }

  function drawProbs() {
    const s = S.summary;
    const select = $("#probs-sample");
    const names = S.lastNames || [];
    select.replaceChildren(...s.predictions.map((_, i) => el("option", { value: String(i), text: names[i] || `sample ${i + 1}` })));
    select.onchange = () => fillProbs(Number(select.value));
    fillProbs(0);
  }

  function fillProbs(i) {
    const pred = S.summary.predictions[i];
    const blocks = Object.entries(pred.classes).map(([field, classes]) => el("div", { class: "bars", "data-field": field },
      el("h3", { text: field.replace(/_ontology_id$/, "").replace(/_/g, " ") }),
      ...classes.map((c) => el("div", { class: "bar-row" },
        el("span", { class: "name", title: c.value, text: c.label && c.label !== c.value ? `${c.label} (${c.value})` : c.value }),
        el("span", { class: "bar-track", "aria-hidden": "true" }, el("span", { class: "bar-fill", style: `width:${(c.p * 100).toFixed(1)}%;display:block` })),
        el("span", { class: "p", text: `${(c.p * 100).toFixed(1)}%` })))));
    $("#probs-bars").replaceChildren(...blocks);
  }

  // ------------------------------------------------------------------ wiring
  function onTabKey(e) {
    const keys = S.tabs || [];
    const current = keys.indexOf(document.activeElement.dataset.tab);
    if (current < 0) return;
    let next = null;
    if (e.key === "ArrowRight") next = (current + 1) % keys.length;
    else if (e.key === "ArrowLeft") next = (current - 1 + keys.length) % keys.length;
    else if (e.key === "Home") next = 0;
    else if (e.key === "End") next = keys.length - 1;
    if (next !== null) { e.preventDefault(); selectTab(keys[next]); }
  }

  async function copyJson() {
    const textValue = JSON.stringify(buildQuery(), null, 2);
    let ok = false;
    try { await navigator.clipboard.writeText(textValue); ok = true; } catch {
      const area = el("textarea", { style: "position:fixed;left:-9999px" });
      area.value = textValue; document.body.append(area); area.select();
      try { ok = document.execCommand("copy"); } catch { ok = false; }
      area.remove();
    }
    $("#copy-status").textContent = ok ? "copied" : "copy failed: select the text instead";
  }

  function downloadJson() {
    const blob = new Blob([JSON.stringify(buildQuery(), null, 2)], { type: "application/json" });
    const a = el("a", { href: URL.createObjectURL(blob), download: "query.json" });
    document.body.append(a); a.click(); a.remove();
  }

  async function init() {
    const r = await api("GET", "/ui/api/config");
    if (!r.ok) { $("#p-general").textContent = detail(r); return; }
    S.config = r.body;
    $("#model").replaceChildren(...S.config.models.map((m) => el("option", { value: m.model_id, text: m.model_id })));
    if (S.config.auth) {
      $("#key-box").hidden = false;
      $("#api-key").value = sessionStorage.getItem("opengem.apiKey") || "";
    }
    $("#api-key").addEventListener("change", () => {
      sessionStorage.setItem("opengem.apiKey", apiKey());
      clearProblems();
      if (!S.vocab) loadModelData(!S.prefilled);
      refreshJson();
    });
    $("#model").addEventListener("change", () => selectModel($("#model").value));
    $("#query-form").addEventListener("submit", runQuery);
    $("#query-form").addEventListener("input", refreshJson);
    $("#query-form").addEventListener("change", refreshJson);
    $("#add-condition").addEventListener("click", () => {
      const card = addCondition();
      refreshJson();
      $("input, select", card).focus();
    });
    $("#start-empty").addEventListener("click", () => {
      $("#conditions").replaceChildren();
      const card = addCondition();
      refreshJson();
      $("input, select", card).focus();
    });
    $("#load-example").addEventListener("click", () => { if (S.example) applyQuery(S.example); else loadModelData(true); });
    $$("input[name=ref-source]").forEach((radio) => radio.addEventListener("change", () => {
      const upload = $("input[name=ref-source]:checked").value === "upload";
      $("#upload-row").hidden = !upload;
      if (!upload) setReference(exampleReference());
      else if (S.upload) setReference(S.upload);
      else { setReference(null); $("#ref-file").focus(); }
    }));
    $("#ref-file").addEventListener("change", async () => {
      const file = $("#ref-file").files[0];
      if (!file) return;
      await uploadFile(file);
      if (S.reference && S.reference.source === "upload") S.upload = S.reference;
    });
    $("#ref-sample").addEventListener("change", refreshJson);
    $("#tabs").addEventListener("click", (e) => { const b = e.target.closest("[role=tab]"); if (b) selectTab(b.dataset.tab); });
    $("#tabs").addEventListener("keydown", onTabKey);
    $("#copy-json").addEventListener("click", copyJson);
    $("#download-json").addEventListener("click", downloadJson);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (!S.summary) return;
        if (!$("#panel-pca").hidden) drawPca(); else S.drawn.pca = false;
        if (!$("#panel-fc").hidden) drawFc();
      }, 150);
    });
    const wanted = new URLSearchParams(location.search).get("model");
    await selectModel(wanted || S.config.models[0].model_id);
    document.body.dataset.ready = "true";
  }

  init();
})();
