// mmserve's chat completions through the official openai SDK, against the
// real binary on a real trained model (stories260K).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startRoleInDir } from './support.mjs';
import OpenAI from 'openai';

const binary = process.env.MMSERVE_BIN;
const modelsDir = process.env.MMSERVE_TEST_MODELS || path.resolve(process.env.MMSERVE_SOURCE_DIR || '.', '../shared/models');
const model = path.join(modelsDir, 'stories260K.gguf');
const skip = !existsSync(model) && `model file absent, skipping: ${model}`;
const mmproj = process.env.MMSERVE_TEST_MMPROJ || '';
const photo = path.resolve(modelsDir, '../media/newspaper-moon.jpeg');
const skipImages = skip || (!existsSync(mmproj) && `generated projector absent, skipping: ${mmproj}`) ||
  (!existsSync(photo) && `test image absent, skipping: ${photo}`);

let server;
let client;
let imageServer;
let imageBase;
let httpsServers = [];
let trustedHttpsBase;
let untrustedHttpsBase;

// A self-signed certificate for 127.0.0.1 and localhost, made with openssl.
function selfSignedCertificate(dir, name) {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.pem`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' });
  return { key: readFileSync(key), cert: readFileSync(cert), certPath: cert };
}

async function serveImageOverHttps(tls, jpeg) {
  const server = createHttpsServer({ key: tls.key, cert: tls.cert }, (request, response) => {
    response.writeHead(200, { 'Content-Type': 'image/jpeg', 'Content-Length': jpeg.length });
    response.end(jpeg);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  httpsServers.push(server);
  return `https://localhost:${server.address().port}`;
}

