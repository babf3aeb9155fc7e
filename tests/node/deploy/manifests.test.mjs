// deploy/k8s: every manifest parses and validates against the Kubernetes API
// schemas (kubernetes-models, and its Prometheus Operator package for the
// monitoring.coreos.com objects) with no field they do not define, every
// overlay renders (kustomize.mjs, checked against `kubectl kustomize` where
// kubectl is installed), the rendered objects refer to each other correctly,
// and the base keeps every fact of the seed's manifests.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { k8sDir, key, loadYamlDocuments, overlays, render, repoRoot } from './kustomize.mjs';
import { unknownFields } from './unknown_fields.mjs';

// The schema class of an object: kubernetes-models/<group>/<version>/<Kind>.
async function modelClass(object) {
  const [group, version] = object.apiVersion.includes('/') ? object.apiVersion.split('/') : ['', object.apiVersion];
  const module = group === 'monitoring.coreos.com'
    ? `@kubernetes-models/prometheus-operator/${group}/${version}/${object.kind}`
    : `kubernetes-models/${group ? `${group}/` : ''}${version}/${object.kind}`;
  return (await import(module))[object.kind];
}

async function validate(object, where) {
  assert.ok(object.apiVersion && object.kind && object.metadata?.name, `${where}: apiVersion, kind and metadata.name`);
  let Model;
  try {
    Model = await modelClass(object);
  } catch (error) {
    assert.fail(`${where}: no schema for ${object.apiVersion} ${object.kind}: ${error.message}`);
  }
  assert.doesNotThrow(() => new Model(object).validate(), (e) => `${where}: ${key(object)}: ${e.message}`);
  // validate() lets unknown properties (typos) through: see unknown_fields.mjs.
  const unknown = unknownFields(Model, object)
    .map((u) => `${where}: ${object.kind} ${object.metadata.name}: ${u.path} is not a field of ${u.schema}`);
  assert.deepEqual(unknown, [], unknown.join('\n'));
}

function manifestFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return manifestFiles(path);
    return entry.name.endsWith('.yaml') && entry.name !== 'kustomization.yaml' && entry.name !== 'prometheus-adapter-values.yaml' ? [path] : [];
  });
}

test('the schema check refuses a broken manifest (control)', async () => {
  const broken = { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'x' },
    spec: { selector: { matchLabels: { app: 'x' } }, template: { spec: { containers: [{ name: 'x', ports: [{ containerPort: '80' }] }] } } } };
  await assert.rejects(validate(broken, 'control'), /containerPort must be integer/);
});

// A real manifest with typos that kubernetes-models' validate() accepts.
const whisperFile = 'deploy/k8s/base/whisper.yaml';
const whisper = () => structuredClone(loadYamlDocuments(join(repoRoot, whisperFile)).find((o) => o.kind === 'Deployment'));

test('the schema check refuses unknown fields (control)', async () => {
  const typo = whisper();
  const [container] = typo.spec.template.spec.containers;
  container.contanerPort = container.ports[0].containerPort;
  container.resources.limit = container.resources.limits;
  const { Deployment } = await import('kubernetes-models/apps/v1/Deployment');
  assert.doesNotThrow(() => new Deployment(typo).validate(), 'the gap: kubernetes-models alone accepts both');
  await assert.rejects(validate(typo, whisperFile), (e) => {
    assert.match(e.message, /^deploy\/k8s\/base\/whisper\.yaml: Deployment whisper-service: spec\.template\.spec\.containers\[0\]\.contanerPort is not a field of Container$/m);
    assert.match(e.message, /: spec\.template\.spec\.containers\[0\]\.resources\.limit is not a field of ResourceRequirements$/m);
    return true;
  });
  // The Prometheus Operator's schemas too.
  const rule = loadYamlDocuments(join(k8sDir, 'monitoring/prometheusrule.yaml'))[0];
  rule.spec.groups[0].rules[0].exp = rule.spec.groups[0].rules[0].expr;
  await assert.rejects(validate(rule, 'control'), /spec\.groups\[0\]\.rules\[0\]\.exp is not a field of Rule$/m);
});

