/** Signed releases for unit tests, made the way the converter makes them (§4), with a test key. */

import * as ed from "@noble/ed25519";

import { base64Encode, sha256Hex, utf8Encode } from "../../src/bytes.js";
import { canonicalJson, parseJson } from "../../src/json.js";
import { keyId } from "../../src/signing.js";
import { writeNpz } from "./npz-writer.js";

export const TEST_SEED = Uint8Array.from({ length: 32 }, (_, i) => i);
export const TEST_PUBLIC = ed.getPublicKey(TEST_SEED);
export const OTHER_SEED = Uint8Array.from({ length: 32 }, (_, i) => 100 + i);

/** PEM SubjectPublicKeyInfo of a raw Ed25519 key. */
export function pemOf(raw: Uint8Array): string {
  const der = new Uint8Array([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, ...raw]);
  return `-----BEGIN PUBLIC KEY-----\n${base64Encode(der)}\n-----END PUBLIC KEY-----\n`;
}

/** `manifest` signed with `seed`, as JSON text (what the server embeds in an assignment). */
export function signManifest(manifest: Record<string, unknown>, seed: Uint8Array = TEST_SEED): string {
  const body = { ...manifest };
  delete body["signature"];
  const bytes = canonicalJson(parseJson(JSON.stringify(body)));
  const signature = { alg: "ed25519", key_id: keyId(ed.getPublicKey(seed)), value: base64Encode(ed.sign(bytes, seed)) };
  return JSON.stringify({ ...body, signature });
}

export interface TestRelease {
  version: string;
  manifestText: string;
  variant: Record<string, unknown> & { id: string; sha256: string; size_bytes: number };
  /** every variant, the preferred (fastest) first; `variant` is the first */
  variants: (Record<string, unknown> & { id: string; sha256: string; size_bytes: number })[];
  golden: { sha256: string };
  files: Map<string, Uint8Array>;
}

/**
 * A classification release whose model rolls rows by `shift` (0 passes the golden probe).
 * `tamper` changes the served model bytes after signing.
 */
export function makeRelease(version: string, options: { shift?: number; seed?: Uint8Array; model?: string;
    /** more variants, each its own model file, offered after the first (slower) */
    extra?: { id: string; shift?: number }[] } = {}): TestRelease {
  const rows = 16;
  const input = Float32Array.from({ length: rows * 10 }, (_, i) => Math.sin(i * 1.7 + Number(version)) * 3);
  const goldenBytes = writeNpz({
    "input:image": { descr: "<f4", shape: [rows, 10], data: input },
    "output:output": { descr: "<f4", shape: [rows, 10], data: input },
  });
  const files = new Map<string, Uint8Array>();
  const entry = (id: string, shift: number, p50: number) => {
    const model = utf8Encode(JSON.stringify({ shift, version, id }));
    files.set(sha256Hex(model), model);
    return {
      id, format: "onnx", precision: "fp32", compression: [], file: `${id}.onnx`,
      sha256: sha256Hex(model), size_bytes: model.length, runtime: { name: "onnxruntime", min_version: "1.20.1" },
      metrics: { golden: { agreement: 1.0, max_abs_err: 0 }, latency_ms: { p50 }, peak_rss_bytes: 1000 },
      validation: "passed",
    };
  };
  const variant = entry("onnx-fp32", options.shift ?? 0, 0.05);
  const variants = [variant, ...(options.extra ?? []).map((e, i) => entry(e.id, e.shift ?? 0, 0.06 + i * 0.01))];
  const golden = { file: "golden.npz", sha256: sha256Hex(goldenBytes), count: rows };
  const manifest = {
    schema: "edgeship.manifest/v1", model: options.model ?? "digits-cnn", version,
    task: { kind: "classification", inputs: [{ name: "image", shape: [1, 10], dtype: "float32" }],
      outputs: [{ name: "output", shape: [1, 10], dtype: "float32" }] },
    reference: { format: "torch" }, golden, variants,
  };
  files.set(golden.sha256, goldenBytes);
  return { version, manifestText: signManifest(manifest, options.seed), variant, variants, golden, files };
}
