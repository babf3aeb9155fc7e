// The media temp cache (media.storage) in the running server: an image
// fetched by URL is kept on disk by content, with its decoded pixels, and a
// restarted server (or another replica on the same folder) answers the
// same URL without fetching or decoding it again, for as long as the
// image server's Cache-Control allows. Responses a shared cache may not
// keep (no-store) are fetched every time.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startRoleInDir } from './support.mjs';

const binary = process.env.MMSERVE_BIN;
const modelsDir = process.env.MMSERVE_TEST_MODELS || path.resolve(process.env.MMSERVE_SOURCE_DIR || '.', '../shared/models');
const model = path.join(modelsDir, 'stories260K.gguf');
const mmproj = process.env.MMSERVE_TEST_MMPROJ || '';
const photo = path.resolve(modelsDir, '../media/newspaper-moon.jpeg');
const skip = (!binary && 'MMSERVE_BIN is not set') || (!existsSync(model) && `model absent: ${model}`) ||
  (!existsSync(mmproj) && `generated projector absent: ${mmproj}`) || (!existsSync(photo) && `image absent: ${photo}`);

let dir;
let cacheDir;
let imageServer;
let imageBase;
const fetches = { '/moon.jpg': 0, '/no-store.jpg': 0 };

const startServer = () => startRoleInDir(binary, 'vision', dir);

async function stopServer(server) {
  const exited = new Promise((resolve) => server.child.on('exit', resolve));
  server.child.kill('SIGTERM');
  assert.equal(await exited, 0);
}

async function describeImage(server, url) {
  const response = await fetch(`${server.base}/v1/chat/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: [{ type: 'text', text: 'What is this?' },
      { type: 'image_url', image_url: { url } }] }], max_tokens: 2, temperature: 0 }),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

async function metric(server, line) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const match = text.split('\n').find((l) => l.startsWith(line + ' '));
  return match ? Number(match.slice(line.length + 1)) : undefined;
}

function cacheFiles() {
  const files = [];
  for (const shard of readdirSync(cacheDir)) {
    for (const name of readdirSync(path.join(cacheDir, shard))) files.push({ name, size: statSync(path.join(cacheDir, shard, name)).size });
  }
  return files;
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync(path.join(tmpdir(), 'mmserve-media-cache-'));
  cacheDir = path.join(dir, 'images');
  const jpeg = readFileSync(photo);
  imageServer = createServer((request, response) => {
    if (!(request.url in fetches)) return response.writeHead(404).end();
    fetches[request.url]++;
    const cacheControl = request.url === '/moon.jpg' ? 'public, max-age=3600' : 'no-store';
    response.writeHead(200, { 'Content-Type': 'image/jpeg', 'Content-Length': jpeg.length, 'Cache-Control': cacheControl });
    response.end(jpeg);
  });
  await new Promise((resolve) => imageServer.listen(0, '127.0.0.1', resolve));
  imageBase = `http://127.0.0.1:${imageServer.address().port}`;
  writeFileSync(path.join(dir, 'mmserve.yaml'),
    `vision:\n  model_path: ${model}\n  mmproj_path: ${mmproj}\n  max_model_len: 1024\n` +
    `media:\n  fetch:\n    allow_networks: [127.0.0.1/32]\n  storage:\n    temp_dir: ${cacheDir}\n` +
    `    max_cache_size: 64Mi\n    cleanup_interval: 1h\n    max_age: 1h\n`);
});

after(() => {
  if (imageServer) imageServer.close();
});

test('a fetched image is kept on disk and a restarted server neither fetches nor decodes it again', { skip }, async () => {
  const jpegHash = createHash('sha256').update(readFileSync(photo)).digest('hex');
  const first = await startServer();
  try {
    await describeImage(first, `${imageBase}/moon.jpg`);
    assert.equal(fetches['/moon.jpg'], 1);
    const files = cacheFiles();
    // The image bytes under their SHA-256, the URL's link to them, the decoded pixels.
    assert.ok(files.some((f) => f.name === jpegHash), JSON.stringify(files));
    assert.equal(files.filter((f) => /^[0-9a-f]{64}$/.test(f.name)).length, 3, JSON.stringify(files));
    assert.equal(await metric(first, 'mmserve_media_cache_entries'), 3);
    assert.equal(await metric(first, 'mmserve_media_cache_writes_total{result="stored"}'), 3);
    const bytes = await metric(first, 'mmserve_media_cache_bytes');
    assert.equal(bytes, files.reduce((sum, f) => sum + f.size, 0));
  } finally {
    await stopServer(first);
  }

  const restarted = await startServer();
  try {
    assert.equal(await metric(restarted, 'mmserve_media_cache_entries'), 3); // rebuilt from the folder
    await describeImage(restarted, `${imageBase}/moon.jpg`);
    assert.equal(fetches['/moon.jpg'], 1, 'the restarted server fetched the image again');
    // The link and the decoded pixels were read; nothing new was written.
    assert.equal(await metric(restarted, 'mmserve_media_cache_lookups_total{result="hit"}'), 2);
    assert.equal(await metric(restarted, 'mmserve_media_cache_writes_total{result="stored"}'), 0);
  } finally {
    await stopServer(restarted);
  }
});

test('an image served with Cache-Control: no-store is fetched every time', { skip }, async () => {
  const server = await startServer();
  try {
    await describeImage(server, `${imageBase}/no-store.jpg`);
    await describeImage(server, `${imageBase}/no-store.jpg`);
    assert.equal(fetches['/no-store.jpg'], 2);
  } finally {
    await stopServer(server);
  }
});
