// storage.outputs backend s3: every generated image goes to an S3-compatible
// bucket (s3rver) under its SHA-256; response_format=url answers a presigned
// GET that the official openai SDK's caller can fetch, and the object reads
// back with the official AWS SDK (s3rver does not check signatures: the
// presigning itself is checked against AWS's vectors in sigv4_test). A
// bucket that fails refuses url requests with a clear 502 while b64_json
// still answers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import OpenAI from 'openai';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { freePort, useS3Bucket } from './support.mjs';

const binary = process.env.MMSERVE_BIN;
const tinySd = process.env.MMSERVE_TEST_TINY_SD || '';
const skip = (!binary && 'MMSERVE_BIN is not set') ||
  ((!tinySd || !existsSync(path.join(tinySd, 'model_index.json'))) && `the tiny SD model is absent, skipping: ${tinySd}`);

const BUCKET = 'mmserve-outputs';
const bucket = useS3Bucket({ bucket: BUCKET, binary, folderPrefix: 'mmserve-outputs-', skip });

function start(bucketEndpoint) {
  return bucket.start('image', bucketEndpoint, {
    config: () => `image: {model_path: ${tinySd}, threads: 2}\n`,
    storage: '  outputs: {backend: s3, key_prefix: generated/, presign_expiry: 10m}\n',
  });
}

async function objectBytes(key) {
  const object = await bucket.sdk.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await object.Body.transformToByteArray());
}

const request = { prompt: 'a harbour at night', size: '64x64', steps: 3, seed: 21 };

test('url answers a presigned GET of the object the bucket holds; b64_json is stored too', { skip }, async () => {
  const { base } = await start(bucket.endpoint);
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });
  const byUrl = await client.images.generate({ ...request, response_format: 'url' });
  const url = new URL(byUrl.data[0].url);
  assert.equal(url.origin, bucket.endpoint);
  assert.match(url.pathname, new RegExp(`^/${BUCKET}/generated/[0-9a-f]{64}\\.png$`));
  assert.ok(url.searchParams.get('X-Amz-Signature'), 'a presigned URL');
  assert.equal(url.searchParams.get('X-Amz-Expires'), '600');
  const fetched = Buffer.from(await (await fetch(url)).arrayBuffer());
  assert.equal(fetched.subarray(1, 4).toString(), 'PNG');
  const key = url.pathname.slice(`/${BUCKET}/`.length);
  assert.equal(createHash('sha256').update(fetched).digest('hex'), path.basename(key, '.png'));
  assert.deepEqual(await objectBytes(key), fetched);

  // b64_json: the same image (same seed), and the bucket has it under the same name.
  const inline = await client.images.generate({ ...request, response_format: 'b64_json' });
  const bytes = Buffer.from(inline.data[0].b64_json, 'base64');
  assert.deepEqual(bytes, fetched);
  const other = await client.images.generate({ ...request, seed: 22, response_format: 'b64_json' });
  const otherBytes = Buffer.from(other.data[0].b64_json, 'base64');
  const otherKey = `generated/${createHash('sha256').update(otherBytes).digest('hex')}.png`;
  assert.deepEqual(await objectBytes(otherKey), otherBytes);
});

test('an unreachable bucket: url requests get a 502 naming the store, b64_json still answers', { skip }, async () => {
  const { base } = await start(`http://127.0.0.1:${await freePort()}`);
  const response = await fetch(`${base}/v1/images/generations`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...request, response_format: 'url' }),
  });
  assert.equal(response.status, 502);
  const body = await response.json();
  assert.equal(body.error.code, 'output_store_failed');
  const inline = await fetch(`${base}/v1/images/generations`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...request, response_format: 'b64_json' }),
  });
  assert.equal(inline.status, 200);
  assert.equal(Buffer.from((await inline.json()).data[0].b64_json, 'base64').subarray(1, 4).toString(), 'PNG');
});
