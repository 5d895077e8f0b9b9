/**
 * The golden probe (docs/protocol.md §6; reference `edge_agent/golden.py`): a new model runs
 * the release's probe set and must agree with the reference outputs as well as the converter
 * measured, minus a small slack, with finite outputs, before it may be swapped in.
 */

import { check } from "./errors.js";
import { fidelity, type Array2 } from "./fidelity.js";
import type { Manifest, VariantEntry } from "./manifest.js";
import { readNpz, type NdArray } from "./npz.js";
import type { ModelRuntime, RuntimeSession } from "./runtime.js";

export interface GoldenSet {
  inputs: Map<string, NdArray>;
  outputs: NdArray[];
}

export interface GoldenResult {
  passed: boolean;
  agreement: number;
  required: number;
  maxAbsErr: number;
  /** why it failed; "" when it passed */
  reason: string;
}

/**
 * The probe arrays the model needs, from `golden.npz` bytes.
 *
 * @throws RangeError when an input or output is missing or the file is not an npz.
 */
export function loadGolden(bytes: Uint8Array, inputNames: string[], outputNames: string[]): GoldenSet {
  const arrays = readNpz(bytes);
  const get = (name: string): NdArray => {
    const array = arrays.get(name);
    check(array, `golden set lacks ${name}`);
    return array;
  };
  return {
    inputs: new Map(inputNames.map((n) => [n, get(`input:${n}`)])),
    outputs: outputNames.map((n) => get(`output:${n}`)),
  };
}

/** Run the model over the probe inputs, `batch` rows at a time (a remainder is not run), outputs stacked. */
export async function runProbe<T>(session: RuntimeSession<T>, runtime: ModelRuntime<T>, golden: GoldenSet,
                                  outputNames: string[], batch: number): Promise<Array2[]> {
  const rows = [...golden.inputs.values()][0]?.shape[0] ?? 0;
  const chunks: Array2[][] = [];
  for (let start = 0; start + batch <= rows; start += batch) {
    const feeds: Record<string, T> = {};
    for (const [name, array] of golden.inputs) feeds[name] = runtime.tensor(sliceRows(array, start, batch));
    const result = await session.run(feeds);
    chunks.push(outputNames.map((name) => {
      const tensor = result[name];
      check(tensor !== undefined, `no output ${name}`);
      return runtime.read(tensor);
    }));
  }
  check(chunks.length, `golden set: ${rows} rows < batch of ${batch}`);
  return outputNames.map((_, k) => stackRows(chunks.map((c) => c[k]!)));
}

/** Compare probe outputs with the reference (§6.3). */
export function checkGolden(outputs: Array2[], golden: GoldenSet, classification: boolean,
                            expectedAgreement: number, slack: number): GoldenResult {
  const rows = outputs[0]?.shape[0] ?? 0;
  const reference = golden.outputs.map((r) => sliceRows(r, 0, rows));
  const required = Math.max(0, Math.min(1, expectedAgreement) - slack);
  let [agreement, maxAbsErr, reason] = [0, Infinity, ""];
  try {
    ({ agreement, maxAbsErr } = fidelity(outputs, reference, classification));
    if (!Number.isFinite(maxAbsErr)) reason = "outputs hold NaN or Inf";
    else if (agreement < required) reason = `golden agreement ${agreement.toFixed(3)} below the required ${required.toFixed(3)}`;
  } catch (err) {
    reason = `outputs do not match the reference: ${(err as Error).message}`;
  }
  return { passed: !reason, agreement, required, maxAbsErr, reason };
}

/** The probe's batch size: `task.inputs[0].shape[0]`, at least 1. */
export function probeBatch(manifest: Manifest): number {
  const first = manifest.task.inputs[0]?.shape[0];
  return typeof first === "number" && first >= 1 ? first : 1;
}

/** The agreement the converter measured for this variant on the probe set; 1.0 when absent. */
export function expectedAgreement(variant: VariantEntry): number {
  const value = variant.metrics?.golden?.agreement;
  return typeof value === "number" ? value : 1.0;
}

function sliceRows(array: NdArray, start: number, count: number): NdArray {
  const width = array.shape.slice(1).reduce((a, b) => a * b, 1);
  const data = array.data.subarray(start * width, (start + count) * width) as NdArray["data"];
  return { dtype: array.dtype, shape: [count, ...array.shape.slice(1)], data };
}

function stackRows(parts: Array2[]): Array2 {
  const data: (number | bigint)[] = [];
  for (const part of parts) for (let i = 0; i < part.data.length; i++) data.push(part.data[i]!);
  const rows = parts.reduce((n, p) => n + (p.shape[0] ?? 1), 0);
  return { data, shape: [rows, ...(parts[0]?.shape.slice(1) ?? [])] };
}
