/**
 * `@edgeship/device`: the edgeship device protocol (docs/protocol.md) for apps.
 *
 * The agent ({@link EdgeshipAgent}) and the pieces it is made of, each usable alone: canonical
 * JSON and manifest signatures, resumable verified downloads, the golden check, the model
 * store, the latency sketch, report windows and the durable outbox.
 */

export { EdgeshipAgent, type AgentStatus } from "./agent.js";
export type { AgentOptions, DeviceInfo, LogLevel } from "./options.js";
export { onnxRuntime, type ModelRuntime, type ModelSource, type RuntimeSession, type OnnxRuntimeOptions } from "./runtime.js";
export { systemClock, cryptoRandomBytes, type AppendHandle, type Clock, type Http, type HttpRequest, type HttpResponse,
  type SecureStore, type Storage } from "./adapters.js";
export { fetchHttp } from "./fetch-http.js";
export { EdgeshipError, ManifestError, SigningError, ModelRefused, DownloadError, TransferError, IntegrityError, TooLarge,
  ServerUnavailable, ServerRejected, NoModel, InferenceError, firstLine, type RefusalReason } from "./errors.js";
export { canonicalJson, parseJson, toPlain, JsonNumber, type JsonValue, type JsonObject } from "./json.js";
export { keyId, publicKeyFromPem, trustedKeys, verifyManifest, type TrustedKeys } from "./signing.js";
export { checkManifest, Release, type Manifest, type VariantEntry } from "./manifest.js";
export { download, fileSha256, partialPath } from "./download.js";
export { fidelity, AGREEMENT_COSINE } from "./fidelity.js";
export { checkGolden, loadGolden } from "./golden.js";
export { readNpz, readNpy, type NdArray } from "./npz.js";
export { ModelStore, type StoreEntry } from "./store.js";
export { LatencySketch, bucketOf, type SketchWire } from "./sketch.js";
export { WindowSet, isoUtc, newReportId, type Report, type WindowKey } from "./window.js";
export { Outbox, OutboxError, MAX_DROPPED_PER_REPORT } from "./outbox.js";
export { Backoff, VariantBackoff } from "./backoff.js";
export { ServerApi, type Assignment, type DeviceDescription } from "./api.js";
