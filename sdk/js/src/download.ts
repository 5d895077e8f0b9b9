/**
 * Resumable, verified artifact downloads (docs/protocol.md §5.3; reference
 * `edge_agent/download.py`).
 *
 * Bytes land in `<dest>.part` and become `dest` only once size and sha256 match, by an atomic
 * rename after fsync; a transfer cut in the middle resumes from the partial with
 * `Range: bytes=N-` at the next call. Errors say what to do: {@link TransferError} retry later
 * (partial kept), {@link IntegrityError} / {@link TooLarge} refuse the release, a plain
 * {@link DownloadError} with `status` is an HTTP 4xx.
 */

import type { Clock, Http, HttpResponse, Storage } from "./adapters.js";
import { SHA256_HEX, sha256Hasher } from "./bytes.js";
import { check, DownloadError, firstLine, httpError, IntegrityError, retriable, TooLarge, TransferError } from "./errors.js";

const HASH_BLOCK_BYTES = 1 << 20;
const CONTENT_RANGE = /^bytes (\d+)-(\d+)\/(\d+|\*)$/;

export interface DownloadOptions {
  http: Http;
  storage: Storage;
  clock: Clock;
  /** absolute URL of the artifact */
  url: string;
  /** final path in storage; the partial is `<dest>.part` */
  dest: string;
  sha256: string;
  /** the signed size, or null when unknown (the golden file): the sha256 alone vouches */
  sizeBytes: number | null;
  headers?: Record<string, string>;
  maxBytes?: number;
  /** per wait (headers, each chunk) */
  timeoutMs?: number;
  /** for the whole file */
  deadlineMs?: number;
}

export const partialPath = (dest: string): string => `${dest}.part`;

/** sha256 (hex) of a stored file, or of its first `limitBytes` bytes, read in 1 MiB pieces. */
export async function fileSha256(storage: Storage, path: string, limitBytes?: number): Promise<string> {
  if (limitBytes === undefined && storage.sha256 !== undefined) return storage.sha256(path);
  const size = (await storage.size(path)) ?? 0;
  return (await hashPrefix(storage, path, Math.min(size, limitBytes ?? size))).hex();
}

/** A sha256 hasher fed the first `end` bytes of a stored file, read in 1 MiB pieces. */
async function hashPrefix(storage: Storage, path: string, end: number): Promise<ReturnType<typeof sha256Hasher>> {
  const hasher = sha256Hasher();
  for (let at = 0; at < end; at += HASH_BLOCK_BYTES) {
    hasher.update(await storage.readRange(path, at, Math.min(HASH_BLOCK_BYTES, end - at)));
  }
  return hasher;
}

async function verified(storage: Storage, path: string, sha256: string, sizeBytes: number | null): Promise<boolean> {
  const size = await storage.size(path);
  return size !== null && (sizeBytes === null || size === sizeBytes) && (await fileSha256(storage, path)) === sha256;
}

/**
 * Download `url` into `dest`, resuming an earlier partial, and verify it. Nothing is requested
 * when `dest` already holds the right bytes.
 */
export async function download(options: DownloadOptions): Promise<void> {
  const { storage, url, dest, sha256, sizeBytes } = options;
  const maxBytes = options.maxBytes ?? 512 * 2 ** 20;
  check(SHA256_HEX.test(sha256), `sha256 ${sha256} is not 64 lowercase hex digits`);
  if (sizeBytes !== null && sizeBytes > maxBytes) throw new TooLarge(url, `${sizeBytes} bytes, over the limit of ${maxBytes}`);
  if (await verified(storage, dest, sha256, sizeBytes)) return;
  const partial = partialPath(dest);
  const deadline = options.clock.monotonicMs() + (options.deadlineMs ?? 600_000);
  let restarted = false;
  for (;;) {
    const offset = (await storage.size(partial)) ?? 0;
    const limit = sizeBytes ?? maxBytes;
    let response: HttpResponse | null = null;
    if (offset <= limit && !(offset > 0 && offset === sizeBytes)) {
      response = await open(options, offset, deadline);
    }
    if (response === null) { // complete already, too long, or 416: the partial must verify as it is
      if (offset > 0 && offset <= limit && (await verified(storage, partial, sha256, sizeBytes))) {
        await storage.rename(partial, dest);
        return;
      }
      await storage.remove(partial);
      if (restarted) throw new IntegrityError(url, "partial unusable after a restart");
      restarted = true;
      continue;
    }
    const [start, total] = await startOffset(options, response, offset, maxBytes);
    await receive(options, response, start, total, maxBytes, deadline);
    await storage.rename(partial, dest);
    return;
  }
}

