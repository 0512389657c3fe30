// Umbra web chat. Talks to `umbra daemon` only through its WebSocket JSON API
// (docs/api.md). Everything other people send us (names, text, file names) is
// untrusted: the DOM is built with textContent, never innerHTML.
'use strict';

// ---------------------------------------------------------------- constants

const LS = { token: 'umbra.token', name: 'umbra.name', contacts: 'umbra.contacts', groups: 'umbra.groups', outbox: 'umbra.outbox' };
const HIST_PREFIX = 'umbra.hist.';
const HIST_KEEP = 200;                  // messages kept per conversation offline
const CHUNK = 192 * 1024;               // upload chunk (the API takes ≤ 256 KiB)
const MAX_FILE = 8 * 1024 * 1024;       // the daemon's upload limit
const PIC_SIDE = 1600, PIC_BYTES = 400 * 1000;
const THUMB_SIDE = 96, THUMB_BYTES = 8 * 1024;
const STATUS_TEXT = { queued: '🕓 Queued', sent: '✓ Sent', stored: '✓✓ Stored', read: '✓✓ Read' };
const FAILED_WHY = { failed_attempts: 'gave up after repeated attempts', failed_expired: 'expired before it could be delivered',
  failed_refused: 'refused by the network', failed_undecryptable: 'the recipient could not decrypt it' };
const PREVIEW = { image: 'a picture', audio: 'a voice note', file: 'a file' };

// -------------------------------------------------------------------- state

const state = {
  token: null, ws: null, connected: false, backoff: 1000, retryTimer: null, refused: 0,
  nextId: 1, pending: new Map(),       // request id -> {resolve, reject, quiet}
  helloName: '', me: null,
  contacts: [], groups: [], network: null,
  hist: new Map(),                     // conversation key -> messages by seq
  seqConv: new Map(),                  // seq -> conversation key (for status events)
  noOlder: new Set(),                  // conversations whose start we reached
  outbox: [],                          // texts written offline, sent in order later
  uploads: [],                         // attachments being uploaded (local bubbles)
  open: null,                          // {contact:id} or {group:id}
  blobs: new Map(),                    // seq -> Promise<blob URL>
  progress: new Map(),                 // seq -> {bytes, total}
};

// ------------------------------------------------------------------ helpers

const $ = (id) => document.getElementById(id);
const noop = () => {};

// Builds an element; strings become text nodes, so untrusted text stays text.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c != null && c !== false) e.append(c);
  return e;
}

function loadJson(key, fallback) {
  try { const v = localStorage.getItem(key); return v == null ? fallback : JSON.parse(v); } catch { return fallback; }
}
function saveJson(key, value) {
  try { localStorage.setItem(key, JSON.stringify(value)); return true; } catch { return false; }
}

const convKey = (c) => (c.contact ? 'c:' + c.contact : 'g:' + c.group);
const sameConv = (a, b) => !!a && !!b && convKey(a) === convKey(b);
const target = (c) => (c.contact ? { to: c.contact } : { group: c.group });
const isFailed = (s) => typeof s === 'string' && s.startsWith('failed');
const shortId = (id) => (id ? String(id).slice(0, 8) + '…' : '?');
const narrow = () => window.matchMedia('(max-width: 699px)').matches;

const fmtSize = (n) => (!(n >= 0) ? '' : n < 1024 ? n + ' B'
  : n < 1048576 ? (n / 1024).toFixed(0) + ' KiB' : (n / 1048576).toFixed(1) + ' MiB');
function fmtDuration(ms) {
  const s = Math.floor((ms || 0) / 1000);
  return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
}
function fmtTime(ms) {
  const d = new Date(ms), now = new Date();
  const t = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toDateString() === now.toDateString() ? t : d.toLocaleDateString() + ' ' + t;
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).replace(/^data:[^,]*,/, ''));
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}
function base64ToBlob(data, type) {
  const bin = atob(data || '');
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Blob([bytes], { type });
}

// Blob URLs share our origin, so an HTML or SVG "picture" opened in a tab could
// run script here: only let through types that cannot.
function safeMime(kind, mime) {
  mime = String(mime || '').toLowerCase();
  if (kind === 'image' && /^image\/(jpeg|png|gif|webp|avif|bmp)$/.test(mime)) return mime;
  if (kind === 'audio' && /^audio\/[a-z0-9.+-]+(;.*)?$/.test(mime)) return mime;
  return 'application/octet-stream';
}

let toastTimer = null;
function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 7000);
}

// Re-set after a frame so screen readers announce repeated texts too.
function announce(text) {
  const l = $('live');
  l.textContent = '';
  requestAnimationFrame(() => { l.textContent = text; });
}

class ApiError extends Error {
  constructor(e) {
    super((e && e.message) || (e && e.code) || 'request failed');
    Object.assign(this, e || {});
    this.code = (e && e.code) || 'error';
  }
}
function errorText(e) {
  const m = e.message || e.code;
  return e.fault === 'bug' ? m + ' (this is a bug in the daemon: please report it)' : m;
}

// -------------------------------------------------------------- connection

function connect() {
  clearTimeout(state.retryTimer);
  if (!state.token || state.ws) return;
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  let ws;
  try {
    ws = new WebSocket(`${proto}://${location.host}/v1/ws?token=${encodeURIComponent(state.token)}`);
  } catch { scheduleReconnect(); return; }
  state.ws = ws;
  let opened = false;
  ws.onopen = () => { opened = true; state.refused = 0; };
  ws.onmessage = (ev) => { if (ws === state.ws) onFrame(ev.data); };
  ws.onclose = () => {
    if (ws !== state.ws) return;
    state.ws = null;
    setConnected(false);
    failPending();
    scheduleReconnect();
    if (!opened) checkRefused();
  };
}

// A refused upgrade looks like a daemon that is down. If the daemon answers
// plain HTTP, it refused us: a token from another daemon, or one replaced.
async function checkRefused() {
  try { await fetch('/v1/ws', { cache: 'no-store' }); } catch { state.refused = 0; return; }
  if (++state.refused < 2 || !$('token-screen').hidden) return;
  showTokenScreen();
  $('token-error').textContent = 'The daemon refused this token (its token file was replaced, or this is another daemon): open the address it printed.';
}

function scheduleReconnect() {
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, state.backoff);
  state.backoff = Math.min(state.backoff * 2, 10000);
}

function reconnectNow() {
  if (state.ws || !state.token) return;
  state.backoff = 1000;
  connect();
}

function failPending() {
  const had = state.pending.size;
  for (const p of state.pending.values()) {
    p.reject(new ApiError({ code: 'disconnected', fault: 'network', message: 'The connection to the daemon was lost' }));
  }
  state.pending.clear();
  if (had) toast('The connection to the daemon was lost; it will come back by itself.');
}

