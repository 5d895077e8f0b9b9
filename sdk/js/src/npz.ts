/**
 * A reader for the golden set's `.npz` (docs/protocol.md §6.1): an uncompressed ZIP (numpy
 * writes Zip64 local headers) of `.npy` arrays. No pickles, little-endian only.
 */

import { utf8Decode } from "./bytes.js";

/** An array read from a `.npy`: flat data in C order and its shape. */
export interface NdArray {
  dtype: DType;
  shape: number[];
  data: Float32Array | Float64Array | Int32Array | BigInt64Array | Int8Array | Uint8Array | Uint16Array;
}

/** onnxruntime's tensor type names for the numpy dtypes a golden set may hold. */
export type DType = "float32" | "float64" | "int32" | "int64" | "int8" | "uint8" | "bool" | "float16";

const DESCR: Record<string, DType> = {
  "<f4": "float32", "<f8": "float64", "<i4": "int32", "<i8": "int64", "|i1": "int8", "|u1": "uint8",
  "|b1": "bool", "<f2": "float16",
};

/** Every array of an npz file by name (`input:image`, `output:logits`, `labels`...). */
export function readNpz(bytes: Uint8Array): Map<string, NdArray> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Map<string, NdArray>();
  for (const entry of centralDirectory(view)) {
    if (entry.method !== 0) throw new RangeError(`npz member ${entry.name} is compressed; golden sets are stored`);
    if (view.getUint32(entry.localOffset, true) !== 0x04034b50) throw new RangeError(`npz member ${entry.name}: bad header`);
    const start = entry.localOffset + 30 + view.getUint16(entry.localOffset + 26, true) +
      view.getUint16(entry.localOffset + 28, true);
    if (start + entry.size > bytes.length) throw new RangeError(`npz member ${entry.name} is truncated`);
    out.set(entry.name.replace(/\.npy$/, ""), readNpy(bytes.subarray(start, start + entry.size)));
  }
  return out;
}

interface ZipEntry {
  name: string;
  method: number;
  size: number;
  localOffset: number;
}

function centralDirectory(view: DataView): ZipEntry[] {
  let eocd = -1;
  for (let i = view.byteLength - 22; i >= Math.max(0, view.byteLength - 22 - 65535); i--) {
    if (view.getUint32(i, true) === 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) throw new RangeError("not a zip file (no end of central directory)");
  let count = view.getUint16(eocd + 10, true);
  let offset = view.getUint32(eocd + 16, true);
  if ((offset === 0xffffffff || count === 0xffff) && eocd >= 20 && view.getUint32(eocd - 20, true) === 0x07064b50) {
    const zip64 = Number(view.getBigUint64(eocd - 12, true));
    count = Number(view.getBigUint64(zip64 + 32, true));
    offset = Number(view.getBigUint64(zip64 + 48, true));
  }
  const entries: ZipEntry[] = [];
  for (let i = 0; i < count; i++) {
    if (view.getUint32(offset, true) !== 0x02014b50) throw new RangeError("zip central directory is corrupt");
    const nameLength = view.getUint16(offset + 28, true);
    const extraLength = view.getUint16(offset + 30, true);
    const commentLength = view.getUint16(offset + 32, true);
    const name = utf8Decode(new Uint8Array(view.buffer, view.byteOffset + offset + 46, nameLength));
    let size = view.getUint32(offset + 20, true);
    const uncompressed = view.getUint32(offset + 24, true);
    let localOffset = view.getUint32(offset + 42, true);
    // Zip64 extra field (id 1): the 64-bit values of the fields set to 0xffffffff, in order.
    for (let at = offset + 46 + nameLength; at + 4 <= offset + 46 + nameLength + extraLength;) {
      const id = view.getUint16(at, true);
      const length = view.getUint16(at + 2, true);
      if (id === 1) {
        let field = at + 4;
        if (uncompressed === 0xffffffff) field += 8;
        if (size === 0xffffffff) {
          size = Number(view.getBigUint64(field, true));
          field += 8;
        }
        if (localOffset === 0xffffffff) localOffset = Number(view.getBigUint64(field, true));
      }
      at += 4 + length;
    }
    entries.push({ name, method: view.getUint16(offset + 10, true), size, localOffset });
    offset += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

/** One `.npy` array (format versions 1–3). */
export function readNpy(bytes: Uint8Array): NdArray {
  if (bytes[0] !== 0x93 || utf8Decode(bytes.subarray(1, 6)) !== "NUMPY") throw new RangeError("not a .npy array");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const [headerLength, headerStart] = major === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = utf8Decode(bytes.subarray(headerStart, headerStart + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    throw new RangeError(`.npy header not understood: ${header.trim()}`);
  }
  const dtype = DESCR[descr];
  if (dtype === undefined) throw new RangeError(`.npy dtype ${descr} is not supported (object arrays never are)`);
  if (fortran === "True") throw new RangeError(".npy in Fortran order is not supported");
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s !== "").map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const start = headerStart + headerLength;
  const raw = bytes.slice(start, start + count * itemSize(dtype)); // a copy: aligned for typed arrays
  if (raw.length !== count * itemSize(dtype)) throw new RangeError(".npy data is truncated");
  return { dtype, shape, data: typed(dtype, raw.buffer) };
}

function itemSize(dtype: DType): number {
  return { float32: 4, float64: 8, int32: 4, int64: 8, int8: 1, uint8: 1, bool: 1, float16: 2 }[dtype];
}

function typed(dtype: DType, buffer: ArrayBuffer): NdArray["data"] {
  switch (dtype) {
    case "float32": return new Float32Array(buffer);
    case "float64": return new Float64Array(buffer);
    case "int32": return new Int32Array(buffer);
    case "int64": return new BigInt64Array(buffer);
    case "int8": return new Int8Array(buffer);
    case "float16": return new Uint16Array(buffer);
    default: return new Uint8Array(buffer);
  }
}
