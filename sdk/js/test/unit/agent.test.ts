import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";

import { NodeFileSecureStore, NodeStorage } from "../../src/adapters/node.js";
import { EdgeshipAgent, type AgentOptions } from "../../src/agent.js";
import { utf8Encode } from "../../src/bytes.js";
import { LatencySketch } from "../../src/sketch.js";
import type { Report } from "../../src/window.js";
import { FakeClock } from "../helpers/fake-clock.js";
import { fakeRuntime, fakeTensor, type FakeTensor } from "../helpers/fake-runtime.js";
import { FakeServer } from "../helpers/fake-server.js";
import { makeRelease, OTHER_SEED, pemOf, TEST_PUBLIC } from "../helpers/release.js";
import { tempDir } from "../helpers/tmp.js";

const INPUT = { image: fakeTensor([[0, 0, 9, 0, 0, 0, 0, 0, 0, 0]]) };

/** An agent on `dir` against `server`, its loop moved only by the test's fake clock. */
async function startAgent(server: FakeServer, dir: string, options: Partial<AgentOptions<FakeTensor>> = {}) {
  const storage = new NodeStorage(dir);
  const clock = (options.clock as FakeClock | undefined) ?? new FakeClock();
  const logs: string[] = [];
  const agent = await EdgeshipAgent.start<FakeTensor>({
    server: "http://127.0.0.1:8080", model: "digits-cnn", enrollToken: "es_enroll", trustedKeys: [pemOf(TEST_PUBLIC)],
    storage, secureStore: new NodeFileSecureStore(storage), runtime: fakeRuntime(),
    device: { deviceClass: "android", arch: "aarch64", os: "Android 14", ramBytes: 4e9 }, http: server, clock,
    checkIntervalMs: null, randomBytes: (n) => new Uint8Array(randomBytes(n)), random: () => 0.5,
    log: (level, message) => logs.push(`${level}: ${message}`), ...options,
  });
  return { agent, clock, logs, storage };
}

function serverWith(...versions: string[]): FakeServer {
  const server = new FakeServer();
  for (const version of versions) server.publish(makeRelease(version));
  server.stable = versions[0] ?? null;
  return server;
}

const requestsTo = (server: FakeServer, pattern: RegExp) => server.requests.filter((r) => pattern.test(r.url)).length;

/** inferences = latencies + the inference errors, in every report (§8.2). */
function checkInvariant(reports: Report[]): void {
  for (const r of reports) {
    const latencies = LatencySketch.fromWire(r.latency).total;
    expect(r.inferences).toBe(latencies + r.errors.runtime_error + r.errors.timeout + r.errors.other);
  }
}

