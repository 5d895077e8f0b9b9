/**
 * The SDK against the real Python rollout server, with the real converted digits CNN on
 * onnxruntime-node: register, assignment, signature, download, golden probe, predict, reports.
 */

import { readFileSync } from "node:fs";
import * as ort from "onnxruntime-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import { nodePlatform } from "../../src/adapters/node.js";
import { EdgeshipAgent, type AgentOptions } from "../../src/agent.js";
import { readNpz } from "../../src/npz.js";
import { onnxRuntime } from "../../src/runtime.js";
import { LatencySketch } from "../../src/sketch.js";
import { PYTHON } from "../helpers/python.js";
import { tempDir } from "../helpers/tmp.js";
import { ServerFixture } from "./fixture.js";

type Tensor = ort.Tensor;

describe.skipIf(PYTHON === null)("EdgeshipAgent against the real server and onnxruntime-node", () => {
  let fixture: ServerFixture;
  let images: Float32Array;
  let labels: BigInt64Array;

  beforeAll(async () => {
    fixture = await ServerFixture.start();
    const data = readNpz(new Uint8Array(readFileSync(fixture.info.eval)));
    images = data.get("image")!.data as Float32Array;
    labels = data.get("labels")!.data as BigInt64Array;
  }, 900_000);

  afterAll(async () => {
    await fixture?.stop();
  }, 60_000);

  async function start(dir: string, options: Partial<AgentOptions<Tensor>> = {}) {
    const platform = nodePlatform(dir, "android");
    const logs: string[] = [];
    const agent = await EdgeshipAgent.start<Tensor>({
      server: fixture.info.url, model: fixture.info.model, enrollToken: fixture.info.enroll,
      trustedKeys: [fixture.info.public_key], runtime: onnxRuntime(ort), ...platform, checkIntervalMs: null,
      log: (level, message) => logs.push(`${level}: ${message}`), ...options,
    });
    return { agent, logs };
  }

  const image = (i: number) => ({ image: new ort.Tensor("float32", images.slice((i % 450) * 64, (i % 450 + 1) * 64),
    [1, 1, 8, 8]) });

  async function feed(agent: EdgeshipAgent<Tensor>, count: number, from = 0): Promise<number> {
    let correct = 0;
    for (let i = from; i < from + count; i++) {
      const out = await agent.predict(image(i), { label: labels[i % 450]! });
      const scores = out["output"]!.data as Float32Array;
      correct += scores.indexOf(Math.max(...scores)) === Number(labels[i % 450]) ? 1 : 0;
    }
    return correct;
  }

  it("installs the signed stable release, predicts, and the server holds each report once", async () => {
    const { agent, logs } = await start(tempDir(), { checkIntervalMs: 500 });
    await agent.ready();
    expect(agent.status()).toMatchObject({ version: "1", variant: "onnx-fp32", cohort: "stable" });
    const correct = await feed(agent, 60);
    expect(correct / 60).toBeGreaterThan(0.8); // the real model, on real inputs
    const final = await agent.stop();
    expect(final.outbox).toBe(0);
    const rows = await fixture.reports(final.deviceId!);
    expect(rows.reduce((n, r) => n + r.inferences, 0)).toBe(60);
    expect(rows.reduce((n, r) => n + r.labelled, 0)).toBe(60);
    expect(rows.reduce((n, r) => n + r.correct, 0)).toBe(correct);
    expect(rows.reduce((n, r) => n + LatencySketch.fromWire(JSON.parse(r.latency_sketch!)).total, 0)).toBe(60);
    expect(new Set(rows.map((r) => r.report_id)).size).toBe(rows.length);
    expect(rows.every((r) => r.variant_id === "onnx-fp32" && r.cohort === "stable")).toBe(true);
    expect(rows.every((r) => r.peak_rss_bytes! > 0 && r.load_seconds! > 0 && r.load_seconds! < 60)).toBe(true);
    expect(logs.filter((l) => l.startsWith("error"))).toEqual([]);
  });

  it("refuses the release whose golden set disagrees, keeps serving v1 and reports the refusal", async () => {
    const { agent } = await start(tempDir());
    await agent.checkIn();
    expect(agent.status().version).toBe("1");
    await fixture.command({ cmd: "set_stable", version: "3" });
    try {
      await agent.checkIn();
      expect(agent.status().version).toBe("1");
      await feed(agent, 3);
    } finally {
      await fixture.command({ cmd: "set_stable", version: "1" });
    }
    const { deviceId } = await agent.stop();
    const rows = await fixture.reports(deviceId!);
    const refusals = rows.filter((r) => r.err_golden_mismatch > 0);
    expect(refusals.map((r) => [r.err_golden_mismatch, r.inferences])).toEqual([[1, 0]]);
    expect(rows.reduce((n, r) => n + r.inferences, 0)).toBe(3);
  });

  it("runs a shadow candidate beside v1 on the sampled inputs and reports the comparisons under v1", async () => {
    const { agent } = await start(tempDir(), { random: () => 0 }); // every predict is sampled
    await agent.checkIn();
    const { id } = await fixture.admin("POST", "/v1/rollouts", { model: fixture.info.model, candidate_version: "2",
      shadow: true, shadow_share: 1, stages: [{ percent: 0.01 }, { percent: 100 }] }) as { id: number };
    try {
      // other server processes see the rollout within ASSIGNMENT_CACHE_SECONDS (1 s)
      for (let i = 0; i < 40 && agent.status().shadow === null; i++) {
        await agent.checkIn();
        if (agent.status().shadow === null) await new Promise((resolve) => setTimeout(resolve, 250));
      }
      expect(agent.status()).toMatchObject({ version: "1", cohort: "stable", rolloutId: id, shadow: "onnx-fp32" });
      await feed(agent, 20);
      await agent.shadow.idle();
    } finally {
      await fixture.admin("POST", `/v1/rollouts/${id}/abort`, { reason: "test over" });
    }
    const { deviceId } = await agent.stop();
    const rows = await fixture.reports(deviceId!);
    const shadowed = rows.filter((r) => r.shadow_samples > 0);
    expect(shadowed.every((r) => r.cohort === "stable" && r.rollout_id === id && r.inferences > 0)).toBe(true);
    expect(shadowed.reduce((n, r) => n + r.shadow_samples, 0)).toBe(20);
    const agree = shadowed.reduce((n, r) => n + r.shadow_agree, 0);
    expect(agree).toBeGreaterThanOrEqual(16); // two trainings of the same CNN mostly agree on real digits
    expect(rows.reduce((n, r) => n + r.err_load_failed + r.err_golden_mismatch, 0)).toBe(0);
  }, 60_000);

  it("delivers every report exactly once across a server outage and an app restart", async () => {
    const dir = tempDir();
    const first = await start(dir);
    await first.agent.checkIn();
    await feed(first.agent, 10);
    await first.agent.closeWindow();
    await fixture.command({ cmd: "stop_server" });
    try {
      expect(await first.agent.deliver()).toBe(false);
      await feed(first.agent, 5, 10);
      const { outbox, deviceId } = await first.agent.stop(0); // the app is closed with the server away
      expect(outbox).toBe(2);
      await fixture.command({ cmd: "start_server" });
      const second = await start(dir);
      expect(second.agent.status()).toMatchObject({ version: "1", outbox: 2, deviceId });
      expect(await second.agent.deliver()).toBe(true);
      await second.agent.stop();
      const rows = await fixture.reports(deviceId!);
      expect(rows.map((r) => r.inferences).sort()).toEqual([10, 5].sort());
    } finally {
      await fixture.command({ cmd: "start_server" }).catch(() => {});
    }
  }, 120_000);

  it("stops on a revoked credential and forgets it", async () => {
    const { agent } = await start(tempDir());
    await agent.checkIn();
    const { deviceId } = agent.status();
    await fixture.admin("POST", `/v1/devices/${deviceId}/revoke`);
    // other server processes see it within ASSIGNMENT_CACHE_SECONDS (1 s): check in until it shows
    for (let i = 0; i < 40 && !agent.status().revoked; i++) {
      await agent.checkIn();
      if (!agent.status().revoked) await new Promise((resolve) => setTimeout(resolve, 250));
    }
    expect(agent.status()).toMatchObject({ revoked: true, deviceId: null });
    await feed(agent, 1); // the installed model keeps answering
    await agent.stop();
  });
});