test('the schema check accepts new keys in maps (control)', async () => {
  const ok = whisper();
  ok.metadata.labels['app.kubernetes.io/version'] = '0.1.0';
  ok.spec.template.metadata.annotations['example.com/owner'] = 'ml-platform';
  ok.spec.template.spec.containers[0].resources.limits.cpu = '4';
  await validate(ok, whisperFile);
});

test('every manifest file validates against the Kubernetes API schemas', async () => {
  const files = manifestFiles(k8sDir);
  assert.ok(files.length >= 10, files.join(' '));
  for (const file of files) {
    const objects = loadYamlDocuments(file);
    assert.ok(objects.length > 0, file);
    for (const object of objects) await validate(object, relative(repoRoot, file));
  }
});

for (const overlay of overlays) {
  test(`${overlay} renders, validates, and its references resolve`, async () => {
    const objects = render(join(k8sDir, overlay));
    const byKey = new Map();
    for (const object of objects) {
      assert.ok(!byKey.has(key(object)), `${overlay}: ${key(object)} twice`);
      byKey.set(key(object), object);
      await validate(object, `deploy/k8s/${overlay}`);
    }
    const get = (kind, name) => byKey.get(`${kind}//${name}`);
    const deployments = objects.filter((o) => o.kind === 'Deployment');
    const selects = (selector, labels) => Object.entries(selector).every(([k, v]) => labels?.[k] === v);
    for (const d of deployments) {
      const where = `${overlay}: Deployment ${d.metadata.name}`;
      const pod = d.spec.template;
      assert.ok(selects(d.spec.selector.matchLabels, pod.metadata.labels), `${where}: selector matches the template`);
      const volumes = new Map(pod.spec.volumes.map((v) => [v.name, v]));
      for (const c of pod.spec.containers) {
        for (const m of c.volumeMounts ?? []) assert.ok(volumes.has(m.name), `${where}: mount ${m.name} has a volume`);
        assert.equal(c.image.split(/[:/]/).includes('mmserve'), true, `${where}: runs the mmserve image`);
      }
      for (const v of volumes.values()) {
        if (v.persistentVolumeClaim) assert.ok(get('PersistentVolumeClaim', v.persistentVolumeClaim.claimName), `${where}: PVC ${v.persistentVolumeClaim.claimName}`);
        if (v.configMap) assert.ok(get('ConfigMap', v.configMap.name), `${where}: ConfigMap ${v.configMap.name}`);
      }
      const pdb = objects.find((o) => o.kind === 'PodDisruptionBudget' && selects(o.spec.selector.matchLabels, pod.metadata.labels));
      assert.ok(pdb, `${where}: has a PodDisruptionBudget`);
    }
    for (const s of objects.filter((o) => o.kind === 'Service')) {
      const target = deployments.find((d) => selects(s.spec.selector, d.spec.template.metadata.labels));
      assert.ok(target, `${overlay}: Service ${s.metadata.name} selects a Deployment`);
      const ports = target.spec.template.spec.containers.flatMap((c) => c.ports ?? []);
      for (const p of s.spec.ports) {
        assert.ok(ports.some((cp) => cp.name === p.targetPort || cp.containerPort === p.targetPort), `${overlay}: Service ${s.metadata.name} targetPort ${p.targetPort}`);
      }
    }
    for (const ingress of objects.filter((o) => o.kind === 'Ingress')) {
      for (const rule of ingress.spec.rules) {
        for (const path of rule.http.paths) {
          const service = get('Service', path.backend.service.name);
          assert.ok(service, `${overlay}: Ingress path ${path.path} -> Service ${path.backend.service.name}`);
          assert.ok(service.spec.ports.some((p) => p.port === path.backend.service.port.number), `${overlay}: Ingress path ${path.path} port`);
        }
      }
    }
    for (const hpa of objects.filter((o) => o.kind === 'HorizontalPodAutoscaler')) {
      assert.ok(get(hpa.spec.scaleTargetRef.kind, hpa.spec.scaleTargetRef.name), `${overlay}: HPA ${hpa.metadata.name} target`);
    }
    for (const monitor of objects.filter((o) => o.kind === 'PodMonitor')) {
      const scraped = deployments.filter((d) => selects(monitor.spec.selector.matchLabels, d.spec.template.metadata.labels));
      assert.equal(scraped.length, deployments.length, `${overlay}: the PodMonitor scrapes every Deployment`);
      for (const d of scraped) {
        for (const endpoint of monitor.spec.podMetricsEndpoints) {
          assert.ok(d.spec.template.spec.containers.some((c) => c.ports.some((p) => p.name === endpoint.port)), `${d.metadata.name}: port ${endpoint.port}`);
        }
      }
    }
  });
}

const kubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
for (const overlay of [...overlays, 'monitoring']) {
  test(`${overlay}: this renderer equals kubectl kustomize`, { skip: kubectl.status !== 0 && 'kubectl is not installed' }, () => {
    const theirs = parseAllDocuments(execFileSync('kubectl', ['kustomize', join(k8sDir, overlay)], { encoding: 'utf8' })).map((d) => d.toJS());
    const ours = render(join(k8sDir, overlay));
    const sort = (list) => [...list].sort((a, b) => key(a).localeCompare(key(b)));
    assert.deepEqual(sort(ours), sort(theirs));
  });
}

// The seed's YAML blocks (shared/seed), when the checkout has shared/ beside it.
const seedDir = join(repoRoot, '../shared/seed');
const seedFile = existsSync(seedDir) && readdirSync(seedDir).find((f) => f.endsWith('.txt'));
test('the base keeps every fact of the seed', { skip: !seedFile && 'no ../shared/seed' }, () => {
  const text = readFileSync(join(seedDir, seedFile), 'utf8');
  const seed = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => parse(m[1]));
  assert.equal(seed.length, 6);
  const base = render(join(k8sDir, 'base'));
  const find = (kind, name) => base.find((o) => o.kind === kind && o.metadata.name === name);
  for (const s of seed) {
    const ours = find(s.kind, s.metadata.name);
    assert.ok(ours, `${s.kind} ${s.metadata.name}`);
    const where = `${s.kind} ${s.metadata.name}`;
    if (s.kind === 'ConfigMap') assert.deepEqual(ours.data, s.data, where);
    if (s.kind === 'Ingress') {
      assert.deepEqual(ours.metadata.annotations, s.metadata.annotations, where);
      for (const rule of s.spec.rules) {
        const mine = ours.spec.rules.find((r) => r.host === rule.host);
        for (const path of rule.http.paths) assert.deepEqual(mine.http.paths.find((p) => p.path === path.path), path, `${where} ${path.path}`);
      }
    }
    if (s.kind !== 'Deployment') continue;
    assert.equal(ours.spec.replicas, s.spec.replicas, `${where} replicas`);
    assert.deepEqual(ours.spec.selector, s.spec.selector, `${where} selector`);
    const [sc] = s.spec.template.spec.containers;
    const c = ours.spec.template.spec.containers.find((x) => x.name === sc.name);
    assert.ok(c, `${where}: container ${sc.name}`);
    for (const e of sc.env ?? []) assert.ok(c.env.some((x) => x.name === e.name && x.value === e.value), `${where}: env ${e.name}`);
    assert.deepEqual(c.args, sc.args, `${where} args`);
    assert.deepEqual(c.ports.map((p) => p.containerPort), sc.ports.map((p) => p.containerPort), `${where} ports`);
    assert.deepEqual(c.resources.limits, sc.resources.limits, `${where} limits`);
    if (sc.resources.requests) assert.deepEqual(c.resources.requests, sc.resources.requests, `${where} requests`);
    // Every seed mount but whisper's /root/.cache/whisper (not readable by the
    // non-root user: the model cache is /models/whisper, see whisper.yaml).
    for (const m of sc.volumeMounts) {
      if (m.mountPath === '/root/.cache/whisper') continue;
      assert.ok(c.volumeMounts.some((x) => x.name === m.name && x.mountPath === m.mountPath), `${where}: mount ${m.mountPath}`);
    }
    for (const v of s.spec.template.spec.volumes ?? []) {
      assert.deepEqual(ours.spec.template.spec.volumes.find((x) => x.name === v.name), v, `${where}: volume ${v.name}`);
    }
    assert.deepEqual(ours.spec.template.spec.nodeSelector, s.spec.template.spec.nodeSelector, `${where} nodeSelector`);
  }
});
