// `mmserve pull` over HTTPS against a local server laid out like Hugging
// Face (a self-signed certificate made with openssl, trusted through
// SSL_CERT_FILE as with other OpenSSL programs), and two pulls of one model
// at once: the second waits for the first instead of writing the same files.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer } from 'node:https';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const binary = process.env.MMSERVE_BIN;
const skip = !binary && 'MMSERVE_BIN is not set, skipping';

let work;
let server;
let endpoint;
let trusted;
const model = Buffer.alloc(3 << 20, 7).map((_, i) => (i * 2654435761) >>> 24);
const modelSha = createHash('sha256').update(model).digest('hex');
let slowDownloads = 0; // model bodies going out at a trickle right now

function certificate(dir, name, subjectAltName) {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
    '-subj', `/CN=${name}`, '-addext', `subjectAltName=${subjectAltName}`], { stdio: 'ignore' });
  return { key: readFileSync(key), cert: readFileSync(cert), path: cert };
}

// The hub: repository metadata, a resolve URL that redirects to the "CDN"
// path on the same server with the SHA-256 in X-Linked-Etag, and the bytes
// (slowly when ?slow is asked for, so two pulls overlap).
function hub(request, response) {
  const url = new URL(request.url, 'https://localhost');
  if (url.pathname === '/api/models/acme/tiny-GGUF/revision/main') {
    response.writeHead(200, { 'Content-Type': 'application/json' });
    response.end(JSON.stringify({ siblings: [{ rfilename: 'tiny-Q8_0.gguf' }, { rfilename: 'README.md' }], cardData: { license: 'mit' } }));
  } else if (url.pathname === '/acme/tiny-GGUF/resolve/main/tiny-Q8_0.gguf') {
    response.writeHead(302, { Location: '/cdn/tiny-Q8_0.gguf', 'X-Linked-Etag': `"${modelSha}"` });
    response.end();
  } else if (url.pathname === '/cdn/tiny-Q8_0.gguf') {
    response.writeHead(200, { 'Content-Length': model.length, 'Content-Type': 'application/octet-stream' });
    if (!hub.slow) return response.end(model);
    // 3 MiB in 64 KiB pieces, 40 ms apart: about two seconds.
    slowDownloads++;
    let offset = 0;
    const timer = setInterval(() => {
      response.write(model.subarray(offset, offset + 65536));
      offset += 65536;
      if (offset >= model.length) {
        clearInterval(timer);
        slowDownloads--;
        response.end();
      }
    }, 40);
  } else {
    response.writeHead(404).end('not found');
  }
}

before(async () => {
  if (skip) return;
  work = mkdtempSync(path.join(tmpdir(), 'mmserve-pull-https-'));
  trusted = certificate(work, 'localhost', 'DNS:localhost'); // not valid for 127.0.0.1
  server = createServer({ key: trusted.key, cert: trusted.cert }, hub);
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  endpoint = `https://localhost:${server.address().port}`;
});

after(() => server?.close());

function pull(args, env) {
  return new Promise((resolve) => {
    const child = spawn(binary, ['pull', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (piece) => { output += piece; });
    child.stderr.on('data', (piece) => { output += piece; });
    child.on('exit', (code) => resolve({ code, output }));
  });
}

test('pulls over HTTPS with the certificate trusted, verifying the SHA-256', { skip }, async () => {
  const models = mkdtempSync(path.join(work, 'models-'));
  const result = await pull(['acme/tiny-GGUF'], { HF_ENDPOINT: endpoint, SSL_CERT_FILE: trusted.path, MMSERVE_MODELS: models });
  assert.equal(result.code, 0, result.output);
  assert.match(result.output, /sha256 verified/);
  assert.deepEqual(readFileSync(path.join(models, 'tiny-GGUF', 'tiny-Q8_0.gguf')), model);
  const manifest = JSON.parse(readFileSync(path.join(models, 'manifests', 'tiny-GGUF.json'), 'utf8'));
  assert.equal(manifest.files[0].sha256, modelSha);
  assert.equal(manifest.license, 'mit');
});

test('refuses a certificate it does not trust, or one for another host, and leaves no model', { skip }, async () => {
  const models = mkdtempSync(path.join(work, 'models-'));
  const untrusted = await pull(['acme/tiny-GGUF'], { HF_ENDPOINT: endpoint, SSL_CERT_FILE: '/dev/null', MMSERVE_MODELS: models });
  assert.equal(untrusted.code, 1, untrusted.output);
  assert.match(untrusted.output, /certificate verify failed/);
  // A trusted certificate, but for another name than the one connected to.
  const wrongHost = await pull(['acme/tiny-GGUF'],
    { HF_ENDPOINT: endpoint.replace('localhost', '127.0.0.1'), SSL_CERT_FILE: trusted.path, MMSERVE_MODELS: models });
  assert.equal(wrongHost.code, 1, wrongHost.output);
  assert.match(wrongHost.output, /certificate verify failed/);
  assert.equal(existsSync(path.join(models, 'manifests', 'tiny-GGUF.json')), false);
  assert.equal(existsSync(path.join(models, 'tiny-GGUF', 'tiny-Q8_0.gguf')), false);
});

test('a second pull of the same model waits for the first, then finds it present', { skip }, async () => {
  const models = mkdtempSync(path.join(work, 'models-'));
  const env = { HF_ENDPOINT: endpoint, SSL_CERT_FILE: trusted.path, MMSERVE_MODELS: models };
  hub.slow = true;
  try {
    const first = pull(['acme/tiny-GGUF'], env);
    while (slowDownloads === 0) await new Promise((r) => setTimeout(r, 10));
    const second = await pull(['acme/tiny-GGUF'], env);
    const done = await first;
    assert.equal(done.code, 0, done.output);
    assert.equal(second.code, 0, second.output);
    assert.match(second.output, /waiting for another `mmserve pull` of tiny-GGUF to finish/);
    assert.match(second.output, /already present/);
  } finally {
    hub.slow = false;
  }
  assert.deepEqual(readFileSync(path.join(models, 'tiny-GGUF', 'tiny-Q8_0.gguf')), model);
});
