// Plays an HLS URL in headless Debian Chromium with hls.js and reports playback state.
//
//   node tests/browser/play.mjs <HLS session URL> [max seconds, default 120]
//
// Serves a one-page player (hls.js from ./node_modules, same origin as the page; the
// stream is cross-origin, so the server's CORS headers are exercised) on 127.0.0.1,
// drives Chromium through playwright-core, and prints one JSON line per second:
//   {"t": <s since start>, "currentTime": <s>, "readyState": n, "paused": b,
//    "fatal": [..fatal hls.js errors..], "errors": <non-fatal count>, "last": "<last error>"}
// It exits after the time limit or when its standard input closes (the Rust test
// closes it when it has seen enough). Run `npm ci` (or `npm install`) here first.
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const src = process.argv[2];
const maxSeconds = Number(process.argv[3] || 120);
if (!src) {
  console.error('usage: node play.mjs <hls url> [max seconds]');
  process.exit(2);
}
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const hlsJs = fs.readFileSync(path.join(here, 'node_modules/hls.js/dist/hls.min.js'));

const page = `<!doctype html><html><body>
<video id="v" muted autoplay playsinline width="640"></video>
<script src="/hls.min.js"></script>
<script>
  window.report = { fatal: [], errors: 0, last: '' };
  const v = document.getElementById('v');
  const hls = new Hls({ lowLatencyMode: false });
  hls.on(Hls.Events.ERROR, (_, d) => {
    const what = d.type + ':' + d.details;
    if (d.fatal) { window.report.fatal.push(what); } else { window.report.errors++; }
    window.report.last = what;
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    v.play().catch((e) => { window.report.last = 'play:' + e; });
  });
  hls.loadSource(new URLSearchParams(location.search).get('src'));
  hls.attachMedia(v);
</script></body></html>`;

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/hls.min.js')) {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    res.end(hlsJs);
  } else {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const port = server.address().port;

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sv-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: chromiumPath,
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--autoplay-policy=no-user-gesture-required',
  ],
});
let done = false;
const finish = async (code) => {
  if (done) return;
  done = true;
  try { await context.close(); } catch {}
  server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
};
process.stdin.on('end', () => finish(0));
process.stdin.on('close', () => finish(0));
process.stdin.resume();

const tab = context.pages()[0] || (await context.newPage());
tab.on('console', (m) => {
  if (m.type() === 'error') console.error('page:', m.text());
});
await tab.goto(`http://127.0.0.1:${port}/?src=${encodeURIComponent(src)}`);
const started = Date.now();
while (!done && Date.now() - started < maxSeconds * 1000) {
  await new Promise((r) => setTimeout(r, 1000));
  const s = await tab.evaluate(() => {
    const v = document.getElementById('v');
    return {
      currentTime: v.currentTime,
      readyState: v.readyState,
      paused: v.paused,
      fatal: window.report.fatal,
      errors: window.report.errors,
      last: window.report.last,
    };
  });
  console.log(JSON.stringify({ t: (Date.now() - started) / 1000, ...s }));
}
await finish(0);
