// Every container of every overlay, run as its manifest runs it: the
// command, args and env the manifest sets, the ConfigMaps it mounts written
// where they are mounted (under a temporary root), `--print-config` added.
// mmserve must exit 0 and its effective configuration must show each value
// the manifest sets; ports, probes and the termination grace period must
// agree with that configuration.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { k8sDir, overlays, render } from './kustomize.mjs';
import { mountVolumes } from './pod.mjs';

const bin = process.env.MMSERVE_BIN;
const skip = !bin && 'MMSERVE_BIN is not set';

// Configuration key each of the seed's variables and mmserve's flags sets.
const ENV = {
  LOAD_8BIT: 'vision.load_8bit', MODEL_SIZE: 'speech.model_size', DEVICE: 'speech.device', COMPUTE_TYPE: 'speech.compute_type',
  ENABLE_ATTENTION_SLICING: 'image.attention_slicing', ENABLE_VAE_TILING: 'image.vae_tiling', MMSERVE_MODELS: 'models_dir',
  MODEL_PATH: (role) => `${role}.model_path`,
};
const FLAGS = {
  '--port': 'server.port', '--host': 'server.host', '--log-level': 'logging.level', '--log-format': 'logging.format',
  '--model': (role) => `${role}.model_path`, '--dtype': 'vision.dtype', '--max-model-len': 'vision.max_model_len',
  '--served-model-name': 'vision.model_name', '--mmproj': 'vision.mmproj_path', '--outputs-dir': 'image.outputs_dir',
  '--model-size': 'speech.model_size', '--device': 'speech.device', '--compute-type': 'speech.compute_type',
  '--trust-remote-code': null, // accepted (vLLM's flag); sets nothing
};
const UNITS = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, s: 1, m: 60, h: 3600 };

const at = (config, path) => path.split('.').reduce((o, k) => o?.[k], config);
// A value as the manifest writes it equals the effective one (sizes and
// durations normalised as mmserve prints them).
function same(written, effective) {
  if (String(written) === String(effective)) return true;
  const m = /^(\d+)(Ki|Mi|Gi|Ti|s|m|h)$/.exec(String(written));
  return m !== null && Number(m[1]) * UNITS[m[2]] === effective;
}
// Every scalar of `file` (a config fragment) shows in `config` under `prefix`.
function expectSubset(file, config, prefix, where, relocate) {
  for (const [k, v] of Object.entries(file)) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) expectSubset(v, config, path, where, relocate);
    else assert.ok(same(Array.isArray(v) ? v.join(',') : typeof v === 'string' ? relocate(v) : v, Array.isArray(at(config, path)) ? at(config, path).join(',') : at(config, path)),
      `${where}: ${path} is ${JSON.stringify(at(config, path))}, the manifest says ${JSON.stringify(v)}`);
  }
}

function runContainer(overlay, deployment, container, configMaps) {
  const where = `${overlay}: ${deployment.metadata.name}/${container.name}`;
  const root = mkdtempSync(join(tmpdir(), 'mmserve-k8s-'));
  const spec = deployment.spec.template.spec;
  // ConfigMap volumes, written where they are mounted (paths inside them too).
  const { relocate, files } = mountVolumes(spec, container, configMaps, root);
  const [program, role, ...rest] = container.command;
  assert.equal(program, 'mmserve', where);
  const args = [...rest, ...(container.args ?? [])];
  const env = { PATH: process.env.PATH, HOME: root };
  for (const e of container.env ?? []) {
    assert.ok(e.name in ENV, `${where}: env ${e.name} is not one mmserve reads (docs/configuration.md)`);
    assert.equal(typeof e.value, 'string', `${where}: env ${e.name} has a literal value`);
    env[e.name] = e.value;
  }
  const result = spawnSync(bin, [role, ...args.map(relocate), '--print-config'], { env, encoding: 'utf8' });
  assert.equal(result.status, 0, `${where}: mmserve ${role} ${args.join(' ')} exited ${result.status}:\n${result.stderr}`);
  const config = parse(result.stdout);
  for (const e of container.env ?? []) {
    const path = typeof ENV[e.name] === 'function' ? ENV[e.name](role) : ENV[e.name];
    assert.ok(same(e.value, at(config, path)), `${where}: ${e.name}=${e.value} but ${path} is ${at(config, path)}`);
  }
  for (const arg of args) {
    const [flag, ...valueParts] = arg.split('=');
    const value = valueParts.join('=');
    if (flag === '--config' || flag === '-c') {
      const file = files.get(value);
      assert.ok(file, `${where}: --config ${value} is a mounted ConfigMap key`);
      expectSubset(file, config, '', `${where} (${value})`, relocate);
      if (file.media_config_file) {
        const media = files.get(file.media_config_file);
        assert.ok(media, `${where}: media_config_file ${file.media_config_file} is mounted`);
        expectSubset(media, config, 'media', `${where} (${file.media_config_file})`, relocate);
      }
      continue;
    }
    assert.ok(flag in FLAGS, `${where}: flag ${flag} is not one the test knows`);
    const path = typeof FLAGS[flag] === 'function' ? FLAGS[flag](role) : FLAGS[flag];
    if (path) assert.ok(same(value, at(config, path)), `${where}: ${arg} but ${path} is ${at(config, path)}`);
  }
  // The pod agrees with the configuration it runs.
  const http = container.ports.find((p) => p.name === 'http');
  assert.equal(http.containerPort, config.server.port, `${where}: containerPort equals server.port`);
  assert.equal(config.server.host, '0.0.0.0', `${where}: listens on the pod's address`);
  for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    assert.equal(container[probe]?.httpGet?.port, 'http', `${where}: ${probe} on the http port`);
  }
  assert.equal(container.livenessProbe.httpGet.path, '/healthz', where);
  assert.equal(container.readinessProbe.httpGet.path, '/readyz', where);
  assert.equal(container.startupProbe.httpGet.path, '/readyz', where);
  if (role !== 'gateway') {
    const startup = container.startupProbe.periodSeconds * container.startupProbe.failureThreshold;
    assert.ok(startup >= 600, `${where}: the startup probe allows ${startup} s for model loading`);
  }
  const preStop = Number(container.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
  assert.ok(spec.terminationGracePeriodSeconds >= config.server.shutdown_grace_period + preStop,
    `${where}: terminationGracePeriodSeconds ${spec.terminationGracePeriodSeconds} < shutdown_grace_period ${config.server.shutdown_grace_period} + preStop ${preStop}`);
  return config;
}

