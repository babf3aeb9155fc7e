// mmserve's S3 client (through mmserve_s3_cli) against a real S3-compatible
// server, s3rver, read back with the official AWS SDK. s3rver checks the
// access key, presigned-URL expiry and the request shape but not SigV4
// signatures, so the requests go through a proxy that recomputes every
// signature with the AWS SDK's own signer (@smithy/signature-v4) and
// refuses a mismatch as S3 does (403 SignatureDoesNotMatch).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import S3rver from 's3rver';
import { S3Client, GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '@smithy/core/checksum';
import { freePort } from './support.mjs';

const cli = process.env.MMSERVE_S3_CLI;
const skip = !cli && 'MMSERVE_S3_CLI is not set (CTest runs this file as node.s3_storage)';
const ACCESS_KEY = 'S3RVER'; // s3rver's built-in account
const SECRET = 'S3RVER';
const BUCKET = 'mmserve-test';

let dir;
let s3rver;
let s3rverUrl;
let proxy;
let proxyUrl;
let sdk;
const seen = []; // "METHOD ?query-names" of every request the proxy passed on

function amzDateToDate(text) {
  return new Date(Date.UTC(+text.slice(0, 4), +text.slice(4, 6) - 1, +text.slice(6, 8), +text.slice(9, 11),
    +text.slice(11, 13), +text.slice(13, 15)));
}

// The signature the AWS SDK computes for this request, given the secret.
async function sdkSignature(req, url) {
  const query = {};
  for (const [name, value] of url.searchParams) if (name !== 'X-Amz-Signature') query[name] = value;
  if (req.headers.authorization) {
    const match = /Credential=([^/]+)\/\d{8}\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})/
      .exec(req.headers.authorization);
    if (!match) return { given: 'malformed', expected: '' };
    const [, accessKeyId, region, service, signedHeaders, given] = match;
    const headers = {};
    for (const name of signedHeaders.split(';')) headers[name] = req.headers[name];
    const signer = new SignatureV4({ credentials: { accessKeyId, secretAccessKey: SECRET }, region, service,
      sha256: Sha256, uriEscapePath: false, applyChecksum: false });
    const signed = await signer.sign({ method: req.method, protocol: 'http:', hostname: req.headers.host,
      path: url.pathname, query, headers }, { signingDate: amzDateToDate(req.headers['x-amz-date']),
      signableHeaders: new Set(signedHeaders.split(';')) });
    return { given, expected: /Signature=([0-9a-f]{64})/.exec(signed.headers.authorization)[1] };
  }
  if (url.searchParams.has('X-Amz-Signature')) {
    const [accessKeyId, , region, service] = url.searchParams.get('X-Amz-Credential').split('/');
    const signer = new SignatureV4({ credentials: { accessKeyId, secretAccessKey: SECRET }, region, service,
      sha256: Sha256, uriEscapePath: false });
    for (const name of Object.keys(query)) if (name.startsWith('X-Amz-')) delete query[name];
    // As @aws-sdk/s3-request-presigner does: S3 presigned URLs sign UNSIGNED-PAYLOAD.
    const unsigned = new Set(['x-amz-content-sha256']);
    const presigned = await signer.presign({ method: req.method, protocol: 'http:', hostname: req.headers.host,
      path: url.pathname, query, headers: { host: req.headers.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } }, {
      signingDate: amzDateToDate(url.searchParams.get('X-Amz-Date')),
      expiresIn: Number(url.searchParams.get('X-Amz-Expires')), unhoistableHeaders: unsigned,
      unsignableHeaders: unsigned });
    return { given: url.searchParams.get('X-Amz-Signature'), expected: presigned.query['X-Amz-Signature'] };
  }
  return null; // anonymous
}

