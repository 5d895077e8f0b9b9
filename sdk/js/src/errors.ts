/**
 * The SDK's errors: a small hierarchy whose class says what the caller should do.
 *
 * - {@link ModelRefused}: this release must never run (reported as `load_failed` /
 *   `golden_mismatch`, then backed off);
 * - {@link DownloadError} and its subclasses: a transfer problem (retry later) or bytes that are
 *   not the artifact (refuse);
 * - {@link ServerUnavailable} / {@link ServerRejected}: back off, or act on the status;
 * - {@link NoModel} / {@link InferenceError}: what `predict()` throws.
 */

/** The install error reasons of a report (docs/protocol.md §8.4). */
export type RefusalReason = "load_failed" | "golden_mismatch";

export class EdgeshipError extends Error {}

/** A manifest that breaks `edgeship.manifest/v1`; the message names the field. */
export class ManifestError extends EdgeshipError {}

/** No trusted key, or a signature that does not verify. */
export class SigningError extends EdgeshipError {}

/** A release that must not run; `reason` is what the device reports. */
export class ModelRefused extends EdgeshipError {
  constructor(readonly reason: RefusalReason, message: string) {
    super(message);
  }
}

/** A release that must not run because it cannot load here, or is not what it claims (`load_failed`). */
export const loadFailed = (message: string): ModelRefused => new ModelRefused("load_failed", message);

/** A download failed; `status` is set for HTTP errors. Retry at the next check-in. */
export class DownloadError extends EdgeshipError {
  constructor(readonly url: string, message: string, readonly status?: number) {
    super(`${url}: ${message}`);
  }
}

/** Network trouble, a timeout, the deadline or a 5xx: the partial is kept for resume. */
export class TransferError extends DownloadError {}

/** The server's bytes are not the artifact asked for (size or sha256): refuse the release. */
export class IntegrityError extends DownloadError {}

/** The artifact is larger than the device allows: refuse the release. */
export class TooLarge extends DownloadError {}

/** The server could not be reached or answered 5xx / 429 / not JSON: back off and retry. */
export class ServerUnavailable extends EdgeshipError {
  /** Seconds the server asked for in `Retry-After`, if it did. */
  constructor(message: string, readonly retryAfterSeconds?: number) {
    super(message);
  }
}

/** The server refused the request (a 4xx other than 429); `error` is its short code. */
export class ServerRejected extends EdgeshipError {
  /** `retryAfterSeconds`: a pending device's 403 says when to ask again */
  constructor(message: string, readonly status: number, readonly error: string = "",
              readonly retryAfterSeconds?: number) {
    super(message);
  }
}

/** `predict()` before any model was installed. */
export class NoModel extends EdgeshipError {}

/** The runtime failed on an input (counted as `runtime_error`). */
export class InferenceError extends EdgeshipError {}

/** A 401: the credential or enrollment token is not accepted (or the device was revoked). */
export const isUnauthorized = (err: unknown): err is ServerRejected => err instanceof ServerRejected && err.status === 401;

/**
 * Each class's `name` is set once on its prototype (not per instance), before any is thrown,
 * so stack traces and `String(err)` carry it too.
 */
export function nameErrors(classes: Record<string, { prototype: Error }>): void {
  for (const [name, cls] of Object.entries(classes)) cls.prototype.name = name;
}

nameErrors({ EdgeshipError, ManifestError, SigningError, ModelRefused, DownloadError, TransferError, IntegrityError,
  TooLarge, ServerUnavailable, ServerRejected, NoModel, InferenceError });

/** An HTTP status worth retrying later: 5xx, 429, or not a final answer. */
export const retriable = (status: number): boolean => status >= 500 || status === 429 || status < 200;

/** `["HTTP <status>[: <detail>]", error code]` of an error answer's JSON body (`{"error", "detail"}`). */
export function httpError(status: number, body: string): [string, string] {
  let [error, detail] = ["", ""];
  try {
    const data = JSON.parse(body) as { error?: unknown; detail?: unknown } | null;
    if (typeof data?.error === "string") error = data.error;
    if (typeof data?.detail === "string") detail = data.detail;
  } catch {
    // not JSON: the status says it all
  }
  detail ||= error;
  return [`HTTP ${status}${detail ? `: ${detail}` : ""}`, error];
}

/**
 * The SDK's one check: throw `new Err(message)` (a RangeError unless said) unless `ok`. Not for
 * hot paths (the message is built before the check).
 */
export function check(ok: unknown, message: string, Err: new (message: string) => Error = RangeError): asserts ok {
  if (!ok) throw new Err(message);
}

/** A one-line reason for any thrown value, for logs and reports. */
export function firstLine(err: unknown, limit = 300): string {
  const text = err instanceof Error ? err.message || err.name : String(err);
  const line = text.split("\n").find((l) => l.trim())?.trim() ?? "error";
  return line.length <= limit ? line : `${line.slice(0, limit - 3)}...`;
}
