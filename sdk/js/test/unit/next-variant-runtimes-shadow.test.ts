/**
 * The protocol parts the SDK shares with the reference agent since issue 20's second increment:
 * the next variant after a refusal (§7.4), runtimes re-announced (§3.7), shadow rollouts (§7.3),
 * and the refusal of integer-quantized I/O on onnxruntime.
 */

import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";

import { NodeFileSecureStore, NodeStorage } from "../../src/adapters/node.js";
import { EdgeshipAgent, type AgentOptions } from "../../src/agent.js";
import { VariantBackoff } from "../../src/backoff.js";
import { utf8Encode } from "../../src/bytes.js";
import { RefusedVariants } from "../../src/refusals.js";
import { onnxRuntime, type OrtModule, type OrtTensor } from "../../src/runtime.js";
import type { Report } from "../../src/window.js";
import { FakeClock } from "../helpers/fake-clock.js";
import { fakeRuntime, fakeTensor, type FakeTensor } from "../helpers/fake-runtime.js";
import { FakeServer } from "../helpers/fake-server.js";
import { makeRelease, pemOf, TEST_PUBLIC } from "../helpers/release.js";
import { tempDir } from "../helpers/tmp.js";

const INPUT = { image: fakeTensor([[0, 0, 9, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]]) };

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
  return { agent, clock, logs };
}

const assignmentPolls = (server: FakeServer) =>
  server.requests.filter((r) => /\/assignment\?/.test(r.url)).map((r) => new URL(r.url));
const artifactGets = (server: FakeServer, sha: string) =>
  server.requests.filter((r) => r.url.endsWith(`/v1/artifacts/${sha}`)).length;
const errorsOf = (reports: Report[], version: string, variant: string) => reports
  .filter((r) => r.version === version && r.variant === variant)
  .reduce((n, r) => ({ load_failed: n.load_failed + r.errors.load_failed,
    golden_mismatch: n.golden_mismatch + r.errors.golden_mismatch, inferences: n.inferences + r.inferences }),
  { load_failed: 0, golden_mismatch: 0, inferences: 0 });

describe("the next variant after a refusal (§7.4)", () => {
  it("asks again in the same check-in with exclude, runs the next variant, and reports the refusal once", async () => {
    const server = new FakeServer();
    server.publish(makeRelease("1"));
    const two = makeRelease("2", { extra: [{ id: "onnx-b" }] });
    server.publish(two);
    server.artifacts.set(two.variant.sha256, utf8Encode(JSON.stringify({ shift: 0, version: "tampered" })));
    server.stable = "1";
    const { agent, clock } = await startAgent(server, tempDir());
    await agent.checkIn();
    server.stable = "2";
    const before = assignmentPolls(server).length;
    await agent.checkIn(); // one check-in
    expect(agent.status()).toMatchObject({ version: "2", variant: "onnx-b", cohort: "stable" });
    const polls = assignmentPolls(server).slice(before);
    expect(polls.map((u) => [u.searchParams.get("exclude_version"), u.searchParams.getAll("exclude")]))
      .toEqual([[null, []], ["2", ["onnx-fp32"]]]);

    await agent.checkIn(); // while backed off, every poll names the refused variant; nothing is fetched again
    expect(assignmentPolls(server).at(-1)!.searchParams.getAll("exclude")).toEqual(["onnx-fp32"]);
    expect(artifactGets(server, two.variant.sha256)).toBe(1);

    await clock.advance(601_000); // the backoff ends: the preferred variant is offered and tried again
    await agent.checkIn();
    expect(artifactGets(server, two.variant.sha256)).toBe(2);
    expect(agent.status().variant).toBe("onnx-b");
    await agent.predict(INPUT);
    await agent.stop();
    const reports = server.reports();
    expect(errorsOf(reports, "2", "onnx-fp32")).toEqual({ load_failed: 2, golden_mismatch: 0, inferences: 0 });
    expect(errorsOf(reports, "2", "onnx-b")).toEqual({ load_failed: 0, golden_mismatch: 0, inferences: 1 });
    expect(reports.every((r) => r.cohort === "stable" && r.rollout_id === null && r.version === "2")).toBe(true);
  });

  it("stops at 409 no_variant when every variant was refused, and keeps serving its model", async () => {
    const server = new FakeServer();
    server.publish(makeRelease("1"));
    server.publish(makeRelease("2", { shift: 1, extra: [{ id: "onnx-b", shift: 2 }] })); // both fail the golden probe
    server.stable = "1";
    const { agent, logs } = await startAgent(server, tempDir());
    await agent.checkIn();
    server.stable = "2";
    const before = assignmentPolls(server).length;
    await agent.checkIn();
    expect(assignmentPolls(server).length - before).toBe(3); // the assigned, the next, then 409
    expect(agent.status()).toMatchObject({ version: "1", variant: "onnx-fp32" });
    await agent.checkIn(); // still nothing left: one more poll, logged once
    expect(logs.filter((l) => l.includes("no variant of v2 ("))).toHaveLength(1);
    await agent.stop();
    const reports = server.reports();
    expect(errorsOf(reports, "2", "onnx-fp32").golden_mismatch).toBe(1);
    expect(errorsOf(reports, "2", "onnx-b").golden_mismatch).toBe(1);
  });

  it("excludes only the variants still backed off, of the release asked about, at most 16", () => {
    const refused = new RefusedVariants(new VariantBackoff(1000));
    const block = (version: string, id: string) => ({ version, variant: { id, sha256: `${version}${id}` } });
    refused.refuse(block("2", "b"), 0);
    refused.refuse(block("2", "a"), 500);
    refused.refuse(block("3", "c"), 0);
    expect(refused.excluded("2", 600)).toEqual(["a", "b"]);
    expect(refused.excluded("2", 1200)).toEqual(["a"]);
    expect(refused.excluded("4", 0)).toEqual([]);
    for (let i = 0; i < 20; i++) refused.refuse(block("5", `v${String(i).padStart(2, "0")}`), 0);
    expect(refused.excluded("5", 1)).toHaveLength(16);
  });
});

