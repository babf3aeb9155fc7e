// Unknown fields in a Kubernetes object, by the schemas kubernetes-models
// ships. Its validators (JSON schemas compiled by ajv) let any property a
// schema does not list through, so a typo like `contanerPort` or
// `resources.limit` validates. The packages ship no JSON schema to read
// beside the compiled code, so this runs a model's own validator over a
// Proxy of the object and records which properties it reads: a compiled
// schema reads every property it defines (present or not), and every key of
// a map (`additionalProperties`: labels, annotations, resources.limits).
// An own property the validator never read is one its schema does not
// define. An object none of whose properties were read has a schema with no
// properties (x-kubernetes-preserve-unknown-fields, RawExtension): anything
// goes there, and the walk does not go into it. (A schema that lists
// properties and also preserves unknown ones would have its extras reported:
// no object in deploy/k8s has such extras.)

// The definition that reads an object, from the validator's module on the
// stack (…/_schemas/IoK8sApiCoreV1Container.js → Container).
function readingSchema() {
  const file = /\/_schemas\/(\w+)\.js/.exec(new Error().stack)?.[1] ?? 'an unnamed schema';
  return file.replace(/^.*?V\d+(?:alpha\d+|beta\d+)?(?=[A-Z])/, '');
}

function spy(value, reads) {
  if (value === null || typeof value !== 'object') return value;
  return new Proxy(value, {
    get(target, property, receiver) {
      if (!Array.isArray(target) && typeof property === 'string') {
        let seen = reads.get(target);
        if (!seen) reads.set(target, (seen = { keys: new Set(), schema: readingSchema() }));
        seen.keys.add(property);
      }
      return spy(Reflect.get(target, property, receiver), reads);
    },
  });
}

const segment = (key) => (/^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`);

// The paths (`spec.template.spec.containers[0].contanerPort`) of `object`'s
// properties that the schema of `Model` (a kubernetes-models class) does not
// define, each with the definition that lacks it. Type errors are
// Model#validate's to report: they are ignored here.
export function unknownFields(Model, object) {
  const reads = new Map();
  try {
    Model.prototype.validate.call(spy(object, reads));
  } catch {
    // invalid: the schema check reports it
  }
  const found = [];
  const walk = (value, path) => {
    if (Array.isArray(value)) return value.forEach((item, i) => walk(item, `${path}[${i}]`));
    if (value === null || typeof value !== 'object') return;
    const seen = reads.get(value);
    if (!seen) return; // free-form, or never reached
    for (const [k, v] of Object.entries(value)) {
      const at = path ? `${path}${segment(k)}` : k;
      if (seen.keys.has(k)) walk(v, at);
      else found.push({ path: at, schema: seen.schema });
    }
  };
  walk(object, '');
  return found;
}
