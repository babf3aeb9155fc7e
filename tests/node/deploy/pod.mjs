// A container of a rendered manifest, set up to run here as its pod would:
// under a temporary root, each ConfigMap it mounts is written where it is
// mounted; given `claimDirs` (a folder per claim name, so that several pods
// share it), each PersistentVolumeClaim it mounts is that folder and each
// emptyDir a new folder under the root.
// `relocate` maps a path in the pod to its place here.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parse } from 'yaml';

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export function mountVolumes(spec, container, configMaps, root, claimDirs = null) {
  const places = []; // [mountPath, folder here]
  const configMounts = [];
  for (const mount of container.volumeMounts ?? []) {
    const volume = spec.volumes.find((v) => v.name === mount.name);
    if (volume?.configMap) {
      places.push([mount.mountPath, `${root}${mount.mountPath}`]);
      configMounts.push([mount, configMaps.get(volume.configMap.name)]);
    } else if (volume?.persistentVolumeClaim && claimDirs) {
      const dir = claimDirs.get(volume.persistentVolumeClaim.claimName);
      if (!dir) throw new Error(`${container.name}: no folder for claim ${volume.persistentVolumeClaim.claimName}`);
      places.push([mount.mountPath, dir]);
    } else if (volume?.emptyDir && claimDirs) {
      mkdirSync(`${root}${mount.mountPath}`, { recursive: true });
      places.push([mount.mountPath, `${root}${mount.mountPath}`]);
    }
  }
  // One pass (a relocated path is not relocated again), longest mount first;
  // a mount path counts only as a whole path part.
  places.sort((a, b) => b[0].length - a[0].length);
  const to = new Map(places);
  const pattern = places.length &&
    new RegExp(`(?<![\\w/.-])(${places.map(([from]) => escape(from)).join('|')})(?=/|$|[\\s"',\\]}])`, 'gm');
  const relocate = (text) => (pattern ? text.replace(pattern, (from) => to.get(from)) : text);
  const files = new Map(); // path in the pod -> parsed YAML
  for (const [mount, configMap] of configMounts) {
    for (const [name, data] of Object.entries(configMap.data)) {
      const path = `${root}${mount.mountPath}/${name}`;
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, relocate(data));
      files.set(`${mount.mountPath}/${name}`, parse(data));
    }
  }
  return { relocate, files };
}
