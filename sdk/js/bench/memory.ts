/**
 * Memory of one fresh Node process (argv[3]: "node", "bare" or "agent"): Node alone, bare
 * onnxruntime-node with the model's session after some runs, or the agent started with the
 * model installed after as many predictions. Prints RSS and V8 heap after a full GC (run with
 * --expose-gc), and the peak RSS.
 */

import { args, bareSession, emit, feeds, startAgent } from "./common.js";

const CALLS = 500;

async function main(): Promise<void> {
  const a = args();
  const mode = process.argv[3];
  let stop = async () => {};
  if (mode === "bare") {
    const session = await bareSession(a);
    const inputs = feeds(a, session.inputNames[0]!);
    for (let i = 0; i < CALLS; i++) await session.run(inputs[i % inputs.length]!);
    stop = async () => {
      await session.release();
    };
  } else if (mode === "agent") {
    const { agent, session } = await startAgent(a);
    const inputs = feeds(a, session.inputNames[0]!);
    for (let i = 0; i < CALLS; i++) await agent.predict(inputs[i % inputs.length]!);
    stop = async () => {
      await agent.stop();
    };
  } else if (mode !== "node") {
    throw new Error(`mode ${mode}: node, bare or agent`);
  }
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((resolve) => setTimeout(resolve, 200));
  const usage = process.memoryUsage();
  emit({ mode, rss_bytes: usage.rss, heap_used_bytes: usage.heapUsed, external_bytes: usage.external,
    array_buffers_bytes: usage.arrayBuffers, peak_rss_bytes: process.resourceUsage().maxRSS * 1024 });
  await stop();
}

await main();
