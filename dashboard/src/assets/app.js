// Rivulet dashboard: plain JavaScript, no framework, no build step, no network but this server.
// Every value from the API is put in the page as text nodes (never parsed as markup), so a kind,
// payload or error holding <script> shows as text. The token lives in this tab's
// sessionStorage and travels only in the Authorization header (no cookie).
'use strict';

const REFRESH_MS = 2000;
const TOKEN_KEY = 'rivulet-dashboard-token';
let generation = 0;

// ---- DOM helpers -----------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    // Through the CSSOM: the content security policy forbids style attributes.
    else if (k === 'style') node.style.cssText = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const svgNs = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function fmtAge(ms) {
  if (ms === null || ms === undefined) return '–';
  const s = ms / 1000;
  if (s < 1) return Math.round(ms) + ' ms';
  if (s < 120) return s.toFixed(1) + ' s';
  if (s < 7200) return (s / 60).toFixed(1) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}
function fmtTime(ms) { return ms ? new Date(ms).toLocaleString() : '–'; }
function fmtRate(r) { return r === undefined || r === null ? '–' : r.toFixed(r < 10 ? 1 : 0) + '/s'; }
function pill(state) { return el('span', { class: 'pill ' + state }, state); }
function enc(s) { return encodeURIComponent(s); }

// ---- API --------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}
async function api(method, path, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = { 'Accept': 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers['Authorization'] = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'omit' });
    if (res.status === 401 && attempt === 0) {
      if (await askToken()) continue;
    }
    const data = await res.json().catch(() => ({ error: res.statusText }));
    if (!res.ok) throw new ApiError(res.status, data.error || res.statusText);
    return data;
  }
  throw new ApiError(401, 'this needs the dashboard token');
}
function askToken() {
  const dialog = document.getElementById('token-dialog');
  const input = document.getElementById('token-input');
  input.value = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const ok = dialog.returnValue === 'save' && input.value.trim() !== '';
      if (ok) sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      resolve(ok);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
}
function confirmAction(text) {
  const dialog = document.getElementById('confirm-dialog');
  document.getElementById('confirm-text').textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
    dialog.showModal();
  });
}
function showError(root, e) {
  const box = el('p', { class: 'error', role: 'alert' }, String(e.message || e));
  root.prepend(box);
  setTimeout(() => box.remove(), 6000);
}
async function act(root, label, fn) {
  try {
    await fn();
    status('done: ' + label);
  } catch (e) {
    showError(root, e);
  }
  refreshNow();
}
function status(text) { document.getElementById('status').textContent = text; }

// ---- charts -----------------------------------------------------------------------------
function lineChart(series, opts) {
  const w = 720, h = 160, pad = 30;
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const max = Math.max(1, ...all);
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const x0 = Math.min(...xs, opts.from), x1 = Math.max(...xs, opts.to);
  const sx = (x) => pad + ((x - x0) / Math.max(1, x1 - x0)) * (w - 2 * pad);
  const sy = (y) => h - pad + 10 - (y / max) * (h - 2 * pad);
  const root = svg('svg', { class: 'chart', width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: 'img', 'aria-label': opts.label });
  root.append(svg('text', { x: 4, y: 14, class: 'axis' }, `${opts.label} (max ${max.toFixed(1)}${opts.unit})`));
  root.append(svg('line', { x1: pad, y1: sy(0), x2: w - pad, y2: sy(0), stroke: '#d9dde5' }));
  let ly = 14;
  for (const s of series) {
    if (s.points.length > 0) {
      const pts = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ');
      root.append(svg('polyline', { points: pts, fill: 'none', stroke: s.color, 'stroke-width': 2 }));
    }
    root.append(svg('text', { x: w - 150, y: ly, fill: s.color }, s.name));
    ly += 13;
  }
  root.append(svg('text', { x: pad, y: h - 4, class: 'axis' }, opts.fromLabel));
  root.append(svg('text', { x: w - pad - 30, y: h - 4, class: 'axis' }, 'now'));
  return root;
}

