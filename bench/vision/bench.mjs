// bench/vision: mmserve's vision service against llama.cpp's own llama-server,
// same model, projector, image and prompts, in the same run. Prints each
// measure for both servers and the ratio mmserve / llama-server.
//
//   node bench/vision/bench.mjs --mmserve build/mmserve --llama-server build/bin/llama-server \
//        --model M.gguf --mmproj P.gguf --image photo.jpeg [--tokens 256] [--rounds 5]
import { spawn } from 'node:child_process';
import { readFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    mmserve: { type: 'string' }, 'llama-server': { type: 'string' }, model: { type: 'string' },
    mmproj: { type: 'string' }, image: { type: 'string' }, tokens: { type: 'string', default: '256' },
    rounds: { type: 'string', default: '5' }, parallel: { type: 'string', default: '4' },
  },
});
for (const required of ['mmserve', 'llama-server', 'model', 'mmproj', 'image']) {
  if (!args[required]) throw new Error(`--${required} is required`);
}
const maxTokens = Number(args.tokens);
const rounds = Number(args.rounds);
const parallel = Number(args.parallel);
const imageUrl = `data:image/jpeg;base64,${readFileSync(args.image).toString('base64')}`;

const freePort = () => new Promise((resolve) => {
  const probe = createServer().listen(0, '127.0.0.1', () => { const { port } = probe.address(); probe.close(() => resolve(port)); });
});

async function waitFor(url) {
  for (let i = 0; i < 600; i++) {
    try { if ((await fetch(url)).status === 200) return; } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`not ready: ${url}`);
}

async function startMmserve() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), 'bench-mmserve-'));
  writeFileSync(path.join(dir, 'c.yaml'), `logging: {access_log: false}\nvision:\n  model_path: ${args.model}\n  mmproj_path: ${args.mmproj}\n  parallel: ${parallel}\n  max_model_len: 1024\n`);
  const child = spawn(args.mmserve, ['vision', '--config', path.join(dir, 'c.yaml'), '--port', String(port)], { stdio: 'ignore' });
  await waitFor(`http://127.0.0.1:${port}/readyz`);
  return { name: 'mmserve', child, base: `http://127.0.0.1:${port}` };
}

async function startLlamaServer() {
  const port = await freePort();
  const child = spawn(args['llama-server'], ['-m', args.model, '--mmproj', args.mmproj, '--port', String(port),
    '-np', String(parallel), '-c', String(1024 * parallel), '--no-webui'], { stdio: 'ignore' });
  await waitFor(`http://127.0.0.1:${port}/health`);
  return { name: 'llama-server', child, base: `http://127.0.0.1:${port}` };
}

// One streamed chat request: seconds to the first content and after it, and tokens.
async function streamOnce(server, content, tokens = maxTokens) {
  const started = performance.now();
  const response = await fetch(`${server.base}/v1/chat/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content }], max_tokens: tokens, temperature: 0, stream: true,
      stream_options: { include_usage: true } }),
  });
  if (response.status !== 200) throw new Error(`${server.name}: HTTP ${response.status} ${await response.text()}`);
  const decoder = new TextDecoder();
  let first = null, buffered = '', completion = 0;
  for await (const piece of response.body) {
    buffered += decoder.decode(piece, { stream: true });
    let end;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const line = buffered.slice(0, end).trim();
      buffered = buffered.slice(end + 2);
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const event = JSON.parse(line.slice(6));
      if (first === null && event.choices?.[0]?.delta?.content) first = performance.now();
      if (event.usage) completion = event.usage.completion_tokens;
    }
  }
  const done = performance.now();
  return { ttft: (first - started) / 1000, decode: (done - first) / 1000, total: (done - started) / 1000, completion };
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const textPrompt = 'Once upon a time';
const imagePrompt = [{ type: 'image_url', image_url: { url: imageUrl } }, { type: 'text', text: textPrompt }];

async function measure(server) {
  await streamOnce(server, textPrompt, 8); // warm-up
  const single = [];
  for (let i = 0; i < rounds; i++) single.push(await streamOnce(server, textPrompt));
  const ttft = median(single.map((r) => r.ttft));
  const decodeRate = median(single.map((r) => (r.completion - 1) / r.decode));

  const aggregate = [];
  for (let i = 0; i < rounds; i++) {
    const started = performance.now();
    const results = await Promise.all(Array.from({ length: parallel }, () => streamOnce(server, textPrompt)));
    const seconds = (performance.now() - started) / 1000;
    aggregate.push(results.reduce((sum, r) => sum + r.completion, 0) / seconds);
  }

  await streamOnce(server, imagePrompt, 4); // first sight of the image
  const repeated = [];
  for (let i = 0; i < rounds; i++) repeated.push((await streamOnce(server, imagePrompt, 4)).ttft);
  // The same image under a new question each time: the text before the
  // image differs, so no prompt-prefix cache covers the image; only an
  // image-embedding cache saves encoding it again.
  const asked = [];
  for (let i = 0; i < rounds; i++) {
    const question = [{ type: 'text', text: `Question ${i + 1}, about this picture:` }, ...imagePrompt];
    asked.push((await streamOnce(server, question, 4)).ttft);
  }
  return { ttft, decodeRate, aggregate: median(aggregate), imageTtft: median(repeated), imageNewQuestionTtft: median(asked) };
}

const results = {};
for (const start of [startLlamaServer, startMmserve]) {
  const server = await start();
  try {
    results[server.name] = await measure(server);
  } finally {
    server.child.kill('SIGTERM');
  }
}

const rows = [
  ['time to first token, text (s)', 'ttft', 'lower is better'],
  ['decode, 1 stream (tokens/s)', 'decodeRate', 'higher is better'],
  [`aggregate, ${parallel} streams (tokens/s)`, 'aggregate', 'higher is better'],
  ['time to first token, repeated image and prompt (s)', 'imageTtft', 'lower is better'],
  ['time to first token, repeated image, new question (s)', 'imageNewQuestionTtft', 'lower is better'],
];
console.log(`bench/vision: ${path.basename(args.model)} + ${path.basename(args.mmproj)}, ${maxTokens} tokens, median of ${rounds}`);
console.log(['measure', 'llama-server', 'mmserve', 'ratio mmserve/llama-server'].join(' | '));
for (const [label, key, sense] of rows) {
  const theirs = results['llama-server'][key], ours = results.mmserve[key];
  console.log(`${label} | ${theirs.toFixed(4)} | ${ours.toFixed(4)} | ${(ours / theirs).toFixed(3)} (${sense})`);
}
