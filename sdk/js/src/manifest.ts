/**
 * The signed manifest's schema checks (§4.1) and the release an assignment names (§4.4).
 *
 * Mirrors `edgeship/contract/manifest.py` (`check_manifest`) and `edge_agent/model.py`
 * (`Release.from_assignment`): everything about the variant is taken from the signed
 * manifest; the assignment's unsigned copy only names the variant id and must agree on its
 * sha256.
 */

import { SHA256_HEX } from "./bytes.js";
import { loadFailed, ManifestError, SigningError } from "./errors.js";
import { isJsonObject, JsonNumber, toPlain, type JsonObject, type JsonValue } from "./json.js";
import { verifyManifest, type TrustedKeys } from "./signing.js";

export const MANIFEST_SCHEMA = "edgeship.manifest/v1";
const TASK_KINDS = ["classification", "embedding", "regression", "generic"];
const VALIDATION_STATES = ["passed", "failed", "not_validated"];
/** a registry model name (the server's rule) */
export const MODEL_NAME = /^[a-z0-9]+(-[a-z0-9]+)*$/;

/** A tensor spec of `task.inputs` / `task.outputs`. */
export interface TensorSpec {
  name: string;
  shape: number[];
  dtype: string;
}

/** A variant entry, as the signed manifest has it (§4.1). */
export interface VariantEntry {
  id: string;
  format: string;
  precision: string;
  file: string;
  sha256: string;
  size_bytes: number;
  runtime: { name?: string; min_version?: string };
  metrics: { golden?: { agreement?: number | null }; peak_rss_bytes?: number; [k: string]: unknown };
  validation: string;
  io?: unknown;
  [k: string]: unknown;
}

export interface Manifest {
  schema: string;
  model: string;
  version: string;
  task: { kind: string; inputs: TensorSpec[]; outputs: TensorSpec[] };
  golden: { file: string; sha256: string; count?: number };
  variants: VariantEntry[];
  [k: string]: unknown;
}

/** Python's names for the JSON types */
type Kind = "str" | "list" | "dict";
const is = (v: JsonValue | undefined, kind: Kind): boolean =>
  kind === "str" ? typeof v === "string" : kind === "list" ? Array.isArray(v) : isJsonObject(v);

function require(ok: boolean, where: string, message: string): asserts ok {
  if (!ok) throw new ManifestError(`manifest ${where}: ${message}`);
}

/** A plain file name: no path parts, no traversal. */
export function isSafeFileName(name: unknown): boolean {
  return typeof name === "string" && !/^\.{0,2}$|[/\\\0]/.test(name); // not "", ".", "..", nor a path
}

function checkFileRef(entry: JsonObject, where: string): void {
  require(isSafeFileName(entry["file"]), `${where}.file`, "must be a plain file name");
  const sha = entry["sha256"];
  require(typeof sha === "string" && SHA256_HEX.test(sha), `${where}.sha256`, "must be 64 lowercase hex digits");
}

/**
 * Throw {@link ManifestError} naming the first field that breaks the schema (the same checks,
 * in the same order, as the Python contract).
 */