function setConnected(on) {
  if (state.connected === on) return;
  state.connected = on;
  const c = $('conn');
  c.textContent = on ? 'connected' : 'offline';
  c.className = 'conn ' + (on ? 'online' : 'offline');
  announce(on ? 'Connected to the daemon' : 'Offline: the daemon is not reachable');
  renderNetwork();
  updateOlderButton();
}

// Sends one request; the promise settles with the reply's result or an ApiError.
// Failures are toasted unless `quiet` (true or a predicate) says the caller shows them.
const isQuiet = (q, e) => q === true || (typeof q === 'function' && q(e));
function request(op, args = {}, opts = {}) {
  return new Promise((resolve, reject) => {
    const quiet = opts.quiet;
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      const e = new ApiError({ code: 'offline', fault: 'network', message: 'Not connected to the daemon' });
      if (!isQuiet(quiet, e)) toast(e.message);
      return reject(e);
    }
    const id = state.nextId++;
    state.pending.set(id, { resolve, reject, quiet });
    state.ws.send(JSON.stringify({ id, op, ...args }));
  });
}

function onFrame(text) {
  let f;
  try { f = JSON.parse(text); } catch { return; }
  if (f && 'reply' in f) return onReply(f);
  switch (f && f.event) {
    case 'hello': return onHello(f);
    case 'message': return f.message && onMessage(f.message);
    case 'status': return onStatus(f);
    case 'progress': return onProgress(f);
    case 'contacts': return setContacts(f.contacts || []);
    case 'groups': return setGroups(f.groups || []);
    case 'network': state.network = f.network; return renderNetwork();
  }
}

function onReply(f) {
  const p = f.reply != null ? state.pending.get(f.reply) : null;
  if (!p) return f.ok || toast(errorText(f.error || {}));
  state.pending.delete(f.reply);
  if (f.ok) return p.resolve(f.result || {});
  const e = new ApiError(f.error);
  if (!isQuiet(p.quiet, e)) toast(errorText(e));
  p.reject(e);
}

async function onHello(f) {
  if (f.api !== 1) toast(`This page speaks API 1 but the daemon speaks API ${f.api}: reload the page.`);
  state.me = f.me;
  state.helloName = f.name || '';
  state.backoff = 1000;
  setConnected(true);
  if (!localStorage.getItem(LS.name)) askName();
  const [c, g, n] = await Promise.allSettled([request('contacts'), request('groups'), request('network')]);
  if (c.status === 'fulfilled') setContacts(c.value.contacts || []);
  if (g.status === 'fulfilled') setGroups(g.value.groups || []);
  if (n.status === 'fulfilled') { state.network = n.value.network || n.value; renderNetwork(); }
  await flushOutbox();
  if (state.open) {
    renderMessages();            // retries attachments that failed while offline
    await loadHistory(state.open);
    markReadSoon();
  }
  prefetchHistories();
}

// ----------------------------------------------------- history and storage

function histOf(key) {
  let list = state.hist.get(key);
  if (!list) {
    list = loadJson(HIST_PREFIX + key, []);
    if (!Array.isArray(list)) list = [];
    state.hist.set(key, list);
    for (const m of list) state.seqConv.set(m.seq, key);
  }
  return list;
}

// Inserts or replaces a message by seq; returns true if the seq is new here.
function putMessage(m) {
  if (!m || !Number.isFinite(m.seq) || !m.conversation) return false;
  const key = convKey(m.conversation);
  const list = histOf(key);
  state.seqConv.set(m.seq, key);
  let i = list.length - 1;
  while (i >= 0 && list[i].seq > m.seq) i--;
  const isNew = !(i >= 0 && list[i].seq === m.seq);
  if (isNew) list.splice(i + 1, 0, m);
  else list[i] = Object.assign({}, m, { _retried: list[i]._retried });
  const conv = findConv(m.conversation);
  if (conv && m.seq > (conv.last_seq || 0)) {
    conv.last_seq = m.seq;
    // Counted here until the daemon's own counts arrive (its groups event may not carry them).
    if (isNew && !m.outgoing && !(sameConv(state.open, m.conversation) && chatVisible())) conv.unread = (conv.unread || 0) + 1;
  }
  scheduleSave(key);
  return isNew;
}

const dirty = new Set();
let saveTimer = null;
function scheduleSave(key) {
  dirty.add(key);
  if (!saveTimer) saveTimer = setTimeout(flushSaves, 500);
}
function flushSaves() {
  saveTimer = null;
  for (const key of dirty) {
    const keep = histOf(key).slice(-HIST_KEEP);
    if (saveJson(HIST_PREFIX + key, keep)) continue;
    // Storage full: keep only the newest thumbnails rather than lose the history.
    const lean = keep.map((m, i) => (i < keep.length - 20 && m.attachment
      ? { ...m, attachment: { ...m.attachment, thumbnail: null } } : m));
    if (!saveJson(HIST_PREFIX + key, lean)) console.warn('umbra: local storage is full; history not saved');
  }
  dirty.clear();
}

async function loadHistory(conv, before) {
  let r;
  try {
    r = await request('history', before ? { conversation: conv, before, limit: 50 } : { conversation: conv, limit: 50 },
      { quiet: (e) => e.code === 'disconnected' || e.code === 'offline' });
  } catch { return 0; }
  const msgs = r.messages || [];
  for (const m of msgs) putMessage(m);
  if (before && msgs.length === 0) state.noOlder.add(convKey(conv));
  if (sameConv(state.open, conv)) {
    if (before) renderMessages({ keepOffset: true });
    else for (const m of msgs) upsertBubble(m);
    updateOlderButton();
  }
  renderLists();
  return msgs.length;
}

// Fetches conversations that have news, so they can be read offline later.
async function prefetchHistories() {
  const convs = [...state.contacts.map((c) => ({ contact: c.id, last: c.last_seq })),
    ...state.groups.map((g) => ({ group: g.id, last: g.last_seq }))];
  for (const c of convs) {
    if (!state.connected) return;
    const list = histOf(convKey(c));
    const have = list.length ? list[list.length - 1].seq : 0;
    if ((c.last || 0) > have && !sameConv(c, state.open)) {
      await loadHistory(c.contact ? { contact: c.contact } : { group: c.group });
    }
  }
}

// ------------------------------------------------------------------ events

function onMessage(m) {
  const isNew = putMessage(m);
  const open = sameConv(state.open, m.conversation);
  if (open) upsertBubble(m);
  if (isNew && !m.outgoing) {
    const who = senderName(m);
    if (open && chatVisible()) { announce(`${who}: ${preview(m)}`); markReadSoon(); }
    else announce(`New message from ${who}`);
    notify(m, who);
  }
  renderLists();
}

function onStatus(f) {
  const key = state.seqConv.get(f.seq);
  if (!key) return;
  const list = histOf(key);
  const m = list.find((x) => x.seq === f.seq);
  if (!m) return;
  m.status = f.status;
  scheduleSave(key);
  if (state.open && convKey(state.open) === key) upsertBubble(m);
  if (isFailed(f.status)) announce('A message could not be delivered');
}

