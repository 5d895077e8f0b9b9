/**
 * SDK overhead per `predict()`: the agent's call next to bare `session.run` on the very session
 * the agent serves with, same inputs, one call each per round, the order permuted round by
 * round, many rounds. The overhead is the median of the paired differences (with a 95% interval
 * from order statistics), so load that hits a round hits both sides. Also measured: a second,
 * separate session of the same file against the first (what two sessions differ by, the noise
 * floor of comparing against one), the bare call against itself (the method's own bias, ~0),
 * and the window recording alone.
 */

import * as ort from "onnxruntime-node";

import { WindowSet, type WindowKey } from "../src/window.js";
import { args, bareSession, emit, feeds, startAgent } from "./common.js";

interface Options {
  pairs: number;
  warmup: number;
}

type Feeds = Record<string, ort.Tensor>;

const ns = () => process.hrtime.bigint();

/** Orders of the four calls, cycled (rotations of two opposite orders): each side is as often first as last. */
const ORDERS = [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2], [3, 2, 1, 0], [2, 1, 0, 3], [1, 0, 3, 2],
  [0, 3, 2, 1]] as const;

async function main(): Promise<void> {
  const a = args();
  const { pairs, warmup } = JSON.parse(process.argv[3] ?? "{}") as Options;
  const { agent, session, sessionsCreated } = await startAgent(a);
  const separate = await bareSession(a);
  const inputs = feeds(a, session.inputNames[0]!);
  const calls: ((f: Feeds) => Promise<unknown>)[] = [
    (f) => agent.predict(f), (f) => session.run(f), (f) => separate.run(f), (f) => session.run(f)];
  for (let i = 0; i < warmup; i++) for (const call of calls) await call(inputs[i % inputs.length]!);
  const times = calls.map(() => new Float64Array(pairs));
  for (let i = 0; i < pairs; i++) {
    const input = inputs[i % inputs.length]!;
    for (const side of ORDERS[i % ORDERS.length]!) {
      const t0 = ns();
      await calls[side]!(input);
      times[side]![i] = Number(ns() - t0);
    }
  }
  const [agentNs, bareNs, separateNs, againNs] = times as [Float64Array, Float64Array, Float64Array, Float64Array];
  const diffs = Float64Array.from(agentNs, (v, i) => v - bareNs[i]!);
  const separateDiffs = Float64Array.from(separateNs, (v, i) => v - bareNs[i]!);
  // the control: the bare call against itself; a method without bias finds ~0
  const againDiffs = Float64Array.from(againNs, (v, i) => v - bareNs[i]!);
  const inferences = agent.windows.close().reduce((sum, r) => sum + r.inferences, 0);
  await agent.stop();
  await separate.release();
  const us = (v: number) => v / 1e3;
  emit({
    model: a.model, pairs, warmup, threads: a.threads, onnxruntime: ort.env.versions.common,
    bare_median_us: us(median(bareNs)), agent_median_us: us(median(agentNs)),
    bare_p95_us: us(quantile(bareNs, 0.95)), agent_p95_us: us(quantile(agentNs, 0.95)),
    overhead_median_us: us(median(diffs)), overhead_ci95_us: medianInterval(diffs).map(us),
    separate_session_median_us: us(median(separateNs)), separate_session_diff_median_us: us(median(separateDiffs)),
    separate_session_diff_ci95_us: medianInterval(separateDiffs).map(us),
    control_diff_median_us: us(median(againDiffs)), control_diff_ci95_us: medianInterval(againDiffs).map(us),
    record_inference_ns: recordInferenceNs(), window_inferences_seen: inferences, sessions_created: sessionsCreated,
  });
}

/**
 * The cost of the window recording `predict` does per call, alone (mean over many calls). In a
 * loop the caches stay warm: after a ~1 ms model the same code takes several times longer.
 */
function recordInferenceNs(): number {
  const windows = new WindowSet(() => Date.now(), () => "id");
  const key: WindowKey = { model: "m", version: "1", variant: "v", cohort: "stable", rolloutId: null };
  const calls = 200_000;
  for (let i = 0; i < calls; i++) windows.recordInference(key, 1e-3 * (1 + (i % 7)));
  const t0 = ns();
  for (let i = 0; i < calls; i++) windows.recordInference(key, 1e-3 * (1 + (i % 7)));
  return Number(ns() - t0) / calls;
}

function sorted(values: Float64Array): Float64Array {
  return Float64Array.from(values).sort();
}

function quantile(values: Float64Array, q: number): number {
  const s = sorted(values);
  return s[Math.min(s.length - 1, Math.floor(q * (s.length - 1)))]!;
}

function median(values: Float64Array): number {
  const s = sorted(values);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** 95% interval of the median: order statistics n/2 -+ 1.96 sqrt(n)/2 (binomial, normal approximation). */
function medianInterval(values: Float64Array): number[] {
  const s = sorted(values);
  const half = (1.96 * Math.sqrt(s.length)) / 2;
  const lo = Math.max(0, Math.floor(s.length / 2 - half));
  const hi = Math.min(s.length - 1, Math.ceil(s.length / 2 + half));
  return [s[lo]!, s[hi]!];
}

await main();
