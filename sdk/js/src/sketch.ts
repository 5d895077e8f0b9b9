/**
 * The latency sketch of report schema 2 (docs/protocol.md §8.3), identical on the wire to
 * `edgeship/contract/sketch.py`.
 *
 * A latency `v` seconds counts in bucket `ceil(log2(v) * 32)`: Prometheus native-histogram
 * buckets (schema 5), each 2.2% wide, so a quantile read from the sketch is within 1.1% of the
 * exact one at any scale, and merging adds counts. Only non-empty buckets are sent.
 */

import { check } from "./errors.js";

export const SKETCH_SCHEMA = 5;
export const INDEX_SCALE = 2 ** SKETCH_SCHEMA;
export const BASE = 2 ** (2 ** -SKETCH_SCHEMA);
export const RELATIVE_ERROR = (BASE - 1) / (BASE + 1);
/** latencies below (above) count as this bound. */
export const MIN_SECONDS = 1e-6;
export const MAX_SECONDS = 100.0;
export const MIN_INDEX = Math.ceil(Math.log2(MIN_SECONDS) * INDEX_SCALE);
export const MAX_INDEX = Math.ceil(Math.log2(MAX_SECONDS) * INDEX_SCALE);

/** The wire form: `{"schema": 5, "buckets": [[index, count], ...]}`, by index. */
export interface SketchWire {
  schema: number;
  buckets: [number, number][];
}

/**
 * The bucket `seconds` falls in, clamped to [MIN_INDEX, MAX_INDEX].
 *
 * @throws RangeError for NaN.
 */
export function bucketOf(seconds: number): number {
  if (seconds > MIN_SECONDS && seconds < MAX_SECONDS) return Math.ceil(Math.log2(seconds) * INDEX_SCALE);
  if (seconds >= MAX_SECONDS) return MAX_INDEX;
  if (seconds <= MIN_SECONDS) return MIN_INDEX;
  throw new RangeError(`latency ${seconds} is not a number`);
}

/** The value a bucket stands for: within RELATIVE_ERROR of anything in it. */
export function bucketValue(index: number): number {
  return (2 * BASE ** index) / (BASE + 1);
}

/** Counts of latencies per log-spaced bucket. */
export class LatencySketch {
  readonly counts = new Map<number, number>();

  add(seconds: number, count = 1): void {
    const index = bucketOf(seconds);
    this.counts.set(index, (this.counts.get(index) ?? 0) + count);
  }

  merge(other: LatencySketch): void {
    for (const [index, count] of other.counts) this.counts.set(index, (this.counts.get(index) ?? 0) + count);
  }

  get total(): number {
    return [...this.counts.values()].reduce((sum, count) => sum + count, 0);
  }

  /** The `q` quantile (0..1) in seconds, null when empty; the sample of rank floor(q*(n-1)). */
  quantile(q: number): number | null {
    check(q >= 0 && q <= 1, `quantile ${q} is not in [0, 1]`);
    const total = this.total;
    if (total === 0) return null;
    const rank = Math.floor(q * (total - 1));
    let seen = 0; // ranks are below the total: some bucket reaches past it
    const index = [...this.counts.keys()].sort((a, b) => a - b).find((i) => (seen += this.counts.get(i)!) > rank);
    return bucketValue(index!);
  }

  toWire(): SketchWire {
    const buckets = [...this.counts.entries()]
      .filter(([, c]) => c > 0)
      .sort(([a], [b]) => a - b)
      .map(([i, c]) => [i, c] as [number, number]);
    return { schema: SKETCH_SCHEMA, buckets };
  }

  static fromWire(data: unknown): LatencySketch {
    const wire = data as SketchWire;
    check(wire?.schema === SKETCH_SCHEMA && Array.isArray(wire.buckets), `not a schema ${SKETCH_SCHEMA} latency sketch`);
    const sketch = new LatencySketch();
    for (const pair of wire.buckets) {
      const [index, count] = Array.isArray(pair) ? pair : [];
      check(Number.isInteger(index) && Number.isInteger(count) && index! >= MIN_INDEX && index! <= MAX_INDEX &&
        count! >= 0 && !sketch.counts.has(index!), `latency sketch bucket ${JSON.stringify(pair)} is invalid`);
      if (count) sketch.counts.set(index!, count);
    }
    return sketch;
  }
}