function onProgress(f) {
  state.progress.set(f.seq, { bytes: f.bytes, total: f.total });
  const li = bubbleEl(f.seq);
  const key = state.seqConv.get(f.seq);
  const m = key && histOf(key).find((x) => x.seq === f.seq);
  if (li && m) applyProgress(li, m);
}

function findConv(conv) {
  return conv.contact ? state.contacts.find((c) => c.id === conv.contact) : state.groups.find((g) => g.id === conv.group);
}

function setContacts(list) { state.contacts = list; saveJson(LS.contacts, list); afterListChange(); }
function setGroups(list) { state.groups = list; saveJson(LS.groups, list); afterListChange(); }
// A reply's contact or group, merged in before the daemon's own list event comes.
function upsertIn(arr, obj) {
  const i = arr.findIndex((x) => x.id === obj.id);
  if (i >= 0) arr[i] = obj; else arr.push(obj);
}
const putContact = (c) => { if (c && c.id) { upsertIn(state.contacts, c); setContacts(state.contacts); } return c; };
const putGroup = (g) => { if (g && g.id) { upsertIn(state.groups, g); setGroups(state.groups); } return g; };

function afterListChange() {
  if (state.open && !findConv(state.open) && state.connected) closeChat();
  renderLists();
  if (state.open) renderChatHeader();
  if ($('members-dialog').open) renderMembers();
}

// ------------------------------------------------------------------- lists

function renderLists() {
  renderList($('contacts'), $('contacts-empty'), state.contacts, 'contact');
  renderList($('groups'), $('groups-empty'), state.groups, 'group');
  const total = [...state.contacts, ...state.groups].reduce((n, c) => n + (c.unread > 0 ? c.unread : 0), 0);
  document.title = total > 0 ? `(${total}) Umbra` : 'Umbra';
}

function renderList(ul, empty, items, kind) {
  const sorted = [...items].sort((a, b) => (b.last_seq || 0) - (a.last_seq || 0)
    || String(a.name).localeCompare(String(b.name)));
  const focused = document.activeElement && ul.contains(document.activeElement) ? document.activeElement.dataset.id : null;
  ul.replaceChildren(...sorted.map((c) => {
    const current = state.open && state.open[kind] === c.id;
    const b = el('button', { type: 'button', class: 'conv', 'aria-current': current ? 'true' : null },
      el('span', { class: 'avatar', 'aria-hidden': 'true' }, (c.name || '?').trim().slice(0, 1).toUpperCase() || '?'),
      el('span', { class: 'name' }, c.name || shortId(c.id)),
      kind === 'contact' && c.verified ? el('span', { class: 'verified-mark' }, '✓ verified') : null,
      c.unread > 0 ? el('span', { class: 'unread' }, String(c.unread)) : null,
      c.unread > 0 ? el('span', { class: 'vh' }, ' unread') : null);
    b.dataset.id = c.id;
    b.dataset.kind = kind;
    b.addEventListener('click', () => openChat(kind === 'contact' ? { contact: c.id } : { group: c.id }));
    return el('li', null, b);
  }));
  empty.hidden = items.length > 0;
  if (focused) { const b = ul.querySelector(`button[data-id="${CSS.escape(focused)}"]`); if (b) b.focus(); }
}

// -------------------------------------------------------------------- chat

const chatVisible = () => document.visibilityState === 'visible' && !!state.open;

function openChat(conv) {
  const changed = !sameConv(state.open, conv);
  state.open = conv;
  document.body.classList.add('show-chat');
  $('chat-empty').hidden = true;
  $('chat-main').hidden = false;
  if (narrow() && !(history.state && history.state.chat)) history.pushState({ chat: true }, '');
  renderChatHeader();
  if (changed) renderMessages();
  renderLists();
  if (!narrow()) $('text-input').focus();
  if (state.connected) loadHistory(conv).then(() => markReadSoon());
}

function closeChat() {
  state.open = null;
  document.body.classList.remove('show-chat');
  $('chat-main').hidden = true;
  $('chat-empty').hidden = false;
  $('messages').replaceChildren();
  for (const id of ['verify-dialog', 'members-dialog']) if ($(id).open) $(id).close();
  renderLists();
}

function goBack() {
  if (history.state && history.state.chat) history.back(); // popstate closes the chat
  else closeChat();
}

function renderChatHeader() {
  const conv = state.open;
  if (!conv) return;
  const c = findConv(conv);
  $('chat-title').textContent = c ? c.name || shortId(c.id) : shortId(conv.contact || conv.group);
  $('chat-verified').hidden = !(conv.contact && c && c.verified);
  $('verify-open').hidden = !conv.contact;
  $('members-open').hidden = !conv.group;
}

let readTimer = null;
function markReadSoon() {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    const conv = state.open;
    if (!conv || !chatVisible() || !state.connected) return;
    if (narrow() && !document.body.classList.contains('show-chat')) return;
    const c = findConv(conv);
    if (c && c.unread) { c.unread = 0; renderLists(); }
    request('mark_read', { conversation: conv }, { quiet: (e) => e.fault === 'network' }).catch(noop);
  }, 300);
}

// Your own name for a contact first. Anyone else in a group is shown by
// the name the member who added them gave, with the start of their key:
// that name is someone else's choice, and two members may share it.
function memberName(id, given) {
  const c = state.contacts.find((x) => x.id === id);
  if (c) return c.name || shortId(id);
  return given ? `${given} (${shortId(id)})` : shortId(id);
}

function senderName(m) {
  if (m.outgoing) return 'You';
  const g = m.conversation.group && state.groups.find((x) => x.id === m.conversation.group);
  const mem = g && (g.members || []).find((x) => x.id === m.from);
  return memberName(m.from, mem && mem.name);
}

const preview = (m) => PREVIEW[m.kind] || (m.text == null ? 'a message' : String(m.text).slice(0, 120));

const nearBottom = () => { const s = $('scroller'); return s.scrollHeight - s.scrollTop - s.clientHeight < 120; };
const scrollToEnd = () => { const s = $('scroller'); s.scrollTop = s.scrollHeight; };
const bubbleEl = (seq) => $('messages').querySelector(`li[data-seq="${Number(seq)}"]`);

// Full redraw of the open conversation: history, then texts queued offline and uploads.
function renderMessages(opts = {}) {
  const conv = state.open;
  if (!conv) return;
  const s = $('scroller');
  const fromBottom = s.scrollHeight - s.scrollTop;
  const key = convKey(conv);
  const nodes = histOf(key).map(bubble);
  for (const o of state.outbox) if (convKey(o.conversation) === key) nodes.push(outboxBubble(o));
  for (const u of state.uploads) if (convKey(u.conversation) === key) nodes.push(uploadBubble(u));
  $('messages').replaceChildren(...nodes);
  updateOlderButton();
  if (opts.keepOffset) s.scrollTop = s.scrollHeight - fromBottom; else scrollToEnd();
}