// ---- pages ------------------------------------------------------------------------------
// Each page: mount(root, params) builds what stays, and returns update(), called every
// REFRESH_MS (a poll of the API, which the server answers from its shared cache).

function overviewPage(root, params) {
  const offset = Number(params.get('offset') || 0);
  root.append(el('h1', {}, 'Queues'));
  const chartBox = el('div', { id: 'throughput' });
  const table = el('table', { id: 'queues' });
  const pager = el('div', { class: 'toolbar' });
  root.append(chartBox, table, pager);
  return async () => {
    const data = await api('GET', `/api/v1/queues?offset=${offset}&limit=25`);
    const head = el('tr', {}, ['queue', 'state'].map((t) => el('th', {}, t)),
      ['backlog (per priority)', 'in flight', 'scheduled', 'retrying', 'oldest waiting', 'done/s', 'enqueued/s', 'dead letters', 'age'].map((t) => el('th', { class: 'num' }, t)));
    const rows = data.queues.map((q) => el('tr', { 'data-queue': q.name },
      el('td', {}, el('a', { href: `#/queue/${enc(q.name)}` }, q.name)),
      el('td', {}, q.paused ? pill('paused') : pill('running')),
      el('td', { class: 'num waiting', title: q.priorities.map((p) => `${p.priority}: ${p.waiting}`).join(', ') },
        String(q.waiting), ' ', el('span', { class: 'muted' }, '(' + q.priorities.map((p) => p.waiting).join(' / ') + ')')),
      el('td', { class: 'num in-flight' }, q.in_flight),
      el('td', { class: 'num' }, q.scheduled),
      el('td', { class: 'num' }, q.retrying),
      el('td', { class: 'num' }, fmtAge(q.oldest_waiting_age_ms)),
      el('td', { class: 'num done-rate' }, fmtRate(q.rates && q.rates.done_per_s)),
      el('td', { class: 'num' }, fmtRate(q.rates && q.rates.enqueued_per_s)),
      el('td', { class: 'num dead-letters' }, q.dead_letters > 0 ? el('a', { href: `#/dlq/${enc(q.name)}` }, q.dead_letters) : '0'),
      el('td', { class: 'num muted' }, fmtAge(q.age_ms))));
    table.replaceChildren(head, ...rows);
    if (data.queues.length === 0) table.append(el('tr', {}, el('td', { colspan: 11, class: 'muted' }, 'No queues yet: enqueue a task or start a worker.')));
    const now = Date.now();
    const pts = (k) => data.throughput.map((p) => [p.at_ms, p[k]]);
    chartBox.replaceChildren(lineChart([
      { name: 'succeeded/s', color: '#15803d', points: pts('done_per_s') },
      { name: 'enqueued/s', color: '#2563eb', points: pts('enqueued_per_s') },
      { name: 'failed/s', color: '#b91c1c', points: pts('failed_per_s') },
    ], { label: 'Throughput of these queues, last 15 minutes', unit: '/s', from: now - 15 * 60000, to: now, fromLabel: '15 min ago' }));
    pager.replaceChildren(...[
      el('span', { class: 'muted' }, `${data.total} queue(s)`),
      offset > 0 ? el('a', { href: `#/?offset=${Math.max(0, offset - 25)}` }, '← previous') : null,
      offset + 25 < data.total ? el('a', { href: `#/?offset=${offset + 25}` }, 'next →') : null].filter(Boolean));
  };
}

const STATES = ['queued', 'active', 'scheduled', 'retrying', 'succeeded', 'dead', 'cancelled'];

