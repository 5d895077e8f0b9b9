/**
 * Ed25519 verification of release manifests (docs/protocol.md §4.3), with `@noble/ed25519`.
 *
 * Publisher keys are pinned as PEM (`-----BEGIN PUBLIC KEY-----`, what `edgeship keys
 * generate` writes); a key id is the first 16 hex digits of sha256 of the raw 32-byte key.
 * Verification is RFC 8032 strict (`zip215: false`), like OpenSSL in the Python reference.
 */

import * as ed from "@noble/ed25519";
import { sha512 } from "@noble/hashes/sha2.js";

import { base64DecodeLenient, base64DecodeStrict, sha256Hex, toHex } from "./bytes.js";
import { SigningError } from "./errors.js";
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
  if (!match) throw new SigningError("public key is not PEM (-----BEGIN PUBLIC KEY-----)");
  let der: Uint8Array;
  try {
    der = base64DecodeLenient(match[1]!);
  } catch {
    throw new SigningError("public key PEM body is not base64");
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
    if (raw.length !== 32) throw new SigningError(`a raw Ed25519 public key has 32 bytes, got ${raw.length}`);
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
  if (!isJsonObject(manifest)) throw new SigningError("manifest is not an object");
  const signature = manifest["signature"];
  if (!isJsonObject(signature)) throw new SigningError("manifest is not signed");
  if (signature["alg"] !== ALG) throw new SigningError(`manifest signature algorithm is not ${ALG}`);
  const kid = signature["key_id"];
  const key = typeof kid === "string" ? trusted.get(kid) : undefined;
  if (key === undefined) throw new SigningError(`manifest signed by unknown key ${JSON.stringify(kid)}`);
  const value = signature["value"];
  let bytes: Uint8Array;
  let message: Uint8Array;
  try {
    if (typeof value !== "string") throw new RangeError("no value");
    bytes = base64DecodeStrict(value);
    message = canonicalJson(unsigned(manifest));
  } catch {
    throw new SigningError(`manifest signature by key ${kid} does not verify`);
  }
  let ok = false;
  try {
    ok = bytes.length === 64 && ed.verify(bytes, message, key, { zip215: false });
  } catch {
    ok = false;
  }
  if (!ok) throw new SigningError(`manifest signature by key ${kid} does not verify`);
  return kid as string;
}