function startProxy(target) {
  return new Promise((resolve) => {
    const server = createServer(async (req, res) => {
      const chunks = [];
      for await (const chunk of req) chunks.push(chunk);
      const url = new URL(req.url, 'http://proxy');
      const check = await sdkSignature(req, url);
      if (check && check.given !== check.expected) {
        res.writeHead(403, { 'Content-Type': 'application/xml' });
        res.end('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The ' +
          'request signature we calculated does not match the signature you provided. Check your key and signing ' +
          'method.</Message></Error>');
        return;
      }
      seen.push(`${req.method} ?${[...url.searchParams.keys()].filter((k) => !k.startsWith('X-Amz-')).join('&')}`);
      const upstream = httpRequest({ host: target.hostname, port: target.port, method: req.method, path: req.url,
        headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      });
      upstream.end(Buffer.concat(chunks));
    });
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

function run(args, env = {}) {
  return new Promise((resolve) => {
    execFile(cli, args, { env: { PATH: process.env.PATH, AWS_ACCESS_KEY_ID: ACCESS_KEY, AWS_SECRET_ACCESS_KEY: SECRET,
      ...env }, maxBuffer: 1 << 20 }, (error, stdout, stderr) => {
      let json = {};
      try { json = JSON.parse(stdout); } catch { json = { raw: stdout, stderr }; }
      resolve({ code: error ? error.code : 0, json });
    });
  });
}

const via = (endpoint, ...args) => ['--endpoint', endpoint, '--bucket', BUCKET, ...args];

async function sdkBytes(key) {
  const answer = await sdk.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await answer.Body.transformToByteArray());
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync(path.join(tmpdir(), 'mmserve-s3-'));
  s3rver = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: path.join(dir, 'data'),
    configureBuckets: [{ name: BUCKET }] });
  const { port } = await s3rver.run();
  s3rverUrl = `http://127.0.0.1:${port}`;
  proxy = await startProxy(new URL(s3rverUrl));
  proxyUrl = `http://127.0.0.1:${proxy.address().port}`;
  sdk = new S3Client({ endpoint: s3rverUrl, region: 'us-east-1', forcePathStyle: true,
    credentials: { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
});

after(async () => {
  if (proxy) await new Promise((resolve) => proxy.close(resolve));
  if (s3rver) await s3rver.close();
});

test('a small object put by mmserve reads back byte for byte with the AWS SDK', { skip }, async () => {
  const file = path.join(dir, 'small.bin');
  const bytes = randomBytes(100_000);
  writeFileSync(file, bytes);
  const put = await run(via(proxyUrl, 'put', 'inputs/small file+1.bin', file, 'application/octet-stream'));
  assert.equal(put.code, 0, JSON.stringify(put.json));
  assert.deepEqual(await sdkBytes('inputs/small file+1.bin'), bytes);
  const head = await run(via(proxyUrl, 'head', 'inputs/small file+1.bin'));
  assert.equal(head.json.size, bytes.length);
  assert.equal(head.json.content_type, 'application/octet-stream');
  assert.equal((await run(via(proxyUrl, 'head', 'inputs/absent'))).json.exists, false);
});

test('an object above part_size goes up as a multipart upload and reads back whole', { skip }, async () => {
  const file = path.join(dir, 'large.bin');
  const bytes = randomBytes(12 * 1024 * 1024 + 12345); // three 5 MiB parts, the last one short
  writeFileSync(file, bytes);
  seen.length = 0;
  const put = await run(via(proxyUrl, '--part-size', String(5 * 1024 * 1024), 'put', 'outputs/large.bin', file));
  assert.equal(put.code, 0, JSON.stringify(put.json));
  assert.deepEqual(seen, ['POST ?uploads', 'PUT ?partNumber&uploadId', 'PUT ?partNumber&uploadId',
    'PUT ?partNumber&uploadId', 'POST ?uploadId']);
  const got = await sdkBytes('outputs/large.bin');
  assert.equal(got.length, bytes.length);
  assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(bytes).digest('hex'));
  const out = path.join(dir, 'large.back');
  const get = await run(via(proxyUrl, 'get', 'outputs/large.bin', out));
  assert.equal(get.code, 0, JSON.stringify(get.json));
  assert.deepEqual(readFileSync(out), bytes);
});

test('objects the AWS SDK put are read and deleted by mmserve', { skip }, async () => {
  const body = Buffer.from('written by @aws-sdk/client-s3');
  await sdk.send(new PutObjectCommand({ Bucket: BUCKET, Key: 'from-sdk.txt', Body: body, ContentType: 'text/plain' }));
  const out = path.join(dir, 'from-sdk.txt');
  assert.equal((await run(via(proxyUrl, 'get', 'from-sdk.txt', out))).code, 0);
  assert.deepEqual(readFileSync(out), body);
  assert.equal((await run(via(proxyUrl, 'delete', 'from-sdk.txt'))).code, 0);
  await assert.rejects(sdk.send(new HeadObjectCommand({ Bucket: BUCKET, Key: 'from-sdk.txt' })),
    (error) => error.$metadata.httpStatusCode === 404);
});

test('a presigned GET URL works over plain HTTP until it expires', { skip }, async () => {
  const file = path.join(dir, 'shared.png');
  writeFileSync(file, Buffer.from('not really a png'));
  assert.equal((await run(via(proxyUrl, 'put', 'shared.png', file, 'image/png'))).code, 0);

  const fresh = await run(via(proxyUrl, 'presign', 'shared.png', '60'));
  const ok = await fetch(fresh.json.url);
  assert.equal(ok.status, 200);
  assert.equal(await ok.text(), 'not really a png');

  const hourAgo = String(Math.floor(Date.now() / 1000) - 3600);
  const expired = await run(via(proxyUrl, 'presign', 'shared.png', '60', hourAgo));
  const refused = await fetch(expired.json.url);
  assert.equal(refused.status, 403);
  assert.match(await refused.text(), /Request has expired/);

  const forged = await run(via(proxyUrl, 'presign', 'shared.png', '60'), { AWS_SECRET_ACCESS_KEY: 'wrong' });
  const denied = await fetch(forged.json.url);
  assert.equal(denied.status, 403);
  assert.match(await denied.text(), /SignatureDoesNotMatch/);
});

test('the S3 output store saves by content hash and returns a working presigned URL', { skip }, async () => {
  const file = path.join(dir, 'generated.png');
  const bytes = randomBytes(2048);
  writeFileSync(file, bytes);
  const saved = await run(via(proxyUrl, 'save-output', file, 'png', 'image/png'));
  assert.equal(saved.code, 0, JSON.stringify(saved.json));
  const hash = createHash('sha256').update(bytes).digest('hex');
  assert.equal(saved.json.name, `${hash}.png`);
  assert.equal(saved.json.location, `s3://${BUCKET}/outputs/${hash}.png`);
  const answer = await fetch(saved.json.url);
  assert.equal(answer.status, 200);
  assert.deepEqual(Buffer.from(await answer.arrayBuffer()), bytes);
  const head = await sdk.send(new HeadObjectCommand({ Bucket: BUCKET, Key: `outputs/${hash}.png` }));
  assert.equal(head.ContentType, 'image/png');
});

test('bad credentials, a missing bucket and an unreachable endpoint are clear errors', { skip }, async () => {
  const file = path.join(dir, 'x.bin');
  writeFileSync(file, 'x');
  const wrongSecret = await run(via(proxyUrl, 'put', 'x.bin', file), { AWS_SECRET_ACCESS_KEY: 'wrong' });
  assert.equal(wrongSecret.code, 2);
  assert.equal(wrongSecret.json.status, 403);
  assert.equal(wrongSecret.json.code, 'SignatureDoesNotMatch');
  assert.match(wrongSecret.json.error, /AWS_SECRET_ACCESS_KEY/);

  const unknownKey = await run(via(s3rverUrl, 'put', 'x.bin', file), { AWS_ACCESS_KEY_ID: 'NOSUCHKEY' });
  assert.equal(unknownKey.json.code, 'InvalidAccessKeyId');
  assert.match(unknownKey.json.error, /AWS_ACCESS_KEY_ID/);

  const noBucket = await run(['--endpoint', proxyUrl, '--bucket', 'no-such-bucket', 'put', 'x.bin', file]);
  assert.equal(noBucket.json.status, 404);
  assert.equal(noBucket.json.code, 'NoSuchBucket');
  assert.match(noBucket.json.error, /no-such-bucket/);
  const checked = await run(['--endpoint', proxyUrl, '--bucket', 'no-such-bucket', 'check-bucket']);
  assert.equal(checked.json.status, 404);
  assert.match(checked.json.error, /bucket does not exist/);
  assert.equal((await run(via(proxyUrl, 'check-bucket'))).code, 0);

  const closed = await freePort();
  const unreachable = await run(via(`http://127.0.0.1:${closed}`, 'put', 'x.bin', file));
  assert.equal(unreachable.json.status, 0);
  assert.match(unreachable.json.error, /unreachable.*refused/i);
});
