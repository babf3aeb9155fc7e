// bench/speech: mmserve's speech service against whisper.cpp's own tools,
// same model, same audio and the same decoding parameters, in the same run:
// one transcription against whisper-cli, and several concurrent ones against
// whisper-server. Prints each measure for every peer and the speed ratio
// peer time / mmserve time (above 1: mmserve is faster).
//
//   node bench/speech/bench.mjs --mmserve build/mmserve --whisper-cli build/bin/whisper-cli \
//        --whisper-server build/bin/whisper-server --model M.bin --audio a.wav b.wav ... \
//        [--rounds 5] [--threads 2] [--parallel 2] [--concurrency 4] [--best-of 5] [--batch-audio b.wav]
//
// The audio must be 16 kHz mono WAV, ideally 32-bit float, so that
// whisper.cpp's miniaudio and mmserve's FFmpeg read the very same samples.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values: args, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    mmserve: { type: 'string' }, 'whisper-cli': { type: 'string' }, 'whisper-server': { type: 'string' },
    model: { type: 'string' }, audio: { type: 'string', multiple: true }, 'batch-audio': { type: 'string' },
    rounds: { type: 'string', default: '5' }, threads: { type: 'string', default: '2' },
    parallel: { type: 'string', default: '2' }, concurrency: { type: 'string', default: '4' },
    'best-of': { type: 'string', default: '5' },
  },
});
// `--audio a.wav b.wav`: parseArgs takes one value per flag, the rest arrive as positionals.
const audioFiles = [...(args.audio ?? []), ...positionals];
for (const required of ['mmserve', 'whisper-cli', 'whisper-server', 'model']) {
  if (!args[required]) throw new Error(`--${required} is required`);
}
if (audioFiles.length === 0) throw new Error('--audio is required');
const rounds = Number(args.rounds);
const threads = Number(args.threads);
const parallel = Number(args.parallel);
const concurrency = Number(args.concurrency);
const bestOf = Number(args['best-of']);
const batchAudio = args['batch-audio'] ?? audioFiles[Math.min(1, audioFiles.length - 1)];
const work = mkdtempSync(path.join(tmpdir(), 'bench-speech-'));
const children = new Set();

function stopAll() {
  for (const child of children) child.kill('SIGTERM');
  children.clear();
  rmSync(work, { recursive: true, force: true });
}
process.on('exit', stopAll);
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => process.exit(130));

// Seconds of audio in a WAV file, from its fmt and data chunks.
function wavSeconds(file) {
  const data = readFileSync(file);
  let offset = 12, bytesPerSecond = 0;
  while (offset + 8 <= data.length) {
    const id = data.toString('ascii', offset, offset + 4), size = data.readUInt32LE(offset + 4);
    if (id === 'fmt ') bytesPerSecond = data.readUInt32LE(offset + 16);
    if (id === 'data') return Math.min(size, data.length - offset - 8) / bytesPerSecond;
    offset += 8 + size + (size & 1);
  }
  throw new Error(`${file}: no WAV data chunk`);
}
const clips = audioFiles.map((file) => ({ file, name: path.basename(file), seconds: wavSeconds(file), bytes: readFileSync(file) }));
const batchClip = clips.find((c) => c.file === batchAudio) ??
  { file: batchAudio, name: path.basename(batchAudio), seconds: wavSeconds(batchAudio), bytes: readFileSync(batchAudio) };

const freePort = () => new Promise((resolve) => {
  const probe = createServer().listen(0, '127.0.0.1', () => { const { port } = probe.address(); probe.close(() => resolve(port)); });
});

async function waitFor(url, child) {
  for (let i = 0; i < 1200; i++) {
    if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode} before ready: ${url}`);
    try { if ((await fetch(url)).status === 200) return; } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`not ready: ${url}`);
}

function launch(program, argv) {
  const child = spawn(program, argv, { stdio: 'ignore' });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

async function startMmserve(workers, workerThreads) {
  const port = await freePort();
  const config = path.join(work, `mmserve-${workers}x${workerThreads}.yaml`);
  writeFileSync(config, `logging: {access_log: false}\nvision:\n  enabled: false\nimage:\n  enabled: false\n` +
    `speech:\n  model_path: ${args.model}\n  threads: ${workerThreads}\n  parallel: ${workers}\n` +
    `  beam_size: 1\n  best_of: ${bestOf}\n`);
  const child = launch(args.mmserve, ['speech', '--config', config, '--port', String(port)]);
  const base = `http://127.0.0.1:${port}`;
  await waitFor(`${base}/readyz`, child);
  return { name: `mmserve, parallel ${workers}, threads ${workerThreads}`, kind: 'mmserve', child, base };
}