function updateOlderButton() {
  const b = $('load-older');
  b.hidden = !(state.open && state.connected && !state.noOlder.has(convKey(state.open))
    && histOf(convKey(state.open)).length >= 20);
}

// Inserts a bubble in seq order, or updates it in place (the same seq again).
function upsertBubble(m) {
  const old = bubbleEl(m.seq);
  if (old) {
    if (old.dataset.hasData !== String(!!m.has_data) || old.dataset.kind !== m.kind) old.replaceWith(bubble(m));
    else updateMeta(old, m);
    return;
  }
  const atEnd = nearBottom();
  const next = [...$('messages').children].find((li) => !li.dataset.seq || Number(li.dataset.seq) > m.seq);
  $('messages').insertBefore(bubble(m), next || null);
  if (atEnd || m.outgoing) scrollToEnd();
}

function bubble(m) {
  const li = el('li', { class: 'bubble ' + (m.outgoing ? 'out' : 'in') });
  li.dataset.seq = m.seq;
  li.dataset.kind = m.kind;
  li.dataset.hasData = String(!!m.has_data);
  if (m.conversation.group && !m.outgoing) li.append(el('div', { class: 'sender' }, senderName(m)));
  li.append(bubbleBody(m));
  const t = Number.isFinite(m.time_ms) ? el('time', { datetime: new Date(m.time_ms).toISOString() }, fmtTime(m.time_ms)) : null;
  li.append(el('div', { class: 'meta' }, t));
  updateMeta(li, m);
  return li;
}

function updateMeta(li, m) {
  const meta = li.querySelector('.meta');
  meta.querySelectorAll('.status, .retry').forEach((x) => x.remove());
  if (m.outgoing) {
    const st = m.status || 'queued';
    const s = el('span', { class: 'status', title: FAILED_WHY[st] || null },
      STATUS_TEXT[st] || (isFailed(st) ? '⚠ Failed' : st));
    s.dataset.status = st;
    meta.append(s);
    if (isFailed(st) && !m._retried) meta.append(el('button', { type: 'button', class: 'retry', onclick: () => retry(m) }, 'Retry'));
  }
  applyProgress(li, m);
}

// A <progress> while a multi-fragment transfer runs; gone once it is done.
function applyProgress(li, m) {
  const p = state.progress.get(m.seq);
  const done = m.outgoing ? ['stored', 'read'].includes(m.status) || isFailed(m.status) : !!m.has_data;
  let bar = li.querySelector('progress.progress');
  if (!p || done) {
    if (bar) bar.remove();
    if (done) state.progress.delete(m.seq);
    return;
  }
  if (!bar) {
    bar = el('progress', { class: 'progress', 'aria-label': m.outgoing ? 'Sending' : 'Receiving' });
    li.insertBefore(bar, li.querySelector('.meta'));
  }
  bar.max = p.total || 1;
  bar.value = p.bytes || 0;
}

function bubbleBody(m) {
  const a = m.attachment || {};
  const have = m.has_data || state.blobs.has(m.seq);   // our own sends keep their data here
  const coming = have || m.outgoing ? null : el('div', { class: 'hint' }, 'On its way…');
  if (m.kind === 'image') {
    const img = el('img', { alt: a.name ? `Picture ${a.name}` : 'Picture', class: 'pic thumb', width: a.width || null, height: a.height || null });
    if (a.thumbnail && /^[A-Za-z0-9+/=]+$/.test(a.thumbnail)) img.src = 'data:image/jpeg;base64,' + a.thumbnail;
    img.addEventListener('load', () => { if (nearBottom()) scrollToEnd(); });
    const btn = el('button', { type: 'button', class: 'pic-btn', 'aria-label': 'Open picture full size' }, img);
    btn.addEventListener('click', () => openViewer(img.src, img.alt));
    if (have) attachmentUrl(m).then((url) => { img.src = url; img.classList.remove('thumb'); }, noop);
    return el('div', { class: 'body' }, btn, coming);
  }
  if (m.kind === 'audio') {
    const voice = !a.name || a.name.startsWith('voice-note');
    const label = (voice ? '🎤 Voice note' : '🎵 ' + a.name) + (a.duration_ms ? ' · ' + fmtDuration(a.duration_ms) : '');
    const audio = have ? el('audio', { controls: true, preload: 'metadata' }) : null;
    if (audio) attachmentUrl(m).then((url) => { audio.src = url; }, noop);
    return el('div', { class: 'body audio' }, el('div', null, label), audio, coming);
  }
  if (m.kind === 'file') {
    const label = `📎 ${a.name || 'file'} (${fmtSize(a.size)})`;
    if (!have) return el('div', { class: 'body' }, label, coming);
    const link = el('a', { class: 'file-link', href: '#', download: a.name || 'file' }, label);
    const ready = (url) => { link.href = url; link.dataset.ready = '1'; };
    if (state.blobs.has(m.seq)) attachmentUrl(m).then(ready, noop);
    // Files are fetched only when asked for: they can be large.
    link.addEventListener('click', (ev) => {
      if (link.dataset.ready) return;
      ev.preventDefault();
      attachmentUrl(m).then((url) => { ready(url); link.click(); }, noop);
    });
    return el('div', { class: 'body' }, link);
  }
  const text = m.text == null ? '(a binary message that is not text)' : String(m.text);
  return el('div', { class: 'body text' + (m.text == null ? ' hint' : '') }, text);
}

// Fetches an attachment's data once per seq, two at a time.
let fetching = 0;
const fetchWaiters = [];
async function limited(fn) {
  while (fetching >= 2) await new Promise((r) => fetchWaiters.push(r));
  fetching++;
  try { return await fn(); } finally { fetching--; const w = fetchWaiters.shift(); if (w) w(); }
}
function attachmentUrl(m) {
  let p = state.blobs.get(m.seq);
  if (!p) {
    const quiet = (e) => ['not_arrived', 'offline', 'disconnected'].includes(e.code);
    p = limited(() => request('attachment', { seq: m.seq }, { quiet }))
      .then((r) => URL.createObjectURL(base64ToBlob(r.data, safeMime(m.kind, r.mime || (m.attachment || {}).mime))));
    p.catch(() => state.blobs.delete(m.seq));
    state.blobs.set(m.seq, p);
  }
  return p;
}

function openViewer(src, alt) {
  if (!src) return;
  Object.assign($('viewer-img'), { src, alt: alt || 'Picture' });
  $('viewer').showModal();
}

async function retry(m) {
  try {
    const r = await request('retry', { seq: m.seq });
    // The bubble may hold an older copy: mark the one in the history.
    const key = convKey(m.conversation);
    const cur = histOf(key).find((x) => x.seq === m.seq) || m;
    cur._retried = true;
    scheduleSave(key);
    if (sameConv(state.open, m.conversation)) upsertBubble(cur);
    if (r.message) onMessage(r.message);
  } catch { /* toasted */ }
}

