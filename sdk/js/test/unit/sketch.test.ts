import { describe, expect, it } from "vitest";

import { bucketOf, LatencySketch, MAX_INDEX, MIN_INDEX, RELATIVE_ERROR } from "../../src/sketch.js";
import { PYTHON, runPython } from "../helpers/python.js";

/** Latencies over the whole range, dense near bucket bounds where log2 rounding could differ. */
function samples(): number[] {
  const out: number[] = [1e-6, 100, 1e-7, 1e3, 0, 2 ** -10, 2 ** (-300 / 32), 0.5, 1, 2];
  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let i = 0; i < 5000; i++) out.push(10 ** (-6.5 + random() * 9));
  for (let index = MIN_INDEX; index <= MAX_INDEX; index += 3) {
    const bound = 2 ** (index / 32);
    out.push(bound, bound * (1 + 1e-15), bound * (1 - 1e-15));
  }
  return out;
}

describe("latency sketch (§8.3)", () => {
  it("buckets, clamps and reads quantiles within the relative error", () => {
    expect(bucketOf(1e-9)).toBe(MIN_INDEX);
    expect(bucketOf(1e9)).toBe(MAX_INDEX);
    expect([MIN_INDEX, MAX_INDEX]).toEqual([-637, 213]);
    expect(() => bucketOf(NaN)).toThrow(RangeError);
    const sketch = new LatencySketch();
    for (const v of [0.0031, 0.0029, 0.009]) sketch.add(v);
    expect(Math.abs(sketch.quantile(0.5)! - 0.0031) / 0.0031).toBeLessThanOrEqual(RELATIVE_ERROR);
    expect(LatencySketch.fromWire(sketch.toWire()).toWire()).toEqual(sketch.toWire());
    expect(() => LatencySketch.fromWire({ schema: 5, buckets: [[999, 1]] })).toThrow(RangeError);
  });

  it.skipIf(PYTHON === null)("encodes the same samples exactly as edgeship/contract/sketch.py", () => {
    const values = samples();
    const sketch = new LatencySketch();
    for (const v of values) sketch.add(v);
    const python = runPython(`
import json, sys
from edgeship.contract.sketch import LatencySketch
sketch = LatencySketch()
sketch.add_all(json.load(sys.stdin))
print(json.dumps(sketch.to_wire()))
`, JSON.stringify(values));
    expect(JSON.stringify(sketch.toWire())).toBe(python.trim().replace(/, /g, ",").replace(/: /g, ":"));
  });
});
