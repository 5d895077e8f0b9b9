/**
 * A model runtime for unit tests. A "model file" is JSON `{"shift": k}`: the model returns its
 * input rows rolled by k positions (k = 0 agrees with a golden set whose outputs are its
 * inputs). Anything else is a file the runtime refuses.
 */

import type { Array2 } from "../../src/fidelity.js";
import type { NdArray } from "../../src/npz.js";
import type { ModelRuntime } from "../../src/runtime.js";

export interface FakeTensor {
  type: string;
  data: Float32Array;
  dims: number[];
}

export function fakeTensor(rows: number[][]): FakeTensor {
  return { type: "float32", data: Float32Array.from(rows.flat()), dims: [rows.length, rows[0]!.length] };
}

export function fakeRuntime(options: { failRun?: () => boolean } = {}): ModelRuntime<FakeTensor> & { loads: number } {
  const runtime = {
    name: "onnxruntime",
    version: "1.31.1",
    formats: ["onnx"] as const,
    loads: 0,
    async load(source: { bytes(): Promise<Uint8Array> }) {
      runtime.loads += 1;
      const { shift } = JSON.parse(new TextDecoder().decode(await source.bytes())) as { shift: number };
      if (typeof shift !== "number") throw new Error("not a model");
      return {
        async run(feeds: Record<string, FakeTensor>) {
          if (options.failRun?.()) throw new Error("runtime exploded");
          const input = Object.values(feeds)[0]!;
          const width = input.dims[1]!;
          const out = new Float32Array(input.data.length);
          for (let r = 0; r < input.dims[0]!; r++) {
            for (let k = 0; k < width; k++) out[r * width + ((k + shift) % width)] = input.data[r * width + k]!;
          }
          return { output: { type: "float32", data: out, dims: [...input.dims] } };
        },
        release: async () => {},
      };
    },
    tensor: (array: NdArray): FakeTensor => ({ type: array.dtype, data: array.data as Float32Array, dims: array.shape }),
    read: (tensor: FakeTensor): Array2 => ({ data: tensor.data, shape: tensor.dims }),
  };
  return runtime;
}
