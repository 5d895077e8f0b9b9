import * as ed from "@noble/ed25519";
import { describe, expect, it } from "vitest";

import { base64Encode, toHex, utf8Decode } from "../../src/bytes.js";
import { SigningError } from "../../src/errors.js";
import { canonicalJson, parseJson } from "../../src/json.js";
import { keyId, publicKeyFromPem, trustedKeys, unsigned, verifyManifest } from "../../src/signing.js";
import { PYTHON, runPython } from "../helpers/python.js";
import { OTHER_SEED, pemOf, signManifest, TEST_SEED } from "../helpers/release.js";

// docs/protocol.md §4.5
const VECTOR_CANONICAL = '{"created_at":"2026-11-23T10:00:00+00:00","golden":{"count":16,"file":"golden.npz","sha256":"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"},"model":"digits-cnn","reference":{"accuracy":0.97,"format":"torch","macs":5678,"params":1234,"sha256":"0000000000000000000000000000000000000000000000000000000000000000"},"schema":"edgeship.manifest/v1","task":{"inputs":[{"dtype":"float32","name":"image","shape":[1,1,8,8]}],"kind":"classification","outputs":[{"dtype":"float32","name":"logits","shape":[1,10]}]},"variants":[{"compression":[],"file":"onnx-fp32.onnx","format":"onnx","id":"onnx-fp32","metrics":{"agreement":1.0,"golden":{"agreement":1.0,"max_abs_err":2.1e-07},"latency_ms":{"p50":0.05,"p95":0.08},"peak_rss_bytes":52428800},"precision":"fp32","runtime":{"min_version":"1.20.1","name":"onnxruntime"},"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size_bytes":20480,"validation":"passed"}],"version":"2.0.0"}';
const VECTOR_SIGNATURE = { alg: "ed25519", key_id: "56475aa75463474c",
  value: "AiKpi11ozrdyPSFqGJkjzZvyCLmQy8CCrR4Rl8Wc3SzSQBTeupE8nSWzSgGOQ5iKLNuiB2syA5TW4vvmR10XDQ==" };
const VECTOR_PEM = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\n-----END PUBLIC KEY-----\n";

/** The vector as a device receives it: signature added, whitespace and key order of another writer. */
function vectorManifest(): string {
  return `{"signature": ${JSON.stringify(VECTOR_SIGNATURE)},\n ${VECTOR_CANONICAL.slice(1).replace(/,"/g, ', "')}`;
}

describe("manifest signatures (§4.3, §4.5)", () => {
  it("derives the test vector's key, key id and signature", () => {
    const raw = publicKeyFromPem(VECTOR_PEM);
    expect(toHex(raw)).toBe("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8");
    expect(toHex(ed.getPublicKey(TEST_SEED))).toBe(toHex(raw));
    expect(keyId(raw)).toBe("56475aa75463474c");
    const bytes = new TextEncoder().encode(VECTOR_CANONICAL);
    expect(base64Encode(ed.sign(bytes, TEST_SEED))).toBe(VECTOR_SIGNATURE.value);
  });

  it("verifies the vector from the text as it arrives, number lexemes kept", () => {
    const manifest = parseJson(vectorManifest());
    expect(utf8Decode(canonicalJson(unsigned(manifest as never)))).toBe(VECTOR_CANONICAL);
    expect(verifyManifest(manifest, trustedKeys([VECTOR_PEM]))).toBe("56475aa75463474c");
  });

  it("refuses unsigned, other algorithms, unknown keys, loose base64 and any changed byte", () => {
    const keys = trustedKeys([VECTOR_PEM]);
    const signed = JSON.parse(signManifest({ schema: "edgeship.manifest/v1", x: [1, 1.5, "é"] })) as Record<string, unknown>;
    const sig = signed["signature"] as Record<string, string>;
    const variants: [string, unknown][] = [
      ["unsigned", { ...signed, signature: undefined }],
      ["alg", { ...signed, signature: { ...sig, alg: "rsa" } }],
      ["unknown key", JSON.parse(signManifest({ schema: "edgeship.manifest/v1" }, OTHER_SEED))],
      ["whitespace in base64", { ...signed, signature: { ...sig, value: ` ${sig["value"]}` } }],
      ["unpadded base64", { ...signed, signature: { ...sig, value: sig["value"]!.replace(/=+$/, "") } }],
      ["value not a string", { ...signed, signature: { ...sig, value: 7 } }],
      ["tampered", { ...signed, x: [1, 1.5, "e"] }],
    ];
    expect(verifyManifest(parseJson(JSON.stringify(signed)), keys)).toBe("56475aa75463474c");
    for (const [what, manifest] of variants) {
      expect(() => verifyManifest(parseJson(JSON.stringify(manifest)), keys), what).toThrow(SigningError);
    }
    // 1 and 1.0 are one number to JSON.parse, an int and a float to Python and so to the signature;
    // 1.5 and 1.50 are the same float to both
    const text = JSON.stringify(signed);
    expect(() => verifyManifest(parseJson(text.replace("[1,", "[1.0,")), keys)).toThrow(SigningError);
    expect(verifyManifest(parseJson(text.replace("1.5", "1.50")), keys)).toBe("56475aa75463474c");
  });

  it("reads only Ed25519 public keys", () => {
    expect(() => publicKeyFromPem("not a key")).toThrow(SigningError);
    const rsaLike = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEAA6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\n-----END PUBLIC KEY-----";
    expect(() => publicKeyFromPem(rsaLike)).toThrow(/not an Ed25519 key/); // X25519's OID
    expect(pemOf(publicKeyFromPem(VECTOR_PEM)).replace(/\n/g, "")).toBe(VECTOR_PEM.replace(/\n/g, ""));
  });

  it.skipIf(PYTHON === null)("verifies manifests the Python contract signed, as the server sends them", () => {
    const out = runPython(`
import json, tempfile, pathlib
from edgeship.contract.signing import generate_keypair, load_private_key, sign_manifest
d = pathlib.Path(tempfile.mkdtemp())
private, public = generate_keypair(d)
manifest = {"schema": "edgeship.manifest/v1", "model": "m", "version": "1", "created_at": "2026-12-07T00:00:00+00:00",
            "note": "caf\\u00e9 \\U0001f600 \\u2028 tab\\t", "floats": [1.0, 2.1e-07, 1e16, 0.1, 123.456, -0.0, 5e-324],
            "big": 2**70, "nested": {"\\uffff": 1, "\\U0001f600": 2, "a": None, "b": True}}
signed = sign_manifest(manifest, load_private_key(private))
tampered = dict(signed, version="2")
print(json.dumps({"pem": public.read_text(), "signed": json.dumps({"manifest": signed}, sort_keys=True),
                  "tampered": json.dumps({"manifest": tampered})}))
`);
    const { pem, signed, tampered } = JSON.parse(out) as { pem: string; signed: string; tampered: string };
    const keys = trustedKeys([pem]);
    const manifest = (parseJson(signed) as { manifest: never }).manifest;
    expect(verifyManifest(manifest, keys)).toBe([...keys.keys()][0]);
    expect(() => verifyManifest((parseJson(tampered) as { manifest: never }).manifest, keys)).toThrow(SigningError);
  });
});
