// The gateway role end to end: the real mmserve binary in front of real
// upstream processes (small node services from upstream.mjs, and a real
// mmserve speech service for the openai SDK test), over real sockets.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { freePort, waitReady } from '../support.mjs';

const binary = process.env.MMSERVE_BIN;
assert.ok(binary, 'MMSERVE_BIN must name the mmserve binary');
const here = path.dirname(fileURLToPath(import.meta.url));
const work = mkdtempSync(path.join(tmpdir(), 'mmserve-gateway-'));
const processes = new Set();

after(() => {
  for (const child of processes) child.kill('SIGKILL');
});

function track(child) {
  processes.add(child);
  child.on('exit', () => processes.delete(child));
  return child;
}

// A node upstream service (upstream.mjs) on a free port.
async function startUpstream(name) {
  const port = await freePort();
  const child = track(spawn(process.execPath, [path.join(here, 'upstream.mjs'), name, String(port)],
    { stdio: ['ignore', 'pipe', 'inherit'] }));
  await new Promise((resolve, reject) => {
    child.stdout.on('data', (text) => { if (String(text).includes('listening')) resolve(); });
    child.on('exit', (code) => reject(new Error(`upstream ${name} exited with ${code}`)));
  });
  return { name, port, url: `http://127.0.0.1:${port}`, child };
}

