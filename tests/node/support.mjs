// Helpers shared by the node end-to-end tests.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';

// A loopback TCP port nobody listens on right now.
export function freePort() {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

// Polls /readyz until every model is loaded.
export async function waitReady(baseUrl, attempts = 1000) {
  for (let i = 0; i < attempts; i++) {
    try {
      const response = await fetch(`${baseUrl}/readyz`);
      if (response.status === 200) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('mmserve did not become ready');
}

// A child process with its output collected (for failure messages).
export function spawnWithLog(binary, args, options = {}) {
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let log = '';
  child.stdout.on('data', (piece) => { log += piece; });
  child.stderr.on('data', (piece) => { log += piece; });
  return { child, log: () => log };
}

// The mmserve binary as a child process with its output collected: `role`
// is serve, image, ...; `file` its config; `args` more command-line arguments.
export function spawnMmserve(binary, role, file, { args = [], ...options } = {}) {
  return spawnWithLog(binary, [role, '--config', file, ...args], options);
}

// Waits for /readyz to say 200, failing with the log if the process exits first.
export async function waitReadyOrExit(base, { child, log }, attempts = 1500) {
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`mmserve exited:\n${log()}`);
    if ((await fetch(`${base}/readyz`).catch(() => null))?.status === 200) return;
    if (i > attempts) throw new Error(`mmserve did not get ready:\n${log()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

// `mmserve ROLE` with DIR/mmserve.yaml and HOME=DIR on a free port, once
// /readyz says 200 (failing with its output if it exits first).
export async function startRoleInDir(binary, role, dir) {
  const port = await freePort();
  const service = spawnMmserve(binary, role, path.join(dir, 'mmserve.yaml'),
    { args: ['--port', String(port)], env: { ...process.env, HOME: dir } });
  const base = `http://127.0.0.1:${port}`;
  await waitReadyOrExit(base, service);
  return { ...service, port, base };
}

// An S3-compatible server (s3rver) on a loopback port with `bucket`, and the
// official AWS SDK client pointed at it.
export async function startS3rver(directory, bucket) {
  const { default: S3rver } = await import('s3rver');
  const { S3Client } = await import('@aws-sdk/client-s3');
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory,
    configureBuckets: [{ name: bucket }] });
  const { port } = await server.run();
  const endpoint = `http://127.0.0.1:${port}`;
  const sdk = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
  return { server, endpoint, sdk };
}

// A test file's s3rver bucket, started before its tests and closed after
// them, and the mmserve processes its tests start against a bucket (killed
// after). With `skip` set nothing starts. `start(role, bucketEndpoint,
// { config, storage })` writes a config in a fresh folder: the port,
// `config(folder)`, then storage.s3 for the bucket and the `storage` lines
// under it; it resolves once mmserve is ready.
export function useS3Bucket({ bucket, binary, folderPrefix, skip }) {
  const state = { dir: '', endpoint: '', sdk: null };
  let server;
  const children = [];
  before(async () => {
    if (skip) return;
    state.dir = mkdtempSync(path.join(tmpdir(), folderPrefix));
    ({ server, endpoint: state.endpoint, sdk: state.sdk } = await startS3rver(path.join(state.dir, 'data'), bucket));
  });
  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    await server?.close();
  });
  state.start = async (role, bucketEndpoint, { config, storage }) => {
    const port = await freePort();
    const folder = mkdtempSync(path.join(state.dir, 'server-'));
    const file = path.join(folder, 'mmserve.yaml');
    writeFileSync(file, `server: {port: ${port}}\n${config(folder)}` +
      `storage:\n  s3: {endpoint: '${bucketEndpoint}', bucket: ${bucket}, region: us-east-1, access_key_id: S3RVER, secret_access_key: S3RVER, timeout: 5s}\n` +
      storage);
    const spawned = spawnMmserve(binary, role, file);
    children.push(spawned.child);
    const base = `http://127.0.0.1:${port}`;
    await waitReadyOrExit(base, spawned);
    return { base, child: spawned.child, log: spawned.log };
  };
  return state;
}