describe("runtimes re-announced (§3.7)", () => {
  const withVersion = (version: string) => ({ ...fakeRuntime(), version });

  it("sends PUT …/runtimes before the first poll of a start when they changed, and only then", async () => {
    const server = new FakeServer();
    server.publish(makeRelease("1"));
    server.stable = "1";
    const dir = tempDir();
    const first = await startAgent(server, dir, { runtime: withVersion("1.31.1") });
    await first.agent.checkIn();
    await first.agent.stop();
    const puts = () => server.requests.filter((r) => r.method === "PUT");
    expect(puts()).toHaveLength(0); // just registered with them

    const second = await startAgent(server, dir, { runtime: withVersion("1.32.0") }); // the app updated onnxruntime
    const seen = server.requests.length;
    await second.agent.checkIn();
    const after = server.requests.slice(seen);
    expect(after[0]).toMatchObject({ method: "PUT", url: "http://127.0.0.1:8080/v1/devices/device-1/runtimes" });
    expect(JSON.parse(after[0]!.body!)).toEqual({ runtimes: { onnxruntime: "1.32.0" } });
    expect(after[1]!.url).toMatch(/\/assignment\?/);
    expect(server.devices.get("device-1")!.registration["runtimes"]).toEqual({ onnxruntime: "1.32.0" });
    await second.agent.stop();

    const third = await startAgent(server, dir, { runtime: withVersion("1.32.0") });
    await third.agent.checkIn();
    await third.agent.stop();
    expect(puts()).toHaveLength(1); // unchanged: nothing sent
    expect(server.devices.size).toBe(1);
  });

  it("never holds up the assignment: a server that does not take them is asked again after a backoff", async () => {
    const server = new FakeServer();
    server.publish(makeRelease("1"));
    server.stable = "1";
    const dir = tempDir();
    await (await startAgent(server, dir)).agent.stop();
    await (await startAgent(server, dir)).agent.checkIn(); // registered
    server.faults.push({ match: (r) => r.method === "PUT", kind: { status: 503, headers: { "Retry-After": "30" } } });
    const runtime = { ...fakeRuntime(), runtimes: { onnxruntime: "1.31.1", litert: "1.4.0" } };
    const { agent, clock } = await startAgent(server, dir, { runtime });
    await agent.checkIn();
    expect(agent.status().version).toBe("1");
    expect(server.devices.get("device-1")!.registration["runtimes"]).toEqual({ onnxruntime: "1.31.1" });
    await agent.checkIn(); // before the backoff: not asked again
    expect(server.requests.filter((r) => r.method === "PUT")).toHaveLength(1);
    await clock.advance(60_000);
    await agent.checkIn();
    expect(server.requests.filter((r) => r.method === "PUT")).toHaveLength(2);
    expect(server.devices.get("device-1")!.registration["runtimes"]).toEqual({ onnxruntime: "1.31.1", litert: "1.4.0" });
    await agent.stop();
  });
});