let configCount = 0;
// `mmserve <role>` with this YAML; resolves when /healthz answers.
async function startMmserve(yaml, role = 'gateway', extraEnv = {}) {
  const file = path.join(work, `config-${++configCount}.yaml`);
  writeFileSync(file, yaml);
  const port = await freePort();
  const child = track(spawn(binary, [role, '--config', file, '--port', String(port)],
    { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, HOME: work, ...extraEnv } }));
  let log = '';
  child.stderr.on('data', (piece) => { log += piece; });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`mmserve ${role} exited with ${child.exitCode}:\n${log}`);
    try { if ((await fetch(`${base}/healthz`)).status === 200) break; } catch {}
    if (i > 500) throw new Error(`mmserve ${role} did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { base, port, child, log: () => log };
}

// SIGTERM, then the exit code; a death by signal comes back as text with
// the log's tail, so an assertion on 0 shows what happened.
async function stop(server) {
  const exited = new Promise((resolve) => server.child.on('exit', (code, signal) => {
    resolve(signal ? `killed by ${signal}; log tail:\n${server.log().slice(-3000)}` : code);
  }));
  server.child.kill('SIGTERM');
  return exited;
}

// One request with node:http (it may set Host and stream a body).
function raw(port, method, target, { headers = {}, body, timeoutMs = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, method, path: target, headers, agent: false },
      (response) => {
        const pieces = [];
        response.on('data', (piece) => pieces.push(piece));
        response.on('end', () => {
          const text = Buffer.concat(pieces).toString();
          let json;
          try { json = JSON.parse(text); } catch {}
          resolve({ status: response.statusCode, headers: response.headers, text, json });
        });
        response.on('error', reject);
      });
    request.setTimeout(timeoutMs, () => request.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    request.on('error', reject);
    if (typeof body === 'function') body(request);
    else request.end(body);
  });
}

const post = (port, target, body, headers = {}) =>
  raw(port, 'POST', target, { body, headers: { 'content-type': 'application/json', ...headers } });

function assertOpenAIError(response, status, code) {
  assert.equal(response.status, status, response.text);
  assert.equal(typeof response.json?.error?.message, 'string', response.text);
  assert.ok(response.json.error.message.length > 0);
  assert.ok('type' in response.json.error && 'param' in response.json.error);
  if (code) assert.equal(response.json.error.code, code, response.text);
}

// Peak resident memory (VmHWM) of a process, in bytes.
function peakRss(pid) {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmHWM:'));
  return Number(line.split(/\s+/)[1]) * 1024;
}

async function metricsText(base) {
  return (await fetch(`${base}/metrics`)).text();
}

function metricValue(text, name, labels) {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) &&
    Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
  return line ? Number(line.split(' ').pop()) : undefined;
}

const vision1 = await startUpstream('vision-1');
const vision2 = await startUpstream('vision-2');
const image = await startUpstream('image');
const speech = await startUpstream('speech');

// The pools every gateway config must name besides the ones a test is about.
const imageAndSpeechPools = `    image: {endpoints: [${image.url}]}
    speech: {endpoints: [${speech.url}]}`;
const seedPools = `
  pools:
    vision: {endpoints: [${vision1.url}, ${vision2.url}]}
${imageAndSpeechPools}`;

test('the seed routes and the OpenAI paths reach their pools; /v1/models merges them; unknown paths get 404', async () => {
  const gateway = await startMmserve(`gateway:${seedPools}\n`);
  // A gateway has no model of its own: it is ready as soon as it listens.
  const ready = await raw(gateway.port, 'GET', '/readyz');
  assert.equal(ready.status, 200, ready.text);
  const cases = [
    ['/v1/chat/vision', /^vision-/], ['/v1/chat/completions', /^vision-/],
    ['/v1/images/generate', /^image$/], ['/v1/images/generations', /^image$/],
    ['/v1/audio/transcriptions', /^speech$/], ['/v1/audio/translations', /^speech$/],
  ];
  for (const [target, service] of cases) {
    const response = await post(gateway.port, target, '{"x":1}');
    assert.equal(response.status, 200, `${target}: ${response.text}`);
    assert.match(response.json.service, service, target);
    assert.equal(response.json.path, target);
    assert.equal(response.json.body, '{"x":1}');
  }
  const models = await (await fetch(`${gateway.base}/v1/models`)).json();
  const ids = models.data.map((m) => m.id).sort();
  assert.equal(models.object, 'list');
  assert.ok(ids.includes('image-model') && ids.includes('speech-model'), JSON.stringify(ids));
  assert.equal(ids.filter((id) => id.startsWith('vision-')).length, 1, 'one entry per pool, not per replica');
  const one = await raw(gateway.port, 'GET', '/v1/models/speech-model');
  assert.equal(one.json.id, 'speech-model');
  assertOpenAIError(await raw(gateway.port, 'GET', '/v1/models/nope'), 404, 'model_not_found');
  assertOpenAIError(await raw(gateway.port, 'GET', '/v2/unknown'), 404, 'unknown_url');
  assertOpenAIError(await post(gateway.port, '/v1/chat/visionary', '{}'), 404, 'unknown_url');

  // Request ids and forwarding headers reach the upstream; the id comes back.
  const traced = await post(gateway.port, '/v1/chat/completions', '{}', { 'x-request-id': 'trace-123' });
  assert.equal(traced.headers['x-request-id'], 'trace-123');
  assert.equal(traced.json.headers['x-request-id'], 'trace-123');
  assert.equal(traced.json.headers['x-forwarded-for'], '127.0.0.1');
  const generated = await post(gateway.port, '/v1/chat/completions', '{}');
  assert.match(generated.headers['x-request-id'], /^[0-9a-f]{32}$/);
  assert.equal(generated.json.headers['x-request-id'], generated.headers['x-request-id']);

  // Both replicas of a pool take traffic.
  const served = new Set();
  for (let i = 0; i < 12; i++) served.add((await post(gateway.port, '/v1/chat/completions', '{}')).json.service);
  assert.deepEqual([...served].sort(), ['vision-1', 'vision-2']);

  // Metrics name the route, not the raw path.
  const text = await metricsText(gateway.base);
  assert.ok(metricValue(text, 'http_requests_total', { method: 'POST', route: '/v1/chat/completions', code: '200' }) >= 14);
  assert.ok(metricValue(text, 'http_requests_total', { route: 'unmatched', code: '404' }) >= 1);
  assert.equal(await stop(gateway), 0);
});

test('hosts: exact beats *.domain beats *, and the longest path prefix wins', async () => {
  const gateway = await startMmserve(`gateway:
  routes:
    - {host: api.example.com, path: /v1/chat/vision, pool: vision}
    - {host: "*.example.com", path: /v1/chat/vision, pool: image}
    - {host: "*", path: /v1/chat/, pool: image}
    - {host: "*", path: /v1/, pool: speech}
${seedPools}\n`);
  const to = async (host, target) =>
    (await raw(gateway.port, 'POST', target, { headers: { host }, body: '{}' })).json?.service;
  assert.match(await to('api.example.com', '/v1/chat/vision'), /^vision-/);
  assert.match(await to('API.Example.com:443', '/v1/chat/vision'), /^vision-/);
  assert.equal(await to('eu.api.example.com', '/v1/chat/vision'), 'image');
  assert.equal(await to('localhost', '/v1/chat/vision'), 'image'); // "*" with /v1/chat/
  assert.equal(await to('localhost', '/v1/audio/transcriptions'), 'speech');
  assert.equal(await to('api.example.com', '/v1/embeddings'), 'speech');
  assertOpenAIError(await raw(gateway.port, 'POST', '/v2/x', { headers: { host: 'api.example.com' }, body: '{}' }),
    404, 'unknown_url');
  assert.equal(await stop(gateway), 0);
});

test('limits: 413 from Content-Length and for chunked bodies, 504 past read_timeout, 503 with Retry-After', async () => {
  const unhealthy = await startUpstream('unhealthy');
  await fetch(`${unhealthy.url}/control/unhealthy`);
  const gateway = await startMmserve(`server: {max_body_size: 1Mi}
gateway:
  read_timeout: 1s
  health_check: {interval: 200ms}
  ejection: {max_fails: 2, base_time: 30s}
  routes:
    - {path: /v1/chat/, pool: vision}
    - {path: /v1/unhealthy/, pool: unhealthy}
  pools:
    vision: {endpoints: [${vision1.url}]}
    unhealthy: {endpoints: [${unhealthy.url}]}
${imageAndSpeechPools}
`);
  const big = Buffer.alloc(2 << 20, 'a');
  assertOpenAIError(await post(gateway.port, '/v1/chat/completions', big), 413);
  const chunked = await raw(gateway.port, 'POST', '/v1/chat/completions', {
    headers: { 'transfer-encoding': 'chunked' },
    body: (request) => { for (let i = 0; i < 4; i++) request.write(big.subarray(0, 512 << 10)); request.end(); },
  });
  assertOpenAIError(chunked, 413);
  // Within the limit, the body arrives whole.
  const fits = await post(gateway.port, '/v1/chat/completions', big.subarray(0, 1 << 20));
  assert.equal(fits.json.bytes, 1 << 20);

  const started = Date.now();
  const slow = await raw(gateway.port, 'GET', '/v1/chat/slow');
  const waited = Date.now() - started;
  assertOpenAIError(slow, 504, 'upstream_timeout');
  assert.ok(waited >= 900 && waited < 10_000, `504 after ${waited} ms`);

  const down = await post(gateway.port, '/v1/unhealthy/x', '{}');
  assertOpenAIError(down, 503, 'no_healthy_upstream');
  assert.match(down.json.error.message, /health check/);
  assert.ok(Number(down.headers['retry-after']) >= 1);
  // Back in service once its health check passes again.
  await fetch(`${unhealthy.url}/control/healthy`);
  let status;
  for (let i = 0; i < 100 && status !== 200; i++) {
    await new Promise((r) => setTimeout(r, 50));
    status = (await post(gateway.port, '/v1/unhealthy/x', '{}')).status;
  }
  assert.equal(status, 200);

  const text = await metricsText(gateway.base);
  assert.ok(metricValue(text, 'mmserve_upstream_errors_total', { pool: 'vision', kind: 'timeout' }) >= 1);
  assert.equal(metricValue(text, 'mmserve_upstream_endpoints', { pool: 'unhealthy', state: 'usable' }), 1);
  // The gateway kept serving through all of it.
  assert.equal((await post(gateway.port, '/v1/chat/completions', '{}')).status, 200);
  assert.equal(await stop(gateway), 0);
  unhealthy.child.kill('SIGKILL');
});

test('a client that hangs up while the upstream works closes the upstream connection; the gateway carries on', async () => {
  const worker = await startUpstream('worker');
  const gateway = await startMmserve(`gateway:
  read_timeout: 60s
  routes: [{path: /v1/work/, pool: worker}]
  pools:
    worker: {endpoints: [${worker.url}]}
    vision: {endpoints: [${vision1.url}]}
${imageAndSpeechPools}
`);
  const closed = async () => (await (await fetch(`${worker.url}/control/slow-closed`)).json()).closed;
  assert.equal(await closed(), 0);
  // Three clients give up after 300 ms; each upstream request is cut within the sweep interval.
  const gaveUp = await Promise.allSettled([1, 2, 3].map(() => raw(gateway.port, 'GET', '/v1/work/slow', { timeoutMs: 300 })));
  assert.ok(gaveUp.every((result) => result.status === 'rejected'));
  const started = Date.now();
  while ((await closed()) < 3 && Date.now() - started < 5000) await new Promise((r) => setTimeout(r, 50));
  assert.equal(await closed(), 3, 'the upstream saw every abandoned request closed');
  assert.ok(Date.now() - started < 2000, `closed ${Date.now() - started} ms after the clients left`);
  // A request that is answered is untouched by the watch, before and after.
  const answered = await raw(gateway.port, 'GET', '/v1/work/echo');
  assert.equal(answered.status, 200);
  assert.equal(answered.json.service, 'worker');
  assert.equal(await stop(gateway), 0);
  worker.child.kill('SIGKILL');
});

test('an endpoint that stops answering: 502 until it is ejected after max_fails, then 503 with Retry-After', async () => {
  const doomed = await startUpstream('doomed');
  // Health checks far apart: only the passive ejection can notice the loss.
  const gateway = await startMmserve(`gateway:
  health_check: {interval: 1h}
  ejection: {max_fails: 2, base_time: 30s}
  routes: [{path: /v1/, pool: vision}]
  pools:
    vision: {endpoints: [${doomed.url}]}
${imageAndSpeechPools}
`);
  assert.equal((await post(gateway.port, '/v1/chat/completions', '{}')).json.service, 'doomed');
  const gone = new Promise((resolve) => doomed.child.on('exit', resolve));
  doomed.child.kill('SIGKILL');
  await gone;
  const first = await post(gateway.port, '/v1/chat/completions', '{}');
  assertOpenAIError(first, 502, 'bad_gateway');
  assert.match(first.json.error.message, /connect/);
  assertOpenAIError(await post(gateway.port, '/v1/chat/completions', '{}'), 502, 'bad_gateway');
  const ejected = await post(gateway.port, '/v1/chat/completions', '{}');
  assertOpenAIError(ejected, 503, 'no_healthy_upstream');
  assert.match(ejected.json.error.message, /1 ejected/);
  const retryAfter = Number(ejected.headers['retry-after']);
  assert.ok(retryAfter >= 25 && retryAfter <= 30, `Retry-After: ${retryAfter}`);
  const text = await metricsText(gateway.base);
  assert.ok(metricValue(text, 'mmserve_upstream_errors_total', { pool: 'vision', kind: 'connect' }) >= 2);
  assert.equal(metricValue(text, 'mmserve_upstream_ejections_total', { pool: 'vision' }), 1);
  assert.equal(metricValue(text, 'mmserve_upstream_endpoints', { pool: 'vision', state: 'ejected' }), 1);
  assert.equal(await stop(gateway), 0);
});

test('a broken upstream: garbage instead of HTTP is a 502, a body cut short cuts the client off; the gateway carries on', async () => {
  const net = await import('node:net');
  const rawServer = net.createServer((socket) => {
    socket.once('data', (request) => {
      const path = String(request).split(' ')[1];
      if (path.endsWith('/garbage')) socket.end('HELLO THERE\r\n\r\n');
      else socket.end('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nonly ten b');
    });
  });
  await new Promise((resolve) => rawServer.listen(0, '127.0.0.1', resolve));
  const rawUrl = `http://127.0.0.1:${rawServer.address().port}`;
  const gateway = await startMmserve(`gateway:
  health_check: {path: /healthz-not-checked, interval: 1h}
  ejection: {max_fails: 100}
  routes: [{path: /v1/raw/, pool: raw}, {path: /v1/chat/, pool: vision}]
  pools:
    raw: {endpoints: ["${rawUrl}"]}
    vision: {endpoints: [${vision1.url}]}
${imageAndSpeechPools}
`);
  const garbage = await raw(gateway.port, 'GET', '/v1/raw/garbage');
  assertOpenAIError(garbage, 502, 'bad_gateway');
  await assert.rejects(raw(gateway.port, 'GET', '/v1/raw/short'), /aborted|socket hang up|ECONNRESET|terminated/i);
  assert.equal((await post(gateway.port, '/v1/chat/completions', '{}')).status, 200);
  const text = await metricsText(gateway.base);
  assert.ok(metricValue(text, 'mmserve_upstream_errors_total', { pool: 'raw', kind: 'read' }) >= 2);
  assert.equal(await stop(gateway), 0);
  rawServer.close();
});

