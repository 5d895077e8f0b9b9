/**
 * The demo's phones: one Node process hosting a few SDK agents (`EdgeshipAgent`), each replaying
 * the eval set through `predict` — the twin of `examples/demo/fleet_worker.py`.
 *
 *     node build/demo/demo/phone_fleet_worker.js SPEC.json     (started by examples/demo/fleet.py)
 *
 * It reads the same spec as the Python worker (server, enrollment token, trusted key, eval npz,
 * rate, intervals, one entry per agent with its state directory, device class and RAM). Every
 * agent has its own state directory (`nodePlatform`: credential, model store, outbox), registers
 * as an `android` or `ios` device reporting onnxruntime only (this host's `onnxruntime-node`),
 * verifies, probes and swaps models like an app would. Every second the worker writes what each
 * agent runs to `status_file` (JSON, replaced atomically). SIGTERM or SIGINT stops the replays,
 * then every agent (`stop` closes its window and delivers its outbox), then the process exits 0.
 * Built by `examples/demo/typescript.py` with the SDK's `tsc` (`demo/tsconfig.json`).
 */

import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import * as ort from "onnxruntime-node";

import { nodePlatform } from "../src/adapters/node.js";
import { EdgeshipAgent } from "../src/agent.js";
import { InferenceError, NoModel } from "../src/errors.js";
import type { NdArray } from "../src/npz.js";
import { readNpz } from "../src/npz.js";
import { onnxRuntime } from "../src/runtime.js";

type Tensor = ort.Tensor;

interface AgentSpec {
  name: string;
  state_dir: string;
  device_class: string;
  runtimes: string[];
  ram_bytes: number;
}

interface WorkerSpec {
  server: string;
  model: string;
  enroll_token: string;
  trusted_key: string;
  eval: string;
  rate_per_second: number;
  check_interval_seconds: number;
  report_interval_seconds: number;
  variant_backoff_seconds: number;
  status_file: string;
  seed?: number;
  agents: AgentSpec[];
}

const STATUS_MS = 1000;
const START_SPACING_MS = 50; // spread the registrations and first downloads a little
const FLUSH_MS = 3000;
/** what a phone of each class says about itself at registration (the RAM comes from the spec) */
const PHONES: Record<string, { os: string; arch: string }> = {
  android: { os: "Android 14", arch: "aarch64" },
  ios: { os: "iOS 17.4", arch: "arm64" },
};

/** One batch of the eval set: the feeds by input name and the label. */
interface Sample {
  feeds: Record<string, Tensor>;
  label: number | undefined;
}

/**
 * The eval npz as single-row samples (the digits model takes a batch of 1): every array but
 * `labels` is an input, named as the model names it.
 */
function loadSamples(path: string): Sample[] {
  const arrays = readNpz(new Uint8Array(readFileSync(path)));
  const labels = arrays.get("labels");
  arrays.delete("labels");
  if (arrays.size === 0) throw new RangeError(`${path} holds no input arrays`);
  const rows = Math.min(...[...arrays.values()].map((a) => a.shape[0] ?? 0));
  const samples: Sample[] = [];
  for (let row = 0; row < rows; row++) {
    const feeds: Record<string, Tensor> = {};
    for (const [name, array] of arrays) feeds[name] = rowTensor(array, row);
    samples.push({ feeds, label: labels === undefined ? undefined : Number(labels.data[row]) });
  }
  return samples;
}

function rowTensor(array: NdArray, row: number): Tensor {
  const rest = array.shape.slice(1);
  const size = rest.reduce((a, b) => a * b, 1);
  const data = array.data.subarray(row * size, (row + 1) * size);
  return new ort.Tensor(array.dtype as "float32", data as Float32Array, [1, ...rest]);
}

/** `predict` at a fixed rate, cycling through the samples; no burst when it falls behind. */
class Replay {
  sent = 0;
  private running: Promise<void> = Promise.resolve();

  constructor(private readonly agent: EdgeshipAgent<Tensor>, private readonly samples: Sample[],
              private readonly ratePerSecond: number, private readonly signal: AbortSignal, first: number) {
    this.sent = first;
  }

  start(): Replay {
    this.running = this.run();
    return this;
  }

  /** Resolves when the loop has ended (after the worker's abort signal). */
  stopped(): Promise<void> {
    return this.running;
  }

  private async run(): Promise<void> {
    const periodMs = 1000 / this.ratePerSecond;
    let due = performance.now();
    while (!this.signal.aborted) {
      const sample = this.samples[this.sent % this.samples.length]!;
      try {
        await this.agent.predict(sample.feeds, sample.label === undefined ? {} : { label: sample.label });
        this.sent += 1;
      } catch (err) {
        if (!(err instanceof NoModel || err instanceof InferenceError)) throw err;
      }
      due += periodMs;
      let delay = due - performance.now();
      if (delay < -1000) { // fell behind (a loaded host): do not burst to catch up
        due = performance.now();
        delay = 0;
      }
      try {
        await sleep(Math.max(0, delay), undefined, { signal: this.signal });
      } catch {
        return; // aborted
      }
    }
  }
}

