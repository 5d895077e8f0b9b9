/**
 * Ed25519 verification of release manifests (docs/protocol.md §4.3), with `@noble/ed25519`.
 *
 * Publisher keys are pinned as PEM (`-----BEGIN PUBLIC KEY-----`, what `edgeship keys
 * generate` writes); a key id is the first 16 hex digits of sha256 of the raw 32-byte key.
 * Verification is RFC 8032 strict (`zip215: false`), like OpenSSL in the Python reference.
 */

import * as ed from "@noble/ed25519";
import { sha512 } from "@noble/hashes/sha2.js";

import { base64DecodeStrict, sha256Hex, toHex } from "./bytes.js";
import { check, SigningError } from "./errors.js";
import { canonicalJson, isJsonObject, type JsonObject, type JsonValue } from "./json.js";

export const ALG = "ed25519";
// DER prefix of an Ed25519 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING }
const SPKI_PREFIX = "302a300506032b6570032100";

if (ed.hashes.sha512 === undefined) ed.hashes.sha512 = sha512; // sync API without WebCrypto (React Native)

/** Pinned publisher keys by key id. */
export type TrustedKeys = ReadonlyMap<string, Uint8Array>;

/**
 * The raw 32-byte key of a PEM SubjectPublicKeyInfo Ed25519 public key.
 *
 * @throws SigningError when the text is not such a key.
 */
export function publicKeyFromPem(pem: string): Uint8Array {
  const match = /-----BEGIN PUBLIC KEY-----([\s\S]*?)-----END PUBLIC KEY-----/.exec(pem);
  check(match, "public key is not PEM", SigningError);
  let der: Uint8Array;
  try {
    der = base64DecodeStrict(match[1]!.replace(/\s+/g, "")); // PEM bodies are wrapped
  } catch {
    throw new SigningError("PEM body is not base64");
  }
  if (der.length !== 44 || toHex(der.subarray(0, 12)) !== SPKI_PREFIX) {
    throw new SigningError("public key is not an Ed25519 key");
  }
  return der.slice(12);
}

/** The key id of a raw public key: first 16 hex digits of its sha256. */
export function keyId(rawPublicKey: Uint8Array): string {
  return sha256Hex(rawPublicKey).slice(0, 16);
}

/** `{key id → raw key}` of PEM public keys (or raw 32-byte keys). */
export function trustedKeys(keys: readonly (string | Uint8Array)[]): TrustedKeys {
  const out = new Map<string, Uint8Array>();
  for (const key of keys) {
    const raw = typeof key === "string" ? publicKeyFromPem(key) : key;
    check(raw.length === 32, `an Ed25519 key has 32 bytes, not ${raw.length}`, SigningError);
    out.set(keyId(raw), raw);
  }
  return out;
}

/** The manifest without its top-level `signature`: what the signature covers. */
export function unsigned(manifest: JsonObject): JsonObject {
  const out: JsonObject = Object.create(null) as JsonObject;
  for (const [k, v] of Object.entries(manifest)) if (k !== "signature") out[k] = v;
  return out;
}

/**
 * Check a manifest's signature against the pinned keys.
 *
 * @param manifest the manifest as parsed by `parseJson` (number lexemes kept).
 * @returns the key id that signed it.
 * @throws SigningError unsigned, another algorithm, an unknown key, or a bad signature.
 */
export function verifyManifest(manifest: JsonValue, trusted: TrustedKeys): string {
  check(isJsonObject(manifest), "manifest is not an object", SigningError);
  const signature = manifest["signature"];
  check(isJsonObject(signature), "manifest is not signed", SigningError);
  check(signature["alg"] === ALG, `manifest signature algorithm is not ${ALG}`, SigningError);
  const kid = signature["key_id"];
  const key = typeof kid === "string" ? trusted.get(kid) : undefined;
  check(key !== undefined, `manifest signed by unknown key ${JSON.stringify(kid)}`, SigningError);
  const value = signature["value"];
  let ok = false;
  try {
    const bytes = typeof value === "string" ? base64DecodeStrict(value) : new Uint8Array();
    ok = bytes.length === 64 && ed.verify(bytes, canonicalJson(unsigned(manifest)), key, { zip215: false });
  } catch {
    // not base64, a manifest Python could not sign, or a malformed signature: it does not verify
  }
  check(ok, `manifest signature by key ${kid} does not verify`, SigningError);
  return kid as string;
}