test('kept-alive upstream connections: reused while open; one the upstream closed while idle fails no request', async () => {
  const stale = await startUpstream('stale');
  const gateway = await startMmserve(`server: {io_threads: 2}
gateway:
  health_check: {path: /healthz-not-checked, interval: 1h}
  routes: [{path: /v1/stale/, pool: stale}]
  pools:
    stale: {endpoints: ["${stale.url}"]}
    vision: {endpoints: [${vision1.url}]}
${imageAndSpeechPools}
`);
  const accepted = async () => (await (await fetch(`${stale.url}/control/connections`)).json()).accepted;
  // Back to back, they share the kept-alive connections: one per I/O thread
  // (each client connection here is new, and lands on the next thread).
  const before = await accepted();
  for (let i = 0; i < 6; i++) assert.equal((await post(gateway.port, '/v1/stale/x', '{}')).status, 200);
  const afterBurst = await accepted();
  assert.equal(afterBurst, before + 2, 'six sequential requests over two upstream connections');
  // The upstream now closes connections idle for 100 ms: a request after a
  // pause finds its thread's kept-alive connection closed (the readiness
  // check drops it, or the send fails before any byte of the request is
  // taken, and the request moves to a new connection).
  await fetch(`${stale.url}/control/keepalive?ms=100`, { method: 'POST' });
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, 300));
    const answer = await post(gateway.port, '/v1/stale/x', JSON.stringify({ round: i }));
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
    assert.equal(answer.json.body, JSON.stringify({ round: i }));
  }
  assert.ok(await accepted() > afterBurst, 'the upstream closed idle connections, so new ones were made');
  const text = await metricsText(gateway.base);
  assert.ok(!(metricValue(text, 'mmserve_upstream_errors_total', { pool: 'stale' }) > 0),
    'a connection the upstream closed is no fault of the endpoint');
  assert.equal(await stop(gateway), 0);
  stale.child.kill('SIGKILL');
});