describe("shadow rollouts (§7.3)", () => {
  it("runs the candidate beside the model on sample_share of inputs and counts agreement in the live window", async () => {
    const server = new FakeServer();
    server.publish(makeRelease("1"));
    server.publish(makeRelease("2"));
    server.stable = "1";
    server.shadow = { version: "2", sampleShare: 0.5 };
    let draw = 0;
    const draws = [0.1, 0.9, 0.3, 0.7]; // under 0.5: compared
    const { agent } = await startAgent(server, tempDir(), { random: () => draws[draw++ % draws.length]! });
    await agent.checkIn();
    expect(agent.status()).toMatchObject({ version: "1", shadow: "onnx-fp32" });
    for (let i = 0; i < 4; i++) {
      const out = await agent.predict(INPUT);
      expect(Array.from(out["output"]!.data)).toEqual(Array.from(INPUT.image.data)); // the live model answers
    }
    await agent.shadow.idle();
    const [counts] = agent.windows.shadowSnapshot();
    expect(counts).toMatchObject({ samples: 4, agree: 4, meanDistance: 0, maxDistance: 0 }); // 2 inputs × 2 rows
    server.shadow = null;
    await agent.checkIn();
    expect(agent.status().shadow).toBeNull();
    await agent.predict(INPUT);
    await agent.stop();
    const reports = server.reports();
    expect(reports.filter((r) => r.version === "2")).toEqual([]); // the candidate never reports
    const live = reports.filter((r) => r.version === "1");
    expect(live.reduce((n, r) => [n[0]! + r.shadow_samples, n[1]! + r.shadow_agree, n[2]! + r.inferences], [0, 0, 0]))
      .toEqual([4, 4, 5]);
  });

  it("counts a disagreeing candidate, and only logs a candidate that cannot load", async () => {
    const server = new FakeServer();
    server.publish(makeRelease("1"));
    const bad = makeRelease("3", { shift: 1 }); // fails its golden probe
    server.publish(bad);
    server.stable = "1";
    server.shadow = { version: "3", sampleShare: 1 };
    const { agent, logs } = await startAgent(server, tempDir());
    await agent.checkIn();
    expect(agent.status().shadow).toBeNull();
    expect(logs.some((l) => l.includes("shadow candidate onnx-fp32 not loaded"))).toBe(true);
    await agent.checkIn(); // backed off: not downloaded again
    expect(artifactGets(server, bad.variant.sha256)).toBe(1);
    await agent.stop();
    expect(server.reports().filter((r) => r.version === "3")).toEqual([]);

    // a candidate whose answers differ from the live model's (compared directly: same runner, other model)
    const windows = agent.windows;
    const key = { model: "digits-cnn", version: "1", variant: "onnx-fp32", rolloutId: null, cohort: "stable" as const };
    const runtime = fakeRuntime();
    const session = await runtime.load({ bytes: async () => utf8Encode(JSON.stringify({ shift: 1 })) }, {} as never);
    const { ShadowRunner } = await import("../../src/shadow.js");
    const shadow = new ShadowRunner(windows, runtime);
    const candidate = { session, outputNames: ["output"], classification: true, release: { variant: { id: "x" } } };
    await shadow.compare(candidate as never, key, INPUT, INPUT.image);
    expect(windows.shadowSnapshot()[0]).toMatchObject({ samples: 2, agree: 0, maxDistance: 9 });
  });
});

describe("integer-quantized I/O on onnxruntime", () => {
  it("refuses such a variant with a reason that says why", async () => {
    const ort = {
      InferenceSession: { create: async () => ({ run: async () => ({}), release: async () => {} }) },
      Tensor: class { constructor(readonly type: string, readonly data: unknown, readonly dims: readonly number[]) {} },
      env: { versions: { common: "1.31.1" } },
    } as unknown as OrtModule<OrtTensor>;
    const runtime = onnxRuntime(ort);
    const io = { inputs: [{ name: "image", dtype: "int8", scale: 0.02, zero_point: -3 }], outputs: [] };
    await expect(runtime.load({ bytes: async () => new Uint8Array() }, { id: "int8", io } as never))
      .rejects.toThrow(/integer-quantized I\/O .* only for TFLite variants/);
    await expect(runtime.load({ bytes: async () => new Uint8Array() }, { id: "fp32", io: null } as never))
      .resolves.toBeDefined();
  });
});