function queuePage(root, params, name) {
  const state = params.get('state') || 'queued';
  const offset = Number(params.get('offset') || 0);
  root.append(el('h1', {}, 'Queue ', el('span', { id: 'queue-name' }, name)));
  const summary = el('div', { id: 'queue-summary' });
  const search = el('input', { id: 'task-search', placeholder: 'task id', size: 36 });
  const tools = el('div', { class: 'toolbar' },
    el('form', { onsubmit: (e) => { e.preventDefault(); if (search.value.trim()) location.hash = `#/task/${enc(name)}/${enc(search.value.trim())}`; } },
      search, ' ', el('button', { type: 'submit' }, 'Find task')),
    el('button', { id: 'pause', onclick: () => act(root, 'pause', () => api('POST', `/api/v1/queues/${enc(name)}/pause`)) }, 'Pause'),
    el('button', { id: 'resume', onclick: () => act(root, 'resume', () => api('POST', `/api/v1/queues/${enc(name)}/resume`)) }, 'Resume'),
    el('a', { href: `#/dlq/${enc(name)}` }, 'Dead letters'),
    el('a', { href: `#/autoscaler/${enc(name)}` }, 'Autoscaler'));
  const tabs = el('div', { class: 'toolbar' }, STATES.map((s) =>
    s === state ? el('strong', {}, s) : el('a', { href: `#/queue/${enc(name)}?state=${s}` }, s)));
  const table = el('table', { id: 'tasks' });
  const pager = el('div', { class: 'toolbar' });
  const feed = el('ul', { id: 'events' });
  const groups = el('div', { id: 'groups' });
  root.append(summary, tools, tabs, table, pager, groups, el('h2', {}, 'Live events'), feed);
  followEvents(name, null, feed);
  return async () => {
    const [q, list, g] = await Promise.all([
      api('GET', `/api/v1/queues/${enc(name)}`),
      api('GET', `/api/v1/queues/${enc(name)}/tasks?state=${state}&offset=${offset}&limit=25`),
      api('GET', `/api/v1/queues/${enc(name)}/groups`),
    ]);
    const fair = q.priorities.reduce((n, p) => n + (p.fair_waiting || 0), 0);
    summary.replaceChildren(el('p', {}, q.paused ? pill('paused') : pill('running'), ' ',
      `waiting ${q.waiting} · waiting their group's turn ${fair} · in flight ${q.in_flight} · scheduled ${q.scheduled} · retrying ${q.retrying} · dead letters ${q.dead_letters} · oldest waiting ${fmtAge(q.oldest_waiting_age_ms)}`));
    // Fair groups (docs/groups.md): shown once the queue has grouped tasks waiting.
    groups.replaceChildren(...(g.groups.length === 0 ? [] : [
      el('h2', {}, 'Fair groups waiting their turn'),
      el('table', { id: 'groups-table' },
        el('tr', {}, ['priority', 'group', 'waiting', 'weight', 'turns away', 'running'].map((t) => el('th', {}, t))),
        ...g.groups.map((r) => el('tr', { 'data-group': r.group },
          el('td', {}, r.priority), el('td', {}, r.group), el('td', { class: 'num' }, r.waiting),
          el('td', { class: 'num' }, r.weight), el('td', { class: 'num' }, Math.ceil(r.turns)),
          el('td', { class: 'num' }, r.running))))]));
    table.replaceChildren(el('tr', {}, ['id', 'kind', 'state', 'priority', 'attempt', 'enqueued', 'worker', 'error'].map((t) => el('th', {}, t))),
      ...list.tasks.map((t) => el('tr', { 'data-task': t.id },
        el('td', {}, el('a', { href: `#/task/${enc(name)}/${enc(t.id)}` }, t.id)),
        el('td', { class: 'kind' }, t.kind || ''), el('td', {}, pill(t.state)), el('td', {}, t.priority || ''),
        el('td', { class: 'num' }, t.attempt), el('td', {}, fmtTime(t.enqueued_at)), el('td', {}, t.worker || ''),
        el('td', { class: 'bad' }, t.error || ''))));
    if (list.tasks.length === 0) table.append(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, `No ${state} tasks.`)));
    pager.replaceChildren(...[
      offset > 0 ? el('a', { href: `#/queue/${enc(name)}?state=${state}&offset=${Math.max(0, offset - 25)}` }, '← previous') : null,
      list.has_more ? el('a', { href: `#/queue/${enc(name)}?state=${state}&offset=${offset + 25}` }, 'next →') : null].filter(Boolean));
  };
}

