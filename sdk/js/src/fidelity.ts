/**
 * The golden rule (docs/protocol.md §6.3), the same arithmetic as
 * `edgeship/contract/fidelity.py`: agreement (top-1 for classification, else the share of rows
 * with cosine ≥ 0.99 over all outputs concatenated, in float64), max absolute error (+∞ when an
 * output is not finite), and the mean cosine.
 */

import { check } from "./errors.js";

/** non-classification outputs agree when their cosine similarity is at least this. */
export const AGREEMENT_COSINE = 0.99;

/** A flat array in C order with its shape (rows on axis 0). */
export interface Array2 {
  data: ArrayLike<number | bigint>;
  shape: readonly number[];
}

export interface Fidelity {
  agreement: number;
  maxAbsErr: number;
  cosine: number;
}

const rowsOf = (a: Array2): number => a.shape[0] ?? 1;
const sizeOf = (a: Array2): number => a.shape.reduce((x, y) => x * y, 1);
const at = (a: Array2, i: number): number => Number(a.data[i]);

/** Arg-max per row (first maximum, as numpy). */
export function top1(a: Array2): number[] {
  const rows = rowsOf(a);
  const width = rows ? sizeOf(a) / rows : 0;
  const out: number[] = [];
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let k = 1; k < width; k++) if (at(a, r * width + k) > at(a, r * width + best)) best = k;
    out.push(best);
  }
  return out;
}

/** Cosine per row over all outputs concatenated; 1 where both rows are zero, 0 where one is. */
export function perSampleCosine(a: Array2[], b: Array2[], rows: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < rows; r++) {
    let [dot, na, nb] = [0, 0, 0];
    a.forEach((x, k) => {
      const y = b[k]!;
      const width = sizeOf(x) / rows;
      for (let i = r * width; i < (r + 1) * width; i++) {
        const [u, v] = [at(x, i), at(y, i)];
        dot += u * v;
        na += u * u;
        nb += v * v;
      }
    });
    const [normA, normB] = [Math.sqrt(na), Math.sqrt(nb)];
    let cos = normA * normB > 0 ? dot / (normA * normB) : 0;
    if (normA === 0 && normB === 0) cos = 1;
    out.push(Math.min(1, Math.max(-1, cos)));
  }
  return out;
}

/**
 * Agreement, max abs error and mean cosine of `outputs` against `reference` (same order).
 * Outputs take the reference's shape (element counts must match).
 *
 * @throws RangeError when the output count or an output's size differs.
 */
export function fidelity(outputs: Array2[], reference: Array2[], classification: boolean,
                         agreementCosine = AGREEMENT_COSINE): Fidelity {
  check(outputs.length === reference.length, `variant has ${outputs.length} outputs, reference has ${reference.length}`);
  outputs.forEach((o, i) => check(sizeOf(o) === sizeOf(reference[i]!),
    `output ${i}: shape [${o.shape}] differs from reference [${reference[i]!.shape}]`));
  const reshaped = outputs.map((o, i) => ({ data: o.data, shape: reference[i]!.shape }));
  const rows = rowsOf(reference[0]!);
  const cosine = perSampleCosine(reshaped, reference, rows);
  let agreement: number;
  if (classification) {
    const [mine, theirs] = [top1(reshaped[0]!), top1(reference[0]!)];
    agreement = mine.filter((c, i) => c === theirs[i]).length / rows;
  } else {
    agreement = cosine.filter((c) => c >= agreementCosine).length / rows;
  }
  let maxAbsErr = 0;
  let finite = true;
  reshaped.forEach((o, k) => {
    const r = reference[k]!;
    for (let i = 0; i < sizeOf(o); i++) {
      const v = at(o, i);
      if (!Number.isFinite(v)) finite = false;
      maxAbsErr = Math.max(maxAbsErr, Math.abs(v - at(r, i)));
    }
  });
  if (!finite) maxAbsErr = Infinity;
  return { agreement, maxAbsErr, cosine: cosine.reduce((s, c) => s + c, 0) / rows };
}
