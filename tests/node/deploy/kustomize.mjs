// A renderer for the subset of kustomize that deploy/k8s uses: `resources`
// (files and kustomization folders), `images` (newName/newTag) and `patches`
// with an inline JSON 6902 patch and a target (kind, name as an anchored
// regular expression). Anything else in a kustomization is refused, so a
// manifest that needs more fails here instead of rendering wrongly.
// manifests.test.mjs compares its output with `kubectl kustomize` where
// kubectl is installed.
import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseAllDocuments, parse } from 'yaml';

export const repoRoot = resolve(import.meta.dirname, '../../..');
export const k8sDir = join(repoRoot, 'deploy/k8s');

// Every document of a YAML file, as plain objects; a YAML error throws.
export function loadYamlDocuments(file) {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'), { uniqueKeys: true });
  const objects = [];
  for (const doc of docs) {
    if (doc.errors.length) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const value = doc.toJS();
    if (value !== null && value !== undefined) objects.push(value);
  }
  return objects;
}

const SUPPORTED = new Set(['apiVersion', 'kind', 'resources', 'images', 'patches']);

function pointerTokens(path) {
  if (!path.startsWith('/')) throw new Error(`JSON pointer must start with /: ${path}`);
  return path.slice(1).split('/').map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function applyOp(object, op, where) {
  const tokens = pointerTokens(op.path);
  const last = tokens.pop();
  let parent = object;
  for (const t of tokens) {
    parent = Array.isArray(parent) ? parent[Number(t)] : parent?.[t];
    if (parent === undefined) throw new Error(`${where}: ${op.op} ${op.path}: no such path`);
  }
  const isArray = Array.isArray(parent);
  const index = last === '-' ? parent.length : Number(last);
  switch (op.op) {
    case 'add':
      if (isArray) parent.splice(index, 0, structuredClone(op.value));
      else parent[last] = structuredClone(op.value);
      break;
    case 'replace':
    case 'remove':
      if (isArray ? !(index >= 0 && index < parent.length) : !(last in parent))
        throw new Error(`${where}: ${op.op} ${op.path}: no such path`);
      if (op.op === 'remove') {
        if (isArray) parent.splice(index, 1);
        else delete parent[last];
      } else if (isArray) parent[index] = structuredClone(op.value);
      else parent[last] = structuredClone(op.value);
      break;
    default:
      throw new Error(`${where}: JSON patch op '${op.op}' is not in this renderer's subset`);
  }
}

function matches(target, object) {
  for (const key of Object.keys(target)) {
    if (key !== 'kind' && key !== 'name') throw new Error(`patch target key '${key}' is not in this renderer's subset`);
  }
  if (target.kind && !new RegExp(`^(?:${target.kind})$`).test(object.kind)) return false;
  if (target.name && !new RegExp(`^(?:${target.name})$`).test(object.metadata?.name)) return false;
  return true;
}

function podSpecs(object) {
  const spec = object.spec?.template?.spec ?? object.spec?.jobTemplate?.spec?.template?.spec;
  return spec ? [spec] : [];
}

// Renders the kustomization in `dir` into a list of objects.
export function render(dir) {
  const kustomization = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8'));
  for (const key of Object.keys(kustomization)) {
    if (!SUPPORTED.has(key)) throw new Error(`${dir}: kustomization field '${key}' is not in this renderer's subset`);
  }
  const objects = [];
  for (const resource of kustomization.resources ?? []) {
    const path = join(dir, resource);
    objects.push(...(statSync(path).isDirectory() ? render(path) : loadYamlDocuments(path)));
  }
  for (const [i, patch] of (kustomization.patches ?? []).entries()) {
    if (typeof patch.patch !== 'string' || !patch.target) throw new Error(`${dir}: patch ${i}: only inline JSON 6902 patches with a target`);
    const ops = parse(patch.patch);
    if (!Array.isArray(ops)) throw new Error(`${dir}: patch ${i}: strategic merge patches are not in this renderer's subset`);
    const hits = objects.filter((o) => matches(patch.target, o));
    if (!hits.length) throw new Error(`${dir}: patch ${i}: target ${JSON.stringify(patch.target)} matches nothing`);
    for (const object of hits) for (const op of ops) applyOp(object, op, `${dir}: patch ${i} on ${object.kind}/${object.metadata.name}`);
  }
  for (const image of kustomization.images ?? []) {
    for (const object of objects) {
      for (const spec of podSpecs(object)) {
        for (const container of [...(spec.containers ?? []), ...(spec.initContainers ?? [])]) {
          const [name, tag] = container.image.split(/:(?=[^/:]*$)/);
          if (name !== image.name) continue;
          container.image = `${image.newName ?? name}${image.newTag ?? tag ? `:${image.newTag ?? tag}` : ''}`;
        }
      }
    }
  }
  return objects;
}

export const overlays = ['base', 'overlays/cpu', 'overlays/gpu'];
export const key = (o) => `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name}`;