test('answers relayed as the upstream sent them: long bodies with and without length, many long fields, HEAD; hop-by-hop fields dropped', async () => {
  const gateway = await startMmserve(`gateway:
  routes: [{path: /v1/files/, pool: vision}]
${seedPools}
`);
  const expected = (size) => Array.from({ length: size }, (_, i) => String.fromCharCode(97 + (i % 26))).join('');
  for (const chunked of ['0', '1']) {
    // 300 kB: several 64 KiB relay buffers; 30 fields of 200+ bytes: past the parser's inline field storage.
    const answer = await raw(gateway.port, 'GET', `/v1/files/download?bytes=300000&headers=30&chunked=${chunked}`);
    assert.equal(answer.status, 200);
    assert.equal(answer.text.length, 300000, `chunked=${chunked}`);
    assert.ok(answer.text === expected(300000), `chunked=${chunked}: the body arrives intact`);
    assert.equal(answer.headers['content-type'], 'application/octet-stream');
    assert.match(answer.headers['x-upstream'], /^vision-[12]$/);
    for (let i = 0; i < 30; i++) assert.equal(answer.headers[`x-h-${i}`], `${i}-${'v'.repeat(200)}`, `x-h-${i}`);
    assert.equal(answer.headers['x-hop'], undefined, 'a field the Connection field lists is not passed on');
    if (chunked === '0') assert.equal(answer.headers['content-length'], '300000');
    else assert.equal(answer.headers['transfer-encoding'], 'chunked');
  }
  const head = await raw(gateway.port, 'HEAD', '/v1/files/download?bytes=12345');
  assert.equal(head.status, 200);
  assert.equal(head.headers['content-length'], '12345', 'HEAD keeps the length declared for the GET');
  assert.equal(head.text, '');
  const empty = await raw(gateway.port, 'GET', '/v1/files/download?bytes=0');
  assert.equal(empty.status, 200);
  assert.equal(empty.text, '');
  assert.equal(await stop(gateway), 0);
});

