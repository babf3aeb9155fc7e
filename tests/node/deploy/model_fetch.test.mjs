// The CPU overlay end to end on this machine: its model-fetch Job run as the
// manifest runs it (command, env, one folder per volume claim) against a
// local server laid out like Hugging Face (this machine has no internet; the
// repositories hold the test suite's small generated models under the real
// repositories' file names), then every model Deployment of the overlay run
// as its manifest runs it on the volumes the Job filled. Each service must
// find its model where the Job put it, load it and answer /readyz 200: the
// Job's layout and the Deployments' paths agree.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { k8sDir, render } from './kustomize.mjs';
import { mountVolumes } from './pod.mjs';
import { freePort, spawnWithLog, waitReadyOrExit } from '../support.mjs';

const bin = process.env.MMSERVE_BIN;
const generated = {
  llama: process.env.MMSERVE_TEST_TINY_LLAMA, mmproj: process.env.MMSERVE_TEST_MMPROJ,
  whisper: process.env.MMSERVE_TEST_WHISPER_EN, sd: process.env.MMSERVE_TEST_TINY_SD,
};
const absent = Object.entries(generated).filter(([, file]) => !file || !existsSync(file)).map(([name]) => name);
const skip = (!bin && 'MMSERVE_BIN is not set') ||
  (absent.length > 0 && `generated test models absent (${absent.join(', ')}), skipping`);

const filesUnder = (dir) => readdirSync(dir, { recursive: true }).filter((f) => statSync(join(dir, f)).isFile());

// repo -> file name -> local file. Several quantisations and projectors, as
// the real repositories hold, so that the pull's choice is exercised.
function repositories() {
  const vlm = (name) => ({
    [`${name}-f16.gguf`]: generated.llama, [`${name}-Q8_0.gguf`]: generated.llama,
    [`mmproj-${name}-f16.gguf`]: generated.mmproj, [`mmproj-${name}-Q8_0.gguf`]: generated.mmproj,
  });
  return {
    'ggml-org/SmolVLM-256M-Instruct-GGUF': vlm('SmolVLM-256M-Instruct'),
    'ggml-org/Qwen2-VL-2B-Instruct-GGUF': { ...vlm('Qwen2-VL-2B-Instruct'), 'Qwen2-VL-2B-Instruct-Q4_K_M.gguf': generated.llama },
    'ggerganov/whisper.cpp': { 'ggml-base.en.bin': generated.whisper, 'ggml-tiny.en.bin': generated.whisper },
    'stabilityai/sd-turbo': Object.fromEntries(filesUnder(generated.sd).map((f) => [f, join(generated.sd, f)])),
  };
}

let hub;
let endpoint;
const fetched = []; // "repo/file" of each file sent
const children = [];

before(async () => {
  if (skip) return;
  const repos = repositories();
  hub = createServer((request, response) => {
    const url = new URL(request.url, 'http://hub');
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/main$/.exec(url.pathname);
    const file = /^\/([^/]+\/[^/]+)\/resolve\/main\/(.+)$/.exec(url.pathname);
    if (api && repos[api[1]]) {
      const siblings = [...Object.keys(repos[api[1]]), 'README.md', '.gitattributes'].map((rfilename) => ({ rfilename }));
      response.writeHead(200, { 'Content-Type': 'application/json' });
      return response.end(JSON.stringify({ siblings, cardData: { license: 'apache-2.0' } }));
    }
    const local = file && repos[file[1]]?.[decodeURIComponent(file[2])];
    if (local) {
      fetched.push(`${file[1]}/${decodeURIComponent(file[2])}`);
      const bytes = readFileSync(local);
      response.writeHead(200, { 'Content-Length': bytes.length, 'Content-Type': 'application/octet-stream' });
      return response.end(bytes);
    }
    response.writeHead(404, { 'Content-Type': 'application/json' }).end('{"error":"Entry not found"}');
  });
  await new Promise((resolve) => hub.listen(0, '127.0.0.1', resolve));
  endpoint = `http://127.0.0.1:${hub.address().port}`;
});
after(() => {
  for (const child of children) child.kill('SIGKILL');
  hub?.close();
});

const literalEnv = (container, relocate) => Object.fromEntries((container.env ?? [])
  .filter((e) => typeof e.value === 'string') // secretKeyRef: the optional hf-token Secret does not exist here
  .map((e) => [e.name, relocate(e.value)]));

// mmserve with ARGS to its end: its exit status and output.
function run(args, env) {
  const { child, log } = spawnWithLog(bin, args, { env });
  children.push(child);
  return new Promise((resolve) => child.on('exit', (status) => resolve({ status, output: log() })));
}