async function startWhisperServer(serverThreads) {
  const port = await freePort();
  const child = launch(args['whisper-server'], ['-m', args.model, '--host', '127.0.0.1', '--port', String(port),
    '-t', String(serverThreads), '-bs', '1', '-bo', String(bestOf), '-l', 'en', '-nlp']);
  const base = `http://127.0.0.1:${port}`;
  await waitFor(`${base}/health`, child);
  return { name: `whisper-server -t ${serverThreads}`, kind: 'whisper-server', child, base };
}

// One transcription over HTTP: seconds from sending to the whole answer, and the answer.
async function transcribe(server, clip, format = 'json') {
  const form = new FormData();
  form.append('file', new Blob([clip.bytes], { type: 'audio/wav' }), clip.name);
  form.append('response_format', format);
  form.append('language', 'en');
  form.append('temperature', '0');
  let url = `${server.base}/inference`;
  if (server.kind === 'mmserve') {
    form.append('model', 'whisper-1');
    url = `${server.base}/v1/audio/transcriptions`;
  }
  const started = performance.now();
  const response = await fetch(url, { method: 'POST', body: form });
  const body = await response.text();
  const seconds = (performance.now() - started) / 1000;
  if (response.status !== 200) throw new Error(`${server.name}: HTTP ${response.status} ${body}`);
  return { seconds, body: JSON.parse(body) };
}