// ------------------------------------------------------------ sending text

async function sendText() {
  const ta = $('text-input');
  const text = ta.value;
  const conv = state.open;
  if (!conv || !text.trim()) return;
  ta.value = '';
  autosize();
  if (!state.connected) return queueOffline(conv, text);
  try {
    const r = await request('send_text', { ...target(conv), text }, { quiet: (e) => e.code === 'offline' });
    if (r.message) onMessage(r.message);
  } catch (e) {
    if (e.code === 'offline') queueOffline(conv, text);
    else if (!ta.value) { ta.value = text; autosize(); } // let the user try again
  }
}

function queueOffline(conv, text) {
  const item = { lid: 'q' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6), conversation: conv, text, time_ms: Date.now() };
  state.outbox.push(item);
  saveJson(LS.outbox, state.outbox);
  if (sameConv(state.open, conv)) { $('messages').append(outboxBubble(item)); scrollToEnd(); }
  announce('Offline: the message is queued and will be sent when the daemon is back');
}

function outboxBubble(o) {
  const st = el('span', { class: 'status' }, '🕓 queued (offline)');
  st.dataset.status = 'queued-offline';
  const li = el('li', { class: 'bubble out local' }, el('div', { class: 'body text' }, o.text),
    el('div', { class: 'meta' }, el('time', null, fmtTime(o.time_ms)), st));
  li.dataset.local = o.lid;
  return li;
}

// Sends what was written offline, in order; stops at the first network trouble.
let flushing = false;
async function flushOutbox() {
  if (flushing) return;
  flushing = true;
  try {
    while (state.outbox.length && state.connected) {
      const o = state.outbox[0];
      let r = null, err = null;
      try {
        r = await request('send_text', { ...target(o.conversation), text: o.text }, { quiet: (e) => e.fault === 'network' });
      } catch (e) { err = e; }
      if (err && err.fault === 'network') { if (state.connected) setTimeout(flushOutbox, 10000); break; }
      state.outbox.shift();
      saveJson(LS.outbox, state.outbox);
      const li = $('messages').querySelector(`li[data-local="${o.lid}"]`);
      // Refused for good (toasted): the bubble stays, marked, so the text is not lost from view.
      if (err && li) { const st = li.querySelector('.status'); st.textContent = '⚠ Not sent'; st.dataset.status = 'failed_local'; }
      else if (li) li.remove();
      if (r && r.message) onMessage(r.message);
    }
  } finally { flushing = false; }
}

// ------------------------------------------------------------- attachments

async function uploadBlob(blob, onProgress) {
  let id = null, off = 0;
  do {
    const data = await blobToBase64(blob.slice(off, off + CHUNK));
    const r = await request('upload', id ? { upload: id, data } : { data });
    id = r.upload;
    off += CHUNK;
    onProgress(Math.min(off, blob.size));
  } while (off < blob.size);
  return id;
}

function uploadBubble(u) {
  const body = u.thumbUrl
    ? el('div', { class: 'body' }, el('img', { class: 'pic', src: u.thumbUrl, alt: 'Picture being sent', width: u.width || null, height: u.height || null }))
    : el('div', { class: 'body' }, (u.kind === 'audio' ? '🎤 ' : '📎 ') + u.name);
  const st = el('span', { class: 'status' }, 'Uploading…');
  st.dataset.status = 'uploading';
  const li = el('li', { class: 'bubble out local' }, body,
    el('progress', { class: 'progress', max: u.total || 1, value: u.sent, 'aria-label': 'Uploading' }),
    el('div', { class: 'meta' }, st));
  li.dataset.local = u.lid;
  return li;
}

// Uploads in chunks, then sends; shows a local bubble meanwhile.
async function sendAttachment(conv, a) {
  if (!state.connected) { toast('Offline: pictures, voice notes and files can be sent when the daemon is back.'); return; }
  if (a.blob.size > MAX_FILE) { toast(`${a.name} is too large: at most 8 MiB can be sent.`); return; }
  const u = { lid: 'u' + Date.now().toString(36) + Math.random().toString(36).slice(2, 6), conversation: conv,
    kind: a.kind, name: a.name, thumbUrl: a.thumbUrl, width: a.width, height: a.height, sent: 0, total: a.blob.size };
  state.uploads.push(u);
  if (sameConv(state.open, conv)) { $('messages').append(uploadBubble(u)); scrollToEnd(); }
  let msg = null;
  try {
    const upload = await uploadBlob(a.blob, (sent) => {
      u.sent = sent;
      const bar = $('messages').querySelector(`li[data-local="${u.lid}"] progress`);
      if (bar) bar.value = sent;
    });
    const args = { ...target(conv), kind: a.kind, name: a.name, mime: a.mime, upload };
    for (const k of ['width', 'height', 'duration_ms', 'thumbnail']) if (a[k]) args[k] = a[k];
    msg = (await request('send_file', args)).message;
  } catch { /* toasted */ }
  state.uploads.splice(state.uploads.indexOf(u), 1);
  const li = $('messages').querySelector(`li[data-local="${u.lid}"]`);
  if (li) li.remove();
  if (msg) {
    // We hold the data already: no need to fetch it back from the daemon.
    if (!state.blobs.has(msg.seq)) state.blobs.set(msg.seq, Promise.resolve(URL.createObjectURL(a.blob)));
    const old = bubbleEl(msg.seq);
    if (old) old.replaceWith(bubble(msg));
    onMessage(msg);
  }
}

async function loadImage(file) {
  const img = new Image();
  img.src = URL.createObjectURL(file);
  try { await img.decode(); return img; } catch { throw new Error('This file is not a picture the browser can read'); }
  finally { URL.revokeObjectURL(img.src); }
}

function drawScaled(src, maxSide) {
  const w0 = src.naturalWidth || src.width, h0 = src.naturalHeight || src.height;
  const s = Math.min(1, maxSide / Math.max(w0, h0));
  const c = document.createElement('canvas');
  c.width = Math.max(1, Math.round(w0 * s));
  c.height = Math.max(1, Math.round(h0 * s));
  const g = c.getContext('2d');
  g.fillStyle = '#fff'; // JPEG has no transparency
  g.fillRect(0, 0, c.width, c.height);
  g.imageSmoothingQuality = 'high';
  g.drawImage(src, 0, 0, c.width, c.height);
  return c;
}

const toJpeg = (canvas, q) => new Promise((resolve, reject) =>
  canvas.toBlob((b) => (b ? resolve(b) : reject(new Error('Could not encode the picture'))), 'image/jpeg', q));