before(async () => {
  if (skip) return;
  assert.ok(binary, 'MMSERVE_BIN must name the mmserve binary');
  const dir = mkdtempSync(path.join(tmpdir(), 'mmserve-openai-'));
  // The projector (when generated) makes stories260K a vision-language model;
  // image URLs on 127.0.0.1 are opened for the local image server below.
  const projector = existsSync(mmproj) ? `  mmproj_path: ${mmproj}\n` : '';
  // Two HTTPS image servers: one whose certificate mmserve is told to trust
  // (media.fetch.ca_file), one it is not.
  const trusted = selfSignedCertificate(dir, 'trusted');
  const untrusted = selfSignedCertificate(dir, 'untrusted');
  writeFileSync(path.join(dir, 'mmserve.yaml'),
    `vision:\n  model_path: ${model}\n  max_model_len: 1024\n${projector}` +
    `media:\n  fetch:\n    allow_networks: [127.0.0.1/32, '::1/128']\n    timeout: 5s\n    ca_file: ${trusted.certPath}\n`);
  if (existsSync(photo)) {
    const jpeg = readFileSync(photo);
    trustedHttpsBase = await serveImageOverHttps(trusted, jpeg);
    untrustedHttpsBase = await serveImageOverHttps(untrusted, jpeg);
    imageServer = createHttpServer((request, response) => {
      if (request.url === '/moon.jpg') {
        response.writeHead(200, { 'Content-Type': 'image/jpeg', 'Content-Length': jpeg.length });
        response.end(jpeg);
      } else {
        response.writeHead(404).end('not found');
      }
    });
    await new Promise((resolve) => imageServer.listen(0, '127.0.0.1', resolve));
    imageBase = `http://127.0.0.1:${imageServer.address().port}`;
  }
  server = await startRoleInDir(binary, 'vision', dir);
  client = new OpenAI({ baseURL: `${server.base}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  if (imageServer) imageServer.close();
  for (const https of httpsServers) https.close();
  if (!server) return;
  const exited = new Promise((resolve) => server.child.on('exit', resolve));
  server.child.kill('SIGTERM');
  assert.equal(await exited, 0, server.log());
});

test('models.list shows the loaded model', { skip }, async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.equal(models.length, 1);
  assert.equal(models[0].id, 'stories260K');
  assert.equal(models[0].object, 'model');
});

test('chat.completions.create, non-streaming', { skip }, async () => {
  const completion = await client.chat.completions.create({
    model: 'stories260K',
    messages: [{ role: 'user', content: 'Once upon a time' }],
    max_tokens: 24,
    temperature: 0,
  });
  assert.equal(completion.object, 'chat.completion');
  assert.equal(completion.choices[0].message.role, 'assistant');
  assert.ok(completion.choices[0].message.content.length > 0);
  assert.equal(completion.choices[0].finish_reason, 'length');
  assert.equal(completion.usage.completion_tokens, 24);
});

test('chat.completions.create, streaming with usage equals the whole answer', { skip }, async () => {
  const request = { model: 'stories260K', messages: [{ role: 'user', content: 'The little dog' }], max_tokens: 20, temperature: 0 };
  const whole = await client.chat.completions.create(request);
  const stream = await client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.delta.content ?? '';
      finish = choice.finish_reason ?? finish;
    }
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 20);
});

test('two concurrent requests both complete', { skip }, async () => {
  const ask = () => client.chat.completions.create({
    model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 16, temperature: 0,
  });
  const [a, b] = await Promise.all([ask(), ask()]);
  assert.equal(a.usage.completion_tokens, 16);
  assert.equal(b.usage.completion_tokens, 16);
});

test('bad inputs raise the SDK errors with OpenAI fields', { skip }, async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'stories260K', messages: [] }),
    (error) => error instanceof OpenAI.BadRequestError && error.status === 400 && error.param === 'messages',
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }),
    (error) => error instanceof OpenAI.NotFoundError && error.code === 'model_not_found',
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'hi' }], temperature: 9 }),
    (error) => error.status === 400 && error.param === 'temperature',
  );
  // Still serving.
  const ok = await client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 });
  assert.equal(ok.usage.completion_tokens, 2);
});

const photoDataUri = () => `data:image/jpeg;base64,${readFileSync(photo).toString('base64')}`;
const askAboutImage = (url, extra = {}) => client.chat.completions.create({
  model: 'stories260K',
  messages: [{ role: 'user', content: [
    { type: 'image_url', image_url: { url, detail: 'auto' } },
    { type: 'text', text: 'Once upon a time' },
  ] }],
  max_tokens: 12,
  temperature: 0,
  ...extra,
});

test('image as a data URI: streamed and whole answers agree', { skip: skipImages }, async () => {
  const whole = await askAboutImage(photoDataUri());
  const textOnly = await client.chat.completions.create({
    model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 12, temperature: 0,
  });
  // The image's embeddings are in the prompt (the projector yields 256).
  assert.ok(whole.usage.prompt_tokens >= textOnly.usage.prompt_tokens + 256, JSON.stringify(whole.usage));
  const stream = await askAboutImage(photoDataUri(), { stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) text += choice.delta.content ?? '';
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.deepEqual(usage, whole.usage);
});

test('image as a URL from a local web server answers like the same bytes inline', { skip: skipImages }, async () => {
  const inline = await askAboutImage(photoDataUri());
  const [byUrl, again] = await Promise.all([askAboutImage(`${imageBase}/moon.jpg`), askAboutImage(`${imageBase}/moon.jpg`)]);
  assert.equal(byUrl.choices[0].message.content, inline.choices[0].message.content);
  assert.equal(again.choices[0].message.content, inline.choices[0].message.content);
});

test('bad images raise SDK errors and the server goes on', { skip: skipImages }, async () => {
  await assert.rejects(askAboutImage('http://169.254.169.254/latest/meta-data/'),
    (error) => error instanceof OpenAI.BadRequestError && error.code === 'url_not_allowed' &&
      error.param === 'messages[0].content[0].image_url.url');
  await assert.rejects(askAboutImage(`${imageBase}/missing.jpg`),
    (error) => error instanceof OpenAI.BadRequestError && error.code === 'image_fetch_failed');
  await assert.rejects(askAboutImage(`data:image/png;base64,${Buffer.from('a text file').toString('base64')}`),
    (error) => error.status === 415 && error.code === 'unsupported_image_format');
  await assert.rejects(askAboutImage('data:image/png;base64,@@@'),
    (error) => error instanceof OpenAI.BadRequestError && error.code === 'invalid_image');
  const ok = await askAboutImage(photoDataUri());
  assert.equal(ok.usage.completion_tokens, 12);
});

test('image over HTTPS: a trusted certificate is fetched, an untrusted one refused', { skip: skipImages }, async () => {
  const inline = await askAboutImage(photoDataUri());
  const byHttps = await askAboutImage(`${trustedHttpsBase}/moon.jpg`);
  assert.equal(byHttps.choices[0].message.content, inline.choices[0].message.content);
  await assert.rejects(askAboutImage(`${untrustedHttpsBase}/moon.jpg`),
    (error) => error instanceof OpenAI.BadRequestError && error.code === 'image_fetch_failed' &&
      /certificate/.test(error.message));
});
