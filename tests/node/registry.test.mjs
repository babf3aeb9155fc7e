// The model registry against the real binary and real engines: several
// models per service chosen by the request's "model", loading on first use,
// admin load/unload, least-recently-used eviction within the memory budget
// (never of a model in use), idle unloading, pulled models from the store,
// and no failed request to one model while another loads and unloads.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import path from 'node:path';
import { freePort } from './support.mjs';

const binary = process.env.MMSERVE_BIN;
const modelsDir = process.env.MMSERVE_TEST_MODELS || path.resolve(process.env.MMSERVE_SOURCE_DIR || '.', '../shared/models');
const stories = path.join(modelsDir, 'stories260K.gguf');
const tinyLlama = process.env.MMSERVE_TEST_TINY_LLAMA || '';
const tinyGemma = process.env.MMSERVE_TEST_TINY_GEMMA3 || '';
const whisper = process.env.MMSERVE_TEST_WHISPER || '';
const whisperEn = process.env.MMSERVE_TEST_WHISPER_EN || '';
const speech = path.resolve(modelsDir, '../media/jfk.mp3');
const absent = [stories, tinyLlama, tinyGemma, whisper, whisperEn, speech].filter((file) => !file || !existsSync(file));
const skip = absent.length > 0 && `test files absent, skipping: ${absent.join(', ')}`;

const children = [];
let work;

before(() => {
  work = mkdtempSync(path.join(tmpdir(), 'mmserve-registry-'));
});
after(() => {
  for (const child of children) child.kill('SIGKILL');
});

async function start(yaml, { host = '127.0.0.1', readyIds = [] } = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(work, 'server-'));
  const file = path.join(dir, 'mmserve.yaml');
  writeFileSync(file, `server:\n  host: ${host}\n  port: ${port}\nimage:\n  enabled: false\n` +
    `media:\n  storage:\n    temp_dir: ${path.join(dir, 'media')}\n${yaml}`);
  const child = spawn(binary, ['serve', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: dir } });
  children.push(child);
  let log = '';
  child.stdout.on('data', (piece) => { log += piece; });
  child.stderr.on('data', (piece) => { log += piece; });
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`mmserve exited with ${child.exitCode}:\n${log}`);
    const models = await list(base).catch(() => null);
    if (models && readyIds.every((id) => models[id]?.status === 'loaded')) break;
    if (i > 1500) throw new Error(`mmserve did not get ready:\n${log}`);
    await sleep(20);
  }
  return { base, port, child, log: () => log };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// id -> model object of /v1/models.
async function list(base) {
  const response = await fetch(`${base}/v1/models`);
  if (!response.ok) throw new Error(`GET /v1/models: ${response.status}`);
  return Object.fromEntries((await response.json()).data.map((model) => [model.id, model]));
}

async function waitStatus(base, id, status, ms = 20_000) {
  const until = Date.now() + ms;
  for (;;) {
    const model = (await list(base))[id];
    if (model?.status === status) return model;
    if (Date.now() > until) throw new Error(`${id} is ${model?.status}, not ${status}`);
    await sleep(25);
  }
}

async function chat(base, model, extra = {}) {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 8, ...extra }),
  });
  return { status: response.status, body: await response.json(), retryAfter: response.headers.get('retry-after') };
}

async function transcribe(base, model, file = speech) {
  const form = new FormData();
  const bytes = (await import('node:fs')).readFileSync(file);
  form.append('file', new Blob([bytes]), path.basename(file));
  form.append('model', model);
  const response = await fetch(`${base}/v1/audio/transcriptions`, { method: 'POST', body: form });
  return { status: response.status, body: await response.json() };
}

async function admin(base, id, action, headers = {}) {
  const response = await fetch(`${base}/v1/models/${id}/${action}`, { method: 'POST', headers });
  return { status: response.status, body: await response.json() };
}

async function metric(base, name, labels = {}) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const selector = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',');
  const prefix = selector ? `${name}{${selector}}` : `${name} `;
  const line = text.split('\n').find((l) => l.startsWith(prefix));
  return line ? Number(line.split(' ').pop()) : 0;
}

