import { describe, expect, it } from "vitest";

import { WindowSet, type WindowKey } from "../../src/window.js";

const key = (over: Partial<WindowKey> = {}): WindowKey =>
  ({ model: "m", version: "1", variant: "onnx-fp32", rolloutId: null, cohort: "stable", ...over });

function counts(windows: WindowSet): Record<string, number> {
  return Object.fromEntries(windows.close(0).map((r) => [`${r.version}/${r.cohort}/${r.rollout_id}`, r.inferences]));
}

// WindowSet finds the last key's window by its fields, without the key text (predict's hot path)
describe("window recording", () => {
  it("counts by the key's fields, whichever object carries them", () => {
    const windows = new WindowSet(() => 0, () => "id");
    const stable = key();
    windows.recordInference(stable, 0.001);
    windows.recordInference(key(), 0.001); // equal fields, another object: the same window
    windows.recordInference(key({ cohort: "canary", rolloutId: 7 }), 0.001);
    windows.recordInference(stable, 0.001); // back to the first key
    windows.recordInference(key({ version: "2" }), 0.001);
    expect(counts(windows)).toEqual({ "1/stable/null": 3, "1/canary/7": 1, "2/stable/null": 1 });
  });

  it("does not count into the old window after a key object changes", () => {
    const windows = new WindowSet(() => 0, () => "id");
    const mutable = { ...key() };
    windows.recordInference(mutable, 0.001);
    mutable.cohort = "canary";
    windows.recordInference(mutable, 0.001);
    // two windows of one inference each (their reports carry the key object as it is now)
    expect(windows.close(0).map((r) => r.inferences)).toEqual([1, 1]);
  });

  it("counts into the new window after close, not the closed one", () => {
    const windows = new WindowSet(() => 0, () => "id");
    const stable = key();
    windows.recordInference(stable, 0.001);
    windows.recordInference(stable, 0.002);
    const [first] = windows.close(1000);
    windows.recordInference(stable, 0.001);
    expect(first!.inferences).toBe(2);
    expect(first!.latency_sum_seconds).toBeCloseTo(0.003, 12);
    expect(counts(windows)).toEqual({ "1/stable/null": 1 });
  });
});
