/**
 * What the SDK benchmark's Node scripts share: their arguments (one JSON object, argv[2]), an
 * agent started against the benchmark's server with its model installed, and inputs from an
 * eval npz. Driven by benchmarks/sdk_bench.py, which prints the tables.
 */

import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import * as ort from "onnxruntime-node";

import { nodePlatform } from "../src/adapters/node.js";
import { EdgeshipAgent } from "../src/agent.js";
import { readNpz } from "../src/npz.js";
import { onnxRuntime } from "../src/runtime.js";

export interface BenchArgs {
  server: string;
  enroll: string;
  publicKeyPem: string;
  model: string;
  /** the same ONNX file the server hands out (the bare session opens it) */
  modelFile: string;
  evalNpz: string;
  /** onnxruntime intra-op threads, the same on both sides */
  threads: number;
}

export const args = (): BenchArgs => JSON.parse(process.argv[2] ?? "{}") as BenchArgs;

// what onnxRuntime(ort, { intraOpNumThreads }) passes: the bare side is configured the same
export const sessionOptions = (a: BenchArgs) => ({ intraOpNumThreads: a.threads });

/**
 * An agent (state in a fresh directory) that checked in and installed `a.model`, and the
 * onnxruntime session it serves with (the last one it created), so that the bare side can run
 * the very same native session: the paired difference is then the SDK's code alone, not two
 * sessions' placement in memory.
 */
export async function startAgent(a: BenchArgs): Promise<{ agent: EdgeshipAgent<ort.Tensor>; session: ort.InferenceSession; sessionsCreated: number }> {
  const dir = mkdtempSync(path.join(tmpdir(), "edgeship-sdk-bench-"));
  const created: ort.InferenceSession[] = [];
  const watched = {
    Tensor: ort.Tensor, env: ort.env,
    InferenceSession: {
      create: async (model: string | Uint8Array, options: ort.InferenceSession.SessionOptions) => {
        const session = typeof model === "string" ? await ort.InferenceSession.create(model, options)
          : await ort.InferenceSession.create(model, options);
        created.push(session);
        return session;
      },
    },
  };
  const agent = await EdgeshipAgent.start<ort.Tensor>({
    server: a.server, model: a.model, enrollToken: a.enroll, trustedKeys: [a.publicKeyPem],
    runtime: onnxRuntime(watched, { intraOpNumThreads: a.threads }), ...nodePlatform(dir, "bench"),
    checkIntervalMs: null, allowInsecureHttp: true,
  });
  await agent.checkIn();
  await agent.ready();
  if (agent.status().model !== a.model) throw new Error(`the agent runs ${agent.status().model}, not ${a.model}`);
  const session = created.at(-1);
  if (session === undefined) throw new Error("the agent created no onnxruntime session");
  return { agent, session, sessionsCreated: created.length };
}

/** The bare session: the model file opened by onnxruntime-node with the same options. */
export function bareSession(a: BenchArgs): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(a.modelFile, sessionOptions(a));
}

/** Up to `count` single-sample feeds for input `name` from the eval npz (array `name`). */
export function feeds(a: BenchArgs, name: string, count = 64): Record<string, ort.Tensor>[] {
  const array = readNpz(new Uint8Array(readFileSync(a.evalNpz))).get(name);
  if (array === undefined) throw new Error(`${a.evalNpz} has no array ${name}`);
  const [n, ...rest] = array.shape;
  const per = rest.reduce((x, y) => x * y, 1);
  return Array.from({ length: Math.min(count, n!) }, (_, i) => ({
    [name]: new ort.Tensor(array.dtype as "float32", array.data.slice(i * per, (i + 1) * per) as Float32Array, [1, ...rest]),
  }));
}

export function emit(result: unknown): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
