// mmserve's image service against the real binary on a generated tiny
// Stable Diffusion model (tools/gen_tiny_sd_model.py, 64x64): the official
// openai SDK's images.generate (b64_json and url, the PNG's size and its
// A1111 "parameters" text chunk, seeds), /outputs (immutable caching, ETag,
// Range), bad inputs, the queue bound, cancellation by disconnect, the
// webui API (txt2img, progress, interrupt, sd-models, samplers) and the
// metrics the traffic leaves, checked by promtool.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { inflateSync } from 'node:zlib';
import { startRoleInDir } from './support.mjs';
import OpenAI from 'openai';

const binary = process.env.MMSERVE_BIN;
const tinySd = process.env.MMSERVE_TEST_TINY_SD || '';
const promtool = process.env.PROMTOOL || 'promtool';
// TAESD's real weights, for previews; without them progress has no current_image.
const modelsDir = process.env.MMSERVE_TEST_MODELS || path.resolve(process.env.MMSERVE_SOURCE_DIR || '.', '../shared/models');
const taesd = existsSync(path.join(modelsDir, 'taesd_decoder.safetensors')) ? modelsDir : '';
const skip = !existsSync(path.join(tinySd, 'model_index.json')) && `generated SD model absent, skipping: ${tinySd}`;
const modelId = path.basename(tinySd);
// The SDXL architecture beside it, as a second model that loads on first use (registry.models).
const tinySdxl = path.join(path.dirname(tinySd), 'tiny-sdxl');
const withSdxl = existsSync(path.join(tinySdxl, 'model_index.json'));
const MAX_QUEUE = 1;

let server;
let base;
let client;
let outputsDir;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

before(async () => {
  if (skip) return;
  assert.ok(binary, 'MMSERVE_BIN must name the mmserve binary');
  const dir = mkdtempSync(path.join(tmpdir(), 'mmserve-openai-images-'));
  outputsDir = path.join(dir, 'outputs');
  writeFileSync(path.join(dir, 'mmserve.yaml'),
    `image:\n  model_path: ${tinySd}\n  outputs_dir: ${outputsDir}\n  max_queue: ${MAX_QUEUE}\n  max_batch: 4\n` +
    `  preview_interval: 0.1\n  taesd_dir: "${taesd}"\n` +
    (withSdxl ? `registry:\n  models: [{name: tiny-xl, service: image, path: ${tinySdxl}}]\n` : ''));
  server = await startRoleInDir(binary, 'image', dir);
  base = server.base;
  client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  if (!server) return;
  const exited = new Promise((resolve) => server.child.on('exit', resolve));
  server.child.kill('SIGTERM');
  assert.equal(await exited, 0, server.log());
});

// PNG chunks: [{type, data}].
function pngChunks(bytes) {
  assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'PNG signature');
  const chunks = [];
  for (let at = 8; at < bytes.length;) {
    const length = bytes.readUInt32BE(at);
    chunks.push({ type: bytes.toString('latin1', at + 4, at + 8), data: bytes.subarray(at + 8, at + 8 + length) });
    at += 12 + length;
  }
  return chunks;
}

function pngSize(bytes) {
  const ihdr = pngChunks(bytes)[0];
  assert.equal(ihdr.type, 'IHDR');
  return { width: ihdr.data.readUInt32BE(0), height: ihdr.data.readUInt32BE(4) };
}

// The text chunks (tEXt, or zTXt as libvips writes them) by keyword.
function pngText(bytes) {
  const text = {};
  for (const { type, data } of pngChunks(bytes)) {
    if (type !== 'tEXt' && type !== 'zTXt') continue;
    const nul = data.indexOf(0);
    const key = data.toString('latin1', 0, nul);
    text[key] = type === 'tEXt' ? data.toString('utf8', nul + 1) : inflateSync(data.subarray(nul + 2)).toString('utf8');
  }
  return text;
}

