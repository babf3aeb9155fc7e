// storage.inputs: the images and audio files clients upload are kept in an
// S3-compatible bucket (s3rver), once each, named by SHA-256, and read back
// with the official AWS SDK; a bucket that fails does not fail requests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { freePort, useS3Bucket } from './support.mjs';

const binary = process.env.MMSERVE_BIN;
const modelsDir = process.env.MMSERVE_TEST_MODELS || path.resolve(process.env.MMSERVE_SOURCE_DIR || '.', '../shared/models');
const stories = path.join(modelsDir, 'stories260K.gguf');
const mmproj = process.env.MMSERVE_TEST_MMPROJ || '';
const whisper = process.env.MMSERVE_TEST_WHISPER || '';
const photo = path.resolve(modelsDir, '../media/newspaper-moon.jpeg');
const speech = path.resolve(modelsDir, '../media/jfk.mp3');
const absent = [stories, mmproj, whisper, photo, speech].filter((file) => !file || !existsSync(file));
const skip = (!binary && 'MMSERVE_BIN is not set') || (absent.length > 0 && `test files absent, skipping: ${absent.join(', ')}`);

const BUCKET = 'mmserve-inputs';
const bucket = useS3Bucket({ bucket: BUCKET, binary, folderPrefix: 'mmserve-inputs-', skip });

function start(bucketEndpoint) {
  return bucket.start('serve', bucketEndpoint, {
    config: (folder) => 'image: {enabled: false}\n' +
      `vision: {model_path: ${stories}, mmproj_path: ${mmproj}, max_model_len: 1024}\nspeech: {model_path: ${whisper}}\n` +
      `media: {storage: {temp_dir: ${path.join(folder, 'media')}}}\n`,
    storage: '  inputs: {backend: s3, key_prefix: uploads/}\n',
  });
}

async function metric(base, labels) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const selector = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(',');
  const line = text.split('\n').find((l) => l.startsWith(`mmserve_inputs_archived_total{${selector}}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

async function waitFor(condition, what) {
  for (let i = 0; i < 500; i++) {
    if (await condition()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function chatWithImage(base, jpeg) {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ max_tokens: 4, messages: [{ role: 'user', content: [
      { type: 'text', text: 'What is this?' },
      { type: 'image_url', image_url: { url: `data:image/jpeg;base64,${jpeg.toString('base64')}` } }] }] }),
  });
  await response.json();
  return response.status;
}

async function transcribe(base, bytes, name) {
  const form = new FormData();
  form.append('file', new Blob([bytes]), name);
  const response = await fetch(`${base}/v1/audio/transcriptions`, { method: 'POST', body: form });
  await response.json();
  return response.status;
}

async function objectBytes(key) {
  const object = await bucket.sdk.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await object.Body.transformToByteArray());
}

test('uploaded images and audio are kept once each, under their SHA-256', { skip }, async () => {
  const server = await start(bucket.endpoint);
  const jpeg = readFileSync(photo);
  const mp3 = readFileSync(speech);
  assert.equal(await chatWithImage(server.base, jpeg), 200);
  assert.equal(await transcribe(server.base, mp3, 'JFK.MP3'), 200);
  await waitFor(async () => (await metric(server.base, { service: 'vision', result: 'stored' })) === 1 &&
    (await metric(server.base, { service: 'speech', result: 'stored' })) === 1, 'both uploads');

  const sha = (bytes) => createHash('sha256').update(bytes).digest('hex');
  assert.deepEqual(await objectBytes(`uploads/${sha(jpeg)}.jpg`), jpeg);
  assert.deepEqual(await objectBytes(`uploads/${sha(mp3)}.mp3`), mp3);

  // The same audio again: not uploaded a second time.
  assert.equal(await transcribe(server.base, mp3, 'again.mp3'), 200);
  await waitFor(async () => (await metric(server.base, { service: 'speech', result: 'known' })) === 1, 'the repeat');
  const listed = await bucket.sdk.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: 'uploads/' }));
  assert.equal(listed.KeyCount, 2);
  assert.equal(await metric(server.base, { service: 'speech', result: 'stored' }), 1);
  server.child.kill('SIGTERM');
});

test('a bucket that cannot be reached costs no request', { skip }, async () => {
  const unreachable = `http://127.0.0.1:${await freePort()}`;
  const server = await start(unreachable);
  assert.equal(await transcribe(server.base, readFileSync(speech), 'jfk.mp3'), 200);
  await waitFor(async () => (await metric(server.base, { service: 'speech', result: 'failed' })) === 1, 'the failure');
  assert.match(server.log(), /input not kept/);
  assert.equal(await transcribe(server.base, readFileSync(speech), 'jfk.mp3'), 200);
  server.child.kill('SIGTERM');
});
