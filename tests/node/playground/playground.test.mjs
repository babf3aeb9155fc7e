// The playground page in a real browser (Debian's chromium, driven by
// playwright-core) against the real mmserve binary serving real models:
// stories260K with a generated projector for chat, a generated tiny whisper
// model for transcription. Every tab is exercised; screenshots go to
// MMSERVE_TEST_ARTIFACTS; the page must log no console errors.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { freePort } from '../support.mjs';

const binary = process.env.MMSERVE_BIN;
const sourceDir = process.env.MMSERVE_SOURCE_DIR || '.';
const modelsDir = process.env.MMSERVE_TEST_MODELS || path.resolve(sourceDir, '../shared/models');
const mediaDir = path.resolve(modelsDir, '../media');
const textModel = path.join(modelsDir, 'stories260K.gguf');
const mmproj = process.env.MMSERVE_TEST_MMPROJ || '';
const whisperModel = process.env.MMSERVE_TEST_WHISPER || '';
const tinyLlama = process.env.MMSERVE_TEST_TINY_LLAMA || '';
const tinySd = process.env.MMSERVE_TEST_TINY_SD || '';
const photo = path.join(mediaDir, 'newspaper-moon.jpeg');
const speech = path.join(mediaDir, 'jfk.mp3');
const artifacts = process.env.MMSERVE_TEST_ARTIFACTS || path.join(tmpdir(), 'mmserve-playground-artifacts');
const browserPath = [process.env.CHROMIUM_PATH, '/usr/lib/chromium/chromium', '/usr/bin/chromium']
  .find((candidate) => candidate && existsSync(candidate));

const absent = [textModel, mmproj, whisperModel, tinyLlama, photo, speech].filter((file) => !file || !existsSync(file));
const skip = (!browserPath && 'chromium is not installed (scripts/bootstrap.sh installs it), skipping') ||
  (absent.length > 0 && `test files absent, skipping: ${absent.join(', ')}`);

const children = [];
let browser;