async function open(options: DownloadOptions, offset: number, deadline: number): Promise<HttpResponse | null> {
  const { url } = options;
  const remaining = deadline - options.clock.monotonicMs();
  if (remaining <= 0) throw new TransferError(url, "deadline exceeded (partial kept)");
  const headers: Record<string, string> = { "Accept-Encoding": "identity", ...options.headers };
  if (offset > 0) headers["Range"] = `bytes=${offset}-`;
  let response: HttpResponse;
  try {
    response = await options.http.request({
      method: "GET", url, headers, followRedirects: true,
      timeoutMs: Math.min(options.timeoutMs ?? 10_000, remaining),
    });
  } catch (err) {
    throw new TransferError(url, `request failed: ${firstLine(err)}`);
  }
  if (response.status === 416) {
    await response.cancel();
    return null;
  }
  const { status } = response;
  if (status !== 200 && status !== 206) {
    const [message] = httpError(status, await response.text().catch(() => ""));
    throw new (retriable(status) ? TransferError : DownloadError)(url, message, status);
  }
  return response;
}

/** `[where the body starts in the artifact, the artifact's size if known]`, headers checked. */
async function startOffset(options: DownloadOptions, response: HttpResponse, offset: number,
                           maxBytes: number): Promise<[number, number | null]> {
  const { url, sizeBytes, storage } = options;
  let start: number;
  let total: number | null;
  if (response.status === 200) {
    const length = response.header("Content-Length") ?? "";
    [start, total] = [0, /^\d+$/.test(length) ? Number(length) : null];
  } else {
    const contentRange = (response.header("Content-Range") ?? "").trim();
    const match = CONTENT_RANGE.exec(contentRange);
    if (match === null) {
      await response.cancel();
      throw new TransferError(url, `206 with Content-Range ${JSON.stringify(contentRange)}`, 206);
    }
    [start, total] = [Number(match[1]), match[3] === "*" ? null : Number(match[3])];
  }
  const wrongSize = total !== null && sizeBytes !== null && total !== sizeBytes;
  if (wrongSize || (total !== null && total > maxBytes)) {
    await response.cancel();
    await storage.remove(partialPath(options.dest));
    throw wrongSize ? new IntegrityError(url, `server sends ${total} bytes, expected ${sizeBytes}`, response.status)
      : new TooLarge(url, `server sends ${total} bytes, over the limit of ${maxBytes}`, response.status);
  }
  if (start !== (response.status === 206 ? offset : 0)) {
    await response.cancel();
    throw new TransferError(url, `asked for bytes=${offset}-, got a range from ${start}`);
  }
  return [start, sizeBytes ?? total];
}

/** Stream the body into the partial (appending at `offset`, or truncating when 0), then verify. */
async function receive(options: DownloadOptions, response: HttpResponse, offset: number, total: number | null,
                       maxBytes: number, deadline: number): Promise<void> {
  const { storage, url, sha256, clock } = options;
  const partial = partialPath(options.dest);
  const hasher = await hashPrefix(storage, partial, offset);
  const limit = total ?? maxBytes;
  let received = offset;
  const file = await storage.openAppend(partial, offset === 0);
  let discard = false;
  const progress = () => `after ${received} of ${total ?? "?"} bytes (partial kept)`;
  try {
    try {
      for await (const chunk of response.chunks()) {
        if (clock.monotonicMs() > deadline) throw new TransferError(url, `deadline exceeded ${progress()}`);
        if (received + chunk.length > limit) {
          discard = true;
          throw new (total === null ? TooLarge : IntegrityError)(url, `server sent over ${limit} bytes`);
        }
        try {
          await file.write(chunk);
        } catch (err) {
          throw new DownloadError(url, `cannot write (partial kept): ${firstLine(err)}`);
        }
        hasher.update(chunk);
        received += chunk.length;
      }
    } catch (err) {
      if (err instanceof DownloadError) throw err;
      throw new TransferError(url, `${firstLine(err)} ${progress()}`);
    }
    if (total !== null && received < total) throw new TransferError(url, `connection closed ${progress()}`);
    if (hasher.hex() !== sha256) {
      discard = true;
      throw new IntegrityError(url, `sha256 mismatch: got ${hasher.hex()}, expected ${sha256}`);
    }
    await file.sync();
  } finally {
    await file.close();
    if (discard) await storage.remove(partial);
  }
}
