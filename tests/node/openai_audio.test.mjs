// mmserve's speech service through the official openai SDK: every response
// format, word timestamps, streaming, translation and bad inputs, against
// the real binary on a generated whisper model and real speech (jfk.mp3,
// uploaded as it is: mmserve decodes the mp3 itself).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startRoleInDir } from './support.mjs';
import OpenAI, { toFile } from 'openai';

const binary = process.env.MMSERVE_BIN;
const whisperModel = process.env.MMSERVE_TEST_WHISPER || '';
const sourceDir = process.env.MMSERVE_SOURCE_DIR || '.';
const mediaDir = process.env.MMSERVE_TEST_MEDIA || path.resolve(sourceDir, '../shared/media');
const speech = path.join(mediaDir, 'jfk.mp3');
const skip = (!existsSync(whisperModel) && `generated whisper model absent, skipping: ${whisperModel}`) ||
  (!existsSync(speech) && `test audio absent, skipping: ${speech}`);

let server;
let client;

const audio = () => createReadStream(speech);

before(async () => {
  if (skip) return;
  assert.ok(binary, 'MMSERVE_BIN must name the mmserve binary');
  const dir = mkdtempSync(path.join(tmpdir(), 'mmserve-openai-audio-'));
  writeFileSync(path.join(dir, 'mmserve.yaml'), `speech:\n  model_path: ${whisperModel}\n  threads: 2\n`);
  server = await startRoleInDir(binary, 'speech', dir);
  client = new OpenAI({ baseURL: `${server.base}/v1`, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  if (!server) return;
  const exited = new Promise((resolve) => server.child.on('exit', resolve));
  server.child.kill('SIGTERM');
  assert.equal(await exited, 0, server.log());
});

test('models.list shows the whisper model', { skip }, async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, [path.basename(whisperModel, '.bin')]);
});

test('transcriptions.create in every response format', { skip }, async () => {
  const json = await client.audio.transcriptions.create({ file: audio(), model: 'whisper-1' });
  assert.equal(typeof json.text, 'string');
  assert.ok(json.text.length > 0);
  assert.deepEqual(json.usage, { type: 'duration', seconds: 11 }); // whole seconds, rounded up

  const text = await client.audio.transcriptions.create({ file: audio(), model: 'whisper-1', response_format: 'text' });
  assert.equal(text, `${json.text}\n`);

  const srt = await client.audio.transcriptions.create({ file: audio(), model: 'whisper-1', response_format: 'srt' });
  assert.match(srt, /^1\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n/);

  const vtt = await client.audio.transcriptions.create({ file: audio(), model: 'whisper-1', response_format: 'vtt' });
  assert.match(vtt, /^WEBVTT\n\n\d\d:\d\d:\d\d\.\d\d\d --> \d\d:\d\d:\d\d\.\d\d\d\n/);

  const verbose = await client.audio.transcriptions.create({
    file: audio(), model: 'whisper-1', response_format: 'verbose_json', language: 'en',
  });
  assert.equal(verbose.language, 'english');
  assert.ok(Math.abs(verbose.duration - 11.0) < 0.1, `duration ${verbose.duration}`);
  assert.ok(verbose.segments.length > 0);
  assert.equal(verbose.segments.map((s) => s.text).join('').trim(), verbose.text);
  for (const segment of verbose.segments) {
    assert.ok(segment.start <= segment.end);
    for (const key of ['id', 'seek', 'tokens', 'temperature', 'avg_logprob', 'compression_ratio', 'no_speech_prob']) {
      assert.ok(key in segment, `segment lacks ${key}`);
    }
  }
});

test('word and segment timestamps', { skip }, async () => {
  const result = await client.audio.transcriptions.create({
    file: audio(), model: 'whisper-1', response_format: 'verbose_json',
    timestamp_granularities: ['word', 'segment'],
  });
  assert.ok(result.words.length > 0);
  assert.ok(result.segments.length > 0);
  for (const word of result.words) assert.ok(word.start <= word.end && word.end <= 11.1, JSON.stringify(word));
  assert.equal(result.words.map((w) => w.word).join(''), result.text.replaceAll(' ', ''));
});

test('streamed transcription: deltas, then the whole text', { skip }, async () => {
  const whole = await client.audio.transcriptions.create({ file: audio(), model: 'whisper-1' });
  const stream = await client.audio.transcriptions.create({ file: audio(), model: 'whisper-1', stream: true });
  let deltas = '';
  let done;
  for await (const event of stream) {
    assert.equal(done, undefined, 'no event after transcript.text.done');
    if (event.type === 'transcript.text.delta') deltas += event.delta;
    else if (event.type === 'transcript.text.done') done = event;
    else assert.fail(`unexpected event ${event.type}`);
  }
  assert.ok(done);
  assert.equal(done.text, deltas);
  assert.equal(deltas.trim(), whole.text);
});

test('translations.create', { skip }, async () => {
  const result = await client.audio.translations.create({
    file: audio(), model: 'whisper-1', response_format: 'verbose_json',
  });
  assert.equal(result.task, 'translate');
  assert.equal(typeof result.text, 'string');
});

test('bad inputs are API errors and serving goes on', { skip }, async () => {
  const notAudio = await toFile(Buffer.from('plain text, not audio\n'), 'notes.mp3');
  await assert.rejects(client.audio.transcriptions.create({ file: notAudio, model: 'whisper-1' }), (error) => {
    assert.equal(error.status, 415);
    assert.equal(error.code, 'unsupported_audio_format');
    return true;
  });
  const empty = await toFile(Buffer.alloc(0), 'empty.wav');
  await assert.rejects(client.audio.transcriptions.create({ file: empty, model: 'whisper-1' }), (error) => {
    assert.equal(error.status, 400);
    assert.equal(error.param, 'file');
    return true;
  });
  await assert.rejects(client.audio.transcriptions.create({ file: audio(), model: 'whisper-1', response_format: 'xml' }),
    (error) => error.status === 400 && error.param === 'response_format');
  await assert.rejects(client.audio.transcriptions.create({ file: audio(), model: 'whisper-1', language: 'klingon' }),
    (error) => error.status === 400 && error.param === 'language');
  await assert.rejects(client.audio.transcriptions.create({ file: audio(), model: 'no-such-model' }),
    (error) => error.status === 404 && error.code === 'model_not_found');
  const after = await client.audio.transcriptions.create({ file: audio(), model: 'whisper-1' });
  assert.ok(after.text.length > 0);
});
