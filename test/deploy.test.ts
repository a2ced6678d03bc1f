import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readFileSync, readdirSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { SETTINGS, loadConfig, type Config } from '../src/config.ts';
import { freePort, have } from '../bench/cluster-lib.ts';
import { hostAllowed } from '../src/server/hosts.ts';
import { createKserveGrpcClient } from '../src/client/kserve-grpc.ts';
import { ROOT, fixture, startGateway, until } from './helpers.ts';

/**
 * No container runtime or cluster here: the deployment files under deploy/ are checked by reading them. Their ports,
 * probe paths, environment (names and values, through the server's own loadConfig), signals and drain timings must
 * agree with the server's settings (src/config.ts) and with each other.
 */
const DEPLOY = path.join(ROOT, 'deploy');
const read = (f: string) => readFileSync(path.join(DEPLOY, f), 'utf8');

type Doc = Record<string, any>;
function docs(dir: string): Doc[] {
  return readdirSync(path.join(DEPLOY, dir))
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) =>
      parseAllDocuments(read(path.join(dir, f))).map((d) => {
        expect(d.errors, `${dir}/${f}`).toEqual([]);
        return d.toJS() as Doc;
      }),
    );
}
const kube = docs('kubernetes');
const kserve = docs('kserve');
const find = (list: Doc[], kind: string, name?: string) => {
  const d = list.find((x) => x.kind === kind && (!name || x.metadata?.name === name));
  expect(d, `${kind} ${name ?? ''}`).toBeDefined();
  return d!;
};

const ENV_NAMES = new Set<string>(SETTINGS.map((s) => s.env));
/** Node's own variables, which Node reads before the server starts (the libuv pool size among them). */
const NODE_ENV_NAMES = new Set(['NODE_ENV', 'UV_THREADPOOL_SIZE']);
const fallback = <K extends keyof Config>(key: K): Config[K] => SETTINGS.find((s) => s.key === key)!.fallback as Config[K];

/** The container's env as the server reads it: plain values as given, values from the pod or a secret as a sane stand-in. */
function containerConfig(container: Doc): { env: Record<string, string>; config: Config } {
  const env: Record<string, string> = {};
  for (const e of container.env ?? []) {
    if (NODE_ENV_NAMES.has(e.name)) continue;
    expect(ENV_NAMES, `${e.name} is a setting of src/config.ts`).toContain(e.name);
    env[e.name] = 'value' in e ? String(e.value) : e.name === 'REDIS_URL' ? 'redis://redis:6379' : 'from-the-pod';
  }
  // flags given after the entry point (they win over the environment), as the image's CMD would be replaced
  const argv: string[] = [...(container.command ?? []), ...(container.args ?? [])];
  const main = argv.indexOf('src/main.ts');
  if (argv.length) expect(main, 'the command runs src/main.ts').toBeGreaterThanOrEqual(0);
  return { env, config: loadConfig(env, argv.slice(main + 1)) }; // throws, naming the setting, on a value the server would refuse
}

const probePort = (container: Doc, port: string | number) =>
  typeof port === 'number' ? port : container.ports.find((p: Doc) => p.name === port)?.containerPort;