function stop(server) {
  return new Promise((resolve) => {
    server.child.on('exit', (code, signal) => resolve(signal ? `killed by ${signal}:\n${server.log()}` : code));
    server.child.kill('SIGTERM');
  });
}

// Each model's memory estimate, as the registry computes it.
async function estimates() {
  const server = await start(
    `vision:\n  model_path: ${stories}\n  max_model_len: 512\n` +
    `speech:\n  model_path: ${whisper}\n  parallel: 1\n` +
    `registry:\n  models:\n` +
    `    - {name: tiny-llama, service: vision, path: ${tinyLlama}}\n` +
    `    - {name: tiny-gemma, service: vision, path: ${tinyGemma}}\n` +
    `    - {name: whisper-en, service: speech, path: ${whisperEn}}\n`, { readyIds: ['stories260K'] });
  const models = await list(server.base);
  assert.equal(await stop(server), 0);
  return Object.fromEntries(Object.entries(models).map(([id, model]) => [id, model.memory_bytes]));
}

test('several models per service, chosen by "model", loaded on first use; unknown names get a 404 listing them', { skip }, async () => {
  const server = await start(
    `vision:\n  model_path: ${stories}\n  max_model_len: 512\n` +
    `speech:\n  model_path: ${whisper}\n` +
    `registry:\n  memory_budget: 8Gi\n  models:\n` +
    `    - {name: tiny-llama, service: vision, path: ${tinyLlama}}\n` +
    `    - {name: whisper-en, service: speech, path: ${whisperEn}}\n`, { readyIds: ['stories260K', 'tiny-whisper-random'] });
  let models = await list(server.base);
  assert.equal(models['tiny-llama'].status, 'available');
  assert.equal(models['whisper-en'].status, 'available');
  assert.ok(models['tiny-llama'].memory_bytes > 0 && models.stories260K.memory_bytes > 0);
  assert.equal(models['tiny-llama'].loads_on_demand, true);
  // Models that load when asked for do not hold readiness back.
  assert.equal((await fetch(`${server.base}/readyz`)).status, 200);

  const first = await chat(server.base, 'tiny-llama');
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.equal(first.body.model, 'tiny-llama');
  const other = await chat(server.base, 'stories260K');
  assert.equal(other.body.model, 'stories260K');
  assert.equal((await chat(server.base, '')).body.model, 'stories260K'); // no model: the service's first

  const missing = await chat(server.base, 'gpt-9');
  assert.equal(missing.status, 404);
  assert.equal(missing.body.error.code, 'model_not_found');
  assert.match(missing.body.error.message, /Available chat models: stories260K, tiny-llama\./);

  const heard = await transcribe(server.base, 'whisper-en');
  assert.equal(heard.status, 200, JSON.stringify(heard.body));
  assert.equal((await transcribe(server.base, 'whisper-1')).status, 200); // OpenAI's name: the first speech model
  const unknownSpeech = await transcribe(server.base, 'whisper-9');
  assert.equal(unknownSpeech.status, 404);
  assert.match(unknownSpeech.body.error.message, /Available speech models: tiny-whisper-random, whisper-en\./);

  models = await list(server.base);
  assert.equal(models['tiny-llama'].status, 'loaded');
  assert.equal(models['whisper-en'].status, 'loaded');
  // Loading reports its progress, for speech too (bytes of the file read).
  assert.match(server.log(), /loading speech model 'whisper-en': 100%/);
  assert.match(server.log(), /loading vision model 'tiny-llama': 100%/);
  assert.equal(await metric(server.base, 'mmserve_model_loads_total', { service: 'vision', model: 'tiny-llama', result: 'loaded' }), 1);
  const reserved = await metric(server.base, 'mmserve_models_memory_bytes');
  const sum = Object.values(models).reduce((total, model) => total + (model.memory_bytes || 0), 0);
  assert.equal(reserved, sum);
  assert.equal(await stop(server), 0);
});

