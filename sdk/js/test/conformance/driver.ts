/**
 * The SDK behind the conformance kit's driver protocol (docs/conformance.md): one device per
 * process, one JSON command per stdin line, one JSON answer per stdout line, logs on stderr.
 *
 *     node build/conformance/test/conformance/driver.js --server http://127.0.0.1:8080 \
 *       --model digits-cnn --trusted-key publisher.pub --state-dir /tmp/dev1 --enroll-token-file token.txt
 *
 * Built by `npm run build:conformance`. Without `--check-interval-seconds` the agent checks in
 * only on the kit's `check_in` (`checkIntervalMs: null`); its windows close and its reports go
 * out on its own timer as in any app, and `close_window` / `deliver` force them.
 */

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import * as ort from "onnxruntime-node";

import { nodePlatform } from "../../src/adapters/node.js";
import { EdgeshipAgent, type AgentStatus } from "../../src/agent.js";
import { InferenceError, NoModel } from "../../src/errors.js";
import { onnxRuntime } from "../../src/runtime.js";

type Tensor = ort.Tensor;

interface WireArray {
  dtype: string;
  shape: number[];
  data: string;
}

const TYPED: Record<string, (buffer: ArrayBuffer) => ArrayLike<unknown>> = {
  float32: (b) => new Float32Array(b),
  float64: (b) => new Float64Array(b),
  int32: (b) => new Int32Array(b),
  int64: (b) => new BigInt64Array(b),
  uint8: (b) => new Uint8Array(b),
  int8: (b) => new Int8Array(b),
};

function decodeArray(value: WireArray): Tensor {
  const make = TYPED[value.dtype];
  if (make === undefined) throw new RangeError(`dtype ${value.dtype} is not supported by this driver`);
  const bytes = Buffer.from(value.data, "base64");
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength); // aligned copy
  return new ort.Tensor(value.dtype as "float32", make(buffer) as Float32Array, value.shape);
}

function encodeArray(tensor: Tensor): WireArray {
  const data = tensor.data as ArrayBufferView;
  return { dtype: tensor.type, shape: [...tensor.dims],
    data: Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("base64") };
}

function wireStatus(status: AgentStatus): Record<string, unknown> {
  return { device_id: status.deviceId, version: status.version, variant: status.variant, cohort: status.cohort,
    rollout_id: status.rolloutId, outbox: status.outbox, revoked: status.revoked, pending: status.pending };
}

function firstLine(path: string): string {
  return readFileSync(path, "utf8").split(/\r?\n/).map((l) => l.trim()).find((l) => l !== "") ?? "";
}

async function answer(agent: EdgeshipAgent<Tensor>, request: Record<string, unknown>): Promise<Record<string, unknown>> {
  switch (request["cmd"]) {
    case "status":
      return { status: wireStatus(agent.status()) };
    case "check_in":
      await agent.checkIn();
      return { status: wireStatus(agent.status()) };
    case "predict": {
      const inputs = request["inputs"] as Record<string, WireArray>;
      const feeds = Object.fromEntries(Object.entries(inputs).map(([name, value]) => [name, decodeArray(value)]));
      const label = request["label"] as number | undefined;
      try {
        const outputs = await agent.predict(feeds, label === undefined ? {} : { label });
        return { outputs: Object.fromEntries(Object.entries(outputs).map(([name, t]) => [name, encodeArray(t)])) };
      } catch (err) {
        if (err instanceof NoModel) return { error: "no_model", detail: err.message };
        if (err instanceof InferenceError) return { error: "runtime_error", detail: err.message };
        throw err;
      }
    }
    case "close_window":
      await agent.closeWindow();
      return { status: wireStatus(agent.status()) };
    case "deliver":
      return { delivered: await agent.deliver(), status: wireStatus(agent.status()) };
    case "stop": {
      const flushSeconds = typeof request["flush_seconds"] === "number" ? request["flush_seconds"] : 5;
      return { status: wireStatus(await agent.stop(flushSeconds * 1000)) };
    }
    default:
      return { error: "unknown_command", detail: `no command ${JSON.stringify(request["cmd"])}` };
  }
}

function reply(data: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(data)}\n`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      server: { type: "string" },
      model: { type: "string" },
      "trusted-key": { type: "string", multiple: true },
      "state-dir": { type: "string" },
      "enroll-token-file": { type: "string" },
      "ca-file": { type: "string" },
      "device-class": { type: "string", default: "android" },
      "check-interval-seconds": { type: "string" },
      runtimes: { type: "string" },
    },
  });
  const required = ["server", "model", "trusted-key", "state-dir"] as const;
  const absent = required.filter((name) => values[name] === undefined);
  if (absent.length) throw new RangeError(`missing --${absent.join(", --")}`);
  if (values["ca-file"] !== undefined) {
    // fetch (undici) reads extra CAs only at process start: the kit runs this driver with NODE_EXTRA_CA_CERTS
    if (process.env["NODE_EXTRA_CA_CERTS"] !== values["ca-file"]) {
      throw new RangeError("--ca-file needs NODE_EXTRA_CA_CERTS set to the same file");
    }
  }
  const interval = values["check-interval-seconds"];
  const runtime = onnxRuntime(ort, { intraOpNumThreads: 1 });
  // --runtimes: what the device announces instead of what it has (the kit changes it between starts)
  const runtimes = values.runtimes === undefined ? undefined : JSON.parse(values.runtimes) as Record<string, string>;
  const agent = await EdgeshipAgent.start<Tensor>({
    server: values.server!, model: values.model!,
    enrollToken: values["enroll-token-file"] === undefined ? null : firstLine(values["enroll-token-file"]),
    trustedKeys: values["trusted-key"]!.map((file) => readFileSync(file, "utf8")),
    runtime: runtimes === undefined ? runtime : { ...runtime, runtimes },
    ...nodePlatform(values["state-dir"]!, values["device-class"]),
    checkIntervalMs: interval === undefined ? null : Number(interval) * 1000,
    log: (level, message) => process.stderr.write(`${new Date().toISOString()} ${level} ${message}\n`),
  });
  reply({ ready: true, status: wireStatus(agent.status()) });
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let request: Record<string, unknown> = {};
    let result: Record<string, unknown>;
    try {
      request = JSON.parse(line) as Record<string, unknown>;
      result = await answer(agent, request);
    } catch (err) {
      process.stderr.write(`command failed: ${(err as Error).stack ?? err}\n`);
      result = { error: "driver_error", detail: `${(err as Error).name}: ${(err as Error).message}` };
    }
    reply(result);
    if (request["cmd"] === "stop") process.exit(0);
  }
  await agent.stop();
  process.exit(0);
}

main().catch((err: unknown) => {
  process.stderr.write(`conformance driver: ${(err as Error).stack ?? err}\n`);
  process.exit(2);
});
