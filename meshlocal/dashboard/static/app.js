"use strict";
// meshlocal mesh page: draws the data plane's topology snapshots (SSE `v1/events`) as inline SVG
// plus a few panels. Every string from the data plane (names, errors, logs) is untrusted, so the
// DOM is only built with createElement(NS) + textContent, never innerHTML.
(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TIMELINE_MAX = 200;
  const NODE_W = 164, PSEUDO_H = 46, ROW_GAP = 22, MARGIN = 20, DOT = 12, PAD = 12;
  const DOTS_PER_ROW = Math.floor((NODE_W - 2 * PAD) / DOT);
  const LABEL_FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  const TITLE_FONT = "600 13px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

  const state = {
    snap: null,
    selected: null,          // {kind: "service" | "replica", id}
    edgesSeen: new Map(),    // "from\u2192to" -> last edge seen: the layout remembers edges so columns don't jump
    pseudoSeen: new Map(),   // "@public"/"@outside" nodes seen this session
    epoch: null, lastSeq: 0,
    logs: {containerId: null, token: 0},
    cache: {},               // JSON of the last rendered panels, to skip unchanged ones
    pending: null,           // snapshot waiting for the next animation frame
  };

  // ---------- small DOM helpers ----------
  const $ = (id) => document.getElementById(id);
  function build(e, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = String(v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) if (c !== null && c !== undefined && c !== false) e.append(c);
    return e;
  }
  const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
  const s = (tag, attrs, ...kids) => build(document.createElementNS(SVG_NS, tag), attrs, kids);

  const measurer = document.createElement("canvas").getContext("2d");
  function textWidth(text, font) { measurer.font = font; return measurer.measureText(text).width; }
  function truncate(text, font, max) {
    if (textWidth(text, font) <= max) return text;
    let t = text;
    while (t.length > 1 && textWidth(t + "…", font) > max) t = t.slice(0, -1);
    return t + "…";
  }

  // ---------- formatting ----------
  // Two significant digits below 1/s: a few calls a minute are not "0.0".
  const fmtRate = (r) => (r >= 100 ? r.toFixed(0) : r >= 1 ? r.toFixed(1) : r > 0 ? r.toPrecision(2) : "0");
  function fmtPct(f) { const p = f * 100; return p === 0 ? "0%" : (p < 10 ? p.toFixed(1) : p.toFixed(0)) + "%"; }
  function fmtMs(ms) {
    if (ms >= 1000) return (ms / 1000).toFixed(1) + " s";
    return (ms < 1 ? ms.toFixed(1) : String(Math.round(ms))) + " ms";
  }
  function fmtTime(unix) {
    const d = new Date(unix * 1000);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }
  // The edge label in two parts: "12.3 req/s · 2.5% err" and "p50 3 ms · p99 15 ms" (latency may be empty).
  function edgeLabel(e) {
    const unit = e.unit === "connections" ? "conn/s" : "req/s";
    const lat = [];
    if (e.p50_ms !== null && e.p50_ms !== undefined) lat.push("p50 " + fmtMs(e.p50_ms));
    if (e.p99_ms !== null && e.p99_ms !== undefined) lat.push("p99 " + fmtMs(e.p99_ms));
    return {rate: fmtRate(e.rate || 0), rest: ` ${unit} · ${fmtPct(e.error_rate || 0)} err`, lat: lat.join(" · ")};
  }
  const labelText = (l) => l.rate + l.rest + (l.lat ? " · " + l.lat : "");
  function edgeClass(e) {
    if (!e.rate) return "idle";
    return e.error_rate >= 0.05 ? "bad" : e.error_rate >= 0.01 ? "warn" : "ok";
  }

  // ---------- replica / service states ----------
  function replicaState(r) {   // the dot colour
    if (r.health === "unhealthy") return "unhealthy";
    if (r.ejected_by && r.ejected_by.length) return "ejected";
    return r.in_rotation && !r.draining ? "in" : "out";
  }
  const rotation = (r) => (r.draining ? "draining" : r.in_rotation ? "in" : "out");
  const inRotation = (svc) => svc.replicas.filter((r) => r.in_rotation && !r.draining).length;
  function serviceHealth(svc) {
    const n = inRotation(svc);
    if (!svc.desired && !svc.replicas.length) return "idle";
    if (n === 0) return "down";
    const allGood = svc.replicas.every((r) => replicaState(r) === "in");
    return n >= svc.desired && allGood && !svc.restarting.length && svc.ready ? "ok" : "degraded";
  }
  const isPseudo = (id) => id.startsWith("@");
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  // A client-only replica has no port: its address alone, never "addr:null".
  const hostPort = (address, port) => (port === null || port === undefined ? String(address) : `${address}:${port}`);
  const edgeKey = (e) => e.from + "\u2192" + e.to;
  // A replica is selected by its container: during a rolling replace the old
  // and the new one share a name. `byName` is for timeline events (names only).
  function findReplica(snap, id, byName = false) {
    for (const svc of snap.services) {
      for (const r of svc.replicas) if ((byName ? r.name : r.container_id) === id) return {svc, r};
    }
    return null;
  }

  // ---------- layout: layered, left to right ----------
  function layout(snap) {
    const svcs = new Map(snap.services.map((x) => [x.name, x]));
    const nodes = new Map();
    for (const n of snap.nodes) nodes.set(n.id, {...n});
    for (const x of snap.services) if (!nodes.has(x.name)) nodes.set(x.name, {id: x.name, kind: "service", label: x.name});
    for (const e of snap.edges) state.edgesSeen.set(edgeKey(e), e);
    for (const n of snap.nodes) if (n.kind !== "service") state.pseudoSeen.set(n.id, n);

    // Edges of this snapshot, plus remembered ones drawn as idle (traffic stopped longer than the window).
    const current = new Map(snap.edges.map((e) => [edgeKey(e), e]));
    const edges = [];
    for (const [k, e] of [...state.edgesSeen].sort((a, b) => a[0].localeCompare(b[0]))) {
      if (!nodes.has(e.to)) continue;
      if (!nodes.has(e.from) && state.pseudoSeen.has(e.from)) nodes.set(e.from, {...state.pseudoSeen.get(e.from)});
      if (!nodes.has(e.from)) continue;
      edges.push(current.get(k) || {...e, count: 0, rate: 0, errors: 0, error_rate: 0, p50_ms: null, p99_ms: null, remembered: true});
    }
    const ids = [...nodes.keys()].sort((a, b) => (isPseudo(b) - isPseudo(a)) || a.localeCompare(b));
    const succ = new Map(ids.map((i) => [i, []])), pred = new Map(ids.map((i) => [i, []]));
    for (const e of edges) if (e.from !== e.to) { succ.get(e.from).push(e.to); pred.get(e.to).push(e.from); }

    // Break cycles: a DFS from the sources marks back edges, which the layering ignores.
    const back = new Set(), mark = new Map();
    const dfs = (u) => {
      mark.set(u, 1);
      for (const v of succ.get(u)) {
        if (mark.get(v) === 1) back.add(u + "\u2192" + v);
        else if (!mark.has(v)) dfs(v);
      }
      mark.set(u, 2);
    };
    for (const i of ids.filter((i) => isPseudo(i) || !pred.get(i).length).concat(ids)) if (!mark.has(i)) dfs(i);

    // Column = longest path from a source over the acyclic edges.
    const col = new Map();
    const colOf = (v) => {
      if (!col.has(v)) {
        col.set(v, 0);
        col.set(v, Math.max(0, ...pred.get(v).filter((u) => !back.has(u + "\u2192" + v)).map((u) => colOf(u) + 1)));
      }
      return col.get(v);
    };
    const linked = ids.filter((i) => succ.get(i).length || pred.get(i).length);
    linked.forEach(colOf);
    // Services without edges: clients (web/worker/job) on the left, servers on the right, the rest last.
    const maxCol = Math.max(-1, ...linked.map((i) => col.get(i)));
    const first = linked.some(isPseudo) ? 1 : 0;
    for (const i of ids.filter((i) => !linked.includes(i))) {
      const svc = svcs.get(i), type = (svc && svc.type) || "";
      if (isPseudo(i)) col.set(i, 0);
      else if (/Web Service|Worker|Job|Static/.test(type)) col.set(i, first);
      else if (/Backend/.test(type) || (svc && svc.connect)) col.set(i, Math.max(maxCol, first + 1));
      else col.set(i, maxCol + 1);
    }
    const used = [...new Set(col.values())].sort((a, b) => a - b);   // drop empty columns
    for (const i of ids) col.set(i, used.indexOf(col.get(i)));
    const ncols = used.length;

    // Items per column: nodes, plus pass-through points for edges that skip columns.
    const items = new Map();
    for (const i of ids) {
      const svc = svcs.get(i);
      const rows = svc ? Math.max(1, Math.ceil(svc.replicas.length / DOTS_PER_ROW)) : 0;
      items.set(i, {id: i, col: col.get(i), h: svc ? 52 + rows * DOT : PSEUDO_H, node: nodes.get(i), svc,
        nb: [[], []], conns: [[], []], order: 0, y: 0});
    }
    const link = (a, b, k) => {
      items.get(a).nb[1].push(b); items.get(b).nb[0].push(a);
      items.get(a).conns[1].push({other: b, k}); items.get(b).conns[0].push({other: a, k});
    };
    // Each edge becomes a left-to-right chain of items; back edges are laid out reversed (Sugiyama
    // style) and drawn with the arrow at the start, so they never have to run back across columns.
    const chains = new Map();   // edge key -> item ids, left to right
    for (const e of edges) {
      const k = edgeKey(e);
      if (e.from === e.to) continue;   // self loops are drawn beside their node
      const rev = col.get(e.to) <= col.get(e.from);
      const [a, b] = rev ? [e.to, e.from] : [e.from, e.to];
      const chain = [a];
      for (let c = col.get(a) + 1; c < col.get(b); c++) {
        const d = k + "#" + c;
        items.set(d, {id: d, col: c, h: 8, dummy: true, nb: [[], []], conns: [[], []], order: 0, y: 0});
        chain.push(d);
      }
      chain.push(b);
      for (let j = 1; j < chain.length; j++) link(chain[j - 1], chain[j], k);
      chains.set(k, {ids: chain, rev});
    }
    const columns = Array.from({length: ncols}, () => []);
    for (const it of items.values()) columns[it.col].push(it);
    columns.forEach((c) => c.forEach((it, j) => (it.order = j)));

    // Order within columns: a few barycenter sweeps (deterministic, so the picture is stable).
    const bary = (it, side) => {   // nodes without any edge go to the bottom of their column
      const ns = it.nb[side];
      if (!it.nb[0].length && !it.nb[1].length) return Infinity;
      return ns.length ? ns.reduce((a, n) => a + items.get(n).order, 0) / ns.length : it.order;
    };
    const sortCol = (c, side) => {
      const keyed = c.map((it) => [bary(it, side), it]);
      keyed.sort((a, b) => (a[0] === b[0] ? 0 : a[0] < b[0] ? -1 : 1) || a[1].id.localeCompare(b[1].id));
      keyed.forEach(([, it], j) => { c[j] = it; it.order = j; });
    };
    for (let pass = 0; pass < 4; pass++) {
      for (let c = 1; c < ncols; c++) sortCol(columns[c], 0);
      for (let c = ncols - 2; c >= 0; c--) sortCol(columns[c], 1);
    }
    for (let c = 1; c < ncols; c++) sortCol(columns[c], 0);

    // Vertical positions: each item as near as it can be to the centre of its neighbours on one side,
    // keeping the order and spacing (least squares by merging overlapping blocks), a few passes.
    const gapAfter = (it) => it.h + (it.dummy ? 10 : ROW_GAP);
    for (const c of columns) { let y = 0; for (const it of c) { it.y = y; y += gapAfter(it); } }
    const place = (c, side) => {
      const blocks = [];
      for (const it of c) {
        const ns = it.nb[side], prev = blocks[blocks.length - 1];
        const want = ns.length ? ns.reduce((a, n) => a + items.get(n).y + items.get(n).h / 2, 0) / ns.length - it.h / 2 : null;
        const b = {items: [it], offs: [0], size: gapAfter(it), sum: want === null ? 0 : want, n: want === null ? 0 : 1};
        b.pos = want !== null ? want : prev ? prev.pos + prev.size : it.y;   // no neighbour: just follow
        blocks.push(b);
        for (;;) {
          const a = blocks[blocks.length - 2], z = blocks[blocks.length - 1];
          if (!a || a.pos + a.size <= z.pos + 0.01) break;
          z.offs.forEach((o, j) => { a.items.push(z.items[j]); a.offs.push(o + a.size); });
          a.sum += z.sum - z.n * a.size; a.n += z.n; a.size += z.size;
          if (a.n) a.pos = a.sum / a.n;
          blocks.pop();
        }
      }
      for (const b of blocks) b.items.forEach((it, j) => (it.y = b.pos + b.offs[j]));
    };
    for (let pass = 0; pass < 3; pass++) {
      for (let c = 1; c < ncols; c++) place(columns[c], 0);
      for (let c = ncols - 2; c >= 0; c--) place(columns[c], 1);
    }
    for (let c = 1; c < ncols; c++) place(columns[c], 0);
    const top = Math.min(...[...items.values()].map((it) => it.y));   // start at the top margin
    for (const it of items.values()) it.y += MARGIN - top;

    // Edge labels: each sits in the gap left of its chain's right end; a loop's in the gap right of its node.
    const labels = edges.map((e) => {
      const l = edgeLabel(e), chain = chains.get(edgeKey(e));
      const w = Math.max(textWidth(l.rate + l.rest, LABEL_FONT), l.lat ? textWidth(l.lat, LABEL_FONT) : 0) + 14;
      const gap = chain ? Math.max(0, col.get(chain.ids[chain.ids.length - 1]) - 1) : col.get(e.from);
      return {e, l, w, h: l.lat ? 32 : 19, chain, gap};
    });
    const gapW = Array(ncols).fill(110);
    gapW[ncols - 1] = 0;   // after the last column: only room for loops
    for (const lb of labels) gapW[lb.gap] = Math.max(gapW[lb.gap], lb.w + (lb.chain ? 60 : 50));
    const colX = [MARGIN];
    for (let c = 1; c < ncols; c++) colX[c] = colX[c - 1] + NODE_W + gapW[c - 1];
    for (const it of items.values()) it.x = colX[it.col];

    // Ports: spread a node's edges along its side, ordered by the other end's height.
    const ports = new Map();
    for (const it of items.values()) {
      if (it.dummy) continue;
      const inset = Math.min(18, it.h / 3), span = it.h - 2 * inset;
      for (const side of [0, 1]) {
        const cs = [...it.conns[side]].sort((a, b) => items.get(a.other).y - items.get(b.other).y || a.k.localeCompare(b.k));
        cs.forEach((c, j) => ports.set(side + ":" + it.id + ":" + c.k, it.y + inset + span * (j + 1) / (cs.length + 1)));
      }
    }
    const yOf = (id, side, k) => {
      const it = items.get(id);
      return it.dummy ? it.y + it.h / 2 : ports.get(side + ":" + id + ":" + k);
    };
    for (const lb of labels) {
      if (lb.chain) {
        const ch = lb.chain.ids, k = edgeKey(lb.e);
        lb.y = (yOf(ch[ch.length - 2], 1, k) + yOf(ch[ch.length - 1], 0, k)) / 2 - lb.h / 2;
      } else {
        const it = items.get(lb.e.from);
        lb.y = it.y + it.h / 2 - lb.h / 2;
      }
    }
    // Labels of one gap must not overlap: push them apart in the order of their wanted height.
    for (let g = 0; g < ncols; g++) {
      const inGap = labels.filter((lb) => lb.gap === g).sort((a, b) => a.y - b.y);
      let bottom = MARGIN;
      for (const lb of inGap) { lb.y = Math.max(lb.y, bottom); bottom = lb.y + lb.h + 6; }
    }
    let height = MARGIN;
    for (const it of items.values()) height = Math.max(height, it.y + it.h);
    for (const lb of labels) height = Math.max(height, lb.y + lb.h);
    height += MARGIN;
    const width = colX[ncols - 1] + NODE_W + gapW[ncols - 1] + MARGIN;
    return {items, labels, yOf, width, height};
  }

  // ---------- graph drawing ----------
  const MARKERS = {ok: "#16a34a", warn: "#ea8c00", bad: "#dc2626", idle: "#9ca3af"};
  function renderGraph(snap) {
    const g = $("graph");
    if (!snap.nodes.length && !snap.services.length) {
      g.replaceChildren(s("text", {x: 20, y: 30, class: "empty", text: "no services yet"}));
      g.setAttribute("viewBox", "0 0 400 50"); g.setAttribute("width", 400); g.setAttribute("height", 50);
      return;
    }
    const L = layout(snap);
    const defs = s("defs", {}, Object.entries(MARKERS).map(([k, c]) =>
      s("marker", {id: "arrow-" + k, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9,
        markerUnits: "userSpaceOnUse", orient: "auto-start-reverse"}, s("path", {d: "M0,0 L10,5 L0,10 z", fill: c}))));
    const edgeLayer = s("g", {class: "edges"}), nodeLayer = s("g", {class: "nodes"});
    for (const lb of L.labels) edgeLayer.append(drawEdge(lb, L));
    for (const it of L.items.values()) if (!it.dummy) nodeLayer.append(drawNode(it, snap));
    g.setAttribute("viewBox", `0 0 ${L.width} ${L.height}`);
    g.setAttribute("width", L.width);
    g.setAttribute("height", L.height);
    // Shrink a wide graph to fit, but not below 75%: beyond that the wrapper scrolls sideways.
    const cw = g.parentElement.clientWidth;
    g.style.width = (L.width <= cw ? L.width : Math.max(cw, L.width * 0.75)) + "px";
    g.replaceChildren(defs, edgeLayer, nodeLayer);
  }

  function drawEdge(lb, L) {
    const e = lb.e, cls = edgeClass(e);
    const width = 1.4 + Math.min(3.2, Math.log10(1 + (e.rate || 0)) * 1.5);
    let d, bx, by;   // path, label box top-left
    if (lb.chain) {
      // left end's port -> pass-through points -> the label (in the last gap) -> right end's port
      const ch = lb.chain.ids, k = edgeKey(e), pts = [];
      for (let j = 0; j < ch.length; j++) {
        const cur = L.items.get(ch[j]);
        if (j > 0) pts.push([cur.x, L.yOf(ch[j], 0, k)]);
        if (j < ch.length - 1) pts.push([cur.x + NODE_W, L.yOf(ch[j], 1, k)]);
      }
      const last = pts.pop(), prev = pts.pop();
      const gx0 = prev[0], gx1 = last[0], mid = (gx0 + gx1) / 2, ly = lb.y + lb.h / 2;
      pts.push(prev, [mid - lb.w / 2, ly], [mid + lb.w / 2, ly], last);
      d = `M${pts[0][0]},${pts[0][1]}`;
      for (let j = 1; j < pts.length; j++) {
        const [x0, y0] = pts[j - 1], [x1, y1] = pts[j], dx = (x1 - x0) / 2;
        d += Math.abs(y1 - y0) < 0.5 ? ` L${x1},${y1}` : ` C${x0 + dx},${y0} ${x1 - dx},${y1} ${x1},${y1}`;
      }
      bx = mid - lb.w / 2; by = lb.y;
    } else {
      // a self loop: out of the node's right side, through the label beside it, back in
      const a = L.items.get(e.from), x = a.x + NODE_W, y0 = a.y + 14, y1 = a.y + a.h - 14;
      bx = x + 30; by = lb.y;
      const ly = by + lb.h / 2;
      d = `M${x},${y0} C${x + 20},${y0} ${bx},${ly} ${bx},${ly} C${bx},${ly} ${x + 20},${y1} ${x},${y1}`;
    }
    const rev = lb.chain && lb.chain.rev;
    const title = `${e.from} → ${e.to} (${e.protocol}): ${labelText(lb.l)}\n` +
      `${e.count} ${e.unit} over the window, ${e.errors} errors` + (e.latency ? `, latency = ${e.latency}` : "") +
      (e.remembered ? "\nno traffic in the window" : "");
    const cx = bx + lb.w / 2;
    const text = s("text", {class: "label", x: cx, y: by + 13, "text-anchor": "middle"},
      s("tspan", {class: "rate", text: lb.l.rate}), s("tspan", {text: lb.l.rest}));
    if (lb.l.lat) {
      // the " ·" ending line 1 keeps the element's text equal to the one-line label
      text.append(s("tspan", {class: "sep", text: " · "}), s("tspan", {class: "lat", x: cx, dy: 13, text: lb.l.lat}));
    }
    return s("g", {class: `edge ${cls}`, "data-from": e.from, "data-to": e.to, "data-label": labelText(lb.l),
      "data-active": e.rate > 0 ? "true" : "false"},
    s("title", {text: title}),
    s("path", {class: "line", d, "stroke-width": width.toFixed(2), [rev ? "marker-start" : "marker-end"]: `url(#arrow-${cls})`}),
    s("rect", {class: "label-bg", x: bx, y: by, width: lb.w, height: lb.h, rx: 5}),
    text);
  }

  function drawNode(it, snap) {
    const n = it.node, svc = it.svc, sel = state.selected;
    const selected = sel && ((sel.kind === "service" && sel.id === it.id) ||
      (sel.kind === "replica" && svc && svc.replicas.some((r) => r.container_id === sel.id)));
    const g = s("g", {class: "node" + (svc ? "" : " pseudo") + (selected ? " selected" : ""),
      "data-service": it.id, "data-kind": n.kind, transform: `translate(${it.x},${it.y})`});
    if (!svc) {
      const sub = it.id === "@public" && snap.public_endpoint ? snap.public_endpoint : it.id;
      g.append(s("title", {text: `${n.label} (${it.id})`}),
        s("rect", {class: "box", width: NODE_W, height: it.h, rx: 10}),
        s("text", {class: "name", x: NODE_W / 2, y: 20, "text-anchor": "middle", text: truncate(n.label, TITLE_FONT, NODE_W - 16)}),
        s("text", {class: "sub", x: NODE_W / 2, y: 36, "text-anchor": "middle", text: truncate(sub, LABEL_FONT, NODE_W - 16)}));
      return g;
    }
    const health = serviceHealth(svc);
    g.setAttribute("data-health", health);
    g.addEventListener("click", () => select("service", svc.name));
    const badgeW = svc.faults > 0 ? 34 : 0;
    g.append(s("title", {text: `${svc.name} · ${svc.type} · ${inRotation(svc)}/${svc.desired} in rotation`}),
      s("rect", {class: "box", width: NODE_W, height: it.h, rx: 10}),
      s("rect", {class: "health-bar", width: 5, height: it.h - 16, x: 0, y: 8, rx: 2}),
      s("text", {class: "name", x: PAD, y: 21, text: truncate(svc.name, TITLE_FONT, NODE_W - 2 * PAD - badgeW)}));
    if (badgeW) {
      g.append(s("g", {class: "fault-badge", transform: `translate(${NODE_W - PAD - 30},8)`},
        s("title", {text: `${plural(svc.faults, "active fault")}`}),
        s("rect", {width: 30, height: 17, rx: 8.5}),
        s("text", {x: 15, y: 12.5, "text-anchor": "middle", text: "⚡" + svc.faults})));
    }
    svc.replicas.forEach((r, j) => {
      const st = replicaState(r);
      const dot = s("circle", {class: "dot " + st + (sel && sel.kind === "replica" && sel.id === r.container_id ? " selected" : ""),
        "data-replica": r.name, "data-state": st, r: 4.5,
        cx: PAD + 5 + (j % DOTS_PER_ROW) * DOT, cy: 35 + Math.floor(j / DOTS_PER_ROW) * DOT},
      s("title", {text: `${r.name} ${r.address}: ${r.health}, rotation ${rotation(r)}` +
        (r.ejected_by && r.ejected_by.length ? `, ejected by ${r.ejected_by.join(", ")}` : "")}));
      dot.addEventListener("click", (ev) => { ev.stopPropagation(); select("replica", r.container_id); });
      g.append(dot);
    });
    if (!svc.replicas.length) g.append(s("text", {class: "sub", x: PAD, y: 39, text: "no replicas"}));
    const proto = svc.connect ? svc.connect.protocol : (svc.type || "").replace(/ Service$/, "");
    const extra = svc.restarting.length ? ` · ${svc.restarting.length} restarting` : "";
    g.append(s("text", {class: "sub", x: PAD, y: it.h - 10},
      s("tspan", {class: "count", text: `${inRotation(svc)}/${svc.desired}`}),
      s("tspan", {text: truncate(` · ${proto}${extra}`, LABEL_FONT, NODE_W - 2 * PAD - 30)})));
    return g;
  }

  // ---------- panels ----------
  function renderHeader(snap) {
    $("title").textContent = `${snap.app} · ${snap.env}`;
    $("project").textContent = snap.project;
    $("mode").textContent = snap.mode;
    const ready = $("ready");
    ready.textContent = snap.ready ? "ready" : "not ready";
    ready.dataset.ready = String(!!snap.ready);
    $("dns").textContent = snap.dns && snap.dns.address ? hostPort(snap.dns.address, snap.dns.port) : "–";
    const pub = $("public-endpoint"), url = snap.public_endpoint;
    const safe = typeof url === "string" && /^https?:\/\//i.test(url);   // never a javascript: link
    pub.hidden = !url; $("no-public").hidden = !!url;
    pub.textContent = url || "";
    if (safe) pub.href = url; else pub.removeAttribute("href");
    $("controller-banner").hidden = snap.controller_connected !== false;
    $("error-banner").hidden = !snap.error;
    $("error").textContent = snap.error || "";
    $("window").textContent = `rates over the last ${snap.window_s} s · updated ${fmtTime(snap.generated)}`;
    $("notes").replaceChildren(...(snap.notes || []).map((t) => h("li", {text: t})));
    document.title = `meshlocal · ${snap.app}/${snap.env}`;
  }

  function replicaCells(r) {
    const st = replicaState(r);
    return [
      h("td", {class: "name"}, h("i", {class: "dot " + st}), r.name),
      h("td", {class: "address", text: hostPort(r.address, r.port)}),
      h("td", {class: "health " + r.health, text: r.health}),
      h("td", {class: "rotation", text: rotation(r)}),
      h("td", {class: "ejected"}, (r.ejected_by || []).length
        ? r.ejected_by.flatMap((x, j) => [j ? ", " : "", h("span", {class: "nowrap", text: x})]) : "–"),
    ];
  }
  function replicaTable(svc, rowClass) {
    const sel = state.selected;
    const rows = svc.replicas.map((r) => h("tr", {class: rowClass + (sel && sel.kind === "replica" && sel.id === r.container_id ? " selected" : ""),
      "data-replica": r.name, "data-container": r.container_id, "data-health": r.health, "data-rotation": rotation(r), "data-state": replicaState(r),
      onclick: () => select("replica", r.container_id)}, replicaCells(r)));
    for (const x of svc.restarting) {
      rows.push(h("tr", {class: "restarting", "data-index": x.index},
        h("td", {class: "name"}, h("i", {class: "dot unhealthy"}), `${svc.name}-${x.index}`),
        h("td", {colspan: 4, text: x.status})));
    }
    if (svc.not_started) {
      rows.push(h("tr", {class: "not-started"}, h("td", {colspan: 5, text: `${plural(svc.not_started, "replica")} not started`})));
    }
    if (!rows.length) rows.push(h("tr", {class: "none"}, h("td", {colspan: 5, text: "no replicas"})));
    return h("table", {class: "replicas"},
      h("thead", {}, h("tr", {}, ["replica", "address", "health", "rotation", "ejected by"].map((t) => h("th", {text: t})))),
      h("tbody", {}, rows));
  }
  function endpoints(svc) {
    const c = svc.connect;
    return h("dl", {class: "endpoints"},
      h("dt", {text: "Service Connect"}),
      c ? h("dd", {}, h("code", {class: "sc-url", text: c.url}), " · VIP ", h("code", {class: "sc-vip", text: c.vip}),
        " · ", h("span", {class: "sc-mode pill", text: c.protocol}))
        : h("dd", {class: "muted", text: svc.connect_client ? "client only" : "not enabled"}),
      h("dt", {text: "Service Discovery"}),
      h("dd", {}, svc.discovery_name ? h("code", {class: "sd-name", text: `${svc.discovery_name}:${svc.port}`}) : h("span", {class: "muted", text: "none"})));
  }
  function renderServices(snap) {
    const key = JSON.stringify([snap.services, state.selected]);
    if (state.cache.services === key) return;
    state.cache.services = key;
    $("services-count").textContent = `${plural(snap.services.length, "service")}, ${plural(snap.services.reduce((a, x) => a + x.replicas.length, 0), "replica")}`;
    $("services").replaceChildren(...snap.services.map((svc) => {
      const health = serviceHealth(svc), sel = state.selected;
      return h("section", {class: "service" + (sel && sel.kind === "service" && sel.id === svc.name ? " selected" : ""),
        "data-service": svc.name, "data-health": health},
      h("header", {onclick: () => select("service", svc.name)},
        h("i", {class: "health-dot " + health}),
        h("span", {class: "svc-name", text: svc.name}),
        h("span", {class: "svc-type pill", text: svc.type}),
        h("span", {class: "svc-ready pill " + (svc.ready ? "ok" : "bad"), "data-ready": String(!!svc.ready), text: svc.ready ? "ready" : "not ready"}),
        h("span", {class: "svc-desired", text: `${inRotation(svc)}/${svc.desired} in rotation`}),
        svc.faults ? h("span", {class: "pill fault", text: `⚡ ${plural(svc.faults, "fault")}`}) : null),
      endpoints(svc),
      replicaTable(svc, "replica"));
    }));
  }

  function renderFaults(snap) {
    const key = JSON.stringify(snap.faults);
    if (state.cache.faults === key) return;
    state.cache.faults = key;
    const faults = snap.faults || [];
    $("faults").replaceChildren(faults.length ? h("table", {class: "faults"},
      h("thead", {}, h("tr", {}, [["fault"], ["scope", "client -> server; * is every client"], ["what"], ["hits/seen"],
        ["declared", "in copilot/.meshlocal.yml: every `up` puts it back; no: added at run time"]]
        .map(([t, tip]) => h("th", {text: t, title: tip || ""})))),
      h("tbody", {}, faults.map((f) => h("tr", {class: "fault", "data-fault": f.id, "data-service": f.service},
        h("td", {}, h("code", {text: f.id})), h("td", {class: "scope", text: f.scope || f.service}),
        h("td", {text: f.description || f.summary}),
        h("td", {class: "hits", text: `${f.hits}/${f.seen}`}), h("td", {text: f.declared ? "yes" : "no"})))))
      : h("p", {class: "empty", text: "no faults"}));
  }

  // ---------- details panel ----------
  function select(kind, id) {
    state.selected = {kind, id};
    $("details").hidden = false;
    document.body.classList.add("details-open");
    rerender();
  }
  function closeDetails() {
    state.selected = null;
    $("details").hidden = true;
    document.body.classList.remove("details-open");
    $("details").dataset.kind = ""; $("details").dataset.id = "";
    state.logs.containerId = null;
    rerender();
  }
  function fields(pairs) {
    return h("dl", {class: "fields"}, pairs.map(([k, v]) => [h("dt", {text: k}),
      h("dd", {text: v === null || v === undefined || v === "" ? "–" : typeof v === "boolean" ? (v ? "yes" : "no") : String(v)})]));
  }
  function edgeList(snap, name) {
    const es = snap.edges.filter((e) => e.from === name || e.to === name);
    if (!es.length) return h("p", {class: "muted", text: "no traffic seen through the proxies in the window"});
    return h("ul", {class: "traffic"}, es.map((e) => h("li", {class: "edge-" + edgeClass(e)},
      h("strong", {text: e.from === name ? `→ ${e.to}` : `← ${e.from}`}), ` (${e.protocol}) `, labelText(edgeLabel(e)))));
  }
  function renderDetails(snap) {
    const sel = state.selected, box = $("details");
    if (!sel) return;
    box.dataset.kind = sel.kind; box.dataset.id = sel.id;
    const shown = sel.kind === "replica" ? findReplica(snap, sel.id) : null;
    $("details-title").textContent = shown ? shown.r.name : sel.kind === "replica" ? sel.id.slice(0, 12) : sel.id;
    const body = $("details-body");
    if (sel.kind === "service") {
      $("logs-section").hidden = true;
      const svc = snap.services.find((x) => x.name === sel.id);
      if (!svc) { body.replaceChildren(h("p", {class: "gone", text: "This service is no longer in the topology."})); return; }
      const c = svc.connect || {};
      body.replaceChildren(
        h("p", {class: "muted", text: svc.type}),
        fields([["desired", svc.desired], ["ready", !!svc.ready], ["in rotation", inRotation(svc)], ["port", svc.port],
          ["Service Discovery", svc.discovery_name ? `${svc.discovery_name}:${svc.port}` : null],
          ["Service Connect", c.url], ["SC name", c.name], ["SC VIP", c.vip ? `${c.vip}:${c.port}` : null],
          ["SC mode", c.protocol], ["SC client", !!svc.connect_client], ["not started", svc.not_started],
          ["restarting", svc.restarting.map((x) => `#${x.index} ${x.status}`).join("; ")], ["active faults", svc.faults]]),
        h("h3", {text: "Traffic"}), edgeList(snap, svc.name),
        h("h3", {text: "Replicas"}), replicaTable(svc, "detail-replica"));
      return;
    }
    const found = findReplica(snap, sel.id);
    $("logs-section").hidden = false;
    if (!found) { body.replaceChildren(h("p", {class: "gone", text: "This replica is no longer in the topology."})); return; }
    const {svc, r} = found;
    body.replaceChildren(
      h("p", {}, "replica of ", h("a", {href: "#", class: "svc-link", text: svc.name,
        onclick: (ev) => { ev.preventDefault(); select("service", svc.name); }})),
      fields([["index", r.index], ["container", r.container_id], ["address", hostPort(r.address, r.port)],
        ["health", r.health], ["rotation", rotation(r)], ["ejected by", (r.ejected_by || []).join(", ")]]));
    if (r.container_id !== state.logs.containerId) loadLogs(r.container_id);   // new selection or replaced container
  }
  async function loadLogs(containerId) {
    const token = ++state.logs.token, pre = $("logs");
    if (containerId !== state.logs.containerId) pre.textContent = "loading…";
    state.logs.containerId = containerId;
    pre.classList.add("loading");
    let text, failed = false;
    try {
      const resp = await fetch("v1/logs/" + encodeURIComponent(containerId) + "?tail=50", {cache: "no-store"});
      const body = await resp.json().catch(() => ({error: `HTTP ${resp.status}`}));
      failed = !resp.ok || !!body.error;
      const lines = body.lines || [];
      text = lines.length ? lines.join("\n") : "";
      if (body.error) text = (text ? text + "\n" : "") + "(" + body.error + ")";
      if (!text) text = "(no log lines)";
    } catch (err) {
      failed = true; text = "(could not fetch the logs: " + err + ")";
    }
    if (token !== state.logs.token) return;   // a newer request won
    pre.classList.remove("loading");
    pre.classList.toggle("error", failed);
    pre.textContent = text;   // untrusted: text only
    pre.scrollTop = pre.scrollHeight;
  }

  // ---------- timeline ----------
  function addTimeline(ev) {
    if (ev.seq <= state.lastSeq) return;   // already shown (a replay after a reconnect)
    state.lastSeq = ev.seq;
    const li = h("li", {class: "event", "data-kind": ev.kind, "data-seq": ev.seq},
      h("time", {class: "time", text: fmtTime(ev.time)}),
      h("span", {class: "kind pill", text: ev.kind}),
      h("span", {class: "text", text: ev.text}));
    if (ev.replica || ev.service) {
      li.classList.add("clickable");
      li.addEventListener("click", () => {
        const snap = state.snap;
        const found = ev.replica && snap && findReplica(snap, ev.replica, true);
        if (found) select("replica", found.r.container_id);
        else if (ev.service) select("service", ev.service);
      });
    }
    const ol = $("timeline");
    ol.prepend(li);
    while (ol.children.length > TIMELINE_MAX) ol.lastElementChild.remove();
  }

  // ---------- render loop & event stream ----------
  function render(snap) {
    // tolerate missing lists rather than break the whole page
    for (const k of ["nodes", "services", "edges", "faults", "notes"]) snap[k] = snap[k] || [];
    for (const svc of snap.services) { svc.replicas = svc.replicas || []; svc.restarting = svc.restarting || []; }
    state.snap = snap;
    document.body.classList.add("has-data");
    renderHeader(snap);
    const wrap = document.querySelector(".graph-wrap"), sx = wrap.scrollLeft, sy = wrap.scrollTop;
    renderGraph(snap);
    wrap.scrollLeft = sx; wrap.scrollTop = sy;
    renderServices(snap);
    renderFaults(snap);
    renderDetails(snap);
  }
  function rerender() { state.cache = {}; if (state.snap) render(state.snap); }
  function schedule(snap) {   // at most one render per animation frame
    const first = state.pending === null;
    state.pending = snap;
    if (first) requestAnimationFrame(() => { const p = state.pending; state.pending = null; render(p); });
  }
  function setConnection(live) {
    const c = $("connection");
    c.dataset.state = live ? "live" : "reconnecting";
    c.textContent = live ? "live" : "reconnecting…";
    document.body.classList.toggle("stale", !live);
  }
  function connect() {
    const es = new EventSource("v1/events");
    es.onopen = () => setConnection(true);
    es.onerror = () => {
      setConnection(false);
      // EventSource retries by itself, except after an HTTP error: then start a new one.
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
    es.addEventListener("hello", (m) => {
      setConnection(true);
      const hello = JSON.parse(m.data);
      if (hello.replay === "full" || hello.epoch !== state.epoch) {
        $("timeline").replaceChildren();
        state.lastSeq = 0;
      }
      state.epoch = hello.epoch;
      document.body.dataset.epoch = hello.epoch;  // which data plane this page follows
    });
    es.addEventListener("topology", (m) => schedule(JSON.parse(m.data)));
    es.addEventListener("timeline", (m) => addTimeline(JSON.parse(m.data)));
  }

  $("details-close").addEventListener("click", closeDetails);
  $("refresh-logs").addEventListener("click", () => {
    const sel = state.selected, found = sel && state.snap && findReplica(state.snap, sel.id);
    if (found) loadLogs(found.r.container_id);
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(rerender, 150); });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && state.selected) closeDetails(); });
  connect();
})();
