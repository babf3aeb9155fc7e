// The PromQL that deploy/ ships: the PrometheusRule's groups through
// `promtool check rules`; prometheus-adapter's queries (templates filled in
// as the adapter does) and the Grafana dashboard's queries (Grafana's
// variables filled in) parsed by promtool as recording rules; and every
// metric they name is one docs/api.md lists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { k8sDir, loadYamlDocuments, repoRoot } from './kustomize.mjs';

const promtool = process.env.PROMTOOL || 'promtool';
const work = mkdtempSync(join(tmpdir(), 'mmserve-promql-'));

function checkRules(name, groups) {
  const file = join(work, `${name}.rules.yaml`);
  writeFileSync(file, stringify({ groups }));
  const result = spawnSync(promtool, ['check', 'rules', file], { encoding: 'utf8' });
  assert.equal(result.status, 0, `promtool check rules ${name}:\n${result.stdout}${result.stderr}`);
  return result.stdout;
}
const asRecordingRules = (group, exprs) => [{ name: group, rules: exprs.map((expr, i) => ({ record: `${group.replace(/\W/g, '_')}:q${i}`, expr })) }];

const prometheusRule = loadYamlDocuments(join(k8sDir, 'monitoring/prometheusrule.yaml'))[0];
const adapter = parse(readFileSync(join(k8sDir, 'monitoring/prometheus-adapter-values.yaml'), 'utf8'));
const dashboard = JSON.parse(readFileSync(join(repoRoot, 'deploy/grafana/mmserve-dashboard.json'), 'utf8'));

// prometheus-adapter's template, filled in for one pod query.
const adapterQuery = (rule, template) => template
  .replaceAll('<<.Series>>', rule.seriesQuery.split('{')[0])
  .replaceAll('<<.LabelMatchers>>', 'namespace="default",pod=~"llava-service-1|llava-service-2"')
  .replaceAll('<<.GroupBy>>', 'pod');
const adapterExprs = () => adapter.rules.custom.flatMap((rule) => [rule.seriesQuery, adapterQuery(rule, rule.metricsQuery)]);
const grafanaExpr = (expr) => expr.replaceAll('$__rate_interval', '1m').replaceAll('$namespace', 'default').replaceAll('$app', '.*');
const dashboardExprs = () => dashboard.panels.flatMap((p) => p.targets.map((t) => grafanaExpr(t.expr)));

test('promtool refuses bad PromQL (control)', () => {
  assert.throws(() => checkRules('control', asRecordingRules('control', ['sum(rate(x[5m])'])), /promtool check rules control/);
});

test('the PrometheusRule groups pass promtool check rules', () => {
  const groups = prometheusRule.spec.groups;
  const alerts = groups.flatMap((g) => g.rules).filter((r) => r.alert).map((r) => r.alert);
  for (const alert of ['MmserveQueueHigh', 'MmserveHighErrorRate', 'MmserveModelNotReady']) assert.ok(alerts.includes(alert), alert);
  const out = checkRules('prometheusrule', groups);
  assert.match(out, /SUCCESS: \d+ rules found/);
});

test('the prometheus-adapter queries parse, and serve the HPAs\' metrics', () => {
  checkRules('adapter', asRecordingRules('adapter', adapterExprs()));
  const served = adapter.rules.custom.map((r) => {
    const base = r.seriesQuery.split('{')[0];
    return base.replace(new RegExp(r.name.matches), r.name.as.replace(/\$\{(\d)\}/g, '$$$1'));
  });
  const hpas = loadYamlDocuments(join(k8sDir, 'base/autoscaling.yaml'));
  for (const hpa of hpas) {
    for (const metric of hpa.spec.metrics.filter((m) => m.type === 'Pods')) {
      assert.ok(served.includes(metric.pods.metric.name), `${hpa.metadata.name}: ${metric.pods.metric.name} is served by the adapter (${served})`);
    }
  }
});

test('the Grafana dashboard queries parse and cover the seed\'s metrics', () => {
  checkRules('dashboard', asRecordingRules('dashboard', dashboardExprs()));
  const all = dashboardExprs().join('\n');
  for (const metric of ['image_processing_seconds', 'image_size_bytes', 'model_inference_seconds', 'tokens_generated_total',
    'images_generated_total', 'mmserve_queue_depth', 'http_requests_total']) {
    assert.ok(all.includes(metric), `dashboard shows ${metric}`);
  }
});

test('every metric named is one docs/api.md lists', () => {
  const api = readFileSync(join(repoRoot, 'docs/api.md'), 'utf8');
  const documented = new Set([...api.matchAll(/^\| `([a-z_:]+)` \|/gm)].map((m) => m[1]));
  assert.ok(documented.has('mmserve_queue_depth'), 'docs/api.md metrics table read');
  const exprs = [...prometheusRule.spec.groups.flatMap((g) => g.rules.map((r) => r.expr)), ...adapterExprs(), ...dashboardExprs(),
    ...dashboard.templating.list.filter((v) => v.definition).map((v) => v.definition)];
  const recorded = new Set(prometheusRule.spec.groups.flatMap((g) => g.rules.filter((r) => r.record).map((r) => r.record)));
  let checked = 0;
  for (const expr of exprs) {
    const stripped = expr.replace(/"[^"]*"/g, '').replace(/\{[^}]*\}/g, '').replace(/\[[^\]]*\]/g, '')
      .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '')
      .replace(/label_values\(\s*([a-zA-Z_:][\w:]*)[^)]*\)/g, '$1');
    const names = [...stripped.matchAll(/([a-zA-Z_:][\w:]*)(\s*\()?/g)].filter((m) => !m[2]).map((m) => m[1])
      .filter((n) => !['and', 'or', 'unless', 'bool', 'offset'].includes(n) && !recorded.has(n));
    checked += names.length;
    for (const name of names) {
      const base = name.replace(/_(bucket|sum|count)$/, '');
      assert.ok(documented.has(name) || documented.has(base), `'${name}' (in ${expr}) is not in docs/api.md's metrics table`);
    }
  }
  assert.ok(checked >= 20, `${checked} metric references checked`);
});