// Starts `mmserve serve` with a config; resolves with its base URL once ready.
async function startServer(config, { ready = true, serverKeys = '', apiKey = '' } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'mmserve-playground-'));
  const port = await freePort();
  writeFileSync(path.join(dir, 'mmserve.yaml'),
    `server:\n  port: ${port}\n${serverKeys}${config}\nmedia:\n  storage:\n    temp_dir: ${path.join(dir, 'media')}\n`);
  const child = spawn(binary, ['serve', '--config', path.join(dir, 'mmserve.yaml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (data) => { log += data; });
  children.push(child);
  const base = `http://127.0.0.1:${port}`;
  // Ready means the configured vision and speech models are loaded (an image
  // service without a model keeps /readyz at 503 on purpose).
  for (let i = 0; ; i++) {
    const headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
    const list = await fetch(`${base}/v1/models`, { headers }).then((r) => (r.ok ? r.json() : null)).catch(() => null);
    if (list && (!ready || list.data.every((m) => m.status === 'loaded' || m.service === 'image' || m.loads_on_demand))) break;
    if (i === 1500) throw new Error(`mmserve did not load its models:\n${log}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { base, log: () => log };
}

// A page that records console errors and any request leaving the server's origin.
async function openPage(base, { allowedErrors = [] } = {}) {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1200, height: 900 } });
  await context.grantPermissions(['microphone'], { origin: base });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    if (allowedErrors.some((pattern) => pattern.test(message.text()))) return;
    problems.push(`console error: ${message.text()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(base) && !url.startsWith('data:') && !url.startsWith('blob:')) problems.push(`external request: ${url}`);
  });
  await page.goto(`${base}/`);
  return { page, context, problems };
}

async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

async function metric(base, name, labels) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const selector = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',');
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${selector}}`));
  return line ? Number(line.split(' ').pop()) : undefined;
}

before(async () => {
  if (skip) return;
  assert.ok(binary, 'MMSERVE_BIN must name the mmserve binary');
  browser = await chromium.launch({
    executablePath: browserPath,
    headless: true,
    // A fake microphone (a tone) granted without a prompt; root needs --no-sandbox.
    args: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream', '--no-sandbox'],
  });
});

after(async () => {
  await browser?.close();
  for (const child of children) child.kill('SIGKILL');
});

describe('playground against a server with vision, speech and no image model', { skip }, () => {
  let server;
  before(async () => {
    server = await startServer(
      `vision:\n  model_path: ${textModel}\n  mmproj_path: ${mmproj}\n  max_model_len: 1024\n  parallel: 2\n` +
      `speech:\n  model_path: ${whisperModel}\n` +
      `registry:\n  models: [{name: tiny-llama, service: vision, path: ${tinyLlama}}]\n`);
  });

  test('the page and its files come from the binary, revalidated by ETag', async () => {
    const page = await fetch(`${server.base}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type'), /^text\/html/);
    assert.match(page.headers.get('content-security-policy'), /default-src 'self'/);
    const html = await page.text();
    assert.match(html, /<title>mmserve playground<\/title>/);
    // The ETag is the file's own SHA-256 (first 128 bits), so a new build means a new tag.
    const source = readFileSync(path.join(sourceDir, 'src/playground/index.html'));
    const expected = `"${createHash('sha256').update(source).digest('hex').slice(0, 32)}"`;
    assert.equal(page.headers.get('etag'), expected);
    assert.equal(html, source.toString());
    const again = await fetch(`${server.base}/`, { headers: { 'If-None-Match': expected } });
    assert.equal(again.status, 304);
    assert.equal((await again.text()).length, 0);
    const script = await fetch(`${server.base}/playground/playground.js`);
    assert.equal(script.status, 200);
    assert.match(script.headers.get('content-type'), /^text\/javascript/);
    const missing = await fetch(`${server.base}/playground/nope.js`);
    assert.equal(missing.status, 404);
    assert.match((await missing.json()).error.message, /no file 'nope.js'/);
  });

  test('chat: a streamed answer equal to the API\'s, stats, images attached and pasted, stop', async () => {
    const { page, context, problems } = await openPage(server.base);
    const modelId = (await (await fetch(`${server.base}/v1/models`)).json()).data.find((m) => m.service === 'vision').id;
    await page.waitForFunction((id) => document.querySelector('#chat-model').value === id, modelId);
    assert.equal(await page.isDisabled('#chat-send'), false);

    // Greedy, so the page's streamed text must equal the server's non-streamed answer.
    await page.fill('#chat-temperature', '0');
    await page.fill('#chat-max-tokens', '30');
    await page.fill('#chat-input', 'Once upon a time');
    await page.press('#chat-input', 'Enter');
    await page.waitForFunction(() => /tokens\/s/.test(document.querySelector('#chat-stats').textContent), null, { timeout: 60_000 });
    const shown = await page.textContent('.message.assistant .content');
    const direct = await (await fetch(`${server.base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: modelId, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 30, temperature: 0 }),
    })).json();
    assert.ok(direct.choices[0].message.content.length > 0);
    assert.equal(shown, direct.choices[0].message.content);
    const stats = await page.textContent('#chat-stats');
    assert.match(stats, /TTFT \d+ ms · [\d.]+ tokens\/s · 30 tokens · prompt \d+ tokens · finish: length/);

    // An image by the file picker and one pasted: thumbnails, then sent as image parts.
    await page.setInputFiles('#chat-files', photo);
    await page.waitForSelector('#chat-attachments li img');
    await page.evaluate(async (base64) => {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const data = new DataTransfer();
      data.items.add(new File([bytes], 'pasted.jpeg', { type: 'image/jpeg' }));
      document.querySelector('#chat-input').dispatchEvent(new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true }));
    }, readFileSync(photo).toString('base64'));
    await page.waitForFunction(() => document.querySelectorAll('#chat-attachments li').length === 2);
    const before = await metric(server.base, 'image_size_bytes_count', { service: 'vision' }) ?? 0;
    await page.fill('#chat-input', 'What is in these pictures?');
    await screenshot(page, 'chat-attachments');
    await page.click('#chat-send');
    await page.waitForFunction(() => document.querySelectorAll('.message.assistant').length === 2 &&
      /finish/.test(document.querySelector('#chat-stats').textContent), null, { timeout: 60_000 });
    assert.equal(await page.locator('.message.user').nth(1).locator('img').count(), 2);
    assert.equal(await page.locator('#chat-attachments li').count(), 0);
    assert.equal(await metric(server.base, 'image_size_bytes_count', { service: 'vision' }), before + 2);
    assert.equal(await page.locator('.message.error').count(), 0);
    await screenshot(page, 'chat');

    // Stop mid-answer: the text so far stays, the server frees the slot.
    await page.fill('#chat-temperature', '1');
    await page.fill('#chat-max-tokens', '900');
    await page.click('#chat-new');
    await page.fill('#chat-input', 'Tell me a long story');
    await page.click('#chat-send');
    await page.waitForFunction(() => (document.querySelector('.message.assistant .content')?.textContent || '').length > 0, null, { timeout: 60_000 });
    await page.click('#chat-stop');
    await page.waitForFunction(() => /\[stopped\]$/.test(document.querySelector('.message.assistant .content').textContent));
    let busy;
    for (let i = 0; i < 100 && busy !== 0; i++) {
      busy = await metric(server.base, 'mmserve_slots_busy', { service: 'vision' });
      if (busy !== 0) await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(busy, 0, 'the stopped request still holds a slot');
    assert.equal(await page.isDisabled('#chat-stop'), true);
    assert.equal(await page.isDisabled('#chat-send'), false);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('transcribe: a file with segment timestamps, SRT and VTT downloads, a microphone recording', async () => {
    const { page, context, problems } = await openPage(server.base);
    await page.click('#tab-transcribe');
    await page.waitForFunction(() => !document.querySelector('#asr-submit').disabled);
    await page.setInputFiles('#asr-file', speech);
    await page.selectOption('#asr-language', 'en');
    await page.check('#asr-ts-word');
    await page.click('#asr-submit');
    await page.waitForFunction(() => /audio/.test(document.querySelector('#asr-summary').textContent), null, { timeout: 120_000 });
    assert.match(await page.textContent('#asr-summary'), /verbose_json · [\d.]+ s · language english · audio 11\.0 s · \d+ words/);
    const rows = page.locator('#asr-segments tbody tr');
    assert.ok(await rows.count() >= 1);
    assert.match(await rows.first().locator('td').first().textContent(), /^\d\d:\d\d\.\d{3}$/);
    const raw = JSON.parse(await page.textContent('#asr-raw'));
    assert.equal(await rows.count(), raw.segments.length);
    await screenshot(page, 'transcribe');

    // SRT: asked of the server (the last answer was verbose_json), then structurally valid.
    const [srt] = await Promise.all([page.waitForEvent('download', { timeout: 120_000 }), page.click('#asr-download-srt')]);
    assert.equal(srt.suggestedFilename(), 'jfk.srt');
    const srtText = readFileSync(await srt.path(), 'utf8');
    assert.match(srtText, /^1\r?\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\r?\n/);
    // VTT picked as the format: shown as cues, downloaded without asking again.
    await page.selectOption('#asr-format', 'vtt');
    assert.equal(await page.isDisabled('#asr-ts-word'), true);
    await page.click('#asr-submit');
    await page.waitForFunction(() => /^vtt/.test(document.querySelector('#asr-summary').textContent), null, { timeout: 120_000 });
    const requestsBefore = await metric(server.base, 'http_requests_total', { method: 'POST', route: '/v1/audio/transcriptions', code: '200' });
    const [vtt] = await Promise.all([page.waitForEvent('download'), page.click('#asr-download-vtt')]);
    const vttText = readFileSync(await vtt.path(), 'utf8');
    assert.match(vttText, /^WEBVTT\r?\n\r?\n\d\d:\d\d:\d\d\.\d{3} --> /);
    assert.equal(vttText, await page.textContent('#asr-raw'));
    assert.equal(await page.locator('#asr-segments tbody tr').count(), (vttText.match(/-->/g) || []).length);
    assert.equal(await metric(server.base, 'http_requests_total', { method: 'POST', route: '/v1/audio/transcriptions', code: '200' }), requestsBefore);

    // The fake microphone: MediaRecorder's webm/opus, decoded by mmserve.
    await page.selectOption('#asr-format', 'verbose_json');
    await page.click('#asr-record');
    await page.waitForFunction(() => document.querySelector('#asr-record').getAttribute('aria-pressed') === 'true');
    await page.waitForTimeout(2000);
    await page.click('#asr-record');
    await page.waitForFunction(() => /^Recorded/.test(document.querySelector('#asr-record-state').textContent));
    await page.click('#asr-submit');
    await page.waitForFunction(() => /^verbose_json.*audio/.test(document.querySelector('#asr-summary').textContent), null, { timeout: 120_000 });
    const seconds = Number((await page.textContent('#asr-summary')).match(/audio ([\d.]+) s/)[1]);
    assert.ok(seconds >= 1.5 && seconds <= 4, `recorded ${seconds} s`);
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('transcribe: a file that is not audio gets the server\'s error, and the next one works', async () => {
    const { page, context, problems } = await openPage(server.base, { allowedErrors: [/status of 4\d\d/] });
    await page.click('#tab-transcribe');
    await page.waitForFunction(() => !document.querySelector('#asr-submit').disabled);
    await page.setInputFiles('#asr-file', { name: 'notes.mp3', mimeType: 'audio/mpeg', buffer: Buffer.from('these are not audio bytes') });
    await page.click('#asr-submit');
    await page.waitForFunction(() => /^Failed: 4\d\d: /.test(document.querySelector('#asr-summary').textContent), null, { timeout: 60_000 });
    await page.setInputFiles('#asr-file', speech);
    await page.click('#asr-submit');
    await page.waitForFunction(() => /audio 11\.0 s/.test(document.querySelector('#asr-summary').textContent), null, { timeout: 120_000 });
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('images: without an image model the tab says why and Generate stays off', async () => {
    const { page, context, problems } = await openPage(server.base);
    await page.click('#tab-images');
    await page.waitForFunction(() => !document.querySelector('#img-availability').hidden);
    assert.match(await page.textContent('#img-availability'), /The image model stable-diffusion is missing: no model configured/);
    assert.equal(await page.isDisabled('#img-generate'), true);
    await screenshot(page, 'images');
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('status: models, queues and latency histograms from /metrics', async () => {
    const { page, context, problems } = await openPage(server.base);
    // Requests after the page opened land in the "since this page opened" window.
    for (let i = 0; i < 3; i++) {
      await fetch(`${server.base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 }),
      });
    }
    await page.click('#tab-status');
    await page.waitForFunction(() => document.querySelectorAll('#status-models tbody tr').length === 4);
    const models = await page.$$eval('#status-models tbody tr', (rows) => rows.map((row) => [...row.cells].map((c) => c.textContent)));
    const byId = Object.fromEntries(models.map(([id, service, status]) => [id, `${service} ${status}`]));
    assert.deepEqual(byId, { stories260K: 'vision loaded', 'tiny-llama': 'vision available', 'tiny-whisper-random': 'speech loaded',
      'stable-diffusion': 'image missing' });
    assert.match(await page.textContent('#status-ready'), /^Not ready: image model 'stable-diffusion' is missing/);
    const queues = await page.$$eval('#status-queues tbody tr', (rows) => rows.map((row) => row.cells[0].textContent).sort());
    assert.deepEqual(queues, ['image', 'speech', 'vision']);
    await page.waitForSelector('#status-histograms figure');
    const chat = page.locator('#status-histograms figure', { hasText: 'http_request_duration_seconds {route=/v1/chat/completions}' });
    assert.match(await chat.locator('figcaption').textContent(), /^3 observations · p50 ≤ [\d.e-]+ s/);
    // The whole life of the server shows the earlier tests' requests too.
    await page.selectOption('#status-window', 'server');
    await page.waitForFunction(() => {
      const figure = [...document.querySelectorAll('#status-histograms figure')]
        .find((f) => f.textContent.includes('{route=/v1/chat/completions}'));
      return figure && Number(figure.querySelector('figcaption').textContent.split(' ')[0]) > 3;
    });
    assert.ok(await page.locator('#status-histograms figure', { hasText: 'model_inference_seconds' }).count() >= 1);
    await screenshot(page, 'status');
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('status: a model loads and unloads from its row', async () => {
    const { page, context, problems } = await openPage(server.base);
    await page.click('#tab-status');
    const row = page.locator('#status-models tbody tr', { hasText: 'tiny-llama' });
    await row.getByRole('button', { name: 'Load tiny-llama' }).click();
    await page.waitForFunction(() => [...document.querySelectorAll('#status-models tbody tr')]
      .some((r) => r.cells[0].textContent === 'tiny-llama' && r.cells[2].textContent === 'loaded'), null, { timeout: 30_000 });
    assert.equal((await (await fetch(`${server.base}/v1/models/tiny-llama`)).json()).status, 'loaded');
    // The chat picker offers it as loaded now.
    await page.click('#tab-chat');
    await page.waitForFunction(() => [...document.querySelectorAll('#chat-model option')].some((o) => o.textContent === 'tiny-llama'));
    await page.click('#tab-status');
    await row.getByRole('button', { name: 'Unload tiny-llama' }).click();
    await page.waitForFunction(() => /tiny-llama: unloaded/.test(document.querySelector('#status-action').textContent));
    assert.equal((await (await fetch(`${server.base}/v1/models/tiny-llama`)).json()).status, 'available');
    await screenshot(page, 'status-actions');
    assert.deepEqual(problems, []);
    await context.close();
  });

  test('keyboard and labels: tabs move with the arrow keys, every control has a name', async () => {
    const { page, context, problems } = await openPage(server.base);
    await page.focus('#tab-chat');
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.getAttribute('#tab-transcribe', 'aria-selected'), 'true');
    assert.equal(await page.isVisible('#panel-transcribe'), true);
    assert.equal(await page.isVisible('#panel-chat'), false);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-transcribe');
    await page.keyboard.press('End');
    assert.equal(await page.getAttribute('#tab-status', 'aria-selected'), 'true');
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.getAttribute('#tab-chat', 'aria-selected'), 'true');
    assert.equal(new URL(page.url()).hash, '#chat');
    // Tab leaves the tab list into the panel: only the selected tab is in the tab order.
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'chat-model');
    // Typing and Enter alone send a message.
    await page.focus('#chat-input');
    await page.keyboard.type('Once upon');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => /finish/.test(document.querySelector('#chat-stats').textContent), null, { timeout: 60_000 });

    const unnamed = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea, button, progress, audio')]
      .filter((element) => {
        const text = (element.labels && [...element.labels].map((l) => l.textContent).join('').trim()) ||
          element.getAttribute('aria-label') || (element.tagName === 'BUTTON' && element.textContent.trim()) ||
          (element.getAttribute('aria-labelledby') && document.getElementById(element.getAttribute('aria-labelledby'))?.textContent);
        return !text;
      }).map((element) => element.id || element.outerHTML.slice(0, 60)));
    assert.deepEqual(unnamed, []);
    // A deep link opens its tab.
    await page.goto(`${server.base}/#status`);
    assert.equal(await page.getAttribute('#tab-status', 'aria-selected'), 'true');
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe('playground behind an API key', { skip }, () => {
  const key = 'sk-playground-test-key';
  let server;
  before(async () => {
    const sha256 = createHash('sha256').update(key).digest('hex');
    server = await startServer(
      `vision:\n  enabled: false\nimage:\n  enabled: false\nspeech:\n  model_path: ${whisperModel}\n` +
      `gateway:\n  auth:\n    api_keys: [{name: browser, sha256: ${sha256}}]\n`, { apiKey: key });
  });

  test('the page loads without a key, asks for one, and works once it is saved', async () => {
    const { page, context, problems } = await openPage(server.base, { allowedErrors: [/status of 401/] });
    await page.waitForFunction(() => !document.querySelector('#banner').hidden);
    assert.match(await page.textContent('#banner'), /asks for an API key/);
    await screenshot(page, 'api-key');
    await page.fill('#api-key', key);
    await page.click('#key-form button');
    await page.click('#tab-transcribe');
    await page.waitForFunction(() => !document.querySelector('#asr-submit').disabled);
    assert.equal(await page.isHidden('#banner'), true);
    await page.setInputFiles('#asr-file', speech);
    await page.selectOption('#asr-format', 'text');
    await page.click('#asr-submit');
    await page.waitForFunction(() => /^text/.test(document.querySelector('#asr-summary').textContent), null, { timeout: 120_000 });
    // The key stays for the next visit.
    await page.reload();
    assert.equal(await page.inputValue('#api-key'), key);
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe('playground switched off', { skip }, () => {
  test('server.playground: false leaves / unserved', async () => {
    const server = await startServer('vision:\n  enabled: false\nspeech:\n  enabled: false\nimage:\n  enabled: false\n',
      { ready: false, serverKeys: '  playground: false\n' });
    const response = await fetch(`${server.base}/`);
    assert.equal(response.status, 404);
    assert.equal((await response.json()).error.type, 'invalid_request_error');
  });
});

describe('playground with an image model', { skip: skip || (!existsSync(path.join(tinySd, 'model_index.json')) &&
  `generated SD model absent, skipping: ${tinySd}`) }, () => {
  let server;
  before(async () => {
    server = await startServer(`vision:\n  enabled: false\nspeech:\n  enabled: false\n` +
      `image:\n  model_path: ${tinySd}\n  outputs_dir: ${path.join(mkdtempSync(path.join(tmpdir(), 'mmserve-pg-outputs-')), 'o')}\n`);
    for (let i = 0; (await fetch(`${server.base}/readyz`)).status !== 200; i++) {
      assert.ok(i < 1500, `the image model did not load:\n${server.log()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  });

  async function fill(page, { prompt, steps, seed }) {
    await page.fill('#img-prompt', prompt);
    await page.fill('#img-width', '64');
    await page.fill('#img-height', '64');
    await page.fill('#img-steps', String(steps));
    await page.fill('#img-seed', String(seed));
    await page.selectOption('#img-sampler', 'euler');
  }

  test('images: the tab generates what the API generates, with progress and interrupt', async () => {
    const { page, context, problems } = await openPage(server.base);
    await page.click('#tab-images');
    await page.waitForFunction(() => !document.querySelector('#img-generate').disabled);
    await fill(page, { prompt: 'a lighthouse at dusk', steps: 4, seed: 9 });
    await page.click('#img-generate');
    await page.waitForFunction(() => document.querySelector('#img-progress-text').textContent === 'Done.', null,
      { timeout: 60_000 });
    const src = await page.getAttribute('#img-gallery li img', 'src');
    assert.match(src, /^data:image\/png;base64,/);
    assert.match(await page.textContent('#img-gallery figcaption'), /64x64 · 4 steps · seed 9 · euler/);
    // The same parameters through the API give the same image.
    const api = await (await fetch(`${server.base}/v1/images/generations`, {
      method: 'POST',
      body: JSON.stringify({ prompt: 'a lighthouse at dusk', size: '64x64', steps: 4, seed: 9, sampler: 'euler',
        guidance_scale: 7, response_format: 'b64_json' }),
    })).json();
    assert.equal(src.slice('data:image/png;base64,'.length), api.data[0].b64_json);
    await screenshot(page, 'images-generated');

    // A long one: the progress line counts steps, Interrupt stops it.
    await fill(page, { prompt: 'a slow tide', steps: 150, seed: 1 });
    await page.click('#img-generate');
    await page.waitForFunction(() => /^step [1-9]\d* of 150/.test(document.querySelector('#img-progress-text').textContent),
      null, { timeout: 60_000 });
    assert.ok(await page.evaluate(() => document.querySelector('#img-progress').value > 0));
    await page.click('#img-interrupt');
    await page.waitForFunction(() => document.querySelector('#img-progress-text').textContent === 'Interrupted.', null,
      { timeout: 30_000 });
    assert.equal(await page.locator('#img-gallery li').count(), 1);
    // The page shows "Interrupted." as it drops the request; the job stops at its next step.
    const labels = { model: path.basename(tinySd), result: 'interrupted' };
    for (let i = 0; (await metric(server.base, 'mmserve_image_jobs_total', labels)) !== 1; i++) {
      assert.ok(i < 500, 'the interrupted generation was not counted');
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(problems, []);
    await context.close();
  });
});