// Lowers the quality stepwise, then the size, until the JPEG fits.
async function fitJpeg(src, maxSide, q0, qMin, limit) {
  for (let side = maxSide; side >= 16; side = Math.floor(side * 0.75)) {
    const c = drawScaled(src, side);
    for (let q = q0; q >= qMin - 1e-9; q -= 0.1) {
      const blob = await toJpeg(c, q);
      if (blob.size <= limit) return { blob, canvas: c, width: c.width, height: c.height };
    }
  }
  throw new Error('Could not make the picture small enough');
}

async function sendPicture(file) {
  const conv = state.open;
  if (!conv) return;
  if (!state.connected) { toast('Offline: pictures can be sent when the daemon is back.'); return; }
  try {
    const img = await loadImage(file);
    const pic = await fitJpeg(img, PIC_SIDE, 0.8, 0.4, PIC_BYTES);
    const th = await fitJpeg(pic.canvas, THUMB_SIDE, 0.7, 0.2, THUMB_BYTES);
    const name = (file.name || 'picture').replace(/\.[^.]*$/, '') + '.jpg';
    await sendAttachment(conv, { kind: 'image', blob: pic.blob, name, mime: 'image/jpeg',
      width: pic.width, height: pic.height, thumbnail: await blobToBase64(th.blob),
      thumbUrl: URL.createObjectURL(th.blob) });
  } catch (e) { toast(e.message); }
}

function audioDuration(blob) {
  return new Promise((resolve) => {
    const url = URL.createObjectURL(blob);
    const a = new Audio();
    const done = (v) => { URL.revokeObjectURL(url); resolve(v); };
    a.preload = 'metadata';
    a.onloadedmetadata = () => done(Number.isFinite(a.duration) ? Math.round(a.duration * 1000) : 0);
    a.onerror = () => done(0);
    setTimeout(() => done(0), 3000);
    a.src = url;
  });
}

// Audio files and other files go unchanged.
async function sendFile(kind, file) {
  const conv = state.open;
  if (!conv) return;
  const duration_ms = kind === 'audio' ? await audioDuration(file) : 0;
  await sendAttachment(conv, { kind, blob: file, name: file.name || kind, mime: file.type || 'application/octet-stream', duration_ms });
}

// Voice notes: press to start, press again to stop.
let rec = null;
async function toggleRecord() {
  const btn = $('record');
  if (rec) { rec.recorder.stop(); return; }
  const conv = state.open;
  if (!conv) return;
  if (!state.connected) { toast('Offline: voice notes can be sent when the daemon is back.'); return; }
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia) || !window.MediaRecorder) return toast('Recording is not supported in this browser.');
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch (e) { return toast('No microphone: ' + e.message); }
  const mimeType = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus'].find((t) => MediaRecorder.isTypeSupported(t));
  const recorder = new MediaRecorder(stream, mimeType ? { mimeType } : undefined);
  const chunks = [];
  const started = performance.now();
  const label = btn.querySelector('[aria-hidden]');
  const spoken = btn.querySelector('.vh');
  const tick = () => {
    const ms = performance.now() - started;
    label.textContent = '■ ' + fmtDuration(ms);
    if (ms > 10 * 60 * 1000) recorder.stop(); // stay well under the 8 MiB limit
  };
  rec = { recorder, timer: setInterval(tick, 500) };
  recorder.ondataavailable = (e) => { if (e.data && e.data.size) chunks.push(e.data); };
  recorder.onstop = () => {
    clearInterval(rec.timer);
    rec = null;
    stream.getTracks().forEach((t) => t.stop());
    btn.setAttribute('aria-pressed', 'false');
    btn.classList.remove('recording');
    label.textContent = '🎤';
    spoken.textContent = 'Record a voice note';
    const type = recorder.mimeType || mimeType || 'audio/webm';
    const ext = type.includes('ogg') ? 'ogg' : type.includes('mp4') ? 'm4a' : 'webm';
    const blob = new Blob(chunks, { type });
    if (blob.size) {
      sendAttachment(conv, { kind: 'audio', blob, name: 'voice-note.' + ext, mime: type,
        duration_ms: Math.round(performance.now() - started) });
    }
  };
  recorder.start(1000);
  btn.setAttribute('aria-pressed', 'true');
  btn.classList.add('recording');
  spoken.textContent = 'Stop recording and send';
  tick();
  announce('Recording. Press the record button again to stop and send.');
}

// ---------------------------------------------------------------- contacts

function openDialog(id) {
  const d = $(id);
  if (!d.open) d.showModal();
  return d;
}

function askName() {
  $('name-input').value = localStorage.getItem(LS.name) || state.helloName || '';
  openDialog('name-dialog');
  $('name-input').focus();
}

const NO_SCAN = 'Scanning QR codes is not supported in this browser: paste the invite instead.';
function openAddContact() {
  $('invite-error').textContent = '';
  $('invite-error').classList.remove('warning');
  $('scan-status').textContent = 'BarcodeDetector' in window ? '' : NO_SCAN;
  openDialog('add-dialog');
  $('invite-input').focus();
}

async function addContact() {
  const err = $('invite-error');
  err.textContent = '';
  err.classList.remove('warning');
  const invite = $('invite-input').value.trim();
  const name = $('invite-name').value.trim();
  if (!invite) { err.textContent = 'Paste an invite first.'; return; }
  $('invite-submit').disabled = true;
  try {
    const r = await request('add_contact', name ? { invite, name } : { invite }, { quiet: true });
    const c = putContact(r.contact || r);
    $('add-dialog').close();
    $('invite-input').value = '';
    $('invite-name').value = '';
    openChat({ contact: c.id });
  } catch (e) {
    if (e.code === 'key_changed') {
      // `old` is the known key (or an object holding it); its contact has the name.
      const oldId = e.old && typeof e.old === 'object' ? e.old.id : e.old;
      const old = state.contacts.find((c) => c.id === oldId);
      const who = (old && old.name) || (e.old && e.old.name) || e.name || name;
      err.classList.add('warning');
      err.textContent = `${who ? who + "'s" : "This contact's"} key has changed: this may be a new phone, or someone impersonating them. Verify before trusting; remove the old contact to accept the new key.`;
    } else err.textContent = errorText(e);
  } finally { $('invite-submit').disabled = false; }
}

async function scanQr(file) {
  const out = $('scan-status');
  if (!('BarcodeDetector' in window)) { out.textContent = NO_SCAN; return; }
  try {
    const det = new window.BarcodeDetector({ formats: ['qr_code'] });
    const codes = await det.detect(await createImageBitmap(file));
    if (codes.length) { $('invite-input').value = codes[0].rawValue; out.textContent = 'Invite read from the picture.'; }
    else out.textContent = 'No QR code found in that picture. Try again, or paste the invite.';
  } catch (e) { out.textContent = 'Could not read the QR code (' + e.message + '): paste the invite instead.'; }
}