// One whisper-cli run: its wall time (model load included) and whisper.cpp's
// own timings ("total time" runs from the start of the model load).
function runCli(clip, extra = []) {
  return new Promise((resolve, reject) => {
    const argv = ['-m', args.model, '-f', clip.file, '-t', String(threads), '-l', 'en', '-bs', '1', '-bo', String(bestOf), ...extra];
    const started = performance.now();
    const child = spawn(args['whisper-cli'], argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    children.add(child);
    let log = '';
    child.stderr.on('data', (piece) => { log += piece; });
    child.on('error', reject);
    child.on('exit', (code) => {
      children.delete(child);
      const wall = (performance.now() - started) / 1000;
      if (code !== 0) return reject(new Error(`whisper-cli exited with ${code}:\n${log.slice(-2000)}`));
      const timing = (name) => {
        const match = log.match(new RegExp(`whisper_print_timings:\\s+${name} time =\\s+([0-9.]+) ms`));
        if (!match) return reject(new Error(`whisper-cli printed no ${name} time`));
        return Number(match[1]) / 1000;
      };
      const load = timing('load'), total = timing('total');
      const compute = ['mel', 'sample', 'encode', 'decode', 'batchd', 'prompt'].reduce((sum, name) => sum + timing(name), 0);
      resolve({ wall, load, total, withoutLoad: total - load, compute });
    });
  });
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

// Sum and count of mmserve's whisper_full time (model_inference_seconds, phase transcribe).
async function inferenceSeconds(server) {
  const text = await (await fetch(`${server.base}/metrics`)).text();
  const read = (suffix) => text.split('\n').filter((line) => line.startsWith(`model_inference_seconds_${suffix}{`) &&
    line.includes('service="speech"') && line.includes('phase="transcribe"'))
    .reduce((sum, line) => sum + Number(line.split(' ').pop()), 0);
  return { sum: read('sum'), count: read('count') };
}

// The text tokens of a transcript, in order: what "same transcript" compares.
function cliTokens(clip, multilingualEot) {
  const json = readFileSync(path.join(work, `${clip.name}.json`), 'latin1');
  // whisper-cli does not escape control characters inside its JSON strings,
  // so the ids are read without parsing the whole file.
  return [...json.matchAll(/"id": (\d+),/g)].map((m) => Number(m[1])).filter((id) => id < multilingualEot);
}
// whisper-server cuts its segments at 60 characters and joins them with line
// breaks, even inside a word: texts are compared without their white space.
const letters = (text) => text.replace(/\s+/g, '');
const textTokens = (body, eot) => body.segments.flatMap((segment) => segment.tokens ?? []).filter((id) => id < eot);

const machine = `${cpus().length} cores, ${cpus()[0]?.model ?? 'unknown CPU'}`;
const loadBefore = loadavg()[0];
const servers = {
  single: await startMmserve(1, threads),
  pooled: await startMmserve(parallel, Math.max(1, Math.floor(threads / parallel))),
  peer: await startWhisperServer(threads),
  peerOne: threads > 1 ? await startWhisperServer(1) : null,
};

// Same transcript: the text tokens whisper-cli writes (-ojf) against the ones
// mmserve and whisper-server return (verbose_json), for every clip.
const eot = readFileSync(args.model).readInt32LE(4) >= 51865 ? 50257 : 50256; // multilingual vocabularies
const same = {};
for (const clip of clips) {
  await runCli(clip, ['-ojf', '-of', path.join(work, clip.name)]);
  const reference = JSON.stringify(cliTokens(clip, eot));
  const ours = (await transcribe(servers.single, clip, 'verbose_json')).body;
  const theirs = (await transcribe(servers.peer, clip, 'verbose_json')).body;
  const oursText = (await transcribe(servers.single, clip)).body.text;
  const theirsText = (await transcribe(servers.peer, clip)).body.text;
  same[clip.name] = {
    mmserve: JSON.stringify(textTokens(ours, eot)) === reference,
    server: JSON.stringify(textTokens(theirs, eot)) === reference,
    text: letters(oursText) === letters(theirsText),
    tokens: JSON.parse(reference).length,
  };
}

// One transcription, median of `rounds`, the peers interleaved round by round.
const latency = {};
for (const clip of clips) {
  const cli = [], ours = [], peer = [], whisperFull = [];
  for (let i = 0; i < rounds; i++) {
    cli.push(await runCli(clip));
    const before = await inferenceSeconds(servers.single);
    ours.push((await transcribe(servers.single, clip)).seconds);
    const after = await inferenceSeconds(servers.single);
    whisperFull.push(after.sum - before.sum);
    peer.push((await transcribe(servers.peer, clip)).seconds);
  }
  latency[clip.name] = {
    cliWall: median(cli.map((r) => r.wall)), cliLoad: median(cli.map((r) => r.load)),
    cliWithoutLoad: median(cli.map((r) => r.withoutLoad)), cliCompute: median(cli.map((r) => r.compute)),
    mmserve: median(ours), mmserveWhisperFull: median(whisperFull), server: median(peer),
  };
}

// `concurrency` requests of the batch clip at once: audio seconds per wall second, median of `rounds` batches.
const throughputServers = [servers.peer, servers.peerOne, servers.single, servers.pooled].filter(Boolean);
const batches = new Map(throughputServers.map((server) => [server, []]));
for (const server of throughputServers) await transcribe(server, batchClip); // warm-up
for (let i = 0; i < rounds; i++) {
  for (const server of throughputServers) {
    const started = performance.now();
    await Promise.all(Array.from({ length: concurrency }, () => transcribe(server, batchClip)));
    batches.get(server).push((concurrency * batchClip.seconds) / ((performance.now() - started) / 1000));
  }
}

const ms = (seconds) => `${(seconds * 1000).toFixed(0)} ms`;
const ratio = (theirs, ours) => (theirs / ours).toFixed(2);
console.log(`bench/speech: ${path.basename(args.model)}, ${machine}; load average ${loadBefore.toFixed(2)} before, ` +
  `${loadavg()[0].toFixed(2)} after (other work on the machine skews every figure)`);
console.log(`decoding: greedy (beam size 1), best_of ${bestOf}, temperature 0 (+0.2 fallback), language en, ` +
  `${threads} threads; median of ${rounds}`);
console.log('');
console.log('same transcript as whisper-cli (text tokens):');
for (const clip of clips) {
  const s = same[clip.name];
  console.log(`  ${clip.name} (${clip.seconds.toFixed(1)} s, ${s.tokens} tokens): mmserve ${s.mmserve ? 'yes' : 'no'}, ` +
    `whisper-server ${s.server ? 'yes' : 'no'}; mmserve text = whisper-server text (white space aside): ${s.text ? 'yes' : 'no'}`);
}
console.log('');
console.log(`one transcription, ${threads} threads (mmserve: parallel 1; ratio = peer time / mmserve time, above 1: mmserve faster)`);
console.log(['clip', 'whisper-cli wall', 'whisper-cli total - load', 'whisper-server', 'mmserve',
  'mmserve RTF', 'ratio vs cli wall', 'ratio vs cli total - load', 'ratio vs whisper-server'].join(' | '));
for (const clip of clips) {
  const r = latency[clip.name];
  console.log([`${clip.name} (${clip.seconds.toFixed(1)} s)`, ms(r.cliWall), ms(r.cliWithoutLoad), ms(r.server), ms(r.mmserve),
    (r.mmserve / clip.seconds).toFixed(3), ratio(r.cliWall, r.mmserve), ratio(r.cliWithoutLoad, r.mmserve),
    ratio(r.server, r.mmserve)].join(' | '));
}
console.log('where the time goes (medians):');
for (const clip of clips) {
  const r = latency[clip.name];
  console.log(`  ${clip.name}: whisper-cli load ${ms(r.cliLoad)}, whisper_full timings ${ms(r.cliCompute)}; ` +
    `mmserve whisper_full ${ms(r.mmserveWhisperFull)} of ${ms(r.mmserve)} (rest: HTTP, multipart, FFmpeg decode)`);
}
console.log('');
console.log(`throughput, ${concurrency} concurrent requests of ${batchClip.name} (${batchClip.seconds.toFixed(1)} s): ` +
  'audio seconds per wall second (ratio = mmserve / peer)');
const rate = (server) => median(batches.get(server));
console.log(['server', 'audio s / s', `vs ${servers.peer.name}`].join(' | '));
for (const server of throughputServers) {
  console.log([server.name, rate(server).toFixed(2), (rate(server) / rate(servers.peer)).toFixed(2)].join(' | '));
}
process.exit(0); // the servers are stopped on exit