// Reads the server-sent events with fetch (EventSource cannot send the token header).
async function followEvents(queue, task, list) {
  const mine = generation;
  const ctrl = new AbortController();
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers['Authorization'] = 'Bearer ' + token;
  let res;
  try {
    res = await fetch(`/api/v1/queues/${enc(queue)}/events` + (task ? `?task=${enc(task)}` : ''), { headers, signal: ctrl.signal, credentials: 'omit' });
  } catch (e) { return; }
  if (!res.ok || !res.body) return;
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  while (generation === mine) {
    const { value, done } = await reader.read().catch(() => ({ done: true }));
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (!data || !block.includes('event: task')) continue;
      const ev = JSON.parse(data);
      list.prepend(el('li', {}, fmtTime(ev.at), ' ', el('strong', {}, ev.event), ' ',
        el('a', { href: `#/task/${enc(queue)}/${enc(ev.task_id)}` }, ev.task_id), ' ',
        el('span', { class: 'muted' }, Object.entries(ev.fields).map(([k, v]) => `${k}=${v}`).join(' '))));
      while (list.children.length > 50) list.lastChild.remove();
    }
  }
  ctrl.abort();
}

function decodedBlock(d, id) {
  if (!d) return el('p', { class: 'muted', id }, 'not kept (a finished task\'s entry is deleted when it settles)');
  return el('div', { id },
    el('p', { class: 'muted' }, `${d.codec}, ${d.size} bytes`),
    el('pre', {}, d.text !== null && d.text !== undefined ? d.text : d.hex));
}

function taskPage(root, params, queue, id) {
  root.append(el('h1', {}, 'Task ', el('span', { id: 'task-id' }, id), ' ', el('span', { class: 'muted' }, 'in '), el('a', { href: `#/queue/${enc(queue)}` }, queue)));
  const tools = el('div', { class: 'toolbar' },
    el('button', { id: 'cancel', class: 'danger', onclick: async () => { if (await confirmAction(`Cancel task ${id}?`)) act(root, 'cancel', () => api('POST', `/api/v1/queues/${enc(queue)}/tasks/${enc(id)}/cancel`)); } }, 'Cancel'),
    el('button', { id: 'retry', onclick: async () => { if (await confirmAction(`Retry task ${id} (replay its dead letter)?`)) act(root, 'retry', () => api('POST', `/api/v1/queues/${enc(queue)}/tasks/${enc(id)}/retry`)); } }, 'Retry'));
  const body = el('div', { id: 'task' });
  root.append(tools, body);
  return async () => {
    const t = await api('GET', `/api/v1/queues/${enc(queue)}/tasks/${enc(id)}`);
    const pct = t.progress ? t.progress.percent : (t.state === 'succeeded' ? 100 : 0);
    body.replaceChildren(
      el('dl', {},
        el('dt', {}, 'state'), el('dd', { id: 'task-state' }, pill(t.state), t.cancel_requested ? ' (cancel requested)' : ''),
        el('dt', {}, 'kind'), el('dd', { id: 'task-kind' }, t.kind || ''),
        el('dt', {}, 'priority'), el('dd', {}, t.priority || ''),
        el('dt', {}, 'attempts'), el('dd', {}, `${t.attempt} failed, ${t.runs} run(s)`),
        el('dt', {}, 'enqueued'), el('dd', {}, fmtTime(t.enqueued_at)),
        el('dt', {}, 'due'), el('dd', {}, fmtTime(t.due_at)),
        el('dt', {}, 'worker'), el('dd', {}, t.worker || '–'),
        el('dt', {}, 'started / finished'), el('dd', {}, `${fmtTime(t.started_at)} / ${fmtTime(t.finished_at)}`, t.run_ms !== null ? ` (${t.run_ms} ms)` : ''),
        el('dt', {}, 'progress'), el('dd', {}, el('div', { class: 'progress', title: pct + '%' }, el('div', { style: `width:${Number(pct)}%` })), t.progress ? `${t.progress.percent}% ${t.progress.message}` : ''),
        el('dt', {}, 'error'), el('dd', { id: 'task-error', class: 'bad' }, t.error || '–'),
        el('dt', {}, 'reason'), el('dd', {}, t.reason || '–'),
        el('dt', {}, 'dead letter'), el('dd', {}, t.dead_letter || '–')),
      el('h2', {}, 'Payload'), decodedBlock(t.payload, 'task-payload'),
      el('h2', {}, 'Result'), t.result ? decodedBlock(t.result, 'task-result') : el('p', { class: 'muted' }, 'none'),
      el('h2', {}, 'Events'),
      el('table', { id: 'task-events' }, el('tr', {}, el('th', {}, 'at'), el('th', {}, 'event'), el('th', {}, 'details')),
        ...(t.events || []).map((e) => el('tr', {}, el('td', {}, fmtTime(e.at)), el('td', {}, e.event),
          el('td', { class: 'muted' }, Object.entries(e.fields).map(([k, v]) => `${k}=${v}`).join(' '))))));
  };
}

