import { describe, expect, it } from "vitest";

import { readNpz } from "../../src/npz.js";
import { PYTHON, runPython } from "../helpers/python.js";
import { writeNpz } from "../helpers/npz-writer.js";

describe("npz golden sets (§6.1)", () => {
  it.skipIf(PYTHON === null)("reads what numpy.savez writes (Zip64 headers), every supported dtype", () => {
    const out = runPython(`
import base64, io, json
import numpy as np
arrays = {"input:image": np.arange(2 * 1 * 8 * 8, dtype=np.float32).reshape(2, 1, 8, 8) / 7,
          "f8": np.array([[1.5, -2.25]]), "i8": np.array([-(2**40), 3], dtype=np.int64), "i4": np.array([7], dtype=np.int32),
          "u1": np.array([255, 0], dtype=np.uint8), "b1": np.array([True, False]), "scalar": np.float32(3.5),
          "f2": np.array([1.0], dtype=np.float16)}
buf = io.BytesIO(); np.savez(buf, **arrays)
print(base64.b64encode(buf.getvalue()).decode())
`);
    const arrays = readNpz(new Uint8Array(Buffer.from(out.trim(), "base64")));
    const image = arrays.get("input:image")!;
    expect(image.dtype).toBe("float32");
    expect(image.shape).toEqual([2, 1, 8, 8]);
    expect(image.data[9]).toBeCloseTo(9 / 7, 6);
    expect([...arrays.get("f8")!.data]).toEqual([1.5, -2.25]);
    expect([...arrays.get("i8")!.data]).toEqual([-(2n ** 40n), 3n]);
    expect([...arrays.get("i4")!.data, ...arrays.get("u1")!.data, ...arrays.get("b1")!.data]).toEqual([7, 255, 0, 1, 0]);
    expect(arrays.get("scalar")!.shape).toEqual([]);
    expect([...arrays.get("f2")!.data]).toEqual([0x3c00]);
  });

  it("reads its own writer's files and refuses what it cannot read", () => {
    const bytes = writeNpz({ a: { descr: "<f4", shape: [3], data: Float32Array.from([1, 2, 3]) } });
    expect([...readNpz(bytes).get("a")!.data]).toEqual([1, 2, 3]);
    expect(() => readNpz(bytes.subarray(0, 40))).toThrow(RangeError);
    expect(() => readNpz(new Uint8Array(100))).toThrow(/not a zip/);
  });
});