// The daemon's SVG is parsed as XML (never as HTML) and stripped of anything active.
function safeSvg(text) {
  const doc = new DOMParser().parseFromString(String(text || ''), 'image/svg+xml');
  const root = doc.documentElement;
  if (!root || root.localName !== 'svg' || root.namespaceURI !== 'http://www.w3.org/2000/svg'
    || doc.getElementsByTagName('parsererror').length) return null;
  root.querySelectorAll('script, foreignObject, iframe, a, image').forEach((n) => n.remove());
  for (const n of [root, ...root.querySelectorAll('*')]) {
    for (const at of [...n.attributes]) {
      if (/^on/i.test(at.name) || (/href$/i.test(at.name) && !at.value.startsWith('#'))) n.removeAttribute(at.name);
    }
  }
  const w = parseFloat(root.getAttribute('width')), h = parseFloat(root.getAttribute('height'));
  if (!root.hasAttribute('viewBox') && w > 0 && h > 0) root.setAttribute('viewBox', `0 0 ${w} ${h}`);
  root.setAttribute('role', 'img');
  root.setAttribute('aria-label', 'QR code of your invite');
  return document.importNode(root, true);
}

async function showMyInvite() {
  const name = localStorage.getItem(LS.name) || state.helloName;
  if (!name) { askName(); return; }
  const err = $('my-invite-error');
  err.textContent = '';
  $('invite-as').textContent = `It shows your name as “${name}”.`;
  $('my-invite-text').value = '';
  $('my-invite-qr').replaceChildren();
  $('my-invite-share').hidden = !navigator.share;
  openDialog('invite-dialog');
  try {
    const r = await request('invite', { name }, { quiet: true });
    $('my-invite-text').value = r.invite || '';
    const svg = safeSvg(r.qr_svg);
    if (svg) $('my-invite-qr').replaceChildren(svg);
  } catch (e) { err.textContent = errorText(e); }
}

async function copyInvite() {
  const ta = $('my-invite-text');
  if (!ta.value) return;
  try { await navigator.clipboard.writeText(ta.value); } catch { ta.select(); document.execCommand('copy'); }
  const b = $('my-invite-copy');
  b.textContent = 'Copied';
  setTimeout(() => { b.textContent = 'Copy'; }, 2000);
}

function openVerify() {
  const c = state.open && state.open.contact && state.contacts.find((x) => x.id === state.open.contact);
  if (!c) return;
  $('verify-title').textContent = `Verify ${c.name || shortId(c.id)}`;
  $('safety-number').textContent = c.safety_number || '';
  $('safety-input').value = '';
  $('rename-input').value = c.name || '';
  const res = $('verify-result');
  res.textContent = c.verified ? 'Verified' : '';
  res.className = 'result' + (c.verified ? ' ok' : '');
  openDialog('verify-dialog');
  $('safety-input').focus();
}

async function verifyContact() {
  const contact = state.open && state.open.contact;
  const res = $('verify-result');
  const safety_number = $('safety-input').value.trim();
  if (!contact || !safety_number) return;
  try {
    const r = await request('verify_contact', { contact, safety_number }, { quiet: true });
    putContact(r.contact || r);
    res.textContent = 'Verified';
    res.className = 'result ok';
  } catch (e) {
    res.textContent = e.code === 'mismatch'
      ? 'The numbers differ: do not trust this contact until you find out why' : errorText(e);
    res.className = 'result bad';
  }
}

async function renameContact() {
  const contact = state.open && state.open.contact;
  const name = $('rename-input').value.trim();
  if (!contact || !name) return;
  try {
    const r = await request('rename_contact', { contact, name });
    putContact(r.contact || r);
    $('verify-title').textContent = `Verify ${name}`;
  } catch { /* toasted */ }
}

async function removeContact() {
  const contact = state.open && state.open.contact;
  const c = contact && state.contacts.find((x) => x.id === contact);
  if (!c || !confirm(`Remove ${c.name}? You will need a new invite from them to talk again.`)) return;
  try {
    await request('remove_contact', { contact });
    $('verify-dialog').close();
    setContacts(state.contacts.filter((x) => x.id !== contact));
    closeChat();
  } catch { /* toasted */ }
}

// ------------------------------------------------------------------ groups

async function createGroup() {
  const name = $('group-name').value.trim();
  if (!name) return;
  try {
    const r = await request('create_group', { name });
    const g = putGroup(r.group || r);
    $('group-dialog').close();
    $('group-name').value = '';
    openChat({ group: g.id });
  } catch { /* toasted */ }
}

function openGroupRequest(op, extra) {
  const group = state.open && state.open.group;
  if (!group) return Promise.reject(new Error('no group'));
  return request(op, { group, ...extra }).then((r) => putGroup(r.group || r));
}

function renderMembers() {
  const g = state.open && state.open.group && state.groups.find((x) => x.id === state.open.group);
  if (!g) return;
  $('members-title').textContent = `Members of ${g.name}`;
  const members = g.members || [];
  $('members').replaceChildren(...members.map((m) => el('li', null,
    el('span', null, m.me ? `${m.name || 'You'} (you)` : memberName(m.id, m.name)),
    m.me ? null : el('button', { type: 'button', class: 'member-remove', 'data-id': m.id,
      'aria-label': `Remove ${memberName(m.id, m.name)} from the group`,
      onclick: () => openGroupRequest('group_remove', { contact: m.id }).catch(noop) }, 'Remove'))));
  const ids = new Set(members.map((m) => m.id));
  const candidates = state.contacts.filter((c) => !ids.has(c.id));
  const sel = $('member-select');
  sel.replaceChildren(...(candidates.length
    ? candidates.map((c) => el('option', { value: c.id }, c.name || shortId(c.id)))
    : [el('option', { value: '' }, 'No more contacts to add')]));
  sel.disabled = !candidates.length;
  $('member-add').disabled = !candidates.length;
}

async function leaveGroup() {
  const group = state.open && state.open.group;
  const g = group && state.groups.find((x) => x.id === group);
  if (!group || !confirm(`Leave ${g ? g.name : 'this group'}?`)) return;
  try {
    await request('group_leave', { group });
    $('members-dialog').close();
    setGroups(state.groups.filter((x) => x.id !== group));
    closeChat();
  } catch { /* toasted */ }
}

// ---------------------------------------------------- network and notices

function renderNetwork() {
  const f = $('network');
  const n = state.network;
  if (!state.connected) { f.textContent = 'Daemon offline: showing what was saved on this device'; f.dataset.state = 'offline'; return; }
  if (!n) { f.textContent = 'Daemon connected'; f.dataset.state = 'daemon'; return; }
  const parts = [n.connected ? 'Network connected' : 'Network not connected', n.cover ? 'cover on' : 'cover OFF'];
  if (Number.isFinite(n.topology_age_s)) {
    const s = n.topology_age_s;
    parts.push('topology ' + (s < 120 ? s + ' s' : s < 7200 ? Math.round(s / 60) + ' min' : Math.round(s / 3600) + ' h') + ' old');
  }
  if (n.outbox_messages > 0) parts.push(`${n.outbox_messages} waiting to send`);
  f.textContent = parts.join(' · ');
  f.dataset.state = n.connected ? 'connected' : 'disconnected';
}

