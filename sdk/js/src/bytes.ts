/**
 * Byte helpers every platform has: UTF-8, hex, strict base64, sha256.
 *
 * Written out rather than taken from `TextEncoder`/`Buffer`/`atob` so the same code runs in
 * Node, browsers and React Native (whose Hermes engine lacks some of them).
 */

import { sha256 as nobleSha256 } from "@noble/hashes/sha2.js";

/** A sha256 as this SDK writes and accepts it: 64 lowercase hex digits. */
export const SHA256_HEX = /^[0-9a-f]{64}$/;

/** UTF-8 bytes of `text`; a lone surrogate is an error (it cannot be encoded). */
export function utf8Encode(text: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    let cp = text.charCodeAt(i);
    if (cp >= 0xd800 && cp <= 0xdfff) {
      const next = text.charCodeAt(i + 1);
      if (cp > 0xdbff || !(next >= 0xdc00 && next <= 0xdfff)) throw new RangeError("lone surrogate cannot be UTF-8 encoded");
      cp = 0x10000 + ((cp - 0xd800) << 10) + (next - 0xdc00);
      i++;
    }
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 63));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 63), 0x80 | ((cp >> 6) & 63), 0x80 | (cp & 63));
  }
  return Uint8Array.from(out);
}

/** Text of UTF-8 `bytes`; malformed sequences are an error, never replaced silently. */
export function utf8Decode(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length;) {
    const b0 = bytes[i]!;
    // continuation bytes after the lead byte (-1: not a lead byte), and the lead byte's payload
    const extra = b0 < 0x80 ? 0 : b0 < 0xc2 ? -1 : b0 < 0xe0 ? 1 : b0 < 0xf0 ? 2 : b0 < 0xf5 ? 3 : -1;
    let cp = extra > 0 ? b0 & (0x7f >> (extra + 1)) : b0;
    let ok = extra >= 0;
    for (let k = 1; k <= extra; k++) {
      const b = bytes[i + k];
      ok &&= b !== undefined && (b & 0xc0) === 0x80;
      cp = (cp << 6) | (b! & 63);
    }
    // overlong forms, beyond U+10FFFF and surrogates are malformed too
    if (!ok || cp < [0, 0x80, 0x800, 0x10000][extra]! || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
      throw new RangeError(`invalid UTF-8 at byte ${i}`);
    }
    out += String.fromCodePoint(cp);
    i += extra + 1;
  }
  return out;
}

export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
// Python's `base64.b64decode(value, validate=True)`: whole quads, padding only at the end.
const STRICT_B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * Standard base64 with padding, decoded as strictly as the Python reference does.
 *
 * @throws RangeError on whitespace, another alphabet, missing or misplaced padding.
 */
export function base64DecodeStrict(text: string): Uint8Array {
  if (!STRICT_B64.test(text)) throw new RangeError("not strict base64");
  const out: number[] = [];
  for (let i = 0; i < text.length; i += 4) {
    const quad = text.slice(i, i + 4);
    const v = [...quad].map((c) => (c === "=" ? 0 : B64.indexOf(c)));
    const n = (v[0]! << 18) | (v[1]! << 12) | (v[2]! << 6) | v[3]!;
    out.push((n >> 16) & 255);
    if (quad[2] !== "=") out.push((n >> 8) & 255);
    if (quad[3] !== "=") out.push(n & 255);
  }
  return Uint8Array.from(out);
}

export function base64Encode(bytes: Uint8Array): string {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const [a, b, c] = [bytes[i]!, bytes[i + 1], bytes[i + 2]];
    const n = (a << 16) | ((b ?? 0) << 8) | (c ?? 0);
    out += B64[(n >> 18) & 63]! + B64[(n >> 12) & 63]!;
    out += b === undefined ? "=" : B64[(n >> 6) & 63]!;
    out += c === undefined ? "=" : B64[n & 63]!;
  }
  return out;
}

/** sha256 as 64 lowercase hex digits. */
export function sha256Hex(data: Uint8Array): string {
  return toHex(nobleSha256(data));
}

/** An incremental sha256, for files read in chunks. */
export function sha256Hasher(): { update(chunk: Uint8Array): void; hex(): string } {
  const hash = nobleSha256.create();
  let digest: string | null = null;
  return {
    update: (chunk) => void hash.update(chunk),
    hex: () => (digest ??= toHex(hash.digest())),
  };
}

export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