test('admin load and unload: with an admin key when keys are configured, else from this machine only', { skip }, async () => {
  const key = 'admin-secret';
  const sha256 = execFileSync('sh', ['-c', `printf %s '${key}' | sha256sum | cut -d' ' -f1`]).toString().trim();
  const keyed = await start(
    `vision:\n  model_path: ${stories}\n  max_model_len: 512\nspeech:\n  enabled: false\n` +
    `registry:\n  admin_api_keys: [{name: ops, sha256: ${sha256}}]\n  models:\n` +
    `    - {name: tiny-llama, service: vision, path: ${tinyLlama}}\n`, { readyIds: ['stories260K'] });
  assert.equal((await admin(keyed.base, 'tiny-llama', 'load')).status, 401);
  assert.equal((await admin(keyed.base, 'tiny-llama', 'load', { Authorization: 'Bearer wrong' })).status, 401);
  const auth = { Authorization: `Bearer ${key}` };
  const loading = await admin(keyed.base, 'tiny-llama', 'load', auth);
  assert.ok([200, 202].includes(loading.status), JSON.stringify(loading.body));
  assert.equal(loading.body.id, 'tiny-llama');
  await waitStatus(keyed.base, 'tiny-llama', 'loaded');
  assert.equal((await admin(keyed.base, 'tiny-llama', 'load', auth)).status, 200); // already loaded
  const unloaded = await admin(keyed.base, 'tiny-llama', 'unload', auth);
  assert.equal(unloaded.status, 200);
  assert.equal(unloaded.body.status, 'available');
  assert.equal((await list(keyed.base))['tiny-llama'].status, 'available');
  assert.equal((await admin(keyed.base, 'nope', 'unload', auth)).status, 404);
  // Unloaded, then asked for: it loads again.
  assert.equal((await chat(keyed.base, 'tiny-llama')).status, 200);
  assert.equal(await metric(keyed.base, 'mmserve_model_unloads_total', { service: 'vision', model: 'tiny-llama', reason: 'admin' }), 1);
  assert.equal(await stop(keyed), 0);

  // No admin key configured: this machine only.
  const open = await start(`vision:\n  model_path: ${stories}\n  max_model_len: 512\nspeech:\n  enabled: false\n`,
    { host: '0.0.0.0', readyIds: ['stories260K'] });
  assert.equal((await admin(open.base, 'stories260K', 'unload')).status, 200);
  assert.equal((await admin(open.base, 'stories260K', 'load')).status, 202);
  await waitStatus(open.base, 'stories260K', 'loaded');
  const external = Object.values(networkInterfaces()).flat().find((address) => address.family === 'IPv4' && !address.internal);
  if (external) {
    const response = await fetch(`http://${external.address}:${open.port}/v1/models/stories260K/unload`, { method: 'POST' });
    assert.equal(response.status, 403);
    assert.match((await response.json()).error.message, /registry\.admin_api_keys/);
    assert.equal((await list(open.base)).stories260K.status, 'loaded');
  }
  assert.equal(await stop(open), 0);
});