describe("EdgeshipAgent against a fake server", () => {
  it("registers once, installs, predicts, and delivers each report exactly once across lost answers and restarts", async () => {
    const server = serverWith("1");
    const dir = tempDir();
    const { agent } = await startAgent(server, dir);
    await agent.checkIn();
    expect(agent.status()).toMatchObject({ version: "1", variant: "onnx-fp32", cohort: "stable", deviceId: "device-1" });
    expect(server.devices.get("device-1")!.registration).toMatchObject({ device_class: "android",
      runtimes: { onnxruntime: "1.31.1" }, ram_bytes: 4e9 });
    for (let i = 0; i < 5; i++) {
      const out = await agent.predict(INPUT, { label: i < 3 ? 2 : 7 });
      expect(Array.from(out["output"]!.data)).toEqual(Array.from(INPUT.image.data));
    }
    await agent.closeWindow();
    server.faults.push({ match: (r) => r.url.endsWith("/v1/reports"), kind: "lose-answer" });
    expect(await agent.deliver()).toBe(false); // stored by the server, the answer lost
    expect(server.reports()).toHaveLength(1);
    expect(agent.status().outbox).toBe(1);

    // the app is killed here; the next start finds the report and the credential
    const again = await startAgent(server, dir);
    expect(again.agent.status()).toMatchObject({ version: "1", outbox: 1, deviceId: "device-1" });
    expect(await again.agent.deliver()).toBe(true); // answered as a duplicate, then acked
    expect(again.agent.status().outbox).toBe(0);
    await again.agent.predict(INPUT);
    await again.agent.stop();
    const reports = server.reports();
    expect(server.devices.size).toBe(1);
    expect(reports.map((r) => r.inferences)).toEqual([5, 1]);
    expect(reports[0]).toMatchObject({ labelled: 5, correct: 3, schema: 2, cohort: "stable", rollout_id: null });
    expect(new Set(reports.map((r) => r.id)).size).toBe(2);
    checkInvariant(reports);
    expect(requestsTo(server, /\/v1\/devices\/register$/)).toBe(1);
  });

  it("polls with If-None-Match and acts on nothing new after a 304", async () => {
    const server = serverWith("1");
    const { agent } = await startAgent(server, tempDir());
    await agent.checkIn();
    const downloads = requestsTo(server, /artifacts/);
    await agent.checkIn();
    const last = server.requests.at(-1)!;
    expect(last.headers["If-None-Match"]).toMatch(/^"[0-9a-f]{32}"$/);
    expect(requestsTo(server, /artifacts/)).toBe(downloads);
    server.publish(makeRelease("2"));
    server.stable = "2";
    server.rolloutId = 7;
    await agent.checkIn();
    expect(agent.status()).toMatchObject({ version: "2", rolloutId: 7 });
  });

  it("refuses a tampered artifact, a golden mismatch and an untrusted signature, reports each once and stays on its model", async () => {
    const server = serverWith("1");
    const { agent, clock } = await startAgent(server, tempDir());
    await agent.checkIn();
    const tampered = makeRelease("2");
    server.publish(tampered);
    server.artifacts.set(tampered.variant.sha256, utf8Encode(JSON.stringify({ shift: 0, version: "X" })));
    server.stable = "2";
    await agent.checkIn();
    expect(agent.status().version).toBe("1");
    const before = requestsTo(server, /artifacts/);
    await agent.checkIn(); // backed off: not fetched again at once
    expect(requestsTo(server, /artifacts/)).toBe(before);
    await clock.advance(601_000);
    await agent.checkIn(); // tried again after the backoff, refused again
    expect(requestsTo(server, /artifacts/)).toBeGreaterThan(before);

    server.publish(makeRelease("3", { shift: 1 }));
    server.stable = "3";
    await agent.checkIn();
    server.publish(makeRelease("4", { seed: OTHER_SEED }));
    server.stable = "4";
    const fetched = requestsTo(server, /artifacts/);
    await agent.checkIn();
    expect(requestsTo(server, /artifacts/)).toBe(fetched); // refused before any download
    await agent.predict(INPUT);
    await agent.stop();

    const reports = server.reports();
    const count = (version: string, reason: keyof Report["errors"]) =>
      reports.filter((r) => r.version === version).reduce((n, r) => n + r.errors[reason], 0);
    expect([count("2", "load_failed"), count("3", "golden_mismatch"), count("4", "load_failed")]).toEqual([2, 1, 1]);
    expect(reports.filter((r) => r.version !== "1").every((r) => r.inferences === 0)).toBe(true);
    expect(reports.filter((r) => r.version === "1").reduce((n, r) => n + r.inferences, 0)).toBe(1);
  });

  it("stops for good when revoked, forgets its credential, and enrolls again only with a new token", async () => {
    const server = serverWith("1");
    const dir = tempDir();
    const { agent, storage } = await startAgent(server, dir);
    await agent.checkIn();
    server.devices.get("device-1")!.revoked = true;
    await agent.checkIn();
    expect(agent.status()).toMatchObject({ revoked: true, deviceId: null, version: "1" });
    expect(await storage.read("secure/edgeship.identity")).toBeNull();
    const seen = server.requests.length;
    await agent.checkIn();
    await agent.closeWindow();
    await agent.deliver();
    expect(server.requests.length).toBe(seen);
    await agent.predict(INPUT); // the installed model keeps answering

    const same = await startAgent(server, dir);
    await same.agent.checkIn();
    expect(same.agent.status().revoked).toBe(true);
    expect(server.requests.length).toBe(seen);
    server.enrollTokens.add("es_new");
    const renewed = await startAgent(server, dir, { enrollToken: "es_new" });
    await renewed.agent.checkIn();
    expect(renewed.agent.status()).toMatchObject({ revoked: false, deviceId: "device-2" });
  });

  it("registers again when the server no longer knows its credential", async () => {
    const server = serverWith("1");
    const { agent, clock } = await startAgent(server, tempDir());
    await agent.checkIn();
    server.devices.clear(); // the server's database was replaced
    await agent.checkIn();
    expect(agent.status().deviceId).toBeNull();
    await clock.advance(2_000); // after the backoff
    await agent.checkIn();
    expect(agent.status().deviceId).toBe("device-1");
  });

  it("waits as long as Retry-After says, and polls on its timer only when canPoll allows", async () => {
    const server = serverWith("1");
    let allowed = false;
    const clock = new FakeClock();
    const { agent } = await startAgent(server, tempDir(), { clock, checkIntervalMs: 10_000, canPoll: () => allowed });
    const settle = () => agent.settled();
    await clock.advance(35_000, settle);
    expect(requestsTo(server, /assignment/)).toBe(0);
    await agent.checkIn(); // the app's own check-in always runs
    expect(agent.status().version).toBe("1");
    allowed = true;
    server.faults.push({ match: (r) => /assignment/.test(r.url), kind: { status: 503, headers: { "Retry-After": "120" },
      body: { error: "database_busy", detail: "busy" } } });
    await clock.advance(10_000, settle);
    const polls = requestsTo(server, /assignment/);
    await clock.advance(115_000, settle);
    expect(requestsTo(server, /assignment/)).toBe(polls); // within the 120 s (to 180 s) the server asked for
    await clock.advance(70_000, settle);
    expect(requestsTo(server, /assignment/)).toBeGreaterThan(polls);
  });

  it("closes windows at the assignment's interval and delivers them on its timer", async () => {
    const server = serverWith("1");
    server.reportIntervalSeconds = 5;
    const clock = new FakeClock();
    const { agent } = await startAgent(server, tempDir(), { clock, checkIntervalMs: 60_000 });
    const settle = () => agent.settled();
    await clock.advance(1, settle);
    expect(agent.status().version).toBe("1");
    for (let second = 0; second < 20; second++) {
      await agent.predict(INPUT);
      await clock.advance(1_000, settle);
    }
    await clock.advance(5_000, settle);
    const reports = server.reports();
    expect(reports.reduce((n, r) => n + r.inferences, 0)).toBe(20);
    expect(reports.length).toBeGreaterThanOrEqual(4);
    for (const r of reports) expect(Date.parse(r.window_end) - Date.parse(r.window_start)).toBeLessThanOrEqual(5_001);
    checkInvariant(reports);
  });

  it("falls back at start to the last good model when the current one's file is corrupt", async () => {
    const server = serverWith("1");
    server.publish(makeRelease("2"));
    const dir = tempDir();
    const { agent, storage } = await startAgent(server, dir);
    await agent.checkIn();
    server.stable = "2";
    await agent.checkIn();
    expect(agent.status().version).toBe("2");
    await agent.stop();
    const v2 = makeRelease("2").variant.sha256;
    await storage.writeAtomic(`models/blobs/${v2}`, utf8Encode("bit rot"));
    const restarted = await startAgent(server, dir);
    expect(restarted.agent.status().version).toBe("1");
    await restarted.agent.checkIn(); // and fetches v2 again
    expect(restarted.agent.status().version).toBe("2");
  });

  it("counts a runtime failure as an inference error without a latency", async () => {
    const server = serverWith("1");
    let fail = false;
    const { agent } = await startAgent(server, tempDir(), { runtime: fakeRuntime({ failRun: () => fail }) });
    await agent.checkIn();
    fail = true;
    await expect(agent.predict(INPUT)).rejects.toThrow(/runtime exploded/);
    fail = false;
    await agent.predict(INPUT);
    await agent.stop();
    const [report] = server.reports();
    expect(report).toMatchObject({ inferences: 2, errors: { runtime_error: 1 } });
    checkInvariant(server.reports());
  });
});

