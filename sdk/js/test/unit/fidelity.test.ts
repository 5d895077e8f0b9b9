import { describe, expect, it } from "vitest";

import { fidelity, type Array2 } from "../../src/fidelity.js";
import { checkGolden } from "../../src/golden.js";
import { readNpz } from "../../src/npz.js";
import { PYTHON, runPython } from "../helpers/python.js";

const arr = (rows: number[][]): Array2 => ({ data: rows.flat(), shape: [rows.length, rows[0]!.length] });

describe("the golden rule (§6.3)", () => {
  it("counts top-1 agreement, gates on finite outputs and the required agreement", () => {
    const reference = [arr([[0, 1], [1, 0], [0, 1], [1, 0]])];
    const result = fidelity([arr([[0, 1], [1, 0], [1, 0], [1, 0]])], reference, true);
    expect(result.agreement).toBe(0.75);
    expect(result.maxAbsErr).toBe(1);
    const golden = { inputs: new Map(), outputs: reference.map((r) => ({ dtype: "float32" as const, shape: [...r.shape],
      data: Float32Array.from(r.data as number[]) })) };
    expect(checkGolden([arr([[0, 1], [1, 0], [1, 0], [1, 0]])], golden, true, 0.9, 0.1).passed).toBe(false);
    expect(checkGolden([arr([[0, 1], [1, 0], [1, 0], [1, 0]])], golden, true, 0.8, 0.1).passed).toBe(true);
    expect(checkGolden([arr([[0, 1], [1, 0], [0, NaN], [1, 0]])], golden, true, 0, 0).reason).toMatch(/NaN/);
    expect(checkGolden([arr([[0, 1, 2]])], golden, true, 0, 0).reason).toMatch(/do not match/);
  });

  it.skipIf(PYTHON === null)("measures what edgeship/contract/fidelity.py measures", () => {
    const out = runPython(`
import json, io, base64
import numpy as np
from edgeship.contract.fidelity import fidelity
rng = np.random.default_rng(3)
cases = []
for i in range(40):
    rows, width = int(rng.integers(1, 12)), int(rng.integers(1, 9))
    ref = [rng.normal(size=(rows, width)).astype(np.float32), rng.normal(size=(rows, 3)).astype(np.float32)]
    out = [(r + rng.normal(scale=0.3 * (i % 4), size=r.shape)).astype(np.float32) for r in ref]
    if i % 7 == 0: out[0][0] = 0; ref[0][0] = 0
    if i % 9 == 0: out[1][:] = 0
    buf = io.BytesIO(); np.savez(buf, o0=out[0], o1=out[1], r0=ref[0], r1=ref[1])
    cls, nonc = fidelity(out, ref, True, 0.99), fidelity(out, ref, False, 0.99)
    cases.append({"npz": base64.b64encode(buf.getvalue()).decode(), "cls": cls, "nonc": nonc})
print(json.dumps(cases))
`);
    const cases = JSON.parse(out) as { npz: string; cls: Record<string, number>; nonc: Record<string, number> }[];
    for (const c of cases) {
      const arrays = readNpz(new Uint8Array(Buffer.from(c.npz, "base64")));
      const [o0, o1, r0, r1] = ["o0", "o1", "r0", "r1"].map((k) => arrays.get(k)!);
      for (const [classification, expected] of [[true, c.cls], [false, c.nonc]] as const) {
        const got = fidelity([o0!, o1!], [r0!, r1!], classification);
        expect(got.agreement).toBe(expected["agreement"]);
        expect(got.maxAbsErr).toBeCloseTo(expected["max_abs_err"]!, 12);
        expect(got.cosine).toBeCloseTo(expected["cosine"]!, 12);
      }
    }
  });
});