test('killing one of two replicas under load: no request hangs, traffic moves to the other at once', async () => {
  const a = await startUpstream('replica-a');
  const b = await startUpstream('replica-b');
  const gateway = await startMmserve(`gateway:
  read_timeout: 5s
  health_check: {interval: 250ms}
  routes: [{path: /v1/, pool: vision}]
  pools:
    vision: {endpoints: [${a.url}, ${b.url}]}
${imageAndSpeechPools}
`);
  const results = [];
  const t0 = Date.now();
  let killedAt = 0;
  const stopAt = t0 + 3000;
  const worker = async () => {
    while (Date.now() < stopAt) {
      const started = Date.now();
      try {
        const response = await post(gateway.port, '/v1/chat/completions', '{}');
        results.push({ started, ended: Date.now(), status: response.status, service: response.json?.service,
          code: response.json?.error?.code });
      } catch (error) {
        results.push({ started, ended: Date.now(), status: 0, error: String(error) });
      }
    }
  };
  const workers = Array.from({ length: 8 }, worker);
  setTimeout(() => { killedAt = Date.now(); a.child.kill('SIGKILL'); }, 1000);
  await Promise.all(workers);

  assert.ok(killedAt > 0);
  const before = results.filter((r) => r.ended < killedAt);
  assert.ok(before.some((r) => r.service === 'replica-a') && before.some((r) => r.service === 'replica-b'));
  for (const r of results) {
    assert.ok(r.ended - r.started < 6000, `a request took ${r.ended - r.started} ms`);
    assert.ok(r.status !== 0, `a request failed at the socket: ${r.error}`);
    if (r.status !== 200) {
      // Only requests caught at replica-a as it died (its sockets close a
      // moment after the signal) may fail, with a JSON 502.
      assert.ok(r.started < killedAt + 1000, `request started ${r.started - killedAt} ms after the kill got ${r.status}`);
      assert.equal(r.code, 'bad_gateway');
    }
  }
  const failed = results.filter((r) => r.status !== 200).length;
  assert.ok(failed <= 16, `${failed} requests failed`); // at most a couple per worker
  const after = results.filter((r) => r.started >= killedAt + 1000);
  assert.ok(after.length > 10, `only ${after.length} requests in the last second`);
  assert.ok(after.every((r) => r.status === 200 && r.service === 'replica-b'));
  assert.equal(await stop(gateway), 0);
  b.child.kill('SIGKILL');
});