test('eviction: the least recently used idle model goes first, the budget is never exceeded; a model that can never fit gets 507', { skip }, async () => {
  const sizes = await estimates();
  const vision = ['stories260K', 'tiny-llama', 'tiny-gemma'].map((id) => sizes[id]).sort((a, b) => b - a);
  const budget = vision[0] + vision[1]; // any two, never three
  const server = await start(
    `vision:\n  model_path: ${stories}\n  max_model_len: 512\nspeech:\n  enabled: false\n` +
    `registry:\n  memory_budget: ${budget}\n  models:\n` +
    `    - {name: tiny-llama, service: vision, path: ${tinyLlama}}\n` +
    `    - {name: tiny-gemma, service: vision, path: ${tinyGemma}}\n`, { readyIds: ['stories260K'] });
  let peak = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, await metric(server.base, 'mmserve_models_memory_bytes'));
      await sleep(5);
    }
  })();
  assert.equal((await chat(server.base, 'tiny-llama')).status, 200);
  assert.equal((await chat(server.base, 'stories260K')).status, 200); // tiny-llama is now the least recently used
  assert.equal((await chat(server.base, 'tiny-gemma')).status, 200);
  let models = await list(server.base);
  assert.deepEqual([models.stories260K.status, models['tiny-llama'].status, models['tiny-gemma'].status],
    ['loaded', 'available', 'loaded']);
  assert.equal(await metric(server.base, 'mmserve_model_unloads_total', { service: 'vision', model: 'tiny-llama', reason: 'evicted' }), 1);
  assert.equal((await chat(server.base, 'tiny-llama')).status, 200); // now stories260K is the oldest
  models = await list(server.base);
  assert.deepEqual([models.stories260K.status, models['tiny-llama'].status, models['tiny-gemma'].status],
    ['available', 'loaded', 'loaded']);
  sampling = false;
  await sampler;
  assert.ok(peak > 0 && peak <= budget, `reserved ${peak} of ${budget}`);
  assert.equal(await metric(server.base, 'mmserve_models_memory_budget_bytes'), budget);
  assert.equal(await stop(server), 0);

  const tiny = await start(`vision:\n  model_path: ${stories}\nspeech:\n  enabled: false\nregistry:\n  memory_budget: 1Mi\n`);
  assert.equal((await list(tiny.base)).stories260K.status, 'available');
  const refused = await chat(tiny.base, 'stories260K');
  assert.equal(refused.status, 507);
  assert.equal(refused.body.error.code, 'insufficient_memory');
  assert.match(refused.body.error.message, /more than the whole memory budget of 1\.0 MiB/);
  assert.equal(await stop(tiny), 0);
});

test('a model serving a request is never evicted: the other waits with 503 and loads once it is free', { skip }, async () => {
  const sizes = await estimates();
  const budget = Math.max(sizes['tiny-whisper-random'], sizes['whisper-en']) + 1024; // one speech model at a time
  const long = path.join(work, 'long.wav');
  execFileSync('ffmpeg', ['-loglevel', 'error', '-y', '-stream_loop', '20', '-i', speech, '-t', '200', '-ar', '16000', '-ac', '1', long]);
  const server = await start(
    `vision:\n  enabled: false\nspeech:\n  model_path: ${whisper}\n  parallel: 1\n` +
    `registry:\n  memory_budget: ${budget}\n  models:\n    - {name: whisper-en, service: speech, path: ${whisperEn}}\n`,
    { readyIds: ['tiny-whisper-random'] });
  const busy = transcribe(server.base, 'tiny-whisper-random', long);
  // Wait until the long transcription holds its model.
  for (let i = 0; i < 400 && (await metric(server.base, 'mmserve_slots_busy', { service: 'speech' })) < 1; i++) await sleep(10);
  const refused = await transcribe(server.base, 'whisper-en');
  assert.equal(refused.status, 503, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, 'memory_budget_full');
  assert.match(refused.body.error.message, /serving requests or loading \(tiny-whisper-random\)/);
  assert.equal((await list(server.base))['tiny-whisper-random'].status, 'loaded');
  const unloading = await admin(server.base, 'tiny-whisper-random', 'unload');
  assert.equal(unloading.status, 409);
  assert.equal(unloading.body.error.code, 'model_in_use');
  assert.equal((await busy).status, 200);
  const after = await transcribe(server.base, 'whisper-en');
  assert.equal(after.status, 200, JSON.stringify(after.body));
  const models = await list(server.base);
  assert.equal(models['tiny-whisper-random'].status, 'available');
  assert.equal(models['whisper-en'].status, 'loaded');
  assert.equal(await stop(server), 0);
});

