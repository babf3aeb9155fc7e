// mmserve's chat completions through the official openai SDK, against the
// real binary on a real trained model (stories260K).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';

const binary = process.env.MMSERVE_BIN;
const modelsDir = process.env.MMSERVE_TEST_MODELS || path.resolve(process.env.MMSERVE_SOURCE_DIR || '.', '../shared/models');
const model = path.join(modelsDir, 'stories260K.gguf');
const skip = !existsSync(model) && `model file absent, skipping: ${model}`;

let server;
let client;

function freePort() {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function waitReady(baseUrl) {
  for (let i = 0; i < 500; i++) {
    try {
      const response = await fetch(`${baseUrl}/readyz`);
      if (response.status === 200) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('mmserve did not become ready');
}

before(async () => {
  if (skip) return;
  assert.ok(binary, 'MMSERVE_BIN must name the mmserve binary');
  const dir = mkdtempSync(path.join(tmpdir(), 'mmserve-openai-'));
  writeFileSync(path.join(dir, 'mmserve.yaml'), `vision:\n  model_path: ${model}\n  max_model_len: 1024\n`);
  const port = await freePort();
  server = spawn(binary, ['vision', '--config', path.join(dir, 'mmserve.yaml'), '--port', String(port)], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, HOME: dir },
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  await waitReady(baseUrl);
  client = new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  if (!server) return;
  const exited = new Promise((resolve) => server.on('exit', resolve));
  server.kill('SIGTERM');
  assert.equal(await exited, 0);
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