interface Hosted {
  spec: AgentSpec;
  agent: EdgeshipAgent<Tensor>;
  replay: Replay;
}

function log(name: string) {
  return (level: string, message: string) => {
    if (level !== "debug") process.stderr.write(`${new Date().toISOString()} ${level} ${name}: ${message}\n`);
  };
}

/** Seeded PRNG (mulberry32): each worker starts its replays at the same rows on every run. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function startAgent(spec: WorkerSpec, agentSpec: AgentSpec, runtime: ReturnType<typeof onnxRuntime<Tensor>>,
                          publisherPem: string): Promise<EdgeshipAgent<Tensor>> {
  const platform = nodePlatform(agentSpec.state_dir, agentSpec.device_class);
  const phone = PHONES[agentSpec.device_class] ?? {};
  return EdgeshipAgent.start<Tensor>({
    server: spec.server, model: spec.model, enrollToken: spec.enroll_token, trustedKeys: [publisherPem],
    runtime, ...platform,
    device: { ...platform.device, ...phone, ramBytes: agentSpec.ram_bytes },
    checkIntervalMs: spec.check_interval_seconds * 1000,
    reportIntervalMs: spec.report_interval_seconds * 1000,
    variantBackoffMs: spec.variant_backoff_seconds * 1000,
    requestTimeoutMs: 10_000, backoffInitialSeconds: 0.5, backoffMaxSeconds: 5,
    log: log(agentSpec.name),
  });
}

function statusOf(spec: WorkerSpec, hosted: Hosted[]): Record<string, unknown> {
  const rows = hosted.map(({ spec: a, agent, replay }) => {
    const status = agent.status(); // cohort: where its measurements go (stable if it refused the canary)
    return { name: a.name, device_class: a.device_class, kind: "sdk", device_id: status.deviceId,
      version: status.version, variant: status.variant, cohort: status.cohort, rollout_id: status.rolloutId,
      sent: replay.sent };
  });
  return { pid: process.pid, time: Date.now() / 1000, planned: spec.agents.length, kind: "sdk", agents: rows };
}

function writeStatus(spec: WorkerSpec, hosted: Hosted[]): void {
  const temporary = `${spec.status_file.replace(/\.json$/, "")}.tmp`;
  writeFileSync(temporary, JSON.stringify(statusOf(spec, hosted)));
  renameSync(temporary, spec.status_file);
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  if (args.length !== 1) {
    process.stderr.write("usage: node phone_fleet_worker.js SPEC.json\n");
    return 2;
  }
  const spec = JSON.parse(readFileSync(args[0]!, "utf8")) as WorkerSpec;
  const stopping = new AbortController();
  for (const signal of ["SIGTERM", "SIGINT"] as const) process.on(signal, () => stopping.abort());
  const samples = loadSamples(spec.eval);
  const runtime = onnxRuntime<Tensor>(ort, { intraOpNumThreads: 1 });
  const publisherPem = readFileSync(spec.trusted_key, "utf8");
  const random = seeded(spec.seed ?? 0);
  const hosted: Hosted[] = [];
  try {
    for (const agentSpec of spec.agents) {
      if (stopping.signal.aborted) break;
      const agent = await startAgent(spec, agentSpec, runtime, publisherPem);
      const first = Math.floor(random() * samples.length);
      const replay = new Replay(agent, samples, spec.rate_per_second, stopping.signal, first).start();
      hosted.push({ spec: agentSpec, agent, replay });
      writeStatus(spec, hosted);
      await sleep(START_SPACING_MS, undefined, { signal: stopping.signal }).catch(() => {});
    }
    while (!stopping.signal.aborted) {
      try {
        writeStatus(spec, hosted);
      } catch (err) { // a missed status is not worth dying for
        process.stderr.write(`status not written: ${(err as Error).message}\n`);
      }
      await sleep(STATUS_MS, undefined, { signal: stopping.signal }).catch(() => {});
    }
  } finally {
    stopping.abort();
    await Promise.all(hosted.map(({ replay }) => replay.stopped().catch(() => {})));
    await Promise.all(hosted.map(({ agent }) => agent.stop(FLUSH_MS).catch(() => {})));
  }
  process.stderr.write(`${new Date().toISOString()} info worker stopped: ${hosted.length} agents\n`);
  return 0;
}

main().then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`phone fleet worker: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
