import { describe, expect, it } from "vitest";

import { utf8Encode } from "../../src/bytes.js";
import { Outbox } from "../../src/outbox.js";
import type { Report } from "../../src/window.js";
import { tempStorage } from "../helpers/tmp.js";

function report(id: string, dropped = 0): Report {
  return {
    id, model: "m", version: "1", variant: "v", rollout_id: null, cohort: "stable",
    window_start: "2026-01-01T00:00:00.000000+00:00", window_end: "2026-01-01T00:00:30.000000+00:00", inferences: 1,
    errors: { load_failed: 0, runtime_error: 0, golden_mismatch: 0, timeout: 0, other: 0 }, schema: 2,
    latency: { schema: 5, buckets: [[-254, 1]] }, latency_sum_seconds: 0.004, labelled: 0, correct: 0,
    shadow_samples: 0, shadow_agree: 0, dropped_windows: dropped,
  };
}

describe("the outbox (§9.1)", () => {
  it("keeps reports across a restart until the server acknowledges their ids", async () => {
    const storage = tempStorage();
    const outbox = await Outbox.open(storage);
    await outbox.add([report("a"), report("b")]);
    await outbox.add([report("c")]);
    await outbox.ack(["b"]);
    const reopened = await Outbox.open(storage);
    expect(reopened.take().map((r) => r.id)).toEqual(["a", "c"]);
    await reopened.ack(["a", "c", "unknown"]);
    expect(reopened.length).toBe(0);
    expect((await Outbox.open(storage)).length).toBe(0);
    await expect(reopened.add([report("x"), report("x")])).rejects.toThrow(/already queued/);
    expect(reopened.length).toBe(0); // nothing of a refused batch is stored
  });

  it("drops the oldest beyond its bound and makes the next report carry the loss", async () => {
    const storage = tempStorage();
    const outbox = await Outbox.open(storage, { maxReports: 2 });
    await outbox.add([report("a", 5), report("b"), report("c")]);
    expect(outbox.take().map((r) => r.id)).toEqual(["b", "c"]);
    expect(outbox.dropped).toBe(6); // "a" and the 5 windows it was carrying
    await outbox.noteDropped(1);
    const reopened = await Outbox.open(storage, { maxReports: 10 });
    expect(reopened.dropped).toBe(7);
    await reopened.add([report("d")]);
    expect(reopened.take().find((r) => r.id === "d")!.dropped_windows).toBe(7);
    expect(reopened.dropped).toBe(0);
  });

  it("counts a carried loss once when the app died between the report and the count", async () => {
    const storage = tempStorage();
    const outbox = await Outbox.open(storage);
    await outbox.noteDropped(3);
    await outbox.add([report("a")]);
    // the state of a crash after the report's file was written, before meta.json was updated:
    await storage.writeAtomic("outbox/meta.json", utf8Encode(JSON.stringify({ dropped_pending: 3, last_seq: 0 })));
    const reopened = await Outbox.open(storage);
    expect(reopened.take()[0]!.dropped_windows).toBe(3);
    expect(reopened.dropped).toBe(0);
  });

  it("moves a corrupt file aside and keeps the others", async () => {
    const storage = tempStorage();
    const outbox = await Outbox.open(storage);
    await outbox.add([report("a")]);
    await outbox.add([report("b")]);
    await storage.writeAtomic("outbox/000000000001.json", utf8Encode("{not json"));
    const reopened = await Outbox.open(storage);
    expect(reopened.take().map((r) => r.id)).toEqual(["b"]);
    expect(await storage.list("outbox")).toContain("000000000001.json.corrupt");
  });
});