test('hot load and unload under traffic: no request to the other model fails', { skip }, async () => {
  const server = await start(
    `vision:\n  model_path: ${stories}\n  max_model_len: 512\nspeech:\n  enabled: false\n` +
    `registry:\n  models:\n    - {name: tiny-llama, service: vision, path: ${tinyLlama}}\n`, { readyIds: ['stories260K'] });
  const results = [];
  let running = true;
  const traffic = async () => {
    while (running) results.push((await chat(server.base, 'stories260K')).status);
  };
  const workers = [traffic(), traffic()];
  for (let round = 0; round < 3; round++) {
    const before = results.length;
    while (results.length === before) await sleep(5); // a request to the other model between rounds
    assert.ok([200, 202].includes((await admin(server.base, 'tiny-llama', 'load')).status));
    await waitStatus(server.base, 'tiny-llama', 'loaded');
    assert.equal((await chat(server.base, 'tiny-llama')).status, 200);
    assert.equal((await admin(server.base, 'tiny-llama', 'unload')).status, 200);
  }
  // Loads are quick on these small models: the traffic goes on a while longer either way.
  while (results.length < 20) await sleep(10);
  running = false;
  await Promise.all(workers);
  assert.deepEqual(results.filter((status) => status !== 200), []);
  assert.equal(await metric(server.base, 'mmserve_model_loads_total', { service: 'vision', model: 'tiny-llama', result: 'loaded' }), 3);
  assert.equal(await stop(server), 0);
});

test('idle models unload after registry.idle_unload and load again when asked for', { skip }, async () => {
  const server = await start(
    `vision:\n  model_path: ${stories}\n  max_model_len: 512\nspeech:\n  enabled: false\nregistry:\n  idle_unload: 1s\n`,
    { readyIds: ['stories260K'] });
  assert.equal((await chat(server.base, 'stories260K')).status, 200);
  await waitStatus(server.base, 'stories260K', 'available', 5000);
  assert.equal(await metric(server.base, 'mmserve_model_unloads_total', { service: 'vision', model: 'stories260K', reason: 'idle' }), 1);
  assert.equal(await metric(server.base, 'mmserve_models_memory_bytes'), 0);
  assert.equal((await chat(server.base, 'stories260K')).status, 200);
  assert.equal(await stop(server), 0);
});

// What `mmserve pull` leaves in the store: the file, then the manifest.
function putInStore(store, name, file) {
  mkdirSync(path.join(store, 'manifests'), { recursive: true });
  mkdirSync(path.join(store, name), { recursive: true });
  execFileSync('cp', [file, path.join(store, name, path.basename(file))]);
  writeFileSync(path.join(store, 'manifests', `${name}.json`), JSON.stringify({
    name, family: 'vision', source: { repo: 'ggml-org/models', revision: 'main' }, license: 'mit',
    files: [{ path: `${name}/${path.basename(file)}`, size: 0, sha256: '', url: '' }],
  }));
}

test('models pulled into the store are served by name', { skip }, async () => {
  const store = path.join(work, 'store');
  putInStore(store, 'tiny-stories', stories);
  const server = await start(
    `models_dir: ${store}\nvision:\n  model_path: ${tinyLlama}\n  max_model_len: 512\nspeech:\n  enabled: false\n`,
    { readyIds: ['tiny-llama-random'] });
  assert.equal((await list(server.base))['tiny-stories'].status, 'available');
  const answer = await chat(server.base, 'tiny-stories', { temperature: 0 });
  assert.equal(answer.status, 200);
  assert.equal(answer.body.model, 'tiny-stories');
  assert.equal(await stop(server), 0);
});