test('a 100 MB upload streams through with bounded gateway memory; an SSE stream passes piece by piece', async () => {
  const gateway = await startMmserve(`gateway:${seedPools}\n`);
  const baseline = peakRss(gateway.child.pid);
  const piece = Buffer.alloc(1 << 20);
  for (let i = 0; i < piece.length; i++) piece[i] = (i * 31 + 7) & 0xff;
  const total = 100_000_000;
  const upload = (headers) => {
    const hash = createHash('sha256');
    return raw(gateway.port, 'POST', '/v1/audio/transcriptions', {
      headers: { 'content-type': 'application/octet-stream', ...headers },
      timeoutMs: 120_000,
      body: (request) => {
        let sent = 0;
        const pump = () => {
          while (sent < total) {
            const part = piece.subarray(0, Math.min(piece.length, total - sent));
            sent += part.length;
            hash.update(part);
            if (!request.write(part)) return request.once('drain', pump);
          }
          request.end();
        };
        pump();
      },
    }).then((response) => ({ response, sha256: hash.digest('hex') }));
  };
  const chunked = await upload({ 'transfer-encoding': 'chunked' });
  assert.equal(chunked.response.status, 200, chunked.response.text);
  assert.equal(chunked.response.json.bytes, total);
  assert.equal(chunked.response.json.sha256, chunked.sha256);
  const sized = await upload({ 'content-length': String(total) });
  assert.equal(sized.response.json.bytes, total);
  assert.equal(sized.response.json.sha256, sized.sha256);
  const growth = peakRss(gateway.child.pid) - baseline;
  assert.ok(growth < 64 << 20, `gateway peak RSS grew by ${(growth / 2 ** 20).toFixed(1)} MiB`);

  // Each event arrives while the upstream is still producing the next ones.
  const response = await fetch(`${gateway.base}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"stream":true}',
  });
  assert.equal(response.headers.get('content-type'), 'text/event-stream');
  const arrivals = [];
  let text = '';
  const decoder = new TextDecoder();
  for await (const part of response.body) {
    text += decoder.decode(part, { stream: true });
    for (const match of text.matchAll(/data: (\{[^\n]*\})\n\n/g)) {
      const event = JSON.parse(match[1]);
      if (!arrivals[event.index]) arrivals[event.index] = { ...event, arrived: Date.now() };
    }
  }
  assert.equal(arrivals.length, 5);
  assert.ok(text.endsWith('data: [DONE]\n\n'));
  // The upstream sends an event every 200 ms: each must be here before the one two later is sent.
  for (let i = 0; i + 2 < arrivals.length; i++) {
    assert.ok(arrivals[i].arrived < arrivals[i + 2].sent_at,
      `event ${i} arrived ${arrivals[i].arrived - arrivals[i].sent_at} ms after it was sent`);
  }
  assert.equal(await stop(gateway), 0);
});

test('API keys: 401 without or with a wrong key, 403 outside its routes; rate limits: 429 with Retry-After and X-RateLimit-*', async () => {
  const sha = (key) => createHash('sha256').update(key).digest('hex');
  const keysFile = path.join(work, 'keys.yaml');
  writeFileSync(keysFile, `- {name: mounted, sha256: ${sha('sk-mounted')}}\n`);
  const gateway = await startMmserve(`gateway:
  auth:
    api_keys:
      - {name: team-a, sha256: ${sha('sk-team-a')}, rate_limit: {requests_per_second: 0.2, burst: 2}}
      - {name: audio-only, sha256: ${sha('sk-audio').toUpperCase()}, routes: [/v1/audio/]}
    api_keys_file: ${keysFile}
  rate_limits:
    per_ip: {requests_per_second: 1000, burst: 1000}
${seedPools}\n`);
  const as = (key) => (key ? { authorization: `Bearer ${key}` } : {});
  const missing = await post(gateway.port, '/v1/chat/completions', '{}');
  assertOpenAIError(missing, 401, 'invalid_api_key');
  assert.match(missing.json.error.message, /provide an API key/);
  assertOpenAIError(await post(gateway.port, '/v1/chat/completions', '{}', as('sk-wrong')), 401, 'invalid_api_key');
  assertOpenAIError(await post(gateway.port, '/v1/chat/completions', '{}', { authorization: 'Basic c2stdGVhbS1h' }),
    401, 'invalid_api_key');
  assertOpenAIError(await raw(gateway.port, 'GET', '/v1/models'), 401);
  assert.equal((await raw(gateway.port, 'GET', '/healthz')).status, 200);
  assert.equal((await raw(gateway.port, 'GET', '/metrics')).status, 200);

  assertOpenAIError(await post(gateway.port, '/v1/chat/completions', '{}', as('sk-audio')), 403, 'route_not_allowed');
  assert.equal((await post(gateway.port, '/v1/audio/transcriptions', '{}', as('sk-audio'))).json.service, 'speech');
  assert.equal((await post(gateway.port, '/v1/images/generations', '{}', as('sk-mounted'))).status, 200);

  const first = await post(gateway.port, '/v1/chat/completions', '{}', as('sk-team-a'));
  assert.equal(first.status, 200);
  assert.equal(first.headers['x-ratelimit-limit'], '2');
  assert.equal(first.headers['x-ratelimit-remaining'], '1');
  const second = await post(gateway.port, '/v1/chat/completions', '{}', as('sk-team-a'));
  assert.equal(second.status, 200);
  assert.equal(second.headers['x-ratelimit-remaining'], '0');
  const third = await post(gateway.port, '/v1/chat/completions', '{}', as('sk-team-a'));
  assertOpenAIError(third, 429, 'rate_limit_exceeded');
  assert.equal(third.json.error.type, 'rate_limit_error');
  assert.ok(Number(third.headers['retry-after']) >= 1 && Number(third.headers['retry-after']) <= 5);
  assert.equal(third.headers['x-ratelimit-remaining'], '0');
  assert.ok(Number(third.headers['x-ratelimit-reset']) >= 1);
  // Another key has its own bucket.
  assert.equal((await post(gateway.port, '/v1/audio/translations', '{}', as('sk-audio'))).status, 200);

  const text = await metricsText(gateway.base);
  assert.ok(metricValue(text, 'mmserve_gateway_refused_total', { reason: 'unauthorized' }) >= 4);
  assert.equal(metricValue(text, 'mmserve_gateway_refused_total', { reason: 'forbidden' }), 1);
  assert.equal(metricValue(text, 'mmserve_gateway_refused_total', { reason: 'rate_limited' }), 1);
  assert.equal(await stop(gateway), 0);

  // Per client address, without keys.
  const perIp = await startMmserve(`gateway:
  rate_limits: {per_ip: {requests_per_second: 0.5, burst: 3}}
${seedPools}\n`);
  const statuses = [];
  for (let i = 0; i < 4; i++) statuses.push((await post(perIp.port, '/v1/chat/completions', '{}')).status);
  assert.deepEqual(statuses, [200, 200, 200, 429]);
  assert.equal(await stop(perIp), 0);
});

test('CORS: preflights answered for allowed origins (without a key), refused for others; answers carry the origin', async () => {
  const sha = createHash('sha256').update('sk-browser').digest('hex');
  const gateway = await startMmserve(`gateway:
  cors: {allowed_origins: [https://app.example.com]}
  auth: {api_keys: [{name: browser, sha256: ${sha}}]}
${seedPools}\n`);
  const preflight = await raw(gateway.port, 'OPTIONS', '/v1/chat/completions', {
    headers: { origin: 'https://app.example.com', 'access-control-request-method': 'POST',
      'access-control-request-headers': 'authorization, content-type' },
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers['access-control-allow-origin'], 'https://app.example.com');
  assert.match(preflight.headers['access-control-allow-methods'], /POST/);
  assert.equal(preflight.headers['access-control-allow-headers'], 'authorization, content-type');
  assert.equal(preflight.headers.vary, 'Origin');
  const refused = await raw(gateway.port, 'OPTIONS', '/v1/chat/completions', {
    headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
  });
  assertOpenAIError(refused, 403, 'origin_not_allowed');
  assert.equal(refused.headers['access-control-allow-origin'], undefined);
  const answer = await post(gateway.port, '/v1/chat/completions', '{}',
    { origin: 'https://app.example.com', authorization: 'Bearer sk-browser' });
  assert.equal(answer.status, 200);
  assert.equal(answer.headers['access-control-allow-origin'], 'https://app.example.com');
  assert.match(answer.headers['access-control-expose-headers'], /X-Request-Id/);
  const other = await post(gateway.port, '/v1/chat/completions', '{}',
    { origin: 'https://evil.example', authorization: 'Bearer sk-browser' });
  assert.equal(other.headers['access-control-allow-origin'], undefined);
  assert.equal(await stop(gateway), 0);
});

const whisperModel = process.env.MMSERVE_TEST_WHISPER || '';
const mediaDir = process.env.MMSERVE_TEST_MEDIA ||
  path.resolve(process.env.MMSERVE_SOURCE_DIR || '.', '../shared/media');
const jfk = path.join(mediaDir, 'jfk.mp3');
const skipSpeech = (!existsSync(whisperModel) && `generated whisper model absent, skipping: ${whisperModel}`) ||
  (!existsSync(jfk) && `test audio absent, skipping: ${jfk}`);

test('the openai SDK through the gateway to a real mmserve speech service: same transcript as direct', { skip: skipSpeech }, async () => {
  const service = await startMmserve(`speech: {model_path: ${whisperModel}, threads: 2}\n`, 'speech');
  await waitReady(service.base);
  const gateway = await startMmserve(`gateway:
  pools:
    speech: {endpoints: ["http://localhost:${service.port}"]}  # a name, resolved by the gateway
    vision: {endpoints: [${vision1.url}]}
    image: {endpoints: [${image.url}]}
`);
  const viaGateway = new OpenAI({ baseURL: `${gateway.base}/v1`, apiKey: 'unused', maxRetries: 0 });
  const direct = new OpenAI({ baseURL: `${service.base}/v1`, apiKey: 'unused', maxRetries: 0 });
  const ids = [];
  for await (const model of viaGateway.models.list()) ids.push(model.id);
  assert.ok(ids.includes(path.basename(whisperModel, '.bin')), JSON.stringify(ids));
  const ours = await viaGateway.audio.transcriptions.create({ file: createReadStream(jfk), model: 'whisper-1' });
  const theirs = await direct.audio.transcriptions.create({ file: createReadStream(jfk), model: 'whisper-1' });
  assert.ok(ours.text.length > 0);
  assert.equal(ours.text, theirs.text);
  // Streamed transcription events pass through as SSE.
  const stream = await viaGateway.audio.transcriptions.create({
    file: createReadStream(jfk), model: 'whisper-1', stream: true,
  });
  let done;
  for await (const event of stream) if (event.type === 'transcript.text.done') done = event.text;
  assert.equal(done, theirs.text);
  assert.equal(await stop(gateway), 0);
  assert.equal(await stop(service), 0);
});

test('serve runs the gateway in-process: keys guard its own routes, a pool with endpoints is proxied', async () => {
  const sha = createHash('sha256').update('sk-local').digest('hex');
  const serve = await startMmserve(`vision: {enabled: false}
image: {enabled: false}
speech: {enabled: false}
gateway:
  auth: {api_keys: [{name: local, sha256: ${sha}}]}
  pools:
    speech: {endpoints: [${speech.url}]}
`, 'serve');
  assertOpenAIError(await raw(serve.port, 'GET', '/v1/models'), 401, 'invalid_api_key');
  const models = await raw(serve.port, 'GET', '/v1/models', { headers: { authorization: 'Bearer sk-local' } });
  assert.deepEqual(models.json.data.map((m) => m.id), ['speech-model']);
  const proxied = await post(serve.port, '/v1/audio/transcriptions', '{}', { authorization: 'Bearer sk-local' });
  assert.equal(proxied.json.service, 'speech');
  // vision runs (disabled) in this process: no proxy, the local router answers.
  assertOpenAIError(await post(serve.port, '/v1/chat/completions', '{}', { authorization: 'Bearer sk-local' }),
    404, 'unknown_url');
  assert.equal((await raw(serve.port, 'GET', '/healthz')).status, 200); // probes need no key
  assert.equal(await stop(serve), 0);
});

test('bad gateway configuration fails fast naming the key', async () => {
  const cases = [
    ['gateway:\n  routes: [{path: /v1/x, pool: missing}]\n', /gateway.routes.*'missing'/],
    ['gateway:\n  pools: {vision: {endpoints: ["https://x:1"]}}\n', /gateway.pools.vision.endpoints/],
    ['gateway:\n  routes: [{path: v1, pool: vision}]\n', /gateway.routes\[0\].path/],
    ['gateway:\n  auth: {api_keys: [{name: x, sha256: abc}]}\n', /gateway.auth.api_keys\[0\].sha256/],
    ['gateway:\n  rate_limits: {per_ip: {requests_per_second: fast}}\n', /gateway.rate_limits.per_ip.requests_per_second/],
    ['gateway:\n  cors: {allowed_origins: [example.com]}\n', /gateway.cors.allowed_origins/],
    ['gateway:\n  routes: [{path: /v1/, pool: vision, weight: 2}]\n', /gateway.routes\[0\].weight: unknown key/],
  ];
  for (const [yaml, message] of cases) {
    const file = path.join(work, `bad-${++configCount}.yaml`);
    writeFileSync(file, yaml);
    const child = spawn(binary, ['gateway', '--config', file, '--port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr.on('data', (piece) => { log += piece; });
    const code = await new Promise((resolve) => child.on('exit', resolve));
    assert.notEqual(code, 0, yaml);
    assert.match(log, message, `${yaml}: ${log}`);
  }
});

test('shutdown with upstream connections kept on every I/O thread and a health check in flight exits cleanly', async () => {
  // The health check path never answers, so a check is always in flight;
  // requests over many client connections leave kept-alive upstream
  // connections on each I/O thread's io_context. Those must close while
  // their contexts exist (a crash in free() at exit, seen in CI, otherwise).
  const upstream = await startUpstream('kept');
  const gateway = await startMmserve(`server: {io_threads: 4}
gateway:
  health_check: {path: /health/slow, interval: 30s}
  connect_timeout: 30s
  routes: [{path: /v1/, pool: vision}]
  pools:
    vision: {endpoints: [${upstream.url}]}
    image: {endpoints: [${upstream.url}]}
    speech: {endpoints: [${upstream.url}]}
`);
  const answers = await Promise.all(Array.from({ length: 24 }, () => post(gateway.port, '/v1/chat/completions', '{}')));
  assert.ok(answers.every((response) => response.status === 200));
  assert.equal(await stop(gateway), 0);
  upstream.child.kill('SIGKILL');
});
