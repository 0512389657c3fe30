// Umbra service worker: keeps the page's shell so it opens with the daemon down.
// Only the shell is cached; the API (/v1/…) always goes to the network.
'use strict';

const CACHE = 'umbra-shell-v1';
const SHELL = ['/', '/app.js', '/style.css', '/manifest.webmanifest', '/icon.svg'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith('umbra-') && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

// Cache first; the copy is refreshed in the background, so a new page arrives
// on the next load without ever waiting for the network.
self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin || url.pathname.startsWith('/v1/')) return;
  const path = url.pathname === '/index.html' ? '/' : url.pathname;
  if (!SHELL.includes(path)) return;

  const fresh = fetch(path, { cache: 'no-cache', credentials: 'same-origin' }).then((res) => {
    if (!res.ok) return res;
    const copy = res.clone();
    return caches.open(CACHE).then((c) => c.put(path, copy)).then(() => res);
  });
  event.waitUntil(fresh.catch(() => {}));
  event.respondWith(caches.open(CACHE).then((c) => c.match(path)).then((hit) => hit || fresh));
});

// A notification shown through the worker (mobile browsers) brings the page back.
self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((list) => {
    for (const c of list) if ('focus' in c) return c.focus();
    return self.clients.openWindow('/');
  }));
});
