import { LATENCY_BUCKETS_US, type Histogram } from '../batching/stats.ts';
import type { ModelRepository } from '../repository/repository.ts';
import { VERSION_STATES } from '../repository/version.ts';

/** Prometheus text exposition, named in the style of Triton's nv_inference_* and OVMS's ovms_* metrics. */
export function renderMetrics(repo: ModelRepository): string {
  const out: string[] = [];
  const esc = (v: string) => v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
  const families = new Map<string, { help: string; type: string; lines: string[] }>();
  const fam = (name: string, type: string, help: string) => {
    let f = families.get(name);
    if (!f) families.set(name, (f = { help, type, lines: [] }));
    return f;
  };
  const labels = (l: Record<string, string | number>) => '{' + Object.entries(l).map(([k, v]) => `${k}="${esc(String(v))}"`).join(',') + '}';
  const histogram = (name: string, help: string, l: Record<string, string | number>, h: Histogram) => {
    const f = fam(name, 'histogram', help);
    let cum = 0;
    LATENCY_BUCKETS_US.forEach((b, i) => {
      cum += h.counts[i];
      f.lines.push(`${name}_bucket${labels({ ...l, le: b / 1e6 })} ${cum}`);
    });
    f.lines.push(`${name}_bucket${labels({ ...l, le: '+Inf' })} ${h.count}`);
    f.lines.push(`${name}_sum${labels(l)} ${h.sum / 1e6}`);
    f.lines.push(`${name}_count${labels(l)} ${h.count}`);
  };
  for (const m of repo.models()) {
    for (const v of m.versions.values()) {
      const l = { model: m.name, version: v.version };
      for (const st of VERSION_STATES) fam('gateway_model_version_state', 'gauge', 'Model version state (1 for the current one).').lines.push(`gateway_model_version_state${labels({ ...l, state: st })} ${v.state === st ? 1 : 0}`);
      fam('gateway_inference_request_success_total', 'counter', 'Requests answered successfully.').lines.push(`gateway_inference_request_success_total${labels(l)} ${v.stats.requests}`);
      for (const [code, n] of v.stats.errors) fam('gateway_inference_request_failure_total', 'counter', 'Requests that failed, by error code.').lines.push(`gateway_inference_request_failure_total${labels({ ...l, code })} ${n}`);
      fam('gateway_inference_exec_count_total', 'counter', 'Engine calls (batches).').lines.push(`gateway_inference_exec_count_total${labels(l)} ${v.stats.batches}`);
      for (const [size, n] of v.stats.batchSizes) fam('gateway_inference_batch_size_total', 'counter', 'Engine calls by batch size.').lines.push(`gateway_inference_batch_size_total${labels({ ...l, batch_size: size })} ${n}`);
      fam('gateway_inference_pending_requests', 'gauge', 'Requests admitted and not yet answered.').lines.push(`gateway_inference_pending_requests${labels(l)} ${v.batcher?.pending ?? 0}`);
      histogram('gateway_inference_queue_duration_seconds', 'Time from batching queue to engine call.', l, v.stats.queueTime);
      histogram('gateway_inference_compute_duration_seconds', 'Engine call time per batch.', l, v.stats.inferenceTime);
      histogram('gateway_inference_request_duration_seconds', 'Whole request time (preprocessing, queue, engine, postprocessing).', l, v.stats.requestTime);
    }
  }
  for (const [name, f] of families) {
    out.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} ${f.type}`, ...f.lines);
  }
  return out.join('\n') + '\n';
}
