/**
 * The model runtime plug point, and the one that ships: onnxruntime in any of its JS packages.
 *
 * `onnxRuntime(ort)` takes the module the app already imports (`onnxruntime-node`,
 * `onnxruntime-react-native` or `onnxruntime-web`), so the SDK has no native code of its own
 * and runs on Core ML / NNAPI / XNNPACK through the execution providers the app lists.
 */

import type { Array2 } from "./fidelity.js";
import type { VariantEntry } from "./manifest.js";
import { check } from "./errors.js";
import { isObject } from "./json.js";
import type { NdArray } from "./npz.js";

/** Where a model file is: a path the runtime can open, else its bytes. */
export interface ModelSource {
  path?: string;
  bytes(): Promise<Uint8Array>;
}

/** A loaded model. `run` takes and returns tensors keyed by name. */
export interface RuntimeSession<T> {
  run(feeds: Record<string, T>): Promise<Record<string, T>>;
  release(): Promise<void>;
}

/** What the SDK needs of a runtime; `T` is its tensor type. */
export interface ModelRuntime<T> {
  /** the name announced at registration; the server matches it to a variant's `runtime.name` */
  readonly name: string;
  readonly version: string;
  /**
   * What to announce to the server (§2.2) when it is not just `{[name]: version}`: a runtime that
   * loads several formats, or one the app knows cannot run here. Re-announced when it changes (§3.7).
   */
  readonly runtimes?: Readonly<Record<string, string>>;
  /** manifest `format`s it can load */
  readonly formats: readonly string[];
  load(source: ModelSource, variant: VariantEntry): Promise<RuntimeSession<T>>;
  /** a tensor of a golden-set array */
  tensor(array: NdArray): T;
  /** a tensor's data and shape, to compare outputs and count labels */
  read(tensor: T): Array2;
}

/** The parts of an onnxruntime JS module the SDK uses (structural: any of the three packages fits). */
export interface OrtModule<T extends OrtTensor> {
  InferenceSession: { create(model: any, options?: any): Promise<OrtSession> };
  Tensor: new (type: any, data: any, dims?: readonly number[]) => T;
  env: { versions?: { common?: string } };
}
export interface OrtTensor {
  readonly type: string;
  readonly data: unknown;
  readonly dims: readonly number[];
}
interface OrtSession {
  run(feeds: any): Promise<{ readonly [name: string]: unknown }>;
  release(): Promise<void>;
}

export interface OnnxRuntimeOptions {
  /** e.g. `["coreml", "cpu"]` on iOS, `["nnapi", "xnnpack", "cpu"]` on Android; default: the package's */
  executionProviders?: readonly unknown[];
  intraOpNumThreads?: number;
  /** the version announced to the server; default: the module's `env.versions.common` */
  version?: string;
}

/**
 * A {@link ModelRuntime} over an onnxruntime module.
 *
 * @example
 *   import * as ort from "onnxruntime-react-native";
 *   const runtime = onnxRuntime(ort, { executionProviders: ["coreml", "cpu"] });
 */
export function onnxRuntime<T extends OrtTensor>(ort: OrtModule<T>, options: OnnxRuntimeOptions = {}): ModelRuntime<T> {
  const version = options.version ?? ort.env.versions?.common;
  check(version, "onnxRuntime: version unknown; pass options.version", Error);
  const { executionProviders, intraOpNumThreads } = options;
  const sessionOptions = { ...(executionProviders ? { executionProviders } : {}),
    ...(intraOpNumThreads ? { intraOpNumThreads } : {}) };
  return {
    name: "onnxruntime",
    version,
    formats: ["onnx"],
    async load(source, variant) {
      // The converter writes `io` only for full-integer TFLite variants, and the server assigns an
      // onnxruntime device ONNX variants only (§3.4): this is a release built by other means.
      check(!hasQuantizedIo(variant.io), `${variant.id} has integer-quantized I/O (io), written only for TFLite variants`, Error);
      const model = source.path ?? (await source.bytes());
      const session = await ort.InferenceSession.create(model, sessionOptions);
      return {
        // no async wrapper: one promise and one microtask fewer between the model and the caller
        run: (feeds) => session.run(feeds) as Promise<Record<string, T>>,
        release: () => session.release(),
      };
    },
    tensor: (array) => new ort.Tensor(array.dtype, array.data, array.shape),
    read: (tensor) => ({ data: tensor.data as Array2["data"], shape: tensor.dims }),
  };
}

/** The runtimes a device with this runtime announces (§2.2): `runtime.runtimes`, else `{[name]: version}`. */
export function announcedRuntimes<T>(runtime: ModelRuntime<T>): Record<string, string> {
  return runtime.runtimes ? { ...runtime.runtimes } : { [runtime.name]: runtime.version };
}

function hasQuantizedIo(io: unknown): boolean {
  if (!isObject(io)) return false;
  const specs = Object.values(io).flatMap((v) => (Array.isArray(v) ? v : []));
  return specs.some((s) => (s as { scale?: unknown } | null)?.scale != null);
}