test('mmserve refuses what it does not understand (control)', { skip }, () => {
  const result = spawnSync(bin, ['vision', '--no-such-flag', '--print-config'], { encoding: 'utf8' });
  assert.notEqual(result.status, 0);
  const env = spawnSync(bin, ['speech', '--print-config'], { env: { PATH: process.env.PATH, DEVICE: 'gpu' }, encoding: 'utf8' });
  assert.notEqual(env.status, 0, 'DEVICE=gpu is refused');
});

for (const overlay of overlays) {
  test(`${overlay}: every container's env and args are understood by mmserve`, { skip }, () => {
    const objects = render(join(k8sDir, overlay));
    const configMaps = new Map(objects.filter((o) => o.kind === 'ConfigMap').map((o) => [o.metadata.name, o]));
    const roles = new Set();
    for (const d of objects.filter((o) => o.kind === 'Deployment')) {
      for (const c of d.spec.template.spec.containers) {
        runContainer(overlay, d, c, configMaps);
        roles.add(c.command[1]);
      }
    }
    assert.deepEqual([...roles].sort(), ['gateway', 'image', 'speech', 'vision']);
  });
}

test('the gateway answers its probes as configured', { skip }, async () => {
  // The gateway's probes are the only ones a test can see succeed without a
  // model: start it with its manifest's config and ask.
  const objects = render(join(k8sDir, 'base'));
  const gateway = objects.find((o) => o.kind === 'Deployment' && o.metadata.name === 'multimodal-gateway');
  const config = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'mmserve-config').data['gateway.yaml'];
  const dir = mkdtempSync(join(tmpdir(), 'mmserve-k8s-gw-'));
  // Upstreams on a closed loopback port: no lookup of the cluster's names here.
  writeFileSync(join(dir, 'gateway.yaml'), config.replace(/http:\/\/[a-z-]+-pods:\d+/g, 'http://127.0.0.1:9'));
  const { freePort } = await import('../support.mjs');
  const port = await freePort();
  const { spawn } = await import('node:child_process');
  const child = spawn(bin, ['gateway', '--config', join(dir, 'gateway.yaml'), '--host', '127.0.0.1', '--port', String(port)], { stdio: 'ignore' });
  try {
    const c = gateway.spec.template.spec.containers[0];
    for (const probe of [c.startupProbe, c.readinessProbe, c.livenessProbe]) {
      let status = 0;
      for (let i = 0; i < 200 && status !== 200; i++) {
        status = await fetch(`http://127.0.0.1:${port}${probe.httpGet.path}`).then((r) => r.status, () => 0);
        if (status !== 200) await new Promise((r) => setTimeout(r, 25));
      }
      assert.equal(status, 200, `${probe.httpGet.path} answers 200`);
    }
  } finally {
    child.kill('SIGTERM');
  }
});