function setupNotifyButton() {
  const b = $('notify');
  const p = 'Notification' in window ? Notification.permission : 'granted'; // unsupported: nothing to offer
  b.hidden = p === 'granted';
  b.disabled = p === 'denied';
  b.textContent = p === 'denied' ? 'Notifications blocked' : 'Enable notifications';
}

// Says who wrote, not what: the text stays out of the system's notification log.
function notify(m, who) {
  if (document.visibilityState !== 'hidden' || !('Notification' in window) || Notification.permission !== 'granted') return;
  const opts = { body: `New message from ${who}`, tag: convKey(m.conversation), icon: '/icon.svg' };
  try {
    const n = new Notification('Umbra', opts);
    n.onclick = () => { window.focus(); openChat(m.conversation); n.close(); };
  } catch {
    // Mobile browsers allow notifications only through the service worker.
    if (navigator.serviceWorker) navigator.serviceWorker.ready.then((r) => r.showNotification('Umbra', opts)).catch(noop);
  }
}

// ------------------------------------------------------------------- token

function parseToken(s) {
  s = String(s || '').trim();
  const m = s.match(/#token=([0-9a-fA-F]+)/) || s.match(/^([0-9a-fA-F]{16,})$/);
  return m ? m[1] : null;
}

// The daemon prints the page's address with #token=…; keep it out of the address bar.
function tokenFromHash() {
  const t = location.hash.startsWith('#token=') ? parseToken(location.hash) : null;
  if (t) history.replaceState(null, '', location.pathname + location.search);
  return t;
}

function setToken(t) {
  state.token = t;
  state.refused = 0;
  localStorage.setItem(LS.token, t);
  $('token-screen').hidden = true;
  $('panes').hidden = false;
  if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); setConnected(false); failPending(); }
  reconnectNow();
}

function showTokenScreen() {
  $('token-screen').hidden = false;
  $('panes').hidden = true;
  $('token-input').focus();
}

// ------------------------------------------------------------------ wiring

function autosize() {
  const ta = $('text-input');
  ta.style.height = 'auto';
  const h = ta.scrollHeight + ta.offsetHeight - ta.clientHeight; // scrollHeight leaves out the borders
  ta.style.height = Math.min(h, 160) + 'px';
  ta.style.overflowY = h > 160 ? 'auto' : 'hidden';
}

function onForm(id, fn) {
  $(id).addEventListener('submit', (ev) => { ev.preventDefault(); fn(); });
}

function onFile(id, fn) {
  $(id).addEventListener('change', (ev) => {
    const file = ev.target.files && ev.target.files[0];
    ev.target.value = ''; // choosing the same file again fires change again
    if (file) fn(file);
  });
}

function wire() {
  onForm('token-form', () => {
    const t = parseToken($('token-input').value);
    if (!t) { $('token-error').textContent = 'That is not a token: it is the hex digits after #token= in the address.'; return; }
    $('token-error').textContent = '';
    setToken(t);
  });
  $('token-change').addEventListener('click', () => { $('token-input').value = ''; showTokenScreen(); });

  onForm('name-form', () => {
    const name = $('name-input').value.trim();
    if (!name) return;
    localStorage.setItem(LS.name, name);
    $('name-dialog').close();
    if ($('invite-dialog').open) showMyInvite();
  });
  $('name-change').addEventListener('click', askName);

  $('add-contact').addEventListener('click', openAddContact);
  onForm('add-form', addContact);
  onFile('qr-input', scanQr);
  $('my-invite').addEventListener('click', showMyInvite);
  $('my-invite-copy').addEventListener('click', copyInvite);
  $('my-invite-share').addEventListener('click', () => navigator.share({ text: $('my-invite-text').value }).catch(noop));
  $('new-group').addEventListener('click', () => { openDialog('group-dialog'); $('group-name').focus(); });
  onForm('group-form', createGroup);

  $('notify').addEventListener('click', async () => {
    try { await Notification.requestPermission(); } catch { /* old callback-style API */ }
    setupNotifyButton();
  });

  $('back').addEventListener('click', goBack);
  window.addEventListener('popstate', () => { if (!(history.state && history.state.chat) && state.open && narrow()) closeChat(); });
  $('verify-open').addEventListener('click', openVerify);
  onForm('safety-form', verifyContact);
  onForm('rename-form', renameContact);
  $('contact-remove').addEventListener('click', removeContact);
  $('members-open').addEventListener('click', () => { renderMembers(); openDialog('members-dialog'); });
  onForm('member-form', () => {
    const contact = $('member-select').value;
    if (contact) openGroupRequest('group_invite', { contact }).catch(noop);
  });
  $('group-leave').addEventListener('click', leaveGroup);
  $('load-older').addEventListener('click', () => {
    const list = state.open && histOf(convKey(state.open));
    if (list && list.length) loadHistory(state.open, list[0].seq);
  });

  onForm('composer', sendText);
  const ta = $('text-input');
  ta.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); sendText(); }
  });
  ta.addEventListener('input', autosize);
  onFile('picture-input', sendPicture);
  onFile('audio-input', (f) => sendFile('audio', f));
  onFile('file-input', (f) => sendFile('file', f));
  $('record').addEventListener('click', toggleRecord);

  // Every dialog: its "close" buttons close it; a click on the backdrop too.
  for (const d of document.querySelectorAll('dialog')) {
    d.querySelectorAll('button.close').forEach((b) => b.addEventListener('click', () => d.close()));
    d.addEventListener('click', (ev) => { if (ev.target === d) d.close(); });
  }
  $('viewer-img').addEventListener('click', () => $('viewer').close());
  $('toast').addEventListener('click', () => { $('toast').hidden = true; });

  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') { markReadSoon(); reconnectNow(); }
  });
  window.addEventListener('online', reconnectNow);
  window.addEventListener('pagehide', flushSaves);
}

function start() {
  wire();
  setupNotifyButton();
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('/sw.js').catch(noop);

  const fromHash = tokenFromHash();
  if (fromHash) localStorage.setItem(LS.token, fromHash);
  state.token = fromHash || localStorage.getItem(LS.token);
  // The address pasted into an open page only changes the hash.
  window.addEventListener('hashchange', () => { const t = tokenFromHash(); if (t) setToken(t); });

  // What was saved last time, so the page is useful while the daemon is down.
  for (const k of ['contacts', 'groups', 'outbox']) { const v = loadJson(LS[k], []); state[k] = Array.isArray(v) ? v : []; }
  for (const c of state.contacts) histOf('c:' + c.id);
  for (const g of state.groups) histOf('g:' + g.id);
  renderLists();
  renderNetwork();

  if (!state.token) showTokenScreen();
  else connect();
}

start();