test('cpu overlay: the model-fetch Job fills the volumes, and every model Deployment loads its model from them', { skip, timeout: 280_000 }, async () => {
  const objects = render(join(k8sDir, 'overlays/cpu'));
  const configMaps = new Map(objects.filter((o) => o.kind === 'ConfigMap').map((o) => [o.metadata.name, o]));
  const root = mkdtempSync(join(tmpdir(), 'mmserve-model-fetch-'));
  const claimDirs = new Map(objects.filter((o) => o.kind === 'PersistentVolumeClaim')
    .map((o) => [o.metadata.name, join(root, 'volumes', o.metadata.name)]));
  for (const dir of claimDirs.values()) mkdirSync(dir, { recursive: true });

  // The Job: its init containers one after another, then its container.
  const job = objects.find((o) => o.kind === 'Job' && o.metadata.name === 'model-fetch');
  assert.ok(job, 'the cpu overlay has the model-fetch Job');
  const jobSpec = job.spec.template.spec;
  for (const container of [...(jobSpec.initContainers ?? []), ...jobSpec.containers]) {
    const { relocate } = mountVolumes(jobSpec, container, configMaps, join(root, container.name), claimDirs);
    const [program, ...args] = container.command;
    assert.equal(program, 'mmserve');
    const env = { PATH: process.env.PATH, HOME: root, HF_ENDPOINT: endpoint, ...literalEnv(container, relocate) };
    // Not spawnSync: the hub answers from this process's event loop.
    const result = await run([...args, ...(container.args ?? [])].map(relocate), env);
    assert.equal(result.status, 0, `${container.name}: mmserve ${args.join(' ')}:\n${result.output}`);
  }
  // What a pull chooses from a repository: Q8_0 weights with the f16 projector; the diffusers pipeline whole.
  assert.ok(fetched.includes('ggml-org/SmolVLM-256M-Instruct-GGUF/SmolVLM-256M-Instruct-Q8_0.gguf'), fetched.join('\n'));
  assert.ok(fetched.includes('ggml-org/Qwen2-VL-2B-Instruct-GGUF/mmproj-Qwen2-VL-2B-Instruct-f16.gguf'), fetched.join('\n'));
  assert.ok(!fetched.some((f) => f.endsWith('README.md') || f.endsWith('-f16.gguf') && !f.includes('mmproj')), fetched.join('\n'));
  assert.ok(fetched.includes('stabilityai/sd-turbo/model_index.json'));

  // Every model Deployment, as its manifest runs it, on those volumes.
  const deployments = objects.filter((o) => o.kind === 'Deployment' && o.spec.template.spec.containers[0].command[1] !== 'gateway');
  assert.deepEqual(deployments.map((d) => d.metadata.name).sort(), ['llava-service', 'qwen-vl', 'stable-diffusion', 'whisper-service']);
  for (const deployment of deployments) {
    const spec = deployment.spec.template.spec;
    const [container] = spec.containers;
    const { relocate } = mountVolumes(spec, container, configMaps, join(root, deployment.metadata.name), claimDirs);
    const port = await freePort();
    const [, role, ...rest] = container.command;
    // Its own port on loopback here; everything else as the manifest says.
    const args = [...rest, ...(container.args ?? [])].map(relocate).filter((a) => !a.startsWith('--port='))
      .concat([`--port=${port}`, '--host=127.0.0.1']);
    const env = { PATH: process.env.PATH, HOME: root, ...literalEnv(container, relocate) };
    const { child, log } = spawnWithLog(bin, [role, ...args], { env });
    children.push(child);
    // Up to 120 s for the model to load (20 ms a try).
    await waitReadyOrExit(`http://127.0.0.1:${port}`, { child, log: () => `${deployment.metadata.name}: ${log()}` }, 6000);
    const models = await (await fetch(`http://127.0.0.1:${port}/v1/models`)).json();
    const own = models.data.find((m) => m.status === 'loaded');
    assert.ok(own, `${deployment.metadata.name}: a loaded model in ${JSON.stringify(models)}`);
    assert.ok(own.id && !own.id.startsWith('/'), `${deployment.metadata.name}: ${own.id}`);
    const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    assert.equal(await exited, 0, `${deployment.metadata.name} stops cleanly:\n${log()}`);
  }
  // The one-time conversions the manifests ask for (LOAD_8BIT, --dtype, COMPUTE_TYPE) went to the shared volume's cache.
  const cache = join(claimDirs.get('multimodal-models'), 'cache');
  assert.ok(existsSync(cache) && filesUnder(cache).length >= 2, `conversions in ${relative(root, cache)}`);
});