test('a model pulled while the server runs is served by name at once, and listed within registry.rescan_interval', { skip }, async () => {
  const store = mkdtempSync(path.join(work, 'late-store-'));
  // Only requests look (rescan_interval 0): the listing shows nothing new until one names the model.
  let server = await start(
    `models_dir: ${store}\nvision:\n  model_path: ${tinyLlama}\n  max_model_len: 512\nspeech:\n  enabled: false\n` +
    `registry:\n  rescan_interval: 0\n`, { readyIds: ['tiny-llama-random'] });
  assert.equal((await chat(server.base, 'late-stories')).status, 404);
  putInStore(store, 'late-stories', stories);
  await sleep(1100); // a request's look happens at most once a second
  assert.equal((await list(server.base))['late-stories'], undefined);
  const answer = await chat(server.base, 'late-stories', { temperature: 0 });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  assert.equal(answer.body.model, 'late-stories');
  assert.equal((await list(server.base))['late-stories'].status, 'loaded');
  // An admin load of a model pulled since looks too.
  putInStore(store, 'late-llama', tinyLlama);
  await sleep(1100);
  const loaded = await admin(server.base, 'late-llama', 'load');
  assert.equal(loaded.status, 202, JSON.stringify(loaded.body)); // loading started
  await waitStatus(server.base, 'late-llama', 'loaded');
  // A name that is nowhere is still a 404 listing the models there are.
  const nowhere = await chat(server.base, 'gpt-9');
  assert.equal(nowhere.status, 404);
  assert.match(nowhere.body.error.message, /Available chat models: tiny-llama-random, late-stories, late-llama\./);
  assert.equal(await stop(server), 0);

  // Every rescan_interval the store is looked at without a request.
  const other = mkdtempSync(path.join(work, 'late-store-'));
  server = await start(
    `models_dir: ${other}\nvision:\n  model_path: ${tinyLlama}\n  max_model_len: 512\nspeech:\n  enabled: false\n` +
    `registry:\n  rescan_interval: 200ms\n`, { readyIds: ['tiny-llama-random'] });
  putInStore(other, 'late-stories', stories);
  const listed = await waitStatus(server.base, 'late-stories', 'available', 5000);
  assert.equal(listed.loads_on_demand, true);
  // Ready to serve, though not loaded: the "model not ready" alert must not fire for it.
  assert.equal(await metric(server.base, 'mmserve_model_ready', { service: 'vision', model: 'late-stories' }), 1);
  // Removed from the store: it leaves the list, and its series the metrics.
  execFileSync(binary, ['models', 'rm', 'late-stories'], { env: { ...process.env, MMSERVE_MODELS: other } });
  for (let i = 0; (await list(server.base))['late-stories']; i++) {
    assert.ok(i < 250, 'late-stories is still listed 5 s after its removal');
    await sleep(20);
  }
  assert.doesNotMatch(await (await fetch(`${server.base}/metrics`)).text(), /model="late-stories"\}/);
  assert.equal((await chat(server.base, 'late-stories')).status, 404);
  assert.equal(await stop(server), 0);
});

test('a configured model missing at start is served once it is put there: /readyz turns ready', { skip }, async () => {
  // A Kubernetes volume filled after the pod started: no restart needed.
  for (const rescan of ['200ms', '0']) {
    const folder = path.join(mkdtempSync(path.join(work, 'late-volume-')), 'late-model');
    const server = await start(
      `vision:\n  model_path: ${folder}\n  max_model_len: 512\nspeech:\n  enabled: false\n` +
      `registry:\n  rescan_interval: ${rescan}\n`);
    const before = await fetch(`${server.base}/readyz`);
    assert.equal(before.status, 503);
    assert.match((await before.json()).reasons.join('\n'), /vision model 'late-model' is missing: model file or folder .* does not exist/);
    assert.equal(await metric(server.base, 'mmserve_model_ready', { service: 'vision', model: 'late-model' }), 0);
    const refused = await chat(server.base, '');
    assert.equal(refused.status, 503);
    assert.equal(refused.body.error.code, 'model_not_loaded');
    mkdirSync(folder);
    execFileSync('cp', [stories, folder]);
    if (rescan === '0') {
      // Only a request looks: the one that names it is answered (once the
      // files have been left alone for 2 s: a copy may still be going on).
      await sleep(2200);
      const answer = await chat(server.base, 'late-model');
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.equal(answer.body.model, 'late-model');
    } else {
      await waitStatus(server.base, 'late-model', 'loaded');
      assert.equal((await chat(server.base, '')).status, 200);
    }
    assert.equal((await fetch(`${server.base}/readyz`)).status, 200);
    assert.equal(await metric(server.base, 'mmserve_model_ready', { service: 'vision', model: 'late-model' }), 1);
    assert.match(server.log(), /model found/);
    assert.equal(await stop(server), 0);
  }
});
