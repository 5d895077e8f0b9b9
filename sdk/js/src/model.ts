/**
 * A verified, loaded model, and {@link loadModel}, which does everything that may fail (runtime
 * load, golden probe) before one exists: the agent swaps in only finished, checked models.
 */

import { firstLine, loadFailed, ModelRefused } from "./errors.js";
import { checkGolden, expectedAgreement, loadGolden, probeBatch, runProbe, type GoldenResult } from "./golden.js";
import type { Release } from "./manifest.js";
import type { ModelRuntime, ModelSource, RuntimeSession } from "./runtime.js";

/** Free a model's native session; a failure to free is of no consequence to anyone. */
export const releaseModel = <T>(model: LoadedModel<T>): Promise<void> => model.session.release().catch(() => {});

export interface LoadedModel<T> {
  release: Release;
  session: RuntimeSession<T>;
  inputNames: string[];
  outputNames: string[];
  classification: boolean;
  golden: GoldenResult;
  /** seconds the runtime took to load the file (golden probe not included) */
  loadSeconds: number;
}

/**
 * Load a model file (already checked against the release's sha256 and size) and probe it.
 *
 * @throws ModelRefused `load_failed` when the runtime refuses the file or its format,
 *   `golden_mismatch` when the probe fails or cannot run.
 */
export async function loadModel<T>(release: Release, source: ModelSource, goldenBytes: Uint8Array,
                                   runtime: ModelRuntime<T>, slack: number,
                                   monotonicMs: () => number): Promise<LoadedModel<T>> {
  const { manifest, variant } = release;
  if (!runtime.formats.includes(variant.format)) {
    throw loadFailed(`${variant.id}: ${runtime.name} does not load format ${variant.format}`);
  }
  const inputNames = manifest.task.inputs.map((i) => i.name);
  const outputNames = manifest.task.outputs.map((o) => o.name);
  const started = monotonicMs();
  let session: RuntimeSession<T>;
  try {
    session = await runtime.load(source, variant);
  } catch (err) {
    throw loadFailed(`${variant.id}: runtime load failed: ${firstLine(err)}`);
  }
  const loadSeconds = (monotonicMs() - started) / 1000;
  const classification = manifest.task.kind === "classification";
  let golden: GoldenResult;
  try {
    const probeSet = loadGolden(goldenBytes, inputNames, outputNames);
    const outputs = await runProbe(session, runtime, probeSet, outputNames, probeBatch(manifest));
    golden = checkGolden(outputs, probeSet, classification, expectedAgreement(variant), slack);
  } catch (err) {
    golden = { passed: false, agreement: 0, required: 0, maxAbsErr: Infinity, reason: `probe failed: ${firstLine(err)}` };
  }
  if (!golden.passed) {
    await session.release().catch(() => {});
    throw new ModelRefused("golden_mismatch", `${variant.id} v${release.version}: ${golden.reason}`);
  }
  return { release, session, inputNames, outputNames, classification, golden, loadSeconds };
}
