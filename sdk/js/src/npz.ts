/**
 * A reader for the golden set's `.npz` (docs/protocol.md §6.1): an uncompressed ZIP (numpy
 * writes Zip64 local headers) of `.npy` arrays. No pickles, little-endian only.
 */

import { utf8Decode } from "./bytes.js";
import { check } from "./errors.js";

/** An array read from a `.npy`: flat data in C order and its shape. */
export interface NdArray {
  dtype: DType;
  shape: number[];
  data: Float32Array | Float64Array | Int32Array | BigInt64Array | Int8Array | Uint8Array | Uint16Array;
}

/** onnxruntime's tensor type names for the numpy dtypes a golden set may hold. */
export type DType = "float32" | "float64" | "int32" | "int64" | "int8" | "uint8" | "bool" | "float16";

type TypedArrayOf = { new (buffer: ArrayBuffer): NdArray["data"]; BYTES_PER_ELEMENT: number };

/** numpy `descr` → the dtype name and the typed array holding it (float16 as its raw bits). */
const DESCR: Record<string, [DType, TypedArrayOf]> = {
  "<f4": ["float32", Float32Array], "<f8": ["float64", Float64Array], "<i4": ["int32", Int32Array],
  "<i8": ["int64", BigInt64Array], "|i1": ["int8", Int8Array], "|u1": ["uint8", Uint8Array], "|b1": ["bool", Uint8Array],
  "<f2": ["float16", Uint16Array],
};

/** Every array of an npz file by name (`input:image`, `output:logits`, `labels`...). */
export function readNpz(bytes: Uint8Array): Map<string, NdArray> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u16 = (at: number) => view.getUint16(at, true);
  const u32 = (at: number) => view.getUint32(at, true);
  const u64 = (at: number) => Number(view.getBigUint64(at, true));
  let eocd = -1;
  for (let i = bytes.length - 22; i >= Math.max(0, bytes.length - 22 - 65535) && eocd < 0; i--) {
    if (u32(i) === 0x06054b50) eocd = i;
  }
  check(eocd >= 0, "not a zip file");
  let count = u16(eocd + 10);
  let offset = u32(eocd + 16);
  if ((offset === 0xffffffff || count === 0xffff) && eocd >= 20 && u32(eocd - 20) === 0x07064b50) {
    const zip64 = u64(eocd - 12);
    count = u64(zip64 + 32);
    offset = u64(zip64 + 48);
  }
  const out = new Map<string, NdArray>();
  for (let i = 0; i < count; i++) { // the central directory
    check(u32(offset) === 0x02014b50, "corrupt zip directory");
    const [nameLength, extraLength, commentLength] = [u16(offset + 28), u16(offset + 30), u16(offset + 32)];
    const name = utf8Decode(bytes.subarray(offset + 46, offset + 46 + nameLength));
    let size = u32(offset + 20);
    const uncompressed = u32(offset + 24);
    let local = u32(offset + 42);
    // Zip64 extra field (id 1): the 64-bit values of the fields set to 0xffffffff, in order.
    for (let at = offset + 46 + nameLength; at + 4 <= offset + 46 + nameLength + extraLength; at += 4 + u16(at + 2)) {
      if (u16(at) !== 1) continue;
      let field = at + 4;
      if (uncompressed === 0xffffffff) field += 8;
      if (size === 0xffffffff) {
        size = u64(field);
        field += 8;
      }
      if (local === 0xffffffff) local = u64(field);
    }
    check(u16(offset + 10) === 0, `npz member ${name} is compressed`);
    check(u32(local) === 0x04034b50, `npz member ${name}: bad header`);
    const start = local + 30 + u16(local + 26) + u16(local + 28);
    check(start + size <= bytes.length, `npz member ${name} is truncated`);
    out.set(name.replace(/\.npy$/, ""), readNpy(bytes.subarray(start, start + size)));
    offset += 46 + nameLength + extraLength + commentLength;
  }
  return out;
}

/** One `.npy` array (format versions 1–3). */
export function readNpy(bytes: Uint8Array): NdArray {
  check(bytes[0] === 0x93 && utf8Decode(bytes.subarray(1, 6)) === "NUMPY", "not a .npy array");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const [headerLength, headerStart] = major === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = utf8Decode(bytes.subarray(headerStart, headerStart + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  check(descr !== undefined && fortran !== undefined && shapeText !== undefined, `bad .npy header: ${header.trim()}`);
  const known = DESCR[descr];
  check(known !== undefined, `.npy dtype ${descr} is not supported`);
  check(fortran === "False", ".npy in Fortran order");
  const [dtype, Typed] = known;
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  const size = shape.reduce((a, b) => a * b, Typed.BYTES_PER_ELEMENT);
  const start = headerStart + headerLength;
  const raw = bytes.slice(start, start + size); // a copy: aligned for typed arrays
  check(raw.length === size, ".npy data is truncated");
  return { dtype, shape, data: new Typed(raw.buffer) };
}
