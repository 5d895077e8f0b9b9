/** Writes `.npz` files (stored ZIP of `.npy` v1.0) for tests, as `numpy.savez` would (without Zip64). */

import { utf8Encode } from "../../src/bytes.js";

export interface ArrayToWrite {
  descr: "<f4" | "<i8" | "<f8";
  shape: number[];
  data: Float32Array | BigInt64Array | Float64Array;
}

export function writeNpy(array: ArrayToWrite): Uint8Array {
  const shape = array.shape.length === 1 ? `(${array.shape[0]},)` : `(${array.shape.join(", ")})`;
  let header = `{'descr': '${array.descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const head = utf8Encode(header);
  const data = new Uint8Array(array.data.buffer, array.data.byteOffset, array.data.byteLength);
  const out = new Uint8Array(10 + head.length + data.length);
  out.set([0x93, ...utf8Encode("NUMPY"), 1, 0, head.length & 255, head.length >> 8], 0);
  out.set(head, 10);
  out.set(data, 10 + head.length);
  return out;
}

export function writeNpz(arrays: Record<string, ArrayToWrite>): Uint8Array {
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let offset = 0;
  for (const [name, array] of Object.entries(arrays)) {
    const file = utf8Encode(`${name}.npy`);
    const data = writeNpy(array);
    const crc = crc32(data);
    const local = new Uint8Array(30 + file.length + data.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, 20, true);
    lv.setUint32(14, crc, true);
    lv.setUint32(18, data.length, true);
    lv.setUint32(22, data.length, true);
    lv.setUint16(26, file.length, true);
    local.set(file, 30);
    local.set(data, 30 + file.length);
    const central = new Uint8Array(46 + file.length);
    const cv = new DataView(central.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, 20, true);
    cv.setUint16(6, 20, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, file.length, true);
    cv.setUint32(42, offset, true);
    central.set(file, 46);
    locals.push(local);
    centrals.push(central);
    offset += local.length;
  }
  const centralSize = centrals.reduce((n, c) => n + c.length, 0);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, centrals.length, true);
  ev.setUint16(10, centrals.length, true);
  ev.setUint32(12, centralSize, true);
  ev.setUint32(16, offset, true);
  const parts = [...locals, ...centrals, end];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function crc32(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return (crc ^ 0xffffffff) >>> 0;
}
