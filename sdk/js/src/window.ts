/**
 * Window aggregates (docs/protocol.md §8.5; reference `edge_agent/window.py`): what the agent
 * counts between two reports, one window per key (model, version, variant, rollout, cohort).
 * `close()` returns one schema-2 report per non-empty window and opens the next windows.
 *
 *     const windows = new WindowSet(clock.nowMs, newReportId);
 *     windows.recordInference(key, 0.004);
 *     outbox.add(windows.close());
 */

import { toHex } from "./bytes.js";
import { check } from "./errors.js";
import { LatencySketch } from "./sketch.js";

export type Cohort = "stable" | "canary";
export const ERROR_REASONS = ["load_failed", "runtime_error", "golden_mismatch", "timeout", "other"] as const;
export type ErrorReason = (typeof ERROR_REASONS)[number];
const INFERENCE_REASONS: readonly ErrorReason[] = ["runtime_error", "timeout", "other"];
export const REPORT_SCHEMA = 2;

/** What one window (and so one report) is about: the model that ran, as assigned. */
export interface WindowKey {
  readonly model: string;
  readonly version: string;
  readonly variant: string;
  readonly rolloutId: number | null;
  readonly cohort: Cohort;
}

/** One report of `POST /v1/reports` (§8.2). */
export interface Report {
  id: string;
  model: string;
  version: string;
  variant: string;
  rollout_id: number | null;
  cohort: Cohort;
  window_start: string;
  window_end: string;
  inferences: number;
  errors: Record<ErrorReason, number>;
  schema: number;
  latency: ReturnType<LatencySketch["toWire"]>;
  latency_sum_seconds: number;
  labelled: number;
  correct: number;
  shadow_samples: number;
  shadow_agree: number;
  peak_rss_bytes?: number;
  dropped_windows: number;
  load_seconds?: number;
}

/** One open window's shadow comparisons; distances are null when none was measured. */
export interface ShadowCounts {
  key: WindowKey;
  samples: number;
  agree: number;
  meanDistance: number | null;
  maxDistance: number | null;
}

const keyText = (k: WindowKey): string => JSON.stringify([k.model, k.version, k.variant, k.rolloutId, k.cohort]);

export const sameKey = (a: WindowKey, b: WindowKey): boolean => keyText(a) === keyText(b);

/** One open window's counts. */
interface Window {
  openedAtMs: number;
  inferences: number;
  errors: Record<ErrorReason, number>;
  latency: LatencySketch;
  latencySumSeconds: number;
  labelled: number;
  correct: number;
  shadowSamples: number;
  shadowAgree: number;
  /** shadow comparisons that measured a distance (a failed candidate run measures none) */
  distanceSamples: number;
  /** sum and largest of the measured shadow output distances: kept locally, the report has no field for them */
  distanceSum: number;
  distanceMax: number;
}

const openWindow = (openedAtMs: number): Window => ({
  openedAtMs, inferences: 0, errors: Object.fromEntries(ERROR_REASONS.map((r) => [r, 0])) as Record<ErrorReason, number>,
  latency: new LatencySketch(), latencySumSeconds: 0, labelled: 0, correct: 0, shadowSamples: 0, shadowAgree: 0,
  distanceSamples: 0, distanceSum: 0, distanceMax: 0,
});

const isEmpty = (w: Window): boolean =>
  !(w.inferences || w.labelled || w.shadowSamples || Object.values(w.errors).some((n) => n));

/**
 * The open windows. A key's window opens at its first record, or at the previous close if the
 * key had data then (a busy key's windows are back to back); keys with nothing are forgotten.
 *
 * @param nowMs unix ms now.
 * @param newId a fresh report id (uuid4 as 32 hex digits), never reused.
 * @param peakRssBytes the process' peak resident memory, null when the platform cannot tell.
 */
export class WindowSet {
  private windows = new Map<string, [WindowKey, Window]>();
  /**
   * The last key (its fields) and its window, found without building the key's text: `predict`
   * records right after the model ran, with the CPU caches cold, where JSON.stringify and a
   * string-keyed lookup took ~5 µs (docs/benchmarks-sdk.md). Emptied by `close()`.
   */
  private last: WindowKey & { window: Window } | null = null;

  constructor(private readonly nowMs: () => number, private readonly newId: () => string,
              private readonly peakRssBytes: () => number | null = () => null) {}