async function post(route, body) {
  return fetch(`${base}${route}`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
}

async function metricsText() {
  return (await fetch(`${base}/metrics`)).text();
}

function metricValue(text, name, labels) {
  const selector = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',');
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${selector}}`));
  return line ? Number(line.split(' ').pop()) : undefined;
}

async function progress() {
  return (await fetch(`${base}/sdapi/v1/progress`)).json();
}

// Polls /sdapi/v1/progress until `done(progress)` (a few seconds at most).
async function waitProgress(done, what) {
  for (let i = 0; i < 400; i++) {
    const state = await progress();
    if (done(state)) return state;
    await sleep(15);
  }
  throw new Error(`progress never showed ${what}`);
}

const tiny = { size: '64x64', steps: 4 };

test('models.list shows the generated model, loaded', { skip }, async () => {
  const models = [];
  for await (const m of client.models.list()) models.push(m);
  assert.deepEqual(models[0] && [models[0].id, models[0].service, models[0].status], [modelId, 'image', 'loaded']);
  assert.ok(models[0].memory_bytes > 0);
});

test('a second image model (SDXL, registry.models) loads on first use', { skip: skip || (!withSdxl && 'no tiny-sdxl') },
  async () => {
    const before = await (await fetch(`${base}/v1/models/tiny-xl`)).json();
    assert.equal(before.status, 'available');
    assert.equal(before.loads_on_demand, true);
    const result = await client.images.generate({ model: 'tiny-xl', prompt: 'a tower', ...tiny, response_format: 'b64_json' });
    assert.deepEqual(pngSize(Buffer.from(result.data[0].b64_json, 'base64')), { width: 64, height: 64 });
    assert.match(pngText(Buffer.from(result.data[0].b64_json, 'base64')).parameters, /Model: tiny-xl,/);
    assert.equal((await (await fetch(`${base}/v1/models/tiny-xl`)).json()).status, 'loaded');
    const listed = await (await fetch(`${base}/sdapi/v1/sd-models`)).json();
    assert.deepEqual(listed.map((m) => m.model_name), [modelId, 'tiny-xl']);
    // webui picks it by its title.
    const title = listed[1].title;
    const picked = await post('/sdapi/v1/txt2img', { prompt: 'a tower', steps: 2, width: 64, height: 64,
      override_settings: { sd_model_checkpoint: title } });
    assert.equal(JSON.parse((await picked.json()).info).sd_model_name, 'tiny-xl');
  });

test('images.generate with b64_json: a 64x64 PNG carrying its parameters', { skip }, async () => {
  const prompt = 'a red fox in the snow';
  const result = await client.images.generate({
    prompt, response_format: 'b64_json', ...tiny, seed: 42, negative_prompt: 'blurry', guidance_scale: 5,
  });
  assert.equal(typeof result.created, 'number');
  assert.equal(result.data.length, 1);
  assert.equal(result.data[0].seed, 42);
  assert.equal(result.size, '64x64');
  const png = Buffer.from(result.data[0].b64_json, 'base64');
  assert.deepEqual(pngSize(png), { width: 64, height: 64 });
  const parameters = pngText(png).parameters;
  assert.ok(parameters, 'no "parameters" text chunk');
  const [first, second, third] = parameters.split('\n');
  assert.equal(first, prompt);
  assert.equal(second, 'Negative prompt: blurry');
  assert.match(third, /^Steps: 4, Sampler: Euler a, CFG scale: 5, Seed: 42, Size: 64x64, Model hash: [0-9a-f]{10}, Model: /);
  assert.match(third, new RegExp(`Model: ${modelId}, Version: mmserve `));
});

test('the same seed gives the same bytes, another seed others; n images take seed, seed+1', { skip }, async () => {
  const generate = async (seed, n = 1) =>
    (await client.images.generate({ prompt: 'a lighthouse', response_format: 'b64_json', ...tiny, seed, n })).data;
  const [a] = await generate(7);
  const [b] = await generate(7);
  const [c] = await generate(8);
  assert.equal(a.b64_json, b.b64_json);
  assert.notEqual(a.b64_json, c.b64_json);
  const pair = await generate(7, 2);
  assert.deepEqual(pair.map((image) => image.seed), [7, 8]);
  assert.equal(pair[0].b64_json, a.b64_json);
  assert.equal(pair[1].b64_json, c.b64_json);
  // No seed: a random one, reported back.
  const [random] = await generate(undefined);
  assert.ok(Number.isInteger(random.seed) && random.seed >= 0);
});

test('url responses: the image under /outputs, immutable, with ETag, 304 and Range', { skip }, async () => {
  const body = { prompt: 'a quiet harbour', ...tiny, seed: 3 };
  const byUrl = await client.images.generate(body); // OpenAI's default response_format is url
  const url = byUrl.data[0].url;
  assert.match(url, new RegExp(`^${base}/outputs/[0-9a-f]{64}\\.png$`));
  const inline = await client.images.generate({ ...body, response_format: 'b64_json' });
  const expected = Buffer.from(inline.data[0].b64_json, 'base64');

  const response = await fetch(url);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-type'), 'image/png');
  assert.equal(response.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  const hash = url.split('/').pop().split('.')[0];
  assert.equal(response.headers.get('etag'), `"${hash}"`);
  assert.deepEqual(Buffer.from(await response.arrayBuffer()), expected);
  // Every image is kept, b64_json ones too, under its content hash.
  assert.ok(readdirSync(outputsDir).includes(`${hash}.png`));

  const revalidated = await fetch(url, { headers: { 'If-None-Match': `"${hash}"` } });
  assert.equal(revalidated.status, 304);
  assert.equal((await revalidated.arrayBuffer()).byteLength, 0);

  const part = await fetch(url, { headers: { Range: 'bytes=8-23' } });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get('content-range'), `bytes 8-23/${expected.length}`);
  assert.deepEqual(Buffer.from(await part.arrayBuffer()), expected.subarray(8, 24));
  const tail = await fetch(url, { headers: { Range: 'bytes=-12' } });
  assert.equal(tail.status, 206);
  assert.deepEqual(Buffer.from(await tail.arrayBuffer()), expected.subarray(expected.length - 12));
  const beyond = await fetch(url, { headers: { Range: `bytes=${expected.length}-` } });
  assert.equal(beyond.status, 416);
  assert.equal(beyond.headers.get('content-range'), `bytes */${expected.length}`);
  await beyond.arrayBuffer();

  for (const name of ['0'.repeat(64) + '.png', 'not-a-hash.png', '..%2Fmmserve.yaml']) {
    const missing = await fetch(`${base}/outputs/${name}`);
    assert.equal(missing.status, 404, name);
    assert.equal((await missing.json()).error.code, 'not_found');
  }
});

test('jpeg and webp outputs, other sizes, the seed\'s /v1/images/generate path', { skip }, async () => {
  const jpeg = await client.images.generate({
    prompt: 'a field', size: '128x64', steps: 2, response_format: 'b64_json', output_format: 'jpeg', output_compression: 80,
  });
  const jpegBytes = Buffer.from(jpeg.data[0].b64_json, 'base64');
  assert.deepEqual([...jpegBytes.subarray(0, 3)], [0xff, 0xd8, 0xff]);
  assert.equal(jpeg.output_format, 'jpeg');
  assert.equal(jpeg.size, '128x64');
  const webp = await client.images.generate({ prompt: 'a field', ...tiny, output_format: 'webp' });
  assert.match(webp.data[0].url, /\.webp$/);
  const fetched = await fetch(webp.data[0].url);
  assert.equal(fetched.headers.get('content-type'), 'image/webp');
  assert.equal(Buffer.from(await fetched.arrayBuffer()).toString('latin1', 8, 12), 'WEBP');

  const seedPath = await post('/v1/images/generate', { prompt: 'a field', ...tiny, response_format: 'b64_json' });
  assert.equal(seedPath.status, 200);
  assert.equal((await seedPath.json()).data.length, 1);
  // OpenAI's model names pick the service's model; an unknown one is 404.
  const aliased = await client.images.generate({ prompt: 'a field', ...tiny, model: 'dall-e-2', response_format: 'b64_json' });
  assert.equal(aliased.data.length, 1);
  await assert.rejects(client.images.generate({ prompt: 'a field', ...tiny, model: 'no-such-model' }),
    (error) => error.status === 404 && error.code === 'model_not_found');
});

test('bad inputs are 400s naming the parameter, and serving goes on', { skip }, async () => {
  const cases = [
    [{ prompt: 'x', size: '513x512' }, 'size', /multiple of 8/],
    [{ prompt: 'x', size: '64x64x' }, 'size', /WIDTHxHEIGHT/],
    [{ prompt: 'x', size: '0x64' }, 'size', /at least 64/],
    [{ prompt: 'x', size: '4096x64' }, 'size', /limit of 2048 \(image\.max_width\)/],
    [{ prompt: 'x', n: 0 }, 'n', /outside \[1, 4\]/],
    [{ prompt: 'x', n: 1000 }, 'n', /image\.max_batch/],
    [{ prompt: 'x', steps: 0 }, 'steps', /outside \[1, 150\]/],
    [{ prompt: 'x', guidance_scale: 31 }, 'guidance_scale', /outside/],
    [{ prompt: '' }, 'prompt', /empty/],
    [{ prompt: 'x'.repeat(4001) }, 'prompt', /at most 4000/],
    [{}, 'prompt', /Missing required parameter/],
    [{ prompt: 'x', sampler: 'heun' }, 'sampler', /euler_a.*Euler a/],
    [{ prompt: 42 }, 'prompt', /expected a string/],
    [{ prompt: 'x', n: '2' }, 'n', /expected an integer/],
    [{ prompt: 'x', steps: 2.5 }, 'steps', /expected an integer/],
    [{ prompt: 'x', seed: 'lucky' }, 'seed', /expected an integer/],
    [{ prompt: 'x', seed: -2 }, 'seed', /-1/],
    [{ prompt: 'x', response_format: 'jpeg' }, 'response_format', /url, b64_json/],
    [{ prompt: 'x', output_format: 'gif' }, 'output_format', /png, jpeg, webp/],
    [{ prompt: 'x', output_compression: 101 }, 'output_compression', /outside/],
    [{ prompt: 'x', stream: true }, 'stream', /not supported/],
    [{ prompt: 'x', colour: 'red' }, 'colour', /Unknown parameter/],
  ];
  for (const [body, param, message] of cases) {
    await assert.rejects(client.images.generate(body), (error) => {
      assert.equal(error.status, 400, JSON.stringify(body));
      assert.equal(error.param, param, JSON.stringify(body));
      assert.equal(error.type, 'invalid_request_error');
      assert.match(error.message, message);
      return true;
    });
  }
  const unknown = await (await post('/v1/images/generations', { prompt: 'x', colour: 'red' })).json();
  assert.equal(unknown.error.code, 'unknown_parameter');
  for (const body of ['{"prompt": "x"', 'not json', '[1, 2]', '']) {
    const response = await fetch(`${base}/v1/images/generations`, { method: 'POST', body });
    assert.equal(response.status, 400, body);
    assert.equal((await response.json()).error.code, 'invalid_json', body);
  }
  // quality, style and user are OpenAI's and accepted.
  const ok = await client.images.generate({
    prompt: 'still here', ...tiny, response_format: 'b64_json', quality: 'hd', style: 'vivid', user: 'tester',
  });
  assert.equal(ok.data.length, 1);
});

test('a full queue answers 429 with Retry-After; the admitted requests complete', { skip }, async () => {
  // One generation runs, max_queue wait; the next one is refused.
  const body = { prompt: 'a crowd', size: '64x64', steps: 40, response_format: 'b64_json' };
  const responses = await Promise.all(Array.from({ length: MAX_QUEUE + 2 }, () => post('/v1/images/generations', body)));
  const statuses = responses.map((r) => r.status).sort();
  assert.deepEqual(statuses, [...Array(MAX_QUEUE + 1).fill(200), 429]);
  const refused = responses.find((r) => r.status === 429);
  assert.ok(Number(refused.headers.get('retry-after')) >= 1);
  const error = (await refused.json()).error;
  assert.equal(error.type, 'rate_limit_error');
  assert.match(error.message, /max_queue/);
  for (const response of responses.filter((r) => r.status === 200)) assert.equal((await response.json()).data.length, 1);
});

test('a client that goes away cancels its generation; the worker moves on', { skip }, async () => {
  const cancelled = async () =>
    metricValue(await metricsText(), 'mmserve_image_jobs_total', { model: modelId, result: 'cancelled' }) ?? 0;
  const before = await cancelled();
  const abort = new AbortController();
  const gone = fetch(`${base}/v1/images/generations`, {
    method: 'POST', body: JSON.stringify({ prompt: 'a long walk', size: '64x64', steps: 150 }), signal: abort.signal,
  }).catch((error) => error);
  await waitProgress((p) => p.state.sampling_step > 0 && p.state.sampling_steps === 150, 'the long generation running');
  // Queued behind it: served as soon as the abandoned one stops.
  const queued = client.images.generate({ prompt: 'next in line', ...tiny, response_format: 'b64_json' });
  await waitProgress((p) => p.state.job_count === 2, 'the second request queued');
  const started = Date.now();
  abort.abort();
  assert.equal((await gone).name, 'AbortError');
  assert.equal((await queued).data.length, 1);
  const waited = Date.now() - started;
  const remaining = await cancelled();
  assert.equal(remaining, before + 1);
  assert.ok(waited < 3000, `the queued request waited ${waited} ms after the abort`);
  assert.equal((await progress()).state.job_count, 0);
  assert.match(server.log(), /image generation cancelled/);
});

test('webui: txt2img, progress while it runs, interrupt, sd-models, samplers', { skip }, async () => {
  const models = await (await fetch(`${base}/sdapi/v1/sd-models`)).json();
  assert.equal(models[0].model_name, modelId);
  assert.match(models[0].title, new RegExp(`^${modelId} \\[[0-9a-f]{10}\\]$`));
  assert.equal(models[0].filename, tinySd);
  const samplers = await (await fetch(`${base}/sdapi/v1/samplers`)).json();
  const names = samplers.map((s) => s.name);
  for (const name of ['Euler a', 'Euler', 'DPM++ 2M', 'DPM++ 2M Karras', 'DDIM', 'LCM']) assert.ok(names.includes(name), name);
  assert.ok(samplers.find((s) => s.name === 'Euler a').aliases.includes('euler_a'));

  const batch = await post('/sdapi/v1/txt2img', {
    prompt: 'a castle', negative_prompt: 'fog', seed: 11, steps: 3, cfg_scale: 6, width: 64, height: 64,
    sampler_name: 'DPM++ 2M', scheduler: 'Karras', batch_size: 2, n_iter: 1, some_webui_field: true,
  });
  assert.equal(batch.status, 200);
  const result = await batch.json();
  assert.equal(result.images.length, 2);
  for (const image of result.images) assert.deepEqual(pngSize(Buffer.from(image, 'base64')), { width: 64, height: 64 });
  assert.equal(result.parameters.prompt, 'a castle');
  assert.equal(result.parameters.batch_size, 2);
  const info = JSON.parse(result.info);
  assert.deepEqual(info.all_seeds, [11, 12]);
  assert.equal(info.sampler_name, 'DPM++ 2M Karras');
  assert.equal(info.infotexts.length, 2);
  assert.match(info.infotexts[1], /^a castle\nNegative prompt: fog\nSteps: 3, Sampler: DPM\+\+ 2M Karras, CFG scale: 6, Seed: 12, Size: 64x64/);
  assert.equal(pngText(Buffer.from(result.images[1], 'base64')).parameters, info.infotexts[1]);

  // A long one: progress moves, then Interrupt stops it.
  const running = post('/sdapi/v1/txt2img', { prompt: 'a slow sunrise', steps: 150, width: 64, height: 64, seed: 5 });
  const first = await waitProgress((p) => p.state.sampling_step > 0, 'a running job');
  const later = await waitProgress((p) => p.state.sampling_step > first.state.sampling_step, 'steps advancing');
  for (const p of [first, later]) {
    assert.ok(p.progress > 0 && p.progress < 1, `progress ${p.progress}`);
    assert.equal(p.state.sampling_steps, 150);
    assert.equal(p.state.job_count, 1);
    assert.equal(p.state.job, 'txt2img');
    assert.ok(p.eta_relative > 0);
    assert.match(p.textinfo, /step \d+ of 150/);
  }
  assert.ok(later.progress > first.progress);
  // Previews (TAESD) while a client asks for them: the latent so far, at the image's size.
  if (taesd) {
    const previewed = await waitProgress((p) => p.current_image !== null, 'a preview');
    assert.deepEqual(pngSize(Buffer.from(previewed.current_image, 'base64')), { width: 64, height: 64 });
    assert.equal((await (await fetch(`${base}/sdapi/v1/progress?skip_current_image=true`)).json()).current_image, null);
  } else {
    assert.equal((await progress()).current_image, null);
  }
  const interrupt = await post('/sdapi/v1/interrupt', {});
  assert.equal(interrupt.status, 200);
  assert.deepEqual(await interrupt.json(), {});
  const stopped = await running;
  assert.equal(stopped.status, 409);
  assert.equal(stopped.headers.get('x-should-retry'), 'false');
  assert.equal((await stopped.json()).error.code, 'generation_interrupted');
  const after = await progress();
  assert.equal(after.state.interrupted, true);
  assert.equal(after.state.job_count, 0);
  assert.equal(after.progress, 0);

  // webui's status for a request that does not validate is 422, in the same error shape.
  for (const [body, param] of [[{ steps: 0 }, 'steps'], [{ width: 100 }, 'width'], [{ sampler_name: 'Heun' }, 'sampler_name'],
    [{ batch_size: 3, n_iter: 2 }, 'batch_size'], [{ scheduler: 'Exponential', sampler_name: 'Euler' }, 'scheduler']]) {
    const refused = await post('/sdapi/v1/txt2img', { prompt: 'x', ...body });
    assert.equal(refused.status, 422, JSON.stringify(body));
    assert.equal((await refused.json()).error.param, param);
  }
  const again = await post('/sdapi/v1/txt2img', { prompt: 'after the interrupt', steps: 2, width: 64, height: 64 });
  assert.equal((await again.json()).images.length, 1);
});

test('metrics after the traffic: images, phases, steps, jobs; promtool accepts the scrape', { skip }, async () => {
  const text = await metricsText();
  assert.ok(metricValue(text, 'images_generated_total', { model: modelId }) >= 10);
  for (const phase of ['text_encode', 'denoise', 'vae_decode']) {
    assert.ok(metricValue(text, 'model_inference_seconds_count', { service: 'image', model: modelId, phase }) > 0, phase);
  }
  assert.ok(metricValue(text, 'mmserve_image_step_seconds_count', { model: modelId }) > 0);
  assert.ok(metricValue(text, 'mmserve_image_jobs_total', { model: modelId, result: 'completed' }) > 0);
  assert.equal(metricValue(text, 'mmserve_image_jobs_total', { model: modelId, result: 'interrupted' }), 1);
  assert.equal(metricValue(text, 'mmserve_queue_depth', { service: 'image' }), 0);
  assert.ok(metricValue(text, 'image_processing_seconds_count', { service: 'image', step: 'encode' }) > 0);
  assert.equal(metricValue(text, 'mmserve_model_ready', { service: 'image', model: modelId }), 1);
  const check = spawnSync(promtool, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  assert.equal(check.status, 0, `promtool check metrics:\n${check.stdout}${check.stderr}`);
});
