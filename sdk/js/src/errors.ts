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

export class EdgeshipError extends Error {
  override name = "EdgeshipError";
}

/** A manifest that breaks `edgeship.manifest/v1`; the message names the field. */
export class ManifestError extends EdgeshipError {
  override name = "ManifestError";
}

/** No trusted key, or a signature that does not verify. */
export class SigningError extends EdgeshipError {
  override name = "SigningError";
}

/** A release that must not run; `reason` is what the device reports. */
export class ModelRefused extends EdgeshipError {
  override name = "ModelRefused";
  constructor(readonly reason: RefusalReason, message: string) {
    super(message);
  }
}

/** A download failed; `status` is set for HTTP errors. Retry at the next check-in. */
export class DownloadError extends EdgeshipError {
  override name = "DownloadError";
  constructor(readonly url: string, message: string, readonly status?: number) {
    super(`${url}: ${message}`);
  }
}

/** Network trouble, a timeout, the deadline or a 5xx: the partial is kept for resume. */
export class TransferError extends DownloadError {
  override name = "TransferError";
}

/** The server's bytes are not the artifact asked for (size or sha256): refuse the release. */
export class IntegrityError extends DownloadError {
  override name = "IntegrityError";
}

/** The artifact is larger than the device allows: refuse the release. */
export class TooLarge extends DownloadError {
  override name = "TooLarge";
}

/** The server could not be reached or answered 5xx / 429 / not JSON: back off and retry. */
export class ServerUnavailable extends EdgeshipError {
  override name = "ServerUnavailable";
  /** Seconds the server asked for in `Retry-After`, if it did. */
  constructor(message: string, readonly retryAfterSeconds?: number) {
    super(message);
  }
}

/** The server refused the request (a 4xx other than 429); `error` is its short code. */
export class ServerRejected extends EdgeshipError {
  override name = "ServerRejected";
  /** `retryAfterSeconds`: a pending device's 403 says when to ask again */
  constructor(message: string, readonly status: number, readonly error: string = "",
              readonly retryAfterSeconds?: number) {
    super(message);
  }
}

/** `predict()` before any model was installed. */
export class NoModel extends EdgeshipError {
  override name = "NoModel";
}

/** The runtime failed on an input (counted as `runtime_error`). */
export class InferenceError extends EdgeshipError {
  override name = "InferenceError";
}

/** A one-line reason for any thrown value, for logs and reports. */
export function firstLine(err: unknown, limit = 300): string {
  const text = err instanceof Error ? err.message || err.name : String(err);
  const line = text.split("\n").find((l) => l.trim())?.trim() ?? "error";
  return line.length <= limit ? line : `${line.slice(0, limit - 3)}...`;
}