describe('deploy/kubernetes', () => {
  const deployment = find(kube, 'Deployment', 'inference-gateway');
  const pod = deployment.spec.template.spec;
  const gateway = pod.containers.find((c: Doc) => c.name === 'gateway');
  const { config } = containerConfig(gateway);

  it('every env name is a setting and every value is one the server accepts', () => {
    expect(config.port).toBe(4000);
    expect(config.host).toBe('0.0.0.0');
    expect(config.redisUrl).toMatch(/^redis:\/\//);
    expect(gateway.env.find((e: Doc) => e.name === 'REPLICA_NAME').valueFrom.fieldRef.fieldPath).toBe('metadata.name');
  });

  it('readiness on /ready and liveness on /health, on the HTTP port the server listens on', () => {
    expect(gateway.readinessProbe.httpGet.path).toBe('/ready');
    expect(gateway.livenessProbe.httpGet.path).toBe('/health');
    expect(probePort(gateway, gateway.readinessProbe.httpGet.port)).toBe(config.port);
    expect(probePort(gateway, gateway.livenessProbe.httpGet.port)).toBe(config.port);
    expect(gateway.ports.find((p: Doc) => p.name === 'http').containerPort).toBe(config.port);
    expect(gateway.ports.find((p: Doc) => p.name === 'grpc').containerPort).toBe(config.grpcPort);
    // the Service's names pass the Host check (names not listed are refused)
    for (const name of ['inference-gateway', 'inference-gateway.default.svc.cluster.local'])
      expect(hostAllowed(`${name}:4000`, config.allowedHosts)).toBe(true);
  });

  it('preStop, the drain and terminationGracePeriodSeconds fit together', () => {
    const preStopMs = Number(gateway.lifecycle.preStop.exec.command.at(-1)) * 1000;
    expect(gateway.lifecycle.preStop.exec.command[0]).toBe('sleep');
    const probe = gateway.readinessProbe;
    // the readiness probe fails within the drain, so the pod leaves the endpoints while it still serves
    expect(probe.periodSeconds * probe.failureThreshold * 1000).toBeLessThan(config.drainDelayMs);
    // the whole shutdown (preStop, drain, requests in flight, the process's own 5 s margin) ends before SIGKILL
    expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThanOrEqual(
      preStopMs + config.drainDelayMs + config.shutdownTimeoutMs + 5000,
    );
    expect(deployment.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    // SIGTERM is what Kubernetes sends and what src/main.ts drains on
    expect(readFileSync(path.join(ROOT, 'src', 'main.ts'), 'utf8')).toMatch(/process\.on\('SIGTERM'/);
  });

  it('one shared repository volume at MODEL_REPOSITORY, ReadWriteMany', () => {
    const pvc = find(kube, 'PersistentVolumeClaim');
    expect(pvc.spec.accessModes).toEqual(['ReadWriteMany']);
    const volume = pod.volumes.find((v: Doc) => v.persistentVolumeClaim?.claimName === pvc.metadata.name);
    expect(gateway.volumeMounts.find((m: Doc) => m.name === volume.name).mountPath).toBe(config.modelRepository);
    for (const init of pod.initContainers) expect(init.volumeMounts.find((m: Doc) => m.name === volume.name)).toBeDefined();
  });

  it('the engine threads fit the CPUs the pod requests, one per instance (README, Benchmark)', () => {
    const cpus = Number(gateway.resources.requests.cpu);
    // set in the manifest, not left to defaults that follow the node's cores
    for (const name of ['ENGINE_INSTANCES', 'ENGINE_THREADS'])
      expect(
        gateway.env.map((e: Doc) => e.name),
        name,
      ).toContain(name);
    expect(config.engineThreads).toBe(1);
    expect(config.engineInstances * config.engineThreads).toBe(cpus);
    expect(config.engineAloneThreads).toBeLessThanOrEqual(cpus);
  });

  it("the memory limit allows what the README's Soak says a replica serving 12-megapixel renderings needs", async () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const gb = Number(/should allow ~([\d.]+) GB\s+per replica/.exec(readme)?.[1]);
    expect(gb).toBeGreaterThan(0);
    const units: Record<string, number> = { Mi: 2 ** 20, Gi: 2 ** 30, M: 1e6, G: 1e9 };
    const [, n, unit] = /^([\d.]+)(Mi|Gi|M|G)$/.exec(gateway.resources.limits.memory)!;
    expect(Number(n) * units[unit]).toBeGreaterThanOrEqual(gb * 1e9);
  });

  describe('the init container seeds the repository volume once, with the default models', () => {
    const seed = pod.initContainers.find((c: Doc) => c.name === 'seed-repository');
    /** Its command, run with `volume` as the repository volume and `image` (a small stand-in) as the image's models/. */
    function seedOnce(volume: string, image: string) {
      const script = seed.command.at(-1).replaceAll('/app/models', image).replaceAll('/models', volume);
      expect(seed.command.slice(0, 2)).toEqual(['sh', '-c']);
      const r = spawnSync('sh', ['-c', script], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
    }
    async function setUp() {
      const dir = await mkdtemp(path.join(os.tmpdir(), 'gw-seed-'));
      const image = path.join(dir, 'image');
      await mkdir(path.join(image, 'mobilenet', '1'), { recursive: true });
      await writeFile(path.join(image, 'mobilenet', 'model.json'), '{}');
      await writeFile(path.join(image, 'mobilenet', '1', 'model.onnx'), 'onnx');
      const volume = path.join(dir, 'volume');
      await mkdir(volume);
      return { dir, image, volume, seeded: () => existsSync(path.join(volume, 'mobilenet', 'model.json')) };
    }

    it('a new volume that holds lost+found (ext4) is seeded', async () => {
      const { dir, image, volume, seeded } = await setUp();
      try {
        await mkdir(path.join(volume, 'lost+found'));
        seedOnce(volume, image);
        expect(seeded()).toBe(true);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it('a volume that has models is left as it is, and one whose models were all deleted is not seeded again', async () => {
      const { dir, image, volume, seeded } = await setUp();
      try {
        await mkdir(path.join(volume, 'mine', '1'), { recursive: true });
        await writeFile(path.join(volume, 'mine', 'model.json'), '{}');
        seedOnce(volume, image);
        expect(seeded()).toBe(false);
        await rm(path.join(volume, 'mine'), { recursive: true });
        seedOnce(volume, image); // the next pod's start
        expect(seeded()).toBe(false);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });

  it('REDIS_URL names the Redis Service and its port', () => {
    const redisService = find(kube, 'Service', 'redis');
    const url = new URL(config.redisUrl!);
    expect(url.hostname).toBe(redisService.metadata.name);
    expect(Number(url.port)).toBe(redisService.spec.ports[0].port);
    const redis = find(kube, 'Deployment', 'redis').spec.template.spec.containers[0];
    expect(redis.ports[0].containerPort).toBe(redisService.spec.ports[0].port);
  });

  it('the Service, the HorizontalPodAutoscaler and the PodDisruptionBudget point at the gateway', () => {
    const service = find(kube, 'Service', 'inference-gateway');
    const labels = deployment.spec.template.metadata.labels;
    for (const [k, v] of Object.entries(service.spec.selector)) expect(labels[k]).toBe(v);
    for (const p of service.spec.ports) expect(gateway.ports.map((c: Doc) => c.name)).toContain(p.targetPort);
    const hpa = find(kube, 'HorizontalPodAutoscaler');
    expect(hpa.spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: deployment.metadata.name });
    expect(gateway.resources.requests.cpu).toBeDefined(); // CPU utilization needs a request
    const pdb = find(kube, 'PodDisruptionBudget');
    for (const [k, v] of Object.entries(pdb.spec.selector.matchLabels)) expect(labels[k]).toBe(v);
    const kustomization = find(kube, 'Kustomization');
    expect([...kustomization.resources].sort()).toEqual(
      readdirSync(path.join(DEPLOY, 'kubernetes'))
        .filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml')
        .sort(),
    );
  });
});

describe('deploy/kserve', () => {
  const runtime = find(kserve, 'ServingRuntime', 'inference-gateway');
  const container = runtime.spec.containers[0];
  const { config } = containerConfig(container);

  it('a v2 serving runtime whose port, paths and repository are the server configuration', () => {
    expect(runtime.spec.protocolVersions).toContain('v2');
    expect(container.ports[0].containerPort).toBe(config.port);
    expect(container.readinessProbe.httpGet).toEqual({ path: '/ready', port: config.port });
    expect(container.livenessProbe.httpGet).toEqual({ path: '/health', port: config.port });
    expect(config.modelRepository).toBe('/mnt/models'); // where KServe's storage initializer puts storageUri
    expect(Number(runtime.spec.annotations['prometheus.kserve.io/port'])).toBe(config.port);
    // one port per container under Knative: REST here, no gRPC server; the ingress's host names are answered
    expect(config.grpcPort).toBeNull();
    expect(hostAllowed('vision-predictor.default.example.com', config.allowedHosts)).toBe(true);
  });

  // Knative Serving (KServe's default, Serverless mode) refuses a revision whose container sets one of these
  // ("\"PORT\" is a reserved environment variable"): it sets PORT itself, to the container's port
  it('sets no environment variable Knative reserves for itself', () => {
    const reserved = ['PORT', 'K_SERVICE', 'K_CONFIGURATION', 'K_REVISION'];
    for (const c of runtime.spec.containers as Doc[])
      for (const e of c.env ?? []) expect(reserved, `${c.name}: env ${e.name}`).not.toContain(e.name);
    // its port comes as a flag instead, after the image's own command
    const cmd = JSON.parse(/^CMD (\[.*\])$/m.exec(read('Dockerfile'))![1]) as string[];
    expect(container.command.slice(0, cmd.length)).toEqual(cmd);
  });

  it('the InferenceService uses the runtime, a format it supports, and the v2 protocol', () => {
    const isvc = find(kserve, 'InferenceService');
    const model = isvc.spec.predictor.model;
    expect(model.runtime).toBe(runtime.metadata.name);
    expect(model.protocolVersion).toBe('v2');
    expect(runtime.spec.supportedModelFormats.map((f: Doc) => f.name)).toContain(model.modelFormat.name);
    // the same PVC as the Kubernetes manifests
    expect(model.storageUri).toBe(`pvc://${find(kube, 'PersistentVolumeClaim').metadata.name}/`);
  });
});

describe('deploy/Dockerfile and deploy/haproxy', () => {
  const dockerfile = read('Dockerfile');
  const instructions = dockerfile
    .replace(/\\\n/g, ' ')
    .split('\n')
    .filter((l) => /^[A-Z]+\s/.test(l));

  it('multi-stage, non-root, dependencies and models inside, a healthcheck on /health, SIGTERM to stop', () => {
    expect(instructions.filter((l) => l.startsWith('FROM ')).length).toBeGreaterThanOrEqual(2);
    const user = instructions.filter((l) => l.startsWith('USER ')).at(-1);
    expect(user).toBeDefined();
    expect(user).not.toMatch(/root|\b0\b/);
    // .npmrc is copied before npm ci (it skips onnxruntime-node's CUDA download)
    const npmrc = instructions.findIndex((l) => l.startsWith('COPY ') && l.includes('.npmrc'));
    const ci = instructions.findIndex((l) => l.startsWith('RUN ') && l.includes('npm ci'));
    expect(npmrc).toBeGreaterThanOrEqual(0);
    expect(npmrc).toBeLessThan(ci);
    // models/ is there before npm ci, whose postinstall copies the npm-provided models into it
    expect(instructions.findIndex((l) => l.startsWith('COPY models'))).toBeLessThan(ci);
    expect(instructions.find((l) => l.startsWith('HEALTHCHECK '))).toMatch(/\/health/);
    expect(instructions).toContain('STOPSIGNAL SIGTERM');
    const exposed = instructions
      .find((l) => l.startsWith('EXPOSE '))!
      .split(/\s+/)
      .slice(1)
      .map(Number);
    expect(exposed).toContain(fallback('port'));
    // the ENV it sets are settings, with values the server accepts
    const env = Object.fromEntries(
      [...instructions.find((l) => l.startsWith('ENV '))!.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1], m[2]] as [string, string]),
    );
    const known = [...Object.keys(env)].filter((k) => !NODE_ENV_NAMES.has(k));
    for (const k of known) expect(ENV_NAMES).toContain(k);
    expect(loadConfig(env, []).drainDelayMs).toBeGreaterThan(0);
    expect(readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')).toMatch(/^node_modules$/m);
  });

  // npm ci runs the root package's postinstall: whatever it runs must be in the build stage by then, or the build
  // stops there (and without ui/, the image would have no page at /)
  const postinstall: string = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).scripts.postinstall;
  const ci = instructions.findIndex((l) => l.startsWith('RUN ') && l.includes('npm ci'));
  /** [source, destination] of each COPY from the build context before npm ci */
  const copiedBeforeCi = instructions
    .slice(0, ci)
    .filter((l) => l.startsWith('COPY ') && !l.includes('--from'))
    .flatMap((l) => {
      const args = l
        .split(/\s+/)
        .slice(1)
        .filter((a) => !a.startsWith('--'));
      const dest = args.at(-1)!;
      return args.slice(0, -1).map((src) => [src, dest.endsWith('/') ? path.posix.join(dest, src) : dest] as const);
    });

  it("every file the postinstall script runs is COPY'd before npm ci", () => {
    const named = [...postinstall.matchAll(/\bnode\s+(\S+)/g)].map((m) => m[1]);
    expect(named).toEqual(expect.arrayContaining(['models/copy-npm-models.mjs', 'ui/build.mjs']));
    for (const file of named)
      expect(
        copiedBeforeCi.some(([src]) => file === src || file.startsWith(`${src.replace(/\/$/, '')}/`)),
        `${file} (the postinstall runs it) is COPY'd before npm ci`,
      ).toBe(true);
  });

  it("the build stage's postinstall, replayed on what it COPYs before npm ci, builds the page and copies the models", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'gw-docker-build-'));
    try {
      // a fresh clone's files: not what an earlier `npm install` here produced (ui/dist, the copied npm models)
      const npmModels = Object.keys(JSON.parse(readFileSync(path.join(ROOT, 'models', 'npm-models.json'), 'utf8')));
      const generated = new Set(['ui/dist', 'node_modules', ...npmModels.map((m) => `models/${m}/1`)]);
      for (const [src, dest] of copiedBeforeCi)
        await cp(path.join(ROOT, src), path.join(dir, dest), {
          recursive: true,
          filter: (from) => !generated.has(path.relative(ROOT, from).split(path.sep).join('/')),
        });
      await symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
      const run = spawnSync('sh', ['-c', postinstall], { cwd: dir, encoding: 'utf8' });
      expect(run.status, run.stderr).toBe(0);
      expect(readFileSync(path.join(dir, 'ui', 'dist', 'index.html'), 'utf8')).toMatch(/<script type="module" src="\/assets\//);
      // plain files, not links: the image's models/ can be copied anywhere as it is (the init container seeds from it)
      for (const m of npmModels) expect(lstatSync(path.join(dir, 'models', m, '1', 'model.onnx')).isFile(), m).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('the HAProxy example checks /ready often enough for the drain, and HAProxy accepts it', () => {
    const cfg = read('haproxy/haproxy.cfg');
    expect(cfg).toMatch(/http-check send meth GET uri \/ready/);
    const inter = Number(/inter (\d+)s/.exec(cfg)![1]) * 1000;
    const fall = Number(/fall (\d+)/.exec(cfg)![1]);
    expect(inter * fall).toBeLessThan(fallback('drainDelayMs'));
    if (have('haproxy')) {
      const check = spawnSync('haproxy', ['-c', '-f', path.join(DEPLOY, 'haproxy', 'haproxy.cfg')], { encoding: 'utf8' });
      expect(check.status, check.stderr + check.stdout).toBe(0);
    }
  });

  it.skipIf(!have('haproxy'))(
    'the HAProxy example in front of a gateway that trusts it (TRUSTED_PROXIES=127.0.0.2): each client it relays has its own share of the request bytes; gRPC goes through it too',
    async () => {
      const MB = 1024 * 1024;
      const gw = await startGateway({
        models: { mobilenet: fixture('mobilenet') },
        env: {
          TRUSTED_PROXIES: '127.0.0.2',
          MAX_UPLOAD_BYTES: String(MB),
          MAX_BYTES_IN_FLIGHT: String(4.5 * MB),
          REQUEST_TIMEOUT_MS: '30000',
        },
      });
      const dir = await mkdtemp(path.join(os.tmpdir(), 'gw-haproxy-'));
      const sockets: net.Socket[] = [];
      let lb: ReturnType<typeof spawn> | undefined;
      let lbLog = '';
      try {
        // the example as it is, but for its ports (one replica: the gateway above) and a health check that a busy
        // machine's one slow /ready does not fail
        const port = await freePort();
        const grpcPort = await freePort();
        const cfg = read('haproxy/haproxy.cfg')
          .replace(/^ {2}bind :8080$/m, `  bind 127.0.0.1:${port}`)
          .replace(/(^ {2}server replica\d .*\n)+/m, `  server replica1 127.0.0.1:${new URL(gw.url).port} check\n`)
          .replace(/^ {2}bind :8081 proto h2$/m, `  bind 127.0.0.1:${grpcPort} proto h2`)
          .replace(
            /(^ {2}server replica\d .*proto h2.*\n)+/m,
            `  server replica1 127.0.0.1:${gw.grpcPort} proto h2 check port ${new URL(gw.url).port} check-proto h1\n`,
          )
          .replaceAll(/ fall 1 /g, ' fall 3 ');
        expect(cfg.replace(/#.*/g, '')).not.toMatch(/:80(80|81)\b|:500\d/);
        expect(cfg).toMatch(/source 127\.0\.0\.2/);
        await writeFile(path.join(dir, 'haproxy.cfg'), cfg);
        lb = spawn('haproxy', ['-db', '-f', path.join(dir, 'haproxy.cfg')], { stdio: ['ignore', 'ignore', 'pipe'] });
        lb.stderr!.on('data', (d) => (lbLog += d));
        await until(
          () =>
            fetch(`http://127.0.0.1:${port}/ready`).then(
              (r) => r.ok,
              () => false,
            ),
          10_000,
          'HAProxy to relay',
        ).catch((e: Error) => {
          throw new Error(`${e.message}; haproxy said: ${lbLog}`);
        });
        const held = async () =>
          Number(/^gateway_request_bytes_in_flight (\d+)/m.exec(await (await fetch(`${gw.url}/metrics`)).text())?.[1]);
        /** A KServe REST request through HAProxy from `from`, all of its 1 MB body sent but the last byte. */
        const almostSent = (from: string) =>
          new Promise<() => string>((resolve) => {
            let text = '';
            const s = net.connect({ port, host: '127.0.0.1', localAddress: from }, () =>
              s.write(
                `POST /v2/models/mobilenet/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${MB}\r\n\r\n{${' '.repeat(MB - 2)}`,
                () => setTimeout(() => resolve(() => text), 300),
              ),
            );
            s.on('data', (d) => (text += d));
            s.on('error', () => undefined);
            sockets.push(s);
          });
        await almostSent('127.0.0.3');
        await almostSent('127.0.0.3');
        await until(async () => (await held()) === 2 * (MB - 1), 5000, "one client's half held");
        const third = await almostSent('127.0.0.3');
        await until(async () => /this client holds/.test(third()), 5000, 'its third request answered');
        expect(third()).toMatch(/^HTTP\/1.1 503[\s\S]*this client holds/);
        // another client behind the same proxy still fits (before TRUSTED_PROXIES, both were the proxy's address)
        await almostSent('127.0.0.4');
        await until(async () => (await held()) === 3 * (MB - 1), 5000, "another client's body held");
        // KServe gRPC through the proxy (HTTP/2 both ways), once its health check on the HTTP port has passed
        const grpcClient = createKserveGrpcClient(`127.0.0.1:${grpcPort}`);
        try {
          await until(
            () =>
              grpcClient.ModelReady({ name: 'mobilenet', version: '' }).then(
                (r) => r.ready,
                () => false,
              ),
            10_000,
            'gRPC through HAProxy',
          );
        } finally {
          grpcClient.close();
        }
      } finally {
        for (const s of sockets) s.destroy();
        lb?.kill('SIGTERM');
        await gw.close();
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});
