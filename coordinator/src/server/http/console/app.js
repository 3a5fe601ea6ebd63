// lorafleet console: the pages at `/`, drawn from the coordinator's /v1 API
// with the tenant's token (kept in sessionStorage, sent as a bearer token
// on every call). Plain DOM and SVG, no libraries: the binary serves this
// file as it is.
'use strict';

(() => {
  const TOKEN_KEY = 'lorafleet.token';
  const POLL_MS = 2000;
  const PAGE_SIZE = 50;
  const FINAL = new Set(['succeeded', 'failed', 'cancelled']);
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const app = document.getElementById('app');
  // Bumped on every page change: a poll of an earlier page stops.
  let generation = 0;
  // Where to go after signing in.
  let wanted = null;

  // ------------------------------------------------------------ DOM

  function build(el, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'class') el.setAttribute('class', value);
      else el.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  /** An HTML element: h('td', {class: 'num'}, '1.23'). */
  function h(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  /** An SVG element. */
  function svg(tag, attrs, ...children) {
    return build(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  function fill(el, ...children) {
    el.replaceChildren();
    return build(el, null, children);
  }

  let toastTimer = null;
  function toast(message) {
    const el = document.getElementById('toast');
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
  }

  function setLive(ok) {
    document.getElementById('live-indicator').classList.toggle('stale', !ok);
    document.getElementById('live-indicator').textContent = ok ? 'live' : 'reconnecting';
  }

  // ------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function authHeaders() {
    return { Authorization: 'Bearer ' + sessionStorage.getItem(TOKEN_KEY) };
  }

  /** The error message an API response carries, or its HTTP status. */
  async function errorOf(response) {
    let message = `HTTP ${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON */ }
    return new ApiError(response.status, message);
  }

  async function api(path, options = {}) {
    const response = await fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), ...authHeaders() },
      cache: 'no-store',
    });
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  /** Saves a download that needs the bearer header: fetched as a blob. */
  async function download(url, name, button) {
    button.disabled = true;
    try {
      const response = await fetch(url, { headers: authHeaders() });
      if (!response.ok) throw await errorOf(response);
      const blob = await response.blob();
      const href = URL.createObjectURL(blob);
      const link = h('a', { href, download: name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(href), 60000);
    } catch (error) {
      toast(`Download of ${name} failed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------ formats

  const dash = '—';

  function fmtLoss(x) {
    return x == null || !isFinite(x) ? dash : x.toFixed(4);
  }

  function fmtLr(x) {
    if (x == null || !isFinite(x)) return dash;
    return x === 0 ? '0' : x.toExponential(2);
  }

  function fmtNumber(x) {
    return x == null ? dash : Math.round(x).toLocaleString('en-US');
  }

  function fmtRate(x) {
    if (x == null || !isFinite(x)) return dash;
    if (x >= 1e6) return (x / 1e6).toFixed(2) + 'M tok/s';
    if (x >= 1e4) return (x / 1e3).toFixed(1) + 'k tok/s';
    return Math.round(x).toLocaleString('en-US') + ' tok/s';
  }

  function fmtDuration(seconds) {
    if (seconds == null || !isFinite(seconds) || seconds < 0) return dash;
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
    const hours = Math.floor(m / 60);
    if (hours < 24) return `${hours}h ${String(m % 60).padStart(2, '0')}m`;
    return `${Math.floor(hours / 24)}d ${hours % 24}h`;
  }

  function fmtBytes(n) {
    if (n == null) return '';
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    let x = n;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i += 1; }
    return (i === 0 ? String(x) : x.toFixed(x < 10 ? 1 : 0)) + ' ' + units[i];
  }

  function fmtTime(unix) {
    if (unix == null) return dash;
    return new Date(unix * 1000).toLocaleString(undefined, {
      year: 'numeric', month: 'short', day: 'numeric',
      hour: '2-digit', minute: '2-digit', second: '2-digit',
    });
  }

  function fmtAgo(unix) {
    if (unix == null) return dash;
    const seconds = Date.now() / 1000 - unix;
    if (seconds < 5) return 'just now';
    if (seconds < 86400) return fmtDuration(seconds) + ' ago';
    return fmtTime(unix);
  }

  // ------------------------------------------------------------ jobs

  /** lorafleet's status when the job carries it (it has more words). */
  function statusOf(job) {
    return (job.lorafleet && job.lorafleet.status) || job.status;
  }

  function nameOf(job) {
    return (job.lorafleet && job.lorafleet.name) || job.id;
  }

  function etaOf(job) {
    const lf = job.lorafleet || {};
    if (FINAL.has(statusOf(job))) return null;
    if (lf.eta_seconds != null) return lf.eta_seconds;
    if (job.estimated_finish != null) return Math.max(0, job.estimated_finish - Date.now() / 1000);
    return null;
  }

  function badge(status, id) {
    return h('span', { class: `badge s-${status}`, id, 'data-status': status }, status.replace('_', ' '));
  }

  function progressBar(job, large) {
    const lf = job.lorafleet || {};
    const status = statusOf(job);
    const step = lf.step || 0;
    const total = lf.total_steps;
    const fraction = total ? Math.min(1, step / total) : (status === 'succeeded' ? 1 : 0);
    const fillEl = h('div', {
      class: 'progress-fill' + (status === 'succeeded' ? ' done' : '')
        + (status === 'failed' || status === 'cancelled' ? ' bad' : ''),
    });
    fillEl.style.width = (fraction * 100).toFixed(1) + '%';
    const label = total ? `${step} / ${total}` : (step ? `step ${step}` : dash);
    return h('div', { class: 'progress' + (large ? ' large' : ''), title: total ? `${Math.round(fraction * 100)}%` : '' },
      h('div', { class: 'progress-track' }, fillEl),
      h('span', { class: 'progress-label' }, label));
  }

  function jobRow(job) {
    const lf = job.lorafleet || {};
    const open = () => { location.hash = '#/jobs/' + encodeURIComponent(job.id); };
    const eta = etaOf(job);
    const took = job.finished_at && job.created_at ? job.finished_at - job.created_at : null;
    return h('tr', { class: 'clickable', 'data-job-id': job.id, onclick: open },
      h('td', null,
        h('a', { class: 'primary', href: '#/jobs/' + encodeURIComponent(job.id) }, nameOf(job)),
        h('div', { class: 'secondary' }, job.id)),
      h('td', null, badge(statusOf(job))),
      h('td', null, progressBar(job)),
      h('td', { class: 'num' }, fmtLoss(lf.train_loss)),
      h('td', { class: 'num' }, fmtLoss(lf.valid_loss)),
      h('td', { class: 'num' }, fmtRate(lf.tokens_per_s)),
      h('td', { class: 'num' }, eta != null ? fmtDuration(eta)
        : (took != null ? h('span', { class: 'muted', title: 'run time' }, fmtDuration(took)) : dash)),
      h('td', { title: fmtTime(job.created_at) }, fmtAgo(job.created_at)));
  }

  function jobsTable(jobs) {
    if (!jobs.length) {
      return h('div', { class: 'empty' },
        h('strong', null, 'No fine-tuning jobs yet'),
        'Submit one with ', h('code', null, 'lorafleet submit job.yaml'), ' or the OpenAI API.');
    }
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'data', id: 'jobs-table' },
        h('thead', null, h('tr', null,
          h('th', null, 'Job'), h('th', null, 'Status'), h('th', null, 'Progress'),
          h('th', { class: 'num' }, 'Train loss'), h('th', { class: 'num' }, 'Valid loss'),
          h('th', { class: 'num' }, 'Throughput'), h('th', { class: 'num' }, 'ETA'),
          h('th', null, 'Created'))),
        h('tbody', null, jobs.map(jobRow))));
  }

  function jobsPage(gen) {
    document.title = 'Jobs · lorafleet';
    const count = h('div', { class: 'sub' }, 'Loading…');
    const body = h('div');
    const more = h('div', { class: 'more', hidden: true });
    fill(app,
      h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'Fine-tuning jobs'), count)),
      h('div', { class: 'panel' }, body, more));
    // The newest page follows the jobs live; older pages load on demand.
    let older = [];
    let hasMore = false;
    let loadingOlder = false;

    const render = (newest) => {
      const seen = new Set(newest.map((j) => j.id));
      const jobs = newest.concat(older.filter((j) => !seen.has(j.id)));
      const running = jobs.filter((j) => !FINAL.has(statusOf(j))).length;
      count.textContent = `${jobs.length} job${jobs.length === 1 ? '' : 's'}`
        + (running ? ` · ${running} active` : '');
      fill(body, jobsTable(jobs));
      more.hidden = !hasMore;
      fill(more, h('button', {
        type: 'button', class: 'button button-secondary button-small', disabled: loadingOlder,
        onclick: async () => {
          loadingOlder = true;
          const last = jobs[jobs.length - 1];
          try {
            const page = await api(`/v1/fine_tuning/jobs?limit=${PAGE_SIZE}&after=${encodeURIComponent(last.id)}`);
            older = older.concat(page.data);
            hasMore = page.has_more;
          } catch (error) {
            toast(error.message);
          }
          loadingOlder = false;
          render(newest);
        },
      }, 'Show older jobs'));
    };

    poll(gen, async () => {
      const page = await api(`/v1/fine_tuning/jobs?limit=${PAGE_SIZE}`);
      if (!older.length) hasMore = page.has_more;
      render(page.data);
    });
  }

  // ------------------------------------------------------------ charts

  /** Round ticks covering [lo, hi]: the nice bounds and the ticks. */
  function niceScale(lo, hi, count, integer) {
    if (!(hi > lo)) {
      const pad = Math.abs(lo) * 0.1 || 1;
      lo -= pad;
      hi += pad;
    }
    const raw = (hi - lo) / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / magnitude;
    let step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
    if (integer) step = Math.max(1, Math.round(step));
    const start = Math.floor(lo / step + 1e-9) * step;
    const end = Math.ceil(hi / step - 1e-9) * step;
    const ticks = [];
    for (let v = start; v <= end + step * 1e-6; v += step) ticks.push(Number(v.toPrecision(12)));
    return { lo: start, hi: end, ticks };
  }

  /**
   * A line chart as inline SVG. `series`: [{key, name, points: [[x, y]],
   * markers, area, format}]; every series shares the axes.
   */
  function lineChart({ id, series, xTitle, yTitle, yFormat, xMax, height = 250 }) {
    const width = 560;
    const margin = { left: 62, right: 14, top: 12, bottom: 42 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const all = series.flatMap((s) => s.points);
    const root = svg('svg', {
      id, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': yTitle,
      'data-points': all.length,
    });
    const wrap = h('div', { class: 'chart' }, root);
    const readout = h('div', { class: 'readout' }, all.length ? 'Hover the chart for values.' : '');
    wrap.append(readout);

    const frame = (g) => {
      g.append(svg('line', { x1: margin.left, x2: margin.left + plotW, y1: margin.top + plotH, y2: margin.top + plotH }));
      g.append(svg('line', { x1: margin.left, x2: margin.left, y1: margin.top, y2: margin.top + plotH }));
    };
    if (!all.length) {
      const axis = svg('g', { class: 'axis' });
      frame(axis);
      root.append(axis, svg('text', {
        class: 'empty-note', x: margin.left + plotW / 2, y: margin.top + plotH / 2, 'text-anchor': 'middle',
      }, 'No steps yet'));
      return wrap;
    }

    const xs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    const xScale = niceScale(Math.min(0, ...xs), Math.max(xMax || 0, ...xs), 6, true);
    const yScale = niceScale(Math.min(...ys), Math.max(...ys), 5, false);
    const x = (v) => margin.left + ((v - xScale.lo) / (xScale.hi - xScale.lo)) * plotW;
    const y = (v) => margin.top + plotH - ((v - yScale.lo) / (yScale.hi - yScale.lo)) * plotH;

    const grid = svg('g', { class: 'grid' });
    const labels = svg('g');
    for (const t of yScale.ticks) {
      grid.append(svg('line', { x1: margin.left, x2: margin.left + plotW, y1: y(t), y2: y(t) }));
      labels.append(svg('text', { x: margin.left - 8, y: y(t) + 4, 'text-anchor': 'end' }, yFormat(t)));
    }
    for (const t of xScale.ticks) {
      grid.append(svg('line', { x1: x(t), x2: x(t), y1: margin.top, y2: margin.top + plotH }));
      labels.append(svg('text', { x: x(t), y: margin.top + plotH + 17, 'text-anchor': 'middle' }, String(t)));
    }
    const axis = svg('g', { class: 'axis' });
    frame(axis);
    labels.append(
      svg('text', { class: 'axis-title', x: margin.left + plotW / 2, y: height - 4, 'text-anchor': 'middle' }, xTitle),
      svg('text', {
        class: 'axis-title', 'text-anchor': 'middle',
        transform: `translate(13 ${margin.top + plotH / 2}) rotate(-90)`,
      }, yTitle));
    root.append(grid, axis, labels);

    for (const s of series) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => `${i ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join('');
      if (s.area && s.points.length > 1) {
        const first = s.points[0];
        const last = s.points[s.points.length - 1];
        root.append(svg('path', {
          class: `area-${s.key}`,
          d: `${d}L${x(last[0]).toFixed(1)},${y(yScale.lo)}L${x(first[0]).toFixed(1)},${y(yScale.lo)}Z`,
        }));
      }
      root.append(svg('path', {
        class: `series series-${s.key}`, d, 'data-points': s.points.length, 'data-series': s.name,
      }));
      if (s.markers) {
        for (const p of s.points) {
          root.append(svg('circle', { class: `marker-${s.key}`, cx: x(p[0]), cy: y(p[1]), r: 3.2 }));
        }
      }
    }

    // Hover: the nearest step's values under the chart.
    const cursor = svg('line', { class: 'cursor', y1: margin.top, y2: margin.top + plotH, visibility: 'hidden' });
    const overlay = svg('rect', {
      x: margin.left, y: margin.top, width: plotW, height: plotH, fill: 'transparent',
    });
    const steps = [...new Set(xs)].sort((a, b) => a - b);
    overlay.addEventListener('mousemove', (event) => {
      const box = root.getBoundingClientRect();
      const px = ((event.clientX - box.left) / box.width) * width;
      const value = xScale.lo + ((px - margin.left) / plotW) * (xScale.hi - xScale.lo);
      let nearest = steps[0];
      for (const s of steps) if (Math.abs(s - value) < Math.abs(nearest - value)) nearest = s;
      cursor.setAttribute('x1', x(nearest));
      cursor.setAttribute('x2', x(nearest));
      cursor.setAttribute('visibility', 'visible');
      const parts = [`step ${nearest}`];
      for (const s of series) {
        const p = s.points.find((q) => q[0] === nearest);
        if (p) parts.push(`${s.name} ${s.format(p[1])}`);
      }
      readout.textContent = parts.join(' · ');
    });
    overlay.addEventListener('mouseleave', () => cursor.setAttribute('visibility', 'hidden'));
    root.append(cursor, overlay);
    return wrap;
  }

  function lossChart(points, xMax) {
    const train = points.filter((p) => p.train_loss != null && isFinite(p.train_loss))
      .map((p) => [p.step, p.train_loss]);
    const valid = points.filter((p) => p.valid_loss != null && isFinite(p.valid_loss))
      .map((p) => [p.step, p.valid_loss]);
    return lineChart({
      id: 'loss-chart',
      xMax,
      xTitle: 'Step',
      yTitle: 'Loss',
      yFormat: (v) => v.toFixed(Math.abs(v) >= 10 ? 1 : 2),
      series: [
        { key: 'train', name: 'train', points: train, area: true, format: fmtLoss },
        { key: 'valid', name: 'valid', points: valid, markers: true, format: fmtLoss },
      ],
    });
  }

  function lrChart(points, xMax) {
    const lr = points.filter((p) => p.learning_rate != null && isFinite(p.learning_rate))
      .map((p) => [p.step, p.learning_rate]);
    return lineChart({
      id: 'lr-chart',
      xMax,
      xTitle: 'Step',
      yTitle: 'Learning rate',
      yFormat: (v) => (v === 0 ? '0' : v.toExponential(1)),
      series: [{ key: 'lr', name: 'lr', points: lr, area: true, format: fmtLr }],
    });
  }

  // ------------------------------------------------------------ one job

  function stat(label, value, note, extra) {
    return h('div', { class: 'stat' + (extra ? ' ' + extra : '') },
      h('div', { class: 'label' }, label),
      h('div', { class: 'value' }, value),
      note ? h('div', { class: 'note' }, note) : null);
  }

  function jobStats(job) {
    const lf = job.lorafleet || {};
    const status = statusOf(job);
    const eta = etaOf(job);
    const total = lf.total_steps;
    const percent = total ? Math.round(Math.min(1, (lf.step || 0) / total) * 100) + '%' : null;
    const took = job.finished_at ? job.finished_at - job.created_at : null;
    const pace = lf.step_seconds != null ? ` · ${lf.step_seconds.toFixed(2)} s per step` : '';
    return h('div', { class: 'stats job-stats' },
      h('div', { class: 'stat' },
        h('div', { class: 'label' }, 'Progress'),
        h('div', { class: 'value' }, progressBar(job, true)),
        h('div', { class: 'note' }, (total ? `${percent} done` : 'length not known yet') + pace)),
      stat('Train loss', fmtLoss(lf.train_loss)),
      stat('Valid loss', fmtLoss(lf.valid_loss)),
      stat('Throughput', fmtRate(lf.tokens_per_s)),
      FINAL.has(status)
        ? stat('Run time', fmtDuration(took), job.finished_at ? 'finished ' + fmtAgo(job.finished_at) : null)
        : stat('ETA', fmtDuration(eta), eta != null ? 'at ' + new Date(Date.now() + eta * 1000).toLocaleTimeString() : null),
      stat('Trained tokens', fmtNumber(job.trained_tokens), lf.attempt ? `attempt ${lf.attempt}` : null));
  }

  function jobDetails(job) {
    const lf = job.lorafleet || {};
    const hp = job.hyperparameters || {};
    const rows = [
      ['Model', job.model],
      ['Fine-tuned model', job.fine_tuned_model],
      ['Training file', job.training_file],
      ['Validation file', job.validation_file],
      ['Epochs', hp.n_epochs],
      ['Batch size', hp.batch_size],
      ['LR multiplier', hp.learning_rate_multiplier],
      ['Seed', job.seed],
      ['Workers', lf.workers_min == null ? null
        : (lf.workers_min === lf.workers_max ? String(lf.workers_min) : `${lf.workers_min}–${lf.workers_max}`)],
      ['Created', fmtTime(job.created_at)],
      ['Finished', job.finished_at ? fmtTime(job.finished_at) : null],
    ].filter(([, v]) => v != null && v !== '');
    return h('dl', { class: 'kv' }, rows.map(([k, v]) => [h('dt', null, k), h('dd', null, String(v))]));
  }

  function checkpointsTable(checkpoints) {
    if (!checkpoints.length) {
      return h('div', { class: 'empty' }, h('strong', null, 'No checkpoints yet'),
        'They appear here as the job saves them.');
    }
    const sorted = [...checkpoints].sort((a, b) => b.step_number - a.step_number);
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'data', id: 'checkpoints-table' },
        h('thead', null, h('tr', null,
          h('th', { class: 'num' }, 'Step'), h('th', { class: 'num' }, 'Train loss'),
          h('th', { class: 'num' }, 'Valid loss'), h('th', null, 'Files'), h('th', null, 'Saved'))),
        h('tbody', null, sorted.map((cp) => {
          const m = cp.metrics || {};
          const files = (cp.lorafleet && cp.lorafleet.files) || [];
          return h('tr', { 'data-step': cp.step_number },
            h('td', { class: 'num' }, cp.step_number),
            h('td', { class: 'num' }, fmtLoss(m.train_loss)),
            h('td', { class: 'num' }, fmtLoss(m.valid_loss)),
            h('td', null, files.map((f) => {
              const button = h('button', {
                type: 'button', class: 'file-button', 'data-file': f.name, 'data-bytes': f.bytes,
                title: `Download ${f.name}`,
              }, f.name, h('span', { class: 'size' }, fmtBytes(f.bytes)));
              button.addEventListener('click', () => download(f.url, f.name, button));
              return button;
            })),
            h('td', { class: 'nowrap', title: fmtTime(cp.created_at) }, fmtAgo(cp.created_at)));
        }))));
  }

  function eventsTable(events) {
    if (!events.length) return h('div', { class: 'empty' }, 'No events yet.');
    return h('div', { class: 'scroll' },
      h('table', { class: 'data', id: 'events-table' },
        h('tbody', null, events.map((e) => {
          const kind = (e.data && e.data.type) || e.type;
          return h('tr', null,
            h('td', { class: 'time', title: fmtTime(e.created_at) },
              new Date(e.created_at * 1000).toLocaleTimeString()),
            h('td', { class: 'level' }, h('span', { class: `badge l-${e.level}` }, e.level)),
            h('td', { class: 'type' }, kind),
            h('td', null, e.message));
        }))));
  }

  function panel(title, hint, body, id) {
    return h('section', { class: 'panel', id },
      h('div', { class: 'panel-head' }, h('h2', null, title), hint),
      body);
  }

  function jobPage(gen, id) {
    document.title = 'Job · lorafleet';
    const crumbName = h('span', null, id);
    const title = h('h1', null, id);
    const sub = h('div', { class: 'sub mono' }, id);
    const actions = h('div', { class: 'actions' });
    const alert = h('div');
    const stats = h('div');
    const loss = h('div', { class: 'panel-body' });
    const lr = h('div', { class: 'panel-body' });
    const checkpoints = h('div');
    const details = h('div', { class: 'panel-body' });
    const events = h('div', { class: 'events' });
    const eventsHint = h('span', { class: 'hint' });
    const legend = h('div', { class: 'legend' },
      h('span', null, h('i', { class: 'k-train' }), 'train'),
      h('span', null, h('i', { class: 'k-valid' }), 'valid'));
    fill(app,
      h('div', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', crumbName),
      h('div', { class: 'page-head' }, h('div', null, title, sub), actions),
      alert,
      stats,
      h('div', { class: 'grid-2 section' },
        panel('Loss', legend, loss, 'loss-panel'),
        panel('Learning rate', h('div', { class: 'legend' }, h('span', null, h('i', { class: 'k-lr' }), 'lr')), lr, 'lr-panel')),
      h('div', { class: 'section' }, panel('Checkpoints', null, checkpoints, 'checkpoints-panel')),
      h('div', { class: 'grid-wide section' },
        panel('Events', eventsHint, events, 'events-panel'),
        panel('Details', null, details, 'details-panel')));

    let chartKey = null;
    let finalPolls = 0;
    const settle = (result, render, what) => {
      if (result.status === 'fulfilled') render(result.value);
      else if (result.reason && result.reason.status === 401) throw result.reason;
      else toast(`${what}: ${result.reason ? result.reason.message : 'failed'}`);
    };

    poll(gen, async () => {
      const path = '/v1/fine_tuning/jobs/' + encodeURIComponent(id);
      let job;
      try {
        job = await api(path);
      } catch (error) {
        if (error.status !== 404) throw error;
        fill(app, h('div', { class: 'panel' }, h('div', { class: 'empty', id: 'job-missing' },
          h('strong', null, 'Job not found'), error.message, h('p', null, h('a', { href: '#/jobs' }, 'All jobs')))));
        return false;
      }
      const [metrics, eventPage, checkpointPage] = await Promise.allSettled([
        api(path + '/metrics'),
        api(path + '/events?limit=100'),
        api(path + '/checkpoints?limit=100'),
      ]);
      const status = statusOf(job);
      document.title = `${nameOf(job)} · lorafleet`;
      crumbName.textContent = nameOf(job);
      title.textContent = nameOf(job);
      sub.textContent = `${job.id} · ${job.model || ''}`;
      fill(actions, FINAL.has(status) ? null : h('button', {
        type: 'button', class: 'button button-danger button-small', id: 'cancel-job',
        onclick: async (event) => {
          if (!confirm(`Cancel job ${nameOf(job)}?`)) return;
          event.target.disabled = true;
          try {
            await api(path + '/cancel', { method: 'POST' });
          } catch (error) {
            toast(error.message);
          }
        },
      }, 'Cancel job'), badge(status, 'job-status'));
      fill(alert, job.error && job.error.message ? h('div', { class: 'alert' },
        h('strong', null, job.error.code || 'error'), job.error.message) : null);
      fill(stats, jobStats(job));
      fill(details, jobDetails(job));
      settle(metrics, (page) => {
        const points = page.data || [];
        const last = points[points.length - 1];
        const total = (job.lorafleet || {}).total_steps;
        const key = JSON.stringify([points.length, last, total]);
        if (key === chartKey) return;
        chartKey = key;
        fill(loss, lossChart(points, total));
        fill(lr, lrChart(points, total));
      }, 'Metrics');
      settle(eventPage, (page) => {
        fill(events, eventsTable(page.data || []));
        eventsHint.textContent = page.has_more ? 'latest 100, newest first' : 'newest first';
      }, 'Events');
      settle(checkpointPage, (page) => fill(checkpoints, checkpointsTable(page.data || [])), 'Checkpoints');
      // One more look after the job ends, then the page stands still.
      if (FINAL.has(status)) finalPolls += 1;
      return finalPolls < 2;
    });
  }

  // ------------------------------------------------------------ workers

  function workersPage(gen) {
    document.title = 'Workers · lorafleet';
    const stats = h('div');
    const body = h('div');
    fill(app,
      h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'Workers'),
        h('div', { class: 'sub' }, 'The fleet that runs the jobs; only your own jobs show on it.'))),
      stats,
      h('div', { class: 'panel section' }, body));

    poll(gen, async () => {
      const workers = (await api('/v1/workers')).data;
      const by = (state) => workers.filter((w) => w.state === state).length;
      fill(stats, h('div', { class: 'stats' },
        stat('Workers', workers.length),
        stat('Idle', by('idle')),
        stat('Busy', by('busy')),
        stat('Draining', by('draining')),
        stat('Lost', by('lost'))));
      if (!workers.length) {
        fill(body, h('div', { class: 'empty' }, h('strong', null, 'No workers'),
          'Start one with ', h('code', null, 'lorafleet worker'), '.'));
        return;
      }
      fill(body, h('div', { class: 'table-wrap' },
        h('table', { class: 'data', id: 'workers-table' },
          h('thead', null, h('tr', null,
            h('th', null, 'Worker'), h('th', null, 'State'), h('th', null, 'Host'),
            h('th', null, 'Backend'), h('th', null, 'Device'), h('th', null, 'Job'),
            h('th', { class: 'num' }, 'Rank'), h('th', null, 'Last heartbeat'))),
          h('tbody', null, workers.map((w) => h('tr', { 'data-worker-id': w.id, 'data-worker-name': w.name },
            h('td', null, h('div', { class: 'primary' }, w.name), h('div', { class: 'secondary' }, w.id)),
            h('td', null, badge(w.state)),
            h('td', null, w.host),
            h('td', null, w.backend),
            h('td', { class: 'mono' }, w.device),
            h('td', null, w.job_id ? h('a', { href: '#/jobs/' + encodeURIComponent(w.job_id) }, w.job_id) : h('span', { class: 'muted' }, dash)),
            h('td', { class: 'num' }, w.rank == null ? dash : w.rank),
            h('td', { title: fmtTime(w.last_heartbeat) }, fmtAgo(w.last_heartbeat))))))));
    });
  }

  // ------------------------------------------------------------ sign in

  function loginPage(message) {
    generation += 1;
    document.title = 'Sign in · lorafleet';
    document.getElementById('nav').hidden = true;
    document.getElementById('session').hidden = true;
    const input = h('input', {
      id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
      placeholder: 'tenant token', required: true,
    });
    const error = h('div', { class: 'error-box', id: 'login-error', role: 'alert', hidden: !message },
      h('strong', null, 'Could not sign in'), h('span', { id: 'login-error-message' }, message || ''));
    const button = h('button', { type: 'submit', class: 'button', id: 'sign-in' }, 'Sign in');
    const form = h('form', { id: 'login-form', autocomplete: 'off' },
      h('label', { for: 'token' }, 'Tenant token'), input, button, error);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const candidate = input.value.trim();
      if (!candidate) return;
      button.disabled = true;
      error.hidden = true;
      sessionStorage.setItem(TOKEN_KEY, candidate);
      try {
        await api('/v1/fine_tuning/jobs?limit=1');
        const next = wanted && wanted !== '#/login' ? wanted : '#/jobs';
        wanted = null;
        if (location.hash === next) route();
        else location.hash = next;
      } catch (failure) {
        sessionStorage.removeItem(TOKEN_KEY);
        fill(error.querySelector('#login-error-message'), failure.message);
        error.hidden = false;
        button.disabled = false;
        input.select();
      }
    });
    fill(app, h('div', { class: 'login' }, h('div', { class: 'panel' }, h('div', { class: 'panel-body' },
      h('h1', null, 'Sign in to lorafleet'),
      h('p', null, 'Use your tenant token. It stays in this browser tab and is sent only to this coordinator.'),
      form,
      h('div', { class: 'foot' }, 'The same token the CLI reads from LORAFLEET_TOKEN.')))));
    input.focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (location.hash && location.hash !== '#/login') wanted = location.hash;
    if (location.hash !== '#/login') history.replaceState(null, '', '#/login');
    loginPage(message);
  }

  // ------------------------------------------------------------ routing

  /** Runs `tick` now and every POLL_MS while page `gen` is shown and it
   * does not return false. */
  function poll(gen, tick) {
    const run = async () => {
      if (gen !== generation) return;
      let again = true;
      try {
        again = (await tick()) !== false;
        if (gen === generation) setLive(true);
      } catch (error) {
        if (gen !== generation) return;
        if (error.status === 401) {
          signOut(error.message);
          return;
        }
        setLive(false);
        toast(error.message);
      }
      if (again && gen === generation) setTimeout(run, POLL_MS);
    };
    run();
  }

  function route() {
    const hash = location.hash || '#/jobs';
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      if (hash !== '#/login') wanted = hash;
      loginPage(null);
      return;
    }
    if (hash === '#/login') {
      history.replaceState(null, '', '#/jobs');
      route();
      return;
    }
    generation += 1;
    const gen = generation;
    document.getElementById('nav').hidden = false;
    document.getElementById('session').hidden = false;
    const job = hash.match(/^#\/jobs\/(.+)$/);
    const section = job ? 'jobs' : hash === '#/workers' ? 'workers' : 'jobs';
    for (const link of document.querySelectorAll('[data-nav]')) {
      link.classList.toggle('active', link.dataset.nav === section);
    }
    window.scrollTo(0, 0);
    if (job) jobPage(gen, decodeURIComponent(job[1]));
    else if (hash === '#/workers') workersPage(gen);
    else jobsPage(gen);
  }

  document.getElementById('sign-out').addEventListener('click', () => signOut(null));
  window.addEventListener('hashchange', route);
  route();
})();