  private window(key: WindowKey): Window {
    const last = this.last;
    if (last !== null && last.model === key.model && last.version === key.version &&
        last.variant === key.variant && last.rolloutId === key.rolloutId && last.cohort === key.cohort) {
      return last.window;
    }
    const text = keyText(key);
    let found = this.windows.get(text);
    if (found === undefined) {
      found = [key, openWindow(this.nowMs())];
      this.windows.set(text, found);
    }
    const { model, version, variant, rolloutId, cohort } = key;
    this.last = { model, version, variant, rolloutId, cohort, window: found[1] };
    return found[1];
  }

  /** One successful inference of `latencySeconds` (finite, ≥ 0). */
  recordInference(key: WindowKey, latencySeconds: number): void {
    if (!(Number.isFinite(latencySeconds) && latencySeconds >= 0)) {
      throw new RangeError(`latency ${latencySeconds} s is not finite and >= 0`);
    }
    const window = this.window(key);
    window.inferences += 1;
    window.latency.add(latencySeconds);
    window.latencySumSeconds += latencySeconds;
  }

  /** One error; an inference reason also counts one inference (without a latency). */
  recordError(key: WindowKey, reason: ErrorReason): void {
    check(ERROR_REASONS.includes(reason), `unknown error reason ${reason}`);
    const window = this.window(key);
    if (INFERENCE_REASONS.includes(reason)) window.inferences += 1;
    window.errors[reason] += 1;
  }

  recordLabelled(key: WindowKey, correct: boolean): void {
    const window = this.window(key);
    window.labelled += 1;
    window.correct += correct ? 1 : 0;
  }

  /**
   * One shadow comparison (§7.3): whether candidate and live model agreed, and the largest
   * absolute difference of their outputs; `null` or +∞ when there is none (the candidate failed):
   * the comparison counts, the distance statistics do not.
   */
  recordShadow(key: WindowKey, agree: boolean, distance: number | null = null): void {
    check(distance === null || distance >= 0, `distance ${distance}`);
    const window = this.window(key);
    window.shadowSamples += 1;
    window.shadowAgree += agree ? 1 : 0;
    if (distance !== null && distance !== Infinity) {
      window.distanceSamples += 1;
      window.distanceSum += distance;
      window.distanceMax = Math.max(window.distanceMax, distance);
    }
  }

  /** The open windows' shadow counts per key (for the app's own view; the report carries samples and agreement). */
  shadowSnapshot(): ShadowCounts[] {
    return [...this.windows.values()].filter(([, w]) => w.shadowSamples > 0).map(([key, w]) => ({
      key, samples: w.shadowSamples, agree: w.shadowAgree,
      meanDistance: w.distanceSamples ? w.distanceSum / w.distanceSamples : null,
      maxDistance: w.distanceSamples ? w.distanceMax : null,
    }));
  }

  /** End every window: one report per non-empty one (all sharing `window_end`). */
  close(nowMs?: number): Report[] {
    const closedAt = nowMs ?? this.nowMs();
    const rss = this.peakRssBytes();
    const closed = this.windows;
    this.windows = new Map();
    this.last = null;
    const reports: Report[] = [];
    for (const [text, [key, window]] of closed) {
      if (isEmpty(window)) continue;
      reports.push(toReport(key, window, closedAt, rss, this.newId()));
      this.windows.set(text, [key, openWindow(closedAt)]);
    }
    return reports;
  }
}

function toReport(key: WindowKey, w: Window, closedAtMs: number, rss: number | null, id: string): Report {
  const report: Report = {
    id, model: key.model, version: key.version, variant: key.variant, rollout_id: key.rolloutId, cohort: key.cohort,
    window_start: isoUtc(w.openedAtMs), window_end: isoUtc(Math.max(closedAtMs, w.openedAtMs)),
    inferences: w.inferences, errors: { ...w.errors }, schema: REPORT_SCHEMA, latency: w.latency.toWire(),
    latency_sum_seconds: w.latencySumSeconds, labelled: w.labelled, correct: w.correct,
    shadow_samples: w.shadowSamples, shadow_agree: w.shadowAgree, dropped_windows: 0,
  };
  if (rss !== null && rss > 0) report.peak_rss_bytes = Math.round(rss);
  return report;
}

/** Unix ms as the ISO 8601 UTC time the reference agent sends (`2026-01-01T00:00:00.123000+00:00`). */
export function isoUtc(unixMs: number): string {
  const whole = Math.floor(unixMs);
  const micro = Math.min(999, Math.round((unixMs - whole) * 1000));
  return new Date(whole).toISOString().replace(/\.(\d{3})Z$/, (_, ms: string) => `.${ms}${String(micro).padStart(3, "0")}+00:00`);
}

/** A report id: uuid4 as 32 hex digits, from `randomBytes`. */
export function newReportId(randomBytes: (n: number) => Uint8Array): string {
  const b = randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  return toHex(b);
}