function dlqPage(root, params, queue) {
  const kind = params.get('kind') || '';
  const reason = params.get('reason') || '';
  const selected = new Set();
  root.append(el('h1', {}, 'Dead letters of ', el('a', { href: `#/queue/${enc(queue)}` }, queue)));
  const kindInput = el('input', { id: 'dlq-kind', placeholder: 'kind', value: kind });
  const reasonSelect = el('select', { id: 'dlq-reason' }, ['', 'exhausted', 'fatal', 'poison', 'malformed', 'unknown_kind'].map((r) =>
    el('option', { value: r, selected: r === reason }, r || 'any reason')));
  const apply = (what, verb) => async () => {
    let sel;
    if (what === 'selected') {
      if (selected.size === 0) return;
      sel = { ids: [...selected] };
    } else if (what === 'kind') {
      if (!kindInput.value.trim()) return;
      sel = { kind: kindInput.value.trim() };
    } else sel = { all: true };
    const label = what === 'selected' ? `${selected.size} selected dead letter(s)` : what === 'kind' ? `every dead letter of kind ${sel.kind}` : 'every dead letter of the queue';
    if (!(await confirmAction(`${verb} ${label}?`))) return;
    act(root, verb, async () => {
      const r = await api('POST', `/api/v1/queues/${enc(queue)}/dead-letters/${verb.toLowerCase()}`, sel);
      status(`${verb}: ${r.count}`);
      selected.clear();
    });
  };
  root.append(el('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); location.hash = `#/dlq/${enc(queue)}?kind=${enc(kindInput.value.trim())}&reason=${enc(reasonSelect.value)}`; } },
    kindInput, reasonSelect, el('button', { type: 'submit' }, 'Filter')));
  root.append(el('div', { class: 'toolbar' },
    el('button', { id: 'replay-selected', class: 'primary', onclick: apply('selected', 'Replay') }, 'Replay selected'),
    el('button', { id: 'purge-selected', class: 'danger', onclick: apply('selected', 'Purge') }, 'Purge selected'),
    el('button', { id: 'replay-kind', onclick: apply('kind', 'Replay') }, 'Replay this kind'),
    el('button', { id: 'replay-all', onclick: apply('all', 'Replay') }, 'Replay all'),
    el('button', { id: 'purge-all', class: 'danger', onclick: apply('all', 'Purge') }, 'Purge all')));
  const table = el('table', { id: 'dead-letters' });
  const detail = el('div', { id: 'dead-letter' });
  root.append(table, detail);
  const show = async (id) => {
    const d = await api('GET', `/api/v1/queues/${enc(queue)}/dead-letters/${enc(id)}`);
    detail.replaceChildren(el('h2', {}, 'Dead letter ', d.id),
      el('dl', {}, el('dt', {}, 'task'), el('dd', {}, el('a', { href: `#/task/${enc(queue)}/${enc(d.task_id)}` }, d.task_id)),
        el('dt', {}, 'kind'), el('dd', {}, d.kind), el('dt', {}, 'reason'), el('dd', {}, d.reason),
        el('dt', {}, 'error'), el('dd', { class: 'bad' }, d.error), el('dt', {}, 'attempts'), el('dd', {}, d.attempt),
        el('dt', {}, 'died'), el('dd', {}, fmtTime(d.dead_at))),
      decodedBlock(d.payload, 'dead-letter-payload'),
      el('div', { class: 'toolbar' },
        el('button', { class: 'primary replay-one', onclick: async () => { if (await confirmAction(`Replay dead letter ${d.id}?`)) act(root, 'replay', () => api('POST', `/api/v1/queues/${enc(queue)}/dead-letters/replay`, { ids: [d.id] })); } }, 'Replay'),
        el('button', { class: 'danger purge-one', onclick: async () => { if (await confirmAction(`Purge dead letter ${d.id}?`)) act(root, 'purge', () => api('POST', `/api/v1/queues/${enc(queue)}/dead-letters/purge`, { ids: [d.id] })); } }, 'Purge')));
  };
  return async () => {
    const qs = new URLSearchParams({ limit: '25' });
    if (kind) qs.set('kind', kind);
    if (reason) qs.set('reason', reason);
    const list = await api('GET', `/api/v1/queues/${enc(queue)}/dead-letters?${qs}`);
    table.replaceChildren(el('tr', {}, ['', 'task', 'kind', 'reason', 'error', 'attempts', 'died', 'payload'].map((t) => el('th', {}, t))),
      ...list.dead_letters.map((d) => {
        const box = el('input', { type: 'checkbox', checked: selected.has(d.id), onchange: (e) => { if (e.target.checked) selected.add(d.id); else selected.delete(d.id); } });
        return el('tr', { 'data-dead-letter': d.id },
          el('td', {}, box),
          el('td', {}, el('a', { href: '#', class: 'open-dead-letter', onclick: (e) => { e.preventDefault(); show(d.id).catch((err) => showError(root, err)); } }, d.task_id)),
          el('td', { class: 'kind' }, d.kind), el('td', {}, d.reason), el('td', { class: 'bad error' }, d.error),
          el('td', { class: 'num' }, d.attempt), el('td', {}, fmtTime(d.dead_at)),
          el('td', { class: 'muted' }, (d.payload.text || '').slice(0, 60)));
      }));
    if (list.dead_letters.length === 0) table.append(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No dead letters.')));
  };
}

function workersPage(root) {
  root.append(el('h1', {}, 'Workers'));
  const table = el('table', { id: 'workers' });
  root.append(table);
  return async () => {
    const ws = await api('GET', '/api/v1/workers');
    table.replaceChildren(el('tr', {}, ['host', 'pid', 'queues', 'slots', 'in flight', 'started', 'succeeded', 'failed', 'last heartbeat'].map((t) => el('th', {}, t))),
      ...ws.map((w) => el('tr', { 'data-worker': w.id }, el('td', {}, w.host), el('td', { class: 'num' }, w.pid), el('td', {}, w.queues.join(', ')),
        el('td', { class: 'num' }, w.slots), el('td', { class: 'num' }, w.in_flight), el('td', { class: 'num' }, w.started),
        el('td', { class: 'num' }, w.succeeded), el('td', { class: 'num' }, w.failed), el('td', {}, fmtAge(Date.now() - w.last_beat) + ' ago'))));
    if (ws.length === 0) table.append(el('tr', {}, el('td', { colspan: 9, class: 'muted' }, 'No live workers.')));
  };
}

function autoscalerPage(root, params, queue) {
  root.append(el('h1', {}, 'Autoscaler'));
  const picker = el('div', { class: 'toolbar' });
  const body = el('div', { id: 'autoscaler' });
  root.append(picker, body);
  return async () => {
    const qs = await api('GET', '/api/v1/queues?limit=100');
    picker.replaceChildren(el('span', { class: 'muted' }, 'queue:'), ...qs.queues.map((q) =>
      q.name === queue ? el('strong', {}, q.name) : el('a', { href: `#/autoscaler/${enc(q.name)}` }, q.name)));
    if (!queue) { body.replaceChildren(el('p', { class: 'muted' }, 'Pick a queue.')); return; }
    const a = await api('GET', `/api/v1/queues/${enc(queue)}/autoscaler`);
    const now = Date.now();
    body.replaceChildren(
      a.latest ? el('p', {}, `latest: desired ${a.latest.desired}, current ${a.latest.current} (${a.latest.reason}) at ${fmtTime(a.latest.at_ms)}`) : el('p', { class: 'muted' }, 'No decision recorded for this queue (is an autoscaler running for it?).'),
      lineChart([
        { name: 'desired', color: '#2563eb', points: a.history.map((d) => [d.at_ms, d.desired]) },
        { name: 'current', color: '#15803d', points: a.history.map((d) => [d.at_ms, d.current]) },
      ], { label: 'Workers, desired against current', unit: '', from: now - 15 * 60000, to: now, fromLabel: '15 min ago' }),
      el('table', { id: 'decisions' }, el('tr', {}, ['at', 'desired', 'current', 'reason', 'detail'].map((t) => el('th', {}, t))),
        ...a.history.slice().reverse().map((d) => el('tr', {}, el('td', {}, fmtTime(d.at_ms)), el('td', { class: 'num' }, d.desired),
          el('td', { class: 'num' }, d.current), el('td', {}, d.reason), el('td', { class: 'muted' }, d.detail)))));
  };
}

function schedulesPage(root) {
  root.append(el('h1', {}, 'Schedules'));
  const table = el('table', { id: 'schedules' });
  root.append(table);
  const post = (name, what) => act(root, `${what} ${name}`, () => api('POST', `/api/v1/schedules/${enc(name)}/${what}`));
  return async () => {
    const list = await api('GET', '/api/v1/schedules');
    table.replaceChildren(el('tr', {}, ['name', 'state', 'queue', 'kind', 'priority', 'when', 'last fire', 'next fires', ''].map((t) => el('th', {}, t))),
      ...list.schedules.map((s) => el('tr', { 'data-schedule': s.name },
        el('td', {}, s.name),
        el('td', { class: 'schedule-state' }, s.error ? pill('unusable') : s.paused ? pill('paused') : pill('running')),
        el('td', {}, el('a', { href: `#/queue/${enc(s.queue)}` }, s.queue)),
        el('td', { class: 'kind' }, s.kind), el('td', {}, s.priority || '–'),
        el('td', {}, s.cadence, s.error ? el('div', { class: 'bad' }, s.error) : null),
        el('td', {}, fmtTime(s.last_fired_ms)),
        el('td', { class: 'next-fires', title: s.next_fires.join('\n') }, s.next_fires_ms.length ? s.next_fires_ms.map((ms) => el('div', {}, fmtTime(ms))) : '–'),
        el('td', {},
          s.paused
            ? el('button', { class: 'resume-schedule', onclick: () => post(s.name, 'resume') }, 'Resume')
            : el('button', { class: 'pause-schedule', onclick: () => post(s.name, 'pause') }, 'Pause'),
          ' ',
          el('button', { class: 'run-schedule', onclick: async () => { if (await confirmAction(`Enqueue one task of schedule ${s.name} now?`)) post(s.name, 'run-now'); } }, 'Run now')))));
    if (list.schedules.length === 0) table.append(el('tr', {}, el('td', { colspan: 9, class: 'muted' }, 'No schedules: add them with worker-cli schedule add or sync.')));
  };
}

// ---- limits ------------------------------------------------------------------------------
function limitsPage(root, params) {
  const offset = Number(params.get('offset') || 0);
  root.append(el('h1', {}, 'Limits'));
  const table = el('table', { id: 'limits' });
  const pager = el('div', { class: 'toolbar' });
  root.append(table, pager);
  return async () => {
    const data = await api('GET', `/api/v1/limits?offset=${offset}&limit=25`);
    table.replaceChildren(el('tr', {}, el('th', {}, 'limit'), el('th', {}, 'rate'),
      ['current/s', 'running/cap', 'waiting for rate', 'waiting for slot', 'granted', 'waited', 'age'].map((t) => el('th', { class: 'num' }, t))),
      ...data.limits.map((l) => el('tr', { 'data-limit': l.name },
        el('td', { class: 'limit-name' }, l.name),
        el('td', { class: 'rate-spec' }, l.rate_spec || '–'),
        el('td', { class: 'num current-rate' }, l.current_rate),
        el('td', { class: 'num running', title: l.max_running ? `${l.running} running of at most ${l.max_running}` : 'no concurrency cap' },
          l.max_running ? `${l.running}/${l.max_running}` : '–'),
        el('td', { class: 'num waiting-rate' }, l.waiting_for_rate),
        el('td', { class: 'num waiting-slot' }, l.waiting_for_slot),
        el('td', { class: 'num granted' }, l.granted),
        el('td', { class: 'num waited' }, l.waited),
        el('td', { class: 'num muted' }, fmtAge(l.age_ms)))));
    if (data.limits.length === 0) table.append(el('tr', {}, el('td', { colspan: 9, class: 'muted' }, 'No limits: workers register theirs when they start with --rate-limit or --max-running.')));
    pager.replaceChildren(...[
      el('span', { class: 'muted' }, `${data.total} limit(s)`),
      offset > 0 ? el('a', { href: `#/limits?offset=${Math.max(0, offset - 25)}` }, '← previous') : null,
      offset + 25 < data.total ? el('a', { href: `#/limits?offset=${offset + 25}` }, 'next →') : null].filter(Boolean));
  };
}

// ---- routing ----------------------------------------------------------------------------
let update = null;
async function tick() {
  const mine = generation;
  if (!update) return;
  try {
    await update();
    if (mine === generation) status('updated ' + new Date().toLocaleTimeString());
  } catch (e) {
    if (mine === generation) status('error: ' + e.message);
  }
}
function refreshNow() { tick(); }

function route() {
  generation += 1;
  const hash = location.hash.replace(/^#/, '') || '/';
  const [pathPart, queryPart] = hash.split('?');
  const params = new URLSearchParams(queryPart || '');
  const parts = pathPart.split('/').filter(Boolean).map(decodeURIComponent);
  const root = document.getElementById('main');
  root.replaceChildren();
  for (const a of document.querySelectorAll('header nav a')) a.classList.remove('active');
  if (parts[0] === 'queue' && parts[1]) update = queuePage(root, params, parts[1]);
  else if (parts[0] === 'task' && parts[1] && parts[2]) update = taskPage(root, params, parts[1], parts.slice(2).join('/'));
  else if (parts[0] === 'dlq' && parts[1]) update = dlqPage(root, params, parts[1]);
  else if (parts[0] === 'workers') { update = workersPage(root); document.getElementById('nav-workers').classList.add('active'); }
  else if (parts[0] === 'limits') { update = limitsPage(root, params); document.getElementById('nav-limits').classList.add('active'); }
  else if (parts[0] === 'schedules') { update = schedulesPage(root); document.getElementById('nav-schedules').classList.add('active'); }
  else if (parts[0] === 'autoscaler') { update = autoscalerPage(root, params, parts[1]); document.getElementById('nav-autoscaler').classList.add('active'); }
  else { update = overviewPage(root, params); document.getElementById('nav-overview').classList.add('active'); }
  tick();
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('token-button').addEventListener('click', () => askToken());
  window.addEventListener('hashchange', route);
  route();
  setInterval(tick, REFRESH_MS);
});
