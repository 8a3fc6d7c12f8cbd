// Quantix vDC web UI. Plain JavaScript, no dependencies. Every page talks to the
// vDC's API v1 with the session cookie; state-changing requests carry the
// session's CSRF token in the X-CSRF-Token header. Data reaches the DOM only as
// text (textContent), never as HTML.
'use strict';

(function () {
  const HOSTS_POLL_MS = 3000;
  const DETAIL_POLL_MS = 3000;
  const INVENTORY_POLL_MS = 5000;
  const PAGE_SIZE = 100;

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // ---- API ----------------------------------------------------------------

  let clockSkew = 0; // server clock minus browser clock, in ms (from Date headers)

  class APIError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function csrfToken() {
    const m = $('meta[name="csrf-token"]');
    return m ? m.content : '';
  }

  async function api(method, path, body) {
    const opts = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET') opts.headers['X-CSRF-Token'] = csrfToken();
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, opts);
    } catch (e) {
      throw new APIError(0, 'the vDC is not reachable');
    }
    const date = resp.headers.get('Date');
    if (date) clockSkew = Date.parse(date) + 500 - Date.now();
    if (resp.status === 401) {
      location.assign('/ui/login?next=' + encodeURIComponent(location.pathname + location.search));
      throw new APIError(401, 'the session has expired');
    }
    let data = null;
    if (resp.status !== 204) {
      try { data = await resp.json(); } catch (e) { data = null; }
    }
    if (!resp.ok) throw new APIError(resp.status, (data && data.error) || resp.statusText);
    return { data, resp };
  }

  // ---- small helpers ------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function setText(node, text) {
    text = String(text);
    if (node.textContent !== text) node.textContent = text;
  }
  function setClass(node, cls) {
    if (node.className !== cls) node.className = cls;
  }
  function setTitle(node, t) {
    if (node.title !== t) node.title = t;
  }

  const PHASES = { ready: 'Ready', not_ready: 'Not ready', disconnected: 'Disconnected', maintenance: 'Maintenance' };
  function setBadge(node, phase) {
    setClass(node, 'badge phase-' + phase);
    setText(node, PHASES[phase] || phase);
  }

  function fmtBytes(n) {
    if (n === undefined || n === null) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
  }
  function fmtNumber(n) { return Number(n).toLocaleString('en-US'); }
  function serverNow() { return Date.now() + clockSkew; }
  function fmtAge(iso) {
    if (!iso) return '—';
    const s = Math.max(0, Math.floor((serverNow() - Date.parse(iso)) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }
  function cpuText(n) {
    const c = n.cpu || {};
    const parts = [];
    if (c.cores) parts.push(c.cores + (c.cores === 1 ? ' core' : ' cores'));
    if (c.threads && c.threads !== c.cores) parts.push(c.threads + ' threads');
    if (c.model) parts.push(c.model);
    return parts.join(' · ') || '—';
  }
  // lostNote says why and since when an inventory row is lost.
  function lostNote(x) {
    if (!x.lost) return '';
    return (x.lost_reason ? x.lost_reason + ' · ' : '') + 'since ' + fmtTime(x.lost_at);
  }
  function pct(n) { return (n === undefined || n === null) ? '—' : n.toFixed(1) + ' %'; }

  let bannerTimer = null;
  function showError(msg) {
    const b = $('#banner');
    setText(b, msg);
    b.hidden = false;
    const live = $('.live');
    if (live) { live.classList.add('stale'); setText(live, 'stale'); }
  }
  function clearError() {
    const b = $('#banner');
    if (b && !b.hidden) b.hidden = true;
    const live = $('.live');
    if (live && live.classList.contains('stale')) { live.classList.remove('stale'); setText(live, 'live'); }
  }
  function toast(msg) {
    const t = $('#toast');
    setText(t, msg);
    t.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  // A poller runs fn every ms, one run at a time; poke() runs it now. Results of
  // a run that a newer one overtook are dropped by the caller via the sequence.
  function poller(fn, ms) {
    let timer = null;
    let running = false;
    let again = false;
    async function run() {
      clearTimeout(timer);
      if (running) { again = true; return; }
      running = true;
      try { await fn(); } finally {
        running = false;
        if (again) { again = false; run(); } else { timer = setTimeout(run, ms); }
      }
    }
    return { poke: run };
  }

  // keyedRows keeps one <tr> per key in tbody and updates rows in place, so a
  // refresh never rebuilds the table (no flicker, selection and scroll kept).
  function keyedRows(tbody, make, update) {
    const rows = new Map();
    return function render(items, keyOf) {
      const keep = new Set();
      const order = [];
      for (const it of items) {
        const k = keyOf(it);
        keep.add(k);
        let r = rows.get(k);
        if (!r) { r = make(it); r.tr.dataset.key = k; rows.set(k, r); }
        update(r, it);
        order.push(r.tr);
      }
      for (const [k, r] of rows) {
        if (!keep.has(k)) { r.tr.remove(); rows.delete(k); }
      }
      let cur = tbody.firstElementChild;
      for (const tr of order) {
        if (tr === cur) { cur = cur.nextElementSibling; } else { tbody.insertBefore(tr, cur); }
      }
      return rows;
    };
  }

  // eventRows renders a history (time, kind, message) into tbody.
  function eventRows(tbody) {
    return keyedRows(tbody, () => {
      const tr = el('tr');
      const r = { tr, t: el('td'), k: el('td'), m: el('td', 'wrap') };
      tr.append(r.t, r.k, r.m);
      return r;
    }, (r, e) => { setText(r.t, fmtTime(e.at)); setText(r.k, e.kind); setText(r.m, e.message); });
  }

  function readParams(defaults) {
    const p = new URLSearchParams(location.search);
    const s = {};
    for (const k of Object.keys(defaults)) s[k] = p.has(k) ? p.get(k) : defaults[k];
    return s;
  }
  function writeParams(state, defaults) {
    const p = new URLSearchParams();
    for (const k of Object.keys(defaults)) if (String(state[k]) !== String(defaults[k])) p.set(k, state[k]);
    const q = p.toString();
    history.replaceState(null, '', location.pathname + (q ? '?' + q : ''));
  }

  function setupPager(state, onChange) {
    $('#prev').addEventListener('click', () => { if (state.page > 0) { state.page--; onChange(); } });
    $('#next').addEventListener('click', () => { state.page++; onChange(); });
  }
  function updatePager(page, shown, total) {
    const from = total === 0 ? 0 : page * PAGE_SIZE + 1;
    const to = page * PAGE_SIZE + shown;
    setText($('#range'), total === 0 ? '0 of 0' : fmtNumber(from) + '–' + fmtNumber(to) + ' of ' + fmtNumber(total));
    $('#prev').disabled = page === 0;
    $('#next').disabled = to >= total;
  }

  // ---- Hosts --------------------------------------------------------------

  function hostsPage() {
    const defaults = { phase: '', q: '', page: '0' };
    const state = readParams(defaults);
    state.page = Math.max(0, parseInt(state.page, 10) || 0);
    const search = $('#search');
    search.value = state.q;
    const tbody = $('#hosts tbody');
    let seq = 0;

    const deleted = new URLSearchParams(location.search).get('deleted');
    if (deleted) { toast('Deleted host ' + deleted); }

    const render = keyedRows(tbody, (n) => {
      const tr = el('tr');
      const r = { tr, cells: {} };
      const name = el('td');
      r.link = el('a', 'host-link');
      name.append(r.link);
      r.ip = el('td', 'mono');
      const phase = el('td');
      r.badge = el('span', 'badge');
      phase.append(r.badge);
      r.age = el('td');
      const cpu = el('td');
      r.cpuPct = el('span');
      r.cpuInfo = el('span', 'sub');
      cpu.append(r.cpuPct, r.cpuInfo);
      const mem = el('td');
      r.memText = el('span');
      r.memBar = el('meter');
      r.memBar.min = 0; r.memBar.low = 0.75; r.memBar.high = 0.9; r.memBar.optimum = 0;
      mem.append(r.memText, r.memBar);
      r.vms = el('td', 'num');
      r.agent = el('td');
      const hv = el('td');
      r.hv = el('span');
      hv.append(r.hv);
      tr.append(name, r.ip, phase, r.age, cpu, mem, r.vms, r.agent, hv);
      return r;
    }, (r, n) => {
      r.node = n;
      setText(r.link, n.hostname);
      const href = '/ui/hosts/' + n.id;
      if (r.link.getAttribute('href') !== href) r.link.setAttribute('href', href);
      setText(r.ip, n.management_ip);
      setBadge(r.badge, n.phase);
      setText(r.age, fmtAge(n.last_heartbeat));
      setTitle(r.age, fmtTime(n.last_heartbeat));
      setText(r.cpuPct, pct(n.cpu_percent));
      setText(r.cpuInfo, cpuText(n));
      const used = n.memory_used_bytes;
      setText(r.memText, (used === undefined || used === null ? '—' : fmtBytes(used)) + ' / ' + fmtBytes(n.memory_bytes || 0));
      r.memBar.hidden = !(n.memory_bytes > 0 && used !== undefined && used !== null);
      if (!r.memBar.hidden) { r.memBar.max = n.memory_bytes; r.memBar.low = n.memory_bytes * 0.75; r.memBar.high = n.memory_bytes * 0.9; r.memBar.value = used; }
      setText(r.vms, n.vm_count);
      setText(r.agent, n.agent_version || '—');
      const hs = (n.hypervisor && n.hypervisor.state) || 'unknown';
      setClass(r.hv, 'hv-' + hs);
      setText(r.hv, hs + (n.hypervisor && n.hypervisor.version ? ' (' + n.hypervisor.version + ')' : ''));
      setTitle(r.hv, (n.hypervisor && n.hypervisor.reason) || '');
    });
    let rows = new Map();

    function paintTabs(counts) {
      let all = 0;
      for (const k of Object.keys(counts || {})) all += counts[k];
      for (const span of $$('#phase-tabs [data-count]')) {
        const p = span.dataset.count;
        setText(span, fmtNumber(p === '' ? all : ((counts || {})[p] || 0)));
      }
      for (const b of $$('#phase-tabs button')) {
        const on = b.dataset.phase === state.phase;
        b.classList.toggle('active', on);
        b.setAttribute('aria-selected', on ? 'true' : 'false');
      }
    }
    paintTabs(null);

    async function refresh() {
      const my = ++seq;
      const p = new URLSearchParams({ limit: PAGE_SIZE, offset: state.page * PAGE_SIZE });
      if (state.phase) p.set('phase', state.phase);
      if (state.q) p.set('q', state.q);
      try {
        const { data } = await api('GET', '/api/v1/nodes?' + p.toString());
        if (my !== seq) return;
        if (data.nodes.length === 0 && state.page > 0 && data.total > 0) {
          // The page emptied (hosts deleted): show the last one that has rows.
          state.page = Math.floor((data.total - 1) / PAGE_SIZE);
          writeParams(state, defaults);
          seq++;
          return refresh();
        }
        rows = render(data.nodes, (n) => n.id);
        paintTabs(data.counts);
        updatePager(state.page, data.nodes.length, data.total);
        $('#empty').hidden = data.nodes.length > 0;
        document.body.dataset.loaded = 'true';
        clearError();
      } catch (e) {
        if (my === seq && e.status !== 401) showError('Could not refresh the hosts: ' + e.message);
      }
    }
    const poll = poller(refresh, HOSTS_POLL_MS);

    function changed() {
      writeParams(state, defaults);
      paintTabs(null);
      poll.poke();
    }
    for (const b of $$('#phase-tabs button')) {
      b.addEventListener('click', () => { state.phase = b.dataset.phase; state.page = 0; changed(); });
    }
    let debounce = null;
    search.addEventListener('input', () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => {
        const q = search.value.trim();
        if (q === state.q) return;
        state.q = q; state.page = 0; changed();
      }, 250);
    });
    setupPager(state, changed);
    // Ages move between refreshes.
    setInterval(() => {
      for (const r of rows.values()) setText(r.age, fmtAge(r.node.last_heartbeat));
    }, 1000);
    poll.poke();
  }

  // ---- Host detail ----------------------------------------------------------

  // paintSlots fills an operating system card's slot fields (#<prefix>-slot,
  // -other, -rollback) from a SlotsStatus (initctl.go), or says why there is none.
  function paintSlots(prefix, sl, none) {
    const f = (name) => $('#' + prefix + '-' + name);
    if (!sl) {
      setText(f('slot'), none);
      setText(f('other'), '—');
      setText(f('rollback'), '—');
      return;
    }
    setText(f('slot'), sl.booted + ' · ' + sl.state + (sl.trial ? ' (trial)' : ''));
    const other = (sl.slots || []).find((s) => s.slot !== sl.booted);
    setText(f('other'), other && other.version ? other.slot + ' · ' + other.image + ' ' + other.version + (other.good ? ' · good' : '') +
      (sl.next === other.slot ? ' · boots next' : '') : 'empty');
    setText(f('rollback'), sl.rolled_back_from ? 'from slot ' + sl.rolled_back_from + ': ' + (sl.reason || 'no reason given') : 'none');
  }

  // paintOS fills the host page's operating system card (NodeOS, upgrades.go).
  function paintOS(os) {
    setText($('#os-version'), os ? (os.image + ' ' + os.version) : 'not reported');
    paintSlots('os', os && os.slots, os ? 'live boot: no A/B slots (cannot be upgraded, only installed)' : '—');
    const u = os && os.upgrade;
    setText($('#os-upgrade'), u ? u.version + ' · ' + u.phase + (u.error ? ': ' + u.error : '') : 'none');
  }

  function upgradesPage() {
    const renderUp = keyedRows($('#upgrades tbody'), () => {
      const tr = el('tr');
      const r = { tr, c: [] };
      for (let i = 0; i < 5; i++) { const td = el('td', i === 4 ? 'wrap' : ''); r.c.push(td); tr.append(td); }
      r.state = el('span');
      r.c[2].append(r.state);
      return r;
    }, (r, u) => {
      setText(r.c[0], fmtTime(u.created_at));
      setText(r.c[1], u.image + ' ' + u.version + (u.activate ? '' : ' (stage only)'));
      setClass(r.state, 'badge up-' + u.state);
      setText(r.state, u.state);
      setText(r.c[3], u.nodes.map((n) => n.hostname + ': ' + n.phase + (n.error ? ' (' + n.error + ')' : '')).join(' · '));
      setText(r.c[4], u.reason || '');
      r.tr.dataset.id = u.id;
    });
    const renderRel = keyedRows($('#releases tbody'), () => {
      const tr = el('tr');
      const r = { tr, c: [] };
      for (let i = 0; i < 5; i++) { const td = el('td'); r.c.push(td); tr.append(td); }
      return r;
    }, (r, x) => {
      setText(r.c[0], x.image); setText(r.c[1], x.version); setText(r.c[2], x.signed_by);
      setText(r.c[3], fmtBytes(x.files.reduce((a, f) => a + f.size_bytes, 0))); setText(r.c[4], fmtTime(x.created_at));
    });
    // The controller card (ControllerOS, upgrades.go): this vDC's own slots, and
    // a form staging an uploaded qvdc release through its qx-init.
    let offered = '';
    function paintController(c, releases) {
      setText($('#c-host'), c.hostname);
      setText($('#c-version'), (c.image || 'qx-vdc') + ' ' + c.version);
      paintSlots('c', c.slots, c.unavailable);
      const last = c.events.length ? c.events[c.events.length - 1] : null;
      setText($('#c-event'), last ? fmtTime(last.at) + ' · ' + last.message : 'none');
      const rs = releases.filter((x) => x.image === 'qvdc' && x.version !== c.version);
      const key = rs.map((x) => x.id).join(',');
      if (key !== offered) {
        offered = key;
        const s = $('#c-release');
        const keep = s.value;
        while (s.options.length > 1) s.remove(1);
        for (const x of rs) { const o = el('option', '', 'qvdc ' + x.version + ' (signed by ' + x.signed_by + ')'); o.value = x.id; s.append(o); }
        s.value = rs.some((x) => x.id === keep) ? keep : '';
      }
      $('#c-stage').disabled = !c.slots;
      setTitle($('#c-stage'), c.slots ? '' : c.unavailable);
    }
    $('#controller-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const btn = $('#c-stage');
      btn.disabled = true;
      try {
        const { data } = await api('POST', '/api/v1/controller/upgrade', { release: $('#c-release').value, activate: $('#c-activate').checked });
        const s = data.staged;
        toast('Staged ' + s.image + ' ' + s.version + ' into slot ' + s.slot + (data.rebooting ? ': the vDC reboots into it now' : ': it boots at the next reboot'));
        document.body.dataset.staged = s.version;
        clearError();
      } catch (e) {
        if (e.status !== 401) showError('Could not upgrade this vDC: ' + e.message);
      } finally {
        btn.disabled = false;
        poll.poke();
      }
    });
    async function refresh() {
      try {
        const [up, rel, c] = await Promise.all([api('GET', '/api/v1/upgrades'), api('GET', '/api/v1/releases'), api('GET', '/api/v1/controller')]);
        paintController(c.data, rel.data.releases);
        renderUp(up.data.upgrades, (u) => u.id);
        $('#upgrades-empty').hidden = up.data.upgrades.length > 0;
        setText($('#up-count'), up.data.upgrades.length);
        renderRel(rel.data.releases, (x) => x.id);
        $('#releases-empty').hidden = rel.data.releases.length > 0;
        setText($('#rel-count'), rel.data.releases.length);
        document.body.dataset.loaded = 'true';
        clearError();
      } catch (e) {
        if (e.status !== 401) showError('Could not refresh the upgrades: ' + e.message);
      }
    }
    const poll = poller(refresh, DETAIL_POLL_MS);
    poll.poke();
  }

  function hostPage() {
    const id = document.body.dataset.nodeId;
    let node = null;
    let gone = false;
    const maint = $('#maint-btn');
    const del = $('#delete-btn');
    const dialog = $('#delete-dialog');

    const fieldDefs = [
      ['Hostname', (n) => n.hostname], ['Node ID', (n) => n.id],
      ['Management IP', (n) => n.management_ip], ['Phase', (n) => PHASES[n.phase] || n.phase],
      ['Last heartbeat', (n) => fmtAge(n.last_heartbeat) + ' (' + fmtTime(n.last_heartbeat) + ')'],
      ['Heartbeat interval', (n) => n.heartbeat_interval_seconds + ' s'],
      ['Registered', (n) => fmtTime(n.registered_at)], ['Updated', (n) => fmtTime(n.updated_at)],
      ['Machine ID', (n) => n.machine_id], ['Agent version', (n) => n.agent_version || '—'],
      ['CPU', (n) => cpuText(n) + (n.cpu && n.cpu.sockets ? ' · ' + n.cpu.sockets + ' socket(s)' : '')],
      ['CPU usage', (n) => pct(n.cpu_percent)],
      ['Memory', (n) => (n.memory_used_bytes === undefined || n.memory_used_bytes === null ? '—' : fmtBytes(n.memory_used_bytes)) + ' used of ' + fmtBytes(n.memory_bytes || 0)],
      ['VMs', (n) => String(n.vm_count)],
      ['Hypervisor', (n) => (n.hypervisor.state || 'unknown') + (n.hypervisor.version ? ' · libvirt ' + n.hypervisor.version : '') + (n.hypervisor.reason ? ' · ' + n.hypervisor.reason : '')],
      ['QEMU', (n) => n.hypervisor.qemu_version || '—'],
      ['Accelerator', (n) => (n.hypervisor.accelerator || '—') + (n.hypervisor.accelerator_reason ? ' · ' + n.hypervisor.accelerator_reason : '')],
      ['VM storage', (n) => n.hypervisor.persistent === undefined ? '—' : (n.hypervisor.persistent ? 'QUANTIX-DATA (persistent)' : 'RAM: nothing survives a reboot (no QUANTIX-DATA)')],
      ['Hypervisor URI', (n) => n.hypervisor.uri || '—'],
      ['Labels', (n) => Object.entries(n.labels || {}).map(([k, v]) => k + '=' + v).join(', ') || '—'],
    ];
    const dl = $('#h-fields');
    const dds = fieldDefs.map(([label]) => {
      const dd = el('dd');
      dl.append(el('dt', '', label), dd);
      return dd;
    });

    function paintNode(n) {
      node = n;
      paintOS(n.os);
      setText($('#h-title'), n.hostname);
      setText($('#crumb'), n.hostname);
      document.title = n.hostname + ' · Quantix vDC';
      setBadge($('#h-phase'), n.phase);
      fieldDefs.forEach(([, f], i) => setText(dds[i], f(n)));
      const inMaint = n.phase === 'maintenance';
      setText(maint, inMaint ? 'Exit maintenance' : 'Enter maintenance');
      maint.dataset.on = inMaint ? 'true' : 'false';
      maint.disabled = false;
      del.disabled = false;
    }

    const renderVMs = keyedRows($('#h-vms tbody'), () => {
      const tr = el('tr');
      const r = { tr, c: [] };
      for (let i = 0; i < 7; i++) { const td = el('td', i === 3 ? 'num' : (i === 1 ? 'mono' : '')); r.c.push(td); tr.append(td); }
      r.status = el('span');
      r.note = el('span', 'sub');
      r.c[6].append(r.status, r.note);
      return r;
    }, (r, v) => {
      setText(r.c[0], v.name); setText(r.c[1], v.uuid); setText(r.c[2], v.power_state);
      setText(r.c[3], v.vcpus); setText(r.c[4], fmtBytes(v.memory_bytes)); setText(r.c[5], fmtTime(v.last_seen));
      r.tr.classList.toggle('is-lost', v.lost);
      setClass(r.status, v.lost ? 'badge lost' : 'badge present');
      setText(r.status, v.lost ? 'Lost' : 'Present');
      setText(r.note, lostNote(v));
    });
    const paintManaged = hostManaged(id);
    const renderPools = keyedRows($('#h-pools tbody'), () => {
      const tr = el('tr');
      const r = { tr, c: [] };
      for (let i = 0; i < 7; i++) { const td = el('td', i === 5 ? 'mono' : ''); r.c.push(td); tr.append(td); }
      r.status = el('span');
      r.note = el('span', 'sub');
      r.c[6].append(r.status, r.note);
      return r;
    }, (r, p) => {
      setText(r.c[0], p.name); setText(r.c[1], p.type || '—'); setText(r.c[2], p.state || '—');
      setText(r.c[3], fmtBytes(p.capacity_bytes) + ' (' + fmtBytes(p.allocation_bytes || 0) + ' allocated)'); setText(r.c[4], fmtBytes(p.available_bytes)); setText(r.c[5], p.path || '—');
      r.tr.classList.toggle('is-lost', p.lost);
      setClass(r.status, p.lost ? 'badge lost' : 'badge present');
      setText(r.status, p.lost ? 'Lost' : 'Present');
      setText(r.note, lostNote(p));
    });
    const MAX_EVENTS = 200;
    const renderEvents = eventRows($('#h-events tbody'));

    async function refresh() {
      try {
        const [n, ev, vms, pools] = await Promise.allSettled([
          api('GET', '/api/v1/nodes/' + id),
          api('GET', '/api/v1/nodes/' + id + '/events?limit=' + (MAX_EVENTS + 1)),
          api('GET', '/api/v1/vms?node_id=' + id + '&limit=1000'),
          api('GET', '/api/v1/storage-pools?node_id=' + id + '&limit=1000'),
        ]);
        if (n.status === 'rejected') {
          if (n.reason.status !== 404) throw n.reason;
          gone = true;
          $('#gone').hidden = false;
          maint.disabled = true;
          del.disabled = true;
          setClass($('#h-phase'), 'badge');
          setText($('#h-phase'), 'Not registered');
          if (!node) { setText($('#h-title'), 'Host ' + id); setText($('#crumb'), id); }
        } else {
          gone = false;
          $('#gone').hidden = true;
          paintNode(n.value.data);
        }
        if (ev.status === 'fulfilled') {
          const all = ev.value.data.events.slice().reverse();
          renderEvents(all.slice(0, MAX_EVENTS), (e) => String(e.id));
          const more = $('#events-more');
          more.hidden = all.length <= MAX_EVENTS;
          setText(more, 'Showing the latest ' + MAX_EVENTS + ' events; qx-ctl or the API (GET /api/v1/nodes/{id}/events) has them all.');
        }
        if (vms.status === 'fulfilled') {
          paintManaged(vms.value.data);
          const list = vms.value.data.vms;
          renderVMs(list, (v) => v.uuid);
          $('#vms-empty').hidden = list.length > 0;
          setText($('#vm-count'), vms.value.resp.headers.get('X-Total-Count') || list.length);
        }
        if (pools.status === 'fulfilled') {
          const list = pools.value.data.storage_pools;
          renderPools(list, (p) => p.name);
          $('#pools-empty').hidden = list.length > 0;
          setText($('#pool-count'), pools.value.resp.headers.get('X-Total-Count') || list.length);
        }
        document.body.dataset.loaded = 'true';
        clearError();
      } catch (e) {
        if (e.status !== 401) showError('Could not refresh the host: ' + e.message);
      }
    }
    const poll = poller(refresh, DETAIL_POLL_MS);

    maint.addEventListener('click', async () => {
      const on = maint.dataset.on !== 'true';
      maint.disabled = true;
      try {
        const { data } = await api('PUT', '/api/v1/nodes/' + id + '/maintenance', { maintenance: on });
        paintNode(data);
        toast(on ? data.hostname + ' is in maintenance' : data.hostname + ' left maintenance');
        poll.poke();
      } catch (e) {
        if (e.status !== 401) showError('Could not change maintenance: ' + e.message);
        maint.disabled = false;
      }
    });
    del.addEventListener('click', () => {
      if (!node || gone) return;
      setText($('#dlg-name'), node.hostname);
      dialog.returnValue = '';
      dialog.showModal();
    });
    dialog.addEventListener('close', async () => {
      if (dialog.returnValue !== 'delete' || !node) return;
      del.disabled = true;
      try {
        await api('DELETE', '/api/v1/nodes/' + id);
        location.assign('/ui/hosts?deleted=' + encodeURIComponent(node.hostname));
      } catch (e) {
        if (e.status !== 401) showError('Could not delete the host: ' + e.message);
        del.disabled = false;
      }
    });
    poll.poke();
  }

  // ---- VMs and storage pools ---------------------------------------------

  function inventoryPage(kind) {
    const defaults = { lost: '', page: '0' };
    const state = readParams(defaults);
    state.page = Math.max(0, parseInt(state.page, 10) || 0);
    const isVM = kind === 'vms';
    const ncols = 8;
    const render = keyedRows($('#inventory tbody'), () => {
      const tr = el('tr');
      const r = { tr, c: [] };
      for (let i = 0; i < ncols; i++) {
        const td = el('td', isVM ? (i === 1 ? 'mono' : (i === 4 ? 'num' : '')) : (i === 6 ? 'mono' : ''));
        r.c.push(td); tr.append(td);
      }
      r.host = el('a');
      r.c[isVM ? 2 : 1].append(r.host);
      r.status = el('span');
      r.note = el('span', 'sub');
      r.c[ncols - 1].append(r.status, r.note);
      return r;
    }, (r, x) => {
      setText(r.host, x.hostname);
      const href = '/ui/hosts/' + x.node_id;
      if (r.host.getAttribute('href') !== href) r.host.setAttribute('href', href);
      if (isVM) {
        setText(r.c[0], x.name); setText(r.c[1], x.uuid); setText(r.c[3], x.power_state);
        setText(r.c[4], x.vcpus); setText(r.c[5], fmtBytes(x.memory_bytes)); setText(r.c[6], fmtTime(x.last_seen));
      } else {
        setText(r.c[0], x.name); setText(r.c[2], x.type || '—'); setText(r.c[3], x.state || '—');
        setText(r.c[4], fmtBytes(x.capacity_bytes) + ' (' + fmtBytes(x.allocation_bytes || 0) + ' allocated)'); setText(r.c[5], fmtBytes(x.available_bytes)); setText(r.c[6], x.path || '—');
      }
      r.tr.classList.toggle('is-lost', x.lost);
      setClass(r.status, x.lost ? 'badge lost' : 'badge present');
      setText(r.status, x.lost ? 'Lost' : 'Present');
      setText(r.note, lostNote(x));
    });
    function paintTabs() {
      for (const b of $$('#lost-tabs button')) {
        const on = b.dataset.lost === state.lost;
        b.classList.toggle('active', on);
        b.setAttribute('aria-selected', on ? 'true' : 'false');
      }
    }
    let seq = 0;
    async function refresh() {
      const my = ++seq;
      const p = new URLSearchParams({ limit: PAGE_SIZE, offset: state.page * PAGE_SIZE });
      if (state.lost) p.set('lost', state.lost);
      try {
        const { data, resp } = await api('GET', (isVM ? '/api/v1/vms?' : '/api/v1/storage-pools?') + p.toString());
        if (my !== seq) return;
        const list = isVM ? data.vms : data.storage_pools;
        const total = parseInt(resp.headers.get('X-Total-Count') || String(list.length), 10);
        render(list, (x) => x.node_id + '/' + (isVM ? x.uuid : x.name));
        updatePager(state.page, list.length, total);
        $('#empty').hidden = list.length > 0;
        document.body.dataset.loaded = 'true';
        clearError();
      } catch (e) {
        if (my === seq && e.status !== 401) showError('Could not refresh: ' + e.message);
      }
    }
    const poll = poller(refresh, INVENTORY_POLL_MS);
    function changed() { writeParams(state, defaults); paintTabs(); poll.poke(); }
    for (const b of $$('#lost-tabs button')) {
      b.addEventListener('click', () => { state.lost = b.dataset.lost; state.page = 0; changed(); });
    }
    setupPager(state, changed);
    paintTabs();
    poll.poke();
  }

  // ---- Managed VMs, the VM page and images (docs/design.md §14) --------------

  const VM_POLL_MS = 2000;
  const OBSERVED = { running: 'Running', stopped: 'Stopped', paused: 'Paused', crashed: 'Crashed', error: 'Error', unknown: 'Unknown', lost: 'Lost', pending: 'Pending' };
  function setState(node, kind, state) {
    setClass(node, 'badge state-' + state);
    setText(node, (kind ? kind + ' ' : '') + (OBSERVED[state] || state));
  }
  function vmPath(ref) { return '/api/v1/vms/' + encodeURIComponent(ref); }
  async function vmAction(ref, action) {
    const { data } = await api('POST', vmPath(ref) + '/actions', { action });
    toast(data.name + ': ' + action + ' requested');
    return data;
  }

  function managedSection() {
    const render = keyedRows($('#managed tbody'), () => {
      const tr = el('tr');
      const r = { tr, c: [] };
      for (let i = 0; i < 7; i++) { const td = el('td', i === 4 ? 'num' : ''); r.c.push(td); tr.append(td); }
      r.link = el('a'); r.c[0].append(r.link);
      r.wanted = el('span'); r.c[1].append(r.wanted);
      r.obs = el('span'); r.err = el('span', 'sub'); r.c[2].append(r.obs, r.err);
      r.host = el('a'); r.c[3].append(r.host);
      r.buttons = {};
      for (const [a, label] of [['start', 'Start'], ['stop', 'Stop'], ['force-off', 'Force off'], ['reboot', 'Reboot']]) {
        const b = el('button', 'small', label);
        b.type = 'button';
        b.dataset.action = a;
        r.buttons[a] = b;
        r.c[6].append(b);
      }
      return r;
    }, (r, v) => {
      setText(r.link, v.name);
      const href = '/ui/vms/' + encodeURIComponent(v.name);
      if (r.link.getAttribute('href') !== href) r.link.setAttribute('href', href);
      setState(r.wanted, '', v.wanted);
      setState(r.obs, '', v.observed);
      setText(r.err, v.error || '');
      setText(r.host, v.hostname);
      const hh = '/ui/hosts/' + v.node_id;
      if (r.host.getAttribute('href') !== hh) r.host.setAttribute('href', hh);
      setText(r.c[4], v.spec.vcpus); setText(r.c[5], fmtBytes(v.spec.memory_bytes));
      r.buttons.start.disabled = v.wanted === 'running';
      r.buttons.stop.disabled = v.wanted === 'stopped';
      r.buttons['force-off'].disabled = v.wanted === 'stopped' && v.force_stop;
      r.buttons.reboot.disabled = v.wanted !== 'running';
      r.tr.dataset.name = v.name;
    });
    $('#managed tbody').addEventListener('click', async (ev) => {
      const b = ev.target.closest('button[data-action]');
      if (!b) return;
      b.disabled = true;
      try { await vmAction(b.closest('tr').dataset.name, b.dataset.action); clearError(); } catch (e) {
        if (e.status !== 401) showError('Could not ' + b.dataset.action + ': ' + e.message);
      }
      poll.poke();
    });
    async function refresh() {
      try {
        const { data } = await api('GET', '/api/v1/vms?limit=1');
        render(data.managed, (v) => v.uuid);
        $('#managed-empty').hidden = data.managed.length > 0;
        setText($('#managed-count'), data.managed.length);
        document.body.dataset.managedLoaded = 'true';
      } catch (e) {
        if (e.status !== 401) showError('Could not refresh the managed VMs: ' + e.message);
      }
    }
    const poll = poller(refresh, INVENTORY_POLL_MS);
    poll.poke();

    // The create form: hosts and images fill its selects when it opens.
    const card = $('#create-card');
    $('#new-vm').addEventListener('click', async () => {
      card.hidden = !card.hidden;
      if (card.hidden) return;
      try {
        const [nodes, images] = await Promise.all([api('GET', '/api/v1/nodes'), api('GET', '/api/v1/images')]);
        const fill = (sel, items, keep) => {
          const s = $(sel);
          while (s.options.length > 1) s.remove(1);
          for (const [value, label] of items) { const o = el('option', '', label); o.value = value; s.append(o); }
          s.value = keep;
        };
        fill('#vm-node', nodes.data.nodes.map((n) => [n.id, n.hostname + ' (' + (PHASES[n.phase] || n.phase) + ')']), '');
        const imgs = images.data.images;
        fill('#vm-disk', imgs.filter((i) => i.format !== 'iso').map((i) => [i.id, 'copy of ' + i.name + ' (' + fmtBytes(i.size_bytes) + ')']), '');
        fill('#vm-cdrom', imgs.filter((i) => i.format === 'iso').map((i) => [i.id, i.name]), '');
        $('#vm-name').focus();
      } catch (e) {
        if (e.status !== 401) showError('Could not load hosts and images: ' + e.message);
      }
    });
    $('#vm-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const btn = $('#create-vm');
      btn.disabled = true;
      const size = parseInt($('#vm-disk-size').value, 10) || 0;
      const disk = { size_bytes: size * 1024 * 1024 * 1024 };
      if ($('#vm-disk').value) disk.image_id = $('#vm-disk').value;
      const body = {
        name: $('#vm-name').value.trim(),
        vcpus: parseInt($('#vm-vcpus').value, 10),
        memory_bytes: parseInt($('#vm-memory').value, 10) * 1024 * 1024,
        disks: (disk.image_id || disk.size_bytes) ? [disk] : [],
        nics: [{ network: 'management' }],
        firmware: $('#vm-firmware').value,
        power: $('#vm-start').checked ? 'running' : 'stopped',
      };
      if ($('#vm-cdrom').value) body.cdrom_image_id = $('#vm-cdrom').value;
      if ($('#vm-node').value) body.node = $('#vm-node').value;
      try {
        const { data } = await api('POST', '/api/v1/vms', body);
        toast('Created ' + data.name + ' on ' + data.hostname);
        $('#vm-form').reset();
        card.hidden = true;
        clearError();
        poll.poke();
      } catch (e) {
        if (e.status !== 401) showError('Could not create the VM: ' + e.message);
      } finally {
        btn.disabled = false;
      }
    });
  }

  function vmPage() {
    const ref = document.body.dataset.vm;
    let vm = null;
    const fieldDefs = [
      ['Name', (v) => v.name], ['UUID', (v) => v.uuid], ['Host', (v) => v.hostname],
      ['Wanted', (v) => v.wanted + (v.force_stop ? ' (forced off)' : '')],
      ['Observed', (v) => v.observed + (v.error ? ': ' + v.error : '')],
      ['Generation', (v) => v.generation + ' (host applied ' + v.applied_generation + ')'],
      ['vCPUs', (v) => String(v.spec.vcpus)], ['Memory', (v) => fmtBytes(v.spec.memory_bytes)],
      ['Disks', (v) => (v.spec.disks || []).map((d) => (d.size_bytes ? fmtBytes(d.size_bytes) : 'image size') + (d.image_id ? ' copy of ' + d.image_id : ' blank')).join(', ') || '—'],
      ['CD-ROM', (v) => v.spec.cdrom_image_id || '—'],
      ['NICs', (v) => (v.spec.nics || []).map((n) => n.network + ' ' + n.mac).join(', ') || '—'],
      ['Firmware', (v) => v.spec.firmware || 'bios'],
      ['Reboots', (v) => String(v.reboot_count)],
      ['Created', (v) => fmtTime(v.created_at)], ['Updated', (v) => fmtTime(v.updated_at)],
    ];
    const dl = $('#v-fields');
    const dds = fieldDefs.map(([label]) => { const dd = el('dd'); dl.append(el('dt', '', label), dd); return dd; });
    const buttons = $$('.page-head button[data-action]');
    const del = $('#delete-btn');
    const renderEvents = eventRows($('#v-events tbody'));

    async function refresh() {
      try {
        const { data } = await api('GET', vmPath(ref));
        vm = data;
        setText($('#v-title'), vm.name); setText($('#crumb'), vm.name);
        document.title = vm.name + ' · Quantix vDC';
        setState($('#v-wanted'), 'wanted', vm.wanted);
        setState($('#v-observed'), 'observed', vm.observed);
        fieldDefs.forEach(([, f], i) => setText(dds[i], f(vm)));
        for (const b of buttons) {
          const a = b.dataset.action;
          b.disabled = (a === 'start' && vm.wanted === 'running') || (a === 'stop' && vm.wanted === 'stopped') || (a === 'reboot' && vm.wanted !== 'running');
        }
        del.disabled = false;
        const [ev, con] = await Promise.allSettled([api('GET', vmPath(vm.uuid) + '/events'), fetch(vmPath(vm.uuid) + '/console', { credentials: 'same-origin', cache: 'no-store' })]);
        if (ev.status === 'fulfilled') renderEvents(ev.value.data.events.slice().reverse(), (e) => String(e.id));
        if (con.status === 'fulfilled' && con.value.ok) {
          const text = await con.value.text();
          const pre = $('#console');
          const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          setText(pre, text || '(no console output yet)');
          if (atEnd) pre.scrollTop = pre.scrollHeight;
          const at = con.value.headers.get('X-Quantix-Console-Updated');
          setText($('#console-age'), at ? 'sent by its host ' + fmtAge(at) : '');
        }
        $('#gone').hidden = true;
        document.body.dataset.loaded = 'true';
        clearError();
      } catch (e) {
        if (e.status === 404) {
          $('#gone').hidden = false;
          buttons.forEach((b) => { b.disabled = true; });
          del.disabled = true;
          return;
        }
        if (e.status !== 401) showError('Could not refresh the VM: ' + e.message);
      }
    }
    const poll = poller(refresh, VM_POLL_MS);
    for (const b of buttons) {
      b.addEventListener('click', async () => {
        b.disabled = true;
        try { await vmAction(vm.uuid, b.dataset.action); } catch (e) {
          if (e.status !== 401) showError('Could not ' + b.dataset.action + ': ' + e.message);
        }
        poll.poke();
      });
    }
    const dialog = $('#delete-dialog');
    del.addEventListener('click', () => { if (!vm) return; setText($('#dlg-name'), vm.name); dialog.returnValue = ''; dialog.showModal(); });
    dialog.addEventListener('close', async () => {
      if (dialog.returnValue !== 'delete' || !vm) return;
      try {
        await api('DELETE', vmPath(vm.uuid) + ($('#keep-disks').checked ? '?keep_disks=1' : ''));
        location.assign('/ui/vms');
      } catch (e) {
        if (e.status !== 401) showError('Could not delete the VM: ' + e.message);
      }
    });
    poll.poke();
  }

  function imagesPage() {
    const render = keyedRows($('#images tbody'), () => {
      const tr = el('tr');
      const r = { tr, c: [] };
      for (let i = 0; i < 7; i++) { const td = el('td', i === 5 ? 'mono' : ''); r.c.push(td); tr.append(td); }
      r.del = el('button', 'small danger', 'Delete');
      r.del.type = 'button';
      r.c[6].append(r.del);
      return r;
    }, (r, i) => {
      setText(r.c[0], i.name); setText(r.c[1], i.format); setText(r.c[2], fmtBytes(i.size_bytes));
      setText(r.c[3], i.used_by + (i.used_by === 1 ? ' VM' : ' VMs')); setText(r.c[4], fmtTime(i.created_at));
      setText(r.c[5], i.sha256.slice(0, 16) + '…'); setTitle(r.c[5], i.sha256);
      r.del.disabled = i.used_by > 0;
      setTitle(r.del, i.used_by > 0 ? 'In use by VMs: delete them first' : '');
      r.tr.dataset.id = i.id;
    });
    async function refresh() {
      try {
        const { data } = await api('GET', '/api/v1/images');
        render(data.images, (i) => i.id);
        $('#images-empty').hidden = data.images.length > 0;
        setText($('#img-count'), data.images.length);
        document.body.dataset.loaded = 'true';
        clearError();
      } catch (e) {
        if (e.status !== 401) showError('Could not refresh the images: ' + e.message);
      }
    }
    const poll = poller(refresh, INVENTORY_POLL_MS);
    $('#images tbody').addEventListener('click', async (ev) => {
      const b = ev.target.closest('button');
      if (!b) return;
      try { await api('DELETE', '/api/v1/images/' + b.closest('tr').dataset.id); toast('Image deleted'); } catch (e) {
        if (e.status !== 401) showError('Could not delete the image: ' + e.message);
      }
      poll.poke();
    });
    $('#upload-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const file = $('#img-file').files[0];
      if (!file) return;
      const name = $('#img-name').value.trim() || file.name;
      let format = $('#img-format').value;
      if (!format) format = /\.iso$/i.test(file.name) ? 'iso' : (/\.qcow2$/i.test(file.name) ? 'qcow2' : 'raw');
      const bar = $('#upload-progress');
      const btn = $('#upload-btn');
      bar.hidden = false; bar.value = 0; btn.disabled = true;
      // XMLHttpRequest, not fetch: it reports upload progress.
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/api/v1/images?' + new URLSearchParams({ name, format }).toString());
      xhr.setRequestHeader('X-CSRF-Token', csrfToken());
      xhr.setRequestHeader('Content-Type', 'application/octet-stream');
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) { bar.value = Math.floor(100 * e.loaded / e.total); setText($('#upload-text'), fmtBytes(e.loaded) + ' of ' + fmtBytes(e.total)); }
      };
      xhr.onloadend = () => {
        btn.disabled = false;
        bar.hidden = true;
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (xhr.status === 201) {
          setText($('#upload-text'), 'Uploaded ' + data.name + ', sha256 ' + data.sha256);
          $('#upload-form').reset();
          clearError();
          document.body.dataset.uploaded = 'true';
        } else {
          setText($('#upload-text'), '');
          showError('Could not upload the image: ' + ((data && data.error) || xhr.statusText || 'the vDC is not reachable'));
        }
        poll.poke();
      };
      xhr.send(file);
    });
    poll.poke();
  }

  // hostManaged fills the host page's table of the managed VMs placed on it.
  function hostManaged(id) {
    const render = keyedRows($('#h-managed tbody'), () => {
      const tr = el('tr');
      const r = { tr, c: [] };
      for (let i = 0; i < 5; i++) { const td = el('td', i === 3 ? 'num' : ''); r.c.push(td); tr.append(td); }
      r.link = el('a'); r.c[0].append(r.link);
      r.wanted = el('span'); r.c[1].append(r.wanted);
      r.obs = el('span'); r.c[2].append(r.obs);
      return r;
    }, (r, v) => {
      setText(r.link, v.name);
      const href = '/ui/vms/' + encodeURIComponent(v.name);
      if (r.link.getAttribute('href') !== href) r.link.setAttribute('href', href);
      setState(r.wanted, '', v.wanted); setState(r.obs, '', v.observed);
      setText(r.c[3], v.spec.vcpus); setText(r.c[4], fmtBytes(v.spec.memory_bytes));
    });
    return (data) => {
      render(data.managed, (v) => v.uuid);
      $('#managed-empty').hidden = data.managed.length > 0;
      setText($('#managed-count'), data.managed.length);
    };
  }

  // ---- Join tokens -----------------------------------------------------------

  function tokensPage() {
    const form = $('#token-form');
    const result = $('#token-result');
    const urlInput = $('#vdc-url');
    let token = '';
    urlInput.value = document.body.dataset.agentUrl || '';

    function tomlString(s) { return JSON.stringify(s); }
    function paint() {
      const url = urlInput.value.trim();
      setText($('#token-value'), token);
      setText($('#cmdline'), 'quantix.vdc=' + url + ' quantix.token=' + token);
      setText($('#agent-toml'), 'control_plane = ' + tomlString(url) + '\njoin_token = ' + tomlString(token) + '\n');
    }
    urlInput.addEventListener('input', paint);
    api('GET', '/api/v1/agent-ca').then(({ data }) => {
      setText($('#ca-pin'), data.join_token_pin);
      if (data.warning) {
        setText($('#ca-warning'), data.warning);
        $('#ca-warning').hidden = false;
      }
    }).catch(() => {});

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const btn = $('#create-token');
      btn.disabled = true;
      try {
        const body = {
          ttl_seconds: parseInt($('#ttl').value, 10),
          uses: parseInt($('#uses').value, 10),
          description: $('#description').value.trim(),
        };
        const { data } = await api('POST', '/api/v1/join-tokens', body);
        token = data.token;
        setText($('#token-meta'), 'Expires ' + fmtTime(data.expires_at) + ' · ' + data.uses_left + (data.uses_left === 1 ? ' use' : ' uses') + (data.description ? ' · ' + data.description : ''));
        paint();
        result.hidden = false;
        form.reset();
        clearError();
        document.body.dataset.created = 'true';
      } catch (e) {
        if (e.status !== 401) showError('Could not create the token: ' + e.message);
      } finally {
        btn.disabled = false;
      }
    });

    for (const b of $$('[data-copy]')) {
      b.addEventListener('click', async () => {
        const text = $(b.dataset.copy).textContent;
        try {
          await navigator.clipboard.writeText(text);
        } catch (e) {
          const r = document.createRange();
          r.selectNodeContents($(b.dataset.copy));
          const s = getSelection();
          s.removeAllRanges();
          s.addRange(r);
          document.execCommand('copy');
        }
        setText(b, 'Copied');
        setTimeout(() => setText(b, 'Copy'), 1500);
      });
    }
  }

  const pages = {
    hosts: hostsPage, host: hostPage, vms: () => { managedSection(); inventoryPage('vms'); }, vm: vmPage, images: imagesPage,
    pools: () => inventoryPage('pools'), tokens: tokensPage, upgrades: upgradesPage,
  };
  const start = pages[document.body.dataset.page];
  if (start) start();
})();