describe("EdgeshipAgent and device admission (§2)", () => {
  it("waits while pending as long as the server says, keeps its identity, and runs once accepted", async () => {
    const server = serverWith("1");
    server.admission = "manual";
    const clock = new FakeClock();
    const { agent } = await startAgent(server, tempDir(), { clock, checkIntervalMs: 10_000 });
    const settle = () => agent.settled();
    await clock.advance(1, settle);
    expect(agent.status()).toMatchObject({ pending: true, version: null, deviceId: "device-1" });
    const polls = requestsTo(server, /assignment/);
    await clock.advance(25_000, settle); // Retry-After: 30
    expect(requestsTo(server, /assignment/)).toBe(polls);
    delete server.devices.get("device-1")!.state; // an operator accepts it
    await clock.advance(10_000, settle);
    expect(agent.status()).toMatchObject({ pending: false, version: "1", deviceId: "device-1" });
    expect(server.devices.size).toBe(1);
  });

  it("stops for good when rejected", async () => {
    const server = serverWith("1");
    server.admission = "manual";
    const { agent } = await startAgent(server, tempDir());
    await agent.checkIn();
    server.devices.get("device-1")!.state = "rejected";
    await agent.checkIn();
    expect(agent.status()).toMatchObject({ revoked: true, deviceId: null });
  });

  it("rotates its credential when asked, storing the new one before using it", async () => {
    const server = serverWith("1");
    const dir = tempDir();
    const { agent } = await startAgent(server, dir);
    await agent.checkIn();
    server.rotateHint = true;
    await agent.checkIn();
    server.rotateHint = false;
    const device = server.devices.get("device-1")!;
    expect(device.credential).toBe("es_device_1_rotated");
    await agent.checkIn();
    expect(server.requests.at(-1)!.headers["Authorization"]).toBe("Bearer es_device_1_rotated");
    expect(device.previous).toBeUndefined(); // the old credential ended with the first use of the new one
    const restarted = await startAgent(server, dir);
    await restarted.agent.checkIn();
    expect(restarted.agent.status()).toMatchObject({ deviceId: "device-1", version: "1" });
  });
});

describe("EdgeshipAgent when storage fails", () => {
  it("keeps closed windows in memory while the disk is full and stores them once it is not", async () => {
    const server = serverWith("1");
    const dir = tempDir();
    const storage = new NodeStorage(dir);
    let full = false;
    const flaky = Object.assign(Object.create(storage) as NodeStorage, {
      writeAtomic: (path: string, data: Uint8Array) =>
        full && path.startsWith("outbox/") ? Promise.reject(new Error("ENOSPC: no space left on device"))
          : storage.writeAtomic(path, data),
    });
    const { agent } = await startAgent(server, dir, { storage: flaky, secureStore: new NodeFileSecureStore(storage) });
    await agent.checkIn();
    await agent.predict(INPUT);
    full = true;
    await agent.closeWindow();
    expect(agent.status().outbox).toBe(0);
    await agent.predict(INPUT);
    full = false;
    await agent.closeWindow();
    expect(agent.status().outbox).toBe(2);
    await agent.stop();
    expect(server.reports().reduce((n, r) => n + r.inferences, 0)).toBe(2);
  });
});