export function checkManifest(data: JsonValue | undefined): asserts data is JsonObject {
  require(isJsonObject(data), "manifest", "must be a JSON object");
  require(data["schema"] === MANIFEST_SCHEMA, "schema", `must be '${MANIFEST_SCHEMA}'`);
  const model = data["model"];
  require(typeof model === "string", "model", "must be str");
  require(MODEL_NAME.test(model), "model", "must match [a-z0-9-]+");
  const version = data["version"];
  require(typeof version === "string", "version", "must be str");
  require(version !== "" && !version.includes("/"), "version", "must be non-empty, no '/'");
  const task = data["task"];
  require(isJsonObject(task), "task", "must be dict");
  require(typeof task["kind"] === "string" && TASK_KINDS.includes(task["kind"]), "task.kind",
    `must be one of ${TASK_KINDS.join(", ")}`);
  for (const key of ["inputs", "outputs"]) {
    const specs = task[key];
    require(Array.isArray(specs) && specs.length > 0, `task.${key}`, "must be a non-empty list");
    specs.forEach((spec, i) => {
      require(isJsonObject(spec) && "name" in spec && "shape" in spec && "dtype" in spec, `task.${key}[${i}]`,
        "needs name, shape and dtype");
    });
  }
  require(isJsonObject(data["reference"]), "reference", "must be dict");
  const golden = data["golden"];
  require(isJsonObject(golden), "golden", "must be dict");
  checkFileRef(golden, "golden");
  const variants = data["variants"];
  require(Array.isArray(variants), "variants", "must be list");
  require(variants.length > 0, "variants", "must list at least one variant");
  const seen = new Set<string>();
  variants.forEach((entry, i) => {
    const where = `variants[${i}]`;
    require(isJsonObject(entry), where, "must be an object");
    const fields: [string, Kind][] = [["id", "str"], ["format", "str"], ["precision", "str"],
      ["compression", "list"], ["runtime", "dict"], ["metrics", "dict"], ["validation", "str"]];
    for (const [key, kind] of fields) require(is(entry[key], kind), `${where}.${key}`, `must be ${kind}`);
    const id = entry["id"] as string;
    require(!seen.has(id), `${where}.id`, `repeats '${id}'`);
    seen.add(id);
    checkFileRef(entry, where);
    require(VALIDATION_STATES.includes(entry["validation"] as string), `${where}.validation`,
      `must be one of ${VALIDATION_STATES.join(", ")}`);
    const size = entry["size_bytes"];
    require(size instanceof JsonNumber && size.isInteger && !size.text.startsWith("-") && Number.isSafeInteger(size.value),
      `${where}.size_bytes`, "must be a non-negative integer");
  });
  const signature = data["signature"];
  if (signature !== undefined && signature !== null) {
    require(isJsonObject(signature) && "alg" in signature && "key_id" in signature && "value" in signature,
      "signature", "needs alg, key_id and value");
  }
}

/** What an assignment (or its `shadow` block) says about the release to run. */
export interface ReleaseBlock {
  model?: string;
  version?: string;
  variant?: { id?: string; sha256?: string } | null;
  artifact_url?: string;
  golden_url?: string;
  manifest?: JsonValue;
}

/** One variant of one release, verified: every field below comes from the signed manifest. */
export class Release {
  private constructor(
    readonly model: string,
    readonly version: string,
    readonly variant: VariantEntry,
    readonly manifest: Manifest,
    /** the manifest as signed (number lexemes kept), to store and re-verify later */
    readonly signedManifest: JsonObject,
    readonly artifactUrl: string,
    readonly goldenUrl: string,
  ) {}

  get sha256(): string {
    return this.variant.sha256;
  }

  get goldenSha256(): string {
    return this.manifest.golden.sha256;
  }

  /**
   * Check the block's manifest (schema, signature) and take the variant from it (§4.4).
   *
   * @param block the assignment; its `manifest` must come from `parseJson` (lossless).
   * @throws ModelRefused `load_failed` for an unsigned, tampered or inconsistent release.
   */
  static fromAssignment(block: ReleaseBlock, trusted: TrustedKeys): Release {
    const signed = block.manifest;
    try {
      checkManifest(signed);
      verifyManifest(signed, trusted);
    } catch (err) {
      if (err instanceof ManifestError || err instanceof SigningError) {
        throw loadFailed(`manifest refused: ${err.message}`);
      }
      throw err;
    }
    const manifest = toPlain(signed) as Manifest;
    const wanted = block.variant ?? {};
    const variant = manifest.variants.find((v) => v.id === wanted.id);
    if (variant === undefined || variant.sha256 !== wanted.sha256) {
      throw loadFailed(`variant ${JSON.stringify(wanted.id)} is not in the signed manifest`);
    }
    if (manifest.model !== (block.model ?? manifest.model) || manifest.version !== block.version) {
      throw loadFailed("assignment and manifest name other releases");
    }
    if (typeof block.artifact_url !== "string" || typeof block.golden_url !== "string") {
      throw loadFailed("assignment lacks artifact_url or golden_url");
    }
    return new Release(manifest.model, manifest.version, variant, manifest, signed, block.artifact_url,
      block.golden_url);
  }
}
